package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawPeer is a bare UDP socket that speaks KRPC by hand.
type rawPeer struct {
	t    testing.TB
	conn *net.UDPConn
}

func newRawPeer(t testing.TB) *rawPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawPeer{t: t, conn: c}
}

func (p *rawPeer) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *rawPeer) send(to netip.AddrPort, b []byte) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(b, to); err != nil {
		p.t.Fatal(err)
	}
}

// recv returns the next datagram, or nil after wait.
func (p *rawPeer) recv(wait time.Duration) ([]byte, netip.AddrPort) {
	p.conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, maxDatagram)
	n, from, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return buf[:n], from
}

// exchange sends b to d and parses the answer, skipping the queries d
// sends meanwhile (it pings a new querier to verify its address).
func (p *rawPeer) exchange(d *dht, b []byte) krpcMsg {
	p.t.Helper()
	p.send(d.addr(), b)
	for range 4 {
		r, _ := p.recv(2 * time.Second)
		if r == nil {
			break
		}
		m, err := parseKRPC(r)
		if err != nil {
			p.t.Fatalf("parseKRPC(%q): %v", r, err)
		}
		if m.Type != 'q' {
			return m
		}
	}
	p.t.Fatalf("no answer to %q", b)
	return krpcMsg{}
}

var rawID = bytes.Repeat([]byte{0xab}, idLen)

func rawPing(extra string) []byte {
	return []byte("d1:ad2:id20:" + string(rawID) + "e1:q4:ping" + extra + "1:t2:aa1:y1:qe")
}

func TestPingBothWays(t *testing.T) {
	a := newTestDHT(t, dhtConfig{}, 0)
	b := newTestDHT(t, dhtConfig{}, 0)
	ctx := testCtx(t)
	for _, c := range []struct{ from, to *dht }{{a, b}, {b, a}} {
		id, err := c.from.ping(ctx, c.to.addr())
		if err != nil {
			t.Fatalf("ping %v: %v", c.to.addr(), err)
		}
		if id != c.to.id() {
			t.Errorf("ping %v = %v, want %v", c.to.addr(), id, c.to.id())
		}
	}
	if a.size() != 1 || b.size() != 1 {
		t.Errorf("table sizes %d and %d, want 1 and 1", a.size(), b.size())
	}
}

// Replies carry the BEP 42 "ip" and no "v": nothing in them says kadchat.
func TestReplyCarriesIPNotVersion(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	p := newRawPeer(t)
	m := p.exchange(d, rawPing(""))
	if m.Type != 'r' || string(m.TID) != "aa" || m.Reply.ID != d.id() {
		t.Fatalf("reply %+v, want an 'r' with tid aa and id %v", m, d.id())
	}
	if m.Version != nil || m.IP != p.addr() {
		t.Errorf("v=%q ip=%v, want no v and %v", m.Version, m.IP, p.addr())
	}
	if d.size() != 1 {
		t.Errorf("size %d after a query, want 1", d.size())
	}
}

func TestReadOnlyQuerierNotAdded(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	m := newRawPeer(t).exchange(d, rawPing("2:roi1e"))
	if m.Type != 'r' {
		t.Fatalf("reply type %q, want 'r'", m.Type)
	}
	if d.size() != 0 {
		t.Errorf("size %d after a read-only query, want 0 (BEP 43)", d.size())
	}
}

func TestQueryErrors(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	id := string(rawID)
	tests := []struct {
		name string
		in   string
		code int
	}{
		{"unknown method", "d1:ad2:id20:" + id + "e1:q4:fooo1:t2:aa1:y1:qe", krpcErrMethodUnknown},
		{"ping without id", "d1:ade1:q4:ping1:t2:aa1:y1:qe", krpcErrProtocol},
		{"find_node without target", "d1:ad2:id20:" + id + "e1:q9:find_node1:t2:aa1:y1:qe", krpcErrProtocol},
		{"announce with a bad token", "d1:ad2:id20:" + id + "9:info_hash20:" + id +
			"4:porti80e5:token3:xyze1:q13:announce_peer1:t2:aa1:y1:qe", krpcErrProtocol},
		{"put with a bad token", "d1:ad2:id20:" + id + "5:token3:xyz1:v2:hie1:q3:put1:t2:aa1:y1:qe", krpcErrProtocol},
	}
	p := newRawPeer(t)
	for _, tc := range tests {
		m := p.exchange(d, []byte(tc.in))
		if m.Type != 'e' || m.ErrCode != tc.code || string(m.TID) != "aa" {
			t.Errorf("%s: got type %q code %d tid %q, want 'e' %d \"aa\"", tc.name, m.Type, m.ErrCode, m.TID, tc.code)
		}
		if m.Version != nil || m.IP != p.addr() {
			t.Errorf("%s: v=%q ip=%v, want no v and %v", tc.name, m.Version, m.IP, p.addr())
		}
	}
}

