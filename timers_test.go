package main

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestRekeyUnderTrafficWithoutLoss(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	short := func(c *sessionConfig) {
		c.RekeyAfterTime = 2 * time.Second
		c.RejectAfterTime = 3 * time.Second
		c.RekeyTimeout = 500 * time.Millisecond
	}
	a, b := newTestPair(t, &n, clock, short)
	establish(t, &n, a, b)
	var want []string
	for i := range 200 {
		msg := fmt.Sprintf("a%d", i)
		want = append(want, msg)
		if err := a.m.send(b.id.public(), []byte(msg)); err != nil {
			t.Fatal(err)
		}
		b.m.send(a.id.public(), []byte("b"))
		if i%3 == 0 {
			n.pump(t) // some packets wait a while in flight
		}
		clock.advance(100 * time.Millisecond)
		a.m.timers.tick()
		b.m.timers.tick()
	}
	n.pump(t)
	if got := b.delivered(); !slices.Equal(got, want) {
		t.Errorf("b got %d of %d messages", len(got), len(want))
	}
	if got := len(a.delivered()); got != 200 {
		t.Errorf("a got %d of 200 messages", got)
	}
	if a.established < 8 {
		t.Errorf("only %d sessions in 20 s with RekeyAfterTime 2 s", a.established)
	}
	cur, _, next, _ := sessionCount(a.m, b.id.public())
	if cur != 1 || next != 0 {
		t.Errorf("a: current %d next %d", cur, next)
	}
}

func TestExpiredKeysRejected(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	establish(t, &n, a, b)
	a.m.send(b.id.public(), []byte("late"))
	late := n.take()
	clock.advance(defaultRejectAfterTime)
	for _, p := range late {
		n.deliver(p)
	}
	if len(b.delivered()) != 0 || b.m.stats.expired.Load() != 1 {
		t.Errorf("expired packet: delivered %q, expired %d", b.delivered(), b.m.stats.expired.Load())
	}
	if a.m.hasSession(b.id.public()) {
		t.Error("a still has a session after RejectAfterTime")
	}
	a.m.timers.tick()
	b.m.timers.tick()
	if c, p, nx, _ := sessionCount(b.m, a.id.public()); c+p+nx != 0 {
		t.Errorf("b kept expired keypairs: %d %d %d", c, p, nx)
	}
	a.m.send(b.id.public(), []byte("fresh"))
	n.pump(t)
	if got := b.delivered(); !slices.Equal(got, []string{"fresh"}) {
		t.Errorf("after a new handshake b got %q", got)
	}
}

func TestRekeyOverUDP(t *testing.T) {
	a, b := udpPair(t, func(c *sessionConfig) {
		c.RekeyAfterTime = 150 * time.Millisecond
		c.RejectAfterTime = 400 * time.Millisecond
		c.RekeyTimeout = 50 * time.Millisecond
	})
	a.m.setEndpoint(b.id.public(), b.addr)
	start := time.Now()
	sent := 0
	for time.Since(start) < 700*time.Millisecond {
		if err := a.m.send(b.id.public(), []byte(fmt.Sprint(sent))); err != nil {
			t.Fatal(err)
		}
		sent++
		time.Sleep(2 * time.Millisecond)
	}
	waitFor(t, "delivery", func() bool { return len(b.delivered()) == sent })
	a.mu.Lock()
	est := a.established
	a.mu.Unlock()
	if est < 3 {
		t.Errorf("%d sessions in 700 ms with RekeyAfterTime 150 ms", est)
	}
}

func TestRekeyAfterMessages(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), func(c *sessionConfig) { c.RekeyAfterMessages = 10 })
	establish(t, &n, a, b)
	first := a.m.peers[b.id.public()].keypairs.current
	for i := range 30 {
		a.m.send(b.id.public(), fmt.Append(nil, i))
		n.pump(t)
	}
	if a.m.peers[b.id.public()].keypairs.current == first || len(b.delivered()) != 30 {
		t.Errorf("no rekey after RekeyAfterMessages, or loss: %d delivered", len(b.delivered()))
	}
}

