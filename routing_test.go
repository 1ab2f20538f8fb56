package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// idCPL returns an id sharing exactly cpl leading bits with self; n varies
// the trailing bits so distinct n give distinct ids (cpl < 144).
func idCPL(self nodeID, cpl int, n int) nodeID {
	id := self
	setBit(&id, cpl, !getBit(self, cpl))
	id[idLen-1] ^= byte(n)
	id[idLen-2] ^= byte(n >> 8)
	return id
}

func loopNode(id nodeID, port int) nodeInfo {
	return nodeInfo{ID: id, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))}
}

// lookup finds the bucket entry for id (test helper).
func (t *routingTable) lookup(id nodeID) *entry {
	b := t.buckets[t.bucketIndex(id)]
	if i := findEntry(b.nodes, id); i >= 0 {
		return &b.nodes[i]
	}
	return nil
}

func (t *routingTable) inCache(id nodeID) bool {
	return findEntry(t.buckets[t.bucketIndex(id)].cache, id) >= 0
}

// checkInvariants asserts the table's structural bounds and indexing.
func checkInvariants(t *testing.T, rt *routingTable) {
	t.Helper()
	if len(rt.buckets) < 1 || len(rt.buckets) > maxBuckets {
		t.Fatalf("%d buckets", len(rt.buckets))
	}
	addrs := 0
	ids := map[nodeID]bool{}
	for i, b := range rt.buckets {
		if len(b.nodes) > bucketSize || len(b.cache) > replacementSize {
			t.Fatalf("bucket %d: %d nodes, %d cached", i, len(b.nodes), len(b.cache))
		}
		for _, es := range [][]entry{b.nodes, b.cache} {
			for _, e := range es {
				if got := rt.bucketIndex(e.ID); got != i {
					t.Fatalf("node %v in bucket %d, belongs in %d", e.ID, i, got)
				}
				if ids[e.ID] {
					t.Fatalf("id %v held twice", e.ID)
				}
				ids[e.ID] = true
			}
		}
		for _, e := range b.nodes {
			if rt.byAddr[addrKey(e.Addr)] != e.ID {
				t.Fatalf("byAddr[%v] = %v, want %v", e.Addr, rt.byAddr[addrKey(e.Addr)], e.ID)
			}
			addrs++
		}
	}
	if addrs != len(rt.byAddr) || addrs != rt.size() {
		t.Fatalf("byAddr has %d entries, buckets %d", len(rt.byAddr), addrs)
	}
}

func TestXorLess(t *testing.T) {
	id := func(s string) nodeID {
		var n nodeID
		copy(n[:], s)
		return n
	}
	tests := []struct {
		name          string
		target, a, b  nodeID
		want, reverse bool
	}{
		{"equal", id("a"), id("b"), id("b"), false, false},
		{"first byte", id("\x00"), id("\x01"), id("\x02"), true, false},
		{"xor not numeric", id("\x80"), id("\xff"), id("\x00"), true, false},
		{"last byte", id(""), nodeID{19: 1}, nodeID{19: 2}, true, false},
	}
	for _, tc := range tests {
		if got := xorLess(tc.target, tc.a, tc.b); got != tc.want {
			t.Errorf("%s: xorLess = %v, want %v", tc.name, got, tc.want)
		}
		if got := xorLess(tc.target, tc.b, tc.a); got != tc.reverse {
			t.Errorf("%s: reversed xorLess = %v, want %v", tc.name, got, tc.reverse)
		}
	}
}

func TestCommonPrefixLen(t *testing.T) {
	var zero nodeID
	tests := []struct {
		b    nodeID
		want int
	}{
		{nodeID{0: 0x80}, 0},
		{nodeID{0: 0x01}, 7},
		{nodeID{1: 0x40}, 9},
		{nodeID{19: 1}, 159},
		{zero, 160},
	}
	for _, tc := range tests {
		if got := commonPrefixLen(zero, tc.b); got != tc.want {
			t.Errorf("commonPrefixLen(0, %v) = %d, want %d", tc.b, got, tc.want)
		}
	}
}

func TestSplitting(t *testing.T) {
	clk := newFakeClock()
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	for i := range bucketSize {
		if ping := rt.heard(loopNode(idCPL(self, 0, i), 1000+i), true); ping != nil {
			t.Fatalf("heard into room returned %v", ping)
		}
	}
	if len(rt.buckets) != 1 || rt.size() != bucketSize {
		t.Fatalf("after %d far nodes: %d buckets, size %d", bucketSize, len(rt.buckets), rt.size())
	}
	// The one bucket is full and holds our id: a near node splits it.
	rt.heard(loopNode(idCPL(self, 5, 0), 2000), true)
	if len(rt.buckets) != 2 || rt.size() != bucketSize+1 {
		t.Fatalf("after split: %d buckets, size %d; want 2, %d", len(rt.buckets), rt.size(), bucketSize+1)
	}
	// The far bucket no longer holds our id: it must not split.
	rt.heard(loopNode(idCPL(self, 0, 99), 3000), true)
	if len(rt.buckets) != 2 || rt.size() != bucketSize+1 || !rt.inCache(idCPL(self, 0, 99)) {
		t.Fatalf("far newcomer: %d buckets, size %d, cached %v", len(rt.buckets), rt.size(), rt.inCache(idCPL(self, 0, 99)))
	}
	// Nodes ever closer split the own bucket again and again.
	for cpl := 1; cpl < 40; cpl++ {
		for i := range bucketSize {
			rt.heard(loopNode(idCPL(self, cpl, i), 10000+cpl*10+i), true)
		}
	}
	if len(rt.buckets) < 40 {
		t.Fatalf("%d buckets after filling 40 prefix lengths", len(rt.buckets))
	}
	checkInvariants(t, rt)
}

