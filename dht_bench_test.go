// Benchmarks of the DHT as a whole; they live apart from its unit tests
// because they build large networks and only run with -bench.
//
// BenchmarkLookup builds a network of lookupNetSize nodes on 127.0.0.1 (one
// UDP socket each, all in this process) once, outside the timer, then times
// random lookups from random nodes on it: "clean", then "churn" on a second
// network that loses 10% of datagrams per direction at every node and where
// 20% of the nodes died without warning after the tables were built.
// BenchmarkServe measures how many queries one node answers per second on
// one core; BenchmarkFlood how much memory a node holds after a flood of
// queries from random ids, ports, announces and puts.
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	lookupNetSize  = 1000 // nodes of BenchmarkLookup's network
	lookupSeeds    = 4    // nodes every other node bootstraps from
	buildParallel  = 32   // bootstraps running at once while building
	lookupTimeout  = 5 * time.Second
	buildTimeout   = 20 * time.Second // a lookup while the whole network is building
	settlePings    = 8                // see settle
	churnKilled    = 0.2              // fraction of nodes killed in "churn"
	churnDrop      = 0.1              // fraction of datagrams lost per direction in "churn"
	serveInFlight  = 64               // BenchmarkServe's window of outstanding queries
	serveSockets   = 4                // load generator sockets for BenchmarkServe
	floodQueries   = 100_000
	floodSockets   = 128
	floodInFlight  = 64
	loadReadWindow = 200 * time.Millisecond // a lost datagram frees its window slot after this
)

// benchNet is a swarm and the nodes of it still alive.
type benchNet struct {
	*swarm
	live []*dht
}

// buildNet starts size nodes: lookupSeeds seeds join one another, then
// every other node bootstraps from the seeds (find_node of its own id),
// buildParallel at a time; then every node refreshes its whole table now
// that the network is complete (refreshAll), and settles its RTT estimate
// (settle). owner, the parent benchmark, closes the network at its end.
func buildNet(b, owner *testing.B, size int, drop float64) *benchNet {
	raiseFileLimit(b, uint64(size))
	start := time.Now()
	nw := &benchNet{swarm: startSwarm(b, size, swarmOpts{drop: drop, seeds: lookupSeeds, parallel: buildParallel, owner: owner})}
	b.Logf("bootstrapped in %v; %s", time.Since(start).Round(time.Millisecond), rtoSummary(nw.nodes))
	inParallel(nw.nodes, buildParallel, refreshAll)
	b.Logf("refreshed at %v; %s", time.Since(start).Round(time.Millisecond), rtoSummary(nw.nodes))
	inParallel(nw.nodes, buildParallel, settle)
	b.Logf("settled at %v; %s", time.Since(start).Round(time.Millisecond), rtoSummary(nw.nodes))
	nw.live = slices.Clone(nw.nodes)
	total := 0
	for _, d := range nw.nodes {
		total += d.size()
	}
	b.Logf("built %d nodes (drop %v) in %v, %.1f nodes per table", size, drop,
		time.Since(start).Round(time.Millisecond), float64(total)/float64(size))
	return nw
}

// refreshAll looks up our own id, then a random id in every bucket, as
// BEP 5 maintenance does over time for buckets that saw no traffic.
func refreshAll(d *dht) {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	d.lookup(ctx, lookupOpts{target: d.id(), method: methodFindNode})
	d.mu.Lock()
	var targets []nodeID
	for i := range d.table.buckets {
		if id, err := d.table.randomIDInBucket(i); err == nil {
			targets = append(targets, id)
		}
	}
	d.mu.Unlock()
	for _, t := range targets {
		d.lookup(ctx, lookupOpts{target: t, method: methodFindNode})
	}
}

// settle pings a few nodes of the table one after the other. Building
// loads both cores, which inflates every node's RTT estimate; a running
// node would have fresh samples from its ordinary traffic, taken at the
// load it now sees, before it starts a lookup.
func settle(d *dht) {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	for _, n := range d.closest(d.id(), settlePings) {
		q := krpcMsg{Method: methodPing}
		d.tx.query(ctx, n.Addr, &q, txOpts{expect: &n.ID})
	}
}

