// A peer's session state (SPEC.md 4.6-4.8): what the session manager holds
// about one contact, in one small struct per concern.
//
// Flow: session.go keeps one peer per contact, guarded by its mu. Our
// initiation waits in inits until a response completes it (or timers.go
// abandons it); the keypairs it yields rotate through keypairs (next,
// current, previous); payloads sent without a session wait in queue; addrs
// says where initiations go (the endpoint, and rendezvous candidates until
// a packet authenticates); timers records the last send and receive that
// keepalives, rekeying and the end of a session run from. yields is the
// simultaneous-open rule.
package main

import (
	"bytes"
	"net/netip"
	"slices"
	"time"
)

// peer is everything we hold about one contact, in one small struct per
// concern. Guarded by the manager's mu.
type peer struct {
	key      publicKey
	keys     pairKeys        // from the static-static secret: tags, MACs, stamps, cookies
	cookies  cookieGenerator // MACs of what we send it, its cookie replies
	inits    peerInitiations // handshakes: ours pending, timestamps both ways
	keypairs peerKeypairs
	addrs    peerAddrs
	queue    sendQueue
	timers   peerTimers
	pq       peerPQ // post-quantum secrets and the exchange under way (pq.go)
}

// peerInitiations holds our pending initiation to a peer and the
// timestamp of our last one (the peer's are in the timestampStore).
type peerInitiations struct {
	pending  *handshake // our pending initiation, nil if none
	started  time.Time  // first attempt of the pending handshake
	lastSent time.Time  // last (re)send of it
	packet   []byte     // its bytes, to send to a new candidate at once
	sentTS   [timestampLen]byte
	// failures counts the handshakes abandoned in a row; until quietUntil
	// only a new address starts another (initiationQuiet).
	failures   int
	quietUntil time.Time
}

// failed notes an abandoned handshake: the next one that is not for a new
// address waits RekeyAttemptTime, doubling with each failure in a row up to
// maxInitiationQuiet, so that a contact who is away does not draw an
// initiation every RekeyTimeout for as long as a payload waits for it.
func (h *peerInitiations) failed(now time.Time, attempt time.Duration) {
	h.failures++
	h.quietUntil = now.Add(min(attempt<<min(h.failures-1, 16), maxInitiationQuiet))
}

// erasePending forgets our pending initiation and its receiver index.
func (h *peerInitiations) erasePending(index indexTable) {
	if h.pending != nil {
		delete(index, h.pending.localIndex)
		h.pending.erase()
		h.pending = nil
	}
}

// abandon erases our pending initiation and ends the attempt.
func (h *peerInitiations) abandon(index indexTable) {
	if h.pending == nil {
		return
	}
	h.erasePending(index)
	h.started = time.Time{}
}

// peerKeypairs are a peer's transport sessions: at most three.
type peerKeypairs struct {
	current  *keypair // sends and receives
	previous *keypair // receives only, until it expires
	next     *keypair // responder side, until the initiator's first packet confirms it
}

// rotate makes kp the current keypair; the old current one is kept to
// receive what is still in flight, the one before it is erased.
func (k *peerKeypairs) rotate(index indexTable, kp *keypair) {
	if k.next != nil && k.next != kp {
		index.retire(k.next)
	}
	k.next = nil
	index.retire(k.previous)
	k.previous, k.current = k.current, kp
}

// usable is the current keypair if it may still send.
func (k *peerKeypairs) usable(now time.Time, rejectAfterTime time.Duration) *keypair {
	kp := k.current
	if kp == nil || now.Sub(kp.created) >= rejectAfterTime || kp.sendCounter.Load() >= rejectAfterMessages {
		return nil
	}
	return kp
}

// retireAll erases every keypair.
func (k *peerKeypairs) retireAll(index indexTable) {
	index.retire(k.current)
	index.retire(k.previous)
	index.retire(k.next)
	*k = peerKeypairs{}
}

// peerAddrs is where a peer may be reached.
type peerAddrs struct {
	endpoint netip.AddrPort // source of the last authenticated packet, or the first candidate
	// While there is no session, the rendezvous may report several
	// addresses (an old announcement outlives a restart): the same
	// initiation goes to each, and the one that answers wins.
	candidates []netip.AddrPort
}

