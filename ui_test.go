package main

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 8 items 2, 5 and 6: a refused line gets an error line whichever
// way it came; our own messages are echoed; commands forgive white space
// and case, and "//" sends a line that starts with "/".
func TestE2ETypedLines(t *testing.T) {
	u := newUser(t, "kate", "127.0.0.1:1")
	p := u.start(t)
	p.send("/add bob %s", testKey(t))
	p.expect("* added bob", 5*time.Second)
	p.send("  /TO bob  ")
	p.expect("* to bob", 5*time.Second)
	steps := []struct{ line, want string }{
		{strings.Repeat("x", 4200), "error chat: message of 4200 bytes: the limit is 4096"},
		{"bad \xff\xfe utf-8", "error chat: message is not valid UTF-8"},
		{"/msg bob " + strings.Repeat("y", 4097), "error chat: message of 4097 bytes: the limit is 4096"},
		{"hello there", "* queued bob 1"},
		{"", "<me> hello there"},
		{"\t/MSG bob by msg ", "* queued bob 2"},
		{"", "<me> by msg"},
		{"//etc/passwd is a path", "* queued bob 3"},
		{"", "<me> /etc/passwd is a path"},
		{"/Contacts", "contact bob offline"},
		{"/nope", `error unknown command "/nope"`},
	}
	for _, s := range steps {
		if s.line != "" {
			p.send("%s", s.line)
		}
		if strings.HasPrefix(s.want, "<me>") {
			p.expectMessage(s.want, 5*time.Second)
			continue
		}
		p.expect(s.want, 5*time.Second)
	}
	p.send(" /QUIT ")
	p.wait(t)
}

// Issue 8 item 7: keys pasted with quotes, brackets, "id " or line breaks
// are taken; swapped arguments get a hint.
func TestE2EAddKeyPastes(t *testing.T) {
	u := newUser(t, "liam", "127.0.0.1:1")
	p := u.start(t)
	pastes := []string{`"%s"`, "‹%s›", "<%s>", "id %s", "'id %s'", "«%s»", "`%s`"}
	for i, form := range pastes {
		key := testKey(t)
		p.send("/add c%d "+form, i, key)
		p.expect(fmt.Sprintf("* added c%d", i), 5*time.Second)
	}
	key := testKey(t)
	p.send("/add split %s %s", key[:30], key[30:])
	p.expect("* added split", 5*time.Second)
	key = testKey(t)
	p.send("/add %s alice", key)
	if got := p.expect("error ", 5*time.Second); got != "error ui: did you mean /add alice "+key+"?" {
		t.Errorf("swapped /add: %q", got)
	}
	p.send("/add me %s", key)
	p.expect(`error ui: the name "me" stands for you`, 5*time.Second)
	p.quit()
}

func TestCleanKey(t *testing.T) {
	const k = "kc1abc"
	for _, in := range []string{k, `"kc1abc"`, " ‹kc1abc› ", "<kc1abc>", "id kc1abc", "\"id kc1abc\"", "kc1 ab\nc", "[kc1abc]"} {
		if got := cleanKey(in); got != k {
			t.Errorf("cleanKey(%q) = %q, want %q", in, got, k)
		}
	}
	if got := cleanKey("idkc1"); got != "idkc1" {
		t.Errorf("cleanKey(%q) = %q: only a separate \"id\" is dropped", "idkc1", got)
	}
}

