package fsm

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// t0 is the stamp the test clocks start from.
var t0 = time.Date(2025, 11, 1, 8, 0, 0, 0, time.UTC)

type harness struct {
	t   testing.TB
	f   *FSM
	idx uint64
	now time.Time
}

func openTest(t testing.TB, mod func(*Config)) *FSM {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "fsm.db")
	cfg.NoSync = true
	return openConfig(t, cfg, mod)
}

// openConfig opens an FSM with cfg (after mod, and a 64 MiB initial map) and closes it
// when the test ends.
func openConfig(t testing.TB, cfg Config, mod func(*Config)) *FSM {
	t.Helper()
	cfg.MmapSize = 64 << 20
	if mod != nil {
		mod(&cfg)
	}
	f, err := Open(cfg, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func newHarness(t testing.TB, mod func(*Config)) *harness {
	return &harness{t: t, f: openTest(t, mod), now: t0}
}

func mustCmd(t testing.TB, typ Type, p any, now time.Time) []byte {
	t.Helper()
	b, err := Encode(typ, p)
	if err != nil {
		t.Fatalf("encode %s: %v", typ, err)
	}
	if err := Stamp(b, now); err != nil {
		t.Fatalf("stamp: %v", err)
	}
	return b
}

// cmd encodes a payload, inferring its type.
func cmd(t testing.TB, p any, now time.Time) []byte {
	t.Helper()
	typ, ok := payloadType(p)
	if !ok {
		t.Fatalf("no command type for %T", p)
	}
	return mustCmd(t, typ, p, now)
}

func (h *harness) apply(p any) any {
	h.t.Helper()
	h.idx++
	return h.f.Apply(&raft.Log{Index: h.idx, Type: raft.LogCommand, Data: cmd(h.t, p, h.now)})
}

func (h *harness) ok(p any) *Result {
	h.t.Helper()
	resp := h.apply(p)
	res, isRes := resp.(*Result)
	if !isRes {
		h.t.Fatalf("%T %+v: got %v, want a result", p, p, resp)
	}
	return res
}

func (h *harness) fail(p any, want error) error {
	h.t.Helper()
	resp := h.apply(p)
	err, isErr := resp.(error)
	if !isErr {
		h.t.Fatalf("%T %+v: got %v, want error %v", p, p, resp, want)
	}
	if !errors.Is(err, want) {
		h.t.Fatalf("%T: got error %v, want %v", p, err, want)
	}
	return err
}

func (h *harness) advance(d time.Duration) { h.now = h.now.Add(d) }

func (h *harness) shard(id string) ShardState {
	h.t.Helper()
	s, err := h.f.Shard(id)
	if err != nil {
		h.t.Fatalf("shard %s: %v", id, err)
	}
	return s
}

func (h *harness) card(iccid string) Card {
	h.t.Helper()
	c, err := h.f.Card(iccid)
	if err != nil {
		h.t.Fatalf("card %s: %v", iccid, err)
	}
	return c
}

func iccid(n int) string { return fmt.Sprintf("8986%016d", n) }

// sameGroupEnterprises returns n enterprise ids that fall in one group.
func sameGroupEnterprises(n, groups int) []string {
	byGroup := map[int][]string{}
	for i := 0; ; i++ {
		id := fmt.Sprintf("ent-%d", i)
		g := GroupOf(id, groups)
		byGroup[g] = append(byGroup[g], id)
		if len(byGroup[g]) == n {
			return byGroup[g]
		}
	}
}

// setupCatalog creates account "acc-1" (onelink, TTL 1h) and the enterprises.
func (h *harness) setupCatalog(ents ...string) {
	h.t.Helper()
	h.ok(UpsertAccount{Account: Account{ID: "acc-1", Carrier: CarrierOneLink, TTL: time.Hour, RatePerSec: 10, Burst: 10, Concurrency: 2, BatchSize: 50, CredentialsValid: true}})
	h.ok(UpsertAccount{Account: Account{ID: "acc-2", Carrier: CarrierUnicom, TTL: 2 * time.Hour, RatePerSec: 5, CredentialsValid: true}})
	for _, e := range ents {
		h.ok(UpsertEnterprise{ID: e, Name: "Enterprise " + e, Accounts: map[string]string{CarrierOneLink: "acc-1"}, InventoryReady: true})
	}
}

// importRange imports cards [from, to) for an enterprise on acc-1.
func (h *harness) importRange(ent string, from, to, groups, shardSize int) *Result {
	h.t.Helper()
	p := ImportCards{Groups: groups, ShardSize: shardSize}
	for i := from; i < to; i++ {
		p.Cards = append(p.Cards, CardImport{ICCID: iccid(i), Enterprise: ent, Account: "acc-1", MSISDN: fmt.Sprintf("1440%09d", i)})
	}
	return h.ok(p)
}

// claimTask claims a shard for node and starts a task; it returns the epoch and task.
func (h *harness) claimTask(shard, node string) (uint64, uint64) {
	h.t.Helper()
	s := h.shard(shard)
	r := h.ok(Claim{Shard: shard, Node: node, Epoch: s.Epoch, Lease: 30 * time.Second})
	st := h.ok(StartTask{Shard: shard, Node: node, Epoch: r.Epoch, DepVersion: 7})
	return r.Epoch, st.TaskID
}

func rawLog(idx uint64, data []byte) []raft.Log {
	return []raft.Log{{Index: idx, Type: raft.LogCommand, Data: data}}
}
