// The demo (`kadchat -demo`): one process, no network. It starts a loopback
// DHT of demoSwarm nodes and two users, alice and bob, with fresh keys and
// data directories. They add each other through the real line UI, find each
// other at their rendezvous infohash, shake hands, run the post-quantum
// exchange and shake hands again with its secret, exchange messages with
// receipts and rekey once, and bob quits; then, never online together
// again, they pass a message and its receipt through the DHT (SPEC.md 8).
// A trace of their datagrams shows the wire.
// The demo is its own file because it is a second program on the same parts.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const (
	demoSwarm      = 30
	demoRekeyAfter = 3 * time.Second // WireGuard's 120 s, shortened to show a rekey
	demoDropDelay  = time.Second     // dropDelay's 5 s, shortened
	demoDeadline   = 25 * time.Second
	demoStepWait   = 10 * time.Second
)

// runDemo runs the whole demo and returns when bob and alice are done.
func runDemo(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, demoDeadline)
	defer cancel()
	tmp, err := os.MkdirTemp("", "kadchat-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tr := &demoTranscript{out: out, start: time.Now(), names: map[netip.AddrPort]string{}}

	tr.say("starting a DHT of %d nodes on 127.0.0.1", demoSwarm)
	seed, stopSwarm, err := startDemoSwarm(ctx, tr)
	if err != nil {
		return err
	}
	defer stopSwarm()

	alice, err := startDemoUser(ctx, tr, "alice", filepath.Join(tmp, "alice"), seed)
	if err != nil {
		return err
	}
	defer alice.stop()
	bob, err := startDemoUser(ctx, tr, "bob", filepath.Join(tmp, "bob"), seed)
	if err != nil {
		return err
	}
	defer bob.stop()
	if err := demoScript(tr, alice, bob); err != nil {
		return err
	}
	return demoDrop(ctx, tr, seed, alice, bob)
}

// demoScript is what alice and bob type, and what they wait to see.
func demoScript(tr *demoTranscript, alice, bob *demoUser) error {
	steps := []struct {
		who  *demoUser
		line string
		wait string // a line prefix the step waits for, on who (or on other, after "other:")
	}{
		{alice, "/add bob " + bob.app.id.public().String(), "* added bob"},
		{bob, "/add alice " + alice.app.id.public().String(), "* added alice"},
		{alice, "", "* online bob"},
		{bob, "", "* online alice"},
		{alice, "/verify bob", "verify bob"},
		{bob, "/verify alice", "verify alice"},
		{alice, "/msg bob hello bob, this is alice", "* delivered bob"},
		{bob, "/msg alice hi alice! no server saw this", "* delivered alice"},
		{alice, "/msg bob let us wait for a rekey", "* delivered bob"},
	}
	for i, s := range steps {
		if i == 4 {
			tr.say("their first session was classical: it carried only an ML-KEM-768 exchange (a key in two halves, a ciphertext)")
			tr.say("the handshake after it mixed the exchange's secret as its PSK; messages go only on sessions keyed so")
		}
		if s.line != "" {
			tr.say("%s types: %s", s.who.name, shorten(s.line))
			if err := s.who.app.ui.handleLine(s.who.ctx, s.line); err != nil {
				return err
			}
		}
		if _, err := s.who.wait(s.wait, demoStepWait); err != nil {
			return err
		}
	}
	// As in WireGuard, the initiator rekeys when it sends on a session
	// older than RekeyAfterTime; so wait that long, then send.
	tr.say("waiting %v: sessions older than that rekey (120 s normally)", demoRekeyAfter)
	time.Sleep(demoRekeyAfter + 100*time.Millisecond)
	tr.armRekey()
	line := "/msg bob this one travels under fresh keys"
	tr.say("alice types: %s", line)
	if err := alice.app.ui.handleLine(alice.ctx, line); err != nil {
		return err
	}
	if err := tr.waitRekey(demoStepWait); err != nil {
		return err
	}
	if _, err := alice.wait("* delivered bob", demoStepWait); err != nil {
		return err
	}
	if _, err := bob.wait("[", demoStepWait); err != nil {
		return err
	}
	// A clean exit says goodbye inside the session, so alice sees bob
	// leave at once rather than after 80 s of silence.
	tr.say("bob types: /quit")
	if err := bob.app.ui.handleLine(bob.ctx, "/quit"); !errors.Is(err, errQuit) {
		return fmt.Errorf("demo: /quit: %v", err)
	}
	bob.app.sess.goodbye.say()
	if _, err := alice.wait("* offline bob", demoStepWait); err != nil {
		return err
	}
	tr.say("every message delivered and acknowledged; the session keys are erased")
	return nil
}