// rtoSummary describes the nodes' retransmission timeouts, for the log.
func rtoSummary(ds []*dht) string {
	var rtos []time.Duration
	var tries, losses, weights []int
	for _, d := range ds {
		d.tx.mu.Lock()
		rtos = append(rtos, d.tx.times.strangerRTO(&d.timing))
		tries = append(tries, d.tx.times.tries())
		losses = append(losses, int(1000*d.tx.times.lost/d.tx.times.sent))
		weights = append(weights, int(d.tx.times.sent))
		d.tx.mu.Unlock()
	}
	slices.Sort(rtos)
	slices.Sort(tries)
	slices.Sort(losses)
	slices.Sort(weights)
	fmt.Println("LOSS", percentile(losses, 10), percentile(losses, 50), percentile(losses, 90), "W", percentile(weights, 10), percentile(weights, 50), percentile(weights, 90))
	return fmt.Sprintf("rto p50 %v p90 %v max %v; tries p10 %d p50 %d p90 %d", percentile(rtos, 50), percentile(rtos, 90),
		rtos[len(rtos)-1], percentile(tries, 10), percentile(tries, 50), percentile(tries, 90))
}

// kill closes the sockets of a fraction of the nodes, telling nobody.
func (nw *benchNet) kill(frac float64, rng *mrand.Rand) {
	n := int(frac * float64(len(nw.nodes)))
	perm := rng.Perm(len(nw.nodes))
	dead := map[int]bool{}
	for _, i := range perm[:n] {
		dead[i] = true
		nw.stop(i)
	}
	nw.live = nw.live[:0]
	for i, d := range nw.nodes {
		if !dead[i] {
			nw.live = append(nw.live, d)
		}
	}
}

// closestLive is the live node other than from closest to target, by
// global knowledge.
func (nw *benchNet) closestLive(from *dht, target nodeID) nodeID {
	var best nodeID
	first := true
	for _, d := range nw.live {
		if d == from {
			continue
		}
		if id := d.id(); first || xorLess(target, id, best) {
			best, first = id, false
		}
	}
	return best
}

// BenchmarkLookup times lookups (find_node and get_peers alternately, for
// random targets, from random live nodes) on a network of lookupNetSize
// nodes. A lookup succeeds when the closest live node to the target (other
// than the querying node), by global knowledge, is among the k closest
// responders it returns. Metrics: success-%, rounds-p50 and rounds-p99
// (lookupStats.Rounds), msgs/lookup (datagrams sent, retransmissions
// included), ms-p99 (duration) and limited (queries dropped over their
// source's rate in the whole network since it was built; ordinary use
// should never meet the limit).
func BenchmarkLookup(b *testing.B) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	// A sub-benchmark's function runs once per b.N tried: build lazily,
	// once, and keep the network until the parent ends.
	var clean, churn *benchNet
	b.Run("clean", func(sb *testing.B) {
		if clean == nil {
			clean = buildNet(sb, b, lookupNetSize, 0)
		}
		runLookups(sb, clean, rng)
	})
	if clean != nil {
		clean.close() // free its sockets and goroutines
	}
	b.Run("churn", func(sb *testing.B) {
		if churn == nil {
			churn = buildNet(sb, b, lookupNetSize, churnDrop)
			churn.kill(churnKilled, rng)
		}
		runLookups(sb, churn, rng)
	})
}

// runLookups builds nothing: it times b.N lookups on nw and reports.
func runLookups(b *testing.B, nw *benchNet, rng *mrand.Rand) {
	var ok, msgs int
	rounds := make([]int, 0, b.N)
	durs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		from := nw.live[rng.IntN(len(nw.live))]
		var target nodeID
		rand.Read(target[:])
		method := methodFindNode
		if i%2 == 1 {
			method = methodGetPeers
		}
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		r, err := from.lookup(ctx, lookupOpts{target: target, method: method})
		cancel()
		want := nw.closestLive(from, target)
		if err == nil && slices.ContainsFunc(r.Closest, func(n lookupNode) bool { return n.ID == want }) {
			ok++
		}
		msgs += r.Stats.Messages
		rounds = append(rounds, r.Stats.Rounds)
		durs = append(durs, r.Stats.Duration)
	}
	b.StopTimer()
	slices.Sort(rounds)
	slices.Sort(durs)
	b.ReportMetric(100*float64(ok)/float64(b.N), "success-%")
	b.ReportMetric(float64(percentile(rounds, 50)), "rounds-p50")
	b.ReportMetric(float64(percentile(rounds, 99)), "rounds-p99")
	b.ReportMetric(float64(msgs)/float64(b.N), "msgs/lookup")
	b.ReportMetric(float64(percentile(durs, 99))/float64(time.Millisecond), "ms-p99")
	var limited uint64 // queries over a source's rate (SPEC.md 3.4.1), building included: 0
	for _, d := range nw.nodes {
		limited += d.srv.limit.dropped.Load()
	}
	b.ReportMetric(float64(limited), "limited")
}

