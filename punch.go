// Hole punching (SPEC.md 5.8.3, 5.8.4): per contact, the endpoint records
// exchanged through the DHT and the opening packets that let each NAT pass
// the other side's first packets.
//
// Flow: the rendezvous (rendezvous.go) reports each announce (announced: our
// record is due too) and each lookup with what it found (lookedUp, found:
// the contact's record is due). tick, every punchTick, starts the due DHT
// writes and reads (at most maxPunchOps at once) and steps every contact. A
// contact's record gives addresses the session may try at once (IPv6, the
// same LAN, a public side); an address behind a NAT first gets opening
// packets, and reaches the session only once the contact's record says it
// has opened toward us too. A punch that fails, or a session that stalls on
// such a path, makes us quiet toward the contact until both NATs forgot it.
package main

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/binary"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Punch timers and limits (SPEC.md 5.8.5).
const (
	defaultPunchTTL = 2 // crosses a home router, dies at the next hop
	punchTick       = 100 * time.Millisecond
	punchPoll       = 250 * time.Millisecond // between reads of a contact's record while punching
	punchPeriod     = 30 * time.Second       // how long reads stay that frequent
	punchReopen     = 10 * time.Second       // opening packets again, to hold our mapping
	punchTimeout    = 10 * time.Second       // both opened, no session yet: the punch failed
	punchQuiet      = 35 * time.Second       // silence toward the contact after a failure
	recordWait      = 20 * time.Second       // no record of a contact found this long: try without
	recordMaxAge    = 40 * time.Minute       // older records are ignored; a writer rewrites with each announce (25 min), clocks 10 min apart
	recordIdle      = 2 * time.Minute        // a record this old, read again unchanged: its writer is not punching now
	recheckMin      = 90 * time.Second       // the first gap between re-reads of an offline contact's record
	recheckMax      = 5 * time.Minute        // the gap doubles up to this
	recordRewrite   = 20 * time.Minute       // an epoch's record, unchanged, is not written again sooner
	idleReadMaxGap  = 4 * time.Second        // the longest gap between reads that find nothing new
	punchOpTimeout  = 10 * time.Second
	v6OpenLead      = 200 * time.Millisecond // an IPv6 firewall opened this long before our initiation
	maxPunchOps     = 4
	maxFound        = 8 // rendezvous addresses kept per contact
)

// A writer's record, rewritten every announceInterval, stays usable to a
// reader whose clock is rendezvousSkew ahead (a negative constant does not
// convert to uint).
const _ = uint(recordMaxAge - announceInterval - rendezvousSkew)

// punchConfig is what the puncher needs from the rest of the program.
type punchConfig struct {
	Self         publicKey
	StaticSecret func(peer publicKey) ([32]byte, error)
	Put          func(ctx context.Context, seed [32]byte, seq int64, v []byte) error // a BEP 44 mutable put, no salt
	// Get reads a record (BEP 44 mutable, no salt): while punching, polled
	// often (watcher.poll); with check, a re-read of a contact who is likely
	// away (watcher.mutable, a check).
	Get     func(ctx context.Context, key [32]byte, check bool) (seq int64, v []byte, err error)
	Open    func(to netip.AddrPort, ttl int) error    // one opening packet
	Connect func(peer publicKey, addr netip.AddrPort) // the session tries addr
	Forget  func(peer publicKey)                      // the session forgets the peer's path
	Local   func() localView
	// Optional: our contacts online with us that relay (SPEC.md 5.9), and
	// the session address of a path to peer through one of them.
	Relays func() []publicKey
	Via    func(relay, peer publicKey) netip.AddrPort
	TTL    int // of opening packets; zero: defaultPunchTTL
	Now    func() time.Time
	Rand   io.Reader
	Log    *slog.Logger
}

