package node_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"cardsync/carrier"
	"cardsync/fsm"
	"cardsync/node"
	"cardsync/testcluster"
)

const testToken = "s3cr3t-admin-token-0123456789"

func startDevNode(t *testing.T, mutate func(*node.Config)) *node.Node {
	t.Helper()
	cfg := devConfig(t.TempDir())
	cfg.Profile = "fast"
	cfg.FSMNoSync = true
	if mutate != nil {
		mutate(&cfg)
	}
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown() })
	testcluster.WaitFor(t, 15*time.Second, "node ready", n.Ready)
	return n
}

func doReq(t *testing.T, method, url, token, contentType string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Every mutating endpoint answers 401 without the admin token (or with a wrong one) and
// works with it; reads stay open on loopback.
func TestAdminTokenGuardsMutations(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	n := startDevNode(t, func(c *node.Config) {
		c.AdminToken = testToken
		c.GossipKey = key
	})
	n.Mux().HandleFunc("DELETE /v1/extra/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	base := "http://" + n.HTTPAddr()
	newKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))

	type step struct {
		method, path, ctype, body string
		want                      int
	}
	setup := []step{
		{"POST", "/v1/accounts", "application/json", `{"id":"ol-1","carrier":"onelink","ttl":3600000000000,"rate_per_sec":10,"burst":1,"concurrency":1,"batch_size":100,"credentials_valid":true}`, 200},
		{"POST", "/v1/enterprises", "application/json", `{"id":"acme","name":"Acme","accounts":{"onelink":"ol-1"},"inventory_ready":true}`, 200},
		{"POST", "/v1/cards", "text/csv", "enterprise,iccid,account\nacme,8986001234567890123,ol-1\n", 200},
	}
	run := func(s step) {
		t.Helper()
		url := base + s.path
		if code, body := doReq(t, s.method, url, "", s.ctype, []byte(s.body)); code != http.StatusUnauthorized {
			t.Fatalf("%s %s without token: %d %s", s.method, s.path, code, body)
		}
		if code, body := doReq(t, s.method, url, "wrong-token-wrong-token", s.ctype, []byte(s.body)); code != http.StatusUnauthorized {
			t.Fatalf("%s %s with a wrong token: %d %s", s.method, s.path, code, body)
		}
		if code, body := doReq(t, s.method, url, testToken, s.ctype, []byte(s.body)); code != s.want {
			t.Fatalf("%s %s with the token: %d %s", s.method, s.path, code, body)
		}
	}
	for _, s := range setup {
		run(s)
	}
	shards, err := n.FSM().Shards(fsm.ShardFilter{})
	if err != nil || len(shards) == 0 {
		t.Fatalf("shards after import: %v %v", shards, err)
	}
	sid := shards[0].ID
	for _, s := range []step{
		{"POST", "/v1/resync", "application/json", `{"enterprise":"acme"}`, 200},
		{"POST", "/v1/shards/" + sid + "/checkpoint", "application/json", `{"new_task":true}`, 200},
		{"POST", "/v1/shards/" + sid + "/release", "application/json", `{"reason":"test"}`, 200},
		{"POST", "/v1/maintenance", "application/json", `{"on":true,"reason":"test"}`, 200},
		{"POST", "/v1/maintenance", "application/json", `{"on":false}`, 200},
		{"POST", "/v1/drain", "application/json", `{"on":false}`, 200},
		{"POST", "/v1/operator/keyring", "application/json", `{"op":"install","key":"` + newKey + `"}`, 200},
		{"POST", "/v1/operator/keyring", "application/json", `{"op":"use","key":"` + newKey + `"}`, 200},
		{"POST", "/v1/operator/keyring", "application/json", `{"op":"remove","key":"` + base64.StdEncoding.EncodeToString(key) + `"}`, 200},
		{"POST", "/v1/operator/raft/remove-peer", "application/json", `{"id":"no-such-node"}`, 200},
		{"DELETE", "/v1/extra/1", "", "", http.StatusNoContent},
	} {
		run(s)
	}
	// Reads stay open on loopback.
	for _, p := range []string{"/v1/status", "/v1/members", "/v1/cards", "/v1/shards", "/v1/accounts", "/v1/operator/keyring", "/metrics", "/healthz"} {
		if code, body := doReq(t, "GET", base+p, "", "", nil); code != http.StatusOK {
			t.Fatalf("GET %s without token on loopback: %d %s", p, code, body)
		}
	}
}

