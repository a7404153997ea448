package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/internal/quota"
)

// The cluster-wide token buckets of the carrier accounts (internal/quota) run on the
// Raft leader. Every node asks the leader for a query's call tokens (Tokens); the leader
// answers when the first one is due.

const quotaPath = "/internal/v1/quota"

// quotaStale is how much later than the leader's own wait an answer may arrive and still
// be used: a later one (a stalled process or network) is thrown away and asked again, so
// a call never goes out long after the leader counted it.
const quotaStale = 250 * time.Millisecond

// newQuotaServer builds the quota server for Raft's configuration rc: a deposed leader
// steps down within about two leader leases of losing its quorum.
func (n *Node) newQuotaServer(rc *raft.Config) (*quota.Server, error) {
	qc := quota.DefaultConfig()
	qc.HoldOff = 2*rc.LeaderLeaseTimeout + quotaStale + 250*time.Millisecond
	qc.Logger = n.logger
	qc.Verify = n.verifyLeader
	return quota.NewServer(qc, n.quotaLimits, n.quotaAllow)
}

// verifyLeader confirms this node's leadership with a round of heartbeats.
func (n *Node) verifyLeader(ctx context.Context) error {
	return n.awaitFuture(ctx, n.raft.VerifyLeader())
}

func (n *Node) quotaLimits(account string) (quota.Limits, bool) {
	a, err := n.fsm.Account(account)
	if err != nil {
		return quota.Limits{}, false
	}
	return quota.Limits{RatePerSec: a.RatePerSec, Burst: a.Burst}, true
}

func (n *Node) quotaAllow(node string) error {
	if _, revoked, err := n.fsm.Revoked(node); err != nil || revoked {
		return fmt.Errorf("node %s was declared departed", node)
	}
	return nil
}

// quotaLeadership follows Raft's leadership notifications into the quota server.
func (n *Node) quotaLeadership(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			n.quota.Follow()
			return
		case leading := <-n.leaderNotify:
			if leading {
				n.quota.Lead(time.Now())
			} else {
				n.quota.Follow()
			}
		}
	}
}

// QuotaStats reports the quota server's state on this node.
func (n *Node) QuotaStats() quota.Stats { return n.quota.Stats() }

// Tokens asks the leader for count call tokens of account; it returns when the first is
// due, with each token's offset from then. A request goes ahead of those queued for the
// account in lower lanes (quota.Lane). Without a leader, during a new leader's
// hold-off or when the leader cannot be reached, it asks again until ctx ends. A request
// whose tokens would come after ctx's deadline fails with quota.ErrTooLate (see
// quota.RetryAfter).
func (n *Node) Tokens(ctx context.Context, account string, count int, lane quota.Lane) ([]time.Duration, error) {
	// A node that stops (or is killed) stops asking at once: its carrier calls are over.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(n.ctx, cancel)()
	for {
		offs, err := n.tokensOnce(ctx, quota.Request{Node: n.name, Account: account, Count: count, Lane: lane})
		if err == nil {
			return offs, nil
		}
		if ctx.Err() != nil || errors.Is(err, quota.ErrTooLate) || errors.Is(err, quota.ErrUnknownAccount) || errors.Is(err, quota.ErrRefused) {
			return nil, err
		}
		wait := quota.RetryAfter(err)
		if wait <= 0 {
			wait = 100 * time.Millisecond
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return nil, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
	}
}

var errStaleGrant = errors.New("quota: grant arrived too late to use")

type quotaRequest struct {
	Node    string `json:"node"`
	Account string `json:"account"`
	Count   int    `json:"count"`
	WaitMS  int64  `json:"wait_ms"`
	// The request's lane (quota.Lane) as two flags, which a member of an earlier
	// version (no urgent lane) reads as a prioritized request.
	Priority bool `json:"priority,omitempty"`
	Urgent   bool `json:"urgent,omitempty"`
}

type quotaReply struct {
	Offsets []int64 `json:"offsets_ns,omitempty"`
	// PlannedNS is how long the leader planned to hold the request before answering.
	PlannedNS int64  `json:"planned_ns,omitempty"`
	Code      string `json:"code,omitempty"`
	Error     string `json:"error,omitempty"`
	RetryMS   int64  `json:"retry_after_ms,omitempty"`
}

func (n *Node) tokensOnce(ctx context.Context, qr quota.Request) ([]time.Duration, error) {
	if n.raft.State() == raft.Leader {
		offs, _, err := n.quota.GrantPlanned(ctx, qr)
		return offs, err
	}
	addr, err := n.leaderHTTPAddr()
	if err != nil {
		return nil, err
	}
	if addr == n.HTTPAddr() {
		return nil, quota.ErrNotLeader
	}
	req := quotaRequest{Node: qr.Node, Account: qr.Account, Count: qr.Count, WaitMS: 30_000,
		Priority: qr.Lane >= quota.LanePriority, Urgent: qr.Lane >= quota.LaneUrgent}
	if dl, ok := ctx.Deadline(); ok {
		req.WaitMS = time.Until(dl).Milliseconds()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, stop := n.whileLeader(ctx, addr)
	defer stop()
	sent := time.Now()
	resp, err := n.forwarder.call(ctx, http.MethodPost, addr, quotaPath, body)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLeader, err)
	}
	defer resp.Body.Close()
	var rep quotaReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&rep); err != nil {
		return nil, fmt.Errorf("quota reply (status %d): %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, quotaError(rep)
	}
	if late := time.Since(sent) - time.Duration(rep.PlannedNS); late > quotaStale {
		return nil, fmt.Errorf("%w: %v after the leader's answer", errStaleGrant, late.Round(time.Millisecond))
	}
	if len(rep.Offsets) != qr.Count {
		return nil, fmt.Errorf("quota reply: %d offsets for %d tokens", len(rep.Offsets), qr.Count)
	}
	offs := make([]time.Duration, qr.Count)
	for i, o := range rep.Offsets {
		offs[i] = time.Duration(o)
	}
	return offs, nil
}

