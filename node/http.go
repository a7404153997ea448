package node

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
	"cardsync/membership"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// writeFSMError maps a proposal or query error to an HTTP status.
func writeFSMError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, fsm.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, fsm.ErrInvalid), errors.Is(err, fsm.ErrBadCommand), errors.Is(err, fsm.ErrUnknownCommand), errors.Is(err, fsm.ErrCursorBack):
		code = http.StatusBadRequest
	case errors.Is(err, fsm.ErrStaleEpoch), errors.Is(err, fsm.ErrNotOwner), errors.Is(err, fsm.ErrClaimedElsewhere),
		errors.Is(err, fsm.ErrGroupBusy), errors.Is(err, fsm.ErrMaintenance):
		code = http.StatusConflict
	case errors.Is(err, ErrNoLeader), errors.Is(err, raft.ErrNotLeader), errors.Is(err, errLeaderUnreachable), errors.Is(err, ErrShutdown):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]string{"error": err.Error(), "code": errorCode(err)})
}

func (n *Node) routes() {
	m := n.mux
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "node": n.name})
	})
	m.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !n.Ready() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "node": n.name, "error": "not caught up with a leader"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ready": true, "node": n.name})
	})
	m.HandleFunc("GET /v1/status", n.handleStatus)
	m.HandleFunc("GET /v1/members", n.handleMembers)
	m.HandleFunc("GET /v1/ring", n.handleRing)
	m.HandleFunc("GET /v1/operator/raft/peers", n.handleRaftPeers)
	m.HandleFunc("POST /internal/v1/propose", n.handlePropose)
	m.HandleFunc("GET /internal/v1/peers", n.handlePeers)
	m.HandleFunc("POST "+quotaPath, n.handleQuota)
	n.dataRoutes()
	n.keyringRoutes()
	m.Handle("GET /metrics", n.metricsHandler())
	m.Handle("GET /ui/", http.StripPrefix("/ui/", http.FileServerFS(uiFS())))
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusFound) })
}

