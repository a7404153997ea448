//go:build race

package fsm

// raceBuild: the test binary runs under the race detector.
const raceBuild = true