func TestSelfAndUnusableIgnored(t *testing.T) {
	var self nodeID
	rt := newRoutingTable(self, newFakeClock().now)
	bad := []nodeInfo{
		loopNode(self, 1),
		{ID: nodeID{0: 1}, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)},
		{ID: nodeID{0: 2}, Addr: netip.AddrPortFrom(netip.MustParseAddr("0.0.0.0"), 5)},
		{ID: nodeID{0: 4}, Addr: netip.AddrPortFrom(netip.MustParseAddr("224.0.0.1"), 5)},
		{ID: nodeID{0: 5}},
	}
	for _, n := range bad {
		rt.heard(n, true)
	}
	if rt.size() != 0 {
		t.Fatalf("size %d after unusable nodes, want 0", rt.size())
	}
	mapped := nodeInfo{ID: nodeID{0: 3}, Addr: netip.MustParseAddrPort("[::ffff:1.2.3.4]:5")}
	rt.heard(mapped, true)
	if got := rt.nodes(); len(got) != 1 || got[0].Addr != netip.MustParseAddrPort("1.2.3.4:5") {
		t.Fatalf("mapped address stored as %v, want it unmapped", got)
	}
	rt.failed(mapped)
	rt.failed(mapped)
	if _, _, bad := rt.counts(); bad != 1 {
		t.Fatalf("failed(mapped address) not applied")
	}
}

func TestOneIDPerAddress(t *testing.T) {
	clk := newFakeClock()
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	a, b := idCPL(self, 0, 1), idCPL(self, 1, 1)
	rt.heard(loopNode(a, 7000), true)
	rt.heard(loopNode(b, 7000), true) // same address, another id: ignored
	if rt.size() != 1 || rt.lookup(b) != nil {
		t.Fatalf("second id on one address was accepted")
	}
	rt.heard(loopNode(a, 7001), true) // live id, other address: ignored
	if got := rt.lookup(a).Addr.Port(); got != 7000 {
		t.Fatalf("live node moved to port %d", got)
	}
	rt.failed(loopNode(a, 7000))
	rt.failed(loopNode(a, 7000))
	rt.heard(loopNode(b, 7000), true) // old owner is bad now: the new id takes the address
	if rt.lookup(a) != nil || rt.lookup(b) == nil {
		t.Fatalf("bad owner not replaced by the address's new id")
	}
	checkInvariants(t, rt)
}

// A public IP holds one id in the buckets whatever its ports; an exempt
// address holds one per port (many nodes on one machine or LAN address).
func TestOneIDPerPublicIP(t *testing.T) {
	tests := []struct {
		name string
		ip   string
		want int // nodes in the table after 20 ids on 20 ports
	}{
		{"public ipv4", "203.0.113.7", 1},
		{"public ipv6", "2001:db8::7", 1},
		{"loopback", "127.0.0.1", 20},
		{"lan", "192.168.1.7", 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			var self nodeID
			rt := newRoutingTable(self, clk.now)
			ip := netip.MustParseAddr(tt.ip)
			for i := range 20 {
				n := nodeInfo{ID: idCPL(self, i%4, i), Addr: netip.AddrPortFrom(ip, uint16(6000+i))}
				rt.heard(n, true)
			}
			if rt.size() != tt.want {
				t.Fatalf("%d ids on %d ports of %s: table holds %d, want %d", 20, 20, tt.ip, rt.size(), tt.want)
			}
			checkInvariants(t, rt)
		})
	}
	// The first id keeps the IP while it lives; once bad, another port's id takes it.
	clk := newFakeClock()
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	first := nodeInfo{ID: idCPL(self, 0, 1), Addr: storeAP("203.0.113.7:6000")}
	second := nodeInfo{ID: idCPL(self, 1, 1), Addr: storeAP("203.0.113.7:6001")}
	rt.heard(first, true)
	rt.failed(first)
	rt.failed(first)
	rt.heard(second, true)
	if rt.lookup(first.ID) != nil || rt.lookup(second.ID) == nil {
		t.Fatalf("bad holder of a public IP not replaced by its new id")
	}
	rt.heard(nodeInfo{ID: second.ID, Addr: storeAP("203.0.113.7:6002")}, true) // live: does not move
	if got := rt.lookup(second.ID).Addr; got != second.Addr {
		t.Fatalf("live node moved to %v", got)
	}
	checkInvariants(t, rt)
}

func TestClosestSortedWithoutBad(t *testing.T) {
	clk := newFakeClock()
	rng := rand.New(rand.NewPCG(1, 2))
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	var all []nodeInfo
	for i := range 300 {
		var id nodeID
		for j := range id {
			id[j] = byte(rng.Uint32())
		}
		n := loopNode(id, 1000+i)
		rt.heard(n, true)
		all = append(all, n)
	}
	var bad []nodeID
	for i, n := range rt.nodes() {
		if i%3 == 0 {
			rt.failed(n)
			rt.failed(n)
			bad = append(bad, n.ID)
		}
	}
	inTable := rt.nodes()
	for _, count := range []int{0, 1, 8, 20, 1000} {
		target := nodeID{0: byte(count), 7: 0x55}
		got := rt.closest(target, count)
		var want []nodeInfo
		for _, n := range inTable {
			if !slices.Contains(bad, n.ID) {
				want = append(want, n)
			}
		}
		slices.SortFunc(want, func(a, b nodeInfo) int { return xorCompare(target, a.ID, b.ID) })
		want = want[:min(count, len(want))]
		if len(got) != len(want) || (len(want) > 0 && !slices.Equal(got, want)) {
			t.Fatalf("closest(%v, %d) = %d nodes, want %d (sorted, no bad)", target, count, len(got), len(want))
		}
		for i := 1; i < len(got); i++ {
			if xorLess(target, got[i].ID, got[i-1].ID) {
				t.Fatalf("closest not sorted at %d", i)
			}
		}
	}
}

