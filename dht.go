// DHT node (SPEC.md 3.4.1, 3.4.2, 3.4.4): the KRPC server and client of
// BEP 5, 42, 43 and 44 on the Node's one socket.
//
// Inbound flow: Node.run -> handleKRPC parses the datagram (parseKRPC, pure).
// A query within its source's rate (ratelimit.go) goes to
// server.handleQuery, which records the sender in the routing table,
// answers from the table and the stores, and encodes the reply into a
// buffer owned by the read goroutine. A response or error goes to
// handleResponse, which takes the transaction by (tid, sender address),
// feeds the external-address vote (nodeid.go), records the responder and
// completes the transaction.
// Outbound flow: our queries go through the transaction table
// (transactions.go), which retransmits them and reports failed nodes to the
// table. Lookups (lookup.go) and the /dht commands are built on it.
// Maintenance (maintainer.run): ping the saved table, bootstrap, then one
// ticker refreshes stale buckets and saves the table; the table is saved on
// exit.
package main

import (
	"bytes"
	"context"
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
	tidLen          = 4                // bytes in our transaction ids: 32 random bits
	maxTransactions = 2048             // outstanding queries per node
	maxAttempts     = 6                // at most one transmission and five retransmissions (rtt.go: tries)
	maxBackoffShift = 2                // the timeout doubles at most twice: 1, 1, 2, 4, 4, 4 x RTO
	maxPeersReply   = 50               // IPv4 peers in one get_peers reply: worst reply 1,036 bytes (SPEC.md 3.5.2)
	maxPeersReply6  = 27               // IPv6 peers (21 bytes each): worst reply 1,216 of 1,232 bytes
	maxEvictPings   = 64               // ping-before-evict queries in flight at once
	verifyEvery     = 10 * time.Minute // one ping per unverified source (rateKey) this often, at most
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
	errPaced        = errors.New("node already asked all it will answer us") // SPEC.md 3.4.2, "Pacing"
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
	// BootstrapFailed, if set, hears of each bootstrap that ended with no
	// node answering, so the UI can say so in words whether or not logs
	// are on. It runs on the DHT's goroutine and must not block.
	BootstrapFailed func(error)
	// Source names the local address the kernel would send from to reach
	// the Internet (v6: over IPv6), the zero Addr if none (nodeid.go).
	// Nil: routeSource if the socket is bound to a wildcard address, else
	// none, as the address cannot change under a bound socket.
	Source func(v6 bool) netip.Addr
	// ReadOnly is BEP 43's read-only mode, for metered connections: every
	// query we send carries "ro" 1, so nodes leave us out of their tables,
	// and we answer no query (SPEC.md 3.4.1).
	ReadOnly bool
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
	node   *Node
	cfg    dhtConfig
	log    *slog.Logger
	now    func() time.Time
	timing dhtTiming

	tokens *tokenBox
	peers  *peerStore
	items  *itemStore

	mu       sync.Mutex // guards table, ids.idState, evicting, verified, maint.saved
	table    *routingTable
	ids      *idKeeper // our external address, what our id is bound to, and moves (nodeid.go)
	evicting map[netip.AddrPort]struct{}
	// verified: when a source (rateKey) that never answered us was last
	// sent a verification ping; a forged querier whose entry failed and
	// came back with its next query must not draw a ping each time.
	verified map[netip.AddrPort]time.Time

	tx     *txTable      // our queries
	srv    *server       // answers theirs
	maint  *maintainer   // keeps us in the network: bootstrap, refresh, save
	recent recentLookups // where lookups of a target ended lately (lookup.go)
}

// server answers queries. Only the Node's read goroutine calls it: it owns
// the buffers replies are encoded into, so a reply costs no allocation.
type server struct {
	d                        *dht
	limit                    *sourceLimiter // what each source can draw (ratelimit.go)
	sbuf, nbuf4, nbuf6, vbuf []byte
}

