package fsm

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"time"
)

// Stored records use a small hand-written binary format: a version byte, then fields as
// varints and length-prefixed strings. It is deterministic (same record, same bytes),
// compact, and several times faster than reflection-based codecs on the flush path.

const recordVersion = 1

var errCorruptRecord = errors.New("corrupt record")

type wbuf struct{ b []byte }

func (w *wbuf) byte1(v byte)  { w.b = append(w.b, v) }
func (w *wbuf) u64(v uint64)  { w.b = binary.AppendUvarint(w.b, v) }
func (w *wbuf) i64(v int64)   { w.b = binary.AppendVarint(w.b, v) }
func (w *wbuf) fixed(v int64) { w.b = binary.BigEndian.AppendUint64(w.b, uint64(v)) }
func (w *wbuf) str(s string)  { w.u64(uint64(len(s))); w.b = append(w.b, s...) }

type rbuf struct {
	b   []byte
	err error
}

func (r *rbuf) fail() {
	if r.err == nil {
		r.err = errCorruptRecord
	}
	r.b = nil
}

func (r *rbuf) byte1() byte {
	if len(r.b) < 1 {
		r.fail()
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *rbuf) u64() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *rbuf) i64() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *rbuf) fixed() int64 {
	if len(r.b) < 8 {
		r.fail()
		return 0
	}
	v := int64(binary.BigEndian.Uint64(r.b))
	r.b = r.b[8:]
	return v
}

func (r *rbuf) str() string {
	n := r.u64()
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail()
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *rbuf) int() int {
	v := r.u64()
	if v > math.MaxInt32 {
		r.fail()
		return 0
	}
	return int(v)
}

// Times are stored as int64 Unix nanoseconds, 0 meaning the zero time. Times before 1678
// or after 2262 (outside int64 nanoseconds) are clamped.

var (
	minTime = time.Unix(0, math.MinInt64+1)
	maxTime = time.Unix(0, math.MaxInt64)
)

func toNanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Before(minTime):
		return math.MinInt64 + 1
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// addNanos adds a duration to a stamp, saturating instead of overflowing.
func addNanos(at int64, d time.Duration) int64 {
	s := at + int64(d)
	if d > 0 && s < at {
		return math.MaxInt64
	}
	if d < 0 && s > at {
		return math.MinInt64 + 1
	}
	return s
}

// dataRec is CardData as stored.
type dataRec struct {
	Status, RawStatus, RatePlan string
	DataUsedBytes               int64
	UsagePeriod                 string
	ActivatedAt, ModifiedAt     int64
}

func dataFrom(d CardData) dataRec {
	return dataRec{
		Status: d.Status, RawStatus: d.RawStatus, RatePlan: d.RatePlan,
		DataUsedBytes: d.DataUsedBytes, UsagePeriod: d.UsagePeriod,
		ActivatedAt: toNanos(d.ActivatedAt), ModifiedAt: toNanos(d.CarrierModifiedAt),
	}
}

func (d dataRec) public() CardData {
	return CardData{
		Status: d.Status, RawStatus: d.RawStatus, RatePlan: d.RatePlan,
		DataUsedBytes: d.DataUsedBytes, UsagePeriod: d.UsagePeriod,
		ActivatedAt: fromNanos(d.ActivatedAt), CarrierModifiedAt: fromNanos(d.ModifiedAt),
	}
}

func (w *wbuf) data(d *dataRec) {
	w.str(d.Status)
	w.str(d.RawStatus)
	w.str(d.RatePlan)
	w.i64(d.DataUsedBytes)
	w.str(d.UsagePeriod)
	w.i64(d.ActivatedAt)
	w.i64(d.ModifiedAt)
}

func (r *rbuf) data(d *dataRec) {
	d.Status = r.str()
	d.RawStatus = r.str()
	d.RatePlan = r.str()
	d.DataUsedBytes = r.i64()
	d.UsagePeriod = r.str()
	d.ActivatedAt = r.i64()
	d.ModifiedAt = r.i64()
}

// cardRec is a card as stored under shard\x00ICCID (ICCID and shard come from the key).
// ValidUntil sits at a fixed offset so that a shard scan can read it without decoding.
type cardRec struct {
	ValidUntil             int64
	Enterprise, Account    string
	MSISDN, IMSI, IMEI     string
	Group                  int
	Data                   dataRec
	ErrKind, ErrMsg        string
	SyncedAt               int64
	SyncedEpoch, SyncCount uint64
}

func (c *cardRec) encode(buf []byte) []byte {
	w := wbuf{b: buf[:0]}
	w.byte1(recordVersion)
	w.fixed(c.ValidUntil)
	w.str(c.Enterprise)
	w.str(c.Account)
	w.str(c.MSISDN)
	w.str(c.IMSI)
	w.str(c.IMEI)
	w.u64(uint64(c.Group))
	w.data(&c.Data)
	w.str(c.ErrKind)
	w.str(c.ErrMsg)
	w.i64(c.SyncedAt)
	w.u64(c.SyncedEpoch)
	w.u64(c.SyncCount)
	return w.b
}

