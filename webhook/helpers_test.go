package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
	"cardsync/webhook"
)

const genNode = "generator"

// generator changes cards directly with Flush commands, as a syncer would, from a shard
// claimed by a node name that is not a cluster member (no syncer competes for it).
type generator struct {
	t      testing.TB
	c      *testcluster.Cluster
	shard  string
	epoch  uint64
	task   uint64
	cards  []string
	used   int64
	flushN int
}

func iccid(i int) string { return fmt.Sprintf("8986%016d", i) }

// propose sends a command through any running member, retrying across leader changes.
func propose(t testing.TB, c *testcluster.Cluster, typ fsm.Type, p any) *fsm.Result {
	t.Helper()
	var last error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range c.Up() {
			n := m.Node()
			if n == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			res, err := n.ProposeEncoded(ctx, typ, p)
			cancel()
			if err == nil {
				return res
			}
			last = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("propose %s: %v", typ, last)
	return nil
}

func newGenerator(t testing.TB, c *testcluster.Cluster, cards int) *generator {
	t.Helper()
	g := &generator{t: t, c: c}
	propose(t, c, fsm.TypeUpsertAccount, fsm.UpsertAccount{Account: fsm.Account{ID: "gen-acc", Carrier: fsm.CarrierOneLink, TTL: time.Hour, CredentialsValid: true}})
	propose(t, c, fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: "ent-gen", Accounts: map[string]string{fsm.CarrierOneLink: "gen-acc"}, InventoryReady: true})
	imp := fsm.ImportCards{Groups: 1, ShardSize: fsm.MaxShardSize}
	for i := 0; i < cards; i++ {
		g.cards = append(g.cards, iccid(i))
		imp.Cards = append(imp.Cards, fsm.CardImport{ICCID: iccid(i), Enterprise: "ent-gen", Account: "gen-acc"})
	}
	propose(t, c, fsm.TypeImportCards, imp)
	g.shard = fsm.ShardID(0, 0)
	r := propose(t, c, fsm.TypeClaim, fsm.Claim{Shard: g.shard, Node: genNode, Epoch: 0, Lease: 12 * time.Hour})
	g.epoch = r.Epoch
	r = propose(t, c, fsm.TypeStartTask, fsm.StartTask{Shard: g.shard, Node: genNode, Epoch: g.epoch})
	g.task = r.TaskID
	return g
}

// flush changes the data used of n cards (one event each) and returns the flush's result.
func (g *generator) flush(n int) {
	g.t.Helper()
	res := make([]fsm.CardResult, 0, n)
	for i := 0; i < n; i++ {
		g.used++
		id := g.cards[(g.flushN*n+i)%len(g.cards)]
		res = append(res, fsm.CardResult{ICCID: id, Data: &fsm.CardData{Status: "active", RawStatus: "2", RatePlan: "P", DataUsedBytes: g.used}})
	}
	g.flushN++
	// Results must be in ICCID order or at least unique; sort by construction.
	sortResults(res)
	propose(g.t, g.c, fsm.TypeFlush, fsm.Flush{Shard: g.shard, Node: genNode, Epoch: g.epoch, TaskID: g.task, Results: res, Lease: 12 * time.Hour})
}

func sortResults(r []fsm.CardResult) {
	for i := 1; i < len(r); i++ {
		for j := i; j > 0 && r[j].ICCID < r[j-1].ICCID; j-- {
			r[j], r[j-1] = r[j-1], r[j]
		}
	}
}

// receiver is a subscriber endpoint that records every batch it acknowledges.
type receiver struct {
	srv    *httptest.Server
	secret []byte

	mu       sync.Mutex
	batches  []webhook.Payload
	seqs     []uint64
	badSig   int
	received time.Time
	// fail makes the receiver answer 503 while set.
	fail  bool
	calls int
	// onEvent, if set, sees every acknowledged event's seq and arrival time.
	onEvent func(seq uint64, at time.Time, ev fsm.Change)
}

func newReceiver(t testing.TB, secret string) *receiver {
	rc := &receiver{secret: []byte(secret)}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.handle))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) handle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	now := time.Now()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.calls++
	if !webhook.Verify(rc.secret, body, r.Header.Get(webhook.HeaderSignature)) {
		rc.badSig++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if rc.fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var p webhook.Payload
	if err := json.Unmarshal(body, &p); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	rc.batches = append(rc.batches, p)
	for _, e := range p.Events {
		rc.seqs = append(rc.seqs, e.Seq)
		if rc.onEvent != nil {
			rc.onEvent(e.Seq, now, e)
		}
	}
	rc.received = now
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) setFail(v bool) {
	rc.mu.Lock()
	rc.fail = v
	rc.mu.Unlock()
}

func (rc *receiver) snapshot() (seqs []uint64, batches []webhook.Payload, badSig, calls int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]uint64(nil), rc.seqs...), append([]webhook.Payload(nil), rc.batches...), rc.badSig, rc.calls
}

// distinct counts the distinct sequences received.
func (rc *receiver) distinct() int {
	seqs, _, _, _ := rc.snapshot()
	m := map[uint64]bool{}
	for _, s := range seqs {
		m[s] = true
	}
	return len(m)
}

// fastWebhooks makes delivery retries quick for tests.
func fastWebhooks(c *webhook.Config) {
	c.PollInterval = 100 * time.Millisecond
	c.MinBackoff = 20 * time.Millisecond
	c.MaxBackoff = 200 * time.Millisecond
	c.RequestTimeout = 2 * time.Second
	c.IdleAdvance = 500 * time.Millisecond
}

func httpJSON(t testing.TB, method, url string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytesReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
