package node_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"cardsync/node"
	"cardsync/testcluster"
)

// After a power loss the FSM file (synced only every SyncInterval) may be torn. A node
// started on such a data dir moves the file aside and gets its whole state back from
// the Raft snapshot and the log after it; a node whose FSM file is lost does too.
func TestFSMRebuiltFromRaftAfterCrash(t *testing.T) {
	tests := []struct {
		name    string
		crash   func(t *testing.T, dir string)
		rebuilt bool
	}{
		{"power loss: unclean marker of an earlier boot, corrupt file", func(t *testing.T, dir string) {
			marker := `{"boot_id":"boot-before-the-power-loss","clean":false}`
			if err := os.WriteFile(filepath.Join(dir, "fsm.db.marker"), []byte(marker), 0o600); err != nil {
				t.Fatal(err)
			}
			db := filepath.Join(dir, "fsm.db")
			garbage := make([]byte, 16<<10)
			for i := range garbage {
				garbage[i] = byte(i * 7)
			}
			f, err := os.OpenFile(db, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(garbage, 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"fsm file lost", func(t *testing.T, dir string) {
			for _, name := range []string{"fsm.db", "fsm.db.marker"} {
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := devConfig(dir)
			n, err := node.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			testcluster.WaitFor(t, 10*time.Second, "node ready", n.Ready)
			ctx := testcluster.Ctx(t, 20*time.Second)
			propose := func(from, to int) {
				for i := from; i < to; i++ {
					if _, err := n.Propose(ctx, enterpriseCmd(t, fmt.Sprintf("ent-%02d", i))); err != nil {
						t.Fatalf("propose %d: %v", i, err)
					}
				}
			}
			// Half the state is in the snapshot, half only in the log after it.
			propose(0, 20)
			if err := n.Raft().Snapshot().Error(); err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			propose(20, 40)
			want, err := n.FSM().Enterprises()
			if err != nil || len(want) != 40 {
				t.Fatalf("enterprises before the crash: %d, %v", len(want), err)
			}
			if err := n.Shutdown(); err != nil {
				t.Fatal(err)
			}

			tc.crash(t, dir)

			cfg.Name = ""
			n2, err := node.New(cfg)
			if err != nil {
				t.Fatalf("restart: %v", err)
			}
			defer n2.Shutdown()
			if got := n2.FSM().Rebuilt(); got != tc.rebuilt {
				t.Fatalf("Rebuilt() = %v, want %v", got, tc.rebuilt)
			}
			if tc.rebuilt {
				if torn, _ := filepath.Glob(filepath.Join(dir, "fsm.db.torn-*")); len(torn) != 1 {
					t.Fatalf("moved-aside files: %v", torn)
				}
			}
			testcluster.WaitFor(t, 20*time.Second, "every enterprise back", func() bool {
				got, err := n2.FSM().Enterprises()
				return err == nil && len(got) == len(want)
			})
			got, _ := n2.FSM().Enterprises()
			for i := range want {
				if got[i].ID != want[i].ID || got[i].Name != want[i].Name {
					t.Fatalf("enterprise %d: %+v, want %+v", i, got[i], want[i])
				}
			}
			// The rebuilt node takes new writes.
			if _, err := n2.Propose(testcluster.Ctx(t, 20*time.Second), enterpriseCmd(t, "after")); err != nil {
				t.Fatalf("write after rebuild: %v", err)
			}
		})
	}
}
