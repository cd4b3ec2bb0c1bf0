//go:build unix

package embedetcd

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStartRefusesADatabaseHeldElsewhere: a process that holds the member's
// database without the directory's lock (an etcd started by hand) makes
// Start fail at once, naming the file, instead of waiting with etcd for the
// database without end.
func TestStartRefusesADatabaseHeldElsewhere(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start(t, dir).Close() // creates member/snap/db
	db := filepath.Join(dir, "member", "snap", "db")
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	srv, err := Start(t.Context(), Config{Dir: dir, Fast: true, NoFsync: true})
	if srv != nil {
		srv.Close()
	}
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), db) {
		t.Fatalf("Start with %s locked by another holder = %v, want ErrInUse naming the file", db, err)
	}
	t.Logf("refused after %s: %v", time.Since(began), err)

	// Once released, the directory starts again: the probe left no lock.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	start(t, dir).Close()
}