func TestClosestFamily(t *testing.T) {
	var self nodeID
	rt := newRoutingTable(self, newFakeClock().now)
	a4 := loopNode(nodeID{0: 1}, 1)
	a6 := nodeInfo{ID: nodeID{0: 2}, Addr: netip.MustParseAddrPort("[::1]:2")}
	q4 := loopNode(nodeID{0: 3}, 3) // only queried us: maybe a spoofed source
	q6 := nodeInfo{ID: nodeID{0: 4}, Addr: netip.MustParseAddrPort("[::1]:4")}
	rt.heard(a4, true)
	rt.heard(a6, true)
	rt.heard(q4, false)
	rt.heard(q6, false)
	tests := []struct {
		name              string
		want4, answerOnly bool
		want              []nodeInfo
	}{
		{"v4", true, false, []nodeInfo{a4, q4}},
		{"v6", false, false, []nodeInfo{a6, q6}},
		{"v4 answered", true, true, []nodeInfo{a4}},
		{"v6 answered", false, true, []nodeInfo{a6}},
	}
	for _, tt := range tests {
		if got := rt.closestFamily(self, 8, tt.want4, tt.answerOnly); !slices.Equal(got, tt.want) {
			t.Errorf("closestFamily(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := rt.closest(self, 8); len(got) != 4 {
		t.Errorf("closest = %v, want all 4 nodes for lookups", got)
	}
}

// A node that takes a slot by querying us is handed back once to be pinged:
// until it answers, replies do not pass it on.
func TestNewQuerierVerified(t *testing.T) {
	var self nodeID
	rt := newRoutingTable(self, newFakeClock().now)
	q, a := loopNode(nodeID{0: 1}, 1), loopNode(nodeID{0: 2}, 2)
	if ping := rt.heard(q, false); !slices.Equal(ping, []nodeInfo{q}) {
		t.Fatalf("heard(querier) = %v, want it back to verify", ping)
	}
	if ping := rt.heard(q, false); len(ping) != 0 {
		t.Fatalf("second query asks to verify again: %v", ping)
	}
	if ping := rt.heard(a, true); len(ping) != 0 {
		t.Fatalf("heard(responder) = %v, want nothing to verify", ping)
	}
	if got := rt.closestFamily(self, 8, true, true); !slices.Equal(got, []nodeInfo{a}) {
		t.Fatalf("before the answer, replies carry %v", got)
	}
	rt.heard(q, true) // the verification ping answered
	if got := rt.closestFamily(self, 8, true, true); !slices.Equal(got, []nodeInfo{q, a}) {
		t.Fatalf("after the answer, replies carry %v", got)
	}
}

func TestNodeStates(t *testing.T) {
	type step struct {
		after  time.Duration
		action string // "response", "query", "fail"
		want   nodeState
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"never responded is questionable", []step{{0, "query", stateQuestionable}, {time.Minute, "query", stateQuestionable}}},
		{"response is good for 15 minutes", []step{{0, "response", stateGood}, {bucketRefresh - time.Second, "", stateGood}, {time.Second, "", stateQuestionable}}},
		{"query keeps a responder good", []step{{0, "response", stateGood}, {20 * time.Minute, "", stateQuestionable}, {0, "query", stateGood}, {bucketRefresh, "", stateQuestionable}}},
		{"one failure is not bad", []step{{0, "response", stateGood}, {time.Minute, "fail", stateGood}, {20 * time.Minute, "", stateQuestionable}}},
		{"two failures in a row are bad", []step{{0, "response", stateGood}, {time.Minute, "fail", stateGood}, {0, "fail", stateBad}}},
		{"a response clears failures", []step{{0, "response", stateGood}, {0, "fail", stateGood}, {0, "response", stateGood}, {0, "fail", stateGood}}},
		{"a query does not clear failures", []step{{0, "response", stateGood}, {0, "fail", stateGood}, {0, "query", stateGood}, {0, "fail", stateBad}}},
		{"bad node that answers is good", []step{{0, "response", stateGood}, {0, "fail", stateGood}, {0, "fail", stateBad}, {0, "response", stateGood}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			var self nodeID
			rt := newRoutingTable(self, clk.now)
			n := loopNode(nodeID{0: 0x80}, 4000)
			for i, s := range tc.steps {
				clk.advance(s.after)
				switch s.action {
				case "response":
					rt.heard(n, true)
				case "query":
					rt.heard(n, false)
				case "fail":
					rt.failed(n)
				}
				if got := rt.lookup(n.ID).state(clk.now()); got != s.want {
					t.Fatalf("step %d (%s): state %v, want %v", i, s.action, got, s.want)
				}
			}
		})
	}
}

// fullFarBucket builds a table whose bucket 0 (ids with the top bit unlike
// ours) is full of nodes that responded at the start, and is not splittable.
func fullFarBucket(t *testing.T) (*routingTable, *fakeClock, []nodeInfo) {
	t.Helper()
	clk := newFakeClock()
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	var far []nodeInfo
	for i := range bucketSize {
		n := loopNode(idCPL(self, 0, i), 1000+i)
		rt.heard(n, true)
		far = append(far, n)
		clk.advance(time.Second) // distinct last-seen times
	}
	rt.heard(loopNode(idCPL(self, 3, 0), 2000), true) // splits
	if len(rt.buckets) != 2 {
		t.Fatalf("setup: %d buckets", len(rt.buckets))
	}
	return rt, clk, far
}

func TestPingBeforeEvict(t *testing.T) {
	rt, clk, far := fullFarBucket(t)
	var self nodeID
	newcomer := loopNode(idCPL(self, 0, 100), 3000)
	if ping := rt.heard(newcomer, true); len(ping) != 0 {
		t.Fatalf("bucket of good nodes asked to ping %v", ping)
	}
	if !rt.inCache(newcomer.ID) {
		t.Fatalf("newcomer not in the replacement cache")
	}
	clk.advance(bucketRefresh + time.Minute) // all questionable now
	other := loopNode(idCPL(self, 0, 101), 3001)
	ping := rt.heard(other, false)
	if !slices.Equal(ping, far) {
		t.Fatalf("pingFirst = %v, want the %d questionable nodes least recently seen first", ping, len(far))
	}
	if again := rt.heard(loopNode(idCPL(self, 0, 102), 3002), false); len(again) != 0 {
		t.Fatalf("pingFirst repeated within pingSpacing: %v", again)
	}
	// All but the first answer; the first fails twice and is replaced by
	// the best replacement: the newcomer that answered us.
	for _, n := range far[1:] {
		rt.heard(n, true)
	}
	rt.failed(far[0])
	if rt.lookup(far[0].ID) == nil {
		t.Fatalf("node replaced after one failure")
	}
	rt.failed(far[0])
	if rt.lookup(far[0].ID) != nil || rt.lookup(newcomer.ID) == nil {
		t.Fatalf("bad node not replaced by the responding replacement")
	}
	if rt.inCache(newcomer.ID) {
		t.Fatalf("promoted node still cached")
	}
	if got := rt.closest(newcomer.ID, 1); len(got) != 1 || got[0] != newcomer {
		t.Fatalf("closest(newcomer) = %v", got)
	}
	clk.advance(pingSpacing)
	rt.heard(loopNode(idCPL(self, 0, 103), 3003), false)
	checkInvariants(t, rt)
}

func TestBadNodeReplacedOnHeard(t *testing.T) {
	rt, _, far := fullFarBucket(t)
	var self nodeID
	rt.failed(far[3])
	rt.failed(far[3])
	n := loopNode(idCPL(self, 0, 200), 5000)
	if ping := rt.heard(n, false); !slices.Equal(ping, []nodeInfo{n}) {
		t.Fatalf("pingFirst = %v with a bad node to replace, want only the newcomer to verify", ping)
	}
	if rt.lookup(far[3].ID) != nil || rt.lookup(n.ID) == nil {
		t.Fatalf("bad node not replaced")
	}
	checkInvariants(t, rt)
}

// TestCachedIDFromNewAddress: an id waiting in the cache that is heard
// from another address and takes a slot must leave the cache, so no id is
// ever held twice.
func TestCachedIDFromNewAddress(t *testing.T) {
	rt, _, far := fullFarBucket(t)
	var self nodeID
	x := idCPL(self, 0, 500)
	rt.heard(loopNode(x, 9000), false) // waits in the cache at port 9000
	// Another node takes port 9000 in another bucket, so x cannot be
	// promoted from the cache when a slot frees up.
	rt.heard(loopNode(idCPL(self, 3, 7), 9000), true)
	rt.failed(far[0])
	rt.failed(far[0])
	if rt.lookup(far[0].ID) == nil || !rt.inCache(x) {
		t.Fatalf("setup: cached node on a taken address was promoted")
	}
	rt.heard(loopNode(x, 9001), true) // x from a free address takes the bad slot
	if e := rt.lookup(x); e == nil || e.Addr.Port() != 9001 || rt.inCache(x) {
		t.Fatalf("x: in bucket %+v, cached %v", e, rt.inCache(x))
	}
	checkInvariants(t, rt)
}

func TestReplacementCache(t *testing.T) {
	rt, clk, _ := fullFarBucket(t)
	var self nodeID
	for i := range 3 * replacementSize {
		clk.advance(time.Second)
		rt.heard(loopNode(idCPL(self, 0, 300+i), 6000+i), i%2 == 0)
	}
	b := rt.buckets[0]
	if len(b.cache) != replacementSize {
		t.Fatalf("cache holds %d, want %d", len(b.cache), replacementSize)
	}
	// Responders are kept over nodes that only queried.
	for _, e := range b.cache {
		if e.lastResponse.IsZero() {
			t.Fatalf("cache kept a non-responder %v over responders", e.ID)
		}
	}
	// A cached node that fails to answer leaves the cache.
	victim := b.cache[0].nodeInfo
	rt.failed(victim)
	if rt.inCache(victim.ID) {
		t.Fatalf("failed cache entry kept")
	}
	checkInvariants(t, rt)
}

func TestRefreshTargets(t *testing.T) {
	clk := newFakeClock()
	var self nodeID
	self[0] = 0x5a
	rt := newRoutingTable(self, clk.now)
	rt.rand = rand.NewChaCha8([32]byte{1})
	for cpl := range 6 {
		for i := range bucketSize {
			rt.heard(loopNode(idCPL(self, cpl, i), 1000+cpl*10+i), true)
		}
	}
	if got := rt.refreshTargets(); len(got) != 0 {
		t.Fatalf("fresh table: refreshTargets = %v", got)
	}
	clk.advance(bucketRefresh - time.Minute)
	rt.heard(loopNode(idCPL(self, 2, 0), 1020), true) // a response changes bucket 2
	clk.advance(time.Minute)
	got := rt.refreshTargets()
	if len(got) != len(rt.buckets)-1 {
		t.Fatalf("refreshTargets = %d ids, want %d (all but the fresh bucket)", len(got), len(rt.buckets)-1)
	}
	seen := map[int]bool{}
	for _, id := range got {
		i := rt.bucketIndex(id)
		if i == 2 || seen[i] {
			t.Fatalf("target %v falls in bucket %d (fresh or repeated)", id, i)
		}
		seen[i] = true
	}
	if again := rt.refreshTargets(); len(again) != 0 {
		t.Fatalf("refreshed buckets returned again: %v", again)
	}
	// Every bucket's range, over many draws.
	for i := range rt.buckets {
		for range 50 {
			id, err := rt.randomIDInBucket(i)
			if err != nil || rt.bucketIndex(id) != i {
				t.Fatalf("randomIDInBucket(%d) = %v in bucket %d, %v", i, id, rt.bucketIndex(id), err)
			}
		}
	}
}

func TestMemoryBounded(t *testing.T) {
	clk := newFakeClock()
	rng := rand.New(rand.NewPCG(3, 4))
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	for i := range 20000 {
		var id nodeID
		for j := range id {
			id[j] = byte(rng.Uint32())
		}
		// Bias towards our id so that many buckets split.
		for j := range rng.IntN(idLen) {
			id[j] = 0
		}
		ip := netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)})
		n := nodeInfo{ID: id, Addr: netip.AddrPortFrom(ip, uint16(1+rng.IntN(60000)))}
		switch rng.IntN(4) {
		case 0:
			rt.failed(n)
		case 1:
			rt.heard(n, false)
		default:
			rt.heard(n, true)
		}
		if i%1000 == 0 {
			clk.advance(time.Duration(rng.IntN(20)) * time.Minute)
			rt.refreshTargets()
		}
	}
	checkInvariants(t, rt)
	if rt.size() > maxBuckets*bucketSize {
		t.Fatalf("size %d", rt.size())
	}
	g, q, b := rt.counts()
	if g+q+b != rt.size() {
		t.Fatalf("counts %d+%d+%d != size %d", g, q, b, rt.size())
	}
}

