// Package webhook delivers the change feed to the platforms that own the cards. It runs
// on every cardsync node: for each subscription whose key the hash ring gives this node,
// a worker claims the subscription's delivery epoch in the replicated state, POSTs the
// selected change events in sequence order and in batches, signed with HMAC-SHA256 of
// the body, retries with backoff until the subscriber answers 2xx, and advances the
// replicated cursor after each acknowledged batch. Because the cursor only moves for the
// current epoch, a node that takes over resumes at the last acknowledged event: delivery
// is at-least-once, in order, and never skips. A subscriber that stays down is paused
// with a reason instead of being retried forever. The package also serves the
// subscription API (/v1/webhooks).
package webhook
