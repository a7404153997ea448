package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"cardsync/fsm"
	"cardsync/internal/quota"
	"cardsync/membership"
)

// Sentinel errors callers branch on.
var (
	// ErrNoLeader means no leader is known right now; retry later.
	ErrNoLeader = errors.New("no raft leader")
	// ErrShutdown means the node is shutting down.
	ErrShutdown = errors.New("node is shut down")
)

const nameFile = "node-name"

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Node is one cardsync cluster member.
type Node struct {
	cfg    Config
	name   string
	logger hclog.Logger

	fsm       *fsm.FSM
	raft      *raft.Raft
	trans     *raft.NetworkTransport
	logStore  *raftboltdb.BoltStore
	raftAddr  string
	members   *membership.Membership
	httpLn    net.Listener
	httpSrv   *http.Server
	forwarder *forwarder
	tls       *tlsBundle

	ringMu   sync.RWMutex
	ring     *membership.Ring
	ringSubs []chan struct{}

	ready atomic.Bool
	// The leader's commit index as last asked by readiness (readinessLoop only).
	leaderCommit   uint64
	leaderCommitAt time.Time
	observer       atomic.Pointer[observerBox]

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	shutOnce sync.Once
	mux      *http.ServeMux
	registry *prometheus.Registry

	// quota grants the carrier accounts' call tokens while this node leads (quota.go);
	// leaderNotify carries Raft's leadership changes to it.
	quota        *quota.Server
	leaderNotify chan bool
}

// New starts a node: FSM, Raft, gossip and the HTTP API. It returns once all listeners are
// open; joining and bootstrapping continue in the background.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	name, err := loadOrCreateName(cfg.DataDir, cfg.Name)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, name: name, logger: cfg.Logger.Named("node").With("node", name)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.ring = membership.NewRing(nil, cfg.RingVnodes)
	if n.tls, err = loadTLS(cfg); err != nil {
		return nil, err
	}

	ok := false
	defer func() {
		if !ok {
			n.closeAll()
		}
	}()

	fcfg := fsm.DefaultConfig()
	fcfg.Path = filepath.Join(cfg.DataDir, "fsm.db")
	fcfg.NoSync = cfg.FSMNoSync
	if n.fsm, err = fsm.Open(fcfg, cfg.Logger.Named("fsm")); err != nil {
		return nil, fmt.Errorf("open fsm: %w", err)
	}
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	n.httpLn, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen http %s: %w", cfg.HTTPAddr, err)
	}
	n.forwarder = newForwarder(cfg.ClusterSecret)
	if cfg.WrapForwardDial != nil {
		n.forwarder.tr.DialContext = cfg.WrapForwardDial(n.forwarder.tr.DialContext)
	}
	if n.tls != nil {
		n.forwarder.useTLS(n.tls.client)
	}
	if err := n.startMembership(); err != nil {
		return nil, err
	}
	n.mux = http.NewServeMux()
	n.initMetrics()
	n.routes()
	n.httpSrv = &http.Server{
		Handler:           n.guard(n.mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          n.logger.Named("http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var err error
		if n.tls != nil {
			n.httpSrv.TLSConfig = n.tls.httpServer
			err = n.httpSrv.ServeTLS(n.httpLn, "", "")
		} else {
			err = n.httpSrv.Serve(n.httpLn)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("http server stopped", "error", err)
		}
	}()

	if cfg.Dev {
		if err := n.bootstrapSelf(); err != nil {
			return nil, err
		}
	}
	n.goRun(n.joinLoop)
	n.goRun(n.bootstrapLoop)
	n.goRun(n.leaderLoop)
	n.goRun(n.readinessLoop)
	n.goRun(n.ringLoop)
	n.goRun(n.quotaLeadership)
	ok = true
	n.warnInsecure()
	n.logger.Info("node started", "raft", n.raftAddr, "gossip", n.members.GossipAddr(), "http", n.HTTPAddr())
	return n, nil
}

func (n *Node) goRun(f func(context.Context)) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
}

