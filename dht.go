// DHT node (SPEC.md 3.4.1, 3.4.2, 3.4.4): the KRPC server and client of
// BEP 5, 42, 43 and 44 on the Node's one socket.
//
// Inbound flow: Node.run -> handleKRPC parses the datagram (parseKRPC, pure).
// A query goes to server.handleQuery, which records the sender in the routing table,
// answers from the table and the stores, and encodes the reply into a buffer
// owned by the read goroutine. A response or error goes to handleResponse,
// which finds the transaction by (tid, sender address), feeds the RTT
// estimator and the external-address vote, records the responder and
// completes the transaction.
// Outbound flow: txTable.send picks a random tid, registers the transaction,
// sends, and arms a timer that retransmits the same bytes (same tid) with
// backoff from the peer's RTO (rtt.go); when every attempt timed out and the
// query's patience ran out the node is reported failed() to the table. Lookups (lookup.go) and the /dht
// commands are built on txTable.send.
// Maintenance (run): ping the saved table, bootstrap, then one ticker
// refreshes stale buckets and saves the table; the table is saved on exit.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits and defaults of the DHT node; SPEC.md 3.4 lists them.
const (
	tidLen          = 4    // bytes in our transaction ids: 32 random bits
	maxTransactions = 2048 // outstanding queries per node
	maxAttempts     = 6    // at most one transmission and five retransmissions (rtt.go: tries)
	maxBackoffShift = 2    // the timeout doubles at most twice: 1, 1, 2, 4, 4, 4 x RTO
	maxPeersReply   = 50   // IPv4 peers in one get_peers reply: worst reply 1,045 bytes (SPEC.md 3.5.2)
	maxPeersReply6  = 27   // IPv6 peers (21 bytes each): worst reply 1,225 of 1,232 bytes
	maxEvictPings   = 64   // ping-before-evict queries in flight at once
	routingFile     = "routing"

	rtoInitial     = 500 * time.Millisecond // before the first RTT sample
	rtoMin         = 10 * time.Millisecond
	rtoMax         = 2 * time.Second      // the slowest round trips on the Internet
	rtoGranularity = 5 * time.Millisecond // G of RFC 6298

	maintenanceInterval = time.Minute
	saveInterval        = 5 * time.Minute
	commandTimeout      = 10 * time.Second
	bootstrapTimeout    = 10 * time.Second // resolving and asking the routers
)

// Sentinel errors; callers wrap them with "dht: <operation>: ".
var (
	errTimeout      = errors.New("no answer")
	errTooManyTx    = errors.New("too many queries in flight")
	errClosed       = errors.New("closed")
	errNotFound     = errors.New("not found")
	errNoNodes      = errors.New("routing table is empty")
	errNoneAnswered = errors.New("no node answered")
)

// dhtConfig configures newDHT. Zero fields get defaults.
type dhtConfig struct {
	Bootstrap []string // HOST:PORT of the routers to ask when the saved table does not answer
	Dir       string   // where the routing table is saved; "" for none
	Now       func() time.Time
	Rand      io.Reader
	Log       *slog.Logger
}

// dhtTiming holds every interval of the node so tests and benchmarks can
// shorten them before run.
type dhtTiming struct {
	rtoInitial, rtoMin, rtoMax time.Duration
	maintenance, save          time.Duration
	command, bootstrap         time.Duration
}

func defaultTiming() dhtTiming {
	return dhtTiming{
		rtoInitial: rtoInitial, rtoMin: rtoMin, rtoMax: rtoMax,
		maintenance: maintenanceInterval, save: saveInterval,
		command: commandTimeout, bootstrap: bootstrapTimeout,
	}
}

// krpcError is an error reply ('e') to one of our queries.
type krpcError struct {
	Code int
	Msg  string
}

func (e *krpcError) Error() string { return fmt.Sprintf("krpc: error %d: %s", e.Code, e.Msg) }

