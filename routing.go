// Routing table (SPEC.md 3.3; BEP 5): 160-bit ids, k-buckets, XOR metric,
// and the routing file.
//
// Flow: the DHT calls heard() for every valid message from a node and
// failed() when one of our queries to it went unanswered. heard() updates a
// known node or inserts a new one: into free room, over a bad node, by
// splitting our own id's bucket, or over an unverified node if the newcomer
// has a BEP 42 id; otherwise the newcomer waits in the replacement cache and
// heard() returns the questionable nodes to ping (ping-before-evict), and a
// querier that took a slot, to be pinged once (replies pass on only nodes
// that answered us). failed() turns a node bad after repeated failures and
// promotes the best replacement. closest() answers lookups, closestFamily()
// replies; refreshTargets() names stale buckets. BEP 42 is in bep42.go.
package main

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"net/netip"
	"os"
	"slices"
	"time"
)

// idLen is the length of a node id and of an infohash (BEP 5).
const idLen = 20

// nodeID is a 160-bit DHT id; infohashes and BEP 44 targets share the type.
type nodeID [idLen]byte

func (id nodeID) String() string { return hex.EncodeToString(id[:]) }

// parseNodeID parses 40 hex digits (either case).
func parseNodeID(s string) (nodeID, error) {
	var id nodeID
	if len(s) != 2*idLen {
		return id, fmt.Errorf("routing: id %q: want %d hex digits", s, 2*idLen)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return nodeID{}, fmt.Errorf("routing: id %q: %w", s, err)
	}
	return id, nil
}

// nodeInfo is a contact in the DHT: an id and the address it answers on.
type nodeInfo struct {
	ID   nodeID
	Addr netip.AddrPort
}

// Table limits and timings; the names match SPEC.md section 3.3.
const (
	bucketSize      = 8                // k: nodes per bucket (BEP 5)
	replacementSize = 8                // waiting newcomers per bucket
	maxBuckets      = idLen * 8        // 160: one per shared-prefix length
	bucketRefresh   = 15 * time.Minute // BEP 5 "questionable" / refresh age
	maxFailures     = 2                // BEP 5 "multiple queries in a row"
	pingSpacing     = 30 * time.Second // heard() asks to ping a node at most this often
)

// nodeState is a node's standing as BEP 5 defines it.
type nodeState uint8

const (
	stateGood nodeState = iota
	stateQuestionable
	stateBad
)

func (s nodeState) String() string {
	switch s {
	case stateGood:
		return "good"
	case stateQuestionable:
		return "questionable"
	case stateBad:
		return "bad"
	}
	return "invalid"
}

// entry is what the table knows about one node.
type entry struct {
	nodeInfo
	verified     bool      // BEP 42: id matches address, or the address is exempt
	lastResponse time.Time // it last answered one of our queries; zero: never
	lastQuery    time.Time // it last sent us a query
	lastPinged   time.Time // heard() last asked the caller to ping it
	failures     int       // our queries it failed to answer in a row
}

// state follows BEP 5: good if it answered us within bucketRefresh, or has
// ever answered and queried us within bucketRefresh; bad after maxFailures
// unanswered queries in a row; questionable otherwise.
func (e *entry) state(now time.Time) nodeState {
	switch {
	case e.failures >= maxFailures:
		return stateBad
	case e.lastResponse.IsZero():
		return stateQuestionable
	case now.Sub(e.lastResponse) < bucketRefresh, now.Sub(e.lastQuery) < bucketRefresh:
		return stateGood
	}
	return stateQuestionable
}

func (e *entry) lastSeen() time.Time {
	if e.lastQuery.After(e.lastResponse) {
		return e.lastQuery
	}
	return e.lastResponse
}

// record notes a message from the node at now.
func (e *entry) record(responded bool, now time.Time) {
	if responded {
		e.lastResponse = now
		// Only an answer ends a run of unanswered queries: a node that
		// can send but not receive must not look reachable.
		e.failures = 0
	} else {
		e.lastQuery = now
	}
}

