// Cookies under load (SPEC.md 4.5), as WireGuard's device/cookie.go, with
// pairwise keys.
//
// Flow, receiving: a handshake message whose mac1 proved it comes from a
// contact (pairkeys.go: strangers never get this far) is counted by the
// cookieChecker; under load mac2 must carry the cookie of the source
// address, or the sender gets a cookie reply, sealed with the pair's cookie
// key, instead of any Diffie-Hellman work. Sending: each peer's
// cookieGenerator puts mac1 (and, with a fresh cookie from that peer, mac2)
// on the handshake messages we send it, and takes the cookie out of a
// cookie reply to the last of them.
package main

import (
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

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

// addrBytes is the source address as the cookie covers it: the IP (4 or 16
// bytes) then the port, big-endian.
func addrBytes(a netip.AddrPort) []byte {
	ip := a.Addr().Unmap().AsSlice()
	return binary.BigEndian.AppendUint16(ip, a.Port())
}

// cookieChecker counts the handshake messages contacts send us and makes
// the cookies and cookie replies for them. It is safe for concurrent use.
type cookieChecker struct {
	threshold int // mac1-valid handshake messages per second before load
	rand      io.Reader

	mu        sync.Mutex
	secret    [32]byte // R
	secretAge time.Time
	loadStart time.Time // start of the current one-second window
	loadCount int
	loadUntil time.Time
}

func newCookieChecker(threshold int, rand io.Reader) *cookieChecker {
	return &cookieChecker{threshold: threshold, rand: rand}
}

// underLoad counts a handshake message that passed mac1 (so it comes from
// a contact, or is a copy of a contact's message) and reports
// whether we are under load: more than threshold of them in the current
// one-second window puts us under load for the next second. The window
// starts at the first message counted after the previous one ended. Under
// load it also returns the cookie of from; err reports a failure to renew
// the secret R, which is then used as it is.
func (c *cookieChecker) underLoad(now time.Time, from netip.AddrPort) (cookie [cookieLen]byte, loaded bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.loadStart) >= time.Second || now.Before(c.loadStart) {
		c.loadStart, c.loadCount = now, 0
	}
	c.loadCount++
	if c.loadCount > c.threshold {
		c.loadUntil = now.Add(time.Second)
	}
	if !now.Before(c.loadUntil) {
		return cookie, false, nil
	}
	// The cookie is MAC(R, source address) with a secret R that changes
	// every cookieRefreshTime.
	if c.secretAge.IsZero() || now.Sub(c.secretAge) >= cookieRefreshTime {
		_, err = io.ReadFull(c.rand, c.secret[:])
		c.secretAge = now
	}
	return keyedMAC(c.secret[:], addrBytes(from)), true, err
}

// checkMAC1 reports whether b's mac1 field (at off) is right under key, the
// sender's mac1 key of the pair, and returns the mac1 a cookie reply would
// be bound to.
func checkMAC1(key *[noiseHashLen]byte, b []byte, off int) ([macLen]byte, bool) {
	mac1 := keyedMAC(key[:], b[:off])
	return mac1, hmac.Equal(mac1[:], b[off:off+macLen])
}

// checkMAC2 reports whether b's mac2 field (at offMAC2) carries cookie.
func checkMAC2(cookie [cookieLen]byte, b []byte, offMAC2 int) bool {
	mac2 := keyedMAC(cookie[:], b[:offMAC2])
	return hmac.Equal(mac2[:], b[offMAC2:offMAC2+macLen])
}

// createReply seals cookie for the sender of the message with index
// receiver, bound to that message's mac1, under the cookie key of our
// direction of the pair.
func (c *cookieChecker) createReply(key *[noiseHashLen]byte, receiver uint32, mac1 [macLen]byte, cookie [cookieLen]byte) (cookieReplyMsg, error) {
	r := cookieReplyMsg{receiver: receiver}
	if _, err := io.ReadFull(c.rand, r.nonce[:]); err != nil {
		return cookieReplyMsg{}, err
	}
	aead, _ := chacha20poly1305.NewX(key[:])
	aead.Seal(r.cookie[:0], r.nonce[:], cookie[:], mac1[:])
	return r, nil
}

// cookieGenerator is the sending side towards one peer: it fills the MACs
// of the handshake messages we send the peer and keeps the cookie the peer
// last gave us. The keys are the peer's pairKeys. Guarded by the manager's
// mu.
type cookieGenerator struct {
	lastMAC1    [macLen]byte // of the last handshake message we sent it
	hasLastMAC1 bool
	cookie      [cookieLen]byte
	cookieTime  time.Time
	hasCookie   bool
}

