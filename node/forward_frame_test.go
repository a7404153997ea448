package node

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	mac := bytes.Repeat([]byte{7}, frameMACLen)
	for _, tc := range []proposeFrame{
		{id: 1, cmd: []byte("cmd")},
		{id: 1<<64 - 1, timeout: 2500 * time.Millisecond, mac: mac, cmd: bytes.Repeat([]byte{1}, 40_000)},
		{id: 9, timeout: time.Millisecond, mac: mac},
	} {
		b := appendProposeFrame(nil, tc)
		kind, body, err := readFrame(bufio.NewReader(bytes.NewReader(b)), maxFrameBodySize)
		if err != nil || kind != frameKindPropose {
			t.Fatalf("read %d: kind %d, %v", tc.id, kind, err)
		}
		got, err := parseProposeFrame(body)
		if err != nil {
			t.Fatal(err)
		}
		if got.id != tc.id || got.timeout != tc.timeout || !bytes.Equal(got.mac, tc.mac) || !bytes.Equal(got.cmd, tc.cmd) {
			t.Fatalf("propose frame %d came back as %+v", tc.id, got)
		}
	}
	for _, tc := range []replyFrame{
		{id: 3, index: 42, result: []byte(`{"epoch":2}`)},
		{id: 4, code: "stale_epoch", msg: "epoch 3 is not 4"},
		{id: 5},
	} {
		b := appendReplyFrame(nil, tc)
		kind, body, err := readFrame(bufio.NewReader(bytes.NewReader(b)), maxReplyBodySize)
		if err != nil || kind != frameKindReply {
			t.Fatalf("read %d: kind %d, %v", tc.id, kind, err)
		}
		got, err := parseReplyFrame(body)
		if err != nil {
			t.Fatal(err)
		}
		if got.id != tc.id || got.index != tc.index || got.code != tc.code || got.msg != tc.msg || !bytes.Equal(got.result, tc.result) {
			t.Fatalf("reply frame %d came back as %+v", tc.id, got)
		}
	}
}

func TestTimeoutMillisRoundsUp(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want uint32
	}{{0, 0}, {-time.Second, 0}, {time.Microsecond, 1}, {time.Millisecond, 1}, {1500 * time.Microsecond, 2}, {100 * 24 * time.Hour, 1<<32 - 1}} {
		if got := timeoutMillis(tc.d); got != tc.want {
			t.Errorf("timeoutMillis(%s) = %d, want %d", tc.d, got, tc.want)
		}
	}
}

// A long reply message is cut so the frame stays under the follower's limit.
func TestReplyFrameCutsLongMessage(t *testing.T) {
	b := appendReplyFrame(nil, replyFrame{id: 1, code: strings.Repeat("c", 300), msg: strings.Repeat("m", 2*maxReplyBodySize)})
	_, body, err := readFrame(bufio.NewReader(bytes.NewReader(b)), maxReplyBodySize)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseReplyFrame(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.code) != 255 || len(got.msg) == 0 {
		t.Fatalf("code %d bytes, message %d bytes", len(got.code), len(got.msg))
	}
}

func TestMalformedFramesAreErrors(t *testing.T) {
	frame := func(n uint32, kind byte, body []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, n)
		return append(append(b, kind), body...)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		max  int
	}{
		{"empty frame", binary.BigEndian.AppendUint32(nil, 0), 100},
		{"over the limit", frame(1000, frameKindPropose, nil), 100},
		{"length far over the limit", frame(1<<32-1, frameKindPropose, nil), maxFrameBodySize},
		{"body cut short", frame(50, frameKindPropose, make([]byte, 10)), 100},
		{"header cut short", []byte{0, 0}, 100},
	} {
		if _, _, err := readFrame(bufio.NewReader(bytes.NewReader(tc.in)), tc.max); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	if _, _, err := readFrame(bufio.NewReader(bytes.NewReader(nil)), 100); !errors.Is(err, io.EOF) {
		t.Errorf("clean end: %v, want io.EOF", err)
	}

	id := binary.BigEndian.AppendUint64(nil, 1)
	fixed := append(binary.BigEndian.AppendUint32(id, 0), 0)
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"propose too short", id},
		{"mac length not 0 or 32", append(append(binary.BigEndian.AppendUint32(id, 0), 5), 1, 2, 3, 4, 5)},
		{"mac cut short", append(append(binary.BigEndian.AppendUint32(id, 0), 32), 1, 2)},
	} {
		if _, err := parseProposeFrame(tc.body); !errors.Is(err, errBadFrame) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if f, err := parseProposeFrame(fixed); err != nil || len(f.cmd) != 0 {
		t.Errorf("empty command: %+v %v", f, err)
	}

	idx := binary.BigEndian.AppendUint64(id, 5)
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"reply too short", id},
		{"code cut short", append(idx, 10, 'a')},
		{"message length missing", append(idx, 0, 0, 0)},
		{"message cut short", append(binary.BigEndian.AppendUint32(append(idx, 0), 100), 'x')},
		{"message length huge", binary.BigEndian.AppendUint32(append(idx, 0), 1<<32-1)},
	} {
		if _, err := parseReplyFrame(tc.body); !errors.Is(err, errBadFrame) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestFrameMACBindsEveryField(t *testing.T) {
	key := frameKey([]byte("secret"), "sig")
	base := frameMAC(key, 1, 10, []byte("cmd"))
	for name, other := range map[string][]byte{
		"id":      frameMAC(key, 2, 10, []byte("cmd")),
		"timeout": frameMAC(key, 1, 11, []byte("cmd")),
		"command": frameMAC(key, 1, 10, []byte("cmx")),
		"key":     frameMAC(frameKey([]byte("secret"), "sig2"), 1, 10, []byte("cmd")),
		"secret":  frameMAC(frameKey([]byte("secreT"), "sig"), 1, 10, []byte("cmd")),
	} {
		if bytes.Equal(base, other) {
			t.Errorf("changing the %s leaves the mac unchanged", name)
		}
	}
}

// Whatever bytes arrive, reading and parsing frames gives a frame or an error, never a
// panic, and a frame that parses encodes back to the same bytes.
func FuzzReadFrame(f *testing.F) {
	f.Add(appendProposeFrame(nil, proposeFrame{id: 1, timeout: time.Second, mac: make([]byte, 32), cmd: []byte("x")}))
	f.Add(appendReplyFrame(nil, replyFrame{id: 2, index: 3, code: "not_leader", msg: "m", result: []byte("{}")}))
	f.Add([]byte{0, 0, 0, 1, 1})
	f.Add([]byte{0, 0, 0, 30, 2, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		for {
			kind, body, err := readFrame(r, 1<<16)
			if err != nil {
				return
			}
			switch kind {
			case frameKindPropose:
				p, err := parseProposeFrame(body)
				if err != nil {
					continue
				}
				again := appendProposeFrame(nil, p)
				if !bytes.Equal(again[frameHeaderLen:], body) {
					t.Fatalf("propose frame %x re-encodes as %x", body, again[frameHeaderLen:])
				}
			case frameKindReply:
				p, err := parseReplyFrame(body)
				if err != nil {
					continue
				}
				if again := appendReplyFrame(nil, p); !bytes.Equal(again[frameHeaderLen:], body) {
					t.Fatalf("reply frame %x re-encodes as %x", body, again[frameHeaderLen:])
				}
			}
		}
	})
}
