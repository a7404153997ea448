// Package agent assembles a running cardsync member: the node (Raft, gossip, HTTP API),
// this node's carrier accounts, the syncer, and the publisher that makes the replicated
// catalog match the node's configuration. The binary and the test cluster both use it,
// so what the tests run is what operators run.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"cardsync/carrier"
	"cardsync/fsm"
	"cardsync/internal/quota"
	"cardsync/node"
	"cardsync/syncer"
	"cardsync/webhook"
)

// Catalog is configuration that lives in the replicated state: carrier accounts (without
// credentials), enterprises, and optionally cards to import once into an empty cluster.
type Catalog struct {
	Accounts    []fsm.Account
	Enterprises []fsm.UpsertEnterprise
	Cards       []fsm.CardImport
}

// Config configures an agent.
type Config struct {
	Node node.Config
	Sync syncer.Config
	// Accounts are this node's carrier account clients (with credentials).
	Accounts []carrier.AccountConfig
	// Catalog is published to the cluster once the node is ready.
	Catalog Catalog
	// HTTPClient is used for carrier calls (default: a pooled client).
	HTTPClient *http.Client
	Logger     hclog.Logger
	// Webhook configures the change-feed webhook deliverer (zero fields: defaults).
	Webhook webhook.Config
}

// Agent is a running cardsync member.
type Agent struct {
	Node     *node.Node
	Syncer   *syncer.Syncer
	Accounts map[string]*carrier.Account
	Webhooks *webhook.Deliverer

	logger      hclog.Logger
	cancel      context.CancelFunc
	abortCalls  context.CancelFunc
	syncDone    chan struct{}
	catalogDone chan struct{}
	webhookDone chan struct{}
}

// Start starts the node, the syncer and the catalog publisher.
func Start(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second}}
	}
	cfg.Node.Logger = cfg.Logger
	a := &Agent{logger: cfg.Logger, Accounts: map[string]*carrier.Account{}}
	// Carrier calls outlive a graceful stop (an answered call is flushed, not thrown
	// away) but not a kill: a crashed process's sockets close with it, so Kill aborts
	// the calls in flight, as the carrier would see them end.
	var killCtx context.Context
	killCtx, a.abortCalls = context.WithCancel(context.Background())
	hc := *cfg.HTTPClient
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	hc.Transport = &abortTransport{next: next, dead: killCtx}
	cfg.HTTPClient = &hc
	accounts := map[string]syncer.Account{}
	for _, ac := range cfg.Accounts {
		acct, err := carrier.NewAccount(ac, cfg.HTTPClient, cfg.Logger.Named("carrier").With("account", ac.ID))
		if err != nil {
			return nil, fmt.Errorf("carrier account %s: %w", ac.ID, err)
		}
		accounts[ac.ID] = acct
		a.Accounts[ac.ID] = acct
	}
	n, err := node.New(cfg.Node)
	if err != nil {
		return nil, err
	}
	a.Node = n
	sc := cfg.Sync
	if sc.ShareQuota && sc.SharedTokens {
		for _, acct := range a.Accounts {
			acct.SetTokenSource(tokenSource{n})
		}
	}
	sc.Logger = cfg.Logger
	sc.Registry = n.Registry()
	if sc.CallGrace == 0 {
		// A query holds its concurrency slot for all of its HTTP calls (Cisco: two per
		// card), each bounded by the account's timeout.
		for _, ac := range cfg.Accounts {
			sc.CallGrace = max(sc.CallGrace, time.Duration(carrier.CallsPerQuery(ac.Carrier))*ac.Timeout)
		}
	}
	sy, err := syncer.New(sc, n, n.FSM(), n, accounts)
	if err != nil {
		_ = n.Kill()
		return nil, err
	}
	a.Syncer = sy
	n.Mux().HandleFunc("GET /v1/quota", a.handleQuota)
	wc := cfg.Webhook
	if wc.Logger == nil {
		wc.Logger = cfg.Logger
	}
	wh, err := webhook.New(wc, n)
	if err != nil {
		_ = n.Kill()
		return nil, err
	}
	a.Webhooks = wh
	wh.Register(n.Mux())

	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.syncDone = make(chan struct{})
	a.catalogDone = make(chan struct{})
	go func() {
		defer close(a.catalogDone)
		PublishCatalog(ctx, n, cfg.Logger, cfg.Catalog)
	}()
	go func() {
		defer close(a.syncDone)
		_ = sy.Run(ctx)
	}()
	a.webhookDone = make(chan struct{})
	go func() {
		defer close(a.webhookDone)
		_ = wh.Run(ctx)
	}()
	return a, nil
}

