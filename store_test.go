package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// storeRand is a deterministic stream for the tokens' injected rand.
func storeRand(seed byte) io.Reader { return rand.NewChaCha8([32]byte{seed}) }

// storeSrc is the source address of the puts of tests that need only one.
var storeSrc = netip.MustParseAddrPort("192.0.2.200:6881")

// storeAP parses an address and port.
func storeAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// storeErrCode returns the KRPC code of a *bep44Error, 0 for nil, -1 otherwise.
func storeErrCode(err error) int {
	var be *bep44Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &be):
		return be.Code
	}
	return -1
}

func TestTokenBoxRotation(t *testing.T) {
	v4, v4b := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.6")
	mapped := netip.MustParseAddr("::ffff:203.0.113.5")
	v6, v6b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	tests := []struct {
		name    string
		issueAt time.Duration
		touchAt []time.Duration // uses of the box in between, which must not matter
		checkAt time.Duration
		issueIP netip.Addr
		checkIP netip.Addr
		mangle  func([]byte) []byte
		want    bool
	}{
		{name: "same epoch", checkAt: time.Minute, issueIP: v4, checkIP: v4, want: true},
		{name: "wrong ip", issueIP: v4, checkIP: v4b, want: false},
		{name: "v4 and v4-mapped are one ip", issueIP: v4, checkIP: mapped, want: true},
		{name: "v6", issueIP: v6, checkIP: v6, want: true},
		{name: "v6 wrong ip", issueIP: v6, checkIP: v6b, want: false},
		{name: "after one rotation", checkAt: tokenRotation, issueIP: v4, checkIP: v4, want: true},
		{name: "last moment of the next epoch", checkAt: 2*tokenRotation - time.Nanosecond, issueIP: v4, checkIP: v4, want: true},
		{name: "issued late in an epoch", issueAt: tokenRotation - time.Second, checkAt: 2*tokenRotation - time.Second, issueIP: v4, checkIP: v4, want: true},
		{name: "after two rotations", checkAt: 2 * tokenRotation, issueIP: v4, checkIP: v4, want: false},
		{name: "after two rotations, box used meanwhile", touchAt: []time.Duration{tokenRotation, 7 * time.Minute}, checkAt: 2 * tokenRotation, issueIP: v4, checkIP: v4, want: false},
		{name: "one rotation, box used meanwhile", touchAt: []time.Duration{tokenRotation}, checkAt: 9 * time.Minute, issueIP: v4, checkIP: v4, want: true},
		{name: "an hour later", checkAt: time.Hour, issueIP: v4, checkIP: v4, want: false},
		{name: "clock goes back", issueAt: 12 * time.Minute, checkAt: 3 * time.Minute, issueIP: v4, checkIP: v4, want: true},
		{name: "truncated", issueIP: v4, checkIP: v4, mangle: func(b []byte) []byte { return b[:len(b)-1] }, want: false},
		{name: "extended", issueIP: v4, checkIP: v4, mangle: func(b []byte) []byte { return append(b, 0) }, want: false},
		{name: "flipped bit", issueIP: v4, checkIP: v4, mangle: func(b []byte) []byte { b[3] ^= 1; return b }, want: false},
		{name: "empty", issueIP: v4, checkIP: v4, mangle: func([]byte) []byte { return nil }, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			start := clk.now()
			box := newTokenBox(storeRand(1), clk.now)
			clk.set(start.Add(tt.issueAt))
			tok := box.issue(tt.issueIP)
			if len(tok) != tokenLen {
				t.Fatalf("issue: %d bytes, want %d", len(tok), tokenLen)
			}
			for _, d := range tt.touchAt {
				clk.set(start.Add(d))
				box.issue(v6b)
			}
			if tt.mangle != nil {
				tok = tt.mangle(bytes.Clone(tok))
			}
			clk.set(start.Add(tt.checkAt))
			if got := box.valid(tok, tt.checkIP); got != tt.want {
				t.Errorf("valid(%x, %v) = %v, want %v", tok, tt.checkIP, got, tt.want)
			}
		})
	}
}

func TestTokenBoxSecretsDiffer(t *testing.T) {
	clk := newFakeClock()
	ip := netip.MustParseAddr("198.51.100.7")
	a, b := newTokenBox(storeRand(1), clk.now), newTokenBox(storeRand(2), clk.now)
	if ta := a.issue(ip); b.valid(ta, ip) {
		t.Errorf("a token of box a (%x) is valid in box b", ta)
	}
	t0 := a.issue(ip)
	clk.advance(tokenRotation)
	if t1 := a.issue(ip); bytes.Equal(t0, t1) {
		t.Errorf("token unchanged across a rotation: %x", t0)
	}
}

// storeSpecHex decodes hex written with or without spaces.
func storeSpecHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("SPEC.md: %q: %v", s, err)
	}
	return b
}

func storeSpecQuoted(t *testing.T, s string) []byte {
	t.Helper()
	u, err := strconv.Unquote(s)
	if err != nil {
		t.Fatalf("SPEC.md: %s: %v", s, err)
	}
	return []byte(u)
}

