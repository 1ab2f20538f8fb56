// Iterative lookups (SPEC.md 3.4.3; Kademlia, BEP 5) and what is built on
// them: find_node, get_peers, announce_peer and the BEP 44 get and put.
//
// Flow: lookup seeds a candidate list, sorted by XOR distance to the target,
// from the routing table. It keeps up to alpha queries active to the closest
// candidates not yet asked, among the k closest that have not failed. The
// transaction layer reports back through callbacks that only queue an event
// and wake the lookup goroutine, which alone touches the candidates. A query
// whose first timeout expires (the peer's RTO) stops counting as active —
// a "soft timeout" — so another query starts while its late answer is still
// accepted; once its last transmission timed out it no longer holds up
// the end. Nodes that
// recently failed us are not asked. The lookup ends when the k closest
// candidates still worth waiting for have all answered, or, for getPeers,
// once peersQuorum nodes handed over peers. announce and put then send
// their store query to the k closest responders that gave a token.
package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Lookup parameters; SPEC.md 3.4.
const (
	dhtAlpha            = 4    // parallel queries per lookup: Kademlia's 3, and one for the Internet's slow tail
	maxLookupCandidates = 256  // candidates a lookup remembers
	maxLookupQueries    = 256  // queries one lookup may send (not counting retransmissions)
	maxLookupPeers      = 1000 // peers a get_peers lookup collects
	peersQuorum         = 2    // nodes with peers after which getPeers stops
	maxRecentLookups    = 256  // targets whose last lookup's closest nodes are kept
	recentLookupTTL     = 5 * time.Minute
	pollLookupEvery     = 5 * time.Second  // watcher.poll asks single holders this long after a lookup
	pollMissEvery       = 15 * time.Second // and the closest this long, while none of them held the item
	checkLookupEvery    = time.Hour        // a check (watcher) asks single nodes this long after a lookup
	checkSpread         = 4                // of the closest, in turn
)

// lookupStats measures one lookup; benchmarks report them.
type lookupStats struct {
	Rounds    int // longest chain of nodes, each learned from the previous one's answer
	Messages  int // queries sent, retransmissions included
	Queried   int // distinct nodes queried
	Responded int
	Failed    int
	Duration  time.Duration
}

// lookupNode is a responder with the write token it gave us, if any.
type lookupNode struct {
	nodeInfo
	Token []byte
}

type lookupResult struct {
	Closest []lookupNode // the up to k responders closest to the target, closest first
	Peers   []netip.AddrPort
	Item    bep44Item
	HasItem bool
	Holders []nodeInfo // the responders that sent Item
	Stats   lookupStats
}

type lookupOpts struct {
	target      nodeID
	method      krpcMethod // methodFindNode, methodGetPeers or methodGet
	seeds       []nodeInfo // extra starting nodes (bootstrap routers' answers)
	salt        []byte     // get: the salt of a mutable item
	seq         int64      // get with hasSeq: BEP 44's seq, nodes leave out an item not newer
	hasSeq      bool
	stopOnValue bool   // get: end as soon as an immutable value verified
	stopOnPeers bool   // get_peers: end once peersQuorum nodes gave peers
	toStore     bool   // announce, put: a slow node does not hold up the end
	ownID       bool   // the target derives from our id: end if we move (nodeid.go)
	epoch       uint64 // with ownID: the moves of d.ids.idAndMoves when the target was derived
}

type candState uint8

const (
	candFresh   candState = iota
	candWaiting           // queried, within its first timeout
	candSlow              // queried, first timeout passed: no longer holds an alpha slot
	candLate              // queried, last transmission timed out: no longer holds up the end
	candDone              // answered
	candFailed            // every attempt timed out, or it answered with an error
)

type candidate struct {
	info  nodeInfo
	round int // 1 for nodes from our table, else 1 + round of the node that named it
	state candState
	token []byte
}

