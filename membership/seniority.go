package membership

import (
	"cmp"
	"slices"
	"strings"
)

// Seat is one member's place in the cluster's join order (its seniority).
// A seat outlives short absences: a member that is down, draining or not yet
// caught up keeps its seat (Absent) and gets its shards back, the same ones,
// when it returns. cardsync keeps the seats in the replicated state (the
// leader seats every member that joins the ring and unseats one gone for
// longer than the reap timeout), so every node replays the same order.
type Seat struct {
	Name   string
	Absent bool // holds its place in the order but is not on the ring
}

// NewRingSeats builds the ring of the present seats (as NewRing does) and
// records the join order of all seats, present or absent, for Assign. Seats
// with an empty name are ignored; a name given twice keeps its first seat.
func NewRingSeats(seats []Seat, vnodes int) *Ring {
	order := make([]Seat, 0, len(seats))
	seen := make(map[string]struct{}, len(seats))
	var present []string
	for _, s := range seats {
		if s.Name == "" {
			continue
		}
		if _, dup := seen[s.Name]; dup {
			continue
		}
		seen[s.Name] = struct{}{}
		order = append(order, s)
		if !s.Absent {
			present = append(present, s.Name)
		}
	}
	r := NewRing(present, vnodes)
	r.seats = order
	return r
}

// Seats returns the ring's join order: every seat, present or absent, most
// senior first. For a ring built by NewRing it is the members by name.
func (r *Ring) Seats() []Seat {
	if r.seats != nil {
		return slices.Clone(r.seats)
	}
	out := make([]Seat, len(r.members))
	for i, m := range r.members {
		out[i] = Seat{Name: m}
	}
	return out
}

// seatPoints returns the sorted points a member with this name has (or
// would have) on a ring with r's vnodes.
func (r *Ring) seatPoints(name string) []uint32 {
	pts := make([]uint32, r.vnodes)
	var buf []byte
	for v := range pts {
		pts[v], buf = vnodeHash(buf, name, v)
	}
	slices.Sort(pts)
	return pts
}

// seatKey is one distinct key during Assign: its id and its hash.
type seatKey struct {
	id   string
	hash uint32
}

