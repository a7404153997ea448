package membership

import (
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// testLogger logs to stderr when MEMBERSHIP_TEST_LOG is set, else nowhere.
func testLogger(name string) hclog.Logger {
	if lvl := os.Getenv("MEMBERSHIP_TEST_LOG"); lvl != "" {
		return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.LevelFromString(lvl)})
	}
	return hclog.NewNullLogger()
}

// testConfig is a fast-profile config on a free loopback port.
func testConfig(name string) Config {
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Profile = ProfileFast
	cfg.JoinRetryInterval = 50 * time.Millisecond
	cfg.JoinRetryMaxInterval = 200 * time.Millisecond
	cfg.JoinRetryMax = 10 * time.Second
	cfg.BroadcastTimeout = 2 * time.Second
	cfg.Logger = testLogger(name)
	return cfg
}

// mustStart starts a member and shuts it down at the end of the test.
func mustStart(tb testing.TB, cfg Config) *Membership {
	tb.Helper()
	m, err := New(cfg)
	if err != nil {
		tb.Fatalf("New(%s): %v", cfg.Name, err)
	}
	tb.Cleanup(func() { _ = m.Shutdown() })
	return m
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stateOf returns what m believes about name ("" state 0 when unknown).
func stateOf(m *Membership, name string) State {
	mem, ok := m.Member(name)
	if !ok {
		return 0
	}
	return mem.State
}

// aliveCount counts the alive members m knows.
func aliveCount(m *Membership) int {
	n := 0
	for _, mem := range m.Members() {
		if mem.State == StateAlive {
			n++
		}
	}
	return n
}
