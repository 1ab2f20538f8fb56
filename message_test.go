package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// testKey is a fixed public key for tests that need no X25519.
func testKey(b byte) publicKey {
	var k publicKey
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// fakeClock is an injected clock that only moves when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// eventLog collects events and lets a test wait for them.
type eventLog struct {
	mu  sync.Mutex
	evs []chatEvent
}

func (l *eventLog) add(e chatEvent) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }

func (l *eventLog) of(kind chatEventKind) []chatEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []chatEvent
	for _, e := range l.evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls until n events of kind arrived, for at most d.
func (l *eventLog) waitFor(t testing.TB, kind chatEventKind, n int, d time.Duration) []chatEvent {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		evs := l.of(kind)
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d %v events after %v, want %d", len(evs), kind, d, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testChat opens a chat in dir with the given key and sender.
func testChat(t testing.TB, dir string, self publicKey, send func(publicKey, []byte) error, now func() time.Time) (*chat, *eventLog) {
	t.Helper()
	l := &eventLog{}
	c, err := newChat(chatConfig{Dir: dir, Self: self, Send: send, MaxPayload: 1100, Event: l.add, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return c, l
}

// kill stops a chat the way SIGKILL would, as far as its files go: nothing
// more is written (no compaction, no contacts save).
func kill(c *chat) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.j.stop()
	c.j.f.Close()
}

// lossyLink carries payloads between chats like a bad network: it drops
// a fraction of them and delays each by a random 0-3 ms, which reorders.
type lossyLink struct {
	mu     sync.Mutex
	rng    *rand.Rand
	drop   float64
	peers  map[publicKey]*chat // receiving chat by its own key
	addrs  map[publicKey]netip.AddrPort
	closed bool
	wg     sync.WaitGroup
}

func newLossyLink(drop float64, seed uint64) *lossyLink {
	return &lossyLink{rng: rand.New(rand.NewPCG(seed, seed)), drop: drop,
		peers: map[publicKey]*chat{}, addrs: map[publicKey]netip.AddrPort{}}
}

// attach makes c reachable as key, at a made-up address.
func (l *lossyLink) attach(key publicKey, c *chat, port uint16) {
	l.mu.Lock()
	l.peers[key], l.addrs[key] = c, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
	l.mu.Unlock()
}

// sender returns the Send function of the chat whose key is from.
func (l *lossyLink) sender(from publicKey) func(publicKey, []byte) error {
	return func(to publicKey, p []byte) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		dst := l.peers[to]
		if l.closed || dst == nil {
			return errors.New("link: no session")
		}
		if l.rng.Float64() < l.drop {
			return nil
		}
		delay := time.Duration(l.rng.IntN(3000)) * time.Microsecond
		addr, b := l.addrs[from], bytes.Clone(p)
		l.wg.Add(1)
		time.AfterFunc(delay, func() {
			defer l.wg.Done()
			dst.handlePayload(from, addr, b)
		})
		return nil
	}
}

func (l *lossyLink) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.wg.Wait()
}

// pair is two chats that know each other, wired through a lossy link.
type pair struct {
	a, b         *chat
	ka, kb       publicKey
	la, lb       *eventLog
	link         *lossyLink
	dirA, dirB   string
	cancel       context.CancelFunc
	runA, runB   chan error
	started      bool
	startedRunAB bool
}

func newPair(t testing.TB, drop float64) *pair {
	t.Helper()
	p := &pair{ka: testKey(0xa0), kb: testKey(0xb0), link: newLossyLink(drop, 1), dirA: t.TempDir(), dirB: t.TempDir()}
	p.a, p.la = testChat(t, p.dirA, p.ka, p.link.sender(p.ka), nil)
	p.b, p.lb = testChat(t, p.dirB, p.kb, p.link.sender(p.kb), nil)
	if err := p.a.addContact("bob", p.kb); err != nil {
		t.Fatal(err)
	}
	if err := p.b.addContact("alice", p.ka); err != nil {
		t.Fatal(err)
	}
	return p
}

