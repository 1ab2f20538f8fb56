// Tests of invitations (SPEC.md 7.1, 7.2, 7.4-7.10): the code, the wire
// format, runs over loopback UDP, the limits with an injected clock, and
// SPEC.md 7.10's vector.
package main

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// The code and the wire format.

func TestParseInviteCode(t *testing.T) {
	tests := []struct {
		in      string
		wantNP  uint16
		wantPW  string
		wantErr string // substring
	}{
		{in: "4821-tumor-unicorn", wantNP: 4821, wantPW: "tumor-unicorn"},
		{in: "  0007-Aardvark-ADROITNESS ", wantNP: 7, wantPW: "aardvark-adroitness"},
		{in: "9999 zulu yucatan", wantNP: 9999, wantPW: "zulu-yucatan"},
		{in: "0000 - zulu -- yucatan", wantNP: 0, wantPW: "zulu-yucatan"},
		{in: "4821-tumor-unicorn-x", wantErr: "has 4 parts"},
		{in: "4821_tumor_unicorn", wantErr: "has 1 parts"},
		{in: "4821-tumor", wantErr: "has 2 parts"},
		{in: "482-tumor-unicorn", wantErr: "4 digits"},
		{in: "48a1-tumor-unicorn", wantErr: "4 digits"},
		{in: "4821-tumor-uproar", wantErr: `did you mean`},
		{in: "4821-tumr-unicorn", wantErr: `did you mean "tumor"`},
		{in: "4821-unicorn-tumor", wantErr: "other position"},
		{in: "", wantErr: "has 0 parts"},
	}
	for _, tt := range tests {
		np, pw, err := parseInviteCode(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || np != 0 || pw != "" {
				t.Errorf("parseInviteCode(%q) = %d, %q, %v; want error with %q", tt.in, np, pw, err, tt.wantErr)
			}
			continue
		}
		if err != nil || np != tt.wantNP || pw != tt.wantPW {
			t.Errorf("parseInviteCode(%q) = %d, %q, %v; want %d, %q", tt.in, np, pw, err, tt.wantNP, tt.wantPW)
		}
	}
}

func TestNewInviteCode(t *testing.T) {
	// 0xffff is rejected (>= 60000), then 0x1234 = 4660 is kept.
	r := bytes.NewReader([]byte{0xff, 0xff, 0, 0, 0x12, 0x34, 0xec, 0xec})
	np, pw, err := newInviteCode(r)
	if err != nil || np != 4660 || pw != "tumor-unicorn" {
		t.Fatalf("newInviteCode = %d, %q, %v", np, pw, err)
	}
	if got := formatInviteCode(np, pw); got != "4660-tumor-unicorn" {
		t.Errorf("formatInviteCode = %q", got)
	}
	if _, _, err := newInviteCode(bytes.NewReader(nil)); err == nil {
		t.Error("newInviteCode with no randomness succeeded")
	}
	for i := range 256 {
		np, pw, err := parseInviteCode(formatInviteCode(uint16(i*39), pgpEven[i]+"-"+pgpOdd[255-i]))
		if err != nil || np != uint16(i*39) || pw != pgpEven[i]+"-"+pgpOdd[255-i] {
			t.Fatalf("word pair %d does not round-trip: %v", i, err)
		}
	}
}

// sampleInviteMsgs returns one message of each sub-type, encoded.
func sampleInviteMsgs() [][]byte {
	sid := [inviteSIDLen]byte{1, 2, 3, 4, 5, 6, 7, 8}
	var y [inviteYLen]byte
	y[0] = 9
	var tag [inviteTagLen]byte
	tag[63] = 0xaa
	var sealed [inviteSealedLen]byte
	sealed[0] = 0x55
	ms := []inviteMsg{
		{Sub: inviteSubMsg1, SID: sid, Nameplate: 4821, Y: y},
		{Sub: inviteSubMsg2, SID: sid, Y: y, Tag: tag, Sealed: sealed},
		{Sub: inviteSubMsg3, SID: sid, Tag: tag, Sealed: sealed},
		{Sub: inviteSubAbort, SID: sid},
		{Sub: inviteSubPunch},
	}
	var out [][]byte
	for _, m := range ms {
		out = append(out, m.encode())
	}
	return out
}

