//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Scale workload: 200 enterprises with one account per carrier each (12 accounts, 4 per
// carrier, shared between enterprises); card i belongs to enterprise i%200 and uses its
// carrier (i/200)%3. The accounts carry no credentials on any node, so no node ever
// syncs; every shard is then scheduled 24 h ahead, so a poll round finds nothing due.
const (
	scaleEnterprises = 200
	scaleAccountsPer = 4
	scaleImportChunk = 1_000_000 // cards per import request (a 1M-card CSV is ~66 MB of the 256 MiB cap)
	scalePollEvery   = time.Second
	scaleWriters     = 32 // concurrent checkpoint requests
)

var scaleCarriers = []struct{ carrier, prefix string }{
	{"onelink", "cmcc"}, {"unicom", "cucc"}, {"telecom", "ctcc"},
}

// BenchmarkScale runs the real cardsync binary as three OS processes on 127.0.0.1 and
// measures, for 1,000,000 and 5,000,000 cards (100,000 and 500,000 with -short): the
// bulk import through the HTTP API until every replica holds every card, the resident
// memory of each agent after the import, a backup (GET /v1/backup), a restore of that
// backup (POST /v1/restore) until every node applied it, the rejoin of a follower that
// lost its disk (snapshot install), and the CPU an agent spends per poll round when no
// shard is due. Per-card figures show how each grows with the inventory.
//
//	cd bench && go test -run '^$' -bench 'Scale' -benchtime 1x -p 1 -timeout 60m .
func BenchmarkScale(b *testing.B) {
	bin := buildCardsync(b, b.TempDir())
	sizes := []struct {
		name  string
		cards int
	}{{"1M", 1_000_000}, {"5M", 5_000_000}}
	if testing.Short() {
		sizes = []struct {
			name  string
			cards int
		}{{"100k", 100_000}, {"500k", 500_000}}
	}
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				scaleRun(b, bin, sz.cards)
			}
		})
	}
}

// scaleChunks renders the import as CSV request bodies of at most scaleImportChunk cards.
func scaleChunks(total int) [][]byte {
	var out [][]byte
	for start := 0; start < total; start += scaleImportChunk {
		end := min(start+scaleImportChunk, total)
		var buf bytes.Buffer
		buf.Grow((end - start) * 70)
		buf.WriteString("enterprise,iccid,account,msisdn,imsi\n")
		for i := start; i < end; i++ {
			e := i % scaleEnterprises
			c := scaleCarriers[(i/scaleEnterprises)%len(scaleCarriers)]
			fmt.Fprintf(&buf, "ent-%03d,8986%016d,%s-%d,14%011d,460%012d\n", e, i, c.prefix, e%scaleAccountsPer, i, i)
		}
		out = append(out, buf.Bytes())
	}
	return out
}

// scaleCatalog publishes the accounts and enterprises through the HTTP API.
func scaleCatalog(ctx context.Context, b *testing.B, c *scaleCluster, via *scaleAgent) {
	b.Helper()
	for _, cr := range scaleCarriers {
		for k := 0; k < scaleAccountsPer; k++ {
			acct := map[string]any{"id": fmt.Sprintf("%s-%d", cr.prefix, k), "carrier": cr.carrier,
				"ttl": int64(24 * time.Hour), "rate_per_sec": 50, "burst": 10, "concurrency": 8,
				"batch_size": 100, "credentials_valid": true}
			if err := c.postJSON(ctx, via.http, "/v1/accounts", acct, nil); err != nil {
				b.Fatalf("account: %v", err)
			}
		}
	}
	for e := 0; e < scaleEnterprises; e++ {
		accts := map[string]string{}
		for _, cr := range scaleCarriers {
			accts[cr.carrier] = fmt.Sprintf("%s-%d", cr.prefix, e%scaleAccountsPer)
		}
		ent := map[string]any{"id": fmt.Sprintf("ent-%03d", e), "name": fmt.Sprintf("Enterprise %d", e),
			"accounts": accts, "inventory_ready": true}
		if err := c.postJSON(ctx, via.http, "/v1/enterprises", ent, nil); err != nil {
			b.Fatalf("enterprise: %v", err)
		}
	}
}

