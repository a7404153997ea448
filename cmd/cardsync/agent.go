package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"cardsync/carrier"
	"cardsync/carrier/sim"
	"cardsync/fsm"
	"cardsync/node"
	"cardsync/syncer"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// agentOptions is everything `cardsync agent` needs, after flags and file are merged.
type agentOptions struct {
	node     node.Config
	sync     syncer.Config
	file     *FileConfig
	dev      bool
	devCards int
	logLevel string
	// ready, when set, receives the running agent once it is up (tests).
	ready func(*Agent)
}

func parseAgentFlags(args []string, stderr io.Writer) (*agentOptions, error) {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nc := node.DefaultConfig()
	var join stringList
	name := fs.String("name", "", "stable node name (default: persisted in the data dir, generated on first start)")
	dataDir := fs.String("data-dir", nc.DataDir, "data directory (Raft log, snapshots, FSM)")
	bind := fs.String("bind", nc.GossipAddr, "gossip bind address ip:port")
	raftAddr := fs.String("raft-addr", nc.RaftAddr, "Raft bind and advertise address ip:port")
	httpAddr := fs.String("http-addr", nc.HTTPAddr, "HTTP API address")
	fs.Var(&join, "join", "gossip address of a member to join (repeatable)")
	expect := fs.Int("bootstrap-expect", 0, "form a new cluster once this many members are seen")
	configPath := fs.String("config", "", "configuration file (YAML)")
	dev := fs.Bool("dev", false, "single dev node with the carrier simulator and sample inventory")
	devCards := fs.Int("dev-cards", 0, "dev mode: cards to generate (default: the simulator's dev population, 21,500)")
	profile := fs.String("profile", nc.Profile, "membership timing profile: lan or fast")
	mult := fs.Float64("raft-multiplier", nc.RaftMultiplier, "scale Raft timeouts (1 = hashicorp defaults)")
	secret := fs.String("cluster-secret", "", "shared secret that authenticates forwarded requests between nodes")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	poll := fs.Duration("poll-interval", syncer.DefaultConfig().PollInterval, "sync poll interval")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("agent: unexpected arguments %v", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	o := &agentOptions{node: nc, sync: syncer.DefaultConfig(), dev: *dev, devCards: *devCards, logLevel: *logLevel}
	if *configPath != "" {
		fc, err := LoadConfigFile(*configPath)
		if err != nil {
			return nil, err
		}
		o.file = fc
		n := fc.Node
		apply := func(flagName string, ok bool, f func()) {
			if ok && !set[flagName] {
				f()
			}
		}
		apply("name", n.Name != "", func() { *name = n.Name })
		apply("data-dir", n.DataDir != "", func() { *dataDir = n.DataDir })
		apply("bind", n.Bind != "", func() { *bind = n.Bind })
		apply("raft-addr", n.RaftAddr != "", func() { *raftAddr = n.RaftAddr })
		apply("http-addr", n.HTTPAddr != "", func() { *httpAddr = n.HTTPAddr })
		apply("join", len(n.Join) > 0, func() { join = n.Join })
		apply("bootstrap-expect", n.BootstrapExpect > 0, func() { *expect = n.BootstrapExpect })
		apply("profile", n.Profile != "", func() { *profile = n.Profile })
		apply("raft-multiplier", n.RaftMultiplier > 0, func() { *mult = n.RaftMultiplier })
		apply("cluster-secret", n.ClusterSecret != "", func() { *secret = n.ClusterSecret })
		apply("log-level", n.LogLevel != "", func() { *logLevel = n.LogLevel; o.logLevel = n.LogLevel })
		apply("poll-interval", fc.Sync.PollInterval > 0, func() { *poll = fc.Sync.PollInterval })
		if fc.Sync.Lease > 0 {
			o.sync.Lease = fc.Sync.Lease
		}
		if fc.Sync.MaxWorkers > 0 {
			o.sync.MaxWorkers = fc.Sync.MaxWorkers
		}
	}
	o.node.Name, o.node.DataDir, o.node.GossipAddr, o.node.RaftAddr, o.node.HTTPAddr = *name, *dataDir, *bind, *raftAddr, *httpAddr
	o.node.Join, o.node.BootstrapExpect, o.node.Dev = join, *expect, *dev
	o.node.Profile, o.node.RaftMultiplier, o.node.ClusterSecret = *profile, *mult, *secret
	o.sync.PollInterval = *poll
	if *dev {
		if !set["data-dir"] && (o.file == nil || o.file.Node.DataDir == "") {
			o.node.DataDir = ".cardsync-dev"
		}
		if !set["bind"] {
			o.node.GossipAddr = "127.0.0.1:0"
		}
		if !set["raft-addr"] {
			o.node.RaftAddr = "127.0.0.1:0"
		}
	}
	if hclog.LevelFromString(o.logLevel) == hclog.NoLevel {
		return nil, fmt.Errorf("agent: unknown log level %q", o.logLevel)
	}
	var errs []error
	if err := o.node.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := o.sync.Validate(); err != nil {
		errs = append(errs, err)
	}
	return o, errors.Join(errs...)
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseAgentFlags(args, stderr)
	if err != nil {
		return err
	}
	return startAgent(ctx, o, stderr)
}

// Agent is a running cardsync node with its syncer (and, in dev mode, the simulator).
type Agent struct {
	Node   *node.Node
	Syncer *syncer.Syncer
	Sim    *sim.Sim
}

func startAgent(ctx context.Context, o *agentOptions, logOut io.Writer) error {
	logger := hclog.New(&hclog.LoggerOptions{Name: "cardsync", Level: hclog.LevelFromString(o.logLevel), Output: logOut})
	o.node.Logger = logger
	a := &Agent{}
	var accountCfgs []carrier.AccountConfig
	var fsmAccounts []fsm.Account
	var enterprises []fsm.UpsertEnterprise
	var devCards []fsm.CardImport
	if o.dev {
		scfg := sim.DefaultConfig()
		scfg.Seed = 1
		scfg.Accounts = sim.DevAccounts()
		if o.devCards > 0 {
			scaleDevAccounts(scfg.Accounts, o.devCards)
		}
		scfg.Logger = logger.Named("carriersim")
		s, err := sim.New(scfg)
		if err != nil {
			return fmt.Errorf("dev simulator: %w", err)
		}
		if err := s.Start("127.0.0.1:0"); err != nil {
			return fmt.Errorf("dev simulator: %w", err)
		}
		defer s.Close()
		a.Sim = s
		logger.Info("dev mode: carrier simulator started", "url", s.URL())
		accountCfgs, fsmAccounts, enterprises, devCards = devInventory(s, scfg.Accounts)
	}
	if o.file != nil {
		for _, af := range o.file.Accounts {
			accountCfgs = append(accountCfgs, af.carrierConfig())
			fsmAccounts = append(fsmAccounts, af.fsmAccount())
		}
		for _, ef := range o.file.Enterprises {
			ready := true
			if ef.InventoryReady != nil {
				ready = *ef.InventoryReady
			}
			enterprises = append(enterprises, fsm.UpsertEnterprise{ID: ef.ID, Name: ef.Name, Accounts: ef.Accounts, InventoryReady: ready})
		}
	}

	n, err := node.New(o.node)
	if err != nil {
		return err
	}
	a.Node = n
	defer func() {
		if err := n.Shutdown(); err != nil {
			logger.Warn("shutdown", "error", err)
		}
	}()

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second}}
	accounts := map[string]syncer.Account{}
	for _, cfg := range accountCfgs {
		acct, err := carrier.NewAccount(cfg, hc, logger.Named("carrier").With("account", cfg.ID))
		if err != nil {
			return fmt.Errorf("carrier account %s: %w", cfg.ID, err)
		}
		accounts[cfg.ID] = acct
	}
	sc := o.sync
	sc.Logger = logger
	sc.Registry = n.Registry()
	sy, err := syncer.New(sc, n, n.FSM(), n, accounts)
	if err != nil {
		return err
	}
	a.Syncer = sy
	n.Mux().HandleFunc("GET /v1/quota", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, map[string]any{"node": n.Name(), "shares": sy.Shares(), "running": sy.Running()})
	})
	if a.Sim != nil {
		n.Mux().Handle("/_sim/", a.Sim.Handler())
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	catalogDone := make(chan struct{})
	go func() {
		defer close(catalogDone)
		publishCatalog(runCtx, n, logger, fsmAccounts, enterprises, devCards)
	}()
	syncDone := make(chan struct{})
	go func() {
		defer close(syncDone)
		_ = sy.Run(runCtx)
	}()
	fmt.Fprintf(logOut, "cardsync agent %s: HTTP API and dashboard on http://%s/ui/\n", n.Name(), n.HTTPAddr())
	if o.ready != nil {
		o.ready(a)
	}
	<-ctx.Done()
	logger.Info("shutting down: flushing and releasing shards")
	cancel()
	<-syncDone
	<-catalogDone
	return nil
}

