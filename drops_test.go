package main

import (
	"bytes"
	"crypto/ecdh"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// dropTestRand is a deterministic reader for keys in tests.
func dropTestRand(seed byte) *rand.ChaCha8 { return rand.NewChaCha8([32]byte{seed}) }

// dropTestKeys are two identities and their direction keys.
type dropTestKeys struct {
	a, b         *identity
	dirAB, dirBA [32]byte
}

func newDropTestKeys(t testing.TB) dropTestKeys {
	t.Helper()
	a, b := testIdentity(t, 0x40), testIdentity(t, 0x80)
	s, err := a.staticSecret(b.public())
	if err != nil {
		t.Fatal(err)
	}
	return dropTestKeys{a: a, b: b, dirAB: dropDirKey(s, a.public(), b.public()), dirBA: dropDirKey(s, b.public(), a.public())}
}

// staticDH opens with b's static key only.
func staticDH(id *identity) dropDH {
	return func(pid uint32, eph [32]byte) ([32]byte, bool) {
		if pid != 0 {
			return [32]byte{}, false
		}
		s, err := id.staticSecret(publicKey(eph))
		return s, err == nil
	}
}

func TestDropDirections(t *testing.T) {
	k := newDropTestKeys(t)
	sb, _ := k.b.staticSecret(k.a.public())
	if dropDirKey(sb, k.a.public(), k.b.public()) != k.dirAB {
		t.Fatal("bob computes another key for alice->bob than alice")
	}
	if k.dirAB == k.dirBA {
		t.Fatal("both directions have one key")
	}
	day := uint64(20781)
	salts := map[string]bool{}
	for _, dir := range [][32]byte{k.dirAB, k.dirBA} {
		for _, d := range []uint64{day, day + 1} {
			salts[string(dropAckSalt(dir, d))] = true
			for seq := uint64(1); seq <= 3; seq++ {
				for part := range uint8(2) {
					salts[string(dropSlotSalt(dir, d, seq, part))] = true
				}
			}
		}
	}
	if len(salts) != 2*2*(1+3*2) {
		t.Fatalf("%d distinct salts, want %d: locations collide", len(salts), 2*2*7)
	}
	if bytes.Equal(dropDayKey(k.dirAB, day), dropDayKey(k.dirAB, day+1)) || bytes.Equal(dropDayKey(k.dirAB, day), dropDayKey(k.dirBA, day)) {
		t.Fatal("signing keys repeat across days or directions")
	}
}

func TestDropSealOpenStatic(t *testing.T) {
	k := newDropTestKeys(t)
	seal, err := newDropSeal(dropTestRand(1), k.dirAB, k.b.public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	frame := dropFrame(7, 3, "hello", 0)
	item, err := seal.sealItem(k.dirAB, 0, frame)
	if err != nil {
		t.Fatal(err)
	}
	if len(item) != dropItemLen {
		t.Fatalf("item of %d bytes, want %d", len(item), dropItemLen)
	}
	again, _ := seal.sealItem(k.dirAB, 0, frame)
	if !bytes.Equal(item, again) {
		t.Fatal("re-sealing the same frame gave other bytes: a re-put would be refused")
	}
	it, err := parseDropValue(appendDropValue(nil, item))
	if err != nil {
		t.Fatal(err)
	}
	got, id, err := openDropItem(k.dirAB, it, 0, staticDH(k.b))
	if err != nil || id != 0 || !bytes.Equal(got, frame) {
		t.Fatalf("open = %x, %d, %v; want %x, 0", got, id, err, frame)
	}
	// The wrong part, direction or recipient, and every flipped byte, fail.
	if _, _, err := openDropItem(k.dirAB, it, 1, staticDH(k.b)); !errors.Is(err, errDropOpen) {
		t.Errorf("open as part 1: %v", err)
	}
	if _, _, err := openDropItem(k.dirBA, it, 0, staticDH(k.b)); !errors.Is(err, errDropOpen) {
		t.Errorf("open in the other direction: %v", err)
	}
	if _, _, err := openDropItem(k.dirAB, it, 0, staticDH(k.a)); !errors.Is(err, errDropOpen) {
		t.Errorf("open by the sender's static key: %v", err)
	}
	for _, i := range []int{0, 31, 32, 35, 36, 500, dropItemLen - 1} {
		bad := bytes.Clone(item)
		bad[i] ^= 1
		it, _ := parseDropValue(appendDropValue(nil, bad))
		if _, _, err := openDropItem(k.dirAB, it, 0, staticDH(k.b)); err == nil {
			t.Errorf("byte %d flipped: the item still opens", i)
		}
	}
}

func TestDropSealOpenPrekey(t *testing.T) {
	k := newDropTestKeys(t)
	pre, err := ecdh.X25519().GenerateKey(dropTestRand(2))
	if err != nil {
		t.Fatal(err)
	}
	const id = 17
	seal, err := newDropSeal(dropTestRand(3), k.dirAB, [32]byte(pre.PublicKey().Bytes()), id)
	if err != nil {
		t.Fatal(err)
	}
	frame := dropFrame(7, 4, strings.Repeat("x", dropChunk), 0)
	item, _ := seal.sealItem(k.dirAB, 0, frame)
	it, _ := parseDropValue(appendDropValue(nil, item))
	if it.Masked == id {
		t.Error("the prekey id is in the clear")
	}
	priv := [32]byte(pre.Bytes())
	withPrekey := func(pid uint32, eph [32]byte) ([32]byte, bool) {
		if pid != id {
			return [32]byte{}, false
		}
		return dropX25519(priv, eph)
	}
	got, gotID, err := openDropItem(k.dirAB, it, 0, withPrekey)
	if err != nil || gotID != id || !bytes.Equal(got, frame) {
		t.Fatalf("open = %d bytes, id %d, %v", len(got), gotID, err)
	}
	// Without the prekey, the static key does not open it: the key thief's case.
	if _, _, err := openDropItem(k.dirAB, it, 0, staticDH(k.b)); err == nil {
		t.Fatal("a prekey drop opens with the static key alone")
	}
}

func TestDropFillerOpensForNobody(t *testing.T) {
	k := newDropTestKeys(t)
	f, err := dropFiller(dropTestRand(4))
	if err != nil {
		t.Fatal(err)
	}
	if len(f) != dropItemLen {
		t.Fatalf("filler of %d bytes", len(f))
	}
	if _, err := ecdh.X25519().NewPublicKey(f[:dropEphLen]); err != nil || f[dropEphLen-1]&0x80 != 0 {
		t.Errorf("filler does not start like a sealed item: %x", f[:dropEphLen])
	}
	it, err := parseDropValue(appendDropValue(nil, f))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := openDropItem(k.dirAB, it, 0, staticDH(k.b)); err == nil {
		t.Fatal("filler opens")
	}
}

func TestParseDropValue(t *testing.T) {
	good := appendDropValue(nil, make([]byte, dropItemLen))
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"exact", good, true},
		{"short", good[:len(good)-1], false},
		{"long", append(bytes.Clone(good), 0), false},
		{"other prefix", append([]byte("0992:"), good[4:]...), false},
		{"a list", []byte("le"), false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		it, err := parseDropValue(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("%s: parseDropValue = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err == nil && !bytes.Equal(appendDropValue(nil, append(it.header(), it.Body...)), tt.in) {
			t.Errorf("%s: does not re-encode to its input", tt.name)
		}
	}
}

func TestParseDropPlain(t *testing.T) {
	mk := func(n int, tail byte) []byte {
		p := make([]byte, dropPlainLen)
		p[0], p[1] = byte(n>>8), byte(n)
		for i := 0; i < n && dropLenLen+i < len(p); i++ {
			p[dropLenLen+i] = 'a'
		}
		p[len(p)-1] |= tail
		return p
	}
	tests := []struct {
		name string
		in   []byte
		want int
	}{
		{"one byte", mk(1, 0), 1},
		{"largest", mk(dropMaxFrame, 0), dropMaxFrame},
		{"zero length", mk(0, 0), -1},
		{"too long", mk(dropMaxFrame+1, 0), -1},
		{"padding not zero", mk(5, 1), -1},
		{"short buffer", mk(5, 0)[:dropPlainLen-1], -1},
	}
	for _, tt := range tests {
		f, err := parseDropPlain(tt.in)
		if tt.want < 0 {
			if err == nil {
				t.Errorf("%s: parsed %d bytes, want an error", tt.name, len(f))
			}
			continue
		}
		if err != nil || len(f) != tt.want {
			t.Errorf("%s: = %d bytes, %v; want %d", tt.name, len(f), err, tt.want)
		}
	}
}

func TestDropFrames(t *testing.T) {
	text := strings.Repeat("ü", maxMessageText/2)
	n := dropParts(len(text))
	if n != 5 || dropMaxParts != 5 {
		t.Fatalf("a 4096-byte message takes %d items (max %d), want 5", n, dropMaxParts)
	}
	var joined []byte
	for i := range n {
		f, err := parseChatFrame(dropFrame(9, 2, text, i))
		if err != nil || int(f.Index) != i || int(f.Count) != n || len(f.Text) > dropChunk {
			t.Fatalf("part %d: %+v, %v", i, f, err)
		}
		joined = append(joined, f.Text...)
	}
	if string(joined) != text {
		t.Fatal("parts do not join to the message")
	}
	if len(dropFrame(9, 2, text, 0)) != dropMaxFrame {
		t.Fatalf("a full part is %d bytes, want %d", len(dropFrame(9, 2, text, 0)), dropMaxFrame)
	}
}

func TestDropDays(t *testing.T) {
	at := func(s string) time.Time { tm, _ := time.Parse(time.RFC3339, s); return tm }
	tests := []struct {
		from, to string
		want     int
	}{
		{"2026-11-25T12:00:00Z", "2026-11-25T13:00:00Z", 1},
		{"2026-11-25T00:05:00Z", "2026-11-25T13:00:00Z", 2}, // the skew reaches the day before
		{"2026-11-25T12:00:00Z", "2026-11-25T23:55:00Z", 2}, // and the day after
		{"2026-10-01T12:00:00Z", "2026-11-25T12:00:00Z", dropDays + 1},
	}
	for _, tt := range tests {
		if got := dropDaysBetween(at(tt.from), at(tt.to)); len(got) != tt.want {
			t.Errorf("days %s..%s = %v, want %d", tt.from, tt.to, got, tt.want)
		}
	}
}

func TestDropFileRoundTrip(t *testing.T) {
	k := chatKey(0x20)
	dp := newDropPeer()
	dp.nextID, dp.theirMax, dp.collected, dp.ackStream, dp.ackSeq, dp.ackAt = 5, 9, 1795611300, 77, 3, 1795611000
	dp.mine[1] = &myPrekey{priv: [32]byte{1}}
	dp.mine[4] = &myPrekey{priv: [32]byte{4}, goneAt: 1795600000}
	dp.theirs[8] = [32]byte{8}
	dp.drops[2] = &dropRec{stream: 77, seq: 2, made: 1795611300123, parts: 3, seal: dropSeal{Eph: [32]byte{9}, ID: 8, Key: [32]byte{7}}}
	peers := map[publicKey]*dropPeer{k: dp, chatKey(0x30): newDropPeer()}
	b := appendDropFile(nil, peers)
	got, err := parseDropFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !bytes.Equal(appendDropFile(nil, got), b) {
		t.Fatalf("round trip: %d peers, re-encodes equal %v", len(got), bytes.Equal(appendDropFile(nil, got), b))
	}
	for i := range b {
		if _, err := parseDropFile(flipByteAt(b, i)); err == nil {
			t.Fatalf("byte %d flipped: still parses", i)
		}
	}
	if _, err := parseDropFile(b[:len(b)-1]); err == nil {
		t.Fatal("a cut file parses")
	}
}

func TestPrekeyFrames(t *testing.T) {
	es := []prekeyEntry{{1, [32]byte{1}}, {2, [32]byte{2}}, {9, [32]byte{9}}}
	b := appendPrekeys(nil, es)
	got, err := parsePrekeys(b)
	if err != nil || len(got) != 3 || got[2] != es[2] {
		t.Fatalf("parsePrekeys = %v, %v", got, err)
	}
	st := prekeyStatus{Max: 9, Held: []uint32{2, 9}}
	sb := appendPrekeyStatus(nil, st)
	gst, err := parsePrekeyStatus(sb)
	if err != nil || gst.Max != 9 || len(gst.Held) != 2 || !bytes.Equal(appendPrekeyStatus(nil, gst), sb) {
		t.Fatalf("parsePrekeyStatus = %+v, %v", gst, err)
	}
	bad := [][]byte{
		nil, {chatFramePrekeys}, {chatFramePrekeys, 0},
		b[:len(b)-1], append(bytes.Clone(b), 0),
		appendPrekeys(nil, []prekeyEntry{{2, [32]byte{}}, {1, [32]byte{}}}), // not increasing
		appendPrekeys(nil, []prekeyEntry{{0, [32]byte{}}}),                  // id 0
		appendPrekeyStatus(nil, prekeyStatus{Max: 1, Held: []uint32{2}}),    // above max
		appendPrekeyStatus(nil, prekeyStatus{Max: 5, Held: []uint32{3, 3}}), // repeated
		sb[:len(sb)-1],
	}
	for i, in := range bad {
		_, err1 := parsePrekeys(in)
		_, err2 := parsePrekeyStatus(in)
		if err1 == nil || err2 == nil {
			t.Errorf("bad frame %d (%x) parses", i, in)
		}
	}
}
