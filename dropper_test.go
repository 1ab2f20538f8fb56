package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// dropFakeDHT is one BEP 44 store that every chat of a test puts to and
// gets from directly, with the store's own checks (signature, seq).
type dropFakeDHT struct {
	store      *itemStore
	src        atomic.Uint32 // a new source per put, so no source bound applies
	puts, gets atomic.Int64
	down       atomic.Bool // every operation fails, as when no node answers
}

func newDropFakeDHT() *dropFakeDHT { return &dropFakeDHT{store: newItemStore(time.Now)} }

func (f *dropFakeDHT) put(_ context.Context, priv ed25519.PrivateKey, salt []byte, seq int64, v []byte) (int, error) {
	f.puts.Add(1)
	if f.down.Load() {
		return 0, errNoneAnswered
	}
	src := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(f.src.Add(1)))
	if err := f.store.put(signItem(priv, salt, seq, v), 0, false, src); err != nil {
		return 0, err
	}
	return 1, nil
}

func (f *dropFakeDHT) get(_ context.Context, k [32]byte, salt []byte) (bep44Item, bool, error) {
	f.gets.Add(1)
	if f.down.Load() {
		return bep44Item{}, false, errNoneAnswered
	}
	it, ok := f.store.get(mutableTarget(k, salt))
	return it, ok, nil
}

// dropNode is one chat with a real identity, its timers running.
type dropNode struct {
	t      testing.TB
	name   string
	id     *identity
	dir    string
	c      *chat
	ev     *chatEvents
	cancel context.CancelFunc
	done   chan error
}

// startDropNode opens (or reopens) the chat in dir, attached to the link
// and the fake DHT, with drops made after 20 ms instead of 5 s.
func startDropNode(t testing.TB, name string, id *identity, dir string, dht *dropFakeDHT, link *lossyLink, port uint16) *dropNode {
	t.Helper()
	n := &dropNode{t: t, name: name, id: id, dir: dir, ev: &chatEvents{}, done: make(chan error, 1)}
	c, err := newChat(chatConfig{Dir: dir, Self: id.public(), StaticSecret: id.staticSecret,
		Send: link.sender(id.public()), MaxPayload: 1100, Event: n.ev.add, PutItem: dht.put, GetItem: dht.get})
	if err != nil {
		t.Fatal(err)
	}
	c.drops.delay = 20 * time.Millisecond
	n.c = c
	link.attach(id.public(), c, port)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.done <- c.run(ctx) }()
	return n
}

func (n *dropNode) stop() {
	n.t.Helper()
	n.cancel()
	<-n.done
	if err := n.c.close(); err != nil {
		n.t.Error(err)
	}
}

// dropState reads one contact's drop state under the chat's lock.
func (n *dropNode) dropState(k publicKey, f func(dp *dropPeer)) {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	dp := n.c.drops.peers[k]
	if dp == nil {
		dp = newDropPeer()
	}
	f(dp)
}