// punchPeer is one contact's punching state. Guarded by the puncher's mu.
type punchPeer struct {
	nonce  uint64 // ours toward this contact, for this attempt
	opened uint64 // the contact's nonce we sent opening packets for

	rec    endpointRecord // the contact's latest record
	recSeq int64          // its seq (Unix ms); 0: none
	secret *[32]byte      // the pair's static secret, once needed (relay tags)

	found   []netip.AddrPort // rendezvous addresses since the last session
	foundAt time.Time        // first of them
	began   time.Time        // the attempt's start
	idleGap time.Duration    // the gap after a read that found nothing new; doubles
	tried   []netip.AddrPort // handed to the session in this attempt
	pre6    []netip.AddrPort // IPv6 addresses opened toward, this attempt
	pre6At  time.Time        // when the last of them was

	online, gatedPath, stalled bool
	handedAt, nextOpen         time.Time
	quietUntil                 time.Time
	pollUntil, nextPoll        time.Time
	nextCheck                  time.Time     // the next re-read while not polling
	checkGap                   time.Duration // the gap after it; doubles up to recheckMax

	reading, writing, dirty bool
	wrote                   []byte               // the record last written, to see changes
	epochRec                []byte               // the record of the writes in epochAt
	epochAt                 map[uint64]time.Time // when each epoch last got epochRec
	lastSeq                 int64
	writeFails              int
	nextWrite               time.Time
}

// puncher runs hole punching for every contact. Safe for concurrent use;
// it calls the session layer (Connect, Forget) without its lock held.
type puncher struct {
	cfg punchConfig

	mu    sync.Mutex
	peers map[publicKey]*punchPeer

	sem chan struct{}
	wg  sync.WaitGroup
}

func newPuncher(cfg punchConfig) *puncher {
	if cfg.TTL == 0 {
		cfg.TTL = defaultPunchTTL
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = cryptorand.Reader
	}
	return &puncher{cfg: cfg, peers: map[publicKey]*punchPeer{}, sem: make(chan struct{}, maxPunchOps)}
}

// peerLocked returns k's state, making it (with a first nonce) if new.
func (s *puncher) peerLocked(k publicKey, now time.Time) *punchPeer {
	p := s.peers[k]
	if p == nil {
		p = &punchPeer{}
		s.newAttemptLocked(p, now)
		p.recheckFrom(now)
		s.peers[k] = p
	}
	return p
}

// newAttemptLocked starts a new attempt: a new nonce, nothing opened or
// tried, our record due and the contact's read at once.
func (s *puncher) newAttemptLocked(p *punchPeer, now time.Time) {
	// The nonce only has to differ between attempts: the record that
	// carries it is sealed for the contact.
	var b [8]byte
	_, err := io.ReadFull(s.cfg.Rand, b[:])
	p.nonce = binary.BigEndian.Uint64(b[:])
	if err != nil {
		p.nonce = uint64(now.UnixNano())
	}
	p.nonce = max(p.nonce, 1)
	p.opened, p.handedAt, p.tried, p.pre6, p.dirty = 0, time.Time{}, nil, nil, true
	p.began, p.idleGap = now, punchPoll
	p.pollUntil, p.nextPoll = now.Add(punchPeriod), now
}

// announced: the rendezvous announced us to k, and our record goes out
// with it (the same schedule).
func (s *puncher) announced(k publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peerLocked(k, s.cfg.Now()).dirty = true
}

// lookedUp: a rendezvous lookup of k ended with found. Its record is read
// now: if the lookup found a gated address (one the punch must open) not
// found before (since the last session), often for punchPeriod; else
// once, as a re-read (a check). The same stale announce, found again by
// each lookup, does not start the frequent reads again.
func (s *puncher) lookedUp(k publicKey, found []netip.AddrPort) {
	now := s.cfg.Now()
	v := s.cfg.Local()
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.peerLocked(k, now)
	if p.online {
		return
	}
	newAddr := false
	for _, a := range found {
		if !slices.Contains(p.found, a) && len(p.found) < maxFound {
			if len(p.found) == 0 {
				p.foundAt = now
			}
			p.found = append(p.found, a)
			// Only an address behind a NAT needs the punch; the session
			// tries any other at once (found).
			newAddr = newAddr || s.gatedLocked(p, a, &v)
		}
	}
	p.nextPoll = now
	if newAddr {
		p.pollUntil, p.idleGap = now.Add(punchPeriod), punchPoll
	} else if p.pollUntil.Before(now) {
		p.nextCheck = now // one re-read (a check): nothing new was found
	}
}

// found is the rendezvous' SetEndpoint: an address of k goes to the session
// at once unless it lies behind a NAT we must open first.
func (s *puncher) found(k publicKey, addr netip.AddrPort) {
	v := s.cfg.Local()
	s.mu.Lock()
	p := s.peerLocked(k, s.cfg.Now())
	gated := s.gatedLocked(p, addr, &v)
	s.mu.Unlock()
	if !gated {
		s.cfg.Connect(k, addr)
	}
}

