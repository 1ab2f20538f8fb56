// Tests of the whole program: SPEC.md's examples, and end-to-end runs of
// the real binary, several processes on 127.0.0.1 driven through stdin.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// specBlock is a fenced block of SPEC.md tagged "```<kind> name=<name>":
// an optional first line that is not "key = value" (the body), then
// "key = value" lines.
type specBlock struct {
	name   string
	body   string
	fields map[string]string
	keys   []string // in order of appearance
}

// specBlocks returns every block of the given kind in SPEC.md.
func specBlocks(t testing.TB, kind string) []specBlock {
	t.Helper()
	b, err := os.ReadFile("SPEC.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []specBlock
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		head, ok := strings.CutPrefix(lines[i], "```"+kind+" ")
		if !ok {
			continue
		}
		name, ok := strings.CutPrefix(strings.TrimSpace(head), "name=")
		if !ok {
			t.Fatalf("SPEC.md line %d: block without name=", i+1)
		}
		blk := specBlock{name: name, fields: map[string]string{}}
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			k, v, ok := strings.Cut(lines[i], " = ")
			if !ok {
				if len(blk.keys) > 0 || blk.body != "" {
					t.Fatalf("SPEC.md line %d: want key = value, got %q", i+1, lines[i])
				}
				blk.body = lines[i]
				continue
			}
			k = strings.TrimSpace(k)
			if _, dup := blk.fields[k]; dup {
				// A repeated key continues the value (long hex).
				blk.fields[k] += strings.TrimSpace(v)
				continue
			}
			blk.fields[k] = strings.TrimSpace(v)
			blk.keys = append(blk.keys, k)
		}
		out = append(out, blk)
	}
	if len(out) == 0 {
		t.Fatalf("SPEC.md has no %s blocks", kind)
	}
	return out
}

// specVectorMap returns the blocks of one kind as name -> key -> value.
func specVectorMap(t testing.TB, kind string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, b := range specBlocks(t, kind) {
		if b.body != "" {
			t.Fatalf("SPEC.md %s %s: line %q is not key = value", kind, b.name, b.body)
		}
		out[b.name] = b.fields
	}
	return out
}

// The binary, built once by TestMain for the end-to-end tests.
var kadchatBin string

func TestMain(m *testing.M) {
	code := m.Run()
	if kadchatBin != "" {
		os.RemoveAll(filepath.Dir(kadchatBin))
	}
	os.Exit(code)
}

var buildOnce sync.Once
var buildErr error

// kadchatBinary builds the kadchat binary once per test run.
func kadchatBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: builds and runs the binary")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kadchat-e2e")
		if err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(dir, "kadchat")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		kadchatBin = bin
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return kadchatBin
}

// proc is one running kadchat, driven through stdin and read through stdout.
type proc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	linec chan string
	done  chan struct{}

	mu     sync.Mutex
	seen   []string // every stdout line, for failure messages
	stderr *strings.Builder
}

// startProc starts the binary with args and env (added to the environment).
func startProc(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	if os.Getenv("KADCHAT_E2E_VERBOSE") != "" {
		args = append(args, "-v") // debug logs in the failure output
	}
	cmd := exec.Command(kadchatBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{t: t, name: name, cmd: cmd, linec: make(chan string, 4096), done: make(chan struct{}), stderr: &strings.Builder{}}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{mu: &p.mu, w: p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.seen = append(p.seen, sc.Text())
			p.mu.Unlock()
			select {
			case p.linec <- sc.Text():
			default: // nobody is reading: the line stays in seen
			}
		}
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// send writes one command line.
func (p *proc) send(format string, args ...any) {
	p.t.Helper()
	if _, err := fmt.Fprintf(p.stdin, format+"\n", args...); err != nil {
		p.t.Fatalf("%s: write stdin: %v", p.name, err)
	}
}

// expect waits for the next line starting with prefix, skipping others.
func (p *proc) expect(prefix string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.linec:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-p.done:
			p.t.Fatalf("%s exited waiting for %q\n%s", p.name, prefix, p.tail())
		case <-deadline:
			p.t.Fatalf("%s: no line %q within %v\n%s", p.name, prefix, timeout, p.tail())
		}
	}
}