// demoDrop: bob is gone, and alice and he are never online together
// again; a message and its receipt still pass, through the DHT.
func demoDrop(ctx context.Context, tr *demoTranscript, seed netip.AddrPort, alice, bob *demoUser) error {
	bob.stop()
	tr.mu.Lock()
	tr.showDrops = true
	tr.mu.Unlock()
	line := "/msg bob are you there? this waits for you in the DHT"
	tr.say("alice types: %s", line)
	if err := alice.app.ui.handleLine(alice.ctx, line); err != nil {
		return err
	}
	if _, err := alice.wait("* dropped bob", demoStepWait); err != nil {
		return err
	}
	tr.say("alice quits; bob starts")
	alice.stop()
	b, err := startDemoUser(ctx, tr, "bob", bob.dir, seed)
	if err != nil {
		return err
	}
	defer b.stop()
	if _, err := b.wait("[", demoStepWait); err != nil {
		return err
	}
	if err := b.waitAckPut(alice.app.id.public(), demoStepWait); err != nil {
		return err
	}
	tr.say("bob left his receipt in the DHT and quits; alice starts")
	b.stop()
	a, err := startDemoUser(ctx, tr, "alice", alice.dir, seed)
	if err != nil {
		return err
	}
	defer a.stop()
	if _, err := a.wait("* delivered bob", demoStepWait); err != nil {
		return err
	}
	tr.say("done: a message and its receipt passed between two people who were never online together")
	return nil
}

