package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"cardsync/fsm"
)

// startStreamLeader starts a single dev node (its own leader) with secret.
func startStreamLeader(t *testing.T, secret string) *Node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Dev = true
	cfg.Profile = "fast"
	cfg.FSMNoSync = true
	cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.ClusterSecret = secret
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown() })
	deadline := time.Now().Add(15 * time.Second)
	for !n.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("node not ready after 15 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

func enterprise(t testing.TB, id string) []byte {
	t.Helper()
	cmd, err := fsm.Encode(fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: id, Name: id, InventoryReady: true})
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// follower is a node whose forwarder alone is used: enough to forward to addr.
func follower(secret string) *Node { return &Node{forwarder: newForwarder(secret)} }

// Proposals sent side by side share one stream, each gets its own answer, and the
// leader's rule errors keep their identity across the stream.
func TestForwardStreamProposesConcurrently(t *testing.T) {
	const secret = "stream-secret-for-tests"
	leader := startStreamLeader(t, secret)
	f := follower(secret)
	defer f.forwarder.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const n = 40
	var wg sync.WaitGroup
	errs := make([]error, n)
	idx := make([]uint64, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := f.forwardStream(ctx, leader.HTTPAddr(), enterprise(t, fmt.Sprintf("ent-%d", i)))
			if err == nil {
				idx[i] = rep.Index
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("proposal %d: %v", i, err)
		}
		if idx[i] == 0 || seen[idx[i]] {
			t.Fatalf("proposal %d: index %d (duplicate or zero)", i, idx[i])
		}
		seen[idx[i]] = true
		if _, err := leader.FSM().Enterprise(fmt.Sprintf("ent-%d", i)); err != nil {
			t.Fatalf("enterprise %d not applied: %v", i, err)
		}
	}
	f.forwarder.smu.Lock()
	streams := len(f.forwarder.streams)
	f.forwarder.smu.Unlock()
	if streams != 1 {
		t.Fatalf("%d streams to one leader, want 1", streams)
	}

	// A flush for a shard nobody claimed is refused by the FSM; the error comes back as
	// the FSM's sentinel.
	flush, err := fsm.Encode(fsm.TypeFlush, fsm.Flush{Shard: "no-such-shard", Node: "x", Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, direct, derr := leader.applyLocal(ctx, flush)
	if derr == nil {
		t.Fatalf("flush of an unknown shard applied at %d", direct)
	}
	_, err = f.forwardStream(ctx, leader.HTTPAddr(), flush)
	if err == nil || errorCode(err) != errorCode(derr) || err.Error() == "" {
		t.Fatalf("forwarded rule error %v, want the code of %v", err, derr)
	}
	if code := fsm.ErrorCode(derr); code != "" && fsm.ErrorCode(err) != code {
		t.Fatalf("forwarded error %v lost its fsm code %q", err, code)
	}
	// A command the leader cannot decode is refused without closing the stream.
	if _, err := f.forwardStream(ctx, leader.HTTPAddr(), []byte{fsm.FormatVersion}); !errors.Is(err, fsm.ErrBadCommand) {
		t.Fatalf("short command: %v, want ErrBadCommand", err)
	}
	if _, err := f.forwardStream(ctx, leader.HTTPAddr(), enterprise(t, "after-errors")); err != nil {
		t.Fatalf("stream after refused commands: %v", err)
	}
}

// A follower without the right secret cannot open a stream and falls back to the POST,
// which the leader refuses as before.
func TestForwardStreamWrongSecret(t *testing.T) {
	leader := startStreamLeader(t, "the-real-secret-0123")
	f := follower("some-other-secret")
	defer f.forwarder.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.forwardStream(ctx, leader.HTTPAddr(), enterprise(t, "x")); !errors.Is(err, errStreamRefused) {
		t.Fatalf("stream with a wrong secret: %v, want errStreamRefused", err)
	}
	if _, err := f.forwardHTTP(ctx, leader.HTTPAddr(), enterprise(t, "x")); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Fatalf("POST with a wrong secret: %v", err)
	}
	if _, err := leader.FSM().Enterprise("x"); err == nil {
		t.Fatal("a refused proposal was applied")
	}
}

// rawStream opens a stream by hand so tests can send frames a forwarder never would.
func rawStream(t *testing.T, f *forwarder, addr string) *fwdStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := f.dialStream(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.fail(errors.New("test over")) })
	return s
}

