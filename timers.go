// Timers (SPEC.md 4.7): retransmission, rekeying, expiry, keepalives and
// the end of a session.
//
// Flow: run calls sessionTimers.tick every TickInterval (and saves the
// timestamps file when asked, timestamps.go). For each peer, tickPeerLocked
// erases keypairs older than RejectAfterTime and stale cookies, resends a
// pending initiation every RekeyTimeout until RekeyAttemptTime, starts a
// handshake for queued payloads or a session due for rekeying; then tick
// sends keepalives to online peers idle for Keepalive or owing an answer
// to a payload (PassiveKeepalive), and reports peers whose payload stayed
// unanswered for StallTimeout, or silent for DeadAfter, as ended (a
// goodbye, session.go, ends them at once). The sends happen after mu is
// released.
package main

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// run drives the timers and saves the timestamps file until ctx ends,
// then saves it a last time and erases every session: keys are never
// written to disk and do not outlive the process.
func (m *sessionManager) run(ctx context.Context) {
	t := time.NewTicker(m.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.ts.save()
			m.eraseAll()
			return
		case <-t.C:
			m.timers.tick()
		case <-m.ts.dirty:
			m.ts.save()
		}
	}
}

// eraseAll erases every key in memory; the post-quantum secrets stay on
// disk for the next run.
func (m *sessionManager) eraseAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, p := range m.peers {
		p.erase(m.index)
		delete(m.peers, k)
	}
}

// sessionTimers runs the timers of a session manager's peers (the flow
// comment at the top): run calls tick every TickInterval, tests to step
// their clocks. It holds no state: the timers are in each peer.
type sessionTimers struct{ m *sessionManager }

// tick runs the timers once: retransmit or give up pending handshakes,
// rekey busy sessions, erase expired keys.
func (t *sessionTimers) tick() {
	m := t.m
	if m.closed.Load() {
		return // goodbye.say ended everything
	}
	now := m.cfg.Now()
	type out struct {
		to []netip.AddrPort
		b  []byte
	}
	var sends []out
	var pqSends []sessionFrames
	var keepalive, classical []*peer
	var ended, stalled []publicKey
	m.mu.Lock()
	for _, p := range m.peers {
		if b := t.tickPeerLocked(p, now); b != nil {
			sends = append(sends, out{p.addrs.targets(), b})
		}
		frames, fallback := m.pq.tickLocked(p, now)
		if frames != nil {
			pqSends = append(pqSends, sessionFrames{p.keypairs.current, p.addrs.endpoint, frames})
		}
		if fallback {
			classical = append(classical, p)
		}
		if p.timers.online && p.timers.stalled(now, m.cfg.StallTimeout) {
			p.timers.online = false
			stalled = append(stalled, p.key)
		} else if p.checkEnded(now, p.timers.deadAfterOr(m.cfg.DeadAfter)) {
			ended = append(ended, p.key)
		} else if p.timers.online && (now.Sub(p.timers.lastSend) >= p.timers.keepalive(now, m.cfg.Keepalive) || p.timers.owesAnswer(now, m.cfg.PassiveKeepalive)) {
			// A side that has sent nothing to p yet (a responder
			// whose session was just confirmed) is due at once.
			keepalive = append(keepalive, p)
		}
	}
	m.mu.Unlock()
	for _, s := range sends {
		m.sendRaw(s.b, s.to...)
	}
	for _, s := range pqSends {
		for _, f := range s.payloads {
			m.sendTransport(s.kp, s.to, f)
		}
	}
	for _, p := range classical {
		m.cfg.PQEvent(p.key, pqClassical)
		m.sessionReady(p, false)
	}
	for _, p := range keepalive {
		m.flush(p, true)
	}
	for _, k := range stalled {
		m.cfg.Stalled(k)
		m.events.ended(k)
	}
	for _, k := range ended {
		m.events.ended(k)
	}
}

// setPath sets the keepalive and DeadAfter of k's session on the
// path through addr (SPEC.md 5.8.4); zero means the config's. A new
// address starts the path again: its first keepalives come at the
// config's Keepalive, before a firewall's entry for a flow seen one way
// only (30 s in Linux) could expire.
func (t *sessionTimers) setPath(k publicKey, addr netip.AddrPort, every, deadAfter time.Duration) {
	m := t.m
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[k]
	if p == nil {
		return
	}
	if p.timers.path != addr {
		p.timers.path, p.timers.since = addr, m.cfg.Now()
	}
	p.timers.every, p.timers.deadAfter = every, deadAfter
}

// keepalive is how long t's session may stay quiet before a keepalive:
// the path's own interval, once two of the config's have passed since
// the path began.
func (t *peerTimers) keepalive(now time.Time, def time.Duration) time.Duration {
	if t.every <= def || now.Sub(t.since) < 2*def {
		return def
	}
	return t.every
}

// deadAfterOr is the path's DeadAfter, or def.
func (t *peerTimers) deadAfterOr(def time.Duration) time.Duration {
	if t.deadAfter > 0 {
		return t.deadAfter
	}
	return def
}

