// Tests of invitations (SPEC.md 7.1, 7.2, 7.4-7.10): the code, the wire
// format, runs over loopback UDP, the limits with an injected clock, and
// SPEC.md 7.10's vector.
package main

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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
		wantNP  uint32
		wantPW  string
		wantErr string // substring
	}{
		{in: "482193-tumor-unicorn", wantNP: 482193, wantPW: "tumor-unicorn"},
		{in: "  000007-Aardvark-ADROITNESS ", wantNP: 7, wantPW: "aardvark-adroitness"},
		{in: "999999 zulu yucatan", wantNP: 999999, wantPW: "zulu-yucatan"},
		{in: "000000 - zulu -- yucatan", wantNP: 0, wantPW: "zulu-yucatan"},
		{in: "482193-tumor-unicorn-x", wantErr: "has 4 parts"},
		{in: "482193_tumor_unicorn", wantErr: "has 1 parts"},
		{in: "482193-tumor", wantErr: "has 2 parts"},
		{in: "4821-tumor-unicorn", wantErr: "6 digits"}, // the old form
		{in: "4821937-tumor-unicorn", wantErr: "6 digits"},
		{in: "48a193-tumor-unicorn", wantErr: "6 digits"},
		{in: "482193-tumor-uproar", wantErr: `did you mean`},
		{in: "482193-tumr-unicorn", wantErr: `did you mean "tumor"`},
		{in: "482193-unicorn-tumor", wantErr: "other position"},
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
	// 0xffffffff is rejected (>= 4,294,000,000), then 0x00075b91 = 482193 is kept.
	r := bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0x00, 0x07, 0x5b, 0x91, 0xec, 0xec})
	np, pw, err := newInviteCode(r)
	if err != nil || np != 482193 || pw != "tumor-unicorn" {
		t.Fatalf("newInviteCode = %d, %q, %v", np, pw, err)
	}
	if got := formatInviteCode(np, pw); got != "482193-tumor-unicorn" {
		t.Errorf("formatInviteCode = %q", got)
	}
	if got := formatInviteCode(42, pw); got != "000042-tumor-unicorn" {
		t.Errorf("formatInviteCode = %q", got)
	}
	if _, _, err := newInviteCode(bytes.NewReader(nil)); err == nil {
		t.Error("newInviteCode with no randomness succeeded")
	}
	// The largest kept draw and the smallest rejected one.
	for _, tc := range []struct {
		draw uint32
		ok   bool
	}{{inviteNameplateDraws - 1, true}, {inviteNameplateDraws, false}} {
		b := binary.BigEndian.AppendUint32(nil, tc.draw)
		np, _, err := newInviteCode(bytes.NewReader(append(b, 0, 0)))
		if got := err == nil && np == tc.draw%inviteNameplates; got != tc.ok {
			t.Errorf("draw %d: %d, %v; want kept %v", tc.draw, np, err, tc.ok)
		}
	}
	for i := range 256 {
		np := uint32(i * 3907)
		np2, pw, err := parseInviteCode(formatInviteCode(np, pgpEven[i]+"-"+pgpOdd[255-i]))
		if err != nil || np2 != np || pw != pgpEven[i]+"-"+pgpOdd[255-i] {
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
		{Sub: inviteSubMsg1, SID: sid, Nameplate: 482193, Y: y},
		{Sub: inviteSubMsg2, SID: sid, Y: y},
		{Sub: inviteSubMsg3, SID: sid, Nameplate: 999999, Y: y, Tag: tag, Sealed: sealed},
		{Sub: inviteSubMsg4, SID: sid, Wrong: 2, Tag: tag, Sealed: sealed},
		{Sub: inviteSubPunch},
		{Sub: inviteSubRefuse, SID: sid, Reason: inviteRefuseClosed},
	}
	var out [][]byte
	for _, m := range ms {
		out = append(out, m.encode())
	}
	return out
}

