package main

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestStallEndsSession pins SPEC.md 4.7's StallTimeout: a payload that
// stays unanswered ends the session after 15 s, long before DeadAfter,
// and Stalled comes just before Ended.
func TestStallEndsSession(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	var mu sync.Mutex
	var events []string
	var endedAt time.Time
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) {
		c.Stalled = func(publicKey) { mu.Lock(); events = append(events, "stalled"); mu.Unlock() }
		c.Ended = func(publicKey, time.Time) {
			mu.Lock()
			events = append(events, "ended")
			endedAt = clock.now()
			mu.Unlock()
		}
	})
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	n.filter = func(p fakePacket) bool { return p.from != b.addr } // the path from b breaks
	sent := clock.now()
	a.m.send(b.id.public(), []byte("anyone there?"))
	n.pump(t)
	for clock.now().Sub(sent) < 30*time.Second {
		clock.advance(defaultTickInterval)
		a.m.timers.tick()
		b.m.timers.tick()
		n.pump(t)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(events, []string{"stalled", "ended"}) {
		t.Fatalf("events %q, want stalled, ended", events)
	}
	if d := endedAt.Sub(sent); d < defaultStallTimeout || d > defaultStallTimeout+defaultTickInterval {
		t.Errorf("ended %v after the payload, want %v", d, defaultStallTimeout)
	}
}

// TestPassiveKeepaliveAnswers: a side that only receives answers within
// PassiveKeepalive, so a sender whose payloads get no reply payload (an ack
// needs none) does not stall, and an idle session sends no more than one
// keepalive per side per Keepalive.
func TestPassiveKeepaliveAnswers(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	var mu sync.Mutex
	stalls := 0
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) {
		c.Stalled = func(publicKey) { mu.Lock(); stalls++; mu.Unlock() }
	})
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	start := clock.now()
	a.m.send(b.id.public(), []byte("one-way"))
	n.pump(t)
	var fromB []time.Duration
	for clock.now().Sub(start) < 60*time.Second {
		clock.advance(defaultTickInterval)
		a.m.timers.tick()
		b.m.timers.tick()
		for _, p := range n.take() {
			if p.from == b.addr {
				fromB = append(fromB, clock.now().Sub(start))
			}
			n.deliver(p)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if stalls != 0 {
		t.Fatalf("stalled %d times on a working path", stalls)
	}
	if len(fromB) == 0 || fromB[0] > defaultPassiveKeepalive+defaultTickInterval {
		t.Errorf("b sent at %v, want a keepalive within %v of the payload", fromB, defaultPassiveKeepalive)
	}
	if len(fromB) > 4 {
		t.Errorf("b sent %d packets in 60 s of idle: %v", len(fromB), fromB)
	}
}

// TestForgetPath: after forgetPath the session layer sends nothing to the
// peer, queues payloads, and a new address brings a new session that
// carries them.
func TestForgetPath(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	a.m.forgetPath(b.id.public())
	if err := a.m.send(b.id.public(), []byte("later")); !errors.Is(err, errNoEndpoint) {
		t.Fatalf("send after forgetPath: %v, want errNoEndpoint", err)
	}
	for range 100 {
		clock.advance(defaultTickInterval)
		a.m.timers.tick()
	}
	for _, p := range n.take() {
		if p.from == a.addr {
			t.Fatalf("a sent %d bytes to %v after forgetting the path", len(p.b), p.to)
		}
	}
	if c, prev, next, pending := sessionCount(a.m, b.id.public()); c+prev+next+pending != 0 {
		t.Errorf("after forgetPath: %d current, %d previous, %d next, %d pending", c, prev, next, pending)
	}
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	if err := a.m.send(b.id.public(), []byte("again")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if got := b.delivered(); !slices.Contains(got, "again") {
		t.Errorf("b got %q", got)
	}
}

// TestSimultaneousOpenResend pins SPEC.md 4.8's last rule: the lower side,
// whose initiation a firewall dropped, sends it again as soon as it drops
// the higher side's initiation, instead of after RekeyTimeout.
func TestSimultaneousOpenResend(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil) // a is lower
	a.m.setEndpoint(b.id.public(), b.addr)
	q := n.take() // a's first initiation: lost at b's firewall
	if len(q) != 1 || q[0].b[0] != packetInitiation {
		t.Fatalf("a sent %d packets, want its initiation", len(q))
	}
	b.m.setEndpoint(a.id.public(), a.addr)
	n.pump(t) // b's initiation, a's resend, b's response, a's keepalive
	if !a.m.hasSession(b.id.public()) || !b.m.hasSession(a.id.public()) {
		t.Fatal("no session without waiting for a resend")
	}
	ak := a.m.peers[b.id.public()].keypairs.current
	if !ak.initiator {
		t.Error("the lower key is not the initiator")
	}
}