// TestRandomOpsKeepInvariants drives the table with a small pool of ids and
// addresses, so ids move, addresses collide and caches churn.
func TestRandomOpsKeepInvariants(t *testing.T) {
	clk := newFakeClock()
	rng := rand.New(rand.NewPCG(9, 10))
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	rt.rand = rand.NewChaCha8([32]byte{3})
	ids := make([]nodeID, 400)
	for i := range ids {
		ids[i] = idCPL(self, rng.IntN(6), rng.IntN(1<<16))
	}
	for i := range 30000 {
		n := loopNode(ids[rng.IntN(len(ids))], 1+rng.IntN(300))
		switch rng.IntN(5) {
		case 0, 1:
			rt.failed(n)
		case 2:
			rt.heard(n, false)
		default:
			for _, p := range rt.heard(n, true) {
				if rng.IntN(2) == 0 {
					rt.heard(p, true)
				} else {
					rt.failed(p)
				}
			}
		}
		clk.advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
		if i%100 == 0 {
			rt.refreshTargets()
			checkInvariants(t, rt)
		}
	}
	checkInvariants(t, rt)
}

// farPublicNode returns a node on a public address whose id is in bucket 0
// of a table with the zero id, verified (BEP 42) or not.
func farPublicNode(t *testing.T, i int, verified bool) nodeInfo {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{byte(i), 9})
	ip := netip.AddrFrom4([4]byte{1, 2, byte(i), 4})
	for range 1000 {
		var id nodeID
		var err error
		if verified {
			id, err = secureNodeID(ip, rng)
		} else {
			_, err = rng.Read(id[:])
		}
		if err != nil {
			t.Fatal(err)
		}
		if id[0]&0x80 != 0 && isSecureNodeID(id, ip) == verified {
			return nodeInfo{ID: id, Addr: netip.AddrPortFrom(ip, 6881)}
		}
		ip = ip.Next()
	}
	t.Fatalf("no far node found")
	return nodeInfo{}
}