func (n *dropNode) waitDrops(what string, k publicKey, cond func(dp *dropPeer) bool) {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := false
		n.dropState(k, func(dp *dropPeer) { ok = cond(dp) })
		if ok {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: no %s within 10 s", n.name, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dropPair is alice and bob, contacts of each other, who have had a
// session: each holds a full batch of the other's prekeys.
type dropPair struct {
	t          testing.TB
	dht        *dropFakeDHT
	link       *lossyLink
	ida, idb   *identity
	dirA, dirB string
	alice, bob *dropNode
}

func newDropPair(t testing.TB) *dropPair {
	t.Helper()
	p := &dropPair{t: t, dht: newDropFakeDHT(), link: newLossyLink(0, 1), ida: testIdentity(t, 0x40), idb: testIdentity(t, 0x80),
		dirA: t.TempDir(), dirB: t.TempDir()}
	t.Cleanup(p.link.close)
	p.alice = startDropNode(t, "alice", p.ida, p.dirA, p.dht, p.link, 1001)
	p.bob = startDropNode(t, "bob", p.idb, p.dirB, p.dht, p.link, 1002)
	if err := p.alice.c.addContact("bob", p.idb.public()); err != nil {
		t.Fatal(err)
	}
	if err := p.bob.c.addContact("alice", p.ida.public()); err != nil {
		t.Fatal(err)
	}
	p.alice.c.setOnline(p.idb.public(), p.link.addrs[p.idb.public()])
	p.bob.c.setOnline(p.ida.public(), p.link.addrs[p.ida.public()])
	full := func(dp *dropPeer) bool { return len(dp.theirs) == prekeyTarget }
	p.alice.waitDrops("full batch of bob's prekeys", p.idb.public(), full)
	p.bob.waitDrops("full batch of alice's prekeys", p.ida.public(), full)
	p.alice.c.setOffline(p.idb.public())
	p.bob.c.setOffline(p.ida.public())
	return p
}

func TestDropOfflineDeliveryExactlyOnce(t *testing.T) {
	p := newDropPair(t)
	ka, kb := p.ida.public(), p.idb.public()
	p.bob.stop()

	const n = 20
	texts := make([]string, n)
	for i := range n {
		texts[i] = fmt.Sprintf("message %d while bob sleeps", i+1)
		if i == 7 {
			texts[i] = string(make([]byte, 0)) + fmt.Sprintf("%0*d", maxMessageText, i) // 5 items
		}
		if _, err := p.alice.c.send(context.Background(), "bob", texts[i]); err != nil {
			t.Fatal(err)
		}
	}
	dropped := p.alice.ev.waitFor(t, eventDropped, n, 10*time.Second)
	for i, e := range dropped {
		if e.Contact != "bob" || !slices.ContainsFunc(dropped, func(e chatEvent) bool { return e.MsgID == uint64(i+1) }) {
			t.Fatalf("dropped events %v: want one per message 1..%d", dropped, n)
		}
	}
	p.alice.dropState(kb, func(dp *dropPeer) {
		if len(dp.theirs) != prekeyTarget-n {
			t.Errorf("alice holds %d of bob's prekeys after %d drops, want %d", len(dp.theirs), n, prekeyTarget-n)
		}
	})
	p.alice.stop()

	p.bob = startDropNode(t, "bob", p.idb, p.dirB, p.dht, p.link, 1002)
	got := p.bob.ev.waitFor(t, eventMessage, n, 10*time.Second)
	for i, e := range got {
		if e.MsgID != uint64(i+1) || e.Text != texts[i] || e.Contact != "alice" {
			t.Fatalf("message %d = %d %.20q from %s, want %d %.20q", i, e.MsgID, e.Text, e.Contact, i+1, texts[i])
		}
	}
	p.bob.waitDrops("acknowledgement item", ka, func(dp *dropPeer) bool { return dp.ackSeq == n })
	p.bob.waitDrops("prekeys erased", ka, func(dp *dropPeer) bool { return len(dp.mine) == prekeyTarget-n })
	time.Sleep(100 * time.Millisecond) // a second collection must not show anything again
	if again := p.bob.ev.of(eventMessage); len(again) != n {
		t.Fatalf("bob shows %d messages, want %d exactly once", len(again), n)
	}

	p.alice = startDropNode(t, "alice", p.ida, p.dirA, p.dht, p.link, 1001)
	del := p.alice.ev.waitFor(t, eventDelivered, n, 10*time.Second)
	for i, e := range del {
		if e.MsgID != uint64(i+1) {
			t.Fatalf("delivered %d = %d", i, e.MsgID)
		}
	}
	p.alice.waitDrops("drops retired", kb, func(dp *dropPeer) bool { return len(dp.drops) == 0 })
	if len(p.alice.ev.of(eventDropped)) != 0 {
		t.Error("a restart re-announced drops")
	}
	p.alice.stop()
	p.bob.stop()
}

// TestDropStaticWithoutPrekeys: contacts who never had a session still
// reach each other, the drop sealed to the static key.
func TestDropStaticWithoutPrekeys(t *testing.T) {
	dht, link := newDropFakeDHT(), newLossyLink(0, 1)
	defer link.close()
	ida, idb := testIdentity(t, 0x41), testIdentity(t, 0x81)
	dirA, dirB := t.TempDir(), t.TempDir()
	alice := startDropNode(t, "alice", ida, dirA, dht, link, 1001)
	if err := alice.c.addContact("bob", idb.public()); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.send(context.Background(), "bob", "hello, never met"); err != nil {
		t.Fatal(err)
	}
	alice.ev.waitFor(t, eventDropped, 1, 10*time.Second)
	bob := startDropNode(t, "bob", idb, dirB, dht, link, 1002)
	if err := bob.c.addContact("alice", ida.public()); err != nil {
		t.Fatal(err)
	}
	got := bob.ev.waitFor(t, eventMessage, 1, 10*time.Second)
	if got[0].Text != "hello, never met" {
		t.Fatalf("got %q", got[0].Text)
	}
	alice.ev.waitFor(t, eventDelivered, 1, 10*time.Second)
	alice.stop()
	bob.stop()
}

// TestDropFileMode: the drops file holds private keys.
func TestDropFileMode(t *testing.T) {
	p := newDropPair(t)
	p.alice.stop()
	p.bob.stop()
	for _, dir := range []string{p.dirA, p.dirB} {
		fi, err := os.Stat(filepath.Join(dir, dropsFile))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", fi.Name(), fi.Mode().Perm())
		}
	}
}
