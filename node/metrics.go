package node

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"cardsync/fsm"
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
	r.MustRegister(newShardCollector(n))
}

// shardCollector reports the shards' derived states from one read of the replicated
// state per scrape: how many run, are due or idle, and how long the most overdue shard
// has waited. Every node reports the same cluster-wide view (of its replica).
type shardCollector struct {
	n                              *Node
	stateDesc, lagDesc, reasonDesc *prometheus.Desc
}

func newShardCollector(n *Node) *shardCollector {
	return &shardCollector{n: n,
		stateDesc: prometheus.NewDesc("cardsync_shards_by_state",
			"Shards by derived state: running (live claim), due (next run reached, not running) or idle.", []string{"state"}, nil),
		lagDesc: prometheus.NewDesc("cardsync_shard_due_lag_seconds",
			"Seconds the most overdue shard has been due without running (0 when none is waiting).", nil, nil),
		reasonDesc: prometheus.NewDesc("cardsync_shards_waiting",
			"Due shards that are not running, by why not (maintenance, group_busy, no_ring_owner, waiting_for_owner, other).", []string{"reason"}, nil),
	}
}

func (c *shardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.stateDesc
	ch <- c.lagDesc
	ch <- c.reasonDesc
}

func (c *shardCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	views, err := c.n.ShardViews(fsm.ShardFilter{}, "", now)
	if err != nil {
		return
	}
	states := map[string]float64{"running": 0, "due": 0, "idle": 0}
	reasons := map[string]float64{"maintenance": 0, "group_busy": 0, "no_ring_owner": 0, "waiting_for_owner": 0, "other": 0}
	var lag time.Duration
	for _, v := range views {
		switch {
		case v.Running:
			states["running"]++
		case v.Due:
			states["due"]++
			reasons[waitingReason(v.Reason)]++
			if d := now.Sub(v.Checkpoint.NextRunAt); v.Checkpoint.State != "running" && d > lag {
				lag = d
			}
		default:
			states["idle"]++
		}
	}
	for s, v := range states {
		ch <- prometheus.MustNewConstMetric(c.stateDesc, prometheus.GaugeValue, v, s)
	}
	for r, v := range reasons {
		ch <- prometheus.MustNewConstMetric(c.reasonDesc, prometheus.GaugeValue, v, r)
	}
	ch <- prometheus.MustNewConstMetric(c.lagDesc, prometheus.GaugeValue, lag.Seconds())
}

// waitingReason maps a shard view's reason to a bounded label value.
func waitingReason(reason string) string {
	switch {
	case reason == "maintenance":
		return "maintenance"
	case strings.HasPrefix(reason, "group busy"):
		return "group_busy"
	case strings.HasPrefix(reason, "no ready member"):
		return "no_ring_owner"
	case strings.HasPrefix(reason, "due: waiting for"):
		return "waiting_for_owner"
	}
	return "other"
}

func (n *Node) metricsHandler() http.Handler {
	return promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{})
}
