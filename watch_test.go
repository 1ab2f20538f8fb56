package main

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// A watched record is polled one node at a time (SPEC.md 5.8.3, step 3):
// while nobody holds it, the closest nodes in turn and a lookup every
// pollMissEvery; once a lookup found it, each poll sends one get, to the
// nodes that sent it in turn, and sees a new seq once it is put.
func TestPollMutable(t *testing.T) {
	ds := newSwarm(t, 20, 0)
	ctx := testCtx(t)
	poller, sent := getCounting(t, ds[0])
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, ed25519.SeedSize))
	var k [32]byte
	copy(k[:], priv.Public().(ed25519.PublicKey))
	// Before anyone wrote it: a lookup, then one get to one of the
	// closest, until pollMissEvery has passed.
	for i, one := range []bool{false, true} {
		_, found, err := (watcher{poller}).poll(ctx, k)
		if g := sent(); found || err != nil || one != (len(g) == 1) || len(g) == 0 {
			t.Fatalf("poll %d of a missing item: found %v, %v, %d gets; want one get: %v", i+1, found, err, len(g), one)
		}
	}
	// pollMissEvery passes (the entry ages instead of the test sleeping).
	target := mutableTarget(k, nil)
	poller.recent.mu.Lock()
	e := poller.recent.m[target]
	e.at = e.at.Add(-pollMissEvery)
	poller.recent.m[target] = e
	poller.recent.mu.Unlock()
	// The writer is read-only (BEP 43), so it is never among the nodes
	// nearest the target, all of which hold the item.
	putter := newTestDHT(t, dhtConfig{Bootstrap: []string{ds[1].addr().String()}}, 0)
	putter.tx.readOnly.Store(true)
	bootstrapRetrying(t, putter)
	_, stored, err := putter.putMutable(ctx, priv, nil, 1, []byte("5:first"))
	if err != nil || stored < 1 {
		t.Fatalf("putMutable = %d, %v", stored, err)
	}
	if it, found, err := (watcher{poller}).poll(ctx, k); err != nil || !found || it.Seq != 1 {
		t.Fatalf("first poll after the put = seq %d, %v, %v; want seq 1", it.Seq, found, err)
	}
	if g := sent(); len(g) < 2 {
		t.Fatalf("first poll after the put sent %d gets, want a lookup", len(g))
	}
	asked := map[netip.AddrPort]bool{}
	for i := range 4 {
		it, found, err := (watcher{poller}).poll(ctx, k)
		g := sent()
		if err != nil || !found || it.Seq != 1 || len(g) != 1 {
			t.Fatalf("poll %d = seq %d, %v, %v with %d gets; want seq 1 from one get", i+2, it.Seq, found, err, len(g))
		}
		asked[g[0]] = true
	}
	if len(asked) != 4 {
		t.Errorf("4 polls asked %d nodes, want 4 in turn", len(asked))
	}
	if _, n, err := putter.putMutable(ctx, priv, nil, 2, []byte("6:second")); err != nil || n < 1 {
		t.Fatalf("putMutable seq 2 = %d, %v", n, err)
	}
	if it, found, err := (watcher{poller}).poll(ctx, k); err != nil || !found || it.Seq != 2 {
		t.Errorf("poll after the new put = seq %d, %v, %v; want seq 2", it.Seq, found, err)
	}
}

// A location checked again and again (SPEC.md 3.4.3, "Checks"): the first
// check is a lookup, each later one a single get, to the checkSpread
// closest in turn; an item put since is found by the next check; a node
// that does not answer makes the check a lookup again.
func TestCheckMutable(t *testing.T) {
	ds := newSwarm(t, 20, 0)
	ctx := testCtx(t)
	checker, sent := getCounting(t, ds[0])
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, ed25519.SeedSize))
	var k [32]byte
	copy(k[:], priv.Public().(ed25519.PublicKey))
	salt := []byte("drop")
	if _, found, err := (watcher{checker}).mutable(ctx, k, salt); found || err != nil {
		t.Fatalf("first check of a missing item: found %v, %v", found, err)
	}
	if g := sent(); len(g) < bucketSize {
		t.Fatalf("first check sent %d gets, want a lookup", len(g))
	}
	asked := map[netip.AddrPort]bool{}
	for i := range 2 * checkSpread {
		_, found, err := (watcher{checker}).mutable(ctx, k, salt)
		g := sent()
		if found || err != nil || len(g) != 1 {
			t.Fatalf("check %d = %v, %v with %d gets; want one get", i+2, found, err, len(g))
		}
		asked[g[0]] = true
	}
	if len(asked) != checkSpread {
		t.Errorf("%d checks asked %d nodes, want the %d closest in turn", 2*checkSpread, len(asked), checkSpread)
	}
	putter := newTestDHT(t, dhtConfig{Bootstrap: []string{ds[1].addr().String()}}, 0)
	putter.tx.readOnly.Store(true)
	bootstrapRetrying(t, putter)
	if _, n, err := putter.putMutable(ctx, priv, salt, 7, []byte("4:drop")); err != nil || n < 1 {
		t.Fatalf("putMutable = %d, %v", n, err)
	}
	it, found, err := (watcher{checker}).mutable(ctx, k, salt)
	if g := sent(); err != nil || !found || it.Seq != 7 || len(g) != 1 {
		t.Fatalf("check after the put = seq %d, %v, %v with %d gets; want seq 7 from one get", it.Seq, found, err, len(g))
	}
	// The next node in turn stops answering: that check is a lookup.
	next, _ := checker.recent.nextCheck(mutableTarget(k, salt), time.Now())
	checker.recent.mu.Lock()
	e := checker.recent.m[mutableTarget(k, salt)]
	e.polled--
	checker.recent.m[mutableTarget(k, salt)] = e
	checker.recent.mu.Unlock()
	for _, d := range ds {
		if d.addr() == next.Addr {
			d.node.Close()
		}
	}
	it, found, err = (watcher{checker}).mutable(ctx, k, salt)
	if g := sent(); err != nil || !found || it.Seq != 7 || len(g) < 2 {
		t.Errorf("check with its node gone = seq %d, %v, %v with %d gets; want seq 7 from a lookup", it.Seq, found, err, len(g))
	}
}