type lookupEvent struct {
	c       *candidate
	timeout int          // > 0: the query's timeout number timeout expired
	resent  bool         // and a retransmission followed
	res     *queryResult // non-nil: the query is over
}

type lookup struct {
	d        *dht
	opts     lookupOpts
	self     nodeID
	cands    []*candidate // sorted by distance to the target
	seen     map[netip.AddrPort]*candidate
	inflight int // queries not yet over
	peers    []netip.AddrPort
	peerSeen map[netip.AddrPort]struct{}
	givers   int          // nodes that handed over peers other than us
	ownIPs   []netip.Addr // ours: local, and external if known
	item     bep44Item
	hasItem  bool
	holders  []nodeInfo // the responders that sent item
	stop     bool
	askDead  bool   // ask nodes that failed us lately too
	moves    uint64 // with opts.ownID: opts.epoch
	stats    lookupStats

	mu     sync.Mutex // guards events, filled by transaction callbacks
	events []lookupEvent
	wake   chan struct{}
}

// lookup runs one iterative lookup. It returns the partial result with an
// error if ctx ends first or no node answered.
func (d *dht) lookup(ctx context.Context, o lookupOpts) (*lookupResult, error) {
	start := d.now()
	l := &lookup{d: d, opts: o, self: d.id(), seen: map[netip.AddrPort]*candidate{},
		peerSeen: map[netip.AddrPort]struct{}{}, wake: make(chan struct{}, 1), moves: o.epoch}
	l.ownIPs = []netip.Addr{d.node.LocalAddr().Addr()}
	if ext, ok := d.external(); ok {
		l.ownIPs = append(l.ownIPs, ext.Addr())
	}
	seeds := append(d.closest(o.target, 2*bucketSize), o.seeds...)
	seeds = append(seeds, d.recent.get(o.target, start)...)
	l.add(seeds, 1)
	if len(l.cands) == 0 && len(seeds) > 0 {
		// Every seed failed us lately: perhaps we were the one cut off.
		l.askDead = true
		l.add(seeds, 1)
	}
	if len(l.cands) == 0 {
		return &lookupResult{}, fmt.Errorf("dht: %v lookup: %w", o.method, errNoNodes)
	}
	var err error
	for {
		l.handleEvents()
		if _, moves := d.ids.idAndMoves(); o.ownID && moves != l.moves {
			// Its target would tie our new address to the old id.
			err = fmt.Errorf("dht: %v lookup: %w", o.method, errMoved)
			break
		}
		if l.finished() {
			break
		}
		l.launch()
		if l.inflight == 0 {
			break // nothing left to ask
		}
		select {
		case <-l.wake:
		case <-ctx.Done():
			err = fmt.Errorf("dht: %v lookup: %w", o.method, ctx.Err())
		}
		if err != nil {
			break
		}
	}
	l.stats.Duration = d.now().Sub(start)
	r := l.result()
	d.recent.put(o.target, r.Closest, r.Holders, err == nil && !l.stop, d.now())
	if err == nil && r.Stats.Responded == 0 {
		err = fmt.Errorf("dht: %v lookup: %w", o.method, errNoneAnswered)
	}
	return r, err
}

// post queues an event from a transaction callback; it never blocks.
func (l *lookup) post(e lookupEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *lookup) handleEvents() {
	l.mu.Lock()
	evs := l.events
	l.events = nil
	l.mu.Unlock()
	for _, e := range evs {
		c := e.c
		if e.res == nil {
			l.timedOut(c, e.timeout, e.resent)
			continue
		}
		l.inflight--
		if e.res.Err != nil {
			c.state = candFailed
			l.stats.Failed++
			continue
		}
		c.state = candDone
		l.stats.Responded++
		l.absorb(c, &e.res.Msg)
	}
}

