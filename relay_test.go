package main

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseRelayFrame(t *testing.T) {
	key := publicKey(bytes.Repeat([]byte{7}, 32))
	frame := func(typ byte, packet []byte) []byte { return append(append([]byte{typ}, key[:]...), packet...) }
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{"offer", []byte{relayFrameOffer}, false},
		{"offer with a byte", []byte{relayFrameOffer, 0}, true},
		{"to, an initiation", frame(relayFrameTo, append([]byte{packetInitiation}, make([]byte, 147)...)), false},
		{"from, a keepalive", frame(relayFrameFrom, append([]byte{packetTransport}, make([]byte, 31)...)), false},
		{"to, no packet", frame(relayFrameTo, nil), true},
		{"to, not a session packet", frame(relayFrameTo, []byte{'d'}), true},
		{"to, key cut", []byte{relayFrameTo, 1, 2}, true},
		{"longest", frame(relayFrameTo, append([]byte{packetTransport}, make([]byte, maxRelayPacket-1)...)), false},
		{"too long", frame(relayFrameTo, append([]byte{packetTransport}, make([]byte, maxRelayPacket)...)), true},
		{"a chat frame", []byte{chatFrameData, 1}, true},
		{"empty", nil, true},
	}
	for _, tt := range tests {
		f, err := parseRelayFrame(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: parseRelayFrame(%x) error = %v, want error %v", tt.name, tt.in, err, tt.wantErr)
			continue
		}
		if err != nil && !reflect.DeepEqual(f, relayFrame{}) {
			t.Errorf("%s: error %v with a non-zero frame", tt.name, err)
		}
		if err == nil && !bytes.Equal(f.appendTo(nil), tt.in) {
			t.Errorf("%s: re-encodes to %x", tt.name, f.appendTo(nil))
		}
	}
	if relayChatPayload+transportMinSize+relayHeaderLen != maxTransportPayload {
		t.Errorf("a relayed chat frame needs %d bytes, the session carries %d",
			relayChatPayload+transportMinSize+relayHeaderLen, maxTransportPayload)
	}
}

func FuzzRelayFrame(f *testing.F) {
	for _, s := range []string{"05", "0305", "03" + strings.Repeat("07", 32) + "01", "04" + strings.Repeat("07", 32) + "0400"} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseRelayFrame(b)
		if err != nil {
			if !reflect.DeepEqual(fr, relayFrame{}) {
				t.Fatalf("error %v with a non-zero frame %+v", err, fr)
			}
			return
		}
		if out := fr.appendTo(nil); !bytes.Equal(out, b) {
			t.Fatalf("parse(%x) re-encodes to %x", b, out)
		}
	})
}

// relayNode is a session manager wired to a relayer, as the app wires them.
type relayNode struct {
	*testPeer
	r  *relayer
	mu sync.Mutex
	on map[publicKey]bool // live sessions
}

func newRelayNode(t *testing.T, n *fakeNet, clock *fakeClock, seed byte, port uint16, enabled bool) *relayNode {
	rn := &relayNode{on: map[publicKey]bool{}}
	rn.testPeer = newTestPeer(t, n, clock, seed, port, func(c *sessionConfig) {
		netSend := c.Send
		deliver := c.Deliver
		c.Send = func(to netip.AddrPort, b []byte) error {
			if handled, err := rn.r.sendPacket(to, b); handled {
				return err
			}
			return netSend(to, b)
		}
		c.Deliver = func(k publicKey, from netip.AddrPort, b []byte) {
			if !rn.r.handle(k, b) {
				deliver(k, from, b)
			}
		}
		c.Established = func(k publicKey, _ netip.AddrPort) {
			rn.mu.Lock()
			rn.on[k] = true
			rn.mu.Unlock()
			rn.r.online(k)
		}
	})
	rn.r = newRelayer(relayConfig{
		Enabled: enabled,
		Send:    func(k publicKey, b []byte) error { return rn.m.send(k, b) },
		Deliver: func(from netip.AddrPort, b []byte) { rn.m.handlePacket(from, b) },
		Online:  func(k publicKey) bool { rn.mu.Lock(); defer rn.mu.Unlock(); return rn.on[k] },
		Contact: func(k publicKey) bool { rn.m.mu.Lock(); defer rn.m.mu.Unlock(); return rn.m.peers[k] != nil },
		Now:     clock.now,
	})
	return rn
}

// relayTrio: carol relays (or not); alice and bob are her contacts and
// each other's, and every datagram between alice and bob is lost.
func relayTrio(t *testing.T, enabled bool) (n *fakeNet, alice, bob, carol *relayNode) {
	n = &fakeNet{}
	clock := newFakeClock()
	alice = newRelayNode(t, n, clock, 1, 1001, false)
	bob = newRelayNode(t, n, clock, 2, 1002, false)
	carol = newRelayNode(t, n, clock, 3, 1003, enabled)
	befriend(alice.testPeer, bob.testPeer)
	befriend(alice.testPeer, carol.testPeer)
	befriend(bob.testPeer, carol.testPeer)
	n.filter = func(p fakePacket) bool {
		return !(p.from == alice.addr && p.to == bob.addr || p.from == bob.addr && p.to == alice.addr)
	}
	alice.m.setEndpoint(carol.id.public(), carol.addr)
	bob.m.setEndpoint(carol.id.public(), carol.addr)
	n.pump(t)
	return n, alice, bob, carol
}

