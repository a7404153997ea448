package carrier

import (
	"errors"
)

// errTaken ends a partial query's wait for a slot: another query took it into its call.
var errTaken = errors.New("taken into another query's call")

// partialQuery is a query of fewer cards than the batch size waiting for a concurrency
// slot. The query that gets a slot first may take it into its own call (takeRiders); the
// taker then delivers its share of the answer.
type partialQuery struct {
	iccids []string
	taken  bool // under Account.mu
	done   chan struct{}
	res    []Result
	err    error
}

// enqueuePartial registers a query of fewer cards than a batch as one another query may
// take; nil for a full batch (or a carrier that takes one card per call).
func (a *Account) enqueuePartial(iccids []string) *partialQuery {
	if b := a.client.BatchSize(); b <= 1 || len(iccids) == 0 || len(iccids) >= b {
		return nil
	}
	p := &partialQuery{iccids: iccids, done: make(chan struct{})}
	a.mu.Lock()
	a.partials = append(a.partials, p)
	a.mu.Unlock()
	return p
}

// dequeuePartial withdraws p from the queue; false means another query has taken it.
func (a *Account) dequeuePartial(p *partialQuery) bool {
	if p == nil {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p.taken {
		return false
	}
	a.removePartialLocked(p)
	return true
}

// removePartialLocked drops p (nil: nothing) from the queue; the caller holds a.mu.
func (a *Account) removePartialLocked(p *partialQuery) {
	if p == nil {
		return
	}
	for i, q := range a.partials {
		if q == p {
			a.partials = append(a.partials[:i], a.partials[i+1:]...)
			return
		}
	}
}

// takeRiders takes, oldest first, the waiting partial queries that fit beside a call of
// n cards, and wakes them so they stop waiting for a slot.
func (a *Account) takeRiders(n int) []*partialQuery {
	room := a.client.BatchSize() - n
	a.mu.Lock()
	defer a.mu.Unlock()
	if room <= 0 || len(a.partials) == 0 {
		return nil
	}
	var riders []*partialQuery
	kept := a.partials[:0]
	for _, p := range a.partials {
		if len(p.iccids) <= room {
			p.taken = true
			room -= len(p.iccids)
			riders = append(riders, p)
			continue
		}
		kept = append(kept, p)
	}
	clear(a.partials[len(kept):])
	a.partials = kept
	if len(riders) > 0 {
		a.riders.Add(uint64(len(riders)))
		a.broadcastLocked()
	}
	return riders
}

// wait returns the answer the taker delivers for p. It does not give up when the
// rider's own context ends: the cards are in the taker's call, which is bounded by the
// taker's deadline, and an answer the carrier gave must reach the caller (thrown away,
// its cards would be fetched again by the next round).
func (p *partialQuery) wait() ([]Result, error) {
	<-p.done
	return p.res, p.err
}

// deliver splits one call's answer: the first n results are the caller's, the rest go
// to the riders in order; a failed call fails every one of them.
func deliver(res []Result, err error, n int, riders []*partialQuery) ([]Result, error) {
	off := n
	for _, r := range riders {
		if err == nil {
			r.res = res[off : off+len(r.iccids) : off+len(r.iccids)]
			off += len(r.iccids)
		}
		r.err = err
		close(r.done)
	}
	if err != nil {
		return nil, err
	}
	return res[:n:n], nil
}