// gatedLocked reports whether addr needs the punch: an IPv4 address beyond
// our network (a NAT may sit in front of it) while neither side is known
// to be public. Sending there unasked can break the contact's NAT for the
// very flow we need (SPEC.md 5.8.3).
func (s *puncher) gatedLocked(p *punchPeer, addr netip.AddrPort, v *localView) bool {
	ip := addr.Addr().Unmap()
	return ip.Is4() && !isExemptBEP42(ip) && v.Behaviour != natPublic &&
		!(p.fresh(s.cfg.Now()) && p.rec.public())
}

// online: a session with k is up at addr; the attempt is over. It
// returns the path's keepalive and DeadAfter for the session (pathTimers).
func (s *puncher) online(k publicKey, addr netip.AddrPort) (every, deadAfter time.Duration) {
	v := s.cfg.Local()
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.peerLocked(k, s.cfg.Now())
	p.online, p.stalled = true, false
	p.gatedPath = s.gatedLocked(p, addr, &v)
	p.found, p.tried, p.handedAt = nil, nil, time.Time{}
	return pathTimers(p, addr, &v)
}

// pathTimers chooses a session's keepalive and DeadAfter (SPEC.md 5.8.4),
// zero meaning the session's default. The default (25 s) wherever a NAT
// may sit on the path; keepaliveNoNAT only when both sides are public (we
// are, by what DHT nodes report; the contact is, by the last record we
// read of it) and the path is direct IPv4. DeadAfter must fit the
// keepalive the contact chooses from its own view, which may be older
// than ours (our record it read before we moved, or none yet): 80 s only
// when the contact's record says it is behind a NAT, so that it keeps
// 25 s whatever it knows of us; else the longer one.
func pathTimers(p *punchPeer, addr netip.AddrPort, v *localView) (every, deadAfter time.Duration) {
	known := p.recSeq != 0 // however old: no record is read while online
	switch {
	case known && !p.rec.public():
		return 0, 0
	case v.Behaviour != natPublic:
		return 0, deadAfterNoNAT
	case known && addr.Addr().Unmap().Is4():
		return keepaliveNoNAT, deadAfterNoNAT
	}
	return 0, deadAfterNoNAT
}

// stalled: k's session is about to end because it stopped answering
// (SPEC.md 4.7); offline follows.
func (s *puncher) stalled(k publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.peers[k]; p != nil {
		p.stalled = true
	}
}

// offline: k's session ended. A path through a NAT is forgotten, so the
// session sends nothing more to an address whose mapping may be gone; after
// a stall we also stay quiet, since our packets may be what broke it.
func (s *puncher) offline(k publicKey) {
	now := s.cfg.Now()
	s.mu.Lock()
	p := s.peerLocked(k, now)
	forget := p.online && p.gatedPath
	p.online = false
	s.newAttemptLocked(p, now)
	p.recheckFrom(now)
	if forget && p.stalled {
		s.quietLocked(p, now)
	}
	p.stalled = false
	s.mu.Unlock()
	if forget {
		s.cfg.Forget(k)
	}
	s.cfg.Log.Debug("punch: offline", "peer", k.String(), "forget", forget)
}

// quietLocked silences us toward p for punchQuiet and starts a new attempt
// after it. Half-open NAT state made by our earlier packets expires once
// nothing refreshes it (30 s in Linux conntrack).
func (s *puncher) quietLocked(p *punchPeer, now time.Time) {
	s.newAttemptLocked(p, now)
	p.quietUntil = now.Add(punchQuiet)
	p.pollUntil = p.quietUntil.Add(punchPeriod)
}

// forget drops a removed contact.
func (s *puncher) forget(k publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.peers[k]; p != nil && p.secret != nil {
		wipe(p.secret[:])
	}
	delete(s.peers, k)
}

// relayTagsLocked are the tags of our relaying contacts (but k) for k's
// pair, and the relays they name (SPEC.md 5.9), at most maxRelayHints.
func (s *puncher) relayTagsLocked(k publicKey, p *punchPeer) ([]uint64, []publicKey) {
	if s.cfg.Relays == nil {
		return nil, nil
	}
	relays := s.cfg.Relays()
	if len(relays) == 0 {
		return nil, nil
	}
	if p.secret == nil {
		secret, err := s.cfg.StaticSecret(k)
		if err != nil {
			return nil, nil
		}
		p.secret = &secret
	}
	slices.SortFunc(relays, func(a, b publicKey) int { return bytes.Compare(a[:], b[:]) })
	var tags []uint64
	var named []publicKey
	for _, r := range relays {
		if r != k && len(tags) < maxRelayHints {
			tags, named = append(tags, relayTag(*p.secret, r)), append(named, r)
		}
	}
	return tags, named
}

