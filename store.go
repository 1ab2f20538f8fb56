// Storage side of the DHT (SPEC.md 3.5): write tokens, announced peers
// (BEP 5) and BEP 44 items. It is kept apart from the KRPC codec and the routing table:
// the codec only turns bytes into krpcArgs, the DHT then asks these stores.
//
// Flow: a get_peers or get query is answered with tokenBox.issue(requester
// IP) and peerStore.peers / itemStore.get; a later announce_peer or put
// must carry a token that tokenBox.valid accepts for the same IP before the
// DHT calls peerStore.add or itemStore.put. Every store is safe for
// concurrent use and bounded in memory whatever arrives (SPEC.md 3.5): when
// full, it evicts what was refreshed least recently, which is also what
// would expire soonest; and one source (sourceKey: a /24 or /64) may hold
// only so much, its own oldest entries going first, so that one host cannot
// flush everyone else's.
package main

import (
	"bytes"
	"container/list"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/subtle"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Write tokens (SPEC.md 3.5.1).
const (
	tokenRotation  = 5 * time.Minute // a secret is current for one period, then previous for one more
	tokenSecretLen = 20              // HMAC-SHA-1 key: as long as the hash output (RFC 2104)
	tokenLen       = 8               // truncated MAC: 64 bits to guess per IP per period
)

// Announced peers (SPEC.md 3.5.2).
const (
	peerTTL       = 30 * time.Minute // BEP 5 practice: peers re-announce well within this
	maxInfohashes = 2000             // swarms stored at once
	maxSwarmPeers = 100              // peers stored per infohash
	maxPortsPerIP = 4                // peers per infohash sharing one IP (a few clients behind a NAT)
)

// What one source of writes may hold (SPEC.md 3.5): one host with one token
// must not be able to flush the stores of everyone else's entries.
const (
	maxSourceInfohashes = 32   // infohashes one source may have peers in
	maxSourceItems      = 32   // BEP 44 items one source may have stored
	maxSources          = 2000 // sources a store remembers; see sourceLog
)

// BEP 44 items (SPEC.md 3.5.3): error codes and limits.
const (
	bep44ErrInvalid    = 203 // = krpcErrProtocol: v not canonical bencode, or a negative seq
	bep44ErrTooBig     = 205
	bep44ErrSig        = 206
	bep44ErrSaltTooBig = 207
	bep44ErrCAS        = 301
	bep44ErrSeq        = 302

	maxItemValue = 1000          // bytes of bencoded v
	maxSalt      = 64            // bytes of salt
	itemTTL      = 2 * time.Hour // BEP 44: items MAY expire after 2 h; publishers re-put hourly
	maxItems     = 1000          // items stored at once
)

// tokenBox issues and checks the write tokens of get_peers/announce_peer and
// get/put. token = HMAC-SHA-1(secret, IP)[:tokenLen]. Time is cut into
// epochs of tokenRotation; each epoch has its own random secret and a token
// is accepted in its epoch and the next, so it lives 5 to 10 minutes.
// Rotation is lazy (done when the box is used), so no timer is needed.
// Safe for concurrent use.
type tokenBox struct {
	mu    sync.Mutex
	rand  io.Reader
	now   func() time.Time
	start time.Time // beginning of epoch 0
	epoch int64     // epoch of cur
	cur   hash.Hash // HMAC keyed by the current secret
	prev  hash.Hash // HMAC keyed by the previous secret
	ip    [16]byte  // scratch, so a MAC costs no allocation
	sum   [sha1.Size]byte
}

// newTokenBox draws two secrets from rand (crypto/rand in production); the
// "previous" one is fresh too, so no token is valid before it is issued.
func newTokenBox(rand io.Reader, now func() time.Time) *tokenBox {
	b := &tokenBox{rand: rand, now: now, start: now()}
	b.cur, b.prev = b.newMAC(), b.newMAC()
	return b
}

// newMAC keys an HMAC with a fresh secret. A reader that fails leaves us
// without an unguessable secret; crypto/rand never does, so this panics
// rather than hand out forgeable tokens.
func (b *tokenBox) newMAC() hash.Hash {
	var secret [tokenSecretLen]byte
	if _, err := io.ReadFull(b.rand, secret[:]); err != nil {
		panic(fmt.Sprintf("store: token secret: %v", err))
	}
	return hmac.New(sha1.New, secret[:])
}

// rotate moves to the epoch of now: one step retires cur to prev, two or
// more replace both. A clock that goes backwards changes nothing.
func (b *tokenBox) rotate() {
	e := int64(b.now().Sub(b.start) / tokenRotation)
	switch {
	case e <= b.epoch:
		return
	case e == b.epoch+1:
		b.prev, b.cur = b.cur, b.newMAC()
	default:
		b.prev, b.cur = b.newMAC(), b.newMAC()
	}
	b.epoch = e
}

// mac returns the token HMAC(secret, IP)[:tokenLen], in b.sum; the IP is 4 bytes for IPv4
// (IPv4-mapped IPv6 is unmapped first) and 16 for IPv6, without zone.
func (b *tokenBox) mac(h hash.Hash, ip netip.Addr) []byte {
	var n int
	if ip = ip.Unmap(); ip.Is4() {
		a := ip.As4()
		n = copy(b.ip[:], a[:])
	} else {
		a := ip.As16()
		n = copy(b.ip[:], a[:])
	}
	h.Reset()
	h.Write(b.ip[:n])
	return h.Sum(b.sum[:0])[:tokenLen]
}

// issue returns the token for a requester at ip.
func (b *tokenBox) issue(ip netip.Addr) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rotate()
	return bytes.Clone(b.mac(b.cur, ip))
}

