package fsm

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// fuzzSeeds are valid commands of every type against the fixture of fuzzFixture, plus
// a few broken ones.
func fuzzSeeds(t testing.TB) [][]byte {
	now := t0.Add(time.Minute)
	shard := ShardID(GroupOf("e1", 64), 0)
	cursor := iccid(3)
	next := now.Add(time.Hour)
	var seeds [][]byte
	for _, p := range []any{
		UpsertAccount{Account: Account{ID: "acc-9", Carrier: CarrierTelecom, TTL: time.Hour}},
		UpsertEnterprise{ID: "e9", Name: "nine", Accounts: map[string]string{CarrierOneLink: "acc-1"}},
		ImportCards{Cards: []CardImport{{ICCID: iccid(50), Enterprise: "e1"}, {ICCID: iccid(51), Enterprise: "e1", IMEI: "35"}}},
		Claim{Shard: shard, Node: "n1", Epoch: 0, Lease: time.Minute},
		StartTask{Shard: shard, Node: "n1", Epoch: 1, DepVersion: 3},
		Flush{Shard: shard, Node: "n1", Epoch: 1, TaskID: 1, Cursor: iccid(2), Lease: time.Minute,
			Results: []CardResult{{ICCID: iccid(1), Data: active(5)}, {ICCID: iccid(2), ErrKind: "not_found"}}},
		Flush{Shard: shard, Node: "n1", Epoch: 1, TaskID: 1, Cursor: iccid(4), Done: true, Release: true, NextRunAt: next},
		Release{Shard: shard, Node: "n1", Epoch: 1, Reason: "handoff"},
		RevokeNode{Node: "n1", Reason: "dead"},
		ForceRelease{Shard: shard},
		Resync{ICCIDs: []string{iccid(1)}, Enterprise: "e1"},
		SetCheckpoint{Shard: shard, Cursor: &cursor, NextRunAt: &next, NewTask: true},
		SetMaintenance{On: true, Reason: "fuzz"},
		SetAccountStatus{Account: "acc-1", Valid: false, Reason: "expired"},
	} {
		seeds = append(seeds, cmd(t, p, now))
	}
	unstamped, _ := Encode(TypeClaim, Claim{Shard: shard})
	seeds = append(seeds, nil, []byte{1}, []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{2, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0x80}, unstamped)
	return seeds
}

// FuzzDecodeAndApply feeds arbitrary bytes to Decode and to Apply: every input must
// yield a *Result or an error, never a panic, and the FSM must keep working.
func FuzzDecodeAndApply(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	h := newHarness(f, nil)
	oneShard(h, 8)
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := Decode(data); err == nil {
			_, _ = DecodePayload(c)
		}
		h.idx++
		resp := h.f.Apply(&raft.Log{Index: h.idx, Type: raft.LogCommand, Data: data})
		switch resp.(type) {
		case *Result, error:
		default:
			t.Fatalf("response %T %v", resp, resp)
		}
		if err := h.f.Err(); err != nil {
			t.Fatalf("storage failure: %v", err)
		}
		if h.f.AppliedIndex() != h.idx {
			t.Fatalf("applied index %d, want %d", h.f.AppliedIndex(), h.idx)
		}
	})
}

// TestFuzzCorpusFiles checks the committed seed corpus exists; with
// FSM_WRITE_FUZZ_CORPUS=1 it rewrites it from fuzzSeeds.
func TestFuzzCorpusFiles(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeAndApply")
	if os.Getenv("FSM_WRITE_FUZZ_CORPUS") == "1" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range fuzzSeeds(t) {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) < 10 {
		t.Fatalf("seed corpus in %s: %d files, %v", dir, len(entries), err)
	}
}
