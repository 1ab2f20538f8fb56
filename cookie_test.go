package main

import (
	"bytes"
	"encoding/binary"
	mrand "math/rand/v2"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// oldMAC1 puts into b the mac1 of SPEC version 1, keyed by the receiver's
// public key alone: what anyone who knows that key can compute.
func oldMAC1(b []byte, receiver publicKey) {
	off := initiationOffMAC1
	if b[0] == packetResponse {
		off = responseOffMAC1
	}
	k := noiseHash([]byte("kadchat mac1 v1"), receiver[:])
	mac := keyedMAC(k[:], b[:off])
	copy(b[off:], mac[:])
}

func TestWrongMAC1CostsNoDH(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	init := firstOfType(t, &n, packetInitiation)
	st := &b.m.stats
	tests := []struct {
		name    string
		mut     func([]byte)
		counter *atomic.Uint64
	}{
		{"flipped mac1", func(p []byte) { p[initiationOffMAC1] ^= 1 }, &st.badMAC},
		{"flipped ephemeral", func(p []byte) { p[initiationOffEphemeral] ^= 1 }, &st.badMAC},
		{"flipped stamp", func(p []byte) { p[initiationOffStamp] ^= 1 }, &st.badMAC},
		{"mac1 keyed by the responder's public key (SPEC v1)", func(p []byte) { oldMAC1(p, b.id.public()) }, &st.badMAC},
		{"flipped tag", func(p []byte) { p[initiationOffTag] ^= 1 }, &st.stranger},
	}
	for _, tt := range tests {
		p := bytes.Clone(init.b)
		tt.mut(p)
		dh, before := b.m.dh.n.Load(), tt.counter.Load()
		b.m.handlePacket(a.addr, p)
		if b.m.dh.n.Load() != dh || tt.counter.Load() != before+1 || len(n.take()) != 0 {
			t.Errorf("%s: dh ops %d, counted %d", tt.name, b.m.dh.n.Load()-dh, tt.counter.Load()-before)
		}
	}
	dh := b.m.dh.n.Load()
	b.m.handlePacket(a.addr, init.b)
	if got := b.m.dh.n.Load() - dh; got != 5 {
		t.Errorf("a good initiation cost %d DH operations, want 5 (es, ss, e, ee, se)", got)
	}
}

func TestCookieReplyUnderLoad(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	fast := func(c *sessionConfig) { c.LoadThreshold = 2; c.RekeyTimeout = 100 * time.Millisecond }
	a, b := newTestPair(t, &n, clock, fast)
	c := newTestPeer(t, &n, clock, 3, 1003, fast)
	befriend(b, c)
	c.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t) // c's classical and post-quantum handshakes: b counts two, not yet loaded
	a.m.setEndpoint(b.id.public(), b.addr)
	init := firstOfType(t, &n, packetInitiation)
	dh := b.m.dh.n.Load()
	n.deliver(init) // third in this second: loaded, cookie reply
	q := n.take()
	if len(q) != 1 || q[0].b[0] != packetCookieReply || len(q[0].b) != cookieReplySize {
		t.Fatalf("loaded responder sent %d packets, want one cookie reply", len(q))
	}
	if b.m.dh.n.Load() != dh {
		t.Errorf("cookie reply cost %d DH operations", b.m.dh.n.Load()-dh)
	}
	n.deliver(q[0])
	if !a.m.peers[b.id.public()].cookies.hasCookie {
		t.Fatal("a did not accept the cookie")
	}
	clock.advance(200 * time.Millisecond)
	a.m.timers.tick() // retransmission, now with mac2
	retry := firstOfType(t, &n, packetInitiation)
	if bytes.Equal(retry.b[initiationOffMAC2:], make([]byte, macLen)) {
		t.Fatal("retransmission has no mac2")
	}
	n.deliver(retry)
	n.pump(t)
	if !a.m.hasSession(b.id.public()) || b.m.stats.cookiesSent.Load() != 1 {
		t.Errorf("session %v, cookies sent %d", a.m.hasSession(b.id.public()), b.m.stats.cookiesSent.Load())
	}
}

func TestCookieReplyForgedIgnored(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	init := firstOfType(t, &n, packetInitiation)
	sender := binary.LittleEndian.Uint32(init.b[initiationOffSender:])
	var wrongMAC1 [macLen]byte
	r, err := b.m.cookies.checker.createReply(&b.m.peers[a.id.public()].keys.send.cookie, sender, wrongMAC1, [cookieLen]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	b.m.sendRaw(r.appendTo(nil), a.addr)
	for _, p := range n.take() {
		n.deliver(p)
	}
	if a.m.peers[b.id.public()].cookies.hasCookie || a.m.stats.handshakeFail.Load() != 1 {
		t.Error("a accepted a cookie reply bound to another message")
	}
}

// TestCookieLoadWindow pins SPEC.md 4.5: windows start at the first message
// one second or more after the current window began (they do not slide),
// and the 65th message of a window is itself checked under load, which
// lasts one second after the last message over the threshold.
func TestCookieLoadWindow(t *testing.T) {
	c := newCookieChecker(defaultLoadThreshold, mrand.NewChaCha8([32]byte{1}))
	from := netip.MustParseAddrPort("127.0.0.1:1")
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(d time.Duration) bool {
		_, loaded, err := c.underLoad(t0.Add(d), from)
		if err != nil {
			t.Fatal(err)
		}
		return loaded
	}
	at(0) // opens a window at t0
	for i := 2; i <= 64; i++ {
		if at(900 * time.Millisecond) {
			t.Fatalf("message %d of the first window is under load", i)
		}
	}
	// 64 messages in the last 100 ms, but a new window: not loaded.
	if at(time.Second) {
		t.Fatal("first message of the second window is under load")
	}
	for i := 2; i <= 64; i++ {
		if at(time.Second) {
			t.Fatalf("message %d of the second window is under load", i)
		}
	}
	if !at(time.Second) {
		t.Fatal("the 65th message of a window is not checked under load")
	}
	// Every message is counted (a probe inside the window would extend the
	// load), so the next one comes with a third window.
	if at(2 * time.Second) {
		t.Fatal("still under load one second after the 65th message")
	}
}
