package fsm

import (
	"slices"
	"testing"
)

func TestSeats(t *testing.T) {
	h := newHarness(t, nil)
	seats := func() []string {
		t.Helper()
		s, err := h.f.Seats()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for i, x := range s {
			if i > 0 && x.Index <= s[i-1].Index {
				t.Fatalf("seats out of order: %v", s)
			}
			names = append(names, x.Node)
		}
		return names
	}
	if got := seats(); len(got) != 0 {
		t.Fatalf("new state has seats %v", got)
	}
	steps := []struct {
		cmd     SetSeat
		updated int
		want    []string
	}{
		{SetSeat{Node: "node-c"}, 1, []string{"node-c"}},
		{SetSeat{Node: "node-a"}, 1, []string{"node-c", "node-a"}},
		{SetSeat{Node: "node-b"}, 1, []string{"node-c", "node-a", "node-b"}},
		{SetSeat{Node: "node-c"}, 0, []string{"node-c", "node-a", "node-b"}}, // keeps its place
		{SetSeat{Node: "node-a", Remove: true}, 1, []string{"node-c", "node-b"}},
		{SetSeat{Node: "node-a", Remove: true}, 0, []string{"node-c", "node-b"}},
		{SetSeat{Node: "node-a"}, 1, []string{"node-c", "node-b", "node-a"}}, // back as the junior
	}
	for i, st := range steps {
		if res := h.ok(st.cmd); res.Updated != st.updated {
			t.Fatalf("step %d %+v: updated %d, want %d", i, st.cmd, res.Updated, st.updated)
		}
		if got := seats(); !slices.Equal(got, st.want) {
			t.Fatalf("step %d %+v: seats %v, want %v", i, st.cmd, got, st.want)
		}
	}
	h.fail(SetSeat{Node: ""}, ErrInvalid)
	h.fail(SetSeat{Node: string(make([]byte, 200))}, ErrInvalid)
}
