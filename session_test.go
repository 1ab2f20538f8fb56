package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// Session tests: an in-process network with an injected clock for the fast
// deterministic ones, real UDP sockets on 127.0.0.1 for the end-to-end ones.

type fakePacket struct {
	from, to netip.AddrPort
	b        []byte
}

// fakeNet queues datagrams; pump delivers them in order. filter, if set,
// sees each datagram and may drop it (return false).
type fakeNet struct {
	mu     sync.Mutex
	queue  []fakePacket
	nodes  map[netip.AddrPort]*testPeer
	filter func(p fakePacket) bool
	sent   int
}

func (n *fakeNet) sendFrom(from netip.AddrPort) func(netip.AddrPort, []byte) error {
	return func(to netip.AddrPort, b []byte) error {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.sent++
		n.queue = append(n.queue, fakePacket{from, to, bytes.Clone(b)})
		return nil
	}
}

// take removes and returns the queued datagrams.
func (n *fakeNet) take() []fakePacket {
	n.mu.Lock()
	defer n.mu.Unlock()
	q := n.queue
	n.queue = nil
	return q
}

func (n *fakeNet) deliver(p fakePacket) {
	if n.filter != nil && !n.filter(p) {
		return
	}
	if dst := n.nodes[p.to]; dst != nil {
		dst.m.handlePacket(p.from, p.b)
	}
}

// pump delivers until nothing is queued (bounded).
func (n *fakeNet) pump(t testing.TB) {
	t.Helper()
	for range 1000 {
		q := n.take()
		if len(q) == 0 {
			return
		}
		for _, p := range q {
			n.deliver(p)
		}
	}
	t.Fatal("fakeNet: pump did not settle")
}

type testPeer struct {
	id   *identity
	m    *sessionManager
	addr netip.AddrPort

	mu          sync.Mutex
	got         []string
	established int
}

// deliver records a payload; keepalives (empty) are not messages.
func (p *testPeer) deliver(b []byte) {
	if len(b) == 0 {
		return
	}
	p.mu.Lock()
	p.got = append(p.got, string(b))
	p.mu.Unlock()
}

func (p *testPeer) delivered() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.got)
}

func testIdentity(t testing.TB, seed byte) *identity {
	keys, err := newDHKeys(seqBytes(seed, 32))
	if err != nil {
		t.Fatal(err)
	}
	return &identity{keys: keys}
}

