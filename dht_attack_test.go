// Regression tests for the DHT attacks of issue 13, through real UDP
// packets on 127.0.0.1: the attacker or the observer is a raw socket that
// speaks KRPC by hand. Each test logs the figure it measures.
package main

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// rawNode is a DHT node played by hand on a raw socket: it answers every
// query with its id and the "ip" it is told to claim, and records the
// queries it receives. It stops when the test ends.
type rawNode struct {
	*rawPeer
	id nodeID

	mu     sync.Mutex
	claim  netip.AddrPort // the "ip" of its answers; zero: the true source
	silent bool           // records queries without answering
	got    []krpcMsg      // queries received, private copies
}

// rawNodeLife bounds a rawNode's read loop, whatever the test does.
const rawNodeLife = 2 * time.Minute

func newRawNode(t *testing.T, id nodeID) *rawNode {
	t.Helper()
	n := &rawNode{rawPeer: newRawPeer(t), id: id}
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		for end := time.Now().Add(rawNodeLife); time.Now().Before(end); {
			select {
			case <-stop:
				return
			default:
			}
			if b, from := n.recv(20 * time.Millisecond); b != nil {
				n.answer(b, from)
			}
		}
	}()
	return n
}

func (n *rawNode) answer(b []byte, from netip.AddrPort) {
	m, err := parseKRPC(bytes.Clone(b))
	if err != nil || m.Type != 'q' {
		return
	}
	n.mu.Lock()
	n.got = append(n.got, m)
	ip, silent := n.claim, n.silent
	n.mu.Unlock()
	if silent {
		return
	}
	if !ip.IsValid() {
		ip = from
	}
	r := krpcMsg{TID: m.TID, Type: 'r', IP: ip, Reply: krpcReply{ID: n.id}}
	n.conn.WriteToUDPAddrPort(r.appendTo(nil), from)
}

func (n *rawNode) setClaim(ip netip.AddrPort) {
	n.mu.Lock()
	n.claim = ip
	n.mu.Unlock()
}

// queries returns the queries received so far.
func (n *rawNode) queries() []krpcMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]krpcMsg(nil), n.got...)
}

func newRawNodes(t *testing.T, count int) []*rawNode {
	ns := make([]*rawNode, count)
	for i := range ns {
		ns[i] = newRawNode(t, nodeID{0: 0x10 + byte(i), 19: byte(i)})
	}
	return ns
}

// idsSince counts, over the nodes, the queries received after the first
// from[i] that carry id.
func idsSince(ns []*rawNode, from []int, id nodeID) (withID, total int) {
	for i, n := range ns {
		for _, m := range n.queries()[from[i]:] {
			total++
			if m.Args.ID == id {
				withID++
			}
		}
	}
	return withID, total
}

func marks(ns []*rawNode) []int {
	out := make([]int, len(ns))
	for i, n := range ns {
		out[i] = len(n.queries())
	}
	return out
}

// Issue 13 item 2: a restart takes a fresh id, even on the same port, and
// still reuses the saved table: the node it knew gets the rejoin ping, and
// that ping carries the new id. The routing file holds no id.
func TestRestartTakesFreshID(t *testing.T) {
	dir := t.TempDir()
	peer := newRawNode(t, nodeID{0: 0x55})
	start := func(listen string) (*dht, func()) {
		n, err := listenNode(listen, nil)
		if err != nil {
			t.Fatal(err)
		}
		d, err := newDHT(n, dhtConfig{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); n.run(ctx) }()
		go func() { defer wg.Done(); d.maint.run(ctx) }()
		return d, func() { cancel(); wg.Wait() }
	}
	d1, stop1 := start("127.0.0.1:0")
	addr := d1.addr()
	id1 := d1.id()
	if _, err := d1.ping(testCtx(t), peer.addr()); err != nil {
		t.Fatal(err)
	}
	stop1() // saves the table
	b, err := os.ReadFile(filepath.Join(dir, routingFile))
	if err != nil || bytes.Contains(b, id1[:]) {
		t.Fatalf("routing file %x (%v) holds the id %v", b, err, id1)
	}
	before := marks([]*rawNode{peer})
	d2, stop2 := start(addr.String()) // same address and port
	defer stop2()
	waitUntil(t, func() bool { return len(peer.queries()) > before[0] })
	rejoin := peer.queries()[before[0]]
	t.Logf("restart on %v: id %v, then %v; rejoin ping carries %v", addr, id1, d2.id(), rejoin.Args.ID)
	if d2.id() == id1 || rejoin.Method != methodPing || rejoin.Args.ID != d2.id() {
		t.Fatalf("after the restart: id %v, rejoin %v %v; want a fresh id (not %v) in the rejoin ping",
			d2.id(), rejoin.Method, rejoin.Args.ID, id1)
	}
	waitUntil(t, func() bool { return d2.size() == 1 })
}

