// Attacks on invitations through real packets on loopback (issue 13 item
// 4, SPEC.md 7.9): what it costs to deny an invitation, measured with an
// attacker that is its own DHT node and its own UDP sockets.
package main

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
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

// newCountingDHT starts a DHT node on ip (a 127.0.0.0/8 address, so that
// each attacker node has its own IP) that counts the queries it sends.
func newCountingDHT(t *testing.T, ip string, boot []string) (*dht, *atomic.Int64) {
	t.Helper()
	n, err := listenNode(ip+":0", nil)
	if err != nil {
		t.Fatal(err)
	}
	var queries atomic.Int64
	n.trace = func(out bool, _ netip.AddrPort, b []byte) {
		if out && bytes.HasSuffix(b, []byte("1:y1:qe")) {
			queries.Add(1)
		}
	}
	d, err := newDHT(n, dhtConfig{Bootstrap: boot})
	if err != nil {
		t.Fatal(err)
	}
	d.timing.rtoInitial = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	bootstrapRetrying(t, d)
	queries.Store(0) // joining the DHT is not part of any attack
	return d, &queries
}

// announcePorts is the thrifty attacker's announce: one get_peers lookup
// for the tokens, then one announce_peer per port to each of the k
// closest nodes. It returns how many announces were stored.
func announcePorts(ctx context.Context, d *dht, ih nodeID, ports []uint16) int {
	r, err := d.lookup(ctx, lookupOpts{target: ih, method: methodGetPeers})
	if err != nil {
		return 0
	}
	var to []nodeInfo
	var toks [][]byte
	for _, n := range r.Closest {
		if n.Token != nil {
			to, toks = append(to, n.nodeInfo), append(toks, n.Token)
		}
	}
	stored := 0
	for _, p := range ports {
		for _, res := range d.tx.queryAll(ctx, to, txOpts{}, func(i int) krpcMsg {
			return krpcMsg{Method: methodAnnouncePeer, Args: krpcArgs{InfoHash: ih, Port: p, Token: toks[i]}}
		}) {
			if res.Err == nil {
				stored++
			}
		}
	}
	return stored
}

// fakeInviter is an attacker's address at a nameplate. It answers every
// msg1 with reply (nil: silent) and keeps what it gets: each msg3 is one
// password guess handed to it.
type fakeInviter struct {
	addr   netip.AddrPort
	conn   *net.UDPConn
	reply  func(m *inviteMsg) []byte
	msg1s  atomic.Int64
	others atomic.Int64 // msg3s or anything else

	mu   sync.Mutex
	sids [][inviteSIDLen]byte // of the msg1s
}

// guessMsg2 answers like an inviter with a password of its own: a msg2
// whose Yb is random.
func guessMsg2(m *inviteMsg) []byte {
	r := inviteMsg{Sub: inviteSubMsg2, SID: m.SID}
	cryptorand.Read(r.Y[:])
	return r.encode()
}

// refuseWith answers with a refuse.
func refuseWith(reason byte) func(m *inviteMsg) []byte {
	return func(m *inviteMsg) []byte { return refuseMsg(m.SID, reason) }
}

func newFakeInviter(t *testing.T, ip string, reply func(m *inviteMsg) []byte) *fakeInviter {
	t.Helper()
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeInviter{addr: conn.LocalAddr().(*net.UDPAddr).AddrPort(), conn: conn, reply: reply}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			m, err := parseInvite(buf[:n])
			if err != nil || m.Sub != inviteSubMsg1 {
				f.others.Add(1)
				continue
			}
			f.msg1s.Add(1)
			f.mu.Lock()
			f.sids = append(f.sids, m.SID)
			f.mu.Unlock()
			if b := f.reply(&m); b != nil {
				conn.WriteToUDPAddrPort(b, from)
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return f
}

func (f *fakeInviter) firstSID() [inviteSIDLen]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sids[0]
}

// attackSwarm is a DHT on loopback with a real inviter and acceptor that
// use it for the rendezvous.
type attackSwarm struct {
	ds   []*dht
	boot []string
}

func newAttackSwarm(t *testing.T, size int) *attackSwarm {
	ds := newSwarm(t, size, 0)
	return &attackSwarm{ds: ds, boot: []string{ds[0].addr().String()}}
}