func TestHandshakeGivesUp(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	n.filter = func(fakePacket) bool { return false } // b is unreachable
	a.m.setEndpoint(b.id.public(), b.addr)
	a.m.send(b.id.public(), []byte("lost"))
	inits := 0
	for range 100 {
		clock.advance(time.Second)
		a.m.timers.tick()
		for _, p := range n.take() {
			if p.b[0] == packetInitiation {
				inits++
			}
		}
	}
	_, _, _, pending := sessionCount(a.m, b.id.public())
	if pending != 0 || a.m.stats.queueDropped.Load() != 1 {
		t.Errorf("after RekeyAttemptTime: pending %d, dropped %d", pending, a.m.stats.queueDropped.Load())
	}
	// One initiation every RekeyTimeout (5 s) during RekeyAttemptTime (90 s).
	if inits < 16 || inits > 19 {
		t.Errorf("%d initiations sent, want about 18", inits)
	}
}

// An idle session sends keepalives, so silence means absence: Ended is
// reported once after DeadAfter without a packet, with the time of the last
// packet (not of the detection), and a packet revives it.
func TestSessionKeepaliveAndEnded(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	var mu sync.Mutex
	ended := map[publicKey]int{}
	var lastSeen time.Time
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) {
		c.Ended = func(k publicKey, seen time.Time) { mu.Lock(); ended[k]++; lastSeen = seen; mu.Unlock() }
	})
	a.m.setEndpoint(b.id.public(), b.addr)
	a.m.send(b.id.public(), []byte("hello"))
	n.pump(t)
	var lastFromB time.Time // b's last packet: its last keepalive
	n.filter = func(p fakePacket) bool {
		if p.from == b.addr {
			lastFromB = clock.now()
		}
		return true
	}
	for range 4 * 25 { // keepalives both ways keep both sides alive
		clock.advance(defaultKeepalive / 25) // ticks often enough for the passive keepalive
		a.m.timers.tick()
		b.m.timers.tick()
		n.pump(t)
	}
	mu.Lock()
	if len(ended) != 0 {
		t.Fatalf("ended while keepalives flowed: %v", ended)
	}
	mu.Unlock()
	n.filter = func(p fakePacket) bool { return p.from != b.addr } // b falls silent
	for range 5 {
		clock.advance(defaultDeadAfter / 4)
		a.m.timers.tick()
		n.pump(t)
	}
	mu.Lock()
	if got := ended[b.id.public()]; got != 1 {
		t.Fatalf("Ended(b) reported %d times, want 1", got)
	}
	if !lastSeen.Equal(lastFromB) {
		t.Errorf("Ended(b) last seen %v, want %v (its last keepalive, %v before the detection)", lastSeen, lastFromB, clock.now().Sub(lastFromB))
	}
	mu.Unlock()
	n.filter = nil
	estBefore := a.established
	b.m.send(a.id.public(), []byte("back"))
	for range 3 { // handshakes a or b started in the silence retransmit
		n.pump(t)
		clock.advance(defaultRekeyTimeout)
		a.m.timers.tick()
		b.m.timers.tick()
	}
	n.pump(t)
	if got := a.delivered(); !slices.Equal(got, []string{"back"}) {
		t.Errorf("a got %q", got)
	}
	if a.established != estBefore+1 {
		t.Errorf("a packet from b after Ended did not re-establish (%d -> %d)", estBefore, a.established)
	}
}

// TestResponderKeepaliveAfterConfirm pins SPEC.md 4.6: the Keepalive timer
// runs from the last packet sent. A responder's first packet on a new
// session is its post-quantum ciphertext (4.12), so no keepalive is due at
// its first timer check; one is due Keepalive later, and only one.
func TestResponderKeepaliveAfterConfirm(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t) // the handshakes, and each session's key fragments and ciphertext
	b.m.timers.tick()
	if q := n.take(); len(q) != 0 {
		t.Fatalf("responder's first tick sent %d packets after its ciphertext, want none", len(q))
	}
	clock.advance(defaultKeepalive)
	b.m.timers.tick()
	q := n.take()
	if len(q) != 1 || q[0].from != b.addr || q[0].b[0] != packetTransport || len(q[0].b) != transportMinSize {
		t.Fatalf("responder's tick Keepalive later sent %d packets, want one keepalive", len(q))
	}
	b.m.timers.tick()
	if q := n.take(); len(q) != 0 {
		t.Fatalf("responder's next tick sent %d packets, want none", len(q))
	}
}

