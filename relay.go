// Relaying through a contact (SPEC.md 5.9): when two contacts cannot
// reach each other directly, a contact of both who offers it (-relay)
// carries their session packets, which stay end to end encrypted.
//
// Flow, at A (who wants B) and B: the session layer sends to a relay path
// address (pathAddr: 100::/64, RFC 6666's discard prefix, never on a wire);
// sendPacket wraps what goes there in a "to" frame for B and sends it on
// our session with the relay C. At C, handle checks the frame (C relays,
// both are contacts with live sessions, the rate) and sends it on to B in a
// "from" frame; B's handle hands the packet to its session layer as coming
// from the path address of (C, A), so B's answers go back the same way.
// Offers: a relaying node says so on every new session ("offer" frame).
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Relay frames and limits (SPEC.md 5.9).
const (
	relayFrameTo    = 0x03 // to the relay: forward to dest
	relayFrameFrom  = 0x04 // from the relay: forwarded from src
	relayFrameOffer = 0x05 // the sender relays for its contacts
	relayHeaderLen  = 1 + len(publicKey{})
	maxRelayPacket  = maxTransportPayload - relayHeaderLen // 1135
	// relayChatPayload is the chat's payload limit, so that a chat frame
	// in a transport packet still fits a relay frame (32 bytes of
	// transport header and tag, 33 of relay header): 1103.
	relayChatPayload = maxRelayPacket - transportMinSize
	relayRate        = 100 // packets a second a relay forwards from one contact
	relayBurst       = 200
	maxRelayPaths    = 1024
	relayPathPort    = 1
)

// relayPrefix holds the path addresses: RFC 6666's discard-only prefix,
// which no packet of ours ever goes to.
var relayPrefix = netip.MustParsePrefix("100::/64")

// relayFrame is one parsed relay frame. Packet aliases the input.
type relayFrame struct {
	Type   byte
	Peer   publicKey // to: the destination; from: the source; offer: zero
	Packet []byte    // a session packet (SPEC.md 4.2)
}

var errRelayFrame = errors.New("relay: malformed frame")

// isRelayFrame reports whether a session payload is a relay frame
// rather than a chat frame (SPEC.md 5.3, 5.9).
func isRelayFrame(b []byte) bool {
	return len(b) > 0 && (b[0] == relayFrameTo || b[0] == relayFrameFrom || b[0] == relayFrameOffer)
}

// parseRelayFrame parses a relay frame strictly; no side effects.
func parseRelayFrame(b []byte) (relayFrame, error) {
	switch {
	case len(b) == 1 && b[0] == relayFrameOffer:
		return relayFrame{Type: relayFrameOffer}, nil
	case len(b) == 0 || (b[0] != relayFrameTo && b[0] != relayFrameFrom):
		return relayFrame{}, fmt.Errorf("%w: type or length", errRelayFrame)
	case len(b) <= relayHeaderLen || len(b) > relayHeaderLen+maxRelayPacket:
		return relayFrame{}, fmt.Errorf("%w: %d bytes", errRelayFrame, len(b))
	case !isSessionPacketType(b[relayHeaderLen]):
		return relayFrame{}, fmt.Errorf("%w: packet type %02x", errRelayFrame, b[relayHeaderLen])
	}
	return relayFrame{Type: b[0], Peer: publicKey(b[1:relayHeaderLen]), Packet: b[relayHeaderLen:]}, nil
}

// appendTo appends the frame's wire form, the inverse of parseRelayFrame.
func (f *relayFrame) appendTo(dst []byte) []byte {
	if f.Type == relayFrameOffer {
		return append(dst, f.Type)
	}
	return append(append(append(dst, f.Type), f.Peer[:]...), f.Packet...)
}

// relayConfig is what the relayer needs from the rest of the program.
type relayConfig struct {
	Enabled bool                                       // -relay: we forward for our contacts
	Send    func(peer publicKey, payload []byte) error // a payload on our session with peer
	Deliver func(from netip.AddrPort, packet []byte)   // a packet into our session layer
	Online  func(peer publicKey) bool                  // a contact with a live session
	Contact func(peer publicKey) bool                  // a contact at all
	Now     func() time.Time
	Log     *slog.Logger
}

// relayPath is one way to a contact through a relay.
type relayPath struct{ relay, peer publicKey }

// relayBucket is a token bucket: relayRate a second, at most relayBurst.
type relayBucket struct {
	tokens float64
	at     time.Time
}

// relayer forwards for contacts (if enabled) and keeps our own relayed
// paths. Safe for concurrent use.
type relayer struct {
	cfg relayConfig

	mu      sync.Mutex
	offers  map[publicKey]bool // contacts online with us that relay
	offered map[publicKey]bool // contacts we told that we relay, this session
	paths   []relayPath        // index+1 is the path address's low bits
	buckets map[publicKey]*relayBucket

	forwarded, refused atomic.Uint64
}