// Status is the body of GET /v1/status.
type Status struct {
	Node         string `json:"node"`
	Leader       string `json:"leader"`
	LeaderAddr   string `json:"leader_addr"`
	RaftState    string `json:"raft_state"`
	Term         uint64 `json:"term"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
	LastIndex    uint64 `json:"last_index"`
	Ready        bool   `json:"ready"`
	Voters       int    `json:"voters"`
	Nonvoters    int    `json:"nonvoters"`
	Members      int    `json:"members"`
	AliveMembers int    `json:"alive_members"`
	RingMembers  int    `json:"ring_members"`
	RaftAddr     string `json:"raft_addr"`
	GossipAddr   string `json:"gossip_addr"`
	HTTPAddr     string `json:"http_addr"`
	Maintenance  bool   `json:"maintenance"`
}

// Status reports this node's view of the cluster.
func (n *Node) Status() Status {
	stats := n.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	leaderAddr, leaderID := n.raft.LeaderWithID()
	s := Status{
		Node:         n.name,
		Leader:       string(leaderID),
		LeaderAddr:   string(leaderAddr),
		RaftState:    n.raft.State().String(),
		Term:         u("term"),
		AppliedIndex: n.raft.AppliedIndex(),
		CommitIndex:  u("commit_index"),
		LastIndex:    n.raft.LastIndex(),
		Ready:        n.Ready(),
		RaftAddr:     n.raftAddr,
		GossipAddr:   n.members.GossipAddr(),
		HTTPAddr:     n.HTTPAddr(),
		RingMembers:  len(n.Ring().Members()),
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, sv := range f.Configuration().Servers {
			if sv.Suffrage == raft.Voter {
				s.Voters++
			} else {
				s.Nonvoters++
			}
		}
	}
	for _, m := range n.members.Members() {
		s.Members++
		if m.State == membership.StateAlive {
			s.AliveMembers++
		}
	}
	s.Maintenance, _, _ = n.fsm.Maintenance()
	return s
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, n.Status())
}

// MemberInfo is one row of GET /v1/members.
type MemberInfo struct {
	Name       string    `json:"name"`
	GossipAddr string    `json:"gossip_addr"`
	RaftAddr   string    `json:"raft_addr"`
	HTTPAddr   string    `json:"http_addr"`
	Status     string    `json:"status"`
	Since      time.Time `json:"since"`
	Suffrage   string    `json:"suffrage"`
	Leader     bool      `json:"leader"`
	Ready      bool      `json:"ready"`
	Draining   bool      `json:"draining"`
	OnRing     bool      `json:"on_ring"`
	RingShare  float64   `json:"ring_share"`
}

// MemberInfos lists every member gossip knows with its Raft suffrage and ring position.
func (n *Node) MemberInfos() []MemberInfo {
	suff := map[string]string{}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			suff[string(s.ID)] = s.Suffrage.String()
		}
	}
	_, leader := n.raft.LeaderWithID()
	ring := n.Ring()
	shares := ring.Shares()
	var out []MemberInfo
	for _, m := range n.members.Members() {
		share, on := shares[m.Name]
		s := suff[m.Name]
		if s == "" {
			s = "none"
		}
		out = append(out, MemberInfo{
			Name: m.Name, GossipAddr: m.Addr, RaftAddr: m.Meta.RaftAddr, HTTPAddr: m.Meta.HTTPAddr,
			Status: m.State.String(), Since: m.Since, Suffrage: s, Leader: m.Name == string(leader),
			Ready: m.Meta.Ready, Draining: m.Meta.Draining, OnRing: on, RingShare: share,
		})
	}
	return out
}

func (n *Node) handleMembers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"members": n.MemberInfos()})
}

// RaftPeer is one row of `cardsync operator raft list-peers`.
type RaftPeer struct {
	Node     string `json:"node"`
	ID       string `json:"id"`
	Address  string `json:"address"`
	State    string `json:"state"`
	Voter    bool   `json:"voter"`
	Suffrage string `json:"suffrage"`
}

func (n *Node) handleRaftPeers(w http.ResponseWriter, r *http.Request) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	_, leader := n.raft.LeaderWithID()
	var peers []RaftPeer
	for _, s := range f.Configuration().Servers {
		state := "follower"
		if s.ID == leader {
			state = "leader"
		} else if s.Suffrage == raft.Nonvoter {
			state = "non-voter"
		}
		peers = append(peers, RaftPeer{Node: string(s.ID), ID: string(s.ID), Address: string(s.Address), State: state,
			Voter: s.Suffrage == raft.Voter, Suffrage: s.Suffrage.String()})
	}
	writeJSON(w, http.StatusOK, map[string]any{"peers": peers})
}

func (n *Node) handleRing(w http.ResponseWriter, r *http.Request) {
	ring := n.Ring()
	shards, err := n.fsm.Shards(fsm.ShardFilter{})
	if err != nil {
		writeFSMError(w, err)
		return
	}
	ids := make([]string, len(shards))
	for i, s := range shards {
		ids[i] = s.ID
	}
	owners := ring.Assign(ids)
	counts := map[string]int{}
	for _, o := range owners {
		counts[o]++
	}
	type member struct {
		Name   string  `json:"name"`
		Share  float64 `json:"share"`
		Shards int     `json:"shards"`
	}
	var ms []member
	shares := ring.Shares()
	for _, name := range ring.Members() {
		ms = append(ms, member{Name: name, Share: shares[name], Shards: counts[name]})
	}
	// The join order that Assign replays: every seat, absent ones included.
	type seat struct {
		Name   string `json:"name"`
		Absent bool   `json:"absent"`
	}
	seats := []seat{}
	for _, s := range ring.Seats() {
		seats = append(seats, seat{Name: s.Name, Absent: s.Absent})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"members": ms,
		"seats":   seats,
		"vnodes":  n.cfg.RingVnodes,
		"owners":  owners,
	})
}
