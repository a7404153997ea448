package node

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
)

// A follower forwards proposals to the leader over one long-lived connection per leader
// address: an HTTP/1.1 request to the propose endpoint with "Upgrade: cardsync-forward/1"
// (signed like every internal request, or authenticated by a client certificate under
// mutual TLS) is answered with 101 Switching Protocols, and from then on the connection
// carries the frames of forward_frame.go in both directions, several proposals in flight
// at once. A leader that does not answer the upgrade with 101 is sent one POST per
// proposal instead (forwardHTTP) for streamRefusedFor.

const (
	streamProto      = "cardsync-forward/1"
	hdrStreamNonce   = "X-Cardsync-Stream-Nonce"
	proposePath      = "/internal/v1/propose"
	streamIdle       = 60 * time.Second // a follower closes a stream unused this long
	streamServerIdle = 10 * time.Minute // the leader closes a stream silent this long
	streamRefusedFor = time.Minute
	streamReplyWait  = 30 * time.Second // as long as the HTTP client waits for an answer
	streamMaxPending = 256              // proposals a leader works on at once per stream
)

// errStreamRefused means the leader did not switch the connection to the stream protocol.
var errStreamRefused = errors.New("leader refused the forwarding stream")

// streamHello is what the upgrade request's signature covers.
func streamHello(nonce string) []byte { return []byte("upgrade " + streamProto + " " + nonce) }

// fwdStream is a follower's end of one forwarding stream.
type fwdStream struct {
	addr string
	conn net.Conn
	br   *bufio.Reader
	key  []byte // frame MAC key; nil without a cluster secret

	wmu    sync.Mutex // serializes frame writes; ids rise in write order
	nextID uint64
	buf    []byte

	mu      sync.Mutex
	pending map[uint64]chan replyFrame
	err     error // why the stream ended; set once
	lastUse time.Time
	done    chan struct{}
}

// dialCall is a stream being opened; others wanting the same address wait for it.
type dialCall struct{ done chan struct{} }

