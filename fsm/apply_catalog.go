package fsm

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

func validCarrier(c string) bool {
	switch c {
	case CarrierOneLink, CarrierUnicom, CarrierTelecom, CarrierCisco:
		return true
	}
	return false
}

func (a *applier) upsertAccount(p *UpsertAccount) (*Result, error) {
	acc := p.Account
	if err := checkID("account", acc.ID); err != nil {
		return nil, err
	}
	switch {
	case !validCarrier(acc.Carrier):
		return nil, reject(ErrInvalid, "account %s: unknown carrier %q", acc.ID, acc.Carrier)
	case acc.TTL <= 0 || acc.TTL > maxTTL:
		return nil, reject(ErrInvalid, "account %s: ttl %s must be positive and at most %s", acc.ID, acc.TTL, maxTTL)
	case math.IsNaN(acc.RatePerSec) || math.IsInf(acc.RatePerSec, 0) || acc.RatePerSec < 0:
		return nil, reject(ErrInvalid, "account %s: rate %v must be a non-negative number", acc.ID, acc.RatePerSec)
	case acc.Burst < 0 || acc.Concurrency < 0 || acc.BatchSize < 0:
		return nil, reject(ErrInvalid, "account %s: burst, concurrency and batch size must not be negative", acc.ID)
	}
	if err := checkText("invalid reason", acc.InvalidReason); err != nil {
		return nil, err
	}
	old, err := a.account(acc.ID)
	if err != nil {
		return nil, err
	}
	if old == nil {
		acc.Version = 1
		if err := a.putAccount(&acc); err != nil {
			return nil, err
		}
		return &Result{Added: 1, Message: fmt.Sprintf("account %s version %d", acc.ID, acc.Version)}, nil
	}
	if old.Carrier != acc.Carrier {
		return nil, reject(ErrInvalid, "account %s: carrier cannot change from %s to %s", acc.ID, old.Carrier, acc.Carrier)
	}
	acc.Version = old.Version
	if acc == *old {
		return &Result{Message: fmt.Sprintf("account %s unchanged", acc.ID)}, nil
	}
	acc.Version++
	if err := a.putAccount(&acc); err != nil {
		return nil, err
	}
	return &Result{Updated: 1, Message: fmt.Sprintf("account %s version %d", acc.ID, acc.Version)}, nil
}

func (a *applier) setAccountStatus(p *SetAccountStatus) (*Result, error) {
	if err := checkID("account", p.Account); err != nil {
		return nil, err
	}
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}
	old, err := a.account(p.Account)
	if err != nil {
		return nil, err
	}
	if old == nil {
		return nil, reject(ErrNotFound, "account %s", p.Account)
	}
	acc := *old
	acc.CredentialsValid = p.Valid
	acc.InvalidReason = ""
	if !p.Valid {
		acc.InvalidReason = p.Reason
	}
	if acc == *old {
		return &Result{Message: fmt.Sprintf("account %s unchanged", acc.ID)}, nil
	}
	acc.Version++
	if err := a.putAccount(&acc); err != nil {
		return nil, err
	}
	return &Result{Updated: 1, Message: fmt.Sprintf("account %s version %d", acc.ID, acc.Version)}, nil
}

func (a *applier) upsertEnterprise(p *UpsertEnterprise) (*Result, error) {
	if err := checkID("enterprise", p.ID); err != nil {
		return nil, err
	}
	if err := checkText("name", p.Name); err != nil {
		return nil, err
	}
	for _, carrier := range slices.Sorted(maps.Keys(p.Accounts)) {
		id := p.Accounts[carrier]
		if !validCarrier(carrier) {
			return nil, reject(ErrInvalid, "enterprise %s: unknown carrier %q", p.ID, carrier)
		}
		acc, err := a.account(id)
		if err != nil {
			return nil, err
		}
		if acc == nil {
			return nil, reject(ErrNotFound, "enterprise %s: account %q for %s", p.ID, id, carrier)
		}
		if acc.Carrier != carrier {
			return nil, reject(ErrInvalid, "enterprise %s: account %s is a %s account, not %s", p.ID, id, acc.Carrier, carrier)
		}
	}
	old, err := a.enterprise(p.ID)
	if err != nil {
		return nil, err
	}
	accounts := maps.Clone(p.Accounts)
	if accounts == nil {
		accounts = map[string]string{}
	}
	if old == nil {
		e := &Enterprise{ID: p.ID, Name: p.Name, Accounts: accounts, InventoryReady: p.InventoryReady, InventoryVersion: 1}
		if err := a.putEnterprise(e); err != nil {
			return nil, err
		}
		return &Result{Added: 1, Message: fmt.Sprintf("enterprise %s inventory version 1", p.ID)}, nil
	}
	if old.Name == p.Name && old.InventoryReady == p.InventoryReady && maps.Equal(old.Accounts, accounts) {
		return &Result{Message: fmt.Sprintf("enterprise %s unchanged", p.ID)}, nil
	}
	old.Name, old.Accounts, old.InventoryReady = p.Name, accounts, p.InventoryReady
	old.InventoryVersion++
	if err := a.putEnterprise(old); err != nil {
		return nil, err
	}
	return &Result{Updated: 1, Message: fmt.Sprintf("enterprise %s inventory version %d", p.ID, old.InventoryVersion)}, nil
}