// valid reports whether tok was issued to ip under the current or the
// previous secret. Both are compared in constant time and always both, so
// timing tells nothing about which failed.
func (b *tokenBox) valid(tok []byte, ip netip.Addr) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rotate()
	ok := subtle.ConstantTimeCompare(tok, b.mac(b.cur, ip))
	ok |= subtle.ConstantTimeCompare(tok, b.mac(b.prev, ip))
	return ok == 1
}

// ttlMap maps keys to values that expire ttl after they were last touched.
// Entries are kept in touch order (a list), so both the expired ones and the
// one to evict when full are found at the front in O(1). Not safe for
// concurrent use: the stores hold their own mutex.
type ttlMap[K comparable, V any] struct {
	ttl   time.Duration
	max   int
	m     map[K]*list.Element // Value is *ttlEntry[K, V]
	order list.List           // least recently touched first
}

type ttlEntry[K comparable, V any] struct {
	key     K
	val     V
	touched time.Time
}

func newTTLMap[K comparable, V any](ttl time.Duration, max int) *ttlMap[K, V] {
	return &ttlMap[K, V]{ttl: ttl, max: max, m: make(map[K]*list.Element)}
}

// expire drops the entries not touched for ttl.
func (t *ttlMap[K, V]) expire(now time.Time) {
	for f := t.order.Front(); f != nil; f = t.order.Front() {
		e := f.Value.(*ttlEntry[K, V])
		if now.Sub(e.touched) < t.ttl {
			return
		}
		t.remove(f)
	}
}

func (t *ttlMap[K, V]) remove(el *list.Element) {
	delete(t.m, el.Value.(*ttlEntry[K, V]).key)
	t.order.Remove(el)
}

// get returns the live entry for k, or nil.
func (t *ttlMap[K, V]) get(k K, now time.Time) *ttlEntry[K, V] {
	t.expire(now)
	if el, ok := t.m[k]; ok {
		return el.Value.(*ttlEntry[K, V])
	}
	return nil
}

// touch returns the entry for k, marked as touched now; a new entry holds
// the zero V. When the map is full a new entry evicts the least recently
// touched one, which would have expired soonest.
func (t *ttlMap[K, V]) touch(k K, now time.Time) *ttlEntry[K, V] {
	t.expire(now)
	if el, ok := t.m[k]; ok {
		t.order.MoveToBack(el)
		e := el.Value.(*ttlEntry[K, V])
		e.touched = now
		return e
	}
	if len(t.m) >= t.max {
		t.remove(t.order.Front())
	}
	e := &ttlEntry[K, V]{key: k, touched: now}
	t.m[k] = t.order.PushBack(e)
	return e
}

