// Our node id (SPEC.md 3.3 "Our id"): fresh at every start and renewed
// whenever our address changes, so that no id ties two of our addresses
// together or outlives a run.
//
// Flow: newDHT draws a random id. Every response's "ip" goes to
// learnExternal: the vote (bep42.go) settles our external address, and the
// id is bound to it (BEP 42 for a public IPv4 or IPv6 address). One "ip"
// naming another address of the same kind is a move at once (at most once
// per moveWitnessSpacing, so a liar cannot keep us moving). Before each
// query leaves, checkSource asks the kernel which local address it would
// send from: a change is a move seen before any datagram leaves. A move
// draws a new id, forgets the votes, rebuilds the table around it (keeping
// its nodes) and ends the queries that name the old id (lookups of our own
// id); the others go on, retransmitted with the new id.
package main

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"time"
)

// moveWitnessSpacing bounds how often one response's "ip" may move us.
const moveWitnessSpacing = time.Minute

// errMoved ends the queries naming our old id when our address changed.
var errMoved = errors.New("our address changed")

// Where checkSource asks the kernel for a route; nothing is sent there
// (RFC 5737 and RFC 3849 documentation addresses, routed like any other).
var (
	sourceProbe4 = netip.MustParseAddrPort("192.0.2.1:9")
	sourceProbe6 = netip.MustParseAddrPort("[2001:db8::1]:9")
)

// idKeeper keeps our node id bound to our address (see the flow comment
// at the top): learnExternal weighs each response's "ip", checkSource the
// kernel's source address before each query leaves, and a move renews the
// id. Its idState is under d.mu, as each new id rebuilds the routing table.
type idKeeper struct {
	d     *dht
	route func(v6 bool) netip.Addr // see dhtConfig.Source; nil: no check
	idState
}

// idState is what the DHT knows about the address its id belongs to.
// The dht's mu guards it.
type idState struct {
	voter       ipVoter       // our external address, by vote (bep42.go)
	boundTo     netip.Addr    // external IP the id was made for; zero: none yet
	source      [2]netip.Addr // local address toward the Internet, IPv4 and IPv6, as last seen
	lastWitness time.Time     // when one response's "ip" last moved us
	moves       uint64        // moves so far; queries naming an id derived from ours carry it
}

// newNodeID draws an id for the external address ip: BEP 42 for a public
// one, wholly random for an exempt one or none.
func newNodeID(ip netip.Addr, rand io.Reader) (nodeID, error) {
	if ip.IsValid() {
		return secureNodeID(ip, rand)
	}
	var id nodeID
	_, err := io.ReadFull(rand, id[:])
	return id, err
}

// sameKind reports whether a and b could be the same attachment seen
// twice: same family, and both public or both exempt. A LAN peer sees our
// LAN address while the Internet sees the NAT's: that is no move.
func sameKind(a, b netip.Addr) bool {
	return a.Is4() == b.Is4() && isExemptBEP42(a) == isExemptBEP42(b)
}

// isMove reports whether our external address going from prev to next is
// a move we have not yet taken an id for (boundTo).
func isMove(prev, next, boundTo netip.Addr) bool {
	return sameKind(prev, next) && next != prev && next != boundTo
}

// learnExternal votes on our external address with the "ip" a responder
// saw (BEP 42) and renews our id when that address moved or was first
// learned (see the flow comment at the top).
func (k *idKeeper) learnExternal(from netip.AddrPort, seen netip.AddrPort) {
	seen = unmapAddrPort(seen)
	if !usableAddr(seen) {
		return
	}
	d := k.d
	d.mu.Lock()
	to, renew, moved := k.weigh(d.table.self(), from, seen, d.now())
	if renew {
		k.renewLocked(to, moved)
	}
	d.mu.Unlock()
	if moved {
		d.tx.abortOwn()
	}
}

// weigh votes with one response's "ip" (seen, from the node at from) and
// says whether our id (self) must change, for which address, and whether
// that is a move.
func (s *idState) weigh(self nodeID, from, seen netip.AddrPort, now time.Time) (to netip.Addr, renew, moved bool) {
	// Where we were: the voted address, or while a new vote is under way
	// after a move, the address the id was made for.
	prev, had := s.voter.external()
	ref := prev.Addr()
	if !had {
		ref = s.boundTo
	}
	ext, changed := s.voter.voteFrom(from, seen)
	switch {
	case ref.IsValid() && isMove(ref, seen.Addr(), s.boundTo) && now.Sub(s.lastWitness) >= moveWitnessSpacing:
		// One witness suffices: every datagram until the vote settles
		// would carry the old id from the new address. The votes
		// describe the old address; this one starts the new count.
		s.lastWitness = now
		s.voter = ipVoter{}
		s.voter.voteFrom(from, seen)
		return seen.Addr(), true, true
	case ref.IsValid() && changed && isMove(ref, ext.Addr(), s.boundTo):
		return ext.Addr(), true, true
	case ext.IsValid() && ext.Addr() != s.boundTo:
		// Learned, not moved: we were at this address all along, so
		// the id changes only if BEP 42 wants another one.
		s.boundTo = ext.Addr()
		keep := isExemptBEP42(ext.Addr()) || isSecureNodeID(self, ext.Addr())
		return ext.Addr(), !keep, false
	}
	return netip.Addr{}, false, false
}

// renewLocked (d.mu held) takes a new id for the external address ip
// (zero: unknown) and rebuilds the table around it. After a move the
// caller ends the open queries that name the old id (txTable.abortOwn).
func (k *idKeeper) renewLocked(ip netip.Addr, moved bool) {
	d := k.d
	id, err := newNodeID(ip, d.cfg.Rand)
	if err != nil {
		d.log.Warn("dht: new id", "err", err)
		return
	}
	d.table = d.table.rebuilt(id)
	k.boundTo = ip
	if moved {
		k.moves++
	}
	d.log.Info("dht: new node id", "external", ip, "moved", moved, "id", id)
}

// checkSource runs before each of our queries leaves for to. If the kernel
// would now send it from another local address than the last one, we
// moved, and the id changes before any datagram carries it from there.
func (k *idKeeper) checkSource(to netip.AddrPort) {
	if k.route == nil {
		return
	}
	fam := 0
	if to.Addr().Unmap().Is6() {
		fam = 1
	}
	src := k.route(fam == 1)
	if !src.IsValid() {
		return // no route: nothing leaves, nothing to compare
	}
	d := k.d
	d.mu.Lock()
	last := k.source[fam]
	k.source[fam] = src
	moved := last.IsValid() && last != src
	if moved {
		k.voter = ipVoter{}
		k.renewLocked(netip.Addr{}, true)
	}
	d.mu.Unlock()
	if moved {
		d.tx.abortOwn()
	}
}

// idAndMoves is our id and how many times we moved, read at once: a
// query that names an id derived from ours carries that count, and is
// dropped once it changed.
func (k *idKeeper) idAndMoves() (nodeID, uint64) {
	k.d.mu.Lock()
	defer k.d.mu.Unlock()
	return k.d.table.self(), k.moves
}

// routeSource asks the kernel which local address it would send from to
// reach the Internet (v6: over IPv6); the zero Addr if it has no route.
// No datagram is sent: connecting a UDP socket only chooses the route.
func routeSource(v6 bool) netip.Addr {
	network, probe := "udp4", sourceProbe4
	if v6 {
		network, probe = "udp6", sourceProbe6
	}
	c, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(probe))
	if err != nil {
		return netip.Addr{}
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
}