// pair makes an inviter that announces through one swarm node and an
// acceptor that looks up through another.
func (s *attackSwarm) pair(t *testing.T) (inv, acc *invitePeer) {
	inv = newInvitePeer(t, nil, nil, nil)
	acc = newInvitePeer(t, nil, nil, nil)
	inv.v.cfg.Announce = func(ctx context.Context, ih nodeID) (int, error) {
		_, n, err := s.ds[1].announce(ctx, ih, int(inv.addr.Port()), false)
		return n, err
	}
	inv.v.cfg.GetPeers = s.ds[1].getPeers
	acc.v.cfg.Announce = func(ctx context.Context, ih nodeID) (int, error) {
		_, n, err := s.ds[2].announce(ctx, ih, int(acc.addr.Port()), false)
		return n, err
	}
	acc.v.cfg.GetPeers = s.ds[2].getPeers
	return inv, acc
}

// attackerIP is the loopback address of attacker number i.
func attackerIP(i int) string { return fmt.Sprintf("127.0.%d.%d", 1+i/200, 2+i%200) }

// TestInviteAttackCost measures what denying one invitation costs, with
// the two attacks of issue 13 item 4, and logs the figures; set
// KADCHAT_INVITE_ATTACK=1 to run it. Exhaust: the attacker finds the
// inviter at the nameplate and sends it msg1s from a plain UDP socket.
// Poison: before the inviter announces, attacker IPs announce 4 ports
// each at the nameplate, and every port answers msg1 with a guess.
func TestInviteAttackCost(t *testing.T) {
	if os.Getenv("KADCHAT_INVITE_ATTACK") == "" {
		t.Skip("a measurement; KADCHAT_INVITE_ATTACK=1 runs it")
	}
	s := newAttackSwarm(t, 16)
	t.Logf("nameplates: %d", inviteNameplates)
	measureExhaust(t, s)
	measureBurn(t, s)
	measurePoison(t, s, []int{1, 2, 4, 8, 16, 32}, 10)
}

// measureBurn sends the inviter msg3s whose tags cannot verify, each one
// a wrong guess, until the code closes, and reports who was told.
func measureBurn(t *testing.T, s *attackSwarm) {
	ad, queries := newCountingDHT(t, attackerIP(0), s.boot)
	raw, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(attackerIP(0))})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	inv, acc := s.pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code, events, err := inv.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, _, _ := parseInviteCode(code)
	waitFor(t, "the announce", func() bool { p, _ := s.ds[3].getPeers(ctx, inviteInfohash(np)); return len(p) > 0 })
	queries.Store(0)
	peers, _ := ad.getPeers(ctx, inviteInfohash(np))
	sent := 0
	for ; sent < 10; sent++ {
		if _, open := inv.v.testState(np); !open {
			break
		}
		m := inviteMsg{Sub: inviteSubMsg3, Nameplate: np, SID: [inviteSIDLen]byte{byte(sent), 0xb3}, Y: testShare}
		cryptorand.Read(m.Tag[:])
		for _, p := range peers {
			raw.WriteToUDPAddrPort(m.encode(), p)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var told []string
	for ev := range events {
		told = append(told, fmt.Sprintf("%+v", ev))
	}
	actx, acancel := context.WithTimeout(ctx, 2*time.Second)
	_, aerr := acc.v.accept(actx, code)
	acancel()
	t.Logf("burn: %d msg3 (+%d queries to find the inviter) closed the code; the inviter was told %v; the acceptor: %v",
		sent, queries.Load(), told, aerr)
}

// measureExhaust sends n msg1s with fresh sids for n = 1, 2, ... and
// reports the first n after which the real acceptor gets no key.
func measureExhaust(t *testing.T, s *attackSwarm) {
	ad, queries := newCountingDHT(t, attackerIP(0), s.boot)
	raw, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(attackerIP(0))})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, n := range []int{1, 2, 3, 4, 8, 64, 1000, 10000} {
		inv, acc := s.pair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		code, done, err := inv.v.invite(ctx)
		if err != nil {
			t.Fatal(err)
		}
		np, _, _ := parseInviteCode(code)
		waitFor(t, "the announce", func() bool { p, _ := s.ds[3].getPeers(ctx, inviteInfohash(np)); return len(p) > 0 })
		queries.Store(0)
		peers, _ := ad.getPeers(ctx, inviteInfohash(np))
		lookup := queries.Load()
		for i := range n {
			for _, p := range peers {
				m := inviteMsg{Sub: inviteSubMsg1, SID: [inviteSIDLen]byte{byte(i), byte(i >> 8), 0xa7}, Nameplate: np, Y: [inviteYLen]byte{9}}
				raw.WriteToUDPAddrPort(m.encode(), p)
			}
		}
		time.Sleep(50 * time.Millisecond)
		actx, acancel := context.WithTimeout(ctx, time.Second)
		res, err := acc.v.accept(actx, code)
		acancel()
		cancel()
		r, _ := recvEnd(t, done)
		t.Logf("exhaust: %d msg1 (+%d queries to find the inviter): acceptor %v (key %v), inviter %v",
			n, lookup, err, res.Key == inv.key, r.Err)
		if res.Key != inv.key {
			t.Logf("exhaust: DENIED with %d datagrams per nameplate", int(lookup)+n)
			return
		}
	}
	t.Logf("exhaust: never denied")
}