// targets is where an initiation goes: the endpoint and the candidates,
// each once.
func (a *peerAddrs) targets() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, 1+len(a.candidates))
	if a.endpoint.IsValid() {
		out = append(out, a.endpoint)
	}
	for _, c := range a.candidates {
		if c != a.endpoint {
			out = append(out, c)
		}
	}
	return out
}

// addCandidate records addr as a candidate, newest first, keeping the
// last maxCandidates, and reports whether it is new.
func (a *peerAddrs) addCandidate(addr netip.AddrPort) bool {
	if i := slices.Index(a.candidates, addr); i >= 0 {
		copy(a.candidates[1:i+1], a.candidates[:i])
		a.candidates[0] = addr
		return false
	}
	if len(a.candidates) == maxCandidates {
		a.candidates = a.candidates[:maxCandidates-1]
	}
	a.candidates = slices.Insert(a.candidates, 0, addr)
	return true
}

// sendQueue keeps payloads until a session is up.
type sendQueue struct{ payloads [][]byte }

// push keeps a copy of b; the oldest payload makes room when the queue is
// full. It reports whether one was dropped.
func (q *sendQueue) push(b []byte) (dropped bool) {
	if len(q.payloads) >= maxQueuedPerPeer {
		wipe(q.payloads[0])
		q.payloads = q.payloads[1:]
		dropped = true
	}
	q.payloads = append(q.payloads, bytes.Clone(b))
	return dropped
}

// take empties the queue and returns what it held.
func (q *sendQueue) take() [][]byte {
	out := q.payloads
	q.payloads = nil
	return out
}

// drop erases every queued payload and returns how many there were.
func (q *sendQueue) drop() int {
	for _, b := range q.payloads {
		wipe(b)
	}
	n := len(q.payloads)
	q.payloads = nil
	return n
}

// peerTimers are the times the timers (timers.go) run from.
type peerTimers struct {
	lastSend time.Time // last payload or keepalive sent
	lastRecv time.Time // last authenticated packet
	online   bool      // Established reported and Ended not since

	// The path's own keepalive and DeadAfter (SPEC.md 5.8.4), zero: the
	// config's; from since (online, or the path's address changed) the
	// config's Keepalive still applies twice.
	every, deadAfter time.Duration
	since            time.Time
	path             netip.AddrPort

	waitSince time.Time // first payload sent since the last packet received; zero: none
	oweSince  time.Time // first payload received since our last send; zero: none
}

// sent records that we sent at now, a payload or not: we owe no answer
// any more, and a payload waits for one (timers.go: stalls, passive
// keepalives).
func (t *peerTimers) sent(now time.Time, payload bool) {
	t.lastSend, t.oweSince = now, time.Time{}
	if payload && t.waitSince.IsZero() {
		t.waitSince = now
	}
}

// markLive records an authenticated packet from p: it is online, and the
// candidates from the rendezvous are no longer needed.
func (p *peer) markLive(now time.Time) {
	if !p.timers.online {
		p.timers.since = now
	}
	p.timers.lastRecv, p.timers.online = now, true
	p.timers.waitSince = time.Time{}
	p.addrs.candidates, p.inits.packet = nil, nil
	p.inits.failures, p.inits.quietUntil = 0, time.Time{}
}

// erase forgets everything held in memory about p: its handshake, its
// keys, its post-quantum PSKs and its queue.
func (p *peer) erase(index indexTable) {
	p.inits.abandon(index)
	p.keypairs.retireAll(index)
	p.dropExchange()
	p.pq.secrets.wipe()
	p.queue.drop()
}

// yields is the simultaneous-open rule (SPEC.md 4.8): when both sides
// initiate at once, the initiation of the side with the lower static public
// key wins. It reports whether we (self) should answer p's initiation; if
// so the caller abandons our own pending one (its queue is kept and goes
// out on the surviving session). It also refuses an initiation that
// arrives just after our own initiation succeeded: it was sent before the
// peer saw ours.
func (p *peer) yields(self publicKey, now time.Time, rekeyTimeout time.Duration) bool {
	selfLower := bytes.Compare(self[:], p.key[:]) < 0
	if c := p.keypairs.current; c != nil && c.initiator && now.Sub(c.created) < rekeyTimeout && selfLower {
		return false
	}
	return p.inits.pending == nil || !selfLower
}
