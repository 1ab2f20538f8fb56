// Timers (SPEC.md 4.7).

package main

import (
	"context"
	"net/netip"
	"time"
)

func (m *sessionManager) run(ctx context.Context) {
	t := time.NewTicker(m.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.eraseAll()
			return
		case <-t.C:
			m.tick()
		}
	}
}

func (m *sessionManager) eraseAll() {
	m.mu.Lock()
	keys := make([]publicKey, 0, len(m.peers))
	for k := range m.peers {
		keys = append(keys, k)
	}
	m.mu.Unlock()
	for _, k := range keys {
		m.forget(k)
	}
}

// tick runs the timers once: retransmit or give up pending handshakes,
// rekey busy sessions, erase expired keys.
func (m *sessionManager) tick() {
	now := m.cfg.Now()
	type out struct {
		to []netip.AddrPort
		b  []byte
	}
	var sends []out
	var keepalive []*peer
	var ended []publicKey
	m.mu.Lock()
	for _, p := range m.peers {
		if b := m.tickPeerLocked(p, now); b != nil {
			sends = append(sends, out{initTargetsLocked(p), b})
		}
		if m.endedLocked(p, now) {
			ended = append(ended, p.key)
		} else if p.online && now.Sub(p.lastSend) >= m.cfg.Keepalive {
			keepalive = append(keepalive, p)
		}
	}
	m.mu.Unlock()
	for _, s := range sends {
		m.sendInitiation(s.to, s.b)
	}
	for _, p := range keepalive {
		m.flush(p, true)
	}
	for _, k := range ended {
		m.ended(k)
	}
}

// established and ended report a peer's session state in the order it
// changed: evMu orders the callbacks, and ended re-checks under mu, so a
// packet that revived the peer after tick decided it had ended wins.
func (m *sessionManager) established(k publicKey, addr netip.AddrPort) {
	m.evMu.Lock()
	defer m.evMu.Unlock()
	m.cfg.Established(k, addr)
}

func (m *sessionManager) ended(k publicKey) {
	m.evMu.Lock()
	defer m.evMu.Unlock()
	m.mu.Lock()
	p := m.peers[k]
	still := p != nil && !p.online
	m.mu.Unlock()
	if still {
		m.cfg.Ended(k)
	}
}

// endedLocked reports, once, that p's session is over: its keys expired
// without a successor, or it has been silent for DeadAfter (keepalives
// make silence mean absence).
func (m *sessionManager) endedLocked(p *peer, now time.Time) bool {
	if !p.online || (p.current != nil && now.Sub(p.lastRecv) < m.cfg.DeadAfter) {
		return false
	}
	p.online = false
	return true
}

func (m *sessionManager) tickPeerLocked(p *peer, now time.Time) []byte {
	for _, kp := range []**keypair{&p.current, &p.previous, &p.next} {
		if *kp != nil && now.Sub((*kp).created) >= m.cfg.RejectAfterTime {
			m.retireLocked(*kp)
			*kp = nil
		}
	}
	if p.hasCookie && now.Sub(p.cookieTime) >= cookieRefreshTime {
		wipe(p.cookie[:])
		p.hasCookie = false
	}
	if p.hs != nil {
		if now.Sub(p.hsStarted) >= m.cfg.RekeyAttemptTime {
			m.abandonLocked(p)
			for _, b := range p.queue {
				wipe(b)
			}
			m.stats.queueDropped.Add(uint64(len(p.queue)))
			p.queue = nil
			return nil
		}
		if now.Sub(p.hsLastSent) >= m.cfg.RekeyTimeout {
			return m.initiateLocked(p, now)
		}
		return nil
	}
	if len(p.queue) > 0 && m.usableLocked(p, now) == nil {
		return m.maybeInitiateLocked(p, now)
	}
	// A session in use is rekeyed before it expires, even if only the
	// other side sends: keys older than RejectAfterTime are refused.
	if kp := p.current; kp != nil && now.Sub(p.lastSend) < m.cfg.RekeyAfterTime && m.needsRekeyLocked(p, kp, now) {
		return m.maybeInitiateLocked(p, now)
	}
	return nil
}