// newTestPeer makes a manager with identity seed on the fake network.
func newTestPeer(t testing.TB, n *fakeNet, clock *fakeClock, seed byte, port uint16, tweak func(*sessionConfig)) *testPeer {
	p := &testPeer{id: testIdentity(t, seed), addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}
	cfg := sessionConfig{
		Identity:    p.id,
		Send:        n.sendFrom(p.addr),
		Deliver:     func(_ publicKey, _ netip.AddrPort, b []byte) { p.deliver(b) },
		Established: func(publicKey, netip.AddrPort) { p.mu.Lock(); p.established++; p.mu.Unlock() },
		Now:         clock.now,
		Rand:        mrand.NewChaCha8([32]byte{seed}),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	p.m = newSessionManager(cfg)
	if n.nodes == nil {
		n.nodes = map[netip.AddrPort]*testPeer{}
	}
	n.nodes[p.addr] = p
	return p
}

// befriend makes a and b each other's contacts.
func befriend(a, b *testPeer) {
	a.addContact(b)
	b.addContact(a)
}

// addContact makes other a contact of p (one way).
func (p *testPeer) addContact(other *testPeer) {
	if err := p.m.addContact(other.id.public()); err != nil {
		panic(err)
	}
}

// newTestPair returns two contacts; a's key is lower than b's, so a wins a
// simultaneous open.
func newTestPair(t testing.TB, n *fakeNet, clock *fakeClock, tweak func(*sessionConfig)) (a, b *testPeer) {
	a = newTestPeer(t, n, clock, 1, 1001, tweak)
	b = newTestPeer(t, n, clock, 2, 1002, tweak)
	if bytes.Compare(a.id.keys.pub[:], b.id.keys.pub[:]) > 0 {
		a, b = b, a
	}
	befriend(a, b)
	return a, b
}

// sessionCount is how many keypairs and pending handshakes m holds for k.
func sessionCount(m *sessionManager, k publicKey) (current, previous, next, pending int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[k]
	if p == nil {
		return
	}
	b2i := func(x bool) int {
		if x {
			return 1
		}
		return 0
	}
	return b2i(p.keypairs.current != nil), b2i(p.keypairs.previous != nil), b2i(p.keypairs.next != nil), b2i(p.inits.pending != nil)
}

func TestSessionHandshakeAndTransport(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	if err := a.m.send(b.id.public(), []byte("hello")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if !a.m.hasSession(b.id.public()) || !b.m.hasSession(a.id.public()) {
		t.Fatal("no session after handshake")
	}
	if err := b.m.send(a.id.public(), []byte("hi back")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if got := b.delivered(); !slices.Equal(got, []string{"hello"}) {
		t.Errorf("b got %q", got)
	}
	if got := a.delivered(); !slices.Equal(got, []string{"hi back"}) {
		t.Errorf("a got %q", got)
	}
	if a.established != 1 || b.established != 1 {
		t.Errorf("established a=%d b=%d, want 1 1", a.established, b.established)
	}
	if err := a.m.send(b.id.public(), make([]byte, maxTransportPayload+1)); !errors.Is(err, errPayloadTooBig) {
		t.Errorf("oversized send: %v", err)
	}
	if err := a.m.send(publicKey{9}, []byte("x")); !errors.Is(err, errNoEndpoint) {
		t.Errorf("send to unknown: %v", err)
	}
}

// firstOfType removes and returns the first queued datagram of type typ.
func firstOfType(t testing.TB, n *fakeNet, typ byte) fakePacket {
	t.Helper()
	q := n.take()
	for i, p := range q {
		if p.b[0] == typ {
			n.mu.Lock()
			n.queue = append(append(q[:i:i], q[i+1:]...), n.queue...)
			n.mu.Unlock()
			return p
		}
	}
	t.Fatalf("no packet of type %d queued", typ)
	return fakePacket{}
}

func TestStrangerGetsNoReply(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	c := newTestPeer(t, &n, clock, 3, 1003, nil)
	c.addContact(b) // c knows b, b does not know c
	c.m.setEndpoint(b.id.public(), b.addr)
	init := firstOfType(t, &n, packetInitiation)
	dh := b.m.dh.n.Load()
	n.deliver(init)
	if q := n.take(); len(q) != 0 {
		t.Errorf("b answered a stranger: %d packets", len(q))
	}
	if b.m.stats.stranger.Load() != 1 || b.m.dh.n.Load() != dh {
		t.Errorf("strangers %d, dh ops %d", b.m.stats.stranger.Load(), b.m.dh.n.Load()-dh)
	}
	_ = a
}

// establish makes a session from a to b and returns after both confirm it.
func establish(t testing.TB, n *fakeNet, a, b *testPeer) {
	t.Helper()
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	if !a.m.hasSession(b.id.public()) || !b.m.hasSession(a.id.public()) {
		t.Fatal("no session")
	}
}

func TestSimultaneousOpen(t *testing.T) {
	for _, order := range []string{"lower first", "higher first", "interleaved"} {
		t.Run(order, func(t *testing.T) {
			var n fakeNet
			a, b := newTestPair(t, &n, newFakeClock(), nil) // a is lower
			a.m.setEndpoint(b.id.public(), b.addr)
			b.m.setEndpoint(a.id.public(), a.addr)
			a.m.send(b.id.public(), []byte("from a"))
			b.m.send(a.id.public(), []byte("from b"))
			q := n.take()
			switch order {
			case "higher first":
				slices.Reverse(q)
			case "interleaved":
				n.deliver(q[0])
				q = append(n.take(), q[1:]...)
			}
			for _, p := range q {
				n.deliver(p)
			}
			n.pump(t)
			for _, x := range []struct{ me, other *testPeer }{{a, b}, {b, a}} {
				wantOneSession(t, x.me.m, x.other.id.public())
			}
			ak, bk := a.m.peers[b.id.public()].keypairs.current, b.m.peers[a.id.public()].keypairs.current
			if ak.localIndex != bk.remoteIndex || bk.localIndex != ak.remoteIndex || !ak.initiator || bk.initiator {
				t.Error("the two sides hold different sessions, or the lower key is not the initiator")
			}
			if !slices.Equal(a.delivered(), []string{"from b"}) || !slices.Equal(b.delivered(), []string{"from a"}) {
				t.Errorf("data lost: a got %q, b got %q", a.delivered(), b.delivered())
			}
		})
	}
}

// udpPeer is a session manager on a real UDP socket on 127.0.0.1.
type udpPeer struct {
	*testPeer
	conn *net.UDPConn
	stop func() // ends its goroutines, as a quitting program does; idempotent
}

func newUDPPeer(t testing.TB, seed byte, tweak func(*sessionConfig)) *udpPeer {
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p := &udpPeer{testPeer: &testPeer{id: testIdentity(t, seed)}, conn: conn}
	p.addr = conn.LocalAddr().(*net.UDPAddr).AddrPort()
	cfg := sessionConfig{
		Identity: p.id,
		Send: func(to netip.AddrPort, b []byte) error {
			_, err := conn.WriteToUDPAddrPort(b, to)
			return err
		},
		Deliver:      func(_ publicKey, _ netip.AddrPort, b []byte) { p.deliver(b) },
		Established:  func(publicKey, netip.AddrPort) { p.mu.Lock(); p.established++; p.mu.Unlock() },
		TickInterval: 10 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	p.m = newSessionManager(cfg)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.m.run(ctx) }()
	go func() {
		defer wg.Done()
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p.m.handlePacket(netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), buf[:n])
		}
	}()
	p.stop = sync.OnceFunc(func() { cancel(); conn.Close(); wg.Wait() })
	t.Cleanup(p.stop)
	return p
}

// waitFor polls cond for up to 2 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func udpPair(t *testing.T, tweak func(*sessionConfig)) (a, b *udpPeer) {
	a, b = newUDPPeer(t, 1, tweak), newUDPPeer(t, 2, tweak)
	befriend(a.testPeer, b.testPeer)
	return a, b
}