// expectMessage waits for the next incoming message line and checks that
// it ends in want ("<name> text"; the line starts with the time).
func (p *proc) expectMessage(want string, timeout time.Duration) {
	p.t.Helper()
	if got := p.expect("[", timeout); !strings.HasSuffix(got, want) {
		p.t.Fatalf("%s got %q, want a message ending in %q", p.name, got, want)
	}
}

// lines returns what is left unread in the line channel.
func (p *proc) lines() []string {
	var out []string
	for {
		select {
		case l := <-p.linec:
			out = append(out, l)
		default:
			return out
		}
	}
}

func (p *proc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.seen
	if len(s) > 40 {
		s = s[len(s)-40:]
	}
	return "stdout:\n" + strings.Join(s, "\n") + "\nstderr:\n" + p.stderr.String()
}

// kill ends the process at once (SIGKILL), as a crash would.
func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// quit closes stdin and waits for a clean exit.
func (p *proc) quit() {
	p.t.Helper()
	p.stdin.Close()
	p.wait(p.t)
}

// wait waits for the process to exit with status 0.
func (p *proc) wait(t *testing.T) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- p.cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("%s: exit: %v\n%s", p.name, err, p.tail())
		}
	case <-time.After(10 * time.Second):
		p.kill()
		t.Fatalf("%s: no exit within 10s\n%s", p.name, p.tail())
	}
}

// testSwarm starts size DHT nodes in this process on 127.0.0.1 for the
// binaries to bootstrap from, and returns the -bootstrap value.
func testSwarm(t *testing.T, size int) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var seeds []string
	for i := range size {
		n, err := listenNode("127.0.0.1:0", nil)
		if err != nil {
			t.Fatal(err)
		}
		var boot []string
		if i > 0 {
			boot = seeds[:1]
		}
		d, err := newDHT(n, dhtConfig{Bootstrap: boot})
		if err != nil {
			t.Fatal(err)
		}
		if i < 3 {
			seeds = append(seeds, n.LocalAddr().String())
		}
		wg.Add(2)
		go func() { defer wg.Done(); n.run(ctx) }()
		go func() { defer wg.Done(); d.run(ctx) }()
	}
	return strings.Join(seeds, ",")
}

// user is one person's data directory, run as a process when needed.
type user struct {
	name, dir, boot string
	env             []string
	key             string
}

func newUser(t *testing.T, name, boot string, env ...string) *user {
	return &user{name: name, dir: filepath.Join(t.TempDir(), name), boot: boot, env: env}
}

// start runs the user's kadchat and waits until it is ready.
func (u *user) start(t *testing.T) *proc {
	t.Helper()
	p := startProc(t, u.name, u.env, "-listen", "127.0.0.1:0", "-bootstrap", u.boot, "-dir", u.dir)
	p.expect("* ready", 10*time.Second)
	p.send("/id")
	u.key = strings.TrimPrefix(p.expect("id ", 5*time.Second), "id ")
	return p
}

// befriendProcs makes a and b contacts of each other.
func befriendProcs(t *testing.T, a, b *user, pa, pb *proc) {
	t.Helper()
	pa.send("/add %s %s", b.name, b.key)
	pa.expect("* added "+b.name, 5*time.Second)
	pb.send("/add %s %s", a.name, a.key)
	pb.expect("* added "+a.name, 5*time.Second)
}

const e2eWait = 30 * time.Second

func TestE2EMessageAndReceipt(t *testing.T) {
	boot := testSwarm(t, 8)
	alice, bob := newUser(t, "alice", boot), newUser(t, "bob", boot)
	pa, pb := alice.start(t), bob.start(t)
	befriendProcs(t, alice, bob, pa, pb)
	pa.send("/msg bob hello bob")
	id := strings.TrimPrefix(pa.expect("* queued bob ", 5*time.Second), "* queued bob ")
	pb.expectMessage("<alice> hello bob", e2eWait)
	pa.expect("* delivered bob "+id, e2eWait)
	pa.quit()
	pb.quit()
}

