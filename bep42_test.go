package main

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// bep42Vectors is the table in BEP 42.
var bep42Vectors = []struct {
	ip   string
	rand byte
	id   string
}{
	{"124.31.75.21", 1, "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401"},
	{"21.75.31.124", 86, "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256"},
	{"65.23.51.170", 22, "a5d43220bc8f112a3d426c84764f8c2a1150e616"},
	{"84.124.73.14", 65, "1b0321dd1bb1fe518101ceef99462b947a01ff41"},
	{"43.213.53.83", 90, "e56f6cbf5b7c4be0237986d5243b87aa6d51305a"},
}

func TestBEP42Vectors(t *testing.T) {
	for _, v := range bep42Vectors {
		ip := netip.MustParseAddr(v.ip)
		id, err := parseNodeID(v.id)
		if err != nil {
			t.Fatal(err)
		}
		if id[idLen-1] != v.rand {
			t.Fatalf("%s: last byte %d, want rand %d", v.ip, id[idLen-1], v.rand)
		}
		if !isSecureNodeID(id, ip) {
			t.Errorf("isSecureNodeID(%v, %s) = false, want true", id, v.ip)
		}
		// Fed the vector's own bytes as randomness, secureNodeID must
		// reproduce the vector: its random parts are exactly those bytes.
		got, err := secureNodeID(ip, bytes.NewReader(id[:]))
		if err != nil || got != id {
			t.Errorf("secureNodeID(%s) = %v, %v; want %v", v.ip, got, err, id)
		}
		for bit := range idLen * 8 {
			m := id
			setBit(&m, bit, !getBit(id, bit))
			bound := bit < bep42Bits || bit >= idLen*8-3 // prefix and r
			if isSecureNodeID(m, ip) == bound {
				t.Errorf("%s: flipping bit %d: secure = %v", v.ip, bit, !bound)
			}
		}
	}
}

func TestSecureNodeIDRoundTrip(t *testing.T) {
	rng := rand.NewChaCha8([32]byte{7})
	for _, s := range []string{"1.2.3.4", "203.0.113.9", "2001:db8::1", "2a00:1450::200e"} {
		ip := netip.MustParseAddr(s)
		for range 16 {
			id, err := secureNodeID(ip, rng)
			if err != nil || !isSecureNodeID(id, ip) {
				t.Fatalf("secureNodeID(%s) = %v, %v: not secure", s, id, err)
			}
			if isSecureNodeID(id, netip.MustParseAddr("8.8.8.8")) && isSecureNodeID(id, netip.MustParseAddr("9.9.9.9")) {
				t.Fatalf("id %v valid for unrelated addresses", id)
			}
		}
	}
	if _, err := secureNodeID(netip.Addr{}, rng); err == nil {
		t.Fatalf("secureNodeID(invalid) succeeded")
	}
	if _, err := secureNodeID(netip.MustParseAddr("1.2.3.4"), bytes.NewReader(nil)); err == nil {
		t.Fatalf("secureNodeID with empty rand succeeded")
	}
}

func TestExemptBEP42(t *testing.T) {
	tests := []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true}, {"127.255.0.9", true}, {"10.1.2.3", true}, {"172.16.0.1", true},
		{"172.31.255.255", true}, {"172.32.0.1", false}, {"192.168.1.1", true}, {"192.169.0.1", false},
		{"169.254.1.1", true}, {"100.64.0.1", true}, {"100.127.255.255", true}, {"100.128.0.1", false},
		{"8.8.8.8", false}, {"::1", true}, {"fe80::1", true}, {"fd00::1", true}, {"2001:db8::1", false},
		{"::ffff:10.0.0.1", true},
	}
	for _, tc := range tests {
		ip := netip.MustParseAddr(tc.ip)
		if got := isExemptBEP42(ip); got != tc.want {
			t.Errorf("isExemptBEP42(%s) = %v, want %v", tc.ip, got, tc.want)
		}
		if got := isSecureNodeID(nodeID{}, ip); tc.want && !got {
			t.Errorf("isSecureNodeID(0, %s) = false for an exempt address", tc.ip)
		}
	}
	if isSecureNodeID(nodeID{}, netip.Addr{}) {
		t.Errorf("isSecureNodeID(invalid address) = true")
	}
}

