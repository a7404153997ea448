package node

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"cardsync/fsm"
)

// Config configures one cardsync node.
type Config struct {
	// Name is the node's stable identity: both its memberlist name and its Raft ServerID.
	// Empty means: read it from the data dir, or generate and persist one.
	Name string
	// DataDir holds the node name, the Raft log (raft.db), snapshots and the FSM (fsm.db).
	DataDir string
	// GossipAddr is the memberlist bind address (ip:port; port 0 picks a free one).
	GossipAddr string
	// RaftAddr is the Raft TCP bind and advertise address (ip:port; port 0 picks a free one).
	RaftAddr string
	// HTTPAddr is the HTTP API address (default 127.0.0.1:8700; port 0 picks a free one).
	HTTPAddr string
	// Join lists gossip addresses of existing members (any of them is enough).
	Join []string
	// BootstrapExpect forms a new cluster once this many members with the same value are seen.
	BootstrapExpect int
	// Dev bootstraps a single-node cluster at once.
	Dev bool
	// Profile is the membership timing profile: "lan" or "fast".
	Profile string
	// RaftMultiplier scales Raft's timeouts (1 = hashicorp/raft defaults).
	RaftMultiplier float64
	// ReconcileInterval is how often the leader reconciles Raft servers with gossip
	// besides reacting to membership events.
	ReconcileInterval time.Duration
	// DeadServerReapTimeout is how long a member must be dead before the leader removes it
	// from the Raft configuration.
	DeadServerReapTimeout time.Duration
	// StabilizationTime is how long a non-voter must be caught up before it is promoted.
	StabilizationTime time.Duration
	// MaxVoters is the target voter count: 3 or 5.
	MaxVoters int
	// RingVnodes is the number of virtual nodes per member on the hash ring.
	RingVnodes int
	// ClusterSecret authenticates internal (forwarded) requests between nodes with an
	// HMAC; empty disables authentication (single-host and dev clusters).
	ClusterSecret string
	// GossipKey is an optional memberlist encryption key (16, 24 or 32 bytes).
	GossipKey []byte
	// AdminToken, when set, must be sent as "Authorization: Bearer <token>" with every
	// mutating API request, and with every request when the API listens on a non-loopback
	// address (health probes excepted).
	AdminToken string
	// TLSCertFile, TLSKeyFile and TLSCAFile (PEM; all three or none) turn on TLS for the
	// Raft transport (mutually authenticated), the HTTP API and the forwarding client.
	// Internal requests with a client certificate signed by the CA need no cluster secret.
	TLSCertFile string
	TLSKeyFile  string
	TLSCAFile   string
	// SnapshotThreshold and SnapshotInterval tune Raft snapshots.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// FSMNoSync turns off fsync on the FSM's bbolt file (tests only).
	FSMNoSync bool

	// GossipTransport, if set, replaces memberlist's network transport (fault injection).
	GossipTransport memberlist.NodeAwareTransport
	// WrapRaftStream, if set, wraps the Raft stream layer (fault injection).
	WrapRaftStream func(raft.StreamLayer) raft.StreamLayer
	// WrapForwardDial, if set, wraps the dialer of the internal HTTP client that forwards
	// proposals to the leader and asks peers for their Raft state (fault injection).
	WrapForwardDial func(DialFunc) DialFunc

	Logger hclog.Logger
}

// DefaultConfig returns a configuration for a node listening on loopback.
func DefaultConfig() Config {
	return Config{
		DataDir:               "cardsync-data",
		GossipAddr:            "127.0.0.1:7946",
		RaftAddr:              "127.0.0.1:7947",
		HTTPAddr:              "127.0.0.1:8700",
		Profile:               "lan",
		RaftMultiplier:        1,
		ReconcileInterval:     60 * time.Second,
		DeadServerReapTimeout: 5 * time.Minute,
		StabilizationTime:     3 * time.Second,
		MaxVoters:             3,
		RingVnodes:            1024,
		SnapshotThreshold:     8192,
		SnapshotInterval:      30 * time.Second,
	}
}

// ErrInvalidConfig is wrapped by every configuration error.
var ErrInvalidConfig = errors.New("invalid node config")