// viaRelaysLocked are the paths to k through relays its record names
// that are online with us too.
func (s *puncher) viaRelaysLocked(k publicKey, p *punchPeer) []netip.AddrPort {
	tags, relays := s.relayTagsLocked(k, p)
	var out []netip.AddrPort
	for i, tag := range tags {
		if slices.Contains(p.rec.Relays, tag) && s.cfg.Via != nil {
			if a := s.cfg.Via(relays[i], k); a.IsValid() {
				out = append(out, a)
			}
		}
	}
	return out
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// fresh reports whether p's record may be used: written within
// recordMaxAge, and not from further in the future than clocks may differ.
func (p *punchPeer) fresh(now time.Time) bool {
	t := time.UnixMilli(p.recSeq)
	return p.recSeq != 0 && now.Sub(t) <= recordMaxAge && t.Sub(now) <= rendezvousSkew
}

// readDue reports whether the contact's record is to be read now: every
// punchPoll while an attempt is under way (pollUntil), else at the
// re-reads (check) that find a contact who came online while we back off
// (rendezvous.go does no lookups of its own by then).
func (p *punchPeer) readDue(now time.Time) (due, check bool) {
	if now.Before(p.pollUntil) {
		return !now.Before(p.nextPoll), false
	}
	if now.Before(p.nextCheck) {
		return false, false
	}
	p.nextCheck, p.checkGap = now.Add(p.checkGap), min(2*p.checkGap, recheckMax)
	return true, true
}

// recheckFrom starts the re-reads again at recheckMin from now (start,
// add, the end of a session).
func (p *punchPeer) recheckFrom(now time.Time) {
	p.nextCheck, p.checkGap = now.Add(recheckMin), 2*recheckMin
}

// once returns the addresses of as not yet handed to the session in this
// attempt, and records them as handed.
func (p *punchPeer) once(as ...netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range as {
		if !slices.Contains(p.tried, a) {
			p.tried = append(p.tried, a)
			out = append(out, a)
		}
	}
	return out
}

// run ticks until ctx ends, then waits for its DHT operations.
func (s *puncher) run(ctx context.Context) error {
	t := time.NewTicker(punchTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.wg.Wait()
			s.mu.Lock()
			for _, p := range s.peers { // the pairs' secrets do not outlive us
				if p.secret != nil {
					wipe(p.secret[:])
				}
			}
			s.mu.Unlock()
			return nil
		case <-t.C:
			s.tick(ctx)
		}
	}
}

// punchActions is what one step decided to send.
type punchActions struct {
	key     publicKey
	open    []netip.AddrPort // opening packets
	connect []netip.AddrPort // handed to the session
	forget  bool             // the session forgets the path first
}

// tick steps every contact and starts the due DHT operations.
func (s *puncher) tick(ctx context.Context) {
	now := s.cfg.Now()
	v := s.cfg.Local()
	var acts []punchActions
	var reads, checks, writes []publicKey
	s.mu.Lock()
	for k, p := range s.peers {
		if a := s.stepLocked(k, p, now, &v); a.open != nil || a.connect != nil || a.forget {
			a.key = k
			acts = append(acts, a)
		}
		if p.online || p.reading {
			// no read
		} else if due, check := p.readDue(now); due {
			p.reading, p.nextPoll = true, now.Add(punchPoll)
			if check {
				checks = append(checks, k)
			} else {
				reads = append(reads, k)
			}
		}
		rec := s.recordLocked(k, p, &v)
		if !bytes.Equal(rec, p.wrote) {
			p.dirty = true
		}
		if !p.online && p.dirty && !p.writing && !now.Before(p.nextWrite) {
			p.writing, p.dirty, p.wrote = true, false, rec
			writes = append(writes, k)
		}
	}
	s.mu.Unlock()
	for _, a := range acts {
		s.apply(a)
	}
	for _, k := range reads {
		s.wg.Add(1)
		go s.read(ctx, k, false)
	}
	for _, k := range checks {
		s.wg.Add(1)
		go s.read(ctx, k, true)
	}
	for _, k := range writes {
		s.wg.Add(1)
		go s.write(ctx, k)
	}
}

