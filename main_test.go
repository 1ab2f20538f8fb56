// Tests of the whole program (main.go): its flags, and end-to-end runs of
// the real binary, several processes on 127.0.0.1 driven through stdin.
// SPEC.md's examples are checked by each layer's tests, through
// harness_test.go.
package main

import (
	"bufio"
	"context"
	"errors"
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
)

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
	// /status names the path (SPEC.md 5.8): on loopback, a LAN one.
	pa.send("/status")
	pa.expect("nat public 127.0.0.1:", 5*time.Second)
	pa.expect("path bob lan 127.0.0.1:", 5*time.Second)
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
		{"/nope", `error ui: unknown command "/nope": try /help`},
		{"/add", "error ui: usage: /add NAME KEY"},
		{"/add dave kc1notakey", "error identity: wrong length: 10 characters, want 61"},
		{"/msg nobody hi", `error chat: no such contact "nobody"`},
		{"hello", "error ui: no recipient: use /to NAME or /msg NAME TEXT"},
		{"/to nobody", `error chat: no such contact "nobody"`},
		{"/dht ping nowhere", `error dht: ping "nowhere": want HOST:PORT`},
		{"/dht get_peers 12", `error routing: id "12": want 40 hex digits`},
		{"/help", "help /help                    list the commands"},
		{"/contacts", "done 0 contacts"},
	}
	for _, tc := range tests {
		p.send("%s", tc.line)
		// The line's first word finds it; then all of it must match.
		first, _, _ := strings.Cut(tc.want, " ")
		if got := p.expect(first+" ", 15*time.Second); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.line, got, tc.want)
		}
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
			p.expect("contact frank waiting", 5*time.Second) // frank never ran at once with erin
			p.quit()
		})
	}
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

// Issue 8 item 11: -h prints the usage to stdout and exits 0; -version
// prints one line; a bad flag exits 2; a startup error is said once.
func TestE2EFlagsAndStartupErrors(t *testing.T) {
	bin := kadchatBinary(t)
	run := func(args ...string) (stdout, stderr string, code int) {
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader("")
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return o.String(), e.String(), code
	}
	if o, e, code := run("-h"); code != 0 || !strings.Contains(o, "-listen") || e != "" {
		t.Errorf("-h: exit %d, stdout %q, stderr %q", code, o, e)
	}
	if o, e, code := run("-version"); code != 0 || !strings.HasPrefix(o, "kadchat ") || strings.Count(o, "\n") != 1 || e != "" {
		t.Errorf("-version: exit %d, stdout %q, stderr %q", code, o, e)
	}
	if o, e, code := run("-nope"); code != 2 || o != "" || !strings.Contains(e, "-nope") {
		t.Errorf("-nope: exit %d, stdout %q, stderr %q", code, o, e)
	}
	// A data directory that is a file: the error is said once, prefixed once.
	file := t.TempDir() + "/file"
	if err := writeFileAtomic(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, e, code := run("-dir", file, "-listen", "127.0.0.1:0", "-bootstrap", "127.0.0.1:1")
	if code != 1 || o != "" || strings.Count(e, "\n") != 1 || !strings.HasPrefix(e, "error: ") || strings.Count(e, "kadchat:") > 1 {
		t.Errorf("bad -dir: exit %d, stdout %q, stderr %q", code, o, e)
	}
}