func loadOrCreateName(dir, want string) (string, error) {
	path := filepath.Join(dir, nameFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		have := strings.TrimSpace(string(b))
		if want != "" && want != have {
			return "", fmt.Errorf("%w: data dir %s belongs to node %q, not %q", ErrInvalidConfig, dir, have, want)
		}
		return have, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("read node name: %w", err)
	}
	name := want
	if name == "" {
		var r [4]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", err
		}
		host, _ := os.Hostname()
		host = strings.Split(host, ".")[0]
		if !validName.MatchString(host) || len(host) > 40 {
			host = "node"
		}
		name = host + "-" + hex.EncodeToString(r[:])
	}
	if !validName.MatchString(name) {
		return "", fmt.Errorf("%w: node name %q: letters, digits, '.', '_' and '-' only, at most 63", ErrInvalidConfig, name)
	}
	if err := os.WriteFile(path, []byte(name+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("persist node name: %w", err)
	}
	return name, nil
}

func (n *Node) startRaft() error {
	logger := n.cfg.Logger.Named("raft")
	ln, err := net.Listen("tcp", n.cfg.RaftAddr)
	if err != nil {
		return fmt.Errorf("listen raft %s: %w", n.cfg.RaftAddr, err)
	}
	n.raftAddr = ln.Addr().String()
	var stream raft.StreamLayer = &tcpStream{ln: ln}
	if n.tls != nil {
		stream = &tlsStream{ln: ln, server: n.tls.raftServer, client: n.tls.client}
	}
	if n.cfg.WrapRaftStream != nil {
		stream = n.cfg.WrapRaftStream(stream)
	}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  logger,
	})
	n.logStore, err = raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(n.cfg.DataDir, "raft.db"),
		BoltOptions: &bolt.Options{
			Timeout:        time.Second,
			NoFreelistSync: true,
			FreelistType:   bolt.FreelistMapType,
		},
	})
	if err != nil {
		return fmt.Errorf("open raft log: %w", err)
	}
	logs, err := raft.NewLogCache(512, n.logStore)
	if err != nil {
		return err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.cfg.DataDir, 2, logger)
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	rc := n.cfg.raftConfig(n.name, logger)
	if n.quota, err = n.newQuotaServer(rc); err != nil {
		return err
	}
	n.leaderNotify = make(chan bool, 16)
	rc.NotifyCh = n.leaderNotify
	why, err := fsmNeedsSnapshot(n.fsm, snaps)
	if err != nil {
		return err
	}
	if why != "" {
		// Raft restores the latest snapshot into the FSM, then replays the log after it.
		rc.NoSnapshotRestoreOnStart = false
		n.logger.Warn("fsm restores the latest raft snapshot on this start", "reason", why)
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("%w: raft: %v", ErrInvalidConfig, err)
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, logs, n.logStore, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	return nil
}

func (n *Node) bootstrapSelf() error {
	has, err := n.hasState()
	if err != nil || has {
		return err
	}
	f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raft.ServerID(n.name), Address: raft.ServerAddress(n.raftAddr),
	}}})
	if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap: %w", err)
	}
	return nil
}

func (n *Node) hasState() (bool, error) {
	last, err := n.logStore.LastIndex()
	if err != nil {
		return false, err
	}
	if last > 0 {
		return true, nil
	}
	cfg := n.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return false, err
	}
	return len(cfg.Configuration().Servers) > 0, nil
}

// Name is the node's stable identity.
func (n *Node) Name() string { return n.name }

// HTTPAddr is the address the HTTP API listens on.
func (n *Node) HTTPAddr() string { return n.httpLn.Addr().String() }

// RaftAddr is the Raft transport address.
func (n *Node) RaftAddr() string { return n.raftAddr }

// GossipAddr is the memberlist address others join.
func (n *Node) GossipAddr() string { return n.members.GossipAddr() }

// FSM is the node's local replica of the replicated state (read-only use).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// Raft exposes the Raft instance (status pages and tests).
func (n *Node) Raft() *raft.Raft { return n.raft }

// Membership exposes the gossip layer.
func (n *Node) Membership() *membership.Membership { return n.members }

// Mux lets the binary mount further handlers (syncer status, dashboard) on the API server.
func (n *Node) Mux() *http.ServeMux { return n.mux }

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's name and Raft address ("" when unknown).
func (n *Node) Leader() (name, addr string) {
	a, id := n.raft.LeaderWithID()
	return string(id), string(a)
}

