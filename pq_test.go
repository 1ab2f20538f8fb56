package main

import (
	"bytes"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"
)

// pqDirs gives each identity its own data directory for its post-quantum
// secrets, and the same one again when it restarts: use tweak as the
// sessionConfig tweak of newTestPeer or newTestPair.
type pqDirs struct {
	t    testing.TB
	dirs map[publicKey]string
}

func newPQDirs(t testing.TB) *pqDirs { return &pqDirs{t: t, dirs: map[publicKey]string{}} }

func (d *pqDirs) tweak(c *sessionConfig) {
	k := c.Identity.public()
	if d.dirs[k] == "" {
		d.dirs[k] = d.t.TempDir()
	}
	s, err := openPQStore(d.dirs[k])
	if err != nil {
		d.t.Fatal(err)
	}
	c.PQ = s
}

// pqConnected reports whether a and b share one current session keyed with
// a post-quantum PSK.
func pqConnected(a, b *testPeer) bool {
	a.m.mu.Lock()
	ap := a.m.peers[b.id.public()]
	var ak *keypair
	if ap != nil {
		ak = ap.keypairs.current
	}
	a.m.mu.Unlock()
	b.m.mu.Lock()
	bp := b.m.peers[a.id.public()]
	var bk *keypair
	if bp != nil {
		bk = bp.keypairs.current
	}
	b.m.mu.Unlock()
	return ak != nil && bk != nil && ak.localIndex == bk.remoteIndex && bk.localIndex == ak.remoteIndex &&
		ak.pqKeyed() && bk.pqKeyed() && ak.psk == bk.psk
}

// TestPQNeverLocksOut: whatever is lost, in whatever order things happen,
// and whoever crashes and restarts, two contacts whose network heals meet
// again on a session keyed with a post-quantum PSK (SPEC.md 4.12: the
// responder's fallback through its PSKs, the initiator's trial, and the
// PSKs written before they are used).
func TestPQNeverLocksOut(t *testing.T) {
	for seed := range uint64(24) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { pqChaos(t, seed) })
	}
}

func pqChaos(t *testing.T, seed uint64) {
	rng := mrand.New(mrand.NewPCG(seed, 12))
	var n fakeNet
	clock := newFakeClock()
	dirs := newPQDirs(t)
	a, b := newTestPair(t, &n, clock, dirs.tweak)
	seeds := map[*testPeer]byte{}
	for _, p := range []*testPeer{a, b} {
		seeds[p] = seedOf(t, p)
	}
	restart := func(p *testPeer, other *testPeer) *testPeer {
		q := newTestPeer(t, &n, clock, seeds[p], p.addr.Port(), dirs.tweak)
		seeds[q] = seeds[p]
		befriend(q, other)
		return q
	}
	a.m.setEndpoint(b.id.public(), b.addr)
	loss := 0.1 + 0.4*rng.Float64()
	n.filter = func(fakePacket) bool { return rng.Float64() >= loss }
	for step := range 300 {
		switch r := rng.IntN(100); {
		case r < 50:
			for _, p := range n.take() {
				n.deliver(p)
			}
		case r < 75:
			clock.advance(time.Duration(rng.IntN(6000)) * time.Millisecond)
			a.m.timers.tick()
			b.m.timers.tick()
		case r < 85:
			a.m.send(b.id.public(), []byte(fmt.Sprint("a", step)))
			b.m.send(a.id.public(), []byte(fmt.Sprint("b", step)))
		case r < 90:
			clock.advance(defaultRekeyAfterTime)
		case r < 93:
			a = restart(a, b)
			a.m.setEndpoint(b.id.public(), b.addr)
		case r < 96:
			b = restart(b, a)
			b.m.setEndpoint(a.id.public(), a.addr)
		default:
			a.m.setEndpoint(b.id.public(), b.addr)
			b.m.setEndpoint(a.id.public(), a.addr)
		}
	}
	n.filter = nil
	for i := range 400 {
		if pqConnected(a, b) {
			break
		}
		clock.advance(time.Second)
		a.m.timers.tick()
		b.m.timers.tick()
		a.m.setEndpoint(b.id.public(), b.addr)
		b.m.setEndpoint(a.id.public(), a.addr)
		if i%20 == 0 {
			a.m.send(b.id.public(), []byte("ping"))
			b.m.send(a.id.public(), []byte("ping"))
		}
		n.pump(t)
	}
	if !pqConnected(a, b) {
		for _, x := range [][2]*testPeer{{a, b}, {b, a}} {
			x[0].m.mu.Lock()
			p := x[0].m.peers[x[1].id.public()]
			t.Logf("%v: %d PSKs, used %v, missed %d; sessions %v", x[0].addr, p.pq.secrets.n, p.pq.secrets.used, p.pq.secrets.missed, p.keypairs)
			x[0].m.mu.Unlock()
		}
		t.Fatalf("loss %.2f: no post-quantum session within 400 s of the network healing", loss)
	}
}

// The datagrams that carry the exchange, told apart by their size, as an
// observer (and these tests' network) can.
const (
	pqKeyDatagram    = transportMinSize + pqKeyFrameLen    // 627
	pqCipherDatagram = transportMinSize + pqCipherFrameLen // 1122
)

func isPQDatagram(p fakePacket) bool {
	return p.b[0] == packetTransport && (len(p.b) == pqKeyDatagram || len(p.b) == pqCipherDatagram)
}

// pqOf returns a copy of what m holds about k's post-quantum state, and
// k's current and previous sessions.
func pqOf(m *sessionManager, k publicKey) (s pqSecrets, cur, prev *keypair) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[k]
	if p == nil {
		return pqSecrets{}, nil, nil
	}
	return p.pq.secrets, p.keypairs.current, p.keypairs.previous
}