// dht is the DHT node. Safe for concurrent use, except that handleKRPC must
// only be called by the Node's read goroutine (it owns the reply buffers).
type dht struct {
	node    *Node
	cfg     dhtConfig
	log     *slog.Logger
	now     func() time.Time
	version []byte
	timing  dhtTiming

	tokens *tokenBox
	peers  *peerStore
	items  *itemStore

	mu       sync.Mutex // guards table, voter, saved, evicting
	table    *routingTable
	voter    ipVoter
	saved    []nodeInfo // loaded from disk; pinged by run
	evicting map[netip.AddrPort]struct{}

	tx  *txTable // our queries
	srv *server  // answers theirs
}

// server answers queries. Only the Node's read goroutine calls it: it owns
// the buffers replies are encoded into, so a reply costs no allocation.
type server struct {
	d                        *dht
	sbuf, nbuf4, nbuf6, vbuf []byte
}

// newDHT creates the node's DHT and installs it as n.onKRPC. If cfg.Dir holds
// a saved routing table, its id is reused and its nodes are pinged by run.
func newDHT(n *Node, cfg dhtConfig) (*dht, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	self, saved, err := loadOrCreateID(cfg)
	if err != nil {
		return nil, err
	}
	var seed [32]byte
	if _, err := io.ReadFull(cfg.Rand, seed[:]); err != nil {
		return nil, fmt.Errorf("dht: seed: %w", err)
	}
	d := &dht{
		node: n, cfg: cfg, log: cfg.Log, now: cfg.Now, version: []byte(krpcVersion),
		timing: defaultTiming(),
		tokens: newTokenBox(cfg.Rand, cfg.Now), peers: newPeerStore(cfg.Now, cfg.Rand), items: newItemStore(cfg.Now),
		table: newRoutingTable(self, cfg.Now), saved: saved, evicting: map[netip.AddrPort]struct{}{},
	}
	d.srv = &server{d: d,
		sbuf: make([]byte, 0, maxDatagram), nbuf4: make([]byte, 0, 26*bucketSize),
		nbuf6: make([]byte, 0, 38*bucketSize), vbuf: make([]byte, 0, 20*maxPeersReply),
	}
	d.tx = &txTable{
		write: d.sendRaw, self: d.id, now: cfg.Now, timing: &d.timing, version: d.version,
		failed: func(n nodeInfo) {
			d.mu.Lock()
			d.table.failed(n)
			d.mu.Unlock()
		},
		txs: map[txKey]*transaction{}, rng: mrand.NewChaCha8(seed), times: newPeerTimes(),
	}
	for _, sn := range saved { // questionable until they answer run's ping
		d.table.heard(sn, false)
	}
	n.onKRPC = d.handleKRPC
	return d, nil
}

// loadOrCreateID reads the saved table; without one (or with a corrupt one,
// which is only a cache) it draws a fresh random id.
func loadOrCreateID(cfg dhtConfig) (nodeID, []nodeInfo, error) {
	if cfg.Dir != "" {
		self, ns, err := loadRoutingTable(filepath.Join(cfg.Dir, routingFile))
		if err == nil {
			return self, ns, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			cfg.Log.Warn("dht: ignoring the saved routing table", "err", err)
		}
	}
	var id nodeID
	if _, err := io.ReadFull(cfg.Rand, id[:]); err != nil {
		return id, nil, fmt.Errorf("dht: id: %w", err)
	}
	return id, nil, nil
}

func (d *dht) id() nodeID {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.table.self()
}

func (d *dht) size() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.table.size()
}

func (d *dht) external() (netip.AddrPort, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.voter.external()
}

func (d *dht) closest(target nodeID, count int) []nodeInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.table.closest(target, count)
}

// --- inbound

// handleKRPC is Node.onKRPC. Garbage gets no answer; a query with bad
// arguments gets 203 (BEP 5), so a peer can tell a bug from a dead node.
func (d *dht) handleKRPC(from netip.AddrPort, b []byte) {
	m, err := parseKRPC(b)
	if err != nil {
		var bq *krpcBadQuery
		if errors.As(err, &bq) {
			d.srv.replyError(from, bq.TID, krpcErrProtocol, "bad query")
		}
		d.log.Debug("dht: dropped", "from", from, "err", err)
		return
	}
	switch m.Type {
	case 'q':
		d.srv.handleQuery(from, &m)
	case 'r', 'e':
		d.handleResponse(from, &m, b)
	}
}