// better reports whether a should be kept over b in a replacement cache:
// verified ids first, then nodes that have answered us, then the freshest.
func better(a, b *entry) bool {
	if a.verified != b.verified {
		return a.verified
	}
	if a.lastResponse.IsZero() != b.lastResponse.IsZero() {
		return !a.lastResponse.IsZero()
	}
	return a.lastSeen().After(b.lastSeen())
}

// bucket holds up to bucketSize nodes and replacementSize waiting ones.
type bucket struct {
	nodes   []entry
	cache   []entry // replacement cache
	changed time.Time
}

func findEntry(es []entry, id nodeID) int {
	for i := range es {
		if es[i].ID == id {
			return i
		}
	}
	return -1
}

// routingTable is a BEP 5 routing table. Bucket i < len(buckets)-1 holds the
// ids that share exactly i leading bits with our own id; the last bucket
// holds every id sharing at least len(buckets)-1 bits, so it is the one that
// contains our id, the only one that ever splits. That is BEP 5's range
// splitting, indexed by prefix length.
//
// Not safe for concurrent use: the DHT guards it with a mutex.
type routingTable struct {
	id      nodeID
	now     func() time.Time
	rand    io.Reader // for refresh targets; crypto/rand unless a test sets it
	buckets []*bucket
	byAddr  map[netip.AddrPort]nodeID // owner of each addrKey in the buckets
}

func newRoutingTable(self nodeID, now func() time.Time) *routingTable {
	if now == nil {
		now = time.Now
	}
	return &routingTable{
		id:      self,
		now:     now,
		rand:    rand.Reader,
		buckets: []*bucket{{changed: now()}},
		byAddr:  make(map[netip.AddrPort]nodeID),
	}
}

func (t *routingTable) self() nodeID { return t.id }

// commonPrefixLen is the number of leading bits a and b share (160 if equal).
func commonPrefixLen(a, b nodeID) int {
	for i := range a {
		if x := a[i] ^ b[i]; x != 0 {
			return i*8 + bits.LeadingZeros8(x)
		}
	}
	return idLen * 8
}

func (t *routingTable) bucketIndex(id nodeID) int {
	return min(commonPrefixLen(t.id, id), len(t.buckets)-1)
}

// usableAddr rejects addresses no node can answer on, so nothing useless
// takes a slot.
func usableAddr(a netip.AddrPort) bool {
	ip := a.Addr()
	return ip.IsValid() && a.Port() != 0 && !ip.IsUnspecified() && !ip.IsMulticast() && !ip.Is4In6()
}

// unmapAddrPort turns an IPv4-mapped IPv6 address into IPv4, the form the
// table keys on, in case a dual-stack socket hands one over.
func unmapAddrPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// addrKey is what may hold only one id in the buckets: a public IP, whatever
// the port (libtorrent's restrict_routing_ips), so one host cannot fill the
// table with ids on many ports; an exempt address (loopback, LAN) with its
// port, as several nodes on one machine or behind one LAN address are
// normal there and tests run many nodes on 127.0.0.1.
func addrKey(a netip.AddrPort) netip.AddrPort {
	if isExemptBEP42(a.Addr()) {
		return a
	}
	return netip.AddrPortFrom(a.Addr(), 0)
}

// heard records traffic from n: responded is true when n answered one of our
// queries, false when n sent us a query. See the flow comment at the top.
func (t *routingTable) heard(n nodeInfo, responded bool) (pingFirst []nodeInfo) {
	n.Addr = unmapAddrPort(n.Addr)
	if n.ID == t.id || !usableAddr(n.Addr) {
		return nil
	}
	now := t.now()
	b := t.buckets[t.bucketIndex(n.ID)]
	if i := findEntry(b.nodes, n.ID); i >= 0 {
		t.update(b, i, n.Addr, responded, now)
		return nil
	}
	if owner, ok := t.byAddr[addrKey(n.Addr)]; ok && !t.evictOwner(owner, now) {
		// One address, one id: a host can't fill buckets by inventing
		// ids, nor, on a public address, by opening ports.
		return nil
	}
	e := entry{nodeInfo: n, verified: isSecureNodeID(n.ID, n.Addr.Addr())}
	if i := findEntry(b.cache, n.ID); i >= 0 {
		// Take the id out of the cache either way, so it is never both
		// waiting and in a slot; its history counts only for the same address.
		if b.cache[i].Addr == n.Addr {
			e = b.cache[i]
		}
		b.cache = slices.Delete(b.cache, i, i+1)
	}
	e.record(responded, now)
	ping := t.insert(e, now)
	if !responded {
		ping = t.verifyNewcomer(n.ID, ping, now)
	}
	return ping
}

