package carrier

import (
	"errors"
	"testing"
)

func TestDeliverSplitsOneAnswer(t *testing.T) {
	mk := func(ids ...string) *partialQuery {
		return &partialQuery{iccids: ids, done: make(chan struct{})}
	}
	res := []Result{{ICCID: "a"}, {ICCID: "b"}, {ICCID: "c"}, {ICCID: "d"}, {ICCID: "e"}}
	r1, r2 := mk("c"), mk("d", "e")
	own, err := deliver(res, nil, 2, []*partialQuery{r1, r2})
	if err != nil || len(own) != 2 || own[1].ICCID != "b" {
		t.Fatalf("own %v %v", own, err)
	}
	<-r1.done
	<-r2.done
	if len(r1.res) != 1 || r1.res[0].ICCID != "c" || len(r2.res) != 2 || r2.res[1].ICCID != "e" {
		t.Fatalf("riders got %v and %v", r1.res, r2.res)
	}
	// Appending to one share must not write into the next.
	_ = append(own, Result{ICCID: "x"})
	if r1.res[0].ICCID != "c" {
		t.Fatal("shares overlap")
	}

	boom := errors.New("call failed")
	r3 := mk("z")
	if own, err := deliver(nil, boom, 1, []*partialQuery{r3}); own != nil || !errors.Is(err, boom) {
		t.Fatalf("failed call: %v %v", own, err)
	}
	<-r3.done
	if r3.res != nil || !errors.Is(r3.err, boom) {
		t.Fatalf("rider of a failed call: %v %v", r3.res, r3.err)
	}
}
