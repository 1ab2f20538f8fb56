package main

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// punchDHT is a DHT that only stores mutable items, shared by the sides.
type punchDHT struct {
	mu    sync.Mutex
	items map[[32]byte]punchItem
	puts  int
	// failPuts: this many puts fail next (no node stored them).
	failPuts int
}

type punchItem struct {
	seq int64
	v   []byte
}

func (d *punchDHT) put(_ context.Context, seed [32]byte, seq int64, v []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := endpointItemKey(seed)
	if d.failPuts > 0 {
		d.failPuts--
		return errors.New("no node stored it")
	}
	if old, ok := d.items[k]; ok && old.seq >= seq {
		return errors.New("302")
	}
	d.items[k] = punchItem{seq, v}
	d.puts++
	return nil
}

func (d *punchDHT) get(_ context.Context, k [32]byte, _ bool) (int64, []byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	it, ok := d.items[k]
	if !ok {
		return 0, nil, errNotFound
	}
	return it.seq, it.v, nil
}

// punchSide is one user: its puncher and what it sent.
type punchSide struct {
	t     *testing.T
	id    *identity
	p     *puncher
	clock *fakeClock

	mu      sync.Mutex
	view    localView
	events  []string // "open ADDR", "connect ADDR", "forget", in order
	openTTL int
}

func (s *punchSide) record(e string) {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
}

func (s *punchSide) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.events
	s.events = nil
	return out
}

func newPunchSide(t *testing.T, d *punchDHT, clock *fakeClock, seed byte, view localView) *punchSide {
	s := &punchSide{t: t, id: testIdentity(t, seed), clock: clock, view: view}
	s.p = newPuncher(punchConfig{
		Self:         s.id.public(),
		StaticSecret: s.id.staticSecret,
		Put:          d.put,
		Get:          d.get,
		Open: func(to netip.AddrPort, ttl int) error {
			s.mu.Lock()
			s.openTTL = ttl
			s.mu.Unlock()
			s.record("open " + to.String())
			return nil
		},
		Connect: func(_ publicKey, a netip.AddrPort) { s.record("connect " + a.String()) },
		Forget:  func(publicKey) { s.record("forget") },
		Local:   func() localView { s.mu.Lock(); defer s.mu.Unlock(); return s.view },
		Now:     clock.now,
		Rand:    rand.Reader,
	})
	return s
}

// tick runs one tick and waits for the DHT operations it started.
func (s *punchSide) tick() {
	s.p.tick(context.Background())
	s.p.wg.Wait()
}

// natView is a host at lan behind a port-preserving NAT at ext.
func natView(lan, ext string) localView {
	l := netip.MustParseAddr(lan)
	return localView{Hosts: []netip.Prefix{netip.PrefixFrom(l, 24)}, Port: 6881,
		External: netip.AddrPortFrom(netip.MustParseAddr(ext), 6881), Behaviour: natPreserving}
}

// step advances both sides by one punch tick, n times.
func stepBoth(clock *fakeClock, n int, sides ...*punchSide) {
	for range n {
		clock.advance(punchTick)
		for _, s := range sides {
			s.tick()
		}
	}
}

// TestPunchBothBehindNAT: each side opens toward the other's reflexive
// address before anything else goes there, and hands it to the session
// only once the other's record acks its nonce.
func TestPunchBothBehindNAT(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	a := newPunchSide(t, d, clock, 1, natView("192.168.1.10", "203.0.113.1"))
	b := newPunchSide(t, d, clock, 2, natView("192.168.1.10", "203.0.113.2"))
	a.p.announced(b.id.public())
	b.p.announced(a.id.public())
	a.p.lookedUp(b.id.public(), nil)
	b.p.lookedUp(a.id.public(), nil)
	// A rendezvous address behind a NAT waits for the punch.
	a.p.found(b.id.public(), netip.MustParseAddrPort("203.0.113.2:6881"))
	var evA, evB []string
	for range 40 {
		stepBoth(clock, 1, a, b)
		evA, evB = append(evA, a.take()...), append(evB, b.take()...)
	}
	for _, tc := range []struct {
		name   string
		ev     []string
		remote string
	}{{"a", evA, "203.0.113.2:6881"}, {"b", evB, "203.0.113.1:6881"}} {
		open := slices.Index(tc.ev, "open "+tc.remote)
		conn := slices.Index(tc.ev, "connect "+tc.remote)
		if open < 0 || conn < 0 || conn < open {
			t.Errorf("%s: events %q: want an opening to %s, then a connect", tc.name, tc.ev, tc.remote)
		}
		if slices.Contains(tc.ev, "connect 192.168.1.10:6881") {
			t.Errorf("%s connected to its own LAN address: %q", tc.name, tc.ev)
		}
	}
	if a.openTTL != defaultPunchTTL {
		t.Errorf("opening TTL %d, want %d", a.openTTL, defaultPunchTTL)
	}
	// Once the session is up nothing more is sent, and no records written.
	a.p.online(b.id.public(), netip.MustParseAddrPort("203.0.113.2:6881"))
	b.p.online(a.id.public(), netip.MustParseAddrPort("203.0.113.1:6881"))
	puts := d.puts
	stepBoth(clock, 200, a, b)
	if ev := append(a.take(), b.take()...); len(ev) != 0 || d.puts != puts {
		t.Errorf("online: sent %q and wrote %d records", ev, d.puts-puts)
	}
}

