package node_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
)

// A backup of one cluster restores a new 3-node cluster: every member, and a member that
// joins afterwards, ends with the same state; the restored cluster takes new writes.
func TestBackupRestoresNewCluster(t *testing.T) {
	src := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 500})
	sn := src.Members[0].Node()
	testcluster.WaitFor(t, 30*time.Second, "source inventory", func() bool {
		c, _ := sn.FSM().Counts()
		return c.Cards == len(src.Catalog.Cards)
	})
	resp, err := http.Get("http://" + sn.HTTPAddr() + "/v1/backup")
	if err != nil {
		t.Fatal(err)
	}
	backup, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want, _ := sn.FSM().Counts()
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	src.Close()

	dst := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true})
	dst.WaitStable(60 * time.Second)
	leader := dst.WaitLeader(10 * time.Second)
	testcluster.WaitFor(t, 30*time.Second, "3 voters", func() bool { return voters(leader.Node()) == 3 })

	post := func(n string, body []byte) (int, string) {
		r, err := http.Post("http://"+n+"/v1/restore", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	if code, body := post(leader.Node().HTTPAddr(), []byte("not a backup")); code != http.StatusBadRequest {
		t.Fatalf("garbage restore: %d %s", code, body)
	}
	if f := dst.Follower(); f != nil {
		if code, body := post(f.Node().HTTPAddr(), backup); code != http.StatusConflict {
			t.Fatalf("restore on a follower: %d %s", code, body)
		}
	}
	if code, body := post(leader.Node().HTTPAddr(), backup); code != http.StatusOK {
		t.Fatalf("restore: %d %s", code, body)
	}
	// A second restore over a cluster that now holds cards is refused.
	if code, body := post(leader.Node().HTTPAddr(), backup); code != http.StatusConflict {
		t.Fatalf("restore over data: %d %s", code, body)
	}
	joined := dst.Add()
	dst.WaitStable(60 * time.Second)
	for _, m := range dst.Members {
		var got fsm.Counts
		var gotErr error
		defer func() {
			if t.Failed() {
				t.Logf("%s: counts %+v (%v), want %+v, applied %d, raft %s", m.Name, got, gotErr, want, m.Node().FSM().AppliedIndex(), m.Node().Raft().State())
			}
		}()
		testcluster.WaitFor(t, 60*time.Second, m.Name+" has the restored state", func() bool {
			got, gotErr = m.Node().FSM().Counts()
			return gotErr == nil && got == want
		})
	}
	ctx := testcluster.Ctx(t, 20*time.Second)
	if _, err := joined.Node().Propose(ctx, enterpriseCmd(t, "after-restore")); err != nil {
		t.Fatalf("write after restore: %v", err)
	}
	l := dst.WaitLeader(10 * time.Second)
	testcluster.WaitFor(t, 30*time.Second, "equal digests", func() bool {
		li, ld, _ := l.Node().FSM().Digest()
		for _, m := range dst.Members {
			i, d, err := m.Node().FSM().Digest()
			if err != nil || i != li || d != ld {
				return false
			}
		}
		return true
	})
	if _, err := l.Node().FSM().Card(src.Catalog.Cards[0].ICCID); err != nil {
		t.Fatalf("restored card: %v", err)
	}
}