// stepLocked decides what p's state calls for now (SPEC.md 5.8.3).
func (s *puncher) stepLocked(k publicKey, p *punchPeer, now time.Time, v *localView) (a punchActions) {
	if p.online {
		return a
	}
	fresh := p.fresh(now)
	if fresh {
		a.open, a.connect = p.directLocked(directTargets(&p.rec, v), now)
	}
	if now.Before(p.quietUntil) {
		return a
	}
	if !fresh {
		if len(p.found) > 0 && now.Sub(p.foundAt) >= recordWait {
			// No record to read: the contact may not write one. Try what
			// the rendezvous found, as a node without records would.
			a.connect = p.once(p.found...)
		}
		return a
	}
	punch := punchTargets(&p.rec, p.found, v)
	if len(punch) == 0 {
		return a
	}
	if p.opened != p.rec.Nonce {
		p.opened, p.dirty, p.nextOpen, p.handedAt = p.rec.Nonce, true, now, time.Time{}
	}
	if !now.Before(p.nextOpen) {
		a.open, p.nextOpen = append(a.open, punch...), now.Add(punchReopen)
	}
	switch {
	case p.rec.Ack == p.nonce && p.handedAt.IsZero():
		p.handedAt = now
		a.connect = append(a.connect, p.once(punch...)...)
	case !p.handedAt.IsZero() && now.Sub(p.handedAt) >= punchTimeout:
		// Failed: quiet toward k's NAT, and try the relays we share.
		s.quietLocked(p, now)
		a.forget = true
		a.open, a.connect = nil, p.once(s.viaRelaysLocked(k, p)...)
	}
	return a
}

// directLocked splits the direct targets: an IPv6 address first gets an
// opening packet, and reaches the session v6OpenLead later. Two stateful
// firewalls would otherwise drop both sides' first initiations when they
// cross, and the session's resend comes only after RekeyTimeout (5 s);
// an opening packet lets the other side's initiation in, whenever it comes.
func (p *punchPeer) directLocked(targets []netip.AddrPort, now time.Time) (open, connect []netip.AddrPort) {
	var ready []netip.AddrPort
	for _, t := range targets {
		switch {
		case !t.Addr().Is6() || slices.Contains(p.pre6, t) && now.Sub(p.pre6At) >= v6OpenLead:
			ready = append(ready, t)
		case !slices.Contains(p.pre6, t):
			p.pre6, p.pre6At = append(p.pre6, t), now
			open = append(open, t)
		}
	}
	return open, p.once(ready...)
}

// directTargets are the contact's candidates the session may try at once:
// IPv6 addresses (a firewall without NAT drops what it did not ask for and
// keeps no state of it); LAN addresses, when the contact is on our network
// or behind our own NAT; and every IPv4 address when either side is public.
func directTargets(r *endpointRecord, v *localView) []netip.AddrPort {
	sameNAT := behindOurNAT(r, v)
	public := r.public() || v.Behaviour == natPublic
	var out []netip.AddrPort
	for _, c := range r.Cands {
		ip := c.Addr.Addr()
		switch {
		case v.isOwn(ip) && c.Addr.Port() == v.Port:
		case ip.Is6(), public && !isExemptBEP42(ip):
			out = append(out, c.Addr)
		case isExemptBEP42(ip) && (sameNAT || v.onLink(ip) || v.isOwn(ip)):
			out = append(out, c.Addr)
		}
	}
	return out
}

// behindOurNAT reports whether the contact's NAT is ours: its reflexive
// IPv4 address is our external one. Most routers do not send a packet for
// their own outside address back in (no hairpin): the LAN is the way.
func behindOurNAT(r *endpointRecord, v *localView) bool {
	return v.External.Addr().Is4() && slices.ContainsFunc(r.Cands, func(c endpointCandidate) bool {
		return c.Kind == endpointCandReflexive && c.Addr.Addr() == v.External.Addr()
	})
}