// skewClock is the real time plus an offset a test may advance.
type skewClock struct {
	mu   sync.Mutex
	skew time.Duration
}

func (c *skewClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.skew)
}

func (c *skewClock) advance(d time.Duration) {
	c.mu.Lock()
	c.skew += d
	c.mu.Unlock()
}

// Issue 13 item 2: when the address our queries come from changes on the
// far side of a NAT, the first answer from the new address says so ("ip")
// and the id changes at once, to a BEP 42 id for the new address. Only the
// queries sent before that answer carry the old id (the node cannot know
// sooner): one for a ping, at most alpha for a lookup. Within
// moveWitnessSpacing of a move, the vote decides instead (ipVoteQuorum and
// more answers), so a liar cannot keep us moving.
func TestMoveBehindNATRenewsID(t *testing.T) {
	clk := &skewClock{}
	d := newTestDHT(t, dhtConfig{Now: clk.now}, 0)
	ns := newRawNodes(t, 6)
	addrs := []netip.AddrPort{
		netip.MustParseAddrPort("203.0.113.7:6881"),
		netip.MustParseAddrPort("198.51.100.9:6881"),
		netip.MustParseAddrPort("192.0.2.33:6881"),
		netip.MustParseAddrPort("203.0.113.99:6881"),
	}
	claim := func(a netip.AddrPort) []int {
		from := marks(ns)
		for _, n := range ns {
			n.setClaim(a)
		}
		return from
	}
	claim(addrs[0])
	for _, n := range ns {
		if _, err := d.ping(testCtx(t), n.addr()); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		skew    time.Duration
		lookups bool
		maxOld  int
	}{
		{"pings", moveWitnessSpacing, false, 1},
		{"lookups", moveWitnessSpacing, true, dhtAlpha},
		{"lookups within the spacing", 0, true, ipVoteQuorum + 2*dhtAlpha},
	}
	for i, tc := range tests {
		oldID := d.id()
		if !isSecureNodeID(oldID, addrs[i].Addr()) {
			t.Fatalf("%s: id %v is no BEP 42 id for %v", tc.name, oldID, addrs[i])
		}
		clk.advance(tc.skew)
		from := claim(addrs[i+1]) // the NAT's public address changes
		for _, n := range ns {
			if tc.lookups {
				d.findNode(testCtx(t), nodeID{byte(i)})
			} else {
				d.ping(testCtx(t), n.addr())
			}
		}
		old, total := idsSince(ns, from, oldID)
		t.Logf("%s after a move: %d of %d datagrams from the new address carry the old id", tc.name, old, total)
		if old > tc.maxOld || !isSecureNodeID(d.id(), addrs[i+1].Addr()) {
			t.Errorf("%s: %d datagrams carried the old id, id now %v; want at most %d and a BEP 42 id for %v",
				tc.name, old, d.id(), tc.maxOld, addrs[i+1])
		}
	}
}

// Issue 13 item 2: when the local address the kernel sends from changes
// (a move to another network), the id changes before any datagram leaves:
// no datagram from the new address carries the old id.
func TestLocalMoveRenewsIDBeforeSending(t *testing.T) {
	src := newMovableSource("192.168.1.20")
	d := newTestDHT(t, dhtConfig{Source: src.get}, 0)
	ns := newRawNodes(t, 4)
	for _, n := range ns {
		if _, err := d.ping(testCtx(t), n.addr()); err != nil {
			t.Fatal(err)
		}
	}
	oldID := d.id()
	from := marks(ns)
	src.move("10.0.0.7")
	for _, n := range ns {
		if _, err := d.ping(testCtx(t), n.addr()); err != nil {
			t.Fatal(err)
		}
	}
	old, total := idsSince(ns, from, oldID)
	t.Logf("after the local move: %d of %d datagrams carry the old id", old, total)
	if old != 0 || total != len(ns) || d.id() == oldID || d.size() != len(ns) {
		t.Fatalf("old id in %d of %d datagrams, id %v (was %v), %d nodes kept", old, total, d.id(), oldID, d.size())
	}
}