func TestParseInvite(t *testing.T) {
	wantLen := []int{inviteMsg1Len, inviteMsg2Len, inviteMsg3Len, inviteAbortLen, invitePunchLen}
	for i, b := range sampleInviteMsgs() {
		if len(b) != wantLen[i] {
			t.Errorf("sub-type %d: %d bytes, want %d", i+1, len(b), wantLen[i])
		}
		m, err := parseInvite(b)
		if err != nil || !bytes.Equal(m.encode(), b) {
			t.Fatalf("parseInvite(%x) = %v; no round trip", b, err)
		}
		for n := range len(b) { // no strict prefix parses
			if _, err := parseInvite(b[:n]); err == nil {
				t.Errorf("prefix of %d bytes of sub-type %d parsed", n, i+1)
			}
		}
		if _, err := parseInvite(append(bytes.Clone(b), 0)); err == nil {
			t.Errorf("sub-type %d with a trailing byte parsed", i+1)
		}
	}
	bad := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"krpc", []byte("d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe")},
		{"session type", append([]byte{packetInitiation, 1}, make([]byte, 42)...)},
		{"sub-type 0", append([]byte{packetInvite, 0}, make([]byte, 8)...)},
		{"sub-type 6", append([]byte{packetInvite, 6}, make([]byte, 8)...)},
		{"punch with a sid", []byte{packetInvite, inviteSubPunch, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"nameplate 10000", append(append([]byte{packetInvite, 1}, make([]byte, 8)...), append([]byte{0x27, 0x10}, make([]byte, 32)...)...)},
	}
	for _, tt := range bad {
		if m, err := parseInvite(tt.b); err == nil || m != (inviteMsg{}) {
			t.Errorf("parseInvite(%s) = %+v, %v; want error and zero", tt.name, m, err)
		}
	}
}

func FuzzInvite(f *testing.F) {
	for _, b := range sampleInviteMsgs() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseInvite(b)
		if err != nil {
			if m != (inviteMsg{}) {
				t.Fatalf("error %v with non-zero message", err)
			}
			return
		}
		if got := m.encode(); !bytes.Equal(got, b) {
			t.Fatalf("round trip: %x -> %x", b, got)
		}
	})
}

// ---------------------------------------------------------------------------
// Harness: inviters on real UDP sockets, a map for the DHT.

const testInviteTick = 5 * time.Millisecond

// mapDHT stands in for the DHT: announce stores the announcer's address.
type mapDHT struct {
	mu    sync.Mutex
	peers map[nodeID][]netip.AddrPort
}

func newMapDHT() *mapDHT { return &mapDHT{peers: map[nodeID][]netip.AddrPort{}} }

func (d *mapDHT) announcer(self netip.AddrPort) func(context.Context, nodeID) (int, error) {
	return func(_ context.Context, ih nodeID) (int, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.peers[ih] = append(d.peers[ih], self)
		return 1, nil
	}
}

func (d *mapDHT) getPeers(_ context.Context, ih nodeID) ([]netip.AddrPort, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.peers[ih]), nil
}

// invitePeer is one inviter with its own UDP socket and a read loop.
type invitePeer struct {
	v    *inviter
	key  publicKey
	addr netip.AddrPort

	mu   sync.Mutex
	sent [][]byte // every datagram sent, after tampering
	to   map[netip.AddrPort]bool

	// nat, if set, makes the read loop act as a NAT that admits only
	// datagrams from addresses this peer has sent to.
	nat      atomic.Bool
	natDrops atomic.Int64
}

