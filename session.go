// The session manager (SPEC.md 4.2, 4.6-4.8): dispatch, simultaneous open,
// rotation and sending; what it holds per peer is in peer.go.
//
// Flow: Node hands every session packet to handlePacket, which dispatches
// on the type. An initiation whose tag, mac1 and stamp name a contact
// (pairkeys.go) and that passes the cookie checker (cookie.go) and the Noise
// message (handshake.go) is answered; its keypair waits as "next" until the
// initiator's first packet confirms it (only then does the endpoint move).
// A response makes our initiation's keypair current at once. Transport
// packets are opened on the keypair their index names and delivered, but
// for the session layer's own: the goodbye ends the peer's sessions,
// post-quantum frames go to pq.go. send seals on a current keypair that may
// carry payloads (SPEC.md 4.12), or queues and starts a handshake; timers.go
// resends, rekeys and expires. goodbye.say says goodbye on every session.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Default timers, as WireGuard's (SPEC.md 4.7). sessionConfig fields of the
// same names override them (tests shorten them).
const (
	defaultRekeyAfterTime     = 120 * time.Second
	defaultRejectAfterTime    = 180 * time.Second
	defaultRekeyTimeout       = 5 * time.Second
	defaultRekeyAttemptTime   = 90 * time.Second
	maxInitiationQuiet        = 30 * time.Minute // the longest wait after abandoned handshakes (peerInitiations.failed)
	defaultRekeyAfterMessages = uint64(1) << 60
	defaultLoadThreshold      = 64 // handshake messages per second before cookies
	defaultTickInterval       = 250 * time.Millisecond
	defaultKeepalive          = 25 * time.Second // keeps NAT mappings open; shows presence
	defaultDeadAfter          = 3*defaultKeepalive + 5*time.Second
	keepaliveNoNAT            = 55 * time.Second // on a path with no NAT (SPEC.md 5.8.4): two within conntrack's 120 s for a flow seen both ways
	deadAfterNoNAT            = 3*keepaliveNoNAT + 5*time.Second
	maxCandidates             = 4 // addresses tried at once while there is no session
	cookieRefreshTime         = 120 * time.Second
	maxQueuedPerPeer          = 128
	defaultPassiveKeepalive   = 10 * time.Second // a payload received is answered within this
	defaultStallTimeout       = 15 * time.Second // a payload sent unanswered this long: the path broke
)

// The session layer's own payload (SPEC.md 4.6): a transport payload whose
// first byte is sessionControl is never handed to the chat layer, whose
// frames start with 01 or 02. The goodbye is that byte alone.
const (
	sessionControl = 0x00
	goodbyeLen     = 1 // the goodbye's plaintext: sessionControl alone
	goodbyeCopies  = 2 // one lost datagram must not leave the contact waiting DeadAfter
)

type sessionConfig struct {
	Identity    *identity
	Dir         string                           // holds the timestamps file; "" keeps timestamps in memory only
	Timestamps  map[publicKey][timestampLen]byte // from loadTimestamps; taken as contacts are added
	Send        func(to netip.AddrPort, b []byte) error
	Deliver     func(peer publicKey, from netip.AddrPort, plaintext []byte) // every authenticated payload, keepalives (empty) included; valid only during call
	Established func(peer publicKey, addr netip.AddrPort)                   // a new session (also after rekey/roam: addr may differ)
	Ended       func(peer publicKey, lastSeen time.Time)                    // the peer said goodbye, its session expired or it fell silent for DeadAfter; lastSeen is its last authenticated packet
	PQEvent     func(peer publicKey, e pqEvent)                             // the user should know: a classical session, a refused PSK (SPEC.md 4.12)
	PQ          *pqStore                                                    // where post-quantum secrets are kept; nil: in memory only
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

	// Stalled, optional, is told that a session is about to end because a
	// payload sent on it stayed unanswered for StallTimeout (Ended follows).
	Stalled          func(peer publicKey)
	StallTimeout     time.Duration
	PassiveKeepalive time.Duration // a payload received and nothing sent since: a keepalive
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
	setDur(&c.StallTimeout, defaultStallTimeout)
	setDur(&c.PassiveKeepalive, defaultPassiveKeepalive)
	if c.RekeyAfterMessages == 0 {
		c.RekeyAfterMessages = defaultRekeyAfterMessages
	}
	if c.LoadThreshold == 0 {
		c.LoadThreshold = defaultLoadThreshold
	}
	defaultNowRandLog(&c.Now, &c.Rand, &c.Log)
	if c.Deliver == nil {
		c.Deliver = func(publicKey, netip.AddrPort, []byte) {}
	}
	if c.Established == nil {
		c.Established = func(publicKey, netip.AddrPort) {}
	}
	if c.Ended == nil {
		c.Ended = func(publicKey, time.Time) {}
	}
	if c.PQEvent == nil {
		c.PQEvent = func(publicKey, pqEvent) {}
	}
	if c.Stalled == nil {
		c.Stalled = func(publicKey) {}
	}
}