// punchTargets are the IPv4 addresses behind the contact's NAT: its
// reflexive candidates, or what the rendezvous found when the record has
// none yet. None when a side is public: directTargets has them.
func punchTargets(r *endpointRecord, found []netip.AddrPort, v *localView) []netip.AddrPort {
	if r.public() || v.Behaviour == natPublic || behindOurNAT(r, v) {
		return nil
	}
	var out []netip.AddrPort
	for _, c := range r.Cands {
		if ip := c.Addr.Addr(); c.Kind == endpointCandReflexive && ip.Is4() && !isExemptBEP42(ip) {
			out = append(out, c.Addr)
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, a := range found {
		if ip := a.Addr().Unmap(); ip.Is4() && !isExemptBEP42(ip) {
			out = append(out, netip.AddrPortFrom(ip, a.Port()))
		}
	}
	return out
}

// apply sends what a step decided, outside the lock.
func (s *puncher) apply(a punchActions) {
	if a.forget {
		s.cfg.Forget(a.key)
		s.cfg.Log.Debug("punch: failed, quiet", "peer", a.key.String(), "for", punchQuiet)
	}
	for _, to := range a.open {
		if err := s.cfg.Open(to, s.cfg.TTL); err != nil {
			s.cfg.Log.Debug("punch: open", "to", to, "err", err)
		}
	}
	if len(a.open) > 0 {
		s.cfg.Log.Debug("punch: opened", "peer", a.key.String(), "to", a.open, "ttl", s.cfg.TTL)
	}
	for _, to := range a.connect {
		s.cfg.Connect(a.key, to)
	}
	if len(a.connect) > 0 {
		s.cfg.Log.Debug("punch: connect", "peer", a.key.String(), "to", a.connect)
	}
}

// recordLocked is our record for k as it stands, encoded.
func (s *puncher) recordLocked(k publicKey, p *punchPeer, v *localView) []byte {
	r := endpointRecord{Nonce: p.nonce, Ack: p.opened, Cands: v.candidates()}
	r.Relays, _ = s.relayTagsLocked(k, p)
	if v.Behaviour == natRandomising {
		r.Flags |= endpointFlagRandom
	}
	return r.appendTo(nil)
}

// write puts our record for k in every current epoch.
func (s *puncher) write(ctx context.Context, k publicKey) {
	defer s.wg.Done()
	ok := false
	defer func() { s.wrote(k, ok) }()
	if !s.acquire(ctx) {
		return
	}
	defer func() { <-s.sem }()
	secret, err := s.cfg.StaticSecret(k)
	if err != nil {
		return
	}
	now := s.cfg.Now()
	s.mu.Lock()
	p := s.peers[k]
	if p == nil {
		s.mu.Unlock()
		return
	}
	rec := p.wrote
	seq := max(p.lastSeq+1, now.UnixMilli())
	p.lastSeq = seq
	if !bytes.Equal(rec, p.epochRec) {
		p.epochRec, p.epochAt = rec, map[uint64]time.Time{}
	}
	var epochs []uint64
	current := rendezvousEpochs(now)
	for e, t := range p.epochAt {
		if !slices.Contains(current, e) || now.Sub(t) >= recordRewrite {
			delete(p.epochAt, e)
		}
	}
	for _, e := range current {
		if _, ok := p.epochAt[e]; !ok {
			epochs = append(epochs, e)
		}
	}
	s.mu.Unlock()
	// Done only when every epoch has it: a reader reads its epoch(now)
	// alone (read), so a write that failed in one epoch is retried there.
	ok = true
	for _, e := range epochs {
		seed, seal := endpointKeys(secret, s.cfg.Self, e)
		var nonce [chacha20poly1305.NonceSizeX]byte
		if _, err := io.ReadFull(s.cfg.Rand, nonce[:]); err != nil {
			ok = false
			return
		}
		octx, cancel := context.WithTimeout(ctx, punchOpTimeout)
		err := s.cfg.Put(octx, seed, seq, sealEndpointValue(seal, seq, rec, nonce))
		cancel()
		ok = ok && err == nil
		if err == nil {
			s.mu.Lock()
			if p := s.peers[k]; p != nil && bytes.Equal(rec, p.epochRec) {
				p.epochAt[e] = now
			}
			s.mu.Unlock()
		}
	}
	s.cfg.Log.Debug("punch: wrote", "peer", k.String(), "ok", ok, "seq", seq)
}

// wrote ends a write; a failed one is retried after dhtRetryMin, doubling
// up to announceRetry, as the rendezvous retries its announces.
func (s *puncher) wrote(k publicKey, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.peers[k]
	if p == nil {
		return
	}
	p.writing = false
	now := s.cfg.Now()
	p.nextWrite = retryAfter(&p.writeFails, ok, now, announceRetry, now.Add(announceRetry))
	if ok {
		p.nextWrite = now
	} else {
		p.dirty, p.wrote = true, nil
	}
}

// read gets k's record in the current epoch: the contact writes it in
// every epoch of rendezvousEpochs, one of which is ours with clocks under
// rendezvousSkew apart (SPEC.md 5.2). check: a re-read (readDue).
func (s *puncher) read(ctx context.Context, k publicKey, check bool) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		if p := s.peers[k]; p != nil {
			p.reading = false
		}
		s.mu.Unlock()
	}()
	if !s.acquire(ctx) {
		return
	}
	defer func() { <-s.sem }()
	secret, err := s.cfg.StaticSecret(k)
	if err != nil {
		return
	}
	var best endpointRecord
	var bestSeq int64
	seed, seal := endpointKeys(secret, k, rendezvousEpochOf(s.cfg.Now()))
	octx, cancel := context.WithTimeout(ctx, punchOpTimeout)
	seq, v, err := s.cfg.Get(octx, endpointItemKey(seed), check)
	cancel()
	if err == nil {
		if r, err := openEndpointValue(seal, seq, v); err == nil {
			best, bestSeq = r, seq
		} else {
			s.cfg.Log.Debug("punch: record", "peer", k.String(), "err", err)
		}
	}
	if bestSeq != 0 {
		s.onRecord(k, best, bestSeq)
	} else {
		s.noRecord(k)
	}
}

