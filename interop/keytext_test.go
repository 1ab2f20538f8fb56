// The text form of a kadchat public key, SPEC.md section 4: the prefix, the
// key as base32 symbols, and a bech32m checksum (BIP 350) over them.
package interop

import (
	"errors"
	"strings"
	"testing"
)

const (
	keyPrefix       = "kc1"
	keyAlphabet     = "abcdefghijklmnopqrstuvwxyz234567" // RFC 4648 base32, lowercase
	keySymbols      = 52                                 // ceil(256 / 5)
	keyCheckSymbols = 6
	bech32mConst    = 0x2bc830a3
)

// bech32Polymod is the BCH checksum of BIP 173 over 5-bit values.
func bech32Polymod(values []byte) uint32 {
	gen := [5]uint32{0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3}
	chk := uint32(1)
	for _, v := range values {
		b := chk >> 25
		chk = (chk&0x1ffffff)<<5 ^ uint32(v)
		for i, g := range gen {
			if (b>>i)&1 == 1 {
				chk ^= g
			}
		}
	}
	return chk
}

// checksumInput expands the prefix as bech32 expands its human-readable part
// and appends the data symbols.
func checksumInput(symbols []byte) []byte {
	var in []byte
	for i := range len(keyPrefix) {
		in = append(in, keyPrefix[i]>>5)
	}
	in = append(in, 0)
	for i := range len(keyPrefix) {
		in = append(in, keyPrefix[i]&31)
	}
	return append(in, symbols...)
}

// keyText is the text form of k.
func keyText(k [32]byte) string {
	var sym []byte
	var acc, bits uint
	for _, b := range k {
		acc, bits = acc<<8|uint(b), bits+8
		for bits >= 5 {
			bits -= 5
			sym = append(sym, byte(acc>>bits)&31)
		}
	}
	sym = append(sym, byte(acc<<(5-bits))&31)
	chk := bech32Polymod(append(checksumInput(sym), make([]byte, keyCheckSymbols)...)) ^ bech32mConst
	for i := range keyCheckSymbols {
		sym = append(sym, byte(chk>>(5*(keyCheckSymbols-1-i)))&31)
	}
	var out strings.Builder
	out.WriteString(keyPrefix)
	for _, s := range sym {
		out.WriteByte(keyAlphabet[s])
	}
	return out.String()
}

// parseKeyText is the inverse of keyText.
func parseKeyText(s string) ([32]byte, error) {
	var k [32]byte
	rest, ok := strings.CutPrefix(s, keyPrefix)
	if !ok || len(rest) != keySymbols+keyCheckSymbols {
		return k, errors.New("key text: wrong prefix or length")
	}
	sym := make([]byte, len(rest))
	for i := range len(rest) {
		v := strings.IndexByte(keyAlphabet, rest[i])
		if v < 0 {
			return k, errors.New("key text: bad symbol")
		}
		sym[i] = byte(v)
	}
	if bech32Polymod(checksumInput(sym)) != bech32mConst {
		return k, errors.New("key text: bad checksum")
	}
	var acc, bits uint
	j := 0
	for _, v := range sym[:keySymbols] {
		acc, bits = acc<<5|uint(v), bits+5
		if bits >= 8 {
			bits -= 8
			k[j] = byte(acc >> bits)
			j++
		}
	}
	if acc&(1<<bits-1) != 0 {
		return k, errors.New("key text: non-zero padding bits")
	}
	return k, nil
}

// TestKeyText checks the codec the Noise test relies on: round trip, and
// every single-symbol change is caught by the checksum.
func TestKeyText(t *testing.T) {
	var k [32]byte
	for i := range k {
		k[i] = byte(i*37 + 11)
	}
	s := keyText(k)
	if len(s) != len(keyPrefix)+keySymbols+keyCheckSymbols {
		t.Fatalf("keyText = %q: %d characters", s, len(s))
	}
	if got, err := parseKeyText(s); err != nil || got != k {
		t.Fatalf("parseKeyText(keyText(k)) = %x, %v", got, err)
	}
	for i := len(keyPrefix); i < len(s); i++ {
		for _, c := range keyAlphabet {
			if byte(c) == s[i] {
				continue
			}
			bad := s[:i] + string(c) + s[i+1:]
			if _, err := parseKeyText(bad); err == nil {
				t.Fatalf("parseKeyText(%q) accepted a changed symbol at %d", bad, i)
			}
		}
	}
}