// sessionStats counts what the session layer dropped and why; every drop
// is silent on the wire.
type sessionStats struct {
	malformed     atomic.Uint64 // not exactly well-formed
	stranger      atomic.Uint64 // initiation whose tag names no contact: dropped before any MAC
	badMAC        atomic.Uint64 // mac1 wrong: dropped before any DH
	cookiesSent   atomic.Uint64
	handshakeFail atomic.Uint64 // did not authenticate
	staleInit     atomic.Uint64 // replayed, older or mistimed timestamp: dropped before any DH
	simultaneous  atomic.Uint64 // initiation dropped by the simultaneous-open rule
	unknownIndex  atomic.Uint64
	authFail      atomic.Uint64 // transport packet did not authenticate
	replayed      atomic.Uint64
	expired       atomic.Uint64
	queueDropped  atomic.Uint64
	delivered     atomic.Uint64
	goodbyes      atomic.Uint64 // goodbyes received
	controlDrops  atomic.Uint64 // session-layer payloads other than the goodbye
}

// countDrop counts an initiation dropped before any DH, by why.
func (s *sessionStats) countDrop(err error) {
	switch {
	case errors.Is(err, errStranger):
		s.stranger.Add(1)
	case errors.Is(err, errBadMAC1):
		s.badMAC.Add(1)
	default:
		s.staleInit.Add(1)
	}
}

// pending returns the peer whose pending initiation index names, or nil.
func (t indexTable) pending(index uint32) *peer {
	e, ok := t[index]
	if !ok || e.kp != nil || e.peer.inits.pending == nil || e.peer.inits.pending.localIndex != index {
		return nil
	}
	return e.peer
}

// indexEntry is what a receiver index names: our pending initiation, or a keypair.
type indexEntry struct {
	peer *peer
	kp   *keypair // nil for a pending handshake
}

// indexTable maps the receiver indices we chose to what they name.
// Guarded by the manager's mu.
type indexTable map[uint32]indexEntry

// add picks a random unused receiver index for e.
func (t indexTable) add(rand io.Reader, e indexEntry) (uint32, error) {
	var b [indexLen]byte
	for range 16 {
		if _, err := io.ReadFull(rand, b[:]); err != nil {
			return 0, fmt.Errorf("session: index: %w", err)
		}
		i := binary.LittleEndian.Uint32(b[:])
		if _, used := t[i]; !used {
			t[i] = e
			return i, nil
		}
	}
	return 0, errors.New("session: no free index")
}

// retire forgets a keypair and erases its keys.
func (t indexTable) retire(kp *keypair) {
	if kp == nil {
		return
	}
	if e, ok := t[kp.localIndex]; ok && e.kp == kp {
		delete(t, kp.localIndex)
	}
	kp.wipe()
}

type sessionManager struct {
	cfg     sessionConfig
	pub     publicKey
	cookies cookieLayer // SPEC.md 4.5 (cookie.go)
	pq      *pqLayer
	dh      dhCounter
	stats   sessionStats
	bufs    sync.Pool // *[]byte of maxDatagram bytes: zero allocations per packet
	debugOn bool
	ts      *timestampStore // the greatest timestamp accepted from each contact

	timers  sessionTimers // SPEC.md 4.7 (timers.go)
	goodbye goodbyes      // SPEC.md 4.6
	events  sessionEvents // orders the Established and Ended callbacks (timers.go)
	mu      sync.Mutex
	peers   map[publicKey]*peer // the contacts, and only them
	index   indexTable
	tags    tagTable
	closed  atomic.Bool // set under mu by goodbye.say: no packet, send or timer does anything after it
}