func TestPreferVerified(t *testing.T) {
	t.Run("verified evicts unverified", func(t *testing.T) {
		clk := newFakeClock()
		rt := newRoutingTable(nodeID{}, clk.now)
		for i := range bucketSize {
			rt.heard(farPublicNode(t, i, false), true)
		}
		v := farPublicNode(t, 50, true)
		if ping := rt.heard(v, true); len(ping) != 0 {
			t.Fatalf("pingFirst = %v", ping)
		}
		if rt.lookup(v.ID) == nil || rt.size() != bucketSize || len(rt.buckets) != 2 {
			t.Fatalf("verified newcomer not inserted over an unverified node")
		}
		if len(rt.buckets[0].cache) != 1 {
			t.Fatalf("evicted node not kept as a replacement")
		}
		checkInvariants(t, rt)
	})
	t.Run("unverified never displaces verified", func(t *testing.T) {
		clk := newFakeClock()
		rt := newRoutingTable(nodeID{}, clk.now)
		for i := range bucketSize {
			rt.heard(farPublicNode(t, i, true), true)
		}
		for i := range replacementSize {
			rt.heard(farPublicNode(t, 100+i, true), true)
		}
		clk.advance(bucketRefresh + time.Minute) // bucket nodes now questionable
		u := farPublicNode(t, 200, false)
		ping := rt.heard(u, true)
		if rt.lookup(u.ID) != nil || rt.inCache(u.ID) {
			t.Fatalf("unverified node displaced a verified one")
		}
		if len(ping) != bucketSize {
			t.Fatalf("pingFirst has %d nodes, want %d", len(ping), bucketSize)
		}
		checkInvariants(t, rt)
	})
	t.Run("good unverified kept for a silent verified newcomer", func(t *testing.T) {
		clk := newFakeClock()
		rt := newRoutingTable(nodeID{}, clk.now)
		for i := range bucketSize {
			rt.heard(farPublicNode(t, i, false), true)
		}
		v := farPublicNode(t, 50, true)
		rt.heard(v, false) // only queried us: may be unreachable
		if rt.lookup(v.ID) != nil || !rt.inCache(v.ID) {
			t.Fatalf("silent verified node displaced a good one")
		}
	})
}