func waitClosed(t *testing.T, s *fwdStream, what string) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the leader kept the stream open", what)
	}
}

// Frames that are forged, replayed or malformed close the stream and change nothing.
func TestForwardStreamRefusesForgedFrames(t *testing.T) {
	const secret = "stream-secret-for-tests"
	leader := startStreamLeader(t, secret)
	f := newForwarder(secret)
	defer f.close()
	addr := leader.HTTPAddr()
	for _, tc := range []struct {
		name  string
		frame func(s *fwdStream) []byte
	}{
		{"unsigned", func(s *fwdStream) []byte {
			return appendProposeFrame(nil, proposeFrame{id: 1, cmd: enterprise(t, "forged")})
		}},
		{"signed with another key", func(s *fwdStream) []byte {
			cmd := enterprise(t, "forged")
			return appendProposeFrame(nil, proposeFrame{id: 1, cmd: cmd, mac: frameMAC(frameKey([]byte(secret), "other"), 1, 0, cmd)})
		}},
		{"command changed after signing", func(s *fwdStream) []byte {
			return appendProposeFrame(nil, proposeFrame{id: 1, cmd: enterprise(t, "forged"), mac: frameMAC(s.key, 1, 0, enterprise(t, "other"))})
		}},
		{"timeout changed after signing", func(s *fwdStream) []byte {
			cmd := enterprise(t, "forged")
			return appendProposeFrame(nil, proposeFrame{id: 1, timeout: time.Hour, cmd: cmd, mac: frameMAC(s.key, 1, 0, cmd)})
		}},
		{"id zero", func(s *fwdStream) []byte {
			cmd := enterprise(t, "forged")
			return appendProposeFrame(nil, proposeFrame{id: 0, cmd: cmd, mac: frameMAC(s.key, 0, 0, cmd)})
		}},
		{"reply kind from a follower", func(s *fwdStream) []byte {
			return appendReplyFrame(nil, replyFrame{id: 1})
		}},
		{"garbage", func(s *fwdStream) []byte { return []byte{0, 0, 0, 0, 9, 9, 9} }},
		{"length over the limit", func(s *fwdStream) []byte { return []byte{0xff, 0xff, 0xff, 0xff, 1} }},
	} {
		s := rawStream(t, f, addr)
		if _, err := s.conn.Write(tc.frame(s)); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		waitClosed(t, s, tc.name)
	}

	// A replayed frame: the first copy is applied, the second closes the stream.
	s := rawStream(t, f, addr)
	cmd := enterprise(t, "once")
	frame := appendProposeFrame(nil, proposeFrame{id: 1, cmd: cmd, mac: frameMAC(s.key, 1, 0, cmd)})
	answer := make(chan replyFrame, 1)
	s.mu.Lock()
	s.pending[1] = answer
	s.mu.Unlock()
	if _, err := s.conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	select {
	case rep := <-answer:
		if rep.code != "" {
			t.Fatalf("first copy: %s %s", rep.code, rep.msg)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the first copy")
	}
	if _, err := s.conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, s, "replayed frame")

	if _, err := leader.FSM().Enterprise("forged"); err == nil {
		t.Fatal("a forged frame was applied")
	}
	if _, err := leader.FSM().Enterprise("once"); err != nil {
		t.Fatalf("the signed frame was not applied: %v", err)
	}
}