func TestGarbageGetsNoAnswer(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	p := newRawPeer(t)
	for _, g := range []string{"d", "dxyz", "de", "d1:y1:qe", "d1:t2:aa1:y1:re", "li1ee", "\x05hello"} {
		p.send(d.addr(), []byte(g))
	}
	if r, _ := p.recv(200 * time.Millisecond); r != nil {
		t.Fatalf("answer %q to garbage", r)
	}
	if m := p.exchange(d, rawPing("")); m.Type != 'r' {
		t.Fatalf("node stopped answering after garbage: %+v", m)
	}
}

func TestTransactionIDsRandom(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	d.timing.rtoInitial, d.timing.rtoMax = 5*time.Second, 5*time.Second // no retransmission here
	p := newRawPeer(t)
	seen := map[string]bool{}
	for range 4 {
		go d.ping(testCtx(t), p.addr())
		b, _ := p.recv(2 * time.Second)
		m, err := parseKRPC(b)
		if err != nil || m.Type != 'q' || m.Method != methodPing {
			t.Fatalf("query %q: %+v %v", b, m, err)
		}
		if len(m.TID) != tidLen || seen[string(m.TID)] {
			t.Fatalf("tid %x: want %d bytes, fresh", m.TID, tidLen)
		}
		seen[string(m.TID)] = true
	}
}

// A response counts only if it comes from the address we queried.
func TestResponseFromOtherAddressIgnored(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	d.timing.rtoInitial = 50 * time.Millisecond
	p, other := newRawPeer(t), newRawPeer(t)
	errc := make(chan error, 1)
	go func() {
		_, err := d.ping(testCtx(t), p.addr())
		errc <- err
	}()
	b, _ := p.recv(2 * time.Second)
	q, err := parseKRPC(b)
	if err != nil {
		t.Fatal(err)
	}
	reply := []byte("d1:rd2:id20:" + string(rawID) + "e1:t4:" + string(q.TID) + "1:y1:re")
	other.send(d.addr(), reply)
	if err := <-errc; err == nil {
		t.Fatal("ping succeeded with a reply from another address")
	}
	if d.size() != 0 {
		t.Errorf("size %d, want 0", d.size())
	}
}

func TestRetransmissionUnderLoss(t *testing.T) {
	a := newTestDHT(t, dhtConfig{}, 0.3)
	b := newTunedTestDHT(t, dhtConfig{}, 0, unlimited) // 30 pings at once from a
	ok, retried := 0, 0
	const tries = 30
	for range tries {
		// Each ping gets its own bound: a shared one made the test depend
		// on how fast the whole series ran on a loaded machine.
		q := krpcMsg{Method: methodPing}
		r := a.tx.query(testCtx(t), b.addr(), &q, txOpts{})
		if r.Err == nil {
			ok++
			if r.Attempts > 1 {
				retried++
			}
		}
	}
	// each attempt gets through with p = 0.7*0.7; all six fail with p ~ 0.017
	if ok < tries*2/3 || retried == 0 {
		t.Errorf("%d/%d pings answered, %d after a retransmission", ok, tries, retried)
	}
}

func TestRTOEstimator(t *testing.T) {
	tm := defaultTiming()
	ms := time.Millisecond
	tests := []struct {
		name    string
		samples []time.Duration
		want    time.Duration
	}{
		{"no sample", nil, rtoInitial},
		{"one sample", []time.Duration{100 * ms}, 300 * ms}, // 100 + 4*50
		{"floor", []time.Duration{ms, ms, ms, ms, ms, ms, ms, ms, ms, ms}, rtoMin},
		{"cap", []time.Duration{3 * time.Second}, rtoMax},
	}
	for _, tc := range tests {
		var e rttEstimator
		for _, s := range tc.samples {
			e.sample(s)
		}
		if got := e.rto(&tm); got != tc.want {
			t.Errorf("%s: rto = %v, want %v", tc.name, got, tc.want)
		}
	}
	for _, tc := range []struct {
		rto     time.Duration
		attempt int
		want    time.Duration
	}{{100 * ms, 1, 100 * ms}, {100 * ms, 2, 100 * ms}, {100 * ms, 3, 200 * ms}, {100 * ms, 4, 400 * ms},
		{100 * ms, 6, 400 * ms}, {1500 * ms, 3, rtoMax}} {
		if got := backoff(tc.rto, tc.attempt, &tm); got != tc.want {
			t.Errorf("backoff(%v, %d) = %v, want %v", tc.rto, tc.attempt, got, tc.want)
		}
	}
}

