package node_test

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"cardsync/fsm"
	"cardsync/node"
	"cardsync/testcluster"
)

type shardsResp struct {
	Shards []node.ShardView `json:"shards"`
	Count  int              `json:"count"`
}

func shardViews(t testing.TB, base, query string) []node.ShardView {
	t.Helper()
	var r shardsResp
	if code := getJSON(t, base+"/v1/shards"+query, &r); code != 200 {
		t.Fatalf("GET /v1/shards%s: %d", query, code)
	}
	return r.Shards
}

func TestAdminBodiesRejected(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, NoSim: true})
	c.WaitStable(15 * time.Second)
	base := "http://" + c.Members[0].Node().HTTPAddr()
	big := bytes.Repeat([]byte(" "), 2<<20)
	for _, tc := range []struct {
		name, path, body string
		want             int
		msg              string
	}{
		{"resync malformed", "/v1/resync", `{"iccids": [`, 400, "malformed JSON"},
		{"resync unknown field", "/v1/resync", `{"cards": ["x"]}`, 400, "unknown field"},
		{"resync nothing named", "/v1/resync", `{}`, 400, "name iccids"},
		{"resync invalid ICCID", "/v1/resync", `{"iccids": ["12ab"]}`, 400, "invalid ICCID"},
		{"resync unknown card", "/v1/resync", `{"iccids": ["89860000000000000001"]}`, 400, "does not exist"},
		{"resync unknown shard", "/v1/resync", `{"shard": "g9-9"}`, 404, "g9-9"},
		{"resync oversized", "/v1/resync", `{"shard": "g1-0"` + string(big) + `}`, 413, "too large"},
		{"release unknown shard", "/v1/shards/g9-9/release", `{}`, 404, "g9-9"},
		{"release malformed", "/v1/shards/g9-9/release", `{"reason":`, 400, "malformed JSON"},
		{"checkpoint unknown shard", "/v1/shards/g9-9/checkpoint", `{"new_task": true}`, 404, "g9-9"},
		{"checkpoint bad time", "/v1/shards/g1-0/checkpoint", `{"next_run_at": "tomorrow"}`, 400, "malformed JSON"},
		{"maintenance malformed", "/v1/maintenance", `on`, 400, "malformed JSON"},
		{"drain malformed", "/v1/drain", `{"on": "yes"}`, 400, "malformed JSON"},
		{"remove-peer no id", "/v1/operator/raft/remove-peer", `{}`, 400, "id is required"},
		{"account bad carrier", "/v1/accounts", `{"id": "x", "carrier": "vodafone"}`, 400, "want onelink"},
		{"account no id", "/v1/accounts", `{"carrier": "onelink"}`, 400, "id is required"},
		{"enterprise no id", "/v1/enterprises", `{"name": "n"}`, 400, "id is required"},
		{"enterprise oversized", "/v1/enterprises", `{"id": "e"` + string(big) + `}`, 413, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := c.Members[0].Node().FSM().Counts()
			var r map[string]any
			code := send(t, "POST", base+tc.path, "application/json", strings.NewReader(tc.body), &r)
			msg, _ := r["error"].(string)
			if code != tc.want || !strings.Contains(msg, tc.msg) {
				t.Fatalf("status %d %q; want %d containing %q", code, msg, tc.want, tc.msg)
			}
			if code >= 400 && code != 404 {
				if after, _ := c.Members[0].Node().FSM().Counts(); after != before {
					t.Fatalf("rejected request changed the state: %+v -> %+v", before, after)
				}
			}
		})
	}
	var r map[string]any
	for _, p := range []string{"/v1/shards/g9-9", "/v1/cards/89860000000000000001"} {
		if code := getJSON(t, base+p, &r); code != 404 || r["error"] == nil {
			t.Fatalf("GET %s: %d %v", p, code, r)
		}
	}
	if code := getJSON(t, base+"/v1/shards?group=x", &r); code != 400 {
		t.Fatalf("bad group filter: %d %v", code, r)
	}
	if code := getJSON(t, base+"/v1/changes?after=x", &r); code != 400 {
		t.Fatalf("bad after: %d %v", code, r)
	}
}