func (c *cardRec) decode(b []byte) error {
	r := rbuf{b: b}
	if r.byte1() != recordVersion {
		return errCorruptRecord
	}
	c.ValidUntil = r.fixed()
	c.Enterprise = r.str()
	c.Account = r.str()
	c.MSISDN = r.str()
	c.IMSI = r.str()
	c.IMEI = r.str()
	c.Group = r.int()
	r.data(&c.Data)
	c.ErrKind = r.str()
	c.ErrMsg = r.str()
	c.SyncedAt = r.i64()
	c.SyncedEpoch = r.u64()
	c.SyncCount = r.u64()
	return r.err
}

// cardValidUntil reads only the ValidUntil of an encoded card.
func cardValidUntil(b []byte) (int64, bool) {
	if len(b) < 9 || b[0] != recordVersion {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(b[1:9])), true
}

func (c *cardRec) public(iccid, shard string) Card {
	return Card{
		ICCID: iccid, Enterprise: c.Enterprise, Account: c.Account,
		MSISDN: c.MSISDN, IMSI: c.IMSI, IMEI: c.IMEI, Shard: shard, Group: c.Group,
		Data: c.Data.public(), ErrKind: c.ErrKind, ErrMsg: c.ErrMsg,
		SyncedAt: fromNanos(c.SyncedAt), ValidUntil: fromNanos(c.ValidUntil),
		SyncedEpoch: c.SyncedEpoch, SyncCount: c.SyncCount,
	}
}

// task states as stored.
const (
	stIdle byte = iota
	stRunning
	stDone
)

func stateName(s byte) string {
	switch s {
	case stRunning:
		return StateRunning
	case stDone:
		return StateDone
	}
	return StateIdle
}

// shardRec is a shard's whole mutable state in one small record.
type shardRec struct {
	Group, N    int
	Cards       int
	Enterprises []string // sorted
	Epoch       uint64
	Owner       string
	LeaseUntil  int64
	// checkpoint
	TaskID                  uint64
	State                   byte
	Cursor                  string
	Synced, Skipped, Failed uint64
	DepVersion              uint64
	StartedAt, UpdatedAt    int64
	NextRunAt               int64
	Reason                  string
	// Accounts counts the shard's cards per carrier account, sorted by account. Records
	// written before it existed have none (nil): readers then fall back to the
	// enterprises' accounts.
	Accounts []AccountCards
}

// addAccount adds n (which may be negative) to the shard's count of account's cards.
func (s *shardRec) addAccount(account string, n int) {
	i, found := slices.BinarySearchFunc(s.Accounts, account, func(c AccountCards, a string) int { return strings.Compare(c.Account, a) })
	if !found {
		s.Accounts = slices.Insert(s.Accounts, i, AccountCards{Account: account})
	}
	s.Accounts[i].Cards += n
	if s.Accounts[i].Cards <= 0 {
		s.Accounts = slices.Delete(s.Accounts, i, i+1)
	}
}

func (s *shardRec) encode(buf []byte) []byte {
	w := wbuf{b: buf[:0]}
	w.byte1(recordVersion)
	w.u64(uint64(s.Group))
	w.u64(uint64(s.N))
	w.u64(uint64(s.Cards))
	w.u64(uint64(len(s.Enterprises)))
	for _, e := range s.Enterprises {
		w.str(e)
	}
	w.u64(s.Epoch)
	w.str(s.Owner)
	w.i64(s.LeaseUntil)
	w.u64(s.TaskID)
	w.byte1(s.State)
	w.str(s.Cursor)
	w.u64(s.Synced)
	w.u64(s.Skipped)
	w.u64(s.Failed)
	w.u64(s.DepVersion)
	w.i64(s.StartedAt)
	w.i64(s.UpdatedAt)
	w.i64(s.NextRunAt)
	w.str(s.Reason)
	// Optional trailer: the per-account card counts.
	if len(s.Accounts) > 0 {
		w.u64(uint64(len(s.Accounts)))
		for _, c := range s.Accounts {
			w.str(c.Account)
			w.u64(uint64(c.Cards))
		}
	}
	return w.b
}

func (s *shardRec) decode(b []byte) error {
	r := rbuf{b: b}
	if r.byte1() != recordVersion {
		return errCorruptRecord
	}
	s.Group = r.int()
	s.N = r.int()
	s.Cards = r.int()
	n := r.int()
	if n > len(r.b) {
		return errCorruptRecord
	}
	s.Enterprises = make([]string, n)
	for i := range s.Enterprises {
		s.Enterprises[i] = r.str()
	}
	s.Epoch = r.u64()
	s.Owner = r.str()
	s.LeaseUntil = r.i64()
	s.TaskID = r.u64()
	s.State = r.byte1()
	s.Cursor = r.str()
	s.Synced = r.u64()
	s.Skipped = r.u64()
	s.Failed = r.u64()
	s.DepVersion = r.u64()
	s.StartedAt = r.i64()
	s.UpdatedAt = r.i64()
	s.NextRunAt = r.i64()
	s.Reason = r.str()
	s.Accounts = nil
	if r.err == nil && len(r.b) > 0 {
		n := r.int()
		if n > len(r.b) {
			return errCorruptRecord
		}
		s.Accounts = make([]AccountCards, n)
		for i := range s.Accounts {
			s.Accounts[i] = AccountCards{Account: r.str(), Cards: r.int()}
		}
	}
	return r.err
}