// scaleScheduleAhead sets every shard's next run 24 h ahead (what a completed round
// leaves behind) and waits until no node sees a due shard.
func scaleScheduleAhead(ctx context.Context, b *testing.B, c *scaleCluster) int {
	b.Helper()
	l := c.leader()
	shards := c.shardIDs(b, l.http)
	next := time.Now().Add(24 * time.Hour).UTC()
	ids := make(chan string)
	errs := make(chan error, scaleWriters)
	var wg sync.WaitGroup
	for w := 0; w < scaleWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				if err := c.postJSON(ctx, l.http, "/v1/shards/"+id+"/checkpoint", map[string]any{"next_run_at": next}, nil); err != nil {
					select {
					case errs <- fmt.Errorf("shard %s: %w", id, err):
					default:
					}
				}
			}
		}()
	}
	for _, id := range shards {
		ids <- id
	}
	close(ids)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatalf("schedule shards: %v", err)
	default:
	}
	for _, a := range c.agents {
		scaleWait(b, 5*time.Minute, a.name+" to see no due shard", func() (bool, string) {
			m, err := c.metrics(a)
			if err != nil {
				return false, err.Error()
			}
			due, run := m[`cardsync_shards_by_state{state="due"}`], m[`cardsync_shards_by_state{state="running"}`]
			idle := m[`cardsync_shards_by_state{state="idle"}`]
			return due == 0 && run == 0 && int(idle) == len(shards), fmt.Sprintf("due %v running %v idle %v", due, run, idle)
		})
	}
	return len(shards)
}

// scaleSamples is how many RSS samples (one a second) and poll rounds are measured.
func scaleSamples() int {
	if testing.Short() {
		return 3
	}
	return 10
}

// scaleRSS samples VmRSS of every agent once a second for 10 s (3 s with -short) and returns the last
// sample of each (MiB), with each agent's peak (VmHWM) and anonymous share (RssAnon).
func scaleRSS(b *testing.B, c *scaleCluster) (rss, hwm, anon []float64) {
	b.Helper()
	for i := 0; i < scaleSamples(); i++ {
		rss, hwm, anon = rss[:0], hwm[:0], anon[:0]
		for _, a := range c.agents {
			r, err := scaleProcStatusKB(a.pid(), "VmRSS")
			if err != nil {
				b.Fatal(err)
			}
			h, _ := scaleProcStatusKB(a.pid(), "VmHWM")
			an, _ := scaleProcStatusKB(a.pid(), "RssAnon")
			rss, hwm, anon = append(rss, r/1024), append(hwm, h/1024), append(anon, an/1024)
		}
		time.Sleep(time.Second) // sampling period, not synchronisation
	}
	return rss, hwm, anon
}

// scaleHeapMB reads each agent's Go heap in use (MiB).
func scaleHeapMB(b *testing.B, c *scaleCluster) []float64 {
	b.Helper()
	var out []float64
	for _, a := range c.agents {
		m, err := c.metrics(a)
		if err != nil {
			b.Fatalf("%s metrics: %v", a.name, err)
		}
		out = append(out, m["go_memstats_heap_inuse_bytes"]/(1<<20))
	}
	return out
}