// On a non-loopback address every endpoint but the health probes needs the token.
func TestAdminTokenRequiredForReadsWhenPublic(t *testing.T) {
	var logs bytes.Buffer
	n := startDevNode(t, func(c *node.Config) {
		c.AdminToken = testToken
		c.HTTPAddr = "0.0.0.0:0"
		c.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn})
	})
	port := n.HTTPAddr()[strings.LastIndex(n.HTTPAddr(), ":")+1:]
	base := "http://127.0.0.1:" + port
	for _, p := range []string{"/v1/status", "/v1/members", "/v1/cards", "/metrics"} {
		if code, _ := doReq(t, "GET", base+p, "", "", nil); code != http.StatusUnauthorized {
			t.Fatalf("GET %s without token on a public address: %d", p, code)
		}
		if code, body := doReq(t, "GET", base+p, testToken, "", nil); code != http.StatusOK {
			t.Fatalf("GET %s with the token: %d %s", p, code, body)
		}
	}
	if code, _ := doReq(t, "GET", base+"/healthz", "", "", nil); code != http.StatusOK {
		t.Fatalf("healthz: %d", code)
	}
	if !strings.Contains(logs.String(), "without TLS") {
		t.Fatalf("no warning about plain-text HTTP on a public address in:\n%s", logs.String())
	}
}

func signInternal(secret, ts string, body []byte) string {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(ts))
	h.Write([]byte{'\n'})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// The internal propose endpoint accepts a correctly signed request once and rejects
// forged, unsigned, stale and replayed ones.
func TestInternalProposeRejectsForgedAndReplayed(t *testing.T) {
	const secret = "cluster-secret-for-tests"
	n := startDevNode(t, func(c *node.Config) { c.ClusterSecret = secret })
	url := "http://" + n.HTTPAddr() + "/internal/v1/propose"
	cmd, err := fsm.Encode(fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: "forged", Name: "F", InventoryReady: true})
	if err != nil {
		t.Fatal(err)
	}
	send := func(ts, sig string, body []byte) (int, string) {
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		if ts != "" {
			req.Header.Set("X-Cardsync-Time", ts)
		}
		if sig != "" {
			req.Header.Set("X-Cardsync-Signature", sig)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	now := strconv.FormatInt(time.Now().UnixNano(), 10)
	old := strconv.FormatInt(time.Now().Add(-time.Hour).UnixNano(), 10)
	for _, tc := range []struct {
		name, ts, sig string
		body          []byte
	}{
		{"unsigned", "", "", cmd},
		{"wrong secret", now, signInternal("not-the-secret", now, cmd), cmd},
		{"body changed after signing", now, signInternal(secret, now, []byte("other")), cmd},
		{"stale timestamp", old, signInternal(secret, old, cmd), cmd},
		{"malformed timestamp", "yesterday", signInternal(secret, "yesterday", cmd), cmd},
	} {
		if code, body := send(tc.ts, tc.sig, tc.body); code != http.StatusUnauthorized {
			t.Fatalf("%s: %d %s", tc.name, code, body)
		}
	}
	if _, err := n.FSM().Enterprise("forged"); err == nil {
		t.Fatal("a rejected request changed the state")
	}
	ts := strconv.FormatInt(time.Now().UnixNano(), 10)
	sig := signInternal(secret, ts, cmd)
	if code, body := send(ts, sig, cmd); code != http.StatusOK || strings.Contains(body, `"error"`) {
		t.Fatalf("signed request: %d %s", code, body)
	}
	if code, body := send(ts, sig, cmd); code != http.StatusUnauthorized || !strings.Contains(body, "replayed") {
		t.Fatalf("replayed request: %d %s", code, body)
	}
}

// Oversized bodies get 413: admin JSON and internal keyring bodies.
func TestOversizedBodies(t *testing.T) {
	n := startDevNode(t, func(c *node.Config) { c.AdminToken = testToken })
	base := "http://" + n.HTTPAddr()
	big := append([]byte(`{"reason":"`), bytes.Repeat([]byte("x"), 2<<20)...)
	big = append(big, `"}`...)
	for _, p := range []string{"/v1/maintenance", "/v1/resync", "/v1/enterprises", "/v1/accounts", "/v1/operator/keyring"} {
		if code, body := doReq(t, "POST", base+p, testToken, "application/json", big); code != http.StatusRequestEntityTooLarge {
			t.Fatalf("POST %s with 2 MiB: %d %.200s", p, code, body)
		}
	}
	if code, body := doReq(t, "POST", base+"/internal/v1/keyring", "", "application/json", big); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("internal keyring with 2 MiB: %d %.200s", code, body)
	}
	// Oversized headers are refused before any handler runs.
	req, _ := http.NewRequest("GET", base+"/v1/status", nil)
	req.Header.Set("X-Big", strings.Repeat("y", 2<<20))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("2 MiB header: %d", resp.StatusCode)
		}
	}
}