// pqEvents records PQEvent calls.
type pqEvents struct {
	mu sync.Mutex
	ev []pqEvent
}

func (l *pqEvents) add(_ publicKey, e pqEvent) { l.mu.Lock(); l.ev = append(l.ev, e); l.mu.Unlock() }

func (l *pqEvents) list() []pqEvent { l.mu.Lock(); defer l.mu.Unlock(); return slices.Clone(l.ev) }

func TestParsePQFrame(t *testing.T) {
	key := func(i byte, n int) []byte {
		return append([]byte{sessionControl, pqKeyFragment, i}, make([]byte, n)...)
	}
	ct := func(n int) []byte { return append([]byte{sessionControl, pqCiphertext}, make([]byte, n)...) }
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{"first half", key(0, pqFragmentLen), false},
		{"second half", key(1, pqFragmentLen), false},
		{"ciphertext", ct(pqCiphertextLen), false},
		{"empty", nil, true},
		{"goodbye", []byte{sessionControl}, true},
		{"no fragment index", []byte{sessionControl, pqKeyFragment}, true},
		{"third half", key(2, pqFragmentLen), true},
		{"half a byte short", key(0, pqFragmentLen-1), true},
		{"half a byte long", key(1, pqFragmentLen+1), true},
		{"ciphertext short", ct(pqCiphertextLen - 1), true},
		{"ciphertext long", ct(pqCiphertextLen + 1), true},
		{"unknown type", append([]byte{sessionControl, 3}, make([]byte, pqCiphertextLen)...), true},
		{"not session control", append([]byte{chatFrameData, pqCiphertext}, make([]byte, pqCiphertextLen)...), true},
	}
	for _, tt := range tests {
		f, err := parsePQFrame(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: parsePQFrame(% x...) error %v, want error %v", tt.name, tt.in[:min(4, len(tt.in))], err, tt.wantErr)
			continue
		}
		if err != nil {
			if !errors.Is(err, errPQFrame) || f.kind != 0 || f.body != nil {
				t.Errorf("%s: error %v with frame %+v", tt.name, err, f)
			}
			continue
		}
		if got := f.appendTo(nil); !bytes.Equal(got, tt.in) {
			t.Errorf("%s: re-encodes to %d other bytes", tt.name, len(got))
		}
		for i := range tt.in {
			if _, err := parsePQFrame(tt.in[:i]); err == nil {
				t.Errorf("%s: the %d-byte prefix parses", tt.name, i)
			}
		}
	}
}