// scalePollCost measures, per agent, process CPU per poll round and the poll round's own
// duration over scaleSamples() rounds. A window during which any agent started a Raft
// snapshot is measured again (a snapshot is not part of a poll round).
func scalePollCost(b *testing.B, c *scaleCluster) (cpuMs, wallMs, allocMB []float64) {
	b.Helper()
	const snapLine = "starting snapshot up to"
	scalePollRounds := float64(scaleSamples())
	for attempt := 1; ; attempt++ {
		cpuMs, wallMs, allocMB = cpuMs[:0], wallMs[:0], allocMB[:0]
		var gcs []float64
		snaps0 := 0
		for _, a := range c.agents {
			snaps0 += scaleLogCount(a.logPath, snapLine)
		}
		type mark struct {
			rounds, sum, alloc, gcs float64
			cpu                     time.Duration
		}
		read := func(a *scaleAgent, cpuFirst bool) mark {
			var m mark
			var err error
			if cpuFirst {
				m.cpu, err = scaleProcCPU(a.pid())
			}
			met, merr := c.metrics(a)
			if merr != nil {
				b.Fatalf("%s metrics: %v", a.name, merr)
			}
			if !cpuFirst {
				m.cpu, err = scaleProcCPU(a.pid())
			}
			if err != nil {
				b.Fatal(err)
			}
			m.rounds, m.sum = met["cardsync_syncer_poll_seconds_count"], met["cardsync_syncer_poll_seconds_sum"]
			m.alloc, m.gcs = met["go_memstats_alloc_bytes_total"], met["go_gc_duration_seconds_count"]
			return m
		}
		// The scrapes stay outside the CPU window: metrics first at the start, last at the end.
		start := make([]mark, len(c.agents))
		for i, a := range c.agents {
			start[i] = read(a, false)
		}
		t0 := time.Now()
		time.Sleep(time.Duration(scalePollRounds) * scalePollEvery) // the measurement window
		end := make([]mark, len(c.agents))
		for i, a := range c.agents {
			scaleWait(b, time.Duration(scalePollRounds+30)*scalePollEvery, a.name+" poll rounds", func() (bool, string) {
				end[i] = read(a, true)
				return end[i].rounds-start[i].rounds >= scalePollRounds, fmt.Sprintf("%v rounds", end[i].rounds-start[i].rounds)
			})
		}
		snaps1 := 0
		for _, a := range c.agents {
			snaps1 += scaleLogCount(a.logPath, snapLine)
		}
		for i := range c.agents {
			rounds := end[i].rounds - start[i].rounds
			cpuMs = append(cpuMs, float64((end[i].cpu-start[i].cpu).Microseconds())/1000/rounds)
			wallMs = append(wallMs, (end[i].sum-start[i].sum)/rounds*1000)
			allocMB = append(allocMB, (end[i].alloc-start[i].alloc)/rounds/(1<<20))
			gcs = append(gcs, (end[i].gcs-start[i].gcs)/rounds)
		}
		if snaps1 == snaps0 || attempt == 4 {
			b.Logf("poll cost over %v (attempt %d, %d snapshots started in the window): CPU ms/round %.1f, poll wall ms %.2f, allocated MB/round %.2f, GCs/round %.2f",
				time.Since(t0).Round(time.Second), attempt, snaps1-snaps0, cpuMs, wallMs, allocMB, gcs)
			return cpuMs, wallMs, allocMB
		}
		b.Logf("a Raft snapshot started during the poll window; measuring again")
	}
}

