package main

import (
	"bytes"
	"context"
	"crypto/ecdh"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// chatKey is a fixed public key for tests that need no X25519.
func chatKey(b byte) publicKey {
	var k publicKey
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// chatClock is an injected clock that only moves when told.
type chatClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *chatClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *chatClock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *chatClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// chatEvents collects events and lets a test wait for them.
type chatEvents struct {
	mu  sync.Mutex
	evs []chatEvent
}

func (l *chatEvents) add(e chatEvent) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }

func (l *chatEvents) of(kind chatEventKind) []chatEvent {
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
func (l *chatEvents) waitFor(t testing.TB, kind chatEventKind, n int, d time.Duration) []chatEvent {
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
func testChat(t testing.TB, dir string, self publicKey, send func(publicKey, []byte) error, now func() time.Time) (*chat, *chatEvents) {
	t.Helper()
	l := &chatEvents{}
	c, err := newChat(chatConfig{Dir: dir, Self: self, Send: send, MaxPayload: 1100, Event: l.add, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return c, l
}

// kill stops a chat the way SIGKILL would, as far as its files go: nothing
// more is written (no compaction, no contacts save).
func killChat(c *chat) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.j.stop()
	c.j.f.Close()
	close(c.stop)
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
type chatPair struct {
	a, b         *chat
	ka, kb       publicKey
	la, lb       *chatEvents
	link         *lossyLink
	dirA, dirB   string
	cancel       context.CancelFunc
	runA, runB   chan error
	started      bool
	startedRunAB bool
}

func newChatPair(t testing.TB, drop float64) *chatPair {
	t.Helper()
	p := &chatPair{ka: chatKey(0xa0), kb: chatKey(0xb0), link: newLossyLink(drop, 1), dirA: t.TempDir(), dirB: t.TempDir()}
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
func (p *chatPair) connect() {
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

func (p *chatPair) close(t testing.TB) {
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
	p := newChatPair(t, 0.2)
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
	p := newChatPair(t, 0.2)
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
	p := newChatPair(t, 0)
	// Bob is offline: alice's sends fail at the session layer, so the
	// message waits in her outbox.
	id, err := p.a.send(context.Background(), "bob", "hello after a crash")
	if err != nil {
		t.Fatal(err)
	}
	killChat(p.a) // SIGKILL: no close
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
	killChat(p.b)
	var acks [][]byte
	b2, lb2 := testChat(t, p.dirB, p.kb, func(_ publicKey, f []byte) error { acks = append(acks, f); return nil }, nil)
	stream := p.a.peers[p.kb].stream
	dup := chatFrame{Type: chatFrameData, Stream: stream, Seq: id, Count: 1, Text: []byte("hello after a crash")}
	b2.handlePayload(p.ka, netip.AddrPort{}, dup.appendTo(nil))
	b2.outWG.Wait()
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
	p := newChatPair(t, 0)
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
	c, _ := testChat(t, t.TempDir(), chatKey(1), func(publicKey, []byte) error { return errors.New("offline") }, nil)
	defer c.close()
	if err := c.addContact("bob", chatKey(2)); err != nil {
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
	c, _ := testChat(t, t.TempDir(), chatKey(1), func(publicKey, []byte) error { return nil }, nil)
	defer c.close()
	if err := c.addContact("bob", chatKey(2)); err != nil {
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

func TestContactsFile(t *testing.T) {
	dir := t.TempDir()
	self := chatKey(1)
	c, _ := testChat(t, dir, self, func(publicKey, []byte) error { return nil }, nil)
	tests := []struct {
		name    string
		key     publicKey
		wantErr string
	}{
		{"alice", chatKey(2), ""},
		{"bob_2-x", chatKey(3), ""},
		{"alice", chatKey(4), "exists already"},
		{"carol", chatKey(2), "already your contact \"alice\""},
		{"me", self, "your own key"},
		{"", chatKey(5), "1 to 32"},
		{strings.Repeat("a", 33), chatKey(5), "1 to 32"},
		{"bad name", chatKey(5), "only letters"},
		{"émile", chatKey(5), "only letters"},
	}
	for _, tt := range tests {
		err := c.addContact(tt.name, tt.key)
		if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("addContact(%q) = %v, want error %q", tt.name, err, tt.wantErr)
		}
	}
	if err := c.removeContact("bob_2-x"); err != nil {
		t.Fatal(err)
	}
	if err := c.removeContact("bob_2-x"); !errors.Is(err, errNoContact) {
		t.Errorf("removing twice: %v, want errNoContact", err)
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	c, _ = testChat(t, dir, self, func(publicKey, []byte) error { return nil }, nil)
	defer c.close()
	list := c.contactList()
	if len(list) != 1 || list[0].Name != "alice" || list[0].Key != chatKey(2) || list[0].Online {
		t.Fatalf("contacts after reopen = %+v, want only alice, offline", list)
	}
	if ci, ok := c.contactByKey(chatKey(2)); !ok || ci.Name != "alice" {
		t.Errorf("contactByKey = %+v, %v", ci, ok)
	}
	if _, ok := c.contactByName("bob_2-x"); ok {
		t.Errorf("removed contact still found")
	}
}

func TestContactsLastSeen(t *testing.T) {
	clock := &chatClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	c, l := testChat(t, dir, chatKey(1), func(publicKey, []byte) error { return nil }, clock.now)
	if err := c.addContact("alice", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort("192.0.2.1:6881")
	c.setOnline(chatKey(2), addr)
	c.setOnline(chatKey(2), addr)
	c.setOnline(chatKey(2), netip.MustParseAddrPort("192.0.2.2:6881"))
	clock.add(time.Minute)
	c.setOffline(chatKey(2))
	var kinds []string
	for _, e := range l.evs {
		kinds = append(kinds, e.Kind.String())
	}
	if got := strings.Join(kinds, " "); got != "online moved offline" {
		t.Errorf("events %q, want \"online moved offline\"", got)
	}
	c.close()
	b, _ := os.ReadFile(filepath.Join(dir, contactsFile))
	want := contactsHeader + "\nalice " + chatKey(2).String() + " 2026-11-25T12:01:00Z\n"
	if string(b) != want {
		t.Errorf("contacts file:\n%s\nwant:\n%s", b, want)
	}
}

func TestContactsFileRejected(t *testing.T) {
	k2, k3 := chatKey(2).String(), chatKey(3).String()
	tests := []struct {
		name, file, wantErr string
	}{
		{"bad key", "alice zz\n", "line 1: key"},
		{"one field", "# comment\n\nalice\n", "line 3: want"},
		{"bad name", "al!ce " + k2 + "\n", "line 1: chat: name"},
		{"duplicate name", "alice " + k2 + "\nalice " + k3 + "\n", "line 2: name \"alice\" already on line 1"},
		{"duplicate key", "alice " + k2 + "\nbob " + k2 + "\n", "line 2: key already on line 1"},
		{"own key", "me " + chatKey(1).String() + "\n", "line 1: that is your own key"},
		{"bad time", "alice " + k2 + " yesterday\n", "line 1: last seen"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		path := filepath.Join(dir, contactsFile)
		if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := newChat(chatConfig{Dir: dir, Self: chatKey(1), Send: func(publicKey, []byte) error { return nil }, MaxPayload: 1100})
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: newChat = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
		if b, _ := os.ReadFile(path); string(b) != tt.file {
			t.Errorf("%s: the file was changed to %q", tt.name, b)
		}
	}
}

func TestOutboxDamage(t *testing.T) {
	k := chatKey(2)
	log := []byte(outboxMagic)
	log = appendRecord(log, outboxRec{Type: recStream, Key: k, Stream: 7})
	log = appendRecord(log, outboxRec{Type: recQueued, Key: k, Seq: 1, Text: []byte("one")})
	whole := len(log)
	log = appendRecord(log, outboxRec{Type: recQueued, Key: k, Seq: 2, Text: []byte("two")})
	tests := []struct {
		name     string
		file     []byte
		wantRecs int
		wantGood int
		wantErr  string
	}{
		{"intact", log, 3, len(log), ""},
		{"torn tail", log[:len(log)-3], 2, whole, ""},
		{"zeros after a crash", append(bytes.Clone(log[:whole]), make([]byte, 100)...), 2, whole, ""},
		{"bad crc at the end", flipByteAt(log, len(log)-1), 2, whole, ""},
		{"bad crc in the middle", flipByteAt(log, whole-1), 0, 0, "offset 63: damaged record"},
		{"bad magic", append([]byte("XXXXXXXX"), log[8:]...), 0, 0, "bad magic"},
		{"unknown type", withType(log, 'Z'), 0, 0, "unknown record type 0x5a"},
	}
	for _, tt := range tests {
		recs, good, err := parseOutbox(tt.file)
		if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) ||
			len(recs) != tt.wantRecs || good != tt.wantGood {
			t.Errorf("%s: parseOutbox = %d records, good %d, %v; want %d, %d, %q", tt.name, len(recs), good, err, tt.wantRecs, tt.wantGood, tt.wantErr)
		}
	}

	// Damage in the middle: newChat refuses and leaves the file alone;
	// a torn tail is cut off and the rest loads.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, contactsFile), []byte("bob "+k.String()+"\n"), 0o600)
	bad := flipByteAt(log, whole-1)
	os.WriteFile(filepath.Join(dir, outboxFile), bad, 0o600)
	if _, err := newChat(chatConfig{Dir: dir, Self: chatKey(1), Send: func(publicKey, []byte) error { return nil }, MaxPayload: 1100}); err == nil {
		t.Fatal("newChat accepted a damaged outbox")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, outboxFile)); !bytes.Equal(b, bad) {
		t.Fatal("damaged outbox was changed")
	}
	os.WriteFile(filepath.Join(dir, outboxFile), log[:len(log)-3], 0o600)
	c, _ := testChat(t, dir, chatKey(1), func(publicKey, []byte) error { return nil }, nil)
	defer c.close()
	if ci, _ := c.contactByName("bob"); ci.Outbox != 1 {
		t.Fatalf("outbox after a torn tail holds %d, want 1", ci.Outbox)
	}
	if id, err := c.send(context.Background(), "bob", "again"); err != nil || id != 2 {
		t.Fatalf("send = %d, %v; want id 2", id, err)
	}
}

func flipByteAt(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 1
	return b
}

// withType changes the type of the first record and fixes its checksum.
func withType(log []byte, typ byte) []byte {
	b := bytes.Clone(log)
	off := len(outboxMagic)
	n := 2 + int(b[off])<<8 | int(b[off+1])
	b[off+2] = typ
	crc := recordCRC(b[off : off+n])
	b[off+n], b[off+n+1], b[off+n+2], b[off+n+3] = byte(crc>>24), byte(crc>>16), byte(crc>>8), byte(crc)
	return b
}

func recordCRC(b []byte) uint32 { return crc32.Checksum(b, outboxCRCTable) }

// chatSpecVectors parses the ```chat-vector name=NAME blocks of SPEC.md into
// name -> key -> value.
func chatSpecVectors(t *testing.T) map[string]map[string]string {
	t.Helper()
	return specVectorMap(t, "chat-vector")
}

func vectorHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("vector %q: %v", s, err)
	}
	return b
}

func TestChatSpecVectors(t *testing.T) {
	v := chatSpecVectors(t)
	for _, name := range []string{"keys", "rendezvous", "verify", "frames", "outbox"} {
		if len(v[name]) == 0 {
			t.Fatalf("SPEC.md has no chat-vector %q", name)
		}
	}
	t.Run("keys", func(t *testing.T) {
		kv := v["keys"]
		a, err := ecdh.X25519().NewPrivateKey(vectorHex(t, kv["priv-a"]))
		if err != nil {
			t.Fatal(err)
		}
		b, err := ecdh.X25519().NewPrivateKey(vectorHex(t, kv["priv-b"]))
		if err != nil {
			t.Fatal(err)
		}
		sab, _ := a.ECDH(b.PublicKey())
		sba, _ := b.ECDH(a.PublicKey())
		if hex.EncodeToString(a.PublicKey().Bytes()) != kv["pub-a"] || hex.EncodeToString(b.PublicKey().Bytes()) != kv["pub-b"] ||
			hex.EncodeToString(sab) != kv["secret"] || !bytes.Equal(sab, sba) {
			t.Errorf("keys: got pub-a %x pub-b %x secrets %x %x", a.PublicKey().Bytes(), b.PublicKey().Bytes(), sab, sba)
		}
	})
	t.Run("rendezvous", func(t *testing.T) {
		kv := v["rendezvous"]
		var secret [32]byte
		copy(secret[:], vectorHex(t, kv["secret"]))
		unix, _ := strconv.ParseInt(kv["time"], 10, 64)
		es := rendezvousEpochs(time.Unix(unix, 0))
		if got := strings.Trim(fmt.Sprint(es), "[]"); got != kv["epochs"] {
			t.Errorf("epochs = %s, want %s", got, kv["epochs"])
		}
		for i, e := range es {
			n := strconv.Itoa(i + 1)
			if fmt.Sprintf("%016x", e) != kv["epoch-"+n] {
				t.Errorf("epoch-%s = %016x, want %s", n, e, kv["epoch-"+n])
			}
			if got := rendezvousInfohash(secret, e).String(); got != kv["infohash-"+n] {
				t.Errorf("infohash(%d) = %s, want %s", e, got, kv["infohash-"+n])
			}
		}
	})
	t.Run("verify", func(t *testing.T) {
		kv := v["verify"]
		var a, b publicKey
		copy(a[:], vectorHex(t, kv["pub-a"]))
		copy(b[:], vectorHex(t, kv["pub-b"]))
		h := sha256.Sum256(slices.Concat([]byte(verifyLabel), b[:], a[:])) // b < a here
		if hex.EncodeToString(h[:]) != kv["hash"] {
			t.Errorf("hash = %x, want %s", h, kv["hash"])
		}
		if got := verifyCodeFor(a, b); got != kv["code"] {
			t.Errorf("code = %s, want %s", got, kv["code"])
		}
	})
	t.Run("frames", func(t *testing.T) {
		for _, k := range []string{"data", "data-2", "ack"} {
			in := vectorHex(t, v["frames"][k])
			f, err := parseChatFrame(in)
			if err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			if out := f.appendTo(nil); !bytes.Equal(out, in) {
				t.Errorf("%s: re-encoded %x, want %x", k, out, in)
			}
		}
	})
	t.Run("outbox", func(t *testing.T) {
		kv := v["outbox"]
		log := []byte(outboxMagic)
		types := map[string]byte{"stream": recStream, "queued": recQueued, "acked": recAcked, "delivered": recDelivered, "forget": recForget}
		for _, k := range []string{"stream", "queued", "acked", "delivered", "forget"} {
			log = append(log, vectorHex(t, kv[k])...)
		}
		recs, good, err := parseOutbox(log)
		if err != nil || good != len(log) || len(recs) != 5 {
			t.Fatalf("parseOutbox = %d records, %d, %v", len(recs), good, err)
		}
		for i, k := range []string{"stream", "queued", "acked", "delivered", "forget"} {
			r := recs[i]
			if r.Type != types[k] || hex.EncodeToString(r.Key[:]) != kv["key"] {
				t.Errorf("%s: parsed %+v", k, r)
			}
			if got := hex.EncodeToString(appendRecord(nil, r)); got != kv[k] {
				t.Errorf("%s: re-encoded %s, want %s", k, got, kv[k])
			}
		}
	})
}

func TestParseChatFrameRejects(t *testing.T) {
	h := func(s string) []byte { b, _ := hex.DecodeString(strings.ReplaceAll(s, " ", "")); return b }
	tests := []struct {
		name, in, wantErr string
	}{
		{"empty", "", "empty frame"},
		{"no text", "01 6b06daa49e3779b9 0000000000000001 00 01", "want at least 20"},
		{"zero stream", "01 0000000000000000 0000000000000001 00 01 68", "zero stream"},
		{"zero seq", "01 6b06daa49e3779b9 0000000000000000 00 01 68", "zero sequence"},
		{"index = count", "01 6b06daa49e3779b9 0000000000000001 01 01 68", "fragment 1 of 1"},
		{"zero count", "01 6b06daa49e3779b9 0000000000000001 00 00 68", "fragment 0 of 0"},
		{"short ack", "02 6b06daa49e3779b9 00000000000000", "want 17..49"},
		{"long ack", "02 6b06daa49e3779b9 0000000000000005" + strings.Repeat("ff", 33), "want 17..49"},
		{"ack zero stream", "02 0000000000000000 0000000000000005", "zero stream"},
		{"bitmap ends in zero", "02 6b06daa49e3779b9 0000000000000005 a0 00", "trailing zero"},
		{"unknown type", "03", "unknown frame type 0x03"},
		{"krpc", "64 31 3a", "unknown frame type 0x64"},
	}
	for _, tt := range tests {
		f, err := parseChatFrame(h(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !reflect.DeepEqual(f, chatFrame{}) {
			t.Errorf("%s: parseChatFrame(%s) = %+v, %v; want error %q", tt.name, tt.in, f, err, tt.wantErr)
		}
	}
	// No strict prefix of a valid frame parses as the same frame.
	in := h("01 6b06daa49e3779b9 0000000000000001 00 01 6869")
	for i := range len(in) - 1 {
		if f, err := parseChatFrame(in[:i]); err == nil && bytes.Equal(f.appendTo(nil), in) {
			t.Errorf("prefix %x parses as the whole frame", in[:i])
		}
	}
}

func FuzzChatFrame(f *testing.F) {
	for _, s := range []string{
		"016b06daa49e3779b9000000000000000100016869",
		"016b06daa49e3779b900000000000000020102c3bc",
		"026b06daa49e3779b90000000000000005a0",
		"026b06daa49e3779b90000000000000005",
		"026b06daa49e3779b90000000000000005a000",
		"03",
	} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseChatFrame(b)
		if err != nil {
			if !reflect.DeepEqual(fr, chatFrame{}) {
				t.Fatalf("error %v with a non-zero frame %+v", err, fr)
			}
			return
		}
		if out := fr.appendTo(nil); !bytes.Equal(out, b) {
			t.Fatalf("parse(%x) re-encodes to %x", b, out)
		}
	})
}

func TestRendezvousSymmetric(t *testing.T) {
	var keys []*ecdh.PrivateKey
	for range 3 {
		k, err := ecdh.X25519().GenerateKey(cryptorand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	secret := func(a, b int) [32]byte {
		s, err := keys[a].ECDH(keys[b].PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		return [32]byte(s)
	}
	const e = 498780
	ab, ba := rendezvousInfohash(secret(0, 1), e), rendezvousInfohash(secret(1, 0), e)
	if ab != ba {
		t.Fatalf("A derives %v, B derives %v", ab, ba)
	}
	seen := map[nodeID]string{ab: "A-B epoch e"}
	for name, id := range map[string]nodeID{
		"A-B epoch e+1": rendezvousInfohash(secret(0, 1), e+1),
		"A-B epoch e-1": rendezvousInfohash(secret(1, 0), e-1),
		"A-C epoch e":   rendezvousInfohash(secret(0, 2), e),
		"B-C epoch e":   rendezvousInfohash(secret(2, 1), e),
	} {
		if other, dup := seen[id]; dup {
			t.Errorf("%s and %s share infohash %v", name, other, id)
		}
		seen[id] = name
	}
}

func TestRendezvousEpochs(t *testing.T) {
	base := time.Unix(498780*3600, 0)
	tests := []struct {
		at   time.Duration
		want []uint64
	}{
		{0, []uint64{498779, 498780}},
		{10*time.Minute - time.Second, []uint64{498779, 498780}},
		{10 * time.Minute, []uint64{498780}},
		{50 * time.Minute, []uint64{498780, 498781}},
		{time.Hour - time.Second, []uint64{498780, 498781}},
	}
	for _, tt := range tests {
		if got := rendezvousEpochs(base.Add(tt.at)); !slices.Equal(got, tt.want) {
			t.Errorf("rendezvousEpochs(+%v) = %v, want %v", tt.at, got, tt.want)
		}
	}
}

func TestVerifyCode(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	a, _ := testChat(t, dir1, chatKey(1), func(publicKey, []byte) error { return nil }, nil)
	b, _ := testChat(t, dir2, chatKey(2), func(publicKey, []byte) error { return nil }, nil)
	defer a.close()
	defer b.close()
	a.addContact("bob", chatKey(2))
	b.addContact("alice", chatKey(1))
	ca, err1 := a.verifyCode("bob")
	cb, err2 := b.verifyCode("alice")
	if err1 != nil || err2 != nil || ca != cb || len(ca) != 6*5+5 {
		t.Fatalf("codes %q, %q (%v, %v): want equal, 6 groups of 5 digits", ca, cb, err1, err2)
	}
	if other := verifyCodeFor(chatKey(1), chatKey(3)); other == ca {
		t.Errorf("different keys give the same code %s", ca)
	}
	if _, err := a.verifyCode("nobody"); !errors.Is(err, errNoContact) {
		t.Errorf("verifyCode(nobody) = %v", err)
	}
}

// chatFakeDHT records the rendezvous calls.
type chatFakeDHT struct {
	mu        sync.Mutex
	announces []nodeID
	lookups   []nodeID
	endpoints []netip.AddrPort
	peers     []netip.AddrPort
}

func (d *chatFakeDHT) announce(_ context.Context, ih nodeID) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.announces = append(d.announces, ih)
	return 8, nil
}

func (d *chatFakeDHT) getPeers(_ context.Context, ih nodeID) ([]netip.AddrPort, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookups = append(d.lookups, ih)
	return d.peers, nil
}

func (d *chatFakeDHT) counts() (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.announces), len(d.lookups)
}

func TestRendezvousSchedule(t *testing.T) {
	// 12:20:30 UTC: more than 10 minutes from either epoch boundary: one epoch.
	clock := &chatClock{t: time.Date(2026, 11, 25, 12, 20, 30, 0, time.UTC)}
	self := netip.MustParseAddrPort("198.51.100.1:6881")
	bob := netip.MustParseAddrPort("203.0.113.9:7000")
	d := &chatFakeDHT{peers: []netip.AddrPort{self, bob}}
	secret := [32]byte{1, 2, 3}
	c, err := newChat(chatConfig{Dir: t.TempDir(), Self: chatKey(1), MaxPayload: 1100, Now: clock.now,
		Send:         func(publicKey, []byte) error { return errors.New("offline") },
		StaticSecret: func(publicKey) ([32]byte, error) { return secret, nil },
		Announce:     d.announce, GetPeers: d.getPeers,
		SetEndpoint: func(_ publicKey, a netip.AddrPort) {
			d.mu.Lock()
			d.endpoints = append(d.endpoints, a)
			d.mu.Unlock()
		},
		IsSelf: func(a netip.AddrPort) bool { return a == self },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if err := c.addContact("bob", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	c.startSchedule()
	ctx := context.Background()
	step := func(d time.Duration) {
		clock.add(d)
		c.rendezvous(ctx)
		c.dhtWG.Wait()
	}
	want := func(when string, announces, lookups int) {
		t.Helper()
		if a, l := d.counts(); a != announces || l != lookups {
			t.Fatalf("%s: %d announces, %d lookups; want %d, %d", when, a, l, announces, lookups)
		}
	}
	step(0)
	want("start", 1, 1)
	ih := rendezvousInfohash(secret, uint64(clock.now().Unix()/3600))
	if d.announces[0] != ih || d.lookups[0] != ih {
		t.Fatalf("used %v and %v, want %v", d.announces[0], d.lookups[0], ih)
	}
	if !slices.Equal(d.endpoints, []netip.AddrPort{bob}) {
		t.Fatalf("endpoints %v, want only %v (not our own)", d.endpoints, bob)
	}
	step(4 * time.Second)
	want("4 s", 1, 1)
	step(time.Second)
	want("5 s", 1, 2)
	for range 11 {
		step(5 * time.Second)
	}
	want("60 s", 1, 13)
	step(5 * time.Second)
	want("65 s: slow now", 1, 13)
	step(85 * time.Second)
	want("150 s", 1, 14)
	c.setOnline(chatKey(2), bob)
	step(150 * time.Second) // 300 s after start
	want("online at 5 min", 2, 14)
	c.setOffline(chatKey(2))
	step(0)
	want("offline again: fast lookups", 2, 15)
	step(5 * time.Second)
	want("offline again + 5 s", 2, 16)
	clock.set(time.Date(2026, 11, 25, 12, 45, 30, 0, time.UTC))
	step(0)
	if a, _ := d.counts(); a != 3 {
		t.Fatalf("12:45:30: %d announces, want 3", a)
	}
	clock.set(time.Date(2026, 11, 25, 12, 49, 59, 0, time.UTC))
	step(0)
	if a, _ := d.counts(); a != 3 {
		t.Fatalf("12:49:59: %d announces, want 3", a)
	}
	// 12:50: this epoch and the next are current: announce at once on both.
	step(time.Second)
	if a, _ := d.counts(); a != 5 {
		t.Fatalf("12:50:00, the epoch set changed: %d announces, want 5", a)
	}
}

func TestBackoff(t *testing.T) {
	clock := &chatClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	var mu sync.Mutex
	var sent []chatFrame
	c, l := testChat(t, t.TempDir(), chatKey(1), func(_ publicKey, b []byte) error {
		f, err := parseChatFrame(b)
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		sent = append(sent, f)
		mu.Unlock()
		return nil
	}, clock.now)
	defer c.close()
	c.addContact("bob", chatKey(2))
	count := func() int { mu.Lock(); defer mu.Unlock(); n := len(sent); sent = nil; return n }
	if _, err := c.send(context.Background(), "bob", "x"); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("first send: %d frames", n)
	}
	// 200 ms doubling to 10 s.
	for _, wait := range []time.Duration{200, 400, 800, 1600, 3200, 6400, 10000, 10000} {
		clock.add(wait*time.Millisecond - time.Millisecond)
		c.retransmit()
		if n := count(); n != 0 {
			t.Fatalf("retransmitted before %v ms: %d frames", wait, n)
		}
		clock.add(time.Millisecond)
		c.retransmit()
		if n := count(); n != 1 {
			t.Fatalf("after %v ms: %d frames, want 1", wait, n)
		}
	}
	// A new session sends at once and restarts the backoff.
	c.setOnline(chatKey(2), netip.MustParseAddrPort("192.0.2.1:1"))
	c.outWG.Wait()
	clock.add(200 * time.Millisecond)
	c.retransmit()
	if n := count(); n != 2 {
		t.Fatalf("online + 200 ms: %d frames, want 2", n)
	}
	stream := c.peers[chatKey(2)].stream
	// Two more; bob holds 3 (bit 1 above cumulative 1), 2 is a hole.
	c.send(context.Background(), "bob", "y")
	c.send(context.Background(), "bob", "z")
	count()
	clock.add(fastRetransmit)
	ack := chatFrame{Type: chatFrameAck, Stream: stream, Seq: 1, Sack: []byte{0x40}}
	c.handlePayload(chatKey(2), netip.AddrPort{}, ack.appendTo(nil))
	c.outWG.Wait()
	mu.Lock()
	got := slices.Clone(sent)
	sent = nil
	mu.Unlock()
	if len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("after a sack of 3: sent %+v, want only seq 2 (fast retransmit)", got)
	}
	if d := l.of(eventDelivered); len(d) != 1 || d[0].MsgID != 1 {
		t.Fatalf("delivered events %+v, want msg 1", d)
	}
	clock.add(retransmitMin)
	c.retransmit()
	mu.Lock()
	got = slices.Clone(sent)
	sent = nil
	mu.Unlock()
	if len(got) != 1 || got[0].Seq != 3 {
		t.Fatalf("200 ms later: sent %+v, want seq 3 (held, ack missing); seq 2 backs off to 400 ms", got)
	}
	// Acks of another stream, or of what was never sent, change nothing.
	for _, bad := range []chatFrame{
		{Type: chatFrameAck, Stream: stream + 1, Seq: 3},
		{Type: chatFrameAck, Stream: stream, Seq: 4},
	} {
		c.handlePayload(chatKey(2), netip.AddrPort{}, bad.appendTo(nil))
	}
	if ci, _ := c.contactByName("bob"); ci.Outbox != 2 {
		t.Fatalf("outbox %d after bogus acks, want 2", ci.Outbox)
	}
	ack = chatFrame{Type: chatFrameAck, Stream: stream, Seq: 3}
	c.handlePayload(chatKey(2), netip.AddrPort{}, ack.appendTo(nil))
	clock.add(time.Minute)
	c.retransmit()
	if ci, _ := c.contactByName("bob"); ci.Outbox != 0 || count() != 0 || len(l.of(eventDelivered)) != 3 {
		t.Fatalf("after the final ack: outbox %d, delivered %d", ci.Outbox, len(l.of(eventDelivered)))
	}
}

// BenchmarkOutboxAppend measures durable sends: each send returns only when
// its "queued" record is fsynced; concurrent senders share fsyncs (group
// commit). The session send is a no-op, so messages stay in the outboxes of
// 200 contacts (below the per-contact cap).
func BenchmarkOutboxAppend(b *testing.B) {
	c, _ := testChat(b, b.TempDir(), chatKey(1), func(publicKey, []byte) error { return nil }, nil)
	defer c.close()
	const contacts = 200
	for i := range contacts {
		var k publicKey
		k[0], k[1] = 0xee, byte(i)
		if err := c.addContact("c"+strconv.Itoa(i), k); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	text := strings.Repeat("x", 100)
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			name := "c" + strconv.Itoa(int(next.Add(1)%contacts))
			if _, err := c.send(context.Background(), name, text); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	c.j.mu.Lock()
	syncs := c.j.syncs
	c.j.mu.Unlock()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)/float64(max(syncs, 1)), "msgs/fsync")
}

// BenchmarkDeliver measures send -> delivered between two chats wired back
// to back in process (no loss): durable outbox, frames, delivery with the
// receiver's durable "delivered" records, acks.
func BenchmarkDeliver(b *testing.B) {
	ka, kb := chatKey(0xa0), chatKey(0xb0)
	var a, bob *chat
	var delivered, received atomic.Int64
	cfg := func(dir string, self publicKey, send func(publicKey, []byte) error) chatConfig {
		return chatConfig{Dir: dir, Self: self, Send: send, MaxPayload: 1100, Event: func(e chatEvent) {
			switch e.Kind {
			case eventDelivered:
				delivered.Add(1)
			case eventMessage:
				received.Add(1)
			}
		}}
	}
	addrA, addrB := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")
	var err error
	if a, err = newChat(cfg(b.TempDir(), ka, func(_ publicKey, p []byte) error { bob.handlePayload(ka, addrA, p); return nil })); err != nil {
		b.Fatal(err)
	}
	if bob, err = newChat(cfg(b.TempDir(), kb, func(_ publicKey, p []byte) error { a.handlePayload(kb, addrB, p); return nil })); err != nil {
		b.Fatal(err)
	}
	a.addContact("bob", kb)
	bob.addContact("alice", ka)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for _, c := range []*chat{a, bob} {
		go func() { c.run(ctx); done <- struct{}{} }()
	}
	a.setOnline(kb, addrB)
	bob.setOnline(ka, addrA)
	text := strings.Repeat("x", 100)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			for {
				_, err := a.send(context.Background(), "bob", text)
				if !errors.Is(err, errOutboxFull) {
					if err != nil {
						b.Error(err)
					}
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	})
	for deadline := time.Now().Add(time.Minute); delivered.Load() < int64(b.N) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if delivered.Load() != int64(b.N) || received.Load() != int64(b.N) {
		b.Fatalf("delivered %d, received %d, want %d", delivered.Load(), received.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	cancel()
	<-done
	<-done
	a.close()
	bob.close()
}

// FuzzOutbox: whatever parseOutbox accepts re-encodes, record by record, to
// exactly the intact prefix it reported; on error nothing is returned.
func FuzzOutbox(f *testing.F) {
	k := chatKey(2)
	log := []byte(outboxMagic)
	for _, r := range []outboxRec{
		{Type: recStream, Key: k, Stream: 7, Seq: 1},
		{Type: recQueued, Key: k, Seq: 2, Text: []byte("hi")},
		{Type: recAcked, Key: k, Seq: 2},
		{Type: recDelivered, Key: k, Stream: 9, Seq: 4},
		{Type: recForget, Key: k},
	} {
		log = appendRecord(log, r)
		f.Add(bytes.Clone(log))
	}
	f.Add(log[:len(log)-2])
	f.Add([]byte(outboxMagic + "\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, good, err := parseOutbox(b)
		if err != nil {
			if recs != nil || good != 0 {
				t.Fatalf("error %v with %d records, good %d", err, len(recs), good)
			}
			return
		}
		out := []byte(outboxMagic)
		for _, r := range recs {
			out = appendRecord(out, r)
		}
		if !bytes.Equal(out, b[:good]) {
			t.Fatalf("records re-encode to %x, want the intact prefix %x", out, b[:good])
		}
	})
}

func TestReAddStartsNewStream(t *testing.T) {
	p := newChatPair(t, 0)
	p.connect()
	defer p.close(t)
	p.deliverOne(t, "one")
	if err := p.a.removeContact("bob"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // a new stream id needs a later millisecond
	if err := p.a.addContact("bob", p.kb); err != nil {
		t.Fatal(err)
	}
	p.a.setOnline(p.kb, p.link.addrs[p.kb])
	id, err := p.a.send(context.Background(), "bob", "two")
	if err != nil || id != 1 {
		t.Fatalf("first send after re-adding = %d, %v; want id 1", id, err)
	}
	got := p.lb.waitFor(t, eventMessage, 2, 2*time.Second)
	if got[1].Text != "two" || got[1].MsgID != 1 {
		t.Fatalf("bob got %+v, want \"two\" as message 1 of the new stream", got[1])
	}
	p.la.waitFor(t, eventDelivered, 2, 2*time.Second)
}

func TestGroupCommit(t *testing.T) {
	c, l := testChat(t, t.TempDir(), chatKey(1), func(publicKey, []byte) error { return nil }, nil)
	if err := c.addContact("bob", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	const n = 64
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.send(context.Background(), "bob", "burst"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	c.j.mu.Lock()
	syncs := c.j.syncs
	c.j.mu.Unlock()
	if syncs >= n {
		t.Errorf("%d concurrent sends took %d fsyncs: no batch was shared", n, syncs)
	}
	if q := l.of(eventQueued); len(q) != n {
		t.Errorf("%d queued events, want %d", len(q), n)
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.send(context.Background(), "bob", "late"); !errors.Is(err, errChatClosed) {
		t.Errorf("send after close = %v, want errChatClosed", err)
	}
}

// deliverOne sends text from alice to bob and waits for its receipt.
func (p *chatPair) deliverOne(t *testing.T, text string) {
	t.Helper()
	if _, err := p.a.send(context.Background(), "bob", text); err != nil {
		t.Fatal(err)
	}
	p.lb.waitFor(t, eventMessage, 1, 2*time.Second)
	p.la.waitFor(t, eventDelivered, 1, 2*time.Second)
}

// A receiver that removes and re-adds the sender keeps how far the sender's
// stream was delivered, so the stream goes on (it stalled at seq 2 before).
func TestReceiverReAddResumesStream(t *testing.T) {
	p := newChatPair(t, 0)
	p.connect()
	defer p.close(t)
	p.deliverOne(t, "one")
	if err := p.b.removeContact("alice"); err != nil {
		t.Fatal(err)
	}
	if err := p.b.addContact("alice", p.ka); err != nil {
		t.Fatal(err)
	}
	if _, err := p.a.send(context.Background(), "bob", "two"); err != nil {
		t.Fatal(err)
	}
	p.lb.waitFor(t, eventMessage, 2, 3*time.Second)
	if got := p.lb.of(eventMessage); got[1].Text != "two" {
		t.Errorf("second message %q, want \"two\"", got[1].Text)
	}
}

// Complete messages held after a gap may fill the reassembly cap; the one
// they wait for is still taken, or the stream would stall for good.
func TestReassemblyCapKeepsNextInOrder(t *testing.T) {
	c, ev := testChat(t, t.TempDir(), chatKey(1), func(publicKey, []byte) error { return nil }, nil)
	defer c.close()
	if err := c.addContact("a", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	from := netip.MustParseAddrPort("127.0.0.1:1")
	text := strings.Repeat("x", 1000)
	send := func(seq uint64, idx, cnt uint8) {
		f := chatFrame{Type: chatFrameData, Stream: 7, Seq: seq, Index: idx, Count: cnt, Text: []byte(text)}
		c.handlePayload(chatKey(2), from, f.appendTo(nil))
	}
	for seq := uint64(2); seq <= 80; seq++ { // 316 KB held: past the cap
		for i := range uint8(4) {
			send(seq, i, 4)
		}
	}
	for i := range uint8(4) {
		send(1, i, 4)
	}
	ev.waitFor(t, eventMessage, 1, 3*time.Second)
}

// A length field damaged in the middle of the log is an error, not a torn
// tail: cutting there would silently drop the queued messages behind it.
func TestOutboxDamagedLengthIsNotTorn(t *testing.T) {
	k := chatKey(2)
	b := []byte(outboxMagic)
	b = appendRecord(b, outboxRec{Type: recStream, Key: k, Stream: 9})
	first := len(b)
	b = appendRecord(b, outboxRec{Type: recQueued, Key: k, Seq: 1, Text: []byte("one")})
	b = appendRecord(b, outboxRec{Type: recQueued, Key: k, Seq: 2, Text: []byte("two")})
	good := slices.Clone(b)
	binary.BigEndian.PutUint16(b[first:], 0xfff0) // claims to run past the end
	if _, _, err := parseOutbox(b); err == nil {
		t.Fatal("parseOutbox accepted a damaged length in the middle")
	}
	// A real torn append (the last record cut short) is still cut off.
	torn := good[:len(good)-5]
	recs, n, err := parseOutbox(torn)
	if err != nil || len(recs) != 2 || n != first+len(appendRecord(nil, outboxRec{Type: recQueued, Key: k, Seq: 1, Text: []byte("one")})) {
		t.Fatalf("torn tail: %d records, good %d, err %v", len(recs), n, err)
	}
}