// TestPQExchange: the first session with a new contact is classical and
// carries only the exchange; the session that follows at once is keyed
// with its PSK and carries what waited; its own exchange gives the PSK of
// the next handshake. Both sides hold the same PSKs, and what crossed the
// wire is what SPEC.md 4.12 counts.
func TestPQExchange(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	var sizes []int
	n.filter = func(p fakePacket) bool { sizes = append(sizes, len(p.b)); return true }
	a, b := newTestPair(t, &n, clock, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	if err := a.m.send(b.id.public(), []byte("hello")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if err := b.m.send(a.id.public(), []byte("hi")); err != nil {
		t.Fatal(err)
	}
	n.pump(t)
	if !slices.Equal(b.delivered(), []string{"hello"}) || !slices.Equal(a.delivered(), []string{"hi"}) {
		t.Fatalf("delivered: a %q, b %q", a.delivered(), b.delivered())
	}
	as, acur, aprev := pqOf(a.m, b.id.public())
	bs, bcur, bprev := pqOf(b.m, a.id.public())
	if aprev == nil || bprev == nil || aprev.pqKeyed() || bprev.pqKeyed() {
		t.Fatal("the first session is not there or not classical")
	}
	// The classical session carried a keepalive and the two key fragments
	// one way, the ciphertext the other, and nothing else.
	if aprev.sendCounter.Load() != 1+pqFragments || bprev.sendCounter.Load() != 1 {
		t.Errorf("the classical session carried %d and %d packets, want %d and 1", aprev.sendCounter.Load(), bprev.sendCounter.Load(), 1+pqFragments)
	}
	if !acur.pqKeyed() || acur.psk != bcur.psk || !as.used || !bs.used {
		t.Fatal("the second session is not keyed with a shared post-quantum PSK")
	}
	if as.n != 2 || bs.n != 2 || as.psks != bs.psks || as.psks[1] != acur.psk {
		t.Errorf("PSKs: a %d, b %d; want both the same two, the newest from the second session's exchange", as.n, bs.n)
	}
	if a.established != 1 || b.established != 1 {
		t.Errorf("Established a %d b %d, want once each: for the post-quantum session only", a.established, b.established)
	}
	want := []int{initiationSize, responseSize, transportMinSize, pqKeyDatagram, pqKeyDatagram, pqCipherDatagram,
		initiationSize, responseSize, transportMinSize + len("hello"), pqKeyDatagram, pqKeyDatagram}
	if !slices.Equal(sizes[:len(want)], want) || sizes[len(want)] != pqCipherDatagram {
		t.Errorf("datagram sizes %v, want %v then the ciphertext", sizes, want)
	}
}

// establishPQ connects a and b until both hold the same two PSKs and a
// session keyed with the older one: the first session's exchange makes the
// next session post-quantum; a payload on that one makes the rekey after it
// run an exchange too (the payloads are then forgotten).
func establishPQ(t *testing.T, n *fakeNet, clock *fakeClock, a, b *testPeer) {
	t.Helper()
	establish(t, n, a, b)
	a.m.send(b.id.public(), []byte("pq"))
	n.pump(t)
	clock.advance(defaultRekeyAfterTime)
	a.m.send(b.id.public(), []byte("pq"))
	n.pump(t)
	for _, p := range []*testPeer{a, b} {
		p.mu.Lock()
		p.got = nil
		p.mu.Unlock()
	}
	as, _, _ := pqOf(a.m, b.id.public())
	bs, _, _ := pqOf(b.m, a.id.public())
	if !pqConnected(a, b) || as.n != 2 || as.psks != bs.psks {
		t.Fatal("no post-quantum session")
	}
}

// TestPQRekey: a rekey mixes the newest PSK; once it succeeds the older
// one is gone, and the new session's exchange brings the next.
func TestPQRekey(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	establishPQ(t, &n, clock, a, b)
	before, _, _ := pqOf(a.m, b.id.public())
	clock.advance(defaultRekeyAfterTime)
	a.m.send(b.id.public(), []byte("rekey"))
	n.pump(t)
	as, acur, _ := pqOf(a.m, b.id.public())
	bs, _, _ := pqOf(b.m, a.id.public())
	if !pqConnected(a, b) || acur.psk != before.psks[0] {
		t.Fatal("the rekey did not use the newest PSK")
	}
	if as.n != 2 || as.psks != bs.psks || as.psks[1] != before.psks[0] || as.holds(before.psks[1]) || as.psks[0] == before.psks[0] {
		t.Error("after the rekey the PSKs are not the new exchange's and the session's, or the oldest is kept")
	}
	if !slices.Equal(b.delivered(), []string{"rekey"}) {
		t.Errorf("b got %q", b.delivered())
	}
}

// TestPQIdleSessions: while no payload of the layer above goes either way,
// the sessions that keepalives rekey every RekeyAfterTime run no exchange
// until the last one is pqIdleEvery old; the session after one that
// carried a payload runs it at once (SPEC.md 4.12, "When").
func TestPQIdleSessions(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	establishPQ(t, &n, clock, a, b)
	inits, keys := 0, 0
	n.filter = func(p fakePacket) bool {
		switch len(p.b) {
		case initiationSize:
			inits++
		case pqKeyDatagram:
			keys++
		}
		return true
	}
	// idle runs both sides' timers for d, a second at a time.
	idle := func(d time.Duration) {
		for range int(d / time.Second) {
			clock.advance(time.Second)
			a.m.timers.tick()
			b.m.timers.tick()
			n.pump(t)
		}
	}
	idle(pqIdleEvery - time.Minute)
	if !pqConnected(a, b) {
		t.Fatal("the idle session did not last")
	}
	if min := int((pqIdleEvery - time.Minute) / defaultRekeyAfterTime); inits < min-1 || keys != 0 {
		t.Fatalf("idle for %v: %d initiations (want about %d), %d key fragments (want 0)", pqIdleEvery-time.Minute, inits, min, keys)
	}
	idle(2*time.Minute + defaultRekeyAfterTime)
	if keys != pqFragments {
		t.Fatalf("past pqIdleEvery: %d key fragments sent, want one exchange (%d)", keys, pqFragments)
	}
	keys = 0
	a.m.send(b.id.public(), []byte("hello"))
	n.pump(t)
	idle(defaultRekeyAfterTime + 10*time.Second)
	if keys != pqFragments || !slices.Equal(b.delivered(), []string{"hello"}) {
		t.Fatalf("after a payload: %d key fragments in the next session, want %d; b got %q", keys, pqFragments, b.delivered())
	}
	keys = 0
	idle(2 * defaultRekeyAfterTime)
	if keys != 0 {
		t.Fatalf("idle again: %d key fragments, want 0", keys)
	}
}

// holds reports whether s holds psk (tests).
func (s *pqSecrets) holds(psk [noiseKeyLen]byte) bool {
	return slices.Contains(s.psks[:s.n], psk)
}

// TestPQLostCiphertext: a lost key fragment is sent again; a lost
// ciphertext is asked for again by the key being resent, and answered
// with the same one; lost for good, the two
// sides hold different newest PSKs and still connect, whoever initiates:
// the initiator tries each of its PSKs, the responder falls back to an
// older one after a response that was not confirmed.
func TestPQLostCiphertext(t *testing.T) {
	t.Run("resent", func(t *testing.T) {
		var n fakeNet
		clock := newFakeClock()
		a, b := newTestPair(t, &n, clock, nil)
		lost := 0
		n.filter = func(p fakePacket) bool {
			if len(p.b) == pqCipherDatagram && lost == 0 {
				lost++
				return false
			}
			return true
		}
		a.m.setEndpoint(b.id.public(), b.addr)
		a.m.send(b.id.public(), []byte("waits"))
		n.pump(t)
		if len(b.delivered()) != 0 || b.m.pq.stats.exchanges.Load() != 1 {
			t.Fatal("delivered without the ciphertext, or b did not answer")
		}
		clock.advance(pqRetry)
		a.m.timers.tick()
		n.pump(t)
		if !slices.Equal(b.delivered(), []string{"waits"}) || b.m.pq.stats.exchanges.Load() != 2 || !pqConnected(a, b) {
			t.Fatalf("after the resent key: b got %q, answered %d exchanges", b.delivered(), b.m.pq.stats.exchanges.Load())
		}
	})
	t.Run("key fragment lost", func(t *testing.T) {
		var n fakeNet
		clock := newFakeClock()
		a, b := newTestPair(t, &n, clock, nil)
		lost := false
		n.filter = func(p fakePacket) bool {
			if len(p.b) == pqKeyDatagram && !lost {
				lost = true
				return false
			}
			return true
		}
		a.m.setEndpoint(b.id.public(), b.addr)
		a.m.send(b.id.public(), []byte("waits"))
		n.pump(t)
		if len(b.delivered()) != 0 || b.m.pq.stats.exchanges.Load() != 0 {
			t.Fatal("b answered half a key")
		}
		clock.advance(pqRetry)
		a.m.timers.tick()
		n.pump(t)
		if !slices.Equal(b.delivered(), []string{"waits"}) || !pqConnected(a, b) {
			t.Fatalf("after the resent key: b got %q", b.delivered())
		}
	})
	for _, who := range []string{"loser initiates", "winner initiates"} {
		t.Run(who, func(t *testing.T) {
			var n fakeNet
			clock := newFakeClock()
			a, b := newTestPair(t, &n, clock, nil)
			establishPQ(t, &n, clock, a, b)
			// The next session's ciphertext never arrives: b holds a
			// newer PSK than a.
			n.filter = func(p fakePacket) bool { return len(p.b) != pqCipherDatagram }
			clock.advance(defaultRekeyAfterTime)
			a.m.send(b.id.public(), []byte("rekey"))
			n.pump(t)
			for range pqWait / pqRetry {
				clock.advance(pqRetry)
				a.m.timers.tick()
				n.pump(t)
			}
			as, _, _ := pqOf(a.m, b.id.public())
			bs, _, _ := pqOf(b.m, a.id.public())
			if as.psks[0] == bs.psks[0] || as.psks[0] != bs.psks[1] {
				t.Fatal("want b one PSK ahead of a")
			}
			n.filter = nil
			x, y := a, b // a, lacking b's newest PSK, initiates: b's response with it fails
			if who == "winner initiates" {
				x, y = b, a
			}
			clock.advance(defaultRekeyAfterTime)
			x.m.send(y.id.public(), []byte("again"))
			n.pump(t)
			for i := 0; !pqConnected(a, b) && i < 3; i++ {
				clock.advance(defaultRekeyTimeout)
				x.m.timers.tick()
				n.pump(t)
			}
			if !pqConnected(a, b) || !slices.Contains(y.delivered(), "again") {
				t.Fatalf("no session after a lost ciphertext; %s got %q", y.addr, y.delivered())
			}
			// Only a response with the PSK a lacks fails, once.
			wantFails := map[string]uint64{"loser initiates": 1, "winner initiates": 0}[who]
			if got := x.m.stats.handshakeFail.Load(); got != wantFails {
				t.Errorf("%d responses failed, want %d", got, wantFails)
			}
		})
	}
}

// TestPQRestart: the PSKs outlive a restart on either side, written as
// SPEC.md 4.12 says (mode 0600), so the first session after it is keyed
// with a post-quantum PSK at once: no classical session, nothing waits.
func TestPQRestart(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	dirs := newPQDirs(t)
	a, b := newTestPair(t, &n, clock, dirs.tweak)
	establishPQ(t, &n, clock, a, b)
	for _, dir := range dirs.dirs {
		fi, err := os.Stat(filepath.Join(dir, pqFileName))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", pqFileName, err, fi.Mode())
		}
	}
	for i, restarting := range []*testPeer{a, b} {
		other := b
		if restarting == b {
			other = a
		}
		clock.advance(defaultRekeyTimeout) // a later timestamp, and no simultaneous-open rule in the way
		r := newTestPeer(t, &n, clock, seedOf(t, restarting), restarting.addr.Port(), dirs.tweak)
		befriend(r, other)
		if restarting == a {
			a = r
		} else {
			b = r
		}
		msg := fmt.Sprint("after restart ", i)
		r.m.setEndpoint(other.id.public(), other.addr)
		r.m.send(other.id.public(), []byte(msg))
		n.pump(t)
		_, cur, prev := pqOf(r.m, other.id.public())
		if !pqConnected(a, b) || prev != nil || !slices.Contains(other.delivered(), msg) {
			t.Fatalf("restart %d: want the first session post-quantum (previous %v) and %q delivered, got %q", i, prev, msg, other.delivered())
		}
		if cur.sendCounter.Load() < 3 { // the message, then the two key fragments
			t.Errorf("restart %d: the new session sent %d packets", i, cur.sendCounter.Load())
		}
	}
}

// TestPQRefusesZeroPSK: once a handshake has used a post-quantum PSK, a
// contact's zero-PSK handshake is refused both ways, and the user is told
// once. That is a contact which lost its data directory, or someone who
// stole its key file but not its PSKs.
func TestPQRefusesZeroPSK(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	var ev pqEvents
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) { c.PQEvent = ev.add })
	establishPQ(t, &n, clock, a, b)
	// b's key, no PSKs, another address; b's sessions have expired.
	impostor := newTestPeer(t, &n, clock, seedOf(t, b), 1666, nil)
	befriend(impostor, a)
	delete(n.nodes, b.addr) // the real b is gone
	clock.advance(defaultRejectAfterTime)
	a.m.timers.tick()
	n.take()
	a.m.setEndpoint(b.id.public(), impostor.addr)
	a.m.send(b.id.public(), []byte("for b only"))
	for range 3 {
		n.pump(t)
		clock.advance(defaultRekeyTimeout)
		a.m.timers.tick()
	}
	impostor.m.setEndpoint(a.id.public(), a.addr)
	impostor.m.send(a.id.public(), []byte("it is me, b"))
	n.pump(t)
	if a.m.hasSession(b.id.public()) || impostor.m.hasSession(a.id.public()) || len(impostor.delivered())+len(a.delivered()) != 0 {
		t.Fatalf("a session with the zero PSK: %v %v %q %q", a.m.hasSession(b.id.public()), impostor.m.hasSession(a.id.public()), impostor.delivered(), a.delivered())
	}
	if got := a.m.pq.stats.refused.Load(); got < 3 || !slices.Equal(ev.list(), []pqEvent{pqRefused}) {
		t.Errorf("refused %d responses, events %v; want at least 3, reported once", got, ev.list())
	}
}