// newDHT creates the node's DHT and installs it as n.onKRPC. Its id is
// fresh and random; if cfg.Dir holds a saved routing table, its nodes are
// pinged by maintainer.run.
func newDHT(n *Node, cfg dhtConfig) (*dht, error) {
	defaultNowRandLog(&cfg.Now, &cfg.Rand, &cfg.Log)
	var self nodeID
	if _, err := io.ReadFull(cfg.Rand, self[:]); err != nil {
		return nil, fmt.Errorf("dht: id: %w", err)
	}
	saved := loadSavedNodes(cfg)
	var seed [32]byte
	if _, err := io.ReadFull(cfg.Rand, seed[:]); err != nil {
		return nil, fmt.Errorf("dht: seed: %w", err)
	}
	d := &dht{
		node: n, cfg: cfg, log: cfg.Log, now: cfg.Now,
		timing: defaultTiming(),
		tokens: newTokenBox(cfg.Rand, cfg.Now), peers: newPeerStore(cfg.Now, cfg.Rand), items: newItemStore(cfg.Now),
		table: newRoutingTable(self, cfg.Now), evicting: map[netip.AddrPort]struct{}{}, verified: map[netip.AddrPort]time.Time{},
	}
	d.ids = &idKeeper{d: d, route: cfg.Source}
	if d.ids.route == nil && n.LocalAddr().Addr().IsUnspecified() {
		d.ids.route = routeSource
	}
	d.maint = &maintainer{d: d, saved: saved}
	d.srv = &server{d: d, limit: newSourceLimiter(srcQueryRate, srcQueryBurst),
		sbuf: make([]byte, 0, maxDatagram), nbuf4: make([]byte, 0, 26*bucketSize),
		nbuf6: make([]byte, 0, 38*bucketSize), vbuf: make([]byte, 0, 20*maxPeersReply),
	}
	d.tx = &txTable{
		write: d.sendRaw, self: d.id, now: cfg.Now, timing: &d.timing,
		beforeSend: d.ids.checkSource, moves: func() uint64 { _, m := d.ids.idAndMoves(); return m },
		failed: func(n nodeInfo) {
			d.mu.Lock()
			d.table.failed(n)
			d.mu.Unlock()
		},
		txs: map[txKey]*transaction{}, rng: mrand.NewChaCha8(seed), times: newPeerTimes(),
		pace: newSourceLimiter(dstQueryRate, dstQueryBurst),
	}
	// -metered: ro = 1 in every query; the app's NAT view (main.go) keeps
	// it set, as it ORs cfg.ReadOnly into what it stores.
	d.tx.readOnly.Store(cfg.ReadOnly)
	for _, sn := range saved { // questionable until they answer run's ping
		d.table.heard(sn, false)
	}
	n.onKRPC = d.handleKRPC
	return d, nil
}

// loadSavedNodes reads the saved table. A missing or corrupt file (it is
// only a cache) gives none; the routers are then asked.
func loadSavedNodes(cfg dhtConfig) []nodeInfo {
	if cfg.Dir == "" {
		return nil
	}
	ns, err := loadRoutingTable(filepath.Join(cfg.Dir, routingFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		cfg.Log.Warn("dht: ignoring the saved routing table", "err", err)
	}
	return ns
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

// goodNodes counts the routing table's good nodes (BEP 5: heard from in
// the last 15 minutes), the ones a lookup can start from.
func (d *dht) goodNodes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	good, _, _ := d.table.counts()
	return good
}

func (d *dht) external() (netip.AddrPort, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ids.voter.external()
}

// externalPorts is our external address (voted, else the best guess) and
// the ports voters saw at its IP (bep42.go guess, portsAt).
func (d *dht) externalPorts() (netip.AddrPort, []uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ext := d.ids.voter.guess()
	return ext, d.ids.voter.portsAt(ext.Addr())
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
		if errors.As(err, &bq) && !d.cfg.ReadOnly && d.srv.allow(from) {
			d.srv.replyError(from, bq.TID, krpcErrProtocol, "bad query")
		}
		d.log.Debug("dht: dropped", "from", from, "err", err)
		return
	}
	switch m.Type {
	case 'q':
		if !d.cfg.ReadOnly && d.srv.allow(from) { // BEP 43: read-only, we answer no query
			d.srv.handleQuery(from, &m)
		}
	case 'r', 'e':
		d.handleResponse(from, &m, b)
	}
}

// allow reports whether from may have one more query answered now; a query
// beyond its rate is dropped unanswered and unrecorded (SPEC.md 3.4.1).
func (s *server) allow(from netip.AddrPort) bool {
	if s.limit.allow(from, s.d.now()) {
		return true
	}
	if s.d.log.Enabled(context.Background(), slog.LevelDebug) { // no allocation under a flood
		s.d.log.Debug("dht: over its rate", "from", from, "dropped", s.limit.dropped.Load())
	}
	return false
}

