package fsm

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// SetSeat gives a node its seat in the cluster's join order, or (Remove) takes it
// away. The seats are the order in which the ring's assignment replays the members'
// joins (membership.Ring.Assign): a seat is the log index at which it was given, so
// every replica holds the same order. Seating a node that already has a seat keeps its
// place, so a restart or a repeated command does not make a member junior.
type SetSeat struct {
	Node   string `json:"node"`
	Remove bool   `json:"remove"`
}

// Seat is one node's seat: the log index of the command that gave it.
type Seat struct {
	Node  string `json:"node"`
	Index uint64 `json:"index"`
}

// keySeatPrefix: seat \x00 node -> log index (8-byte BE) of the seating.
var keySeatPrefix = []byte("seat\x00")

func seatKey(node string) []byte {
	return append(append([]byte(nil), keySeatPrefix...), node...)
}

func (a *applier) setSeat(p *SetSeat) (*Result, error) {
	if err := checkID("node", p.Node); err != nil {
		return nil, err
	}
	k := seatKey(p.Node)
	if p.Remove {
		if a.meta.Get(k) == nil {
			return &Result{Message: "node " + p.Node + " has no seat"}, nil
		}
		if err := a.meta.Delete(k); err != nil {
			return nil, err
		}
		return &Result{Updated: 1, Message: "node " + p.Node + " unseated"}, nil
	}
	if v := a.meta.Get(k); len(v) == 8 {
		return &Result{Message: fmt.Sprintf("node %s keeps seat %d", p.Node, binary.BigEndian.Uint64(v))}, nil
	}
	var at [8]byte
	binary.BigEndian.PutUint64(at[:], a.index)
	if err := a.meta.Put(k, a.keep(at[:])); err != nil {
		return nil, err
	}
	return &Result{Updated: 1, Message: fmt.Sprintf("node %s seated at %d", p.Node, a.index)}, nil
}

// Seats returns every seated node in join order (by the index of its seating, then
// name).
func (f *FSM) Seats() ([]Seat, error) {
	var out []Seat
	err := f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMeta).Cursor()
		for k, v := c.Seek(keySeatPrefix); k != nil && bytes.HasPrefix(k, keySeatPrefix); k, v = c.Next() {
			if len(v) != 8 {
				continue
			}
			out = append(out, Seat{Node: string(k[len(keySeatPrefix):]), Index: binary.BigEndian.Uint64(v)})
		}
		return nil
	})
	slices.SortFunc(out, func(a, b Seat) int {
		if a.Index != b.Index {
			return cmp.Compare(a.Index, b.Index)
		}
		return cmp.Compare(a.Node, b.Node)
	})
	return out, err
}
