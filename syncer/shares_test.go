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
				sh := splitShare(name, "acct", tt.fracs, nil, tt.rate, tt.burst, tt.conc, false)
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

// TestEvenSlotsStayPut: with the shared token buckets the slots are split evenly, so they
// do not move while the fractions drift: between every member when the account has a
// slot for each (a member without work keeps its slot, to call at once when work comes
// to it), otherwise between the owners with work. They never add up to more than the
// account allows, and the rate shown follows the slots.
func TestEvenSlotsStayPut(t *testing.T) {
	split := func(fracs map[string]float64, conc int) (map[string]int, float64) {
		var members []string
		for name := range fracs {
			members = append(members, name)
		}
		got, rate := map[string]int{}, 0.0
		for name := range fracs {
			sh := splitShare(name, "acct", fracs, members, 10, 5, conc, true)
			got[name] = sh.Concurrency
			rate += sh.RatePerSec
			if (sh.Concurrency == 0) != (sh.RatePerSec == 0) {
				t.Errorf("%s: rate %v with concurrency %d", name, sh.RatePerSec, sh.Concurrency)
			}
		}
		return got, rate
	}
	tests := []struct {
		name     string
		conc     int
		fracs    []map[string]float64 // drifting fractions: the split must not change
		total    int
		idleNone bool // members without work get no slot
	}{
		{"six slots, three owners", 6, []map[string]float64{{"a": 0.36, "b": 0.33, "c": 0.31}, {"a": 0.45, "b": 0.33, "c": 0.22}, {"a": 0.2, "b": 0.1, "c": 0.7}}, 6, false},
		{"six slots, four owners", 6, []map[string]float64{{"a": 0.16, "b": 0.32, "c": 0.16, "d": 0.36}, {"a": 0.27, "b": 0.29, "c": 0.24, "d": 0.2}}, 6, false},
		{"one slot, three owners", 1, []map[string]float64{{"a": 0.17, "b": 0.34, "c": 0.49}, {"a": 0.5, "b": 0.3, "c": 0.2}}, 1, false},
		{"a slot for every member: the idle one keeps its own", 6, []map[string]float64{{"a": 0.7, "b": 0.3, "c": 0}, {"a": 0.1, "b": 0.9, "c": 0}, {"a": 0.4, "b": 0.3, "c": 0.3}}, 6, false},
		{"fewer slots than members: only owners with work", 2, []map[string]float64{{"a": 0.7, "b": 0.3, "c": 0}, {"a": 0.1, "b": 0.9, "c": 0}}, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, _ := split(tt.fracs[0], tt.conc)
			for _, fr := range tt.fracs {
				got, rate := split(fr, tt.conc)
				sum := 0
				for name, n := range got {
					sum += n
					if n != first[name] {
						t.Errorf("fractions %v: %s has %d slots, %d before the drift", fr, name, n, first[name])
					}
					if tt.idleNone && fr[name] == 0 && n != 0 {
						t.Errorf("%s has no work but %d slots", name, n)
					}
					if !tt.idleNone && tt.conc >= len(fr) && n == 0 {
						t.Errorf("%s has no slot though the account has one for every member", name)
					}
				}
				if sum != tt.total {
					t.Errorf("fractions %v: slots add up to %d, want %d", fr, sum, tt.total)
				}
				if math.Abs(rate-10) > 1e-9 {
					t.Errorf("fractions %v: rates add up to %v, want 10", fr, rate)
				}
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

// TestOffRingMemberHasNoSlot: with the shared token buckets the members on the ring share
// every slot of an account that has one for each, so a member off the ring (not ready,
// leaving) holds none, whatever work it still counts.
func TestOffRingMemberHasNoSlot(t *testing.T) {
	fracs := map[string]float64{"a": 0.4, "b": 0.3, "x": 0.3}
	members := []string{"a", "b"}
	if sh := splitShare("x", "acct", fracs, members, 10, 5, 6, true); sh.Concurrency != 0 || sh.RatePerSec != 0 {
		t.Fatalf("off-ring member share %+v, want no slot", sh)
	}
	sum := 0
	for _, m := range members {
		sum += splitShare(m, "acct", fracs, members, 10, 5, 6, true).Concurrency
	}
	if sum != 6 {
		t.Fatalf("members on the ring hold %d slots, want 6", sum)
	}
}
