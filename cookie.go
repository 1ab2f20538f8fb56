// Cookies under load (SPEC.md 4.5).

package main

import (
	"crypto/hmac"
	"encoding/binary"
	"io"
	"net/netip"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

// MACs and cookies (SPEC.md 4.5), as WireGuard: mac1 proves the sender knows
// the receiver's public key; mac2 proves, under load, that it can receive at
// its source address.

// keyedMAC is MAC(key, data...) = keyed BLAKE2s with a 16-byte output.
func keyedMAC(key []byte, data ...[]byte) [macLen]byte {
	h, _ := blake2s.New128(key)
	for _, d := range data {
		h.Write(d)
	}
	var out [macLen]byte
	h.Sum(out[:0])
	return out
}

// mac1Key and cookieKey are derived from the public key of the party that
// receives the message (mac1) or sends the cookie reply (cookie).
func mac1Key(pub publicKey) [32]byte     { return noiseHash([]byte(labelMAC1), pub[:]) }
func cookieKeyOf(pub publicKey) [32]byte { return noiseHash([]byte(labelCookie), pub[:]) }

// addrBytes is the source address as the cookie covers it: the IP (4 or 16
// bytes) then the port, big-endian.
func addrBytes(a netip.AddrPort) []byte {
	ip := a.Addr().Unmap().AsSlice()
	return binary.BigEndian.AppendUint16(ip, a.Port())
}

// checkMACs runs before any DH work: mac1 must be right; under load mac2
// must be too, or the sender gets a cookie reply instead. It reports
// whether to go on.
func (m *sessionManager) checkMACs(from netip.AddrPort, b []byte, offMAC1, offMAC2 int, sender uint32) bool {
	mac1 := keyedMAC(m.mac1Key[:], b[:offMAC1])
	if !hmac.Equal(mac1[:], b[offMAC1:offMAC2]) {
		m.stats.badMAC.Add(1)
		m.debug("bad mac1", from, nil)
		return false
	}
	now := m.cfg.Now()
	m.mu.Lock()
	loaded := m.underLoadLocked(now)
	var cookie [cookieLen]byte
	if loaded {
		cookie = m.cookieLocked(now, from)
	}
	m.mu.Unlock()
	if !loaded {
		return true
	}
	mac2 := keyedMAC(cookie[:], b[:offMAC2])
	if hmac.Equal(mac2[:], b[offMAC2:offMAC2+macLen]) {
		return true
	}
	m.sendCookieReply(from, sender, mac1, cookie)
	return false
}

// underLoadLocked counts a handshake message that passed mac1 and reports
// whether we are under load: more than LoadThreshold in the current second
// puts us under load for the next second.
func (m *sessionManager) underLoadLocked(now time.Time) bool {
	if now.Sub(m.loadStart) >= time.Second || now.Before(m.loadStart) {
		m.loadStart, m.loadCount = now, 0
	}
	m.loadCount++
	if m.loadCount > m.cfg.LoadThreshold {
		m.loadUntil = now.Add(time.Second)
	}
	return now.Before(m.loadUntil)
}

// cookieLocked is MAC(R, source address) with a secret R that changes every
// cookieRefreshTime.
func (m *sessionManager) cookieLocked(now time.Time, from netip.AddrPort) [cookieLen]byte {
	if m.cookieSecretAge.IsZero() || now.Sub(m.cookieSecretAge) >= cookieRefreshTime {
		if _, err := io.ReadFull(m.cfg.Rand, m.cookieSecret[:]); err != nil {
			m.debug("cookie secret", from, err)
		}
		m.cookieSecretAge = now
	}
	return keyedMAC(m.cookieSecret[:], addrBytes(from))
}

func (m *sessionManager) sendCookieReply(to netip.AddrPort, receiver uint32, mac1 [macLen]byte, cookie [cookieLen]byte) {
	r := cookieReplyMsg{receiver: receiver}
	if _, err := io.ReadFull(m.cfg.Rand, r.nonce[:]); err != nil {
		m.debug("cookie nonce", to, err)
		return
	}
	aead, _ := chacha20poly1305.NewX(m.cookieKey[:])
	aead.Seal(r.cookie[:0], r.nonce[:], cookie[:], mac1[:])
	m.stats.cookiesSent.Add(1)
	m.sendRaw(to, r.appendTo(nil))
}

// setMACsLocked fills mac1 (and mac2 if we hold a fresh cookie from p) of
// a handshake message we send to p, and remembers mac1 for a cookie reply.
func (m *sessionManager) setMACsLocked(p *peer, b []byte, offMAC1, offMAC2 int, now time.Time) {
	mac1 := keyedMAC(p.mac1Key[:], b[:offMAC1])
	copy(b[offMAC1:], mac1[:])
	p.lastMAC1, p.hasLastMAC1 = mac1, true
	if p.hasCookie && now.Sub(p.cookieTime) < cookieRefreshTime-m.cfg.RekeyTimeout {
		mac2 := keyedMAC(p.cookie[:], b[:offMAC2])
		copy(b[offMAC2:], mac2[:])
	} else {
		clear(b[offMAC2 : offMAC2+macLen])
	}
}

// handleCookieReply stores the cookie for the next handshake message to
// the peer; it authenticates against the mac1 we last sent it.
func (m *sessionManager) handleCookieReply(from netip.AddrPort, b []byte) {
	msg, err := parseCookieReply(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.index[msg.receiver]
	if !ok || !e.peer.hasLastMAC1 {
		m.stats.unknownIndex.Add(1)
		return
	}
	p := e.peer
	aead, _ := chacha20poly1305.NewX(p.cookieKey[:])
	var cookie [cookieLen]byte
	if _, err := aead.Open(cookie[:0], msg.nonce[:], msg.cookie[:], p.lastMAC1[:]); err != nil {
		m.stats.handshakeFail.Add(1)
		m.debug("cookie reply", from, err)
		return
	}
	p.cookie, p.cookieTime, p.hasCookie = cookie, m.cfg.Now(), true
	p.hasLastMAC1 = false // one cookie reply per message we sent
}

// handleTransport authenticates a transport packet and delivers it. It
