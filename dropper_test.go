package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
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
	down       atomic.Bool  // every operation fails, as when no node answers
	getDelay   atomic.Int64 // nanoseconds each get takes

	mu  sync.Mutex
	log []bep44Item // every accepted put
}

func newDropFakeDHT() *dropFakeDHT { return &dropFakeDHT{store: newItemStore(time.Now)} }

func (f *dropFakeDHT) put(_ context.Context, priv ed25519.PrivateKey, salt []byte, seq int64, v []byte) (int, error) {
	f.puts.Add(1)
	if f.down.Load() {
		return 0, errNoneAnswered
	}
	src := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(f.src.Add(1)))
	it := signItem(priv, salt, seq, v)
	if err := f.store.put(it, 0, false, src); err != nil {
		return 0, err
	}
	f.mu.Lock()
	f.log = append(f.log, it)
	f.mu.Unlock()
	return 1, nil
}

func (f *dropFakeDHT) get(_ context.Context, k [32]byte, salt []byte) (bep44Item, bool, error) {
	f.gets.Add(1)
	time.Sleep(time.Duration(f.getDelay.Load()))
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
	p.alice.c.presence.online(p.idb.public(), p.link.addrs[p.idb.public()])
	p.bob.c.presence.online(p.ida.public(), p.link.addrs[p.ida.public()])
	full := func(dp *dropPeer) bool { return len(dp.theirs) == prekeyTarget }
	p.alice.waitDrops("full batch of bob's prekeys", p.idb.public(), full)
	p.bob.waitDrops("full batch of alice's prekeys", p.ida.public(), full)
	p.alice.c.presence.offline(p.idb.public(), time.Now())
	p.bob.c.presence.offline(p.ida.public(), time.Now())
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

	var dirOut [32]byte
	made := map[uint64]int64{}
	parts := map[uint64]int{}
	p.alice = startDropNode(t, "alice", p.ida, p.dirA, p.dht, p.link, 1001)
	p.alice.dropState(kb, func(dp *dropPeer) {
		p.alice.c.drops.dirsLocked(kb, dp)
		dirOut = *dp.run.dirOut
		for seq, r := range dp.drops {
			made[seq], parts[seq] = r.made, r.parts
		}
	})
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
	// Every item of every drop becomes filler under a higher seq: it opens
	// for nobody, and the store holds it instead of the message.
	if len(made) != n {
		t.Fatalf("alice restarted with %d drops, want %d", len(made), n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for seq, m := range made {
		day := dropDayOf(time.UnixMilli(m))
		k := [32]byte(dropDayKey(dirOut, day).Public().(ed25519.PublicKey))
		for part := range parts[seq] {
			salt := dropSlotSalt(dirOut, day, seq, uint8(part))
			it, ok := p.dht.store.get(mutableTarget(k, salt))
			for (!ok || it.Seq != m+1) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
				it, ok = p.dht.store.get(mutableTarget(k, salt))
			}
			if !ok || it.Seq != m+1 || len(it.V) != len(dropValuePrefix)+dropItemLen {
				t.Fatalf("drop %d part %d: stored seq %d (found %v), want filler at seq %d", seq, part, it.Seq, ok, m+1)
			}
			if thiefOpens(t, p.idb, ka, p.dirB, it) {
				t.Fatalf("drop %d part %d: the filler opens", seq, part)
			}
		}
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

// putsAt returns every value put at the location of key k and salt.
func (f *dropFakeDHT) putsAt(k [32]byte, salt []byte) []bep44Item {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []bep44Item
	for _, it := range f.log {
		if it.K == k && string(it.Salt) == string(salt) {
			out = append(out, it)
		}
	}
	return out
}

// TestDropRaceSessionWhileCollecting: alice comes online while bob is
// collecting her drops; both paths deliver, and every message is shown
// once, in order, and acknowledged.
func TestDropRaceSessionWhileCollecting(t *testing.T) {
	p := newDropPair(t)
	ka, kb := p.ida.public(), p.idb.public()
	p.bob.stop()
	const n = 20
	for i := range n {
		if _, err := p.alice.c.send(context.Background(), "bob", fmt.Sprintf("race %d", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	p.alice.ev.waitFor(t, eventDropped, n, 10*time.Second)
	p.dht.getDelay.Store(int64(3 * time.Millisecond)) // a collection takes a while
	p.bob = startDropNode(t, "bob", p.idb, p.dirB, p.dht, p.link, 1002)
	p.bob.ev.waitFor(t, eventMessage, 3, 10*time.Second)
	// Mid-collection, the session comes up: alice sends her window again.
	p.alice.c.presence.online(kb, p.link.addrs[kb])
	p.bob.c.presence.online(ka, p.link.addrs[ka])
	p.bob.ev.waitFor(t, eventMessage, n, 10*time.Second)
	p.alice.ev.waitFor(t, eventDelivered, n, 10*time.Second)
	p.alice.waitDrops("drops retired", kb, func(dp *dropPeer) bool { return len(dp.drops) == 0 })
	time.Sleep(100 * time.Millisecond)
	got := p.bob.ev.of(eventMessage)
	if len(got) != n {
		t.Fatalf("bob shows %d messages, want %d", len(got), n)
	}
	for i, e := range got {
		if e.MsgID != uint64(i+1) || e.Text != fmt.Sprintf("race %d", i+1) {
			t.Fatalf("message %d = %d %q", i, e.MsgID, e.Text)
		}
	}
	if del := p.alice.ev.of(eventDelivered); len(del) != n {
		t.Fatalf("alice saw %d delivered events, want %d", len(del), n)
	}
	p.alice.stop()
	p.bob.stop()
}

// thiefOpens reports whether someone holding bob's key and a copy of bob's
// data directory opens the item: with the static key, or any prekey in
// the drops file on disk.
func thiefOpens(t *testing.T, bob *identity, alice publicKey, dirB string, it bep44Item) bool {
	t.Helper()
	peers, err := loadDropFile(filepath.Join(dirB, dropsFile))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := bob.staticSecret(alice)
	dir := dropDirKey(s, alice, bob.public())
	di, err := parseDropValue(it.V)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = openDropItem(dir, di, 0, func(id uint32, eph [32]byte) ([32]byte, bool) {
		if id == 0 {
			sb, err := bob.staticSecret(publicKey(eph))
			return sb, err == nil
		}
		if dp := peers[alice]; dp != nil && dp.mine[id] != nil {
			return dropX25519(dp.mine[id].priv, eph)
		}
		return [32]byte{}, false
	})
	return err == nil
}

// TestDropKeyThief: once bob has read a drop, his key file and his data
// directory no longer open the item, though they did before.
func TestDropKeyThief(t *testing.T) {
	p := newDropPair(t)
	ka, kb := p.ida.public(), p.idb.public()
	p.bob.stop()
	if _, err := p.alice.c.send(context.Background(), "bob", "for bob's eyes only"); err != nil {
		t.Fatal(err)
	}
	p.alice.ev.waitFor(t, eventDropped, 1, 10*time.Second)
	var dirOut [32]byte
	var made int64
	p.alice.dropState(kb, func(dp *dropPeer) {
		dirOut = *dp.run.dirOut
		made = dp.drops[1].made
	})
	p.alice.stop()
	day := dropDayOf(time.UnixMilli(made))
	items := p.dht.putsAt([32]byte(dropDayKey(dirOut, day).Public().(ed25519.PublicKey)), dropSlotSalt(dirOut, day, 1, 0))
	if len(items) == 0 {
		t.Fatal("no item was put at the drop's location")
	}
	stolen := items[0]
	if !thiefOpens(t, p.idb, ka, p.dirB, stolen) {
		t.Fatal("before bob read it, his own directory does not open the drop: the test proves nothing")
	}
	p.bob = startDropNode(t, "bob", p.idb, p.dirB, p.dht, p.link, 1002)
	p.bob.ev.waitFor(t, eventMessage, 1, 10*time.Second)
	p.bob.waitDrops("prekey erased", ka, func(dp *dropPeer) bool { return len(dp.mine) == prekeyTarget-1 })
	p.bob.stop() // saves the drops file
	if thiefOpens(t, p.idb, ka, p.dirB, stolen) {
		t.Fatal("after bob read the drop, his key file and directory still open it")
	}
}

// TestDropNoAckItemAfterSession: what a session acknowledged needs no
// acknowledgement item, also after a restart with the contact away.
func TestDropNoAckItemAfterSession(t *testing.T) {
	p := newDropPair(t)
	ka, kb := p.ida.public(), p.idb.public()
	p.alice.c.presence.online(kb, p.link.addrs[kb])
	p.bob.c.presence.online(ka, p.link.addrs[ka])
	if _, err := p.alice.c.send(context.Background(), "bob", "over the session"); err != nil {
		t.Fatal(err)
	}
	p.alice.ev.waitFor(t, eventDelivered, 1, 10*time.Second)
	p.bob.waitDrops("the session's acknowledgement noted", ka, func(dp *dropPeer) bool { return dp.ackSeq == 1 })
	p.alice.stop()
	p.bob.stop()
	before := p.dht.puts.Load()
	p.bob = startDropNode(t, "bob", p.idb, p.dirB, p.dht, p.link, 1002)
	time.Sleep(300 * time.Millisecond) // a start round and several ticks
	p.bob.stop()
	if n := p.dht.puts.Load() - before; n != 0 {
		t.Fatalf("bob put %d items after a restart, though the session acknowledged everything", n)
	}
}