// Assign maps every key to a present member in two steps.
//
// First it replays the joins in seat order: the most senior seat starts
// with every key, and the seat at position j (0-based), joining the j seats
// before it, takes floor(keys/(j+1)) keys, one at a time from whichever
// earlier seat holds the most at that moment (the junior one on a tie), and
// from that seat the key nearest to its own points (smallest clockwise
// distance from the key's hash to one of the newcomer's points, as Owner
// measures it; ties by key id). A joining member thus takes the keys of its
// own arcs first, in exact quotas.
//
// Then the keys of absent seats go to present members as consistent
// hashing with bounded loads would place them: in ring order, each to the
// first member clockwise from the key (Owner) that holds fewer than
// Capacity(keys, DefaultLoadEpsilon).
//
// Properties (seniority_test.go checks them over thousands of random
// joins): with no absent seat every member holds floor(keys/members) to
// floor(keys/members)+2 keys; a member joining as the most junior seat takes
// exactly floor(keys/(n+1)) keys and no key moves between the others, so a
// join moves at most the ideal share; a member going absent (failure,
// drain, restart) moves only its own keys, and returning takes back the
// same keys; with absent seats every present member holds at most
// Capacity. Removing a seat from the middle of the order (a member gone for
// good) changes the later joins' quotas and moves more than the member's
// own keys, once.
//
// The result depends only on the seats, vnodes and the key set (not on the
// order of keys or duplicates), so every node holding the same seats and
// shard list computes the same assignment. An empty ring gives an empty
// map. It takes O(seats × keys × log vnodes).
func (r *Ring) Assign(keys []string) map[string]string {
	out := make(map[string]string, len(keys))
	if len(r.members) == 0 || len(keys) == 0 {
		return out
	}
	uniq := make([]seatKey, 0, len(keys))
	for _, k := range keys {
		if _, dup := out[k]; dup {
			continue
		}
		out[k] = ""
		uniq = append(uniq, seatKey{id: k, hash: Hash32(k)})
	}
	// Keys in ring order (hash, then id): an index into uniq then breaks
	// ties the same way on every node, whatever the order of keys.
	slices.SortFunc(uniq, func(a, b seatKey) int {
		if a.hash != b.hash {
			return cmp.Compare(a.hash, b.hash)
		}
		return strings.Compare(a.id, b.id)
	})
	seats := r.Seats()
	// held[s] lists the keys (indexes into uniq) of seat s.
	held := make([][]int32, len(seats))
	held[0] = make([]int32, len(uniq))
	for i := range uniq {
		held[0][i] = int32(i)
	}
	var packed []uint64
	dist := make([]uint32, len(uniq))
	give := make([]int, len(seats))
	for j := 1; j < len(seats); j++ {
		quota := len(uniq) / (j + 1)
		if quota == 0 {
			continue
		}
		clear(give[:j])
		for t := 0; t < quota; t++ {
			best := j - 1
			for s := j - 2; s >= 0; s-- {
				if len(held[s])-give[s] > len(held[best])-give[best] {
					best = s
				}
			}
			give[best]++
		}
		// Every key's clockwise distance to the newcomer's nearest point, in
		// one merge of the sorted keys with its sorted points.
		pts := r.seatPoints(seats[j].Name)
		p := 0
		for i, k := range uniq {
			for p < len(pts) && pts[p] < k.hash {
				p++
			}
			if p == len(pts) {
				dist[i] = pts[0] - k.hash // wraps past 2^32
			} else {
				dist[i] = pts[p] - k.hash
			}
		}
		for s := 0; s < j; s++ {
			g := give[s]
			if g == 0 {
				continue
			}
			// Distance to the newcomer's points, then ring order, packed so
			// that the g smallest are found without comparing strings.
			packed = packed[:0]
			for _, k := range held[s] {
				packed = append(packed, uint64(dist[k])<<32|uint64(k))
			}
			selectSmallest(packed, g)
			kept := held[s][:0]
			for i, p := range packed {
				if i < g {
					held[j] = append(held[j], int32(uint32(p)))
				} else {
					kept = append(kept, int32(uint32(p)))
				}
			}
			held[s] = kept
		}
	}

	load := make([]int, len(r.members))
	var orphans []int32
	for s, ks := range held {
		if seats[s].Absent {
			orphans = append(orphans, ks...)
			continue
		}
		m, _ := slices.BinarySearch(r.members, seats[s].Name)
		load[m] = len(ks)
		for _, k := range ks {
			out[uniq[k].id] = seats[s].Name
		}
	}
	if len(orphans) == 0 {
		return out
	}
	slices.SortFunc(orphans, func(a, b int32) int {
		return cmp.Compare(a, b) // ring order: uniq is sorted
	})
	// Capacity is at least the ceiling of the mean, so some member always
	// has room and every walk ends within one turn of the ring.
	capacity := r.Capacity(len(uniq), DefaultLoadEpsilon)
	for _, k := range orphans {
		i := r.search(uniq[k].hash)
		for load[r.points[i].member] >= capacity {
			if i++; i == len(r.points) {
				i = 0
			}
		}
		m := r.points[i].member
		load[m]++
		out[uniq[k].id] = r.members[m]
	}
	return out
}

// selectSmallest reorders a so that its k smallest values come first, in
// no particular order (quickselect; the values are distinct).
func selectSmallest(a []uint64, k int) {
	lo, hi := 0, len(a)-1
	for lo < hi && k > lo && k <= hi {
		// Median of three as the pivot.
		mid := lo + (hi-lo)/2
		if a[mid] < a[lo] {
			a[mid], a[lo] = a[lo], a[mid]
		}
		if a[hi] < a[lo] {
			a[hi], a[lo] = a[lo], a[hi]
		}
		if a[hi] < a[mid] {
			a[hi], a[mid] = a[mid], a[hi]
		}
		pivot := a[mid]
		i, j := lo, hi
		for i <= j {
			for a[i] < pivot {
				i++
			}
			for a[j] > pivot {
				j--
			}
			if i <= j {
				a[i], a[j] = a[j], a[i]
				i++
				j--
			}
		}
		// a[lo..j] <= pivot <= a[i..hi]
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return
		}
	}
}
