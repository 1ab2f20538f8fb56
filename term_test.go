package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// screen collects what the Terminal writes, for tests to wait on.
type screen struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{}
}

func newScreen() *screen { return &screen{changed: make(chan struct{}, 1)} }

func (s *screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Write(p)
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitCount waits until want occurs n times on the screen.
func (s *screen) waitCount(t *testing.T, want string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for strings.Count(s.String(), want) < n {
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("no %q (x%d) on the screen:\n%q", want, n, tail(s.String(), 2000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Issue 8 items 3 and 4, through x/term's io.ReadWriter form: history,
// Tab completion, the /to prompt, lines above the one being typed, and an
// overlong paste refused whole with the limit.
func TestTerminalEditing(t *testing.T) {
	in, feed := io.Pipe()
	scr := newScreen()
	src := newTermSource(struct {
		io.Reader
		io.Writer
	}{in, scr})
	o := options{dir: filepath.Join(t.TempDir(), "d"), listen: "127.0.0.1:0", bootstrap: []string{"127.0.0.1:1"}}
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), o, src, src.t, io.Discard) }()
	type_ := func(s string) {
		t.Helper()
		if _, err := io.WriteString(feed, s); err != nil {
			t.Fatal(err)
		}
	}
	scr.waitCount(t, "* ready", 1)
	type_("/add bob " + testKey(t) + "\r")
	scr.waitCount(t, "* added bob", 1)

	type_("/to bob\r")
	scr.waitCount(t, "* to bob", 1)
	type_("\x1b[A\r") // up, Enter: the same line again
	scr.waitCount(t, "* to bob", 2)
	scr.waitCount(t, "[bob] > ", 1)

	type_("/con\t\r") // Tab completes the command
	scr.waitCount(t, "done 1 contacts", 1)
	type_("/msg b\thi\r") // and a contact's name
	scr.waitCount(t, "<me> hi", 1)

	// An incoming line lands above the half-typed one, which is redrawn.
	type_("half")
	scr.waitCount(t, "[bob] > half", 1)
	src.u.event(chatEvent{Kind: eventMessage, Contact: "bob", Text: "interrupting", Time: time.Now()})
	scr.waitCount(t, "<bob> interrupting\r\n[bob] > half", 1)
	type_("\x15") // Ctrl-U clears it

	// 10,000 characters: more than the editor's own line; refused whole.
	type_("/msg bob " + strings.Repeat("x", 10000) + "\r")
	scr.waitCount(t, "error chat: message of 10000 bytes: the limit is 4096", 1)
	// Exactly the limit, past the editor's line cap with the command: sent.
	type_("/msg bob " + strings.Repeat("z", maxMessageText) + "\r")
	scr.waitCount(t, "* queued bob 2", 1)

	type_("\x04") // Ctrl-D on an empty line quits
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after Ctrl-D")
	}
}

func TestCompleteWord(t *testing.T) {
	cmds := []string{"/accept", "/add", "/contacts", "/msg", "/to"}
	names := []string{"bob", "bobby", "carol"}
	tests := []struct {
		line    string
		pos     int
		want    string
		wantPos int
		matches int
	}{
		{"/con", 4, "/contacts ", 10, 1},
		{"/CON", 4, "/contacts ", 10, 1},
		{"/a", 2, "/a", 2, 2}, // /accept and /add: listed, nothing to add
		{"/ac", 3, "/accept ", 8, 1},
		{"/msg ca", 7, "/msg carol ", 11, 1},
		{"/msg b", 6, "/msg bob", 8, 2}, // the common prefix
		{"/to c hi", 5, "/to carol hi", 10, 1},
		{"hello b", 7, "hello b", 7, 0}, // a message: nothing to complete
		{"/add b", 6, "/add b", 6, 0},   // a new name: nothing to complete
		{"/nope", 5, "/nope", 5, 0},
	}
	for _, tc := range tests {
		got, pos, m := completeWord(tc.line, tc.pos, cmds, names)
		if got != tc.want || pos != tc.wantPos || len(m) != tc.matches {
			t.Errorf("completeWord(%q, %d) = %q, %d, %q; want %q, %d, %d matches", tc.line, tc.pos, got, pos, m, tc.want, tc.wantPos, tc.matches)
		}
	}
}

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