// measurePoison puts k attacker IPs with 4 ports each at the nameplate
// before the inviter, for each k, trials times, and reports how often the
// real acceptor still gets the inviter's key, and the attacker's datagrams.
func measurePoison(t *testing.T, s *attackSwarm, ks []int, trials int) {
	next := 1
	for _, k := range ks {
		type attacker struct {
			d       *dht
			queries *atomic.Int64
			ports   []uint16
			fakes   []*fakeInviter
		}
		var as []attacker
		for range k {
			ip := attackerIP(next)
			next++
			d, q := newCountingDHT(t, ip, s.boot)
			a := attacker{d: d, queries: q}
			for range maxPortsPerIP {
				f := newFakeInviter(t, ip, guessMsg2)
				a.fakes, a.ports = append(a.fakes, f), append(a.ports, f.addr.Port())
			}
			as = append(as, a)
		}
		ok, datagrams, guesses := 0, int64(0), int64(0)
		errs := map[string]int{}
		for range trials {
			np, pw, err := newInviteCode(cryptorand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var wg sync.WaitGroup
			for _, a := range as {
				a.queries.Store(0)
				wg.Go(func() { announcePorts(ctx, a.d, inviteInfohash(np), a.ports) })
			}
			wg.Wait()
			for _, a := range as {
				datagrams += a.queries.Load()
			}
			inv, acc := s.pair(t)
			code, done, err := inv.v.inviteWith(ctx, np, pw)
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the announce", func() bool {
				p, _ := s.ds[3].getPeers(ctx, inviteInfohash(np))
				return slices.Contains(p, inv.addr)
			})
			before := map[*fakeInviter]int64{}
			for _, a := range as {
				for _, f := range a.fakes {
					before[f] = f.others.Load()
				}
			}
			actx, acancel := context.WithTimeout(ctx, 2*time.Second)
			res, err := acc.v.accept(actx, code)
			acancel()
			if err == nil && res.Key == inv.key {
				ok++
			} else {
				errs[fmt.Sprint(err)]++
			}
			cancel()
			recvEnd(t, done)
			time.Sleep(20 * time.Millisecond) // the last answers in flight
			for _, a := range as {
				for _, f := range a.fakes {
					if f.others.Load() > before[f] {
						guesses++
					}
				}
			}
		}
		t.Logf("poison: %d attacker IPs x %d ports: %.0f datagrams per nameplate; acceptor succeeded %d of %d %v; %.1f attacker addresses per run handed a guess (msg3 or abort)",
			k, maxPortsPerIP, float64(datagrams)/float64(trials), ok, trials, errs, float64(guesses)/float64(trials))
	}
}

// ---------------------------------------------------------------------------
// The attacks as regression tests: real packets on loopback, the DHT a map.

// rawSocket is the attacker's plain UDP socket; it counts what comes back.
type rawSocket struct {
	conn          *net.UDPConn
	got, gotBytes atomic.Int64
	refuses       atomic.Int64
}

func newRawSocket(t *testing.T) *rawSocket {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadBuffer(4 << 20)
	r := &rawSocket{conn: conn}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.got.Add(1)
			r.gotBytes.Add(int64(n))
			if n > 1 && buf[1] == inviteSubRefuse {
				r.refuses.Add(1)
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return r
}

// openInvite starts an invitation on a and waits for its announce.
func openInvite(t *testing.T, ctx context.Context, d *mapDHT, a *invitePeer) (string, uint32, <-chan inviteEvent) {
	t.Helper()
	code, events, err := a.v.invite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	np, _, _ := parseInviteCode(code)
	waitFor(t, "the announce", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return slices.Contains(p, a.addr) })
	return code, np, events
}

