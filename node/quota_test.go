package node_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/internal/quota"
	"cardsync/testcluster"
)

// TestClusterQuotaTokens: every node takes its carrier call tokens from the leader's
// bucket; a bad request gets a 400 with a JSON message; after the leader is killed the
// new leader grants nothing before its hold-off, and then grants again.
func TestClusterQuotaTokens(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, Profile: "fast"})
	c.WaitStable(30 * time.Second)
	l := c.WaitLeader(10 * time.Second)
	cmd, err := fsm.Encode(fsm.TypeUpsertAccount, fsm.UpsertAccount{Account: fsm.Account{ID: "acct", Carrier: fsm.CarrierOneLink,
		TTL: time.Hour, RatePerSec: 20, Burst: 3, Concurrency: 2, BatchSize: 100, CredentialsValid: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Node().Propose(testcluster.Ctx(t, 10*time.Second), cmd); err != nil {
		t.Fatalf("account: %v", err)
	}
	f := c.Follower()
	offs, err := f.Node().Tokens(testcluster.Ctx(t, 30*time.Second), "acct", 2, quota.LaneRest)
	if err != nil {
		t.Fatalf("tokens from a follower: %v", err)
	}
	if len(offs) != 2 || offs[0] != 0 || offs[1] <= 0 || offs[1] > time.Second {
		t.Fatalf("offsets %v: want 0 and about 1/19.6 s", offs)
	}
	if _, err := f.Node().Tokens(testcluster.Ctx(t, 10*time.Second), "nope", 1, quota.LaneRest); !errors.Is(err, quota.ErrUnknownAccount) {
		t.Fatalf("unknown account: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := f.Node().Tokens(ctx, "acct", 200, quota.LaneRest); !errors.Is(err, quota.ErrTooLate) || quota.RetryAfter(err) <= 0 {
		t.Fatalf("200 tokens within 300 ms: %v", err)
	}
	// A prioritized or urgent request from a follower reaches its lane at the leader: with
	// the bucket 40 tokens (2 s) in debt, it waits there.
	for _, tc := range []struct {
		lane             quota.Lane
		priority, urgent int
	}{{quota.LanePriority, 1, 0}, {quota.LaneUrgent, 1, 1}} {
		if _, err := f.Node().Tokens(testcluster.Ctx(t, 30*time.Second), "acct", 40, quota.LaneRest); err != nil {
			t.Fatalf("40 tokens: %v", err)
		}
		prio := make(chan error, 1)
		go func() {
			_, err := f.Node().Tokens(testcluster.Ctx(t, 30*time.Second), "acct", 1, tc.lane)
			prio <- err
		}()
		testcluster.WaitFor(t, 10*time.Second, "the request queued in its lane at the leader", func() bool {
			st := l.Node().QuotaStats()
			return st.WaitingPriority["acct"] == tc.priority && st.WaitingUrgent["acct"] == tc.urgent
		})
		if err := <-prio; err != nil {
			t.Fatalf("request in lane %d: %v", tc.lane, err)
		}
	}
	resp, err := http.Post("http://"+l.Node().HTTPAddr()+"/internal/v1/quota", "application/json", bytes.NewReader([]byte(`{"node":"x","count":0}`)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("bad request: status %d, %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}

	ln := l.Node()
	killed := time.Now()
	c.Kill(l)
	// A killed node stops asking at once (its syncer's workers wait on it as they stop).
	start := time.Now()
	if _, err := ln.Tokens(testcluster.Ctx(t, 10*time.Second), "acct", 1, quota.LaneRest); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("tokens on a killed node: %v after %v", err, time.Since(start))
	}
	nl := c.WaitLeader(30 * time.Second)
	if _, err := f.Node().Tokens(testcluster.Ctx(t, 30*time.Second), "acct", 1, quota.LaneRest); err != nil {
		t.Fatalf("tokens after the failover: %v", err)
	}
	st := nl.Node().QuotaStats()
	if !st.Leading || st.Granted["acct"] == 0 {
		t.Fatalf("new leader's quota server: %+v", st)
	}
	// The new leader's term started after the kill, with its own hold-off: it grants
	// nothing until a full hold-off after the kill at the earliest.
	if st.HoldOff <= 0 || st.From.Before(killed.Add(st.HoldOff)) {
		t.Fatalf("new leader grants from %v, hold-off %v, killed at %v", st.From, st.HoldOff, killed)
	}
}