// connect attaches both ends, starts their timers and marks them online.
func (p *pair) connect() {
	p.link.attach(p.ka, p.a, 1001)
	p.link.attach(p.kb, p.b, 1002)
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.runA, p.runB = make(chan error, 1), make(chan error, 1)
	go func() { p.runA <- p.a.run(ctx) }()
	go func() { p.runB <- p.b.run(ctx) }()
	p.a.setOnline(p.kb, p.link.addrs[p.kb])
	p.b.setOnline(p.ka, p.link.addrs[p.ka])
}

func (p *pair) close(t testing.TB) {
	t.Helper()
	if p.cancel != nil {
		p.cancel()
		<-p.runA
		<-p.runB
	}
	p.link.close()
	for _, c := range []*chat{p.a, p.b} {
		if err := c.close(); err != nil {
			t.Error(err)
		}
	}
}

func TestDeliverLossyInOrderExactlyOnce(t *testing.T) {
	p := newPair(t, 0.2)
	p.connect()
	defer p.close(t)
	const n = 200
	var mu sync.Mutex
	texts := map[uint64]string{}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				text := fmt.Sprintf("message %d ünïcode", i)
				id, err := p.a.send(context.Background(), "bob", text)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				texts[id] = text
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	got := p.lb.waitFor(t, eventMessage, n, 10*time.Second)
	p.la.waitFor(t, eventDelivered, n, 10*time.Second)
	time.Sleep(50 * time.Millisecond) // a late duplicate must not deliver again
	got = p.lb.of(eventMessage)
	if len(got) != n {
		t.Fatalf("bob got %d messages, want %d", len(got), n)
	}
	for i, e := range got {
		if e.MsgID != uint64(i+1) || e.Text != texts[e.MsgID] || e.Contact != "alice" {
			t.Fatalf("message %d = %d %q from %s, want %d %q from alice", i, e.MsgID, e.Text, e.Contact, i+1, texts[uint64(i+1)])
		}
	}
	if q := p.la.of(eventQueued); len(q) != n {
		t.Errorf("alice saw %d queued events, want %d", len(q), n)
	}
	if ci, _ := p.a.contactByName("bob"); ci.Outbox != 0 || !ci.Online {
		t.Errorf("bob after delivery: %+v, want an empty outbox, online", ci)
	}
}

func TestDeliverLongMessageFragments(t *testing.T) {
	p := newPair(t, 0.2)
	p.connect()
	defer p.close(t)
	text := strings.Repeat("ü", maxMessageText/2) // 4096 bytes, 4 fragments of <= 1081
	if _, err := p.a.send(context.Background(), "bob", text); err != nil {
		t.Fatal(err)
	}
	got := p.lb.waitFor(t, eventMessage, 1, 5*time.Second)
	if got[0].Text != text {
		t.Fatalf("got %d bytes, want the 4096 sent", len(got[0].Text))
	}
}

func TestRestartAfterKill(t *testing.T) {
	p := newPair(t, 0)
	// Bob is offline: alice's sends fail at the session layer, so the
	// message waits in her outbox.
	id, err := p.a.send(context.Background(), "bob", "hello after a crash")
	if err != nil {
		t.Fatal(err)
	}
	kill(p.a) // SIGKILL: no close
	recs, _, err := parseOutboxFile(filepath.Join(p.dirA, outboxFile))
	if err != nil {
		t.Fatal(err)
	}
	if !hasQueued(recs, p.kb, id, "hello after a crash") {
		t.Fatalf("outbox on disk %+v lacks the queued message", recs)
	}
	p.a, p.la = testChat(t, p.dirA, p.ka, p.link.sender(p.ka), nil)
	if ci, _ := p.a.contactByName("bob"); ci.Outbox != 1 {
		t.Fatalf("reopened outbox holds %d messages, want 1", ci.Outbox)
	}
	p.connect()
	got := p.lb.waitFor(t, eventMessage, 1, 5*time.Second)
	p.la.waitFor(t, eventDelivered, 1, 5*time.Second)
	if got[0].Text != "hello after a crash" || got[0].MsgID != id {
		t.Fatalf("bob got %+v", got[0])
	}

	// Bob is killed after delivery; the same frame again must not deliver
	// twice after his restart, but be acknowledged.
	p.cancel()
	<-p.runA
	<-p.runB
	p.cancel = nil
	kill(p.b)
	var acks [][]byte
	b2, lb2 := testChat(t, p.dirB, p.kb, func(_ publicKey, f []byte) error { acks = append(acks, f); return nil }, nil)
	stream := p.a.peers[p.kb].stream
	dup := chatFrame{Type: chatFrameData, Stream: stream, Seq: id, Count: 1, Text: []byte("hello after a crash")}
	b2.handlePayload(p.ka, netip.AddrPort{}, dup.appendTo(nil))
	if m := lb2.of(eventMessage); len(m) != 0 {
		t.Fatalf("redelivered after restart: %+v", m)
	}
	want := chatFrame{Type: chatFrameAck, Stream: stream, Seq: id}
	if len(acks) != 1 || !bytes.Equal(acks[0], want.appendTo(nil)) {
		t.Fatalf("acks %x, want %x", acks, want.appendTo(nil))
	}
	p.b = b2
	p.close(t)
}