// timedOut moves a candidate on when its query's nth timeout expires.
func (l *lookup) timedOut(c *candidate, n int, resent bool) {
	if resent {
		l.stats.Messages++
	}
	switch {
	case n == 1 && c.state == candWaiting: // soft timeout: free the slot
		c.state = candSlow
	case !resent && c.state == candSlow:
		// Its last transmission timed out: had a live node lost them
		// all at random, so few would (peerTimes.tries); it is dead, or
		// far slower than most. Its answer still counts if it comes.
		c.state = candLate
	}
}

// absorb takes what a response carries: closer nodes, a token, peers, an item.
func (l *lookup) absorb(c *candidate, m *krpcMsg) {
	l.stats.Rounds = max(l.stats.Rounds, c.round)
	if c.info.ID != m.Reply.ID { // trust the node's own word for its id
		c.info.ID = m.Reply.ID
		l.sort()
	}
	c.token = m.Reply.Token
	l.add(nodesOfReply(&m.Reply), c.round+1)
	switch l.opts.method {
	case methodGetPeers:
		l.addPeers(m.Reply.Values)
	case methodGet:
		l.considerItem(c, &m.Reply)
	}
}

func (l *lookup) addPeers(values []byte) {
	if values == nil {
		return
	}
	ps, err := parsePeers(values)
	if err != nil {
		return
	}
	// Our own announcement does not count: two contacts announce and look
	// up one infohash, and each must find the other, not itself.
	if slices.ContainsFunc(ps, func(p netip.AddrPort) bool { return !slices.Contains(l.ownIPs, p.Addr()) }) {
		l.givers++
		l.stop = l.stop || (l.opts.stopOnPeers && l.givers >= peersQuorum)
	}
	for _, p := range ps {
		if _, dup := l.peerSeen[p]; !dup && len(l.peers) < maxLookupPeers {
			l.peerSeen[p] = struct{}{}
			l.peers = append(l.peers, p)
		}
	}
}

// considerItem keeps a verified BEP 44 item: an immutable value whose SHA-1
// is the target, or the signed mutable value with the highest seq; and
// which of the responders sent it.
func (l *lookup) considerItem(c *candidate, r *krpcReply) {
	if r.V == nil {
		return
	}
	if !r.HasK {
		if immutableTarget(r.V) == l.opts.target {
			l.item, l.hasItem = bep44Item{V: r.V}, true
			l.holders = append(l.holders, c.info)
			l.stop = l.opts.stopOnValue
		}
		return
	}
	it, ok := mutableItemFrom(r, l.opts.target, l.opts.salt)
	switch {
	case !ok:
	case !l.hasItem || it.Seq > l.item.Seq:
		l.item, l.hasItem, l.holders = it, true, []nodeInfo{c.info}
	case it.Seq == l.item.Seq:
		l.holders = append(l.holders, c.info)
	}
}

// mutableItemFrom is the mutable item a get reply carries for target, if
// it has one whose key, salt and signature check out (BEP 44).
func mutableItemFrom(r *krpcReply, target nodeID, salt []byte) (bep44Item, bool) {
	if r.V == nil || !r.HasK || !r.HasSeq || mutableTarget(r.K, salt) != target {
		return bep44Item{}, false
	}
	it := bep44Item{V: r.V, Mutable: true, K: r.K, Salt: salt, Seq: r.Seq, Sig: r.Sig}
	return it, verifyItem(it) == nil
}

// add inserts new candidates in distance order, dropping the farthest
// unasked ones beyond maxLookupCandidates, and those that recently failed
// us: other nodes go on handing out a dead node until they find out.
func (l *lookup) add(ns []nodeInfo, round int) {
	changed := false
	for _, n := range ns {
		if !queryableAddr(n.Addr) || n.ID == l.self {
			continue
		}
		if _, dup := l.seen[n.Addr]; !dup && !l.askDead && l.d.tx.dead(n.Addr) {
			continue
		}
		if c, dup := l.seen[n.Addr]; dup {
			if c.state == candFresh && round < c.round { // a shorter path to it
				c.round = round
			}
			continue
		}
		c := &candidate{info: n, round: round}
		l.seen[n.Addr] = c
		l.cands = append(l.cands, c)
		changed = true
	}
	if !changed {
		return
	}
	l.sort()
	for i := len(l.cands) - 1; len(l.cands) > maxLookupCandidates && i >= 0; i-- {
		if l.cands[i].state == candFresh {
			l.cands = slices.Delete(l.cands, i, i+1)
		}
	}
}