func (s *server) handleQuery(from netip.AddrPort, m *krpcMsg) {
	if m.Method == methodUnknown {
		s.replyError(from, m.TID, krpcErrMethodUnknown, "method unknown")
		return
	}
	if !m.ReadOnly { // BEP 43: read-only nodes are served but never added
		s.d.heard(nodeInfo{ID: m.Args.ID, Addr: from}, false)
	}
	r := krpcMsg{TID: m.TID, Type: 'r', Version: s.d.version, IP: from}
	r.Reply.ID = s.d.id()
	switch m.Method {
	case methodFindNode:
		s.addNodes(&r.Reply, m.Args.Target, m.Args.Want, from)
	case methodGetPeers:
		s.answerGetPeers(&r.Reply, &m.Args, from)
	case methodAnnouncePeer:
		if msg := s.acceptAnnounce(&m.Args, from); msg != "" {
			s.replyError(from, m.TID, krpcErrProtocol, msg)
			return
		}
	case methodGet:
		s.answerGet(&r.Reply, &m.Args, from)
	case methodPut:
		if code, msg := s.acceptPut(&m.Args, from); code != 0 {
			s.replyError(from, m.TID, code, msg)
			return
		}
	}
	s.sbuf = r.appendTo(s.sbuf[:0])
	s.d.sendRaw(from, s.sbuf)
}

// addNodes puts the k closest nodes into a reply, in the families the
// requester wants (BEP 32); without "want", the requester's own family.
func (s *server) addNodes(rep *krpcReply, target nodeID, want uint8, from netip.AddrPort) {
	if want == 0 {
		want = wantN6
		if from.Addr().Is4() {
			want = wantN4
		}
	}
	if want&wantN4 != 0 {
		rep.Nodes = appendCompactNodes(s.nbuf4[:0], s.closestFamily(target, true, from))
	}
	if want&wantN6 != 0 {
		rep.Nodes6 = appendCompactNodes6(s.nbuf6[:0], s.closestFamily(target, false, from))
	}
}

// closestFamily is the k closest nodes of one address family, so a table
// holding both families still fills each list (BEP 32). The requester is
// left out: telling a node about itself wastes a slot.
func (s *server) closestFamily(target nodeID, want4 bool, requester netip.AddrPort) []nodeInfo {
	s.d.mu.Lock()
	ns := s.d.table.closestFamily(target, bucketSize+1, want4, true)
	s.d.mu.Unlock()
	ns = slices.DeleteFunc(ns, func(n nodeInfo) bool { return n.Addr == requester })
	return ns[:min(len(ns), bucketSize)]
}

// answerGetPeers returns a token, the peers we know and also the closest
// nodes: with both, a lookup keeps converging on the k closest nodes (where
// it will announce) even after it met a node that has peers.
func (s *server) answerGetPeers(rep *krpcReply, a *krpcArgs, from netip.AddrPort) {
	rep.Token = s.d.tokens.issue(from.Addr())
	v4 := from.Addr().Unmap().Is4() // BEP 32: values in the requester's family, whatever "want" says
	limit := maxPeersReply6
	if v4 {
		limit = maxPeersReply
	}
	if ps := s.d.peers.peersOf(a.InfoHash, limit, v4, !v4); len(ps) > 0 {
		rep.Values = appendPeerList(s.vbuf[:0], ps)
	}
	s.addNodes(rep, a.InfoHash, a.Want, from)
}

// acceptAnnounce stores the announcing peer; it returns a 203 message if not.
func (s *server) acceptAnnounce(a *krpcArgs, from netip.AddrPort) string {
	if !s.d.tokens.valid(a.Token, from.Addr()) {
		return "bad token"
	}
	port := a.Port
	if a.ImpliedPort { // BEP 5: the source port, useful behind NATs
		port = from.Port()
	}
	if port == 0 {
		return "bad port"
	}
	s.d.peers.add(a.InfoHash, netip.AddrPortFrom(from.Addr(), port))
	return ""
}

