package fsm

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// buildLog drives a reference FSM with a random but reproducible workload (imports,
// claims, tasks, flushes, releases, revocations, admin commands, bad commands and
// configuration entries) and returns the log it applied.
func buildLog(t testing.TB, ref *FSM, seed uint64, steps int) []*raft.Log {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var logs []*raft.Log
	now := t0
	outcomes := map[string]int{}
	defer func() { t.Logf("outcomes: %v", outcomes) }()
	add := func(typ raft.LogType, data []byte) any {
		l := &raft.Log{Index: uint64(len(logs) + 1), Term: 1, Type: typ, Data: data}
		logs = append(logs, l)
		resp := ref.Apply(l)
		name := "config"
		if c, err := Decode(data); err == nil {
			name = c.Type.String()
		}
		if err, ok := resp.(error); ok {
			name += "/" + ErrorCode(err)
		}
		outcomes[name]++
		return resp
	}
	put := func(p any) any { return add(raft.LogCommand, cmd(t, p, now)) }

	put(UpsertAccount{Account: Account{ID: "acc-1", Carrier: CarrierOneLink, TTL: 10 * time.Minute, CredentialsValid: true}})
	put(UpsertAccount{Account: Account{ID: "acc-2", Carrier: CarrierCisco, TTL: 20 * time.Minute, CredentialsValid: true}})
	ents := []string{"alpha", "bravo", "charlie", "delta", "echo"}
	for i, e := range ents {
		acc := map[string]string{CarrierOneLink: "acc-1"}
		if i%2 == 1 {
			acc[CarrierCisco] = "acc-2"
		}
		put(UpsertEnterprise{ID: e, Name: e, Accounts: acc, InventoryReady: true})
	}
	next := 0
	importSome := func(n int) {
		p := ImportCards{Groups: 4, ShardSize: 16}
		for i := 0; i < n; i++ {
			e := ents[rng.IntN(len(ents))]
			p.Cards = append(p.Cards, CardImport{ICCID: iccid(rng.IntN(1 << 30)), Enterprise: e, Account: "acc-1", MSISDN: fmt.Sprint(next)})
			next++
		}
		put(p)
	}
	importSome(120)
	nodes := []string{"n1", "n2", "n3"}
	for step := 0; step < steps; step++ {
		now = now.Add(time.Duration(rng.IntN(5000)) * time.Millisecond)
		shards, err := ref.Shards(ShardFilter{})
		if err != nil {
			t.Fatal(err)
		}
		s := shards[rng.IntN(len(shards))]
		node := nodes[rng.IntN(len(nodes))]
		r := rng.IntN(100)
		if r >= 20 && r < 76 {
			// Tasks, flushes and releases mostly target claimed shards.
			var owned []ShardState
			for _, sh := range shards {
				if sh.Owner != "" {
					owned = append(owned, sh)
				}
			}
			if len(owned) > 0 && rng.IntN(5) > 0 {
				s = owned[rng.IntN(len(owned))]
			}
		}
		switch {
		case r < 20:
			put(Claim{Shard: s.ID, Node: node, Epoch: s.Epoch, Lease: 20 * time.Second})
		case r < 30:
			owner := s.Owner
			if owner == "" {
				owner = node
			}
			put(StartTask{Shard: s.ID, Node: owner, Epoch: s.Epoch, DepVersion: uint64(step)})
		case r < 70:
			owner := s.Owner
			if owner == "" || rng.IntN(10) == 0 {
				owner = node
			}
			cards, err := ref.ShardCards(s.ID, s.Checkpoint.Cursor, 1+rng.IntN(8))
			if err != nil {
				t.Fatal(err)
			}
			f := Flush{Shard: s.ID, Node: owner, Epoch: s.Epoch, TaskID: s.Checkpoint.TaskID, Cursor: s.Checkpoint.Cursor,
				Lease: 20 * time.Second, Done: len(cards) == 0 || rng.IntN(8) == 0, Release: rng.IntN(6) == 0}
			for _, c := range cards {
				res := CardResult{ICCID: c.ICCID}
				switch rng.IntN(4) {
				case 0:
					res.ErrKind = "not_found"
				case 1:
					// no data: keeps what it had
				default:
					res.Data = &CardData{Status: []string{"active", "suspended"}[rng.IntN(2)], DataUsedBytes: int64(rng.IntN(3)) << 20}
				}
				f.Results = append(f.Results, res)
				f.Cursor = c.ICCID
			}
			if rng.IntN(20) == 0 {
				f.Epoch++ // a stale flush
			}
			put(f)
		case r < 76:
			put(Release{Shard: s.ID, Node: s.Owner, Epoch: s.Epoch, Reason: "handoff"})
		case r < 79:
			put(RevokeNode{Node: node, Reason: "dead"})
		case r < 81:
			put(ForceRelease{Shard: s.ID})
		case r < 83:
			put(Resync{Shard: s.ID})
		case r < 85:
			put(SetCheckpoint{Shard: s.ID, NewTask: true})
		case r < 87:
			put(SetMaintenance{On: rng.IntN(3) == 0})
		case r < 89:
			put(SetAccountStatus{Account: "acc-1", Valid: rng.IntN(2) == 0, Reason: "probe"})
		case r < 91:
			importSome(1 + rng.IntN(30))
		case r < 93:
			add(raft.LogConfiguration, []byte("configuration"))
		case r < 95:
			add(raft.LogCommand, []byte{1, byte(rng.IntN(256)), 0, 0, 0, 0, 0, 0, 0, 1, byte(rng.IntN(256))})
		default:
			put(Release{Shard: s.ID, Node: node, Epoch: s.Epoch + 1})
		}
	}
	put(SetMaintenance{On: false})
	return logs
}

