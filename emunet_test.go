// An emulated internet for the DHT benchmarks (issue 11), and the scenarios
// run on it. This file is shared word for word, apart from its package
// clause, by the main module (which drives kadchat's DHT) and by the interop
// module (which drives anacrolix/dht); TestEmunetCopiesAgree in interop
// checks that the two copies are the same. It uses the standard library only.
//
// Flow: newEmuNet places hosts 10.a.b.c:6881, each with a last-mile delay.
// A node's socket is an emuConn; WriteTo* draws loss, looks up the pair's
// one-way delay (emuNet.oneWay) and arms a timer that puts the datagram in
// the receiver's inbox, which ReadFrom* drains. runEmunet builds a network
// through an emuDriver (one DHT implementation), lets it fill its tables,
// breaks it as a scenario says (kills, loss, restarts) and measures
// announce, get_peers and rendezvous operations, in the virtual time of a
// testing/synctest bubble: emulated delays and protocol timers decide every
// figure, and the CPU (shared, loaded, or slowed by -race) decides none.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The latency model. A one-way delay between hosts i and j is
//
//	access(i) + access(j) + core(i, j), capped at emuMaxOneWay, plus up to
//	emuJitter of it drawn per datagram,
//
// where core is lognormal per pair (median 22 ms, sigma 0.65) and access is
// lognormal per host (median 3 ms, sigma 1.9). Over all pairs of 1,000 hosts
// the one-way delay then has p10 17 ms, p50 40 ms, p90 110 ms, p99 470 ms,
// p99.9 870 ms, and a few pairs reach the 1 s cap: round trips of 80 ms at
// the median and about 2 s at most. Why two parts: the core is what King
// measured between DNS servers (Gummadi et al., IMW 2002), which spreads
// over three orders of magnitude; Ledlie et al. (NSDI 2007) found Azureus
// peers' round trips spread over four, and Steiner and Biersack (Networking
// 2009) trace that extra spread to access links: peers in one country
// answer in tens of milliseconds or in over a second, behind ADSL buffers.
// So a slow host is slow to everyone, which is what a per-peer timeout
// must learn and a global one gets wrong.
const (
	emuCoreMedian   = 22 * time.Millisecond
	emuCoreSigma    = 0.65
	emuAccessMedian = 3 * time.Millisecond
	emuAccessSigma  = 1.9
	emuMaxOneWay    = time.Second
	emuJitter       = 0.1  // a datagram takes up to 10% longer than its pair's delay
	emuInbox        = 1024 // datagrams queued at a receiver; more are lost, like a full socket buffer
	emuPort         = 6881
	emuHostsPerNet  = 250 // hosts per 10.a.b.0/24, numbered .1 to .250
)

// emuMethod classifies the queries a host sends, so that an operation's
// cost counts only its own queries and not the table upkeep beside it.
type emuMethod int

const (
	emuPing emuMethod = iota
	emuFindNode
	emuGetPeers
	emuAnnounce
	emuOther
	emuMethods
)

// emuQueryMethod reads the method of a KRPC query; ok is false for replies.
// Both implementations encode dictionaries with sorted keys, so a query
// ends with its type, "1:y1:qe", and names its method as "1:q<len>:<name>".
func emuQueryMethod(b []byte) (emuMethod, bool) {
	if !bytes.HasSuffix(b, []byte("1:y1:qe")) {
		return 0, false
	}
	for m, name := range []string{"4:ping", "9:find_node", "9:get_peers", "13:announce_peer"} {
		if bytes.Contains(b, []byte("1:q"+name)) {
			return emuMethod(m), true
		}
	}
	return emuOther, true
}

// emuHash is SplitMix64 over the words given: the deterministic source of
// everything random about the topology.
func emuHash(words ...uint64) uint64 {
	var h uint64 = 0x9e3779b97f4a7c15
	for _, w := range words {
		h ^= w
		h += 0x9e3779b97f4a7c15
		z := h
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		h = z ^ (z >> 31)
	}
	return h
}

func emuHashString(s string) uint64 {
	h := emuHash(uint64(len(s)))
	for _, c := range []byte(s) {
		h = emuHash(h, uint64(c))
	}
	return h
}

// emuNormal is a standard normal deviate determined by the words (Box-Muller).
func emuNormal(words ...uint64) float64 {
	u1 := (float64(emuHash(append(words, 1)...)>>11) + 0.5) / (1 << 53)
	u2 := float64(emuHash(append(words, 2)...)>>11) / (1 << 53)
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
}