func newSessionManager(cfg sessionConfig) *sessionManager {
	cfg.setDefaults()
	m := &sessionManager{cfg: cfg, peers: map[publicKey]*peer{}, index: indexTable{}}
	m.timers.m, m.events.m, m.goodbye.m = m, m, m
	m.ts = newTimestampStore(cfg.Dir, cfg.Timestamps, cfg.Log)
	m.pub = cfg.Identity.public()
	m.cookies = cookieLayer{m: m, checker: newCookieChecker(cfg.LoadThreshold, cfg.Rand)}
	m.bufs.New = func() any { b := make([]byte, maxDatagram); return &b }
	m.debugOn = cfg.Log.Enabled(context.Background(), slog.LevelDebug)
	m.pq = &pqLayer{m: m, store: cfg.PQ}
	if cfg.PQ != nil {
		// The records wait for addContact: only contacts have peers.
		m.pq.unclaimed = map[publicKey]pqRecord{}
		for _, r := range cfg.PQ.loaded {
			m.pq.unclaimed[r.key] = r
		}
		cfg.PQ.loaded = nil
	}
	return m
}

// debug logs a drop; the log is quiet unless debugging. Building the log
// arguments allocates, so on the transport path it is skipped unless
// debug logging is on.
func (m *sessionManager) debug(msg string, from netip.AddrPort, err error) {
	if m.debugOn {
		m.cfg.Log.Debug("session: "+msg, "from", from, "err", err)
	}
}

// addContact lets k in: only a contact's handshake messages are answered.
// It derives the pair keys from the static-static secret (one DH, once)
// and enters k's tags. Adding a contact twice changes nothing.
func (m *sessionManager) addContact(k publicKey) error {
	secret, err := m.cfg.Identity.staticSecret(k)
	if err != nil {
		return fmt.Errorf("session: contact: %w", err)
	}
	keys := derivePairKeys(&secret, m.pub, k)
	wipe(secret[:])
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.peers[k] != nil {
		keys.wipe()
		return nil
	}
	p := &peer{key: k, keys: keys}
	m.ts.add(k)
	m.pq.claimLocked(p)
	m.peers[k] = p
	if !m.tags.refresh(m.cfg.Now(), m.peers) {
		m.tags.add(p)
	}
	return nil
}

// handlePacket is Node.onSession: b is valid only during the call.
func (m *sessionManager) handlePacket(from netip.AddrPort, b []byte) {
	if m.closed.Load() {
		return
	}
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
		m.cookies.handleReply(from, b)
	case packetTransport:
		m.handleTransport(from, b)
	default:
		m.stats.malformed.Add(1)
	}
}

// sendRaw sends b to each address in to.
func (m *sessionManager) sendRaw(b []byte, to ...netip.AddrPort) {
	for _, a := range to {
		if err := m.cfg.Send(a, b); err != nil {
			m.debug("send", a, err)
		}
	}
}