// delete drops the entry for k, if any.
func (t *ttlMap[K, V]) delete(k K) {
	if el, ok := t.m[k]; ok {
		t.remove(el)
	}
}

// sourceKey is who counts as one source of writes: a public address by its
// /24 (IPv4) or /64 (IPv6), since one host easily has many addresses in its
// network; an exempt address (loopback, LAN: BEP 42's list) by address and
// port, as there every node is trusted already and tests run many nodes on
// 127.0.0.1. It is the rule of the external address vote (voterKey).
func sourceKey(a netip.AddrPort) netip.AddrPort { return voterKey(a) }

// sourceLog lists the keys (infohashes or targets) one source has written,
// the least recently written first. A store keeps at most maxSources logs,
// least recently used out first: a source that writes often, as a flood
// does, keeps its log and so its bound; one whose log was dropped has
// written too rarely to crowd anyone out.
type sourceLog struct{ keys []nodeID }

// note records a write of k. When k is new and the log holds max keys, the
// oldest is dropped and returned, for the caller to drop what the source
// holds under it.
func (l *sourceLog) note(k nodeID, max int) (dropped nodeID, ok bool) {
	if i := slices.Index(l.keys, k); i >= 0 {
		l.keys = append(slices.Delete(l.keys, i, i+1), k)
		return nodeID{}, false
	}
	if len(l.keys) >= max {
		dropped, ok = l.keys[0], true
		l.keys = slices.Delete(l.keys, 0, 1)
	}
	l.keys = append(l.keys, k)
	return dropped, ok
}

// sourceLogOf returns src's log in logs, touched now.
func sourceLogOf(logs *ttlMap[netip.AddrPort, *sourceLog], src netip.AddrPort, now time.Time) *sourceLog {
	e := logs.touch(src, now)
	if e.val == nil {
		e.val = &sourceLog{}
	}
	return e.val
}

// peerEntry is one announced peer. Its expiry is a time.Duration since the
// store's start, not a time.Time, because up to maxInfohashes*maxSwarmPeers
// of these exist (40 bytes each instead of 56); now.Sub(start) is read on
// the monotonic clock, like the expiry of ttlMap, so a step of the wall
// clock expires nothing early.
type peerEntry struct {
	addr    netip.AddrPort
	expires time.Duration
}

// peerSwarm holds the peers of one infohash in announce order, the oldest
// first: so the expired ones and the one to evict are at the front.
type peerSwarm struct{ peers []peerEntry }

// peerStore keeps the peers announced per infohash (BEP 5 announce_peer),
// bounded by maxInfohashes, maxSwarmPeers and maxPortsPerIP, and per source
// by maxSourceInfohashes. Peers are keyed by IP and port, not IP alone, so
// several clients behind one NAT are kept apart. Safe for concurrent use.
type peerStore struct {
	mu      sync.Mutex
	now     func() time.Time
	start   time.Time  // peerEntry expiries count from here
	rng     *rand.Rand // picks the subset peers returns
	swarms  *ttlMap[nodeID, *peerSwarm]
	sources *ttlMap[netip.AddrPort, *sourceLog] // by sourceKey: the infohashes each announced to
}

// newPeerStore seeds its sampler from rnd (crypto/rand in production, a
// fixed stream in tests, so subsets are reproducible). The sample only
// spreads load among peers, so a ChaCha8 stream is enough; a reader that
// fails panics, as for tokenBox secrets.
func newPeerStore(now func() time.Time, rnd io.Reader) *peerStore {
	var seed [32]byte
	if _, err := io.ReadFull(rnd, seed[:]); err != nil {
		panic(fmt.Sprintf("store: peer sampler seed: %v", err))
	}
	return &peerStore{
		now: now, start: now(), rng: rand.New(rand.NewChaCha8(seed)),
		swarms:  newTTLMap[nodeID, *peerSwarm](peerTTL, maxInfohashes),
		sources: newTTLMap[netip.AddrPort, *sourceLog](peerTTL, maxSources),
	}
}