func sampleNodes() []nodeInfo {
	return []nodeInfo{
		{ID: nodeID{0: 0x80, 19: 1}, Addr: netip.MustParseAddrPort("127.0.0.1:6881")},
		{ID: nodeID{0: 0x40, 19: 2}, Addr: netip.MustParseAddrPort("[2001:db8::1]:443")},
		{ID: nodeID{0: 0x20, 19: 3}, Addr: netip.MustParseAddrPort("198.51.100.7:65535")},
	}
}

func TestRoutingFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing")
	ns := sampleNodes()
	// Saved but normalised or skipped: a mapped address, an unusable one.
	in := append(slices.Clone(ns),
		nodeInfo{ID: nodeID{1: 1}, Addr: netip.MustParseAddrPort("[::ffff:1.2.3.4]:7")},
		nodeInfo{ID: nodeID{1: 2}, Addr: netip.MustParseAddrPort("1.2.3.4:0")})
	if err := saveRoutingTable(path, in); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := loadRoutingTable(path)
	want := append(slices.Clone(ns), nodeInfo{ID: nodeID{1: 1}, Addr: netip.MustParseAddrPort("1.2.3.4:7")})
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("load = %v, %v; want %v", got, err, want)
	}
	// Overwriting keeps the file valid; an empty table round-trips too.
	if err := saveRoutingTable(path, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := loadRoutingTable(path); err != nil || len(got) != 0 {
		t.Fatalf("empty load = %v, %v", got, err)
	}
}

func TestRoutingFileFromTable(t *testing.T) {
	clk := newFakeClock()
	rng := rand.New(rand.NewPCG(5, 6))
	var self nodeID
	rt := newRoutingTable(self, clk.now)
	for i := range 3000 {
		var id nodeID
		for j := range id {
			id[j] = byte(rng.Uint32())
		}
		rt.heard(loopNode(id, 1+i), true)
	}
	path := filepath.Join(t.TempDir(), "routing")
	if err := saveRoutingTable(path, rt.nodes()); err != nil {
		t.Fatal(err)
	}
	ns, err := loadRoutingTable(path)
	if err != nil || !slices.Equal(ns, rt.nodes()) {
		t.Fatalf("reload: %v", err)
	}
	rt2 := newRoutingTable(self, clk.now)
	for _, n := range ns {
		rt2.heard(n, false)
	}
	if rt2.size() != rt.size() {
		t.Fatalf("reloaded table has %d nodes, want %d", rt2.size(), rt.size())
	}
}

func TestRoutingFileMaxNodes(t *testing.T) {
	many := make([]nodeInfo, maxSavedNodes+10)
	for i := range many {
		many[i] = loopNode(nodeID{0: byte(i >> 8), 1: byte(i)}, 1+i)
	}
	b := appendRoutingFile(nil, many)
	ns, err := parseRoutingFile(b)
	if err != nil || len(ns) != maxSavedNodes || len(b) > maxRoutingFileLen {
		t.Fatalf("full file: %d nodes, %d bytes, %v", len(ns), len(b), err)
	}
}

