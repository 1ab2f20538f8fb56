// The kadchat driver: build the binary once, run it on loopback, type one
// command per line and wait for the result line, as a user's script would.
//
// Flow: kadchatBinary builds the parent module the first time a test needs
// it. startKadchat starts the process on 127.0.0.1:0 with its stdout going
// to a lineLog (which splits it into lines and wakes waiters) and its stderr
// to a bounded tail, reads the port from the "* ready" line and the node id
// from `/dht status`. expect scans the lines after a cursor for the first
// one with a wanted prefix; every other line (events "* ...", chat lines)
// is skipped but kept, so a failure can print the tail of both streams.
package interop

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// expectTimeout bounds every wait for a result line. Lookups on
	// loopback finish in well under a second; this only catches hangs.
	expectTimeout = 45 * time.Second // a bound, not a wait: a loaded CI machine needs it
	// quitGrace is how long a process may take to save and exit after /quit
	// before it is killed.
	quitGrace = 3 * time.Second
	// tailBytes bounds the stderr kept for failure messages; tailLines is how
	// much of either stream such a message shows.
	tailBytes = 16 << 10
	tailLines = 30
)

// buildRoot is the main module's root: the parent of this module.
const buildRoot = ".."

// tmpRoot holds the built binary; TestMain removes it.
var tmpRoot = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "kadchat-interop-") })

// binaryEnv names a prebuilt kadchat binary to drive instead of building
// the parent module, e.g. to check an older release against this suite.
const binaryEnv = "KADCHAT_BIN"

// kadchatBinary builds the kadchat binary once per test process. It is lazy
// rather than in TestMain so that running only the benchmarks needs no
// working binary.
var kadchatBinary = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv(binaryEnv); bin != "" {
		return filepath.Abs(bin)
	}
	dir, err := tmpRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "kadchat")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = buildRoot
	// VCS stamping fails in worktrees and exported trees; nothing needs it.
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in %s: %v\n%s", buildRoot, err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := tmpRoot(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// kadchat is one running kadchat process.
type kadchat struct {
	t      testing.TB
	addr   netip.AddrPort // where it listens (127.0.0.1:port)
	id     string         // its DHT node id, 40 hex digits
	dir    string
	cmd    *exec.Cmd
	stdin  *os.File
	out    *lineLog
	stderr *tailBuffer
	next   int           // index of the first stdout line not yet consumed
	exited chan struct{} // closed once the process has exited
}

// startKadchat runs a kadchat node on a free loopback port, bootstrapping
// from the given nodes only (an empty -bootstrap, never the public routers),
// and waits until it is ready and answers `/dht status`.
func startKadchat(t testing.TB, bootstrap ...netip.AddrPort) *kadchat {
	t.Helper()
	return startKadchatDir(t, t.TempDir(), bootstrap...)
}

// startKadchatDir is startKadchat with a given data directory, to run the
// same user again.
func startKadchatDir(t testing.TB, dir string, bootstrap ...netip.AddrPort) *kadchat {
	t.Helper()
	bin, err := kadchatBinary()
	if err != nil {
		t.Fatalf("building kadchat: %v", err)
	}
	p := &kadchat{t: t, dir: dir, out: newLineLog(),
		stderr: &tailBuffer{max: tailBytes}, exited: make(chan struct{})}
	hosts := make([]string, len(bootstrap))
	for i, b := range bootstrap {
		hosts[i] = b.String()
	}
	// Port 0: the kernel picks a free port, which the ready line reports.
	args := []string{"-listen", "127.0.0.1:0", "-dir", p.dir, "-bootstrap", strings.Join(hosts, ",")}
	if os.Getenv("KADCHAT_INTEROP_VERBOSE") != "" {
		args = append(args, "-v")
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdin, p.stdin = r, w
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", p.cmd.Args, err)
	}
	r.Close()
	go func() { p.cmd.Wait(); p.out.close(); close(p.exited) }()
	t.Cleanup(p.stop)
	p.addr = p.readyAddr()
	p.id = p.status().id
	return p
}

// readyAddr parses the start-up line "* ready <listen addr> <key>".
func (p *kadchat) readyAddr() netip.AddrPort {
	p.t.Helper()
	f := strings.Fields(p.expect("* ready"))
	if len(f) < 3 {
		p.fatalf("malformed ready line %q", strings.Join(f, " "))
	}
	a, err := netip.ParseAddrPort(f[2])
	if err != nil || !a.Addr().Is4() || a.Port() == 0 {
		p.fatalf("ready line: bad listen address %q", f[2])
	}
	return a
}

// stop asks the process to quit and kills it if it does not.
func (p *kadchat) stop() {
	fmt.Fprintln(p.stdin, "/quit")
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(quitGrace):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// send types one line.
func (p *kadchat) send(line string) {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.stdin, line); err != nil {
		p.fatalf("writing %q: %v", line, err)
	}
}

// expect returns the first unconsumed stdout line that starts with one of
// prefixes (whole words: "peer" matches "peer 1.2.3.4:5", not "peers"),
// consuming it and every line before it.
func (p *kadchat) expect(prefixes ...string) string {
	p.t.Helper()
	return p.expectFunc(fmt.Sprintf("a line starting with %q", prefixes),
		func(l string) bool { return hasWordPrefix(l, prefixes) })
}

