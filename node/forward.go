package node

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
)

var errLeaderUnreachable = errors.New("leader unreachable")

// errOutcomeUnknown means a forwarded proposal reached the leader but no answer came
// back: it may or may not have been applied, so it is not retried.
var errOutcomeUnknown = errors.New("outcome unknown")

const (
	hdrTime      = "X-Cardsync-Time"
	hdrSignature = "X-Cardsync-Signature"
	maxSkew      = 30 * time.Second
	maxCmdBytes  = 64 << 20
)

// forwarder sends proposals from a follower to the leader: over one long-lived
// multiplexed stream per leader (forward_stream.go), or as one POST per proposal to a
// leader that does not take the stream, signing each request or frame with the cluster
// secret. It also signs and checks the other internal requests.
type forwarder struct {
	secret []byte
	// scheme is "https" when TLS is on; mtls then also accepts a verified client
	// certificate in place of an HMAC signature.
	scheme string
	mtls   bool
	client *http.Client
	tr     *http.Transport

	replay replayGuard

	// Forwarding streams, one per leader address (forward_stream.go).
	smu     sync.Mutex
	streams map[string]*fwdStream
	dialing map[string]*dialCall
	refused map[string]time.Time // leaders that answered the upgrade with a plain reply, until when
	closed  bool
}

// replayGuard remembers the signatures of the last 2*maxSkew so a signed request cannot
// be sent twice. Signatures arrive in time order, so they expire from the front of a
// queue: the cost per request is constant, however many requests the window holds.
type replayGuard struct {
	mu    sync.Mutex
	seen  map[string]struct{}
	queue []seenSig // oldest first, from head on
	head  int
}

type seenSig struct {
	sig string
	at  time.Time
}

// check records sig at now and reports whether it was already seen within the window.
func (g *replayGuard) check(sig string, now time.Time) (replayed bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.head < len(g.queue) && now.Sub(g.queue[g.head].at) > 2*maxSkew {
		delete(g.seen, g.queue[g.head].sig)
		g.queue[g.head] = seenSig{}
		g.head++
	}
	// Reuse the queue's space once most of it is expired entries; each entry is moved
	// at most once per expiry of an older one, so this stays constant per request.
	if g.head > 32 && g.head >= len(g.queue)/2 {
		n := copy(g.queue, g.queue[g.head:])
		clear(g.queue[n:])
		g.queue, g.head = g.queue[:n], 0
	}
	if _, dup := g.seen[sig]; dup {
		return true
	}
	if g.seen == nil {
		g.seen = map[string]struct{}{}
	}
	g.seen[sig] = struct{}{}
	g.queue = append(g.queue, seenSig{sig: sig, at: now})
	return false
}

// DialFunc dials a network address (net.Dialer.DialContext's signature).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func newForwarder(secret string) *forwarder {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	return &forwarder{
		secret: []byte(secret),
		scheme: "http",
		tr:     tr,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}
}

func (f *forwarder) close() {
	f.closeStreams()
	f.tr.CloseIdleConnections()
}

func (f *forwarder) mac(ts string, body []byte) string {
	h := hmac.New(sha256.New, f.secret)
	h.Write([]byte(ts))
	h.Write([]byte{'\n'})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

func (f *forwarder) sign(req *http.Request, body []byte) {
	if len(f.secret) == 0 {
		return
	}
	ts := strconv.FormatInt(time.Now().UnixNano(), 10)
	req.Header.Set(hdrTime, ts)
	req.Header.Set(hdrSignature, f.mac(ts, body))
}

// call sends a signed internal request to the node whose HTTP API is at addr (the
// caller closes the response body).
func (f *forwarder) call(ctx context.Context, method, addr, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, f.url(addr, path), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	f.sign(req, body)
	return f.client.Do(req)
}

// verify checks an internal request's signature, its age, and that it was not seen before.
func (f *forwarder) verify(r *http.Request, body []byte) error {
	if f.mtls && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return nil
	}
	if len(f.secret) == 0 {
		if f.mtls {
			return errors.New("client certificate signed by the cluster CA required")
		}
		return nil
	}
	ts := r.Header.Get(hdrTime)
	sig := r.Header.Get(hdrSignature)
	nanos, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return errors.New("missing or malformed signature")
	}
	if d := time.Since(time.Unix(0, nanos)); d > maxSkew || d < -maxSkew {
		return errors.New("signature timestamp outside the allowed window")
	}
	if !hmac.Equal([]byte(sig), []byte(f.mac(ts, body))) {
		return errors.New("bad signature")
	}
	if f.replay.check(sig, time.Now()) {
		return errors.New("replayed request")
	}
	return nil
}

type proposeReply struct {
	Result *fsm.Result `json:"result,omitempty"`
	Index  uint64      `json:"index,omitempty"`
	Code   string      `json:"code,omitempty"`
	Error  string      `json:"error,omitempty"`
}