// TestOperatorAPI drives every admin operation against a working two-node cluster.
func TestOperatorAPI(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 2, Cards: 600})
	c.WaitStable(30 * time.Second)
	leader := c.WaitLeader(15 * time.Second)
	ln := leader.Node()
	base := "http://" + ln.HTTPAddr()
	testcluster.WaitFor(t, 30*time.Second, "inventory imported and synced once", func() bool {
		n, _ := ln.FSM().Counts()
		if n.Cards < 500 {
			return false
		}
		var synced uint64
		for _, v := range shardViews(t, base, "") {
			synced += v.Checkpoint.Synced
		}
		return synced > 0
	})

	// Queries.
	var st node.Status
	if code := getJSON(t, base+"/v1/status", &st); code != 200 || st.Leader != leader.Name || !st.Ready || st.Members != 2 {
		t.Fatalf("status: %d %+v", code, st)
	}
	var mem struct{ Members []node.MemberInfo }
	if code := getJSON(t, base+"/v1/members", &mem); code != 200 || len(mem.Members) != 2 {
		t.Fatalf("members: %d %+v", code, mem)
	}
	var ring struct {
		Members []struct {
			Name   string
			Shards int
		}
		Owners map[string]string
	}
	if code := getJSON(t, base+"/v1/ring", &ring); code != 200 || len(ring.Members) != 2 || len(ring.Owners) == 0 {
		t.Fatalf("ring: %d %+v", code, ring)
	}
	var accts struct {
		Accounts []fsm.Account `json:"accounts"`
	}
	raw := &bytes.Buffer{}
	resp, err := http.Get(base + "/v1/accounts")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = raw.ReadFrom(resp.Body)
	resp.Body.Close()
	if strings.Contains(strings.ToLower(raw.String()), "secret") {
		t.Fatalf("GET /v1/accounts shows credentials: %s", raw)
	}
	if getJSON(t, base+"/v1/accounts", &accts); len(accts.Accounts) == 0 {
		t.Fatal("no accounts")
	}
	all := shardViews(t, base, "")
	sh := all[0]
	var full node.ShardView
	if code := getJSON(t, base+"/v1/shards/"+sh.ID, &full); code != 200 || full.ID != sh.ID || full.Reason == "" {
		t.Fatalf("shard: %d %+v", code, full)
	}
	if got := shardViews(t, base, "?group="+strconv.Itoa(sh.Group)); len(got) == 0 || got[0].Group != sh.Group {
		t.Fatalf("group filter: %+v", got)
	}
	var cards struct {
		Cards []fsm.Card `json:"cards"`
	}
	getJSON(t, base+"/v1/cards?shard="+sh.ID+"&limit=5", &cards)
	if len(cards.Cards) == 0 {
		t.Fatalf("no cards in %s", sh.ID)
	}
	var changes struct {
		Changes []fsm.Change `json:"changes"`
	}
	if code := getJSON(t, base+"/v1/changes?after=0&limit=10", &changes); code != 200 || len(changes.Changes) == 0 {
		t.Fatalf("changes: %d %+v", code, changes)
	}

	// Resync a card, a shard and an enterprise: each makes its cards due again.
	one := cards.Cards[0]
	for _, body := range []map[string]any{{"iccids": []string{strings.ToLower(one.ICCID)}}, {"shard": sh.ID}, {"enterprise": one.Enterprise}} {
		var r map[string]any
		if code := postJSON(t, base+"/v1/resync", body, &r); code != 200 || r["ok"] != true {
			t.Fatalf("resync %v: %d %v", body, code, r)
		}
	}

	// Force-release bumps the epoch.
	before, _ := ln.FSM().Shard(sh.ID)
	var r map[string]any
	if code := postJSON(t, base+"/v1/shards/"+sh.ID+"/release", map[string]string{"reason": "test"}, &r); code != 200 {
		t.Fatalf("release: %d %v", code, r)
	}
	// The shard is due again (resynced above), so its ring owner may claim it back at
	// once: then the epoch has moved twice, the release's and the new claim's.
	if after, _ := ln.FSM().Shard(sh.ID); after.Epoch <= before.Epoch || (after.Owner != "" && after.Epoch < before.Epoch+2) {
		t.Fatalf("release: epoch %d -> %d, owner %q", before.Epoch, after.Epoch, after.Owner)
	}
	// Checkpoint: park the shard an hour ahead.
	later := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	if code := postJSON(t, base+"/v1/shards/"+sh.ID+"/checkpoint", map[string]any{"next_run_at": later, "new_task": true}, &r); code != 200 {
		t.Fatalf("checkpoint: %d %v", code, r)
	}
	if got, _ := ln.FSM().Shard(sh.ID); !got.Checkpoint.NextRunAt.Equal(later) {
		t.Fatalf("checkpoint next_run_at %v, want %v", got.Checkpoint.NextRunAt, later)
	}

	// Maintenance: running shards stop and none starts, even when every shard is due.
	if code := postJSON(t, base+"/v1/maintenance", map[string]any{"on": true, "reason": "test"}, &r); code != 200 {
		t.Fatalf("maintenance on: %d %v", code, r)
	}
	testcluster.WaitFor(t, 30*time.Second, "no shard running under maintenance", func() bool {
		return running(shardViews(t, base, "")) == 0
	})
	for _, e := range []string{"ent-01", "ent-02"} {
		postJSON(t, base+"/v1/resync", map[string]any{"enterprise": e}, nil)
	}
	epochs := map[string]uint64{}
	for _, v := range shardViews(t, base, "") {
		epochs[v.ID] = v.Epoch
	}
	polls := func() float64 {
		return counterValue(t, ln, "cardsync_syncer_poll_seconds")
	}
	p0 := polls()
	testcluster.WaitFor(t, 30*time.Second, "ten poll rounds under maintenance", func() bool { return polls() >= p0+10 })
	for _, v := range shardViews(t, base, "") {
		if v.Running || v.Epoch != epochs[v.ID] {
			t.Fatalf("shard %s claimed under maintenance: running %v, epoch %d -> %d", v.ID, v.Running, epochs[v.ID], v.Epoch)
		}
	}
	if got := shardViews(t, base, "?reason=maintenance"); len(got) == 0 {
		t.Fatal("no shard says it waits for maintenance")
	}
	if !strings.Contains(scrape(t, base), `cardsync_shards_waiting{reason="maintenance"}`) {
		t.Fatal("metrics lack the maintenance waiting count")
	}

	// Backup while nothing changes: the file opens as a database with the same digest.
	var idx uint64
	var want, got string
	testcluster.WaitFor(t, 30*time.Second, "a backup taken while the state was still", func() bool {
		i1, d1, _ := ln.FSM().Digest()
		path := filepath.Join(t.TempDir(), "backup.db")
		if code := download(t, base+"/v1/backup", path); code != 200 {
			t.Fatalf("backup: %d", code)
		}
		_, d2, _ := ln.FSM().Digest()
		if d1 != d2 {
			return false
		}
		cfg := fsm.DefaultConfig()
		cfg.Path = path
		f, err := fsm.Open(cfg, nil)
		if err != nil {
			t.Fatalf("backup does not open: %v", err)
		}
		defer f.Close()
		bi, bd, err := f.Digest()
		if err != nil {
			t.Fatal(err)
		}
		idx, want, got = i1, d1, bd
		if bi != i1 {
			t.Fatalf("backup applied index %d, node %d", bi, i1)
		}
		return true
	})
	if got != want {
		t.Fatalf("backup digest %s at %d, node %s", got, idx, want)
	}

	if code := postJSON(t, base+"/v1/maintenance", map[string]any{"on": false}, &r); code != 200 {
		t.Fatalf("maintenance off: %d %v", code, r)
	}
	testcluster.WaitFor(t, 30*time.Second, "a shard running after maintenance", func() bool {
		return running(shardViews(t, base, "")) > 0
	})

	// Drain the follower: its shards move to the leader.
	fol := c.Follower()
	fbase := "http://" + fol.Node().HTTPAddr()
	if code := postJSON(t, fbase+"/v1/drain", map[string]any{"on": true}, &r); code != 200 || r["draining"] != true {
		t.Fatalf("drain: %d %v", code, r)
	}
	testcluster.WaitFor(t, 30*time.Second, "the drained node owns nothing", func() bool {
		for _, v := range shardViews(t, base, "") {
			if v.RingOwner == fol.Name || (v.Owner == fol.Name && v.Running) {
				return false
			}
		}
		return true
	})
	// The moved shards are the leader's now (it runs those that are due: after the first
	// round most are not).
	testcluster.WaitFor(t, 30*time.Second, "the leader owns every shard on the ring", func() bool {
		views := shardViews(t, base, "")
		for _, v := range views {
			if v.RingOwner != leader.Name {
				return false
			}
		}
		return len(views) > 0
	})
	if code := postJSON(t, fbase+"/v1/drain", map[string]any{"on": false}, &r); code != 200 {
		t.Fatalf("undrain: %d %v", code, r)
	}

	// Remove a Raft peer: a third member joins, dies, and is removed by the operator.
	if code := postJSON(t, fbase+"/v1/operator/raft/remove-peer", map[string]string{"id": "x"}, &r); code != 409 {
		t.Fatalf("remove-peer on a follower: %d %v", code, r)
	}
	third := c.Add()
	c.WaitStable(30 * time.Second)
	testcluster.WaitFor(t, 30*time.Second, "third member in the raft configuration", func() bool {
		return hasServer(ln, third.Name)
	})
	c.Kill(third)
	leader = c.WaitLeader(15 * time.Second)
	if code := postJSON(t, "http://"+leader.Node().HTTPAddr()+"/v1/operator/raft/remove-peer", map[string]string{"id": third.Name}, &r); code != 200 {
		t.Fatalf("remove-peer: %d %v", code, r)
	}
	if hasServer(leader.Node(), third.Name) {
		t.Fatal("removed peer still in the raft configuration")
	}
}

