package membership

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"runtime/debug"
	"slices"
	"testing"
)

// shardIDs returns groups*per shard ids shaped like cardsync's: g<group>-<n>.
func shardIDs(groups, per int) []string {
	ids := make([]string, 0, groups*per)
	for g := 0; g < groups; g++ {
		for n := 0; n < per; n++ {
			ids = append(ids, fmt.Sprintf("g%d-%d", g, n))
		}
	}
	return ids
}

// nodeNames returns n member names of a naming scheme: "node" gives
// node-1..node-n, "host" gives cardsync-01..; any other scheme gives
// 32-hex-digit ids derived from the scheme (like generated node ids).
func nodeNames(scheme string, n int) []string {
	out := make([]string, 0, n)
	for i := 1; i <= n; i++ {
		switch scheme {
		case "node":
			out = append(out, fmt.Sprintf("node-%d", i))
		case "host":
			out = append(out, fmt.Sprintf("cardsync-%02d", i))
		default:
			h := sha256.Sum256([]byte(fmt.Sprintf("%s-%d", scheme, i)))
			out = append(out, hex.EncodeToString(h[:16]))
		}
	}
	return out
}

func TestHash32(t *testing.T) {
	offset, prime := uint32(2166136261), uint32(16777619)
	tests := []struct {
		in   string
		want uint32
	}{
		{"", fmix32(offset)},
		{"a", fmix32((offset ^ 'a') * prime)},
		{"ab", fmix32((((offset ^ 'a') * prime) ^ 'b') * prime)},
	}
	for _, tt := range tests {
		if got := Hash32(tt.in); got != tt.want {
			t.Errorf("Hash32(%q) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
	// Adjacent shard ids must land far apart: the top byte should be spread.
	var buckets [16]int
	for _, id := range shardIDs(64, 16) {
		buckets[Hash32(id)>>28]++
	}
	for i, c := range buckets {
		if c < 40 || c > 90 { // mean 64
			t.Errorf("bucket %d holds %d of 1024 ids", i, c)
		}
	}
	if a := testing.AllocsPerRun(100, func() { _ = Hash32("g12-7") }); a != 0 {
		t.Errorf("Hash32 allocates %v", a)
	}
}

func TestRingDeterministicAndOrderFree(t *testing.T) {
	a := NewRing([]string{"c", "a", "b", "a", ""}, 64)
	b := NewRing([]string{"b", "c", "a"}, 64)
	if !slices.Equal(a.Members(), []string{"a", "b", "c"}) || a.Len() != 3 || a.VNodes() != 64 {
		t.Fatalf("members %v len %d", a.Members(), a.Len())
	}
	for _, k := range shardIDs(8, 16) {
		if a.Owner(k) != b.Owner(k) {
			t.Fatalf("owner of %s differs with member order", k)
		}
	}
	if !a.Has("b") || a.Has("d") {
		t.Fatal("Has")
	}
	if NewRing(nil, 0).VNodes() != DefaultVNodes {
		t.Fatal("default vnodes")
	}
}

func TestRingEmptyAndSingle(t *testing.T) {
	empty := NewRing(nil, 0)
	if empty.Owner("g1-1") != "" || len(empty.Assign([]string{"x"})) != 0 || len(empty.Shares()) != 0 || empty.Len() != 0 {
		t.Fatal("empty ring should own nothing")
	}
	for _, vn := range []int{1, 16} {
		one := NewRing([]string{"solo"}, vn)
		if one.Owner("anything") != "solo" {
			t.Fatal("single member must own everything")
		}
		if s := one.Shares()["solo"]; math.Abs(s-1) > 1e-9 {
			t.Fatalf("vnodes %d: single member share %v", vn, s)
		}
	}
}

func TestOwnerIsFirstClockwise(t *testing.T) {
	r := NewRing(nodeNames("node", 5), 32)
	for _, k := range shardIDs(16, 16) {
		h := Hash32(k)
		// Brute force: smallest point >= h, else the smallest point overall.
		best, bestHash, wrap, wrapHash := -1, uint32(0), -1, uint32(math.MaxUint32)
		for _, p := range r.points {
			if p.hash >= h && (best < 0 || p.hash < bestHash) {
				best, bestHash = int(p.member), p.hash
			}
			if p.hash <= wrapHash {
				wrap, wrapHash = int(p.member), p.hash
			}
		}
		if best < 0 {
			best = wrap
		}
		if got := r.Owner(k); got != r.members[best] {
			t.Fatalf("Owner(%s) = %s, want %s", k, got, r.members[best])
		}
	}
}

func TestOwnerDoesNotAllocate(t *testing.T) {
	r := NewRing(nodeNames("node", 10), 0)
	if a := testing.AllocsPerRun(1000, func() { _ = r.Owner("g42-11") }); a != 0 {
		t.Fatalf("Owner allocates %v times per call", a)
	}
}

func TestSharesSumToOne(t *testing.T) {
	for n := 1; n <= 10; n++ {
		r := NewRing(nodeNames("node", n), 0)
		sum := 0.0
		for _, s := range r.Shares() {
			sum += s
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Fatalf("n=%d: shares sum to %v", n, sum)
		}
	}
}

// peakOverMean returns the busiest member's load over the mean.
func peakOverMean(assign map[string]string, members int) float64 {
	return float64(peakLoad(assign)) / (float64(len(assign)) / float64(members))
}

func ownerMap(r *Ring, keys []string) map[string]string {
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k] = r.Owner(k)
	}
	return out
}

// The balance target: for 3..10 members and 1,024 cardsync shard ids, the
// busiest member holds at most 1.15x the mean. Assign guarantees it by
// construction; checked here for several naming schemes.
func TestAssignBalance(t *testing.T) {
	keys := shardIDs(64, 16)
	for _, scheme := range []string{"node", "host", "id-a", "id-b", "id-c", "id-d"} {
		for n := 3; n <= 10; n++ {
			r := NewRing(nodeNames(scheme, n), 0)
			a := r.Assign(keys)
			if len(a) != len(keys) {
				t.Fatalf("%s n=%d: assigned %d of %d keys", scheme, n, len(a), len(keys))
			}
			if p := peakOverMean(a, n); p > 1.15 {
				t.Errorf("%s n=%d: busiest member holds %.3fx the mean", scheme, n, p)
			}
		}
	}
}

// Movement on join for the node-N and cardsync-NN naming schemes, seated
// in join order: adding one member to n (3..10) moves at most the ideal
// 1/(n+1) of the shards, all of them to the newcomer, and the junior
// member leaving again moves exactly the same shards back.
func TestAssignMovementOnJoin(t *testing.T) {
	keys := shardIDs(64, 16)
	for _, scheme := range []string{"node", "host"} {
		names := nodeNames(scheme, 11)
		for n := 3; n <= 10; n++ {
			before, after := NewRingSeats(seatsOf(names[:n]), 0), NewRingSeats(seatsOf(names[:n+1]), 0)
			moved := Moves(before, after, keys)
			ratio := float64(len(moved)) / (float64(len(keys)) / float64(n+1))
			t.Logf("%s: %2d -> %2d members moves %3d shards, %.3fx the ideal", scheme, n, n+1, len(moved), ratio)
			if ratio > 1.0 {
				t.Errorf("%s: %d -> %d members moves %d shards, %.3fx the ideal", scheme, n, n+1, len(moved), ratio)
			}
			a := after.Assign(keys)
			for _, k := range moved {
				if a[k] != names[n] {
					t.Errorf("%s: %s moved to %s, not to the newcomer", scheme, k, a[k])
				}
			}
			if back := Moves(after, before, keys); !slices.Equal(back, moved) {
				t.Errorf("%s: leave from %d does not mirror join", scheme, n+1)
			}
		}
	}
}

// joinSample is the outcome of the random join sample for one assignment
// function.
type joinSample struct {
	ratios   []float64 // moved / ideal per join
	over     int       // joins that moved more than 1.1x the ideal
	overByN  map[int]int
	maxPeak  float64 // busiest member over the mean, worst trial
	maxTaken float64 // newcomer's keys over the ideal, worst trial
	oldMoves int     // joins where some key moved between two old members
	// Trials breaking a per-trial bound: a member above 1.15x the mean, a
	// newcomer above 1.1x the ideal (exact integer comparisons).
	peakOver, takenOver int
}

func (s *joinSample) add(before, after map[string]string, newcomer string, n int) {
	keys := len(before)
	moved, taken, betweenOld := 0, 0, false
	for k, o := range before {
		switch after[k] {
		case o:
		case newcomer:
			moved++
			taken++
		default:
			moved++
			betweenOld = true
		}
	}
	if betweenOld {
		s.oldMoves++
	}
	ideal := float64(keys) / float64(n+1)
	s.ratios = append(s.ratios, float64(moved)/ideal)
	if moved*(n+1)*10 > 11*keys {
		s.over++
		s.overByN[n]++
	}
	s.maxTaken = max(s.maxTaken, float64(taken)/ideal)
	if taken*(n+1)*10 > 11*keys {
		s.takenOver++
	}
	pa := peakLoad(after)
	s.maxPeak = max(s.maxPeak, float64(pa)/(float64(keys)/float64(n+1)))
	if pa*(n+1)*100 > 115*keys {
		s.peakOver++
	}
}

// peakLoad returns the busiest member's key count.
func peakLoad(assign map[string]string) int {
	count := map[string]int{}
	peak := 0
	for _, o := range assign {
		count[o]++
		peak = max(peak, count[o])
	}
	return peak
}

func (s *joinSample) quantile(q float64) float64 {
	rs := slices.Clone(s.ratios)
	slices.Sort(rs)
	return rs[int(q*float64(len(rs)-1))]
}

func (s *joinSample) mean() float64 {
	sum := 0.0
	for _, x := range s.ratios {
		sum += x
	}
	return sum / float64(len(s.ratios))
}

func (s *joinSample) String() string {
	return fmt.Sprintf("peak/mean max %.3f | newcomer takes max %.3fx | join moves/ideal mean %.3f p50 %.3f p90 %.3f p99 %.3f max %.3f, over 1.1x in %.1f%% of %d joins %v, keys moved between old members in %.1f%%",
		s.maxPeak, s.maxTaken, s.mean(), s.quantile(0.5), s.quantile(0.9), s.quantile(0.99), s.quantile(1),
		100*float64(s.over)/float64(len(s.ratios)), len(s.ratios), s.overByN,
		100*float64(s.oldMoves)/float64(len(s.ratios)))
}

// ringJoinSets is the number of random member-name sets in the join sample;
// each gives the joins 3 -> 4 ... 10 -> 11.
const ringJoinSets = 500

// TestRingAssignJoinSample measures balance and movement on join over 500
// random sets of 11 128-bit member ids (4,000 joins n -> n+1, n = 3..10) with
// 1,000 shard ids and the default 1024 vnodes, for the two stateless rules:
// plain Owner and AssignBounded (TestAssignJoinSample measures Assign, which
// replays the join order, on the same sample). `go test -run RingAssignJoinSample -v ./membership/` prints the
// figures quoted in DESIGN.md.
//
// Checked in every trial: the busiest member holds at most 1.15x the mean
// (1.10x by construction), the new member takes at most 1.1x the ideal
// 1/(n+1) of the shards, and Assign departs from Owner for exactly the keys
// over capacity. The total moved on join (newcomer's intake plus shards
// handed between old members when a member crosses the lower capacity of
// n+1 members) exceeds 1.1x the ideal in about one join in seven; DESIGN.md
// explains why no capacity rule avoids it. The distribution is held to its
// measured level.
func TestRingAssignJoinSample(t *testing.T) {
	keys := shardIDs(50, 20)
	sets := ringJoinSets
	if testing.Short() || raceEnabled() {
		// The computation is single-threaded; the race detector only slows it.
		sets = 60
	}
	plain := &joinSample{overByN: map[int]int{}}
	bounded := &joinSample{overByN: map[int]int{}}
	for s := 0; s < sets; s++ {
		names := nodeNames(fmt.Sprintf("rnd%d", s), 11)
		var prevPlain, prevBounded map[string]string
		for n := 3; n <= 11; n++ {
			r := NewRing(names[:n], 0)
			po, bo := ownerMap(r, keys), r.AssignBounded(keys, DefaultLoadEpsilon)
			checkAssignAgainstOwner(t, r, keys, po, bo)
			if prevPlain != nil {
				plain.add(prevPlain, po, names[n-1], n-1)
				bounded.add(prevBounded, bo, names[n-1], n-1)
			}
			prevPlain, prevBounded = po, bo
		}
	}
	t.Logf("plain Owner %s", plain)
	t.Logf("AssignBounded %s", bounded)
	if bounded.peakOver > 0 {
		t.Errorf("AssignBounded: a member holds more than 1.15x the mean in %d trials (worst %.3fx)", bounded.peakOver, bounded.maxPeak)
	}
	if bounded.takenOver > 0 {
		t.Errorf("AssignBounded: a new member takes more than 1.1x the ideal in %d joins (worst %.3fx)", bounded.takenOver, bounded.maxTaken)
	}
	// The measured level (500 sets): mean 1.023, p99 1.18, max 1.26, 14.3%
	// of joins over 1.1x.
	if bounded.mean() > 1.04 || bounded.quantile(0.99) > 1.22 || bounded.quantile(1) > 1.32 ||
		float64(bounded.over) > 0.17*float64(len(bounded.ratios)) {
		t.Errorf("AssignBounded: join movement above its measured level: %s", bounded)
	}
}

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// checkAssignAgainstOwner checks one assignment: every key assigned, no
// member above capacity, and Assign departing from Owner for exactly as many
// keys as the members' ring loads exceed capacity.
func checkAssignAgainstOwner(t *testing.T, r *Ring, keys []string, owner, assign map[string]string) {
	t.Helper()
	if len(assign) != len(keys) {
		t.Fatalf("%d members: assigned %d of %d keys", r.Len(), len(assign), len(keys))
	}
	capacity := r.Capacity(len(keys), DefaultLoadEpsilon)
	pure, load := map[string]int{}, map[string]int{}
	differ := 0
	for k, o := range owner {
		pure[o]++
		load[assign[k]]++
		if assign[k] != o {
			differ++
		}
	}
	excess := 0
	for m, l := range pure {
		excess += max(0, l-capacity)
		if load[m] > capacity {
			t.Errorf("%d members: %s holds %d keys, capacity %d", r.Len(), m, load[m], capacity)
		}
	}
	if differ != excess {
		t.Errorf("%d members: AssignBounded departs from Owner for %d keys, ring loads exceed capacity by %d", r.Len(), differ, excess)
	}
}

// AssignBounded at the edges: tiny key sets, one member, no slack; every
// key is assigned, nobody exceeds capacity, and an over-capacity member
// keeps its nearest keys.
func TestRingAssignBoundedEdges(t *testing.T) {
	tests := []struct {
		name    string
		members int
		vnodes  int
		keys    []string
		eps     float64
	}{
		{"one member", 1, 0, shardIDs(4, 4), 0.10},
		{"fewer keys than members", 5, 0, shardIDs(1, 3), 0.10},
		{"one key", 3, 0, []string{"g0-0"}, 0},
		{"no slack, 3 members", 3, 0, shardIDs(64, 16), 0},
		{"no slack, 10 members", 10, 0, shardIDs(64, 16), 0},
		{"large slack", 4, 0, shardIDs(64, 16), 2},
		{"few vnodes", 7, 4, shardIDs(64, 16), 0.05},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRing(nodeNames("node", tt.members), tt.vnodes)
			a := r.AssignBounded(tt.keys, tt.eps)
			if len(a) != len(tt.keys) {
				t.Fatalf("assigned %d of %d keys", len(a), len(tt.keys))
			}
			capacity := r.Capacity(len(tt.keys), tt.eps)
			load := map[string]int{}
			// Per ring owner: the farthest key it kept, the nearest it gave up.
			kept, gave := map[string]uint32{}, map[string]uint32{}
			for _, k := range tt.keys {
				o := a[k]
				if !r.Has(o) {
					t.Fatalf("%s assigned to non-member %q", k, o)
				}
				load[o]++
				h := Hash32(k)
				p := r.points[r.search(h)]
				owner, dist := r.members[p.member], p.hash-h
				if o == owner {
					kept[owner] = max(kept[owner], dist)
				} else if d, ok := gave[owner]; !ok || dist < d {
					gave[owner] = dist
				}
			}
			for m, l := range load {
				if l > capacity {
					t.Errorf("%s holds %d keys, capacity %d", m, l, capacity)
				}
			}
			for m, d := range gave {
				if kept[m] > d {
					t.Errorf("%s kept a key at distance %d but gave up one at %d", m, kept[m], d)
				}
			}
		})
	}
}

