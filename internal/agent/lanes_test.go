package agent

import (
	"testing"

	"cardsync/carrier"
	"cardsync/internal/quota"
)

// TestLaneOf: each query priority waits in its own lane of the leader's queue.
func TestLaneOf(t *testing.T) {
	for _, tc := range []struct {
		p    carrier.Priority
		want quota.Lane
	}{
		{carrier.PriorityNone, quota.LaneRest},
		{carrier.PriorityFirst, quota.LanePriority},
		{carrier.PriorityUrgent, quota.LaneUrgent},
	} {
		if got := laneOf(tc.p); got != tc.want {
			t.Errorf("laneOf(%d) = %d, want %d", tc.p, got, tc.want)
		}
	}
}
