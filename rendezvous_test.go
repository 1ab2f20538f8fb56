package main

import (
	"context"
	"crypto/ecdh"
	cryptorand "crypto/rand"
	"errors"
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

func (d *chatFakeDHT) announce(_ context.Context, ih nodeID) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.announces = append(d.announces, ih)
	return 8, nil
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
	want("start", 1, 1)
	ih := rendezvousInfohash(secret, uint64(clock.now().Unix()/3600))
	if d.announces[0] != ih || d.lookups[0] != ih {
		t.Fatalf("used %v and %v, want %v", d.announces[0], d.lookups[0], ih)
	}
	if !slices.Equal(d.endpoints, []netip.AddrPort{bob}) {
		t.Fatalf("endpoints %v, want only %v (not our own)", d.endpoints, bob)
	}
	step(4 * time.Second)
	want("4 s", 1, 1)
	step(time.Second)
	want("5 s", 1, 2)
	for range 11 {
		step(5 * time.Second)
	}
	want("60 s", 1, 13)
	step(5 * time.Second)
	want("65 s: slow now", 1, 13)
	step(85 * time.Second)
	want("150 s", 1, 14)
	c.presence.online(chatKey(2), bob)
	step(150 * time.Second) // 300 s after start
	want("online at 5 min", 2, 14)
	c.presence.offline(chatKey(2), time.Time{})
	step(0)
	want("offline again: fast lookups", 2, 15)
	step(5 * time.Second)
	want("offline again + 5 s", 2, 16)
	clock.set(time.Date(2026, 11, 25, 12, 45, 30, 0, time.UTC))
	step(0)
	if a, _ := d.counts(); a != 3 {
		t.Fatalf("12:45:30: %d announces, want 3", a)
	}
	clock.set(time.Date(2026, 11, 25, 12, 49, 59, 0, time.UTC))
	step(0)
	if a, _ := d.counts(); a != 3 {
		t.Fatalf("12:49:59: %d announces, want 3", a)
	}
	// 12:50: this epoch and the next are current: announce at once on both.
	step(time.Second)
	if a, _ := d.counts(); a != 5 {
		t.Fatalf("12:50:00, the epoch set changed: %d announces, want 5", a)
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
		a, ok := c.sched.pickCandidate(chatKey(2), []netip.AddrPort{stale, old, live})
		if !ok {
			t.Fatal("no candidate")
		}
		got = append(got, a)
	}
	// Own IP last, otherwise the DHT's order; then the round starts again.
	if want := []netip.AddrPort{old, live, stale, old}; !slices.Equal(got, want) {
		t.Fatalf("candidates %v, want %v", got, want)
	}
	c.presence.online(chatKey(2), live)
	if a, _ := c.sched.pickCandidate(chatKey(2), []netip.AddrPort{stale, old, live}); a != old {
		t.Fatalf("after a session: %v, want the round to start again at %v", a, old)
	}
	if _, ok := c.sched.pickCandidate(chatKey(2), nil); ok {
		t.Fatal("a candidate from an empty lookup")
	}
	if _, ok := c.sched.pickCandidate(chatKey(3), []netip.AddrPort{live}); ok {
		t.Fatal("a candidate for a stranger")
	}
}
