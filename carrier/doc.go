// Package carrier is how cardsync talks to the mobile carriers' connectivity
// APIs: China Mobile OneLink (v5), the China Unicom CMP gateway, the China
// Telecom 5GCMP gateway and Cisco Control Center.
//
// It defines the Client interface the syncer uses, the normalised Card model,
// the error taxonomy (Kind, Error and one sentinel per kind), one adapter per
// carrier API (NewClient), and Account: a Client behind the per-account rate
// limiter, concurrency cap and circuit breaker, with a run-time adjustable
// share of the account's cluster-wide quota.
//
// The package knows nothing about shards or the cluster; it turns ICCIDs into
// normalised cards and carrier failures into error kinds.
package carrier
