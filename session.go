// The session manager (SPEC.md 4.6-4.8).

package main

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The session manager (SPEC.md 4.6-4.8): peers, indices, timers.

// Default timers, as WireGuard's (SPEC.md 4.7). sessionConfig fields of the
// same names override them (tests shorten them).
const (
	defaultRekeyAfterTime     = 120 * time.Second
	defaultRejectAfterTime    = 180 * time.Second
	defaultRekeyTimeout       = 5 * time.Second
	defaultRekeyAttemptTime   = 90 * time.Second
	defaultRekeyAfterMessages = uint64(1) << 60
	defaultLoadThreshold      = 64 // handshake messages per second before cookies
	defaultTickInterval       = 250 * time.Millisecond
	defaultKeepalive          = 25 * time.Second // keeps NAT mappings open; shows presence
	defaultDeadAfter          = 3*defaultKeepalive + 5*time.Second
	maxCandidates             = 4 // addresses tried at once while there is no session
	cookieRefreshTime         = 120 * time.Second
	maxQueuedPerPeer          = 128
)

type sessionConfig struct {
	Identity    *identity
	Send        func(to netip.AddrPort, b []byte) error
	Allowed     func(peer publicKey) bool                                   // is peer a contact?
	Deliver     func(peer publicKey, from netip.AddrPort, plaintext []byte) // plaintext valid only during call
	Established func(peer publicKey, addr netip.AddrPort)                   // a new session (also after rekey/roam: addr may differ)
	Ended       func(peer publicKey)                                        // the session expired or the peer fell silent for DeadAfter
	Now         func() time.Time
	Rand        io.Reader
	Log         *slog.Logger

	// Timers; zero means the default.
	RekeyAfterTime     time.Duration
	RejectAfterTime    time.Duration
	RekeyTimeout       time.Duration
	RekeyAttemptTime   time.Duration
	RekeyAfterMessages uint64
	LoadThreshold      int // handshake messages per second that put us under load
	TickInterval       time.Duration
	Keepalive          time.Duration // an idle session sends an empty packet this often
	DeadAfter          time.Duration // silence after which a session counts as ended
}

func (c *sessionConfig) setDefaults() {
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&c.RekeyAfterTime, defaultRekeyAfterTime)
	setDur(&c.RejectAfterTime, defaultRejectAfterTime)
	setDur(&c.RekeyTimeout, defaultRekeyTimeout)
	setDur(&c.RekeyAttemptTime, defaultRekeyAttemptTime)
	setDur(&c.TickInterval, defaultTickInterval)
	setDur(&c.Keepalive, defaultKeepalive)
	setDur(&c.DeadAfter, defaultDeadAfter)
	if c.RekeyAfterMessages == 0 {
		c.RekeyAfterMessages = defaultRekeyAfterMessages
	}
	if c.LoadThreshold == 0 {
		c.LoadThreshold = defaultLoadThreshold
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = cryptorand.Reader
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Allowed == nil {
		c.Allowed = func(publicKey) bool { return false }
	}
	if c.Deliver == nil {
		c.Deliver = func(publicKey, netip.AddrPort, []byte) {}
	}
	if c.Established == nil {
		c.Established = func(publicKey, netip.AddrPort) {}
	}
	if c.Ended == nil {
		c.Ended = func(publicKey) {}
	}
}

// sessionStats counts what the session layer dropped and why; every drop
// is silent on the wire.
type sessionStats struct {
	malformed     atomic.Uint64 // not exactly well-formed
	badMAC        atomic.Uint64 // mac1 wrong: dropped before any DH
	cookiesSent   atomic.Uint64
	handshakeFail atomic.Uint64 // did not authenticate
	notAllowed    atomic.Uint64 // initiator is not a contact: no reply
	staleInit     atomic.Uint64 // replayed or older timestamp
	simultaneous  atomic.Uint64 // initiation dropped by the simultaneous-open rule
	unknownIndex  atomic.Uint64
	authFail      atomic.Uint64 // transport packet did not authenticate
	replayed      atomic.Uint64
	expired       atomic.Uint64
	queueDropped  atomic.Uint64
	delivered     atomic.Uint64
}