// percentile of sorted values (nearest rank).
func percentile[T any](sorted []T, p int) T {
	i := (len(sorted)*p+99)/100 - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// --- load generator

// loadGen keeps a window of queries in flight against one node from a
// pool of plain UDP sockets and counts the answers. next encodes the query
// to send; it is called from one goroutine per socket. It is made cheap
// because it shares the process (and, in BenchmarkServe, the one core)
// with the node: connected sockets (no address per datagram) and a read
// deadline armed once per window rather than per read.
type loadGen struct {
	conns    []*net.UDPConn
	answered atomic.Int64
}

func newLoadGen(b *testing.B, to netip.AddrPort, sockets int) *loadGen {
	g := &loadGen{}
	for range sockets {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		g.conns = append(g.conns, c)
	}
	return g
}

// run sends total queries spread over the sockets, keeping window of them
// outstanding in all, and returns when each has been answered or given up
// on. Datagrams lost on loopback free their slots after loadReadWindow
// without an answer.
func (g *loadGen) run(total, window int, next func(sock int, buf []byte) []byte) {
	var wg sync.WaitGroup
	per := max(window/len(g.conns), 1)
	for s, c := range g.conns {
		n := total / len(g.conns)
		if s < total%len(g.conns) {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.drive(c, s, n, per, next)
		}()
	}
	wg.Wait()
}

func (g *loadGen) drive(c *net.UDPConn, s, n, window int, next func(int, []byte) []byte) {
	out := make([]byte, 0, maxDatagram)
	in := make([]byte, maxDatagram)
	sent, open, reads := 0, 0, 0
	for sent < n || open > 0 {
		for open < window && sent < n {
			out = next(s, out[:0])
			if _, err := c.Write(out); err != nil {
				return
			}
			sent++
			open++
		}
		if reads%window == 0 {
			c.SetReadDeadline(time.Now().Add(loadReadWindow))
		}
		reads++
		m, err := c.Read(in)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				open, reads = 0, 0 // the rest were lost
				continue
			}
			return
		}
		// The node may ping us (ping-before-evict): that is no answer. In
		// canonical bencode "y" is the last key, so a query ends "1:y1:qe".
		if m >= 2 && in[m-2] == 'q' {
			continue
		}
		open--
		g.answered.Add(1)
	}
}

// benchServer is one node whose table holds tableSize made-up nodes. Its
// per-source limit is lifted: the load generator's few sockets stand for
// many sources, each within its limit (SPEC.md 3.4.1); what the limit
// costs per query is BenchmarkSourceLimiter's.
func benchServer(b *testing.B, tableSize int) (*dht, func()) {
	d, stop := startTunedTestDHT(b, dhtConfig{}, 0, false, unlimited)
	rng := mrand.New(mrand.NewPCG(3, 4))
	for i := range tableSize {
		var id nodeID
		binary.BigEndian.PutUint64(id[:], rng.Uint64())
		binary.BigEndian.PutUint64(id[8:], rng.Uint64())
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(1 + i%250)}), 6881)
		d.heard(nodeInfo{ID: id, Addr: a}, true)
	}
	return d, stop
}

// encodeQuery encodes a query with a 4-byte tid.
func encodeQuery(dst []byte, tid uint32, m krpcMethod, a krpcArgs) []byte {
	var t [4]byte
	binary.BigEndian.PutUint32(t[:], tid)
	q := krpcMsg{TID: t[:], Type: 'q', Method: m, Args: a}
	return q.appendTo(dst)
}