func (a *applier) setMaintenance(p *SetMaintenance) (*Result, error) {
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}
	m := maintenanceRec{On: p.On, Reason: p.Reason}
	if !p.On {
		m.Reason = ""
	}
	v, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := a.meta.Put(keyMaintenance, v); err != nil {
		return nil, err
	}
	return &Result{Updated: 1, Message: fmt.Sprintf("maintenance %t", p.On)}, nil
}

// maxProblems bounds the problems listed by a rejected import.
const maxProblems = 20

type problems struct {
	list  []string
	total int
}

func (p *problems) add(i int, format string, args ...any) {
	p.total++
	if len(p.list) < maxProblems {
		p.list = append(p.list, fmt.Sprintf("[%d] ", i)+fmt.Sprintf(format, args...))
	}
}

func (p *problems) err(what string) error {
	more := ""
	if p.total > len(p.list) {
		more = fmt.Sprintf("; and %d more", p.total-len(p.list))
	}
	return reject(ErrInvalid, "%s: %d problems: %s%s", what, p.total, strings.Join(p.list, "; "), more)
}

const maxFieldLen = 32

func checkCardField(what, v string) string {
	if len(v) > maxFieldLen {
		return fmt.Sprintf("%s is %d bytes, at most %d", what, len(v), maxFieldLen)
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] >= 0x7f {
			return fmt.Sprintf("%s %q has a character other than printable ASCII", what, v)
		}
	}
	return ""
}