// stalled reports whether a payload sent after the last authenticated
// packet has stayed unanswered for stallTimeout. The other side answers
// every payload within PassiveKeepalive, so on a working path this does
// not happen: the path broke (a NAT mapping expired or changed) or the
// contact is gone.
func (t *peerTimers) stalled(now time.Time, stallTimeout time.Duration) bool {
	return !t.waitSince.IsZero() && now.Sub(t.waitSince) >= stallTimeout
}

// owesAnswer reports whether a payload that arrived passive ago is still
// unanswered: then a keepalive answers it (WireGuard's passive keepalive),
// so that the sender's stall timer does not fire.
func (t *peerTimers) owesAnswer(now time.Time, passive time.Duration) bool {
	return !t.oweSince.IsZero() && now.Sub(t.oweSince) >= passive
}

// tickPeerLocked runs p's timers and returns an initiation to send, if any.
func (t *sessionTimers) tickPeerLocked(p *peer, now time.Time) []byte {
	m := t.m
	p.keypairs.expire(m.index, now, m.cfg.RejectAfterTime)
	p.cookies.expire(now)
	if p.inits.pending != nil {
		if now.Sub(p.inits.started) >= m.cfg.RekeyAttemptTime {
			p.inits.abandon(m.index)
			p.inits.failed(now, m.cfg.RekeyAttemptTime)
			m.stats.queueDropped.Add(uint64(p.queue.drop()))
			return nil
		}
		if now.Sub(p.inits.lastSent) >= m.cfg.RekeyTimeout {
			return m.initiateLocked(p, now)
		}
		return nil
	}
	if len(p.queue.payloads) > 0 && p.awaitsSession(now, m.cfg.RejectAfterTime) {
		return m.maybeInitiateLocked(p, now)
	}
	// A session in use is rekeyed before it expires, even if only the
	// other side sends: keys older than RejectAfterTime are refused.
	if kp := p.keypairs.current; kp != nil && now.Sub(p.timers.lastSend) < m.cfg.RekeyAfterTime && p.needsRekey(kp, now, &m.cfg) {
		return m.maybeInitiateLocked(p, now)
	}
	return nil
}

// awaitsSession reports whether p has payloads waiting for want of a
// session that may carry them: none is usable, or the usable one is
// classical, a post-quantum PSK exists and the exchange that should have
// led to a post-quantum session did not within pqWait (SPEC.md 4.12).
func (p *peer) awaitsSession(now time.Time, rejectAfterTime time.Duration) bool {
	kp := p.keypairs.usable(now, rejectAfterTime)
	return kp == nil || (!p.mayCarryChat(kp) && p.pq.secrets.n > 0 && now.Sub(kp.created) >= pqWait)
}

// expire erases the keypairs older than rejectAfterTime.
func (k *peerKeypairs) expire(index indexTable, now time.Time, rejectAfterTime time.Duration) {
	for _, kp := range []**keypair{&k.current, &k.previous, &k.next} {
		if *kp != nil && now.Sub((*kp).created) >= rejectAfterTime {
			index.retire(*kp)
			*kp = nil
		}
	}
}

// needsRekey: forward secrecy asks for fresh ephemeral keys after
// RekeyAfterTime or RekeyAfterMessages. The responder waits RekeyTimeout
// longer, so the two sides rarely start at once.
func (p *peer) needsRekey(kp *keypair, now time.Time, cfg *sessionConfig) bool {
	if p.inits.pending != nil {
		return false
	}
	after := cfg.RekeyAfterTime
	if !kp.initiator {
		after += cfg.RekeyTimeout
	}
	return now.Sub(kp.created) >= after || kp.sendCounter.Load() >= cfg.RekeyAfterMessages
}

// checkEnded reports, once, that p's session is over: its keys expired
// without a successor, or it has been silent for deadAfter (keepalives
// make silence mean absence).
func (p *peer) checkEnded(now time.Time, deadAfter time.Duration) bool {
	if !p.timers.online || (p.keypairs.current != nil && now.Sub(p.timers.lastRecv) < deadAfter) {
		return false
	}
	p.timers.online = false
	return true
}

// sessionEvents reports each peer's session state to the layer above
// (sessionConfig.Established and Ended) in the order it changed: mu orders
// the callbacks, and ended re-checks under the manager's mu, so a packet
// that revived the peer after tick decided it had ended wins. Ended carries
// the time of the peer's last authenticated packet, not the time its
// silence was noticed.
type sessionEvents struct {
	m  *sessionManager
	mu sync.Mutex // taken before, never inside, the manager's mu
}

func (e *sessionEvents) established(k publicKey, addr netip.AddrPort) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m.cfg.Established(k, addr)
}

func (e *sessionEvents) ended(k publicKey) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := e.m
	m.mu.Lock()
	p := m.peers[k]
	still := p != nil && !p.timers.online
	var lastSeen time.Time
	if still {
		lastSeen = p.timers.lastRecv
	}
	m.mu.Unlock()
	if still {
		m.cfg.Ended(k, lastSeen)
	}
}