func TestAssignDeterministic(t *testing.T) {
	keys := shardIDs(16, 16)
	r1 := NewRing([]string{"b", "a", "c", "d"}, 0)
	r2 := NewRing([]string{"d", "c", "b", "a"}, 0)
	rev := slices.Clone(keys)
	slices.Reverse(rev)
	a, b := r1.Assign(keys), r2.Assign(append(rev, keys[:10]...)) // order and duplicates do not matter
	if len(a) != len(b) {
		t.Fatalf("sizes %d vs %d", len(a), len(b))
	}
	for k, o := range a {
		if b[k] != o {
			t.Fatalf("%s: %s vs %s", k, o, b[k])
		}
	}
}

func TestCapacity(t *testing.T) {
	r := NewRing(nodeNames("node", 3), 8)
	tests := []struct {
		keys int
		eps  float64
		want int
	}{
		{1024, 0.10, 375}, // floor(1.1*1024/3)
		{1024, 0, 342},    // ceil(1024/3)
		{2, 0.10, 1},
		{0, 0.10, 0},
	}
	for _, tt := range tests {
		if got := r.Capacity(tt.keys, tt.eps); got != tt.want {
			t.Errorf("Capacity(%d, %v) = %d, want %d", tt.keys, tt.eps, got, tt.want)
		}
	}
	if NewRing(nil, 0).Capacity(10, 0.1) != 0 {
		t.Error("empty ring capacity")
	}
}

