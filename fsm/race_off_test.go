//go:build !race

package fsm

const raceBuild = false