// peer is everything we hold about one contact. Guarded by the manager's mu.
type peer struct {
	key       publicKey
	mac1Key   [32]byte // for messages we send to it
	cookieKey [32]byte // for cookie replies it sends us
	endpoint  netip.AddrPort

	hs          *handshake // our pending initiation, nil if none
	hsStarted   time.Time  // first attempt of the pending handshake
	hsLastSent  time.Time
	lastMAC1    [macLen]byte // of the last handshake message we sent it
	hasLastMAC1 bool
	cookie      [cookieLen]byte
	cookieTime  time.Time
	hasCookie   bool

	lastTimestamp [timestampLen]byte // greatest accepted from it
	lastSentTS    [timestampLen]byte
	lastSend      time.Time

	current  *keypair // sends and receives
	previous *keypair // receives only, until it expires
	next     *keypair // responder side, until the initiator's first packet confirms it
	queue    [][]byte

	// While there is no session, the rendezvous may report several
	// addresses (an old announcement outlives a restart): the same
	// initiation goes to each, and the one that answers wins.
	candidates []netip.AddrPort
	lastInit   []byte    // the pending initiation, to send to a new candidate
	lastRecv   time.Time // last authenticated packet
	online     bool      // Established reported and Ended not since
}

// indexEntry is what a receiver index names: our pending initiation, or a keypair.
type indexEntry struct {
	peer *peer
	kp   *keypair // nil for a pending handshake
}

type sessionManager struct {
	cfg       sessionConfig
	pub       publicKey
	mac1Key   [32]byte // for messages sent to us
	cookieKey [32]byte // for cookie replies we send
	dh        dhCounter
	stats     sessionStats
	bufs      sync.Pool // *[]byte of maxDatagram bytes: zero allocations per packet
	debugOn   bool

	evMu            sync.Mutex // orders Established and Ended callbacks
	mu              sync.Mutex
	peers           map[publicKey]*peer
	index           map[uint32]indexEntry
	cookieSecret    [32]byte
	cookieSecretAge time.Time
	loadStart       time.Time
	loadCount       int
	loadUntil       time.Time
}

func newSessionManager(cfg sessionConfig) *sessionManager {
	cfg.setDefaults()
	m := &sessionManager{cfg: cfg, peers: map[publicKey]*peer{}, index: map[uint32]indexEntry{}}
	m.pub = cfg.Identity.public()
	m.mac1Key, m.cookieKey = mac1Key(m.pub), cookieKeyOf(m.pub)
	m.bufs.New = func() any { b := make([]byte, maxDatagram); return &b }
	m.debugOn = cfg.Log.Enabled(context.Background(), slog.LevelDebug)
	return m
}

// debug logs a drop; the log is quiet unless debugging.
func (m *sessionManager) debug(msg string, from netip.AddrPort, err error) {
	m.cfg.Log.Debug("session: "+msg, "from", from, "err", err)
}

// debugPacket is debug for the transport path: building the log arguments
// allocates, so it is skipped unless debug logging is on.
func (m *sessionManager) debugPacket(msg string, from netip.AddrPort, err error) {
	if m.debugOn {
		m.debug(msg, from, err)
	}
}

// peerLocked returns the peer record for k, creating it.
func (m *sessionManager) peerLocked(k publicKey) *peer {
	p := m.peers[k]
	if p == nil {
		p = &peer{key: k, mac1Key: mac1Key(k), cookieKey: cookieKeyOf(k)}
		m.peers[k] = p
	}
	return p
}

// newIndexLocked picks a random unused receiver index for e.
func (m *sessionManager) newIndexLocked(e indexEntry) (uint32, error) {
	var b [indexLen]byte
	for range 16 {
		if _, err := io.ReadFull(m.cfg.Rand, b[:]); err != nil {
			return 0, fmt.Errorf("session: index: %w", err)
		}
		i := binary.LittleEndian.Uint32(b[:])
		if _, used := m.index[i]; !used {
			m.index[i] = e
			return i, nil
		}
	}
	return 0, errors.New("session: no free index")
}

// handlePacket is Node.onSession: b is valid only during the call.
func (m *sessionManager) handlePacket(from netip.AddrPort, b []byte) {
	if len(b) == 0 {
		m.stats.malformed.Add(1)
		return
	}
	switch b[0] {
	case packetInitiation:
		m.handleInitiation(from, b)
	case packetResponse:
		m.handleResponse(from, b)
	case packetCookieReply:
		m.handleCookieReply(from, b)
	case packetTransport:
		m.handleTransport(from, b)
	default:
		m.stats.malformed.Add(1)
	}
}
func (m *sessionManager) sendRaw(to netip.AddrPort, b []byte) {
	if err := m.cfg.Send(to, b); err != nil {
		m.debug("send", to, err)
	}
}

