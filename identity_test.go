package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// seqBytes returns n bytes start, start+1, ... (fixed keys for vectors).
func seqBytes(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func testKeys(t testing.TB, n int) []publicKey {
	var out []publicKey
	for i := range n {
		kp, err := newDHKeys(seqBytes(byte(40*i), 32))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, publicKey(kp.pub))
	}
	return out
}

func TestPublicKeyRoundTrip(t *testing.T) {
	for _, k := range testKeys(t, 5) {
		s := k.String()
		if len(s) != idTextLen || !strings.HasPrefix(s, idPrefix) || strings.ToLower(s) != s {
			t.Fatalf("String() = %q", s)
		}
		got, err := parsePublicKey(s)
		if err != nil || got != k {
			t.Fatalf("parsePublicKey(%q) = %x, %v; want %x", s, got, err, k)
		}
	}
}

// TestPublicKeyTypos proves the checksum claim exhaustively on a few keys:
// every single-character substitution (by every other character of the
// alphabet, and by a few outside it) and every swap of two different
// neighbours is rejected.
func TestPublicKeyTypos(t *testing.T) {
	others := idAlphabet + "ABZ0189 -"
	tried := 0
	for _, k := range testKeys(t, 4) {
		s := []byte(k.String())
		for i := range s {
			for j := 0; j < len(others); j++ {
				if others[j] == s[i] {
					continue
				}
				typo := bytes.Clone(s)
				typo[i] = others[j]
				if _, err := parsePublicKey(string(typo)); err == nil {
					t.Fatalf("substitution at %d accepted: %q", i, typo)
				}
				tried++
			}
			if i+1 < len(s) && s[i] != s[i+1] {
				swap := bytes.Clone(s)
				swap[i], swap[i+1] = swap[i+1], swap[i]
				if _, err := parsePublicKey(string(swap)); err == nil {
					t.Fatalf("swap at %d accepted: %q", i, swap)
				}
				tried++
			}
		}
	}
	t.Logf("%d typos rejected", tried)
}

// TestPublicKeyErrors checks that each kind of mistake gets its own message.
func TestPublicKeyErrors(t *testing.T) {
	good := testKeys(t, 1)[0].String()
	sub := []byte(good)
	sub[10] = 'a' + (sub[10]-'a'+1)%26
	if sub[10] == good[10] {
		sub[10] = 'b'
	}
	tests := []struct {
		name, in string
		want     error
	}{
		{"short", good[:60], errIDLength},
		{"long", good + "a", errIDLength},
		{"prefix", "kd1" + good[3:], errIDPrefix},
		{"uppercase", strings.ToUpper(good), errIDChar},
		{"upper char", good[:5] + "A" + good[6:], errIDChar},
		{"digit 1", good[:5] + "1" + good[6:], errIDChar},
		{"substitution", string(sub), errIDChecksum},
		{"low order zero", publicKey{}.String(), errIDLowOrder},
	}
	for _, tt := range tests {
		_, err := parsePublicKey(tt.in)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: parsePublicKey(%q) = %v, want %v", tt.name, tt.in, err, tt.want)
		}
	}
}

// The low-order points of Curve25519 (and non-canonical encodings of them):
// each gives an all-zero shared secret and must be rejected.
var lowOrderPoints = []string{
	"0000000000000000000000000000000000000000000000000000000000000000",
	"0100000000000000000000000000000000000000000000000000000000000000",
	"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
	"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
}

func TestPublicKeyLowOrder(t *testing.T) {
	for _, h := range lowOrderPoints {
		var k publicKey
		copy(k[:], mustHex(t, h))
		if _, err := parsePublicKey(k.String()); !errors.Is(err, errIDLowOrder) {
			t.Errorf("low-order %s: err = %v, want %v", h, err, errIDLowOrder)
		}
		id := &identity{keys: *vectorDHKeys(t, seqBytes(1, 32))}
		if _, err := id.staticSecret(k); err == nil {
			t.Errorf("staticSecret(%s) succeeded", h)
		}
	}
}

func TestIdentityFile(t *testing.T) {
	dir := t.TempDir()
	id, err := loadOrCreateIdentity(dir, bytes.NewReader(seqBytes(7, 32)))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, identityFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v, %v; want 0600", fi.Mode(), err)
	}
	again, err := loadOrCreateIdentity(dir, bytes.NewReader(seqBytes(9, 32)))
	if err != nil || again.public() != id.public() {
		t.Fatalf("reload = %v, %v; want %v", again.public(), err, id.public())
	}
	orig, _ := os.ReadFile(path)
	for i, bad := range [][]byte{
		orig[:len(orig)-1],
		bytes.Replace(orig, []byte("private 0"), []byte("private 1"), 1),
		append(bytes.Clone(orig), '\n'),
		[]byte(""),
	} {
		if err := os.WriteFile(path, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadOrCreateIdentity(dir, bytes.NewReader(seqBytes(9, 32))); !errors.Is(err, errIdentityCorrupt) {
			t.Errorf("corrupt file %d: err = %v, want %v", i, err, errIdentityCorrupt)
		}
		if now, _ := os.ReadFile(path); !bytes.Equal(now, bad) {
			t.Errorf("corrupt file %d was replaced", i)
		}
	}
}

// FuzzParseID: whatever parses re-encodes to the same text; on error the
// key is zero.
func FuzzParseID(f *testing.F) {
	for _, k := range testKeys(f, 3) {
		f.Add(k.String())
	}
	f.Add("kc1")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := parsePublicKey(s)
		if err != nil {
			if k != (publicKey{}) {
				t.Fatalf("error %v with non-zero key", err)
			}
			return
		}
		if k.String() != s {
			t.Fatalf("parsePublicKey(%q) re-encodes to %q", s, k.String())
		}
	})
}

func TestStaticSecretAgrees(t *testing.T) {
	a, b := testIdentity(t, 1), testIdentity(t, 2)
	ab, err1 := a.staticSecret(b.public())
	ba, err2 := b.staticSecret(a.public())
	if err1 != nil || err2 != nil || ab != ba || ab == ([32]byte{}) {
		t.Errorf("staticSecret: %x %v / %x %v", ab, err1, ba, err2)
	}
}