// TestPQClassicalPeer: a contact whose client does no exchange (a
// version-1 client; here, a network that drops every exchange frame from
// the start) gets our messages on classical sessions after pqWait, and the
// user is told; later sessions carry them at once. Once a post-quantum PSK
// exists, dropping every exchange frame changes nothing: the sessions stay
// keyed with the last PSK, nothing goes classical.
func TestPQClassicalPeer(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	var ev pqEvents
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) { c.PQEvent = ev.add })
	n.filter = func(p fakePacket) bool { return !isPQDatagram(p) }
	a.m.setEndpoint(b.id.public(), b.addr)
	a.m.send(b.id.public(), []byte("classical"))
	n.pump(t)
	if len(b.delivered()) != 0 {
		t.Fatal("delivered before pqWait")
	}
	for range pqWait/defaultTickInterval + 1 {
		clock.advance(defaultTickInterval)
		a.m.timers.tick()
		b.m.timers.tick()
		n.pump(t)
	}
	if !slices.Equal(b.delivered(), []string{"classical"}) || !slices.Equal(ev.list(), []pqEvent{pqClassical, pqClassical}) {
		t.Fatalf("after pqWait b got %q, events %v", b.delivered(), ev.list())
	}
	clock.advance(defaultRekeyAfterTime)
	a.m.send(b.id.public(), []byte("rekeyed"))
	n.pump(t)
	if !slices.Contains(b.delivered(), "rekeyed") {
		t.Fatal("a later classical session did not carry the message at once")
	}

	// The downgrade attempt: a and b have a post-quantum PSK, the network
	// drops every exchange frame.
	var m fakeNet
	c, d := newTestPair(t, &m, clock, func(c *sessionConfig) { c.PQEvent = ev.add })
	establishPQ(t, &m, clock, c, d)
	m.filter = func(p fakePacket) bool { return !isPQDatagram(p) }
	for i := range 3 {
		clock.advance(defaultRekeyAfterTime)
		c.m.send(d.id.public(), []byte(fmt.Sprint("pq ", i)))
		m.pump(t)
		for range pqWait / defaultTickInterval {
			clock.advance(defaultTickInterval)
			c.m.timers.tick()
			d.m.timers.tick()
			m.pump(t)
		}
		if !pqConnected(c, d) || !slices.Contains(d.delivered(), fmt.Sprint("pq ", i)) {
			t.Fatalf("rekey %d with the exchange dropped: post-quantum %v, d got %q", i, pqConnected(c, d), d.delivered())
		}
	}
	if len(ev.list()) != 2 {
		t.Errorf("events %v: the downgrade attempt was taken for a classical peer", ev.list())
	}
}