// TestSilentPeerTimeline pins the "silent peer" paragraph of SPEC.md 4.7:
// with the default timers, keepalives at 25, 50 and 75 s, Ended at 80 s,
// then initiations from 120 s every 5 s until the attempt is abandoned at
// 210 s, and nothing after.
func TestSilentPeerTimeline(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	start := clock.now()
	var endedAt []time.Duration
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) {
		c.Ended = func(publicKey, time.Time) { endedAt = append(endedAt, clock.now().Sub(start)) }
	})
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	if !a.m.hasSession(b.id.public()) {
		t.Fatal("no session")
	}
	keepalives, inits := silentTimeline(&n, clock, a, start) // b never ticks and never answers
	if want := []time.Duration{25 * time.Second, 50 * time.Second, 75 * time.Second}; !slices.Equal(keepalives, want) {
		t.Errorf("keepalives at %v, want %v", keepalives, want)
	}
	if want := []time.Duration{80 * time.Second}; !slices.Equal(endedAt, want) {
		t.Errorf("Ended at %v, want %v", endedAt, want)
	}
	var want []time.Duration
	for s := 120; s < 210; s += 5 {
		want = append(want, time.Duration(s)*time.Second)
	}
	if !slices.Equal(inits, want) {
		t.Errorf("initiations at %v, want %v", inits, want)
	}
	if c, prev, next, pending := sessionCount(a.m, b.id.public()); c+prev+next+pending != 0 {
		t.Errorf("after the attempt: %d current, %d previous, %d next, %d pending", c, prev, next, pending)
	}
}

// TestInitiationBackoff: a contact who is away, with a payload waiting for
// it that the layer above sends again and again (its outbox), draws one
// handshake (RekeyAttemptTime of initiations) and then waits that long,
// doubling with each abandoned handshake; an address given meanwhile
// (the rendezvous, the puncher) starts one at once.
func TestInitiationBackoff(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	start := clock.now()
	a, b := newTestPair(t, &n, clock, nil)
	n.filter = func(p fakePacket) bool { return false } // b is gone
	a.m.setEndpoint(b.id.public(), b.addr)
	var starts []time.Duration // the first initiation of each handshake
	last := time.Duration(-time.Hour)
	inits := 0
	for clock.now().Sub(start) < 20*time.Minute {
		clock.advance(defaultTickInterval)
		if clock.now().Sub(start)%(10*time.Second) == 0 {
			a.m.send(b.id.public(), []byte("waits")) // the outbox resends
		}
		a.m.timers.tick()
		for _, p := range n.take() {
			if p.b[0] != packetInitiation {
				continue
			}
			inits++
			if at := clock.now().Sub(start); at-last > defaultRekeyTimeout+time.Second {
				starts = append(starts, at.Round(10*time.Second))
			}
			last = clock.now().Sub(start)
		}
	}
	// Handshakes at 0, 180 (90 s quiet), 450 (180 s), 900 s (360 s).
	want := []time.Duration{0, 180 * time.Second, 450 * time.Second, 900 * time.Second}
	if !slices.Equal(starts, want) || inits > 4*19 {
		t.Errorf("handshakes began at %v (%d initiations in 20 minutes), want %v", starts, inits, want)
	}
	clock.advance(time.Second)
	a.m.setEndpoint(b.id.public(), b.addr)
	if got := n.take(); len(got) != 1 || got[0].b[0] != packetInitiation {
		t.Errorf("an address given while quiet sent %d packets, want the initiation at once", len(got))
	}
}

// silentTimeline ticks a's timers for 240 s from start while its peer
// stays silent, and returns when a sent keepalives and initiations.
func silentTimeline(n *fakeNet, clock *fakeClock, a *testPeer, start time.Time) (keepalives, inits []time.Duration) {
	for clock.now().Sub(start) < 240*time.Second {
		clock.advance(defaultTickInterval)
		a.m.timers.tick()
		for _, p := range n.take() {
			switch p.b[0] {
			case packetTransport:
				keepalives = append(keepalives, clock.now().Sub(start))
			case packetInitiation:
				inits = append(inits, clock.now().Sub(start))
			}
		}
	}
	return keepalives, inits
}