func scaleMean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func scaleRun(b *testing.B, bin string, total int) {
	b.StopTimer()
	runStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	chunks := scaleChunks(total)
	c := newScaleCluster(b, bin, scalePollEvery)
	formed := time.Since(runStart)
	// The same measurement on the empty cluster: what an agent spends per second with
	// no inventory (gossip, Raft heartbeats, an empty poll round).
	baseCPU, _, _ := scalePollCost(b, c)
	scaleCatalog(ctx, b, c, c.leader())

	// Import, as an operator would: one request per chunk to one node (a follower, so
	// the batches are forwarded to the leader), until every replica holds every card.
	target := c.follower()
	b.StartTimer()
	t0 := time.Now()
	for i, body := range chunks {
		var res struct {
			Cards int `json:"cards"`
			Added int `json:"added"`
		}
		if err := c.post(ctx, target.http, "/v1/cards?format=csv", "text/csv", bytes.NewReader(body), &res); err != nil {
			b.Fatalf("import chunk %d: %v", i, err)
		}
		if res.Added != res.Cards {
			b.Fatalf("import chunk %d: %d cards, %d added", i, res.Cards, res.Added)
		}
	}
	c.waitCards(total, 20*time.Minute)
	importS := time.Since(t0).Seconds()
	b.StopTimer()
	chunks = nil
	runtime.GC()
	b.Logf("imported %d cards in %.1f s (%.0f cards/s, %d requests)", total, importS, float64(total)/importS, (total+scaleImportChunk-1)/scaleImportChunk)

	t1 := time.Now()
	shards := scaleScheduleAhead(ctx, b, c)

	t6 := time.Now()
	scaleSnapshotsSettled(b, c)
	b.Logf("%d shards scheduled 24 h ahead in %v; Raft snapshots settled after %v", shards, t6.Sub(t1).Round(100*time.Millisecond), time.Since(t6).Round(100*time.Millisecond))

	rss, hwm, anon := scaleRSS(b, c)

	heap := scaleHeapMB(b, c)
	b.Logf("RSS MiB per node %.0f (anonymous %.0f, Go heap in use %.0f), peak %.0f", rss, anon, heap, hwm)
	pollCPU, pollWall, pollAlloc := scalePollCost(b, c)

	// Backup: a consistent copy of the replicated state streamed from a follower.
	backup := filepath.Join(b.TempDir(), "backup.db")
	src := c.follower()
	t2 := time.Now()
	resp, err := c.client.Get("http://" + src.http + "/v1/backup")
	if err != nil {
		b.Fatalf("backup: %v", err)
	}
	f, err := os.Create(backup)
	if err != nil {
		b.Fatal(err)
	}
	backupBytes, err := io.Copy(f, resp.Body)
	resp.Body.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("backup: status %d, %v", resp.StatusCode, err)
	}
	snapshotS := time.Since(t2).Seconds()
	b.Logf("backup of %.0f MiB from %s in %.1f s", float64(backupBytes)/(1<<20), src.name, snapshotS)

	// Restore that backup on the leader (forced: the cluster holds cards) until every
	// node applied it.
	l := c.leader()
	t3 := time.Now()
	bf, err := os.Open(backup)
	if err != nil {
		b.Fatal(err)
	}
	var rres struct {
		Cards int `json:"cards"`
	}
	err = c.post(ctx, l.http, "/v1/restore?force=true", "application/octet-stream", bf, &rres)
	bf.Close()
	if err != nil {
		b.Fatalf("restore: %v", err)
	}
	if rres.Cards != total {
		b.Fatalf("restore: leader holds %d cards, want %d", rres.Cards, total)
	}
	ls, err := c.status(l)
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range c.agents {
		scaleWait(b, 20*time.Minute, a.name+" to apply the restore", func() (bool, string) {
			s, err := c.status(a)
			if err != nil {
				return false, err.Error()
			}
			return s.AppliedIndex >= ls.AppliedIndex, fmt.Sprintf("applied %d of %d", s.AppliedIndex, ls.AppliedIndex)
		})
	}
	restoreS := time.Since(t3).Seconds()
	c.waitCards(total, time.Minute)
	scaleSameDigest(b, c)
	b.Logf("restore applied on every node in %.1f s", restoreS)

	// Rejoin: a follower loses its disk; it comes back with its name and addresses and
	// an empty data directory, and catches up from the leader's snapshot. First the log
	// is advanced until the leader has compacted its start, as one sync round does (a
	// round of N cards writes about N/100 flush entries): with the whole log still
	// there the new node would replay it from index 1 instead of installing a snapshot.
	t5 := time.Now()
	entries := scaleCompactLog(ctx, b, c)
	b.Logf("log advanced by %d entries until the leader compacted it, in %v", entries, time.Since(t5).Round(100*time.Millisecond))
	victim := c.follower()
	c.kill(victim)
	for _, a := range c.agents {
		if a == victim {
			continue
		}
		scaleWait(b, time.Minute, a.name+" to see "+victim.name+" gone", func() (bool, string) {
			s, err := c.status(a)
			if err != nil {
				return false, err.Error()
			}
			return s.AliveMembers == 2, fmt.Sprintf("%d alive", s.AliveMembers)
		})
	}
	if err := os.RemoveAll(victim.dataDir); err != nil {
		b.Fatal(err)
	}
	installs0 := scaleLogCount(victim.logPath, "Installed remote snapshot")
	t4 := time.Now()
	c.start(victim)
	scaleWait(b, 20*time.Minute, victim.name+" ready with every card", func() (bool, string) {
		if !victim.alive() {
			b.Fatalf("%s exited:\n%s", victim.name, scaleTail(victim.logPath, 40))
		}
		s, err := c.status(victim)
		if err != nil {
			return false, err.Error()
		}
		if !s.Ready {
			return false, fmt.Sprintf("not ready, applied %d", s.AppliedIndex)
		}
		n, err := c.cards(victim)
		if err != nil {
			return false, err.Error()
		}
		return n == total, fmt.Sprintf("ready with %d cards", n)
	})
	rejoinS := time.Since(t4).Seconds()
	installs := scaleLogCount(victim.logPath, "Installed remote snapshot") - installs0
	b.Logf("%s rejoined with an empty disk in %.1f s (%d snapshot installs)", victim.name, rejoinS, installs)
	if installs == 0 {
		b.Errorf("%s caught up without a snapshot install", victim.name)
	}
	c.waitFormed(2 * time.Minute)

	n := float64(total)
	b.ReportMetric(importS, "import-s")
	b.ReportMetric(importS/n*1e6, "import-us/card")
	b.ReportMetric(scaleMean(rss), "rss-MB/node")
	b.ReportMetric(slices.Max(rss), "rss-MB/node-max")
	b.ReportMetric(scaleMean(anon), "rss-anon-MB/node")
	b.ReportMetric(slices.Max(hwm), "peak-rss-MB/node-max")
	b.ReportMetric(scaleMean(heap), "heap-MB/node")
	b.ReportMetric(scaleMean(rss)*(1<<20)/n, "rss-B/card")
	b.ReportMetric(snapshotS, "snapshot-s")
	b.ReportMetric(float64(backupBytes)/(1<<20), "backup-MB")
	b.ReportMetric(float64(backupBytes)/n, "backup-B/card")
	b.ReportMetric(restoreS, "restore-s")
	b.ReportMetric(restoreS/n*1e6, "restore-us/card")
	b.ReportMetric(rejoinS, "rejoin-s")
	b.ReportMetric(rejoinS/n*1e6, "rejoin-us/card")
	b.ReportMetric(scaleMean(pollCPU), "poll-ms/node")
	b.ReportMetric(scaleMean(baseCPU), "poll-empty-ms/node")
	b.ReportMetric((scaleMean(pollCPU)-scaleMean(baseCPU))/n*1e9, "poll-ns/card")
	b.ReportMetric(scaleMean(pollWall), "poll-wall-ms")
	b.ReportMetric(scaleMean(pollAlloc), "poll-alloc-MB/round")
	b.ReportMetric(float64(shards), "shards")
	b.ReportMetric(n, "cards")
	b.Logf("%d cards: cluster formed in %v, whole run %v", total, formed.Round(100*time.Millisecond), time.Since(runStart).Round(time.Second))
}