func TestTokenVectorsFromSpec(t *testing.T) {
	for _, blk := range specBlocks(t, "token-vector") {
		if len(blk.keys) == 0 || blk.keys[0] != "secret" || blk.body != "" {
			t.Fatalf("token-vector must start with secret, got %q", blk.lines)
		}
		secret := storeSpecHex(t, blk.values[0])
		// The box draws the current secret first, then the previous one.
		box := newTokenBox(bytes.NewReader(append(secret, make([]byte, tokenSecretLen)...)), newFakeClock().now)
		var ip netip.Addr
		n := 0
		for i, k := range blk.keys[1:] {
			v := blk.values[1+i]
			switch k {
			case "ip":
				ip = netip.MustParseAddr(v)
			case "token":
				want := storeSpecHex(t, v)
				if got := box.issue(ip); !bytes.Equal(got, want) {
					t.Errorf("issue(%v) = %x, want %x", ip, got, want)
				}
				if !box.valid(want, ip) {
					t.Errorf("valid(%x, %v) = false", want, ip)
				}
				n++
			default:
				t.Fatalf("token-vector: unknown key %q", k)
			}
		}
		if n == 0 {
			t.Error("token-vector without a token")
		}
	}
}

// storeBEP44Vector is one ```bep44-vector block of SPEC.md.
type storeBEP44Vector struct {
	name              string
	item              bep44Item
	buffer, bufferHex []byte
	target            []byte
	expect            int
}

func storeParseBEP44Vector(t *testing.T, blk specBlock) storeBEP44Vector {
	t.Helper()
	v := storeBEP44Vector{name: blk.name}
	if blk.body != "" {
		t.Fatalf("bep44-vector %s: %q is not key = value", v.name, blk.body)
	}
	for i, k := range blk.keys {
		val := blk.values[i]
		switch k {
		case "k":
			v.item.Mutable = true
			copy(v.item.K[:], storeSpecHex(t, val))
		case "salt":
			v.item.Salt = storeSpecQuoted(t, val)
		case "seq":
			v.item.Seq, _ = strconv.ParseInt(val, 10, 64)
		case "v":
			v.item.V = storeSpecQuoted(t, val)
		case "buffer":
			v.buffer = storeSpecQuoted(t, val)
		case "buffer.hex":
			v.bufferHex = storeSpecHex(t, val)
		case "sig":
			copy(v.item.Sig[:], storeSpecHex(t, val))
		case "target":
			v.target = storeSpecHex(t, val)
		case "expect":
			v.expect, _ = strconv.Atoi(val)
		default:
			t.Fatalf("bep44-vector %s: unknown key %q", v.name, k)
		}
	}
	return v
}

func TestBEP44VectorsFromSpec(t *testing.T) {
	blocks := specBlocks(t, "bep44-vector")
	if len(blocks) < 3 {
		t.Fatalf("SPEC.md has %d bep44-vector blocks, want BEP 44's 3 and more", len(blocks))
	}
	for _, blk := range blocks {
		v := storeParseBEP44Vector(t, blk)
		t.Run(v.name, func(t *testing.T) {
			it := v.item
			if it.Mutable {
				if got := mutableSigBuffer(it.Salt, it.Seq, it.V); !bytes.Equal(got, v.buffer) {
					t.Errorf("mutableSigBuffer = %q, want %q", got, v.buffer)
				}
			}
			if v.bufferHex != nil && !bytes.Equal(v.bufferHex, v.buffer) {
				t.Errorf("buffer.hex %x is not buffer %q", v.bufferHex, v.buffer)
			}
			want := immutableTarget(it.V)
			if it.Mutable {
				want = mutableTarget(it.K, it.Salt)
			}
			if !bytes.Equal(want[:], v.target) || it.target() != want {
				t.Errorf("target = %v (method %v), want %x", want, it.target(), v.target)
			}
			if got := storeErrCode(verifyItem(it)); got != v.expect {
				t.Errorf("verifyItem: code %d, want %d", got, v.expect)
			}
			s := newItemStore(newFakeClock().now)
			if got := storeErrCode(s.put(it, 0, false, storeSrc)); got != v.expect {
				t.Errorf("put: code %d, want %d", got, v.expect)
			}
			_, stored := s.get(want)
			if stored != (v.expect == 0) {
				t.Errorf("get after put: stored = %v, want %v", stored, v.expect == 0)
			}
		})
	}
}