// handleInitiation: parse; tag, mac1 and stamp (a stranger or a replay
// ends there, before any DH); under load mac2; then the Noise message,
// which must carry the static key of the contact the tag named and the
// timestamp of the stamp; then the simultaneous-open rule and the reply.
func (m *sessionManager) handleInitiation(from netip.AddrPort, b []byte) {
	msg, err := parseInitiation(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	m.mu.Lock()
	m.tags.refresh(m.cfg.Now(), m.peers)
	id, err := m.tags.identify(b, &msg)
	m.mu.Unlock()
	if err == nil && !m.ts.newer(id.peer.key, id.ts) {
		err = errStaleInit
	}
	if err != nil {
		m.stats.countDrop(err)
		m.debug("initiation", from, err)
		return
	}
	if !m.cookies.admit(from, b, initiationOffMAC2, msg.sender, id.mac1, id.peer) {
		return
	}
	h := &handshake{}
	if err := h.consumeInitiation(m.cfg.Identity, &msg, &m.dh); err != nil {
		m.stats.handshakeFail.Add(1)
		m.debug("initiation", from, err)
		return
	}
	if h.peer != id.peer.key || h.timestamp != id.ts {
		// Only the contact itself can make mac1, so this is the contact
		// misbehaving; drop it all the same.
		h.erase()
		m.stats.handshakeFail.Add(1)
		m.debug("initiation: static key or timestamp differs from tag and stamp", from, nil)
		return
	}
	reply, err := m.replyToInitiation(from, h, id.peer)
	if err != nil {
		h.erase()
		m.debug("initiation", from, err)
		return
	}
	m.sendRaw(reply, from)
}

// replyToInitiation applies the per-peer rules to an authenticated
// initiation from p and returns the packet to send back to from. That is
// our response, except when the simultaneous-open rule keeps our own
// pending initiation and the peer has moved: then it is that initiation,
// built afresh for the new address. The endpoint does not move here: only
// a packet that confirms the keys (4.6) moves it, so a replayed
// initiation could not divert the session even if it got this far.
func (m *sessionManager) replyToInitiation(from netip.AddrPort, h *handshake, p *peer) ([]byte, error) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return nil, errSessionsClosed
	}
	if m.peers[p.key] != p {
		return nil, errors.New("session: initiation from a removed contact")
	}
	// Record the timestamp before anything else uses the initiation, so
	// that even one we drop below cannot be replayed; the store keeps it
	// on disk so that a restart does not forget it.
	if !m.ts.accept(p.key, h.timestamp) {
		m.stats.staleInit.Add(1) // a copy raced the original through the DH
		return nil, errStaleInit
	}
	if !p.yields(m.pub, now, m.cfg.RekeyTimeout) {
		m.stats.simultaneous.Add(1)
		h.erase()
		if p.inits.pending != nil && p.addrs.endpoint != from {
			// The initiation authenticated, so from is where the peer
			// is now: aim our own pending initiation there at once
			// rather than keep sending to an old address. It is a
			// candidate; the response from it makes it the endpoint.
			p.addrs.addCandidate(from)
			if init := m.initiateLocked(p, now); init != nil {
				return init, nil
			}
		}
		if p.inits.pending != nil && p.inits.packet != nil {
			// Ours went there and may have met a stateful firewall
			// before the peer's initiation opened it: send it again
			// now (a copy that did arrive is refused by its timestamp).
			return p.inits.packet, nil
		}
		return nil, errors.New("session: simultaneous open, keeping ours")
	}
	p.inits.abandon(m.index)
	local, err := m.index.add(m.cfg.Rand, indexEntry{peer: p})
	if err != nil {
		return nil, err
	}
	psk := p.pq.secrets.forResponse(p.keypairs.next != nil)
	defer wipe(psk[:])
	resp, err := h.createResponse(local, m.cfg.Rand, psk)
	if err != nil {
		delete(m.index, local)
		return nil, err
	}
	send, recv, hash, err := h.beginSession()
	if err != nil {
		delete(m.index, local)
		return nil, err
	}
	kp := newKeypair(send, recv, local, h.remoteIndex, false, now)
	kp.psk, kp.hash = psk, hash // committed once the initiator's first packet confirms it
	m.index[local] = indexEntry{peer: p, kp: kp}
	m.index.retire(p.keypairs.next)
	p.keypairs.next = kp
	out := resp.appendTo(make([]byte, 0, responseSize))
	p.cookies.addMACs(out, responseOffMAC1, responseOffMAC2, &p.keys.send.mac1, now, m.cfg.RekeyTimeout)
	return out, nil
}