func running(vs []node.ShardView) int {
	k := 0
	for _, v := range vs {
		if v.Running {
			k++
		}
	}
	return k
}

func hasServer(n *node.Node, id string) bool {
	f := n.Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

func download(t testing.TB, url, path string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

func scrape(t testing.TB, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

// counterValue sums a counter's (or a histogram's sample count's) series on the node.
func counterValue(t testing.TB, n *node.Node, name string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				v += m.GetCounter().GetValue()
			case m.Histogram != nil:
				v += float64(m.GetHistogram().GetSampleCount())
			case m.Gauge != nil:
				v += m.GetGauge().GetValue()
			}
		}
	}
	return v
}

// TestMetricsExposition parses /metrics with the Prometheus text parser and checks the
// families an operator needs are there, with bounded labels.
func TestMetricsExposition(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 300})
	c.WaitStable(15 * time.Second)
	n := c.Members[0].Node()
	base := "http://" + n.HTTPAddr()
	// A round's counter appears when the first round ends: shards are claimed only once
	// the node holds its quota shares, so that comes a little after the first calls.
	testcluster.WaitFor(t, 60*time.Second, "carrier calls made and a round ended", func() bool {
		return counterValue(t, n, "cardsync_carrier_calls_total") > 0 && counterValue(t, n, "cardsync_syncer_rounds_total") > 0
	})
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("exposition format: %v", err)
	}
	for _, name := range []string{
		"cardsync_raft_leader", "cardsync_raft_applied_index", "cardsync_members_alive", "cardsync_ring_members",
		"cardsync_cards", "cardsync_shards", "cardsync_claims",
		"cardsync_shards_by_state", "cardsync_shards_waiting", "cardsync_shard_due_lag_seconds",
		"cardsync_syncer_cards_total", "cardsync_syncer_claims_total", "cardsync_syncer_rounds_total",
		"cardsync_carrier_calls_total", "cardsync_quota_share_rate", "cardsync_syncer_poll_seconds",
		"go_goroutines",
	} {
		if _, ok := mfs[name]; !ok {
			t.Errorf("metric family %s missing", name)
		}
	}
	states := map[string]bool{}
	for _, m := range mfs["cardsync_shards_by_state"].GetMetric() {
		for _, l := range m.GetLabel() {
			states[l.GetValue()] = true
		}
	}
	if !states["running"] || !states["due"] || !states["idle"] {
		t.Errorf("shard states %v, want running, due and idle", states)
	}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "iccid" || fsmLikeICCID(l.GetValue()) {
					t.Errorf("%s has an unbounded label %s=%s", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}

func fsmLikeICCID(s string) bool {
	if len(s) < 19 || len(s) > 20 {
		return false
	}
	for _, c := range strings.ToUpper(s) {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}

// TestDashboardInHeadlessChromium renders /ui/ of a running node in a real headless
// Chromium and checks the DOM shows the member and shard rows; it also writes a
// screenshot (kept under $CARDSYNC_ARTIFACTS when set). Skipped without chromium.
func TestDashboardInHeadlessChromium(t *testing.T) {
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("no chromium binary found")
	}
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 300})
	c.WaitStable(15 * time.Second)
	n := c.Members[0].Node()
	base := "http://" + n.HTTPAddr()
	testcluster.WaitFor(t, 30*time.Second, "shards imported and quota shares known", func() bool {
		var q struct {
			Accounts []any `json:"accounts"`
		}
		getJSON(t, base+"/v1/quota", &q)
		return len(shardViews(t, base, "")) > 0 && len(q.Accounts) > 0
	})
	flags := func(extra ...string) []string {
		return append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
			"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}, extra...)
	}
	ctx := testcluster.Ctx(t, 90*time.Second)
	out, err := exec.CommandContext(ctx, bin, flags("--dump-dom", base+"/ui/")...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	dom := string(out)
	if !strings.Contains(dom, "<td>"+n.Name()) {
		t.Fatalf("rendered dashboard lacks the member %s:\n%s", n.Name(), dom)
	}
	shard := shardViews(t, base, "")[0].ID
	if !strings.Contains(dom, "<td>"+shard+"</td>") || !strings.Contains(dom, `<div id="err"></div>`) {
		t.Fatalf("rendered dashboard lacks shard rows (%s):\n%s", shard, dom)
	}
	if !strings.Contains(dom, `id="quota"`) || strings.Contains(dom, "quota unavailable: /v1") || !strings.Contains(dom, "/s (") {
		t.Fatalf("rendered dashboard lacks the quota table:\n%s", dom)
	}
	dir := os.Getenv("CARDSYNC_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "dashboard.png")
	if out, err := exec.CommandContext(ctx, bin, flags("--screenshot="+shot, "--window-size=1400,1000", base+"/ui/")...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	if st, err := os.Stat(shot); err != nil || st.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("dashboard screenshot: %s", shot)
}