func TestE2EOfflineReceiverAndSenderRestart(t *testing.T) {
	boot := testSwarm(t, 8)
	alice, bob := newUser(t, "alice", boot), newUser(t, "bob", boot)
	pa, pb := alice.start(t), bob.start(t)
	befriendProcs(t, alice, bob, pa, pb)
	pb.quit() // bob goes offline
	pa.send("/msg bob sent while you were away")
	pa.expect("* queued bob", 5*time.Second)
	pa.quit() // and alice restarts in between
	pa = alice.start(t)
	pb = bob.start(t)
	pb.expectMessage("<alice> sent while you were away", e2eWait)
	pa.expect("* delivered bob", e2eWait)
	pa.quit()
	pb.quit()
}

func TestE2ESIGKILLAfterMsg(t *testing.T) {
	boot := testSwarm(t, 8)
	alice, bob := newUser(t, "alice", boot), newUser(t, "bob", boot)
	pa, pb := alice.start(t), bob.start(t)
	befriendProcs(t, alice, bob, pa, pb)
	pb.quit()
	pa.send("/msg bob survive the crash")
	pa.expect("* queued bob", 5*time.Second)
	pa.kill() // SIGKILL right after the message is queued
	pb = bob.start(t)
	pa = alice.start(t)
	pb.expectMessage("<alice> survive the crash", e2eWait)
	pa.expect("* delivered bob", e2eWait)
	pa.quit()
	pb.quit()
}

func TestE2ELossyExactlyOnceInOrder(t *testing.T) {
	const n = 200
	boot := testSwarm(t, 8)
	lossy := dropEnv + "=0.2"
	alice, bob := newUser(t, "alice", boot, lossy), newUser(t, "bob", boot, lossy)
	pa, pb := alice.start(t), bob.start(t)
	befriendProcs(t, alice, bob, pa, pb)
	for i := range n {
		pa.send("/msg bob m%03d", i)
	}
	start := time.Now()
	for i := range n {
		if i == 1 {
			t.Logf("first message after %v", time.Since(start))
		}
		want := fmt.Sprintf("<alice> m%03d", i)
		wait := e2eWait
		if i == 0 {
			wait = 2 * e2eWait // the rendezvous itself crosses the lossy link
		}
		pb.expectMessage(want, wait)
	}
	t.Logf("all %d messages after %v", n, time.Since(start))
	for range n {
		pa.expect("* delivered bob", e2eWait)
	}
	pb.send("/quit")
	pb.quit()
	// Nothing more may arrive: every message was shown exactly once.
	for _, l := range pb.lines() {
		if strings.HasPrefix(l, "[") {
			t.Errorf("bob: extra line %q", l)
		}
	}
	pa.quit()
}

func TestE2EUIErrorsAndCleanExit(t *testing.T) {
	u := newUser(t, "carol", "127.0.0.1:1")
	p := u.start(t)
	tests := []struct{ line, want string }{
		{"/nope", "error unknown command"},
		{"/add", "error ui: usage: /add NAME KEY"},
		{"/add dave kc1notakey", "error "},
		{"/msg nobody hi", "error "},
		{"hello", "error no recipient"},
		{"/to nobody", "error "},
		{"/dht ping nowhere", "error "},
		{"/dht get_peers 12", "error "},
		{"/help", "help /help"},
		{"/contacts", "done 0 contacts"},
	}
	for _, tc := range tests {
		p.send("%s", tc.line)
		p.expect(tc.want, 15*time.Second)
	}
	p.quit() // end of input exits cleanly
}

// SIGINT and SIGTERM exit cleanly (status 0) and save state: a contact
// added before the signal is there after a restart.
func TestE2ESignalsExitCleanly(t *testing.T) {
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			u := newUser(t, "erin", "127.0.0.1:1")
			other := newUser(t, "frank", "127.0.0.1:1")
			p := other.start(t)
			p.quit()
			p = u.start(t)
			p.send("/add frank %s", other.key)
			p.expect("* added frank", 5*time.Second)
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			p.wait(t)
			p = u.start(t)
			p.send("/contacts")
			p.expect("contact frank offline", 5*time.Second)
			p.quit()
		})
	}
}