func emuLognormal(median time.Duration, sigma float64, words ...uint64) time.Duration {
	return time.Duration(float64(median) * math.Exp(sigma*emuNormal(words...)))
}

// emuHost is one machine of the emulated internet.
type emuHost struct {
	addr   netip.AddrPort
	access time.Duration // its last-mile one-way delay
	down   bool          // unreachable: datagrams to or from it are lost (guarded by emuNet.mu)
	conn   *emuConn      // its open socket, if any (guarded by emuNet.mu)
}

// emuNet is the emulated internet: hosts, the delays between them, loss.
// Safe for concurrent use.
type emuNet struct {
	seed  uint64
	hosts []*emuHost
	index map[netip.AddrPort]int

	mu   sync.Mutex
	loss float64    // fraction of datagrams lost, each on its own
	rng  *rand.Rand // loss and jitter draws, under mu

	sent, lost, unreachable, overflow atomic.Int64
}

func newEmuNet(hosts int, seed uint64) *emuNet {
	n := &emuNet{seed: seed, index: map[netip.AddrPort]int{}, rng: rand.New(rand.NewPCG(seed, 0x656d75))}
	for i := range hosts {
		ip := netip.AddrFrom4([4]byte{10, byte(i / emuHostsPerNet >> 8), byte(i / emuHostsPerNet), byte(1 + i%emuHostsPerNet)})
		h := &emuHost{addr: netip.AddrPortFrom(ip, emuPort),
			access: emuLognormal(emuAccessMedian, emuAccessSigma, seed, 'a', uint64(i))}
		n.hosts = append(n.hosts, h)
		n.index[h.addr] = i
	}
	return n
}

func (n *emuNet) addr(i int) netip.AddrPort { return n.hosts[i].addr }

// oneWay is the base one-way delay between hosts i and j (symmetric).
func (n *emuNet) oneWay(i, j int) time.Duration {
	a, b := uint64(min(i, j)), uint64(max(i, j))
	core := emuLognormal(emuCoreMedian, emuCoreSigma, n.seed, 'c', a, b)
	return min(n.hosts[i].access+n.hosts[j].access+core, emuMaxOneWay)
}

// setDown makes host i unreachable (or reachable again).
func (n *emuNet) setDown(i int, down bool) {
	n.mu.Lock()
	n.hosts[i].down = down
	n.mu.Unlock()
}

func (n *emuNet) setLoss(p float64) {
	n.mu.Lock()
	n.loss = p
	n.mu.Unlock()
}

// listen opens host i's socket.
func (n *emuNet) listen(i int) (*emuConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	h := n.hosts[i]
	if h.conn != nil {
		return nil, fmt.Errorf("emunet: %v: address in use", h.addr)
	}
	c := &emuConn{net: n, host: i, inbox: make(chan emuDatagram, emuInbox), done: make(chan struct{})}
	h.conn = c
	return c, nil
}