func (l *lookup) sort() {
	t := l.opts.target
	slices.SortStableFunc(l.cands, func(a, b *candidate) int {
		switch {
		case xorLess(t, a.info.ID, b.info.ID):
			return -1
		case xorLess(t, b.info.ID, a.info.ID):
			return 1
		}
		return 0
	})
}

// finished: the k closest candidates that have neither failed nor gone
// late have all answered (classic Kademlia termination, not held up by a
// dead node once its last transmission timed out; for a store, its
// first), or a get found its immutable value, or a getPeers its quorum.
func (l *lookup) finished() bool {
	if l.stop {
		return true
	}
	n := 0
	for _, c := range l.cands {
		switch {
		case c.state == candFailed || c.state == candLate:
			continue
		case c.state == candSlow && l.opts.toStore:
			// The store goes to the next closest instead, which the
			// lookups of those who read it ask too.
			continue
		case c.state == candDone:
			n++
		default:
			return false
		}
		if n == bucketSize {
			break
		}
	}
	return n > 0
}

// launch starts queries to the closest unasked candidates of the window,
// the k closest that have neither failed nor gone slow, while fewer than
// alpha queries to the window are active. A slow candidate is probably
// dead: looking past it now means its replacement has answered by the time
// it fails, instead of a second wait for every dead node among the k
// closest. A query to a node that closer ones pushed out of the window no
// longer takes a slot either (libtorrent's "aggressive lookups", after
// Jimenez et al. 2011): the alpha queries stay at the front.
func (l *lookup) launch() {
	window := make([]*candidate, 0, bucketSize)
	active := 0
	for _, c := range l.cands {
		if len(window) == bucketSize {
			break
		}
		if c.state == candFailed || c.state == candSlow || c.state == candLate {
			continue
		}
		window = append(window, c)
		if c.state == candWaiting {
			active++
		}
	}
	for _, c := range window {
		if active >= dhtAlpha || l.stats.Queried >= maxLookupQueries {
			return
		}
		if c.state == candFresh {
			l.query(c)
			active++
		}
	}
}

func (l *lookup) query(c *candidate) {
	q := krpcMsg{Method: l.opts.method}
	switch l.opts.method {
	case methodFindNode, methodGet:
		q.Args.Target = l.opts.target
		q.Args.Seq, q.Args.HasSeq = l.opts.seq, l.opts.hasSeq
	case methodGetPeers:
		q.Args.InfoHash = l.opts.target
	}
	c.state = candWaiting
	l.inflight++
	l.stats.Queried++
	l.stats.Messages++
	id := c.info.ID
	o := txOpts{expect: &id, ownID: l.opts.ownID, epoch: l.opts.epoch,
		onTimeout: func(n int, resent bool) { l.post(lookupEvent{c: c, timeout: n, resent: resent}) }}
	_, err := l.d.tx.send(c.info.Addr, &q, o, func(r queryResult) { l.post(lookupEvent{c: c, res: &r}) })
	if err != nil {
		c.state = candFailed
		l.inflight--
		l.stats.Failed++
	}
}

func (l *lookup) result() *lookupResult {
	r := &lookupResult{Peers: l.peers, Item: l.item, HasItem: l.hasItem, Holders: l.holders, Stats: l.stats}
	for _, c := range l.cands {
		if c.state == candDone && len(r.Closest) < bucketSize {
			r.Closest = append(r.Closest, lookupNode{nodeInfo: c.info, Token: c.token})
		}
	}
	return r
}