// TestPunchDirect: a contact in the same home and a public contact are
// tried at once, without opening packets; an IPv6 address gets an opening
// packet and, v6OpenLead later, the initiation.
func TestPunchDirect(t *testing.T) {
	for _, tc := range []struct {
		name       string
		va, vb     localView
		want       string
		wantOpened bool
	}{
		{"same NAT", natView("192.168.1.10", "203.0.113.1"), natView("192.168.1.11", "203.0.113.1"), "connect 192.168.1.11:6881", false},
		{"public contact", natView("192.168.1.10", "203.0.113.1"), localView{
			Hosts: []netip.Prefix{netip.MustParsePrefix("203.0.113.9/30")}, Port: 6881,
			External: netip.MustParseAddrPort("203.0.113.9:6881"), Behaviour: natPublic}, "connect 203.0.113.9:6881", false},
		{"ipv6", natView("192.168.1.10", "203.0.113.1"), localView{
			Hosts: []netip.Prefix{netip.MustParsePrefix("2001:db8:300:2::10/64")}, Port: 6881,
			External: netip.MustParseAddrPort("[2001:db8:300:2::10]:6881")}, "connect [2001:db8:300:2::10]:6881", true},
	} {
		d := &punchDHT{items: map[[32]byte]punchItem{}}
		clock := newFakeClock()
		a := newPunchSide(t, d, clock, 1, tc.va)
		b := newPunchSide(t, d, clock, 2, tc.vb)
		b.p.announced(a.id.public())
		stepBoth(clock, 1, b) // b's record is out
		a.p.lookedUp(b.id.public(), nil)
		stepBoth(clock, 1, a)
		first := a.take()
		stepBoth(clock, int(v6OpenLead/punchTick)+1, a)
		ev := append(first, a.take()...)
		conn := slices.Index(ev, tc.want)
		if conn < 0 || !tc.wantOpened && !slices.Contains(first, tc.want) {
			t.Errorf("%s: a's events %q, want %q at once", tc.name, ev, tc.want)
		}
		open := slices.IndexFunc(ev, func(e string) bool { return e[:4] == "open" })
		if (open >= 0) != tc.wantOpened || tc.wantOpened && (open > conn || slices.Contains(first, tc.want)) {
			t.Errorf("%s: events %q: opening packet first %v", tc.name, ev, tc.wantOpened)
		}
	}
}

// TestPunchFound: the rendezvous' addresses go to the session at once
// unless they lie behind a NAT.
func TestPunchFound(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	a := newPunchSide(t, d, clock, 1, natView("192.168.1.10", "203.0.113.1"))
	k := testIdentity(t, 2).public()
	for addr, want := range map[string]bool{
		"127.0.0.1:7000":     true,
		"192.168.5.5:6881":   true,
		"[2001:db8::1]:6881": true,
		"203.0.113.2:6881":   false,
	} {
		a.p.found(k, netip.MustParseAddrPort(addr))
		if got := slices.Contains(a.take(), "connect "+addr); got != want {
			t.Errorf("found(%s): connected %v, want %v", addr, got, want)
		}
	}
	// Public ourselves: nothing is gated.
	a.view = localView{Hosts: []netip.Prefix{netip.MustParsePrefix("203.0.113.1/30")}, Port: 6881,
		External: netip.MustParseAddrPort("203.0.113.1:6881"), Behaviour: natPublic}
	a.p.found(k, netip.MustParseAddrPort("203.0.113.2:6881"))
	if ev := a.take(); !slices.Equal(ev, []string{"connect 203.0.113.2:6881"}) {
		t.Errorf("public: found gave %q", ev)
	}
}