// fingerprint digests the topology, so that two runs can show they
// measured the same one.
func (n *emuNet) fingerprint(ids [][20]byte) string {
	h := sha256.New()
	for i := range n.hosts {
		binary.Write(h, binary.BigEndian, int64(n.oneWay(i, (i+1)%len(n.hosts))))
		binary.Write(h, binary.BigEndian, int64(n.oneWay(i, (i*7+3)%len(n.hosts))))
		h.Write(ids[i][:])
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// send carries one datagram from host i towards to; it reports the base
// round trip if the datagram was a query that can be answered.
func (n *emuNet) send(from int, to netip.AddrPort, b []byte) {
	n.sent.Add(1)
	j, known := n.index[to]
	n.mu.Lock()
	if !known || n.hosts[from].down || n.hosts[j].down {
		n.mu.Unlock()
		n.unreachable.Add(1)
		return
	}
	if n.loss > 0 && n.rng.Float64() < n.loss {
		n.mu.Unlock()
		n.lost.Add(1)
		return
	}
	jitter := n.rng.Float64() * emuJitter
	n.mu.Unlock()
	d := emuDatagram{from: n.hosts[from].addr, b: bytes.Clone(b)}
	delay := n.oneWay(from, j)
	delay = min(delay+time.Duration(jitter*float64(delay)), emuMaxOneWay)
	time.AfterFunc(delay, func() { n.deliver(j, d) })
}

func (n *emuNet) deliver(j int, d emuDatagram) {
	n.mu.Lock()
	h := n.hosts[j]
	c, down := h.conn, h.down
	n.mu.Unlock()
	if c == nil || down {
		n.unreachable.Add(1)
		return
	}
	select {
	case c.inbox <- d:
	default:
		n.overflow.Add(1)
	}
}

type emuDatagram struct {
	from netip.AddrPort
	b    []byte
}

// emuConn is a host's socket. It offers both *net.UDPConn's AddrPort
// methods (what kadchat's Node uses) and net.PacketConn (what anacrolix's
// Server takes). Deadlines are not supported: neither DHT sets one.
type emuConn struct {
	net       *emuNet
	host      int
	inbox     chan emuDatagram
	done      chan struct{}
	closeOnce sync.Once

	queries [emuMethods]atomic.Int64 // queries sent, by method

	mu    sync.Mutex
	track bool            // record rtts
	rtts  []time.Duration // base round trips to the reachable hosts queried while tracking
}

var (
	errEmuDeadline = errors.New("emunet: deadlines are not supported")
	errEmuRaw      = errors.New("emunet: no socket options")
)

func (c *emuConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-c.inbox:
		return copy(b, d.b), d.from, nil
	case <-c.done:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

func (c *emuConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	if m, ok := emuQueryMethod(b); ok {
		c.queries[m].Add(1)
		c.recordRTT(to)
	}
	c.net.send(c.host, to, b)
	return len(b), nil
}

func (c *emuConn) recordRTT(to netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.track {
		return
	}
	j, ok := c.net.index[to]
	if !ok {
		return
	}
	c.net.mu.Lock()
	down := c.net.hosts[j].down
	c.net.mu.Unlock()
	if !down {
		c.rtts = append(c.rtts, 2*c.net.oneWay(c.host, j))
	}
}

func (c *emuConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return 0, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

func (c *emuConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, fmt.Errorf("emunet: write to %v: not a UDP address", addr)
	}
	return c.WriteToUDPAddrPort(b, ua.AddrPort())
}

func (c *emuConn) LocalAddr() net.Addr {
	return net.UDPAddrFromAddrPort(c.net.hosts[c.host].addr)
}

func (c *emuConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.net.mu.Lock()
		if h := c.net.hosts[c.host]; h.conn == c {
			h.conn = nil
		}
		c.net.mu.Unlock()
	})
	return nil
}

// SyscallConn: an emulated socket has no options to set (kadchat's
// opening packets set the TTL; the DHT scenarios send none).
func (c *emuConn) SyscallConn() (syscall.RawConn, error) { return nil, errEmuRaw }

func (c *emuConn) SetDeadline(time.Time) error      { return errEmuDeadline }
func (c *emuConn) SetReadDeadline(time.Time) error  { return errEmuDeadline }
func (c *emuConn) SetWriteDeadline(time.Time) error { return errEmuDeadline }

// opQueries is what an operation sends: get_peers and announce_peer
// queries, retransmissions included.
func (c *emuConn) opQueries() (gets, announces int64) {
	return c.queries[emuGetPeers].Load(), c.queries[emuAnnounce].Load()
}

// trackRTT starts or stops recording the round trips of c's queries and
// returns those recorded.
func (c *emuConn) trackRTT(on bool) []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.rtts
	c.track, c.rtts = on, nil
	return r
}

// --- scenarios

// emuDriver runs one DHT implementation's nodes on an emuNet. Hosts are
// numbered as in the emuNet; each method is called for a host with a
// running node, except start. Methods may be called concurrently for
// different hosts.
type emuDriver interface {
	// start runs a node on host with the given id, joining through boot
	// (or, after a restart, through saved, what stop returned), and
	// returns once it has joined. Its table upkeep keeps running until stop,
	// which is called even if start failed.
	start(ctx context.Context, host int, c *emuConn, id [20]byte, boot []netip.AddrPort, saved any) error
	// stop ends the node and returns what it saves for a restart.
	stop(host int) any
	// announce announces host as a peer for ih on its own port (implied),
	// and returns the peers its lookup came across.
	announce(ctx context.Context, host int, ih [20]byte) ([]netip.AddrPort, error)
	// getPeers looks up ih; it may return as soon as it has seen want.
	getPeers(ctx context.Context, host int, ih [20]byte, want netip.AddrPort) ([]netip.AddrPort, error)
	// holds reports whether host's store has peer under ih.
	holds(host int, ih [20]byte, peer netip.AddrPort) bool
}

