package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// syncMode is how the FSM makes its file durable.
type syncMode int

const (
	// syncEveryCommit: bbolt fsyncs every commit (SyncInterval 0, or no boot id).
	syncEveryCommit syncMode = iota
	// syncDeferred: commits don't fsync; the sync loop, Snapshot, Restore and Close do.
	syncDeferred
	// syncNever: Config.NoSync (tests).
	syncNever
)

func (m syncMode) String() string {
	switch m {
	case syncDeferred:
		return "deferred"
	case syncNever:
		return "never"
	}
	return "every-commit"
}

const bootIDFile = "/proc/sys/kernel/random/boot_id"

// readBootID reads the Linux kernel's boot id, which changes on every boot.
func readBootID() (string, error) {
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", errors.New("read boot id: empty")
	}
	return id, nil
}

// marker is the small file beside the database that says whether every commit reached
// the disk: Clean is false from Open until the final sync of Close. BootID is the kernel
// boot that wrote it.
type marker struct {
	BootID string `json:"boot_id"`
	Clean  bool   `json:"clean"`
}

func markerPath(dbPath string) string { return dbPath + ".marker" }

// readMarker returns the marker, whether it exists, and a read or parse error.
func readMarker(path string) (marker, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return marker{}, false, nil
	}
	if err != nil {
		return marker{}, true, fmt.Errorf("read marker %s: %w", path, err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return marker{}, true, fmt.Errorf("parse marker %s: %w", path, err)
	}
	return m, true, nil
}

// writeMarker replaces the marker atomically and durably: temp file, fsync, rename,
// directory fsync.
func writeMarker(path string, m marker) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode marker: %w", err)
	}
	tmp := path + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write marker: %w", err)
	}
	if _, err := out.Write(append(b, '\n')); err != nil {
		_ = out.Close()
		return fmt.Errorf("write marker: %w", err)
	}
	if err := out.Sync(); err != nil {
		_ = out.Close()
		return fmt.Errorf("sync marker: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("close marker: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename marker: %w", err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// removeMarker deletes the marker (every-commit mode needs none).
func removeMarker(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove marker: %w", err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// tornVerdict says why a file may hold lost or torn commits; "" means it is sound.
//
// Without fsync only an OS crash or power loss can lose or tear commits: the writes of
// a process that was killed are in the page cache and reach the disk anyway. So a file
// is suspect only when its marker is not clean and the machine has booted since the
// marker was written (or the boot cannot be told). A missing marker means the file was
// written by a version that fsynced every commit, or by every-commit mode.
func tornVerdict(m marker, exists bool, markerErr error, boot string, bootErr error) string {
	switch {
	case !exists:
		return ""
	case markerErr != nil:
		return "marker unreadable: " + markerErr.Error()
	case m.Clean:
		return ""
	case bootErr != nil:
		return "unsynced commits and the current boot id is unknown"
	case m.BootID != boot:
		return "unsynced commits and the machine rebooted since (boot " + m.BootID + ")"
	}
	return ""
}

// prepareFile picks the sync mode, moves a possibly torn file aside, and (in deferred
// mode) marks the file unclean before anything is written to it without fsync.
func (f *FSM) prepareFile() error {
	if f.cfg.NoSync {
		f.mode = syncNever
		return nil
	}
	readBoot := f.cfg.BootID
	if readBoot == nil {
		readBoot = readBootID
	}
	boot, bootErr := readBoot()
	if bootErr == nil && strings.TrimSpace(boot) == "" {
		bootErr = errors.New("empty boot id")
	}
	f.bootID = boot
	f.mode = syncEveryCommit
	if bootErr != nil {
		if f.cfg.SyncInterval > 0 {
			f.logger.Warn("kernel boot id unavailable: fsync on every commit", "error", bootErr)
		}
	} else if f.cfg.SyncInterval > 0 {
		f.mode = syncDeferred
	}
	f.marker = markerPath(f.cfg.Path)
	m, exists, markerErr := readMarker(f.marker)
	if why := tornVerdict(m, exists, markerErr, boot, bootErr); why != "" {
		moved, err := moveAside(f.cfg.Path)
		if err != nil {
			return err
		}
		if moved != "" {
			f.rebuilt = true
			f.logger.Warn("fsm file may be torn by a crash: moved aside, starting empty to rebuild from the raft snapshot and log",
				"reason", why, "moved_to", moved)
		}
	}
	if f.mode == syncDeferred {
		return writeMarker(f.marker, marker{BootID: boot, Clean: false})
	}
	// Every-commit mode: the marker is removed once the opened file has been synced
	// (see Open), not before, so a crash in between still finds it.
	return nil
}

// moveAside renames the database to <path>.torn-<unix seconds>, keeping only the newest
// such copy, and returns the new name ("" when there was no file).
func moveAside(path string) (string, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("stat fsm db: %w", err)
	}
	old, _ := filepath.Glob(path + ".torn-*")
	torn := fmt.Sprintf("%s.torn-%d", path, time.Now().Unix())
	if err := os.Rename(path, torn); err != nil {
		return "", fmt.Errorf("move torn fsm db aside: %w", err)
	}
	for _, o := range old {
		if o != torn {
			_ = os.Remove(o)
		}
	}
	syncDir(filepath.Dir(path))
	return torn, nil
}

// Rebuilt reports whether Open found the file possibly torn by an OS crash or power
// loss, moved it aside and started empty: the state must come back from a Raft snapshot
// and the log (raft.Config.NoSnapshotRestoreOnStart must be false for this start).
func (f *FSM) Rebuilt() bool { return f.rebuilt }

// startSyncLoop runs the deferred-sync goroutine until Close.
func (f *FSM) startSyncLoop() {
	f.stop = make(chan struct{})
	f.loopDone = make(chan struct{})
	go func() {
		defer close(f.loopDone)
		t := time.NewTicker(f.cfg.SyncInterval)
		defer t.Stop()
		for {
			select {
			case <-f.stop:
				return
			case <-t.C:
				f.mu.RLock()
				db := f.db
				if db != nil {
					_ = f.syncDB(db)
				}
				f.mu.RUnlock()
			}
		}
	}()
}

func (f *FSM) stopSyncLoop() {
	f.stopOnce.Do(func() {
		if f.stop != nil {
			close(f.stop)
			<-f.loopDone
		}
	})
}

// syncDB fsyncs db (fdatasync) when commits happened since the last sync. A failed
// fsync leaves the file's durability unknown: the FSM stops applying (Err) and Close
// leaves the marker unclean.
func (f *FSM) syncDB(db *bolt.DB) error {
	if f.mode != syncDeferred {
		return nil
	}
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	c := f.commits.Load()
	if c == f.synced.Load() {
		return nil
	}
	if err := db.Sync(); err != nil {
		err = fmt.Errorf("fsm storage failure: sync: %w", err)
		f.syncFailed.Store(true)
		f.broken.CompareAndSwap(nil, &err)
		f.logger.Error("fsync of the fsm file failed; replica must be rebuilt from a snapshot", "error", err)
		return err
	}
	f.synced.Store(c)
	f.syncs.Add(1)
	return nil
}
