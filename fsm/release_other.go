//go:build !linux

package fsm

// dropFileMap does nothing where /proc/self/maps is not available.
func dropFileMap(string) (int, error) { return 0, nil }
