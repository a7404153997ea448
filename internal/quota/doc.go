// Package quota runs the cluster's token buckets for the carrier accounts' call rates.
//
// The Raft leader holds one bucket per account, filled at the account's cluster-wide
// rate; every query a node sends to a carrier first asks the leader for its calls'
// tokens (Server.Grant). A token goes to whichever node has a query waiting, so a rate
// the cluster is allowed is never stranded on a node whose running shards do not use
// it, and the calls of all nodes together never exceed the bucket.
//
// A bucket runs at Config.Safety of the account's rate and keeps one token of the
// account's burst back for the spread between a grant and the carrier seeing its call.
// An account with a burst of 1 has none to keep back: its grants are spaced
// Config.Spread more than its rate asks instead.
//
// Requests wait in a queue per account and take their tokens only when it is their turn
// and a token is due, so a request given up while it waits (its node died, its query was
// abandoned) costs nothing. Requests in a higher lane go first (Request.Lane: urgent, the
// first queries of a task taken over from another member until its first answer; then
// prioritized, a shard round's first query of each account), but an ordinary one that
// waited past MaxWait/2 is not passed.
//
// The leader answers a request when its first token is due (with the offsets of the
// others), after confirming its leadership (Config.Verify), so a node calls at once on the
// answer and no clock is compared between machines. The node throws away an answer that
// arrives later than planned (GrantPlanned; a paused leader or network; node.Tokens). A
// new leader grants nothing for a hold-off period, longer than a deposed leader can go on
// granting before it notices (twice Raft's leader lease), and starts with empty buckets,
// so two leaders' grants never overlap.
//
// Concurrency slots are not handled here: they stay split between the nodes from the
// replicated state (syncer), since a slot is held for a whole call and a leader that
// fails over cannot know which calls are still out.
package quota