func (s *server) handleQuery(from netip.AddrPort, m *krpcMsg) {
	if m.Method == methodUnknown {
		s.replyError(from, m.TID, krpcErrMethodUnknown, "method unknown")
		return
	}
	if !m.ReadOnly { // BEP 43: read-only nodes are served but never added
		s.d.heard(nodeInfo{ID: m.Args.ID, Addr: from}, false)
	}
	r := krpcMsg{TID: m.TID, Type: 'r', IP: from}
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

// replyError sends an 'e' message; it also carries the BEP 42 "ip".
func (s *server) replyError(to netip.AddrPort, tid []byte, code int, msg string) {
	e := krpcMsg{TID: tid, Type: 'e', IP: to, ErrCode: code, ErrMsg: []byte(msg)}
	s.sbuf = e.appendTo(s.sbuf[:0])
	s.d.sendRaw(to, s.sbuf)
}

func (d *dht) sendRaw(to netip.AddrPort, b []byte) {
	if err := d.node.send(to, b); err != nil {
		d.log.Debug("dht: send", "to", to, "err", err)
	}
}

// heard records a node in the routing table and pings the questionable
// nodes the table wants checked before it evicts one of them, and a new
// querier, to verify its address. A node that has never answered us gets
// one transmission, no retransmissions: its address may be forged, and a
// forged querier must not draw six pings to its victim (SPEC.md 3.4.1).
func (d *dht) heard(n nodeInfo, responded bool) {
	if !queryableAddr(n.Addr) {
		return
	}
	d.mu.Lock()
	if n.ID == d.table.self() {
		d.mu.Unlock()
		return
	}
	if responded {
		// The source answers: its next new node may be verified at once.
		delete(d.verified, rateKey(n.Addr))
	}
	check := d.table.heard(n, responded)
	var ping []nodeInfo
	var once []bool
	for _, c := range check {
		first := !d.table.hasAnswered(c)
		if first && !d.mayVerifyLocked(c.Addr) {
			continue
		}
		if _, busy := d.evicting[c.Addr]; !busy && len(d.evicting) < maxEvictPings {
			d.evicting[c.Addr] = struct{}{}
			ping = append(ping, c)
			once = append(once, first)
		}
	}
	d.mu.Unlock()
	for i, c := range ping {
		q := krpcMsg{Method: methodPing}
		addr := c.Addr
		evicted := func(queryResult) {
			d.mu.Lock()
			delete(d.evicting, addr)
			d.mu.Unlock()
		}
		if _, err := d.tx.send(addr, &q, txOpts{expect: &c.ID, once: once[i]}, evicted); err != nil {
			evicted(queryResult{})
		}
	}
}

// mayVerifyLocked reports whether a node that has never answered us may
// be sent a ping at addr now, and records it: one per source (rateKey)
// per verifyEvery, until a node there answers (heard; SPEC.md 3.4.1).
// The record is bounded: when it holds maxRateSources sources, the stale
// ones go; if none is stale, no such ping is sent until one is, as a flood
// of new sources deserves.
func (d *dht) mayVerifyLocked(addr netip.AddrPort) bool {
	now, key := d.now(), rateKey(addr)
	if t, ok := d.verified[key]; ok && now.Sub(t) < verifyEvery {
		return false
	}
	if len(d.verified) >= maxRateSources {
		for k, t := range d.verified {
			if now.Sub(t) >= verifyEvery {
				delete(d.verified, k)
			}
		}
		if len(d.verified) >= maxRateSources {
			return false
		}
	}
	d.verified[key] = now
	return true
}

// queryableAddr rejects addresses no node can answer from.
func queryableAddr(a netip.AddrPort) bool {
	ip := a.Addr()
	return a.IsValid() && a.Port() != 0 && !ip.IsUnspecified() && !ip.IsMulticast()
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
	d.ids.learnExternal(from, m.IP)
	if t.opts.expect != nil && t.expect != m.Reply.ID {
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

// ping asks addr for its id.
func (d *dht) ping(ctx context.Context, addr netip.AddrPort) (nodeID, error) {
	q := krpcMsg{Method: methodPing}
	r := d.tx.query(ctx, addr, &q, txOpts{})
	if r.Err != nil {
		return nodeID{}, fmt.Errorf("dht: ping %v: %w", addr, r.Err)
	}
	return r.Msg.Reply.ID, nil
}

// --- maintenance

// maintainer keeps the node in the network, on its own goroutine (run):
// it bootstraps from the saved table or the routers, refreshes stale
// buckets, goes back to the routers when the table empties, and saves the
// table. It owns no lock: what it reads of the dht is under d.mu.
type maintainer struct {
	d     *dht
	saved []nodeInfo // loaded from disk, pinged by the first bootstrap; under d.mu
}

// run bootstraps, then refreshes stale buckets and saves the table until ctx
// ends; it saves the table on exit. A failed bootstrap is logged and
// retried from refresh. It returns nil.
func (m *maintainer) run(ctx context.Context) error {
	d := m.d
	defer m.shutdown()
	if err := m.bootstrap(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// Keep serving and retry from refresh: a node that comes up
		// before its bootstrap nodes (or offline) must still join later.
		d.log.Error("dht: bootstrap failed; retrying every maintenance interval", "err", err)
		m.bootstrapFailed(err)
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
		m.refresh(ctx)
		if d.now().Sub(lastSave) >= d.timing.save {
			lastSave = d.now()
			if err := m.save(); err != nil {
				d.log.Warn("dht: save routing table", "err", err)
			}
		}
	}
}

// refresh looks up a random id in every bucket left unchanged for
// bucketRefresh (BEP 5), and retries the bootstrap if the table emptied.
func (m *maintainer) refresh(ctx context.Context) {
	d := m.d
	// No good node left: ping the best of the rest, and if none answers,
	// go back to the bootstrap nodes. Dead saved nodes (a node started
	// offline) must not keep us from them.
	d.mu.Lock()
	good, _, _ := d.table.counts()
	probe := d.table.closest(d.table.self(), bucketSize)
	d.mu.Unlock()
	if good == 0 && len(d.cfg.Bootstrap) > 0 {
		if m.pingAll(ctx, probe) == 0 {
			if err := m.bootstrap(ctx); err != nil {
				d.log.Warn("dht: bootstrap", "err", err)
				m.bootstrapFailed(err)
			}
		}
		return
	}
	d.mu.Lock()
	targets := d.table.refreshTargets()
	moves := d.ids.moves
	d.mu.Unlock()
	for _, t := range targets {
		if _, now := d.ids.idAndMoves(); ctx.Err() != nil || now != moves {
			return // after a move the targets, drawn near the old id, would tie it to us
		}
		if _, err := d.lookup(ctx, lookupOpts{target: t, method: methodFindNode, ownID: true, epoch: moves}); err != nil {
			d.log.Debug("dht: refresh", "target", t, "err", err)
		}
	}
}

// shutdown ends every open query (its caller learns errClosed), refuses
// new ones and saves the table.
func (m *maintainer) shutdown() {
	d := m.d
	d.tx.close()
	if err := m.save(); err != nil {
		d.log.Warn("dht: save routing table", "err", err)
	}
}

func (m *maintainer) save() error {
	d := m.d
	if d.cfg.Dir == "" {
		return nil
	}
	d.mu.Lock()
	ns := d.table.nodes()
	d.mu.Unlock()
	return saveRoutingTable(filepath.Join(d.cfg.Dir, routingFile), ns)
}

// bootstrap pings the saved nodes; if none answers it asks the configured
// routers for the nodes closest to us. Then it looks up our own id, which
// fills the buckets near us (BEP 5). Every step is bounded by timeouts.
func (m *maintainer) bootstrap(ctx context.Context) error {
	d := m.d
	d.mu.Lock()
	saved := m.saved
	m.saved = nil
	d.mu.Unlock()
	answered := m.pingAll(ctx, saved)
	var seeds []nodeInfo
	var problems []string
	if answered == 0 && len(d.cfg.Bootstrap) > 0 {
		var routers int
		seeds, routers, problems = m.askRouters(ctx)
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
	self, epoch := d.ids.idAndMoves()
	_, err := d.lookup(ctx, lookupOpts{target: self, method: methodFindNode, seeds: seeds, ownID: true, epoch: epoch})
	return err
}

// bootstrapFailed tells cfg.BootstrapFailed of a bootstrap that failed.
func (m *maintainer) bootstrapFailed(err error) {
	d := m.d
	if d.cfg.BootstrapFailed != nil {
		d.cfg.BootstrapFailed(err)
	}
}

// pingAll pings ns in parallel and counts the answers; the routing table
// records those that do not answer as failed.
func (m *maintainer) pingAll(ctx context.Context, ns []nodeInfo) int {
	d := m.d
	answered := 0
	for _, r := range d.tx.queryAll(ctx, ns, txOpts{}, func(int) krpcMsg { return krpcMsg{Method: methodPing} }) {
		if r.Err == nil {
			answered++
		}
	}
	return answered
}

// askRouters resolves every bootstrap HOST:PORT and sends it find_node(our
// id). It returns the nodes they sent, how many answered and one line per
// router that failed.
func (m *maintainer) askRouters(ctx context.Context) ([]nodeInfo, int, []string) {
	d := m.d
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
	self, epoch := d.ids.idAndMoves()
	res := d.tx.queryAll(ctx, routers, txOpts{ownID: true, epoch: epoch}, func(int) krpcMsg {
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
