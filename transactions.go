// Transactions (SPEC.md 3.4.2): our queries, from send to answer, timeout
// or abort.
//
// Flow: txTable.send picks a random tid, registers the transaction, takes
// the node's pacing token (waiting for it if the node has had its share),
// sends and arms a timer; retry retransmits with backoff from the peer's RTO
// (rtt.go), with our current id, and once the last attempt timed out and
// the query's patience ran out reports the node failed() to the routing
// table. handleResponse (dht.go) takes the transaction by (tid, address),
// which records the answer's timing. beforeSend lets the DHT check, before each
// transmission, that our address has not changed (nodeid.go); a move ends
// the queries that name our old id (abortOwn). query and queryAll wrap send
// for callers that wait.
package main

import (
	"context"
	"encoding/binary"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// txKey identifies a transaction: a response counts only if it comes from
// the address we queried and echoes our tid.
type txKey struct {
	tid  uint32
	addr netip.AddrPort
}

// txOpts says how to run one query.
type txOpts struct {
	// expect is the id we believe the node has; if set, a timeout is
	// reported to the routing table as a failure of that node.
	expect *nodeID
	// onTimeout, if set, is called with 1, 2, ... as each timeout
	// expires, resent saying whether a retransmission followed.
	onTimeout func(n int, resent bool)
	// once: no retransmissions, for a node that has never answered us,
	// whose address may be forged (SPEC.md 3.4.1).
	once bool
	// ownID: the query names an id derived from ours (a lookup of our own
	// id or of a bucket's range), derived when we had moved epoch times; it
	// is not sent, or ends, once we have moved again (nodeid.go).
	ownID bool
	epoch uint64
}

type transaction struct {
	q        krpcMsg // the query, re-encoded if our id changes before a retransmission
	pkt      []byte  // q encoded, resent as is
	id       nodeID  // our id in pkt
	opts     txOpts
	expect   nodeID // *opts.expect, copied
	sent     time.Time
	attempts int // transmissions so far
	tries    int // transmissions allowed: peerTimes.tries, or 1 (once)
	timeouts int // timeouts expired so far
	timer    *time.Timer
	done     func(queryResult) // called once, never with d.mu or txTable.mu held
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
// within it, and a lookup stops waiting for a node whose last transmission
// timed out. Then the timeout doubles twice, to cover an RTO estimate that
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
	write  func(to netip.AddrPort, b []byte)
	failed func(n nodeInfo) // every attempt to query n timed out
	self   func() nodeID
	now    func() time.Time
	timing *dhtTiming
	// beforeSend, if set, runs before each transmission; it may find that
	// our address changed, and then renews our id (nodeid.go), which calls
	// abortOwn. moves counts such changes.
	beforeSend func(to netip.AddrPort)
	moves      func() uint64
	// readOnly, set by the app, marks our queries ro = 1 (BEP 43):
	// behind a NAT we cannot serve, and a contact's query reaching our
	// router unasked would break hole punching (SPEC.md 5.8.3).
	readOnly atomic.Bool

	mu     sync.Mutex // guards txs, closed, rng, times, pace
	txs    map[txKey]*transaction
	closed bool           // run has ended: no more queries
	rng    *mrand.ChaCha8 // transaction ids: a CSPRNG seeded from cfg.Rand
	times  peerTimes
	pace   *sourceLimiter // what we draw from each node (SPEC.md 3.4.2, "Pacing")
}

// send sends q (Method and Args set by the caller; tid and id are filled
// in here; no "v", SPEC.md 3.2) and returns at once; done reports the
// outcome.
func (x *txTable) send(to netip.AddrPort, q *krpcMsg, o txOpts, done func(queryResult)) (txKey, error) {
	if x.beforeSend != nil {
		x.beforeSend(to)
	}
	if o.ownID && x.moved(o.epoch) {
		return txKey{}, errMoved // q names an id we dropped
	}
	q.Type = 'q'
	t := &transaction{opts: o, done: done, attempts: 1, id: x.self()}
	if o.expect != nil {
		t.expect = *o.expect
	}
	q.Args.ID = t.id
	q.ReadOnly = x.readOnly.Load()
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
	t.sent = x.now()
	wait, ok := x.pace.reserve(to, t.sent, maxPaceWait)
	if !ok {
		x.mu.Unlock()
		return txKey{}, errPaced
	}
	binary.BigEndian.PutUint32(tid[:], k.tid)
	q.TID = tid[:]
	t.q = *q
	t.pkt = q.appendTo(make([]byte, 0, 128))
	t.tries = x.times.tries()
	if o.once {
		t.tries = 1
	}
	x.txs[k] = t
	if wait > 0 {
		t.timer = time.AfterFunc(wait, func() { x.sendPaced(k) })
		x.mu.Unlock()
		return k, nil
	}
	t.timer = time.AfterFunc(x.times.rto(to, t.sent, x.timing), func() { x.retry(k) })
	x.mu.Unlock()
	x.write(to, t.pkt)
	return k, nil
}

// sendPaced makes the first transmission of a query that waited for its
// node's pacing token (SPEC.md 3.4.2), with our current id; its timeouts
// count from now.
func (x *txTable) sendPaced(k txKey) {
	self := x.self()
	x.mu.Lock()
	t, ok := x.txs[k]
	if !ok {
		x.mu.Unlock()
		return // cancelled or aborted meanwhile
	}
	if t.id != self {
		t.id, t.q.Args.ID = self, self
		t.pkt = t.q.appendTo(make([]byte, 0, len(t.pkt)))
	}
	t.sent = x.now()
	t.timer = time.AfterFunc(x.times.rto(k.addr, t.sent, x.timing), func() { x.retry(k) })
	pkt := t.pkt
	x.mu.Unlock()
	x.write(k.addr, pkt)
}

// retry retransmits a query whose timeout expired; after the last
// transmission's timeout it waits out the query's patience, then gives up.
// A retransmission carries our current id: the same tid, so an answer to
// any transmission still completes the query, but never an id we dropped.
func (x *txTable) retry(k txKey) {
	if x.beforeSend != nil {
		x.beforeSend(k.addr) // may end k (abortOwn)
	}
	self := x.self() // and moves: neither under x.mu, which nests no lock
	var moves uint64
	if x.moves != nil {
		moves = x.moves()
	}
	x.mu.Lock()
	t, ok := x.txs[k]
	if !ok {
		x.mu.Unlock()
		return
	}
	if t.opts.ownID && x.moves != nil && moves != t.opts.epoch { // registered while a move was being handled
		delete(x.txs, k)
		x.mu.Unlock()
		t.done(queryResult{Err: errMoved, Attempts: t.attempts})
		return
	}
	t.timeouts++
	n, now := t.timeouts, x.now()
	if t.attempts < t.tries {
		t.attempts++
		x.pace.reserve(k.addr, now, maxPaceWait) // a retransmission counts, but goes now
		if t.id != self {
			t.id, t.q.Args.ID = self, self
			t.pkt = t.q.appendTo(make([]byte, 0, len(t.pkt)))
		}
		pkt := t.pkt
		t.timer.Reset(backoff(x.times.rto(k.addr, now, x.timing), t.attempts, x.timing))
		x.mu.Unlock()
		x.write(k.addr, pkt)
		if t.opts.onTimeout != nil {
			t.opts.onTimeout(n, true)
		}
		return
	}
	if wait := t.sent.Add(x.times.patience(x.timing)).Sub(now); n == t.attempts && wait > 0 {
		t.timer.Reset(wait) // a slow node's answer may still come
		x.mu.Unlock()
		if t.opts.onTimeout != nil {
			t.opts.onTimeout(n, false)
		}
		return
	}
	delete(x.txs, k)
	if !t.opts.once { // one lost datagram proves nothing
		x.times.failed(k.addr, now)
	}
	attempts := t.attempts
	x.mu.Unlock()
	if t.opts.expect != nil {
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
	x.mu.Unlock()
	x.abort(errClosed, func(*transaction) bool { return true })
}

// moved reports whether we moved since we had moved epoch times.
func (x *txTable) moved(epoch uint64) bool {
	return x.moves != nil && x.moves() != epoch
}

// abortOwn ends the open queries that name an id derived from ours (their
// callers learn errMoved): after a move they would tie the old id to the
// new address. The others go on, with our new id in their retransmissions.
func (x *txTable) abortOwn() {
	x.abort(errMoved, func(t *transaction) bool { return t.opts.ownID })
}

// abort ends the open queries that which selects; their callers learn
// err. The nodes are not blamed: the queries did not fail, we gave up.
func (x *txTable) abort(err error, which func(*transaction) bool) {
	x.mu.Lock()
	var open []*transaction
	for k, t := range x.txs {
		if !which(t) {
			continue
		}
		// Even if the timer fired, its retry finds the transaction gone
		// and returns: done is ours to call, exactly once.
		t.timer.Stop()
		open = append(open, t)
		delete(x.txs, k)
	}
	x.mu.Unlock()
	for _, t := range open {
		t.done(queryResult{Err: err, Attempts: t.attempts})
	}
}

// query sends q and waits for its outcome or for ctx.
func (x *txTable) query(ctx context.Context, to netip.AddrPort, q *krpcMsg, o txOpts) queryResult {
	ch := make(chan queryResult, 1)
	k, err := x.send(to, q, o, func(r queryResult) { ch <- r })
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

// queryAll sends one query per node in parallel and waits for all
// outcomes; o.expect is set per node, to its id if known.
func (x *txTable) queryAll(ctx context.Context, to []nodeInfo, o txOpts, mk func(i int) krpcMsg) []queryResult {
	res := make([]queryResult, len(to))
	var wg sync.WaitGroup
	for i, n := range to {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := mk(i)
			o := o
			o.expect = nil
			if n.ID != (nodeID{}) {
				o.expect = &n.ID
			}
			res[i] = x.query(ctx, n.Addr, &q, o)
		}()
	}
	wg.Wait()
	return res
}