// answerGet returns a token, the closest nodes and the item if we hold it.
// BEP 44: with "seq" in the query, k, v and sig are left out unless ours is newer.
func (s *server) answerGet(rep *krpcReply, a *krpcArgs, from netip.AddrPort) {
	rep.Token = s.d.tokens.issue(from.Addr())
	s.addNodes(rep, a.Target, a.Want, from)
	it, ok := s.d.items.get(a.Target)
	if !ok {
		return
	}
	if it.Mutable {
		rep.Seq, rep.HasSeq = it.Seq, true
		if a.HasSeq && it.Seq <= a.Seq {
			return
		}
		rep.K, rep.HasK, rep.Sig = it.K, true, it.Sig
	}
	rep.V = it.V
}

// acceptPut stores a BEP 44 item; it returns a KRPC error code and message if not.
func (s *server) acceptPut(a *krpcArgs, from netip.AddrPort) (int, string) {
	if !s.d.tokens.valid(a.Token, from.Addr()) {
		return krpcErrProtocol, "bad token"
	}
	it := bep44Item{V: a.V}
	if a.HasK {
		if !a.HasSeq {
			return krpcErrProtocol, "mutable put without seq"
		}
		it = bep44Item{V: a.V, Mutable: true, K: a.K, Salt: a.Salt, Seq: a.Seq, Sig: a.Sig}
	}
	err := s.d.items.put(it, a.CAS, a.HasCAS, from)
	var be *bep44Error
	switch {
	case err == nil:
		return 0, ""
	case errors.As(err, &be):
		return be.Code, be.Msg
	default:
		return krpcErrServer, "store failed"
	}
}

// replyError sends an 'e' message; it also carries our "v" and BEP 42 "ip".
func (s *server) replyError(to netip.AddrPort, tid []byte, code int, msg string) {
	e := krpcMsg{TID: tid, Type: 'e', Version: s.d.version, IP: to, ErrCode: code, ErrMsg: []byte(msg)}
	s.sbuf = e.appendTo(s.sbuf[:0])
	s.d.sendRaw(to, s.sbuf)
}

func (d *dht) sendRaw(to netip.AddrPort, b []byte) {
	if err := d.node.send(to, b); err != nil {
		d.log.Debug("dht: send", "to", to, "err", err)
	}
}

// heard records a node in the routing table and pings the questionable
// nodes the table wants checked before it evicts one of them.
func (d *dht) heard(n nodeInfo, responded bool) {
	if !queryableAddr(n.Addr) {
		return
	}
	d.mu.Lock()
	if n.ID == d.table.self() {
		d.mu.Unlock()
		return
	}
	check := d.table.heard(n, responded)
	var ping []nodeInfo
	for _, c := range check {
		if _, busy := d.evicting[c.Addr]; !busy && len(d.evicting) < maxEvictPings {
			d.evicting[c.Addr] = struct{}{}
			ping = append(ping, c)
		}
	}
	d.mu.Unlock()
	for _, c := range ping {
		q := krpcMsg{Method: methodPing}
		addr := c.Addr
		evicted := func(queryResult) {
			d.mu.Lock()
			delete(d.evicting, addr)
			d.mu.Unlock()
		}
		if _, err := d.tx.send(addr, &q, &c.ID, nil, evicted); err != nil {
			evicted(queryResult{})
		}
	}
}

// queryableAddr rejects addresses no node can answer from.
func queryableAddr(a netip.AddrPort) bool {
	ip := a.Addr()
	return a.IsValid() && a.Port() != 0 && !ip.IsUnspecified() && !ip.IsMulticast()
}

// --- transactions

// txKey identifies a transaction: a response counts only if it comes from
// the address we queried and echoes our tid.
type txKey struct {
	tid  uint32
	addr netip.AddrPort
}

type transaction struct {
	pkt       []byte // the encoded query, resent as is
	expect    nodeID // the id we believe the node has (zero: unknown)
	hasExpect bool
	sent      time.Time
	attempts  int // transmissions so far
	tries     int // transmissions allowed (peerTimes.tries)
	timeouts  int // timeouts expired so far
	timer     *time.Timer
	// onTimeout may be nil; it is called with 1, 2, ... as each timeout
	// expires, resent saying whether a retransmission followed.
	onTimeout func(n int, resent bool)
	done      func(queryResult) // called once, never with d.mu or txTable.mu held
}