func TestSaveAndRejoinFromSavedTable(t *testing.T) {
	ds := newSwarm(t, 8, 0)
	dir := t.TempDir()
	n, err := listenNode("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDHT(n, dhtConfig{Dir: dir, Bootstrap: []string{ds[0].addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	nodeDone, runErr := make(chan struct{}), make(chan error, 1)
	go func() { n.run(ctx); close(nodeDone) }()
	go func() { runErr <- d.maint.run(ctx) }()
	waitUntil(t, func() bool { return d.size() >= 4 })
	id := d.id()
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("run: %v", err)
	}
	<-nodeDone
	if _, err := os.Stat(filepath.Join(dir, routingFile)); err != nil {
		t.Fatalf("table not saved on exit: %v", err)
	}
	// restart on another port, without bootstrap nodes
	d2 := newTestDHT(t, dhtConfig{Dir: dir}, 0)
	if d2.id() == id {
		t.Errorf("restarted with the old id %v, want a fresh one", id)
	}
	if err := d2.maint.bootstrap(testCtx(t)); err != nil {
		t.Fatalf("rejoin: %v", err)
	}
	if d2.size() < 4 {
		t.Errorf("rejoined with %d nodes, want >= 4", d2.size())
	}
}

func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 3 s")
		}
	}
}

