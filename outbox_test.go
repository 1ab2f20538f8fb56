package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
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
	b2.out.wg.Wait()
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
	c.ob.j.mu.Lock()
	syncs := c.ob.j.syncs
	c.ob.j.mu.Unlock()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)/float64(max(syncs, 1)), "msgs/fsync")
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
	c.ob.j.mu.Lock()
	syncs := c.ob.j.syncs
	c.ob.j.mu.Unlock()
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

// SPEC.md 5.5: a snapshot writes S and Q records only for a contact we have
// a stream to, a D record only for one whose stream we know, and nothing for
// a contact with neither; then the removed contacts' receive states.
func TestSnapshotSkipsContactsWithoutState(t *testing.T) {
	a, b, c, d := chatKey(1), chatKey(2), chatKey(3), chatKey(4)
	peers := map[publicKey]*chatPeer{
		a: {contactEntry: contactEntry{Name: "a", Key: a}, nextSeq: 1},
		b: {contactEntry: contactEntry{Name: "b", Key: b}, stream: 7, acked: 1, nextSeq: 3, out: []*outMsg{{seq: 2, text: "hi"}}},
		c: {contactEntry: contactEntry{Name: "c", Key: c}, nextSeq: 1, recvState: recvState{rstream: 9, delivered: 5, onDisk: 4}},
	}
	gone := goneStates{d: {rstream: 11, delivered: 3, onDisk: 2}}
	recs, good, err := parseOutbox(outboxSnapshot(peers, gone))
	if err != nil {
		t.Fatal(err)
	}
	want := []outboxRec{
		{Type: recStream, Key: b, Stream: 7, Seq: 1},
		{Type: recQueued, Key: b, Seq: 2, Text: []byte("hi")},
		{Type: recDelivered, Key: c, Stream: 9, Seq: 5},
		{Type: recDelivered, Key: d, Stream: 11, Seq: 2},
	}
	if !reflect.DeepEqual(recs, want) || good == 0 {
		t.Fatalf("snapshot records %+v, want %+v", recs, want)
	}
}