// verifyNewcomer adds the node id to ping if it just took a bucket slot
// without ever answering us. Replies hand out only nodes that have answered
// (closestFamily), so a node that joins by querying us is pinged once to
// prove its address; otherwise a node that others only query, like a
// bootstrap router, would never pass anyone on.
func (t *routingTable) verifyNewcomer(id nodeID, ping []nodeInfo, now time.Time) []nodeInfo {
	b := t.buckets[t.bucketIndex(id)]
	i := findEntry(b.nodes, id)
	if i < 0 || !b.nodes[i].lastResponse.IsZero() || !b.nodes[i].lastPinged.IsZero() {
		return ping
	}
	b.nodes[i].lastPinged = now
	return append(ping, b.nodes[i].nodeInfo)
}

// hasAnswered reports whether n, a bucket node, has ever answered one of
// our queries.
func (t *routingTable) hasAnswered(n nodeInfo) bool {
	b := t.buckets[t.bucketIndex(n.ID)]
	i := findEntry(b.nodes, n.ID)
	return i >= 0 && b.nodes[i].Addr == unmapAddrPort(n.Addr) && !b.nodes[i].lastResponse.IsZero()
}

// update records a message from the known node b.nodes[i]. A different
// address for a live id is ignored: anyone can claim an id, so only the
// address that has been answering keeps it. A bad node may move.
func (t *routingTable) update(b *bucket, i int, addr netip.AddrPort, responded bool, now time.Time) {
	e := &b.nodes[i]
	if e.Addr != addr {
		if e.state(now) != stateBad {
			return
		}
		if owner, taken := t.byAddr[addrKey(addr)]; taken && owner != e.ID {
			return
		}
		delete(t.byAddr, addrKey(e.Addr))
		t.byAddr[addrKey(addr)] = e.ID
		*e = entry{nodeInfo: nodeInfo{ID: e.ID, Addr: addr}, verified: isSecureNodeID(e.ID, addr.Addr())}
	}
	e.record(responded, now)
	if responded {
		b.changed = now // BEP 5: a node in the bucket responded
	}
}

// evictOwner drops the node holding an address another id now claims, if it
// is bad (a node that restarted with a new id); it reports whether the
// address is free.
func (t *routingTable) evictOwner(owner nodeID, now time.Time) bool {
	b := t.buckets[t.bucketIndex(owner)]
	i := findEntry(b.nodes, owner)
	if i < 0 || b.nodes[i].state(now) != stateBad {
		return false
	}
	delete(t.byAddr, addrKey(b.nodes[i].Addr))
	b.nodes = slices.Delete(b.nodes, i, i+1)
	return true
}

// insert places a node that is not in the buckets (the bounded loop splits
// at most maxBuckets times).
func (t *routingTable) insert(e entry, now time.Time) []nodeInfo {
	for range maxBuckets {
		idx := t.bucketIndex(e.ID)
		b := t.buckets[idx]
		if len(b.nodes) < bucketSize {
			t.place(b, -1, e, now)
			return nil
		}
		if i := worstBad(b.nodes, now); i >= 0 {
			t.place(b, i, e, now) // a bad node is dead weight, whoever replaces it
			return nil
		}
		if idx == len(t.buckets)-1 && len(t.buckets) < maxBuckets {
			t.split(now)
			continue
		}
		if i := unverifiedVictim(b.nodes, &e, now); i >= 0 {
			old := b.nodes[i]
			t.place(b, i, e, now)
			addReplacement(b, old)
			return nil
		}
		addReplacement(b, e)
		return pingCandidates(b, now)
	}
	return nil
}