func TestUnreachableBootstrapFailsFast(t *testing.T) {
	d := newTestDHT(t, dhtConfig{Bootstrap: []string{"127.0.0.1:1", "127.0.0.1", "127.0.0.1:0"}}, 0)
	d.timing.rtoInitial = 50 * time.Millisecond
	start := time.Now()
	err := d.maint.bootstrap(testCtx(t))
	if err == nil || !errors.Is(err, errNoneAnswered) {
		t.Fatalf("bootstrap = %v, want %v", err, errNoneAnswered)
	}
	for _, want := range []string{`"127.0.0.1:1"`, `"127.0.0.1"`, `"127.0.0.1:0"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v", el)
	}
}

// Once the vote settles on a public IPv4 or IPv6 address, the node takes
// a BEP 42 id for it and keeps its routing table's nodes.
func TestExternalAddressGivesSecureID(t *testing.T) {
	for _, c := range []string{"203.0.113.7:6881", "[2001:db8:1:2::7]:6881"} {
		d, other := newTestDHT(t, dhtConfig{}, 0), newTestDHT(t, dhtConfig{}, 0)
		if _, err := d.ping(testCtx(t), other.addr()); err != nil {
			t.Fatal(err)
		}
		old := d.id()
		claim := netip.MustParseAddrPort(c)
		for _, v := range []string{"198.51.100.1:1", "192.0.2.1:1", "8.8.8.8:1"} {
			d.ids.learnExternal(netip.MustParseAddrPort(v), claim)
		}
		if ext, ok := d.external(); !ok || ext != claim {
			t.Fatalf("external() = %v, %v; want %v", ext, ok, claim)
		}
		if id := d.id(); id == old || !isSecureNodeID(id, claim.Addr()) {
			t.Errorf("id %v after the vote: want a new BEP 42 id for %v", id, claim.Addr())
		}
		if d.size() != 1 {
			t.Errorf("size %d after the new id, want the 1 node kept", d.size())
		}
	}
}

// The transaction table is bounded: past maxTransactions, queries fail at
// once instead of growing it.
func TestTransactionTableBounded(t *testing.T) {
	d := newTunedTestDHT(t, dhtConfig{}, 0, unlimited) // one address draws them all
	d.timing.rtoInitial = time.Minute                  // nothing expires during the test
	defer d.maint.shutdown()
	blackHole := newRawPeer(t).addr()
	for i := range maxTransactions + 1 {
		q := krpcMsg{Method: methodPing}
		_, err := d.tx.send(blackHole, &q, txOpts{}, func(queryResult) {})
		if (err == nil) != (i < maxTransactions) {
			t.Fatalf("query %d: err = %v", i, err)
		}
	}
}

// rawQuery encodes a query from the raw peer.
func rawQuery(method krpcMethod, a krpcArgs) []byte {
	copy(a.ID[:], rawID)
	q := krpcMsg{TID: []byte("qq"), Type: 'q', Method: method, Args: a}
	return q.appendTo(nil)
}

// The store side of the protocol, driven by hand: tokens, announce_peer
// with implied_port, get_peers values, put and get of both item kinds.
func TestServeStores(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	p := newRawPeer(t)
	ih := nodeID(bytes.Repeat([]byte{0x42}, idLen))
	r := p.exchange(d, rawQuery(methodGetPeers, krpcArgs{InfoHash: ih}))
	if r.Type != 'r' || r.Reply.Token == nil || r.Reply.Values != nil || r.Reply.Nodes == nil {
		t.Fatalf("first get_peers: %+v, want a token, nodes and no values", r.Reply)
	}
	tok := bytes.Clone(r.Reply.Token)
	a := krpcArgs{InfoHash: ih, Port: 1, ImpliedPort: true, Token: tok}
	if r := p.exchange(d, rawQuery(methodAnnouncePeer, a)); r.Type != 'r' {
		t.Fatalf("announce_peer: %+v", r)
	}
	r = p.exchange(d, rawQuery(methodGetPeers, krpcArgs{InfoHash: ih}))
	if ps, err := parsePeers(r.Reply.Values); err != nil || !slices.Equal(ps, []netip.AddrPort{p.addr()}) {
		t.Errorf("values %v, %v; want the implied address %v", ps, err, p.addr())
	}

	v := []byte("4:spam")
	if r := p.exchange(d, rawQuery(methodPut, krpcArgs{Token: tok, V: v})); r.Type != 'r' {
		t.Fatalf("immutable put: %+v", r)
	}
	r = p.exchange(d, rawQuery(methodGet, krpcArgs{Target: immutableTarget(v)}))
	if !bytes.Equal(r.Reply.V, v) || r.Reply.HasK || r.Reply.Token == nil {
		t.Errorf("immutable get: %+v", r.Reply)
	}

	it := signItem(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)), nil, 5, []byte("3:egg"))
	put := krpcArgs{Token: tok, V: it.V, K: it.K, HasK: true, Sig: it.Sig, Seq: 5, HasSeq: true}
	if r := p.exchange(d, rawQuery(methodPut, put)); r.Type != 'r' {
		t.Fatalf("mutable put: %+v", r)
	}
	put.Seq, put.Sig = 4, signItem(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)), nil, 4, it.V).Sig
	if r := p.exchange(d, rawQuery(methodPut, put)); r.Type != 'e' || r.ErrCode != bep44ErrSeq {
		t.Errorf("older put: %+v, want error %d", r, bep44ErrSeq)
	}
	target := mutableTarget(it.K, nil)
	r = p.exchange(d, rawQuery(methodGet, krpcArgs{Target: target}))
	if !bytes.Equal(r.Reply.V, it.V) || r.Reply.Seq != 5 || r.Reply.K != it.K || r.Reply.Sig != it.Sig {
		t.Errorf("mutable get: %+v", r.Reply)
	}
	r = p.exchange(d, rawQuery(methodGet, krpcArgs{Target: target, Seq: 5, HasSeq: true}))
	if r.Reply.V != nil || r.Reply.HasK || !r.Reply.HasSeq || r.Reply.Seq != 5 {
		t.Errorf("get with seq 5: %+v, want seq only", r.Reply)
	}
}

// nodes and nodes6 follow the BEP 32 "want" list, else the requester's family.
func TestServeWant(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	v4 := nodeInfo{ID: nodeID{1}, Addr: netip.MustParseAddrPort("127.0.0.2:1000")}
	v6 := nodeInfo{ID: nodeID{2}, Addr: netip.MustParseAddrPort("[2001:db8::1]:1000")}
	d.heard(v4, true)
	d.heard(v6, true)
	p := newRawPeer(t)
	// the IPv4 nodes are v4 and the raw peer itself, which only queried us
	// and so is never handed out (it may be a spoofed source)
	tests := []struct {
		want         uint8
		four, six    bool
		wantN4Length int
	}{
		{0, true, false, 26},
		{wantN4, true, false, 26},
		{wantN6, false, true, 0},
		{wantN4 | wantN6, true, true, 26},
	}
	for _, tc := range tests {
		r := p.exchange(d, rawQuery(methodFindNode, krpcArgs{Want: tc.want}))
		if (r.Reply.Nodes != nil) != tc.four || (r.Reply.Nodes6 != nil) != tc.six {
			t.Errorf("want %b: nodes %x nodes6 %x", tc.want, r.Reply.Nodes, r.Reply.Nodes6)
			continue
		}
		if tc.six && len(r.Reply.Nodes6) != 38 || len(r.Reply.Nodes) != tc.wantN4Length {
			t.Errorf("want %b: %d bytes of nodes, %d of nodes6", tc.want, len(r.Reply.Nodes), len(r.Reply.Nodes6))
		}
	}
}

// An answer that arrives after the first timeout, while the query is being
// retransmitted, still completes it (same tid for every transmission).
func TestLateAnswerAccepted(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	d.timing.rtoInitial = 40 * time.Millisecond
	p := newRawPeer(t)
	res := make(chan queryResult, 1)
	go func() {
		q := krpcMsg{Method: methodPing}
		res <- d.tx.query(testCtx(t), p.addr(), &q, txOpts{})
	}()
	first, _ := p.recv(2 * time.Second)
	second, _ := p.recv(2 * time.Second) // the retransmission
	if first == nil || !bytes.Equal(first, second) {
		t.Fatalf("retransmission %q differs from %q", second, first)
	}
	q, err := parseKRPC(first)
	if err != nil {
		t.Fatal(err)
	}
	p.send(d.addr(), []byte("d1:rd2:id20:"+string(rawID)+"e1:t4:"+string(q.TID)+"1:y1:re"))
	r := <-res
	if r.Err != nil || r.Attempts != 2 || !bytes.Equal(r.Msg.Reply.ID[:], rawID) {
		t.Errorf("late answer: %+v", r)
	}
}

// run saves the table on its timer, not only on exit.
func TestPeriodicSave(t *testing.T) {
	ds := newSwarm(t, 3, 0)
	dir := t.TempDir()
	d := newTestDHT(t, dhtConfig{Dir: dir, Bootstrap: []string{ds[0].addr().String()}}, 0)
	d.timing.maintenance, d.timing.save = 10*time.Millisecond, 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		d.maint.run(ctx)
		close(done)
	}()
	defer func() { // before TempDir's cleanup: run saves on exit
		cancel()
		<-done
	}()
	waitUntil(t, func() bool {
		ns, err := loadRoutingTable(filepath.Join(dir, routingFile))
		return err == nil && len(ns) >= 2
	})
}

// Serving allocates at most a few small objects per query (the closest-node
// slice, a token): replies are encoded into the read goroutine's buffers.
func TestServeAllocs(t *testing.T) {
	n, err := listenNode("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	d, err := newDHT(n, dhtConfig{}) // n.run is not started: this goroutine plays the read loop
	if err != nil {
		t.Fatal(err)
	}
	unlimited(d) // 400 queries from one socket
	for i := range 20 {
		d.heard(nodeInfo{ID: nodeID{byte(i * 13)}, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), uint16(1000+i))}, true)
	}
	from := newRawPeer(t).addr()
	tests := []struct {
		method krpcMethod
		a      krpcArgs
		max    float64
	}{
		{methodPing, krpcArgs{}, 0},
		{methodFindNode, krpcArgs{Target: nodeID{7}}, 1},
		{methodGetPeers, krpcArgs{InfoHash: nodeID{7}}, 3},
		{methodGet, krpcArgs{Target: nodeID{7}}, 3},
	}
	for _, tc := range tests {
		q := rawQuery(tc.method, tc.a)
		if got := testing.AllocsPerRun(100, func() { d.handleKRPC(from, q) }); got > tc.max {
			t.Errorf("%v: %v allocations per query, want <= %v", tc.method, got, tc.max)
		}
	}
}

// Responses' "ip" fields teach a node its external address; on loopback
// the voters are told apart by port (SPEC 3.3).
func TestExternalAddressLearnedOnLoopback(t *testing.T) {
	ds := newSwarm(t, 8, 0)
	d := ds[len(ds)-1]
	if _, err := d.findNode(testCtx(t), nodeID{0x42}); err != nil {
		t.Fatal(err)
	}
	ext, ok := d.external()
	if !ok || ext != d.addr() {
		t.Fatalf("external() = %v, %v; want %v", ext, ok, d.addr())
	}
}

// A node started with a saved table of dead nodes, before its bootstrap
// node is up, still joins once the bootstrap node appears.
func TestBootstrapRetriedAfterDeadSavedTable(t *testing.T) {
	dir := t.TempDir()
	dead := []nodeInfo{
		{ID: nodeID{0x01}, Addr: newRawPeer(t).addr()},
		{ID: nodeID{0x02}, Addr: newRawPeer(t).addr()},
	}
	if err := saveRoutingTable(filepath.Join(dir, "routing"), dead); err != nil {
		t.Fatal(err)
	}
	router, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	routerAddr := router.LocalAddr().(*net.UDPAddr).AddrPort()
	router.Close() // not up yet: its port is free again
	d := newTestDHT(t, dhtConfig{Dir: dir, Bootstrap: []string{routerAddr.String()}}, 0)
	d.timing.rtoInitial, d.timing.maintenance = 10*time.Millisecond, 50*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.maint.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	time.Sleep(time.Second) // the saved nodes and the router fail
	rn, err := listenNode(routerAddr.String(), nil)
	if err != nil {
		t.Skipf("router port taken meanwhile: %v", err)
	}
	r, err := newDHT(rn, dhtConfig{})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan struct{})
	go func() { rn.run(rctx); close(rdone) }()
	t.Cleanup(func() { rcancel(); <-rdone })
	waitUntil(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.table.size() > 0
	})
}

// A reply never lists the requester itself among the closest nodes.
func TestRepliesLeaveOutRequester(t *testing.T) {
	ds := newSwarm(t, 6, 0)
	q := krpcMsg{Method: methodFindNode, Args: krpcArgs{Target: ds[0].id()}}
	r := ds[0].tx.query(testCtx(t), ds[1].addr(), &q, txOpts{})
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	got, err := parseCompactNodes(r.Msg.Reply.Nodes)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 {
		t.Fatal("find_node reply lists no nodes")
	}
	for _, n := range got {
		if n.Addr == ds[0].addr() {
			t.Fatalf("find_node reply to %v lists it: %v", ds[0].addr(), got)
		}
	}
}

// TestMeteredReadOnly: with -metered (BEP 43) the node still bootstraps,
// announces and looks up, every query it sends carries "ro" 1, no node of
// the swarm adds it to its table, and it answers no one's query.
func TestMeteredReadOnly(t *testing.T) {
	s := startSwarm(t, 8, swarmOpts{})
	ro := newTestDHT(t, dhtConfig{Bootstrap: s.addrs(1), ReadOnly: true}, 0)
	var sent []krpcMsg
	var mu sync.Mutex
	write := ro.tx.write
	ro.tx.write = func(to netip.AddrPort, b []byte) {
		if m, err := parseKRPC(b); err == nil {
			mu.Lock()
			sent = append(sent, m)
			mu.Unlock()
		}
		write(to, b)
	}
	bootstrapRetrying(t, ro)
	ctx := testCtx(t)
	ih := nodeID{0x43}
	if _, n, err := ro.announce(ctx, ih, 0, true); err != nil || n == 0 {
		t.Fatalf("read-only announce: %d stored, %v", n, err)
	}
	if peers, err := s.nodes[3].getPeers(ctx, ih); err != nil || !slices.Contains(peers, ro.addr()) {
		t.Fatalf("the swarm finds %v (%v), want the read-only node's %v", peers, err, ro.addr())
	}
	mu.Lock()
	for _, m := range sent {
		if !m.ReadOnly {
			t.Errorf("a %v query without ro=1", m.Method)
		}
	}
	if len(sent) == 0 {
		t.Error("no query seen")
	}
	mu.Unlock()
	for i, d := range s.nodes {
		for _, n := range d.closest(ro.id(), 100) {
			if n.Addr == ro.addr() {
				t.Errorf("node %d added the read-only node to its table", i)
			}
		}
	}
	p := newRawPeer(t)
	p.send(ro.addr(), rawPing(""))
	p.send(ro.addr(), []byte("d1:ade1:q4:ping1:t2:bb1:y1:qe")) // a bad query: no error reply either
	if b, _ := p.recv(time.Second); b != nil {
		t.Fatalf("a read-only node answered a query: %q", b)
	}
}