// applyInBatches feeds logs to f in random-sized batches of 1..64.
func applyInBatches(t testing.TB, f *FSM, logs []*raft.Log, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i < len(logs); {
		n := min(1+rng.IntN(64), len(logs)-i)
		if resps := f.ApplyBatch(logs[i : i+n]); len(resps) != n {
			t.Fatalf("%d responses for %d logs", len(resps), n)
		}
		i += n
	}
}

func mustDigest(t testing.TB, f *FSM) (uint64, string) {
	t.Helper()
	idx, d, err := f.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return idx, d
}

type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil || !sink.closed {
		t.Fatalf("persist: %v closed=%v", err, sink.closed)
	}
	return sink.Bytes()
}

func TestReplicasConverge(t *testing.T) {
	ref := openTest(t, func(c *Config) { c.ChangeRetention = 300; c.HistoryPerShard = 4 })
	logs := buildLog(t, ref, 42, 1500)
	refIdx, refDigest := mustDigest(t, ref)
	if refIdx != uint64(len(logs)) {
		t.Fatalf("reference applied %d of %d", refIdx, len(logs))
	}
	counts, _ := ref.Counts()
	changes, _, _ := ref.Changes(0, 0, "")
	t.Logf("log of %d entries: %+v, %d changes retained", len(logs), counts, len(changes))
	if counts.Cards < 120 || len(changes) == 0 {
		t.Fatalf("workload too thin: %+v", counts)
	}

	for _, seed := range []uint64{1, 2, 3} {
		other := openTest(t, func(c *Config) { c.ChangeRetention = 300; c.HistoryPerShard = 4 })
		applyInBatches(t, other, logs, seed)
		if idx, d := mustDigest(t, other); idx != refIdx || d != refDigest {
			t.Fatalf("batch seed %d: digest %d/%s, want %d/%s", seed, idx, d, refIdx, refDigest)
		}
	}
}

