package fsm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func bootIs(id string) func() (string, error) {
	return func() (string, error) { return id, nil }
}

func noBoot() (string, error) { return "", errors.New("no boot id on this platform") }

// openDurable opens an FSM in deferred-sync mode at path with boot id "boot-a" and an
// interval long enough that only Snapshot, Restore and Close sync.
func openDurable(t testing.TB, path string, mod func(*Config)) *FSM {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Path = path
	cfg.SyncInterval = time.Hour
	cfg.BootID = bootIs("boot-a")
	return openConfig(t, cfg, mod)
}

func readMarkerT(t testing.TB, dbPath string) (marker, bool) {
	t.Helper()
	m, exists, err := readMarker(markerPath(dbPath))
	if err != nil {
		t.Fatal(err)
	}
	return m, exists
}

func TestOpenJudgesMarker(t *testing.T) {
	type markerState int
	const (
		keepMarker markerState = iota
		noMarker
		garbage
		uncleanA
		cleanA
	)
	tests := []struct {
		name     string
		marker   markerState
		boot     func() (string, error)
		interval time.Duration
		rebuilt  bool
		mode     syncMode
	}{
		{"clean close, same boot", keepMarker, bootIs("boot-a"), time.Hour, false, syncDeferred},
		{"clean close, other boot", cleanA, bootIs("boot-b"), time.Hour, false, syncDeferred},
		{"unclean, same boot (process killed)", uncleanA, bootIs("boot-a"), time.Hour, false, syncDeferred},
		{"unclean, other boot (power loss)", uncleanA, bootIs("boot-b"), time.Hour, true, syncDeferred},
		{"no marker (older version)", noMarker, bootIs("boot-b"), time.Hour, false, syncDeferred},
		{"unparseable marker", garbage, bootIs("boot-a"), time.Hour, true, syncDeferred},
		{"boot id unreadable, no marker", noMarker, noBoot, time.Hour, false, syncEveryCommit},
		{"boot id unreadable, clean marker", cleanA, noBoot, time.Hour, false, syncEveryCommit},
		{"boot id unreadable, unclean marker", uncleanA, noBoot, time.Hour, true, syncEveryCommit},
		{"empty boot id", noMarker, bootIs(" \n"), time.Hour, false, syncEveryCommit},
		{"every-commit config, unclean other boot", uncleanA, bootIs("boot-b"), 0, true, syncEveryCommit},
		{"every-commit config, same boot", uncleanA, bootIs("boot-a"), 0, false, syncEveryCommit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "fsm.db")
			f := openDurable(t, path, nil)
			h := &harness{t: t, f: f, now: t0}
			h.ok(UpsertEnterprise{ID: "acme", Name: "Acme", InventoryReady: true})
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			mp := markerPath(path)
			switch tc.marker {
			case noMarker:
				if err := os.Remove(mp); err != nil {
					t.Fatal(err)
				}
			case garbage:
				if err := os.WriteFile(mp, []byte("{not json"), 0o600); err != nil {
					t.Fatal(err)
				}
			case uncleanA:
				if err := writeMarker(mp, marker{BootID: "boot-a"}); err != nil {
					t.Fatal(err)
				}
			case cleanA:
				if err := writeMarker(mp, marker{BootID: "boot-a", Clean: true}); err != nil {
					t.Fatal(err)
				}
			}

			g := openDurable(t, path, func(c *Config) { c.BootID = tc.boot; c.SyncInterval = tc.interval })
			if g.Rebuilt() != tc.rebuilt || g.mode != tc.mode {
				t.Fatalf("rebuilt %v mode %v, want %v %v", g.Rebuilt(), g.mode, tc.rebuilt, tc.mode)
			}
			_, err := g.Enterprise("acme")
			torn, _ := filepath.Glob(path + ".torn-*")
			if tc.rebuilt {
				if !errors.Is(err, ErrNotFound) || g.AppliedIndex() != 0 {
					t.Fatalf("rebuilt FSM still has data: %v, applied %d", err, g.AppliedIndex())
				}
				if len(torn) != 1 {
					t.Fatalf("torn copies %v, want one", torn)
				}
				// The old file is kept intact for inspection.
				old := openTest(t, func(c *Config) { c.Path = torn[0] })
				if _, err := old.Enterprise("acme"); err != nil {
					t.Fatalf("moved-aside file: %v", err)
				}
			} else {
				if err != nil || g.AppliedIndex() != 1 {
					t.Fatalf("kept FSM lost data: %v, applied %d", err, g.AppliedIndex())
				}
				if len(torn) != 0 {
					t.Fatalf("file moved aside: %v", torn)
				}
			}
			m, exists := readMarkerT(t, path)
			switch tc.mode {
			case syncDeferred:
				if !exists || m.Clean {
					t.Fatalf("open in deferred mode: marker %+v exists %v, want unclean", m, exists)
				}
				if want, _ := tc.boot(); m.BootID != want {
					t.Fatalf("marker boot %q, want %q", m.BootID, want)
				}
			case syncEveryCommit:
				if exists {
					t.Fatalf("every-commit mode left marker %+v", m)
				}
			}
			if err := g.Close(); err != nil {
				t.Fatal(err)
			}
			m, exists = readMarkerT(t, path)
			if tc.mode == syncDeferred && (!exists || !m.Clean) {
				t.Fatalf("after close: marker %+v exists %v, want clean", m, exists)
			}
		})
	}
}

