package fsm

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestUpsertAccount(t *testing.T) {
	h := newHarness(t, nil)
	base := Account{ID: "acc", Carrier: CarrierTelecom, TTL: time.Hour, RatePerSec: 5, Burst: 5, Concurrency: 1, BatchSize: 100, CredentialsValid: true}
	mod := func(f func(*Account)) Account { a := base; f(&a); return a }
	tests := []struct {
		name    string
		acc     Account
		want    error
		version uint64
	}{
		{"new", base, nil, 1},
		{"unchanged", base, nil, 1},
		{"version in payload ignored", mod(func(a *Account) { a.Version = 99 }), nil, 1},
		{"changed rate", mod(func(a *Account) { a.RatePerSec = 7 }), nil, 2},
		{"carrier change", mod(func(a *Account) { a.Carrier = CarrierCisco }), ErrInvalid, 2},
		{"unknown carrier", mod(func(a *Account) { a.ID = "x"; a.Carrier = "att" }), ErrInvalid, 0},
		{"zero ttl", mod(func(a *Account) { a.ID = "x"; a.TTL = 0 }), ErrInvalid, 0},
		{"negative burst", mod(func(a *Account) { a.ID = "x"; a.Burst = -1 }), ErrInvalid, 0},
		{"empty id", mod(func(a *Account) { a.ID = "" }), ErrInvalid, 0},
		{"id with space", mod(func(a *Account) { a.ID = "a b" }), ErrInvalid, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			if tc.want != nil {
				h.fail(UpsertAccount{Account: tc.acc}, tc.want)
			} else {
				h.ok(UpsertAccount{Account: tc.acc})
			}
			if tc.version > 0 {
				got, err := h.f.Account("acc")
				if err != nil || got.Version != tc.version {
					t.Fatalf("version %d (%v), want %d", got.Version, err, tc.version)
				}
			}
		})
	}
	if _, err := h.f.Account("x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rejected account stored: %v", err)
	}
}

func TestSetAccountStatus(t *testing.T) {
	h := newHarness(t, nil)
	h.setupCatalog()
	h.fail(SetAccountStatus{Account: "nope"}, ErrNotFound)
	h.ok(SetAccountStatus{Account: "acc-1", Valid: false, Reason: "password expired"})
	a, _ := h.f.Account("acc-1")
	if a.CredentialsValid || a.InvalidReason != "password expired" || a.Version != 2 {
		t.Fatalf("after invalid: %+v", a)
	}
	h.ok(SetAccountStatus{Account: "acc-1", Valid: false, Reason: "password expired"})
	if a, _ = h.f.Account("acc-1"); a.Version != 2 {
		t.Fatalf("repeat bumped version: %+v", a)
	}
	h.ok(SetAccountStatus{Account: "acc-1", Valid: true})
	if a, _ = h.f.Account("acc-1"); !a.CredentialsValid || a.InvalidReason != "" || a.Version != 3 {
		t.Fatalf("after valid: %+v", a)
	}
}

func TestUpsertEnterprise(t *testing.T) {
	h := newHarness(t, nil)
	h.setupCatalog()
	tests := []struct {
		name    string
		p       UpsertEnterprise
		want    error
		version uint64
	}{
		{"new", UpsertEnterprise{ID: "e", Name: "E", Accounts: map[string]string{CarrierOneLink: "acc-1"}}, nil, 1},
		{"unchanged", UpsertEnterprise{ID: "e", Name: "E", Accounts: map[string]string{CarrierOneLink: "acc-1"}}, nil, 1},
		{"ready", UpsertEnterprise{ID: "e", Name: "E", Accounts: map[string]string{CarrierOneLink: "acc-1"}, InventoryReady: true}, nil, 2},
		{"second carrier", UpsertEnterprise{ID: "e", Name: "E", Accounts: map[string]string{CarrierOneLink: "acc-1", CarrierUnicom: "acc-2"}, InventoryReady: true}, nil, 3},
		{"missing account", UpsertEnterprise{ID: "e", Accounts: map[string]string{CarrierOneLink: "nope"}}, ErrNotFound, 3},
		{"carrier mismatch", UpsertEnterprise{ID: "e", Accounts: map[string]string{CarrierTelecom: "acc-1"}}, ErrInvalid, 3},
		{"unknown carrier", UpsertEnterprise{ID: "e", Accounts: map[string]string{"att": "acc-1"}}, ErrInvalid, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			if tc.want != nil {
				h.fail(tc.p, tc.want)
			} else {
				h.ok(tc.p)
			}
			e, err := h.f.Enterprise("e")
			if err != nil || e.InventoryVersion != tc.version {
				t.Fatalf("inventory version %d (%v), want %d", e.InventoryVersion, err, tc.version)
			}
		})
	}
}

