package node

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"cardsync/membership"
)

// ErrUnauthorized is returned by CheckAdminToken when a request lacks the admin token.
var ErrUnauthorized = errors.New("admin token required")

func (f *forwarder) url(addr, path string) string { return f.scheme + "://" + addr + path }

func (f *forwarder) useTLS(cfg *tls.Config) {
	f.tr.TLSClientConfig = cfg
	f.scheme = "https"
	f.mtls = true
}

// internalAuthConfigured reports whether internal requests are authenticated at all
// (a cluster secret or mutual TLS).
func (f *forwarder) internalAuthConfigured() bool { return len(f.secret) > 0 || f.mtls }

// loopbackAddr reports whether an ip:port listens on loopback only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckAdminToken reports whether r carries "Authorization: Bearer <token>", comparing in
// constant time (digests of equal length, so the token's length does not leak either).
func CheckAdminToken(r *http.Request, token string) error {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ErrUnauthorized
	}
	a := sha256.Sum256([]byte(strings.TrimSpace(got)))
	b := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
		return fmt.Errorf("%w: wrong token", ErrUnauthorized)
	}
	return nil
}

func mutating(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// guard enforces the admin token: on every mutating request, and on every request when
// the API listens on a non-loopback address. Internal endpoints authenticate themselves
// (cluster secret or mutual TLS); health probes stay open so load balancers can use them.
func (n *Node) guard(next http.Handler) http.Handler {
	token := n.cfg.AdminToken
	if token == "" {
		return next
	}
	public := !loopbackAddr(n.HTTPAddr())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case strings.HasPrefix(p, "/internal/"), p == "/healthz", p == "/readyz":
		case mutating(r.Method) || public:
			if err := CheckAdminToken(r, token); err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="cardsync"`)
				writeError(w, http.StatusUnauthorized, err.Error()+": send Authorization: Bearer <token> (cardsync -token or $CARDSYNC_ADMIN_TOKEN)")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// warnInsecure logs the settings that leave the API or the cluster open.
func (n *Node) warnInsecure() {
	addr := n.HTTPAddr()
	if loopbackAddr(addr) {
		return
	}
	if n.cfg.AdminToken == "" {
		n.logger.Warn("HTTP API listens on a non-loopback address without an admin token: anyone who reaches it can change the cluster", "http", addr)
	}
	if n.tls == nil {
		n.logger.Warn("HTTP API listens on a non-loopback address without TLS: tokens and card data cross the network in plain text", "http", addr)
	}
	if n.cfg.ClusterSecret == "" && n.tls == nil {
		n.logger.Warn("internal endpoints are unauthenticated: set a cluster secret or TLS", "http", addr)
	}
}

// Keyring operations.
const (
	KeyringInstall = "install"
	KeyringUse     = "use"
	KeyringRemove  = "remove"
)

// KeyringRequest is the body of POST /v1/operator/keyring.
type KeyringRequest struct {
	// Op is install, use or remove.
	Op string `json:"op"`
	// Key is the gossip key, base64 (16, 24 or 32 bytes once decoded).
	Key string `json:"key"`
	// LocalOnly applies the change on the receiving node only.
	LocalOnly bool `json:"local_only,omitempty"`
}

// KeyInfo describes an installed gossip key without revealing it.
type KeyInfo struct {
	// Fingerprint is the first 8 bytes of the key's SHA-256, hex.
	Fingerprint string `json:"fingerprint"`
	Primary     bool   `json:"primary"`
}

// NodeKeyring is one member's answer to a keyring request.
type NodeKeyring struct {
	Keys  []KeyInfo `json:"keys,omitempty"`
	Error string    `json:"error,omitempty"`
}

// KeyFingerprint identifies a gossip key in listings.
func KeyFingerprint(key []byte) string {
	s := sha256.Sum256(key)
	return hex.EncodeToString(s[:8])
}

// ParseGossipKey decodes a base64 gossip key and checks its length.
func ParseGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("gossip key: not base64: %w", err)
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("gossip key is %d bytes: want 16, 24 or 32", len(k))
}

func (n *Node) localKeys() NodeKeyring {
	keys := n.members.Keys()
	if keys == nil {
		return NodeKeyring{Error: membership.ErrNoEncryption.Error()}
	}
	out := NodeKeyring{Keys: []KeyInfo{}}
	for i, k := range keys {
		out.Keys = append(out.Keys, KeyInfo{Fingerprint: KeyFingerprint(k), Primary: i == 0})
	}
	return out
}

// ApplyKeyring applies a keyring operation on this node only.
func (n *Node) ApplyKeyring(op string, key []byte) error {
	switch op {
	case KeyringInstall:
		return n.members.InstallKey(key)
	case KeyringUse:
		return n.members.UseKey(key)
	case KeyringRemove:
		return n.members.RemoveKey(key)
	}
	return fmt.Errorf("keyring op %q: want install, use or remove", op)
}

func (n *Node) keyringRoutes() {
	n.mux.HandleFunc("GET /v1/operator/keyring", n.handleKeyringList)
	n.mux.HandleFunc("POST /v1/operator/keyring", n.handleKeyringChange)
	n.mux.HandleFunc("GET /internal/v1/keyring", n.handleInternalKeyringList)
	n.mux.HandleFunc("POST /internal/v1/keyring", n.handleInternalKeyringChange)
}

// fanOut sends one signed internal request to every other alive member and collects the
// answers by member name.
func (n *Node) fanOut(ctx context.Context, method, path string, body []byte) map[string]NodeKeyring {
	out := map[string]NodeKeyring{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range n.members.Members() {
		if m.Name == n.name || m.State != membership.StateAlive || m.Meta.HTTPAddr == "" {
			continue
		}
		wg.Add(1)
		go func(name, addr string) {
			defer wg.Done()
			res := n.internalKeyringCall(ctx, method, addr, path, body)
			mu.Lock()
			out[name] = res
			mu.Unlock()
		}(m.Name, m.Meta.HTTPAddr)
	}
	wg.Wait()
	return out
}

func (n *Node) internalKeyringCall(ctx context.Context, method, addr, path string, body []byte) NodeKeyring {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := n.forwarder.call(ctx, method, addr, path, body)
	if err != nil {
		return NodeKeyring{Error: err.Error()}
	}
	defer resp.Body.Close()
	var nk NodeKeyring
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&nk); err != nil {
		return NodeKeyring{Error: fmt.Sprintf("status %d: %v", resp.StatusCode, err)}
	}
	if resp.StatusCode != http.StatusOK && nk.Error == "" {
		nk.Error = fmt.Sprintf("status %d", resp.StatusCode)
	}
	return nk
}

func keyringReply(w http.ResponseWriter, nodes map[string]NodeKeyring) {
	code := http.StatusOK
	for _, nk := range nodes {
		if nk.Error != "" {
			code = http.StatusBadGateway
		}
	}
	writeJSON(w, code, map[string]any{"ok": code == http.StatusOK, "nodes": nodes})
}

// handleKeyringList lists every alive member's installed gossip keys (fingerprints only).
func (n *Node) handleKeyringList(w http.ResponseWriter, r *http.Request) {
	nodes := map[string]NodeKeyring{n.name: n.localKeys()}
	if r.URL.Query().Get("local") == "" {
		for k, v := range n.fanOut(r.Context(), http.MethodGet, "/internal/v1/keyring", nil) {
			nodes[k] = v
		}
	}
	keyringReply(w, nodes)
}

// handleKeyringChange applies install, use or remove here and on every other alive member
// over the authenticated internal endpoint.
func (n *Node) handleKeyringChange(w http.ResponseWriter, r *http.Request) {
	var req KeyringRequest
	if !decodeBody(w, r, &req) {
		return
	}
	key, err := ParseGossipKey(req.Key)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Op != KeyringInstall && req.Op != KeyringUse && req.Op != KeyringRemove {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("op %q: want install, use or remove", req.Op))
		return
	}
	if err := n.ApplyKeyring(req.Op, key); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n.logger.Info("gossip keyring changed", "op", req.Op, "key", KeyFingerprint(key))
	nodes := map[string]NodeKeyring{n.name: n.localKeys()}
	if !req.LocalOnly {
		body, _ := json.Marshal(KeyringRequest{Op: req.Op, Key: req.Key, LocalOnly: true})
		for k, v := range n.fanOut(r.Context(), http.MethodPost, "/internal/v1/keyring", body) {
			nodes[k] = v
		}
	}
	keyringReply(w, nodes)
}

func (n *Node) internalKeyringAuth(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if !n.forwarder.internalAuthConfigured() {
		writeJSON(w, http.StatusForbidden, NodeKeyring{Error: "keyring changes between nodes need a cluster secret or mutual TLS: run the command against this node"})
		return false
	}
	if err := n.forwarder.verify(r, body); err != nil {
		writeJSON(w, http.StatusUnauthorized, NodeKeyring{Error: err.Error()})
		return false
	}
	return true
}

func (n *Node) handleInternalKeyringList(w http.ResponseWriter, r *http.Request) {
	if !n.internalKeyringAuth(w, r, nil) {
		return
	}
	writeJSON(w, http.StatusOK, n.localKeys())
}

func (n *Node) handleInternalKeyringChange(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<10+1))
	if err != nil || len(body) > 4<<10 {
		writeJSON(w, http.StatusRequestEntityTooLarge, NodeKeyring{Error: "body too large"})
		return
	}
	if !n.internalKeyringAuth(w, r, body) {
		return
	}
	var req KeyringRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, NodeKeyring{Error: "malformed JSON: " + err.Error()})
		return
	}
	key, err := ParseGossipKey(req.Key)
	if err == nil {
		err = n.ApplyKeyring(req.Op, key)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, NodeKeyring{Error: err.Error()})
		return
	}
	n.logger.Info("gossip keyring changed by a peer", "op", req.Op, "key", KeyFingerprint(key))
	writeJSON(w, http.StatusOK, n.localKeys())
}

// gossipKeyMismatch reports whether a gossip error means the two ends' encryption keys
// differ (or only one end encrypts).
func gossipKeyMismatch(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "no installed keys could decrypt") ||
		strings.Contains(m, "encryption is configured but remote state is not encrypted") ||
		strings.Contains(m, "remote state is encrypted and encryption is not configured")
}

// keyMismatchLogger is the gossip layer's logger: when a join attempt fails because the
// gossip keys differ, it adds one clear error to the node's log.
type keyMismatchLogger struct {
	hclog.Logger
	once   sync.Once
	report func(detail string)
}

func (l *keyMismatchLogger) Warn(msg string, args ...any) {
	l.Logger.Warn(msg, args...)
	for _, a := range args {
		if e, ok := a.(error); ok && gossipKeyMismatch(e.Error()) {
			l.once.Do(func() { l.report(e.Error()) })
			return
		}
	}
}

func (n *Node) gossipLogger() hclog.Logger {
	return &keyMismatchLogger{Logger: n.cfg.Logger.Named("gossip"), report: func(detail string) {
		hint := "this node has a gossip encryption key and the seeds do not, or the keys differ"
		if len(n.cfg.GossipKey) == 0 {
			hint = "the cluster encrypts gossip and this node has no key"
		}
		n.logger.Error("cannot join the cluster: gossip encryption key mismatch: "+hint+"; start with the cluster's key (-encrypt or node.encrypt)",
			"seeds", n.cfg.Join, "detail", detail)
	}}
}