// Validate reports every problem in the configuration.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, a...)...))
	}
	if c.DataDir == "" {
		bad("data dir is required")
	}
	for name, addr := range map[string]string{"gossip": c.GossipAddr, "raft": c.RaftAddr, "http": c.HTTPAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("%s address %q: %v", name, addr, err)
		}
	}
	if c.Profile != "lan" && c.Profile != "fast" {
		bad("profile %q: want lan or fast", c.Profile)
	}
	if c.RaftMultiplier < 0.1 || c.RaftMultiplier > 10 {
		bad("raft multiplier %v: want 0.1..10", c.RaftMultiplier)
	}
	if c.BootstrapExpect < 0 {
		bad("bootstrap-expect %d is negative", c.BootstrapExpect)
	}
	if c.Dev && c.BootstrapExpect > 1 {
		bad("-dev and -bootstrap-expect %d exclude each other", c.BootstrapExpect)
	}
	if c.MaxVoters != 3 && c.MaxVoters != 5 {
		bad("max voters %d: want 3 or 5", c.MaxVoters)
	}
	if c.ReconcileInterval <= 0 || c.DeadServerReapTimeout <= 0 || c.StabilizationTime < 0 {
		bad("reconcile interval, reap timeout and stabilization time must be positive")
	}
	if c.RingVnodes < 1 {
		bad("ring vnodes %d: want at least 1", c.RingVnodes)
	}
	if n := len(c.GossipKey); n != 0 && n != 16 && n != 24 && n != 32 {
		bad("gossip key is %d bytes: want 16, 24 or 32", n)
	}
	if err := c.validateSecurity(); err != nil {
		errs = append(errs, fmt.Errorf("%w: %v", ErrInvalidConfig, err))
	}
	return errors.Join(errs...)
}

func (c Config) raftConfig(name string, logger hclog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	m := c.RaftMultiplier
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) * m) }
	rc.LocalID = raft.ServerID(name)
	rc.HeartbeatTimeout = scale(rc.HeartbeatTimeout)
	rc.ElectionTimeout = scale(rc.ElectionTimeout)
	rc.LeaderLeaseTimeout = scale(rc.LeaderLeaseTimeout)
	// Raft tells a follower the new commit index with the next AppendEntries, and when
	// no entry follows, only after CommitTimeout (raft's default 50 ms, up to twice that
	// with its jitter). A follower's proposal waits for its own replica to apply the entry
	// (read your writes), so when the log goes quiet it waited up to 100 ms: the flush
	// p99 of the forwarded writers in bench/ (BenchmarkWritePath: 61-64 ms against etcd's
	// 17-23 ms). 10 ms costs an empty AppendEntries per follower every 10-20 ms when
	// idle (0.012 -> 0.016 cores per member in BenchmarkIdleCost -short).
	rc.CommitTimeout = scale(10 * time.Millisecond)
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.SnapshotInterval = c.SnapshotInterval
	rc.TrailingLogs = 10240
	// The FSM file keeps its applied index and Apply skips entries at or below it, so a
	// restart resumes from the file and replays only the log after the latest snapshot.
	// startRaft turns the restore back on when the FSM cannot (fsmNeedsSnapshot).
	rc.NoSnapshotRestoreOnStart = true
	rc.BatchApplyCh = true
	rc.ShutdownOnRemove = false
	rc.Logger = logger
	return rc
}

// fsmNeedsSnapshot says why the FSM must be restored from the latest Raft snapshot on
// this start ("" when it can resume from its own file). With NoSnapshotRestoreOnStart
// Raft resumes applying after the latest snapshot's index, so the FSM file must hold at
// least that index: it does not when Open rebuilt it empty (a file possibly torn by an
// OS crash or power loss is moved aside) or when the file was lost or replaced by an
// older one.
func fsmNeedsSnapshot(f *fsm.FSM, snaps raft.SnapshotStore) (string, error) {
	if f.Rebuilt() {
		return "fsm file may have been torn by a crash and was rebuilt empty", nil
	}
	list, err := snaps.List()
	if err != nil {
		return "", fmt.Errorf("list raft snapshots: %w", err)
	}
	if len(list) > 0 && f.AppliedIndex() < list[0].Index {
		return fmt.Sprintf("fsm applied index %d is behind raft snapshot %d", f.AppliedIndex(), list[0].Index), nil
	}
	return "", nil
}
