// Window size changes for the line editor (README.md, "Commands") where
// the system signals none: the size is read once, at start.

//go:build !unix

package main

import "os"

// resizeSignals never delivers: no signal tells of a new size here.
func resizeSignals() (<-chan os.Signal, func()) {
	return nil, func() {}
}
