package main

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
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
	c.ob.stop()
	c.ob.j.f.Close()
	c.out.stop()
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
	p.a.presence.online(p.kb, p.link.addrs[p.kb])
	p.b.presence.online(p.ka, p.link.addrs[p.ka])
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

func TestBackoff(t *testing.T) {
	clock := newFakeClockAt(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
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
		clock.advance(wait*time.Millisecond - time.Millisecond)
		c.retransmit()
		if n := count(); n != 0 {
			t.Fatalf("retransmitted before %v ms: %d frames", wait, n)
		}
		clock.advance(time.Millisecond)
		c.retransmit()
		if n := count(); n != 1 {
			t.Fatalf("after %v ms: %d frames, want 1", wait, n)
		}
	}
	// A new session sends at once and restarts the backoff.
	c.presence.online(chatKey(2), netip.MustParseAddrPort("192.0.2.1:1"))
	c.out.wg.Wait()
	clock.advance(200 * time.Millisecond)
	c.retransmit()
	if n := count(); n != 2 {
		t.Fatalf("online + 200 ms: %d frames, want 2", n)
	}
	stream := c.peers[chatKey(2)].stream
	// Two more; bob holds 3 (bit 1 above cumulative 1), 2 is a hole.
	c.send(context.Background(), "bob", "y")
	c.send(context.Background(), "bob", "z")
	count()
	clock.advance(fastRetransmit)
	ack := chatFrame{Type: chatFrameAck, Stream: stream, Seq: 1, Sack: []byte{0x40}}
	c.handlePayload(chatKey(2), netip.AddrPort{}, ack.appendTo(nil))
	c.out.wg.Wait()
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
	clock.advance(retransmitMin)
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
	clock.advance(time.Minute)
	c.retransmit()
	if ci, _ := c.contactByName("bob"); ci.Outbox != 0 || count() != 0 || len(l.of(eventDelivered)) != 3 {
		t.Fatalf("after the final ack: outbox %d, delivered %d", ci.Outbox, len(l.of(eventDelivered)))
	}
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
	a.presence.online(kb, addrB)
	bob.presence.online(ka, addrA)
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

// deliverOne sends text from alice to bob and waits for its receipt.
func (p *chatPair) deliverOne(t *testing.T, text string) {
	t.Helper()
	if _, err := p.a.send(context.Background(), "bob", text); err != nil {
		t.Fatal(err)
	}
	p.lb.waitFor(t, eventMessage, 1, 2*time.Second)
	p.la.waitFor(t, eventDelivered, 1, 2*time.Second)
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

// SPEC.md 5.3 gives the fragment size as a number: with the chat's
// 1,103-byte payloads (room for a relay frame, 5.9), fragments of 1,084 bytes.
func TestFragmentSize(t *testing.T) {
	if relayChatPayload != 1103 || relayChatPayload-chatDataHeaderLen != 1084 {
		t.Fatalf("payload %d, fragment %d; SPEC.md 5.3 says 1103 and 1084", relayChatPayload, relayChatPayload-chatDataHeaderLen)
	}
	for _, tt := range []struct {
		textLen int
		want    []int // frame lengths
	}{
		{1, []int{20}},
		{1084, []int{1103}},
		{1085, []int{1103, 20}},
		{maxMessageText, []int{1103, 1103, 1103, 19 + 844}},
	} {
		m := &outMsg{seq: 1, text: strings.Repeat("x", tt.textLen)}
		var got []int
		for _, f := range appendFrames(nil, relayChatPayload, 1, m) {
			got = append(got, len(f))
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("appendFrames(%d bytes) = frames of %v bytes, want %v", tt.textLen, got, tt.want)
		}
	}
}

// SPEC.md 5.4: the whole message is checked, and each run of bad bytes
// becomes one U+FFFD.
func TestInvalidUTF8OneReplacementPerRun(t *testing.T) {
	for _, tt := range []struct {
		name  string
		frags []string
		want  string
	}{
		{"valid, cut inside a sequence", []string{"\xc3", "\xbc"}, "ü"},
		{"run of two bad bytes", []string{"a\xff\xfeb"}, "a\uFFFDb"},
		{"cut-off sequence then a stray byte", []string{"a\xe2\x82", "\xffb"}, "a\uFFFDb"},
		{"two runs", []string{"\xffa\xff"}, "\uFFFDa\uFFFD"},
	} {
		m := &inMsg{}
		for _, f := range tt.frags {
			m.frags = append(m.frags, []byte(f))
		}
		if got := m.text(); got != tt.want {
			t.Errorf("%s: text(%q) = %q, want %q", tt.name, tt.frags, got, tt.want)
		}
	}
}