// withCRC replaces the trailing checksum so a test reaches the check after it.
func withCRC(b []byte) []byte {
	b = slices.Clone(b[:len(b)-routingCRCLen])
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func TestRoutingFileCorrupt(t *testing.T) {
	good := appendRoutingFile(nil, sampleNodes())
	mod := func(f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	hdr := routingHeaderLen
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"wrong magic", withCRC(mod(func(b []byte) []byte { b[0] = 'K'; return b }))},
		{"wrong version", withCRC(mod(func(b []byte) []byte { b[len(routingMagic)] = 3; return b }))},
		{"version 1 without its id", withCRC(mod(func(b []byte) []byte { b[len(routingMagic)] = routingVersionWithID; return b }))},
		{"flipped bit", mod(func(b []byte) []byte { b[hdr+5] ^= 1; return b })},
		{"bad checksum", mod(func(b []byte) []byte { b[len(b)-1] ^= 1; return b })},
		{"count too high", withCRC(mod(func(b []byte) []byte { b[hdr-1]++; return b }))},
		{"count too low", withCRC(mod(func(b []byte) []byte { b[hdr-1]--; return b }))},
		{"absurd count", withCRC(mod(func(b []byte) []byte { binary.BigEndian.PutUint16(b[hdr-2:], maxSavedNodes+1); return b }))},
		{"unknown family", withCRC(mod(func(b []byte) []byte { b[hdr] = 5; return b }))},
		{"port zero", withCRC(mod(func(b []byte) []byte { b[hdr+routingEntry4Len-1], b[hdr+routingEntry4Len-2] = 0, 0; return b }))},
		{"unspecified address", withCRC(mod(func(b []byte) []byte { copy(b[hdr+1+idLen:], []byte{0, 0, 0, 0}); return b }))},
		{"trailing byte", withCRC(append(slices.Clone(good), 0))},
		{"oversized", make([]byte, maxRoutingFileLen+1)},
	}
	for n := range len(good) {
		tests = append(tests, struct {
			name string
			in   []byte
		}{"truncated", good[:n]})
	}
	dir := t.TempDir()
	for i, tc := range tests {
		if ns, err := parseRoutingFile(tc.in); err == nil || !errors.Is(err, errRoutingFile) || ns != nil {
			t.Errorf("%s (%d bytes): parse = %v, %v; want errRoutingFile and no nodes", tc.name, len(tc.in), ns, err)
		}
		// Through the file as well: an error, and the file left as it is.
		path := filepath.Join(dir, "r"+string(rune('a'+i%26))+hex.EncodeToString([]byte{byte(i)}))
		if err := os.WriteFile(path, tc.in, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadRoutingTable(path); !errors.Is(err, errRoutingFile) {
			t.Errorf("%s: load error %v, want errRoutingFile", tc.name, err)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(after, tc.in) {
			t.Errorf("%s: load changed the file", tc.name)
		}
	}
}

func TestRoutingFileMissing(t *testing.T) {
	_, err := loadRoutingTable(filepath.Join(t.TempDir(), "none"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("load missing = %v, want os.ErrNotExist", err)
	}
}

// specRoutingFile returns the bytes of SPEC.md's routing-file block name
// ("#" starts a comment).
func specRoutingFile(t *testing.T, name string) []byte {
	t.Helper()
	var blk *specBlock
	for _, b := range specRawBlocks(t, "routing-file") {
		if b.name == name {
			blk = &b
		}
	}
	if blk == nil {
		t.Fatalf("SPEC.md has no routing-file block %q", name)
	}
	var hexText strings.Builder
	for _, line := range blk.lines {
		line, _, _ = strings.Cut(line, "#")
		hexText.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(hexText.String())
	if err != nil {
		t.Fatalf("routing-file %s: %v", name, err)
	}
	return b
}

// TestRoutingFileSpecExample parses the examples in SPEC.md 3.3 so the spec
// and the code cannot drift apart: the file as written today, and the same
// nodes in a version 1 file, whose id is skipped.
func TestRoutingFileSpecExample(t *testing.T) {
	want := []nodeInfo{
		{ID: nodeID{0: 0x80, 19: 1}, Addr: netip.MustParseAddrPort("127.0.0.1:6881")},
		{ID: nodeID{0: 0x40, 19: 2}, Addr: netip.MustParseAddrPort("[2001:db8::1]:443")},
	}
	b := specRoutingFile(t, "example")
	ns, err := parseRoutingFile(b)
	if err != nil || !slices.Equal(ns, want) {
		t.Fatalf("example = %v, %v; want %v", ns, err, want)
	}
	if re := appendRoutingFile(nil, ns); !bytes.Equal(re, b) {
		t.Fatalf("example re-encodes to %x", re)
	}
	old := specRoutingFile(t, "example-v1")
	self, _ := parseNodeID("5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401")
	if !bytes.Equal(old, appendRoutingFileWithID(self, want)) {
		t.Fatalf("version 1 example %x is not the version 1 encoding", old)
	}
	if ns, err := parseRoutingFile(old); err != nil || !slices.Equal(ns, want) {
		t.Fatalf("version 1 example = %v, %v; want %v", ns, err, want)
	}
}

// appendRoutingFileWithID encodes ns as version 1 did, with self after the
// version byte.
func appendRoutingFileWithID(self nodeID, ns []nodeInfo) []byte {
	v2 := appendRoutingFile(nil, ns)
	b := append([]byte(routingMagic), routingVersionWithID)
	b = append(b, self[:]...)
	b = append(b, v2[routingHeaderLen-2:]...)
	return withCRC(b)
}

// A file written before the id left it still loads, and the next save
// drops the id.
func TestRoutingFileVersion1Loads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing")
	self := nodeID{0: 0xaa, 19: 0x55}
	if err := os.WriteFile(path, appendRoutingFileWithID(self, sampleNodes()), 0o600); err != nil {
		t.Fatal(err)
	}
	ns, err := loadRoutingTable(path)
	if err != nil || !slices.Equal(ns, sampleNodes()) {
		t.Fatalf("load version 1 = %v, %v; want %v", ns, err, sampleNodes())
	}
	if err := saveRoutingTable(path, ns); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if b[len(routingMagic)] != routingVersion || bytes.Contains(b, self[:]) {
		t.Fatalf("saved again: %x still holds the id or version 1", b)
	}
}

func FuzzRoutingFile(f *testing.F) {
	f.Add(appendRoutingFile(nil, sampleNodes()))
	f.Add(appendRoutingFile(nil, nil))
	f.Add(appendRoutingFileWithID(nodeID{1: 1}, sampleNodes()))
	f.Add([]byte(routingMagic + "\x02"))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkRoutingFileRoundTrip(t, b)
		// Random bytes almost never carry a valid checksum: also try the
		// input with its checksum fixed, to reach the entry parser.
		if len(b) >= routingCRCLen {
			checkRoutingFileRoundTrip(t, withCRC(b))
		}
	})
}

// checkRoutingFileRoundTrip asserts that whatever parses re-encodes to the
// same bytes (a version 1 file: to the same nodes in today's version), and
// that an error comes with no nodes.
func checkRoutingFileRoundTrip(t *testing.T, b []byte) {
	ns, err := parseRoutingFile(b)
	if err != nil {
		if ns != nil {
			t.Fatalf("error %v with results %v", err, ns)
		}
		return
	}
	re := appendRoutingFile(nil, ns)
	if b[len(routingMagic)] == routingVersionWithID {
		var self nodeID
		copy(self[:], b[len(routingMagic)+1:])
		if !bytes.Equal(appendRoutingFileWithID(self, ns), b) {
			t.Fatalf("version 1 round trip: %x != %x", appendRoutingFileWithID(self, ns), b)
		}
		if again, err := parseRoutingFile(re); err != nil || !slices.Equal(again, ns) {
			t.Fatalf("version 1 %x re-encoded as %x: %v, %v", b, re, again, err)
		}
		return
	}
	if !bytes.Equal(re, b) {
		t.Fatalf("round trip: %x != %x", re, b)
	}
}

func benchTable(b *testing.B) (*routingTable, []nodeInfo) {
	rng := rand.New(rand.NewPCG(7, 8))
	var self nodeID
	rt := newRoutingTable(self, newFakeClock().now)
	ns := make([]nodeInfo, 10000)
	for i := range ns {
		for j := range ns[i].ID {
			ns[i].ID[j] = byte(rng.Uint32())
		}
		for j := range rng.IntN(4) {
			ns[i].ID[j] = 0
		}
		ns[i].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), uint16(1+i))
		rt.heard(ns[i], true)
	}
	return rt, ns
}

