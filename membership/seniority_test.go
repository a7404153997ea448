package membership

import (
	"fmt"
	"maps"
	"slices"
	"testing"
)

// seatsOf seats names in the order given, the ones in absent marked Absent.
func seatsOf(names []string, absent ...string) []Seat {
	out := make([]Seat, len(names))
	for i, n := range names {
		out[i] = Seat{Name: n, Absent: slices.Contains(absent, n)}
	}
	return out
}

func loads(assign map[string]string) map[string]int {
	l := map[string]int{}
	for _, o := range assign {
		l[o]++
	}
	return l
}

func movedKeys(a, b map[string]string) int {
	moved := 0
	for k, o := range a {
		if b[k] != o {
			moved++
		}
	}
	return moved
}

// TestAssignJoinSample replays the random join sample of
// TestRingAssignJoinSample (500 sets of 11 128-bit ids joining one by one
// from 3 to 11 members, 1,000 shard ids, 1024 vnodes) with the seats in
// join order, and holds the bounds in every join: the busiest
// member at most 1.15x the mean, a join moving at most 1.1x the ideal
// 1/(n+1) of the shards. It also takes each member of a 10-member ring out
// in turn, once as absent (failure, drain, restart: it keeps its seat) and
// once unseated (gone for good), over the first 100 sets, and measures the
// shards moved against the member's own.
func TestAssignJoinSample(t *testing.T) {
	keys := shardIDs(50, 20)
	sets := ringJoinSets
	if testing.Short() || raceEnabled() {
		sets = 40
	}
	join := &joinSample{overByN: map[int]int{}}
	var unseatRatios []float64
	for s := 0; s < sets; s++ {
		names := nodeNames(fmt.Sprintf("rnd%d", s), 11)
		var prev map[string]string
		for n := 3; n <= 11; n++ {
			a := NewRingSeats(seatsOf(names[:n]), 0).Assign(keys)
			if len(a) != len(keys) {
				t.Fatalf("assigned %d of %d", len(a), len(keys))
			}
			l := loads(a)
			for _, m := range names[:n] {
				if floor := len(keys) / n; l[m] < floor || l[m] > floor+2 {
					t.Fatalf("%d members: %s holds %d, floor %d", n, m, l[m], floor)
				}
			}
			if prev != nil {
				join.add(prev, a, names[n-1], n-1)
			}
			prev = a
		}
		if s >= 100 {
			continue // the leave trials: 100 sets are enough
		}
		full := names[:10]
		all := NewRingSeats(seatsOf(full), 0)
		before := all.Assign(keys)
		own := loads(before)
		for i, gone := range full {
			absent := NewRingSeats(seatsOf(full, gone), 0)
			after := absent.Assign(keys)
			if m := movedKeys(before, after); m != own[gone] {
				t.Fatalf("set %d: %s absent moved %d shards, it held %d", s, gone, m, own[gone])
			}
			capacity := absent.Capacity(len(keys), DefaultLoadEpsilon)
			for m, l := range loads(after) {
				if m == gone || l > capacity {
					t.Fatalf("set %d: %s absent: %s holds %d (capacity %d)", s, gone, m, l, capacity)
				}
			}
			unseated := NewRingSeats(seatsOf(slices.Delete(slices.Clone(full), i, i+1)), 0).Assign(keys)
			unseatRatios = append(unseatRatios, float64(movedKeys(before, unseated))/float64(own[gone]))
		}
	}
	slices.Sort(unseatRatios)
	q := func(q float64) float64 { return unseatRatios[int(q*float64(len(unseatRatios)-1))] }
	t.Logf("join: %s", join)
	t.Logf("unseating one of 10: moved / its shards p50 %.3f p90 %.3f p99 %.3f max %.3f (%d trials)",
		q(0.5), q(0.9), q(0.99), q(1), len(unseatRatios))
	if join.peakOver > 0 {
		t.Errorf("a member holds more than 1.15x the mean in %d joins (worst %.3fx)", join.peakOver, join.maxPeak)
	}
	if join.over > 0 {
		t.Errorf("%d joins moved more than 1.1x the ideal (worst %.3fx)", join.over, join.quantile(1))
	}
	if join.oldMoves > 0 {
		t.Errorf("%d joins moved shards between old members", join.oldMoves)
	}
}