// since is now as a peerEntry time.
func (s *peerStore) since(now time.Time) time.Duration { return now.Sub(s.start) }

// add records that peer announced itself for infohash. Addresses that
// cannot be reached (invalid, port 0, unspecified) are ignored. The peer is
// also the source of the write (an announce stores its sender's own IP), so
// the source is read off its address: when it is new in its
// maxSourceInfohashes+1st infohash, its entries in its oldest one go.
func (s *peerStore) add(infohash nodeID, peer netip.AddrPort) {
	ip := peer.Addr().Unmap().WithZone("")
	if !ip.IsValid() || ip.IsUnspecified() || peer.Port() == 0 {
		return
	}
	peer = netip.AddrPortFrom(ip, peer.Port())
	src := sourceKey(peer)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if old, ok := sourceLogOf(s.sources, src, now).note(infohash, maxSourceInfohashes); ok {
		s.dropSource(old, src, now)
	}
	e := s.swarms.touch(infohash, now)
	if e.val == nil {
		e.val = &peerSwarm{}
	}
	e.val.add(peer, s.since(now))
}

// dropSource removes the peers of source src from the swarm of infohash,
// and the swarm if that empties it.
func (s *peerStore) dropSource(infohash nodeID, src netip.AddrPort, now time.Time) {
	e := s.swarms.get(infohash, now)
	if e == nil {
		return
	}
	e.val.peers = slices.DeleteFunc(e.val.peers, func(p peerEntry) bool { return sourceKey(p.addr) == src })
	if len(e.val.peers) == 0 {
		s.swarms.delete(infohash)
	}
}

// add puts peer last with a fresh expiry. To make room it drops, in this
// order: the expired peers, the same peer's old entry, the oldest entry of
// an IP that already has maxPortsPerIP ports, the oldest entry of a full swarm.
func (w *peerSwarm) add(peer netip.AddrPort, now time.Duration) {
	w.expire(now)
	sameIP, oldestOfIP := 0, -1
	for i, p := range w.peers {
		if p.addr == peer {
			w.peers = slices.Delete(w.peers, i, i+1)
			sameIP, oldestOfIP = 0, -1
			break
		}
		if p.addr.Addr() == peer.Addr() {
			sameIP++
			if oldestOfIP < 0 {
				oldestOfIP = i
			}
		}
	}
	switch {
	case sameIP >= maxPortsPerIP:
		w.peers = slices.Delete(w.peers, oldestOfIP, oldestOfIP+1)
	case len(w.peers) >= maxSwarmPeers:
		w.peers = slices.Delete(w.peers, 0, 1)
	}
	if len(w.peers) == cap(w.peers) { // grow by hand: append would overshoot the cap
		grown := make([]peerEntry, len(w.peers), min(2*len(w.peers)+4, maxSwarmPeers))
		copy(grown, w.peers)
		w.peers = grown
	}
	w.peers = append(w.peers, peerEntry{addr: peer, expires: now + peerTTL})
}

// expire drops the peers whose expiry has passed (they are at the front).
func (w *peerSwarm) expire(now time.Duration) {
	n := 0
	for n < len(w.peers) && now >= w.peers[n].expires {
		n++
	}
	w.peers = slices.Delete(w.peers, 0, n)
}

// peers returns up to max live peers of infohash of both address
// families; see peersOf.
func (s *peerStore) peers(infohash nodeID, max int) []netip.AddrPort {
	return s.peersOf(infohash, max, true, true)
}