// TestRelaySession: alice reaches bob through carol; the session is
// alice's and bob's (carol forwards ciphertext), and answers return the
// same way.
func TestRelaySession(t *testing.T) {
	n, alice, bob, carol := relayTrio(t, true)
	if !slices.Contains(alice.r.relays(), carol.id.public()) || !slices.Contains(bob.r.relays(), carol.id.public()) {
		t.Fatalf("carol's offer: alice has %v, bob has %v", alice.r.relays(), bob.r.relays())
	}
	via := alice.r.pathAddr(carol.id.public(), bob.id.public())
	if !relayPrefix.Contains(via.Addr()) {
		t.Fatalf("path address %v", via)
	}
	alice.m.setEndpoint(bob.id.public(), via)
	if err := alice.m.send(bob.id.public(), []byte("hello via carol")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if got := bob.delivered(); !slices.Contains(got, "hello via carol") {
		t.Fatalf("bob got %q", got)
	}
	if err := bob.m.send(alice.id.public(), []byte("hi back")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if got := alice.delivered(); !slices.Contains(got, "hi back") {
		t.Fatalf("alice got %q", got)
	}
	if got := carol.delivered(); slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "hello") }) {
		t.Fatalf("carol's chat saw %q", got)
	}
	if carol.r.forwarded.Load() == 0 {
		t.Fatal("carol counted nothing forwarded")
	}
}

// TestRelayRefuses: a node without -relay forwards nothing; nor does a
// relay toward a contact without a live session, nor beyond the rate.
func TestRelayRefuses(t *testing.T) {
	n, alice, bob, carol := relayTrio(t, false)
	if len(alice.r.relays()) != 0 {
		t.Fatalf("carol offered without -relay")
	}
	alice.m.setEndpoint(bob.id.public(), alice.r.pathAddr(carol.id.public(), bob.id.public()))
	alice.m.send(bob.id.public(), []byte("x"))
	n.pump(t)
	if carol.r.forwarded.Load() != 0 || carol.r.refused.Load() == 0 || len(bob.delivered()) != 0 {
		t.Fatalf("carol without -relay forwarded %d, refused %d", carol.r.forwarded.Load(), carol.r.refused.Load())
	}

	carol.r.cfg.Enabled = true
	carol.mu.Lock()
	delete(carol.on, bob.id.public())
	carol.mu.Unlock()
	before := carol.r.refused.Load()
	carol.r.handle(alice.id.public(), (&relayFrame{Type: relayFrameTo, Peer: bob.id.public(), Packet: []byte{packetTransport}}).appendTo(nil))
	if carol.r.refused.Load() != before+1 {
		t.Fatal("carol forwarded to a contact without a session")
	}
	carol.mu.Lock()
	carol.on[bob.id.public()] = true
	carol.mu.Unlock()
	n.filter = func(fakePacket) bool { return false } // nothing matters on the wire now
	f := (&relayFrame{Type: relayFrameTo, Peer: bob.id.public(), Packet: []byte{packetTransport}}).appendTo(nil)
	ok := 0
	for range 2 * relayBurst {
		before := carol.r.refused.Load()
		carol.r.handle(alice.id.public(), f)
		if carol.r.refused.Load() == before {
			ok++
		}
	}
	if ok != relayBurst {
		t.Fatalf("forwarded %d of %d packets sent at once, want the burst of %d", ok, 2*relayBurst, relayBurst)
	}
}

// TestRelayHintsInPunch: a failed punch hands the session the path
// through a relay both contacts named in their records.
func TestRelayHintsInPunch(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	carol := testIdentity(t, 9).public()
	via := netip.MustParseAddrPort("[100::1]:1")
	a := newPunchSide(t, d, clock, 1, natView("192.168.1.10", "203.0.113.1"))
	b := newPunchSide(t, d, clock, 2, natView("192.168.1.10", "203.0.113.2"))
	for _, s := range []*punchSide{a, b} {
		s.p.cfg.Relays = func() []publicKey { return []publicKey{carol} }
		s.p.cfg.Via = func(relay, peer publicKey) netip.AddrPort {
			if relay != carol {
				t.Errorf("path through %v", relay)
			}
			return via
		}
	}
	a.p.announced(b.id.public())
	b.p.announced(a.id.public())
	a.p.lookedUp(b.id.public(), nil)
	b.p.lookedUp(a.id.public(), nil)
	var ev []string
	for range int((punchTimeout + 3*time.Second) / punchTick) {
		stepBoth(clock, 1, a, b)
		ev = append(ev, a.take()...)
		b.take()
	}
	forget, relay := slices.Index(ev, "forget"), slices.Index(ev, "connect "+via.String())
	if forget < 0 || relay < forget {
		t.Fatalf("a's events %q: want forget, then the path through carol", ev)
	}
}