// scaleSameDigest checks that every replica has the same state digest.
func scaleSameDigest(b *testing.B, c *scaleCluster) {
	b.Helper()
	var want string
	for _, a := range c.agents {
		var d struct {
			Digest json.RawMessage `json:"digest"`
		}
		if err := c.getJSON(a.http, "/v1/digest", &d); err != nil {
			b.Fatalf("%s digest: %v", a.name, err)
		}
		if want == "" {
			want = string(d.Digest)
		} else if string(d.Digest) != want {
			b.Errorf("%s digest %s differs from %s", a.name, d.Digest, want)
		}
	}
}

var (
	scaleSnapRE    = regexp.MustCompile(`snapshot complete up to: index=(\d+)`)
	scaleCompactRE = regexp.MustCompile(`compacting logs: from=\d+ to=\d+`)
)

// scaleSnapshotsSettled waits until no agent has a Raft snapshot due or in progress:
// each one's log is less than SnapshotThreshold (8192) entries past its last completed
// snapshot. A restore must not meet a snapshot in progress: raft's snapshot goroutine
// holds the FSM snapshot (a bbolt read transaction) while it waits for the main loop,
// the main loop waits in the restore for FSM.Restore, and FSM.Restore's close of the
// old database waits for that read transaction, so the node stops for good (seen
// with 5,000,000 cards: a periodic snapshot on the leader started just before POST
// /v1/restore).
func scaleSnapshotsSettled(b *testing.B, c *scaleCluster) {
	b.Helper()
	for _, a := range c.agents {
		scaleWait(b, 5*time.Minute, a.name+" to have no Raft snapshot due", func() (bool, string) {
			data, err := os.ReadFile(a.logPath)
			if err != nil {
				return false, err.Error()
			}
			lastSnap := uint64(0)
			for _, m := range scaleSnapRE.FindAllStringSubmatch(string(data), -1) {
				if v, err := strconv.ParseUint(m[1], 10, 64); err == nil && v > lastSnap {
					lastSnap = v
				}
			}
			starts := bytes.Count(data, []byte("starting snapshot up to"))
			done := bytes.Count(data, []byte("snapshot complete up to"))
			st, err := c.status(a)
			if err != nil {
				return false, err.Error()
			}
			return starts == done && st.LastIndex < lastSnap+8192,
				fmt.Sprintf("last index %d, last snapshot %d, %d started, %d complete", st.LastIndex, lastSnap, starts, done)
		})
	}
}

