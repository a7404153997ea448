package membership

import (
	"fmt"
	"testing"
	"time"
)

func recv(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func TestSubscriberDeliversInOrder(t *testing.T) {
	s := newSubscriber(16)
	defer s.close()
	for i := 0; i < 10; i++ {
		s.push(Event{Type: EventUpdate, Member: Member{Name: fmt.Sprint(i)}})
	}
	for i := 0; i < 10; i++ {
		if ev := recv(t, s.out); ev.Member.Name != fmt.Sprint(i) {
			t.Fatalf("event %d is %q", i, ev.Member.Name)
		}
	}
}

func TestSubscriberOverflowCoalescesIntoResync(t *testing.T) {
	s := newSubscriber(4)
	defer s.close()
	// The consumer is not reading: pushes must not block.
	done := make(chan struct{})
	go func() {
		for i := 0; i < 100; i++ {
			s.push(Event{Type: EventJoin, Member: Member{Name: fmt.Sprint(i)}})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("push blocked")
	}
	// The pump may already hold one event (possibly a resync) taken before
	// the last overflow; then come a resync and the newest events, ending
	// with the last one pushed.
	resyncs := 0
	for {
		ev := recv(t, s.out)
		if ev.Type == EventResync {
			resyncs++
			continue
		}
		if ev.Member.Name == "99" {
			break
		}
	}
	if resyncs == 0 || resyncs > 2 {
		t.Fatalf("%d resync events, want 1 or 2", resyncs)
	}
}

func TestSubscriberCloseEndsChannel(t *testing.T) {
	s := newSubscriber(4)
	s.push(Event{Type: EventJoin})
	s.close()
	s.close() // idempotent
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-s.out:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("channel not closed")
		}
	}
}

func TestSubscribeSeesJoinUpdateFail(t *testing.T) {
	a := mustStart(t, testConfig("a"))
	events, cancel := a.Subscribe()
	defer cancel()
	b := mustStart(t, testConfig("b"))
	if _, err := b.Join(t.Context(), []string{a.GossipAddr()}); err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, events); ev.Type != EventJoin || ev.Member.Name != "b" || ev.Member.State != StateAlive {
		t.Fatalf("first event %+v", ev)
	}
	if err := b.UpdateMeta(func(m *Meta) { m.Ready = true }); err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, events); ev.Type != EventUpdate || !ev.Member.Meta.Ready {
		t.Fatalf("second event %+v", ev)
	}
	_ = b.Shutdown()
	if ev := recv(t, events); ev.Type != EventFail || ev.Member.State != StateDead {
		t.Fatalf("third event %+v", ev)
	}
	for _, et := range []EventType{EventJoin, EventUpdate, EventLeave, EventFail, EventResync, 0} {
		if et.String() == "" {
			t.Fatal("empty name")
		}
	}
	for _, st := range []State{StateAlive, StateSuspect, StateDead, StateLeft, 0} {
		if st.String() == "" {
			t.Fatal("empty state name")
		}
	}
}