func (p *invitePeer) admits(from netip.AddrPort) bool {
	if !p.nat.Load() {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.to[from] {
		p.natDrops.Add(1)
		return false
	}
	return true
}

// inviteTamper may change or drop (nil) an outgoing datagram.
type inviteTamper func(b []byte) []byte

func newInvitePeer(t *testing.T, d *mapDHT, tamper inviteTamper, tweak func(*inviteConfig)) *invitePeer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := generateDHKeys(cryptorand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &invitePeer{key: kp.pub, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort(), to: map[netip.AddrPort]bool{}}
	cfg := inviteConfig{
		Self: p.key,
		Send: func(to netip.AddrPort, b []byte) error {
			b = bytes.Clone(b)
			if tamper != nil {
				if b = tamper(b); b == nil {
					return nil
				}
			}
			p.mu.Lock()
			p.sent = append(p.sent, b)
			p.to[to] = true
			p.mu.Unlock()
			_, err := conn.WriteToUDPAddrPort(b, to)
			return err
		},
		Tick: testInviteTick,
	}
	if d != nil {
		cfg.Announce, cfg.GetPeers = d.announcer(p.addr), d.getPeers
	}
	if tweak != nil {
		tweak(&cfg)
	}
	p.v = newInviter(cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n > 0 && buf[0] == packetInvite && p.admits(from) {
				p.v.handlePacket(from, buf[:n])
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return p
}

// leaked reports whether any datagram p sent contains one of the keys in
// the clear.
func (p *invitePeer) leaked(keys ...publicKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.sent {
		for _, k := range keys {
			if bytes.Contains(b, k[:]) {
				return true
			}
		}
	}
	return false
}

// state reads an invitation's counters under the lock.
func (v *inviter) testState(np uint16) (attempts, failures int, open bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	inv := v.invites[np]
	if inv == nil {
		return 0, 0, false
	}
	return inv.attempts, inv.failures, true
}

func invCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func recvResult(t *testing.T, done <-chan inviteResult) inviteResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(2 * time.Second):
		t.Fatal("no invitation result in 2 s")
	}
	return inviteResult{}
}

// TestInviteEndToEnd runs two pairs at once on one nameplate over real
// UDP: each acceptor also reaches the other pair's inviter, with the
// wrong password, and neither pair is disturbed.
func TestInviteEndToEnd(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	c, e := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	ctx := invCtx(t, 5*time.Second)
	codeA, doneA, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, _, err := parseInviteCode(codeA)
	if err != nil {
		t.Fatalf("invite made an unparsable code %q: %v", codeA, err)
	}
	codeC, doneC, err := c.v.inviteWith(ctx, np, "zulu-yucatan")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both announces", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return len(p) == 2 })
	type res struct {
		k   publicKey
		err error
	}
	got := make(chan res, 2)
	for _, x := range []struct {
		p    *invitePeer
		code string
	}{{b, codeA}, {e, codeC}} {
		go func() { k, err := x.p.v.accept(ctx, x.code); got <- res{k, err} }()
	}
	for range 2 {
		r := <-got
		if r.err != nil || (r.k != a.key && r.k != c.key) {
			t.Fatalf("accept = %v, %v", r.k, r.err)
		}
	}
	if r := recvResult(t, doneA); r.Err != nil || r.Key != b.key {
		t.Errorf("inviter A got %v, %v; want B's key", r.Key, r.Err)
	}
	if r := recvResult(t, doneC); r.Err != nil || r.Key != e.key {
		t.Errorf("inviter C got %v, %v; want E's key", r.Key, r.Err)
	}
	for _, p := range []*invitePeer{a, b, c, e} {
		if p.leaked(a.key, b.key, c.key, e.key) {
			t.Error("a public key was sent in the clear")
		}
	}
}

// TestInviteWrongCode: a wrong password fails at once on the acceptor and
// costs the inviter one of its 3 attempts; the third kills the code.
func TestInviteWrongCode(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	ctx := invCtx(t, 5*time.Second)
	code, done, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, pw, _ := parseInviteCode(code)
	wrong := formatInviteCode(np, "zulu-"+pgpOdd[0])
	if pw == "zulu-"+pgpOdd[0] {
		wrong = formatInviteCode(np, "aardvark-"+pgpOdd[1])
	}
	waitFor(t, "announce", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return len(p) == 1 })
	for i := 1; i <= inviteMaxAttempts; i++ {
		k, err := b.v.accept(ctx, wrong)
		if !errors.Is(err, errInviteWrongCode) || k != (publicKey{}) {
			t.Fatalf("attempt %d: accept = %v, %v; want %v", i, k, err, errInviteWrongCode)
		}
		if i < inviteMaxAttempts {
			waitFor(t, "the abort", func() bool { _, f, open := a.v.testState(np); return f == i && open })
		}
	}
	if r := recvResult(t, done); !errors.Is(r.Err, errInviteUsedUp) || r.Key != (publicKey{}) {
		t.Fatalf("inviter got %v, %v; want %v", r.Key, r.Err, errInviteUsedUp)
	}
	// The dead code stays dead, even with the right password.
	if _, err := b.v.accept(invCtx(t, 100*time.Millisecond), code); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("accept on a dead code = %v, want a timeout", err)
	}
	if a.leaked(a.key, b.key) || b.leaked(a.key, b.key) {
		t.Error("a public key was sent in the clear")
	}
}