// expectFunc returns the first unconsumed stdout line that match accepts,
// consuming it and every line before it; what describes it for failures.
func (p *kadchat) expectFunc(what string, match func(string) bool) string {
	p.t.Helper()
	timeout := time.NewTimer(expectTimeout)
	defer timeout.Stop()
	for {
		lines, done := p.out.snapshot()
		for ; p.next < len(lines); p.next++ {
			if match(lines[p.next]) {
				p.next++
				return lines[p.next-1]
			}
		}
		if done {
			p.fatalf("exited while waiting for %s", what)
		}
		select {
		case <-p.out.notify:
		case <-timeout.C:
			p.fatalf("no %s within %v", what, expectTimeout)
		}
	}
}

// seen reports whether an unconsumed stdout line already starts with
// prefix, without consuming anything.
func (p *kadchat) seen(prefix string) (string, bool) {
	lines, _ := p.out.snapshot()
	for _, l := range lines[p.next:] {
		if hasWordPrefix(l, []string{prefix}) {
			return l, true
		}
	}
	return "", false
}

// hasWordPrefix reports whether line is one of prefixes or starts with one
// followed by a space.
func hasWordPrefix(line string, prefixes []string) bool {
	for _, w := range prefixes {
		if line == w || strings.HasPrefix(line, w+" ") {
			return true
		}
	}
	return false
}

// run types a command and returns the fields of its result line, which must
// start with want: an "error" line fails the test.
func (p *kadchat) run(command, want string) []string {
	p.t.Helper()
	line := p.try(command, want)
	f := strings.Fields(line)
	if f[0] != want {
		p.fatalf("%s: got %q, want a %q line", command, line, want)
	}
	return f
}

// try types a command and returns its result line, starting with want or
// with "error".
func (p *kadchat) try(command, want string) string {
	p.t.Helper()
	p.send(command)
	return p.expect(want, "error")
}

// list types a command whose result is zero or more item lines then one end
// line (e.g. "peer ..." lines then "done <n> peers"). It returns the fields
// of each item line and of the end line.
func (p *kadchat) list(command, item, end string) (items [][]string, last []string) {
	p.t.Helper()
	p.send(command)
	for range maxListLines {
		f := strings.Fields(p.expect(item, end, "error"))
		switch f[0] {
		case end:
			return items, f
		case "error":
			p.fatalf("%s: %s", command, strings.Join(f, " "))
		}
		items = append(items, f)
	}
	p.fatalf("%s: more than %d %q lines", command, maxListLines, item)
	return nil, nil
}

// maxListLines bounds the item lines of one listing command.
const maxListLines = 1000

// dhtStatus is the parsed `/dht status` line.
type dhtStatus struct {
	id       string
	external string
	nodes    string
}

// status runs `/dht status`: "node <id> <external addr or unknown> <n> nodes".
func (p *kadchat) status() dhtStatus {
	p.t.Helper()
	f := p.run("/dht status", "node")
	if len(f) != 5 || f[4] != "nodes" || !isHexID(f[1]) {
		p.fatalf("/dht status: malformed %q", strings.Join(f, " "))
	}
	return dhtStatus{id: f[1], external: f[2], nodes: f[3]}
}

// isHexID reports whether s is a 40-digit lowercase hex id.
func isHexID(s string) bool {
	if len(s) != 40 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// fatalf fails the test with the tails of the process's output.
func (p *kadchat) fatalf(format string, args ...any) {
	p.t.Helper()
	lines, _ := p.out.snapshot()
	lines = lines[max(0, len(lines)-tailLines):]
	p.t.Fatalf("kadchat %s: %s\n--- stdout tail:\n%s\n--- stderr tail:\n%s", p.addr,
		fmt.Sprintf(format, args...), strings.Join(lines, "\n"), p.stderr.tail(tailLines))
}

// lineLog collects a stream as lines and signals each new one on notify.
// Writes never block, so the child can never stall on a full pipe.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	closed  bool
	notify  chan struct{} // capacity 1: "something changed"
}

func newLineLog() *lineLog { return &lineLog{notify: make(chan struct{}, 1)} }

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, strings.TrimRight(string(l.partial[:i]), "\r"))
		l.partial = l.partial[i+1:]
	}
	l.mu.Unlock()
	l.wake()
	return len(b), nil
}

// close marks the end of the stream; an unterminated last line still counts.
func (l *lineLog) close() {
	l.mu.Lock()
	if len(l.partial) > 0 {
		l.lines = append(l.lines, string(l.partial))
		l.partial = nil
	}
	l.closed = true
	l.mu.Unlock()
	l.wake()
}

func (l *lineLog) wake() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// snapshot returns the lines so far (append-only, so safe to read) and
// whether the stream has ended.
func (l *lineLog) snapshot() ([]string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines[:len(l.lines):len(l.lines)], l.closed
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := strings.Split(strings.TrimRight(string(b.buf), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