func TestSnapshotRestoreAndReopen(t *testing.T) {
	mod := func(c *Config) { c.ChangeRetention = 300; c.HistoryPerShard = 4 }
	ref := openTest(t, mod)
	logs := buildLog(t, ref, 7, 600)
	refIdx, refDigest := mustDigest(t, ref)

	// Snapshot half way, restore into a fresh FSM, apply the rest.
	half := openTest(t, mod)
	mid := len(logs) / 2
	applyInBatches(t, half, logs[:mid], 9)
	snap := snapshotBytes(t, half)
	fresh := openTest(t, mod)
	if err := fresh.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if fresh.AppliedIndex() != uint64(mid) {
		t.Fatalf("restored applied index %d, want %d", fresh.AppliedIndex(), mid)
	}
	_, dHalf := mustDigest(t, half)
	if _, d := mustDigest(t, fresh); d != dHalf {
		t.Fatal("restored digest differs from the snapshot source")
	}
	// Raft replays from an older index after a restore: already-applied entries skip.
	applyInBatches(t, fresh, logs[mid-10:], 10)
	if idx, d := mustDigest(t, fresh); idx != refIdx || d != refDigest {
		t.Fatalf("restore + rest of log: %d/%s, want %d/%s", idx, d, refIdx, refDigest)
	}

	// Restore replaces state completely (fresh already has the whole log).
	if err := fresh.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if _, d := mustDigest(t, fresh); d != dHalf {
		t.Fatal("restore over existing state kept old data")
	}
	// A snapshot that is not a database is refused and the state is kept.
	if err := fresh.Restore(io.NopCloser(bytes.NewReader([]byte("not a bolt file")))); err == nil {
		t.Fatal("garbage snapshot restored")
	}
	if _, d := mustDigest(t, fresh); d != dHalf {
		t.Fatal("failed restore changed state")
	}

	// Reopen from the same file keeps state and applied index; the whole log replayed
	// (as raft does with NoSnapshotRestoreOnStart) is skipped.
	path := ref.cfg.Path
	if err := ref.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ref.Card(iccid(1)); err == nil {
		t.Fatal("query on closed FSM succeeded")
	}
	cfg := DefaultConfig()
	cfg.Path = path
	cfg.ChangeRetention, cfg.HistoryPerShard = 300, 4
	re, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = re.Close() }()
	if re.AppliedIndex() != refIdx {
		t.Fatalf("reopened applied index %d, want %d", re.AppliedIndex(), refIdx)
	}
	resps := re.ApplyBatch(logs[len(logs)-64:])
	for i, r := range resps {
		if r != nil {
			t.Fatalf("replayed entry %d answered %v", i, r)
		}
	}
	applyInBatches(t, re, logs, 11)
	if idx, d := mustDigest(t, re); idx != refIdx || d != refDigest {
		t.Fatal("reopen + replay changed state")
	}
	// Entries after the stored index still apply.
	extra := &raft.Log{Index: refIdx + 1, Type: raft.LogCommand, Data: cmd(t, SetMaintenance{On: true, Reason: "after"}, t0)}
	if _, ok := re.Apply(extra).(*Result); !ok {
		t.Fatal("new entry after replay not applied")
	}
	if on, _, _ := re.Maintenance(); !on || re.AppliedIndex() != refIdx+1 {
		t.Fatal("new entry not applied")
	}
}

func TestNonCommandEntriesAdvanceIndex(t *testing.T) {
	f := openTest(t, nil)
	_, d0 := mustDigest(t, f)
	resps := f.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogConfiguration, Data: []byte{1, 2}},
		{Index: 2, Type: raft.LogNoop},
		{Index: 3, Type: raft.LogBarrier},
	})
	for _, r := range resps {
		if r != nil {
			t.Fatalf("response %v", r)
		}
	}
	if f.AppliedIndex() != 3 {
		t.Fatalf("applied %d", f.AppliedIndex())
	}
	if _, d := mustDigest(t, f); d == d0 {
		t.Fatal("digest ignores the applied index")
	}
}

// TestConcurrentQueries runs queries, snapshots and a restore while a log is applied;
// run with -race.
func TestConcurrentQueries(t *testing.T) {
	src := openTest(t, nil)
	logs := buildLog(t, src, 5, 300)
	snap := snapshotBytes(t, src)
	f := openTest(t, nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				switch w {
				case 0:
					_, _ = f.Shards(ShardFilter{})
					_, _, _ = f.Cards(CardFilter{Limit: 50})
				case 1:
					_, _, _ = f.Changes(0, 100, "")
					_, _ = f.Counts()
					_, _, _ = f.Digest()
				case 2:
					if s, err := f.Snapshot(); err == nil {
						_ = s.Persist(&memSink{})
						s.Release()
					}
				}
			}
		}(w)
	}
	applyInBatches(t, f, logs[:len(logs)/2], 3)
	if err := f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Error(err)
	}
	applyInBatches(t, f, logs, 4)
	close(stop)
	wg.Wait()
	_, want := mustDigest(t, src)
	if _, got := mustDigest(t, f); got != want {
		t.Fatal("digest differs after concurrent use")
	}
}