// A config with partial TLS settings or a short admin token is rejected.
func TestSecurityConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*node.Config)
		ok     bool
	}{
		{"defaults", func(*node.Config) {}, true},
		{"token", func(c *node.Config) { c.AdminToken = testToken }, true},
		{"short token", func(c *node.Config) { c.AdminToken = "abc" }, false},
		{"cert without key", func(c *node.Config) { c.TLSCertFile = "c.pem" }, false},
		{"all tls files", func(c *node.Config) { c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = "c", "k", "ca" }, true},
		{"bad gossip key", func(c *node.Config) { c.GossipKey = []byte("short") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := node.DefaultConfig()
			tc.mutate(&c)
			if err := c.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestParseGossipKey(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{base64.StdEncoding.EncodeToString(make([]byte, 16)), true},
		{base64.StdEncoding.EncodeToString(make([]byte, 24)), true},
		{" " + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n", true},
		{base64.StdEncoding.EncodeToString(make([]byte, 31)), false},
		{"not base64!", false},
		{"", false},
	} {
		if _, err := node.ParseGossipKey(tc.in); (err == nil) != tc.ok {
			t.Errorf("ParseGossipKey(%q): %v", tc.in, err)
		}
	}
}

// writeTestPKI writes a throwaway CA and one certificate for 127.0.0.1 (server and client
// use) signed by it; it returns the file paths.
func writeTestPKI(t *testing.T) (certFile, keyFile, caFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cardsync test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "cardsync node"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("node.pem", "CERTIFICATE", der), write("node-key.pem", "EC PRIVATE KEY", keyDER), write("ca.pem", "CERTIFICATE", caDER)
}

// A cluster with TLS everywhere and no cluster secret forms, forwards proposals over
// mutually authenticated HTTPS, and refuses plain-text and certificate-less clients.
func TestTLSClusterFormsAndRefusesPlainText(t *testing.T) {
	certFile, keyFile, caFile := writeTestPKI(t)
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, Node: func(i int, nc *node.Config) {
		nc.TLSCertFile, nc.TLSKeyFile, nc.TLSCAFile = certFile, keyFile, caFile
	}})
	c.WaitStable(60 * time.Second)
	f := c.Follower()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := f.Node().Propose(ctx, enterpriseCmd(t, "tls-acme")); err != nil {
		t.Fatalf("propose on a follower (forwarded over mutual TLS): %v", err)
	}
	addr := f.Node().HTTPAddr()

	// Plain HTTP to the TLS API is refused.
	if resp, err := http.Get("http://" + addr + "/v1/status"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("plain-text HTTP answered 200: %s", b)
		}
	}
	caPEM, _ := os.ReadFile(caFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer noCert.CloseIdleConnections()
	resp, err := noCert.Get("https://" + addr + "/v1/status")
	if err != nil {
		t.Fatalf("https read without a client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("https read: %d", resp.StatusCode)
	}
	// Internal endpoints need the client certificate when there is no cluster secret.
	resp, err = noCert.Post("https://"+addr+"/internal/v1/propose", "application/octet-stream", bytes.NewReader(enterpriseCmd(t, "forged")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("internal propose without a client certificate: %d", resp.StatusCode)
	}

	// Raft: plain text and TLS without a client certificate both get nothing back.
	raftAddr := f.Node().RaftAddr()
	conn, err := net.DialTimeout("tcp", raftAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("\x00plain-text raft rpc\n"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 64)); err == nil {
		t.Fatalf("plain-text raft connection got %d bytes back", n)
	}
	conn.Close()
	tc, err := tls.Dial("tcp", raftAddr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err == nil {
		_, _ = tc.Write([]byte{0})
		_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := tc.Read(make([]byte, 1)); err == nil {
			t.Fatal("raft accepted a TLS client without a certificate")
		}
		tc.Close()
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A node with a different gossip key cannot join and says why.
func TestWrongGossipKeyCannotJoin(t *testing.T) {
	good := bytes.Repeat([]byte{1}, 32)
	bad := bytes.Repeat([]byte{2}, 32)
	a := startDevNode(t, func(c *node.Config) { c.GossipKey = good })
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"wrong key", bad}, {"no key", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuffer{}
			cfg := node.DefaultConfig()
			cfg.DataDir = t.TempDir()
			cfg.Profile = "fast"
			cfg.FSMNoSync = true
			cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
			cfg.Join = []string{a.GossipAddr()}
			cfg.GossipKey = tc.key
			cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
			b, err := node.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Shutdown()
			testcluster.WaitFor(t, 20*time.Second, "join failure explained", func() bool {
				return strings.Contains(logs.String(), "cannot join the cluster: gossip encryption key mismatch")
			})
			for _, m := range a.Membership().Members() {
				if m.Name == b.Name() {
					t.Fatalf("member with the %s joined: %+v", tc.name, m)
				}
			}
			if len(b.Membership().Members()) != 1 {
				t.Fatalf("joiner sees %d members", len(b.Membership().Members()))
			}
		})
	}
}

// Keys rotate across the whole cluster through one node's API: install, use, remove; the
// cluster stays together and every member ends on the new key alone.
func TestKeyringRotationFansOut(t *testing.T) {
	oldKey := bytes.Repeat([]byte{3}, 32)
	newKey := bytes.Repeat([]byte{4}, 16)
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, Node: func(i int, nc *node.Config) {
		nc.GossipKey = oldKey
		nc.ClusterSecret = "rotation-secret"
		nc.AdminToken = testToken
	}})
	c.WaitStable(60 * time.Second)
	base := "http://" + c.Up()[1].Node().HTTPAddr()
	for _, step := range []struct {
		op  string
		key []byte
	}{{"install", newKey}, {"use", newKey}, {"remove", oldKey}} {
		body := fmt.Sprintf(`{"op":%q,"key":%q}`, step.op, base64.StdEncoding.EncodeToString(step.key))
		code, out := doReq(t, "POST", base+"/v1/operator/keyring", testToken, "application/json", []byte(body))
		if code != http.StatusOK {
			t.Fatalf("%s: %d %s", step.op, code, out)
		}
		var rep struct {
			Nodes map[string]node.NodeKeyring `json:"nodes"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Nodes) != 3 {
			t.Fatalf("%s: %v %s", step.op, err, out)
		}
	}
	for _, m := range c.Up() {
		keys := m.Node().Membership().Keys()
		if len(keys) != 1 || !bytes.Equal(keys[0], newKey) {
			t.Fatalf("%s keys after rotation: %x", m.Name, keys)
		}
	}
	code, out := doReq(t, "GET", base+"/v1/operator/keyring", "", "", nil)
	if code != http.StatusOK || !strings.Contains(out, node.KeyFingerprint(newKey)) || strings.Contains(out, base64.StdEncoding.EncodeToString(newKey)) {
		t.Fatalf("list: %d %s", code, out)
	}
	// Gossip still works on the new key: stop and restart a member, everyone sees it back.
	c.WaitStable(30 * time.Second)
}

// A 3-node cluster syncing from the simulator with trace logging never logs or returns a
// carrier credential (secret, app id, open id, customer number).
func TestCredentialsNeverLoggedOrReturned(t *testing.T) {
	logs := &syncBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	var creds []string
	c := testcluster.New(t, testcluster.Options{Nodes: 3, Cards: 1000, Logger: logger,
		Accounts: func(acs []carrier.AccountConfig) {
			for _, a := range acs {
				for _, s := range []string{a.Secret, a.AppID, a.OpenID, a.CustNumber} {
					if s != "" {
						creds = append(creds, s)
					}
				}
			}
		}})
	if len(creds) < 10 {
		t.Fatalf("only %d credentials captured", len(creds))
	}
	c.WaitStable(60 * time.Second)
	testcluster.WaitFor(t, 90*time.Second, "cards synced", func() bool {
		shards, err := c.Leader().Node().FSM().Shards(fsm.ShardFilter{})
		if err != nil {
			return false
		}
		var synced uint64
		for _, s := range shards {
			synced += s.Checkpoint.Synced
		}
		return synced >= 500
	})
	paths := []string{"/v1/status", "/v1/members", "/v1/accounts", "/v1/quota", "/v1/shards", "/v1/cards?limit=10000",
		"/v1/enterprises", "/v1/ring", "/v1/changes?limit=1000", "/v1/operator/raft/peers", "/v1/operator/keyring",
		"/v1/webhooks", "/v1/digest", "/metrics", "/v1/backup"}
	var responses strings.Builder
	for _, m := range c.Up() {
		for _, p := range paths {
			code, body := doReq(t, "GET", "http://"+m.Node().HTTPAddr()+p, "", "", nil)
			if code != http.StatusOK && p != "/v1/operator/keyring" {
				t.Fatalf("%s GET %s: %d %.200s", m.Name, p, code, body)
			}
			fmt.Fprintf(&responses, "== %s %s\n%s\n", m.Name, p, body)
		}
		if shards, _ := m.Node().FSM().Shards(fsm.ShardFilter{}); len(shards) > 0 {
			_, body := doReq(t, "GET", "http://"+m.Node().HTTPAddr()+"/v1/shards/"+shards[0].ID, "", "", nil)
			responses.WriteString(body)
		}
	}
	// The simulator stands in for the carriers: its own lines may name the credentials it
	// checks, so only cardsync's lines are searched.
	var ours strings.Builder
	lines := strings.Split(logs.String(), "\n")
	for _, l := range lines {
		if !strings.Contains(l, "carriersim") {
			ours.WriteString(l)
			ours.WriteByte('\n')
		}
	}
	if len(lines) < 100 {
		t.Fatalf("only %d log lines captured", len(lines))
	}
	for _, cred := range creds {
		if i := strings.Index(ours.String(), cred); i >= 0 {
			s := ours.String()
			t.Fatalf("credential %q logged: ...%s...", cred, s[max(0, i-200):min(len(s), i+100)])
		}
		if i := strings.Index(responses.String(), cred); i >= 0 {
			s := responses.String()
			t.Fatalf("credential %q returned by the API: ...%s...", cred, s[max(0, i-200):min(len(s), i+100)])
		}
	}
	if os.Getenv("CARDSYNC_DUMP_LOG") != "" {
		t.Log(ours.String())
	}
	t.Logf("searched %d log lines (%d bytes) and %d bytes of API responses for %d credentials", len(lines), len(ours.String()), responses.Len(), len(creds))
}
