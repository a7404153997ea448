package node

import (
	"time"

	"cardsync/fsm"
)

// ProposalObserver sees every proposal made through Propose on this node: the command as
// proposed (unstamped), its outcome, and when the call started and returned.
type ProposalObserver func(cmd []byte, res *fsm.Result, err error, start, end time.Time)

type observerBox struct{ fn ProposalObserver }

// SetProposalObserver installs (or, with nil, removes) the proposal observer. Test
// harnesses use it to record client-side histories; it costs nothing when unset.
func (n *Node) SetProposalObserver(fn ProposalObserver) {
	if fn == nil {
		n.observer.Store(nil)
		return
	}
	n.observer.Store(&observerBox{fn: fn})
}

func (n *Node) proposalObserver() ProposalObserver {
	if b := n.observer.Load(); b != nil {
		return b.fn
	}
	return nil
}