// handleResponse completes our initiation.
func (m *sessionManager) handleResponse(from netip.AddrPort, b []byte) {
	msg, err := parseResponse(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	// Before any DH: the index must name a pending initiation of ours (a
	// stranger cannot know it) and mac1 must be right under that
	// contact's key.
	m.mu.Lock()
	p := m.index.pending(msg.receiver)
	var mac1 [macLen]byte
	ok := p != nil
	if ok {
		mac1, ok = checkMAC1(&p.keys.recv.mac1, b, responseOffMAC1)
	}
	m.mu.Unlock()
	switch {
	case p == nil:
		m.stats.unknownIndex.Add(1)
		return
	case !ok:
		m.stats.badMAC.Add(1)
		m.debug("response", from, errBadMAC1)
		return
	case !m.cookies.admit(from, b, responseOffMAC2, msg.sender, mac1, p):
		return
	}
	p, out, err := m.completeHandshake(from, &msg)
	m.sendRaw(out.resend, out.targets...)
	if out.refused {
		m.cfg.PQEvent(p.key, pqRefused)
	}
	if err != nil {
		m.debug("response", from, err)
		return
	}
	m.sessionReady(p, true)
	for _, f := range out.frames.payloads {
		m.sendTransport(out.frames.kp, out.frames.to, f)
	}
}

// sessionFrames are payloads to send on one session.
type sessionFrames struct {
	kp       *keypair
	to       netip.AddrPort
	payloads [][]byte
}

// handshakeOut is what completeHandshake leaves to send once mu is free.
type handshakeOut struct {
	frames  sessionFrames    // the new session's post-quantum key
	resend  []byte           // or a new initiation at once, to targets
	targets []netip.AddrPort // where resend goes
	refused bool             // the user is to hear of a refused PSK
}

// completeHandshake takes a response to our pending initiation: the PSK the
// responder used is found by trial (SPEC.md 4.12), the new session becomes
// current, and its post-quantum exchange starts.
func (m *sessionManager) completeHandshake(from netip.AddrPort, msg *responseMsg) (*peer, handshakeOut, error) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return nil, handshakeOut{}, errSessionsClosed
	}
	p := m.index.pending(msg.receiver)
	if p == nil {
		m.stats.unknownIndex.Add(1)
		return nil, handshakeOut{}, errors.New("session: response to no pending handshake")
	}
	h := p.inits.pending
	psks := p.pq.secrets.candidates()
	defer wipeKeys(psks)
	accept := len(psks)
	if p.pq.secrets.used {
		psks = append(psks, zeroPSK) // only to tell a refusal from a forgery
	}
	which, err := h.consumeResponse(msg, psks, accept)
	if errors.Is(err, errPSKRefused) {
		m.pq.stats.refused.Add(1)
		report := !p.pq.refused
		p.pq.refused = true
		return p, handshakeOut{refused: report}, err
	}
	if err != nil {
		m.stats.handshakeFail.Add(1)
		var out handshakeOut
		if !p.pq.secrets.retried {
			// Opened with none of our PSKs: the responder may hold a newer
			// one we never got (SPEC.md 4.12), and its next response takes
			// an older one, so initiate again at once rather than after
			// RekeyTimeout; once, lest forged responses set the pace.
			p.pq.secrets.retried = true
			out.resend, out.targets = m.initiateLocked(p, now), p.addrs.targets()
		}
		return p, out, err
	}
	send, recv, hash, err := h.beginSession()
	if err != nil {
		return nil, handshakeOut{}, err
	}
	kp := newKeypair(send, recv, h.localIndex, msg.sender, true, now)
	kp.psk, kp.hash = psks[which], hash
	p.pq.secrets.commit(kp.psk)
	m.index[kp.localIndex] = indexEntry{peer: p, kp: kp}
	p.inits.pending, p.inits.started = nil, time.Time{}
	p.keypairs.rotate(m.index, kp)
	p.dropExchange()
	p.addrs.endpoint = from
	p.markLive(now)
	var frames [][]byte
	if p.exchangeDue(kp, now) {
		frames = m.pq.startLocked(p, kp, now)
	}
	if frames != nil {
		p.timers.lastSend = now
	}
	return p, handshakeOut{frames: sessionFrames{kp, from, frames}}, nil
}

