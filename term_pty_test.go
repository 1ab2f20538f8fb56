//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("no pty: unlock: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("no pty: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("no pty: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// Issue 8 item 4 through the real binary on a pty: the editor starts in
// raw mode (no canonical-mode line cap, up arrow is history, not ESC [ A),
// and Ctrl-D leaves cleanly with the terminal restored.
func TestE2ETerminalPTY(t *testing.T) {
	bin := kadchatBinary(t)
	m, s := openPTY(t)
	before, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "d")
	cmd := exec.Command(bin, "-listen", "127.0.0.1:0", "-bootstrap", "127.0.0.1:1", "-dir", dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	scr := newScreen()
	go io.Copy(scr, m)
	scr.waitCount(t, "* ready", 1)
	scr.waitCount(t, "> ", 1)
	io.WriteString(m, "/id\r")
	scr.waitCount(t, "id kc1", 1)
	io.WriteString(m, "\x1b[A\r") // history
	scr.waitCount(t, "id kc1", 2)
	io.WriteString(m, "/msg nobody "+strings.Repeat("x", 5000)+"\r")
	scr.waitCount(t, "error chat: message of 5000 bytes: the limit is 4096", 1)
	io.WriteString(m, "\x04")
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("exit: %v\n%q", err, tail(scr.String(), 2000))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after Ctrl-D")
	}
	after, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
		t.Errorf("terminal not restored: %+v, want %+v", after, before)
	}
	if strings.Contains(scr.String(), "context canceled") {
		t.Errorf("quitting printed %q", "context canceled")
	}
}