// --- SPEC.md 4.12's vector

// pqVectorHandshake runs the handshake of vector `handshake` (fixed keys,
// timestamp, indices) with psk in its psk slot, and returns the initiation
// and response (with mac1), the handshake hash and the initiator's keys.
func pqVectorHandshake(t *testing.T, psk [noiseKeyLen]byte) (init, resp []byte, h [noiseHashLen]byte, send, recv [noiseKeyLen]byte) {
	t.Helper()
	ini, res := testIdentity(t, 0x10), testIdentity(t, 0x40)
	ts := tai64n(time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC))
	var hi, hr handshake
	im, err := hi.createInitiation(ini, res.public(), 0x11223344, ts, &fixedReader{[][]byte{seqBytes(0x70, 32)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := ini.staticSecret(res.public())
	if err != nil {
		t.Fatal(err)
	}
	i2r := derivePairKeys(&secret, ini.public(), res.public()).send
	r2i := derivePairKeys(&secret, res.public(), ini.public()).send
	i2r.sealOuter(&im, ts)
	init = im.appendTo(nil)
	mac := keyedMAC(i2r.mac1[:], init[:initiationOffMAC1])
	copy(init[initiationOffMAC1:], mac[:])
	if err := hr.consumeInitiation(res, &im, nil); err != nil {
		t.Fatal(err)
	}
	rm, err := hr.createResponse(0x55667788, &fixedReader{[][]byte{seqBytes(0xa0, 32)}}, psk)
	if err != nil {
		t.Fatal(err)
	}
	resp = rm.appendTo(nil)
	mac = keyedMAC(r2i.mac1[:], resp[:responseOffMAC1])
	copy(resp[responseOffMAC1:], mac[:])
	if _, err := hi.consumeResponse(&rm, [][noiseKeyLen]byte{psk}, 1); err != nil {
		t.Fatal(err)
	}
	send, recv, h, err = hi.beginSession()
	if err != nil {
		t.Fatal(err)
	}
	return init, resp, h, send, recv
}

// pqVector is SPEC.md's vector `pq`: the exchange on the session of vector
// `handshake`, the PSK it yields, the next handshake with that PSK, the
// file line, and the zero-PSK response refused.
func pqVector(t *testing.T) map[string]string {
	hx := hex.EncodeToString
	_, _, h, _, _ := pqVectorHandshake(t, zeroPSK)
	seed, random := seqBytes(0x80, pqSeedLen), seqBytes(0xc0, 32)
	dk, err := mlkem.NewDecapsulationKey768(seed)
	if err != nil {
		t.Fatal(err)
	}
	ek := dk.EncapsulationKey().Bytes()
	shared, ct, err := mlkemtest.Encapsulate768(dk.EncapsulationKey(), random)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := dk.Decapsulate(ct); err != nil || !bytes.Equal(got, shared) {
		t.Fatal("decapsulation disagrees with encapsulation")
	}
	psk := pqDerive(h, ek, ct, shared)
	x := pqExchange{}
	copy(x.ek[:], ek)
	frames := x.keyFrames()
	ctFrame := (&pqFrame{kind: pqCiphertext, body: ct}).appendTo(nil)
	for _, f := range append(slices.Clone(frames), ctFrame) {
		if g, err := parsePQFrame(f); err != nil || !bytes.Equal(g.appendTo(nil), f) {
			t.Fatalf("frame % x...: %v", f[:3], err)
		}
	}
	ekHash, ctHash := blake2s.Sum256(ek), blake2s.Sum256(ct)
	init, resp, h2, send, recv := pqVectorHandshake(t, psk)

	// The zero-PSK response of vector `handshake`, to an initiator that
	// has used this PSK: refused, though it authenticates.
	_, zeroResp, _, _, _ := pqVectorHandshake(t, zeroPSK)
	zm, _ := parseResponse(zeroResp)
	var hi handshake
	if _, err := hi.createInitiation(testIdentity(t, 0x10), testIdentity(t, 0x40).public(), 0x11223344,
		tai64n(time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)), &fixedReader{[][]byte{seqBytes(0x70, 32)}}, nil); err != nil {
		t.Fatal(err)
	}
	outcome := "accepted"
	if _, err := hi.consumeResponse(&zm, [][noiseKeyLen]byte{psk, zeroPSK}, 1); errors.Is(err, errPSKRefused) {
		outcome = "refused"
	}
	line := strings.TrimSuffix(string(formatPQFile([]pqRecord{{key: testIdentity(t, 0x40).public(), used: true, psks: [][noiseKeyLen]byte{psk}}})), "\n")
	_, fileLine, _ := strings.Cut(line, "\n")
	return map[string]string{
		"handshake_hash":             hx(h[:]),
		"seed":                       hx(seed),
		"encapsulation_key":          hx(ek),
		"key_fragment_0_header":      hx(frames[0][:3]),
		"key_fragment_1_header":      hx(frames[1][:3]),
		"encapsulation_key_hash":     hx(ekHash[:]),
		"randomness":                 hx(random),
		"ciphertext":                 hx(ct),
		"ciphertext_header":          hx(ctFrame[:2]),
		"ciphertext_hash":            hx(ctHash[:]),
		"shared_key":                 hx(shared),
		"psk":                        hx(psk[:]),
		"next_initiation":            hx(init),
		"next_response":              hx(resp),
		"next_handshake_hash":        hx(h2[:]),
		"next_initiator_send_key":    hx(send[:]),
		"next_initiator_receive_key": hx(recv[:]),
		"file_line":                  fileLine,
		"zero_psk_response_outcome":  outcome,
	}
}

// pqVectorKeys is the order of vector `pq`'s lines in SPEC.md.
var pqVectorKeys = []string{"handshake_hash", "seed", "encapsulation_key", "encapsulation_key_hash",
	"key_fragment_0_header", "key_fragment_1_header", "randomness", "ciphertext", "ciphertext_hash",
	"ciphertext_header", "shared_key", "psk", "next_initiation", "next_response", "next_handshake_hash",
	"next_initiator_send_key", "next_initiator_receive_key", "file_line", "zero_psk_response_outcome"}

// pqWrap breaks long hex into SPEC.md's continuation lines of 96 digits.
func pqWrap(v string) string {
	const width = 96
	if len(v) <= width || strings.Contains(v, " ") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i += width {
		if i > 0 {
			b.WriteString("\n    ")
		}
		b.WriteString(v[i:min(len(v), i+width)])
	}
	return b.String()
}

func TestPQSpecVector(t *testing.T) {
	want := pqVector(t)
	if len(want) != len(pqVectorKeys) {
		t.Fatalf("%d keys computed, %d listed", len(want), len(pqVectorKeys))
	}
	wrapped := map[string]string{}
	for k, v := range want {
		wrapped[k] = pqWrap(v)
	}
	updateSpecBlock(t, "session-vector", "pq", pqVectorKeys, wrapped)
	got := specVectorMap(t, "session-vector")["pq"]
	if got == nil {
		t.Fatal("SPEC.md has no session-vector pq")
	}
	for _, k := range pqVectorKeys {
		v := got[k]
		if k != "file_line" && k != "zero_psk_response_outcome" {
			v = strings.ReplaceAll(v, " ", "")
		}
		if v != want[k] {
			t.Errorf("SPEC.md pq: %s = %s, want %s", k, got[k], want[k])
		}
	}
	if len(got) != len(want) {
		t.Errorf("SPEC.md pq has %d keys, want %d", len(got), len(want))
	}
	// The psk does not enter the initiation: the next one is the same as
	// vector `handshake`'s.
	if hs := specVectorMap(t, "session-vector")["handshake"]; hs["initiation"] != want["next_initiation"] {
		t.Error("the initiation changed with the psk")
	}
}

// BenchmarkMLKEM768 measures the CPU an exchange adds to a session: the
// initiator's key generation and decapsulation, the responder's
// encapsulation, and each side's derivation (SPEC.md 4.12, "Cost").
//
//	go test -run='^$' -bench=BenchmarkMLKEM768 .
func BenchmarkMLKEM768(b *testing.B) {
	seed := seqBytes(0x80, pqSeedLen)
	dk, _ := mlkem.NewDecapsulationKey768(seed)
	ek := dk.EncapsulationKey()
	shared, ct := ek.Encapsulate()
	var h [noiseHashLen]byte
	b.Run("keygen", func(b *testing.B) {
		for b.Loop() {
			k, _ := mlkem.NewDecapsulationKey768(seed)
			_ = k.EncapsulationKey().Bytes()
		}
	})
	b.Run("encapsulate", func(b *testing.B) {
		for b.Loop() {
			k, _ := mlkem.NewEncapsulationKey768(ek.Bytes())
			k.Encapsulate()
		}
	})
	b.Run("decapsulate", func(b *testing.B) {
		for b.Loop() {
			dk.Decapsulate(ct)
		}
	})
	b.Run("derive", func(b *testing.B) {
		for b.Loop() {
			pqDerive(h, ek.Bytes(), ct, shared)
		}
	})
}

// FuzzPQFrame: whatever parses as a post-quantum frame re-encodes to the
// same bytes, and an error leaves nothing; sealed on a live session, any
// payload of the session layer's own reaches neither layer above, and the
// session lives on. The corpus seeds are vector `pq`'s frames.
func FuzzPQFrame(f *testing.F) {
	n := &fakeNet{}
	a, b := newTestPair(f, n, newFakeClock(), nil)
	establish(f, n, a, b)
	x := pqExchange{}
	for i := range x.ek {
		x.ek[i] = byte(i)
	}
	for _, fr := range x.keyFrames() {
		f.Add(fr)
	}
	f.Add((&pqFrame{kind: pqCiphertext, body: make([]byte, pqCiphertextLen)}).appendTo(nil))
	f.Add([]byte{sessionControl, pqKeyFragment, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := parsePQFrame(data)
		if err == nil && !bytes.Equal(fr.appendTo(nil), data) {
			t.Fatalf("parsePQFrame(% x...) re-encodes to other bytes", data[:3])
		}
		if err != nil && (fr.kind != 0 || fr.index != 0 || fr.body != nil) {
			t.Fatal("parsePQFrame: error with a non-zero result")
		}
		if len(data) < 2 || len(data) > maxTransportPayload {
			return // nothing sealed, or the goodbye
		}
		pt := append([]byte{sessionControl}, data[1:]...) // the session layer's own
		for _, x := range [][2]*testPeer{{a, b}, {b, a}} {
			x[0].m.mu.Lock()
			kp := x[0].m.peers[x[1].id.public()].keypairs.current
			x[0].m.mu.Unlock()
			pkt, err := kp.seal(nil, pt)
			if err != nil {
				t.Fatal(err)
			}
			x[1].m.handlePacket(x[0].addr, pkt)
			n.pump(t)
			if len(x[1].delivered()) != 0 || !x[1].m.hasSession(x[0].id.public()) {
				t.Fatalf("a session payload of % x... was delivered, or ended the session", pt[:min(3, len(pt))])
			}
		}
	})
}

// TestPQFile: the file's strict layout (SPEC.md 4.12): what parses
// re-encodes to the same bytes, and every variation below is refused.
func TestPQFile(t *testing.T) {
	ka, kb := testIdentity(t, 1).public(), testIdentity(t, 2).public()
	if ka.String() > kb.String() {
		ka, kb = kb, ka
	}
	p1, p2 := hex.EncodeToString(seqBytes(1, 32)), hex.EncodeToString(seqBytes(0x41, 32))
	good := pqFileHeader + "\n" + ka.String() + " used " + p1 + " " + p2 + "\n" + kb.String() + " new " + p2 + "\n"
	recs, err := parsePQFile([]byte(good))
	if err != nil || len(recs) != 2 || !recs[0].used || recs[1].used || len(recs[0].psks) != 2 {
		t.Fatalf("parsePQFile(good) = %+v, %v", recs, err)
	}
	if got := string(formatPQFile([]pqRecord{recs[1], recs[0]})); got != good {
		t.Errorf("formatPQFile = %q, want %q", got, good)
	}
	if recs, err := parsePQFile([]byte(pqFileHeader + "\n")); err != nil || len(recs) != 0 {
		t.Errorf("an empty file: %v, %v", recs, err)
	}
	line := func(s string) string { return pqFileHeader + "\n" + s + "\n" }
	bad := map[string]string{
		"no header":      ka.String() + " new " + p1 + "\n",
		"wrong header":   "kadchat pq v2\n",
		"no final LF":    strings.TrimSuffix(good, "\n"),
		"blank line":     good + "\n",
		"unsorted":       pqFileHeader + "\n" + kb.String() + " new " + p2 + "\n" + ka.String() + " new " + p1 + "\n",
		"repeated key":   pqFileHeader + "\n" + ka.String() + " new " + p2 + "\n" + ka.String() + " new " + p1 + "\n",
		"no PSK":         line(ka.String() + " new"),
		"three PSKs":     line(ka.String() + " new " + p1 + " " + p2 + " " + hex.EncodeToString(seqBytes(9, 32))),
		"bad state":      line(ka.String() + " maybe " + p1),
		"uppercase hex":  line(ka.String() + " new " + strings.ToUpper(p1)),
		"short PSK":      line(ka.String() + " new " + p1[2:]),
		"long PSK":       line(ka.String() + " new " + p1 + "00"),
		"zero PSK":       line(ka.String() + " new " + strings.Repeat("0", 64)),
		"repeated PSK":   line(ka.String() + " new " + p1 + " " + p1),
		"two spaces":     line(ka.String() + "  new " + p1),
		"tab":            line(ka.String() + "\tnew " + p1),
		"bad key":        line("kc1" + strings.Repeat("a", 58) + " new " + p1),
		"trailing space": line(ka.String() + " new " + p1 + " "),
		"CRLF":           strings.ReplaceAll(good, "\n", "\r\n"),
	}
	for name, in := range bad {
		if recs, err := parsePQFile([]byte(in)); err == nil || recs != nil || !errors.Is(err, errPQFile) {
			t.Errorf("%s: parsePQFile = %v, %v; want an errPQFile", name, recs, err)
		}
	}
}

// TestPQForget: removing a contact erases its PSKs from the file at once,
// and a corrupt file stops the start instead of being replaced.
func TestPQForget(t *testing.T) {
	var n fakeNet
	dirs := newPQDirs(t)
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, dirs.tweak)
	establishPQ(t, &n, clock, a, b)
	path := filepath.Join(dirs.dirs[a.id.public()], pqFileName)
	if f, _ := os.ReadFile(path); !strings.Contains(string(f), b.id.public().String()) {
		t.Fatalf("the file does not name b:\n%s", f)
	}
	a.m.forget(b.id.public())
	if f, _ := os.ReadFile(path); string(f) != pqFileHeader+"\n" {
		t.Errorf("after forgetting b the file holds:\n%s", f)
	}
	os.WriteFile(path, []byte("kadchat pq v1\ngarbage\n"), 0o600)
	if _, err := openPQStore(filepath.Dir(path)); !errors.Is(err, errPQFile) {
		t.Errorf("openPQStore of a corrupt file: %v", err)
	}
	if f, _ := os.ReadFile(path); string(f) != "kadchat pq v1\ngarbage\n" {
		t.Error("the corrupt file was changed")
	}
}