// TestInviteMsg1Flood: msg1s from a plain UDP socket, 2,000 with fresh
// sids, cost the inviter no try and no state. Each gets at most one msg2
// (fewer bytes than it sent), nothing is repeated to the attacker
// afterwards, and the real acceptor connects without a warning.
func TestInviteMsg1Flood(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	ctx := invCtx(t, 10*time.Second)
	code, np, events := openInvite(t, ctx, d, a)
	raw := newRawSocket(t)
	const flood = 2000
	sent := 0
	for i := range flood {
		m := inviteMsg{Sub: inviteSubMsg1, Nameplate: np, SID: [inviteSIDLen]byte{byte(i), byte(i >> 8), 0xf1}, Y: testShare}
		n, _ := raw.conn.WriteToUDPAddrPort(m.encode(), a.addr)
		sent += n
	}
	// Wait until the inviter has worked through its socket's backlog.
	for prev := int64(-1); prev != raw.got.Load(); {
		prev = raw.got.Load()
		time.Sleep(20 * testInviteTick)
	}
	got := raw.got.Load()
	if got > flood || raw.gotBytes.Load() >= int64(sent) {
		t.Errorf("%d msg1s (%d bytes) drew %d datagrams (%d bytes)", flood, sent, got, raw.gotBytes.Load())
	}
	time.Sleep(20 * testInviteTick)
	if later := raw.got.Load(); later != got {
		t.Errorf("the inviter sent the attacker %d more datagrams after the flood", later-got)
	}
	if wrong, open := a.v.testState(np); wrong != 0 || !open {
		t.Fatalf("after the flood: %d wrong tries, open %v", wrong, open)
	}
	r, err := b.v.accept(ctx, code)
	if err != nil || r.Key != a.key || r.warning() != "" {
		t.Fatalf("accept after the flood = %+v, %v; want A's key and no warning", r, err)
	}
	if end, wrong := recvEnd(t, events); end.Err != nil || end.Key != b.key || wrong != 0 {
		t.Fatalf("inviter got %+v after %d wrong tries; want B's key", end, wrong)
	}
}

// TestInviteBurnTellsBoth: three msg3s that cannot verify, from a plain
// UDP socket, are three wrong tries: they close the code, and both
// people are told. A repeat of one is not counted again.
func TestInviteBurnTellsBoth(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	ctx := invCtx(t, 10*time.Second)
	code, np, events := openInvite(t, ctx, d, a)
	raw := newRawSocket(t)
	for i := range inviteMaxTries {
		for range 2 { // the second copy is a repeat
			raw.conn.WriteToUDPAddrPort(testMsg3(np, byte(i)), a.addr)
		}
		waitFor(t, "the refuses", func() bool { return raw.refuses.Load() == int64(2*i+2) })
		ev := recvEvent(t, events)
		switch {
		case i < inviteMaxTries-1 && (!ev.Wrong || ev.TriesLeft != inviteMaxTries-1-i):
			t.Fatalf("wrong try %d: the inviter was told %+v", i+1, ev)
		case i == inviteMaxTries-1 && !errors.Is(ev.Err, errInviteUsedUp):
			t.Fatalf("last wrong try: the inviter was told %+v, want %v", ev, errInviteUsedUp)
		}
	}
	if _, err := b.v.accept(ctx, code); !errors.Is(err, errInviteClosed) {
		t.Fatalf("the real acceptor got %v, want %v", err, errInviteClosed)
	}
}

