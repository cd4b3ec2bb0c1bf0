//go:build unix

package embedetcd

import (
	"errors"
	"os"
	"syscall"
)

// dbLocked reports whether another process holds the flock that bbolt
// takes on the member's database file, which etcd would wait for without
// end. A missing file is not locked.
func dbLocked(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return false
	}
	defer f.Close() // releases the probe's lock, if it got it
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	return errors.Is(err, syscall.EWOULDBLOCK)
}
