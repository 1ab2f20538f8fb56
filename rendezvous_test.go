package main

import (
	"context"
	"crypto/ecdh"
	cryptorand "crypto/rand"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestRendezvousSymmetric(t *testing.T) {
	var keys []*ecdh.PrivateKey
	for range 3 {
		k, err := ecdh.X25519().GenerateKey(cryptorand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	secret := func(a, b int) [32]byte {
		s, err := keys[a].ECDH(keys[b].PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		return [32]byte(s)
	}
	const e = 498780
	ab, ba := rendezvousInfohash(secret(0, 1), e), rendezvousInfohash(secret(1, 0), e)
	if ab != ba {
		t.Fatalf("A derives %v, B derives %v", ab, ba)
	}
	seen := map[nodeID]string{ab: "A-B epoch e"}
	for name, id := range map[string]nodeID{
		"A-B epoch e+1": rendezvousInfohash(secret(0, 1), e+1),
		"A-B epoch e-1": rendezvousInfohash(secret(1, 0), e-1),
		"A-C epoch e":   rendezvousInfohash(secret(0, 2), e),
		"B-C epoch e":   rendezvousInfohash(secret(2, 1), e),
	} {
		if other, dup := seen[id]; dup {
			t.Errorf("%s and %s share infohash %v", name, other, id)
		}
		seen[id] = name
	}
}

func TestRendezvousEpochs(t *testing.T) {
	base := time.Unix(498780*3600, 0)
	tests := []struct {
		at   time.Duration
		want []uint64
	}{
		{0, []uint64{498779, 498780}},
		{10*time.Minute - time.Second, []uint64{498779, 498780}},
		{10 * time.Minute, []uint64{498780}},
		{50 * time.Minute, []uint64{498780, 498781}},
		{time.Hour - time.Second, []uint64{498780, 498781}},
	}
	for _, tt := range tests {
		if got := rendezvousEpochs(base.Add(tt.at)); !slices.Equal(got, tt.want) {
			t.Errorf("rendezvousEpochs(+%v) = %v, want %v", tt.at, got, tt.want)
		}
	}
}

// chatFakeDHT records the rendezvous calls.
type chatFakeDHT struct {
	mu        sync.Mutex
	announces []nodeID
	lookups   []nodeID
	endpoints []netip.AddrPort
	peers     []netip.AddrPort
}

func (d *chatFakeDHT) announce(_ context.Context, ih nodeID) ([]netip.AddrPort, int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.announces = append(d.announces, ih)
	return d.peers, 8, nil
}

func (d *chatFakeDHT) getPeers(_ context.Context, ih nodeID) ([]netip.AddrPort, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookups = append(d.lookups, ih)
	return d.peers, nil
}

func (d *chatFakeDHT) counts() (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.announces), len(d.lookups)
}

func TestRendezvousSchedule(t *testing.T) {
	// 12:20:30 UTC: more than 10 minutes from either epoch boundary: one epoch.
	clock := newFakeClockAt(time.Date(2026, 11, 25, 12, 20, 30, 0, time.UTC))
	self := netip.MustParseAddrPort("198.51.100.1:6881")
	bob := netip.MustParseAddrPort("203.0.113.9:7000")
	d := &chatFakeDHT{peers: []netip.AddrPort{self, bob}}
	secret := [32]byte{1, 2, 3}
	c, err := newChat(chatConfig{Dir: t.TempDir(), Self: chatKey(1), MaxPayload: 1100, Now: clock.now,
		Send:         func(publicKey, []byte) error { return errors.New("offline") },
		StaticSecret: func(publicKey) ([32]byte, error) { return secret, nil },
		Announce:     d.announce, GetPeers: d.getPeers,
		SetEndpoint: func(_ publicKey, a netip.AddrPort) {
			d.mu.Lock()
			d.endpoints = append(d.endpoints, a)
			d.mu.Unlock()
		},
		IsSelf: func(a netip.AddrPort) bool { return a == self },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if err := c.addContact("bob", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	c.sched.start()
	ctx := context.Background()
	step := func(d time.Duration) {
		clock.advance(d)
		c.sched.tick(ctx)
		c.sched.waitOps()
	}
	want := func(when string, announces, lookups int) {
		t.Helper()
		if a, l := d.counts(); a != announces || l != lookups {
			t.Fatalf("%s: %d announces, %d lookups; want %d, %d", when, a, l, announces, lookups)
		}
	}
	step(0)
	want("start: the announce is the first lookup", 1, 0)
	ih := rendezvousInfohash(secret, uint64(clock.now().Unix()/3600))
	if d.announces[0] != ih {
		t.Fatalf("used %v, want %v", d.announces[0], ih)
	}
	if !slices.Equal(d.endpoints, []netip.AddrPort{bob}) {
		t.Fatalf("endpoints %v, want only %v (not our own)", d.endpoints, bob)
	}
	step(4 * time.Second)
	want("4 s", 1, 0)
	step(time.Second)
	want("5 s", 1, 1)
	step(9 * time.Second)
	want("14 s", 1, 1)
	step(time.Second)
	want("15 s", 1, 2)
	step(20 * time.Second)
	want("35 s", 1, 3)
	step(25 * time.Second)
	want("60 s: no lookups of our own after 35 s", 1, 3)
	if !slices.Equal(d.endpoints, []netip.AddrPort{bob}) {
		t.Fatalf("endpoints %v: bob, handed over and quiet, was handed over again", d.endpoints)
	}
	c.presence.online(chatKey(2), bob)
	clock.set(time.Date(2026, 11, 25, 12, 47, 0, 0, time.UTC))
	step(0)
	want("12:47 online: no announce", 1, 3)
	c.presence.offline(chatKey(2), time.Time{})
	step(0)
	want("offline: announce at once", 2, 3)
	step(5 * time.Second)
	want("offline + 5 s", 2, 4)
	step(10 * time.Second)
	want("offline + 15 s", 2, 5)
	clock.set(time.Date(2026, 11, 25, 12, 49, 59, 0, time.UTC))
	step(0)
	want("12:49:59", 2, 5)
	step(time.Second)
	want("12:50: the next epoch, announced alone", 3, 5)
	if next := rendezvousInfohash(secret, uint64(clock.now().Unix()/3600)+1); d.announces[2] != next {
		t.Fatalf("12:50 announced %v, want the next epoch's %v", d.announces[2], next)
	}
	clock.set(time.Date(2026, 11, 25, 13, 14, 59, 0, time.UTC))
	step(0)
	want("13:14:59", 3, 5)
	step(time.Second)
	want("13:15: 25 minutes later", 4, 5)
	if !slices.Equal(d.endpoints, []netip.AddrPort{bob, bob}) {
		t.Fatalf("endpoints %v, want bob at start and after the session", d.endpoints)
	}
}

// TestRendezvousOfflineDay pins the cost of a contact who stays offline
// for a day: three lookups of our own after start (5, 15, 35 s; the first
// is the announce's), then three announces an
// hour (each epoch at 10 minutes before its hour and every 25 minutes
// while current), each with its lookup; a stale address is handed to the
// session layer at most once per candidateQuiet.
func TestRendezvousOfflineDay(t *testing.T) {
	clock := newFakeClockAt(time.Date(2026, 11, 25, 12, 20, 30, 0, time.UTC))
	stale := netip.MustParseAddrPort("203.0.113.9:7000")
	d := &chatFakeDHT{peers: []netip.AddrPort{stale}}
	c, err := newChat(chatConfig{Dir: t.TempDir(), Self: chatKey(1), MaxPayload: 1100, Now: clock.now,
		Send:         func(publicKey, []byte) error { return errors.New("offline") },
		StaticSecret: func(publicKey) ([32]byte, error) { return [32]byte{4}, nil },
		Announce:     d.announce, GetPeers: d.getPeers,
		SetEndpoint: func(_ publicKey, a netip.AddrPort) {
			d.mu.Lock()
			d.endpoints = append(d.endpoints, a)
			d.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if err := c.addContact("bob", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	c.sched.start()
	ctx := context.Background()
	perHour := []int{}
	for h := range 24 {
		a0, _ := d.counts()
		for range 3600 / 5 {
			c.sched.tick(ctx)
			c.sched.waitOps()
			clock.advance(5 * time.Second)
		}
		a1, _ := d.counts()
		perHour = append(perHour, a1-a0)
		if h > 0 && (a1-a0 < 2 || a1-a0 > 4) {
			t.Errorf("hour %d: %d announces, want 3 or so", h, a1-a0)
		}
	}
	announces, lookups := d.counts()
	t.Logf("announces per hour %v; lookups %d; handovers %d", perHour, lookups, len(d.endpoints))
	if lookups != 3 {
		t.Errorf("%d lookups of our own in a day, want 3 (at 5, 15 and 35 s)", lookups)
	}
	if announces > 3*24+2 {
		t.Errorf("%d announces in a day, want at most %d", announces, 3*24+2)
	}
	// A stale address found by every announce (DHT nodes would forget it
	// after peerTTL; this fake never does) is handed over at the first
	// announce after each candidateQuiet: 36 times a day, each one
	// handshake attempt (18 initiations over RekeyAttemptTime), where a
	// lookup every 90 s handed over 960.
	if n := len(d.endpoints); n != 36 {
		t.Errorf("the stale address was handed over %d times in a day, want 36 (once per %v, at the next announce)", n, candidateQuiet)
	}
}

// The rendezvous rules the time-to-first-message benchmark tuned, checked
// here without a network (the schedule itself is TestRendezvousSchedule's).

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	far := now.Add(time.Hour)
	tests := []struct {
		name   string
		fails  int
		ok     bool
		ceil   time.Duration
		next   time.Time
		want   time.Time
		fails2 int
	}{
		{"first failure", 0, false, 5 * time.Second, far, now.Add(100 * time.Millisecond), 1},
		{"third failure", 2, false, 5 * time.Second, far, now.Add(400 * time.Millisecond), 3},
		{"capped", 10, false, 5 * time.Second, far, now.Add(5 * time.Second), 11},
		{"never later than planned", 10, false, 5 * time.Second, now.Add(time.Second), now.Add(time.Second), 11},
		{"success resets", 7, true, 5 * time.Second, far, far, 0},
		{"huge count", 1000, false, 15 * time.Second, far, now.Add(15 * time.Second), 1001},
	}
	for _, tt := range tests {
		fails := tt.fails
		if got := retryAfter(&fails, tt.ok, now, tt.ceil, tt.next); !got.Equal(tt.want) || fails != tt.fails2 {
			t.Errorf("%s: retryAfter(%d, %v) = %v, fails %d; want %v, %d", tt.name, tt.fails, tt.ok, got.Sub(now), fails, tt.want.Sub(now), tt.fails2)
		}
	}
}

func TestPickCandidate(t *testing.T) {
	own := netip.MustParseAddr("192.0.2.1")
	stale := netip.AddrPortFrom(own, 40000) // our own announcement before a restart
	live := netip.MustParseAddrPort("203.0.113.9:6881")
	old := netip.MustParseAddrPort("203.0.113.9:7000") // the contact's earlier port
	c, err := newChat(chatConfig{Dir: t.TempDir(), Self: chatKey(1), MaxPayload: 1100,
		Send:  func(publicKey, []byte) error { return nil },
		OwnIP: func(ip netip.Addr) bool { return ip == own },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if err := c.addContact("bob", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	var got []netip.AddrPort
	for range 4 {
		if a, ok := c.sched.pickCandidate(chatKey(2), []netip.AddrPort{stale, old, live}); ok {
			got = append(got, a)
		}
	}
	// Own IP last, otherwise the DHT's order; each once: then quiet.
	if want := []netip.AddrPort{old, live, stale}; !slices.Equal(got, want) {
		t.Fatalf("candidates %v, want %v", got, want)
	}
	c.presence.online(chatKey(2), live)
	if _, ok := c.sched.pickCandidate(chatKey(2), []netip.AddrPort{stale, old, live}); ok {
		t.Fatal("a candidate for a contact with a session")
	}
	c.presence.offline(chatKey(2), time.Time{})
	if a, _ := c.sched.pickCandidate(chatKey(2), []netip.AddrPort{stale, old, live}); a != old {
		t.Fatalf("after a session: %v, want the candidates tried again from %v", a, old)
	}
	if _, ok := c.sched.pickCandidate(chatKey(2), nil); ok {
		t.Fatal("a candidate from an empty lookup")
	}
	if _, ok := c.sched.pickCandidate(chatKey(3), []netip.AddrPort{live}); ok {
		t.Fatal("a candidate for a stranger")
	}
}

// TestStaleCandidateInitiations: the session layer and the scheduler
// together, on a fake clock, for a contact whose only address in the DHT
// is stale (nobody answers there). Each handover is one handshake attempt
// (18 initiations, every RekeyTimeout for RekeyAttemptTime), and the
// address is handed over again only after candidateQuiet, at the next
// announce: three times in two hours, where a lookup every 90 s would
// have kept initiations going all the time.
func TestStaleCandidateInitiations(t *testing.T) {
	var n fakeNet
	clock := newFakeClockAt(time.Date(2026, 11, 25, 12, 20, 30, 0, time.UTC))
	a, b := newTestPair(t, &n, clock, nil)
	stale := netip.MustParseAddrPort("127.0.0.9:9")
	d := &chatFakeDHT{peers: []netip.AddrPort{stale}}
	handovers := 0
	s := newRendezvousScheduler(rendezvousConfig{
		StaticSecret: func(publicKey) ([32]byte, error) { return [32]byte{5}, nil },
		Announce:     d.announce, GetPeers: d.getPeers,
		SetEndpoint: func(k publicKey, addr netip.AddrPort) {
			handovers++
			a.m.setEndpoint(k, addr)
		},
		Now: clock.now, Log: slog.New(slog.DiscardHandler),
	})
	s.add(b.id.public(), time.Time{})
	s.start()
	ctx := context.Background()
	inits := 0
	for i := range int(2 * time.Hour / defaultTickInterval) {
		if i%4 == 0 {
			s.tick(ctx)
			s.waitOps()
		}
		a.m.timers.tick()
		for _, p := range n.take() {
			if p.to == stale && p.b[0] == packetInitiation {
				inits++
			}
		}
		clock.advance(defaultTickInterval)
	}
	if handovers != 3 || inits != 18*handovers {
		t.Errorf("%d handovers, %d initiations to the stale address in 2 hours; want 3 and 18 each", handovers, inits)
	}
}

// TestRendezvousLookupCurrentEpoch: near an epoch boundary an announce
// covers both current epochs, but a lookup of our own asks for epoch(now)
// alone, which is always among the epochs the contact announces.
func TestRendezvousLookupCurrentEpoch(t *testing.T) {
	clock := newFakeClockAt(time.Date(2026, 11, 25, 12, 55, 0, 0, time.UTC))
	d := &chatFakeDHT{}
	secret := [32]byte{6}
	s := newRendezvousScheduler(rendezvousConfig{
		StaticSecret: func(publicKey) ([32]byte, error) { return secret, nil },
		Announce:     d.announce, GetPeers: d.getPeers,
		SetEndpoint: func(publicKey, netip.AddrPort) {},
		Now:         clock.now, Log: slog.New(slog.DiscardHandler),
	})
	s.add(chatKey(2), time.Time{})
	s.start()
	for range 4 {
		s.tick(context.Background())
		s.waitOps()
		clock.advance(5 * time.Second)
	}
	cur := rendezvousInfohash(secret, rendezvousEpochOf(clock.now()))
	if a, l := d.counts(); a != 2 || l != 2 {
		t.Fatalf("%d announces, %d lookups; want 2 (both epochs) and 2 (at 5 and 15 s)", a, l)
	}
	if d.lookups[0] != cur || d.lookups[1] != cur {
		t.Errorf("looked up %v, want the current epoch's %v twice", d.lookups, cur)
	}
}
