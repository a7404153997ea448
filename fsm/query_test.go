package fsm

import (
	"errors"
	"testing"
	"time"
)

func TestCardQueries(t *testing.T) {
	const groups, size = 4, 3
	h := newHarness(t, nil)
	ents := sameGroupEnterprises(2, groups)
	h.setupCatalog(append(ents, "other")...)
	// Interleave the two enterprises of one group: shards hold both.
	p := ImportCards{Groups: groups, ShardSize: size}
	for i := 0; i < 8; i++ {
		p.Cards = append(p.Cards, CardImport{ICCID: iccid(i), Enterprise: ents[i%2]})
	}
	h.ok(p)
	h.importRange("other", 100, 102, 0, 0)

	if _, err := h.f.Card("bad"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad iccid: %v", err)
	}
	if _, err := h.f.Card(iccid(55)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing card: %v", err)
	}

	// Page through all cards, 3 at a time.
	var all []string
	after := ""
	for pages := 0; ; pages++ {
		cards, next, err := h.f.Cards(CardFilter{After: after, Limit: 3})
		if err != nil || pages > 10 {
			t.Fatalf("page %d: %v", pages, err)
		}
		for _, c := range cards {
			all = append(all, c.ICCID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(all) != 10 || all[0] != iccid(0) || all[9] != iccid(101) {
		t.Fatalf("all cards: %v", all)
	}

	byEnt, next, err := h.f.Cards(CardFilter{Enterprise: ents[1]})
	if err != nil || next != "" || len(byEnt) != 4 || byEnt[0].ICCID != iccid(1) || byEnt[3].ICCID != iccid(7) {
		t.Fatalf("enterprise cards: %v %q %v", byEnt, next, err)
	}
	g := GroupOf(ents[0], groups)
	shard0 := ShardID(g, 0)
	inShard, _, _ := h.f.Cards(CardFilter{Shard: shard0})
	if len(inShard) != size {
		t.Fatalf("shard cards: %v", inShard)
	}
	both, _, _ := h.f.Cards(CardFilter{Shard: shard0, Enterprise: ents[0]})
	if len(both) != 2 {
		t.Fatalf("shard+enterprise: %v", both)
	}
	rest, err := h.f.ShardCards(shard0, iccid(0), 10)
	if err != nil || len(rest) != 2 || rest[0].ICCID != iccid(1) {
		t.Fatalf("shard cards after: %v %v", rest, err)
	}

	// Shards: ordered by group then number, filters, history only from Shard.
	ep, _ := h.claimTask(shard0, "n1")
	all2, _ := h.f.Shards(ShardFilter{})
	for i := 1; i < len(all2); i++ {
		a, b := all2[i-1], all2[i]
		_, an, _ := ParseShardID(a.ID)
		_, bn, _ := ParseShardID(b.ID)
		if a.Group > b.Group || (a.Group == b.Group && an >= bn) {
			t.Fatalf("shards out of order: %s before %s", a.ID, b.ID)
		}
	}
	if grp, _ := h.f.Shards(ShardFilter{Group: &g}); len(grp) != 3 || len(grp[0].Enterprises) != 2 {
		t.Fatalf("group filter: %+v", grp)
	}
	if mine, _ := h.f.Shards(ShardFilter{Owner: "n1", State: StateRunning}); len(mine) != 1 || mine[0].ID != shard0 || mine[0].Epoch != ep {
		t.Fatalf("owner filter: %+v", mine)
	}
	if idle, _ := h.f.Shards(ShardFilter{State: StateIdle}); len(idle) != len(all2)-1 {
		t.Fatalf("state filter: %d of %d", len(idle), len(all2))
	}
	if _, err := h.f.Shard("g9-9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing shard: %v", err)
	}
	if s := h.shard(shard0); !s.LiveClaim(h.now) || s.LiveClaim(h.now.Add(time.Hour)) {
		t.Fatalf("live claim: %+v", s)
	}

	es, _ := h.f.Enterprises()
	as, _ := h.f.Accounts()
	if len(es) != 3 || len(as) != 2 || es[0].ID > es[1].ID {
		t.Fatalf("lists: %d enterprises %d accounts", len(es), len(as))
	}
	if e, _ := h.f.Enterprise(ents[0]); e.Cards != 4 {
		t.Fatalf("enterprise cards %d", e.Cards)
	}
	c, _ := h.f.Counts()
	if c.Cards != 10 || c.Claims != 1 || c.Enterprises != 3 {
		t.Fatalf("counts %+v", c)
	}
}

func TestClosedFSM(t *testing.T) {
	f := openTest(t, nil)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := f.Shards(ShardFilter{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("shards after close: %v", err)
	}
	if _, err := f.Snapshot(); !errors.Is(err, ErrClosed) {
		t.Fatalf("snapshot after close: %v", err)
	}
	resp := f.Apply(&rawLog(1, cmd(t, SetMaintenance{On: true}, t0))[0])
	if err, ok := resp.(error); !ok || !errors.Is(err, ErrClosed) {
		t.Fatalf("apply after close: %v", resp)
	}
	if g, s := f.Settings(); g != DefaultGroups || s != DefaultShardSize {
		t.Fatalf("settings after close: %d %d", g, s)
	}
}
