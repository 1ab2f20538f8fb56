package main

import (
	mrand "math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// What one response's "ip" does to our id (SPEC.md 3.3, "Our id"): the
// vote binds the id to a learned address; one witness of another address
// of the same kind is a move, at most once per moveWitnessSpacing; a LAN
// peer's view or the other family's is no move.
func TestIDStateWeigh(t *testing.T) {
	var s idState
	var self nodeID
	rng := mrand.NewChaCha8([32]byte{1})
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a, b, c, d := "203.0.113.7:6881", "198.51.100.9:6881", "192.0.2.33:6881", "203.0.113.99:6881"
	steps := []struct {
		name, voter, seen string
		at                time.Duration
		to                string // "" for no change of id
		moved             bool
	}{
		{"first vote", "8.8.8.8:1", a, 0, "", false},
		{"second vote", "9.9.9.9:1", a, 0, "", false},
		{"quorum: learned", "1.1.1.1:1", a, 0, a, false},
		{"a LAN peer's view", "192.168.1.1:1", "192.168.1.5:6881", 0, "", false},
		{"the other family", "[2001:db8::1]:1", "[2001:db8:5::7]:6881", 0, "", false},
		{"one witness: moved", "8.8.8.8:1", b, 0, b, true},
		{"again within the spacing", "9.9.9.9:1", c, time.Second, "", false},
		{"after the spacing, before a new vote", "9.9.9.9:1", c, moveWitnessSpacing + time.Second, c, true},
		{"a vote for it", "8.8.8.8:1", c, moveWitnessSpacing + time.Second, "", false},
		{"the vote settles", "1.1.1.1:1", c, moveWitnessSpacing + time.Second, "", false},
		{"a witness within the spacing", "1.1.1.1:1", d, moveWitnessSpacing + 2*time.Second, "", false},
		{"a second voter", "8.8.8.8:1", d, moveWitnessSpacing + 2*time.Second, "", false},
		{"the vote moves", "9.9.9.9:1", d, moveWitnessSpacing + 2*time.Second, d, true},
	}
	for _, st := range steps {
		to, renew, moved := s.weigh(self, netip.MustParseAddrPort(st.voter), netip.MustParseAddrPort(st.seen), t0.Add(st.at))
		want := netip.Addr{}
		if st.to != "" {
			want = netip.MustParseAddrPort(st.to).Addr()
		}
		if renew != (st.to != "") || (renew && to != want) || moved != st.moved {
			t.Fatalf("%s: weigh = %v, %v, %v; want %v, %v, %v", st.name, to, renew, moved, want, st.to != "", st.moved)
		}
		if renew {
			self, _ = newNodeID(to, rng)
			s.boundTo = to
		}
	}
}