// scaleCompactLog writes checkpoint entries (each shard's next run, unchanged) through
// the leader until its log is long enough that its next snapshot compacts index 1
// away, then waits for that compaction. It returns how many entries it wrote.
func scaleCompactLog(ctx context.Context, b *testing.B, c *scaleCluster) int {
	b.Helper()
	l := c.leader()
	logText := func() string {
		data, _ := os.ReadFile(l.logPath)
		return string(data)
	}
	if scaleCompactRE.MatchString(logText()) {
		return 0
	}
	lastSnap := uint64(0)
	for _, m := range scaleSnapRE.FindAllStringSubmatch(logText(), -1) {
		if v, err := strconv.ParseUint(m[1], 10, 64); err == nil && v > lastSnap {
			lastSnap = v
		}
	}
	// Raft snapshots after SnapshotThreshold (8192) new entries and keeps TrailingLogs
	// (10240) entries behind the snapshot.
	target := max(uint64(10240+500), lastSnap+8192+500)
	shards := c.shardIDs(b, l.http)
	next := time.Now().Add(24 * time.Hour).UTC()
	written := 0
	for {
		st, err := c.status(l)
		if err != nil {
			b.Fatal(err)
		}
		if st.LastIndex >= target {
			break
		}
		n := int(min(target-st.LastIndex, 1000))
		ids := make(chan string)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		for w := 0; w < scaleWriters; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := range ids {
					if err := c.postJSON(ctx, l.http, "/v1/shards/"+id+"/checkpoint", map[string]any{"next_run_at": next}, nil); err != nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
					}
				}
			}()
		}
		for i := 0; i < n; i++ {
			ids <- shards[(written+i)%len(shards)]
		}
		close(ids)
		wg.Wait()
		if firstErr != nil {
			b.Fatalf("checkpoint entries: %v", firstErr)
		}
		written += n
	}
	scaleWait(b, 5*time.Minute, l.name+" to compact its log", func() (bool, string) {
		return scaleCompactRE.MatchString(logText()), ""
	})
	return written
}

// shardIDs lists every shard id through a node's API.
func (c *scaleCluster) shardIDs(b *testing.B, addr string) []string {
	b.Helper()
	var list struct {
		Shards []struct {
			ID string `json:"id"`
		} `json:"shards"`
	}
	if err := c.getJSON(addr, "/v1/shards", &list); err != nil {
		b.Fatalf("list shards: %v", err)
	}
	ids := make([]string, len(list.Shards))
	for i, sh := range list.Shards {
		ids[i] = sh.ID
	}
	return ids
}