// rebuilt returns a table around a new id (BEP 42) holding this table's
// nodes with what we know of them (answers, failures), minus the bad ones:
// a new id changes which bucket a node belongs in, not its state.
func (t *routingTable) rebuilt(id nodeID) *routingTable {
	nt := newRoutingTable(id, t.now)
	nt.rand = t.rand
	now := t.now()
	for _, b := range t.buckets {
		for _, e := range b.nodes {
			if e.state(now) != stateBad {
				nt.insert(e, now)
			}
		}
	}
	return nt
}

// place puts e into slot i of b (appending if i < 0), keeping byAddr exact.
func (t *routingTable) place(b *bucket, i int, e entry, now time.Time) {
	if i < 0 {
		b.nodes = append(b.nodes, e)
	} else {
		delete(t.byAddr, addrKey(b.nodes[i].Addr))
		b.nodes[i] = e
	}
	t.byAddr[addrKey(e.Addr)] = e.ID
	b.changed = now
}

// worstBad is the index of the least recently seen bad node, or -1.
func worstBad(es []entry, now time.Time) int {
	w := -1
	for i := range es {
		if es[i].state(now) == stateBad && (w < 0 || es[i].lastSeen().Before(es[w].lastSeen())) {
			w = i
		}
	}
	return w
}

// unverifiedVictim picks the node a verified newcomer e displaces (BEP 42
// preference), or -1. Unverified newcomers never displace anyone. A
// questionable unverified node goes first; a good one only for a newcomer
// that has answered us, so the table does not trade a working node for one
// that may be unreachable.
func unverifiedVictim(es []entry, e *entry, now time.Time) int {
	if !e.verified {
		return -1
	}
	w := -1
	for i := range es {
		c := &es[i]
		if c.verified || (c.state(now) == stateGood && e.lastResponse.IsZero()) {
			continue
		}
		if w < 0 || victimBefore(c, &es[w], now) {
			w = i
		}
	}
	return w
}

func victimBefore(a, b *entry, now time.Time) bool {
	qa, qb := a.state(now) != stateGood, b.state(now) != stateGood
	if qa != qb {
		return qa
	}
	return a.lastSeen().Before(b.lastSeen())
}

// addReplacement keeps e in b's bounded replacement cache. When the cache is
// full e replaces the worst entry unless that one ranks above e (see
// better), so an unverified id never displaces a verified one and a node
// that only queried us never displaces one that answered.
func addReplacement(b *bucket, e entry) {
	if i := findEntry(b.cache, e.ID); i >= 0 {
		b.cache[i] = e
		return
	}
	if len(b.cache) < replacementSize {
		b.cache = append(b.cache, e)
		return
	}
	w := 0
	for i := range b.cache {
		if better(&b.cache[w], &b.cache[i]) {
			w = i
		}
	}
	if better(&b.cache[w], &e) {
		return
	}
	b.cache[w] = e
}

// pingCandidates returns b's questionable nodes, least recently seen first,
// that were not handed out for a ping within pingSpacing: a stream of
// newcomers must not turn into a stream of pings.
func pingCandidates(b *bucket, now time.Time) []nodeInfo {
	var idx []int
	for i := range b.nodes {
		e := &b.nodes[i]
		if e.state(now) == stateQuestionable && (e.lastPinged.IsZero() || now.Sub(e.lastPinged) >= pingSpacing) {
			idx = append(idx, i)
		}
	}
	slices.SortFunc(idx, func(i, j int) int { return b.nodes[i].lastSeen().Compare(b.nodes[j].lastSeen()) })
	out := make([]nodeInfo, 0, len(idx))
	for _, i := range idx {
		b.nodes[i].lastPinged = now
		out = append(out, b.nodes[i].nodeInfo)
	}
	return out
}

// split divides the last bucket (the one holding our id): nodes sharing
// exactly d bits with us stay, the rest move to a new last bucket.
func (t *routingTable) split(now time.Time) {
	d := len(t.buckets) - 1
	old := t.buckets[d]
	near := &bucket{changed: now}
	keep := &bucket{changed: now}
	for _, e := range old.nodes {
		if commonPrefixLen(t.id, e.ID) > d {
			near.nodes = append(near.nodes, e)
		} else {
			keep.nodes = append(keep.nodes, e)
		}
	}
	for _, e := range old.cache {
		if commonPrefixLen(t.id, e.ID) > d {
			near.cache = append(near.cache, e)
		} else {
			keep.cache = append(keep.cache, e)
		}
	}
	t.buckets[d] = keep
	t.buckets = append(t.buckets, near)
}