// noRecord: a read found no record of k. Once the attempt and the first
// find are recordWait old, the frequent reads end: a live contact has
// written its record by then (at its start), and one that writes none is
// tried without (stepLocked, SPEC.md 5.8.3 step 9). Until then the gap
// between reads doubles (slowDown): a contact starting with us writes its
// record within a second or two. A record we had that is gone ends them
// once it is recordIdle old, as if read again.
func (s *puncher) noRecord(k publicKey) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.peers[k]
	switch {
	case p == nil:
	case p.recSeq != 0:
		p.nothingNew(now)
	case now.Sub(p.began) >= recordWait && (p.foundAt.IsZero() || now.Sub(p.foundAt) >= recordWait):
		p.pollUntil = now
	default:
		p.slowDown(now)
	}
}

// nothingNew: a read found the record we had. Written recordIdle ago or
// more, it ends the frequent reads: its writer is not punching now (one
// in an attempt rewrites as the attempt moves) and reads ours itself when
// it comes back. A newer one only slows them (slowDown): what we wait for
// is the contact's answer to our own record, and when it has acked our
// nonce the contact connects by itself (SPEC.md 5.8.3 step 6).
func (p *punchPeer) nothingNew(now time.Time) {
	if now.Sub(time.UnixMilli(p.recSeq)) >= recordIdle {
		p.pollUntil = now
		return
	}
	p.slowDown(now)
}

// slowDown doubles the gap before the next read, from punchPoll up to
// idleReadMaxGap; a record that changes sets it back to punchPoll.
func (p *punchPeer) slowDown(now time.Time) {
	p.nextPoll = laterOf(p.nextPoll, now.Add(p.idleGap))
	p.idleGap = min(2*p.idleGap, idleReadMaxGap)
}

// acquire takes a DHT operation slot, or reports that ctx ended.
func (s *puncher) acquire(ctx context.Context) bool {
	select {
	case s.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// onRecord takes a record of k read from the DHT and acts on it at once.
func (s *puncher) onRecord(k publicKey, r endpointRecord, seq int64) {
	now := s.cfg.Now()
	v := s.cfg.Local()
	s.mu.Lock()
	p := s.peers[k]
	if p == nil || seq < p.recSeq {
		s.mu.Unlock()
		return
	}
	if seq == p.recSeq {
		p.nothingNew(now)
		s.mu.Unlock()
		return
	}
	changed := p.recSeq == 0 || r.Nonce != p.rec.Nonce || r.Ack != p.rec.Ack
	p.rec, p.recSeq, p.idleGap = r, seq, punchPoll
	if changed && p.fresh(now) && !p.online {
		p.pollUntil = laterOf(p.pollUntil, now.Add(punchPeriod))
	}
	a := s.stepLocked(k, p, now, &v)
	a.key = k
	s.mu.Unlock()
	s.cfg.Log.Debug("punch: record", "peer", k.String(), "seq", seq, "nonce", r.Nonce, "ack", r.Ack, "cands", len(r.Cands))
	s.apply(a)
}
