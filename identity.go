// Identity and its text form (SPEC.md 4.1).
//
// Flow: loadOrCreateIdentity reads the key file (or creates it on first
// run) into an identity, the user's long-term X25519 pair. Its public key
// is shown and pasted as text: publicKey.String encodes 256 bits as 52
// base32 symbols plus a 6-symbol BIP 350 (bech32m) checksum, and
// parsePublicKey checks every part of that text strictly.
package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Identity: one long-term X25519 key pair, and the text form of its public
// key that people paste to each other (SPEC.md 4.1).

// publicKey is a user's long-term X25519 public key: the user's identity.
type publicKey [noiseDHLen]byte

// The text form is idPrefix || base32(key) || checksum, all lowercase
// base32 symbols (RFC 4648 alphabet) without padding. The checksum is the
// BCH code of bech32m (BIP 350) over the symbol values, with the prefix
// mixed in as bech32 mixes its human-readable part: it detects every error
// touching up to 4 symbols, so every single substitution and every swap of
// neighbours, by construction rather than by luck.
const (
	idPrefix       = "kc1" // kadchat, identity text version 1
	idKeySymbols   = 52    // ceil(256 / 5); the last symbol's 4 low bits are zero
	idCheckSymbols = 6
	idTextLen      = len(idPrefix) + idKeySymbols + idCheckSymbols // 61
	idAlphabet     = "abcdefghijklmnopqrstuvwxyz234567"
	idCheckConst   = 0x2bc830a3 // bech32m's final XOR constant
)

// Errors of parsePublicKey; each says what a person should fix.
var (
	errIDLength   = errors.New("identity: wrong length")
	errIDPrefix   = errors.New("identity: not a kadchat key (it must start with \"" + idPrefix + "\")")
	errIDChar     = errors.New("identity: invalid character")
	errIDChecksum = errors.New("identity: checksum mismatch: the key was mistyped (a wrong or swapped character)")
	errIDPadding  = errors.New("identity: non-canonical encoding")
	errIDLowOrder = errors.New("identity: unusable key (a low-order point, it gives an all-zero shared secret)")
)

// idPolymod is the bech32 BCH checksum over 5-bit values.
func idPolymod(values []byte) uint32 {
	gen := [5]uint32{0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3}
	chk := uint32(1)
	for _, v := range values {
		top := chk >> 25
		chk = (chk&0x1ffffff)<<5 ^ uint32(v)
		for i := range gen {
			if (top>>i)&1 == 1 {
				chk ^= gen[i]
			}
		}
	}
	return chk
}

// idChecksumInput is the prefix expanded as in bech32, then the symbols.
func idChecksumInput(symbols []byte) []byte {
	in := make([]byte, 0, 2*len(idPrefix)+1+len(symbols)+idCheckSymbols)
	for i := 0; i < len(idPrefix); i++ {
		in = append(in, idPrefix[i]>>5)
	}
	in = append(in, 0)
	for i := 0; i < len(idPrefix); i++ {
		in = append(in, idPrefix[i]&31)
	}
	return append(in, symbols...)
}

// keySymbols regroups the key's 256 bits into 52 five-bit symbols.
func keySymbols(k publicKey) []byte {
	out := make([]byte, 0, idKeySymbols)
	var acc uint32
	bits := 0
	for _, b := range k {
		acc = acc<<8 | uint32(b)
		bits += 8
		for bits >= 5 {
			bits -= 5
			out = append(out, byte(acc>>bits)&31)
		}
	}
	return append(out, byte(acc<<(5-bits))&31)
}

// String is the text form people paste, e.g. "kc1" followed by 58 symbols.
func (k publicKey) String() string {
	sym := keySymbols(k)
	chk := idPolymod(append(idChecksumInput(sym), make([]byte, idCheckSymbols)...)) ^ idCheckConst
	for i := range idCheckSymbols {
		sym = append(sym, byte(chk>>(5*(idCheckSymbols-1-i)))&31)
	}
	out := make([]byte, 0, idTextLen)
	out = append(out, idPrefix...)
	for _, s := range sym {
		out = append(out, idAlphabet[s])
	}
	return string(out)
}