// An absent member that returns gets back exactly the shards it had, and
// the others get back theirs.
func TestAssignAbsentMemberReturns(t *testing.T) {
	keys := shardIDs(64, 16)
	for _, scheme := range []string{"node", "host", "rnd"} {
		names := nodeNames(scheme, 5)
		want := NewRingSeats(seatsOf(names), 0).Assign(keys)
		for _, gone := range names {
			away := NewRingSeats(seatsOf(names, gone), 0).Assign(keys)
			if loads(away)[gone] != 0 {
				t.Fatalf("%s: absent %s still holds shards", scheme, gone)
			}
			back := NewRingSeats(seatsOf(names), 0).Assign(keys)
			if !maps.Equal(back, want) {
				t.Fatalf("%s: %s returned to a different assignment", scheme, gone)
			}
		}
		// Two absent at once, then one back: only the still-absent one's
		// shards differ from the full assignment.
		two := NewRingSeats(seatsOf(names, names[1], names[3]), 0).Assign(keys)
		one := NewRingSeats(seatsOf(names, names[3]), 0).Assign(keys)
		for k, o := range want {
			if o != names[1] && o != names[3] && two[k] != o {
				t.Fatalf("%s: %s moved from %s to %s while others were absent", scheme, k, o, two[k])
			}
			if o != names[3] && one[k] != o {
				t.Fatalf("%s: %s is not back with %s", scheme, k, o)
			}
		}
	}
}

func TestAssignSeatsEdges(t *testing.T) {
	keys := shardIDs(8, 8)
	tests := []struct {
		name  string
		seats []Seat
		keys  []string
		want  int // members that hold keys
	}{
		{"no seats", nil, keys, 0},
		{"all absent", seatsOf([]string{"a", "b"}, "a", "b"), keys, 0},
		{"no keys", seatsOf([]string{"a", "b"}), nil, 0},
		{"one member", seatsOf([]string{"a"}), keys, 1},
		{"senior absent", seatsOf([]string{"a", "b", "c"}, "a"), keys, 2},
		{"fewer keys than members", seatsOf([]string{"a", "b", "c", "d"}), keys[:3], 3},
		{"one key", seatsOf([]string{"a", "b", "c"}, "b"), keys[:1], 1},
		{"empty and repeated names", []Seat{{Name: "a"}, {}, {Name: "b"}, {Name: "a", Absent: true}}, keys, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRingSeats(tt.seats, 16)
			a := r.Assign(tt.keys)
			if r.Len() == 0 {
				if len(a) != 0 {
					t.Fatalf("empty ring assigned %d keys", len(a))
				}
				return
			}
			if len(a) != len(tt.keys) {
				t.Fatalf("assigned %d of %d keys", len(a), len(tt.keys))
			}
			for k, o := range a {
				if !r.Has(o) {
					t.Fatalf("%s given to %q, not on the ring", k, o)
				}
			}
			if got := len(loads(a)); got != tt.want {
				t.Fatalf("%d members hold keys, want %d", got, tt.want)
			}
		})
	}
}

// The same seats give the same assignment whatever the order of the keys
// and their repetitions; the seat order (not the names) decides.
func TestAssignSeatsDeterministic(t *testing.T) {
	keys := shardIDs(16, 16)
	seats := seatsOf([]string{"d", "b", "a", "c"}, "a")
	rev := slices.Clone(keys)
	slices.Reverse(rev)
	a := NewRingSeats(seats, 0).Assign(keys)
	b := NewRingSeats(slices.Clone(seats), 0).Assign(append(rev, keys[:10]...))
	if !maps.Equal(a, b) {
		t.Fatal("key order or repetition changed the assignment")
	}
	if got := NewRingSeats(seats, 0).Seats(); !slices.Equal(got, seats) {
		t.Fatalf("Seats() = %v", got)
	}
	byName := NewRingSeats(seatsOf([]string{"a", "b", "c", "d"}), 0).Assign(keys)
	if maps.Equal(byName, NewRingSeats(seatsOf([]string{"d", "c", "b", "a"}), 0).Assign(keys)) {
		t.Fatal("the seat order made no difference")
	}
	if !maps.Equal(byName, NewRing([]string{"c", "a", "d", "b"}, 0).Assign(keys)) {
		t.Fatal("NewRing does not seat its members by name")
	}
}

func TestSelectSmallest(t *testing.T) {
	for n := 1; n < 60; n++ {
		for k := 0; k <= n; k++ {
			a := make([]uint64, n)
			for i := range a {
				a[i] = uint64(Hash32(fmt.Sprint(n, k, i)))<<32 | uint64(i)
			}
			if k%3 == 0 {
				slices.Sort(a) // already sorted input
			}
			want := slices.Clone(a)
			slices.Sort(want)
			selectSmallest(a, k)
			got := slices.Clone(a[:k])
			slices.Sort(got)
			if !slices.Equal(got, want[:k]) {
				t.Fatalf("n=%d k=%d: %v, want %v", n, k, got, want[:k])
			}
		}
	}
}