func TestSignItemRoundTrip(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	tests := []struct {
		name   string
		salt   []byte
		seq    int64
		v      []byte
		mangle func(*bep44Item)
		want   int
	}{
		{name: "no salt", seq: 1, v: []byte("12:Hello World!")},
		{name: "salt", salt: []byte("foobar"), seq: 9, v: []byte("d1:ai1ee")},
		{name: "seq zero", v: []byte("i0e")},
		{name: "largest seq", seq: 1<<63 - 1, v: []byte("le")},
		{name: "other value", seq: 1, v: []byte("1:a"), mangle: func(it *bep44Item) { it.V = []byte("1:b") }, want: bep44ErrSig},
		{name: "other seq", seq: 1, v: []byte("1:a"), mangle: func(it *bep44Item) { it.Seq = 2 }, want: bep44ErrSig},
		{name: "salt dropped", salt: []byte("s"), seq: 1, v: []byte("1:a"), mangle: func(it *bep44Item) { it.Salt = nil }, want: bep44ErrSig},
		{name: "other key", seq: 1, v: []byte("1:a"), mangle: func(it *bep44Item) { it.K[0] ^= 1 }, want: bep44ErrSig},
		{name: "sig bit", seq: 1, v: []byte("1:a"), mangle: func(it *bep44Item) { it.Sig[63] ^= 0x10 }, want: bep44ErrSig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			it := signItem(priv, tt.salt, tt.seq, tt.v)
			if !it.Mutable || !bytes.Equal(it.K[:], priv.Public().(ed25519.PublicKey)) || it.Seq != tt.seq {
				t.Fatalf("signItem = %+v", it)
			}
			if tt.mangle != nil {
				tt.mangle(&it)
			}
			if got := storeErrCode(verifyItem(it)); got != tt.want {
				t.Fatalf("verifyItem: code %d, want %d", got, tt.want)
			}
			if tt.want != 0 {
				return
			}
			s := newItemStore(newFakeClock().now)
			if err := s.put(it, 0, false, storeSrc); err != nil {
				t.Fatal(err)
			}
			got, ok := s.get(mutableTarget(it.K, tt.salt))
			if !ok || !bytes.Equal(got.V, tt.v) || got.Sig != it.Sig || !bytes.Equal(got.Salt, it.Salt) {
				t.Errorf("get = %+v, %v; want %+v", got, ok, it)
			}
		})
	}
}

// storeBencodeString returns a bencoded string of exactly n bytes in all.
func storeBencodeString(n int) []byte {
	for body := n - 2; body >= 0; body-- {
		b := strconv.AppendInt(nil, int64(body), 10)
		if len(b)+1+body == n {
			return append(append(b, ':'), bytes.Repeat([]byte("x"), body)...)
		}
	}
	panic("no bencoded string of that size")
}

func TestVerifyItemLimits(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, ed25519.SeedSize))
	tests := []struct {
		name string
		it   bep44Item
		want int
	}{
		{name: "immutable at the limit", it: bep44Item{V: storeBencodeString(maxItemValue)}},
		{name: "immutable too big", it: bep44Item{V: storeBencodeString(maxItemValue + 1)}, want: bep44ErrTooBig},
		{name: "immutable ignores salt and sig", it: bep44Item{V: []byte("i1e"), Salt: make([]byte, 100), Seq: -1}},
		{name: "mutable at the limits", it: signItem(priv, make([]byte, maxSalt), 1, storeBencodeString(maxItemValue))},
		{name: "mutable too big", it: signItem(priv, nil, 1, storeBencodeString(maxItemValue+1)), want: bep44ErrTooBig},
		{name: "salt too big", it: signItem(priv, make([]byte, maxSalt+1), 1, []byte("i1e")), want: bep44ErrSaltTooBig},
		{name: "too big wins over salt", it: signItem(priv, make([]byte, maxSalt+1), 1, storeBencodeString(maxItemValue+1)), want: bep44ErrTooBig},
		{name: "negative seq", it: signItem(priv, nil, -1, []byte("i1e")), want: bep44ErrInvalid},
		{name: "unsigned", it: bep44Item{V: []byte("i1e"), Mutable: true, Seq: 1}, want: bep44ErrSig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verifyItem(tt.it)
			if got := storeErrCode(err); got != tt.want {
				t.Errorf("verifyItem: %v (code %d), want code %d", err, got, tt.want)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "bep44: ") {
				t.Errorf("error %q lacks the layer prefix", err)
			}
		})
	}
}

func TestItemStoreUpdateRules(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, ed25519.SeedSize))
	type put struct {
		seq    int64
		v      string
		cas    int64
		hasCAS bool
		want   int
	}
	tests := []struct {
		name    string
		puts    []put
		wantSeq int64
		wantV   string
	}{
		{name: "cas ignored when empty", puts: []put{{seq: 3, v: "1:a", cas: 9, hasCAS: true}}, wantSeq: 3, wantV: "1:a"},
		{name: "seq goes up", puts: []put{{seq: 1, v: "1:a"}, {seq: 2, v: "1:b"}}, wantSeq: 2, wantV: "1:b"},
		{name: "seq goes down", puts: []put{{seq: 2, v: "1:a"}, {seq: 1, v: "1:b", want: bep44ErrSeq}}, wantSeq: 2, wantV: "1:a"},
		{name: "same seq same value refreshes", puts: []put{{seq: 2, v: "1:a"}, {seq: 2, v: "1:a"}}, wantSeq: 2, wantV: "1:a"},
		{name: "same seq other value", puts: []put{{seq: 2, v: "1:a"}, {seq: 2, v: "1:b", want: bep44ErrSeq}}, wantSeq: 2, wantV: "1:a"},
		{name: "cas matches", puts: []put{{seq: 1, v: "1:a"}, {seq: 2, v: "1:b", cas: 1, hasCAS: true}}, wantSeq: 2, wantV: "1:b"},
		{name: "cas mismatch", puts: []put{{seq: 1, v: "1:a"}, {seq: 5, v: "1:b", cas: 4, hasCAS: true, want: bep44ErrCAS}}, wantSeq: 1, wantV: "1:a"},
		{name: "cas zero is a value", puts: []put{{seq: 1, v: "1:a"}, {seq: 2, v: "1:b", hasCAS: true, want: bep44ErrCAS}}, wantSeq: 1, wantV: "1:a"},
		{name: "cas checked before seq", puts: []put{{seq: 5, v: "1:a"}, {seq: 1, v: "1:b", cas: 4, hasCAS: true, want: bep44ErrCAS}}, wantSeq: 5, wantV: "1:a"},
		{name: "cas matches but seq down", puts: []put{{seq: 5, v: "1:a"}, {seq: 4, v: "1:b", cas: 5, hasCAS: true, want: bep44ErrSeq}}, wantSeq: 5, wantV: "1:a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newItemStore(newFakeClock().now)
			for i, p := range tt.puts {
				err := s.put(signItem(priv, []byte("salt"), p.seq, []byte(p.v)), p.cas, p.hasCAS, storeSrc)
				if got := storeErrCode(err); got != p.want {
					t.Fatalf("put #%d (seq %d): %v (code %d), want code %d", i, p.seq, err, got, p.want)
				}
			}
			got, ok := s.get(mutableTarget([32]byte(priv.Public().(ed25519.PublicKey)), []byte("salt")))
			if !ok || got.Seq != tt.wantSeq || string(got.V) != tt.wantV {
				t.Errorf("get = seq %d v %q (%v), want seq %d v %q", got.Seq, got.V, ok, tt.wantSeq, tt.wantV)
			}
		})
	}
}

