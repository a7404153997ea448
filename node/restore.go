package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
)

// MaxBackupBytes bounds a backup uploaded for restore.
const MaxBackupBytes = 8 << 30

// ErrClusterNotEmpty refuses a restore over a cluster that already holds cards.
var ErrClusterNotEmpty = errors.New("cluster already holds cards")

// RestoreBackup replaces the cluster's replicated state with a backup taken from
// GET /v1/backup. It runs on the leader through Raft's user restore: the current Raft
// configuration is kept, the log index moves past the backup's applied index, and the
// state is sent to every follower and later joiner as a snapshot. Unless force is set it
// refuses a cluster that already holds cards.
func (n *Node) RestoreBackup(ctx context.Context, path string, force bool) error {
	if n.raft.State() != raft.Leader {
		return fmt.Errorf("%w: restore runs on the leader", raft.ErrNotLeader)
	}
	if !force {
		if c, err := n.fsm.Counts(); err != nil {
			return err
		} else if c.Cards > 0 {
			return fmt.Errorf("%w (%d cards): restore into a new cluster, or force it", ErrClusterNotEmpty, c.Cards)
		}
	}
	// Read the backup's applied index from a copy (opening a bbolt file may write to it).
	tmp, err := os.MkdirTemp(n.cfg.DataDir, "restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	probe := filepath.Join(tmp, "probe.db")
	if err := copyFile(path, probe); err != nil {
		return err
	}
	f, err := fsm.Open(fsm.Config{Path: probe}, nil)
	if err != nil {
		return fmt.Errorf("%w: not a cardsync backup: %v", fsm.ErrInvalid, err)
	}
	index := f.AppliedIndex()
	_ = f.Close()

	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	timeout := 5 * time.Minute
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: index, Size: st.Size()}
	if err := n.raft.Restore(meta, src, timeout); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	n.logger.Info("replicated state restored from backup", "backup_index", index, "bytes", st.Size())
	return nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// handleRestore takes a backup file as the request body: POST /v1/restore[?force=true].
func (n *Node) handleRestore(w http.ResponseWriter, r *http.Request) {
	if n.raft.State() != raft.Leader {
		leader, _ := n.leaderHTTPAddr()
		writeJSON(w, http.StatusConflict, map[string]string{"error": "restore runs on the leader", "leader_http_addr": leader})
		return
	}
	tmp, err := os.CreateTemp(n.cfg.DataDir, "upload-*.db")
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, http.MaxBytesReader(w, r.Body, MaxBackupBytes))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		writeError(w, http.StatusRequestEntityTooLarge, "backup too large")
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "read backup: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Minute)
	defer cancel()
	err = n.RestoreBackup(ctx, tmp.Name(), r.URL.Query().Get("force") == "true")
	switch {
	case errors.Is(err, ErrClusterNotEmpty):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, fsm.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case err != nil:
		writeFSMError(w, err)
	default:
		c, _ := n.fsm.Counts()
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "cards": c.Cards, "shards": c.Shards, "enterprises": c.Enterprises})
	}
}