// LeaderContact is how long since this node last heard from the Raft leader; 0 on the
// leader while it leads.
//
// Contact also requires that this node's own gossip agrees: a follower whose gossip has
// declared the leader dead or gone, or a leader whose gossip sees no majority of the
// voters alive, is reported out of contact (an hour). That is the view of a member
// behind a one-way partition: it still hears the leader's heartbeats, but its own
// packets are lost, so the others have declared it dead and taken over its work, and
// it must not act as if it still held its place.
func (n *Node) LeaderContact() time.Duration {
	const out = time.Hour
	if n.raft.State() == raft.Leader {
		if !n.majorityAlive() {
			return out
		}
		return 0
	}
	last := n.raft.LastContact()
	if last.IsZero() {
		return out
	}
	if _, id := n.raft.LeaderWithID(); id != "" && n.members != nil {
		if m, ok := n.members.Member(string(id)); ok && (m.State == membership.StateDead || m.State == membership.StateLeft) {
			return out
		}
	}
	return time.Since(last)
}

// majorityAlive reports whether gossip sees a majority of the Raft voters (this node
// included) alive or suspect.
func (n *Node) majorityAlive() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	voters, alive := 0, 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if string(s.ID) == n.name {
			alive++
			continue
		}
		if n.members == nil {
			continue
		}
		if m, ok := n.members.Member(string(s.ID)); ok && (m.State == membership.StateAlive || m.State == membership.StateSuspect) {
			alive++
		}
	}
	return alive > voters/2
}

// Ready reports whether the node has a leader and has applied the log up to the commit
// index it knows: only ready nodes are on the hash ring.
func (n *Node) Ready() bool { return n.ready.Load() }

// Propose submits a command (see package fsm) to the cluster and returns the FSM's result.
// On a follower the command is forwarded to the leader. Rule violations come back as the
// FSM's errors (errors.Is works across forwarding).
func (n *Node) Propose(ctx context.Context, cmd []byte) (res *fsm.Result, err error) {
	return n.propose(ctx, cmd, true)
}

// ProposeCommitted is Propose without read-your-writes: it returns once the leader has
// applied the command, without waiting for this node's replica to apply it too (on a
// follower that wait is the next replication round plus an fsync and an apply). For
// writers that do not read their write back from this node, such as a sync round's
// intermediate flushes.
func (n *Node) ProposeCommitted(ctx context.Context, cmd []byte) (*fsm.Result, error) {
	return n.propose(ctx, cmd, false)
}

func (n *Node) propose(ctx context.Context, cmd []byte, readYourWrites bool) (res *fsm.Result, err error) {
	if obs := n.proposalObserver(); obs != nil {
		start := time.Now()
		defer func() { obs(cmd, res, err, start, time.Now()) }()
	}
	if _, err := fsm.Decode(cmd); err != nil {
		return nil, err
	}
	// Retryable failures (no leader yet, leadership moving) are retried with a capped
	// backoff until ctx ends, or for proposeRetryWindow when ctx has no deadline: a write
	// issued during an election waits for the new leader instead of failing.
	retryUntil := time.Now().Add(proposeRetryWindow)
	if dl, ok := ctx.Deadline(); ok {
		retryUntil = dl
	}
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			backoff := min(time.Duration(attempt*attempt)*100*time.Millisecond, time.Second)
			if !time.Now().Add(backoff).Before(retryUntil) {
				return nil, lastErr
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, errors.Join(ctx.Err(), lastErr)
			case <-n.ctx.Done():
				t.Stop()
				return nil, ErrShutdown
			case <-t.C:
			}
		}
		var res *fsm.Result
		var index uint64
		var err error
		if n.raft.State() == raft.Leader {
			res, index, err = n.applyLocal(ctx, cmd)
		} else {
			res, index, err = n.forward(ctx, cmd)
		}
		if err == nil {
			// Read your writes: callers read the local replica next, so wait until it has
			// applied the entry (a follower trails the leader by a heartbeat at most).
			if readYourWrites {
				n.waitApplied(ctx, index)
			}
			return res, nil
		}
		if !retryable(err) {
			return res, err
		}
		lastErr = err
	}
}