// streamFor returns the open stream to addr, opening one if needed. errStreamRefused
// means the leader speaks only the POST protocol.
func (f *forwarder) streamFor(ctx context.Context, addr string) (*fwdStream, error) {
	for {
		now := time.Now()
		f.smu.Lock()
		if f.closed {
			f.smu.Unlock()
			return nil, fmt.Errorf("%w: forwarder closed", errLeaderUnreachable)
		}
		f.sweepLocked(now, addr)
		if s := f.streams[addr]; s != nil {
			if s.alive() {
				f.smu.Unlock()
				return s, nil
			}
			delete(f.streams, addr)
		}
		if until, ok := f.refused[addr]; ok {
			if now.Before(until) {
				f.smu.Unlock()
				return nil, errStreamRefused
			}
			delete(f.refused, addr)
		}
		if d := f.dialing[addr]; d != nil {
			f.smu.Unlock()
			select {
			case <-d.done:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		d := &dialCall{done: make(chan struct{})}
		if f.dialing == nil {
			f.dialing = map[string]*dialCall{}
		}
		f.dialing[addr] = d
		f.smu.Unlock()

		s, err := f.dialStream(ctx, addr)

		f.smu.Lock()
		delete(f.dialing, addr)
		close(d.done)
		switch {
		case err == nil && f.closed:
			s.fail(errors.New("forwarder closed"))
			err = fmt.Errorf("%w: forwarder closed", errLeaderUnreachable)
		case err == nil:
			if f.streams == nil {
				f.streams = map[string]*fwdStream{}
			}
			f.streams[addr] = s
		case errors.Is(err, errStreamRefused):
			if f.refused == nil {
				f.refused = map[string]time.Time{}
			}
			f.refused[addr] = time.Now().Add(streamRefusedFor)
		}
		f.smu.Unlock()
		return s, err
	}
}

// sweepLocked closes streams other than keep's that ended or sat unused for streamIdle
// (streams to a former leader).
func (f *forwarder) sweepLocked(now time.Time, keep string) {
	for a, s := range f.streams {
		if a != keep && !s.alive() {
			delete(f.streams, a)
			continue
		}
		if a != keep && s.idleSince(now) > streamIdle {
			s.fail(errors.New("idle"))
			delete(f.streams, a)
		}
	}
}

// closeStreams ends every stream; proposals waiting on them get errOutcomeUnknown.
func (f *forwarder) closeStreams() {
	f.smu.Lock()
	defer f.smu.Unlock()
	f.closed = true
	for a, s := range f.streams {
		s.fail(errors.New("forwarder closed"))
		delete(f.streams, a)
	}
}

// dialStream connects to addr (with the forwarder's dialer and TLS settings) and asks
// for the stream protocol.
func (f *forwarder) dialStream(ctx context.Context, addr string) (*fwdStream, error) {
	conn, err := f.tr.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %v", errLeaderUnreachable, err)
	}
	s, err := f.upgrade(ctx, conn, addr)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return s, nil
}

func (f *forwarder) upgrade(ctx context.Context, conn net.Conn, addr string) (*fwdStream, error) {
	deadline := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	unreachable := func(err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v", errLeaderUnreachable, err)
	}
	if cfg := f.tr.TLSClientConfig; cfg != nil {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		cfg = cfg.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, unreachable(err)
		}
		conn = tc
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, f.url(addr, proposePath), http.NoBody)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", streamProto)
	req.Header.Set(hdrStreamNonce, hex.EncodeToString(nonce[:]))
	var key []byte
	if len(f.secret) > 0 {
		ts := strconv.FormatInt(time.Now().UnixNano(), 10)
		sig := f.mac(ts, streamHello(req.Header.Get(hdrStreamNonce)))
		req.Header.Set(hdrTime, ts)
		req.Header.Set(hdrSignature, sig)
		key = frameKey(f.secret, sig)
	}
	if err := req.Write(conn); err != nil {
		return nil, unreachable(err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, unreachable(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != streamProto {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close()
		return nil, fmt.Errorf("%w: status %d", errStreamRefused, resp.StatusCode)
	}
	if !stop() {
		return nil, ctx.Err() // the context ended as the switch completed
	}
	_ = conn.SetDeadline(time.Time{})
	s := &fwdStream{
		addr:    addr,
		conn:    conn,
		br:      br,
		key:     key,
		pending: map[uint64]chan replyFrame{},
		lastUse: time.Now(),
		done:    make(chan struct{}),
	}
	go s.readLoop()
	return s, nil
}

func (s *fwdStream) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

func (s *fwdStream) idleSince(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) > 0 {
		return 0
	}
	return now.Sub(s.lastUse)
}

// fail ends the stream once; every waiting proposal sees done.
func (s *fwdStream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	_ = s.conn.Close()
	close(s.done)
}

func (s *fwdStream) readLoop() {
	for {
		kind, body, err := readFrame(s.br, maxReplyBodySize)
		if err == nil && kind != frameKindReply {
			err = fmt.Errorf("%w: kind %d from the leader", errBadFrame, kind)
		}
		var rep replyFrame
		if err == nil {
			rep, err = parseReplyFrame(body)
		}
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		ch := s.pending[rep.id]
		delete(s.pending, rep.id)
		s.mu.Unlock()
		if ch != nil {
			ch <- rep // buffered, and each id is answered at most once
		}
	}
}

func (s *fwdStream) forget(id uint64) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// propose sends cmd and waits for the leader's answer. Errors before the whole frame was
// handed to the connection are errLeaderUnreachable (the leader cannot have acted on a
// partial frame); after it, errOutcomeUnknown.
func (s *fwdStream) propose(ctx context.Context, cmd []byte) (replyFrame, error) {
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		if timeout = time.Until(dl); timeout <= 0 {
			return replyFrame{}, context.DeadlineExceeded
		}
	}
	if err := ctx.Err(); err != nil {
		return replyFrame{}, err
	}
	ch := make(chan replyFrame, 1)
	s.wmu.Lock()
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		s.wmu.Unlock()
		return replyFrame{}, fmt.Errorf("%w: stream closed: %v", errLeaderUnreachable, err)
	}
	s.nextID++
	id := s.nextID
	s.pending[id] = ch
	s.lastUse = time.Now()
	s.mu.Unlock()
	fr := proposeFrame{id: id, timeout: timeout, cmd: cmd}
	if s.key != nil {
		fr.mac = frameMAC(s.key, id, timeoutMillis(timeout), cmd)
	}
	s.buf = appendProposeFrame(s.buf[:0], fr)
	// A leader that stops reading fails the stream rather than hold every proposer.
	_ = s.conn.SetWriteDeadline(time.Now().Add(streamReplyWait))
	n, werr := s.conn.Write(s.buf)
	whole := n == len(s.buf)
	if cap(s.buf) > 1<<20 {
		s.buf = nil // do not pin one large command's buffer
	}
	s.wmu.Unlock()
	if werr != nil {
		s.forget(id)
		s.fail(werr)
		if !whole {
			return replyFrame{}, fmt.Errorf("%w: %v", errLeaderUnreachable, werr)
		}
		return replyFrame{}, fmt.Errorf("%w: forwarded to the leader, no answer: %v", errOutcomeUnknown, werr)
	}
	t := time.NewTimer(streamReplyWait)
	defer t.Stop()
	select {
	case rep := <-ch:
		return rep, nil
	case <-s.done:
		select {
		case rep := <-ch:
			return rep, nil
		default:
		}
		s.mu.Lock()
		err := s.err
		s.mu.Unlock()
		return replyFrame{}, fmt.Errorf("%w: forwarded to the leader, no answer: %v", errOutcomeUnknown, err)
	case <-ctx.Done():
		s.forget(id)
		return replyFrame{}, fmt.Errorf("%w: forwarded to the leader, no answer: %v", errOutcomeUnknown, ctx.Err())
	case <-t.C:
		s.forget(id)
		return replyFrame{}, fmt.Errorf("%w: forwarded to the leader, no answer within %s", errOutcomeUnknown, streamReplyWait)
	}
}