func TestItemStoreExpiry(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{6}, ed25519.SeedSize))
	clk := newFakeClock()
	s := newItemStore(clk.now)
	it := signItem(priv, nil, 4, []byte("1:a"))
	target := it.target()
	imm := bep44Item{V: []byte("1:z")}
	for _, x := range []bep44Item{it, imm} {
		if err := s.put(x, 0, false, storeSrc); err != nil {
			t.Fatal(err)
		}
	}
	clk.advance(time.Hour)
	if err := s.put(it, 0, false, storeSrc); err != nil { // the republish of the same item
		t.Fatal(err)
	}
	clk.advance(itemTTL - time.Hour)
	if _, ok := s.get(immutableTarget(imm.V)); ok {
		t.Error("immutable item alive after itemTTL")
	}
	if _, ok := s.get(target); !ok {
		t.Error("republished item expired itemTTL after the first put")
	}
	clk.advance(time.Hour)
	if _, ok := s.get(target); ok {
		t.Error("item alive itemTTL after its last put")
	}
	// Once expired, nothing is stored: a lower seq is accepted again.
	if err := s.put(signItem(priv, nil, 1, []byte("1:b")), 0, false, storeSrc); err != nil {
		t.Errorf("put after expiry: %v", err)
	}
}

func TestItemStoreOwnsItsCopies(t *testing.T) {
	s := newItemStore(newFakeClock().now)
	v := []byte("3:abc")
	if err := s.put(bep44Item{V: v, Seq: 7, Salt: []byte("x")}, 0, false, storeSrc); err != nil {
		t.Fatal(err)
	}
	target := immutableTarget(v)
	v[2] = 'X'
	got, _ := s.get(target)
	got.V[3] = 'Y'
	again, ok := s.get(target)
	if !ok || string(again.V) != "3:abc" {
		t.Errorf("stored value changed through a caller's slice: %q", again.V)
	}
	if again.Mutable || again.Seq != 0 || again.Salt != nil {
		t.Errorf("immutable item kept mutable fields: %+v", again)
	}
}

func TestItemStoreCapUnderFlood(t *testing.T) {
	clk := newFakeClock()
	s := newItemStore(clk.now)
	first := []byte("i0e")
	for i := range 100_000 {
		v := strconv.AppendInt([]byte("i"), int64(i), 10)
		if err := s.put(bep44Item{V: append(v, 'e')}, 0, false, storePeer(uint32(i), 1)); err != nil {
			t.Fatal(err)
		}
		if i%1000 == 0 {
			clk.advance(time.Second)
		}
	}
	s.mu.Lock()
	n := s.items.len(clk.now())
	s.mu.Unlock()
	if n != maxItems {
		t.Errorf("%d items stored after a flood, want the cap %d", n, maxItems)
	}
	if _, ok := s.get(immutableTarget(first)); ok {
		t.Error("the oldest item survived the flood")
	}
	if _, ok := s.get(immutableTarget([]byte("i99999e"))); !ok {
		t.Error("the newest item was evicted")
	}
}