// failed records that a query to n went unanswered after retransmissions.
// When n turns bad, the best replacement takes its slot.
func (t *routingTable) failed(n nodeInfo) {
	n.Addr = unmapAddrPort(n.Addr)
	now := t.now()
	b := t.buckets[t.bucketIndex(n.ID)]
	if i := findEntry(b.cache, n.ID); i >= 0 && b.cache[i].Addr == n.Addr {
		// A waiting node that does not answer has no claim to a slot.
		b.cache = slices.Delete(b.cache, i, i+1)
		return
	}
	i := findEntry(b.nodes, n.ID)
	if i < 0 || b.nodes[i].Addr != n.Addr {
		return
	}
	if b.nodes[i].failures < maxFailures {
		b.nodes[i].failures++
	}
	if b.nodes[i].state(now) != stateBad {
		return
	}
	if r := t.bestReplacement(b); r >= 0 {
		e := b.cache[r]
		b.cache = slices.Delete(b.cache, r, r+1)
		t.place(b, i, e, now)
	}
}

// bestReplacement is the index of the cache entry to promote, or -1. An
// entry whose address meanwhile belongs to another node is skipped.
func (t *routingTable) bestReplacement(b *bucket) int {
	w := -1
	for i := range b.cache {
		if _, taken := t.byAddr[addrKey(b.cache[i].Addr)]; taken {
			continue
		}
		if w < 0 || better(&b.cache[i], &b.cache[w]) {
			w = i
		}
	}
	return w
}

// xorCompare orders a and b by XOR distance to target.
func xorCompare(target, a, b nodeID) int {
	for i := range target {
		da, db := a[i]^target[i], b[i]^target[i]
		if da != db {
			if da < db {
				return -1
			}
			return 1
		}
	}
	return 0
}

// xorLess reports whether a is closer to target than b.
func xorLess(target, a, b nodeID) bool { return xorCompare(target, a, b) < 0 }

// closest returns up to count non-bad nodes sorted by XOR distance to target.
// Lookups start from these, nodes that only queried us included: a lookup
// finds out itself whether they answer.
func (t *routingTable) closest(target nodeID, count int) []nodeInfo {
	return t.closestWhere(target, count, func(*entry) bool { return true })
}

// closestFamily is closest restricted to IPv4 (want4) or IPv6 nodes, for the
// "nodes" and "nodes6" fields of a reply (BEP 32). With answeredOnly it
// keeps only nodes that have answered one of our queries: BEP 5 replies
// carry good nodes, and a node only heard from through its queries may
// have a spoofed source address, which we must not hand to others.
func (t *routingTable) closestFamily(target nodeID, count int, want4, answeredOnly bool) []nodeInfo {
	return t.closestWhere(target, count, func(e *entry) bool {
		return e.Addr.Addr().Is4() == want4 && (!answeredOnly || !e.lastResponse.IsZero())
	})
}

func (t *routingTable) closestWhere(target nodeID, count int, keep func(*entry) bool) []nodeInfo {
	if count <= 0 {
		return nil
	}
	now := t.now()
	// Keep the best count in a sorted slice: one allocation, and a node
	// farther than the current last is dismissed with one comparison.
	sel := closestSet{target: target, out: make([]nodeInfo, 0, min(count, t.size()))}
	for _, b := range t.buckets {
		for i := range b.nodes {
			if b.nodes[i].state(now) != stateBad && keep(&b.nodes[i]) {
				sel.offer(b.nodes[i].nodeInfo, count)
			}
		}
	}
	return sel.out
}

// closestSet is a bounded selection of the nodes closest to target.
type closestSet struct {
	target nodeID
	out    []nodeInfo // sorted, closest first
}

func (s *closestSet) offer(n nodeInfo, count int) {
	if len(s.out) == count && !xorLess(s.target, n.ID, s.out[count-1].ID) {
		return
	}
	i, _ := slices.BinarySearchFunc(s.out, n, func(a, b nodeInfo) int { return xorCompare(s.target, a.ID, b.ID) })
	if len(s.out) == count {
		s.out = s.out[:count-1]
	}
	s.out = slices.Insert(s.out, i, n)
}