// emuConfig sizes a run. The two modules' runs agree when these agree.
type emuConfig struct {
	Hosts      int
	Seed       uint64
	Fill       time.Duration // table upkeep after everyone joined, before the scenarios
	Samples    int           // announces, and get_peers lookups, per scenario
	Rendezvous int           // rendezvous per scenario
	Restarts   int           // nodes restarting in scenario (iv)
	Away       time.Duration // how long they were away in (iv)
	Parallel   int           // operations under way at once
}

var (
	emuFull  = emuConfig{Hosts: 1000, Seed: 11, Fill: 20 * time.Minute, Samples: 400, Rendezvous: 200, Restarts: 100, Away: time.Hour, Parallel: 50}
	emuShort = emuConfig{Hosts: 200, Seed: 11, Fill: 5 * time.Minute, Samples: 60, Rendezvous: 30, Restarts: 20, Away: 20 * time.Minute, Parallel: 20}
)

// Scenario parameters (issue 11).
const (
	emuSeeds        = 4    // the first hosts; everyone else joins through them
	emuJoinParallel = 32   // nodes joining at once
	emuDeadShare    = 0.3  // (ii), (iii): nodes gone after the tables filled
	emuLoss         = 0.05 // (iii): datagrams lost
	emuLeftShare    = 0.5  // (iv): nodes that left while the restarting ones were away
	emuOpTimeout    = 30 * time.Second
	emuJoinTimeout  = 60 * time.Second
	emuSettle       = time.Minute            // after stopping every node: timers run out
	emuRetry        = 100 * time.Millisecond // between a rendezvous' lookups that missed
	emuFarRTT       = time.Second            // a querier whose median round trip is this or more is far
)

// emuOpStats summarises one kind of operation in one scenario.
type emuOpStats struct {
	N, OK    int
	P50, P99 time.Duration
	Msgs     float64 // queries per operation (get_peers and announce_peer, retransmissions included)
	Lookup   float64 // of which get_peers
	// Its time in round trips: each operation's time over the median round
	// trip to the nodes it asked (get_peers only), so that a querier behind
	// a slow access link is measured against its own network.
	RTTs50, RTTs99 float64
	// Far is how many operations came from a querier whose median round
	// trip to the nodes it asked is emuFarRTT or more (get_peers only), and
	// P99Near the p99 of the others: a lookup takes two round trips unless
	// the querier's own table holds nodes that have the peers, so from a
	// far querier it takes 2 s whatever the algorithm.
	Far     int
	P99Near time.Duration
}

func (s emuOpStats) Success() float64 { return 100 * float64(s.OK) / float64(max(s.N, 1)) }

func (s emuOpStats) String() string {
	t := fmt.Sprintf("%5.1f%% of %3d  p50 %6v  p99 %6v", s.Success(), s.N, s.P50.Round(time.Millisecond), s.P99.Round(time.Millisecond))
	if s.Msgs > 0 {
		t += fmt.Sprintf("  %5.1f msgs", s.Msgs)
	}
	if s.Lookup != s.Msgs {
		t += fmt.Sprintf(" (%.1f get_peers)", s.Lookup)
	}
	if s.RTTs50 > 0 {
		t += fmt.Sprintf("  %.1f/%.1f RTTs  %d far, p99 of the rest %v", s.RTTs50, s.RTTs99, s.Far, s.P99Near.Round(time.Millisecond))
	}
	return t
}

type emuScenario struct {
	Name       string
	Announce   emuOpStats
	GetPeers   emuOpStats
	Rendezvous emuOpStats
	Join       emuOpStats    // (iv): the restart, from start to joined
	MedianRTT  time.Duration // of the reachable nodes get_peers lookups queried
	// What the emulator carried while the operations ran: datagrams and
	// emulated time, the rate a real-time emulation would have to keep up.
	Datagrams int64
	Took      time.Duration

	gp []emuSample // each get_peers, for a pass that looks at the tail (not in the report)
}

type emuReport struct {
	Impl        string
	Config      emuConfig
	Fingerprint string
	Scenarios   []emuScenario
	Datagrams   int64 // every datagram of the run, the networks' building included
}