func TestPeerStore(t *testing.T) {
	ih := nodeID{1}
	type add struct {
		at   time.Duration
		peer string
	}
	tests := []struct {
		name string
		adds []add
		at   time.Duration // when peers is asked
		want []string      // in announce order
	}{
		{name: "one", adds: []add{{0, "192.0.2.1:6881"}}, want: []string{"192.0.2.1:6881"}},
		{name: "re-announce keeps one entry", adds: []add{{0, "192.0.2.1:6881"}, {time.Minute, "192.0.2.2:1"}, {2 * time.Minute, "192.0.2.1:6881"}}, want: []string{"192.0.2.2:1", "192.0.2.1:6881"}},
		{name: "mapped v4 is v4", adds: []add{{0, "[::ffff:192.0.2.1]:6881"}, {0, "192.0.2.1:6881"}}, want: []string{"192.0.2.1:6881"}},
		{name: "ports of one ip kept apart", adds: []add{{0, "192.0.2.1:1"}, {0, "192.0.2.1:2"}}, want: []string{"192.0.2.1:1", "192.0.2.1:2"}},
		{name: "v6", adds: []add{{0, "[2001:db8::1]:6881"}}, want: []string{"[2001:db8::1]:6881"}},
		{name: "port zero ignored", adds: []add{{0, "192.0.2.1:0"}}},
		{name: "unspecified ignored", adds: []add{{0, "0.0.0.0:1"}, {0, "[::]:1"}}},
		{name: "zone dropped", adds: []add{{0, "[fe80::1%eth0]:5"}}, want: []string{"[fe80::1]:5"}},
		{name: "alive just before ttl", adds: []add{{0, "192.0.2.1:1"}}, at: peerTTL - time.Second, want: []string{"192.0.2.1:1"}},
		{name: "gone at ttl", adds: []add{{0, "192.0.2.1:1"}}, at: peerTTL},
		{name: "re-announce extends", adds: []add{{0, "192.0.2.1:1"}, {20 * time.Minute, "192.0.2.1:1"}}, at: peerTTL + 19*time.Minute, want: []string{"192.0.2.1:1"}},
		{name: "partly expired", adds: []add{{0, "192.0.2.1:1"}, {20 * time.Minute, "192.0.2.2:1"}}, at: peerTTL, want: []string{"192.0.2.2:1"}},
		{name: "ports per ip capped, oldest out", adds: []add{
			{0, "192.0.2.9:1"}, {0, "192.0.2.9:2"}, {0, "192.0.2.1:1"}, {0, "192.0.2.9:3"}, {0, "192.0.2.9:4"}, {0, "192.0.2.9:5"}, {0, "192.0.2.9:6"},
		}, want: []string{"192.0.2.1:1", "192.0.2.9:3", "192.0.2.9:4", "192.0.2.9:5", "192.0.2.9:6"}},
		{name: "re-announce at the ip cap evicts nothing", adds: []add{
			{0, "192.0.2.9:1"}, {0, "192.0.2.9:2"}, {0, "192.0.2.9:3"}, {0, "192.0.2.9:4"}, {0, "192.0.2.9:1"},
		}, want: []string{"192.0.2.9:2", "192.0.2.9:3", "192.0.2.9:4", "192.0.2.9:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			start := clk.now()
			s := newPeerStore(clk.now, storeRand(1))
			for _, a := range tt.adds {
				clk.set(start.Add(a.at))
				s.add(ih, storeAP(a.peer))
			}
			clk.set(start.Add(tt.at))
			got := s.peers(ih, maxSwarmPeers)
			if fmt.Sprint(got) != fmt.Sprint(storeAPs(tt.want)) {
				t.Errorf("peers = %v, want %v", got, tt.want)
			}
			// An infohash lives as long as a peer of it may: ignored adds
			// create none, and the last expiry removes it.
			if got, want := s.infohashes(), min(len(tt.want), 1); got != want {
				t.Errorf("infohashes = %d, want %d", got, want)
			}
		})
	}
}

func storeAPs(ss []string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(ss))
	for i, s := range ss {
		out[i] = storeAP(s)
	}
	return out
}

// storePeer returns a distinct IPv4 peer for each i.
func storePeer(i uint32, port uint16) netip.AddrPort {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], 0x0a000000|i) // 10.x.y.z
	return netip.AddrPortFrom(netip.AddrFrom4(a), port)
}

// storePublicPeer is a peer on a public address (45.0.0.0/8) in /24 number i.
func storePublicPeer(i uint32, port uint16) netip.AddrPort {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], 0x2d000001|i<<8)
	return netip.AddrPortFrom(netip.AddrFrom4(a), port)
}

func TestPeerStoreSwarmCap(t *testing.T) {
	s := newPeerStore(newFakeClock().now, storeRand(1))
	ih := nodeID{2}
	for i := range uint32(maxSwarmPeers + 50) {
		s.add(ih, storePeer(i, 6881))
	}
	got := s.peers(ih, 1000)
	if len(got) != maxSwarmPeers {
		t.Fatalf("%d peers stored, want %d", len(got), maxSwarmPeers)
	}
	if got[0] != storePeer(50, 6881) {
		t.Errorf("oldest kept peer = %v, want the 51st announced", got[0])
	}
}

func TestPeerStoreRandomSubset(t *testing.T) {
	s := newPeerStore(newFakeClock().now, storeRand(1))
	ih := nodeID{3}
	all := map[netip.AddrPort]bool{}
	for i := range uint32(maxSwarmPeers) {
		s.add(ih, storePeer(i, 1))
		all[storePeer(i, 1)] = true
	}
	seen := map[netip.AddrPort]bool{}
	for range 400 {
		got := s.peers(ih, 8)
		if len(got) != 8 {
			t.Fatalf("peers(8) returned %d", len(got))
		}
		uniq := map[netip.AddrPort]bool{}
		for _, p := range got {
			if !all[p] || uniq[p] {
				t.Fatalf("peers(8) = %v: unknown or repeated %v", got, p)
			}
			uniq[p] = true
			seen[p] = true
		}
	}
	// Each peer is missed by one call with probability 0.92, so by all 400
	// with about 3e-15: a peer never returned means the subset is not random.
	if len(seen) != maxSwarmPeers {
		t.Errorf("400 random subsets of 8 covered %d of %d peers", len(seen), maxSwarmPeers)
	}
	for _, max := range []int{0, -1} {
		if got := s.peers(ih, max); got != nil {
			t.Errorf("peers(%d) = %v, want nil", max, got)
		}
	}
	if got := s.peers(nodeID{4}, 8); got != nil {
		t.Errorf("peers of an unknown infohash = %v", got)
	}
}