// TestInviteTamper flips each byte of the first msg1, msg2 or msg3 of a
// run. A flip in the header or the nameplate makes the packet unknown, so
// the retransmission completes the run; a flip in msg1's Ya or in msg2's
// Yb, tag or sealed key makes the code look wrong to the acceptor (it
// cannot tell tampering from a typo); a bad msg3 is dropped and its
// repeat completes the run. No flip ever yields a wrong key.
func TestInviteTamper(t *testing.T) {
	type tcase struct {
		sub   byte
		i     int
		wrong bool // want errInviteWrongCode
	}
	// Every header and nameplate byte, every 7th byte after it, and the
	// last byte of each field (under -race a case costs ~20 ms).
	picked := func(i, body int, ends ...int) bool {
		return i < body || (i-body)%7 == 0 || slices.Contains(ends, i+1)
	}
	var cases []tcase
	for i := range inviteMsg1Len {
		if picked(i, inviteNameplateOff+2, inviteMsg1Len) {
			cases = append(cases, tcase{inviteSubMsg1, i, i >= inviteNameplateOff+2})
		}
	}
	for i := range inviteMsg2Len {
		if picked(i, inviteHeaderLen, inviteHeaderLen+inviteYLen, inviteMsg2Len-inviteSealedLen, inviteMsg2Len) {
			cases = append(cases, tcase{inviteSubMsg2, i, i >= inviteHeaderLen})
		}
	}
	for i := range inviteMsg3Len {
		if picked(i, inviteHeaderLen, inviteHeaderLen+inviteTagLen, inviteMsg3Len) {
			cases = append(cases, tcase{inviteSubMsg3, i, false})
		}
	}
	for _, tc := range cases {
		var once atomic.Bool
		tamper := func(b []byte) []byte {
			if b[1] == tc.sub && once.CompareAndSwap(false, true) {
				b[tc.i] ^= 0x01
			}
			return b
		}
		d := newMapDHT()
		a, b := newInvitePeer(t, d, tamper, nil), newInvitePeer(t, d, tamper, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		code, done, err := a.v.invite(ctx)
		if err != nil {
			t.Fatal(err)
		}
		k, err := b.v.accept(ctx, code)
		switch {
		case tc.wrong && (!errors.Is(err, errInviteWrongCode) || k != publicKey{}):
			t.Errorf("msg%d byte %d flipped: accept = %v, %v; want %v", tc.sub, tc.i, k, err, errInviteWrongCode)
		case !tc.wrong && (err != nil || k != a.key):
			t.Errorf("msg%d byte %d flipped: accept = %v, %v; want A's key", tc.sub, tc.i, k, err)
		}
		if tc.wrong {
			cancel()
		}
		r := recvResult(t, done)
		if tc.wrong && r.Key != (publicKey{}) || !tc.wrong && (r.Err != nil || r.Key != b.key) {
			t.Errorf("msg%d byte %d flipped: inviter got %v, %v", tc.sub, tc.i, r.Key, r.Err)
		}
		if tc.sub == inviteSubMsg3 && tc.i >= inviteHeaderLen && a.v.dropped.Load() == 0 {
			t.Errorf("msg3 byte %d flipped: the inviter did not count the drop", tc.i)
		}
		cancel()
	}
}

// ---------------------------------------------------------------------------
// Limits, with an injected clock and packets fed by hand.

// sendLog records what an inviter sends instead of sending it.
type sendLog struct {
	mu  sync.Mutex
	out []netip.AddrPort
	msg [][]byte
}

func (l *sendLog) send(to netip.AddrPort, b []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.out, l.msg = append(l.out, to), append(l.msg, bytes.Clone(b))
	return nil
}

func (l *sendLog) count(sub byte) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, b := range l.msg {
		if b[1] == sub {
			n++
		}
	}
	return n
}