// size is the number of nodes in the buckets (not the replacement caches).
func (t *routingTable) size() int {
	n := 0
	for _, b := range t.buckets {
		n += len(b.nodes)
	}
	return n
}

// counts reports how many bucket nodes are in each state, for /dht status.
func (t *routingTable) counts() (good, questionable, bad int) {
	now := t.now()
	for _, b := range t.buckets {
		for i := range b.nodes {
			switch b.nodes[i].state(now) {
			case stateGood:
				good++
			case stateQuestionable:
				questionable++
			default:
				bad++
			}
		}
	}
	return good, questionable, bad
}

// nodes returns every node in the buckets, bucket by bucket, for saving.
func (t *routingTable) nodes() []nodeInfo {
	out := make([]nodeInfo, 0, t.size())
	for _, b := range t.buckets {
		for i := range b.nodes {
			out = append(out, b.nodes[i].nodeInfo)
		}
	}
	return out
}

// refreshTargets returns one random id in the range of each bucket that has
// not changed for bucketRefresh, and marks those buckets refreshed.
func (t *routingTable) refreshTargets() []nodeID {
	now := t.now()
	var out []nodeID
	for i, b := range t.buckets {
		if now.Sub(b.changed) < bucketRefresh {
			continue
		}
		id, err := t.randomIDInBucket(i)
		if err != nil {
			continue // crypto/rand does not fail; a test reader may run dry
		}
		b.changed = now
		out = append(out, id)
	}
	return out
}

// randomIDInBucket draws an id that falls in bucket i: it shares i leading
// bits with ours and, unless i is the last bucket, differs at bit i.
func (t *routingTable) randomIDInBucket(i int) (nodeID, error) {
	var id nodeID
	if _, err := io.ReadFull(t.rand, id[:]); err != nil {
		return nodeID{}, fmt.Errorf("routing: random id: %w", err)
	}
	for bit := 0; bit < i; bit++ {
		setBit(&id, bit, getBit(t.id, bit))
	}
	if i < len(t.buckets)-1 {
		setBit(&id, i, !getBit(t.id, i))
	}
	return id, nil
}

func getBit(id nodeID, i int) bool { return id[i/8]&(0x80>>(i%8)) != 0 }

func setBit(id *nodeID, i int, v bool) {
	if v {
		id[i/8] |= 0x80 >> (i % 8)
	} else {
		id[i/8] &^= 0x80 >> (i % 8)
	}
}

// Persistence. The layout is specified byte by byte in SPEC.md 3.3. The file
// holds the nodes, not our id: an id kept across restarts would be a
// long-term pseudonym (SPEC.md 6.2). Version 1 files, which held the id
// after the version byte, still load; the id in them is skipped.

const (
	routingMagic         = "kadchat-routing" // 15 bytes
	routingVersion       = 2
	routingVersionWithID = 1                                 // written before the id left the file
	routingHeaderLen     = len(routingMagic) + 1 + 2         // magic, version, count
	routingHeaderWithID  = len(routingMagic) + 1 + idLen + 2 // magic, version, old id, count
	routingCRCLen        = 4
	routingFamily4       = 4
	routingFamily6       = 6
	routingEntry4Len     = 1 + idLen + 4 + 2
	routingEntry6Len     = 1 + idLen + 16 + 2
	maxSavedNodes        = maxBuckets * bucketSize // 1280: more than a table holds is absurd
	maxRoutingFileLen    = routingHeaderWithID + maxSavedNodes*routingEntry6Len + routingCRCLen
	routingFileMode      = 0o600
)

var errRoutingFile = errors.New("routing: bad routing file")