// waitAckPut waits until the user has put its acknowledgement item for
// the contact: there is no line for that.
func (u *demoUser) waitAckPut(contact publicKey, d time.Duration) error {
	deadline := time.Now().Add(d)
	for !u.app.chat.dropAckPut(contact) {
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: %s put no acknowledgement within %v", u.name, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

func shorten(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// startDemoSwarm starts demoSwarm DHT nodes, each bootstrapping from the
// first, and returns the first one's address.
func startDemoSwarm(ctx context.Context, tr *demoTranscript) (netip.AddrPort, func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop := func() { cancel(); wg.Wait() }
	var seed netip.AddrPort
	for i := range demoSwarm {
		n, err := listenNode("127.0.0.1:0", nil)
		if err != nil {
			stop()
			return seed, nil, err
		}
		var boot []string
		if i == 0 {
			seed = n.LocalAddr()
		} else {
			boot = []string{seed.String()}
		}
		d, err := newDHT(n, dhtConfig{Bootstrap: boot})
		if err != nil {
			n.Close()
			stop()
			return seed, nil, err
		}
		tr.names[n.LocalAddr()] = fmt.Sprintf("dht%02d", i)
		wg.Add(2)
		go func() { defer wg.Done(); n.run(ctx) }()
		go func() { defer wg.Done(); d.maint.run(ctx) }()
	}
	return seed, stop, nil
}

// demoUser is alice or bob: a whole app whose UI output is captured.
type demoUser struct {
	name  string
	dir   string
	app   *app
	ctx   context.Context
	lines *lineWaiter
	stop  func() // idempotent
}

func startDemoUser(ctx context.Context, tr *demoTranscript, name, dir string, seed netip.AddrPort) (*demoUser, error) {
	u := &demoUser{name: name, dir: dir, lines: newLineWaiter(tr, name)}
	o := options{dir: dir, listen: "127.0.0.1:0", bootstrap: []string{seed.String()}, rekeyAfter: demoRekeyAfter, dropDelay: demoDropDelay}
	a, err := openApp(o, slog.New(slog.DiscardHandler), u.lines)
	if err != nil {
		return nil, err
	}
	u.app = a
	tr.names[a.node.LocalAddr()] = name
	a.node.trace = func(out bool, peer netip.AddrPort, b []byte) { tr.packet(name, out, peer, b) }
	ctx, cancel := context.WithCancel(ctx)
	u.ctx = ctx
	var wg sync.WaitGroup
	a.start(ctx, &wg)
	var once sync.Once
	u.stop = func() { once.Do(func() { cancel(); wg.Wait(); a.close() }) }
	tr.say("%s is %s, listening on %s", name, shorten(a.id.public().String()), a.node.LocalAddr())
	return u, nil
}

func (u *demoUser) wait(prefix string, d time.Duration) (string, error) {
	return u.lines.wait(prefix, d)
}

// lineWaiter receives a user's UI output, prints it to the transcript and
// lets the script wait for a line.
type lineWaiter struct {
	tr   *demoTranscript
	name string

	mu      sync.Mutex
	partial []byte
	lines   []string
	next    int // lines before next were consumed by wait
	changed chan struct{}
}

func newLineWaiter(tr *demoTranscript, name string) *lineWaiter {
	return &lineWaiter{tr: tr, name: name, changed: make(chan struct{})}
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		w.lines = append(w.lines, line)
		w.tr.say("%s sees: %s", w.name, line)
	}
	close(w.changed)
	w.changed = make(chan struct{})
	return len(p), nil
}

// wait returns the first unconsumed line starting with prefix.
func (w *lineWaiter) wait(prefix string, d time.Duration) (string, error) {
	deadline := time.After(d)
	for {
		w.mu.Lock()
		for i := w.next; i < len(w.lines); i++ {
			if strings.HasPrefix(w.lines[i], prefix) {
				w.next = i + 1
				l := w.lines[i]
				w.mu.Unlock()
				return l, nil
			}
		}
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			return "", fmt.Errorf("demo: %s saw no %q within %v", w.name, prefix, d)
		}
	}
}

// demoTranscript prints what happens, with the time since the start.
type demoTranscript struct {
	out   io.Writer
	start time.Time
	names map[netip.AddrPort]string // written before the users start

	mu        sync.Mutex
	rekeyed   chan struct{} // closed at the next initiation, if set
	showDrops bool          // trace BEP 44 puts and gets from now on
	krpc      map[string]int
}

func (t *demoTranscript) say(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.out, "%6.3fs  %s\n", time.Since(t.start).Seconds(), fmt.Sprintf(format, args...))
}

// packet traces one datagram of alice's or bob's. KRPC is summarised by
// method (there are many); session packets are shown one by one.
func (t *demoTranscript) packet(who string, out bool, peer netip.AddrPort, b []byte) {
	if len(b) == 0 {
		return
	}
	if b[0] == firstByteKRPC {
		t.krpcPacket(who, out, peer, b)
		return
	}
	if !out {
		return // each session packet is shown once, when sent
	}
	to := t.names[peer]
	if to == "" {
		to = peer.String()
	}
	desc := describeSessionPacket(b)
	t.say("wire: %s -> %s  %s", who, to, desc)
	if b[0] == packetInitiation {
		t.mu.Lock()
		if t.rekeyed != nil {
			close(t.rekeyed)
			t.rekeyed = nil
		}
		t.mu.Unlock()
	}
}