func TestParseInvite(t *testing.T) {
	wantLen := []int{46, 42, 158, 123, 10, 11}
	for i, b := range sampleInviteMsgs() {
		if len(b) != wantLen[i] || len(b) != inviteLen(b[1]) {
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
	msg1 := sampleInviteMsgs()[0]
	bad := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"krpc", []byte("d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe")},
		{"session type", append([]byte{packetInitiation, 1}, make([]byte, 44)...)},
		{"sub-type 0", append([]byte{packetInvite, 0}, make([]byte, 8)...)},
		{"sub-type 7", append([]byte{packetInvite, 7}, make([]byte, 8)...)},
		{"punch with a sid", []byte{packetInvite, inviteSubPunch, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"nameplate 1000000", append(append(bytes.Clone(msg1[:10]), 0x00, 0x0f, 0x42, 0x40), msg1[14:]...)},
		{"msg3 nameplate 2^32-1", append(append(bytes.Clone(sampleInviteMsgs()[2][:10]), 0xff, 0xff, 0xff, 0xff), sampleInviteMsgs()[2][14:]...)},
		{"msg4 with 3 wrong tries", append(append(bytes.Clone(sampleInviteMsgs()[3][:10]), 3), sampleInviteMsgs()[3][11:]...)},
		{"refuse reason 0", []byte{packetInvite, inviteSubRefuse, 1, 2, 3, 4, 5, 6, 7, 8, 0}},
		{"refuse reason 3", []byte{packetInvite, inviteSubRefuse, 1, 2, 3, 4, 5, 6, 7, 8, 3}},
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

// testState reads an invitation's wrong tries and whether it is open.
func (v *inviter) testState(np uint32) (wrong int, open bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	inv := v.invites[np]
	if inv == nil {
		return 0, false
	}
	return len(inv.failed), inv.state == inviteOpen
}

func invCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// recvEvent is an invitation's next event.
func recvEvent(t *testing.T, events <-chan inviteEvent) inviteEvent {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the invitation's events ended")
		}
		return ev
	case <-time.After(2 * time.Second):
		t.Fatal("no invitation event in 2 s")
	}
	return inviteEvent{}
}

// recvEnd is an invitation's last event; wrong tries before it are
// skipped and counted.
func recvEnd(t *testing.T, events <-chan inviteEvent) (end inviteEvent, wrong int) {
	t.Helper()
	for {
		ev := recvEvent(t, events)
		if !ev.Wrong {
			return ev, wrong
		}
		wrong++
	}
}

// wrongPassword is a password other than pw.
func wrongPassword(pw string) string {
	if w := "zulu-" + pgpOdd[0]; w != pw {
		return w
	}
	return "aardvark-" + pgpOdd[1]
}

// TestInviteEndToEnd runs two pairs at once on one nameplate over real
// UDP: each acceptor also reaches the other pair's inviter, with the
// wrong password, which that inviter counts as a wrong try; neither pair
// is kept from finishing, and each acceptor hears of the other address.
func TestInviteEndToEnd(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	c, e := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	ctx := invCtx(t, 5*time.Second)
	codeA, doneA, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, pw, err := parseInviteCode(codeA)
	if err != nil {
		t.Fatalf("invite made an unparsable code %q: %v", codeA, err)
	}
	codeC, doneC, err := c.v.inviteWith(ctx, np, wrongPassword(pw))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both announces", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return len(p) == 2 })
	type res struct {
		r   acceptResult
		err error
	}
	got := make(chan res, 2)
	for _, x := range []struct {
		p    *invitePeer
		code string
	}{{b, codeA}, {e, codeC}} {
		go func() { r, err := x.p.v.accept(ctx, x.code); got <- res{r, err} }()
	}
	for range 2 {
		r := <-got
		if r.err != nil || (r.r.Key != a.key && r.r.Key != c.key) {
			t.Fatalf("accept = %+v, %v", r.r, r.err)
		}
		if r.r.warning() == "" && r.r.Others == 0 && r.r.WrongTries == 0 {
			t.Logf("accept without a warning: the other inviter had not answered yet (%+v)", r.r)
		}
	}
	if r, _ := recvEnd(t, doneA); r.Err != nil || r.Key != b.key {
		t.Errorf("inviter A got %v, %v; want B's key", r.Key, r.Err)
	}
	if r, _ := recvEnd(t, doneC); r.Err != nil || r.Key != e.key {
		t.Errorf("inviter C got %v, %v; want E's key", r.Key, r.Err)
	}
	for _, p := range []*invitePeer{a, b, c, e} {
		if p.leaked(a.key, b.key, c.key, e.key) {
			t.Error("a public key was sent in the clear")
		}
	}
}

// TestInviteWrongCode: a wrong code is refused at once; the inviter is
// told of each wrong try with the tries left, and the acceptor that a
// wrong code was refused. The third closes the code, and the right code
// after it is told that the code is used up.
func TestInviteWrongCode(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	ctx := invCtx(t, 10*time.Second)
	code, events, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, pw, _ := parseInviteCode(code)
	wrong := formatInviteCode(np, wrongPassword(pw))
	waitFor(t, "announce", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return len(p) == 1 })
	for i := 1; i <= inviteMaxTries; i++ {
		r, err := b.v.accept(ctx, wrong)
		if !errors.Is(err, errInviteWrongCode) || r.Key != (publicKey{}) {
			t.Fatalf("try %d: accept = %v, %v; want %v", i, r.Key, err, errInviteWrongCode)
		}
		if i == inviteMaxTries {
			break
		}
		if ev := recvEvent(t, events); !ev.Wrong || ev.TriesLeft != inviteMaxTries-i {
			t.Fatalf("try %d: inviter event %+v, want a wrong try with %d left", i, ev, inviteMaxTries-i)
		}
	}
	if ev := recvEvent(t, events); !errors.Is(ev.Err, errInviteUsedUp) || ev.Key != (publicKey{}) {
		t.Fatalf("inviter got %+v; want %v", ev, errInviteUsedUp)
	}
	if _, ok := <-events; ok {
		t.Fatal("events after the end")
	}
	// The closed code stays closed, even with the right password, and the
	// acceptor is told why.
	if _, err := b.v.accept(ctx, code); !errors.Is(err, errInviteClosed) {
		t.Errorf("accept on a closed code = %v, want %v", err, errInviteClosed)
	}
	if a.leaked(a.key, b.key) || b.leaked(a.key, b.key) {
		t.Error("a public key was sent in the clear")
	}
}