// parsePublicKey parses the text form strictly: exact length, prefix,
// lowercase alphabet, checksum, zero padding bits, and a key that gives a
// non-zero shared secret. It does not trim spaces: the caller does.
func parsePublicKey(s string) (publicKey, error) {
	if len(s) != idTextLen {
		return publicKey{}, fmt.Errorf("%w: %d characters, want %d", errIDLength, len(s), idTextLen)
	}
	if strings.ToLower(s) != s {
		return publicKey{}, fmt.Errorf("%w: the text form is all lowercase", errIDChar)
	}
	if s[:len(idPrefix)] != idPrefix {
		return publicKey{}, errIDPrefix
	}
	sym := make([]byte, 0, idKeySymbols+idCheckSymbols)
	for i := len(idPrefix); i < len(s); i++ {
		v := strings.IndexByte(idAlphabet, s[i])
		if v < 0 {
			return publicKey{}, fmt.Errorf("%w %q at position %d (use a-z and 2-7, lowercase)", errIDChar, s[i], i+1)
		}
		sym = append(sym, byte(v))
	}
	if idPolymod(idChecksumInput(sym)) != idCheckConst {
		return publicKey{}, errIDChecksum
	}
	var k publicKey
	var acc uint32
	bits, j := 0, 0
	for _, v := range sym[:idKeySymbols] {
		acc = acc<<5 | uint32(v)
		bits += 5
		if bits >= 8 {
			bits -= 8
			k[j] = byte(acc >> bits)
			j++
		}
	}
	if acc&(1<<bits-1) != 0 {
		return publicKey{}, errIDPadding
	}
	if isLowOrder(k) {
		return publicKey{}, errIDLowOrder
	}
	return k, nil
}

// lowOrderProbe is any fixed scalar: X25519 clamps it to a multiple of the
// cofactor, so a low-order point gives zero with it as with every key.
var lowOrderProbe = [noiseDHLen]byte{1}

// isLowOrder reports whether X25519 with k yields an all-zero secret.
func isLowOrder(k publicKey) bool {
	priv, err := x25519.NewPrivateKey(lowOrderProbe[:])
	if err != nil {
		return true
	}
	_, err = noiseDH(nil, priv, k)
	return err != nil
}

// identity is the long-term X25519 key pair of this user.
type identity struct {
	keys dhKeys
}

// identityFile is the name of the key file in the data directory.
const identityFile = "identity"

// identityHeader is the first line of the key file; the file is
//
//	kadchat identity v1
//	private <64 hex digits>
//	public <text form>
//
// so a truncated or edited file is detected (the public line must match).
const identityHeader = "kadchat identity v1"

var errIdentityCorrupt = errors.New("identity: corrupt key file")

func (id *identity) public() publicKey { return id.keys.pub }

// staticSecret is X25519(s, peer); an all-zero result is an error.
func (id *identity) staticSecret(peer publicKey) ([32]byte, error) {
	out, err := noiseDH(nil, id.keys.priv, peer)
	if err != nil {
		return out, fmt.Errorf("identity: %w", err)
	}
	return out, nil
}

func (id *identity) marshal() []byte {
	return fmt.Appendf(nil, "%s\nprivate %x\npublic %s\n", identityHeader, id.keys.priv.Bytes(), id.public())
}

// parseIdentity parses the key file strictly.
func parseIdentity(b []byte) (*identity, error) {
	lines := strings.Split(string(b), "\n")
	if len(lines) != 4 || lines[0] != identityHeader || lines[3] != "" {
		return nil, fmt.Errorf("%w: bad layout", errIdentityCorrupt)
	}
	privHex, ok1 := strings.CutPrefix(lines[1], "private ")
	pubText, ok2 := strings.CutPrefix(lines[2], "public ")
	priv, err := hex.DecodeString(privHex)
	if !ok1 || !ok2 || err != nil || len(priv) != noiseDHLen || privHex != hex.EncodeToString(priv) {
		return nil, fmt.Errorf("%w: bad private key line", errIdentityCorrupt)
	}
	defer wipe(priv)
	keys, err := newDHKeys(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errIdentityCorrupt, err)
	}
	id := &identity{keys: keys}
	if pub, err := parsePublicKey(pubText); err != nil || pub != id.public() {
		return nil, fmt.Errorf("%w: public key does not match the private key", errIdentityCorrupt)
	}
	return id, nil
}

// loadOrCreateIdentity reads dir/identity, or creates it (mode 0600,
// atomically) on first run. A corrupt file is an error, never replaced:
// replacing it would silently change who the user is.
func loadOrCreateIdentity(dir string, rand io.Reader) (*identity, error) {
	path := filepath.Join(dir, identityFile)
	b, err := readFileMax(path, maxSmallFile)
	if err == nil {
		id, err := parseIdentity(b)
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, path)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	keys, err := generateDHKeys(rand)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	id := &identity{keys: keys}
	data := id.marshal()
	defer wipe(data)
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return id, nil
}