// handleTransport authenticates a transport packet and delivers it. It
// allocates nothing unless the packet confirms a new session or roams.
func (m *sessionManager) handleTransport(from netip.AddrPort, b []byte) {
	msg, err := parseTransport(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	e, ok := m.index[msg.receiver]
	m.mu.Unlock()
	if !ok || e.kp == nil {
		m.stats.unknownIndex.Add(1)
		m.debug("transport for an unknown index", from, nil)
		return
	}
	if now.Sub(e.kp.created) >= m.cfg.RejectAfterTime {
		m.stats.expired.Add(1)
		m.debug("transport on expired keys", from, nil)
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
		m.debug("transport", from, err)
		return
	}
	if len(pt) > 0 && pt[0] == sessionControl {
		m.handleControl(e.peer, e.kp, from, pt, now)
		return
	}
	if m.confirm(e.peer, e.kp, from) {
		m.sessionReady(e.peer, false)
	}
	if len(pt) > 0 {
		m.mu.Lock()
		if e.peer.timers.oweSince.IsZero() {
			e.peer.timers.oweSince = now
		}
		e.peer.pq.carried = true
		m.mu.Unlock()
		m.stats.delivered.Add(1)
	}
	m.cfg.Deliver(e.peer.key, from, pt)
}

// handleControl takes an authenticated session-layer payload from p on kp:
// the goodbye, or a post-quantum frame (which, like a payload, confirms the
// session); any other is dropped (a later version's).
func (m *sessionManager) handleControl(p *peer, kp *keypair, from netip.AddrPort, pt []byte, now time.Time) {
	if len(pt) > 1 && (pt[1] == pqKeyFragment || pt[1] == pqCiphertext) {
		if m.confirm(p, kp, from) {
			m.sessionReady(p, false)
		}
		m.pq.handle(p, kp, pt, now)
		return
	}
	if len(pt) != goodbyeLen {
		m.stats.controlDrops.Add(1)
		return
	}
	m.goodbye.receive(p, now)
}

// confirm runs after a packet authenticated on kp: a responder's new
// keypair becomes current, and a new source address becomes the endpoint.
// It reports whether the peer's session or address changed.
func (m *sessionManager) confirm(p *peer, kp *keypair, from netip.AddrPort) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	if p.keypairs.next == kp {
		p.keypairs.rotate(m.index, kp)
		p.pq.secrets.commit(kp.psk)
		p.dropExchange()
		changed = true
	}
	if kp == p.keypairs.current && p.addrs.endpoint != from {
		p.addrs.endpoint = from
		changed = true
	}
	if !p.timers.online {
		changed = true
	}
	p.markLive(m.cfg.Now())
	return changed
}

// sessionReady runs when p's current session is new, confirmed or has
// moved: if it may carry the layer above's payloads (SPEC.md 4.12), the
// layer above hears of it and what was queued goes out.
func (m *sessionManager) sessionReady(p *peer, keepalive bool) {
	m.mu.Lock()
	ready, to := p.mayCarryChat(p.keypairs.current), p.addrs.endpoint
	m.mu.Unlock()
	if ready {
		m.events.established(p.key, to)
	}
	m.flush(p, keepalive)
}

// flush sends the payloads queued for p on its current session, if that
// may carry them. An initiator that sends nothing else sends an empty
// keepalive, which confirms the session to the responder (the responder
// may not send before that).
func (m *sessionManager) flush(p *peer, keepalive bool) {
	m.mu.Lock()
	kp, to := p.keypairs.current, p.addrs.endpoint
	if kp == nil {
		m.mu.Unlock()
		return // the queue waits for the next session
	}
	var q [][]byte
	if p.mayCarryChat(kp) {
		q = p.queue.take() // else it waits for a post-quantum session
	}
	if len(q) > 0 || keepalive {
		p.timers.sent(m.cfg.Now(), len(q) > 0)
	}
	p.pq.carried = p.pq.carried || len(q) > 0
	m.mu.Unlock()
	if len(q) == 0 && keepalive {
		m.sendTransport(kp, to, nil)
	}
	for _, b := range q {
		m.sendTransport(kp, to, b)
		wipe(b)
	}
}

// sendTransport seals payload for kp into a pooled buffer and sends it.
func (m *sessionManager) sendTransport(kp *keypair, to netip.AddrPort, payload []byte) error {
	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	pkt, err := kp.seal(*bp, payload)
	if err != nil {
		return err
	}
	return m.cfg.Send(to, pkt)
}

var (
	errPayloadTooBig  = fmt.Errorf("session: payload larger than %d bytes", maxTransportPayload)
	errNoEndpoint     = errors.New("session: no address known for this contact")
	errSessionsClosed = errors.New("session: closed: the program is stopping")
)