func (a *Agent) handleQuota(w http.ResponseWriter, r *http.Request) {
	type acct struct {
		syncer.Share
		Stats carrier.AccountStats `json:"stats"`
	}
	var out []acct
	for _, s := range a.Syncer.Shares() {
		x := acct{Share: s}
		if c, ok := a.Accounts[s.Account]; ok {
			x.Stats = c.Stats()
		}
		out = append(out, x)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = jsonEncode(w, map[string]any{"node": a.Node.Name(), "accounts": out, "running": a.Syncer.Running(),
		"shared_bucket": a.Node.QuotaStats()})
}

// Stop shuts down gracefully: running shards flush and release, leadership moves, the
// node leaves gossip.
func (a *Agent) Stop() error {
	a.cancel()
	<-a.syncDone
	<-a.catalogDone
	<-a.webhookDone
	a.abortCalls()
	return a.Node.Shutdown()
}

// Kill stops abruptly, as a crash would: Raft and gossip stop first (no flush reaches
// the cluster, no leave is sent), then the syncer's goroutines are stopped.
func (a *Agent) Kill() error {
	err := a.Node.Kill()
	a.abortCalls()
	a.cancel()
	<-a.syncDone
	<-a.catalogDone
	<-a.webhookDone
	return err
}

// PublishCatalog makes the replicated accounts and enterprises match the given catalog
// (only records that differ are proposed) and imports its cards once into an empty
// cluster. It retries until it succeeds or ctx ends.
func PublishCatalog(ctx context.Context, n *node.Node, logger hclog.Logger, cat Catalog) {
	if len(cat.Accounts) == 0 && len(cat.Enterprises) == 0 && len(cat.Cards) == 0 {
		return
	}
	for ctx.Err() == nil {
		if !n.Ready() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		err := publishOnce(ctx, n, logger, cat)
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

func publishOnce(ctx context.Context, n *node.Node, logger hclog.Logger, cat Catalog) error {
	for _, a := range cat.Accounts {
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
	for _, e := range cat.Enterprises {
		if cur, err := n.FSM().Enterprise(e.ID); err == nil && cur.Name == e.Name && cur.InventoryReady == e.InventoryReady && reflect.DeepEqual(cur.Accounts, e.Accounts) {
			continue
		}
		if _, err := n.ProposeEncoded(ctx, fsm.TypeUpsertEnterprise, e); err != nil {
			return fmt.Errorf("enterprise %s: %w", e.ID, err)
		}
	}
	if len(cat.Cards) > 0 {
		c, err := n.FSM().Counts()
		if err != nil {
			return err
		}
		if c.Cards == 0 {
			start := time.Now()
			added, _, err := n.Import(ctx, cat.Cards, nil, nil)
			if err != nil {
				var ie *node.ImportError
				if errors.As(err, &ie) && len(ie.Lines) > 0 {
					return fmt.Errorf("import: %w (first: line %d: %s)", err, ie.Lines[0].Line, ie.Lines[0].Error)
				}
				return fmt.Errorf("import: %w", err)
			}
			logger.Info("inventory imported", "cards", added, "seconds", time.Since(start).Seconds())
		}
	}
	return nil
}

func jsonEncode(w http.ResponseWriter, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// abortTransport ends every request in flight when dead is done.
type abortTransport struct {
	next http.RoundTripper
	dead context.Context
}

func (t *abortTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	stop := context.AfterFunc(t.dead, cancel)
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		stop()
		cancel()
		return nil, err
	}
	resp.Body = &abortBody{ReadCloser: resp.Body, done: func() { stop(); cancel() }}
	return resp, nil
}

// abortBody releases its request's context once the body is closed.
type abortBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *abortBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// tokenSource takes a query's call tokens from the cluster's shared bucket on the Raft
// leader, in the lane of the query's priority.
type tokenSource struct{ n *node.Node }

func (t tokenSource) Tokens(ctx context.Context, account string, count int, p carrier.Priority) ([]time.Duration, error) {
	return t.n.Tokens(ctx, account, count, laneOf(p))
}

// laneOf is the lane of the leader's queue that a query of priority p waits in.
func laneOf(p carrier.Priority) quota.Lane {
	switch {
	case p >= carrier.PriorityUrgent:
		return quota.LaneUrgent
	case p >= carrier.PriorityFirst:
		return quota.LanePriority
	default:
		return quota.LaneRest
	}
}