func writeJSONResponse(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = jsonEncoder(w).Encode(v)
}

// publishCatalog makes the replicated accounts and enterprises match this node's
// configuration (only records that differ are proposed) and, in dev mode, imports the
// sample inventory once.
func publishCatalog(ctx context.Context, n *node.Node, logger hclog.Logger, accounts []fsm.Account, ents []fsm.UpsertEnterprise, cards []fsm.CardImport) {
	if len(accounts) == 0 && len(ents) == 0 && len(cards) == 0 {
		return
	}
	for ctx.Err() == nil {
		if !n.Ready() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		err := func() error {
			for _, a := range accounts {
				if cur, err := n.FSM().Account(a.ID); err == nil {
					want := a
					want.Version, want.CredentialsValid, want.InvalidReason = cur.Version, cur.CredentialsValid, cur.InvalidReason
					if reflect.DeepEqual(cur, want) {
						continue
					}
				}
				if _, err := n.ProposeEncoded(ctx, fsm.TypeUpsertAccount, fsm.UpsertAccount{Account: a}); err != nil {
					return fmt.Errorf("account %s: %w", a.ID, err)
				}
			}
			for _, e := range ents {
				if cur, err := n.FSM().Enterprise(e.ID); err == nil && cur.Name == e.Name && cur.InventoryReady == e.InventoryReady && reflect.DeepEqual(cur.Accounts, e.Accounts) {
					continue
				}
				if _, err := n.ProposeEncoded(ctx, fsm.TypeUpsertEnterprise, e); err != nil {
					return fmt.Errorf("enterprise %s: %w", e.ID, err)
				}
			}
			if len(cards) > 0 {
				if c, err := n.FSM().Counts(); err == nil && c.Cards == 0 {
					start := time.Now()
					added, _, err := n.Import(ctx, cards, nil, nil)
					if err != nil {
						return fmt.Errorf("import sample inventory: %w", err)
					}
					logger.Info("dev mode: sample inventory imported", "cards", added, "seconds", time.Since(start).Seconds())
				}
			}
			return nil
		}()
		if err == nil {
			return
		}
		logger.Warn("publish configuration", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