// handleInitiation: parse, mac1 (and mac2 under load) before any DH, then
// the Noise message, then the contact and timestamp checks, then the
// simultaneous-open rule, then the response.
func (m *sessionManager) handleInitiation(from netip.AddrPort, b []byte) {
	msg, err := parseInitiation(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	if !m.checkMACs(from, b, initiationOffMAC1, initiationOffMAC2, msg.sender) {
		return
	}
	h := &handshake{}
	if err := h.consumeInitiation(m.cfg.Identity, &msg, &m.dh); err != nil {
		m.stats.handshakeFail.Add(1)
		m.debug("initiation", from, err)
		return
	}
	if !m.cfg.Allowed(h.peer) {
		// Stay silent: a stranger learns nothing, not even that we exist.
		h.erase()
		m.stats.notAllowed.Add(1)
		m.debug("initiation from a stranger", from, nil)
		return
	}
	out, err := m.respond(from, h)
	if err != nil {
		h.erase()
		m.debug("initiation", from, err)
		return
	}
	m.sendRaw(from, out)
}

// respond applies the per-peer rules to an authenticated initiation and
// returns what to send back: the response, or, when the simultaneous-open
// rule keeps our own initiation and the peer has moved, that initiation.
func (m *sessionManager) respond(from netip.AddrPort, h *handshake) ([]byte, error) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peerLocked(h.peer)
	if bytes.Compare(h.timestamp[:], p.lastTimestamp[:]) <= 0 {
		m.stats.staleInit.Add(1)
		return nil, errors.New("session: replayed or old initiation")
	}
	// Record the timestamp before anything else uses the initiation, so
	// that even one we drop below cannot be replayed to move us.
	p.lastTimestamp = h.timestamp
	if !m.yieldLocked(p, now) {
		m.stats.simultaneous.Add(1)
		h.erase()
		if p.hs != nil && p.endpoint != from {
			// The initiation authenticated, so from is where the peer
			// is now: aim our own pending initiation there at once
			// rather than keep sending to an old address.
			p.endpoint = from
			if init := m.initiateLocked(p, now); init != nil {
				return init, nil
			}
		}
		return nil, errors.New("session: simultaneous open, keeping ours")
	}
	p.endpoint = from
	local, err := m.newIndexLocked(indexEntry{peer: p})
	if err != nil {
		return nil, err
	}
	resp, err := h.createResponse(local, m.cfg.Rand)
	if err != nil {
		delete(m.index, local)
		return nil, err
	}
	send, recv, err := h.beginSession()
	if err != nil {
		delete(m.index, local)
		return nil, err
	}
	kp := newKeypair(send, recv, local, h.remoteIndex, false, now)
	m.index[local] = indexEntry{peer: p, kp: kp}
	m.retireLocked(p.next)
	p.next = kp
	out := resp.appendTo(make([]byte, 0, responseSize))
	m.setMACsLocked(p, out, responseOffMAC1, responseOffMAC2, now)
	return out, nil
}

// yieldLocked is the simultaneous-open rule (SPEC.md 4.8): when both sides
// initiate at once, the initiation of the side with the lower static public
// key wins. It reports whether we should answer p's initiation; if so our
// own pending initiation is abandoned (its queue is kept and goes out on
// the surviving session). It also ignores an initiation that arrives just
// after our own initiation succeeded: it was sent before the peer saw ours.
func (m *sessionManager) yieldLocked(p *peer, now time.Time) bool {
	if c := p.current; c != nil && c.initiator && now.Sub(c.created) < m.cfg.RekeyTimeout && bytes.Compare(m.pub[:], p.key[:]) < 0 {
		return false
	}
	if p.hs == nil {
		return true
	}
	if bytes.Compare(m.pub[:], p.key[:]) < 0 {
		return false
	}
	m.abandonLocked(p)
	return true
}