func TestSessionsOverUDP(t *testing.T) {
	a, b := udpPair(t, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	b.m.setEndpoint(a.id.public(), a.addr) // both open at once
	var want []string
	for i := range 50 {
		want = append(want, fmt.Sprint("msg ", i))
		if err := a.m.send(b.id.public(), []byte(want[i])); err != nil {
			t.Fatal(err)
		}
		if err := b.m.send(a.id.public(), []byte(want[i])); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "delivery", func() bool { return len(a.delivered()) == 50 && len(b.delivered()) == 50 })
	for _, p := range []*udpPeer{a, b} {
		got := p.delivered()
		slices.Sort(got)
		sorted := slices.Clone(want)
		slices.Sort(sorted)
		if !slices.Equal(got, sorted) {
			t.Errorf("delivered %q", got)
		}
	}
	for _, x := range [][2]*udpPeer{{a, b}, {b, a}} {
		wantOneSession(t, x[0].m, x[1].id.public())
	}
}

// wantOneSession checks that m holds one session with k, keyed with a
// post-quantum PSK, and nothing pending; the classical first session it
// replaced (SPEC.md 4.12) may still be there, to receive.
func wantOneSession(t *testing.T, m *sessionManager, k publicKey) {
	t.Helper()
	c, p, nx, hs := sessionCount(m, k)
	if c != 1 || p > 1 || nx != 0 || hs != 0 {
		t.Errorf("sessions: current %d previous %d next %d pending %d, want one current (and a previous)", c, p, nx, hs)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.peers[k].keypairs.current.pqKeyed() {
		t.Error("the current session is classical")
	}
}

// ---------------------------------------------------------------------------
// Fuzzing: strict parsers (whatever parses re-encodes to the same bytes,
// errors leave zero values) and whole-packet processing never panics nor
// delivers anything it should not.

// fuzzPair is a pair of managers with a's initiation to b pending, plus
// the datagrams of one complete exchange, used as seeds.
func fuzzPair(t testing.TB) (n *fakeNet, a, b *testPeer, seeds [][]byte) {
	n = &fakeNet{}
	clock := newFakeClock()
	a, b = newTestPair(t, n, clock, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	for _, p := range n.take() {
		seeds = append(seeds, p.b)
		n.deliver(p)
	}
	for _, p := range n.take() {
		seeds = append(seeds, p.b)
	}
	return n, a, b, seeds
}

func FuzzTransport(f *testing.F) {
	n := &fakeNet{}
	a, b := newTestPair(f, n, newFakeClock(), nil)
	establish(f, n, a, b)
	sealed := map[string]string{}
	for i := range 4 {
		msg := fmt.Sprint("payload ", i)
		a.m.send(b.id.public(), []byte(msg))
		for _, p := range n.take() {
			sealed[string(p.b)] = msg
			f.Add(p.b)
		}
	}
	f.Add([]byte{packetTransport, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseTransport(data)
		switch {
		case err == nil && (len(data) < transportMinSize || len(data) > maxTransportSize):
			t.Fatalf("parseTransport accepted %d bytes", len(data))
		case err != nil && (m.receiver != 0 || m.counter != 0 || m.data != nil):
			t.Fatal("parseTransport: error with a non-zero result")
		}
		if len(sealed) != 4 {
			t.Fatal("no session to fuzz")
		}
		before := len(b.delivered())
		b.m.handlePacket(a.addr, data)
		got := b.delivered()
		if len(got) > before {
			if want, ok := sealed[string(data)]; !ok || got[len(got)-1] != want {
				t.Fatalf("delivered %q from a packet a never sealed", got[len(got)-1])
			}
		}
		n.take()
	})
}

func TestRoamingUpdatesEndpoint(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil)
	establish(t, &n, a, b)
	var seen netip.AddrPort
	b.m.cfg.Established = func(_ publicKey, addr netip.AddrPort) { seen = addr }
	a.m.send(b.id.public(), []byte("from elsewhere"))
	moved := netip.MustParseAddrPort("127.0.0.9:4000")
	for _, p := range n.take() {
		b.m.handlePacket(moved, p.b)
	}
	if seen != moved || b.m.peers[a.id.public()].addrs.endpoint != moved {
		t.Errorf("after roaming: Established(%v), endpoint %v; want %v", seen, b.m.peers[a.id.public()].addrs.endpoint, moved)
	}
	// A forged packet from yet another address does not move it.
	b.m.handlePacket(netip.MustParseAddrPort("127.0.0.8:1"), append([]byte{packetTransport, 0, 0, 0}, make([]byte, 40)...))
	if b.m.peers[a.id.public()].addrs.endpoint != moved {
		t.Error("an unauthenticated packet moved the endpoint")
	}
}

func TestForgetErasesSessions(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil)
	establish(t, &n, a, b)
	kp := b.m.peers[a.id.public()].keypairs.current
	b.m.forget(a.id.public())
	if b.m.hasSession(a.id.public()) || !kp.wiped {
		t.Fatal("forget kept the session")
	}
	if _, err := kp.seal(nil, []byte("x")); err == nil {
		t.Error("a wiped keypair still seals")
	}
	a.m.send(b.id.public(), []byte("still there?"))
	n.pump(t)
	if len(b.delivered()) != 0 {
		t.Error("b delivered a message from a forgotten contact")
	}
	a.m.forget(b.id.public())
	a.addContact(b) // a still has b, b removed a
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	if a.m.hasSession(b.id.public()) || b.m.stats.stranger.Load() != 1 {
		t.Errorf("handshake with a removed contact: session %v, strangers %d", a.m.hasSession(b.id.public()), b.m.stats.stranger.Load())
	}
}

// TestSimultaneousOpenStaleAddress: the lower side keeps its initiation
// but sent it to an old address; the higher side's initiation tells it
// where the peer is, and the session comes up without waiting.
func TestSimultaneousOpenStaleAddress(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil)                        // a is lower
	a.m.setEndpoint(b.id.public(), netip.MustParseAddrPort("127.0.0.1:9")) // nobody there
	b.m.setEndpoint(a.id.public(), a.addr)
	b.m.send(a.id.public(), []byte("from b"))
	n.pump(t)
	if !a.m.hasSession(b.id.public()) || !b.m.hasSession(a.id.public()) {
		t.Fatal("no session")
	}
	if !slices.Equal(a.delivered(), []string{"from b"}) {
		t.Errorf("a got %q", a.delivered())
	}
	if !a.m.peers[b.id.public()].keypairs.current.initiator {
		t.Error("the lower key is not the initiator")
	}
}