// A lookup of our own id in flight across a move ends, and nothing it
// sends after the move names the old id, neither as "id" nor as target: at
// most the one datagram per node already on its way when the address
// changed, and then silence, where a query would otherwise be retransmitted
// up to maxAttempts times.
func TestMoveEndsLookupOfOwnID(t *testing.T) {
	src := newMovableSource("192.168.1.20")
	d := newTestDHT(t, dhtConfig{Source: src.get}, 0)
	d.timing.rtoInitial, d.timing.rtoMin = 50*time.Millisecond, 50*time.Millisecond
	ns := newRawNodes(t, 3)
	for _, n := range ns {
		if _, err := d.ping(testCtx(t), n.addr()); err != nil {
			t.Fatal(err)
		}
		n.mu.Lock()
		n.silent = true
		n.mu.Unlock()
	}
	oldID, epoch := d.ids.idAndMoves()
	errc := make(chan error, 1)
	go func() {
		_, err := d.lookup(testCtx(t), lookupOpts{target: oldID, method: methodFindNode, ownID: true, epoch: epoch})
		errc <- err
	}()
	waitUntil(t, func() bool { return len(ns[len(ns)-1].queries()) > 1 })
	src.move("10.0.0.7")
	from := marks(ns)
	if err := <-errc; !errors.Is(err, errMoved) {
		t.Fatalf("lookup of our own id across a move: %v, want errMoved", err)
	}
	named := func(from []int) (n int) {
		for i, rn := range ns {
			for _, m := range rn.queries()[from[i]:] {
				if m.Args.ID == oldID || m.Args.Target == oldID {
					n++
				}
			}
		}
		return n
	}
	inFlight := named(from)
	end := marks(ns)
	time.Sleep(4 * d.timing.rtoInitial) // room for retransmissions that must not come
	if late := named(end); inFlight > len(ns) || late != 0 || d.id() == oldID {
		t.Fatalf("after the move %d datagrams named the old id, then %d more; id %v (was %v)", inFlight, late, d.id(), oldID)
	}
}

// routeSource answers from the kernel's routing table, in the family asked.
func TestRouteSource(t *testing.T) {
	if a := routeSource(false); a.IsValid() && (!a.Is4() || a.IsUnspecified()) {
		t.Errorf("routeSource(false) = %v, want an IPv4 address or none", a)
	}
	if a := routeSource(true); a.IsValid() && (a.Is4() || a.IsUnspecified()) {
		t.Errorf("routeSource(true) = %v, want an IPv6 address or none", a)
	}
}

// reflectProbe is one source's traffic with a node: what it sent, what came
// back.
type reflectProbe struct {
	sent, answers, pings int
	bytesIn, bytesOut    int // bytes the node received from the source, and sent it
	elapsed              time.Duration
}

// burst sends count copies of the query q (each with its own tid) from p
// to d as fast as it can, and counts what comes back until settle after
// the last one. A reader runs throughout, so the probe's own receive buffer
// does not hide answers.
func (p *rawPeer) burst(d *dht, q krpcMsg, count int, settle time.Duration) reflectProbe {
	p.conn.SetReadBuffer(8 << 20)
	var r reflectProbe
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			p.conn.SetReadDeadline(time.Now().Add(settle))
			n, _, err := p.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.bytesOut += n
			if m, err := parseKRPC(buf[:n]); err == nil && m.Type == 'q' {
				r.pings++
			} else {
				r.answers++
			}
		}
	}()
	start := time.Now()
	for i := range count {
		q.TID = []byte{byte(i >> 8), byte(i)}
		b := q.appendTo(nil)
		p.send(d.addr(), b)
		r.sent++
		r.bytesIn += len(b)
	}
	r.elapsed = time.Since(start)
	<-done
	return r
}

// withFullTable gives d 20 answered nodes, so that its replies carry full
// node lists, as on the real DHT.
func withFullTable(d *dht) {
	for i := range 20 {
		d.heard(nodeInfo{ID: nodeID{byte(i * 13), 1}, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), uint16(1000+i))}, true)
	}
}

// Issue 13 item 5: 2,000 BEP 44 gets of a 1,000-byte item, in a burst from
// one source, draw srcQueryBurst answers and what srcQueryRate adds while
// the burst lasts; the node sends that source a fraction of what it got.
func TestReflectorBurstOfGets(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	withFullTable(d)
	v := appendBencodeString(nil, bytes.Repeat([]byte{'x'}, maxItemValue-4)) // "996:xxx...": 1,000 bytes
	if err := d.items.put(bep44Item{V: v}, 0, false, netip.MustParseAddrPort("127.0.0.9:9")); err != nil {
		t.Fatal(err)
	}
	q := krpcMsg{Type: 'q', Method: methodGet, Args: krpcArgs{ID: nodeID(rawID), Target: immutableTarget(v)}}
	r := newRawPeer(t).burst(d, q, 2000, 500*time.Millisecond)
	t.Logf("2,000 gets of a %d-byte item in %v: %d answers, %d pings; %d bytes in, %d out (%.2fx); one answer is %.1fx its query",
		len(v), r.elapsed.Round(time.Millisecond), r.answers, r.pings, r.bytesIn, r.bytesOut,
		float64(r.bytesOut)/float64(r.bytesIn), float64(r.bytesOut)/float64(max(r.answers, 1))/float64(r.bytesIn/r.sent))
	maxAnswers := srcQueryBurst + int(srcQueryRate*r.elapsed.Seconds()) + 1
	if r.answers < srcQueryBurst || r.answers > maxAnswers || r.bytesOut >= 4*r.bytesIn || r.pings > 1 {
		t.Errorf("%d answers (want %d to %d), %d pings, %d bytes out for %d in (want under 4x)",
			r.answers, srcQueryBurst, maxAnswers, r.pings, r.bytesOut, r.bytesIn)
	}
	// The kernel may drop some of the burst before the node reads it.
	if got := d.srv.limit.dropped.Load(); got == 0 || got > uint64(r.sent-r.answers) {
		t.Errorf("limiter counted %d drops, the probe %d unanswered", got, r.sent-r.answers)
	}
}