// BenchmarkServe measures the queries per second one node answers on one
// core (GOMAXPROCS 1, shared with the load generator): ping, find_node and
// get_peers in turn, from serveSockets sockets with serveInFlight queries
// outstanding. Only answered queries count.
func BenchmarkServe(b *testing.B) {
	d, stop := benchServer(b, 200)
	b.Cleanup(stop)
	g := newLoadGen(b, d.addr(), serveSockets)
	// Pre-encoded queries, each socket with its own id and rotating tids.
	const variants = 96
	qs := make([][][]byte, serveSockets)
	rng := mrand.New(mrand.NewPCG(5, 6))
	for s := range qs {
		var id nodeID
		binary.BigEndian.PutUint64(id[:], rng.Uint64())
		for v := range variants {
			var target nodeID
			binary.BigEndian.PutUint64(target[:], rng.Uint64())
			a := krpcArgs{ID: id, Target: target, InfoHash: target}
			m := []krpcMethod{methodPing, methodFindNode, methodGetPeers}[v%3]
			qs[s] = append(qs[s], encodeQuery(nil, rng.Uint32(), m, a))
		}
	}
	idx := make([]int, serveSockets)
	next := func(s int, buf []byte) []byte {
		idx[s] = (idx[s] + 1) % variants
		return append(buf, qs[s][idx[s]]...)
	}
	g.run(1000, serveInFlight, next) // warm up
	g.answered.Store(0)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	g.run(b.N, serveInFlight, next)
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(g.answered.Load())/el.Seconds(), "queries/s")
	b.ReportMetric(100*float64(g.answered.Load())/float64(b.N), "answered-%")
}

// BenchmarkFlood sends floodQueries queries from floodSockets sockets with
// random ids: pings, find_node, get_peers, announce_peer for random
// infohashes and BEP 44 immutable puts of random values (with a valid
// token: every socket shares 127.0.0.1), then reports the heap in use after
// a GC (heap-MB: the whole process; node-MB: its growth since before the
// node was made) and checks that the node still answers a ping.
func BenchmarkFlood(b *testing.B) {
	var ms runtime.MemStats
	for range b.N {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.HeapInuse
		d, stop := benchServer(b, 0)
		p := newRawPeer(b)
		tok := p.exchange(d, rawQuery(methodGetPeers, krpcArgs{InfoHash: nodeID{1}})).Reply.Token
		if tok == nil {
			b.Fatal("no token")
		}
		g := newLoadGen(b, d.addr(), floodSockets)
		rngs := make([]*mrand.Rand, floodSockets)
		for s := range rngs {
			rngs[s] = mrand.New(mrand.NewPCG(uint64(s), 7))
		}
		g.run(floodQueries, floodInFlight, func(s int, buf []byte) []byte {
			return floodQuery(buf, rngs[s], tok)
		})
		runtime.GC()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
		b.ReportMetric((float64(ms.HeapInuse)-float64(before))/(1<<20), "node-MB")
		b.ReportMetric(float64(d.peers.infohashes()), "infohashes")
		d.items.mu.Lock()
		b.ReportMetric(float64(d.items.items.len(time.Now())), "items")
		d.items.mu.Unlock()
		b.ReportMetric(float64(d.size()), "table")
		b.ReportMetric(float64(g.answered.Load())/floodQueries*100, "answered-%")
		if !answersPing(p, d) {
			b.Fatal("no answer to a ping after the flood")
		}
		stop()
	}
}

// answersPing sends d a ping from p and waits for the answer, skipping the
// queries d itself sends p (it pings questionable nodes).
func answersPing(p *rawPeer, d *dht) bool {
	p.send(d.addr(), rawPing(""))
	for range 100 {
		r, _ := p.recv(2 * time.Second)
		if r == nil {
			return false
		}
		if m, err := parseKRPC(r); err == nil && m.Type == 'r' && string(m.TID) == "aa" {
			return true
		}
	}
	return false
}

// floodQuery draws one random query of the flood.
func floodQuery(dst []byte, rng *mrand.Rand, tok []byte) []byte {
	var id, target nodeID
	binary.LittleEndian.PutUint64(id[:], rng.Uint64())
	binary.LittleEndian.PutUint64(id[12:], rng.Uint64())
	binary.LittleEndian.PutUint64(target[:], rng.Uint64())
	binary.LittleEndian.PutUint64(target[12:], rng.Uint64())
	a := krpcArgs{ID: id, Target: target, InfoHash: target}
	m := methodPing
	switch rng.IntN(5) {
	case 1:
		m = methodFindNode
	case 2:
		m = methodGetPeers
	case 3:
		m, a.Port, a.Token = methodAnnouncePeer, uint16(1+rng.IntN(65535)), tok
	case 4:
		var v [8]byte
		binary.LittleEndian.PutUint64(v[:], rng.Uint64())
		m, a.V, a.Token = methodPut, appendBencodeString(nil, v[:]), tok
	}
	return encodeQuery(dst, rng.Uint32(), m, a)
}