// TestPunchFailureGoesQuiet: a punch without a session within
// punchTimeout makes the session forget the path, and nothing goes to the
// contact for punchQuiet; then a new attempt opens again.
func TestPunchFailureGoesQuiet(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	a := newPunchSide(t, d, clock, 1, natView("192.168.1.10", "203.0.113.1"))
	b := newPunchSide(t, d, clock, 2, natView("192.168.1.10", "203.0.113.2"))
	a.p.announced(b.id.public())
	b.p.announced(a.id.public())
	a.p.lookedUp(b.id.public(), nil)
	b.p.lookedUp(a.id.public(), nil)
	var connectedAt time.Time
	for range 50 {
		stepBoth(clock, 1, a, b)
		if slices.Contains(a.take(), "connect 203.0.113.2:6881") {
			connectedAt = clock.now()
			break
		}
	}
	if connectedAt.IsZero() {
		t.Fatal("a never connected")
	}
	var forgetAt time.Time
	var quiet []string
	for clock.now().Sub(connectedAt) < punchTimeout+punchQuiet+5*time.Second {
		stepBoth(clock, 1, a, b)
		b.take()
		for _, e := range a.take() {
			switch {
			case e == "forget":
				forgetAt = clock.now()
			case !forgetAt.IsZero() && clock.now().Sub(forgetAt) < punchQuiet:
				quiet = append(quiet, e)
			case !forgetAt.IsZero() && e == "open 203.0.113.2:6881" && clock.now().Sub(forgetAt) < punchQuiet+time.Second:
				return // opened again just after the quiet: done
			}
		}
	}
	if forgetAt.IsZero() || forgetAt.Sub(connectedAt) < punchTimeout {
		t.Fatalf("forget at %v after connecting, want after %v", forgetAt.Sub(connectedAt), punchTimeout)
	}
	if len(quiet) != 0 {
		t.Fatalf("sent %q while quiet", quiet)
	}
	t.Fatal("no new opening after the quiet")
}

// TestPunchStallOnGatedPath: a session through NATs that stalls makes
// the session forget the path and the puncher quiet; one on a LAN does not.
func TestPunchStallOnGatedPath(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	a := newPunchSide(t, d, clock, 1, natView("192.168.1.10", "203.0.113.1"))
	k := testIdentity(t, 2).public()
	a.p.online(k, netip.MustParseAddrPort("203.0.113.2:6881"))
	a.p.stalled(k)
	a.p.offline(k)
	if ev := a.take(); !slices.Equal(ev, []string{"forget"}) {
		t.Fatalf("stall on a NAT path: %q, want forget", ev)
	}
	a.p.mu.Lock()
	quiet := a.p.peers[k].quietUntil.Sub(clock.now())
	a.p.mu.Unlock()
	if quiet != punchQuiet {
		t.Errorf("quiet for %v, want %v", quiet, punchQuiet)
	}
	a.p.online(k, netip.MustParseAddrPort("192.168.1.11:6881"))
	a.p.stalled(k)
	a.p.offline(k)
	if ev := a.take(); len(ev) != 0 {
		t.Errorf("stall on a LAN path: %q, want nothing", ev)
	}
}

func TestClassifyNAT(t *testing.T) {
	hosts := []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24"), netip.MustParsePrefix("198.51.100.7/24")}
	ext := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	for _, tc := range []struct {
		ext   netip.AddrPort
		ports []uint16
		want  natBehaviour
	}{
		{netip.AddrPort{}, nil, natUnknown},
		{ext("198.51.100.7:6881"), []uint16{6881}, natPublic},
		{ext("203.0.113.1:6881"), []uint16{6881}, natPreserving},
		{ext("203.0.113.1:40000"), []uint16{40000}, natConsistent},
		{ext("203.0.113.1:40000"), []uint16{40000, 51000}, natRandomising},
	} {
		if got := classifyNAT(hosts, 6881, tc.ext, tc.ports); got != tc.want {
			t.Errorf("classifyNAT(%v, %v) = %v, want %v", tc.ext, tc.ports, got, tc.want)
		}
	}
}