func TestImportAllOrNothing(t *testing.T) {
	h := newHarness(t, nil)
	h.setupCatalog("e1", "e2")
	h.ok(UpsertEnterprise{ID: "e3", Accounts: map[string]string{CarrierUnicom: "acc-2"}})
	h.importRange("e1", 0, 3, 4, 10)
	before, _ := h.f.Counts()
	_, d1, _ := h.f.Digest()

	bad := ImportCards{Cards: []CardImport{
		{ICCID: iccid(100), Enterprise: "e1", Account: "acc-1"},   // fine
		{ICCID: "12345", Enterprise: "e1", Account: "acc-1"},      // [1] short ICCID
		{ICCID: iccid(101), Enterprise: "nope", Account: "acc-1"}, // [2] unknown enterprise
		{ICCID: iccid(102), Enterprise: "e1", Account: "acc-2"},   // [3] not e1's account
		{ICCID: iccid(100), Enterprise: "e1", Account: "acc-1"},   // [4] duplicate
		{ICCID: iccid(1), Enterprise: "e2", Account: "acc-1"},     // [5] owned by e1
		{ICCID: iccid(103), Enterprise: "e1", IMEI: "has space"},  // [6] bad IMEI
		{ICCID: "8986ZZ00000000000000", Enterprise: "e1"},         // [7] not hex
		{ICCID: iccid(104), Enterprise: "e3", Account: "acc-1"},   // [8] not e3's account
	}}
	err := h.fail(bad, ErrInvalid)
	for _, want := range []string{"8 problems", "[1]", "[2]", "[3]", "[4]", "[5]", "[6]", "[7]", "[8]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	after, _ := h.f.Counts()
	_, d2, _ := h.f.Digest()
	if before != after {
		t.Fatalf("counts changed by rejected import: %+v -> %+v", before, after)
	}
	// The digest moved only by the applied index.
	if d1 == d2 {
		t.Log("digest covers the applied index, so it changes")
	}
	if _, err := h.f.Card(iccid(100)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("card of rejected import stored: %v", err)
	}

	// Many problems: the message is capped.
	var many ImportCards
	for i := 0; i < 50; i++ {
		many.Cards = append(many.Cards, CardImport{ICCID: "x", Enterprise: "e1"})
	}
	err = h.fail(many, ErrInvalid)
	if !strings.Contains(err.Error(), "50 problems") || !strings.Contains(err.Error(), "and 30 more") || strings.Contains(err.Error(), "[20]") {
		t.Fatalf("capped problems: %v", err)
	}
	h.fail(ImportCards{}, ErrInvalid)
}

func TestImportShardAssignment(t *testing.T) {
	const groups, size = 8, 3
	h := newHarness(t, nil)
	ents := sameGroupEnterprises(2, groups)
	h.setupCatalog(ents...)
	g := GroupOf(ents[0], groups)

	// 5 cards: g-0 holds 3, g-1 holds 2. Lower-case ICCIDs are upper-cased.
	p := ImportCards{Groups: groups, ShardSize: size}
	for i := 0; i < 5; i++ {
		p.Cards = append(p.Cards, CardImport{ICCID: strings.ToLower("8986ABCD00000000000" + string(rune('0'+i))), Enterprise: ents[0]})
	}
	if r := h.ok(p); r.Added != 5 {
		t.Fatalf("added %d", r.Added)
	}
	first := map[string]string{}
	for i := 0; i < 5; i++ {
		c := h.card("8986abcd00000000000" + string(rune('0'+i)))
		first[c.ICCID] = c.Shard
		wantShard := ShardID(g, i/size)
		if c.Shard != wantShard || c.Group != g || c.Account != "acc-1" {
			t.Fatalf("card %d: %+v, want shard %s", i, c, wantShard)
		}
		if !c.ValidUntil.IsZero() {
			t.Fatalf("new card not due: %v", c.ValidUntil)
		}
	}
	s1 := h.shard(ShardID(g, 1))
	if s1.Cards != 2 || !s1.Checkpoint.NextRunAt.Equal(h.now) || s1.Checkpoint.State != StateIdle {
		t.Fatalf("shard 1: %+v", s1)
	}

	// Inventory grows with another enterprise of the same group and different settings:
	// stored settings win, old cards keep their shards, the open shard fills first.
	h.advance(time.Minute)
	p = ImportCards{Groups: 99, ShardSize: 1000}
	for i := 0; i < 3; i++ {
		p.Cards = append(p.Cards, CardImport{ICCID: iccid(i), Enterprise: ents[1]})
	}
	h.ok(p)
	if gs, ss := h.f.Settings(); gs != groups || ss != size {
		t.Fatalf("settings %d %d", gs, ss)
	}
	for id, shard := range first {
		if c := h.card(id); c.Shard != shard {
			t.Fatalf("card %s moved from %s to %s", id, shard, c.Shard)
		}
	}
	if c := h.card(iccid(0)); c.Shard != ShardID(g, 1) {
		t.Fatalf("first new card in %s, want the open shard", c.Shard)
	}
	s1 = h.shard(ShardID(g, 1))
	if s1.Cards != 3 || len(s1.Enterprises) != 2 || !s1.Checkpoint.NextRunAt.Equal(h.now) {
		t.Fatalf("shard 1 after growth: %+v", s1)
	}
	if s2 := h.shard(ShardID(g, 2)); s2.Cards != 2 {
		t.Fatalf("shard 2: %+v", s2)
	}
	counts, _ := h.f.Counts()
	if counts.Cards != 8 || counts.Shards != 3 || counts.Enterprises != 2 || counts.Accounts != 2 {
		t.Fatalf("counts %+v", counts)
	}

	// Re-import by the same enterprise updates fields only; by another is rejected.
	e0, _ := h.f.Enterprise(ents[1])
	r := h.ok(ImportCards{Cards: []CardImport{{ICCID: iccid(0), Enterprise: ents[1], MSISDN: "861390000"}, {ICCID: iccid(1), Enterprise: ents[1]}}})
	if r.Added != 0 || r.Updated != 1 {
		t.Fatalf("re-import result %+v", r)
	}
	if c := h.card(iccid(0)); c.MSISDN != "861390000" || c.Shard != ShardID(g, 1) {
		t.Fatalf("re-imported card %+v", c)
	}
	if e1, _ := h.f.Enterprise(ents[1]); e1.InventoryVersion != e0.InventoryVersion+1 || e1.Cards != 3 {
		t.Fatalf("inventory version %d -> %d, cards %d", e0.InventoryVersion, e1.InventoryVersion, e1.Cards)
	}
	h.fail(ImportCards{Cards: []CardImport{{ICCID: iccid(0), Enterprise: ents[0]}}}, ErrInvalid)
}

func TestImportSettingsValidated(t *testing.T) {
	h := newHarness(t, nil)
	h.setupCatalog("e")
	h.fail(ImportCards{Groups: -1, Cards: []CardImport{{ICCID: iccid(1), Enterprise: "e"}}}, ErrInvalid)
	h.fail(ImportCards{ShardSize: MaxShardSize + 1, Cards: []CardImport{{ICCID: iccid(1), Enterprise: "e"}}}, ErrInvalid)
	h.ok(ImportCards{Cards: []CardImport{{ICCID: iccid(1), Enterprise: "e"}}})
	if g, s := h.f.Settings(); g != DefaultGroups || s != DefaultShardSize {
		t.Fatalf("defaults not stored: %d %d", g, s)
	}
}