// A leader that answers the upgrade with a plain reply (one that only takes POSTs) gets
// POSTs, and the follower does not ask again for a while.
func TestForwardFallsBackToPost(t *testing.T) {
	var upgrades, posts int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("Upgrade") != "" {
			upgrades++
		} else {
			posts++
		}
		writeJSON(w, http.StatusOK, proposeReply{Result: &fsm.Result{Epoch: 7}, Index: 11})
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	f := follower("")
	defer f.forwarder.close()
	ctx := context.Background()
	for range 3 {
		_, err := f.forwardStream(ctx, addr, []byte("cmd"))
		if !errors.Is(err, errStreamRefused) {
			t.Fatalf("stream to a POST-only leader: %v", err)
		}
		rep, err := f.forwardHTTP(ctx, addr, []byte("cmd"))
		if err != nil || rep.Index != 11 || rep.Result.Epoch != 7 {
			t.Fatalf("POST: %+v %v", rep, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if upgrades != 1 || posts != 3 {
		t.Fatalf("%d upgrade requests and %d posts, want 1 and 3", upgrades, posts)
	}
}

// fakeStreamLeader switches every connection to the stream protocol and hands it to
// serve.
func fakeStreamLeader(t *testing.T, serve func(conn net.Conn, r *bufio.Reader)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + streamProto + "\r\n\r\n")
		_ = brw.Flush()
		serve(conn, brw.Reader)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Once a proposal is on the wire its outcome is unknown when no answer comes: the
// caller's context ends, or the connection drops. A leader that cannot be reached at
// all is errLeaderUnreachable (retryable).
func TestForwardStreamOutcomes(t *testing.T) {
	silent := fakeStreamLeader(t, func(conn net.Conn, r *bufio.Reader) {
		for {
			if _, _, err := readFrame(r, maxFrameBodySize); err != nil {
				return
			}
		}
	})
	hangUp := fakeStreamLeader(t, func(conn net.Conn, r *bufio.Reader) {
		_, _, _ = readFrame(r, maxFrameBodySize)
	})
	garbled := fakeStreamLeader(t, func(conn net.Conn, r *bufio.Reader) {
		_, _, _ = readFrame(r, maxFrameBodySize)
		_, _ = conn.Write([]byte{0, 0, 0, 3, frameKindReply, 1, 2})
		_, _ = r.ReadByte()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := ln.Addr().String()
	_ = ln.Close()

	f := follower("")
	defer f.forwarder.close()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = f.forwardStream(ctx, silent, []byte("cmd"))
	if !errors.Is(err, errOutcomeUnknown) {
		t.Fatalf("silent leader: %v, want errOutcomeUnknown", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the context's end took %s to be noticed", d)
	}
	// The stream outlives one caller's context.
	f.forwarder.smu.Lock()
	s := f.forwarder.streams[silent]
	f.forwarder.smu.Unlock()
	if s == nil || !s.alive() || s.idleSince(time.Now()) == 0 {
		t.Fatal("the stream did not outlive the cancelled proposal, or still holds it")
	}

	for name, addr := range map[string]string{"hang-up": hangUp, "garbled reply": garbled} {
		_, err = f.forwardStream(context.Background(), addr, []byte("cmd"))
		if !errors.Is(err, errOutcomeUnknown) {
			t.Fatalf("%s: %v, want errOutcomeUnknown", name, err)
		}
		// The next proposal opens a new stream.
		f.forwarder.smu.Lock()
		s := f.forwarder.streams[addr]
		f.forwarder.smu.Unlock()
		if s != nil && s.alive() {
			t.Fatalf("%s: the broken stream is still in use", name)
		}
	}

	if _, err := f.forwardStream(context.Background(), closedAddr, []byte("cmd")); !errors.Is(err, errLeaderUnreachable) || !retryable(err) {
		t.Fatalf("nothing listening: %v, want errLeaderUnreachable", err)
	}
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if _, err := f.forwardStream(done, silent, []byte("cmd")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled before sending: %v, want context.Canceled", err)
	}

	f.forwarder.close()
	if _, err := f.forwardStream(context.Background(), silent, []byte("cmd")); !errors.Is(err, errLeaderUnreachable) {
		t.Fatalf("after close: %v", err)
	}
}
