package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"

	"cardsync/carrier/sim"
	"cardsync/fsm"
	"cardsync/internal/agent"
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
	ready func(*agent.Agent)
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
	sec := addSecurityFlags(fs)
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
		sec.fromFile(fc, set)
		apply("log-level", n.LogLevel != "", func() { *logLevel = n.LogLevel; o.logLevel = n.LogLevel })
		apply("poll-interval", fc.Sync.PollInterval > 0, func() { *poll = fc.Sync.PollInterval })
		if fc.Sync.Lease > 0 {
			o.sync.Lease = fc.Sync.Lease
		}
		if fc.Sync.MaxWorkers > 0 {
			o.sync.MaxWorkers = fc.Sync.MaxWorkers
		}
		if fc.Sync.MaxDueWait > 0 {
			o.sync.MaxDueWait = fc.Sync.MaxDueWait
		}
	}
	o.node.Name, o.node.DataDir, o.node.GossipAddr, o.node.RaftAddr, o.node.HTTPAddr = *name, *dataDir, *bind, *raftAddr, *httpAddr
	o.node.Join, o.node.BootstrapExpect, o.node.Dev = join, *expect, *dev
	o.node.Profile, o.node.RaftMultiplier, o.node.ClusterSecret = *profile, *mult, *secret
	o.sync.PollInterval = *poll
	var errs []error
	if err := sec.apply(&o.node); err != nil {
		errs = append(errs, err)
	}
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

func startAgent(ctx context.Context, o *agentOptions, logOut io.Writer) error {
	logger := hclog.New(&hclog.LoggerOptions{Name: "cardsync", Level: hclog.LevelFromString(o.logLevel), Output: logOut})
	cfg := agent.Config{Node: o.node, Sync: o.sync, Logger: logger}
	var s *sim.Sim
	if o.dev {
		scfg := sim.DefaultConfig()
		scfg.Seed = 1
		scfg.Accounts = sim.DevAccounts()
		if o.devCards > 0 {
			agent.ScaleDevAccounts(scfg.Accounts, o.devCards)
		}
		scfg.Logger = logger.Named("carriersim")
		var err error
		if s, err = sim.New(scfg); err != nil {
			return fmt.Errorf("dev simulator: %w", err)
		}
		if err := s.Start("127.0.0.1:0"); err != nil {
			return fmt.Errorf("dev simulator: %w", err)
		}
		defer s.Close()
		logger.Info("dev mode: carrier simulator started", "url", s.URL())
		cfg.Accounts, cfg.Catalog = agent.DevCatalog(s, scfg.Accounts)
	}
	if o.file != nil {
		for _, af := range o.file.Accounts {
			cfg.Accounts = append(cfg.Accounts, af.carrierConfig())
			cfg.Catalog.Accounts = append(cfg.Catalog.Accounts, af.fsmAccount())
		}
		for _, ef := range o.file.Enterprises {
			ready := true
			if ef.InventoryReady != nil {
				ready = *ef.InventoryReady
			}
			cfg.Catalog.Enterprises = append(cfg.Catalog.Enterprises, fsm.UpsertEnterprise{ID: ef.ID, Name: ef.Name, Accounts: ef.Accounts, InventoryReady: ready})
		}
	}
	a, err := agent.Start(cfg)
	if err != nil {
		return err
	}
	if s != nil {
		a.Node.Mux().Handle("/_sim/", s.Handler())
	}
	fmt.Fprintf(logOut, "cardsync agent %s: HTTP API and dashboard on http://%s/ui/\n", a.Node.Name(), a.Node.HTTPAddr())
	if o.ready != nil {
		o.ready(a)
	}
	<-ctx.Done()
	logger.Info("shutting down: flushing and releasing shards")
	return a.Stop()
}
