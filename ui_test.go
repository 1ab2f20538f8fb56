package main

import (
	"fmt"
	"net/netip"
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
		{"/Contacts", "contact bob waiting"},
		{"/nope", `error ui: unknown command "/nope"`},
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

// Issue 8 item 8: a contact who has not added us shows as waiting; a clean
// exit says goodbye, so the other side shows it offline at once (not after
// 80 s of silence) with the last packet's time as last seen; a contact who
// restarts at once, on the same address, comes back online, and what was
// queued for it meanwhile is delivered; SIGTERM says goodbye as /quit does.
func TestE2EGoodbye(t *testing.T) {
	boot := testSwarm(t, 8)
	alice, bob := newUser(t, "alice", boot), newUser(t, "bob", boot)
	pa, pb := alice.start(t), bob.start(t)
	pa.send("/add bob %s", bob.key)
	pa.expect("* added bob", 5*time.Second)
	pa.send("/contacts")
	want := "contact bob waiting - last-seen never outbox 0 key " + bob.key + " (waiting for bob to add you, or for you both to be online at once)"
	if got := pa.expect("contact bob ", 5*time.Second); got != want {
		t.Errorf("before bob adds alice:\n got %q\nwant %q", got, want)
	}
	pb.send("/add alice %s", alice.key)
	pa.expect("* online bob", e2eWait)
	pb.expect("* online alice", e2eWait)
	pb.send("/status")
	bobAddr := strings.Fields(pb.expect("status ", 5*time.Second))[3]

	quitAt := time.Now()
	pb.send("/quit")
	pa.expect("* offline bob", 3*time.Second)
	t.Logf("alice saw bob offline %v after his /quit", time.Since(quitAt))
	pb.wait(t)
	pa.send("/contacts")
	f := strings.Fields(pa.expect("contact bob ", 5*time.Second))
	seen, err := time.Parse(time.RFC3339, f[5])
	if len(f) != 10 || f[2] != "offline" || err != nil || seen.Before(quitAt.Truncate(time.Second)) || seen.After(time.Now()) {
		t.Errorf("after bob quit: %q; want offline, last seen at his goodbye (%v)", f, quitAt)
	}

	pa.send("/msg bob sent while you restarted")
	pa.expect("* queued bob", 5*time.Second)
	restartAt := time.Now()
	pb = startProc(t, bob.name, nil, "-listen", bobAddr, "-bootstrap", bob.boot, "-dir", bob.dir)
	pb.expect("* ready "+bobAddr, 10*time.Second)
	pb.expectMessage("<alice> sent while you restarted", e2eWait)
	pa.expect("* delivered bob", e2eWait)
	t.Logf("bob back and the queued message delivered %v after his restart", time.Since(restartAt))

	// A signal is a clean exit too: bob still says goodbye.
	if err := pb.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	pa.expect("* offline bob", 3*time.Second)
	pb.wait(t)
	pa.quit()
}

func TestContactLine(t *testing.T) {
	k := chatKey(2)
	seen := time.Date(2026, 11, 25, 12, 0, 30, 0, time.UTC)
	addr := netip.MustParseAddrPort("192.0.2.1:6881")
	tests := []struct {
		in   contactInfo
		want string
	}{
		{contactInfo{Name: "bob", Key: k, Online: true, Addr: addr, LastSeen: seen, Outbox: 1},
			"contact bob online 192.0.2.1:6881 last-seen 2026-11-25T12:00:30Z outbox 1 key " + k.String()},
		{contactInfo{Name: "bob", Key: k, LastSeen: seen},
			"contact bob offline - last-seen 2026-11-25T12:00:30Z outbox 0 key " + k.String()},
		{contactInfo{Name: "bob", Key: k, Outbox: 2},
			"contact bob waiting - last-seen never outbox 2 key " + k.String() + " (waiting for bob to add you, or for you both to be online at once)"},
	}
	for _, tc := range tests {
		if got := contactLine(tc.in, netip.AddrPort.String); got != tc.want {
			t.Errorf("contactLine(%+v) =\n %q\nwant %q", tc.in, got, tc.want)
		}
	}
}