// send encrypts payload for peerKey on the current session, or queues it
// and starts a handshake.
func (m *sessionManager) send(peerKey publicKey, payload []byte) error {
	if len(payload) > maxTransportPayload {
		return errPayloadTooBig
	}
	now := m.cfg.Now()
	m.mu.Lock()
	if m.closed.Load() {
		m.mu.Unlock()
		return errSessionsClosed
	}
	p := m.peers[peerKey]
	if p == nil || (!p.addrs.endpoint.IsValid() && p.keypairs.current == nil && p.keypairs.next == nil) {
		// With only a next keypair (we answered the peer, whose
		// address becomes the endpoint when it confirms), the payload
		// waits in the queue for that confirmation.
		m.mu.Unlock()
		return errNoEndpoint
	}
	kp, to := p.keypairs.usable(now, m.cfg.RejectAfterTime), p.addrs.endpoint
	var init []byte
	switch {
	case !p.mayCarryChat(kp):
		if p.queue.push(payload) {
			m.stats.queueDropped.Add(1)
		}
		p.pq.carried = p.pq.carried || len(payload) > 0
		// A classical session whose exchange is under way: the payload
		// waits for the post-quantum session that follows (timers.go
		// starts one if it does not come).
		if kp == nil {
			init = m.maybeInitiateLocked(p, now)
		}
		kp = nil
	default:
		p.timers.sent(now, len(payload) > 0)
		p.pq.carried = p.pq.carried || len(payload) > 0
		if p.needsRekey(kp, now, &m.cfg) {
			init = m.maybeInitiateLocked(p, now)
		}
	}
	var targets []netip.AddrPort
	if init != nil {
		targets = p.addrs.targets()
	}
	m.mu.Unlock()
	m.sendRaw(init, targets...)
	if kp != nil {
		return m.sendTransport(kp, to, payload)
	}
	return nil
}

// maybeInitiateLocked starts a handshake unless one is pending, or we
// answered p's initiation recently and wait for its first packet.
func (m *sessionManager) maybeInitiateLocked(p *peer, now time.Time) []byte {
	if p.inits.pending != nil || !p.addrs.endpoint.IsValid() || now.Before(p.inits.quietUntil) {
		return nil
	}
	if next := p.keypairs.next; next != nil && now.Sub(next.created) < m.cfg.RekeyTimeout {
		return nil
	}
	p.inits.started = now
	return m.initiateLocked(p, now)
}

// initiateLocked builds a fresh initiation (new ephemeral key, index and
// timestamp) to p, replacing any pending one.
func (m *sessionManager) initiateLocked(p *peer, now time.Time) []byte {
	p.inits.erasePending(m.index)
	idx, err := m.index.add(m.cfg.Rand, indexEntry{peer: p})
	if err != nil {
		m.debug("initiate", p.addrs.endpoint, err)
		return nil
	}
	h := &handshake{}
	ts := nextTimestamp(now, p.inits.sentTS)
	msg, err := h.createInitiation(m.cfg.Identity, p.key, idx, ts, m.cfg.Rand, &m.dh)
	if err != nil {
		delete(m.index, idx)
		m.debug("initiate", p.addrs.endpoint, err)
		return nil
	}
	p.inits.sentTS = ts
	p.inits.pending, p.inits.lastSent = h, now
	if p.inits.started.IsZero() {
		p.inits.started = now
	}
	p.keys.send.sealOuter(&msg, ts)
	out := msg.appendTo(make([]byte, 0, initiationSize))
	p.cookies.addMACs(out, initiationOffMAC1, initiationOffMAC2, &p.keys.send.mac1, now, m.cfg.RekeyTimeout)
	p.inits.packet = out
	return out
}