// abandonLocked erases our pending initiation to p.
func (m *sessionManager) abandonLocked(p *peer) {
	if p.hs == nil {
		return
	}
	delete(m.index, p.hs.localIndex)
	p.hs.erase()
	p.hs = nil
	p.hsStarted = time.Time{}
}

// retireLocked forgets a keypair and erases its keys.
func (m *sessionManager) retireLocked(kp *keypair) {
	if kp == nil {
		return
	}
	if e, ok := m.index[kp.localIndex]; ok && e.kp == kp {
		delete(m.index, kp.localIndex)
	}
	kp.wipe()
}

// handleResponse completes our initiation.
func (m *sessionManager) handleResponse(from netip.AddrPort, b []byte) {
	msg, err := parseResponse(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	if !m.checkMACs(from, b, responseOffMAC1, responseOffMAC2, msg.sender) {
		return
	}
	p, err := m.completeHandshake(from, &msg)
	if err != nil {
		m.debug("response", from, err)
		return
	}
	m.established(p.key, from)
	m.flush(p, true)
}

func (m *sessionManager) completeHandshake(from netip.AddrPort, msg *responseMsg) (*peer, error) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.index[msg.receiver]
	if !ok || e.kp != nil || e.peer.hs == nil || e.peer.hs.localIndex != msg.receiver {
		m.stats.unknownIndex.Add(1)
		return nil, errors.New("session: response to no pending handshake")
	}
	p := e.peer
	if !m.cfg.Allowed(p.key) {
		return nil, errors.New("session: response from a removed contact")
	}
	if err := p.hs.consumeResponse(msg); err != nil {
		m.stats.handshakeFail.Add(1)
		return nil, err
	}
	send, recv, err := p.hs.beginSession()
	if err != nil {
		return nil, err
	}
	kp := newKeypair(send, recv, p.hs.localIndex, msg.sender, true, now)
	m.index[kp.localIndex] = indexEntry{peer: p, kp: kp}
	p.hs, p.hsStarted = nil, time.Time{}
	m.rotateLocked(p, kp)
	p.endpoint = from
	m.liveLocked(p, now)
	return p, nil
}

// rotateLocked makes kp the current keypair; the old current one is kept
// to receive what is still in flight, the one before it is erased.
func (m *sessionManager) rotateLocked(p *peer, kp *keypair) {
	if p.next != nil && p.next != kp {
		m.retireLocked(p.next)
	}
	p.next = nil
	m.retireLocked(p.previous)
	p.previous, p.current = p.current, kp
}

// allocates nothing unless the packet confirms a new session or roams.
func (m *sessionManager) handleTransport(from netip.AddrPort, b []byte) {
	msg, err := parseTransport(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debugPacket("drop", from, err)
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	e, ok := m.index[msg.receiver]
	m.mu.Unlock()
	if !ok || e.kp == nil {
		m.stats.unknownIndex.Add(1)
		m.debugPacket("transport for an unknown index", from, nil)
		return
	}
	if now.Sub(e.kp.created) >= m.cfg.RejectAfterTime {
		m.stats.expired.Add(1)
		m.debugPacket("transport on expired keys", from, nil)
		return
	}
	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	pt, err := e.kp.open(*bp, &msg)
	if err != nil {
		if errors.Is(err, errReplay) {
			m.stats.replayed.Add(1)
		} else {
			m.stats.authFail.Add(1)
		}
		m.debugPacket("transport", from, err)
		return
	}
	if m.confirm(e.peer, e.kp, from) {
		m.established(e.peer.key, from)
		m.flush(e.peer, false)
	}
	if len(pt) > 0 {
		m.stats.delivered.Add(1)
		m.cfg.Deliver(e.peer.key, from, pt)
	}
}

// confirm runs after a packet authenticated on kp: a responder's new
// keypair becomes current, and a new source address becomes the endpoint.
// It reports whether the peer's session or address changed.
func (m *sessionManager) confirm(p *peer, kp *keypair, from netip.AddrPort) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	if p.next == kp {
		m.rotateLocked(p, kp)
		changed = true
	}
	if kp == p.current && p.endpoint != from {
		p.endpoint = from
		changed = true
	}
	if !p.online {
		changed = true
	}
	m.liveLocked(p, m.cfg.Now())
	return changed
}

