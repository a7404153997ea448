package node

import (
	"net/http"
	"strconv"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"cardsync/membership"
)

// Registry is the node's Prometheus registry; the syncer and carrier accounts register
// their collectors on it. Each node has its own (no global registry), so several nodes
// can run in one process.
func (n *Node) Registry() *prometheus.Registry { return n.registry }

func (n *Node) initMetrics() {
	r := prometheus.NewRegistry()
	n.registry = r
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gauge := func(name, help string, f func() float64) {
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	stat := func(key string) func() float64 {
		return func() float64 {
			v, _ := strconv.ParseFloat(n.raft.Stats()[key], 64)
			return v
		}
	}
	gauge("cardsync_raft_leader", "1 if this node is the Raft leader.", func() float64 {
		if n.raft.State() == raft.Leader {
			return 1
		}
		return 0
	})
	gauge("cardsync_raft_term", "Current Raft term.", stat("term"))
	gauge("cardsync_raft_commit_index", "Raft commit index known to this node.", stat("commit_index"))
	gauge("cardsync_raft_applied_index", "Raft index applied to this node's FSM.", func() float64 { return float64(n.raft.AppliedIndex()) })
	gauge("cardsync_raft_peers", "Servers in the Raft configuration.", func() float64 { return float64(n.peerCount()) })
	gauge("cardsync_ready", "1 if the node is caught up and may be on the ring.", func() float64 {
		if n.Ready() {
			return 1
		}
		return 0
	})
	gauge("cardsync_ring_members", "Members on the hash ring.", func() float64 { return float64(len(n.Ring().Members())) })
	r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cardsync_members_alive", Help: "Gossip members alive."}, func() float64 {
		c := 0
		for _, m := range n.members.Members() {
			if m.State == membership.StateAlive {
				c++
			}
		}
		return float64(c)
	}))
	gauge("cardsync_cards", "Cards in the replicated inventory.", func() float64 {
		c, _ := n.fsm.Counts()
		return float64(c.Cards)
	})
	gauge("cardsync_shards", "Shards in the replicated inventory.", func() float64 {
		c, _ := n.fsm.Counts()
		return float64(c.Shards)
	})
	gauge("cardsync_claims", "Shards with an owner.", func() float64 {
		c, _ := n.fsm.Counts()
		return float64(c.Claims)
	})
}

func (n *Node) metricsHandler() http.Handler {
	return promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{})
}