// The rendezvous may report an old address before the live one: the same
// initiation goes to both, and the live one answers at once, without
// waiting RekeyTimeout for a retransmission.
func TestSessionCandidateAddresses(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	stale := netip.MustParseAddrPort("127.0.0.1:9")
	a.m.setEndpoint(b.id.public(), stale)
	a.m.setEndpoint(b.id.public(), b.addr)
	if err := a.m.send(b.id.public(), []byte("hello")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if !a.m.hasSession(b.id.public()) {
		t.Fatal("no session: the live candidate was not tried")
	}
	if got := b.delivered(); !slices.Equal(got, []string{"hello"}) {
		t.Errorf("b got %q", got)
	}
	// With a live session, what the DHT says no longer moves it.
	a.m.setEndpoint(b.id.public(), stale)
	if err := a.m.send(b.id.public(), []byte("still here")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if got := b.delivered(); !slices.Equal(got, []string{"hello", "still here"}) {
		t.Errorf("b got %q after a stale setEndpoint", got)
	}
}

// A contact removed while a rendezvous lookup ran gets no initiation.
func TestSetEndpointIgnoresNonContact(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	a.m.forget(b.id.public())
	a.m.setEndpoint(b.id.public(), b.addr)
	if q := n.take(); len(q) != 0 {
		t.Fatalf("sent %d datagrams to a removed contact", len(q))
	}
}

// hasSession reports whether peer has a confirmed, unexpired session that
// may carry the layer above's payloads (SPEC.md 4.12).
func (m *sessionManager) hasSession(peerKey publicKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[peerKey]
	return p != nil && p.mayCarryChat(p.keypairs.usable(m.cfg.Now(), m.cfg.RejectAfterTime))
}

// endedLog records Ended callbacks with their last-seen times.
type endedLog struct {
	mu   sync.Mutex
	seen []time.Time
}

func (l *endedLog) ended(_ publicKey, seen time.Time) {
	l.mu.Lock()
	l.seen = append(l.seen, seen)
	l.mu.Unlock()
}

func (l *endedLog) times() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

// The goodbye (SPEC.md 4.6): the quitting side sends it twice on its live
// session and then does nothing at all; the other side ends the session at
// once, with the goodbye's time as last seen, keeps what it queued, and
// takes neither the second copy nor a replay.
func TestGoodbye(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	var log endedLog
	dirs := newPQDirs(t) // a restarts below: its post-quantum secret must outlive it
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) { c.Ended = log.ended; dirs.tweak(c) })
	establish(t, &n, a, b)
	clock.advance(10 * time.Second)
	a.m.goodbye.say()
	byes := n.take()
	if len(byes) != goodbyeCopies {
		t.Fatalf("goodbye.say sent %d datagrams, want %d", len(byes), goodbyeCopies)
	}
	var first uint64
	for i, p := range byes {
		m, err := parseTransport(p.b)
		if i == 0 {
			first = m.counter
		}
		if err != nil || len(p.b) != transportMinSize+goodbyeLen || p.to != b.addr || m.counter != first+uint64(i) {
			t.Fatalf("goodbye %d: %d bytes to %v, counter %d, %v", i, len(p.b), p.to, m.counter, err)
		}
	}
	if c, prev, next, pending := sessionCount(a.m, b.id.public()); c+prev+next+pending != 0 {
		t.Errorf("a kept keys after its goodbye: %d %d %d %d", c, prev, next, pending)
	}

	clock.advance(time.Second)
	byeAt := clock.now()
	n.deliver(byes[0])
	if got := log.times(); len(got) != 1 || !got[0].Equal(byeAt) {
		t.Fatalf("b's Ended calls %v, want one at the goodbye's time %v", got, byeAt)
	}
	if c, prev, next, pending := sessionCount(b.m, a.id.public()); c+prev+next+pending != 0 {
		t.Errorf("b kept keys after the goodbye: %d %d %d %d", c, prev, next, pending)
	}
	unknown := b.m.stats.unknownIndex.Load()
	n.deliver(byes[1])
	n.deliver(byes[0]) // a replay
	if got := log.times(); len(got) != 1 || b.m.stats.goodbyes.Load() != 1 || b.m.stats.unknownIndex.Load() != unknown+2 {
		t.Errorf("second copy and replay: Ended %d times, goodbyes %d, unknown index +%d; want 1, 1, +2",
			len(got), b.m.stats.goodbyes.Load(), b.m.stats.unknownIndex.Load()-unknown)
	}
	if len(b.delivered()) != 0 {
		t.Errorf("the goodbye reached the layer above: %q", b.delivered())
	}

	// b's next message starts a new handshake; a, stopping, answers
	// nothing and starts nothing, and b's message stays queued.
	if err := b.m.send(a.id.public(), []byte("are you there?")); err != nil {
		t.Fatal(err)
	}
	if err := a.m.send(b.id.public(), []byte("x")); !errors.Is(err, errSessionsClosed) {
		t.Errorf("send after goodbye: %v, want errSessionsClosed", err)
	}
	a.m.setEndpoint(b.id.public(), b.addr)
	clock.advance(defaultKeepalive) // a keepalive would be due, were a not closed
	a.m.timers.tick()
	for _, p := range n.take() {
		if p.from == a.addr {
			t.Fatalf("a sent a type %d packet after its goodbye", p.b[0])
		}
		n.deliver(p)
	}
	if q := n.take(); len(q) != 0 {
		t.Fatalf("a answered b's initiation after its goodbye: %d packets", len(q))
	}

	// a runs again: the same key, the same address, a fresh manager. b's
	// next resend reaches it and the queued message goes out.
	a2 := newTestPeer(t, &n, clock, seedOf(t, a), a.addr.Port(), dirs.tweak)
	befriend(a2, b)
	clock.advance(defaultRekeyTimeout)
	b.m.timers.tick()
	n.pump(t)
	if got := a2.delivered(); !slices.Equal(got, []string{"are you there?"}) {
		t.Errorf("after a restarted it got %q", got)
	}
}