// TestPeerStoreSubsetReproducible: the sample is drawn from the injected
// rand, so the same seed gives the same subsets and another seed others.
func TestPeerStoreSubsetReproducible(t *testing.T) {
	draw := func(seed byte) [][]netip.AddrPort {
		s := newPeerStore(newFakeClock().now, storeRand(seed))
		for i := range uint32(maxSwarmPeers) {
			s.add(nodeID{3}, storePeer(i, 1))
		}
		var out [][]netip.AddrPort
		for range 5 {
			out = append(out, s.peers(nodeID{3}, 8))
		}
		return out
	}
	a, b, c := draw(1), draw(1), draw(2)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("same seed, different subsets:\n%v\n%v", a, b)
	}
	if reflect.DeepEqual(a, c) {
		t.Errorf("seeds 1 and 2 gave the same subsets %v", a)
	}
}

func TestPeerStoreFamilies(t *testing.T) {
	s := newPeerStore(newFakeClock().now, storeRand(1))
	ih := nodeID{5}
	v4, v6 := storeAP("192.0.2.1:1"), storeAP("[2001:db8::1]:1")
	s.add(ih, v4)
	s.add(ih, v6)
	tests := []struct {
		name         string
		want4, want6 bool
		want         []netip.AddrPort
	}{
		{"ipv4", true, false, []netip.AddrPort{v4}},
		{"ipv6", false, true, []netip.AddrPort{v6}},
		{"both", true, true, []netip.AddrPort{v4, v6}},
		{"neither", false, false, nil},
	}
	for _, tt := range tests {
		if got := s.peersOf(ih, 10, tt.want4, tt.want6); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("peersOf(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := s.peersOf(ih, 1, false, true); !reflect.DeepEqual(got, []netip.AddrPort{v6}) {
		t.Errorf("peersOf(max 1, ipv6) = %v: the sample must come from the family only", got)
	}
}

// BEP 32: an IPv4 get_peers, with or without "want", gets IPv4 values only.
func TestServeGetPeersFamily(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	ih := nodeID{6}
	v4, v6 := storeAP("192.0.2.1:1"), storeAP("[2001:db8::1]:1")
	d.peers.add(ih, v4)
	d.peers.add(ih, v6)
	p := newRawPeer(t)
	for _, want := range []uint8{0, wantN4, wantN6, wantN4 | wantN6} {
		r := p.exchange(d, rawQuery(methodGetPeers, krpcArgs{InfoHash: ih, Want: want}))
		ps, err := parsePeers(r.Reply.Values)
		if err != nil || !reflect.DeepEqual(ps, []netip.AddrPort{v4}) {
			t.Errorf("want %b: values %v, %v; want only %v", want, ps, err, v4)
		}
	}
}

func TestPeerStoreInfohashEviction(t *testing.T) {
	clk := newFakeClock()
	s := newPeerStore(clk.now, storeRand(1))
	ihN := func(i int) nodeID { var id nodeID; binary.BigEndian.PutUint32(id[:], uint32(i)); return id }
	// one public /24 per infohash: the per-source bound stays out of the way
	p := func(i int) netip.AddrPort { return storePublicPeer(uint32(i), 1) }
	for i := range maxInfohashes {
		s.add(ihN(i), p(i))
		clk.advance(time.Millisecond)
	}
	s.add(ihN(0), p(0)) // ih 0 is now the most recently announced, ih 1 the least
	s.add(ihN(maxInfohashes), p(maxInfohashes))
	if n := s.infohashes(); n != maxInfohashes {
		t.Errorf("infohashes = %d, want %d", n, maxInfohashes)
	}
	if s.peers(ihN(1), 1) != nil || s.peers(ihN(0), 1) == nil || s.peers(ihN(maxInfohashes), 1) == nil {
		t.Error("eviction did not take the least recently announced infohash")
	}
	clk.advance(peerTTL)
	if n := s.infohashes(); n != 0 {
		t.Errorf("infohashes = %d after peerTTL, want 0", n)
	}
}

// One host with one token announces for 2,000 new infohashes: the swarms
// of others survive, and the host keeps only its latest
// maxSourceInfohashes. Its /24 counts as one source; exempt addresses count
// per address and port.
func TestPeerStoreSourceBound(t *testing.T) {
	clk := newFakeClock()
	s := newPeerStore(clk.now, storeRand(1))
	victim, victimIH := storeAP("198.51.100.7:6881"), nodeID{0xee}
	s.add(victimIH, victim)
	ihN := func(i int) nodeID { var id nodeID; binary.BigEndian.PutUint32(id[:], uint32(i)); return id }
	for i := range maxInfohashes {
		src := storeAP("203.0.113.5:6881")
		if i%2 == 1 {
			src = storeAP("203.0.113.6:1") // its neighbour: the same source
		}
		s.add(ihN(i), src)
		clk.advance(time.Millisecond)
	}
	if got := s.peers(victimIH, 10); !slices.Equal(got, []netip.AddrPort{victim}) {
		t.Errorf("victim's swarm after a flood = %v, want [%v]", got, victim)
	}
	if n := s.infohashes(); n != 1+maxSourceInfohashes {
		t.Errorf("infohashes = %d after a flood from one /24, want %d", n, 1+maxSourceInfohashes)
	}
	if s.peers(ihN(maxInfohashes-1), 1) == nil || s.peers(ihN(maxInfohashes-maxSourceInfohashes-1), 1) != nil {
		t.Errorf("the source kept other than its latest %d infohashes", maxSourceInfohashes)
	}
	// A re-announce keeps the infohash among the source's latest.
	s.add(ihN(maxInfohashes-maxSourceInfohashes), storeAP("203.0.113.5:6881"))
	s.add(ihN(maxInfohashes), storeAP("203.0.113.5:6881"))
	if s.peers(ihN(maxInfohashes-maxSourceInfohashes), 1) == nil {
		t.Errorf("a re-announced infohash was dropped as the source's oldest")
	}

	lo := newPeerStore(clk.now, storeRand(1))
	for i := range 2 * maxSourceInfohashes {
		lo.add(ihN(i), storeAP("127.0.0.1:1000"))
		lo.add(ihN(i), storeAP("127.0.0.1:1001"))
	}
	if n := lo.infohashes(); n != maxSourceInfohashes {
		t.Errorf("loopback: %d infohashes, want %d", n, maxSourceInfohashes)
	}
	if got := lo.peers(ihN(2*maxSourceInfohashes-1), 10); len(got) != 2 {
		t.Errorf("loopback: two ports of 127.0.0.1 are two sources, got %v", got)
	}
}

// One host puts 1,000 items, after replaying a victim's item: the victim's
// item and everyone else's survive; the host keeps its latest maxSourceItems.
func TestItemStoreSourceBound(t *testing.T) {
	clk := newFakeClock()
	s := newItemStore(clk.now)
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	victim := signItem(priv, []byte("rendezvous"), 3, []byte("5:hello"))
	if err := s.put(victim, 0, false, storeAP("198.51.100.7:1")); err != nil {
		t.Fatal(err)
	}
	attacker := storeAP("203.0.113.5:1")
	if err := s.put(victim, 0, false, attacker); err != nil { // a replay only refreshes
		t.Fatal(err)
	}
	item := func(i int) bep44Item { return bep44Item{V: strconv.AppendInt([]byte("i"), int64(i), 10)} }
	for i := range maxItems {
		it := item(i)
		it.V = append(it.V, 'e')
		if err := s.put(it, 0, false, attacker); err != nil {
			t.Fatal(err)
		}
		clk.advance(time.Millisecond)
	}
	if got, ok := s.get(victim.target()); !ok || !bytes.Equal(got.V, victim.V) || got.Seq != 3 {
		t.Errorf("victim's item after a flood = %+v, %v", got, ok)
	}
	s.mu.Lock()
	n := s.items.len(clk.now())
	s.mu.Unlock()
	if n != 1+maxSourceItems {
		t.Errorf("%d items after a flood from one source, want %d", n, 1+maxSourceItems)
	}
	if _, ok := s.get(immutableTarget([]byte("i999e"))); !ok {
		t.Error("the source's newest item was dropped")
	}
	if _, ok := s.get(immutableTarget([]byte("i0e"))); ok {
		t.Error("the source's oldest item survived")
	}
	// The owner of the victim's value may still refresh it: same owner.
	if err := s.put(victim, 0, false, storeAP("198.51.100.7:2")); err != nil {
		t.Fatal(err)
	}
}

func TestPeerStoreCapsUnderFlood(t *testing.T) {
	clk := newFakeClock()
	s := newPeerStore(clk.now, storeRand(1))
	rng := rand.New(rand.NewPCG(1, 2))
	hot := nodeID{0xff}
	oneIP := netip.MustParseAddr("198.51.100.1")
	for i := range 100_000 {
		var ih nodeID
		binary.LittleEndian.PutUint64(ih[:], rng.Uint64())
		s.add(ih, storePeer(rng.Uint32()&0xffffff, uint16(rng.IntN(65535)+1)))
		if i%2 == 0 { // the hot peerSwarm gets 100k announces too, half from one IP
			s.add(hot, storePeer(rng.Uint32()&0xffffff, uint16(rng.IntN(65535)+1)))
		} else {
			s.add(hot, netip.AddrPortFrom(oneIP, uint16(i%65535+1)))
		}
		if i%1000 == 0 {
			clk.advance(time.Second)
		}
	}
	if n := s.infohashes(); n > maxInfohashes {
		t.Errorf("infohashes = %d after a flood, cap %d", n, maxInfohashes)
	}
	s.mu.Lock()
	for el := s.swarms.order.Front(); el != nil; el = el.Next() {
		if n := len(el.Value.(*ttlEntry[nodeID, *peerSwarm]).val.peers); n > maxSwarmPeers {
			t.Errorf("a peerSwarm holds %d peers, cap %d", n, maxSwarmPeers)
		}
	}
	s.mu.Unlock()
	got := s.peers(hot, 1000)
	sameIP := 0
	for _, p := range got {
		if p.Addr() == oneIP {
			sameIP++
		}
	}
	if len(got) != maxSwarmPeers || sameIP > maxPortsPerIP {
		t.Errorf("hot peerSwarm: %d peers, %d from one ip; want %d, at most %d", len(got), sameIP, maxSwarmPeers, maxPortsPerIP)
	}
}

// TestStoresConcurrent only matters under -race.
func TestStoresConcurrent(t *testing.T) {
	const goroutines, rounds, swarmsEach = 4, 200, 4 // 50 peers a swarm: under maxSwarmPeers
	clk := newFakeClock()
	box := newTokenBox(storeRand(9), clk.now)
	ps := newPeerStore(clk.now, storeRand(1))
	is := newItemStore(clk.now)
	swarm := func(g, i int) nodeID { return nodeID{byte(g), byte(i % swarmsEach)} }
	value := func(g, i int) []byte { return appendBencodeString(nil, fmt.Appendf(nil, "%d-%d", g, i)) }
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range rounds {
				ip := storePeer(uint32(g*1000+i), 1) // its own source: no per-source limit is reached
				tok := box.issue(ip.Addr())
				if !box.valid(tok, ip.Addr()) {
					t.Errorf("token for %v not valid for it", ip)
				}
				if box.valid(tok, storePeer(uint32(g*1000+i+1), 1).Addr()) {
					t.Errorf("token for %v valid for another IP", ip)
				}
				ps.add(swarm(g, i), ip)
				if !slices.Contains(ps.peers(swarm(g, i), maxSwarmPeers), ip) {
					t.Errorf("peers(%v) lacks %v just added", swarm(g, i), ip)
				}
				ps.infohashes()
				v := value(g, i)
				if err := is.put(bep44Item{V: v}, 0, false, ip); err != nil {
					t.Errorf("put(%q): %v", v, err)
				}
				if it, ok := is.get(immutableTarget(v)); !ok || !bytes.Equal(it.V, v) {
					t.Errorf("get(%q) just put = %q, %v", v, it.V, ok)
				}
				clk.advance(time.Second)
			}
		})
	}
	wg.Wait()
	if n := ps.infohashes(); n != goroutines*swarmsEach {
		t.Errorf("infohashes() = %d, want %d", n, goroutines*swarmsEach)
	}
	for g := range goroutines {
		for i := range rounds {
			if i < swarmsEach {
				if n := len(ps.peers(swarm(g, i), maxSwarmPeers)); n != rounds/swarmsEach {
					t.Errorf("swarm %v holds %d peers, want %d", swarm(g, i), n, rounds/swarmsEach)
				}
			}
			if !slices.Contains(ps.peers(swarm(g, i), maxSwarmPeers), storePeer(uint32(g*1000+i), 1)) {
				t.Errorf("peer %d of goroutine %d lost", i, g)
			}
			v := value(g, i)
			if it, ok := is.get(immutableTarget(v)); !ok || !bytes.Equal(it.V, v) || it.Mutable {
				t.Errorf("get(%q) after the run = %+v, %v", v, it, ok)
			}
		}
	}
}