func BenchmarkClosest(b *testing.B) {
	rt, ns := benchTable(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		rt.closest(ns[i%len(ns)].ID, bucketSize)
	}
	b.ReportMetric(float64(rt.size()), "nodes")
}

func BenchmarkHeard(b *testing.B) {
	rt, ns := benchTable(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		rt.heard(ns[i%len(ns)], i%2 == 0)
	}
}

// Over the wire: a querier is not passed on in replies until it has
// answered the ping the DHT sends it to verify its address.
func TestServeVerifiesQuerier(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	p := newRawPeer(t)
	p.send(d.addr(), rawQuery(methodFindNode, krpcArgs{Target: nodeID{1}}))
	var ping, reply krpcMsg
	for range 2 {
		b, _ := p.recv(2 * time.Second)
		m, err := parseKRPC(b)
		switch {
		case err != nil:
			t.Fatalf("parseKRPC(%q): %v", b, err)
		case m.Type == 'q':
			ping = m
		default:
			reply = m
		}
	}
	if ping.Method != methodPing || reply.Type != 'r' || len(reply.Reply.Nodes) != 0 {
		t.Fatalf("got ping %+v and reply %+v; want a ping and a reply without the unverified querier", ping, reply)
	}
	pong := krpcMsg{TID: ping.TID, Type: 'r', Reply: krpcReply{ID: nodeID(rawID)}}
	p.send(d.addr(), pong.appendTo(nil))
	// Verified, it is handed to others (though never to itself).
	waitUntil(t, func() bool { return len(d.srv.closestFamily(nodeID{1}, true, netip.AddrPort{})) == 1 })
	other := newRawPeer(t)
	r := other.exchange(d, rawQuery(methodFindNode, krpcArgs{Target: nodeID{1}}))
	ns, err := parseCompactNodes(r.Reply.Nodes)
	if err != nil || len(ns) != 1 || ns[0].Addr != p.addr() {
		t.Errorf("after the pong, nodes = %v, %v; want the querier %v", ns, err, p.addr())
	}
}

// A new id (BEP 42) keeps what we know of each node and drops bad ones.
func TestRebuiltKeepsStates(t *testing.T) {
	tb := newRoutingTable(nodeID{0x80}, newFakeClock().now)
	good := nodeInfo{ID: nodeID{0x01}, Addr: netip.MustParseAddrPort("10.0.0.1:1")}
	bad := nodeInfo{ID: nodeID{0x02}, Addr: netip.MustParseAddrPort("10.0.0.2:1")}
	asked := nodeInfo{ID: nodeID{0x03}, Addr: netip.MustParseAddrPort("10.0.0.3:1")}
	tb.heard(good, true)
	tb.heard(bad, true)
	tb.heard(asked, false)
	for range maxFailures {
		tb.failed(bad)
	}
	nt := tb.rebuilt(nodeID{0x40})
	if nt.self() != (nodeID{0x40}) {
		t.Fatalf("self = %v", nt.self())
	}
	g, q, b := nt.counts()
	if g != 1 || q != 1 || b != 0 {
		t.Errorf("counts after rebuild = %d good, %d questionable, %d bad; want 1, 1, 0", g, q, b)
	}
	if got := nt.closestFamily(nodeID{}, 8, true, true); len(got) != 1 || got[0] != good {
		t.Errorf("answered nodes after rebuild = %v, want only %v", got, good)
	}
}