// proposeRetryWindow bounds the retries of a proposal whose context has no deadline.
const proposeRetryWindow = 15 * time.Second

func retryable(err error) bool {
	return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, ErrNoLeader) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, errLeaderUnreachable)
}

// waitApplied waits (bounded) until the local FSM has applied index.
func (n *Node) waitApplied(ctx context.Context, index uint64) {
	if index == 0 || n.fsm.AppliedIndex() >= index {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stop := context.AfterFunc(n.ctx, cancel)
	defer stop()
	// WaitApplied returns once the applied index passes its argument.
	_, _ = n.fsm.WaitApplied(wctx, index-1)
}

// awaitFuture returns f's error. A future still queued in one of Raft's channels when
// Raft shuts down is never answered, so it waits only while ctx and the node run
// (ErrShutdown when the node stops first).
func (n *Node) awaitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.ctx.Done():
		return ErrShutdown
	}
}

// applyLocal applies a command on the leader and returns the FSM's result and the log
// index of the entry.
func (n *Node) applyLocal(ctx context.Context, cmd []byte) (*fsm.Result, uint64, error) {
	stamped := make([]byte, len(cmd))
	copy(stamped, cmd)
	if err := fsm.Stamp(stamped, time.Now()); err != nil {
		return nil, 0, err
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, 0, context.DeadlineExceeded
		}
	}
	f := n.raft.Apply(stamped, timeout)
	if err := n.awaitFuture(context.Background(), f); err != nil {
		if errors.Is(err, ErrShutdown) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, 0, fmt.Errorf("outcome unknown: %w", err)
		}
		return nil, 0, err
	}
	switch r := f.Response().(type) {
	case error:
		return nil, f.Index(), r
	case *fsm.Result:
		return r, f.Index(), nil
	case nil:
		return &fsm.Result{}, f.Index(), nil
	default:
		return nil, f.Index(), fmt.Errorf("unexpected fsm response %T", r)
	}
}

// Shutdown stops the node gracefully: transfers leadership if it leads, leaves gossip,
// stops the HTTP API, Raft and the FSM.
func (n *Node) Shutdown() error {
	var err error
	n.shutOnce.Do(func() {
		if n.raft != nil && n.raft.State() == raft.Leader && n.peerCount() > 1 {
			if f := n.raft.LeadershipTransfer(); f.Error() != nil {
				n.logger.Warn("leadership transfer failed", "error", f.Error())
			}
		}
		if n.members != nil {
			if lerr := n.members.Leave(2 * time.Second); lerr != nil {
				n.logger.Warn("leave gossip", "error", lerr)
			}
		}
		err = n.closeAll()
	})
	return err
}

// Kill stops the node abruptly: no leadership transfer, no gossip leave (tests: hard kill).
func (n *Node) Kill() error {
	var err error
	n.shutOnce.Do(func() { err = n.closeAll() })
	return err
}

func (n *Node) closeAll() error {
	if n.cancel != nil {
		n.cancel()
	}
	var errs []error
	if n.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = n.httpSrv.Shutdown(ctx)
		cancel()
		_ = n.httpSrv.Close()
	} else if n.httpLn != nil {
		_ = n.httpLn.Close()
	}
	if n.members != nil {
		if err := n.members.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.raft != nil {
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.trans != nil {
		_ = n.trans.Close()
	}
	n.wg.Wait()
	if n.logStore != nil {
		if err := n.logStore.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.forwarder != nil {
		n.forwarder.close()
	}
	if n.fsm != nil {
		if err := n.fsm.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (n *Node) peerCount() int {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	return len(f.Configuration().Servers)
}

// tcpStream is raft's stream layer over a plain TCP listener; it can be wrapped for fault
// injection.
type tcpStream struct{ ln net.Listener }

func (t *tcpStream) Accept() (net.Conn, error) { return t.ln.Accept() }
func (t *tcpStream) Close() error              { return t.ln.Close() }
func (t *tcpStream) Addr() net.Addr            { return t.ln.Addr() }
func (t *tcpStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(addr), timeout)
}