// TestPQFramesOutOfPlace: a frame the receiver has no use for is dropped
// and counted, a half key alone is not, and a key repeated on the same
// session gets the same ciphertext without a second encapsulation.
func TestPQFramesOutOfPlace(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	establishPQ(t, &n, clock, a, b) // a initiated the current session
	if bad := a.m.pq.stats.bad.Load() + b.m.pq.stats.bad.Load(); bad != 0 {
		t.Fatalf("%d frames counted bad in a clean exchange", bad)
	}
	seal := func(from, to *testPeer, pt []byte) {
		from.m.mu.Lock()
		kp := from.m.peers[to.id.public()].keypairs.current
		from.m.mu.Unlock()
		pkt, err := kp.seal(nil, pt)
		if err != nil {
			t.Fatal(err)
		}
		to.m.handlePacket(from.addr, pkt)
	}
	x := pqExchange{}
	half := x.keyFrames()[0]
	ct := (&pqFrame{kind: pqCiphertext, body: make([]byte, pqCiphertextLen)}).appendTo(nil)
	seal(b, a, half) // a key fragment from the session's responder
	seal(a, b, ct)   // a ciphertext from the session's initiator
	seal(b, a, ct)   // a second ciphertext: the exchange is over
	if got := a.m.pq.stats.bad.Load() + b.m.pq.stats.bad.Load(); got != 3 {
		t.Errorf("%d frames counted bad, want 3", got)
	}
	// b answered a's key once; the same key again gets the same answer.
	b.m.mu.Lock()
	ex := b.m.peers[a.id.public()].pq.ex
	b.m.mu.Unlock()
	exchanges := b.m.pq.stats.exchanges.Load()
	for _, f := range ex.keyFrames() {
		seal(a, b, f)
	}
	q := n.take()
	if len(q) != 1 || len(q[0].b) != pqCipherDatagram || b.m.pq.stats.exchanges.Load() != exchanges {
		t.Fatalf("a repeated key drew %d datagrams and %d new exchanges, want the ciphertext again and none", len(q), b.m.pq.stats.exchanges.Load()-exchanges)
	}
	b.m.mu.Lock()
	again := bytes.Clone(b.m.peers[a.id.public()].pq.ex.ct)
	b.m.mu.Unlock()
	if !bytes.Equal(again, ex.ct) {
		t.Error("the answer changed")
	}
}

