// The data directory's lock: one kadchat per directory (see README.md,
// "Flags"). Two processes on one directory would each rewrite the contacts
// and the outbox from their own memory and lose the other's changes.
//
// Flow: openApp takes an exclusive flock on DIR/lock before it reads or
// writes any other file there, writes its pid into it for the error a
// second process prints, and holds it until close. The kernel drops the
// lock when the process ends, also on SIGKILL, so a crash never leaves a
// stale lock behind (the pid left in the file is only read while locked).
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// lockFile is the lock's name in the data directory.
const lockFile = "lock"

// errLocked: another process holds the lock (lockExclusive, per system).
var errLocked = errors.New("held by another process")

// dirInUseError says which process holds the data directory.
type dirInUseError struct {
	dir string
	pid int // 0: unknown
}

func (e *dirInUseError) Error() string {
	if e.pid == 0 {
		return fmt.Sprintf("%s is in use by another kadchat", e.dir)
	}
	return fmt.Sprintf("%s is in use by another kadchat (pid %d)", e.dir, e.pid)
}

// dirLock is a held lock on a data directory; its zero value holds none.
type dirLock struct {
	f *os.File
}

// lockDir takes the data directory's lock without waiting, or returns a
// *dirInUseError naming the holder.
func lockDir(dir string) (*dirLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := lockExclusive(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, &dirInUseError{dir: dir, pid: readLockPID(filepath.Join(dir, lockFile))}
		}
		return nil, fmt.Errorf("lock: %s: %w", dir, err)
	}
	if err := writeLockPID(f); err != nil {
		f.Close()
		return nil, err
	}
	return &dirLock{f: f}, nil
}

// writeLockPID replaces the file's content with our pid.
func writeLockPID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}

// readLockPID reads the holder's pid; 0 if the file says nothing usable
// (the holder may be between creating and writing it).
func readLockPID(path string) int {
	b, err := readFileMax(path, maxSmallFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// release lets the next kadchat in. The file stays: removing it would
// race with a process that has just opened it.
func (l *dirLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