func (t *demoTranscript) krpcPacket(who string, out bool, peer netip.AddrPort, b []byte) {
	m, err := parseKRPC(b)
	if err != nil || m.Type != 'q' || !out {
		return
	}
	if m.Method == methodPut || m.Method == methodGet {
		t.bep44Packet(who, m)
		return
	}
	if m.Method != methodGetPeers && m.Method != methodAnnouncePeer {
		return
	}
	ih := m.Args.InfoHash.String()[:12]
	key := who + " " + m.Method.String() + " " + ih
	t.mu.Lock()
	if t.krpc == nil {
		t.krpc = map[string]int{}
	}
	t.krpc[key]++
	first := t.krpc[key] == 1
	t.mu.Unlock()
	if first {
		t.say("wire: %s -> DHT  %s %s... (rendezvous infohash; further ones not shown)", who, m.Method, ih)
	}
}

// bep44Packet shows a user's first BEP 44 put and get once the part of
// the demo about drops has begun (showDrops).
func (t *demoTranscript) bep44Packet(who string, m krpcMsg) {
	if m.Method == methodPut && len(m.Args.V) != len(dropValuePrefix)+dropItemLen {
		return // an endpoint record (SPEC.md 5.8.1), not a drop
	}
	key := "drop " + who + " " + m.Method.String()
	t.mu.Lock()
	if t.krpc == nil {
		t.krpc = map[string]int{}
	}
	t.krpc[key]++
	first := t.krpc[key] == 1 && t.showDrops
	if !t.showDrops {
		delete(t.krpc, key)
	}
	t.mu.Unlock()
	if !first {
		return
	}
	if m.Method == methodPut {
		t.say("wire: %s -> DHT  put, a %d-byte sealed item at a location only alice and bob can compute (further ones not shown)", who, len(m.Args.V))
		return
	}
	t.say("wire: %s -> DHT  get %s... (a drop location; further ones not shown)", who, m.Args.Target.String()[:12])
}

// armRekey makes waitRekey wait for the next initiation: on a live
// session, a rekey.
func (t *demoTranscript) armRekey() {
	t.mu.Lock()
	t.rekeyed = make(chan struct{})
	t.mu.Unlock()
}

func (t *demoTranscript) waitRekey(d time.Duration) error {
	t.mu.Lock()
	ch := t.rekeyed
	t.mu.Unlock()
	if ch == nil {
		return nil // already seen
	}
	select {
	case <-ch:
		return nil
	case <-time.After(d):
		return errors.New("demo: no rekey")
	}
}

// sizeHint says what a transport packet of n bytes carries, where its
// size alone tells (SPEC.md 4.6, 4.12).
func sizeHint(n int) string {
	switch n {
	case transportMinSize:
		return " (a keepalive)"
	case transportMinSize + pqKeyFrameLen:
		return " (by its size: half of an ML-KEM-768 key)"
	case transportMinSize + pqCipherFrameLen:
		return " (by its size: an ML-KEM-768 ciphertext)"
	}
	return ""
}

// describeSessionPacket names a session packet and its public fields, as a
// network observer sees them (SPEC.md section 4).
func describeSessionPacket(b []byte) string {
	switch b[0] {
	case packetInitiation:
		if m, err := parseInitiation(b); err == nil {
			return fmt.Sprintf("handshake initiation, %d bytes, sender index %08x (-> e, es, s, ss)", len(b), m.sender)
		}
	case packetResponse:
		if m, err := parseResponse(b); err == nil {
			return fmt.Sprintf("handshake response, %d bytes, index %08x -> %08x (<- e, ee, se, psk)", len(b), m.sender, m.receiver)
		}
	case packetCookieReply:
		return fmt.Sprintf("cookie reply, %d bytes", len(b))
	case packetTransport:
		if m, err := parseTransport(b); err == nil {
			return fmt.Sprintf("transport, %d bytes, receiver %08x, counter %d%s", len(b), m.receiver, m.counter, sizeHint(len(b)))
		}
	}
	return fmt.Sprintf("malformed, %d bytes", len(b))
}