func TestLocalCandidates(t *testing.T) {
	v := localView{Port: 6881, External: netip.MustParseAddrPort("203.0.113.1:6881"), Hosts: []netip.Prefix{
		netip.MustParsePrefix("192.168.1.10/24"), netip.MustParsePrefix("2001:db8::10/64"),
	}}
	want := []endpointCandidate{
		{endpointCandReflexive, netip.MustParseAddrPort("203.0.113.1:6881")},
		{endpointCandHost, netip.MustParseAddrPort("[2001:db8::10]:6881")},
		{endpointCandHost, netip.MustParseAddrPort("192.168.1.10:6881")},
	}
	if got := v.candidates(); !slices.Equal(got, want) {
		t.Errorf("candidates = %v, want %v", got, want)
	}
}

func TestPunchTTLFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    int
		wantErr bool
	}{
		{nil, defaultPunchTTL, false},
		{[]string{"-punch-ttl", "5"}, 5, false},
		{[]string{"-punch-ttl", "0"}, 0, true},
		{[]string{"-punch-ttl", "256"}, 0, true},
	} {
		o, err := parseFlags(tc.args, io.Discard, io.Discard)
		if (err != nil) != tc.wantErr || err == nil && o.punchTTL != tc.want {
			t.Errorf("parseFlags(%q) = %d, %v; want %d, error %v", tc.args, o.punchTTL, err, tc.want, tc.wantErr)
		}
	}
}

// TestRendezvousHooks: the puncher hears of every announce and lookup the
// rendezvous runs, with what the lookup found (our own address left out),
// and of none for a contact removed meanwhile.
func TestRendezvousHooks(t *testing.T) {
	clock := newFakeClockAt(time.Date(2026, 11, 25, 12, 20, 30, 0, time.UTC))
	self := netip.MustParseAddrPort("198.51.100.1:6881")
	bob := netip.MustParseAddrPort("203.0.113.9:7000")
	d := &chatFakeDHT{peers: []netip.AddrPort{self, bob}}
	var mu sync.Mutex
	var events []string
	note := func(e string) { mu.Lock(); events = append(events, e); mu.Unlock() }
	c, err := newChat(chatConfig{Dir: t.TempDir(), Self: chatKey(1), MaxPayload: 1100, Now: clock.now,
		Send:         func(publicKey, []byte) error { return errors.New("offline") },
		StaticSecret: func(publicKey) ([32]byte, error) { return [32]byte{1}, nil },
		Announce:     d.announce, GetPeers: d.getPeers,
		SetEndpoint: func(publicKey, netip.AddrPort) {},
		IsSelf:      func(a netip.AddrPort) bool { return a == self },
		Announced:   func(publicKey) { note("announced") },
		LookedUp:    func(_ publicKey, found []netip.AddrPort) { note("looked up " + fmtAddrs(found)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if err := c.addContact("bob", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	c.sched.start()
	c.sched.tick(context.Background())
	c.sched.waitOps()
	mu.Lock()
	got := slices.Sorted(slices.Values(events))
	events = nil
	mu.Unlock()
	if want := []string{"announced", "looked up " + bob.String()}; !slices.Equal(got, want) {
		t.Fatalf("hooks %q, want %q", got, want)
	}
	c.sched.remove(chatKey(2))
	c.sched.wg.Add(1) // run's own bookkeeping, as tick does
	c.sched.run(context.Background(), rendezvousJob{key: chatKey(2), epochs: rendezvousEpochs(clock.now())})
	if len(events) != 0 {
		t.Fatalf("hooks for a removed contact: %q", events)
	}
}

func fmtAddrs(as []netip.AddrPort) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ",")
}

func TestStartsBehindNAT(t *testing.T) {
	private := []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24")}
	public := []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24"), netip.MustParsePrefix("203.0.113.5/30")}
	loop := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	for _, tc := range []struct {
		hosts []netip.Prefix
		boot  []string
		want  bool
	}{
		{private, []string{"router.bittorrent.com:6881"}, true},
		{private, []string{"198.18.0.2:6881"}, true},
		{public, []string{"198.18.0.2:6881"}, false},
		{loop, []string{"127.0.0.1:7000"}, false},
		{private, []string{"192.168.1.2:6881"}, false},
	} {
		if got := startsBehindNAT(tc.hosts, tc.boot); got != tc.want {
			t.Errorf("startsBehindNAT(%v, %v) = %v, want %v", tc.hosts, tc.boot, got, tc.want)
		}
	}
}