// queryResult is the outcome of one query. Msg aliases a private copy of the
// datagram, so it may be kept.
type queryResult struct {
	Msg      krpcMsg
	Err      error
	Attempts int
}

// rttEstimator is RFC 6298's smoothed RTT of one peer (rtt.go).
type rttEstimator struct {
	srtt, rttvar time.Duration
	has          bool
}

func (e *rttEstimator) sample(r time.Duration) {
	if !e.has {
		e.srtt, e.rttvar, e.has = r, r/2, true
		return
	}
	dev := e.srtt - r
	if dev < 0 {
		dev = -dev
	}
	e.rttvar = (3*e.rttvar + dev) / 4 // beta = 1/4
	e.srtt = (7*e.srtt + r) / 8       // alpha = 1/8
}

// rto is SRTT + max(G, 4*RTTVAR), clamped to [min, max].
func (e *rttEstimator) rto(t *dhtTiming) time.Duration {
	if !e.has {
		return t.rtoInitial
	}
	r := e.srtt + max(rtoGranularity, 4*e.rttvar)
	return min(max(r, t.rtoMin), t.rtoMax)
}

// backoff is the timeout after transmission attempt (1 is the first send):
// 1, 1, 2, 4, 4, 4 x RTO, at most rtoMax. The first retransmission waits
// one RTO like the first send: a datagram lost at random is answered
// within it, and a lookup stops waiting for a node whose second timeout
// expired. Then the timeout doubles twice, to cover an RTO estimate that
// was too short, and stops: the rest is random loss, where waiting longer
// buys nothing, and one query is one small datagram, adding no congestion
// worth backing off from.
func backoff(rto time.Duration, attempt int, t *dhtTiming) time.Duration {
	return min(rto<<min(max(attempt-2, 0), maxBackoffShift), t.rtoMax)
}

// txTable is our queries awaiting an answer: it sends each one,
// retransmits it on timeout and hands its outcome to the caller. Safe for
// concurrent use; done callbacks run without its lock held.
type txTable struct {
	write   func(to netip.AddrPort, b []byte)
	failed  func(n nodeInfo) // every attempt to query n timed out
	self    func() nodeID
	now     func() time.Time
	timing  *dhtTiming
	version []byte

	mu     sync.Mutex // guards txs, closed, rng, times
	txs    map[txKey]*transaction
	closed bool           // run has ended: no more queries
	rng    *mrand.ChaCha8 // transaction ids: a CSPRNG seeded from cfg.Rand
	times  peerTimes
}

// send sends q (Method and Args set by the caller; tid, id and version are
// filled in here) and returns at once; done reports the outcome. If expect
// is non-nil, a timeout is reported to the routing table as a failure of
// that node.
func (x *txTable) send(to netip.AddrPort, q *krpcMsg, expect *nodeID, onTimeout func(int, bool), done func(queryResult)) (txKey, error) {
	q.Type, q.Version = 'q', x.version
	q.Args.ID = x.self()
	t := &transaction{onTimeout: onTimeout, done: done, attempts: 1}
	if expect != nil {
		t.expect, t.hasExpect = *expect, true
	}
	var tid [tidLen]byte
	x.mu.Lock()
	if x.closed || len(x.txs) >= maxTransactions {
		err := errTooManyTx
		if x.closed {
			err = errClosed
		}
		x.mu.Unlock()
		return txKey{}, err
	}
	k := txKey{addr: to}
	for {
		k.tid = uint32(x.rng.Uint64())
		if _, dup := x.txs[k]; !dup {
			break
		}
	}
	binary.BigEndian.PutUint32(tid[:], k.tid)
	q.TID = tid[:]
	t.pkt = q.appendTo(make([]byte, 0, 128))
	t.sent = x.now()
	t.tries = x.times.tries()
	x.txs[k] = t
	t.timer = time.AfterFunc(x.times.rto(to, t.sent, x.timing), func() { x.retry(k) })
	x.mu.Unlock()
	x.write(to, t.pkt)
	return k, nil
}

