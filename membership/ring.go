package membership

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
)

// DefaultVNodes is the number of points each member gets on the ring when
// NewRing is given vnodes <= 0.
const DefaultVNodes = 1024

// DefaultLoadEpsilon is the slack used by Assign: no member is given more
// than floor((1+eps)*keys/members) keys (and never fewer than the ceiling of
// the mean, so every key always has a place). 0.10 is the largest slack
// that keeps a member that has just joined at or below 1.1x its ideal share
// of the keys; DESIGN.md records the measured balance and movement.
const DefaultLoadEpsilon = 0.10

// ringSpace is the size of the hash space, 2^32.
const ringSpace = float64(1 << 32)

// Hash32 hashes s onto the 2^32 ring: 32-bit FNV-1a over the bytes of s,
// followed by the murmur3 32-bit finaliser (fmix32) so that short inputs
// that differ only in their last bytes (such as "g1-1" and "g1-2") still
// land far apart. It does not allocate.
func Hash32(s string) uint32 { return hash32(s) }

// hash32 is Hash32 over a string or a byte slice.
func hash32[T string | []byte](s T) uint32 {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= prime32
	}
	return fmix32(h)
}

// fmix32 is the murmur3 32-bit avalanche finaliser.
func fmix32(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// point is one virtual node: a position on the ring and the index of the
// member (in Ring.members) that owns it.
type point struct {
	hash   uint32
	member int32
}

// Ring is an immutable consistent-hash ring over the 2^32 space (patent
// claims 2-3): every member is placed at vnodes points, a key is hashed onto
// the same space, and the key belongs to the first member met clockwise
// (the first point whose position is >= the key's hash, wrapping at 2^32).
// A Ring is safe for concurrent use.
type Ring struct {
	members []string // sorted, unique
	points  []point  // sorted by hash, then member
	vnodes  int
	// seats is the join order, present and absent members (NewRingSeats);
	// nil for a ring built by NewRing, whose join order is by name.
	seats []Seat
}

// NewRing builds a ring of the given members with vnodes points each
// (DefaultVNodes when vnodes <= 0). Duplicate and empty names are ignored.
// The same member set gives the same ring whatever the order of members,
// so every node computes an identical ring from the same membership view.
func NewRing(members []string, vnodes int) *Ring {
	if vnodes <= 0 {
		vnodes = DefaultVNodes
	}
	names := make([]string, 0, len(members))
	for _, m := range members {
		if m != "" {
			names = append(names, m)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)

	// Each point is packed as hash<<32 | member so that a plain integer sort
	// orders the points by hash, then member.
	packed := make([]uint64, 0, len(names)*vnodes)
	var buf []byte
	for i, name := range names {
		for v := 0; v < vnodes; v++ {
			var h uint32
			h, buf = vnodeHash(buf, name, v)
			packed = append(packed, uint64(h)<<32|uint64(i))
		}
	}
	slices.Sort(packed)
	r := &Ring{
		members: names,
		points:  make([]point, len(packed)),
		vnodes:  vnodes,
	}
	for i, p := range packed {
		r.points[i] = point{hash: uint32(p >> 32), member: int32(uint32(p))}
	}
	return r
}

// vnodeHash is the position of a member's v-th point: Hash32(name#v). buf is
// scratch space, returned for reuse.
func vnodeHash(buf []byte, name string, v int) (uint32, []byte) {
	buf = append(append(buf[:0], name...), '#')
	buf = strconv.AppendInt(buf, int64(v), 10)
	return hash32(buf), buf
}

// Len returns the number of members on the ring.
func (r *Ring) Len() int { return len(r.members) }

// VNodes returns the number of points each member has on the ring.
func (r *Ring) VNodes() int { return r.vnodes }

// Members returns the ring's members in sorted order (a copy).
func (r *Ring) Members() []string { return slices.Clone(r.members) }

// Has reports whether name is a member of the ring.
func (r *Ring) Has(name string) bool {
	_, ok := slices.BinarySearch(r.members, name)
	return ok
}

// search returns the index of the first point whose hash is >= h, wrapping
// to 0 past the end. The ring must not be empty.
func (r *Ring) search(h uint32) int {
	lo, hi := 0, len(r.points)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r.points[mid].hash < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == len(r.points) {
		return 0
	}
	return lo
}

// Owner returns the member that key belongs to under plain consistent
// hashing (the first member clockwise from Hash32(key)), or "" when the ring
// is empty. It is O(log points) and does not allocate.
func (r *Ring) Owner(key string) string {
	if len(r.points) == 0 {
		return ""
	}
	return r.members[r.points[r.search(Hash32(key))].member]
}

// Shares returns, for every member, the fraction of the 2^32 hash space
// that it owns under plain consistent hashing. The fractions sum to 1.
func (r *Ring) Shares() map[string]float64 {
	out := make(map[string]float64, len(r.members))
	if len(r.points) == 0 {
		return out
	}
	for _, m := range r.members {
		out[m] = 0
	}
	// The arc (previous point, this point] belongs to this point's member;
	// the first point also owns the wrap-around arc after the last point.
	prev := r.points[len(r.points)-1].hash
	for _, p := range r.points {
		arc := float64(p.hash - prev) // unsigned wrap-around gives the arc length
		out[r.members[p.member]] += arc / ringSpace
		prev = p.hash
	}
	if len(r.points) == 1 {
		// A single point owns the whole space; the loop above measured 0.
		out[r.members[0]] = 1
	}
	return out
}

// Capacity returns the most keys that Assign gives one member for n keys
// with slack eps: floor((1+eps)*n/members), but never below the ceiling of
// the mean so that every key has a place.
func (r *Ring) Capacity(n int, eps float64) int {
	m := len(r.members)
	if m == 0 {
		return 0
	}
	ceilMean := (n + m - 1) / m
	c := int(math.Floor((1 + eps) * float64(n) / float64(m)))
	if c < ceilMean {
		c = ceilMean
	}
	return c
}

// overflowKey is a key that its ring owner cannot keep: its index in the
// caller's key slice, its ring owner and point, and its clockwise distance
// to that point.
type overflowKey struct {
	idx    int32
	pt     int32
	member int32
	dist   uint32
}

// AssignBounded maps every key to a member with consistent hashing with
// bounded loads, in two passes, from the member set alone (no join order).
// Assign is what cardsync uses; AssignBounded is the stateless rule it is
// measured against (membership/DESIGN.md). First every key goes to its ring owner (the
// first member clockwise, as Owner). Then every member holding more than
// Capacity(keys, eps) keys keeps the keys nearest to its points (smallest
// clockwise distance) and gives up the rest; the given-up keys, taken in
// order of their hash, each walk clockwise from their owner's point to the
// first member that still has room. A key therefore stays with its ring
// owner unless that owner is over capacity and the key is among its
// farthest, so Assign differs from Owner for the fewest keys that capacity
// allows, and a new member takes its keys from its own arcs.
//
// The result depends only on the member set, vnodes, the key set and eps
// (not on the order of keys), so every node that holds the same shard list
// computes the same assignment. Duplicate keys are assigned once. An empty
// ring gives an empty map. It takes O(keys log points) time.
func (r *Ring) AssignBounded(keys []string, eps float64) map[string]string {
	out := make(map[string]string, len(keys))
	if len(r.members) == 0 || len(keys) == 0 {
		return out
	}
	// First pass: ring owners. pts[i] is the point of keys[i], or -1 for a
	// repeated key.
	pts := make([]int32, len(keys))
	load := make([]int, len(r.members))
	for i, k := range keys {
		p := r.search(Hash32(k))
		m := r.points[p].member
		before := len(out)
		out[k] = r.members[m] // a repeated key gets the same owner again
		if len(out) == before {
			pts[i] = -1
			continue
		}
		pts[i] = int32(p)
		load[m]++
	}
	capacity := r.Capacity(len(out), eps)
	held := 0 // keys held by over-capacity members
	for _, l := range load {
		if l > capacity {
			held += l
		}
	}
	if held == 0 {
		return out
	}

	// Second pass: the keys of over-capacity members, nearest first per
	// member; the farthest beyond capacity overflow.
	cand := make([]overflowKey, 0, held)
	for i, p := range pts {
		if p < 0 {
			continue
		}
		pt := r.points[p]
		if load[pt.member] > capacity {
			cand = append(cand, overflowKey{
				idx: int32(i), pt: p, member: pt.member,
				dist: pt.hash - Hash32(keys[i]),
			})
		}
	}
	slices.SortFunc(cand, func(a, b overflowKey) int {
		if a.member != b.member {
			return cmp.Compare(a.member, b.member)
		}
		if a.dist != b.dist {
			return cmp.Compare(a.dist, b.dist)
		}
		return strings.Compare(keys[a.idx], keys[b.idx])
	})
	flow := cand[:0]
	for i := 0; i < len(cand); {
		m := cand[i].member
		j := i
		for j < len(cand) && cand[j].member == m {
			j++
		}
		flow = append(flow, cand[i+capacity:j]...)
		load[m] = capacity
		i = j
	}
	// Overflow in ring order: hash = point hash - distance.
	hashOf := func(o overflowKey) uint32 { return r.points[o.pt].hash - o.dist }
	slices.SortFunc(flow, func(a, b overflowKey) int {
		if ha, hb := hashOf(a), hashOf(b); ha != hb {
			return cmp.Compare(ha, hb)
		}
		return strings.Compare(keys[a.idx], keys[b.idx])
	})
	// Capacity is at least the ceiling of the mean, so some member always
	// has room and every walk ends within one turn of the ring.
	for _, o := range flow {
		i := int(o.pt)
		for {
			i++
			if i == len(r.points) {
				i = 0
			}
			if m := r.points[i].member; load[m] < capacity {
				load[m]++
				out[keys[o.idx]] = r.members[m]
				break
			}
		}
	}
	return out
}

// Moves returns, sorted, the keys whose Assign owner differs between the
// rings from and to: what would change hands if members joined or left.
func Moves(from, to *Ring, keys []string) []string {
	a := from.Assign(keys)
	b := to.Assign(keys)
	var moved []string
	for k, owner := range a {
		if b[k] != owner {
			moved = append(moved, k)
		}
	}
	slices.Sort(moved)
	return moved
}

// MemberShare describes one member's part of the ring, as served by the
// cluster's ring endpoint.
type MemberShare struct {
	Member string  `json:"member"`
	VNodes int     `json:"vnodes"`
	Share  float64 `json:"share"` // fraction of the 2^32 hash space
	Keys   int     `json:"keys"`  // keys given to the member by Assign
}

// Summary returns one MemberShare per member, sorted by member name, with
// Keys counted over Assign(keys).
func (r *Ring) Summary(keys []string) []MemberShare {
	shares := r.Shares()
	counts := make(map[string]int, len(r.members))
	for _, owner := range r.Assign(keys) {
		counts[owner]++
	}
	out := make([]MemberShare, 0, len(r.members))
	for _, m := range r.members {
		out = append(out, MemberShare{Member: m, VNodes: r.vnodes, Share: shares[m], Keys: counts[m]})
	}
	return out
}
