package membership

import (
	"sync"
)

// EventType says what happened to a member.
type EventType int

const (
	// EventJoin: a member became alive (first seen, or back after being
	// dead or gone).
	EventJoin EventType = iota + 1
	// EventUpdate: an alive member changed its metadata.
	EventUpdate
	// EventLeave: a member left gracefully (State Left).
	EventLeave
	// EventFail: a member was declared dead by failure detection
	// (State Dead).
	EventFail
	// EventResync: the subscriber fell behind and events were dropped;
	// re-read Members to rebuild its view. Member is empty.
	EventResync
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	case EventResync:
		return "resync"
	default:
		return "unknown"
	}
}

// Event is one change in the member table, delivered to subscribers in the
// order the changes were applied.
type Event struct {
	Type   EventType
	Member Member
}

// subscriber queues events for one consumer. Producers never block: when the
// queue is full it is dropped and replaced by a single pending resync, which
// the pump delivers before anything newer.
type subscriber struct {
	out    chan Event
	wake   chan struct{}
	done   chan struct{}
	once   sync.Once
	limit  int
	mu     sync.Mutex
	queue  []Event
	resync bool
}

func newSubscriber(limit int) *subscriber {
	s := &subscriber{
		out:   make(chan Event),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		limit: limit,
	}
	go s.pump()
	return s
}

// push queues e without blocking.
func (s *subscriber) push(e Event) {
	s.mu.Lock()
	if len(s.queue) >= s.limit {
		s.queue = s.queue[:0]
		s.resync = true
	}
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next takes the next event to deliver, if any.
func (s *subscriber) next() (Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resync {
		s.resync = false
		return Event{Type: EventResync}, true
	}
	if len(s.queue) == 0 {
		return Event{}, false
	}
	e := s.queue[0]
	s.queue[0] = Event{}
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil
	}
	return e, true
}

func (s *subscriber) pump() {
	defer close(s.out)
	for {
		e, ok := s.next()
		if !ok {
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		select {
		case s.out <- e:
		case <-s.done:
			return
		}
	}
}

func (s *subscriber) close() {
	s.once.Do(func() { close(s.done) })
}
