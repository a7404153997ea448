package fsm

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// A restore while a snapshot of the current state is still open (Raft persisting its
// own snapshot) completes without waiting for that snapshot, and the open snapshot still
// persists the state it was taken from. Closing the old database first used to wait for
// the snapshot's read transaction while Raft waited for the restore: a node stuck for good.
func TestRestoreWhileSnapshotOpen(t *testing.T) {
	mod := func(c *Config) { c.ChangeRetention = 300; c.HistoryPerShard = 4 }
	src := openTest(t, mod)
	logs := buildLog(t, src, 3, 200)
	other := openTest(t, mod)
	applyInBatches(t, other, logs[:100], 10)
	want := snapshotBytes(t, other)
	_, wantDigest := mustDigest(t, other)
	_, srcDigest := mustDigest(t, src)

	open, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- src.Restore(io.NopCloser(bytes.NewReader(want))) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("restore waits for an open snapshot")
	}
	if _, d := mustDigest(t, src); d != wantDigest {
		t.Fatal("restored state differs from the snapshot restored")
	}
	// The snapshot opened before the restore still holds the state before it.
	var sink memSink
	if err := open.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	open.Release()
	check := openTest(t, mod)
	if err := check.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if _, d := mustDigest(t, check); d != srcDigest {
		t.Fatal("snapshot taken before the restore lost its state")
	}
}
