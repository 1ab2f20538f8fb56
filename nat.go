// Our side of NAT traversal (SPEC.md 5.8.2, 5.8.3): the addresses we can
// offer a contact, and what DHT nodes tell us about our NAT.
//
// Flow: hostScanner lists the addresses of our interfaces (or the socket's
// own address when it is bound to one), at most every hostScanInterval. The
// app adds, at each call, the external address and the ports DHT nodes
// report (bep42.go) to make a localView; classifyNAT turns those ports into
// a behaviour (/status, the record's flag), and candidates orders what goes
// into our endpoint record. Opening packets leave through Node.sendTTL
// (ttl_unix.go).
package main

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// hostScanInterval bounds how often the interfaces are listed: a laptop
// that changes networks is seen within it, and a tick costs no syscall.
const hostScanInterval = 30 * time.Second

// natBehaviour is what DHT nodes' answers say about the way to the internet.
type natBehaviour uint8

const (
	natUnknown     natBehaviour = iota // too few answers yet
	natPublic                          // the external IPv4 address is one of our own
	natPreserving                      // behind a NAT that keeps our port for every destination
	natConsistent                      // one external port for every destination, not ours
	natRandomising                     // a new external port per destination
)

func (b natBehaviour) String() string {
	return [...]string{"unknown", "public", "preserving", "consistent", "randomising"}[b]
}

// classifyNAT reads our NAT's behaviour from the external address the DHT
// voted for and the distinct ports voters reported at its IP: two nodes
// that see two ports mean the NAT maps each destination to its own port.
func classifyNAT(hosts []netip.Prefix, port uint16, ext netip.AddrPort, ports []uint16) natBehaviour {
	switch {
	case !ext.IsValid():
		return natUnknown
	case slices.ContainsFunc(hosts, func(p netip.Prefix) bool { return p.Addr() == ext.Addr() }):
		return natPublic
	case len(ports) > 1:
		return natRandomising
	case ext.Port() == port:
		return natPreserving
	}
	return natConsistent
}

// pathKind names the way a session's address is reached, for /status:
// "ipv6", "lan" (a private or loopback address: no NAT between us) or
// "direct" (a public IPv4 address, through any NATs on the way).
func pathKind(a netip.AddrPort) string {
	switch ip := a.Addr().Unmap(); {
	case ip.Is6():
		return "ipv6"
	case isExemptBEP42(ip):
		return "lan"
	}
	return "direct"
}

// startsBehindNAT guesses, before any DHT node has answered, whether we
// are behind a NAT: none of our addresses is public, and we join the DHT
// through public nodes (a host name counts as public). On one machine or
// a LAN of private addresses there is no NAT between the nodes to guess.
func startsBehindNAT(hosts []netip.Prefix, bootstrap []string) bool {
	for _, h := range hosts {
		if !isExemptBEP42(h.Addr()) {
			return false
		}
	}
	for _, b := range bootstrap {
		a, err := netip.ParseAddrPort(b)
		if err != nil || !isExemptBEP42(a.Addr()) {
			return true
		}
	}
	return false
}

// localView is what we know of our own addresses at one moment.
type localView struct {
	Hosts     []netip.Prefix // interface addresses and their networks
	Port      uint16         // our socket's port
	External  netip.AddrPort // as DHT nodes see us; invalid until voted
	Behaviour natBehaviour
}

// isOwn reports whether ip is one of our interface addresses.
func (v *localView) isOwn(ip netip.Addr) bool {
	return slices.ContainsFunc(v.Hosts, func(p netip.Prefix) bool { return p.Addr() == ip })
}

// onLink reports whether ip is on one of our networks (and not ours): a
// host we reach without passing a router.
func (v *localView) onLink(ip netip.Addr) bool {
	return !v.isOwn(ip) && slices.ContainsFunc(v.Hosts, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// candidates lists what our endpoint record offers, most useful first: the
// address DHT nodes see, then IPv6 interface addresses (reachable through
// a firewall without a NAT), then IPv4 interface addresses (a contact in
// the same home); at most maxEndpointCandidates.
func (v *localView) candidates() []endpointCandidate {
	var out []endpointCandidate
	add := func(kind byte, a netip.AddrPort) {
		c := endpointCandidate{Kind: kind, Addr: netip.AddrPortFrom(a.Addr().Unmap(), a.Port())}
		if len(out) < maxEndpointCandidates && validCandidateAddr(c.Addr) && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	if v.External.IsValid() {
		add(endpointCandReflexive, v.External)
	}
	for _, want6 := range []bool{true, false} {
		for _, p := range v.Hosts {
			if ip := p.Addr().Unmap(); ip.Is6() == want6 {
				add(endpointCandHost, netip.AddrPortFrom(ip, v.Port))
			}
		}
	}
	return out
}

// hostScanner caches the interface addresses. Safe for concurrent use.
type hostScanner struct {
	bound netip.Addr // the socket's address; unspecified: every interface
	now   func() time.Time

	mu     sync.Mutex
	at     time.Time
	hosts  []netip.Prefix
	listFn func() ([]net.Addr, error) // net.InterfaceAddrs; tests replace it
}

func newHostScanner(bound netip.Addr, now func() time.Time) *hostScanner {
	return &hostScanner{bound: bound.Unmap(), now: now, listFn: net.InterfaceAddrs}
}

// get returns our addresses, listing the interfaces again when the last
// list is older than hostScanInterval.
func (s *hostScanner) get() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.hosts != nil && now.Sub(s.at) < hostScanInterval {
		return s.hosts
	}
	s.at, s.hosts = now, s.scan()
	return s.hosts
}

// scan lists the usable unicast addresses: the bound one alone if the
// socket is bound to one, else every interface's, of the socket's families.
func (s *hostScanner) scan() []netip.Prefix {
	if s.bound.IsValid() && !s.bound.IsUnspecified() {
		return []netip.Prefix{netip.PrefixFrom(s.bound, s.bound.BitLen())}
	}
	addrs, err := s.listFn()
	if err != nil {
		return []netip.Prefix{}
	}
	out := []netip.Prefix{}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		ones, _ := ipn.Mask.Size()
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() && ones > 32 {
			ones -= 96
		}
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() ||
			(s.bound == netip.IPv4Unspecified() && ip.Is6()) {
			continue
		}
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out
}
