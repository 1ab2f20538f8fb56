package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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
