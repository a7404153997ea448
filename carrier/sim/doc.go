// Package sim simulates the four carrier connectivity APIs cardsync talks to
// (China Mobile OneLink v5, China Unicom CMP, China Telecom 5GCMP and Cisco
// Control Center) on one HTTP server, for demos, tests and benchmarks.
//
// Each dialect verifies its own authentication exactly as the real API does
// and answers with that carrier's envelopes and codes. Every account has a
// deterministic card population derived from the seed, whose statuses and
// usage drift with time; a per-account quota (token bucket plus a
// concurrent-call cap) rejected the way each carrier signals it; run-time
// fault injection (Go API and POST /_sim/faults); and witness statistics of
// every call (Go API and GET /_sim/stats).
package sim