func (r *emuReport) scenario(name string) *emuScenario {
	for i := range r.Scenarios {
		if r.Scenarios[i].Name == name {
			return &r.Scenarios[i]
		}
	}
	return nil
}

func (r *emuReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s on %d hosts (topology %s)\n", r.Impl, r.Config.Hosts, r.Fingerprint)
	for _, s := range r.Scenarios {
		fmt.Fprintf(&b, "  %-10s median RTT of the nodes asked %v; %d datagrams in %v\n", s.Name,
			s.MedianRTT.Round(time.Millisecond), s.Datagrams, s.Took.Round(time.Second))
		fmt.Fprintf(&b, "    get_peers   %v\n    announce    %v\n    rendezvous  %v\n", s.GetPeers, s.Announce, s.Rendezvous)
		if s.Join.N > 0 {
			fmt.Fprintf(&b, "    restart     %v\n", s.Join)
		}
	}
	return b.String()
}

// emuRun is one network under test.
type emuRun struct {
	cfg  emuConfig
	drv  emuDriver
	net  *emuNet
	ids  [][20]byte
	live []bool // node running and reachable
	mu   sync.Mutex
	errs []error
}

func (r *emuRun) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

func emuID(seed uint64, what string, i int) [20]byte {
	var id [20]byte
	s := sha256.Sum256(fmt.Appendf(nil, "%d %s %d", seed, what, i))
	copy(id[:], s[:])
	return id
}

// runEmunet runs every scenario and reports; it must run inside a
// synctest bubble (or accept real-time waits of cfg.Fill and cfg.Away).
// Each scenario starts from a freshly built and filled network, so one
// scenario's repairs do not help the next, except that (ii) follows (i)
// on the same network, which (i)'s lookups do not change.
func runEmunet(ctx context.Context, name string, cfg emuConfig, newDriver func() emuDriver) (*emuReport, error) {
	return runEmunetSteps(ctx, name, cfg, newDriver, emuCleanThenDead, emuDeadAndLossy, emuRestart)
}

// An emuStep breaks a freshly built network as its scenarios say and
// measures them.
type emuStep func(context.Context, *emuRun) ([]emuScenario, error)

// emuCleanThenDead is (i), then (ii) on the same network.
func emuCleanThenDead(ctx context.Context, r *emuRun) ([]emuScenario, error) {
	clean := r.measure(ctx, "(i) clean")
	r.kill(emuDeadShare, 'k')
	dead := r.measure(ctx, "(ii) dead")
	return []emuScenario{clean, dead}, nil
}

// emuDeadAndLossy is (iii): the nodes (ii) kills, and loss.
func emuDeadAndLossy(ctx context.Context, r *emuRun) ([]emuScenario, error) {
	r.kill(emuDeadShare, 'k')
	r.net.setLoss(emuLoss)
	return []emuScenario{r.measure(ctx, "(iii) loss")}, nil
}

// emuRestart is (iv).
func emuRestart(ctx context.Context, r *emuRun) ([]emuScenario, error) {
	s, err := r.restarts(ctx)
	return []emuScenario{s}, err
}

// runEmunetSteps runs the steps given, each on a network of its own.
func runEmunetSteps(ctx context.Context, name string, cfg emuConfig, newDriver func() emuDriver, steps ...emuStep) (*emuReport, error) {
	rep := &emuReport{Impl: name, Config: cfg}
	for _, step := range steps {
		r := &emuRun{cfg: cfg, drv: newDriver(), net: newEmuNet(cfg.Hosts, cfg.Seed)}
		for i := range cfg.Hosts {
			r.ids = append(r.ids, emuID(cfg.Seed, "node", i))
		}
		rep.Fingerprint = r.net.fingerprint(r.ids)
		err := r.build(ctx)
		var ss []emuScenario
		if err == nil {
			ss, err = step(ctx, r)
		}
		r.stopAll()
		rep.Datagrams += r.net.sent.Load()
		if err == nil && len(r.errs) > 0 {
			err = errors.Join(r.errs...)
		}
		if err != nil {
			return rep, fmt.Errorf("emunet: %s: %w", name, err)
		}
		rep.Scenarios = append(rep.Scenarios, ss...)
	}
	return rep, nil
}