// public converts the record; the result shares s.Enterprises and s.Accounts (decode
// allocates them afresh for every record).
func (s *shardRec) public(id string) ShardState {
	accts := s.Accounts
	sum := 0
	for _, c := range accts {
		sum += c.Cards
	}
	// A shard written before the counts were kept and grown since holds counts for only
	// some of its cards: they are left out rather than shown wrong.
	if sum != s.Cards {
		accts = nil
	}
	return ShardState{
		ID: id, Group: s.Group, Cards: s.Cards, Enterprises: s.Enterprises, Accounts: accts,
		Epoch: s.Epoch, Owner: s.Owner, LeaseUntil: fromNanos(s.LeaseUntil),
		Checkpoint: Checkpoint{
			TaskID: s.TaskID, State: stateName(s.State), Cursor: s.Cursor,
			Synced: s.Synced, Skipped: s.Skipped, Failed: s.Failed, DepVersion: s.DepVersion,
			StartedAt: fromNanos(s.StartedAt), UpdatedAt: fromNanos(s.UpdatedAt),
			NextRunAt: fromNanos(s.NextRunAt), Reason: s.Reason,
		},
	}
}

// groupRec is the per-group index: the group's open shard and the shard holding the
// group's claim ("" when none).
type groupRec struct {
	OpenN   int
	Claimed string
}

func (g *groupRec) encode() []byte {
	w := wbuf{}
	w.byte1(recordVersion)
	w.u64(uint64(g.OpenN))
	w.str(g.Claimed)
	return w.b
}

func (g *groupRec) decode(b []byte) error {
	r := rbuf{b: b}
	if r.byte1() != recordVersion {
		return errCorruptRecord
	}
	g.OpenN = r.int()
	g.Claimed = r.str()
	return r.err
}

func encodeRound(rd *Round) []byte {
	w := wbuf{}
	w.byte1(recordVersion)
	w.u64(rd.TaskID)
	w.u64(rd.Epoch)
	w.str(rd.Owner)
	w.i64(toNanos(rd.StartedAt))
	w.i64(toNanos(rd.EndedAt))
	w.u64(rd.Synced)
	w.u64(rd.Skipped)
	w.u64(rd.Failed)
	return w.b
}

func decodeRound(b []byte) (Round, error) {
	r := rbuf{b: b}
	if r.byte1() != recordVersion {
		return Round{}, errCorruptRecord
	}
	rd := Round{TaskID: r.u64(), Epoch: r.u64(), Owner: r.str()}
	rd.StartedAt = fromNanos(r.i64())
	rd.EndedAt = fromNanos(r.i64())
	rd.Synced = r.u64()
	rd.Skipped = r.u64()
	rd.Failed = r.u64()
	return rd, r.err
}

// changeRec is a Change as stored under its 8-byte sequence.
type changeRec struct {
	ICCID, Enterprise   string
	Before, After       dataRec
	BeforeErr, AfterErr string
	Time                int64
	// Kinds is the kind bits (see KindStatus ...); 0 in records written before kinds
	// were stored, which have no trailing byte.
	Kinds byte
}

func (c *changeRec) encode(buf []byte) []byte {
	w := wbuf{b: buf[:0]}
	w.byte1(recordVersion)
	w.str(c.ICCID)
	w.str(c.Enterprise)
	w.data(&c.Before)
	w.data(&c.After)
	w.str(c.BeforeErr)
	w.str(c.AfterErr)
	w.i64(c.Time)
	w.byte1(c.Kinds)
	return w.b
}

func (c *changeRec) decode(b []byte) error {
	r := rbuf{b: b}
	if r.byte1() != recordVersion {
		return errCorruptRecord
	}
	c.ICCID = r.str()
	c.Enterprise = r.str()
	r.data(&c.Before)
	r.data(&c.After)
	c.BeforeErr = r.str()
	c.AfterErr = r.str()
	c.Time = r.i64()
	c.Kinds = 0
	if r.err == nil && len(r.b) > 0 {
		c.Kinds = r.byte1()
	}
	return r.err
}

func (c *changeRec) public(seq uint64) Change {
	return Change{
		Seq: seq, ICCID: c.ICCID, Enterprise: c.Enterprise,
		Before: c.Before.public(), After: c.After.public(),
		BeforeErr: c.BeforeErr, AfterErr: c.AfterErr, Time: fromNanos(c.Time),
		Kinds: kindNames(c.kinds()),
	}
}
