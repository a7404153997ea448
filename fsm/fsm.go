package fsm

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// ErrClosed is returned by queries and commands on a closed FSM.
var ErrClosed = errors.New("fsm closed")

// FSM is cardsync's replicated state machine. It implements raft.BatchingFSM; queries
// are safe to call concurrently with Apply.
type FSM struct {
	cfg    Config
	logger hclog.Logger

	// mu guards db: read-locked by applies, queries and snapshots, write-locked only to
	// swap the file in Restore and to close.
	mu sync.RWMutex
	db *bolt.DB

	applied atomic.Uint64
	// broken holds the storage error that made a batch fail; once set, every later
	// command is answered with it (the replica has diverged and must be rebuilt).
	broken atomic.Pointer[error]

	// notify is closed (and replaced on demand) after every applied batch and restore.
	notifyMu sync.Mutex
	notify   chan struct{}

	// Durability (durability.go). commits counts commits to the file, synced the value
	// of commits covered by the last successful deferred sync; syncMu orders syncs.
	mode       syncMode
	marker     string
	bootID     string
	rebuilt    bool
	commits    atomic.Uint64
	synced     atomic.Uint64
	syncs      atomic.Uint64
	syncFailed atomic.Bool
	syncMu     sync.Mutex
	stop       chan struct{}
	loopDone   chan struct{}
	stopOnce   sync.Once

	// Releasing the file's map when idle (release.go).
	releases    atomic.Uint64
	releaseStop chan struct{}
	releaseDone chan struct{}
	releaseOnce sync.Once
}

var _ raft.BatchingFSM = (*FSM)(nil)

// Open opens (creating if needed) the bbolt file at cfg.Path. Zero-valued tunables take
// their defaults (SyncInterval excepted). A nil logger discards logs. When the file may
// have been torn by an OS crash (see Config.SyncInterval), Open moves it aside and
// starts empty; Rebuilt then reports true.
func Open(cfg Config, logger hclog.Logger) (*FSM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	f := &FSM{cfg: cfg.withDefaults(), logger: logger}
	if err := f.prepareFile(); err != nil {
		return nil, err
	}
	db, err := f.openDB(f.cfg.Path)
	if err != nil {
		return nil, err
	}
	idx, err := initDB(db)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	if f.mode == syncEveryCommit {
		// The file may hold commits of a deferred-sync run in the page cache; once they
		// are on disk a marker from that run has nothing left to say.
		if err := db.Sync(); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("sync fsm db: %w", err)
		}
		if err := removeMarker(f.marker); err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	f.commits.Add(1)
	f.db = db
	f.applied.Store(idx)
	if f.mode == syncDeferred {
		f.startSyncLoop()
	}
	if cfg.ReleaseIdle > 0 {
		f.startReleaseLoop()
	}
	logger.Debug("opened", "path", cfg.Path, "applied_index", idx, "sync", f.mode, "rebuilt", f.rebuilt)
	return f, nil
}

func (f *FSM) openDB(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         5 * time.Second,
		NoSync:          f.mode != syncEveryCommit,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: f.cfg.MmapSize,
	})
	if err != nil {
		return nil, fmt.Errorf("open fsm db %s: %w", path, err)
	}
	return db, nil
}

// initDB creates missing buckets and returns the stored applied index.
func initDB(db *bolt.DB) (uint64, error) {
	var idx uint64
	err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		idx = getU64(tx.Bucket(bucketMeta), keyApplied)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("init fsm db: %w", err)
	}
	return idx, nil
}

// Close syncs and closes the file; in deferred-sync mode it then marks the file clean.
// Queries after Close return ErrClosed.
func (f *FSM) Close() error {
	f.stopSyncLoop()
	f.stopReleaseLoop()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil
	}
	syncErr := f.syncDB(f.db)
	err := f.db.Close()
	f.db = nil
	if err != nil {
		return fmt.Errorf("close fsm db: %w", err)
	}
	if syncErr != nil {
		return syncErr
	}
	if f.mode == syncDeferred && !f.syncFailed.Load() {
		if err := writeMarker(f.marker, marker{BootID: f.bootID, Clean: true}); err != nil {
			return err
		}
	}
	return nil
}

// AppliedIndex returns the index of the last Raft log entry applied.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Err returns the storage error that stopped the FSM from applying, or nil.
func (f *FSM) Err() error {
	if p := f.broken.Load(); p != nil {
		return *p
	}
	return nil
}

// Apply applies one log entry (see ApplyBatch).
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies log entries in one bbolt transaction that also stores the applied
// index. Entries at or below the stored index are skipped (nil response). Non-command
// entries only advance the index. A command that breaks a rule gets an error as its
// response; the other entries still commit. A successful command gets a *Result.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	resps := make([]any, len(logs))
	if len(logs) == 0 {
		return resps
	}
	if err := f.Err(); err != nil {
		for i := range resps {
			resps[i] = err
		}
		return resps
	}
	if logs[len(logs)-1].Index <= f.applied.Load() {
		return resps
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		for i := range resps {
			resps[i] = ErrClosed
		}
		return resps
	}
	var last uint64
	err := f.db.Update(func(tx *bolt.Tx) error {
		a := newApplier(tx, f.cfg)
		applied := getU64(a.meta, keyApplied)
		for i, l := range logs {
			if l.Index <= applied {
				continue
			}
			if l.Type == raft.LogCommand {
				resp, err := a.apply(l.Index, l.Data)
				if err != nil {
					return fmt.Errorf("apply log %d: %w", l.Index, err)
				}
				resps[i] = resp
			}
			applied = l.Index
		}
		if err := a.finish(); err != nil {
			return err
		}
		last = applied
		return putU64(a.meta, keyApplied, applied)
	})
	f.commits.Add(1)
	if err != nil {
		err = fmt.Errorf("fsm storage failure: %w", err)
		f.logger.Error("batch not applied; replica must be rebuilt from a snapshot", "error", err,
			"first_index", logs[0].Index, "last_index", logs[len(logs)-1].Index)
		f.broken.Store(&err)
		for i := range resps {
			resps[i] = err
		}
		return resps
	}
	f.applied.Store(last)
	f.signalApplied()
	return resps
}