// recentLookups keeps, for the last maxRecentLookups targets, the nodes
// closest to each that answered its latest lookup, for recentLookupTTL.
// A node looks one infohash up again and again (the rendezvous announces
// it, then looks it up, then again every few seconds until the contact
// comes online): a lookup that starts from where the last one ended asks
// the nodes near the target in its first round, not its third. They are
// seeds beside the table's, so a stale one costs only its own query. Safe
// for concurrent use; the zero value is ready to use.
type recentLookups struct {
	mu sync.Mutex
	m  map[nodeID]recentLookup
}

type recentLookup struct {
	closest  []nodeInfo
	holders  []nodeInfo // those that sent the item the lookup found
	at       time.Time
	complete bool      // the lookup ran to its end (3.4.3 step 5), not stopped early
	used     time.Time // the last time the entry served; the least recently used goes first
	polled   int       // the nodes watcher asked since, in turn
}

// nextPoll is the node watcher.poll asks next about target, in turn: each
// of those that sent the item in the last lookup of target, if that
// lookup is under pollLookupEvery old; if none did, each of the closest
// that answered it, if it is under pollMissEvery old (the item may have
// been put since). ok is false when a lookup is due.
func (r *recentLookups) nextPoll(target nodeID, now time.Time) (n nodeInfo, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, found := r.m[target]
	from, fresh := e.holders, pollLookupEvery
	if len(from) == 0 {
		from, fresh = e.closest, pollMissEvery
	}
	if !found || now.Sub(e.at) >= fresh || len(from) == 0 {
		return nodeInfo{}, false
	}
	n = from[e.polled%len(from)]
	e.polled++
	e.used = now
	r.m[target] = e
	return n, true
}

// nextCheck is the node a check asks next about target: each of the
// checkSpread closest that answered the last lookup of target, in turn,
// while that lookup is under checkLookupEvery old and ran to its end (one
// cut short may not have reached the nodes nearest target). ok is false
// when a lookup is due.
func (r *recentLookups) nextCheck(target nodeID, now time.Time) (n nodeInfo, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, found := r.m[target]
	if !found || !e.complete || now.Sub(e.at) >= checkLookupEvery || len(e.closest) == 0 {
		return nodeInfo{}, false
	}
	n = e.closest[e.polled%min(len(e.closest), checkSpread)]
	e.polled++
	e.used = now
	r.m[target] = e
	return n, true
}

func (r *recentLookups) get(target nodeID, now time.Time) []nodeInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[target]
	if !ok || now.Sub(e.at) >= recentLookupTTL {
		return nil
	}
	return e.closest
}

// put keeps the result of a lookup of target that ended at now; complete:
// it ran to its end.
func (r *recentLookups) put(target nodeID, closest []lookupNode, holders []nodeInfo, complete bool, now time.Time) {
	if len(closest) == 0 {
		return
	}
	ns := make([]nodeInfo, len(closest))
	for i, c := range closest {
		ns[i] = c.nodeInfo
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[nodeID]recentLookup{}
	}
	if _, ok := r.m[target]; !ok && len(r.m) >= maxRecentLookups {
		oldest := target
		for t, e := range r.m {
			if oldest == target || e.used.Before(r.m[oldest].used) {
				oldest = t
			}
		}
		delete(r.m, oldest)
	}
	r.m[target] = recentLookup{closest: ns, holders: holders, at: now, complete: complete, used: now}
}

// --- operations built on lookups

// findNode returns the k nodes closest to target that answered.
func (d *dht) findNode(ctx context.Context, target nodeID) ([]nodeInfo, error) {
	r, err := d.lookup(ctx, lookupOpts{target: target, method: methodFindNode})
	if err != nil {
		return nil, err
	}
	ns := make([]nodeInfo, len(r.Closest))
	for i, c := range r.Closest {
		ns[i] = c.nodeInfo
	}
	return ns, nil
}