// seedOf is the seed newTestPair gave p's identity.
func seedOf(t *testing.T, p *testPeer) byte {
	for seed := byte(1); seed <= 2; seed++ {
		if testIdentity(t, seed).public() == p.id.public() {
			return seed
		}
	}
	t.Fatal("not a newTestPair identity")
	return 0
}

// A session-layer payload other than the goodbye is dropped after it
// authenticated: the session lives on and nothing reaches the chat.
func TestSessionControlUnknown(t *testing.T) {
	var n fakeNet
	var log endedLog
	a, b := newTestPair(t, &n, newFakeClock(), func(c *sessionConfig) { c.Ended = log.ended })
	establish(t, &n, a, b)
	kp := a.m.peers[b.id.public()].keypairs.current
	for _, pt := range [][]byte{{sessionControl, 0}, {sessionControl, 3, 2, 1}} {
		pkt, err := kp.seal(nil, pt)
		if err != nil {
			t.Fatal(err)
		}
		b.m.handlePacket(a.addr, pkt)
	}
	if len(log.times()) != 0 || b.m.stats.controlDrops.Load() != 2 || len(b.delivered()) != 0 || !b.m.hasSession(a.id.public()) {
		t.Errorf("unknown control payloads: Ended %d, dropped %d, delivered %q, session %v",
			len(log.times()), b.m.stats.controlDrops.Load(), b.delivered(), b.m.hasSession(a.id.public()))
	}
}