func (n *Node) leaderHTTPAddr() (string, error) {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return "", ErrNoLeader
	}
	if string(id) == n.name {
		return n.HTTPAddr(), nil
	}
	for _, m := range n.members.Members() {
		if m.Name == string(id) && m.Meta.HTTPAddr != "" {
			return m.Meta.HTTPAddr, nil
		}
	}
	return "", fmt.Errorf("%w: leader %s has no known HTTP address", ErrNoLeader, id)
}

func (n *Node) forward(ctx context.Context, cmd []byte) (*fsm.Result, uint64, error) {
	res, err := n.forwardOnce(ctx, cmd)
	if err != nil {
		return nil, 0, err
	}
	return res.Result, res.Index, nil
}

func (n *Node) forwardOnce(ctx context.Context, cmd []byte) (*proposeReply, error) {
	addr, err := n.leaderHTTPAddr()
	if err != nil {
		return nil, err
	}
	rep, err := n.forwardStream(ctx, addr, cmd)
	if !errors.Is(err, errStreamRefused) {
		return rep, err
	}
	return n.forwardHTTP(ctx, addr, cmd)
}

// forwardHTTP forwards cmd to the leader at addr as one POST (a leader that does not
// speak the stream protocol).
func (n *Node) forwardHTTP(ctx context.Context, addr string, cmd []byte) (*proposeReply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.forwarder.url(addr, proposePath), bytes.NewReader(cmd))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	n.forwarder.sign(req, cmd)
	// Once the request is written the leader may apply it even if no answer comes back:
	// then the outcome is unknown and the proposal must not be sent again (a second claim
	// would be refused as stale while the first one was granted).
	var wrote atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { wrote.Store(true) },
	}))
	resp, err := n.forwarder.client.Do(req)
	if err != nil {
		// A pooled connection may be dead after the leader restarted: dial fresh next time.
		n.forwarder.tr.CloseIdleConnections()
		if wrote.Load() {
			return nil, fmt.Errorf("%w: forwarded to the leader, no answer: %v", errOutcomeUnknown, err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %v", errLeaderUnreachable, err)
	}
	defer resp.Body.Close()
	var rep proposeReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&rep); err != nil {
		return nil, fmt.Errorf("%w: bad reply from the leader (status %d): %v", errOutcomeUnknown, resp.StatusCode, err)
	}
	if rep.Code == "" && rep.Error == "" {
		if rep.Result == nil {
			rep.Result = &fsm.Result{}
		}
		return &rep, nil
	}
	return nil, errorFromCode(rep.Code, rep.Error)
}

// errorCode and errorFromCode carry errors across forwarding so errors.Is still works.
func errorCode(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return "not_leader"
	case errors.Is(err, ErrNoLeader):
		return "no_leader"
	case errors.Is(err, ErrShutdown), errors.Is(err, raft.ErrRaftShutdown):
		return "shutdown"
	case errors.Is(err, raft.ErrLeadershipLost):
		return "leadership_lost"
	}
	if c := fsm.ErrorCode(err); c != "" {
		return c
	}
	return "internal"
}

func errorFromCode(code, msg string) error {
	switch code {
	case "not_leader":
		return fmt.Errorf("%w: %s", raft.ErrNotLeader, msg)
	case "no_leader":
		return fmt.Errorf("%w: %s", ErrNoLeader, msg)
	case "shutdown":
		return fmt.Errorf("%w: %s", errLeaderUnreachable, msg)
	case "leadership_lost":
		return fmt.Errorf("%w: %s", raft.ErrLeadershipLost, msg)
	case "internal", "":
		return errors.New(msg)
	}
	return fsm.ErrorFromCode(code, msg)
}

func (n *Node) handlePropose(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") == streamProto {
		n.serveForwardStream(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxCmdBytes+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	if len(body) > maxCmdBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "command too large")
		return
	}
	if err := n.forwarder.verify(r, body); err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	if n.raft.State() != raft.Leader {
		writeJSON(w, http.StatusOK, proposeReply{Code: "not_leader", Error: "not the leader"})
		return
	}
	if _, err := fsm.Decode(body); err != nil {
		writeJSON(w, http.StatusOK, proposeReply{Code: errorCode(err), Error: err.Error()})
		return
	}
	res, index, err := n.applyLocal(r.Context(), body)
	if err != nil {
		writeJSON(w, http.StatusOK, proposeReply{Code: errorCode(err), Error: err.Error(), Index: index})
		return
	}
	writeJSON(w, http.StatusOK, proposeReply{Result: res, Index: index})
}

func (n *Node) handlePeers(w http.ResponseWriter, r *http.Request) {
	if err := n.forwarder.verify(r, nil); err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, n.localPeers())
}
