package fsm

import (
	"time"

	bolt "go.etcd.io/bbolt"
)

// DefaultReleaseIdle is how long DefaultConfig's FSM waits without a commit before it
// releases its map of the state file.
const DefaultReleaseIdle = 15 * time.Second

// startReleaseLoop runs until Close: once the FSM has committed nothing for
// cfg.ReleaseIdle, it releases the process's map of the file once (releaseMap), and
// again after the next quiet spell.
func (f *FSM) startReleaseLoop() {
	f.releaseStop = make(chan struct{})
	f.releaseDone = make(chan struct{})
	go func() {
		defer close(f.releaseDone)
		tick := min(f.cfg.ReleaseIdle, time.Second)
		t := time.NewTicker(tick)
		defer t.Stop()
		seen, since, released := f.commits.Load(), time.Now(), false
		for {
			select {
			case <-f.releaseStop:
				return
			case now := <-t.C:
				if c := f.commits.Load(); c != seen {
					seen, since, released = c, now, false
					continue
				}
				if released || now.Sub(since) < f.cfg.ReleaseIdle {
					continue
				}
				f.mu.RLock()
				if f.db != nil {
					if n, err := releaseMap(f.db); err != nil {
						f.logger.Debug("release of the state file's map", "error", err)
					} else if n > 0 {
						f.releases.Add(1)
					}
				}
				f.mu.RUnlock()
				released = true
			}
		}
	}()
}

func (f *FSM) stopReleaseLoop() {
	f.releaseOnce.Do(func() {
		if f.releaseStop != nil {
			close(f.releaseStop)
			<-f.releaseDone
		}
	})
}

// Releases returns how many times the FSM released its map of the state file.
func (f *FSM) Releases() uint64 { return f.releases.Load() }

// releaseMap gives the pages of db's read-only map back to the kernel while a read
// transaction holds bbolt's map lock (so the map cannot move meanwhile); it returns the
// bytes released. See release_linux.go.
func releaseMap(db *bolt.DB) (int, error) {
	tx, err := db.Begin(false)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }()
	return dropFileMap(db.Path())
}
