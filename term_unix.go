// Window size changes for the line editor (README.md, "Commands") on
// Unix: SIGWINCH.

//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// resizeSignals delivers a value at every change of the terminal's size,
// until stop.
func resizeSignals() (<-chan os.Signal, func()) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	return winch, func() { signal.Stop(winch) }
}
