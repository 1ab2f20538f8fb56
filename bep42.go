// BEP 42 secure node ids and the external-address vote (SPEC.md 3.3, 3.4.2).
//
// Flow: every response's "ip" field (our address as the responder saw it)
// goes to ipVoter.voteFrom; once enough distinct voters agree, the winner is
// our external address. nodeid.go renews our id from it, drawing BEP 42
// ids with secureNodeID. The table asks isSecureNodeID whether a
// newcomer's id is bound to its address, preferring such nodes over
// unverified ones; isExemptBEP42 addresses (loopback, LAN) are never checked.
package main

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"slices"
)

// BEP 42 masks, applied to the IPv4 address and to the high 64 bits of an
// IPv6 address before hashing; r occupies the top 3 bits.
const (
	bep42Mask4   = 0x030f3fff
	bep42Mask6   = 0x0103070f1f3f7fff
	bep42RShift4 = 29
	bep42RShift6 = 61
	bep42Bits    = 21 // leading id bits bound to the address
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// cgnatPrefix is RFC 6598 shared address space. Treated as exempt: such an
// address is only seen inside one carrier's network, where, like a LAN
// address, it says nothing about the public address an id would be bound to.
var cgnatPrefix = netip.MustParsePrefix("100.64.0.0/10")

// isExemptBEP42 reports whether ids from ip are not checked: BEP 42's local
// ranges (loopback, 10/8, 172.16/12, 192.168/16, 169.254/16), their IPv6
// counterparts (::1, fc00::/7, fe80::/10) and 100.64/10.
func isExemptBEP42(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || cgnatPrefix.Contains(ip)
}

// bep42CRC is CRC32-C of the masked address with r. For IPv4 it hashes the 4
// bytes of the 32-bit value, as BEP 42's example code and test vectors do
// (its prose says 8 bytes; the vectors settle it); for IPv6 the 8 bytes.
func bep42CRC(ip netip.Addr, r byte) (uint32, bool) {
	ip = ip.Unmap()
	switch {
	case ip.Is4():
		a := ip.As4()
		v := binary.BigEndian.Uint32(a[:])&bep42Mask4 | uint32(r&7)<<bep42RShift4
		return crc32.Checksum(binary.BigEndian.AppendUint32(nil, v), castagnoli), true
	case ip.Is6():
		a := ip.As16()
		v := binary.BigEndian.Uint64(a[:8])&bep42Mask6 | uint64(r&7)<<bep42RShift6
		return crc32.Checksum(binary.BigEndian.AppendUint64(nil, v), castagnoli), true
	}
	return 0, false
}

// secureNodeID derives an id for our external address ip (BEP 42): the top
// 21 bits from the CRC, the last byte random with r in its low 3 bits, the
// rest random. For an exempt address the id is wholly random: binding it to
// a local address would only cluster local test nodes in 8 prefixes.
func secureNodeID(ip netip.Addr, rand io.Reader) (nodeID, error) {
	var id nodeID
	if _, err := io.ReadFull(rand, id[:]); err != nil {
		return nodeID{}, fmt.Errorf("routing: secure id: %w", err)
	}
	if isExemptBEP42(ip) {
		return id, nil
	}
	crc, ok := bep42CRC(ip, id[idLen-1])
	if !ok {
		return nodeID{}, fmt.Errorf("routing: secure id: invalid address %v", ip)
	}
	id[0] = byte(crc >> 24)
	id[1] = byte(crc >> 16)
	id[2] = byte(crc>>8)&0xf8 | id[2]&0x07
	return id, nil
}

// isSecureNodeID reports whether id is valid for ip under BEP 42; ids from
// exempt addresses always are.
func isSecureNodeID(id nodeID, ip netip.Addr) bool {
	if isExemptBEP42(ip) {
		return true
	}
	crc, ok := bep42CRC(ip, id[idLen-1])
	if !ok {
		return false
	}
	return id[0] == byte(crc>>24) && id[1] == byte(crc>>16) && id[2]&0xf8 == byte(crc>>8)&0xf8
}

// External address voting.

const (
	ipVoteQuorum = 3  // distinct voters that must agree before we believe
	maxIPVoters  = 64 // votes kept; the oldest is forgotten first
)

type ipVote struct {
	voter   netip.AddrPort // voterKey of the responder
	claimed netip.AddrPort
	seq     uint64
}

// ipVoter learns our external address from the "ip" field of responses
// (BEP 42). Each voter holds one vote, its latest claim; an address wins
// with at least ipVoteQuorum voters and strictly more than any rival, so one
// liar can neither set nor move it. The zero value is ready to use; it keeps
// at most maxIPVoters votes. Not safe for concurrent use.
type ipVoter struct {
	votes   []ipVote
	seq     uint64
	current netip.AddrPort
}

// voterKey decides who counts as a distinct voter. A public voter counts by
// its /24 (IPv4) or /64 (IPv6), so a liar needs many networks, not many
// ports or neighbours. A voter on an exempt (loopback, LAN) address counts
// by address and port: on one machine or LAN every node is equally trusted
// already (BEP 42 exempts them), and loopback tests have nothing else to go by.
func voterKey(voter netip.AddrPort) netip.AddrPort {
	ip := voter.Addr().Unmap()
	if isExemptBEP42(ip) {
		return netip.AddrPortFrom(ip, voter.Port())
	}
	bitsLen := 64
	if ip.Is4() {
		bitsLen = 24
	}
	p, err := ip.Prefix(bitsLen)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(p.Addr(), 0)
}

// voteFrom records that the node at voter says we are claimed. It returns
// the external address and whether this vote changed it.
func (v *ipVoter) voteFrom(voter netip.AddrPort, claimed netip.AddrPort) (external netip.AddrPort, changed bool) {
	key := voterKey(voter)
	claimed = unmapAddrPort(claimed)
	if !key.Addr().IsValid() || !usableAddr(claimed) {
		return v.current, false
	}
	v.seq++
	v.record(ipVote{voter: key, claimed: claimed, seq: v.seq})
	w := v.winner()
	if !w.IsValid() || w == v.current {
		return v.current, false
	}
	v.current = w
	return w, true
}

func (v *ipVoter) record(nv ipVote) {
	oldest := 0
	for i := range v.votes {
		if v.votes[i].voter == nv.voter {
			v.votes[i] = nv
			return
		}
		if v.votes[i].seq < v.votes[oldest].seq {
			oldest = i
		}
	}
	if len(v.votes) < maxIPVoters {
		v.votes = append(v.votes, nv)
		return
	}
	v.votes[oldest] = nv
}

// winner is the voted external address: IPv4 preferred (BEP 42 ids are
// derived from it), its port the plurality among that address's voters,
// or the latest claimed port on a draw that excludes the current one.
func (v *ipVoter) winner() netip.AddrPort {
	for _, want4 := range []bool{true, false} {
		var addrs []netip.Addr
		for _, vt := range v.votes {
			if vt.claimed.Addr().Is4() == want4 {
				addrs = append(addrs, vt.claimed.Addr())
			}
		}
		a, n := plurality(addrs, v.current.Addr())
		if n < ipVoteQuorum {
			continue
		}
		var ports []uint16
		var latest ipVote
		for _, vt := range v.votes {
			if vt.claimed.Addr() == a {
				ports = append(ports, vt.claimed.Port())
				if vt.seq > latest.seq {
					latest = vt
				}
			}
		}
		p, pn := plurality(ports, v.current.Port())
		if pn == 0 {
			// A draw among ports none of which is current (a NAT
			// that maps each destination to its own port): the latest.
			p = latest.claimed.Port()
		}
		return netip.AddrPortFrom(a, p)
	}
	return netip.AddrPort{}
}

// plurality returns the most frequent item and its count. A tie keeps
// current if it is among the leaders, else returns the zero value with
// count 0: nobody moves us on a draw.
func plurality[T comparable](items []T, current T) (T, int) {
	var best T
	bestN, tied := 0, false
	for i, it := range items {
		if slices.Index(items[:i], it) >= 0 {
			continue
		}
		n := 0
		for _, o := range items {
			if o == it {
				n++
			}
		}
		switch {
		case n > bestN:
			best, bestN, tied = it, n, false
		case n == bestN:
			tied = true
		}
	}
	if !tied {
		return best, bestN
	}
	n := 0
	for _, o := range items {
		if o == current {
			n++
		}
	}
	if n == bestN {
		return current, n
	}
	var zero T
	return zero, 0
}

// external returns the voted external address, if any.
func (v *ipVoter) external() (netip.AddrPort, bool) { return v.current, v.current.IsValid() }

// guess is our external address where no quorum is needed: the voted one,
// else the latest IPv4 claim, else the latest claim. A contact given a
// wrong guess (SPEC.md 5.8.2) only sends opening packets to the wrong place.
func (v *ipVoter) guess() netip.AddrPort {
	if v.current.IsValid() {
		return v.current
	}
	var best ipVote
	for _, vt := range v.votes {
		b4, v4 := best.claimed.Addr().Is4(), vt.claimed.Addr().Is4()
		if !best.claimed.IsValid() || v4 && !b4 || v4 == b4 && vt.seq > best.seq {
			best = vt
		}
	}
	return best.claimed
}

// portsAt lists the distinct ports voters claim we have at ip, in the order
// of the votes kept. Behind a NAT that maps each destination to its own
// port, two voters already disagree (SPEC.md 5.8.2, the flag).
func (v *ipVoter) portsAt(ip netip.Addr) []uint16 {
	var ports []uint16
	for _, vt := range v.votes {
		if vt.claimed.Addr() == ip && !slices.Contains(ports, vt.claimed.Port()) {
			ports = append(ports, vt.claimed.Port())
		}
	}
	return ports
}