// Errors of consumeReply; the caller counts them apart.
var (
	errCookieUnexpected = errors.New("session: cookie reply to no message we sent")
	errCookieDecrypt    = errors.New("session: cookie reply did not authenticate")
)

// addMACs fills mac1 of a handshake message b we send, under our mac1 key
// of the pair, and mac2 if we hold a cookie younger than cookieRefreshTime
// - rekeyTimeout (so it cannot expire in flight), and remembers mac1 for a
// cookie reply.
func (g *cookieGenerator) addMACs(b []byte, offMAC1, offMAC2 int, key *[noiseHashLen]byte, now time.Time, rekeyTimeout time.Duration) {
	mac1 := keyedMAC(key[:], b[:offMAC1])
	copy(b[offMAC1:], mac1[:])
	g.lastMAC1, g.hasLastMAC1 = mac1, true
	if g.hasCookie && now.Sub(g.cookieTime) < cookieRefreshTime-rekeyTimeout {
		mac2 := keyedMAC(g.cookie[:], b[:offMAC2])
		copy(b[offMAC2:], mac2[:])
	} else {
		clear(b[offMAC2 : offMAC2+macLen])
	}
}

// consumeReply stores the cookie of a reply that authenticates, under the
// peer's cookie key of the pair, against the mac1 we last sent; one cookie
// reply per message we sent.
func (g *cookieGenerator) consumeReply(msg *cookieReplyMsg, key *[noiseHashLen]byte, now time.Time) error {
	if !g.hasLastMAC1 {
		return errCookieUnexpected
	}
	aead, _ := chacha20poly1305.NewX(key[:])
	var cookie [cookieLen]byte
	if _, err := aead.Open(cookie[:0], msg.nonce[:], msg.cookie[:], g.lastMAC1[:]); err != nil {
		return errCookieDecrypt
	}
	g.cookie, g.cookieTime, g.hasCookie = cookie, now, true
	g.hasLastMAC1 = false
	return nil
}

// expire erases a cookie older than cookieRefreshTime.
func (g *cookieGenerator) expire(now time.Time) {
	if g.hasCookie && now.Sub(g.cookieTime) >= cookieRefreshTime {
		wipe(g.cookie[:])
		g.hasCookie = false
	}
}

// cookieLayer runs SPEC.md 4.5 for a session manager, as pqLayer runs
// 4.12: admit lets a contact's handshake message through, or under load
// answers it with a cookie reply; handleReply takes the cookie of a reply
// to ours for the next handshake message we send.
type cookieLayer struct {
	m       *sessionManager
	checker *cookieChecker
}

// admit counts a handshake message from contact p whose mac1 was right,
// before any DH work; under load its mac2 must be right too, or the sender
// gets a cookie reply instead. It reports whether to go on.
func (l *cookieLayer) admit(from netip.AddrPort, b []byte, offMAC2 int, sender uint32, mac1 [macLen]byte, p *peer) bool {
	m := l.m
	cookie, loaded, err := l.checker.underLoad(m.cfg.Now(), from)
	if err != nil {
		m.debug("cookie secret", from, err)
	}
	if !loaded || checkMAC2(cookie, b, offMAC2) {
		return true
	}
	m.mu.Lock()
	key, current := p.keys.send.cookie, m.peers[p.key] == p
	m.mu.Unlock()
	if !current {
		return false // removed meanwhile: a stranger now
	}
	r, err := l.checker.createReply(&key, sender, mac1, cookie)
	wipe(key[:])
	if err != nil {
		m.debug("cookie nonce", from, err)
		return false
	}
	m.stats.cookiesSent.Add(1)
	m.sendRaw(r.appendTo(nil), from)
	return false
}

// handleReply stores the cookie for the next handshake message to
// the peer; it authenticates against the mac1 we last sent it.
func (l *cookieLayer) handleReply(from netip.AddrPort, b []byte) {
	m := l.m
	msg, err := parseCookieReply(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.index[msg.receiver]
	if !ok {
		m.stats.unknownIndex.Add(1)
		return
	}
	switch err := e.peer.cookies.consumeReply(&msg, &e.peer.keys.recv.cookie, m.cfg.Now()); {
	case errors.Is(err, errCookieUnexpected):
		m.stats.unknownIndex.Add(1)
	case err != nil:
		m.stats.handshakeFail.Add(1)
		m.debug("cookie reply", from, err)
	}
}