func TestSummary(t *testing.T) {
	keys := shardIDs(64, 16)
	r := NewRing(nodeNames("node", 4), 0)
	sum := r.Summary(keys)
	if len(sum) != 4 {
		t.Fatalf("%d entries", len(sum))
	}
	total, share := 0, 0.0
	for i, s := range sum {
		if s.Member != fmt.Sprintf("node-%d", i+1) || s.VNodes != DefaultVNodes {
			t.Errorf("entry %d = %+v", i, s)
		}
		total += s.Keys
		share += s.Share
	}
	if total != len(keys) || math.Abs(share-1) > 1e-9 {
		t.Fatalf("keys %d share %v", total, share)
	}
}

func BenchmarkOwner(b *testing.B) {
	for _, n := range []int{3, 10} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			r := NewRing(nodeNames("node", n), 0)
			keys := shardIDs(64, 16)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				_ = r.Owner(keys[i%len(keys)])
			}
		})
	}
}

func BenchmarkAssign1000(b *testing.B) {
	r := NewRing(nodeNames("node", 10), 0)
	keys := shardIDs(64, 16)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = r.Assign(keys)
	}
}

func BenchmarkNewRing(b *testing.B) {
	names := nodeNames("node", 10)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = NewRing(names, 0)
	}
}

// BenchmarkRingAssign measures Assign (the seat-order replay) over 1,000 and
// 100,000 shard ids on 10 members and 10,000 on 3, with the default vnodes.
func BenchmarkRingAssign(b *testing.B) {
	for _, tc := range []struct{ members, keys int }{{10, 1000}, {10, 100000}, {3, 10000}} {
		r := NewRing(nodeNames("node", tc.members), 0)
		keys := shardIDs(tc.keys/20, 20)
		name := fmt.Sprintf("keys=%d", tc.keys)
		if tc.members != 10 {
			name = fmt.Sprintf("members=%d/keys=%d", tc.members, tc.keys)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = r.Assign(keys)
			}
		})
	}
}