// setEndpoint records an address where peer may be reached (from the
// rendezvous) and handshakes if there is no live session. A live session's
// address changes only with authenticated packets (roaming), never with
// what the DHT says: an old announcement must not divert a session.
func (m *sessionManager) setEndpoint(peerKey publicKey, addr netip.AddrPort) {
	now := m.cfg.Now()
	m.mu.Lock()
	if m.closed.Load() {
		m.mu.Unlock()
		return
	}
	p := m.peers[peerKey]
	if p == nil {
		m.mu.Unlock()
		return // removed while a lookup ran: no session with a non-contact
	}
	if p.timers.online && p.keypairs.usable(now, m.cfg.RejectAfterTime) != nil {
		m.mu.Unlock()
		return
	}
	isNew := p.addrs.addCandidate(addr)
	if !p.addrs.endpoint.IsValid() {
		p.addrs.endpoint = addr
	}
	var init []byte
	var to []netip.AddrPort
	switch {
	case p.inits.pending == nil:
		p.inits.quietUntil = time.Time{} // an address is news: try at once
		if init = m.maybeInitiateLocked(p, now); init != nil {
			to = p.addrs.targets()
		}
	case isNew && p.inits.packet != nil:
		// A handshake is under way: the new candidate gets the same
		// initiation at once, not only at the next resend.
		init, to = p.inits.packet, []netip.AddrPort{addr}
	}
	m.mu.Unlock()
	m.sendRaw(init, to...)
}

// forgetPath erases peer's keys, its pending handshake and its addresses,
// and keeps its queue: nothing goes to peer until setEndpoint gives an
// address again. The puncher calls it when a path through a NAT ended,
// where packets to the old address would only refresh stale NAT state.
func (m *sessionManager) forgetPath(peerKey publicKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[peerKey]
	if p == nil {
		return
	}
	p.inits.abandon(m.index)
	p.keypairs.retireAll(m.index)
	p.keypairs, p.addrs, p.inits.packet = peerKeypairs{}, peerAddrs{}, nil
	p.dropExchange() // it ran on a keypair just erased
}

// forget erases everything about peer, its post-quantum secrets on disk
// included: a removed contact. Its tags go at once, so from now on it is a
// stranger: its packets draw nothing.
func (m *sessionManager) forget(peerKey publicKey) { m.pq.forget(peerKey) }

// forgetLocked is the part of forget under mu.
func (m *sessionManager) forgetLocked(p *peer) {
	m.tags.remove(p)
	p.erase(m.index)
	p.keys.wipe()
	delete(m.peers, p.key)
	m.ts.drop(p.key)
}

// goodbyes sends and takes the goodbye (SPEC.md 4.6), the session layer's
// way to say a peer's sessions end now rather than after DeadAfter.
type goodbyes struct{ m *sessionManager }

// say ends every session for a clean exit. Each live session gets
// the goodbye, goodbyeCopies times, so the contact shows us offline at once
// instead of after DeadAfter; then every key is erased, and the manager
// stays closed: no packet is answered, no send or timer starts a handshake,
// so the stopping program does not bring back the sessions it just ended.
// The socket must still be open.
func (g *goodbyes) say() {
	m := g.m
	type bye struct {
		kp *keypair
		to netip.AddrPort
	}
	var byes []bye
	goodbye := []byte{sessionControl}
	now := m.cfg.Now()
	m.mu.Lock()
	m.closed.Store(true)
	for _, p := range m.peers {
		if kp := p.keypairs.usable(now, m.cfg.RejectAfterTime); kp != nil && p.addrs.endpoint.IsValid() {
			byes = append(byes, bye{kp, p.addrs.endpoint})
		}
	}
	m.mu.Unlock()
	for _, b := range byes {
		for range goodbyeCopies {
			if err := m.sendTransport(b.kp, b.to, goodbye); err != nil {
				m.debug("goodbye", b.to, err)
			}
		}
	}
	m.eraseAll()
}

// receive takes p's goodbye, authenticated at now: p's sessions end.
func (g *goodbyes) receive(p *peer, now time.Time) {
	m := g.m
	m.stats.goodbyes.Add(1)
	m.mu.Lock()
	if m.peers[p.key] != p {
		m.mu.Unlock()
		return // forgotten meanwhile
	}
	// The goodbye is the peer's last packet: it is gone, and so are the
	// keys of every session with it. Our next send to it starts a new
	// handshake; what is queued stays queued.
	p.timers.lastRecv = now
	p.keypairs.retireAll(m.index)
	p.dropExchange()
	p.inits.abandon(m.index)
	wasOnline := p.timers.online
	p.timers.online = false
	m.mu.Unlock()
	if wasOnline {
		m.events.ended(p.key)
	}
}