// liveLocked records an authenticated packet from p: it is online, and the
// candidates from the rendezvous are no longer needed.
func (m *sessionManager) liveLocked(p *peer, now time.Time) {
	p.lastRecv, p.online = now, true
	p.candidates, p.lastInit = nil, nil
}

// flush sends the payloads queued for p on its current session. An
// initiator with nothing queued sends an empty keepalive, which confirms
// the session to the responder (the responder may not send before that).
func (m *sessionManager) flush(p *peer, keepalive bool) {
	m.mu.Lock()
	kp, to := p.current, p.endpoint
	if kp == nil {
		m.mu.Unlock()
		return // the queue waits for the next session
	}
	q := p.queue
	p.queue = nil
	if len(q) > 0 || keepalive {
		p.lastSend = m.cfg.Now()
	}
	m.mu.Unlock()
	if len(q) == 0 && keepalive {
		m.sendTransport(kp, to, nil)
	}
	for _, b := range q {
		m.sendTransport(kp, to, b)
		wipe(b)
	}
}

// sendTransport seals p for kp into a pooled buffer and sends it.
func (m *sessionManager) sendTransport(kp *keypair, to netip.AddrPort, p []byte) error {
	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	pkt, err := kp.seal(*bp, p)
	if err != nil {
		return err
	}
	return m.cfg.Send(to, pkt)
}

var (
	errPayloadTooBig = fmt.Errorf("session: payload larger than %d bytes", maxTransportPayload)
	errNoEndpoint    = errors.New("session: no address known for this contact")
)

// send encrypts p for peer on the current session, or queues it and starts
// a handshake.
func (m *sessionManager) send(peerKey publicKey, p []byte) error {
	if len(p) > maxTransportPayload {
		return errPayloadTooBig
	}
	now := m.cfg.Now()
	m.mu.Lock()
	pr := m.peers[peerKey]
	if pr == nil || (!pr.endpoint.IsValid() && pr.current == nil) {
		m.mu.Unlock()
		return errNoEndpoint
	}
	kp, to := m.usableLocked(pr, now), pr.endpoint
	var init []byte
	if kp == nil {
		m.enqueueLocked(pr, p)
		init = m.maybeInitiateLocked(pr, now)
	} else {
		pr.lastSend = now
		if m.needsRekeyLocked(pr, kp, now) {
			init = m.maybeInitiateLocked(pr, now)
		}
	}
	var targets []netip.AddrPort
	if init != nil {
		targets = initTargetsLocked(pr)
	}
	m.mu.Unlock()
	m.sendInitiation(targets, init)
	if kp != nil {
		return m.sendTransport(kp, to, p)
	}
	return nil
}

// usableLocked is p's current keypair if it may still send.
func (m *sessionManager) usableLocked(p *peer, now time.Time) *keypair {
	kp := p.current
	if kp == nil || now.Sub(kp.created) >= m.cfg.RejectAfterTime || kp.sendCounter.Load() >= rejectAfterMessages {
		return nil
	}
	return kp
}

// needsRekeyLocked: forward secrecy asks for fresh ephemeral keys after
// RekeyAfterTime or RekeyAfterMessages. The responder waits RekeyTimeout
// longer, so the two sides rarely start at once.
func (m *sessionManager) needsRekeyLocked(p *peer, kp *keypair, now time.Time) bool {
	if p.hs != nil {
		return false
	}
	after := m.cfg.RekeyAfterTime
	if !kp.initiator {
		after += m.cfg.RekeyTimeout
	}
	return now.Sub(kp.created) >= after || kp.sendCounter.Load() >= m.cfg.RekeyAfterMessages
}

// enqueueLocked keeps a copy of b until a session is up; the oldest
// payload makes room when the queue is full.
func (m *sessionManager) enqueueLocked(p *peer, b []byte) {
	if len(p.queue) >= maxQueuedPerPeer {
		wipe(p.queue[0])
		p.queue = p.queue[1:]
		m.stats.queueDropped.Add(1)
	}
	p.queue = append(p.queue, bytes.Clone(b))
}

// maybeInitiateLocked starts a handshake unless one is pending, or we
// answered p's initiation recently and wait for its first packet.
func (m *sessionManager) maybeInitiateLocked(p *peer, now time.Time) []byte {
	if p.hs != nil || !p.endpoint.IsValid() {
		return nil
	}
	if p.next != nil && now.Sub(p.next.created) < m.cfg.RekeyTimeout {
		return nil
	}
	p.hsStarted = now
	return m.initiateLocked(p, now)
}

