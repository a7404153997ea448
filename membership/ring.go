package membership

import (
	"math"
	"slices"
	"strconv"
)

// DefaultVNodes is the number of points each member gets on the ring when
// NewRing is given vnodes <= 0.
const DefaultVNodes = 1024

// DefaultLoadEpsilon is the slack used by Assign: no member is given more
// than floor((1+eps)*keys/members) keys (and never fewer than the ceiling of
// the mean, so every key always has a place). The value meets the balance
// and movement targets recorded in DESIGN.md for 3 to 10 members.
const DefaultLoadEpsilon = 0.10

// ringSpace is the size of the hash space, 2^32.
const ringSpace = float64(1 << 32)

// Hash32 hashes s onto the 2^32 ring: 32-bit FNV-1a over the bytes of s,
// followed by the murmur3 32-bit finaliser (fmix32) so that short inputs
// that differ only in their last bytes (such as "g1-1" and "g1-2") still
// land far apart. It does not allocate.
func Hash32(s string) uint32 {
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

	r := &Ring{
		members: names,
		points:  make([]point, 0, len(names)*vnodes),
		vnodes:  vnodes,
	}
	var buf []byte
	for i, name := range names {
		for v := 0; v < vnodes; v++ {
			buf = append(buf[:0], name...)
			buf = append(buf, '#')
			buf = strconv.AppendInt(buf, int64(v), 10)
			r.points = append(r.points, point{hash: Hash32(string(buf)), member: int32(i)})
		}
	}
	slices.SortFunc(r.points, func(a, b point) int {
		if a.hash != b.hash {
			if a.hash < b.hash {
				return -1
			}
			return 1
		}
		return int(a.member - b.member)
	})
	return r
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

// Assign maps every key to a member with consistent hashing with bounded
// loads, using DefaultLoadEpsilon. See AssignBounded.
func (r *Ring) Assign(keys []string) map[string]string {
	return r.AssignBounded(keys, DefaultLoadEpsilon)
}

// AssignBounded maps every key to a member with consistent hashing with
// bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018): the keys are
// taken in sorted order, each walks clockwise from its hash and goes to the
// first member whose load is below Capacity(len(keys), eps). The result
// depends only on the member set, vnodes, the key set and eps, so every node
// that holds the same shard list computes the same assignment. Duplicate
// keys are assigned once. An empty ring gives an empty map.
func (r *Ring) AssignBounded(keys []string, eps float64) map[string]string {
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	out := make(map[string]string, len(sorted))
	if len(r.members) == 0 {
		return out
	}
	capacity := r.Capacity(len(sorted), eps)
	load := make([]int, len(r.members))
	for _, k := range sorted {
		i := r.search(Hash32(k))
		for {
			m := r.points[i].member
			if load[m] < capacity {
				load[m]++
				out[k] = r.members[m]
				break
			}
			i++
			if i == len(r.points) {
				i = 0
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