// retry retransmits a query whose timeout expired; after the last
// transmission's timeout it waits out the query's patience, then gives up.
func (x *txTable) retry(k txKey) {
	x.mu.Lock()
	t, ok := x.txs[k]
	if !ok {
		x.mu.Unlock()
		return
	}
	t.timeouts++
	n, now := t.timeouts, x.now()
	if t.attempts < t.tries {
		t.attempts++
		t.timer.Reset(backoff(x.times.rto(k.addr, now, x.timing), t.attempts, x.timing))
		x.mu.Unlock()
		x.write(k.addr, t.pkt)
		if t.onTimeout != nil {
			t.onTimeout(n, true)
		}
		return
	}
	if wait := t.sent.Add(x.times.patience(x.timing)).Sub(now); n == t.attempts && wait > 0 {
		t.timer.Reset(wait) // a slow node's answer may still come
		x.mu.Unlock()
		if t.onTimeout != nil {
			t.onTimeout(n, false)
		}
		return
	}
	delete(x.txs, k)
	x.times.failed(k.addr, now)
	attempts := t.attempts
	x.mu.Unlock()
	if t.hasExpect {
		x.failed(nodeInfo{ID: t.expect, Addr: k.addr})
	}
	t.done(queryResult{Err: errTimeout, Attempts: attempts})
}

// cancel forgets a transaction without reporting it.
func (x *txTable) cancel(k txKey) {
	x.mu.Lock()
	if t, ok := x.txs[k]; ok {
		t.timer.Stop()
		delete(x.txs, k)
	}
	x.mu.Unlock()
}

// take removes and returns the transaction a response answers, if any, and
// records the answer's timing.
func (x *txTable) take(k txKey) (*transaction, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	t, ok := x.txs[k]
	if ok {
		delete(x.txs, k)
		t.timer.Stop()
		now := x.now()
		x.times.answered(k.addr, now.Sub(t.sent), t.attempts, now)
	}
	return t, ok
}

// dead reports whether a query to addr recently went unanswered (and none
// was answered since): lookups skip it.
func (x *txTable) dead(addr netip.AddrPort) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.times.dead(addr, x.now())
}

// close ends every open query (its caller learns errClosed) and refuses
// new ones.
func (x *txTable) close() {
	x.mu.Lock()
	x.closed = true
	var open []*transaction
	for k, t := range x.txs {
		// Even if the timer fired, its retry finds the transaction gone
		// and returns: done is ours to call, exactly once.
		t.timer.Stop()
		open = append(open, t)
		delete(x.txs, k)
	}
	x.mu.Unlock()
	for _, t := range open {
		t.done(queryResult{Err: errClosed, Attempts: t.attempts})
	}
}

// handleResponse completes the transaction an 'r' or 'e' message answers.
func (d *dht) handleResponse(from netip.AddrPort, m *krpcMsg, b []byte) {
	if len(m.TID) != tidLen {
		return
	}
	t, ok := d.tx.take(txKey{tid: binary.BigEndian.Uint32(m.TID), addr: from})
	if !ok {
		return // unsolicited, or from an address we did not query
	}
	res := queryResult{Attempts: t.attempts}
	if m.Type == 'e' {
		res.Err = &krpcError{Code: m.ErrCode, Msg: string(m.ErrMsg)}
		t.done(res)
		return
	}
	d.learnExternal(from, m.IP)
	if t.hasExpect && t.expect != m.Reply.ID {
		// another node now answers on that address
		d.mu.Lock()
		d.table.failed(nodeInfo{ID: t.expect, Addr: from})
		d.mu.Unlock()
	}
	d.heard(nodeInfo{ID: m.Reply.ID, Addr: from}, true)
	// b is only valid during this call: give the caller its own copy
	res.Msg, res.Err = parseKRPC(bytes.Clone(b))
	t.done(res)
}

// learnExternal votes on our external address with the "ip" a responder saw
// (BEP 42). When it moves to a public IPv4 address our id no longer matches
// it, so we take a secure id for it and rebuild the table around the new id,
// keeping its nodes. Loopback and private addresses are exempt.
func (d *dht) learnExternal(from netip.AddrPort, seen netip.AddrPort) {
	if !seen.IsValid() {
		return
	}
	d.mu.Lock()
	ext, changed := d.voter.voteFrom(from, seen)
	self := d.table.self()
	d.mu.Unlock()
	ip := ext.Addr()
	if !changed || !ip.Is4() || isExemptBEP42(ip) || isSecureNodeID(self, ip) {
		return
	}
	id, err := secureNodeID(ip, d.cfg.Rand)
	if err != nil {
		d.log.Warn("dht: secure id", "err", err)
		return
	}
	d.mu.Lock()
	d.table = d.table.rebuilt(id)
	d.mu.Unlock()
	d.log.Info("dht: new secure node id", "external", ext, "id", id)
}