func TestIPVoter(t *testing.T) {
	ap := netip.MustParseAddrPort
	a, b := ap("198.51.100.7:6881"), ap("203.0.113.9:6881")
	type vote struct {
		voter   string // address, or address:port for voteFrom
		claimed netip.AddrPort
		want    netip.AddrPort // external after this vote; zero = none
	}
	tests := []struct {
		name  string
		votes []vote
	}{
		{"one voter is not enough", []vote{{"1.1.1.1", a, netip.AddrPort{}}, {"1.1.1.1", a, netip.AddrPort{}}}},
		{"quorum of distinct voters", []vote{{"1.1.1.1", a, netip.AddrPort{}}, {"2.2.2.2", a, netip.AddrPort{}}, {"3.3.3.3", a, a}}},
		{"one liar cannot move us", []vote{
			{"1.1.1.1", a, netip.AddrPort{}}, {"2.2.2.2", a, netip.AddrPort{}}, {"3.3.3.3", a, a},
			{"4.4.4.4", b, a}, {"4.4.4.4", b, a}, {"4.4.4.5", b, a}, {"4.4.4.6:1", b, a},
		}},
		{"one liar cannot set us", []vote{
			{"4.4.4.4", b, netip.AddrPort{}}, {"1.1.1.1", a, netip.AddrPort{}}, {"4.4.4.5", b, netip.AddrPort{}},
			{"2.2.2.2", a, netip.AddrPort{}}, {"3.3.3.3", a, a},
		}},
		{"a real change wins by majority", []vote{
			{"1.1.1.1", a, netip.AddrPort{}}, {"2.2.2.2", a, netip.AddrPort{}}, {"3.3.3.3", a, a},
			{"5.5.5.5", b, a}, {"6.6.6.6", b, a}, {"7.7.7.7", b, a}, {"1.1.1.1", b, b},
		}},
		{"a tie keeps the current address", []vote{
			{"1.1.1.1", a, netip.AddrPort{}}, {"2.2.2.2", a, netip.AddrPort{}}, {"3.3.3.3", a, a},
			{"5.5.5.5", b, a}, {"6.6.6.6", b, a}, {"7.7.7.7", b, a},
		}},
		{"loopback voters count by port", []vote{
			{"127.0.0.1:1", ap("127.0.0.1:9"), netip.AddrPort{}}, {"127.0.0.1:2", ap("127.0.0.1:9"), netip.AddrPort{}},
			{"127.0.0.1:3", ap("127.0.0.1:9"), ap("127.0.0.1:9")},
		}},
		{"loopback voters without ports count once", []vote{
			{"127.0.0.1", ap("127.0.0.1:9"), netip.AddrPort{}}, {"127.0.0.1", ap("127.0.0.1:9"), netip.AddrPort{}},
			{"127.0.0.1", ap("127.0.0.1:9"), netip.AddrPort{}},
		}},
		{"port is the plurality", []vote{
			{"1.1.1.1", ap("198.51.100.7:1"), netip.AddrPort{}}, {"2.2.2.2", ap("198.51.100.7:2"), netip.AddrPort{}},
			{"3.3.3.3", ap("198.51.100.7:2"), ap("198.51.100.7:2")},
		}},
		{"port draw takes the latest claim", []vote{
			{"1.1.1.1", ap("198.51.100.7:1"), netip.AddrPort{}}, {"2.2.2.2", ap("198.51.100.7:2"), netip.AddrPort{}},
			{"3.3.3.3", ap("198.51.100.7:3"), ap("198.51.100.7:3")},
			{"4.4.4.4", ap("198.51.100.7:1"), ap("198.51.100.7:1")},
			{"5.5.5.5", ap("198.51.100.7:3"), ap("198.51.100.7:1")}, // draw 2:2 keeps the current port
		}},
		{"invalid claims ignored", []vote{
			{"1.1.1.1", netip.AddrPort{}, netip.AddrPort{}}, {"2.2.2.2", ap("0.0.0.0:1"), netip.AddrPort{}},
			{"3.3.3.3", ap("1.2.3.4:0"), netip.AddrPort{}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var v ipVoter
			for i, vt := range tc.votes {
				var got netip.AddrPort
				if strings.Contains(vt.voter, ":") {
					got, _ = v.voteFrom(netip.MustParseAddrPort(vt.voter), vt.claimed)
				} else {
					got, _ = v.vote(netip.MustParseAddr(vt.voter), vt.claimed)
				}
				ext, ok := v.external()
				if got != vt.want || ext != vt.want || ok != vt.want.IsValid() {
					t.Fatalf("vote %d (%s says %v): external %v (%v), want %v", i, vt.voter, vt.claimed, got, ok, vt.want)
				}
			}
		})
	}
}

func TestIPVoterBounded(t *testing.T) {
	var v ipVoter
	claimed := netip.MustParseAddrPort("198.51.100.7:6881")
	changes := 0
	for i := range 5000 {
		voter := netip.AddrFrom4([4]byte{byte(i >> 8), byte(i), 1, 1})
		if _, changed := v.vote(voter, claimed); changed {
			changes++
		}
	}
	if len(v.votes) > maxIPVoters {
		t.Fatalf("%d votes kept, want <= %d", len(v.votes), maxIPVoters)
	}
	if ext, _ := v.external(); ext != claimed || changes != 1 {
		t.Fatalf("external %v after %d changes", ext, changes)
	}
}

func BenchmarkIPVote(b *testing.B) {
	var v ipVoter
	claims := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:6881"), netip.MustParseAddrPort("198.51.100.7:6882")}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		voter := netip.AddrFrom4([4]byte{byte(i >> 8), byte(i), 1, 1})
		v.vote(voter, claims[i%7/6])
	}
}

// vote records voter's claim. A voter known only by address counts once per
// address (or /24); see voteFrom for the port-aware form.
func (v *ipVoter) vote(voter netip.Addr, claimed netip.AddrPort) (external netip.AddrPort, changed bool) {
	return v.voteFrom(netip.AddrPortFrom(voter, 0), claimed)
}
