package fsm

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// dropFileMap finds this process's mappings of the file at path (same inode, per
// /proc/self/maps) and madvises them MADV_DONTNEED. bbolt maps its file read-only and
// shared and writes with pwrite, so the mapped pages are never dirty: the advice only
// unmaps them from this process, the kernel's page cache keeps them, and the next read
// faults them back in from memory. It is what makes an idle node's resident set the
// memory it uses instead of every page of the state it once touched.
func dropFileMap(path string) (int, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return 0, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	st, err := os.Stat(abs)
	if err != nil {
		return 0, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("no inode for %s", abs)
	}
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer maps.Close()
	released := 0
	sc := bufio.NewScanner(maps)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != abs || !strings.HasPrefix(f[1], "r") || strings.Contains(f[1], "w") {
			continue
		}
		if ino, err := strconv.ParseUint(f[4], 10, 64); err != nil || ino != sys.Ino {
			continue
		}
		bounds := strings.SplitN(f[0], "-", 2)
		if len(bounds) != 2 {
			continue
		}
		start, err1 := strconv.ParseUint(bounds[0], 16, 64)
		end, err2 := strconv.ParseUint(bounds[1], 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), syscall.MADV_DONTNEED); e != 0 {
			return released, fmt.Errorf("madvise %s: %w", f[0], e)
		}
		released += int(end - start)
	}
	return released, sc.Err()
}