// query sends q and waits for its outcome or for ctx.
func (x *txTable) query(ctx context.Context, to netip.AddrPort, q *krpcMsg, expect *nodeID) queryResult {
	ch := make(chan queryResult, 1)
	k, err := x.send(to, q, expect, nil, func(r queryResult) { ch <- r })
	if err != nil {
		return queryResult{Err: err}
	}
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		x.cancel(k)
		return queryResult{Err: ctx.Err(), Attempts: 1}
	}
}

// queryAll sends one query per node in parallel and waits for all outcomes.
func (x *txTable) queryAll(ctx context.Context, to []nodeInfo, mk func(i int) krpcMsg) []queryResult {
	res := make([]queryResult, len(to))
	var wg sync.WaitGroup
	for i, n := range to {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := mk(i)
			var expect *nodeID
			if n.ID != (nodeID{}) {
				expect = &n.ID
			}
			res[i] = x.query(ctx, n.Addr, &q, expect)
		}()
	}
	wg.Wait()
	return res
}

// ping asks addr for its id.
func (d *dht) ping(ctx context.Context, addr netip.AddrPort) (nodeID, error) {
	q := krpcMsg{Method: methodPing}
	r := d.tx.query(ctx, addr, &q, nil)
	if r.Err != nil {
		return nodeID{}, fmt.Errorf("dht: ping %v: %w", addr, r.Err)
	}
	return r.Msg.Reply.ID, nil
}

// --- maintenance

// run bootstraps, then refreshes stale buckets and saves the table until ctx
// ends; it saves the table on exit. A failed bootstrap is logged and
// retried from refresh. It returns nil.
func (d *dht) run(ctx context.Context) error {
	defer d.shutdown()
	if err := d.bootstrap(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// Keep serving and retry from refresh: a node that comes up
		// before its bootstrap nodes (or offline) must still join later.
		d.log.Error("dht: bootstrap failed; retrying every maintenance interval", "err", err)
	}
	tick := time.NewTicker(d.timing.maintenance)
	defer tick.Stop()
	lastSave := d.now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		d.refresh(ctx)
		if d.now().Sub(lastSave) >= d.timing.save {
			lastSave = d.now()
			if err := d.save(); err != nil {
				d.log.Warn("dht: save routing table", "err", err)
			}
		}
	}
}

// refresh looks up a random id in every bucket left unchanged for
// bucketRefresh (BEP 5), and retries the bootstrap if the table emptied.
func (d *dht) refresh(ctx context.Context) {
	// No good node left: ping the best of the rest, and if none answers,
	// go back to the bootstrap nodes. Dead saved nodes (a node started
	// offline) must not keep us from them.
	d.mu.Lock()
	good, _, _ := d.table.counts()
	probe := d.table.closest(d.table.self(), bucketSize)
	d.mu.Unlock()
	if good == 0 && len(d.cfg.Bootstrap) > 0 {
		if d.pingAll(ctx, probe) == 0 {
			if err := d.bootstrap(ctx); err != nil {
				d.log.Warn("dht: bootstrap", "err", err)
			}
		}
		return
	}
	d.mu.Lock()
	targets := d.table.refreshTargets()
	d.mu.Unlock()
	for _, t := range targets {
		if ctx.Err() != nil {
			return
		}
		if _, err := d.lookup(ctx, lookupOpts{target: t, method: methodFindNode}); err != nil {
			d.log.Debug("dht: refresh", "target", t, "err", err)
		}
	}
}

// shutdown ends every open query (its caller learns errClosed), refuses
// new ones and saves the table.
func (d *dht) shutdown() {
	d.tx.close()
	if err := d.save(); err != nil {
		d.log.Warn("dht: save routing table", "err", err)
	}
}