var quotaCodes = []struct {
	code string
	err  error
}{
	{"not_leader", quota.ErrNotLeader}, {"hold_off", quota.ErrHoldOff}, {"too_late", quota.ErrTooLate},
	{"unknown_account", quota.ErrUnknownAccount}, {"refused", quota.ErrRefused},
}

func quotaError(rep quotaReply) error {
	for _, c := range quotaCodes {
		if c.code == rep.Code {
			err := fmt.Errorf("%w: %s", c.err, rep.Error)
			if rep.RetryMS > 0 {
				return &quota.WaitError{Err: err, RetryAfter: time.Duration(rep.RetryMS) * time.Millisecond}
			}
			return err
		}
	}
	return fmt.Errorf("quota: %s", rep.Error)
}

func (n *Node) handleQuota(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<10))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, quotaReply{Error: "read body: " + err.Error()})
		return
	}
	if err := n.forwarder.verify(r, body); err != nil {
		writeJSON(w, http.StatusUnauthorized, quotaReply{Error: err.Error()})
		return
	}
	var req quotaRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Node == "" || req.Account == "" || req.Count < 1 || req.Count > 1024 {
		writeJSON(w, http.StatusBadRequest, quotaReply{Error: "want {node, account, count 1..1024, wait_ms}"})
		return
	}
	ctx := r.Context()
	if req.WaitMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.WaitMS)*time.Millisecond)
		defer cancel()
	}
	lane := quota.LaneRest
	switch {
	case req.Urgent:
		lane = quota.LaneUrgent
	case req.Priority:
		lane = quota.LanePriority
	}
	offs, planned, err := n.quota.GrantPlanned(ctx, quota.Request{Node: req.Node, Account: req.Account, Count: req.Count, Lane: lane})
	if err != nil {
		rep := quotaReply{Error: err.Error(), RetryMS: quota.RetryAfter(err).Milliseconds()}
		code := http.StatusServiceUnavailable
		for _, c := range quotaCodes {
			if errors.Is(err, c.err) {
				rep.Code = c.code
			}
		}
		switch rep.Code {
		case "unknown_account":
			code = http.StatusNotFound
		case "refused":
			code = http.StatusForbidden
		case "too_late", "hold_off":
			code = http.StatusTooManyRequests
		}
		writeJSON(w, code, rep)
		return
	}
	rep := quotaReply{Offsets: make([]int64, len(offs)), PlannedNS: int64(planned)}
	for i, o := range offs {
		rep.Offsets[i] = int64(o)
	}
	writeJSON(w, http.StatusOK, rep)
}

// whileLeader returns a context that ends with ctx, with its cancel function, or as soon
// as this node sees another leader than the one at addr (or none): a request held by a
// leader that was paused or cut off is abandoned and asked of the new one, not waited
// out.
func (n *Node) whileLeader(ctx context.Context, addr string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if a, err := n.leaderHTTPAddr(); err != nil || a != addr {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel
}
