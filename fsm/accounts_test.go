package fsm

import (
	"slices"
	"testing"
)

// TestShardAccountCounts checks that a shard counts its cards per carrier account through
// imports and account changes, and that a record without the counts (written before they
// were kept) shows none rather than wrong ones.
func TestShardAccountCounts(t *testing.T) {
	h := newHarness(t, nil)
	h.setupCatalog()
	h.ok(UpsertEnterprise{ID: "ent-a", Name: "A", InventoryReady: true,
		Accounts: map[string]string{CarrierOneLink: "acc-1", CarrierUnicom: "acc-2"}})
	p := ImportCards{Groups: 1, ShardSize: 10}
	for i := 0; i < 5; i++ {
		acct := "acc-1"
		if i >= 3 {
			acct = "acc-2"
		}
		p.Cards = append(p.Cards, CardImport{ICCID: iccid(i), Enterprise: "ent-a", Account: acct})
	}
	h.ok(p)
	id := h.card(iccid(0)).Shard
	tests := []struct {
		name   string
		change []CardImport
		want   []AccountCards
	}{
		{"after import", nil, []AccountCards{{"acc-1", 3}, {"acc-2", 2}}},
		{"card moved to another account", []CardImport{{ICCID: iccid(0), Enterprise: "ent-a", Account: "acc-2"}}, []AccountCards{{"acc-1", 2}, {"acc-2", 3}}},
		{"same account again changes nothing", []CardImport{{ICCID: iccid(0), Enterprise: "ent-a", Account: "acc-2"}}, []AccountCards{{"acc-1", 2}, {"acc-2", 3}}},
		{"every card on one account", []CardImport{{ICCID: iccid(1), Enterprise: "ent-a", Account: "acc-2"}, {ICCID: iccid(2), Enterprise: "ent-a", Account: "acc-2"}}, []AccountCards{{"acc-2", 5}}},
	}
	for _, tc := range tests {
		if tc.change != nil {
			h.ok(ImportCards{Cards: tc.change})
		}
		if got := h.shard(id).Accounts; !slices.Equal(got, tc.want) {
			t.Fatalf("%s: accounts %v, want %v", tc.name, got, tc.want)
		}
	}

	// Records round-trip with and without the counts.
	rec := shardRec{Group: 1, N: 2, Cards: 5, Enterprises: []string{"ent-a"}, Reason: "r"}
	for _, accts := range [][]AccountCards{nil, {{"acc-1", 2}, {"acc-2", 3}}, {{"acc-1", 2}}} {
		rec.Accounts = accts
		var back shardRec
		if err := back.decode(rec.encode(nil)); err != nil {
			t.Fatalf("decode %v: %v", accts, err)
		}
		if len(back.Accounts) != len(accts) || back.Reason != "r" {
			t.Fatalf("round trip of %v: %+v", accts, back)
		}
		pub := back.public("s").Accounts
		complete := len(accts) == 2
		if complete != (pub != nil) {
			t.Fatalf("counts %v for 5 cards: public %v", accts, pub)
		}
	}
	// A truncated trailer is a corrupt record, not a silent zero.
	rec.Accounts = []AccountCards{{"acc-1", 5}}
	b := rec.encode(nil)
	var back shardRec
	if err := back.decode(b[:len(b)-1]); err == nil {
		t.Fatalf("truncated record decoded: %+v", back)
	}
}