func (d *dht) save() error {
	if d.cfg.Dir == "" {
		return nil
	}
	d.mu.Lock()
	self, ns := d.table.self(), d.table.nodes()
	d.mu.Unlock()
	return saveRoutingTable(filepath.Join(d.cfg.Dir, routingFile), self, ns)
}

// bootstrap pings the saved nodes; if none answers it asks the configured
// routers for the nodes closest to us. Then it looks up our own id, which
// fills the buckets near us (BEP 5). Every step is bounded by timeouts.
func (d *dht) bootstrap(ctx context.Context) error {
	d.mu.Lock()
	saved := d.saved
	d.saved = nil
	d.mu.Unlock()
	answered := d.pingAll(ctx, saved)
	var seeds []nodeInfo
	var problems []string
	if answered == 0 && len(d.cfg.Bootstrap) > 0 {
		var routers int
		seeds, routers, problems = d.askRouters(ctx)
		answered += routers
	}
	for _, p := range problems {
		d.log.Warn("dht: bootstrap node failed", "problem", p)
	}
	if answered == 0 {
		if len(saved) == 0 && len(d.cfg.Bootstrap) == 0 {
			return nil // the first node of a network: others will find us
		}
		if len(saved) > 0 {
			problems = append([]string{fmt.Sprintf("none of %d saved nodes answered", len(saved))}, problems...)
		}
		return fmt.Errorf("dht: bootstrap: %w: %s", errNoneAnswered, strings.Join(problems, "; "))
	}
	self := d.id()
	_, err := d.lookup(ctx, lookupOpts{target: self, method: methodFindNode, seeds: seeds})
	return err
}

// pingAll pings ns in parallel and counts the answers; the routing table
// records those that do not answer as failed.
func (d *dht) pingAll(ctx context.Context, ns []nodeInfo) int {
	answered := 0
	for _, r := range d.tx.queryAll(ctx, ns, func(int) krpcMsg { return krpcMsg{Method: methodPing} }) {
		if r.Err == nil {
			answered++
		}
	}
	return answered
}

// askRouters resolves every bootstrap HOST:PORT and sends it find_node(our
// id). It returns the nodes they sent, how many answered and one line per
// router that failed.
func (d *dht) askRouters(ctx context.Context) ([]nodeInfo, int, []string) {
	ctx, cancel := context.WithTimeout(ctx, d.timing.bootstrap)
	defer cancel()
	var problems []string
	var routers []nodeInfo
	var names []string
	for _, hp := range d.cfg.Bootstrap {
		a, err := resolveUDP(ctx, hp)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		routers = append(routers, nodeInfo{Addr: a})
		names = append(names, hp)
	}
	self := d.id()
	res := d.tx.queryAll(ctx, routers, func(int) krpcMsg {
		return krpcMsg{Method: methodFindNode, Args: krpcArgs{Target: self}}
	})
	var seeds []nodeInfo
	answered := 0
	for i, r := range res {
		if r.Err != nil {
			problems = append(problems, fmt.Sprintf("%q (%v): %v", names[i], routers[i].Addr, r.Err))
			continue
		}
		answered++
		seeds = append(seeds, nodesOfReply(&r.Msg.Reply)...)
	}
	return seeds, answered, problems
}

// resolveUDP turns HOST:PORT into one address, IPv4 preferred (the socket
// may be IPv4 only). Its errors name the input; callers add the layer.
func resolveUDP(ctx context.Context, hostport string) (netip.AddrPort, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: want HOST:PORT", hostport)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: bad port", hostport)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: cannot resolve: %v", hostport, err)
	}
	best := ips[0].Unmap()
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			best = ip.Unmap()
			break
		}
	}
	return netip.AddrPortFrom(best, uint16(port)), nil
}

// nodesOfReply returns the valid nodes of a reply; a malformed list is
// ignored whole rather than half used.
func nodesOfReply(r *krpcReply) []nodeInfo {
	var out []nodeInfo
	if r.Nodes != nil {
		if ns, err := parseCompactNodes(r.Nodes); err == nil {
			out = append(out, ns...)
		}
	}
	if r.Nodes6 != nil {
		if ns, err := parseCompactNodes6(r.Nodes6); err == nil {
			out = append(out, ns...)
		}
	}
	return out
}