// TestInvitePoisoned: before the inviter announces, an attacker puts 12
// addresses at the nameplate: 3 IPs with 2 guessers each, one IP with 4,
// and 2 that never answer. The acceptor tries every one it may (2 per
// IP), still connects to the inviter, and is told that others answered;
// each guesser got one guess at most.
func TestInvitePoisoned(t *testing.T) {
	d := newMapDHT()
	a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
	ctx := invCtx(t, 10*time.Second)
	np, pw, err := newInviteCode(cryptorand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var fakes []*fakeInviter
	for i, n := range []int{2, 2, 2, 4} {
		for range n {
			fakes = append(fakes, newFakeInviter(t, attackerIP(i), guessMsg2))
		}
	}
	var silent []*fakeInviter
	for range 2 {
		silent = append(silent, newFakeInviter(t, attackerIP(5), func(*inviteMsg) []byte { return nil }))
	}
	for _, f := range append(slices.Clone(fakes), silent...) {
		d.announcer(f.addr)(ctx, inviteInfohash(np))
	}
	// The inviter answers only once every address has been tried (its
	// NAT opens then), so that a quick success does not end the run
	// before the test has seen the attempts.
	a.nat.Store(true)
	a.v.cfg.GetPeers = func(context.Context, nodeID) ([]netip.AddrPort, error) { return nil, nil }
	code, events, err := a.v.inviteWith(ctx, np, pw)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the announce", func() bool { p, _ := d.getPeers(ctx, inviteInfohash(np)); return slices.Contains(p, a.addr) })
	type res struct {
		r   acceptResult
		err error
	}
	got := make(chan res, 1)
	go func() { r, err := b.v.accept(ctx, code); got <- res{r, err} }()
	waitFor(t, "every address tried", func() bool {
		n := 0
		for _, f := range append(slices.Clone(fakes), silent...) {
			if f.msg1s.Load() > 0 {
				n++
			}
		}
		return n == 6+inviteMaxPerGroup+2
	})
	a.nat.Store(false)
	x := <-got
	r, err := x.r, x.err
	if err != nil || r.Key != a.key {
		t.Fatalf("accept on a poisoned nameplate = %+v, %v; want A's key", r, err)
	}
	if r.Others == 0 || !strings.Contains(r.warning(), "other address") {
		t.Errorf("accept = %+v: no word of the other addresses", r)
	}
	if end, _ := recvEnd(t, events); end.Err != nil || end.Key != b.key {
		t.Fatalf("inviter got %+v; want B's key", end)
	}
	probed := 0
	for i, f := range append(fakes, silent...) {
		if f.msg1s.Load() > 0 {
			probed++
		}
		if i < 6 && f.msg1s.Load() == 0 {
			t.Errorf("guesser %d at %v was never tried", i, f.addr)
		}
	}
	if want := 6 + inviteMaxPerGroup + 2; probed != want {
		t.Errorf("%d attacker addresses tried, want %d (every one, %d per IP)", probed, want, inviteMaxPerGroup)
	}
}

// TestInviteRefuseIgnored: refuses are not authenticated, so they end no
// more than the sender's own run. The inviter ignores refuses and msg4s;
// an acceptor ignores a refuse with another run's sid or from another
// address, and an attacker at the nameplate that refuses its own run does
// not end the acceptor's, whether the inviter was found already or is
// found only by a later lookup.
func TestInviteRefuseIgnored(t *testing.T) {
	t.Run("inviter", func(t *testing.T) {
		d := newMapDHT()
		a := newInvitePeer(t, d, nil, nil)
		ctx := invCtx(t, 5*time.Second)
		_, np, events := openInvite(t, ctx, d, a)
		raw := newRawSocket(t)
		for i := range 50 {
			sid := [inviteSIDLen]byte{byte(i), 0xab}
			raw.conn.WriteToUDPAddrPort(refuseMsg(sid, inviteRefuseWrong), a.addr)
			raw.conn.WriteToUDPAddrPort(refuseMsg(sid, inviteRefuseClosed), a.addr)
			m := inviteMsg{Sub: inviteSubMsg4, SID: sid}
			raw.conn.WriteToUDPAddrPort(m.encode(), a.addr)
		}
		time.Sleep(20 * testInviteTick)
		if wrong, open := a.v.testState(np); wrong != 0 || !open || len(events) != 0 {
			t.Fatalf("after refuses: %d wrong tries, open %v, %d events", wrong, open, len(events))
		}
	})
	t.Run("found", func(t *testing.T) {
		d := newMapDHT()
		a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, nil)
		ctx := invCtx(t, 10*time.Second)
		// The inviter is behind a NAT and does not punch until allowed.
		a.nat.Store(true)
		a.v.cfg.GetPeers = func(context.Context, nodeID) ([]netip.AddrPort, error) { return nil, nil }
		code, np, events := openInvite(t, ctx, d, a)
		g := newFakeInviter(t, attackerIP(0), refuseWith(inviteRefuseClosed))
		d.announcer(g.addr)(ctx, inviteInfohash(np))
		type res struct {
			r   acceptResult
			err error
		}
		got := make(chan res, 1)
		go func() { r, err := b.v.accept(ctx, code); got <- res{r, err} }()
		waitFor(t, "the attacker's msg1", func() bool { return g.msg1s.Load() > 0 })
		// Spoofed from the inviter's address: g's sid, a made-up sid.
		for _, sid := range [][inviteSIDLen]byte{g.firstSID(), {1, 2, 3}} {
			b.v.handlePacket(a.addr, refuseMsg(sid, inviteRefuseWrong))
			m := inviteMsg{Sub: inviteSubMsg2, SID: sid}
			b.v.handlePacket(a.addr, m.encode())
		}
		time.Sleep(3 * inviteLookupTicks * testInviteTick) // lookups come and go
		select {
		case r := <-got:
			t.Fatalf("the run ended on refuses: %+v, %v", r.r, r.err)
		default:
		}
		a.nat.Store(false)
		r := <-got
		if r.err != nil || r.r.Key != a.key {
			t.Fatalf("accept = %+v, %v; want A's key", r.r, r.err)
		}
		if end, _ := recvEnd(t, events); end.Err != nil || end.Key != b.key {
			t.Fatalf("inviter got %+v; want B's key", end)
		}
	})
	t.Run("later", func(t *testing.T) {
		d := newMapDHT()
		slow := func(c *inviteConfig) { c.Tick = 10 * testInviteTick }
		a, b := newInvitePeer(t, d, nil, nil), newInvitePeer(t, d, nil, slow)
		ctx := invCtx(t, 10*time.Second)
		np, pw, _ := newInviteCode(cryptorand.Reader)
		g := newFakeInviter(t, attackerIP(0), refuseWith(inviteRefuseWrong))
		d.announcer(g.addr)(ctx, inviteInfohash(np))
		type res struct {
			r   acceptResult
			err error
		}
		got := make(chan res, 1)
		go func() { r, err := b.v.accept(ctx, formatInviteCode(np, pw)); got <- res{r, err} }()
		waitFor(t, "the attacker's msg1", func() bool { return g.msg1s.Load() > 0 })
		_, events, err := a.v.inviteWith(ctx, np, pw)
		if err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.err != nil || r.r.Key != a.key {
			t.Fatalf("accept = %+v, %v; want A's key", r.r, r.err)
		}
		if end, _ := recvEnd(t, events); end.Err != nil || end.Key != b.key {
			t.Fatalf("inviter got %+v; want B's key", end)
		}
	})
}