// initiateLocked builds a fresh initiation (new ephemeral key, index and
// timestamp) to p, replacing any pending one.
func (m *sessionManager) initiateLocked(p *peer, now time.Time) []byte {
	if p.hs != nil {
		delete(m.index, p.hs.localIndex)
		p.hs.erase()
		p.hs = nil
	}
	idx, err := m.newIndexLocked(indexEntry{peer: p})
	if err != nil {
		m.debug("initiate", p.endpoint, err)
		return nil
	}
	h := &handshake{}
	ts := nextTimestamp(now, p.lastSentTS)
	msg, err := h.createInitiation(m.cfg.Identity, p.key, idx, ts, m.cfg.Rand, &m.dh)
	if err != nil {
		delete(m.index, idx)
		m.debug("initiate", p.endpoint, err)
		return nil
	}
	p.lastSentTS = ts
	p.hs, p.hsLastSent = h, now
	if p.hsStarted.IsZero() {
		p.hsStarted = now
	}
	out := msg.appendTo(make([]byte, 0, initiationSize))
	m.setMACsLocked(p, out, initiationOffMAC1, initiationOffMAC2, now)
	p.lastInit = out
	return out
}

// initTargetsLocked is where an initiation to p goes: its endpoint and the
// candidate addresses, each once.
func initTargetsLocked(p *peer) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, 1+len(p.candidates))
	if p.endpoint.IsValid() {
		out = append(out, p.endpoint)
	}
	for _, c := range p.candidates {
		if c != p.endpoint {
			out = append(out, c)
		}
	}
	return out
}

// addCandidateLocked records addr as a candidate, newest first, and
// reports whether it is new.
func addCandidateLocked(p *peer, addr netip.AddrPort) bool {
	if i := slices.Index(p.candidates, addr); i >= 0 {
		copy(p.candidates[1:i+1], p.candidates[:i])
		p.candidates[0] = addr
		return false
	}
	if len(p.candidates) == maxCandidates {
		p.candidates = p.candidates[:maxCandidates-1]
	}
	p.candidates = slices.Insert(p.candidates, 0, addr)
	return true
}

// sendInitiation sends one initiation to every target.
func (m *sessionManager) sendInitiation(to []netip.AddrPort, b []byte) {
	for _, a := range to {
		m.sendRaw(a, b)
	}
}

// setEndpoint records an address where peer may be reached (from the
// rendezvous) and handshakes if there is no live session. A live session's
// address changes only with authenticated packets (roaming), never with
// what the DHT says: an old announcement must not divert a session.
func (m *sessionManager) setEndpoint(peerKey publicKey, addr netip.AddrPort) {
	if !m.cfg.Allowed(peerKey) {
		return // removed while a lookup ran: no session with a non-contact
	}
	now := m.cfg.Now()
	m.mu.Lock()
	p := m.peerLocked(peerKey)
	if p.online && m.usableLocked(p, now) != nil {
		m.mu.Unlock()
		return
	}
	isNew := addCandidateLocked(p, addr)
	if !p.endpoint.IsValid() {
		p.endpoint = addr
	}
	var init []byte
	var to []netip.AddrPort
	switch {
	case p.hs == nil:
		if init = m.maybeInitiateLocked(p, now); init != nil {
			to = initTargetsLocked(p)
		}
	case isNew && p.lastInit != nil:
		init, to = p.lastInit, []netip.AddrPort{addr}
	}
	m.mu.Unlock()
	m.sendInitiation(to, init)
}

// hasSession reports whether peer has a confirmed, unexpired session.
func (m *sessionManager) hasSession(peerKey publicKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[peerKey]
	return p != nil && m.usableLocked(p, m.cfg.Now()) != nil
}

// forget erases everything about peer: a removed contact.
func (m *sessionManager) forget(peerKey publicKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[peerKey]
	if p == nil {
		return
	}
	m.abandonLocked(p)
	m.retireLocked(p.current)
	m.retireLocked(p.previous)
	m.retireLocked(p.next)
	for _, b := range p.queue {
		wipe(b)
	}
	delete(m.peers, peerKey)
}

// run drives the timers until ctx ends, then erases every session: keys are
// never written to disk and do not outlive the process.