// getPeers returns the peers the nodes near infohash know, and those we
// store ourselves: we may be one of the nodes an announce went to, and our
// lookup never asks us.
func (d *dht) getPeers(ctx context.Context, infohash nodeID) ([]netip.AddrPort, error) {
	local := d.peers.peers(infohash, maxLookupPeers)
	r, err := d.lookup(ctx, lookupOpts{target: infohash, method: methodGetPeers, stopOnPeers: true})
	if err != nil && len(local) == 0 {
		return nil, err
	}
	return addPeers(local, r.Peers), nil
}

// addPeers appends the peers of found not in to yet, up to maxLookupPeers.
func addPeers(to, found []netip.AddrPort) []netip.AddrPort {
	for _, p := range found {
		if !slices.Contains(to, p) && len(to) < maxLookupPeers {
			to = append(to, p)
		}
	}
	return to
}

// announce tells the k closest nodes that gave a token that we are a peer
// for infohash on port (or on our source port, if implied). It returns the
// peers its get_peers lookup found, as getPeers would (the rendezvous looks
// up the infohash it announces, SPEC.md 5.2: one lookup serves both), and
// how many nodes accepted.
func (d *dht) announce(ctx context.Context, infohash nodeID, port int, implied bool) ([]netip.AddrPort, int, error) {
	if !implied && (port <= 0 || port > 0xffff) {
		return nil, 0, fmt.Errorf("dht: announce: bad port %d", port)
	}
	if implied {
		port = int(d.node.LocalAddr().Port()) // BEP 5 keeps "port" even when implied
	}
	o := lookupOpts{target: infohash, method: methodGetPeers}
	r, n, err := d.publish(ctx, o, "announce", func(tok []byte) krpcMsg {
		return krpcMsg{Method: methodAnnouncePeer, Args: krpcArgs{
			InfoHash: infohash, Port: uint16(port), ImpliedPort: implied, Token: tok}}
	})
	if r == nil {
		return nil, n, err
	}
	return addPeers(d.peers.peers(infohash, maxLookupPeers), r.Peers), n, err
}

// publish runs the lookup o, then sends a store query (announce_peer or
// put, built by mk around each token) to the k closest nodes that gave a
// token, in parallel. It returns the lookup (nil if it failed) and how
// many accepted; when none did, the first error reply says why (e.g. 302:
// a newer seq is stored).
func (d *dht) publish(ctx context.Context, o lookupOpts, what string, mk func(tok []byte) krpcMsg) (*lookupResult, int, error) {
	o.toStore = true
	r, err := d.lookup(ctx, o)
	if err != nil {
		return nil, 0, err
	}
	var to []nodeInfo
	var toks [][]byte
	for _, n := range r.Closest {
		if n.Token != nil {
			to = append(to, n.nodeInfo)
			toks = append(toks, n.Token)
		}
	}
	ok, refused := 0, error(nil)
	for _, q := range d.tx.queryAll(ctx, to, txOpts{}, func(i int) krpcMsg { return mk(toks[i]) }) {
		var kerr *krpcError
		switch {
		case q.Err == nil:
			ok++
		case errors.As(q.Err, &kerr) && refused == nil:
			refused = kerr
		default:
			d.log.Debug("dht: store", "err", q.Err)
		}
	}
	switch {
	case ok == 0 && refused != nil:
		return r, 0, fmt.Errorf("dht: %s refused: %w", what, refused)
	case ok == 0:
		return r, 0, fmt.Errorf("dht: %s: %w", what, errNoneAnswered)
	}
	return r, ok, nil
}