// TestInviteTamper flips one bit of the first msg1, msg2, msg3 or msg4 of
// a run. A flip that makes the packet unknown, or names a run nobody
// has, is healed by the retransmission; a flip in a share or a tag makes
// the code look wrong to the inviter (it cannot tell tampering from a
// typo); a flip in a sealed key or in msg4 is dropped and its repeat
// completes the run. No flip ever yields a wrong key.
func TestInviteTamper(t *testing.T) {
	type tcase struct {
		sub   byte
		i     int
		wrong bool // want errInviteWrongCode
	}
	// Every header and nameplate byte, every 7th byte after them, and the
	// first and last byte of each field (under -race a case costs ~20 ms).
	picked := func(i, body int, edges ...int) bool {
		return i < body || (i-body)%7 == 0 || slices.Contains(edges, i) || slices.Contains(edges, i+1)
	}
	var cases []tcase
	ya, tagA, sealA := inviteNameplateOff+inviteNameplateLen, inviteNameplateOff+inviteNameplateLen+inviteYLen, inviteMsg3Len-inviteSealedLen
	for i := range inviteMsg1Len {
		if picked(i, ya, ya, inviteMsg1Len) {
			cases = append(cases, tcase{inviteSubMsg1, i, i >= ya})
		}
	}
	for i := range inviteMsg2Len {
		if picked(i, inviteHeaderLen, inviteMsg2Len) {
			cases = append(cases, tcase{inviteSubMsg2, i, i >= inviteHeaderLen})
		}
	}
	for i := range inviteMsg3Len {
		if picked(i, ya, ya, tagA, sealA, inviteMsg3Len) {
			cases = append(cases, tcase{inviteSubMsg3, i, i >= ya && i < sealA})
		}
	}
	for i := range inviteMsg4Len {
		if picked(i, inviteHeaderLen+1, inviteMsg4Len-inviteSealedLen, inviteMsg4Len) {
			cases = append(cases, tcase{inviteSubMsg4, i, false})
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
		r, err := b.v.accept(ctx, code)
		switch {
		case tc.wrong && (!errors.Is(err, errInviteWrongCode) || r.Key != publicKey{}):
			t.Errorf("msg%d byte %d flipped: accept = %v, %v; want %v", tc.sub, tc.i, r.Key, err, errInviteWrongCode)
		case !tc.wrong && (err != nil || r.Key != a.key):
			t.Errorf("msg%d byte %d flipped: accept = %v, %v; want A's key", tc.sub, tc.i, r.Key, err)
		}
		if tc.wrong {
			cancel()
		}
		end, _ := recvEnd(t, done)
		if tc.wrong && end.Key != (publicKey{}) || !tc.wrong && (end.Err != nil || end.Key != b.key) {
			t.Errorf("msg%d byte %d flipped: inviter got %v, %v", tc.sub, tc.i, end.Key, end.Err)
		}
		if tc.sub == inviteSubMsg3 && tc.i >= sealA && a.v.dropped.Load() == 0 {
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

func (l *sendLog) last() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.msg) == 0 {
		return nil
	}
	return l.msg[len(l.msg)-1]
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

// testShare is a valid share that is not the run's: any point will do
// for an inviter that only answers.
var testShare = func() [inviteYLen]byte {
	kp, _ := newDHKeys(seqBytes(0x40, 32))
	return [inviteYLen]byte(kp.pub)
}()

// testMsg1 is a msg1 for nameplate np with session id sid.
func testMsg1(np uint32, sid byte) []byte {
	m := inviteMsg{Sub: inviteSubMsg1, Nameplate: np, SID: [inviteSIDLen]byte{sid}, Y: testShare}
	return m.encode()
}

// testMsg3 is a msg3 with a tag that cannot verify: one wrong guess.
func testMsg3(np uint32, sid byte) []byte {
	m := inviteMsg{Sub: inviteSubMsg3, Nameplate: np, SID: [inviteSIDLen]byte{sid}, Y: testShare, Tag: [inviteTagLen]byte{sid}}
	return m.encode()
}

func testAddr(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

// TestInviteStateless: msg1s cost the inviter no state and no tries, a
// repeat gets the same msg2, and a tick answers at most inviteMaxAnswers.
func TestInviteStateless(t *testing.T) {
	clock, log := newFakeClock(), &sendLog{}
	v := newBareInviter(clock, log, time.Hour)
	ctx := invCtx(t, 2*time.Second)
	if _, _, err := v.inviteWith(ctx, 123456, "tumor-unicorn"); err != nil {
		t.Fatal(err)
	}
	low := inviteMsg{Sub: inviteSubMsg1, Nameplate: 123456, SID: [inviteSIDLen]byte{99}} // Ya = 0: low order
	v.handlePacket(testAddr(1), low.encode())
	if log.count(inviteSubMsg2) != 0 {
		t.Fatal("a low-order Ya was answered")
	}
	v.handlePacket(testAddr(10), testMsg1(123456, 1))
	v.handlePacket(testAddr(11), testMsg1(123456, 1)) // a repeat, from anywhere
	if log.count(inviteSubMsg2) != 2 || !bytes.Equal(log.msg[0], log.msg[1]) {
		t.Fatalf("a repeated msg1 got %d msg2, equal %v", log.count(inviteSubMsg2), bytes.Equal(log.msg[0], log.msg[1]))
	}
	for i := range inviteMaxAnswers + 10 {
		v.handlePacket(testAddr(uint16(100+i)), testMsg1(123456, byte(i)))
	}
	// The low-order msg1 took from the budget too: its check is a
	// scalar multiplication.
	if got := log.count(inviteSubMsg2); got != inviteMaxAnswers-1 {
		t.Fatalf("%d msg2 sent in one tick, want the budget %d less the low-order msg1", got, inviteMaxAnswers)
	}
	clock.advance(time.Hour)
	v.handlePacket(testAddr(1), testMsg1(123456, 200))
	if got := log.count(inviteSubMsg2); got != inviteMaxAnswers {
		t.Fatalf("after a tick: %d msg2, want %d", got, inviteMaxAnswers)
	}
	if wrong, open := v.testState(123456); wrong != 0 || !open {
		t.Fatalf("after %d msg1s: %d wrong tries, open %v", inviteMaxAnswers+13, wrong, open)
	}
	// Garbage is counted and dropped; an unknown nameplate gets nothing.
	before := v.dropped.Load()
	v.handlePacket(testAddr(1), []byte{packetInvite, 9})
	if got := v.dropped.Load(); got != before+1 {
		t.Errorf("dropped = %d, want %d", got, before+1)
	}
	n := len(log.msg)
	v.handlePacket(testAddr(20), testMsg1(654321, 7))
	if len(log.msg) != n {
		t.Fatal("a msg1 for an unknown nameplate was answered")
	}
}

// TestInviteTries: each new wrong msg3 is a try; a repeat of one is
// refused again without counting; the third closes the code, which then
// refuses msg1 and msg3 as closed until its lifetime is over.
func TestInviteTries(t *testing.T) {
	clock, log := newFakeClock(), &sendLog{}
	v := newBareInviter(clock, log, time.Hour)
	_, events, err := v.inviteWith(invCtx(t, 2*time.Second), 42, "tumor-unicorn")
	if err != nil {
		t.Fatal(err)
	}
	refused := func(reason byte) bool {
		m, err := parseInvite(log.last())
		return err == nil && m.Sub == inviteSubRefuse && m.Reason == reason
	}
	for i := range byte(inviteMaxTries) {
		v.handlePacket(testAddr(1), testMsg3(42, i))
		if !refused(inviteRefuseWrong) {
			t.Fatalf("wrong msg3 %d: sent %x, want a refuse (wrong)", i, log.last())
		}
		v.handlePacket(testAddr(1), testMsg3(42, i)) // its repeat
		if wrong, _ := v.testState(42); wrong != int(i)+1 || !refused(inviteRefuseWrong) {
			t.Fatalf("after msg3 %d and its repeat: %d wrong tries", i, wrong)
		}
		ev := recvEvent(t, events)
		if i+1 < inviteMaxTries && (!ev.Wrong || ev.TriesLeft != inviteMaxTries-int(i)-1) {
			t.Fatalf("event %+v after wrong msg3 %d", ev, i)
		}
		if i+1 == inviteMaxTries && !errors.Is(ev.Err, errInviteUsedUp) {
			t.Fatalf("event %+v after the last try, want %v", ev, errInviteUsedUp)
		}
	}
	for _, b := range [][]byte{testMsg1(42, 50), testMsg3(42, 51)} {
		v.handlePacket(testAddr(2), b)
		if !refused(inviteRefuseClosed) {
			t.Fatalf("a closed code answered %x with %x, want a refuse (closed)", b, log.last())
		}
	}
	clock.advance(inviteLifetime)
	n := len(log.msg)
	v.handlePacket(testAddr(2), testMsg1(42, 52))
	if len(log.msg) != n {
		t.Fatal("a closed code answered after its lifetime")
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
	clock.advance(inviteLifetime)
	if r, _ := recvEnd(t, done); !errors.Is(r.Err, errInviteExpired) {
		t.Fatalf("result %v, want %v", r.Err, errInviteExpired)
	}
	before := len(log.msg)
	v.handlePacket(testAddr(2), testMsg1(42, 2))
	if len(log.msg) != before {
		t.Fatal("an expired invitation answered")
	}
	// Open invitations are capped; ended ones do not count.
	for np := range uint32(inviteMaxActive) {
		if _, _, err := v.inviteWith(ctx, 100+np, "tumor-unicorn"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := v.invite(ctx); !errors.Is(err, errInviteBusy) {
		t.Fatalf("invitation %d: %v, want %v", inviteMaxActive+1, err, errInviteBusy)
	}
}

func TestAcceptTimeout(t *testing.T) {
	clock, log := newFakeClock(), &sendLog{}
	v := newBareInviter(clock, log, time.Millisecond)
	errc := make(chan error, 1)
	go func() { _, err := v.accept(invCtx(t, 2*time.Second), "000042-tumor-unicorn"); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	clock.advance(inviteAcceptTimeout)
	if err := <-errc; !errors.Is(err, errInviteNoAnswer) {
		t.Fatalf("accept = %v, want %v", err, errInviteNoAnswer)
	}
	if _, err := v.accept(invCtx(t, time.Second), "000042-tumor-uproar"); !errors.Is(err, errInviteCodeWord) {
		t.Fatalf("accept with a typo = %v, want %v", err, errInviteCodeWord)
	}
	// At most inviteMaxAccepts runs at once; a finished run leaves nothing.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range inviteMaxAccepts {
		wg.Go(func() { v.accept(ctx, "000042-tumor-unicorn") })
	}
	waitFor(t, "the runs", func() bool {
		v.acceptor.mu.Lock()
		defer v.acceptor.mu.Unlock()
		return v.acceptor.runs == inviteMaxAccepts
	})
	if _, err := v.accept(ctx, "000042-tumor-unicorn"); !errors.Is(err, errInviteBusy) {
		t.Fatalf("run %d: accept = %v, want %v", inviteMaxAccepts+1, err, errInviteBusy)
	}
	cancel()
	wg.Wait()
	v.acceptor.mu.Lock()
	defer v.acceptor.mu.Unlock()
	if v.acceptor.runs != 0 || len(v.acceptor.cands) != 0 {
		t.Fatalf("%d runs and %d candidates left", v.acceptor.runs, len(v.acceptor.cands))
	}
}

// TestAcceptPick: a run takes at most inviteMaxCandidates addresses, at
// most inviteMaxPerGroup from one IPv4 address or IPv6 /64.
func TestAcceptPick(t *testing.T) {
	v := newInviter(inviteConfig{Send: (&sendLog{}).send})
	r, err := v.acceptor.newAcceptRun(42, "tumor-unicorn")
	if err != nil {
		t.Fatal(err)
	}
	var peers []netip.AddrPort
	for ip := range 12 {
		for port := range 4 {
			peers = append(peers, netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:%d", ip, 1000+port)))
			peers = append(peers, netip.MustParseAddrPort(fmt.Sprintf("[2001:db8:0:%x::%x]:%d", ip, port+1, 1000+port)))
		}
	}
	peers = append(peers, peers[0], netip.AddrPort{})
	v.acceptor.addCandidates(r, v.acceptor.pickCandidates(r, peers))
	groups := map[netip.Prefix]int{}
	for a := range r.cands {
		groups[addrGroup(a)]++
	}
	if len(r.cands) != inviteMaxCandidates {
		t.Fatalf("%d candidates, want %d", len(r.cands), inviteMaxCandidates)
	}
	for g, n := range groups {
		if n > inviteMaxPerGroup {
			t.Errorf("%d candidates in %v, want at most %d", n, g, inviteMaxPerGroup)
		}
	}
	if more := v.acceptor.pickCandidates(r, peers); len(more) != 0 {
		t.Errorf("a full run picked %v", more)
	}
	v.acceptor.endRun(r)
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
		_, n, err := ds[1].announce(ctx, ih, int(a.addr.Port()), false)
		return n, err
	}
	b.v.cfg.GetPeers = ds[2].getPeers
	ctx := invCtx(t, 5*time.Second)
	code, done, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, _, _ := parseInviteCode(code)
	waitFor(t, "the announce", func() bool { p, _ := ds[3].getPeers(ctx, inviteInfohash(np)); return len(p) > 0 })
	r, err := b.v.accept(ctx, code)
	if err != nil || r.Key != a.key || r.warning() != "" {
		t.Fatalf("accept = %+v, %v; want A's key and no warning", r, err)
	}
	if r, _ := recvEnd(t, done); r.Err != nil || r.Key != b.key {
		t.Fatalf("inviter got %v, %v; want B's key", r.Key, r.Err)
	}
}

// ---------------------------------------------------------------------------
// SPEC.md 7.10's vector, recomputed through the code paths the protocol uses.

// inviteVectorOrder is the order of the fields in the SPEC block.
var inviteVectorOrder = []string{
	"code", "nameplate", "infohash", "acceptor_infohash", "prs", "ci", "sid", "generator_string", "g",
	"ya", "Ya", "inviter_secret", "yb", "Yb", "K", "ISK", "mac_key", "tag_a", "tag_b",
	"seal_key_inviter", "seal_key_acceptor", "inviter_key", "acceptor_key",
	"msg1", "msg2", "msg3", "msg4", "refuse_wrong", "refuse_closed", "punch",
}

// inviteVectorCode is the vector's code, and README's example.
const inviteVectorCode = "482193-tumor-unicorn"

func inviteVectorValues(t *testing.T) map[string]string {
	t.Helper()
	np, pw, err := parseInviteCode(inviteVectorCode)
	if err != nil {
		t.Fatal(err)
	}
	v := loadCPaceVectors(t)
	sid := cpHex(t, "0001020304050607")
	ya := cpHex32(t, v.G["ya"]) // the draft's scalar
	secret := seqBytes(0x30, inviteSecretLen)
	invKP, _ := newDHKeys(seqBytes(0x10, 32))
	accKP, _ := newDHKeys(seqBytes(0x20, 32))
	hx := hex.EncodeToString
	out := map[string]string{
		"code": inviteVectorCode, "nameplate": fmt.Sprint(np), "prs": hx([]byte(inviteVectorCode)),
		"ci": hx([]byte(inviteCI)), "sid": hx(sid), "ya": hx(ya[:]), "inviter_secret": hx(secret),
		"inviter_key": hx(invKP.pub[:]), "acceptor_key": hx(accKP.pub[:]),
	}
	ih, aih := inviteInfohash(np), inviteAcceptorInfohash(np)
	out["infohash"], out["acceptor_infohash"] = hx(ih[:]), hx(aih[:])
	out["generator_string"] = hx(cpaceGeneratorString([]byte(cpaceDSI), []byte(inviteVectorCode), []byte(inviteCI), sid))
	g := cpaceCalculateGenerator([]byte(inviteVectorCode), []byte(inviteCI), sid)
	out["g"] = hx(g[:])

	// The acceptor: sid then ya from its random source, the inviter at
	// testAddr(1).
	accLog := &sendLog{}
	acc := newInviter(inviteConfig{Self: accKP.pub, Send: accLog.send, Rand: bytes.NewReader(append(bytes.Clone(sid), ya[:]...))})
	run, err := acc.acceptor.newAcceptRun(np, pw)
	if err != nil {
		t.Fatal(err)
	}
	acc.acceptor.addCandidates(run, []netip.AddrPort{testAddr(1)})
	cand := run.cands[testAddr(1)]
	out["Ya"], out["msg1"] = hx(cand.ya[:]), hx(cand.msg1)

	// The inviter: its secret from its random source.
	invLog := &sendLog{}
	inv := newInviter(inviteConfig{Self: invKP.pub, Send: invLog.send, Rand: bytes.NewReader(secret),
		Announce: func(context.Context, nodeID) (int, error) { return 1, nil }, Tick: time.Hour})
	if _, _, err := inv.inviteWith(invCtx(t, time.Second), np, pw); err != nil {
		t.Fatal(err)
	}
	inv.handlePacket(testAddr(2), cand.msg1)
	msg2 := invLog.last()
	out["msg2"] = hx(msg2)
	m2, _ := parseInvite(msg2)
	out["Yb"] = hx(m2.Y[:])
	yb := inviterScalar((*[inviteSecretLen]byte)(secret), sid, cand.ya[:])
	out["yb"] = hx(yb[:])
	k, _ := cpaceScalarMultVfy(ya, m2.Y)
	out["K"] = hx(k[:])
	isk := cpaceISK(sid, k[:], cand.ya[:], inviteADa, m2.Y[:], inviteADb)
	out["ISK"] = hx(isk[:])
	mk := cpaceMacKey(sid, isk)
	out["mac_key"] = hx(mk[:])
	keys := deriveInviteKeys(sid, isk, cand.ya[:], m2.Y[:])
	out["tag_a"], out["tag_b"] = hx(keys.tagA[:]), hx(keys.tagB[:])
	out["seal_key_inviter"], out["seal_key_acceptor"] = hx(keys.sealInviter[:]), hx(keys.sealAcc[:])

	// msg2 to the acceptor gives msg3; msg3 to the inviter gives msg4.
	acc.handlePacket(testAddr(1), msg2)
	msg3 := accLog.last()
	out["msg3"] = hx(msg3)
	inv.handlePacket(testAddr(2), msg3)
	out["msg4"] = hx(invLog.last())
	acc.handlePacket(testAddr(1), invLog.last())
	select {
	case o := <-run.result:
		if o.err != nil || o.res.Key != invKP.pub {
			t.Fatalf("acceptor: %+v", o)
		}
	default:
		t.Fatal("msg4 did not end the acceptor's run")
	}
	out["refuse_wrong"] = hx(refuseMsg(cand.sid, inviteRefuseWrong))
	out["refuse_closed"] = hx(refuseMsg(cand.sid, inviteRefuseClosed))
	out["punch"] = hx((&inviteMsg{Sub: inviteSubPunch}).encode())
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
	// The fuzz corpus holds every message of the vector.
	for _, name := range []string{"msg1", "msg2", "msg3", "msg4", "refuse_wrong", "refuse_closed", "punch"} {
		b, err := os.ReadFile("testdata/fuzz/FuzzInvite/spec_" + name)
		if err != nil || !strings.Contains(string(b), fmt.Sprintf("%q", cpHex(t, want[name]))) {
			t.Errorf("testdata/fuzz/FuzzInvite/spec_%s does not hold SPEC's %s (%v)", name, name, err)
		}
	}
}

// BenchmarkInviteRun measures the inviter's and the acceptor's CPU for one
// complete exchange (msg1 to msg4), without the network.
func BenchmarkInviteRun(b *testing.B) {
	b.ReportAllocs()
	kp, _ := generateDHKeys(cryptorand.Reader)
	for b.Loop() {
		accLog, invLog := &sendLog{}, &sendLog{}
		acc := newInviter(inviteConfig{Self: kp.pub, Send: accLog.send})
		run, err := acc.acceptor.newAcceptRun(482193, "tumor-unicorn")
		if err != nil {
			b.Fatal(err)
		}
		acc.acceptor.addCandidates(run, []netip.AddrPort{testAddr(1)})
		inv := newInviter(inviteConfig{Self: kp.pub, Send: invLog.send, Tick: time.Hour})
		ctx, cancel := context.WithCancel(context.Background())
		_, events, err := inv.inviteWith(ctx, 482193, "tumor-unicorn")
		if err != nil {
			b.Fatal(err)
		}
		inv.handlePacket(testAddr(2), accLog.last())
		acc.handlePacket(testAddr(1), invLog.last())
		inv.handlePacket(testAddr(2), accLog.last())
		acc.handlePacket(testAddr(1), invLog.last())
		if ev := <-events; ev.Err != nil {
			b.Fatal(ev.Err)
		}
		if o := <-run.result; o.err != nil {
			b.Fatal(o.err)
		}
		acc.acceptor.endRun(run)
		cancel()
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
	r, err := b.v.accept(ctx, code)
	if err != nil || r.Key != a.key {
		t.Fatalf("accept = %v, %v; want A's key", r.Key, err)
	}
	if r, _ := recvEnd(t, done); r.Err != nil || r.Key != b.key {
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

// TestInviteAcceptorAwaitsPunch: with the inviter's address gated (a NAT
// may be in front of it, SPEC.md 7.2), the acceptor sends opening packets
// and no msg1 until the inviter's punch came, so the inviter's NAT never
// sees a packet from the acceptor before its own went out.
func TestInviteAcceptorAwaitsPunch(t *testing.T) {
	d := newMapDHT()
	var opens atomic.Int64
	a := newInvitePeer(t, d, nil, nil)
	b := newInvitePeer(t, d, nil, func(c *inviteConfig) {
		c.Open = func(netip.AddrPort) error { opens.Add(1); return nil }
		c.Gated = func(netip.AddrPort) bool { return true }
	})
	a.nat.Store(true)
	ctx := invCtx(t, 5*time.Second)
	code, done, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, _, _ := parseInviteCode(code)
	waitFor(t, "announce", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return len(p) == 1 })
	r, err := b.v.accept(ctx, code)
	if err != nil || r.Key != a.key {
		t.Fatalf("accept = %v, %v; want A's key", r.Key, err)
	}
	if r, _ := recvEnd(t, done); r.Err != nil || r.Key != b.key {
		t.Fatalf("inviter got %v, %v; want B's key", r.Key, r.Err)
	}
	if n := a.natDrops.Load(); n != 0 {
		t.Errorf("the inviter's NAT dropped %d datagrams: a msg1 came before the punch", n)
	}
	if opens.Load() == 0 {
		t.Error("the acceptor sent no opening packet")
	}
}

// TestInviteAcceptorOpenFallback: an inviter that never punches (its
// punches are lost here) still gets msg1, inviteOpenTicks after the first
// opening packet; where no opening packet can be sent, msg1 goes at once.
func TestInviteAcceptorOpenFallback(t *testing.T) {
	dropPunch := func(b []byte) []byte {
		if b[1] == inviteSubPunch {
			return nil
		}
		return b
	}
	for _, openFails := range []bool{false, true} {
		d := newMapDHT()
		var opens atomic.Int64
		var mu sync.Mutex
		var firstOpen, firstMsg1 time.Time
		noteMsg1 := func(b []byte) []byte {
			mu.Lock()
			defer mu.Unlock()
			if b[1] == inviteSubMsg1 && firstMsg1.IsZero() {
				firstMsg1 = time.Now()
			}
			return b
		}
		a := newInvitePeer(t, d, dropPunch, nil)
		b := newInvitePeer(t, d, noteMsg1, func(c *inviteConfig) {
			c.Open = func(netip.AddrPort) error {
				mu.Lock()
				if firstOpen.IsZero() {
					firstOpen = time.Now()
				}
				mu.Unlock()
				opens.Add(1)
				if openFails {
					return errors.New("no ttl here")
				}
				return nil
			}
			c.Gated = func(netip.AddrPort) bool { return true }
		})
		ctx := invCtx(t, 5*time.Second)
		code, done, err := a.v.invite(ctx)
		if err != nil {
			t.Fatal(err)
		}
		np, _, _ := parseInviteCode(code)
		waitFor(t, "announce", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return len(p) == 1 })
		r, err := b.v.accept(ctx, code)
		if err != nil || r.Key != a.key {
			t.Fatalf("open fails %v: accept = %v, %v; want A's key", openFails, r.Key, err)
		}
		if r, _ := recvEnd(t, done); r.Err != nil || r.Key != b.key {
			t.Fatalf("open fails %v: inviter got %v, %v; want B's key", openFails, r.Key, r.Err)
		}
		mu.Lock()
		gap := firstMsg1.Sub(firstOpen)
		mu.Unlock()
		switch n := opens.Load(); {
		case openFails && n != 1:
			t.Errorf("open fails: %d opening attempts, want 1 (then msg1 at once)", n)
		case !openFails && (n < 2 || gap < inviteOpenTicks*testInviteTick):
			t.Errorf("%d opening packets, msg1 %v after the first; want repeats and at least %v",
				n, gap, inviteOpenTicks*testInviteTick)
		}
	}
}