// build starts the seeds one after the other, then everyone else through
// them, then lets the tables fill for cfg.Fill.
func (r *emuRun) build(ctx context.Context) error {
	r.live = make([]bool, r.cfg.Hosts)
	var seeds []netip.AddrPort
	for i := range min(emuSeeds, r.cfg.Hosts) {
		if err := r.startHost(ctx, i, seeds, nil); err != nil {
			return err
		}
		seeds = append(seeds, r.net.addr(i))
	}
	var hosts []int
	for i := emuSeeds; i < r.cfg.Hosts; i++ {
		hosts = append(hosts, i)
	}
	r.inParallel(hosts, emuJoinParallel, func(i int) {
		if err := r.startHost(ctx, i, seeds, nil); err != nil {
			r.fail(err)
		}
	})
	if len(r.errs) > 0 {
		return errors.Join(r.errs...)
	}
	sleepCtx(ctx, r.cfg.Fill)
	return ctx.Err()
}

func (r *emuRun) startHost(ctx context.Context, i int, boot []netip.AddrPort, saved any) error {
	c, err := r.net.listen(i)
	if err != nil {
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, emuJoinTimeout)
	defer cancel()
	err = r.drv.start(jctx, i, c, r.ids[i], boot, saved)
	r.mu.Lock()
	r.live[i] = true // running, if not joined: stopAll stops it
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("host %d: join: %w", i, err)
	}
	return nil
}

func (r *emuRun) stopAll() {
	for i, up := range r.live {
		if up {
			r.drv.stop(i)
			r.live[i] = false
		}
	}
	time.Sleep(emuSettle) // let every pending timer of the stopped nodes fire
}

// kill takes a share of the running nodes off the network without a word.
func (r *emuRun) kill(share float64, salt uint64) []int {
	var up []int
	for i, l := range r.live {
		if l {
			up = append(up, i)
		}
	}
	rng := rand.New(rand.NewPCG(r.cfg.Seed, salt))
	rng.Shuffle(len(up), func(a, b int) { up[a], up[b] = up[b], up[a] })
	gone := up[:int(share*float64(len(up)))]
	for _, i := range gone {
		r.net.setDown(i, true)
		r.drv.stop(i)
		r.live[i] = false
	}
	return gone
}

// pick draws n distinct running hosts.
func (r *emuRun) pick(rng *rand.Rand, n int) []int {
	var up []int
	for i, l := range r.live {
		if l {
			up = append(up, i)
		}
	}
	rng.Shuffle(len(up), func(a, b int) { up[a], up[b] = up[b], up[a] })
	return up[:min(n, len(up))]
}

// inParallel calls f for each item, at most par at once.
func (r *emuRun) inParallel(items []int, par int, f func(int)) {
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for _, it := range items {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(it)
		}()
	}
	wg.Wait()
}

func (r *emuRun) conn(i int) *emuConn {
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	return r.net.hosts[i].conn
}

// emuSample is the outcome of one operation.
type emuSample struct {
	ok   bool
	took time.Duration
	msgs int64
	gets int64         // of which get_peers
	rtt  time.Duration // median round trip to the nodes it asked, if known
}

func emuSummarise(ss []emuSample) emuOpStats {
	st := emuOpStats{N: len(ss)}
	var durs, near, rtts []time.Duration
	var msgs, gets int64
	for _, s := range ss {
		if s.ok {
			st.OK++
		}
		durs = append(durs, s.took)
		msgs, gets = msgs+s.msgs, gets+s.gets
		if s.rtt > 0 { // in thousandths of a round trip
			rtts = append(rtts, time.Duration(1000*float64(s.took)/float64(s.rtt)))
		}
		switch {
		case s.rtt >= emuFarRTT:
			st.Far++
		case s.rtt > 0:
			near = append(near, s.took)
		}
	}
	slices.Sort(durs)
	slices.Sort(near)
	slices.Sort(rtts)
	st.P50, st.P99 = emuPercentile(durs, 50), emuPercentile(durs, 99)
	st.P99Near = emuPercentile(near, 99)
	st.RTTs50, st.RTTs99 = float64(emuPercentile(rtts, 50))/1000, float64(emuPercentile(rtts, 99))/1000
	st.Msgs = float64(msgs) / float64(max(len(ss), 1))
	st.Lookup = float64(gets) / float64(max(len(ss), 1))
	return st
}