func parseOutboxFile(path string) ([]outboxRec, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	return parseOutbox(b)
}

func hasQueued(recs []outboxRec, k publicKey, seq uint64, text string) bool {
	for _, r := range recs {
		if r.Type == recQueued && r.Key == k && r.Seq == seq && string(r.Text) == text {
			return true
		}
	}
	return false
}

func TestCloseCompactsAndReopens(t *testing.T) {
	p := newPair(t, 0)
	for i := range 3 {
		if _, err := p.a.send(context.Background(), "bob", "m"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	p.close(t)
	recs, _, err := parseOutboxFile(filepath.Join(p.dirA, outboxFile))
	if err != nil {
		t.Fatal(err)
	}
	// Compacted: one stream record and the three messages, nothing else.
	if len(recs) != 4 || recs[0].Type != recStream || recs[3].Type != recQueued || recs[3].Seq != 3 {
		t.Fatalf("compacted outbox = %+v", recs)
	}
	a, _ := testChat(t, p.dirA, p.ka, func(publicKey, []byte) error { return nil }, nil)
	defer a.close()
	id, err := a.send(context.Background(), "bob", "next")
	if err != nil || id != 4 {
		t.Fatalf("send after reopen = %d, %v; want id 4", id, err)
	}
}

func TestOutboxFull(t *testing.T) {
	c, _ := testChat(t, t.TempDir(), testKey(1), func(publicKey, []byte) error { return errors.New("offline") }, nil)
	defer c.close()
	if err := c.addContact("bob", testKey(2)); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	p := c.names["bob"]
	p.stream = 1
	for i := range maxOutboxPerPeer {
		p.out = append(p.out, &outMsg{seq: uint64(i + 1)})
	}
	p.nextSeq = maxOutboxPerPeer + 1
	c.mu.Unlock()
	if _, err := c.send(context.Background(), "bob", "one more"); !errors.Is(err, errOutboxFull) {
		t.Fatalf("send to a full outbox: %v, want errOutboxFull", err)
	}
}

func TestSendRejects(t *testing.T) {
	c, _ := testChat(t, t.TempDir(), testKey(1), func(publicKey, []byte) error { return nil }, nil)
	defer c.close()
	if err := c.addContact("bob", testKey(2)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, to, text, wantErr string
	}{
		{"empty", "bob", "", "empty message"},
		{"too long", "bob", strings.Repeat("x", maxMessageText+1), "limit is 4096"},
		{"invalid utf-8", "bob", "a\xffb", "not valid UTF-8"},
		{"no contact", "carol", "hi", "no such contact"},
	}
	for _, tt := range tests {
		if _, err := c.send(context.Background(), tt.to, tt.text); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: send = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
	}
	if _, err := c.send(context.Background(), "bob", strings.Repeat("x", maxMessageText)); err != nil {
		t.Errorf("send of exactly %d bytes: %v", maxMessageText, err)
	}
}
