package syncer

import (
	"math"
	"testing"
	"time"

	"cardsync/fsm"
)

// TestSplitShareGivesRateToSlotHolders: an account with fewer concurrency slots than
// owners (Cisco allows one call at a time) must not strand the rate of the owners left
// without a slot; the parts never add up to more than the account allows.
func TestSplitShareGivesRateToSlotHolders(t *testing.T) {
	tests := []struct {
		name        string
		fracs       map[string]float64
		rate        float64
		burst, conc int
		wantConc    map[string]int
	}{
		{"one slot three owners", map[string]float64{"a": 0.17, "b": 0.34, "c": 0.49}, 4.85, 5, 1, map[string]int{"c": 1}},
		{"two slots three owners", map[string]float64{"a": 0.2, "b": 0.35, "c": 0.45}, 20, 5, 2, map[string]int{"b": 1, "c": 1}},
		{"enough slots", map[string]float64{"a": 0.5, "b": 0.5}, 50, 10, 8, map[string]int{"a": 4, "b": 4}},
		{"single owner", map[string]float64{"a": 1}, 5, 5, 1, map[string]int{"a": 1}},
		{"idle owner", map[string]float64{"a": 1, "b": 0}, 5, 5, 1, map[string]int{"a": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rate float64
			conc := 0
			for name := range tt.fracs {
				sh := splitShare(name, tt.fracs, tt.rate, tt.burst, tt.conc)
				if sh.Concurrency != tt.wantConc[name] {
					t.Errorf("%s: concurrency %d, want %d", name, sh.Concurrency, tt.wantConc[name])
				}
				if (sh.Concurrency == 0) != (sh.RatePerSec == 0) {
					t.Errorf("%s: rate %v with concurrency %d", name, sh.RatePerSec, sh.Concurrency)
				}
				rate += sh.RatePerSec
				conc += sh.Concurrency
			}
			if math.Abs(rate-tt.rate) > 1e-9 {
				t.Errorf("rates add up to %v, want the whole %v", rate, tt.rate)
			}
			if conc > tt.conc {
				t.Errorf("slots add up to %d, account allows %d", conc, tt.conc)
			}
		})
	}
}

// TestShareWeightsFollowLiveClaims: two nodes whose rings disagree (one was cut off and
// still sees itself alone) compute the same weights for the shards that are claimed, so
// their shares do not both cover the same work.
func TestShareWeightsFollowLiveClaims(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	ents := map[string]fsm.Enterprise{"e": {ID: "e", Accounts: map[string]string{"cisco": "cisco-global"}}}
	shards := []fsm.ShardState{
		{ID: "s1", Cards: 10, Enterprises: []string{"e"}, Owner: "a", LeaseUntil: now.Add(time.Second), Checkpoint: fsm.Checkpoint{State: fsm.StateRunning}},
		{ID: "s2", Cards: 30, Enterprises: []string{"e"}, Owner: "b", LeaseUntil: now.Add(time.Second), Checkpoint: fsm.Checkpoint{State: fsm.StateRunning}},
		{ID: "s3", Cards: 5, Enterprises: []string{"e"}, Owner: "b", LeaseUntil: now.Add(-time.Second), Checkpoint: fsm.Checkpoint{NextRunAt: now}},
	}
	tests := []struct {
		name   string
		owners map[string]string
		want   map[string]float64
	}{
		{"a alone on its ring", map[string]string{"s1": "a", "s2": "a", "s3": "a"}, map[string]float64{"a": 15, "b": 30}},
		{"b alone on its ring", map[string]string{"s1": "b", "s2": "b", "s3": "b"}, map[string]float64{"a": 10, "b": 35}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shareWeights(shards, tt.owners, ents, now)["cisco-global"]
			if len(got) != len(tt.want) {
				t.Fatalf("weights %v, want %v", got, tt.want)
			}
			for o, w := range tt.want {
				if got[o] != w {
					t.Errorf("weights %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// Rates follow the share grace; a concurrency slot gained waits for the call grace too,
// since the node that gave it up may still have a query calling the carrier.
func TestPhaseShareHoldsSlotsForTheCallGrace(t *testing.T) {
	s := &Syncer{cfg: Config{PollInterval: 200 * time.Millisecond, CallGrace: 4 * time.Second}, history: map[string][]timedShare{}}
	t0 := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration, rate float64, conc int) Share {
		return s.phaseShare("cisco", Share{RatePerSec: rate, Burst: 2, Concurrency: conc}, t0.Add(d))
	}
	steps := []struct {
		d        time.Duration
		rate     float64
		conc     int
		wantRate float64
		wantConc int
	}{
		{0, 0, 0, 0, 0},
		{2 * time.Second, 5, 1, 0, 0},         // gained at 2 s: within the call grace
		{3800 * time.Millisecond, 5, 1, 0, 0}, // past the share grace, not the call grace
		{6100 * time.Millisecond, 5, 1, 5, 1}, // 4 s after the gain
		{7 * time.Second, 8, 1, 5, 1},         // a rate increase waits the share grace
		{8500 * time.Millisecond, 8, 1, 8, 1}, // 1.5 s later it holds
		{9 * time.Second, 3, 1, 3, 1},         // decreases at once
	}
	for _, st := range steps {
		got := at(st.d, st.rate, st.conc)
		if got.RatePerSec != st.wantRate || got.Concurrency != st.wantConc {
			t.Errorf("at %v (target rate %v conc %d): rate %v conc %d, want rate %v conc %d",
				st.d, st.rate, st.conc, got.RatePerSec, got.Concurrency, st.wantRate, st.wantConc)
		}
	}
}