// emuPercentile of sorted values (nearest rank); zero for none.
func emuPercentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p+99)/100 - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// measure runs cfg.Samples announce-then-get_peers pairs and
// cfg.Rendezvous rendezvous, cfg.Parallel operations at a time, each from
// hosts no other operation under way uses.
func (r *emuRun) measure(ctx context.Context, name string) emuScenario {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, emuHashString(name)))
	var mu sync.Mutex
	var ann, gp, rv []emuSample
	var rtts []time.Duration
	start, sent := time.Now(), r.net.sent.Load()
	batch := max(r.cfg.Parallel/2, 1)
	for k := 0; k < r.cfg.Samples; k += batch {
		n := min(batch, r.cfg.Samples-k)
		hosts := r.pick(rng, 2*n)
		idx := make([]int, len(hosts)/2)
		for j := range idx {
			idx[j] = j
		}
		r.inParallel(idx, len(idx), func(j int) {
			ih := emuID(r.cfg.Seed, name+" announce", k+j)
			a, g, rt := r.announceThenLookup(ctx, hosts[2*j], hosts[2*j+1], ih)
			mu.Lock()
			ann, gp, rtts = append(ann, a), append(gp, g), append(rtts, rt...)
			mu.Unlock()
		})
	}
	for k := 0; k < r.cfg.Rendezvous; k += batch {
		n := min(batch, r.cfg.Rendezvous-k)
		hosts := r.pick(rng, 2*n)
		idx := make([]int, len(hosts)/2)
		for j := range idx {
			idx[j] = j
		}
		r.inParallel(idx, len(idx), func(j int) {
			ih := emuID(r.cfg.Seed, name+" rendezvous", k+j)
			s := r.rendezvous(ctx, hosts[2*j], hosts[2*j+1], ih)
			mu.Lock()
			rv = append(rv, s)
			mu.Unlock()
		})
	}
	slices.Sort(rtts)
	return emuScenario{Name: name, Announce: emuSummarise(ann), GetPeers: emuSummarise(gp),
		Rendezvous: emuSummarise(rv), MedianRTT: emuPercentile(rtts, 50),
		Datagrams: r.net.sent.Load() - sent, Took: time.Since(start), gp: gp}
}

// announceThenLookup has host a announce ih, then host q look it up. The
// announce succeeded if one of the k = 8 running nodes closest to ih holds
// a; the lookup, if it found a.
func (r *emuRun) announceThenLookup(ctx context.Context, a, q int, ih [20]byte) (ann, gp emuSample, rtts []time.Duration) {
	ann = r.timed(ctx, a, func(ctx context.Context) bool {
		_, err := r.drv.announce(ctx, a, ih)
		return err == nil
	})
	if ann.ok {
		ann.ok = slices.ContainsFunc(r.closestLive(ih, 8), func(h int) bool { return r.drv.holds(h, ih, r.net.addr(a)) })
	}
	c := r.conn(q)
	c.trackRTT(true)
	gp = r.timed(ctx, q, func(ctx context.Context) bool {
		ps, err := r.drv.getPeers(ctx, q, ih, r.net.addr(a))
		return err == nil && slices.Contains(ps, r.net.addr(a))
	})
	rt := c.trackRTT(false)
	if len(rt) > 0 {
		s := slices.Sorted(slices.Values(rt))
		gp.rtt = emuPercentile(s, 50)
	}
	return ann, gp, rt
}

// rendezvous: hosts a and b both announce ih, and look it up until each
// has found the other (what two contacts do when they come online); what
// an announce's own lookup came across counts, for an implementation
// whose announce hands it over (anacrolix's streams it). It took as long
// as the later of the two.
func (r *emuRun) rendezvous(ctx context.Context, a, b int, ih [20]byte) emuSample {
	ctx, cancel := context.WithTimeout(ctx, emuOpTimeout)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var okA, okB bool
	var msgs, gets atomic.Int64
	side := func(self, other int, ok *bool) {
		defer wg.Done()
		c := r.conn(self)
		g0, a0 := c.opQueries()
		defer func() {
			g1, a1 := c.opQueries()
			msgs.Add(g1 - g0 + a1 - a0)
			gets.Add(g1 - g0)
		}()
		want := r.net.addr(other)
		ps, err := r.drv.announce(ctx, self, ih)
		for err == nil && !slices.Contains(ps, want) && ctx.Err() == nil {
			sleepCtx(ctx, emuRetry)
			ps, _ = r.drv.getPeers(ctx, self, ih, want)
		}
		*ok = err == nil && slices.Contains(ps, want)
	}
	wg.Add(2)
	go side(a, b, &okA)
	go side(b, a, &okB)
	wg.Wait()
	return emuSample{ok: okA && okB, took: time.Since(start), msgs: msgs.Load(), gets: gets.Load()}
}

