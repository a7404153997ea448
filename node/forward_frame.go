package node

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// The forwarding stream's frames. A follower that forwards proposals to the leader opens
// one long-lived connection (see forward_stream.go) and sends propose frames on it; the
// leader answers each with a reply frame carrying the same id, in any order, so several
// proposals are in flight on one connection. Every frame is
//
//	length u32 (bytes after this field) | kind u8 | body
//
// and the bodies are, big-endian:
//
//	propose: id u64 | timeout-ms u32 (0: none) | mac-len u8 (0 or 32) | mac | command
//	reply:   id u64 | index u64 | code-len u8 | code | msg-len u32 | msg | result (JSON of fsm.Result, may be empty)
//
// The mac is HMAC-SHA256 under the connection's frame key (frameKey) of id, timeout and
// command, so a frame can neither be altered nor moved to another connection; ids rise
// strictly on a connection, so a frame cannot be replayed on it either.

const (
	frameKindPropose byte = 1
	frameKindReply   byte = 2

	frameHeaderLen   = 5
	proposeFixedLen  = 8 + 4 + 1
	replyFixedLen    = 8 + 8 + 1 + 4
	frameMACLen      = sha256.Size
	maxFrameBodySize = maxCmdBytes + proposeFixedLen + frameMACLen
	// maxReplyBodySize bounds what a follower accepts from the leader in one reply.
	maxReplyBodySize = 1 << 20
)

// errBadFrame marks a frame that does not parse; the connection it came on is closed.
var errBadFrame = errors.New("malformed forwarding frame")

// proposeFrame is one forwarded proposal.
type proposeFrame struct {
	id      uint64
	timeout time.Duration // the proposer's remaining time, 0 when it has no deadline
	mac     []byte        // empty when no cluster secret is set
	cmd     []byte
}

// replyFrame is the leader's answer to the propose frame with the same id.
type replyFrame struct {
	id     uint64
	index  uint64
	code   string // errorCode of the failure, "" on success
	msg    string // the failure's message
	result []byte // JSON of the fsm.Result on success, may be empty
}

// timeoutMillis rounds a remaining time up to whole milliseconds for the wire.
func timeoutMillis(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return uint32(min(ms, time.Duration(^uint32(0))))
}

// appendProposeFrame appends the whole frame (header included) to dst.
func appendProposeFrame(dst []byte, f proposeFrame) []byte {
	body := proposeFixedLen + len(f.mac) + len(f.cmd)
	dst = binary.BigEndian.AppendUint32(dst, uint32(1+body))
	dst = append(dst, frameKindPropose)
	dst = binary.BigEndian.AppendUint64(dst, f.id)
	dst = binary.BigEndian.AppendUint32(dst, timeoutMillis(f.timeout))
	dst = append(dst, byte(len(f.mac)))
	dst = append(dst, f.mac...)
	return append(dst, f.cmd...)
}

// appendReplyFrame appends the whole frame (header included) to dst. code is cut to 255
// bytes and msg to what fits the reply limit.
func appendReplyFrame(dst []byte, f replyFrame) []byte {
	code := f.code
	if len(code) > 255 {
		code = code[:255]
	}
	msg := f.msg
	if room := maxReplyBodySize - replyFixedLen - len(code) - len(f.result); len(msg) > room {
		msg = msg[:max(room, 0)]
	}
	body := replyFixedLen + len(code) + len(msg) + len(f.result)
	dst = binary.BigEndian.AppendUint32(dst, uint32(1+body))
	dst = append(dst, frameKindReply)
	dst = binary.BigEndian.AppendUint64(dst, f.id)
	dst = binary.BigEndian.AppendUint64(dst, f.index)
	dst = append(dst, byte(len(code)))
	dst = append(dst, code...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(msg)))
	dst = append(dst, msg...)
	return append(dst, f.result...)
}

// readFrame reads one frame and returns its kind and body. A body over maxBody bytes is
// refused before it is read. The body is freshly allocated: callers may keep it.
func readFrame(r *bufio.Reader, maxBody int) (byte, []byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n < 1 {
		return 0, nil, fmt.Errorf("%w: empty frame", errBadFrame)
	}
	if uint64(n-1) > uint64(maxBody) {
		return 0, nil, fmt.Errorf("%w: %d-byte frame over the %d-byte limit", errBadFrame, n-1, maxBody)
	}
	body := make([]byte, n-1)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[4], body, nil
}

// parseProposeFrame parses a propose frame's body. The command aliases b.
func parseProposeFrame(b []byte) (proposeFrame, error) {
	if len(b) < proposeFixedLen {
		return proposeFrame{}, fmt.Errorf("%w: propose frame of %d bytes", errBadFrame, len(b))
	}
	f := proposeFrame{
		id:      binary.BigEndian.Uint64(b[0:8]),
		timeout: time.Duration(binary.BigEndian.Uint32(b[8:12])) * time.Millisecond,
	}
	macLen := int(b[12])
	b = b[proposeFixedLen:]
	if macLen != 0 && macLen != frameMACLen {
		return proposeFrame{}, fmt.Errorf("%w: mac of %d bytes", errBadFrame, macLen)
	}
	if len(b) < macLen {
		return proposeFrame{}, fmt.Errorf("%w: mac cut short", errBadFrame)
	}
	if macLen > 0 {
		f.mac = b[:macLen]
	}
	f.cmd = b[macLen:]
	return f, nil
}

// parseReplyFrame parses a reply frame's body. The result aliases b.
func parseReplyFrame(b []byte) (replyFrame, error) {
	if len(b) < 8+8+1 {
		return replyFrame{}, fmt.Errorf("%w: reply frame of %d bytes", errBadFrame, len(b))
	}
	f := replyFrame{id: binary.BigEndian.Uint64(b[0:8]), index: binary.BigEndian.Uint64(b[8:16])}
	codeLen := int(b[16])
	b = b[17:]
	if len(b) < codeLen+4 {
		return replyFrame{}, fmt.Errorf("%w: reply code cut short", errBadFrame)
	}
	f.code = string(b[:codeLen])
	b = b[codeLen:]
	msgLen := binary.BigEndian.Uint32(b[:4])
	b = b[4:]
	if uint64(msgLen) > uint64(len(b)) {
		return replyFrame{}, fmt.Errorf("%w: reply message cut short", errBadFrame)
	}
	f.msg = string(b[:msgLen])
	f.result = b[msgLen:]
	return f, nil
}

// frameKey derives a connection's frame key from the cluster secret and the signature
// of the request that opened it (unique: the replay guard saw it once).
func frameKey(secret []byte, handshakeSig string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(streamProto + " frame key\n"))
	h.Write([]byte(handshakeSig))
	return h.Sum(nil)
}

// frameMAC authenticates a propose frame's id, timeout and command.
func frameMAC(key []byte, id uint64, timeoutMs uint32, cmd []byte) []byte {
	h := hmac.New(sha256.New, key)
	var hdr [12]byte
	binary.BigEndian.PutUint64(hdr[:8], id)
	binary.BigEndian.PutUint32(hdr[8:], timeoutMs)
	h.Write(hdr[:])
	h.Write(cmd)
	return h.Sum(nil)
}