// Issue 13 item 5: a query from a new source, which never answers, draws
// one verification ping (the querier took a table slot), not a ping and
// its five retransmissions.
func TestFreshQuerierGetsOnePing(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	for _, m := range []krpcMethod{methodGet, methodGetPeers, methodFindNode, methodPing} {
		p := newRawPeer(t) // a new port: a new source, and a new node
		q := krpcMsg{Type: 'q', Method: m, Args: krpcArgs{ID: nodeID{0x77, byte(m)}, Target: nodeID{9}, InfoHash: nodeID{9}}}
		// Retransmissions come at most 4 RTOs apart (rtoInitial: no RTT
		// sample yet): wait longer than that after each datagram.
		r := p.burst(d, q, 1, 5*d.timing.rtoInitial)
		t.Logf("%v from a new source: %d answer, %d pings; %d bytes in, %d out", m, r.answers, r.pings, r.bytesIn, r.bytesOut)
		if r.answers != 1 || r.pings != 1 {
			t.Errorf("%v: %d answers and %d pings, want 1 and 1", m, r.answers, r.pings)
		}
	}
}

// A source that keeps within the limits is always answered: a burst of
// srcQueryBurst queries, then queries below srcQueryRate. The limit costs
// ordinary use nothing.
func TestSteadySourceAnswered(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	p := newRawPeer(t)
	const steady = 8
	answered := 0
	start := time.Now()
	for i := range srcQueryBurst + steady {
		if i >= srcQueryBurst { // 4 a second: each finds 1.25 tokens
			time.Sleep(time.Until(start.Add(time.Duration(i-srcQueryBurst+1) * time.Second * 5 / (4 * srcQueryRate))))
		}
		if m := p.exchange(d, rawQuery(methodPing, krpcArgs{})); m.Type == 'r' {
			answered++
		}
	}
	if answered != srcQueryBurst+steady {
		t.Errorf("%d of %d queries answered", answered, srcQueryBurst+steady)
	}
}

// A source that never answered gets one verification ping per
// verifyEvery; once a node there answers, the next node behind the same
// address is verified at once (SPEC.md 3.4.1, item 4).
func TestVerifyPingPerSource(t *testing.T) {
	clock := newFakeClock()
	d := newTestDHT(t, dhtConfig{Now: clock.now}, 0)
	a := netip.MustParseAddrPort("198.51.100.7:6881")
	b := netip.MustParseAddrPort("198.51.100.7:7000") // same IPv4 source, another port
	steps := []struct {
		name string
		do   func()
		addr netip.AddrPort
		want bool
	}{
		{"first node of a source", nil, a, true},
		{"again at once", nil, b, false},
		{"just before verifyEvery", func() { clock.advance(verifyEvery - time.Second) }, b, false},
		{"at verifyEvery", func() { clock.advance(time.Second) }, b, true},
		{"after a node there answered", func() { d.heard(nodeInfo{ID: nodeID{1: 9}, Addr: a}, true) }, b, true},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		d.mu.Lock()
		got := d.mayVerifyLocked(s.addr)
		d.mu.Unlock()
		if got != s.want {
			t.Errorf("%s: mayVerifyLocked(%v) = %v, want %v", s.name, s.addr, got, s.want)
		}
	}
}

// movableSource stands for the kernel's choice of local address
// (dhtConfig.Source), which a test moves to another network.
type movableSource struct {
	mu   sync.Mutex
	addr netip.Addr
}

func newMovableSource(addr string) *movableSource {
	return &movableSource{addr: netip.MustParseAddr(addr)}
}

func (s *movableSource) get(bool) netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

func (s *movableSource) move(addr string) {
	s.mu.Lock()
	s.addr = netip.MustParseAddr(addr)
	s.mu.Unlock()
}