// putImmutable stores v (a bencoded value) under SHA-1(v) at the k closest
// nodes. Following BEP 44 the put carries v only, no seq.
func (d *dht) putImmutable(ctx context.Context, v []byte) (nodeID, int, error) {
	if err := checkBencode(v); err != nil {
		return nodeID{}, 0, fmt.Errorf("dht: put: %w", err)
	}
	if len(v) > maxItemValue {
		return nodeID{}, 0, fmt.Errorf("dht: put: value of %d bytes, max %d", len(v), maxItemValue)
	}
	target := immutableTarget(v)
	o := lookupOpts{target: target, method: methodGet}
	_, n, err := d.publish(ctx, o, "put", putQuery(krpcArgs{V: v}))
	return target, n, err
}

// putMutable signs v with seq (and salt) and stores it under SHA-1(k || salt).
func (d *dht) putMutable(ctx context.Context, priv ed25519.PrivateKey, salt []byte, seq int64, v []byte) (nodeID, int, error) {
	it := signItem(priv, salt, seq, v)
	if err := verifyItem(it); err != nil {
		return nodeID{}, 0, fmt.Errorf("dht: put: %w", err)
	}
	target := mutableTarget(it.K, salt)
	a := krpcArgs{V: it.V, K: it.K, HasK: true, Sig: it.Sig, Salt: salt, Seq: seq, HasSeq: true}
	// The lookup wants tokens, not the item: with our seq in the get, a
	// node leaves out one that is not newer (BEP 44), such as our own
	// earlier write or this very item put again.
	o := lookupOpts{target: target, method: methodGet, salt: salt, seq: seq, hasSeq: true}
	_, n, err := d.publish(ctx, o, "put", putQuery(a))
	return target, n, err
}

// putQuery builds a put of a around each token publish collected.
func putQuery(a krpcArgs) func(tok []byte) krpcMsg {
	return func(tok []byte) krpcMsg {
		q := krpcMsg{Method: methodPut, Args: a}
		q.Args.Token = tok
		return q
	}
}

// get finds the BEP 44 item stored under target (a mutable one without salt,
// or an immutable one), verified. Our own store counts too, as in getPeers:
// an immutable item found there is final, a mutable one competes on seq.
func (d *dht) get(ctx context.Context, target nodeID) (bep44Item, error) {
	local, ok := d.items.get(target)
	if ok && !local.Mutable {
		return local, nil
	}
	r, err := d.lookup(ctx, lookupOpts{target: target, method: methodGet, stopOnValue: true})
	switch {
	case r.HasItem && (!ok || r.Item.Seq > local.Seq):
		return r.Item, nil
	case ok:
		return local, nil
	case err != nil:
		return bep44Item{}, err
	}
	return bep44Item{}, fmt.Errorf("dht: get %v: %w", target, errNotFound)
}

// putMutableN is putMutable without the target: how many nodes stored it.
func (d *dht) putMutableN(ctx context.Context, priv ed25519.PrivateKey, salt []byte, seq int64, v []byte) (int, error) {
	_, n, err := d.putMutable(ctx, priv, salt, seq, v)
	return n, err
}

// getMutable finds the mutable item of key k and salt (BEP 44), verified:
// the highest seq among our own store and the nodes near its target.
// found is false when nobody has it; err is set only when the lookup
// failed (no node answered).
func (d *dht) getMutable(ctx context.Context, k [32]byte, salt []byte) (it bep44Item, found bool, err error) {
	target := mutableTarget(k, salt)
	r, err := d.lookup(ctx, lookupOpts{target: target, method: methodGet, salt: salt})
	it, found = d.newerMutable(target, k, r.Item, r.HasItem && r.Item.Mutable)
	if !found && err != nil {
		return bep44Item{}, false, err
	}
	return it, found, nil
}

// newerMutable is the mutable item of key k at target with the higher seq
// of it (if found, from the network) and our own store's.
func (d *dht) newerMutable(target nodeID, k [32]byte, it bep44Item, found bool) (bep44Item, bool) {
	local, ok := d.items.get(target)
	if ok && local.Mutable && local.K == k && (!found || local.Seq >= it.Seq) {
		return local, true
	}
	return it, found
}