// TestE2EInviteWrongCode: through the real binary, a wrong code tells
// both people, in the exact lines README documents; the right code then
// works, and the acceptor hears that a wrong code was tried before.
func TestE2EInviteWrongCode(t *testing.T) {
	boot := testSwarm(t, 8)
	alice, bob := newUser(t, "alice", boot), newUser(t, "bob", boot)
	pa, pb := alice.start(t), bob.start(t)
	pa.send("/invite bob")
	code := strings.Fields(pa.expect("invite bob ", 10*time.Second))[2]
	np, pw, err := parseInviteCode(code)
	if err != nil {
		t.Fatalf("alice's code %q: %v", code, err)
	}
	pb.send("/accept alice %s", formatInviteCode(np, wrongPassword(pw)))
	for _, x := range []struct {
		p    *proc
		line string
	}{
		{pa, "* invite bob: a wrong code was tried (2 tries left)"},
		{pb, "error invite alice: " + errInviteWrongCode.Error()},
	} {
		if got := x.p.expect(x.line, e2eWait); got != x.line {
			t.Fatalf("%s: got %q, want %q", x.p.name, got, x.line)
		}
	}
	pb.send("/accept alice %s", code)
	pa.expect("* added bob", e2eWait)
	pb.expect("* added alice", e2eWait)
	const warn = "* invite alice: someone may have tried the code (the inviter saw 1 wrong code before yours); compare /verify alice"
	if got := pb.expect("* invite alice:", 5*time.Second); got != warn {
		t.Fatalf("bob: got %q, want %q", got, warn)
	}
	pa.quit()
	pb.quit()
}
