package bench

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdStore drives a 3-member etcd cluster embedded in this process, every member in its
// own temp dir on 127.0.0.1 ports, etcd's defaults otherwise (fsync on). Writer w talks
// to member w only (etcd forwards proposals of followers to the leader).
//
// Keys: /cardsync/shards/<id>/epoch, .../owner, .../cursor and
// /cardsync/cards/<shard>/<iccid> holding the card result's JSON.
type etcdStore struct {
	clients []*clientv3.Client

	mu     sync.Mutex
	epochs map[string]uint64
}

func epochKey(shard string) string  { return "/cardsync/shards/" + shard + "/epoch" }
func ownerKey(shard string) string  { return "/cardsync/shards/" + shard + "/owner" }
func cursorKey(shard string) string { return "/cardsync/shards/" + shard + "/cursor" }
func cardKey(shard, iccid string) string {
	return "/cardsync/cards/" + shard + "/" + iccid
}

// freePorts reserves n distinct loopback ports by binding port 0 and releasing them.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// startEtcd starts members etcd members and waits until they serve clients. The ports
// come from freePorts, so another process may take one in between: the caller retries.
func startEtcd(dir string, members int) ([]*embed.Etcd, []string, error) {
	ports, err := freePorts(2 * members)
	if err != nil {
		return nil, nil, err
	}
	u := func(port int) url.URL { return url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(port)} }
	var initial []string
	for i := 0; i < members; i++ {
		pu := u(ports[2*i])
		initial = append(initial, fmt.Sprintf("etcd-%d=%s", i, pu.String()))
	}
	var started []*embed.Etcd
	closeAll := func() {
		for _, e := range started {
			e.Close()
		}
	}
	var endpoints []string
	for i := 0; i < members; i++ {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("etcd-%d", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		cfg.ListenPeerUrls = []url.URL{u(ports[2*i])}
		cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
		cfg.ListenClientUrls = []url.URL{u(ports[2*i+1])}
		cfg.AdvertiseClientUrls = cfg.ListenClientUrls
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "cardsync-bench"
		cfg.ClusterState = embed.ClusterStateFlagNew
		cfg.Logger = "zap"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("start %s: %w", cfg.Name, err)
		}
		started = append(started, e)
		endpoints = append(endpoints, cfg.ListenClientUrls[0].Host)
	}
	for _, e := range started {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			closeAll()
			return nil, nil, fmt.Errorf("etcd member stopped: %w", err)
		case <-time.After(60 * time.Second):
			closeAll()
			return nil, nil, fmt.Errorf("etcd cluster not ready after 60s")
		}
	}
	return started, endpoints, nil
}

// newEtcdStore starts the cluster, connects one client per writer and writes every
// shard's epoch (0) and owner (none).
func newEtcdStore(tb testing.TB, w workload, plans []*shardPlan) *etcdStore {
	tb.Helper()
	var (
		members   []*embed.Etcd
		endpoints []string
		err       error
	)
	for attempt := 0; attempt < 3; attempt++ {
		members, endpoints, err = startEtcd(tb.TempDir(), w.writers)
		if err == nil {
			break
		}
		tb.Logf("etcd start attempt %d: %v", attempt+1, err)
	}
	if err != nil {
		tb.Fatalf("etcd: %v", err)
	}
	st := &etcdStore{epochs: map[string]uint64{}}
	tb.Cleanup(func() {
		for _, c := range st.clients {
			_ = c.Close()
		}
		var wg sync.WaitGroup
		for _, e := range members {
			wg.Add(1)
			go func(e *embed.Etcd) {
				defer wg.Done()
				e.Close()
			}(e)
		}
		wg.Wait()
	})
	for i := 0; i < w.writers; i++ {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoints[i]}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			tb.Fatalf("etcd client: %v", err)
		}
		st.clients = append(st.clients, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for start := 0; start < len(plans); start += 50 {
		var ops []clientv3.Op
		for _, p := range plans[start:min(start+50, len(plans))] {
			ops = append(ops, clientv3.OpPut(epochKey(p.id), "0"), clientv3.OpPut(ownerKey(p.id), ""))
		}
		if _, err := st.clients[0].Txn(ctx).Then(ops...).Commit(); err != nil {
			tb.Fatalf("etcd setup: %v", err)
		}
	}
	return st
}

// claim reads the epoch from the writer's member (serializable: a local read, like
// cardsync's read of its own replica; the last epoch this store saw wins if the member
// lags), then commits epoch+1 and the owner if the epoch is still the one read.
func (s *etcdStore) claim(ctx context.Context, w int, sh *shardPlan) (claimToken, error) {
	c := s.clients[w]
	resp, err := c.Get(ctx, epochKey(sh.id), clientv3.WithSerializable())
	if err != nil {
		return claimToken{}, err
	}
	var cur uint64
	if len(resp.Kvs) == 1 {
		if cur, err = strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64); err != nil {
			return claimToken{}, fmt.Errorf("epoch of %s: %w", sh.id, err)
		}
	}
	s.mu.Lock()
	cur = max(cur, s.epochs[sh.id])
	s.mu.Unlock()
	next := cur + 1
	tr, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(epochKey(sh.id)), "=", strconv.FormatUint(cur, 10))).
		Then(clientv3.OpPut(epochKey(sh.id), strconv.FormatUint(next, 10)), clientv3.OpPut(ownerKey(sh.id), writerName(w))).
		Commit()
	if err != nil {
		return claimToken{}, err
	}
	if !tr.Succeeded {
		return claimToken{}, fmt.Errorf("%w: shard %s is not at epoch %d", errFenced, sh.id, cur)
	}
	s.mu.Lock()
	s.epochs[sh.id] = next
	s.mu.Unlock()
	return claimToken{epoch: next}, nil
}

// flush commits the results and the cursor in one transaction guarded by the epoch.
func (s *etcdStore) flush(ctx context.Context, w int, f flushReq) error {
	ops := make([]clientv3.Op, 0, len(f.results)+1)
	for i := range f.results {
		v, err := resultValue(&f.results[i])
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(cardKey(f.shard.id, f.results[i].ICCID), string(v)))
	}
	ops = append(ops, clientv3.OpPut(cursorKey(f.shard.id), f.cursor))
	tr, err := s.clients[w].Txn(ctx).
		If(clientv3.Compare(clientv3.Value(epochKey(f.shard.id)), "=", strconv.FormatUint(f.token.epoch, 10))).
		Then(ops...).
		Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return fmt.Errorf("%w: shard %s moved past epoch %d", errFenced, f.shard.id, f.token.epoch)
	}
	return nil
}