// Snapshot opens a read transaction; Persist syncs the file, then streams the
// transaction as a hot copy of it.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return nil, ErrClosed
	}
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("snapshot: begin read: %w", err)
	}
	return &snapshot{f: f, tx: tx}, nil
}

type snapshot struct {
	f    *FSM
	tx   *bolt.Tx
	once sync.Once
}

// Persist syncs the file (so it holds at least the snapshot's index on disk before Raft
// may compact the log behind it), then writes the database as of the snapshot to sink.
// It does not take the FSM's lock: Restore's close waits for this read transaction.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.f.syncDB(s.tx.DB()); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("snapshot: %w", err)
	}
	if _, err := s.tx.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("snapshot: write: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("snapshot: close sink: %w", err)
	}
	return nil
}

// Release ends the read transaction.
func (s *snapshot) Release() {
	s.once.Do(func() { _ = s.tx.Rollback() })
}

// Restore replaces the whole state with a snapshot: it writes the stream to a temporary
// file beside the database, syncs it, checks it opens, then swaps it in.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer func() { _ = rc.Close() }()
	tmp := f.cfg.Path + ".restore"
	if err := writeSynced(tmp, rc); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	// Check the copy is a usable database before dropping the current one.
	check, err := f.openDB(tmp)
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("restore: snapshot is not a database: %w", err)
	}
	if _, err := initDB(check); err != nil {
		_ = check.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("restore: %w", err)
	}
	if f.mode == syncDeferred {
		if err := check.Sync(); err != nil {
			_ = check.Close()
			_ = os.Remove(tmp)
			return fmt.Errorf("restore: sync checked copy: %w", err)
		}
	}
	if err := check.Close(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("restore: close checked copy: %w", err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.db
	if old != nil {
		// The file is about to be replaced. Syncing it first finds a failing disk
		// before anything is swapped and leaves a whole file should the swap fail.
		if err := f.syncDB(old); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	// The new file takes the old one's name while the old one is still open: a Raft
	// snapshot being persisted holds a read transaction on it, and closing it here would
	// wait for that transaction while Raft waits for this restore (a node stuck for
	// good). The old database is closed once its last reader is done.
	if err := os.Rename(tmp, f.cfg.Path); err != nil {
		return fmt.Errorf("restore: rename: %w", err)
	}
	syncDir(filepath.Dir(f.cfg.Path))
	db, err := f.openDB(f.cfg.Path)
	if err != nil {
		return fmt.Errorf("restore: reopen: %w", err)
	}
	idx, err := initDB(db)
	if err != nil {
		_ = db.Close()
		return fmt.Errorf("restore: %w", err)
	}
	if old != nil {
		go func() {
			if err := old.Close(); err != nil {
				f.logger.Warn("close the database replaced by a restore", "error", err)
			}
		}()
	}
	f.commits.Add(1)
	f.db = db
	f.applied.Store(idx)
	f.broken.Store(nil)
	f.syncFailed.Store(false)
	f.signalApplied()
	f.logger.Info("restored snapshot", "applied_index", idx)
	return nil
}

func writeSynced(path string, r io.Reader) error {
	out, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("restore: create temp file: %w", err)
	}
	if _, err := io.Copy(out, r); err != nil {
		_ = out.Close()
		return fmt.Errorf("restore: copy snapshot: %w", err)
	}
	if err := out.Sync(); err != nil {
		_ = out.Close()
		return fmt.Errorf("restore: sync temp file: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("restore: close temp file: %w", err)
	}
	return nil
}

// syncDir makes a rename durable; failures are ignored (not every platform allows it).
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}

// view runs fn in a read transaction of the current file.
func (f *FSM) view(fn func(tx *bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return ErrClosed
	}
	return f.db.View(fn)
}

// Digest returns the applied index and a sha256 over every bucket's name, keys and values
// in key order: replicas that applied the same log have the same digest.
func (f *FSM) Digest() (index uint64, digest string, err error) {
	h := sha256.New()
	err = f.view(func(tx *bolt.Tx) error {
		index = getU64(tx.Bucket(bucketMeta), keyApplied)
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return digestBucket(h, name, b)
		})
	})
	if err != nil {
		return 0, "", err
	}
	return index, hex.EncodeToString(h.Sum(nil)), nil
}

func digestBucket(h io.Writer, name []byte, b *bolt.Bucket) error {
	writeField(h, []byte{'B'})
	writeField(h, name)
	err := b.ForEach(func(k, v []byte) error {
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				return digestBucket(h, k, nb)
			}
		}
		writeField(h, k)
		writeField(h, v)
		return nil
	})
	writeField(h, []byte{'E'})
	return err
}

func writeField(h io.Writer, b []byte) {
	var n [binary.MaxVarintLen64]byte
	_, _ = h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	_, _ = h.Write(b)
}

func getU64(b *bolt.Bucket, key []byte) uint64 {
	v := b.Get(key)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putU64(b *bolt.Bucket, key []byte, v uint64) error {
	return b.Put(key, binary.BigEndian.AppendUint64(nil, v))
}
