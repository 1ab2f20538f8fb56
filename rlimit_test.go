//go:build linux || darwin

package main

import (
	"syscall"
	"testing"
)

// raiseFileLimit makes sure the process may open need descriptors, with
// room to spare for what the test binary already holds.
func raiseFileLimit(b *testing.B, need uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	want := need + 256
	if lim.Cur >= want {
		return
	}
	if want > lim.Max {
		b.Skipf("need %d file descriptors, hard limit is %d", want, lim.Max)
	}
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
}