// timed runs op from host h within emuOpTimeout and counts its queries.
func (r *emuRun) timed(ctx context.Context, h int, op func(context.Context) bool) emuSample {
	ctx, cancel := context.WithTimeout(ctx, emuOpTimeout)
	defer cancel()
	c := r.conn(h)
	g0, a0 := c.opQueries()
	start := time.Now()
	ok := op(ctx)
	took := time.Since(start)
	g1, a1 := c.opQueries()
	return emuSample{ok: ok, took: took, msgs: g1 - g0 + a1 - a0, gets: g1 - g0}
}

// closestLive is the k running hosts closest to target by XOR distance.
func (r *emuRun) closestLive(target [20]byte, k int) []int {
	var up []int
	for i, l := range r.live {
		if l {
			up = append(up, i)
		}
	}
	slices.SortFunc(up, func(a, b int) int {
		for x := range target {
			da, db := r.ids[a][x]^target[x], r.ids[b][x]^target[x]
			if da != db {
				return int(da) - int(db)
			}
		}
		return 0
	})
	return up[:min(k, len(up))]
}

// restarts is scenario (iv): cfg.Restarts nodes stop, saving their tables;
// while they are away (cfg.Away) half of the other nodes leave for good;
// then each comes back from its saved table, and measure runs from them.
func (r *emuRun) restarts(ctx context.Context) (emuScenario, error) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 'r'))
	back := r.pick(rng, r.cfg.Restarts)
	saved := map[int]any{}
	for _, i := range back {
		saved[i] = r.drv.stop(i)
		r.live[i] = false
	}
	r.kill(emuLeftShare, 'l')
	sleepCtx(ctx, r.cfg.Away)
	var mu sync.Mutex
	var joins []emuSample
	for _, i := range back { // both DHTs take a fresh id at every start
		r.ids[i] = emuID(r.cfg.Seed, "restart", i)
	}
	r.inParallel(back, len(back), func(i int) {
		start := time.Now()
		err := r.startHost(ctx, i, nil, saved[i])
		mu.Lock()
		joins = append(joins, emuSample{ok: err == nil, took: time.Since(start)})
		mu.Unlock()
	})
	// Operations start from the restarted nodes only: the other end of
	// each is any running node.
	s := r.measureFrom(ctx, "(iv) restart", back)
	s.Join = emuSummarise(joins)
	return s, ctx.Err()
}

// measureFrom is measure with one end of every operation among from: a
// restarted node looks up what a running node announced, announces what a
// running node then looks up, and meets a running node.
func (r *emuRun) measureFrom(ctx context.Context, name string, from []int) emuScenario {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, emuHashString(name)))
	var others []int
	for _, h := range r.pick(rng, r.cfg.Hosts) {
		if !slices.Contains(from, h) {
			others = append(others, h)
		}
	}
	var mu sync.Mutex
	var ann, gp, rv []emuSample
	var rtts []time.Duration
	var idx []int
	start, sent := time.Now(), r.net.sent.Load()
	for j, h := range from {
		if r.live[h] && 2*j+1 < len(others) {
			idx = append(idx, j)
		}
	}
	r.inParallel(idx, r.cfg.Parallel, func(j int) {
		a, p, q := from[j], others[2*j], others[2*j+1]
		_, g, rt := r.announceThenLookup(ctx, p, a, emuID(r.cfg.Seed, name+" announce", j))
		an, _, _ := r.announceThenLookup(ctx, a, q, emuID(r.cfg.Seed, name+" back", j))
		meet := r.rendezvous(ctx, a, p, emuID(r.cfg.Seed, name+" rendezvous", j))
		mu.Lock()
		ann, gp, rv, rtts = append(ann, an), append(gp, g), append(rv, meet), append(rtts, rt...)
		mu.Unlock()
	})
	slices.Sort(rtts)
	return emuScenario{Name: name, Announce: emuSummarise(ann), GetPeers: emuSummarise(gp),
		Rendezvous: emuSummarise(rv), MedianRTT: emuPercentile(rtts, 50),
		Datagrams: r.net.sent.Load() - sent, Took: time.Since(start), gp: gp}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