// A busy -listen port falls back to a free one instead of failing.
func TestE2EListenFallback(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	u := newUser(t, "gina", "127.0.0.1:1")
	p := startProc(t, u.name, nil, "-listen", busy.LocalAddr().String(), "-bootstrap", u.boot, "-dir", u.dir)
	ready := p.expect("* ready", 10*time.Second)
	if strings.Contains(ready, busy.LocalAddr().String()) {
		t.Fatalf("listening on the busy port: %q", ready)
	}
	p.quit()
}

// The simpler way: alice reads a short code to bob, and both end up as each
// other's contacts with the right keys, then chat.
func TestE2EInviteCode(t *testing.T) {
	boot := testSwarm(t, 8)
	alice, bob := newUser(t, "alice", boot), newUser(t, "bob", boot)
	pa, pb := alice.start(t), bob.start(t)
	pa.send("/invite bob")
	f := strings.Fields(pa.expect("invite bob ", 10*time.Second))
	pb.send("/accept alice %s", f[2])
	pb.expect("* added alice", e2eWait)
	pa.expect("* added bob", e2eWait)
	pa.send("/verify bob")
	pb.send("/verify alice")
	va := strings.TrimPrefix(pa.expect("verify bob ", 5*time.Second), "verify bob ")
	vb := strings.TrimPrefix(pb.expect("verify alice ", 5*time.Second), "verify alice ")
	if va != vb {
		t.Fatalf("safety codes differ: %q and %q", va, vb)
	}
	pa.send("/msg bob we met by code")
	pb.expectMessage("<alice> we met by code", e2eWait)
	pa.quit()
	pb.quit()
}

// The README's first command: the demo runs on loopback only, rekeys, and
// ends well.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 30-node DHT and two users")
	}
	var out strings.Builder
	w := &lockedWriter{mu: &sync.Mutex{}, w: &out}
	if err := runDemo(context.Background(), w); err != nil {
		t.Fatalf("runDemo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"alice sees: * online bob", "bob sees: * online alice",
		"handshake initiation", "handshake response",
		"bob sees: [", "alice sees: * delivered bob 3",
		"alice sees: * dropped bob 4", "alice sees: * delivered bob 4", "done:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("transcript lacks %q\n%s", want, out.String())
		}
	}
}

// An overlong line is refused whole, also as the last line without a
// newline, and the lines around it still arrive.
func TestReadLinesOverlong(t *testing.T) {
	long := strings.Repeat("x", maxLine+10)
	for _, in := range []string{"/a\n" + long + "\n/b\n", "/a\n/b\n" + long} {
		var out strings.Builder
		u := &ui{out: &out}
		lines := make(chan string, 8)
		if err := readLines(context.Background(), strings.NewReader(in), lines, u); err != nil {
			t.Fatal(err)
		}
		close(lines)
		var got []string
		for l := range lines {
			got = append(got, strings.TrimRight(l, "\n"))
		}
		if strings.Join(got, ",") != "/a,/b" || !strings.HasPrefix(out.String(), "error line longer") {
			t.Errorf("lines %q, output %q; want /a,/b and an error line", got, out.String())
		}
	}
}

func TestPrintable(t *testing.T) {
	tests := []struct{ in, want string }{
		{"hello", "hello"},
		{"two\nlines", "two\uFFFDlines"},
		{"fake\r* delivered bob 1", "fake\uFFFD* delivered bob 1"},
		{"\x1b[2Jclear", "\uFFFD[2Jclear"},
		{"abc\u202edcba", "abc\uFFFDdcba"}, // bidi override
		{"line\u2028sep", "line\uFFFDsep"},
		{"émoji 🙂", "émoji 🙂"},
	}
	for _, tc := range tests {
		if got := printable(tc.in); got != tc.want {
			t.Errorf("printable(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
