// The data directory's lock on Unix (README.md, "Flags"): flock, which the
// kernel drops when the process ends, also on SIGKILL.

//go:build unix

package main

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// lockExclusive takes an exclusive lock on f without waiting; errLocked
// if another process holds one.
func lockExclusive(f *os.File) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return errLocked
	}
	return err
}
