// Our node id (SPEC.md 3.3 "Our id"): fresh at every start and renewed
// whenever our address changes, so that no id ties two of our addresses
// together or outlives a run.
//
// Flow: newDHT draws a random id. Every response's "ip" goes to
// learnExternal: the vote (bep42.go) settles our external address, and the
// id is then bound to it (a BEP 42 id for a public IPv4 or IPv6 address).
// One "ip" naming another address of the same kind is taken as a move at
// once, at most once per moveWitnessSpacing so that a liar cannot keep us
// moving. Before each query leaves, checkSource asks the kernel which local
// address it would send from; a change there is a move seen before any
// datagram leaves the new address. A move draws a new id, forgets the
// votes, rebuilds the table around the id (keeping its nodes) and ends the
// open queries that name an id derived from the old one (lookups of our own
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

// idState is what the DHT knows about the address its id belongs to.
// The dht's mu guards it.
type idState struct {
	boundTo     netip.Addr    // external IP the id was made for; zero: none yet
	source      [2]netip.Addr // local address toward the Internet, IPv4 and IPv6, as last seen
	lastWitness time.Time     // when one response's "ip" last moved us
	moves       uint64        // moves so far; lookups of our own id end when it changes
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

// learnExternal votes on our external address with the "ip" a responder
// saw (BEP 42) and renews our id when that address moved or was first
// learned (see the flow comment at the top).
func (d *dht) learnExternal(from netip.AddrPort, seen netip.AddrPort) {
	seen = unmapAddrPort(seen)
	if !seen.IsValid() || !usableAddr(seen) {
		return
	}
	d.mu.Lock()
	prev, had := d.voter.external()
	ext, changed := d.voter.voteFrom(from, seen)
	now := d.now()
	var to netip.Addr
	moved := false
	switch {
	case had && sameKind(prev.Addr(), seen.Addr()) && seen.Addr() != prev.Addr() &&
		seen.Addr() != d.ids.boundTo && now.Sub(d.ids.lastWitness) >= moveWitnessSpacing:
		// One witness suffices: every datagram until the vote settles
		// would carry the old id from the new address.
		d.ids.lastWitness = now
		to, moved = seen.Addr(), true
		d.voter = ipVoter{}
		d.voter.voteFrom(from, seen)
	case changed && had && sameKind(prev.Addr(), ext.Addr()) && ext.Addr() != prev.Addr() && ext.Addr() != d.ids.boundTo:
		to, moved = ext.Addr(), true
	case ext.IsValid() && ext.Addr() != d.ids.boundTo:
		// Learned, not moved: we were at this address all along, so
		// the id changes only if BEP 42 wants another one.
		d.ids.boundTo = ext.Addr()
		if isExemptBEP42(ext.Addr()) || isSecureNodeID(d.table.self(), ext.Addr()) {
			d.mu.Unlock()
			return
		}
		to = ext.Addr()
	default:
		d.mu.Unlock()
		return
	}
	d.renewIDLocked(to, moved)
	d.mu.Unlock()
	if moved {
		d.tx.abortOwn()
	}
}

// renewIDLocked (d.mu held) takes a new id for the external address ip
// (zero: unknown) and rebuilds the table around it. After a move the
// caller ends the open queries that name the old id (txTable.abortOwn).
func (d *dht) renewIDLocked(ip netip.Addr, moved bool) {
	id, err := newNodeID(ip, d.cfg.Rand)
	if err != nil {
		d.log.Warn("dht: new id", "err", err)
		return
	}
	d.table = d.table.rebuilt(id)
	d.ids.boundTo = ip
	if moved {
		d.ids.moves++
	}
	d.log.Info("dht: new node id", "external", ip, "moved", moved, "id", id)
}

// checkSource runs before each of our queries leaves for to. If the kernel
// would now send it from another local address than the last one, we
// moved, and the id changes before any datagram carries it from there.
func (d *dht) checkSource(to netip.AddrPort) {
	if d.source == nil {
		return
	}
	fam := 0
	if to.Addr().Unmap().Is6() {
		fam = 1
	}
	src := d.source(fam == 1)
	if !src.IsValid() {
		return // no route: nothing leaves, nothing to compare
	}
	d.mu.Lock()
	last := d.ids.source[fam]
	d.ids.source[fam] = src
	moved := last.IsValid() && last != src
	if moved {
		d.voter = ipVoter{}
		d.renewIDLocked(netip.Addr{}, true)
	}
	d.mu.Unlock()
	if moved {
		d.tx.abortOwn()
	}
}

// movesSoFar is how many times we moved; queries naming an id derived
// from ours carry it, and are dropped once it changed.
func (d *dht) movesSoFar() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ids.moves
}

// idAndMoves is our id and movesSoFar at once, for a query that names it.
func (d *dht) idAndMoves() (nodeID, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.table.self(), d.ids.moves
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