// appendRoutingFile encodes up to maxSavedNodes of ns. Entries a loader
// would reject (no usable address) are skipped.
func appendRoutingFile(dst []byte, ns []nodeInfo) []byte {
	var body []byte
	count := 0
	for _, n := range ns {
		if count == maxSavedNodes {
			break
		}
		a := unmapAddrPort(n.Addr)
		if !usableAddr(a) {
			continue
		}
		if a.Addr().Is4() {
			body = append(body, routingFamily4)
		} else {
			body = append(body, routingFamily6)
		}
		body = append(body, n.ID[:]...)
		body = append(body, a.Addr().AsSlice()...)
		body = binary.BigEndian.AppendUint16(body, a.Port())
		count++
	}
	start := len(dst)
	dst = append(dst, routingMagic...)
	dst = append(dst, routingVersion)
	dst = binary.BigEndian.AppendUint16(dst, uint16(count))
	dst = append(dst, body...)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// parseRoutingFile is the strict, pure inverse of appendRoutingFile. It
// also reads version 1, skipping the id that version stored.
func parseRoutingFile(b []byte) ([]nodeInfo, error) {
	if len(b) < routingHeaderLen+routingCRCLen || len(b) > maxRoutingFileLen {
		return nil, fmt.Errorf("%w: length %d", errRoutingFile, len(b))
	}
	if string(b[:len(routingMagic)]) != routingMagic {
		return nil, fmt.Errorf("%w: no magic", errRoutingFile)
	}
	hdr := routingHeaderLen
	switch v := b[len(routingMagic)]; v {
	case routingVersion:
	case routingVersionWithID:
		hdr = routingHeaderWithID
	default:
		return nil, fmt.Errorf("%w: version %d", errRoutingFile, v)
	}
	if len(b) < hdr+routingCRCLen {
		return nil, fmt.Errorf("%w: length %d", errRoutingFile, len(b))
	}
	body, sum := b[:len(b)-routingCRCLen], binary.BigEndian.Uint32(b[len(b)-routingCRCLen:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", errRoutingFile)
	}
	count := int(binary.BigEndian.Uint16(b[hdr-2:]))
	if count > maxSavedNodes {
		return nil, fmt.Errorf("%w: %d nodes", errRoutingFile, count)
	}
	return parseRoutingEntries(body[hdr:], count)
}

func parseRoutingEntries(b []byte, count int) ([]nodeInfo, error) {
	ns := make([]nodeInfo, 0, count)
	for i := range count {
		if len(b) == 0 {
			return nil, fmt.Errorf("%w: entry %d: truncated", errRoutingFile, i)
		}
		n := routingEntry4Len
		if b[0] == routingFamily6 {
			n = routingEntry6Len
		} else if b[0] != routingFamily4 {
			return nil, fmt.Errorf("%w: entry %d: family %d", errRoutingFile, i, b[0])
		}
		if len(b) < n {
			return nil, fmt.Errorf("%w: entry %d: truncated", errRoutingFile, i)
		}
		var ni nodeInfo
		copy(ni.ID[:], b[1:])
		ip, _ := netip.AddrFromSlice(b[1+idLen : n-2])
		ni.Addr = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[n-2:]))
		if !usableAddr(ni.Addr) {
			return nil, fmt.Errorf("%w: entry %d: address %v", errRoutingFile, i, ni.Addr)
		}
		ns = append(ns, ni)
		b = b[n:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errRoutingFile, len(b))
	}
	return ns, nil
}

// saveRoutingTable writes ns to path atomically, mode 0600.
func saveRoutingTable(path string, ns []nodeInfo) error {
	if err := writeFileAtomic(path, appendRoutingFile(nil, ns), routingFileMode); err != nil {
		return fmt.Errorf("routing: save: %w", err)
	}
	return nil
}

// loadRoutingTable reads a file written by saveRoutingTable. A missing file
// is an error satisfying errors.Is(err, os.ErrNotExist); a corrupt one is an
// error wrapping errRoutingFile, never silently replaced.
func loadRoutingTable(path string) ([]nodeInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("routing: load: %w", err)
	}
	defer f.Close()
	// Read one byte past the limit so an oversized file is refused
	// without reading all of it.
	b, err := io.ReadAll(io.LimitReader(f, int64(maxRoutingFileLen)+1))
	if err != nil {
		return nil, fmt.Errorf("routing: load: %w", err)
	}
	ns, err := parseRoutingFile(b)
	if err != nil {
		return nil, fmt.Errorf("routing: load %s: %w", path, err)
	}
	return ns, nil
}