func newBareInviter(clock *fakeClock, log *sendLog, tick time.Duration) *inviter {
	return newInviter(inviteConfig{
		Send:     log.send,
		Announce: func(context.Context, nodeID) (int, error) { return 1, nil },
		GetPeers: func(context.Context, nodeID) ([]netip.AddrPort, error) { return nil, nil },
		Now:      clock.now,
		Tick:     tick,
	})
}

// testMsg1 is a msg1 for nameplate np with session id sid and Ya = 9
// (the base point: any point will do for an inviter that only answers).
func testMsg1(np uint16, sid byte) []byte {
	m := inviteMsg{Sub: inviteSubMsg1, Nameplate: np, SID: [inviteSIDLen]byte{sid}, Y: [inviteYLen]byte{9}}
	return m.encode()
}

func testAddr(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

func TestInviteAttemptCap(t *testing.T) {
	clock, log := newFakeClock(), &sendLog{}
	v := newBareInviter(clock, log, time.Hour)
	ctx := invCtx(t, 2*time.Second)
	if _, _, err := v.inviteWith(ctx, 1234, "tumor-unicorn"); err != nil {
		t.Fatal(err)
	}
	low := inviteMsg{Sub: inviteSubMsg1, Nameplate: 1234, SID: [inviteSIDLen]byte{99}} // Ya = 0: low order
	v.handlePacket(testAddr(1), low.encode())
	if n, _, _ := v.testState(1234); n != 0 || log.count(inviteSubMsg2) != 0 {
		t.Fatalf("a low-order Ya was answered or counted (%d attempts)", n)
	}
	for i := range inviteMaxAttempts + 1 {
		v.handlePacket(testAddr(uint16(10+i)), testMsg1(1234, byte(i)))
	}
	if n, _, _ := v.testState(1234); n != inviteMaxAttempts || log.count(inviteSubMsg2) != inviteMaxAttempts {
		t.Fatalf("%d attempts, %d msg2 sent; want %d", n, log.count(inviteSubMsg2), inviteMaxAttempts)
	}
	// A repeat of msg1 gets the same msg2 again; from elsewhere, nothing.
	v.handlePacket(testAddr(10), testMsg1(1234, 0))
	v.handlePacket(testAddr(11), testMsg1(1234, 0))
	if got := log.count(inviteSubMsg2); got != inviteMaxAttempts+1 || !bytes.Equal(log.msg[0], log.msg[len(log.msg)-1]) {
		t.Fatalf("after repeats: %d msg2 sent, last equal to first: %v", got, bytes.Equal(log.msg[0], log.msg[len(log.msg)-1]))
	}
	// Garbage is counted and dropped.
	v.handlePacket(testAddr(1), []byte{packetInvite, 9})
	if got := v.dropped.Load(); got != 1 {
		t.Errorf("dropped = %d, want 1", got)
	}
	// Unknown nameplate: no answer.
	v.handlePacket(testAddr(20), testMsg1(4321, 7))
	if got := log.count(inviteSubMsg2); got != inviteMaxAttempts+1 {
		t.Fatalf("a msg1 for an unknown nameplate was answered")
	}
}

func TestInviteSessionCap(t *testing.T) {
	clock, log := newFakeClock(), &sendLog{}
	v := newBareInviter(clock, log, time.Hour)
	ctx := invCtx(t, 2*time.Second)
	for np := range uint16(inviteMaxActive) {
		if _, _, err := v.inviteWith(ctx, np, "tumor-unicorn"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := v.invite(ctx); !errors.Is(err, errInviteBusy) {
		t.Fatalf("invitation %d: %v, want %v", inviteMaxActive+1, err, errInviteBusy)
	}
	sid := byte(0)
	for np := range uint16(inviteMaxActive) {
		for range inviteMaxAttempts {
			v.handlePacket(testAddr(100+uint16(sid)), testMsg1(np, sid))
			sid++
		}
	}
	if got := log.count(inviteSubMsg2); got != inviteMaxSessions {
		t.Fatalf("%d sessions answered, want the cap %d", got, inviteMaxSessions)
	}
	v.mu.Lock()
	n := len(v.sessions)
	v.mu.Unlock()
	if n != inviteMaxSessions {
		t.Fatalf("%d sessions kept, want %d", n, inviteMaxSessions)
	}
}

func TestInviteExpiry(t *testing.T) {
	clock, log := newFakeClock(), &sendLog{}
	v := newBareInviter(clock, log, time.Millisecond)
	ctx := invCtx(t, 2*time.Second)
	_, done, err := v.inviteWith(ctx, 42, "tumor-unicorn")
	if err != nil {
		t.Fatal(err)
	}
	v.handlePacket(testAddr(1), testMsg1(42, 1))
	// msg2 is repeated every tick while the session waits for msg3.
	waitFor(t, "msg2 repeats", func() bool { return log.count(inviteSubMsg2) >= 3 })
	clock.advance(inviteSessionTimeout)
	waitFor(t, "the session timeout", func() bool { _, f, _ := v.testState(42); return f == 1 })
	clock.advance(inviteLifetime)
	if r := recvResult(t, done); !errors.Is(r.Err, errInviteExpired) {
		t.Fatalf("result %v, want %v", r.Err, errInviteExpired)
	}
	before := log.count(inviteSubMsg2)
	v.handlePacket(testAddr(2), testMsg1(42, 2))
	if log.count(inviteSubMsg2) != before {
		t.Fatal("an expired invitation answered")
	}
}

func TestAcceptTimeout(t *testing.T) {
	clock, log := newFakeClock(), &sendLog{}
	v := newBareInviter(clock, log, time.Millisecond)
	errc := make(chan error, 1)
	go func() { _, err := v.accept(invCtx(t, 2*time.Second), "0042-tumor-unicorn"); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	clock.advance(inviteAcceptTimeout)
	if err := <-errc; !errors.Is(err, errInviteNoAnswer) {
		t.Fatalf("accept = %v, want %v", err, errInviteNoAnswer)
	}
	if _, err := v.accept(invCtx(t, time.Second), "0042-tumor-uproar"); !errors.Is(err, errInviteCodeWord) {
		t.Fatalf("accept with a typo = %v, want %v", err, errInviteCodeWord)
	}
	// Finished runs linger, bounded: the table never exceeds its cap, and
	// a finished run makes way for a new one.
	for i := range inviteMaxAccepts + 2 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := v.accept(ctx, "0042-tumor-unicorn"); !errors.Is(err, context.Canceled) {
			t.Fatalf("run %d: accept = %v, want %v", i, err, context.Canceled)
		}
	}
	v.mu.Lock()
	n := len(v.accepts)
	v.mu.Unlock()
	if n > inviteMaxAccepts {
		t.Fatalf("%d acceptor runs kept, cap %d", n, inviteMaxAccepts)
	}
}

// TestInviteOverDHT uses real DHT nodes for the rendezvous: the inviter
// announces its invitation socket's port at the nameplate's infohash, the
// acceptor finds it with get_peers. (The invitation sockets are separate
// from the DHT nodes' here only because the Node's demux is wired by the
// coordinator; in kadchat both share one socket and the announce is
// implied_port.)
func TestInviteOverDHT(t *testing.T) {
	ds := newSwarm(t, 4, 0)
	a := newInvitePeer(t, nil, nil, nil)
	b := newInvitePeer(t, nil, nil, nil)
	a.v.cfg.Announce = func(ctx context.Context, ih nodeID) (int, error) {
		return ds[1].announce(ctx, ih, int(a.addr.Port()), false)
	}
	b.v.cfg.GetPeers = ds[2].getPeers
	ctx := invCtx(t, 5*time.Second)
	code, done, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, _, _ := parseInviteCode(code)
	waitFor(t, "the announce", func() bool { p, _ := ds[3].getPeers(ctx, inviteInfohash(np)); return len(p) > 0 })
	k, err := b.v.accept(ctx, code)
	if err != nil || k != a.key {
		t.Fatalf("accept = %v, %v; want A's key", k, err)
	}
	if r := recvResult(t, done); r.Err != nil || r.Key != b.key {
		t.Fatalf("inviter got %v, %v; want B's key", r.Key, r.Err)
	}
}

// ---------------------------------------------------------------------------
// SPEC.md 7.10's vector, recomputed through the code paths the protocol uses.

// inviteVectorOrder is the order of the fields in the SPEC block.
var inviteVectorOrder = []string{
	"code", "nameplate", "infohash", "acceptor_infohash", "prs", "ci", "sid", "generator_string", "g",
	"ya", "Ya", "yb", "Yb", "K", "ISK", "mac_key", "tag_a", "tag_b",
	"seal_key_inviter", "seal_key_acceptor", "inviter_key", "acceptor_key",
	"msg1", "msg2", "msg3", "abort", "punch",
}

func inviteVectorValues(t *testing.T) map[string]string {
	t.Helper()
	const code = "4821-tumor-unicorn"
	np, pw, err := parseInviteCode(code)
	if err != nil {
		t.Fatal(err)
	}
	v := loadCPaceVectors(t)
	sid := cpHex(t, "0001020304050607")
	ya, yb := cpHex32(t, v.G["ya"]), cpHex32(t, v.G["yb"]) // the draft's scalars
	invKP, _ := newDHKeys(seqBytes(0x10, 32))
	accKP, _ := newDHKeys(seqBytes(0x20, 32))
	out := map[string]string{
		"code": code, "nameplate": fmt.Sprint(np), "prs": hex.EncodeToString([]byte(code)),
		"ci": hex.EncodeToString([]byte(inviteCI)), "sid": hex.EncodeToString(sid),
		"ya": hex.EncodeToString(ya[:]), "yb": hex.EncodeToString(yb[:]),
		"inviter_key": hex.EncodeToString(invKP.pub[:]), "acceptor_key": hex.EncodeToString(accKP.pub[:]),
	}
	ih := inviteInfohash(np)
	out["infohash"] = hex.EncodeToString(ih[:])
	aih := inviteAcceptorInfohash(np)
	out["acceptor_infohash"] = hex.EncodeToString(aih[:])
	out["generator_string"] = hex.EncodeToString(cpaceGeneratorString([]byte(cpaceDSI), []byte(code), []byte(inviteCI), sid))
	g := cpaceCalculateGenerator([]byte(code), []byte(inviteCI), sid)
	out["g"] = hex.EncodeToString(g[:])

	// The acceptor: sid then ya from its random source.
	acc := newInviter(inviteConfig{Self: accKP.pub, Send: (&sendLog{}).send, Rand: bytes.NewReader(append(bytes.Clone(sid), ya[:]...))})
	run, err := acc.newAcceptRun(np, pw)
	if err != nil {
		t.Fatal(err)
	}
	out["Ya"], out["msg1"] = hex.EncodeToString(run.ya[:]), hex.EncodeToString(run.msg1)

	// The inviter: yb from its random source; msg2 is what it sends.
	log := &sendLog{}
	inv := newInviter(inviteConfig{Self: invKP.pub, Send: log.send, Rand: bytes.NewReader(yb[:]),
		Announce: func(context.Context, nodeID) (int, error) { return 1, nil }, Tick: time.Hour})
	if _, _, err := inv.inviteWith(invCtx(t, time.Second), np, pw); err != nil {
		t.Fatal(err)
	}
	inv.handlePacket(testAddr(1), run.msg1)
	if len(log.msg) != 1 {
		t.Fatalf("inviter sent %d messages, want msg2", len(log.msg))
	}
	msg2 := log.msg[0]
	out["msg2"] = hex.EncodeToString(msg2)
	m2, _ := parseInvite(msg2)
	out["Yb"] = hex.EncodeToString(m2.Y[:])
	k, _ := cpaceScalarMultVfy(ya, m2.Y)
	out["K"] = hex.EncodeToString(k[:])
	isk := cpaceISK(sid, k[:], run.ya[:], inviteADa, m2.Y[:], inviteADb)
	out["ISK"] = hex.EncodeToString(isk[:])
	mk := cpaceMacKey(sid, isk)
	out["mac_key"] = hex.EncodeToString(mk[:])
	keys := deriveInviteKeys(sid, isk, run.ya[:], m2.Y[:])
	out["tag_a"], out["tag_b"] = hex.EncodeToString(keys.tagA[:]), hex.EncodeToString(keys.tagB[:])
	out["seal_key_inviter"], out["seal_key_acceptor"] = hex.EncodeToString(keys.sealInviter[:]), hex.EncodeToString(keys.sealAcc[:])

	pk, msg3, err := run.answer(&m2, accKP.pub)
	if err != nil || pk != invKP.pub {
		t.Fatalf("acceptor: %v, %v", pk, err)
	}
	out["msg3"] = hex.EncodeToString(msg3)
	out["abort"] = hex.EncodeToString(abortMsg(run.sid))
	out["punch"] = hex.EncodeToString((&inviteMsg{Sub: inviteSubPunch}).encode())
	return out
}

func TestInviteSpecVector(t *testing.T) {
	want := inviteVectorValues(t)
	updateSpecBlock(t, "invite-vector", "run", inviteVectorOrder, want)
	var blk *specBlock
	for _, b := range specBlocks(t, "invite-vector") {
		if b.name == "run" {
			blk = &b
		}
	}
	if blk == nil {
		t.Fatal("SPEC.md has no invite-vector name=run")
	}
	if !slices.Equal(blk.keys, inviteVectorOrder) {
		t.Errorf("SPEC.md vector fields %v, want %v", blk.keys, inviteVectorOrder)
	}
	for _, k := range inviteVectorOrder {
		if got := strings.ReplaceAll(blk.fields[k], " ", ""); got != want[k] {
			t.Errorf("SPEC.md %s = %s\ncomputed %s", k, got, want[k])
		}
	}
	// The ISK, with CPace's own inputs, is the draft's ISK construction.
	sid := cpHex(t, want["sid"])
	k, ya, yb := cpHex(t, want["K"]), cpHex(t, want["Ya"]), cpHex(t, want["Yb"])
	isk := cpaceISK(sid, k, ya, inviteADa, yb, inviteADb)
	if hex.EncodeToString(isk[:]) != want["ISK"] {
		t.Error("ISK mismatch")
	}
}

// BenchmarkInviteRun measures the inviter's and the acceptor's CPU for one
// complete exchange (msg1, msg2, msg3), without the network.
func BenchmarkInviteRun(b *testing.B) {
	b.ReportAllocs()
	kp, _ := generateDHKeys(cryptorand.Reader)
	for b.Loop() {
		acc := newInviter(inviteConfig{Self: kp.pub, Send: (&sendLog{}).send})
		run, err := acc.newAcceptRun(4821, "tumor-unicorn")
		if err != nil {
			b.Fatal(err)
		}
		log := &sendLog{}
		inv := newInviter(inviteConfig{Self: kp.pub, Send: log.send})
		it := &invitation{nameplate: 4821, prs: []byte("4821-tumor-unicorn"), expires: time.Now().Add(time.Hour), done: make(chan inviteResult, 1)}
		inv.invites[4821] = it
		inv.handlePacket(testAddr(1), run.msg1)
		m2, _ := parseInvite(log.msg[0])
		_, msg3, err := run.answer(&m2, kp.pub)
		if err != nil {
			b.Fatal(err)
		}
		inv.handlePacket(testAddr(1), msg3)
		if r := <-it.done; r.Err != nil {
			b.Fatal(r.Err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/run")
}

// TestInvitePunch puts the inviter behind a NAT that drops datagrams from
// addresses it has not sent to: the acceptor's first msg1s are lost until
// the inviter finds the acceptor at the acceptors' infohash and punches.
func TestInvitePunch(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	a.nat.Store(true)
	var lookups atomic.Int64 // the inviter's lookups for acceptors
	a.v.cfg.GetPeers = func(ctx context.Context, ih nodeID) ([]netip.AddrPort, error) {
		lookups.Add(1)
		return d.getPeers(ctx, ih)
	}
	ctx := invCtx(t, 5*time.Second)
	code, done, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, _, _ := parseInviteCode(code)
	// Start accepting once the inviter is announced and has looked for
	// acceptors in vain, so that its NAT is closed to the first msg1s.
	waitFor(t, "announce and lookup", func() bool {
		p, _ := d.getPeers(ctx, inviteInfohash(np))
		return len(p) == 1 && lookups.Load() > 0
	})
	k, err := b.v.accept(ctx, code)
	if err != nil || k != a.key {
		t.Fatalf("accept = %v, %v; want A's key", k, err)
	}
	if r := recvResult(t, done); r.Err != nil || r.Key != b.key {
		t.Fatalf("inviter got %v, %v; want B's key", r.Key, r.Err)
	}
	if a.natDrops.Load() == 0 {
		t.Error("the NAT dropped nothing: the test did not test the punch")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sent[0][1] != inviteSubPunch || len(a.sent[0]) != invitePunchLen {
		t.Errorf("the inviter's first datagram is %x, want a punch", a.sent[0])
	}
}