// A rendezvous infohash checked after an announce (SPEC.md 3.4.3,
// "Checks"): the announce's lookup ran to its end, so each check is one
// get_peers, and finds a peer announced there since; a lookup cut short
// by the peers quorum is no base for checks.
func TestCheckPeers(t *testing.T) {
	ds := newSwarm(t, 20, 0)
	ctx := testCtx(t)
	var mu sync.Mutex
	var queries int
	checker := newTunedTestDHT(t, dhtConfig{Bootstrap: []string{ds[0].addr().String()}}, 0, func(d *dht) {
		d.node.trace = func(out bool, _ netip.AddrPort, b []byte) {
			if out && bytes.Contains(b, []byte("1:q9:get_peers")) {
				mu.Lock()
				queries++
				mu.Unlock()
			}
		}
	})
	bootstrapRetrying(t, checker)
	sent := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := queries
		queries = 0
		return n
	}
	ih := nodeID{0x5a, 1, 2, 3}
	if _, _, err := checker.announce(ctx, ih, 0, true); err != nil {
		t.Fatalf("announce: %v", err)
	}
	sent()
	others := func(ps []netip.AddrPort) []netip.AddrPort {
		return slices.DeleteFunc(ps, func(p netip.AddrPort) bool { return p == checker.addr() })
	}
	if peers, err := (watcher{checker}).peers(ctx, ih); err != nil || len(others(peers)) != 0 || sent() != 1 {
		t.Fatalf("check after the announce: %v, %v; want nobody but us, from one get_peers", peers, err)
	}
	other := newTestDHT(t, dhtConfig{Bootstrap: []string{ds[1].addr().String()}}, 0)
	bootstrapRetrying(t, other)
	if _, _, err := other.announce(ctx, ih, 0, true); err != nil {
		t.Fatalf("the other's announce: %v", err)
	}
	peers, err := (watcher{checker}).peers(ctx, ih)
	if err != nil || !slices.Contains(peers, other.addr()) || sent() != 1 {
		t.Fatalf("check after the other announced: %v, %v; want %v from one get_peers", peers, err, other.addr())
	}
	// A lookup cut short (the peers quorum, a timeout) leaves no base.
	var r recentLookups
	now := time.Now()
	r.put(ih, []lookupNode{{nodeInfo: nodeInfo{ID: ih, Addr: other.addr()}}}, nil, false, now)
	if _, ok := r.nextCheck(ih, now); ok {
		t.Error("a check rests on a lookup that did not run to its end")
	}
	r.put(ih, []lookupNode{{nodeInfo: nodeInfo{ID: ih, Addr: other.addr()}}}, nil, true, now)
	if _, ok := r.nextCheck(ih, now.Add(checkLookupEvery)); ok {
		t.Error("a check rests on a lookup checkLookupEvery old")
	}
}

// getCounting starts a DHT node that joins through boot and records where
// it sends each BEP 44 get; sent returns those since its last call.
func getCounting(t *testing.T, boot *dht) (d *dht, sent func() []netip.AddrPort) {
	var mu sync.Mutex
	var gets []netip.AddrPort
	d = newTunedTestDHT(t, dhtConfig{Bootstrap: []string{boot.addr().String()}}, 0, func(d *dht) {
		d.node.trace = func(out bool, peer netip.AddrPort, b []byte) {
			if out && bytes.Contains(b, []byte("1:q3:get")) {
				mu.Lock()
				gets = append(gets, peer)
				mu.Unlock()
			}
		}
	})
	bootstrapRetrying(t, d)
	return d, func() []netip.AddrPort {
		mu.Lock()
		defer mu.Unlock()
		g := gets
		gets = nil
		return g
	}
}