// Each rebuild keeps only the newest moved-aside copy.
func TestRebuildKeepsNewestTornCopy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fsm.db")
	older := path + ".torn-1000"
	if err := os.WriteFile(older, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := openDurable(t, path, nil)
	(&harness{t: t, f: f, now: t0}).ok(UpsertEnterprise{ID: "acme", InventoryReady: true})
	// Simulate a crash: the file is released without Close, so the marker stays unclean.
	f.stopSyncLoop()
	f.mu.Lock()
	_ = f.db.Close()
	f.db = nil
	f.mu.Unlock()

	g := openDurable(t, path, func(c *Config) { c.BootID = bootIs("boot-b") })
	if !g.Rebuilt() {
		t.Fatal("not rebuilt")
	}
	torn, _ := filepath.Glob(path + ".torn-*")
	if len(torn) != 1 || torn[0] == older {
		t.Fatalf("torn copies %v, want only the new one", torn)
	}
}

// A missing file with an unclean marker of another boot is simply a new, empty FSM.
func TestRebuildWithoutFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fsm.db")
	if err := writeMarker(markerPath(path), marker{BootID: "boot-a"}); err != nil {
		t.Fatal(err)
	}
	f := openDurable(t, path, func(c *Config) { c.BootID = bootIs("boot-b") })
	if f.Rebuilt() || f.AppliedIndex() != 0 {
		t.Fatalf("rebuilt %v applied %d", f.Rebuilt(), f.AppliedIndex())
	}
}

// Commits without fsync are visible at once: a read right after ApplyBatch sees it.
func TestDeferredSyncReadYourWrites(t *testing.T) {
	f := openDurable(t, filepath.Join(t.TempDir(), "fsm.db"), nil)
	h := &harness{t: t, f: f, now: t0}
	h.setupCatalog()
	for i := range 20 {
		h.ok(UpsertEnterprise{ID: "ent-" + iccid(i), InventoryReady: true})
		if _, err := f.Enterprise("ent-" + iccid(i)); err != nil {
			t.Fatalf("read after write %d: %v", i, err)
		}
		if f.AppliedIndex() != h.idx {
			t.Fatalf("applied %d, want %d", f.AppliedIndex(), h.idx)
		}
	}
	if f.commits.Load() == f.synced.Load() || f.syncs.Load() != 0 {
		t.Fatalf("commits %d synced %d syncs %d: want pending, never synced",
			f.commits.Load(), f.synced.Load(), f.syncs.Load())
	}
}

func TestDeferredSyncPoints(t *testing.T) {
	tests := []struct {
		name string
		sync func(t *testing.T, f *FSM, snap []byte)
	}{
		{"snapshot persist", func(t *testing.T, f *FSM, _ []byte) { snapshotBytes(t, f) }},
		{"restore", func(t *testing.T, f *FSM, snap []byte) {
			if err := f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
				t.Fatal(err)
			}
		}},
		{"close", func(t *testing.T, f *FSM, _ []byte) {
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "fsm.db")
			f := openDurable(t, path, nil)
			h := &harness{t: t, f: f, now: t0}
			h.ok(UpsertEnterprise{ID: "acme", InventoryReady: true})
			snap := snapshotBytes(t, f)
			h.ok(UpsertEnterprise{ID: "other", InventoryReady: true})
			before := f.syncs.Load()
			if f.commits.Load() == f.synced.Load() {
				t.Fatal("nothing pending before the sync point")
			}
			tc.sync(t, f, snap)
			if f.syncs.Load() != before+1 {
				t.Fatalf("syncs %d, want %d", f.syncs.Load(), before+1)
			}
		})
	}
}

// The background loop syncs when commits are pending, and only then.
func TestDeferredSyncLoop(t *testing.T) {
	f := openDurable(t, filepath.Join(t.TempDir(), "fsm.db"), func(c *Config) { c.SyncInterval = 5 * time.Millisecond })
	h := &harness{t: t, f: f, now: t0}
	waitSynced := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for f.commits.Load() != f.synced.Load() {
			if time.Now().After(deadline) {
				t.Fatal("pending commits never synced")
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitSynced()
	n := f.syncs.Load()
	h.ok(UpsertEnterprise{ID: "acme", InventoryReady: true})
	waitSynced()
	if f.syncs.Load() != n+1 {
		t.Fatalf("syncs %d, want %d", f.syncs.Load(), n+1)
	}
	// Idle: a sync with nothing pending does nothing (syncDB is what the loop calls).
	f.mu.RLock()
	err := f.syncDB(f.db)
	f.mu.RUnlock()
	if err != nil || f.syncs.Load() != n+1 {
		t.Fatalf("idle sync: %v, syncs %d", err, f.syncs.Load())
	}
}

// Every-commit mode (SyncInterval 0) runs no loop and keeps no marker.
func TestEveryCommitMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fsm.db")
	f := openDurable(t, path, func(c *Config) { c.SyncInterval = 0 })
	(&harness{t: t, f: f, now: t0}).ok(UpsertEnterprise{ID: "acme", InventoryReady: true})
	if f.mode != syncEveryCommit || f.stop != nil {
		t.Fatalf("mode %v loop %v", f.mode, f.stop != nil)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, exists := readMarkerT(t, path); exists {
		t.Fatal("marker written in every-commit mode")
	}
}

func TestConfigRejectsNegativeSyncInterval(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Path = "x"
	cfg.SyncInterval = -time.Second
	if err := cfg.Validate(); err == nil {
		t.Fatal("negative sync interval accepted")
	}
	if DefaultConfig().SyncInterval != DefaultSyncInterval {
		t.Fatal("default sync interval")
	}
}
