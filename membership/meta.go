package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MetaMaxSize is the largest encoded Meta that memberlist accepts.
const MetaMaxSize = 512

// metaFormat is the first byte of every encoded Meta. Later formats only
// append fields, so a decoder reads the fields it knows and ignores the rest.
const metaFormat = 1

const (
	flagReady = 1 << iota
	flagDraining
	flagVoter
	flagLeaving
)

var (
	// ErrMetaTooLarge is returned when an encoded Meta would exceed
	// MetaMaxSize bytes.
	ErrMetaTooLarge = errors.New("membership: node metadata exceeds 512 bytes")
	// ErrBadMeta is returned when bytes do not decode as a Meta.
	ErrBadMeta = errors.New("membership: malformed node metadata")
)

// Meta is the metadata each node gossips about itself.
type Meta struct {
	RaftAddr        string // host:port of the node's Raft transport
	HTTPAddr        string // host:port of the node's HTTP API
	BootstrapExpect int    // -bootstrap-expect the node was started with (0: none)
	Ready           bool   // caught up with the cluster; may be placed on the ring
	Draining        bool   // shutting down or in maintenance; hand its shards off
	Voter           bool   // the node wants to be a Raft voter
	Version         int    // cardsync protocol version the node speaks
	// Leaving is set by Membership.Leave just before the leave announcement,
	// so that other nodes can tell a graceful departure (StateLeft) from a
	// failure (StateDead); memberlist itself does not tell them apart.
	Leaving bool
}

// EncodeMeta encodes m compactly: a format byte, a flags byte, zig-zag
// varints for BootstrapExpect and Version, then the two addresses, each
// prefixed with its varint length. It returns ErrMetaTooLarge when the
// result would exceed MetaMaxSize.
func EncodeMeta(m Meta) ([]byte, error) {
	size := 2 + 2*binary.MaxVarintLen64 + 2*binary.MaxVarintLen64 + len(m.RaftAddr) + len(m.HTTPAddr)
	buf := make([]byte, 0, size)
	var flags byte
	if m.Ready {
		flags |= flagReady
	}
	if m.Draining {
		flags |= flagDraining
	}
	if m.Voter {
		flags |= flagVoter
	}
	if m.Leaving {
		flags |= flagLeaving
	}
	buf = append(buf, metaFormat, flags)
	buf = binary.AppendVarint(buf, int64(m.BootstrapExpect))
	buf = binary.AppendVarint(buf, int64(m.Version))
	buf = binary.AppendUvarint(buf, uint64(len(m.RaftAddr)))
	buf = append(buf, m.RaftAddr...)
	buf = binary.AppendUvarint(buf, uint64(len(m.HTTPAddr)))
	buf = append(buf, m.HTTPAddr...)
	if len(buf) > MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrMetaTooLarge, len(buf))
	}
	return buf, nil
}

// DecodeMeta decodes bytes written by EncodeMeta. Bytes after the known
// fields are ignored, so newer nodes may append fields. Malformed input gives
// an error wrapping ErrBadMeta, never a panic.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) < 2 {
		return m, fmt.Errorf("%w: %d bytes", ErrBadMeta, len(b))
	}
	if b[0] < metaFormat {
		return m, fmt.Errorf("%w: unknown format %d", ErrBadMeta, b[0])
	}
	flags := b[1]
	m.Ready = flags&flagReady != 0
	m.Draining = flags&flagDraining != 0
	m.Voter = flags&flagVoter != 0
	m.Leaving = flags&flagLeaving != 0
	rest := b[2:]

	readInt := func(field string) (int, error) {
		v, n := binary.Varint(rest)
		if n <= 0 || v != int64(int(v)) {
			return 0, fmt.Errorf("%w: bad %s", ErrBadMeta, field)
		}
		rest = rest[n:]
		return int(v), nil
	}
	readString := func(field string) (string, error) {
		l, n := binary.Uvarint(rest)
		if n <= 0 || l > uint64(len(rest)-n) {
			return "", fmt.Errorf("%w: bad %s", ErrBadMeta, field)
		}
		s := string(rest[n : n+int(l)])
		rest = rest[n+int(l):]
		return s, nil
	}
	var err error
	if m.BootstrapExpect, err = readInt("bootstrap expect"); err != nil {
		return Meta{}, err
	}
	if m.Version, err = readInt("version"); err != nil {
		return Meta{}, err
	}
	if m.RaftAddr, err = readString("raft address"); err != nil {
		return Meta{}, err
	}
	if m.HTTPAddr, err = readString("http address"); err != nil {
		return Meta{}, err
	}
	return m, nil
}