func BenchmarkTokenIssue(b *testing.B) {
	box := newTokenBox(storeRand(1), newFakeClock().now)
	ip := netip.MustParseAddr("203.0.113.5")
	b.ReportAllocs()
	for b.Loop() {
		box.issue(ip)
	}
}

func BenchmarkTokenValid(b *testing.B) {
	box := newTokenBox(storeRand(1), newFakeClock().now)
	ip := netip.MustParseAddr("203.0.113.5")
	tok := box.issue(ip)
	b.ReportAllocs()
	for b.Loop() {
		if !box.valid(tok, ip) {
			b.Fatal("invalid")
		}
	}
}

// BenchmarkPeerStoreAdd announces random peers to 1,000 infohashes, so the
// swarms fill up to their cap and every add then evicts.
func BenchmarkPeerStoreAdd(b *testing.B) {
	s := newPeerStore(newFakeClock().now, storeRand(1))
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		s.add(nodeID{byte(rng.IntN(250)), byte(rng.IntN(4))}, storePeer(rng.Uint32()&0xffffff, 6881))
	}
}

// BenchmarkStoresFullMemory fills the stores to their caps and reports the
// heap each takes (MB-peers, MB-items), the figures SPEC.md 3.5 quotes.
func BenchmarkStoresFullMemory(b *testing.B) {
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for b.Loop() {
		h0 := heap()
		ps := newPeerStore(newFakeClock().now, storeRand(1))
		for i := range maxInfohashes {
			var ih nodeID
			binary.BigEndian.PutUint32(ih[:], uint32(i))
			for j := range uint32(maxSwarmPeers) {
				ps.add(ih, storePeer(uint32(i)<<8|j, 6881))
			}
		}
		h1 := heap()
		is := newItemStore(newFakeClock().now)
		for i := range maxItems {
			v := storeBencodeString(maxItemValue)
			binary.BigEndian.PutUint32(v[10:], uint32(i))
			is.put(bep44Item{V: v}, 0, false, storePeer(uint32(i), 1))
		}
		h2 := heap()
		b.ReportMetric(float64(h1-h0)/1e6, "MB-peers")
		b.ReportMetric(float64(h2-h1)/1e6, "MB-items")
		runtime.KeepAlive(ps)
		runtime.KeepAlive(is)
	}
}

func (t *ttlMap[K, V]) len(now time.Time) int {
	t.expire(now)
	return len(t.m)
}

// infohashes returns the number of infohashes with peers that may be live.
func (s *peerStore) infohashes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.swarms.len(s.now())
}