// peersOf returns up to max live peers of infohash that are IPv4 (when
// want4) or IPv6 (when want6), a uniformly random subset (drawn from s.rng)
// when there are more, in a new slice. BEP 32: a get_peers reply holds the
// requester's family only, as a plain BEP 5 node cannot parse a mixed list.
func (s *peerStore) peersOf(infohash nodeID, max int, want4, want6 bool) []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e := s.swarms.get(infohash, now)
	if e == nil || max <= 0 {
		return nil
	}
	e.val.expire(s.since(now))
	out := make([]netip.AddrPort, 0, len(e.val.peers))
	for _, p := range e.val.peers {
		if is4 := p.addr.Addr().Is4(); is4 && want4 || !is4 && want6 {
			out = append(out, p.addr)
		}
	}
	if len(out) == 0 {
		return nil
	}
	if len(out) <= max {
		return out
	}
	for i := range max { // partial Fisher-Yates: out[:max] is a uniform sample
		j := i + s.rng.IntN(len(out)-i)
		out[i], out[j] = out[j], out[i]
	}
	return out[:max:max]
}

// bep44Item is an item of BEP 44. For an immutable item only V is used.
type bep44Item struct {
	V       []byte // raw bencoded value (owned copy)
	Mutable bool
	K       [32]byte // ed25519 public key (mutable)
	Salt    []byte
	Seq     int64
	Sig     [64]byte
}

// bep44Error is a refused put; Code is the KRPC error code to answer with.
type bep44Error struct {
	Code int
	Msg  string
}

func (e *bep44Error) Error() string { return "bep44: " + e.Msg }

// immutableTarget is the target of an immutable item: SHA-1(v).
func immutableTarget(v []byte) nodeID { return sha1.Sum(v) }

// mutableTarget is the target of a mutable item: SHA-1(k || salt).
func mutableTarget(k [32]byte, salt []byte) nodeID {
	h := sha1.New()
	h.Write(k[:])
	h.Write(salt)
	return nodeID(h.Sum(nil))
}

// mutableSigBuffer is what a mutable item's signature covers (BEP 44):
// ["4:salt" len ":" salt] "3:seqi" seq "e1:v" v, the salt part only when
// the salt is not empty. v is already bencoded, so it follows "1:v" as is.
func mutableSigBuffer(salt []byte, seq int64, v []byte) []byte {
	buf := make([]byte, 0, 16+len(salt)+24+len(v))
	if len(salt) > 0 {
		buf = append(buf, "4:salt"...)
		buf = strconv.AppendInt(buf, int64(len(salt)), 10)
		buf = append(buf, ':')
		buf = append(buf, salt...)
	}
	buf = append(buf, "3:seqi"...)
	buf = strconv.AppendInt(buf, seq, 10)
	buf = append(buf, "e1:v"...)
	return append(buf, v...)
}

// signItem makes a mutable item signed by priv.
func signItem(priv ed25519.PrivateKey, salt []byte, seq int64, v []byte) bep44Item {
	it := bep44Item{V: bytes.Clone(v), Mutable: true, Salt: bytes.Clone(salt), Seq: seq}
	copy(it.K[:], priv.Public().(ed25519.PublicKey))
	copy(it.Sig[:], ed25519.Sign(priv, mutableSigBuffer(salt, seq, v)))
	return it
}

// verifyItem checks what a storing node checks before anything else, in
// this order: the size of v (205), its bencoding (203), and for a mutable
// item the salt size (207), the sign of seq (203) and the signature (206).
func verifyItem(it bep44Item) error {
	if len(it.V) > maxItemValue {
		return &bep44Error{bep44ErrTooBig, fmt.Sprintf("v is %d bytes, more than %d", len(it.V), maxItemValue)}
	}
	if err := checkBencode(it.V); err != nil {
		return &bep44Error{bep44ErrInvalid, "v: " + err.Error()}
	}
	if !it.Mutable {
		return nil
	}
	if len(it.Salt) > maxSalt {
		return &bep44Error{bep44ErrSaltTooBig, fmt.Sprintf("salt is %d bytes, more than %d", len(it.Salt), maxSalt)}
	}
	if it.Seq < 0 {
		return &bep44Error{bep44ErrInvalid, "negative seq"}
	}
	if !ed25519.Verify(it.K[:], mutableSigBuffer(it.Salt, it.Seq, it.V), it.Sig[:]) {
		return &bep44Error{bep44ErrSig, "invalid signature"}
	}
	return nil
}