// TestPQSecrets walks pqSecrets through SPEC.md 4.12's rules: which PSK a
// response mixes, what an exchange keeps, what a handshake lets go.
func TestPQSecrets(t *testing.T) {
	k := func(b byte) [noiseKeyLen]byte { return [noiseKeyLen]byte{b} }
	var s pqSecrets
	want := func(step string, psks ...[noiseKeyLen]byte) {
		t.Helper()
		if got := s.candidates(); !slices.Equal(got, psks) {
			t.Errorf("%s: candidates %x, want %x", step, got, psks)
		}
	}
	want("new contact", zeroPSK)
	s.add(k(1), zeroPSK)
	want("first exchange, on a classical session", k(1), zeroPSK)
	for i, w := range []struct {
		unconfirmed bool
		psk         [noiseKeyLen]byte
	}{{false, k(1)}, {true, zeroPSK}, {true, k(1)}, {false, k(1)}} {
		if got := s.forResponse(w.unconfirmed); got != w.psk {
			t.Errorf("response %d (unconfirmed before: %v) mixes %x, want %x", i, w.unconfirmed, got, w.psk)
		}
	}
	s.commit(k(1))
	want("a handshake used it", k(1))
	if !s.used || s.missed != 0 {
		t.Errorf("after a commit: used %v, missed %d", s.used, s.missed)
	}
	s.add(k(2), k(1))
	want("second exchange", k(2), k(1))
	s.commit(k(1))
	want("a handshake used the older one", k(2), k(1))
	s.add(k(3), k(1))
	want("third exchange, on that session", k(3), k(1))
	s.commit(k(3))
	want("a handshake used the newest", k(3))
	s.commit(k(4))
	want("a handshake used one replaced meanwhile", k(4))
	s.wipe()
	want("forgotten", zeroPSK)
}