// importCards adds and updates cards, all or nothing.
func (a *applier) importCards(p *ImportCards) (*Result, error) {
	if len(p.Cards) == 0 {
		return nil, reject(ErrInvalid, "import has no cards")
	}
	settings, stored, err := readSettings(a.meta)
	if err != nil {
		return nil, err
	}
	if !stored {
		if p.Groups != 0 {
			settings.Groups = p.Groups
		}
		if p.ShardSize != 0 {
			settings.ShardSize = p.ShardSize
		}
		if settings.Groups < 1 || settings.Groups > MaxGroups {
			return nil, reject(ErrInvalid, "groups %d must be 1..%d", settings.Groups, MaxGroups)
		}
		if settings.ShardSize < 1 || settings.ShardSize > MaxShardSize {
			return nil, reject(ErrInvalid, "shard size %d must be 1..%d", settings.ShardSize, MaxShardSize)
		}
	}

	// Validate every card before writing anything.
	type item struct {
		idx   int
		iccid string
		acct  string
		shard string // existing card: its shard
		old   *cardRec
	}
	var probs problems
	items := make([]item, 0, len(p.Cards))
	seen := make(map[string]int, len(p.Cards))
	ents := map[string]*Enterprise{}
	for i, c := range p.Cards {
		iccid, ok := normICCID(c.ICCID)
		if !ok {
			probs.add(i, "ICCID %q is not 19-20 hex digits", c.ICCID)
			continue
		}
		if j, dup := seen[iccid]; dup {
			probs.add(i, "ICCID %s repeats card %d", iccid, j)
			continue
		}
		seen[iccid] = i
		bad := ""
		for _, f := range [...]struct{ name, v string }{{"msisdn", c.MSISDN}, {"imsi", c.IMSI}, {"imei", c.IMEI}} {
			if msg := checkCardField(f.name, f.v); msg != "" {
				bad = msg
				break
			}
		}
		if bad != "" {
			probs.add(i, "%s: %s", iccid, bad)
			continue
		}
		ent, cached := ents[c.Enterprise]
		if !cached {
			if checkID("enterprise", c.Enterprise) == nil {
				if ent, err = a.enterprise(c.Enterprise); err != nil {
					return nil, err
				}
			}
			ents[c.Enterprise] = ent
		}
		if ent == nil {
			probs.add(i, "%s: enterprise %q does not exist", iccid, c.Enterprise)
			continue
		}
		acct := c.Account
		if acct == "" && len(ent.Accounts) == 1 {
			for _, only := range ent.Accounts {
				acct = only
			}
		}
		if !hasAccount(ent, acct) {
			probs.add(i, "%s: account %q is not an account of enterprise %s", iccid, acct, ent.ID)
			continue
		}
		if acc, err := a.account(acct); err != nil {
			return nil, err
		} else if acc == nil {
			probs.add(i, "%s: account %q does not exist", iccid, acct)
			continue
		}
		it := item{idx: i, iccid: iccid, acct: acct}
		if sh := a.iccids.Get([]byte(iccid)); sh != nil {
			it.shard = string(sh)
			v := a.cards.Get(joinKey(it.shard, iccid))
			if v == nil {
				return nil, fmt.Errorf("card %s indexed in shard %s but missing", iccid, it.shard)
			}
			it.old = new(cardRec)
			if err := it.old.decode(v); err != nil {
				return nil, fmt.Errorf("card %s: %w", iccid, err)
			}
			if it.old.Enterprise != c.Enterprise {
				probs.add(i, "%s already belongs to enterprise %s", iccid, it.old.Enterprise)
				continue
			}
		}
		items = append(items, it)
	}
	if probs.total > 0 {
		return nil, probs.err("import rejected")
	}

	if !stored {
		v, err := json.Marshal(settings)
		if err != nil {
			return nil, err
		}
		if err := a.meta.Put(keySettings, v); err != nil {
			return nil, err
		}
	}

	// Existing cards first (request order), then new cards in ICCID order so that a
	// large import fills shards with contiguous ICCID ranges.
	touched := map[string]int{} // enterprise -> cards added
	changedEnt := map[string]bool{}
	shardCache := map[string]*shardRec{}
	var added, updated int
	var fresh []item
	for _, it := range items {
		c := &p.Cards[it.idx]
		if it.old == nil {
			fresh = append(fresh, it)
			continue
		}
		o := it.old
		if o.Account == it.acct && o.MSISDN == c.MSISDN && o.IMSI == c.IMSI && o.IMEI == c.IMEI {
			continue
		}
		if o.Account != it.acct {
			s, err := a.cachedShard(shardCache, it.shard, 0, 0, nil)
			if err != nil {
				return nil, err
			}
			s.addAccount(o.Account, -1)
			s.addAccount(it.acct, 1)
		}
		o.Account, o.MSISDN, o.IMSI, o.IMEI = it.acct, c.MSISDN, c.IMSI, c.IMEI
		a.scratch = o.encode(a.scratch)
		if err := a.cards.Put(joinKey(it.shard, it.iccid), a.keep(a.scratch)); err != nil {
			return nil, err
		}
		updated++
		changedEnt[o.Enterprise] = true
	}
	slices.SortFunc(fresh, func(x, y item) int { return strings.Compare(x.iccid, y.iccid) })

	groupCache := map[int]*groupRec{}
	newShards := 0
	for _, it := range fresh {
		c := &p.Cards[it.idx]
		g := GroupOf(c.Enterprise, settings.Groups)
		gr, ok := groupCache[g]
		if !ok {
			if gr, err = a.group(g); err != nil {
				return nil, err
			}
			groupCache[g] = gr
		}
		id := ShardID(g, gr.OpenN)
		s, err := a.cachedShard(shardCache, id, g, gr.OpenN, &newShards)
		if err != nil {
			return nil, err
		}
		if s.Cards >= settings.ShardSize {
			gr.OpenN++
			id = ShardID(g, gr.OpenN)
			if s, err = a.cachedShard(shardCache, id, g, gr.OpenN, &newShards); err != nil {
				return nil, err
			}
		}
		rec := cardRec{Enterprise: c.Enterprise, Account: it.acct, MSISDN: c.MSISDN, IMSI: c.IMSI, IMEI: c.IMEI, Group: g}
		a.scratch = rec.encode(a.scratch)
		if err := a.cards.Put(joinKey(id, it.iccid), a.keep(a.scratch)); err != nil {
			return nil, err
		}
		if err := a.iccids.Put([]byte(it.iccid), []byte(id)); err != nil {
			return nil, err
		}
		if err := a.entCards.Put(joinKey(c.Enterprise, it.iccid), nil); err != nil {
			return nil, err
		}
		s.Cards++
		s.addAccount(it.acct, 1)
		if i, found := slices.BinarySearch(s.Enterprises, c.Enterprise); !found {
			s.Enterprises = slices.Insert(s.Enterprises, i, c.Enterprise)
		}
		s.NextRunAt = a.now
		touched[c.Enterprise]++
		changedEnt[c.Enterprise] = true
		added++
	}
	for _, id := range slices.Sorted(maps.Keys(shardCache)) {
		if err := a.putShard(id, shardCache[id]); err != nil {
			return nil, err
		}
	}
	for _, g := range slices.Sorted(maps.Keys(groupCache)) {
		if err := a.putGroup(g, groupCache[g]); err != nil {
			return nil, err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(changedEnt)) {
		e := ents[id]
		e.InventoryVersion++
		e.Cards += touched[id]
		if err := a.putEnterprise(e); err != nil {
			return nil, err
		}
	}
	if added > 0 {
		if err := a.addCounter(keyNumCards, added); err != nil {
			return nil, err
		}
	}
	if newShards > 0 {
		if err := a.addCounter(keyNumShards, newShards); err != nil {
			return nil, err
		}
	}
	return &Result{Added: added, Updated: updated,
		Message: fmt.Sprintf("%d cards added, %d updated, %d new shards", added, updated, newShards)}, nil
}

func hasAccount(e *Enterprise, acct string) bool {
	for _, id := range e.Accounts {
		if id == acct {
			return true
		}
	}
	return false
}

// cachedShard returns a shard from the import's cache, the database, or a new one.
func (a *applier) cachedShard(cache map[string]*shardRec, id string, g, n int, created *int) (*shardRec, error) {
	if s, ok := cache[id]; ok {
		return s, nil
	}
	s := &shardRec{Group: g, N: n, State: stIdle}
	if v := a.shards.Get([]byte(id)); v != nil {
		if err := s.decode(v); err != nil {
			return nil, fmt.Errorf("shard %s: %w", id, err)
		}
	} else if created != nil {
		*created++
	}
	cache[id] = s
	return s, nil
}

// resync makes the selected cards due now.
func (a *applier) resync(p *Resync) (*Result, error) {
	if len(p.ICCIDs) == 0 && p.Shard == "" && p.Enterprise == "" {
		return nil, reject(ErrInvalid, "resync names no cards, shard or enterprise")
	}
	type target struct{ shard, iccid string }
	var targets []target
	var probs problems
	for i, raw := range p.ICCIDs {
		iccid, ok := normICCID(raw)
		if !ok {
			probs.add(i, "ICCID %q is not 19-20 hex digits", raw)
			continue
		}
		sh := a.iccids.Get([]byte(iccid))
		if sh == nil {
			probs.add(i, "card %s does not exist", iccid)
			continue
		}
		targets = append(targets, target{string(sh), iccid})
	}
	if probs.total > 0 {
		return nil, probs.err("resync rejected")
	}
	if p.Shard != "" {
		if a.shards.Get([]byte(p.Shard)) == nil {
			return nil, reject(ErrNotFound, "shard %s", p.Shard)
		}
		prefix := prefixKey(p.Shard)
		c := a.cards.Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			targets = append(targets, target{p.Shard, string(k[len(prefix):])})
		}
	}
	if p.Enterprise != "" {
		if a.enterprises.Get([]byte(p.Enterprise)) == nil {
			return nil, reject(ErrNotFound, "enterprise %s", p.Enterprise)
		}
		prefix := prefixKey(p.Enterprise)
		c := a.entCards.Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			iccid := string(k[len(prefix):])
			sh := a.iccids.Get([]byte(iccid))
			if sh == nil {
				return nil, fmt.Errorf("card %s of enterprise %s has no shard", iccid, p.Enterprise)
			}
			targets = append(targets, target{string(sh), iccid})
		}
	}
	slices.SortFunc(targets, func(x, y target) int {
		if c := strings.Compare(x.shard, y.shard); c != 0 {
			return c
		}
		return strings.Compare(x.iccid, y.iccid)
	})
	targets = slices.Compact(targets)
	shards := map[string]bool{}
	var rec cardRec
	for _, t := range targets {
		key := joinKey(t.shard, t.iccid)
		v := a.cards.Get(key)
		if v == nil {
			return nil, fmt.Errorf("card %s missing from shard %s", t.iccid, t.shard)
		}
		if err := rec.decode(v); err != nil {
			return nil, fmt.Errorf("card %s: %w", t.iccid, err)
		}
		shards[t.shard] = true
		if rec.ValidUntil == 0 {
			continue
		}
		rec.ValidUntil = 0
		a.scratch = rec.encode(a.scratch)
		if err := a.cards.Put(key, a.keep(a.scratch)); err != nil {
			return nil, err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(shards)) {
		s, err := a.shard(id)
		if err != nil {
			return nil, err
		}
		s.NextRunAt = a.now
		if err := a.putShard(id, s); err != nil {
			return nil, err
		}
	}
	return &Result{Updated: len(targets), Message: fmt.Sprintf("%d cards in %d shards due now", len(targets), len(shards))}, nil
}