func newRelayer(cfg relayConfig) *relayer {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &relayer{cfg: cfg, offers: map[publicKey]bool{}, offered: map[publicKey]bool{}, buckets: map[publicKey]*relayBucket{}}
}

// pathAddr is the address our session layer uses for peer through relay.
func (r *relayer) pathAddr(relay, peer publicKey) netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := relayPath{relay, peer}
	i := 0
	for i < len(r.paths) && r.paths[i] != p {
		i++
	}
	if i == len(r.paths) {
		if len(r.paths) == maxRelayPaths {
			return netip.AddrPort{}
		}
		r.paths = append(r.paths, p)
	}
	a := relayPrefix.Addr().As16()
	a[12], a[13], a[14], a[15] = byte((i+1)>>24), byte((i+1)>>16), byte((i+1)>>8), byte(i+1)
	return netip.AddrPortFrom(netip.AddrFrom16(a), relayPathPort)
}

// path returns the relay path a path address names.
func (r *relayer) path(a netip.AddrPort) (relayPath, bool) {
	if !relayPrefix.Contains(a.Addr()) {
		return relayPath{}, false
	}
	b := a.Addr().As16()
	i := int(b[12])<<24 | int(b[13])<<16 | int(b[14])<<8 | int(b[15]) - 1
	r.mu.Lock()
	defer r.mu.Unlock()
	if i < 0 || i >= len(r.paths) {
		return relayPath{}, false
	}
	return r.paths[i], true
}

// sendPacket is the session layer's Send for path addresses: the packet
// goes to the relay in a "to" frame. handled is false for other addresses.
func (r *relayer) sendPacket(to netip.AddrPort, b []byte) (handled bool, err error) {
	if !relayPrefix.Contains(to.Addr()) {
		return false, nil
	}
	p, ok := r.path(to)
	if !ok {
		return true, fmt.Errorf("relay: no path %v", to)
	}
	f := relayFrame{Type: relayFrameTo, Peer: p.peer, Packet: b}
	return true, r.cfg.Send(p.relay, f.appendTo(make([]byte, 0, relayHeaderLen+len(b))))
}

// handle takes a payload from contact `from` if it is a relay frame, and
// reports whether it was one. Bad or refused frames are dropped silently.
func (r *relayer) handle(from publicKey, b []byte) bool {
	if !isRelayFrame(b) {
		return false
	}
	f, err := parseRelayFrame(b)
	if err != nil {
		r.refused.Add(1)
		r.cfg.Log.Debug("relay: drop", "from", from.String(), "err", err)
		return true
	}
	switch f.Type {
	case relayFrameOffer:
		r.mu.Lock()
		r.offers[from] = true
		r.mu.Unlock()
	case relayFrameTo:
		r.forward(from, f)
	case relayFrameFrom:
		// Only a contact's packets make a path: the table stays as small
		// as the contacts, whatever a relay sends.
		if !r.cfg.Contact(f.Peer) {
			r.refused.Add(1)
			return true
		}
		r.cfg.Deliver(r.pathAddr(from, f.Peer), f.Packet)
	}
	return true
}

// forward relays a "to" frame from src: only if we relay, between two
// distinct contacts with live sessions, within src's rate.
func (r *relayer) forward(src publicKey, f relayFrame) {
	switch {
	case !r.cfg.Enabled:
		r.refused.Add(1)
		return
	case f.Peer == src || !r.cfg.Online(f.Peer) || !r.allow(src):
		r.refused.Add(1)
		r.cfg.Log.Debug("relay: refused", "from", src.String(), "to", f.Peer.String())
		return
	}
	out := relayFrame{Type: relayFrameFrom, Peer: src, Packet: f.Packet}
	if err := r.cfg.Send(f.Peer, out.appendTo(make([]byte, 0, relayHeaderLen+len(f.Packet)))); err == nil {
		r.forwarded.Add(1)
	}
}

// allow takes a token from src's bucket.
func (r *relayer) allow(src publicKey) bool {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[src]
	if b == nil {
		b = &relayBucket{tokens: relayBurst, at: now}
		r.buckets[src] = b
	}
	b.tokens = min(relayBurst, b.tokens+now.Sub(b.at).Seconds()*relayRate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// online is told of every new session (and rekey): a relaying node offers
// itself once per session.
func (r *relayer) online(k publicKey) {
	r.mu.Lock()
	tell := r.cfg.Enabled && !r.offered[k]
	r.offered[k] = true
	r.mu.Unlock()
	if tell {
		if err := r.cfg.Send(k, []byte{relayFrameOffer}); err != nil {
			r.cfg.Log.Debug("relay: offer", "to", k.String(), "err", err)
		}
	}
}

// offline forgets what k's session said and was told.
func (r *relayer) offline(k publicKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.offers, k)
	delete(r.offered, k)
	delete(r.buckets, k)
}

// relays lists the contacts online with us that relay.
func (r *relayer) relays() []publicKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]publicKey, 0, len(r.offers))
	for k := range r.offers {
		out = append(out, k)
	}
	return out
}