// target is where it is stored.
func (it *bep44Item) target() nodeID {
	if it.Mutable {
		return mutableTarget(it.K, it.Salt)
	}
	return immutableTarget(it.V)
}

// clone returns a copy that shares no memory with it, with the fields
// that do not apply to an immutable item cleared.
func (it bep44Item) clone() bep44Item {
	if !it.Mutable {
		return bep44Item{V: bytes.Clone(it.V)}
	}
	it.V = bytes.Clone(it.V)
	if len(it.Salt) == 0 {
		it.Salt = nil // BEP 44: an empty salt is no salt
	} else {
		it.Salt = bytes.Clone(it.Salt)
	}
	return it
}

// itemStore keeps BEP 44 items under their targets, at most maxItems, each
// for itemTTL after its last put, and at most maxSourceItems owned by one
// source. Safe for concurrent use.
type itemStore struct {
	mu      sync.Mutex
	now     func() time.Time
	items   *ttlMap[nodeID, storedItem]
	sources *ttlMap[netip.AddrPort, *sourceLog] // by sourceKey: the targets each owns
}

// storedItem is an item and its owner: the sourceKey of the put that stored
// its current value. A put of the same value by anyone only refreshes it,
// so replaying a victim's item does not make it the replayer's to evict.
type storedItem struct {
	item  bep44Item
	owner netip.AddrPort
}

func newItemStore(now func() time.Time) *itemStore {
	return &itemStore{
		now:     now,
		items:   newTTLMap[nodeID, storedItem](itemTTL, maxItems),
		sources: newTTLMap[netip.AddrPort, *sourceLog](itemTTL, maxSources),
	}
}

// put verifies it (verifyItem), then applies the update rules of a mutable
// item against the one stored (checkItemUpdate), then stores an owned copy and
// restarts its expiry. src is the address the put came from: a new value
// makes its source the owner, and a source that would own more than
// maxSourceItems loses its oldest. cas is only checked when hasCAS. Errors
// are *bep44Error.
func (s *itemStore) put(it bep44Item, cas int64, hasCAS bool, src netip.AddrPort) error {
	if err := verifyItem(it); err != nil {
		return err
	}
	target, key := it.target(), sourceKey(src)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	owner := key
	if old := s.items.get(target, now); old != nil {
		if it.Mutable && old.val.item.Mutable {
			if err := checkItemUpdate(old.val.item, it, cas, hasCAS); err != nil {
				return err
			}
		}
		if old.val.item.Seq == it.Seq && bytes.Equal(old.val.item.V, it.V) {
			owner = old.val.owner // a refresh
		}
	}
	if owner == key {
		if dropped, ok := sourceLogOf(s.sources, key, now).note(target, maxSourceItems); ok {
			if e := s.items.get(dropped, now); e != nil && e.val.owner == key {
				s.items.delete(dropped)
			}
		}
	}
	s.items.touch(target, now).val = storedItem{item: it.clone(), owner: owner}
	return nil
}

// checkItemUpdate applies BEP 44's rules to a put over a stored mutable item:
// cas, when given, must equal the stored seq (301); seq must not go down
// (302); the same seq is only a refresh, so its value must be the same (302).
func checkItemUpdate(old, it bep44Item, cas int64, hasCAS bool) error {
	switch {
	case hasCAS && cas != old.Seq:
		return &bep44Error{bep44ErrCAS, fmt.Sprintf("cas %d does not match seq %d", cas, old.Seq)}
	case it.Seq < old.Seq:
		return &bep44Error{bep44ErrSeq, fmt.Sprintf("seq %d less than current %d", it.Seq, old.Seq)}
	case it.Seq == old.Seq && !bytes.Equal(it.V, old.V):
		return &bep44Error{bep44ErrSeq, fmt.Sprintf("seq %d already holds another value", it.Seq)}
	}
	return nil
}

// get returns a copy of the live item stored under target.
func (s *itemStore) get(target nodeID) (bep44Item, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.items.get(target, s.now())
	if e == nil {
		return bep44Item{}, false
	}
	return e.val.item.clone(), true
}
