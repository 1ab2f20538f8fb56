// The line editor for a terminal (README.md, "Commands"): history on
// up and down, Tab completion of commands and contact names, a prompt that
// shows the /to target, and incoming lines printed above the line being
// typed. A pipe or a script gets plain lines instead (plainSource).
//
// Flow: runStdio puts a terminal into raw mode and hands x/term's Terminal
// both ends: the UI prints through it (above the prompt) and termSource
// reads edited lines from it. Keys past x/term's own line cap are kept
// here, so an overlong paste reaches the UI whole and is refused with the
// limit, never cut short without a word.
package main

import (
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/term"
)

const (
	// termLineCap is x/term's maximum line, in runes: keys typed past it
	// are dropped silently by the Terminal, so termSource keeps them.
	termLineCap = 4096
	// maxTermLine bounds what termSource keeps of one line, in bytes; a
	// longer line is refused without being held in memory.
	maxTermLine = 64 << 10
	// promptPlain and promptTarget are the prompts without and with a
	// /to target.
	promptPlain  = "> "
	promptTarget = "[%s] > "
)

// runStdio runs the program on the process's standard streams: with the
// line editor when stdin and stdout are both a terminal, plain otherwise.
func runStdio(ctx context.Context, o options) error {
	in, out := int(os.Stdin.Fd()), int(os.Stdout.Fd())
	if !term.IsTerminal(in) || !term.IsTerminal(out) {
		return run(ctx, o, &plainSource{r: os.Stdin}, os.Stdout, os.Stderr)
	}
	old, err := term.MakeRaw(in)
	if err != nil {
		return run(ctx, o, &plainSource{r: os.Stdin}, os.Stdout, os.Stderr)
	}
	defer term.Restore(in, old)
	ts := newTermSource(struct {
		io.Reader
		io.Writer
	}{os.Stdin, os.Stdout})
	stderr := io.Writer(os.Stderr)
	if term.IsTerminal(int(os.Stderr.Fd())) {
		stderr = ts.t // -v logs in raw mode need the Terminal's line ends
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go followSize(ctx, out, ts.t)
	err = run(ctx, o, ts, ts.t, stderr)
	os.Stdout.WriteString("\r\n") // leave the prompt's line
	return err
}

// followSize tells t the window's size now and at every change the
// system signals (resizeSignals).
func followSize(ctx context.Context, fd int, t *term.Terminal) {
	winch, stop := resizeSignals()
	defer stop()
	for {
		// A pty nobody sized says 0 columns; x/term would then wrap
		// after every character, so it keeps its default of 80.
		if w, h, err := term.GetSize(fd); err == nil && w > 0 {
			t.SetSize(w, h)
		}
		select {
		case <-ctx.Done():
			return
		case <-winch:
		}
	}
}

// termSource reads lines through x/term's Terminal.
type termSource struct {
	t *term.Terminal
	u *ui

	// Keys typed while the Terminal's line is at its cap, in order, and
	// the byte count of the whole overflow (also what was not kept).
	// Touched only on the reading goroutine (the completion callback
	// runs there, inside ReadLine).
	tail     []byte
	tailSize int
}

func newTermSource(rw io.ReadWriter) *termSource {
	s := &termSource{t: term.NewTerminal(rw, promptPlain)}
	s.t.AutoCompleteCallback = s.onKey
	return s
}

func (s *termSource) attach(u *ui) {
	s.u = u
	u.onTarget = func(name string) {
		if name == "" {
			s.t.SetPrompt(promptPlain)
			return
		}
		s.t.SetPrompt(strings.Replace(promptTarget, "%s", name, 1))
	}
}

// readLines reads edited lines until Ctrl-D on an empty line, Ctrl-C, or
// the end of input.
func (s *termSource) readLines(ctx context.Context, lines chan<- string) error {
	for {
		line, err := s.t.ReadLine()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		line, ok := s.withTail(line)
		if !ok {
			continue
		}
		select {
		case lines <- line:
		case <-ctx.Done():
			return nil
		}
	}
}

// withTail appends the overflow to line. A line too long to keep is
// refused here with an error line; ok is false then.
func (s *termSource) withTail(line string) (string, bool) {
	tail, size := s.tail, s.tailSize
	s.tail, s.tailSize = nil, 0
	if len(line)+size > maxTermLine {
		s.u.printf("error line of more than %d bytes ignored: a message is at most %d bytes", maxTermLine, maxMessageText)
		return "", false
	}
	return line + string(tail), true
}

// onKey is the Terminal's AutoCompleteCallback, called for each key that
// is not an editing key: Tab completes; a printable key at the line cap is
// kept in the overflow, since the Terminal would drop it.
func (s *termSource) onKey(line string, pos int, key rune) (string, int, bool) {
	if key == '\t' {
		return s.complete(line, pos)
	}
	if key >= ' ' && utf8.ValidRune(key) && len(line) >= termLineCap && utf8.RuneCountInString(line) >= termLineCap {
		s.tailSize += utf8.RuneLen(key)
		if len(line)+s.tailSize <= maxTermLine {
			s.tail = utf8.AppendRune(s.tail, key)
		}
	}
	return "", 0, false
}

// complete completes the word before the cursor: a command name first on
// the line, a contact's name after a command that takes one. With several
// matches it completes their common prefix and lists them.
func (s *termSource) complete(line string, pos int) (string, int, bool) {
	var names []string
	for _, c := range s.u.app.chat.contactList() {
		names = append(names, c.Name)
	}
	newLine, newPos, matches := completeWord(line, pos, commandNames(), names)
	if len(matches) > 1 {
		s.u.printf("complete %s", strings.Join(matches, " "))
	}
	if newLine == line {
		return "", 0, false
	}
	return newLine, newPos, true
}

func commandNames() []string {
	out := make([]string, len(commands))
	for i, c := range commands {
		out[i] = c.name
	}
	return out
}

// nameCommands take a contact's name as their first argument.
var nameCommands = []string{"/msg", "/to", "/remove", "/verify"}

// completeWord completes the word ending at pos (a byte offset). It returns
// the new line and cursor, and the candidates that matched.
func completeWord(line string, pos int, cmds, names []string) (string, int, []string) {
	start := strings.LastIndexAny(line[:pos], " \t") + 1
	word := line[start:pos]
	var cands []string
	fields := strings.Fields(line[:start])
	switch {
	case len(fields) == 0 && strings.HasPrefix(word, "/"):
		cands, word = cmds, strings.ToLower(word)
	case len(fields) == 1 && slices.Contains(nameCommands, strings.ToLower(fields[0])):
		cands = names
	default:
		return line, pos, nil
	}
	var matches []string
	for _, c := range cands {
		if strings.HasPrefix(c, word) {
			matches = append(matches, c)
		}
	}
	if len(matches) == 0 {
		return line, pos, nil
	}
	fill := commonPrefix(matches)
	if len(matches) == 1 {
		fill += " "
	}
	if len(fill) <= len(word) && len(matches) > 1 {
		return line, pos, matches
	}
	rest := line[pos:]
	if strings.HasSuffix(fill, " ") {
		rest = strings.TrimPrefix(rest, " ") // no double space after a word completed
	}
	return line[:start] + fill + rest, start + len(fill), matches
}

func commonPrefix(ss []string) string {
	p := ss[0]
	for _, s := range ss[1:] {
		for !strings.HasPrefix(s, p) {
			p = p[:len(p)-1]
		}
	}
	return p
}