// Issue 8 item 11: /remove of a contact with queued messages wants force
// and says how many would be dropped.
func TestE2ERemoveQueued(t *testing.T) {
	u := newUser(t, "mia", "127.0.0.1:1")
	p := u.start(t)
	p.send("/add bob %s", testKey(t))
	p.expect("* added bob", 5*time.Second)
	p.send("/msg bob one")
	p.expect("* queued bob 1", 5*time.Second)
	p.send("/msg bob two")
	p.expect("* queued bob 2", 5*time.Second)
	p.send("/remove bob")
	if got := p.expect("error", 5*time.Second); got != "error ui: bob has 2 queued messages that would be dropped: /remove bob force" {
		t.Errorf("/remove bob: %q", got)
	}
	p.send("/remove bob force")
	p.expect("* removed bob", 5*time.Second)
	p.send("/contacts")
	p.expect("done 0 contacts", 5*time.Second)
	p.quit()
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

// Issue 8 item 9: without a reachable DHT node, one plain line and no
// logs; /status says it in words. With a swarm, "joined".
func TestE2EDHTStateLines(t *testing.T) {
	u := newUser(t, "nora", "127.0.0.1:1")
	p := u.start(t)
	p.expect("* dht: no nodes reachable (retrying; check the network or use -bootstrap)", 40*time.Second)
	p.send("/status")
	p.expect("reach no: ", 5*time.Second)
	p.quit()
	p.mu.Lock()
	stderr := p.stderr.String()
	p.mu.Unlock()
	if stderr != "" {
		t.Errorf("stderr without -v: %q", stderr)
	}
	boot := testSwarm(t, 8)
	v := newUser(t, "olga", boot)
	p = v.start(t)
	p.expect("* dht: joined, ", 30*time.Second)
	p.send("/status")
	p.expect("reach yes: ", 5*time.Second)
	p.quit()
}

func TestDHTWatchStep(t *testing.T) {
	var w dhtWatch
	steps := []struct {
		n       int
		failed  bool
		elapsed time.Duration
		want    string
	}{
		{0, false, time.Second, ""},
		{2, false, time.Second, ""}, // still filling
		{0, true, 2 * time.Second, dhtLineUnreachable},
		{0, true, 70 * time.Second, ""}, // said once
		{3, false, 80 * time.Second, "* dht: joined, 3 nodes"},
		{9, false, 81 * time.Second, ""},
		{0, false, 99 * time.Minute, dhtLineUnreachable},
	}
	for i, s := range steps {
		if got := w.step(s.n, s.failed, s.elapsed); got != s.want {
			t.Errorf("step %d (%d nodes, failed %v) = %q, want %q", i, s.n, s.failed, got, s.want)
		}
	}
}

// Issue 8 item 10: when the port asked for is busy, the one used instead
// is said, remembered, and used again at the next start.
func TestE2EPortRemembered(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.LocalAddr().String()
	_, busyPort, _ := net.SplitHostPort(addr)
	u := newUser(t, "pia", "127.0.0.1:1")
	var first string
	for i := range 2 {
		p := startProc(t, u.name, nil, "-listen", addr, "-bootstrap", u.boot, "-dir", u.dir)
		l := p.expect("* listening on ", 10*time.Second)
		f := strings.Fields(l)
		if len(f) != 7 || f[4] != "("+busyPort || f[3] == addr {
			t.Fatalf("start %d: %q", i, l)
		}
		if i == 0 {
			first = f[3]
		} else if f[3] != first {
			t.Fatalf("second start on %s, first on %s: want the same port", f[3], first)
		}
		p.expect("* ready "+f[3], 5*time.Second)
		p.quit()
	}
}

func TestParseSavedPort(t *testing.T) {
	good := savedPort{listen: ":6881", port: 35839}
	got, err := parseSavedPort(good.format())
	if err != nil || got != good {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	for _, bad := range []string{"", ":6881", ":6881 0", ":6881 70000", ":6881 x", "a b c"} {
		if _, err := parseSavedPort([]byte(bad)); err == nil {
			t.Errorf("parseSavedPort(%q) accepted", bad)
		}
	}
}

// Issue 8 item 11: quitting in the middle of an invitation or a DHT
// command does not print "context canceled".
func TestE2EQuitQuietly(t *testing.T) {
	u := newUser(t, "quin", "127.0.0.1:1")
	p := u.start(t)
	p.send("/accept alice 482193-tumor-unicorn")
	p.expect("* accepting alice", 5*time.Second)
	p.send("/dht get_peers 0123456789abcdef0123456789abcdef01234567")
	time.Sleep(200 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait(t)
	<-p.done
	if out := p.tail(); strings.Contains(out, "context canceled") {
		t.Errorf("quitting printed context canceled:\n%s", out)
	}
}