// forwardStream forwards cmd over the stream to addr. errStreamRefused means the caller
// should fall back to a POST.
func (n *Node) forwardStream(ctx context.Context, addr string, cmd []byte) (*proposeReply, error) {
	s, err := n.forwarder.streamFor(ctx, addr)
	if err != nil {
		return nil, err
	}
	rep, err := s.propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if rep.code != "" || rep.msg != "" {
		return nil, errorFromCode(rep.code, rep.msg)
	}
	out := &proposeReply{Index: rep.index, Result: &fsm.Result{}}
	if len(rep.result) > 0 {
		if err := json.Unmarshal(rep.result, out.Result); err != nil {
			return nil, fmt.Errorf("%w: bad reply from the leader: %v", errOutcomeUnknown, err)
		}
	}
	return out, nil
}

// serveForwardStream takes over a propose request that asked for the stream protocol:
// it authenticates the request, switches the connection and answers propose frames
// until the follower closes it, a frame fails to parse or authenticate, or the node
// stops.
func (n *Node) serveForwardStream(w http.ResponseWriter, r *http.Request) {
	f := n.forwarder
	nonce := r.Header.Get(hdrStreamNonce)
	if len(nonce) < 16 || len(nonce) > 128 {
		writeError(w, http.StatusBadRequest, "missing or malformed stream nonce")
		return
	}
	if err := f.verify(r, streamHello(nonce)); err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	var key []byte
	certAuth := f.mtls && r.TLS != nil && len(r.TLS.VerifiedChains) > 0
	if len(f.secret) > 0 && !certAuth {
		key = frameKey(f.secret, r.Header.Get(hdrSignature))
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, http.StatusBadRequest, "cannot switch this connection: "+err.Error())
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + streamProto + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	var wmu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, streamMaxPending)
	var lastID uint64
	for {
		_ = conn.SetReadDeadline(time.Now().Add(streamServerIdle))
		kind, body, err := readFrame(brw.Reader, maxFrameBodySize)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				n.logger.Debug("forwarding stream ended", "remote", r.RemoteAddr, "error", err)
			}
			return
		}
		if kind != frameKindPropose {
			n.logger.Warn("forwarding stream: unexpected frame, closing", "remote", r.RemoteAddr, "kind", kind)
			return
		}
		fr, err := parseProposeFrame(body)
		if err == nil && fr.id <= lastID {
			err = fmt.Errorf("frame id %d after %d: replayed or reordered", fr.id, lastID)
		}
		if err == nil && key != nil &&
			!hmac.Equal(fr.mac, frameMAC(key, fr.id, timeoutMillis(fr.timeout), fr.cmd)) {
			err = errors.New("bad frame signature")
		}
		if err != nil {
			n.logger.Warn("forwarding stream: refused frame, closing", "remote", r.RemoteAddr, "error", err)
			return
		}
		lastID = fr.id
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rep := n.applyForwarded(ctx, fr)
			out := appendReplyFrame(nil, rep)
			wmu.Lock()
			_ = conn.SetWriteDeadline(time.Now().Add(streamReplyWait))
			_, err := conn.Write(out)
			wmu.Unlock()
			if err != nil {
				cancel()
			}
		}()
	}
}

// applyForwarded applies one forwarded proposal on the leader.
func (n *Node) applyForwarded(ctx context.Context, fr proposeFrame) replyFrame {
	rep := replyFrame{id: fr.id}
	if n.raft.State() != raft.Leader {
		rep.code, rep.msg = "not_leader", "not the leader"
		return rep
	}
	if _, err := fsm.Decode(fr.cmd); err != nil {
		rep.code, rep.msg = errorCode(err), err.Error()
		return rep
	}
	if fr.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, fr.timeout)
		defer cancel()
	}
	res, index, err := n.applyLocal(ctx, fr.cmd)
	rep.index = index
	if err != nil {
		rep.code, rep.msg = errorCode(err), err.Error()
		if rep.msg == "" {
			rep.msg = rep.code
		}
		return rep
	}
	if res != nil {
		b, err := json.Marshal(res)
		if err != nil {
			rep.code, rep.msg = "internal", "encode result: "+err.Error()
			return rep
		}
		rep.result = b
	}
	return rep
}
