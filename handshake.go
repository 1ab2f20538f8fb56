// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s sessions (SPEC.md section 4).
//
//	IKpsk2:
//	  <- s
//	  ...
//	  -> e, es, s, ss
//	  <- e, ee, se, psk
//
// Flow: an initiation (type 1) carries "-> e, es, s, ss" plus a TAI64N
// timestamp; the responder checks mac1 (and, under load, mac2) before any
// Diffie-Hellman work, answers only contacts, and sends a response (type 2)
// carrying "<- e, ee, se, psk". Split gives one transport key per direction;
// transport packets (type 4) carry a receiver index and a 64-bit counter
// (the nonce), checked against a replay window (replay.go) after they
// authenticate. A loaded responder sends a cookie reply (type 3) instead.
//
// The file reads top to bottom: the generic Noise core (CipherState,
// SymmetricState, HandshakeState, able to run IK, XX, NN and IKpsk2), the
// identity and its text form, the wire format, and the session manager with
// its timers.
package main

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	cryptorand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

// Packet types of the session layer. None of them is 'd' (0x64), the first
// byte of every KRPC message, so one socket carries both.
const (
	packetInitiation  = 1
	packetResponse    = 2
	packetCookieReply = 3
	packetTransport   = 4
)

// isSessionPacketType reports whether b is the first byte of a session packet.
func isSessionPacketType(b byte) bool { return b >= packetInitiation && b <= packetTransport }

// ---------------------------------------------------------------------------
// The Noise core (Noise spec rev 34, sections 5 and 9).

// Sizes of the 25519_ChaChaPoly_BLAKE2s suite.
const (
	noiseDHLen   = 32 // X25519 public keys and shared secrets
	noiseHashLen = 32 // BLAKE2s-256
	noiseKeyLen  = 32 // ChaCha20-Poly1305 key
	noiseTagLen  = 16 // Poly1305 tag
	noiseBlockSz = 64 // BLAKE2s block length, for HMAC
)

// Errors of the Noise core; callers drop the packet on any of them.
var (
	errNoiseOrder   = errors.New("noise: handshake step out of order")
	errNoiseDecrypt = errors.New("noise: authentication failed")
	errNoiseShort   = errors.New("noise: message too short")
	errNoiseDH      = errors.New("noise: Diffie-Hellman result is all zero")
	errNoiseNonce   = errors.New("noise: nonce exhausted")
)

// noiseHash is HASH(data...) = BLAKE2s-256 of the concatenation. Inputs
// here are short, so they are gathered in a stack buffer: the handshake
// then costs little beyond its X25519 operations.
func noiseHash(data ...[]byte) [noiseHashLen]byte {
	var buf [4 * noiseBlockSz]byte
	in := buf[:0]
	for _, d := range data {
		in = append(in, d...)
	}
	out := blake2s.Sum256(in)
	wipe(in)
	return out
}

// hmacHash is HMAC-HASH(key, data...) as Noise section 4.3 defines it
// (RFC 2104 with BLAKE2s-256), written out so it allocates nothing.
func hmacHash(key []byte, data ...[]byte) [noiseHashLen]byte {
	var pad [noiseBlockSz]byte
	if len(key) > noiseBlockSz {
		k := blake2s.Sum256(key)
		copy(pad[:], k[:])
	} else {
		copy(pad[:], key)
	}
	for i := range pad {
		pad[i] ^= 0x36
	}
	inner := noiseHash(append([][]byte{pad[:]}, data...)...)
	for i := range pad {
		pad[i] ^= 0x36 ^ 0x5c
	}
	out := noiseHash(pad[:], inner[:])
	wipe(pad[:])
	wipe(inner[:])
	return out
}

// noiseHKDF is HKDF(chaining_key, input_key_material, 3), Noise section 4.3;
// callers use the outputs they need and wipe the rest.
func noiseHKDF(ck, ikm []byte) (o1, o2, o3 [noiseHashLen]byte) {
	temp := hmacHash(ck, ikm)
	o1 = hmacHash(temp[:], []byte{1})
	o2 = hmacHash(temp[:], o1[:], []byte{2})
	o3 = hmacHash(temp[:], o2[:], []byte{3})
	wipe(temp[:])
	return
}

// wipe overwrites secret bytes with zeros once they are no longer needed.
func wipe(b []byte) { clear(b) }

// noiseNonce is the ChaChaPoly nonce: 32 bits of zeros, then n little-endian.
func noiseNonce(n uint64) [chacha20poly1305.NonceSize]byte {
	var nonce [chacha20poly1305.NonceSize]byte
	binary.LittleEndian.PutUint64(nonce[4:], n)
	return nonce
}

// cipherState is the Noise CipherState: a key k and a nonce n.
type cipherState struct {
	k      [noiseKeyLen]byte
	hasKey bool
	n      uint64
}

func (c *cipherState) initializeKey(k [noiseKeyLen]byte) {
	c.k, c.hasKey, c.n = k, true, 0
}

// encryptWithAd returns ciphertext appended to dst; without a key it is the
// identity (Noise section 5.1).
func (c *cipherState) encryptWithAd(dst, ad, plaintext []byte) ([]byte, error) {
	if !c.hasKey {
		return append(dst, plaintext...), nil
	}
	if c.n == ^uint64(0) {
		return nil, errNoiseNonce
	}
	aead, _ := chacha20poly1305.New(c.k[:])
	nonce := noiseNonce(c.n)
	c.n++
	return aead.Seal(dst, nonce[:], plaintext, ad), nil
}

func (c *cipherState) decryptWithAd(dst, ad, ciphertext []byte) ([]byte, error) {
	if !c.hasKey {
		return append(dst, ciphertext...), nil
	}
	if c.n == ^uint64(0) {
		return nil, errNoiseNonce
	}
	aead, _ := chacha20poly1305.New(c.k[:])
	nonce := noiseNonce(c.n)
	out, err := aead.Open(dst, nonce[:], ciphertext, ad)
	if err != nil {
		return nil, errNoiseDecrypt
	}
	c.n++
	return out, nil
}

func (c *cipherState) destroy() { wipe(c.k[:]); c.hasKey, c.n = false, 0 }

// symmetricState is the Noise SymmetricState: a chaining key ck, a handshake
// hash h and the CipherState they drive.
type symmetricState struct {
	cs cipherState
	ck [noiseHashLen]byte
	h  [noiseHashLen]byte
}

// initializeSymmetric sets h from the protocol name (padded or hashed to
// HASHLEN) and ck = h.
func (s *symmetricState) initializeSymmetric(protocolName string) {
	if len(protocolName) <= noiseHashLen {
		s.h = [noiseHashLen]byte{}
		copy(s.h[:], protocolName)
	} else {
		s.h = noiseHash([]byte(protocolName))
	}
	s.ck = s.h
	s.cs = cipherState{}
}

func (s *symmetricState) mixKey(ikm []byte) {
	ck, k, o3 := noiseHKDF(s.ck[:], ikm)
	wipe(s.ck[:])
	s.ck = ck
	s.cs.initializeKey(k)
	wipe(k[:])
	wipe(o3[:])
}

func (s *symmetricState) mixHash(data []byte) { s.h = noiseHash(s.h[:], data) }

func (s *symmetricState) mixKeyAndHash(ikm []byte) {
	ck, tempH, k := noiseHKDF(s.ck[:], ikm)
	wipe(s.ck[:])
	s.ck = ck
	s.mixHash(tempH[:])
	s.cs.initializeKey(k)
	wipe(tempH[:])
	wipe(k[:])
}

func (s *symmetricState) encryptAndHash(dst, plaintext []byte) ([]byte, error) {
	out, err := s.cs.encryptWithAd(dst, s.h[:], plaintext)
	if err != nil {
		return nil, err
	}
	s.mixHash(out[len(dst):])
	return out, nil
}

func (s *symmetricState) decryptAndHash(dst, ciphertext []byte) ([]byte, error) {
	out, err := s.cs.decryptWithAd(dst, s.h[:], ciphertext)
	if err != nil {
		return nil, err
	}
	s.mixHash(ciphertext)
	return out, nil
}

// split derives the two transport keys (initiator->responder, then
// responder->initiator) and erases the chaining key: after split nothing
// that could re-derive them remains.
func (s *symmetricState) split() (k1, k2 [noiseKeyLen]byte) {
	k1, k2, o3 := noiseHKDF(s.ck[:], nil)
	wipe(o3[:])
	wipe(s.ck[:])
	s.cs.destroy()
	return k1, k2
}

// noiseToken is one token of a handshake pattern.
type noiseToken uint8

const (
	tokE noiseToken = iota
	tokS
	tokEE
	tokES
	tokSE
	tokSS
	tokPSK
)

func (t noiseToken) String() string {
	return [...]string{"e", "s", "ee", "es", "se", "ss", "psk"}[t]
}

// noisePattern is a handshake pattern: pre-messages and message patterns.
// Only what IK, XX, NN and IKpsk2 need is modelled: a responder static key
// may be pre-known ("<- s").
type noisePattern struct {
	name          string
	preResponderS bool
	messages      [][]noiseToken
	psk           bool // the name carries a pskN modifier: "e" also calls mixKey
}

// The patterns the vectors exercise; patternIKpsk2 is the one kadchat uses.
var (
	patternNN = noisePattern{name: "NN", messages: [][]noiseToken{
		{tokE},
		{tokE, tokEE},
	}}
	patternXX = noisePattern{name: "XX", messages: [][]noiseToken{
		{tokE},
		{tokE, tokEE, tokS, tokES},
		{tokS, tokSE},
	}}
	patternIK = noisePattern{name: "IK", preResponderS: true, messages: [][]noiseToken{
		{tokE, tokES, tokS, tokSS},
		{tokE, tokEE, tokSE},
	}}
	patternIKpsk2 = noisePattern{name: "IKpsk2", preResponderS: true, psk: true, messages: [][]noiseToken{
		{tokE, tokES, tokS, tokSS},
		{tokE, tokEE, tokSE, tokPSK},
	}}
)

// noiseSuite names the DH, cipher and hash functions of every protocol here.
const noiseSuite = "25519_ChaChaPoly_BLAKE2s"

// x25519 is the only curve in use.
var x25519 = ecdh.X25519()

// keyPair is an X25519 key pair.
type keyPair struct {
	priv *ecdh.PrivateKey
	pub  [noiseDHLen]byte
}

// newKeyPair makes a key pair from 32 private bytes (clamped by X25519).
// ecdh's own GenerateKey may ignore its reader, so we read the bytes
// ourselves: test vectors fix the ephemeral keys through rand.
func newKeyPair(private []byte) (keyPair, error) {
	priv, err := x25519.NewPrivateKey(private)
	if err != nil {
		return keyPair{}, fmt.Errorf("noise: %w", err)
	}
	var kp keyPair
	kp.priv = priv
	copy(kp.pub[:], priv.PublicKey().Bytes())
	return kp, nil
}

func generateKeyPair(rand io.Reader) (keyPair, error) {
	var b [noiseDHLen]byte
	defer wipe(b[:])
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return keyPair{}, fmt.Errorf("noise: generate key: %w", err)
	}
	return newKeyPair(b[:])
}

// dhCounter counts X25519 operations, so tests can prove that a packet was
// dropped before any Diffie-Hellman work.
type dhCounter struct{ n atomic.Uint64 }

func (c *dhCounter) add() {
	if c != nil {
		c.n.Add(1)
	}
}

// noiseDH is DH(priv, pub); an all-zero result (a low-order point) is an error.
func noiseDH(c *dhCounter, priv *ecdh.PrivateKey, pub [noiseDHLen]byte) ([noiseDHLen]byte, error) {
	var out [noiseDHLen]byte
	c.add()
	p, err := x25519.NewPublicKey(pub[:])
	if err != nil {
		return out, errNoiseDH
	}
	secret, err := priv.ECDH(p)
	if err != nil {
		return out, errNoiseDH
	}
	copy(out[:], secret)
	wipe(secret)
	return out, nil
}

// handshakeState is the Noise HandshakeState.
type handshakeState struct {
	ss        symmetricState
	pattern   *noisePattern
	initiator bool
	s, e      keyPair
	hasS      bool
	hasE      bool
	rs, re    [noiseDHLen]byte
	hasRS     bool
	hasRE     bool
	psk       [noiseKeyLen]byte
	msg       int // index of the next message pattern
	rand      io.Reader
	dh        *dhCounter
}

// handshakeParams configures initialize; rs is required when the pattern
// pre-knows the responder's static key and we are the initiator.
type handshakeParams struct {
	pattern   *noisePattern
	initiator bool
	prologue  []byte
	s         *keyPair
	rs        *[noiseDHLen]byte
	psk       [noiseKeyLen]byte
	rand      io.Reader
	dh        *dhCounter
}

func noiseProtocolName(p *noisePattern) string {
	return "Noise_" + p.name + "_" + noiseSuite
}

// initialize is the Noise Initialize(): protocol name, prologue, pre-messages.
func (hs *handshakeState) initialize(p handshakeParams) {
	*hs = handshakeState{pattern: p.pattern, initiator: p.initiator, psk: p.psk, rand: p.rand, dh: p.dh}
	hs.ss.initializeSymmetric(noiseProtocolName(p.pattern))
	hs.ss.mixHash(p.prologue)
	if p.s != nil {
		hs.s, hs.hasS = *p.s, true
	}
	if p.rs != nil {
		hs.rs, hs.hasRS = *p.rs, true
	}
	if p.pattern.preResponderS {
		// "<- s": both sides hash the responder's static public key.
		if hs.initiator {
			hs.ss.mixHash(hs.rs[:])
		} else {
			hs.ss.mixHash(hs.s.pub[:])
		}
	}
}

// myTurn reports whether this side writes the next message.
func (hs *handshakeState) myTurn() bool { return (hs.msg%2 == 0) == hs.initiator }

func (hs *handshakeState) finished() bool { return hs.msg >= len(hs.pattern.messages) }

// writeMessage is the Noise WriteMessage: it appends the next handshake
// message carrying payload to dst.
func (hs *handshakeState) writeMessage(dst, payload []byte) ([]byte, error) {
	if hs.finished() || !hs.myTurn() {
		return nil, errNoiseOrder
	}
	var err error
	for _, tok := range hs.pattern.messages[hs.msg] {
		if dst, err = hs.writeToken(dst, tok); err != nil {
			return nil, err
		}
	}
	if dst, err = hs.ss.encryptAndHash(dst, payload); err != nil {
		return nil, err
	}
	hs.msg++
	return dst, nil
}

func (hs *handshakeState) writeToken(dst []byte, tok noiseToken) ([]byte, error) {
	switch tok {
	case tokE:
		e, err := generateKeyPair(hs.rand)
		if err != nil {
			return nil, err
		}
		hs.dh.add() // the scalar base multiplication
		hs.e, hs.hasE = e, true
		dst = append(dst, e.pub[:]...)
		hs.ss.mixHash(e.pub[:])
		if hs.pattern.psk {
			hs.ss.mixKey(e.pub[:])
		}
		return dst, nil
	case tokS:
		return hs.ss.encryptAndHash(dst, hs.s.pub[:])
	}
	return dst, hs.mixDH(tok)
}

// readMessage is the Noise ReadMessage: it consumes a whole handshake
// message and returns its payload appended to dst.
func (hs *handshakeState) readMessage(dst, msg []byte) ([]byte, error) {
	if hs.finished() || hs.myTurn() {
		return nil, errNoiseOrder
	}
	for _, tok := range hs.pattern.messages[hs.msg] {
		var err error
		if msg, err = hs.readToken(msg, tok); err != nil {
			return nil, err
		}
	}
	out, err := hs.ss.decryptAndHash(dst, msg)
	if err != nil {
		return nil, err
	}
	hs.msg++
	return out, nil
}

func (hs *handshakeState) readToken(msg []byte, tok noiseToken) ([]byte, error) {
	switch tok {
	case tokE:
		if len(msg) < noiseDHLen {
			return nil, errNoiseShort
		}
		copy(hs.re[:], msg[:noiseDHLen])
		hs.hasRE = true
		hs.ss.mixHash(hs.re[:])
		if hs.pattern.psk {
			hs.ss.mixKey(hs.re[:])
		}
		return msg[noiseDHLen:], nil
	case tokS:
		n := noiseDHLen
		if hs.ss.cs.hasKey {
			n += noiseTagLen
		}
		if len(msg) < n {
			return nil, errNoiseShort
		}
		var rs [noiseDHLen]byte
		if _, err := hs.ss.decryptAndHash(rs[:0], msg[:n]); err != nil {
			return nil, err
		}
		hs.rs, hs.hasRS = rs, true
		return msg[n:], nil
	}
	return msg, hs.mixDH(tok)
}

// mixDH performs the DH a token names. A token names the initiator's key
// first: "es" is DH(e, rs) for the initiator and DH(s, re) for the responder.
func (hs *handshakeState) mixDH(tok noiseToken) error {
	if tok == tokPSK {
		hs.ss.mixKeyAndHash(hs.psk[:])
		return nil
	}
	initiatorE := tok == tokEE || tok == tokES
	responderE := tok == tokEE || tok == tokSE
	localE, remoteE := initiatorE, responderE
	if !hs.initiator {
		localE, remoteE = responderE, initiatorE
	}
	local, ok := hs.s, hs.hasS
	if localE {
		local, ok = hs.e, hs.hasE
	}
	remote, rok := hs.rs, hs.hasRS
	if remoteE {
		remote, rok = hs.re, hs.hasRE
	}
	if !ok || !rok {
		return errNoiseOrder
	}
	secret, err := noiseDH(hs.dh, local.priv, remote)
	if err != nil {
		return err
	}
	hs.ss.mixKey(secret[:])
	wipe(secret[:])
	return nil
}

// splitAndErase ends the handshake: it returns the two transport keys and
// erases everything secret the handshake held (ephemeral key, chaining key).
// The handshake hash h is kept by the caller if needed (channel binding).
func (hs *handshakeState) splitAndErase() (k1, k2 [noiseKeyLen]byte, h [noiseHashLen]byte) {
	k1, k2 = hs.ss.split()
	h = hs.ss.h
	hs.erase()
	return k1, k2, h
}

// erase forgets the ephemeral private key and all derived secrets. The
// ecdh.PrivateKey is dropped (its bytes are not reachable for wiping);
// everything this struct owns is zeroed.
func (hs *handshakeState) erase() {
	hs.e = keyPair{}
	hs.hasE = false
	wipe(hs.ss.ck[:])
	hs.ss.cs.destroy()
	wipe(hs.psk[:])
}

// ---------------------------------------------------------------------------
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
		v := indexByte(idAlphabet, s[i])
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

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
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
	kp keyPair
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

func (id *identity) public() publicKey { return id.kp.pub }

// staticSecret is X25519(s, peer); an all-zero result is an error.
func (id *identity) staticSecret(peer publicKey) ([32]byte, error) {
	out, err := noiseDH(nil, id.kp.priv, peer)
	if err != nil {
		return out, fmt.Errorf("identity: %w", err)
	}
	return out, nil
}

func (id *identity) marshal() []byte {
	return fmt.Appendf(nil, "%s\nprivate %x\npublic %s\n", identityHeader, id.kp.priv.Bytes(), id.public())
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
	kp, err := newKeyPair(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errIdentityCorrupt, err)
	}
	id := &identity{kp: kp}
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
	b, err := os.ReadFile(path)
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
	kp, err := generateKeyPair(rand)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	id := &identity{kp: kp}
	data := id.marshal()
	defer wipe(data)
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return id, nil
}

// ---------------------------------------------------------------------------
// Wire format (SPEC.md 4.3). Every message starts with a 4-byte header: the
// type, then three zero bytes (keeps the fields 4-byte aligned, as in
// WireGuard). Indices and the counter are little-endian, like the Noise
// nonce they feed.

const (
	// sessionPrologue is the Noise prologue: it names our protocol and its
	// version, so a handshake cannot be replayed into another protocol.
	sessionPrologue = "kadchat session v1"

	headerLen    = 4
	indexLen     = 4
	macLen       = 16
	cookieLen    = 16
	timestampLen = 12 // TAI64N
	counterLen   = 8  // transport counter, little-endian
	xNonceLen    = 24 // XChaCha20-Poly1305

	initiationOffSender    = 4
	initiationOffEphemeral = 8
	initiationOffStatic    = 40 // 32 + 16
	initiationOffTimestamp = 88 // 12 + 16
	initiationOffMAC1      = 116
	initiationOffMAC2      = 132
	initiationSize         = 148
	responseOffSender      = 4
	responseOffReceiver    = 8
	responseOffEphemeral   = 12
	responseOffEmpty       = 44 // 0 + 16
	responseOffMAC1        = 60
	responseOffMAC2        = 76
	responseSize           = 92
	cookieOffReceiver      = 4
	cookieOffNonce         = 8
	cookieOffCookie        = 32 // 16 + 16
	cookieReplySize        = 64
	transportOffReceiver   = 4
	transportOffCounter    = 8
	transportOffData       = transportOffCounter + counterLen
	transportMinSize       = transportOffData + noiseTagLen                    // a keepalive: 32
	maxTransportSize       = 1200                                              // whole datagram
	maxTransportPayload    = maxTransportSize - transportOffData - noiseTagLen // 1168

	labelMAC1   = "kadchat mac1 v1"
	labelCookie = "kadchat cookie v1"
)

var errMalformed = errors.New("session: malformed packet")

// initiationMsg is a parsed initiation; the Noise part is still sealed.
type initiationMsg struct {
	sender    uint32
	ephemeral [noiseDHLen]byte
	static    [noiseDHLen + noiseTagLen]byte
	timestamp [timestampLen + noiseTagLen]byte
	mac1      [macLen]byte
	mac2      [macLen]byte
}

type responseMsg struct {
	sender, receiver uint32
	ephemeral        [noiseDHLen]byte
	empty            [noiseTagLen]byte
	mac1             [macLen]byte
	mac2             [macLen]byte
}

type cookieReplyMsg struct {
	receiver uint32
	nonce    [xNonceLen]byte
	cookie   [cookieLen + noiseTagLen]byte
}

// transportMsg aliases the datagram: data is the ciphertext with its tag.
type transportMsg struct {
	receiver uint32
	counter  uint64
	data     []byte
}

// checkHeader accepts exactly the given type followed by three zero bytes.
func checkHeader(b []byte, typ byte) bool {
	return len(b) >= headerLen && b[0] == typ && b[1] == 0 && b[2] == 0 && b[3] == 0
}

func parseInitiation(b []byte) (initiationMsg, error) {
	if len(b) != initiationSize || !checkHeader(b, packetInitiation) {
		return initiationMsg{}, fmt.Errorf("%w: initiation", errMalformed)
	}
	var m initiationMsg
	m.sender = binary.LittleEndian.Uint32(b[initiationOffSender:])
	copy(m.ephemeral[:], b[initiationOffEphemeral:initiationOffStatic])
	copy(m.static[:], b[initiationOffStatic:initiationOffTimestamp])
	copy(m.timestamp[:], b[initiationOffTimestamp:initiationOffMAC1])
	copy(m.mac1[:], b[initiationOffMAC1:initiationOffMAC2])
	copy(m.mac2[:], b[initiationOffMAC2:])
	return m, nil
}

func (m *initiationMsg) appendTo(dst []byte) []byte {
	dst = append(dst, packetInitiation, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, m.sender)
	dst = append(dst, m.ephemeral[:]...)
	dst = append(dst, m.static[:]...)
	dst = append(dst, m.timestamp[:]...)
	dst = append(dst, m.mac1[:]...)
	return append(dst, m.mac2[:]...)
}

func parseResponse(b []byte) (responseMsg, error) {
	if len(b) != responseSize || !checkHeader(b, packetResponse) {
		return responseMsg{}, fmt.Errorf("%w: response", errMalformed)
	}
	var m responseMsg
	m.sender = binary.LittleEndian.Uint32(b[responseOffSender:])
	m.receiver = binary.LittleEndian.Uint32(b[responseOffReceiver:])
	copy(m.ephemeral[:], b[responseOffEphemeral:responseOffEmpty])
	copy(m.empty[:], b[responseOffEmpty:responseOffMAC1])
	copy(m.mac1[:], b[responseOffMAC1:responseOffMAC2])
	copy(m.mac2[:], b[responseOffMAC2:])
	return m, nil
}

func (m *responseMsg) appendTo(dst []byte) []byte {
	dst = append(dst, packetResponse, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, m.sender)
	dst = binary.LittleEndian.AppendUint32(dst, m.receiver)
	dst = append(dst, m.ephemeral[:]...)
	dst = append(dst, m.empty[:]...)
	dst = append(dst, m.mac1[:]...)
	return append(dst, m.mac2[:]...)
}

func parseCookieReply(b []byte) (cookieReplyMsg, error) {
	if len(b) != cookieReplySize || !checkHeader(b, packetCookieReply) {
		return cookieReplyMsg{}, fmt.Errorf("%w: cookie reply", errMalformed)
	}
	var m cookieReplyMsg
	m.receiver = binary.LittleEndian.Uint32(b[cookieOffReceiver:])
	copy(m.nonce[:], b[cookieOffNonce:cookieOffCookie])
	copy(m.cookie[:], b[cookieOffCookie:])
	return m, nil
}

func (m *cookieReplyMsg) appendTo(dst []byte) []byte {
	dst = append(dst, packetCookieReply, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, m.receiver)
	dst = append(dst, m.nonce[:]...)
	return append(dst, m.cookie[:]...)
}

// parseTransport checks the header and size only; the data authenticates
// later.
func parseTransport(b []byte) (transportMsg, error) {
	if len(b) < transportMinSize || len(b) > maxTransportSize || !checkHeader(b, packetTransport) {
		return transportMsg{}, fmt.Errorf("%w: transport", errMalformed)
	}
	return transportMsg{
		receiver: binary.LittleEndian.Uint32(b[transportOffReceiver:]),
		counter:  binary.LittleEndian.Uint64(b[transportOffCounter:]),
		data:     b[transportOffData:],
	}, nil
}

// ---------------------------------------------------------------------------
// MACs and cookies (SPEC.md 4.5), as WireGuard: mac1 proves the sender knows
// the receiver's public key; mac2 proves, under load, that it can receive at
// its source address.

// keyedMAC is MAC(key, data...) = keyed BLAKE2s with a 16-byte output.
func keyedMAC(key []byte, data ...[]byte) [macLen]byte {
	h, _ := blake2s.New128(key)
	for _, d := range data {
		h.Write(d)
	}
	var out [macLen]byte
	h.Sum(out[:0])
	return out
}

// mac1Key and cookieKey are derived from the public key of the party that
// receives the message (mac1) or sends the cookie reply (cookie).
func mac1Key(pub publicKey) [32]byte     { return noiseHash([]byte(labelMAC1), pub[:]) }
func cookieKeyOf(pub publicKey) [32]byte { return noiseHash([]byte(labelCookie), pub[:]) }

// addrBytes is the source address as the cookie covers it: the IP (4 or 16
// bytes) then the port, big-endian.
func addrBytes(a netip.AddrPort) []byte {
	ip := a.Addr().Unmap().AsSlice()
	return binary.BigEndian.AppendUint16(ip, a.Port())
}

// ---------------------------------------------------------------------------
// The IKpsk2 handshake steps (SPEC.md 4.4), independent of the session
// manager's tables: each step checks and advances the stage.

// handshakeStage is where a handshake is; each step requires the stage
// before it, so no step runs out of order.
type handshakeStage uint8

const (
	stageZeroed handshakeStage = iota
	stageInitiationCreated
	stageInitiationConsumed
	stageResponseCreated
	stageResponseConsumed
	stageDone // split: only the transport keys remain
)

func (s handshakeStage) String() string {
	switch s {
	case stageZeroed:
		return "zeroed"
	case stageInitiationCreated:
		return "initiation created"
	case stageInitiationConsumed:
		return "initiation consumed"
	case stageResponseCreated:
		return "response created"
	case stageResponseConsumed:
		return "response consumed"
	case stageDone:
		return "done"
	}
	return fmt.Sprintf("stage(%d)", uint8(s))
}

// sessionHandshake is one IKpsk2 handshake with one peer.
type sessionHandshake struct {
	stage       handshakeStage
	hs          handshakeState
	peer        publicKey // the remote static key
	localIndex  uint32
	remoteIndex uint32
	timestamp   [timestampLen]byte // the initiator's, as received or sent
}

// sessionPSK is the psk slot: zeros for now (SPEC.md 4.4 says what may go
// there later without changing the wire format).
var sessionPSK [noiseKeyLen]byte

func (h *sessionHandshake) advance(from, to handshakeStage) error {
	if h.stage != from {
		return fmt.Errorf("%w: %v -> %v from %v", errNoiseOrder, from, to, h.stage)
	}
	h.stage = to
	return nil
}

// createInitiation writes "-> e, es, s, ss" with the timestamp as payload.
// mac1 and mac2 are left zero for the caller.
func (h *sessionHandshake) createInitiation(id *identity, peer publicKey, index uint32, ts [timestampLen]byte, rand io.Reader, dh *dhCounter) (initiationMsg, error) {
	if err := h.advance(stageZeroed, stageInitiationCreated); err != nil {
		return initiationMsg{}, err
	}
	rs := [noiseDHLen]byte(peer)
	h.hs.initialize(handshakeParams{pattern: &patternIKpsk2, initiator: true, prologue: []byte(sessionPrologue),
		s: &id.kp, rs: &rs, psk: sessionPSK, rand: rand, dh: dh})
	h.peer, h.localIndex, h.timestamp = peer, index, ts
	var buf [initiationOffMAC1 - initiationOffEphemeral]byte
	// e, es, s, ss, then the encrypted timestamp.
	out, err := h.hs.writeMessage(buf[:0], ts[:])
	if err != nil || len(out) != len(buf) {
		return initiationMsg{}, fmt.Errorf("session: initiation: %v", err)
	}
	m := initiationMsg{sender: index}
	copy(m.ephemeral[:], out)
	copy(m.static[:], out[noiseDHLen:])
	copy(m.timestamp[:], out[initiationOffTimestamp-initiationOffEphemeral:])
	return m, nil
}

// consumeInitiation reads "-> e, es, s, ss" and the timestamp. It learns
// the initiator's static key; the caller decides whether it is a contact.
func (h *sessionHandshake) consumeInitiation(id *identity, m *initiationMsg, dh *dhCounter) error {
	if err := h.advance(stageZeroed, stageInitiationConsumed); err != nil {
		return err
	}
	h.hs.initialize(handshakeParams{pattern: &patternIKpsk2, prologue: []byte(sessionPrologue),
		s: &id.kp, psk: sessionPSK, dh: dh})
	var msg [initiationOffMAC1 - initiationOffEphemeral]byte
	copy(msg[:], m.ephemeral[:])
	copy(msg[noiseDHLen:], m.static[:])
	copy(msg[initiationOffTimestamp-initiationOffEphemeral:], m.timestamp[:])
	ts, err := h.hs.readMessage(h.timestamp[:0], msg[:])
	if err != nil || len(ts) != timestampLen {
		h.hs.erase()
		return fmt.Errorf("session: initiation: %w", errNoiseDecrypt)
	}
	h.peer, h.remoteIndex = h.hs.rs, m.sender
	return nil
}

// createResponse writes "<- e, ee, se, psk" with an empty payload.
func (h *sessionHandshake) createResponse(index uint32, rand io.Reader) (responseMsg, error) {
	if err := h.advance(stageInitiationConsumed, stageResponseCreated); err != nil {
		return responseMsg{}, err
	}
	h.hs.rand = rand
	h.localIndex = index
	var buf [responseOffMAC1 - responseOffEphemeral]byte
	out, err := h.hs.writeMessage(buf[:0], nil)
	if err != nil || len(out) != len(buf) {
		return responseMsg{}, fmt.Errorf("session: response: %v", err)
	}
	m := responseMsg{sender: index, receiver: h.remoteIndex}
	copy(m.ephemeral[:], out)
	copy(m.empty[:], out[noiseDHLen:])
	return m, nil
}

// consumeResponse reads "<- e, ee, se, psk" and its empty payload.
func (h *sessionHandshake) consumeResponse(m *responseMsg) error {
	if err := h.advance(stageInitiationCreated, stageResponseConsumed); err != nil {
		return err
	}
	var msg [responseOffMAC1 - responseOffEphemeral]byte
	copy(msg[:], m.ephemeral[:])
	copy(msg[noiseDHLen:], m.empty[:])
	// readMessage changes the state as it goes; a forged response must not
	// spoil the pending handshake for the genuine one, so work on a copy.
	saved := h.hs
	defer saved.erase()
	if _, err := h.hs.readMessage(nil, msg[:]); err != nil {
		h.hs.erase()
		h.hs, saved = saved, h.hs
		h.stage = stageInitiationCreated
		return fmt.Errorf("session: response: %w", err)
	}
	h.remoteIndex = m.sender
	return nil
}

// beginSession splits and erases the handshake: send and receive keys from
// this side's point of view.
func (h *sessionHandshake) beginSession() (send, recv [noiseKeyLen]byte, err error) {
	initiator := h.stage == stageResponseConsumed
	if h.stage != stageResponseConsumed && h.stage != stageResponseCreated {
		return send, recv, fmt.Errorf("%w: split in stage %v", errNoiseOrder, h.stage)
	}
	h.stage = stageDone
	k1, k2, _ := h.hs.splitAndErase()
	if initiator {
		return k1, k2, nil
	}
	return k2, k1, nil
}

func (h *sessionHandshake) erase() {
	h.hs.erase()
	h.stage = stageDone
}

// tai64n is the TAI64N label of t: 8 bytes of seconds since 1970 offset by
// 2^62 + 10, then 4 bytes of nanoseconds, big-endian. The nanoseconds are
// rounded down to 2^24 ns (about 17 ms), as WireGuard does, so the
// timestamp does not reveal the sender's clock precisely.
func tai64n(t time.Time) [timestampLen]byte {
	var ts [timestampLen]byte
	binary.BigEndian.PutUint64(ts[:], uint64(1)<<62+10+uint64(t.Unix()))
	binary.BigEndian.PutUint32(ts[8:], uint32(t.Nanosecond())&^(1<<24-1))
	return ts
}

// nextTimestamp is tai64n(t), but always greater than prev: two initiations
// within the rounding step must still be accepted in order.
func nextTimestamp(t time.Time, prev [timestampLen]byte) [timestampLen]byte {
	ts := tai64n(t)
	if bytes.Compare(ts[:], prev[:]) > 0 {
		return ts
	}
	ts = prev
	for i := timestampLen - 1; i >= 0; i-- {
		ts[i]++
		if ts[i] != 0 {
			break
		}
	}
	return ts
}

// ---------------------------------------------------------------------------
// Transport keypairs (SPEC.md 4.6).

// rejectAfterMessages is the last counter a keypair may use: a nonce must
// never repeat, and the replay window needs headroom below 2^64.
const rejectAfterMessages = ^uint64(0) - (1 << 13)

var (
	errKeypairExpired = errors.New("session: keys expired")
	errReplay         = errors.New("session: replayed or too old packet")
)

// keypair is one session's transport state: a key per direction (Split),
// the send counter and the receive replay window. The AEADs are built once
// so the packet path allocates nothing.
type keypair struct {
	mu          sync.Mutex // guards replay, wiped and the AEAD keys (wipe)
	send, recv  cipher.AEAD
	sendCounter atomic.Uint64
	replay      replayWindow
	wiped       bool
	// The nonces live here, not on the stack: a slice of a local array
	// passed to an interface method escapes, one allocation per packet.
	sendNonce   [chacha20poly1305.NonceSize]byte
	recvNonce   [chacha20poly1305.NonceSize]byte
	localIndex  uint32
	remoteIndex uint32
	created     time.Time
	initiator   bool
}

func newKeypair(send, recv [noiseKeyLen]byte, local, remote uint32, initiator bool, now time.Time) *keypair {
	s, _ := chacha20poly1305.New(send[:])
	r, _ := chacha20poly1305.New(recv[:])
	wipe(send[:])
	wipe(recv[:])
	return &keypair{send: s, recv: r, localIndex: local, remoteIndex: remote, initiator: initiator, created: now}
}

// seal appends a whole transport packet carrying p to dst[:0]; dst should
// have room for len(p)+32 bytes so nothing is allocated.
func (kp *keypair) seal(dst, p []byte) ([]byte, error) {
	n := kp.sendCounter.Add(1) - 1
	if n >= rejectAfterMessages {
		return nil, errKeypairExpired
	}
	dst = append(dst[:0], packetTransport, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, kp.remoteIndex)
	dst = binary.LittleEndian.AppendUint64(dst, n)
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.wiped {
		return nil, errKeypairExpired
	}
	kp.sendNonce = noiseNonce(n)
	return kp.send.Seal(dst, kp.sendNonce[:], p, nil), nil
}

// open authenticates m and returns its plaintext appended to dst[:0]. The
// replay window is checked before and updated only after authentication.
func (kp *keypair) open(dst []byte, m *transportMsg) ([]byte, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.wiped || m.counter >= rejectAfterMessages {
		return nil, errKeypairExpired
	}
	if !kp.replay.check(m.counter) {
		return nil, errReplay
	}
	kp.recvNonce = noiseNonce(m.counter)
	out, err := kp.recv.Open(dst[:0], kp.recvNonce[:], m.data, nil)
	if err != nil {
		return nil, errNoiseDecrypt
	}
	if !kp.replay.accept(m.counter) {
		return nil, errReplay
	}
	return out, nil
}

// wipe overwrites both transport keys with zeros; the keypair refuses all
// further use.
func (kp *keypair) wipe() {
	if kp == nil {
		return
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.wiped {
		return
	}
	kp.wiped = true
	wipeAEAD(kp.send)
	wipeAEAD(kp.recv)
	kp.replay = replayWindow{}
}

// wipeAEAD zeroes the key inside an x/crypto ChaCha20-Poly1305 AEAD. The
// package keeps its key in an unexported [32]byte, the only field of the
// struct the AEAD points to; we check that layout by reflection before
// writing, and do nothing if a future version changes it
// (TestWipeAEAD notices). Without this the retired key would stay in memory
// until the garbage collector reuses it.
func wipeAEAD(a cipher.AEAD) bool {
	v := reflect.ValueOf(a)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return false
	}
	t := v.Elem().Type()
	if t.Kind() != reflect.Struct || t.NumField() != 1 || t.Field(0).Name != "key" ||
		t.Field(0).Type != reflect.TypeFor[[noiseKeyLen]byte]() {
		return false
	}
	clear((*[noiseKeyLen]byte)(v.UnsafePointer())[:])
	return true
}

// ---------------------------------------------------------------------------
// The session manager (SPEC.md 4.6-4.8): peers, indices, timers.

// Default timers, as WireGuard's (SPEC.md 4.7). sessionConfig fields of the
// same names override them (tests shorten them).
const (
	defaultRekeyAfterTime     = 120 * time.Second
	defaultRejectAfterTime    = 180 * time.Second
	defaultRekeyTimeout       = 5 * time.Second
	defaultRekeyAttemptTime   = 90 * time.Second
	defaultRekeyAfterMessages = uint64(1) << 60
	defaultLoadThreshold      = 64 // handshake messages per second before cookies
	defaultTickInterval       = 250 * time.Millisecond
	defaultKeepalive          = 25 * time.Second // keeps NAT mappings open; shows presence
	defaultDeadAfter          = 3*defaultKeepalive + 5*time.Second
	maxCandidates             = 4 // addresses tried at once while there is no session
	cookieRefreshTime         = 120 * time.Second
	maxQueuedPerPeer          = 128
)

type sessionConfig struct {
	Identity    *identity
	Send        func(to netip.AddrPort, b []byte) error
	Allowed     func(peer publicKey) bool                                   // is peer a contact?
	Deliver     func(peer publicKey, from netip.AddrPort, plaintext []byte) // plaintext valid only during call
	Established func(peer publicKey, addr netip.AddrPort)                   // a new session (also after rekey/roam: addr may differ)
	Ended       func(peer publicKey)                                        // the session expired or the peer fell silent for DeadAfter
	Now         func() time.Time
	Rand        io.Reader
	Log         *slog.Logger

	// Timers; zero means the default.
	RekeyAfterTime     time.Duration
	RejectAfterTime    time.Duration
	RekeyTimeout       time.Duration
	RekeyAttemptTime   time.Duration
	RekeyAfterMessages uint64
	LoadThreshold      int // handshake messages per second that put us under load
	TickInterval       time.Duration
	Keepalive          time.Duration // an idle session sends an empty packet this often
	DeadAfter          time.Duration // silence after which a session counts as ended
}

func (c *sessionConfig) setDefaults() {
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&c.RekeyAfterTime, defaultRekeyAfterTime)
	setDur(&c.RejectAfterTime, defaultRejectAfterTime)
	setDur(&c.RekeyTimeout, defaultRekeyTimeout)
	setDur(&c.RekeyAttemptTime, defaultRekeyAttemptTime)
	setDur(&c.TickInterval, defaultTickInterval)
	setDur(&c.Keepalive, defaultKeepalive)
	setDur(&c.DeadAfter, defaultDeadAfter)
	if c.RekeyAfterMessages == 0 {
		c.RekeyAfterMessages = defaultRekeyAfterMessages
	}
	if c.LoadThreshold == 0 {
		c.LoadThreshold = defaultLoadThreshold
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = cryptorand.Reader
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Allowed == nil {
		c.Allowed = func(publicKey) bool { return false }
	}
	if c.Deliver == nil {
		c.Deliver = func(publicKey, netip.AddrPort, []byte) {}
	}
	if c.Established == nil {
		c.Established = func(publicKey, netip.AddrPort) {}
	}
	if c.Ended == nil {
		c.Ended = func(publicKey) {}
	}
}

// sessionStats counts what the session layer dropped and why; every drop
// is silent on the wire.
type sessionStats struct {
	malformed     atomic.Uint64 // not exactly well-formed
	badMAC        atomic.Uint64 // mac1 wrong: dropped before any DH
	cookiesSent   atomic.Uint64
	handshakeFail atomic.Uint64 // did not authenticate
	notAllowed    atomic.Uint64 // initiator is not a contact: no reply
	staleInit     atomic.Uint64 // replayed or older timestamp
	simultaneous  atomic.Uint64 // initiation dropped by the simultaneous-open rule
	unknownIndex  atomic.Uint64
	authFail      atomic.Uint64 // transport packet did not authenticate
	replayed      atomic.Uint64
	expired       atomic.Uint64
	queueDropped  atomic.Uint64
	delivered     atomic.Uint64
}

// peer is everything we hold about one contact. Guarded by the manager's mu.
type peer struct {
	key       publicKey
	mac1Key   [32]byte // for messages we send to it
	cookieKey [32]byte // for cookie replies it sends us
	endpoint  netip.AddrPort

	hs          *sessionHandshake // our pending initiation, nil if none
	hsStarted   time.Time         // first attempt of the pending handshake
	hsLastSent  time.Time
	lastMAC1    [macLen]byte // of the last handshake message we sent it
	hasLastMAC1 bool
	cookie      [cookieLen]byte
	cookieTime  time.Time
	hasCookie   bool

	lastTimestamp [timestampLen]byte // greatest accepted from it
	lastSentTS    [timestampLen]byte
	lastSend      time.Time

	current  *keypair // sends and receives
	previous *keypair // receives only, until it expires
	next     *keypair // responder side, until the initiator's first packet confirms it
	queue    [][]byte

	// While there is no session, the rendezvous may report several
	// addresses (an old announcement outlives a restart): the same
	// initiation goes to each, and the one that answers wins.
	candidates []netip.AddrPort
	lastInit   []byte    // the pending initiation, to send to a new candidate
	lastRecv   time.Time // last authenticated packet
	online     bool      // Established reported and Ended not since
}

// indexEntry is what a receiver index names: our pending initiation, or a keypair.
type indexEntry struct {
	peer *peer
	kp   *keypair // nil for a pending handshake
}

type sessionManager struct {
	cfg       sessionConfig
	pub       publicKey
	mac1Key   [32]byte // for messages sent to us
	cookieKey [32]byte // for cookie replies we send
	dh        dhCounter
	stats     sessionStats
	bufs      sync.Pool // *[]byte of maxDatagram bytes: zero allocations per packet
	debugOn   bool

	evMu            sync.Mutex // orders Established and Ended callbacks
	mu              sync.Mutex
	peers           map[publicKey]*peer
	index           map[uint32]indexEntry
	cookieSecret    [32]byte
	cookieSecretAge time.Time
	loadStart       time.Time
	loadCount       int
	loadUntil       time.Time
}

func newSessionManager(cfg sessionConfig) *sessionManager {
	cfg.setDefaults()
	m := &sessionManager{cfg: cfg, peers: map[publicKey]*peer{}, index: map[uint32]indexEntry{}}
	m.pub = cfg.Identity.public()
	m.mac1Key, m.cookieKey = mac1Key(m.pub), cookieKeyOf(m.pub)
	m.bufs.New = func() any { b := make([]byte, maxDatagram); return &b }
	m.debugOn = cfg.Log.Enabled(context.Background(), slog.LevelDebug)
	return m
}

// debug logs a drop; the log is quiet unless debugging.
func (m *sessionManager) debug(msg string, from netip.AddrPort, err error) {
	m.cfg.Log.Debug("session: "+msg, "from", from, "err", err)
}

// debugPacket is debug for the transport path: building the log arguments
// allocates, so it is skipped unless debug logging is on.
func (m *sessionManager) debugPacket(msg string, from netip.AddrPort, err error) {
	if m.debugOn {
		m.debug(msg, from, err)
	}
}

// peerLocked returns the peer record for k, creating it.
func (m *sessionManager) peerLocked(k publicKey) *peer {
	p := m.peers[k]
	if p == nil {
		p = &peer{key: k, mac1Key: mac1Key(k), cookieKey: cookieKeyOf(k)}
		m.peers[k] = p
	}
	return p
}

// newIndexLocked picks a random unused receiver index for e.
func (m *sessionManager) newIndexLocked(e indexEntry) (uint32, error) {
	var b [indexLen]byte
	for range 16 {
		if _, err := io.ReadFull(m.cfg.Rand, b[:]); err != nil {
			return 0, fmt.Errorf("session: index: %w", err)
		}
		i := binary.LittleEndian.Uint32(b[:])
		if _, used := m.index[i]; !used {
			m.index[i] = e
			return i, nil
		}
	}
	return 0, errors.New("session: no free index")
}

// handlePacket is Node.onSession: b is valid only during the call.
func (m *sessionManager) handlePacket(from netip.AddrPort, b []byte) {
	if len(b) == 0 {
		m.stats.malformed.Add(1)
		return
	}
	switch b[0] {
	case packetInitiation:
		m.handleInitiation(from, b)
	case packetResponse:
		m.handleResponse(from, b)
	case packetCookieReply:
		m.handleCookieReply(from, b)
	case packetTransport:
		m.handleTransport(from, b)
	default:
		m.stats.malformed.Add(1)
	}
}

// checkMACs runs before any DH work: mac1 must be right; under load mac2
// must be too, or the sender gets a cookie reply instead. It reports
// whether to go on.
func (m *sessionManager) checkMACs(from netip.AddrPort, b []byte, offMAC1, offMAC2 int, sender uint32) bool {
	mac1 := keyedMAC(m.mac1Key[:], b[:offMAC1])
	if !hmac.Equal(mac1[:], b[offMAC1:offMAC2]) {
		m.stats.badMAC.Add(1)
		m.debug("bad mac1", from, nil)
		return false
	}
	now := m.cfg.Now()
	m.mu.Lock()
	loaded := m.underLoadLocked(now)
	var cookie [cookieLen]byte
	if loaded {
		cookie = m.cookieLocked(now, from)
	}
	m.mu.Unlock()
	if !loaded {
		return true
	}
	mac2 := keyedMAC(cookie[:], b[:offMAC2])
	if hmac.Equal(mac2[:], b[offMAC2:offMAC2+macLen]) {
		return true
	}
	m.sendCookieReply(from, sender, mac1, cookie)
	return false
}

// underLoadLocked counts a handshake message that passed mac1 and reports
// whether we are under load: more than LoadThreshold in the current second
// puts us under load for the next second.
func (m *sessionManager) underLoadLocked(now time.Time) bool {
	if now.Sub(m.loadStart) >= time.Second || now.Before(m.loadStart) {
		m.loadStart, m.loadCount = now, 0
	}
	m.loadCount++
	if m.loadCount > m.cfg.LoadThreshold {
		m.loadUntil = now.Add(time.Second)
	}
	return now.Before(m.loadUntil)
}

// cookieLocked is MAC(R, source address) with a secret R that changes every
// cookieRefreshTime.
func (m *sessionManager) cookieLocked(now time.Time, from netip.AddrPort) [cookieLen]byte {
	if m.cookieSecretAge.IsZero() || now.Sub(m.cookieSecretAge) >= cookieRefreshTime {
		if _, err := io.ReadFull(m.cfg.Rand, m.cookieSecret[:]); err != nil {
			m.debug("cookie secret", from, err)
		}
		m.cookieSecretAge = now
	}
	return keyedMAC(m.cookieSecret[:], addrBytes(from))
}

func (m *sessionManager) sendCookieReply(to netip.AddrPort, receiver uint32, mac1 [macLen]byte, cookie [cookieLen]byte) {
	r := cookieReplyMsg{receiver: receiver}
	if _, err := io.ReadFull(m.cfg.Rand, r.nonce[:]); err != nil {
		m.debug("cookie nonce", to, err)
		return
	}
	aead, _ := chacha20poly1305.NewX(m.cookieKey[:])
	aead.Seal(r.cookie[:0], r.nonce[:], cookie[:], mac1[:])
	m.stats.cookiesSent.Add(1)
	m.sendRaw(to, r.appendTo(nil))
}

func (m *sessionManager) sendRaw(to netip.AddrPort, b []byte) {
	if err := m.cfg.Send(to, b); err != nil {
		m.debug("send", to, err)
	}
}

// setMACsLocked fills mac1 (and mac2 if we hold a fresh cookie from p) of
// a handshake message we send to p, and remembers mac1 for a cookie reply.
func (m *sessionManager) setMACsLocked(p *peer, b []byte, offMAC1, offMAC2 int, now time.Time) {
	mac1 := keyedMAC(p.mac1Key[:], b[:offMAC1])
	copy(b[offMAC1:], mac1[:])
	p.lastMAC1, p.hasLastMAC1 = mac1, true
	if p.hasCookie && now.Sub(p.cookieTime) < cookieRefreshTime-m.cfg.RekeyTimeout {
		mac2 := keyedMAC(p.cookie[:], b[:offMAC2])
		copy(b[offMAC2:], mac2[:])
	} else {
		clear(b[offMAC2 : offMAC2+macLen])
	}
}

// handleInitiation: parse, mac1 (and mac2 under load) before any DH, then
// the Noise message, then the contact and timestamp checks, then the
// simultaneous-open rule, then the response.
func (m *sessionManager) handleInitiation(from netip.AddrPort, b []byte) {
	msg, err := parseInitiation(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	if !m.checkMACs(from, b, initiationOffMAC1, initiationOffMAC2, msg.sender) {
		return
	}
	h := &sessionHandshake{}
	if err := h.consumeInitiation(m.cfg.Identity, &msg, &m.dh); err != nil {
		m.stats.handshakeFail.Add(1)
		m.debug("initiation", from, err)
		return
	}
	if !m.cfg.Allowed(h.peer) {
		// Stay silent: a stranger learns nothing, not even that we exist.
		h.erase()
		m.stats.notAllowed.Add(1)
		m.debug("initiation from a stranger", from, nil)
		return
	}
	out, err := m.respond(from, h)
	if err != nil {
		h.erase()
		m.debug("initiation", from, err)
		return
	}
	m.sendRaw(from, out)
}

// respond applies the per-peer rules to an authenticated initiation and
// returns what to send back: the response, or, when the simultaneous-open
// rule keeps our own initiation and the peer has moved, that initiation.
func (m *sessionManager) respond(from netip.AddrPort, h *sessionHandshake) ([]byte, error) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peerLocked(h.peer)
	if bytes.Compare(h.timestamp[:], p.lastTimestamp[:]) <= 0 {
		m.stats.staleInit.Add(1)
		return nil, errors.New("session: replayed or old initiation")
	}
	// Record the timestamp before anything else uses the initiation, so
	// that even one we drop below cannot be replayed to move us.
	p.lastTimestamp = h.timestamp
	if !m.yieldLocked(p, now) {
		m.stats.simultaneous.Add(1)
		h.erase()
		if p.hs != nil && p.endpoint != from {
			// The initiation authenticated, so from is where the peer
			// is now: aim our own pending initiation there at once
			// rather than keep sending to an old address.
			p.endpoint = from
			if init := m.initiateLocked(p, now); init != nil {
				return init, nil
			}
		}
		return nil, errors.New("session: simultaneous open, keeping ours")
	}
	p.endpoint = from
	local, err := m.newIndexLocked(indexEntry{peer: p})
	if err != nil {
		return nil, err
	}
	resp, err := h.createResponse(local, m.cfg.Rand)
	if err != nil {
		delete(m.index, local)
		return nil, err
	}
	send, recv, err := h.beginSession()
	if err != nil {
		delete(m.index, local)
		return nil, err
	}
	kp := newKeypair(send, recv, local, h.remoteIndex, false, now)
	m.index[local] = indexEntry{peer: p, kp: kp}
	m.retireLocked(p.next)
	p.next = kp
	out := resp.appendTo(make([]byte, 0, responseSize))
	m.setMACsLocked(p, out, responseOffMAC1, responseOffMAC2, now)
	return out, nil
}

// yieldLocked is the simultaneous-open rule (SPEC.md 4.8): when both sides
// initiate at once, the initiation of the side with the lower static public
// key wins. It reports whether we should answer p's initiation; if so our
// own pending initiation is abandoned (its queue is kept and goes out on
// the surviving session). It also ignores an initiation that arrives just
// after our own initiation succeeded: it was sent before the peer saw ours.
func (m *sessionManager) yieldLocked(p *peer, now time.Time) bool {
	if c := p.current; c != nil && c.initiator && now.Sub(c.created) < m.cfg.RekeyTimeout && bytes.Compare(m.pub[:], p.key[:]) < 0 {
		return false
	}
	if p.hs == nil {
		return true
	}
	if bytes.Compare(m.pub[:], p.key[:]) < 0 {
		return false
	}
	m.abandonLocked(p)
	return true
}

// abandonLocked erases our pending initiation to p.
func (m *sessionManager) abandonLocked(p *peer) {
	if p.hs == nil {
		return
	}
	delete(m.index, p.hs.localIndex)
	p.hs.erase()
	p.hs = nil
	p.hsStarted = time.Time{}
}

// retireLocked forgets a keypair and erases its keys.
func (m *sessionManager) retireLocked(kp *keypair) {
	if kp == nil {
		return
	}
	if e, ok := m.index[kp.localIndex]; ok && e.kp == kp {
		delete(m.index, kp.localIndex)
	}
	kp.wipe()
}

// handleResponse completes our initiation.
func (m *sessionManager) handleResponse(from netip.AddrPort, b []byte) {
	msg, err := parseResponse(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	if !m.checkMACs(from, b, responseOffMAC1, responseOffMAC2, msg.sender) {
		return
	}
	p, err := m.completeHandshake(from, &msg)
	if err != nil {
		m.debug("response", from, err)
		return
	}
	m.established(p.key, from)
	m.flush(p, true)
}

func (m *sessionManager) completeHandshake(from netip.AddrPort, msg *responseMsg) (*peer, error) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.index[msg.receiver]
	if !ok || e.kp != nil || e.peer.hs == nil || e.peer.hs.localIndex != msg.receiver {
		m.stats.unknownIndex.Add(1)
		return nil, errors.New("session: response to no pending handshake")
	}
	p := e.peer
	if !m.cfg.Allowed(p.key) {
		return nil, errors.New("session: response from a removed contact")
	}
	if err := p.hs.consumeResponse(msg); err != nil {
		m.stats.handshakeFail.Add(1)
		return nil, err
	}
	send, recv, err := p.hs.beginSession()
	if err != nil {
		return nil, err
	}
	kp := newKeypair(send, recv, p.hs.localIndex, msg.sender, true, now)
	m.index[kp.localIndex] = indexEntry{peer: p, kp: kp}
	p.hs, p.hsStarted = nil, time.Time{}
	m.rotateLocked(p, kp)
	p.endpoint = from
	m.liveLocked(p, now)
	return p, nil
}

// rotateLocked makes kp the current keypair; the old current one is kept
// to receive what is still in flight, the one before it is erased.
func (m *sessionManager) rotateLocked(p *peer, kp *keypair) {
	if p.next != nil && p.next != kp {
		m.retireLocked(p.next)
	}
	p.next = nil
	m.retireLocked(p.previous)
	p.previous, p.current = p.current, kp
}

// handleCookieReply stores the cookie for the next handshake message to
// the peer; it authenticates against the mac1 we last sent it.
func (m *sessionManager) handleCookieReply(from netip.AddrPort, b []byte) {
	msg, err := parseCookieReply(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debug("drop", from, err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.index[msg.receiver]
	if !ok || !e.peer.hasLastMAC1 {
		m.stats.unknownIndex.Add(1)
		return
	}
	p := e.peer
	aead, _ := chacha20poly1305.NewX(p.cookieKey[:])
	var cookie [cookieLen]byte
	if _, err := aead.Open(cookie[:0], msg.nonce[:], msg.cookie[:], p.lastMAC1[:]); err != nil {
		m.stats.handshakeFail.Add(1)
		m.debug("cookie reply", from, err)
		return
	}
	p.cookie, p.cookieTime, p.hasCookie = cookie, m.cfg.Now(), true
	p.hasLastMAC1 = false // one cookie reply per message we sent
}

// handleTransport authenticates a transport packet and delivers it. It
// allocates nothing unless the packet confirms a new session or roams.
func (m *sessionManager) handleTransport(from netip.AddrPort, b []byte) {
	msg, err := parseTransport(b)
	if err != nil {
		m.stats.malformed.Add(1)
		m.debugPacket("drop", from, err)
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	e, ok := m.index[msg.receiver]
	m.mu.Unlock()
	if !ok || e.kp == nil {
		m.stats.unknownIndex.Add(1)
		m.debugPacket("transport for an unknown index", from, nil)
		return
	}
	if now.Sub(e.kp.created) >= m.cfg.RejectAfterTime {
		m.stats.expired.Add(1)
		m.debugPacket("transport on expired keys", from, nil)
		return
	}
	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	pt, err := e.kp.open(*bp, &msg)
	if err != nil {
		if errors.Is(err, errReplay) {
			m.stats.replayed.Add(1)
		} else {
			m.stats.authFail.Add(1)
		}
		m.debugPacket("transport", from, err)
		return
	}
	if m.confirm(e.peer, e.kp, from) {
		m.established(e.peer.key, from)
		m.flush(e.peer, false)
	}
	if len(pt) > 0 {
		m.stats.delivered.Add(1)
		m.cfg.Deliver(e.peer.key, from, pt)
	}
}

// confirm runs after a packet authenticated on kp: a responder's new
// keypair becomes current, and a new source address becomes the endpoint.
// It reports whether the peer's session or address changed.
func (m *sessionManager) confirm(p *peer, kp *keypair, from netip.AddrPort) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	if p.next == kp {
		m.rotateLocked(p, kp)
		changed = true
	}
	if kp == p.current && p.endpoint != from {
		p.endpoint = from
		changed = true
	}
	if !p.online {
		changed = true
	}
	m.liveLocked(p, m.cfg.Now())
	return changed
}

// liveLocked records an authenticated packet from p: it is online, and the
// candidates from the rendezvous are no longer needed.
func (m *sessionManager) liveLocked(p *peer, now time.Time) {
	p.lastRecv, p.online = now, true
	p.candidates, p.lastInit = nil, nil
}

// flush sends the payloads queued for p on its current session. An
// initiator with nothing queued sends an empty keepalive, which confirms
// the session to the responder (the responder may not send before that).
func (m *sessionManager) flush(p *peer, keepalive bool) {
	m.mu.Lock()
	kp, to := p.current, p.endpoint
	if kp == nil {
		m.mu.Unlock()
		return // the queue waits for the next session
	}
	q := p.queue
	p.queue = nil
	if len(q) > 0 || keepalive {
		p.lastSend = m.cfg.Now()
	}
	m.mu.Unlock()
	if len(q) == 0 && keepalive {
		m.sendTransport(kp, to, nil)
	}
	for _, b := range q {
		m.sendTransport(kp, to, b)
		wipe(b)
	}
}

// sendTransport seals p for kp into a pooled buffer and sends it.
func (m *sessionManager) sendTransport(kp *keypair, to netip.AddrPort, p []byte) error {
	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	pkt, err := kp.seal(*bp, p)
	if err != nil {
		return err
	}
	return m.cfg.Send(to, pkt)
}

var (
	errPayloadTooBig = fmt.Errorf("session: payload larger than %d bytes", maxTransportPayload)
	errNoEndpoint    = errors.New("session: no address known for this contact")
)

// send encrypts p for peer on the current session, or queues it and starts
// a handshake.
func (m *sessionManager) send(peerKey publicKey, p []byte) error {
	if len(p) > maxTransportPayload {
		return errPayloadTooBig
	}
	now := m.cfg.Now()
	m.mu.Lock()
	pr := m.peers[peerKey]
	if pr == nil || (!pr.endpoint.IsValid() && pr.current == nil) {
		m.mu.Unlock()
		return errNoEndpoint
	}
	kp, to := m.usableLocked(pr, now), pr.endpoint
	var init []byte
	if kp == nil {
		m.enqueueLocked(pr, p)
		init = m.maybeInitiateLocked(pr, now)
	} else {
		pr.lastSend = now
		if m.needsRekeyLocked(pr, kp, now) {
			init = m.maybeInitiateLocked(pr, now)
		}
	}
	var targets []netip.AddrPort
	if init != nil {
		targets = initTargetsLocked(pr)
	}
	m.mu.Unlock()
	m.sendInitiation(targets, init)
	if kp != nil {
		return m.sendTransport(kp, to, p)
	}
	return nil
}

// usableLocked is p's current keypair if it may still send.
func (m *sessionManager) usableLocked(p *peer, now time.Time) *keypair {
	kp := p.current
	if kp == nil || now.Sub(kp.created) >= m.cfg.RejectAfterTime || kp.sendCounter.Load() >= rejectAfterMessages {
		return nil
	}
	return kp
}

// needsRekeyLocked: forward secrecy asks for fresh ephemeral keys after
// RekeyAfterTime or RekeyAfterMessages. The responder waits RekeyTimeout
// longer, so the two sides rarely start at once.
func (m *sessionManager) needsRekeyLocked(p *peer, kp *keypair, now time.Time) bool {
	if p.hs != nil {
		return false
	}
	after := m.cfg.RekeyAfterTime
	if !kp.initiator {
		after += m.cfg.RekeyTimeout
	}
	return now.Sub(kp.created) >= after || kp.sendCounter.Load() >= m.cfg.RekeyAfterMessages
}

// enqueueLocked keeps a copy of b until a session is up; the oldest
// payload makes room when the queue is full.
func (m *sessionManager) enqueueLocked(p *peer, b []byte) {
	if len(p.queue) >= maxQueuedPerPeer {
		wipe(p.queue[0])
		p.queue = p.queue[1:]
		m.stats.queueDropped.Add(1)
	}
	p.queue = append(p.queue, bytes.Clone(b))
}

// maybeInitiateLocked starts a handshake unless one is pending, or we
// answered p's initiation recently and wait for its first packet.
func (m *sessionManager) maybeInitiateLocked(p *peer, now time.Time) []byte {
	if p.hs != nil || !p.endpoint.IsValid() {
		return nil
	}
	if p.next != nil && now.Sub(p.next.created) < m.cfg.RekeyTimeout {
		return nil
	}
	p.hsStarted = now
	return m.initiateLocked(p, now)
}

// initiateLocked builds a fresh initiation (new ephemeral key, index and
// timestamp) to p, replacing any pending one.
func (m *sessionManager) initiateLocked(p *peer, now time.Time) []byte {
	if p.hs != nil {
		delete(m.index, p.hs.localIndex)
		p.hs.erase()
		p.hs = nil
	}
	idx, err := m.newIndexLocked(indexEntry{peer: p})
	if err != nil {
		m.debug("initiate", p.endpoint, err)
		return nil
	}
	h := &sessionHandshake{}
	ts := nextTimestamp(now, p.lastSentTS)
	msg, err := h.createInitiation(m.cfg.Identity, p.key, idx, ts, m.cfg.Rand, &m.dh)
	if err != nil {
		delete(m.index, idx)
		m.debug("initiate", p.endpoint, err)
		return nil
	}
	p.lastSentTS = ts
	p.hs, p.hsLastSent = h, now
	if p.hsStarted.IsZero() {
		p.hsStarted = now
	}
	out := msg.appendTo(make([]byte, 0, initiationSize))
	m.setMACsLocked(p, out, initiationOffMAC1, initiationOffMAC2, now)
	p.lastInit = out
	return out
}

// initTargetsLocked is where an initiation to p goes: its endpoint and the
// candidate addresses, each once.
func initTargetsLocked(p *peer) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, 1+len(p.candidates))
	if p.endpoint.IsValid() {
		out = append(out, p.endpoint)
	}
	for _, c := range p.candidates {
		if c != p.endpoint {
			out = append(out, c)
		}
	}
	return out
}

// addCandidateLocked records addr as a candidate, newest first, and
// reports whether it is new.
func addCandidateLocked(p *peer, addr netip.AddrPort) bool {
	if i := slices.Index(p.candidates, addr); i >= 0 {
		copy(p.candidates[1:i+1], p.candidates[:i])
		p.candidates[0] = addr
		return false
	}
	if len(p.candidates) == maxCandidates {
		p.candidates = p.candidates[:maxCandidates-1]
	}
	p.candidates = slices.Insert(p.candidates, 0, addr)
	return true
}

// sendInitiation sends one initiation to every target.
func (m *sessionManager) sendInitiation(to []netip.AddrPort, b []byte) {
	for _, a := range to {
		m.sendRaw(a, b)
	}
}

// setEndpoint records an address where peer may be reached (from the
// rendezvous) and handshakes if there is no live session. A live session's
// address changes only with authenticated packets (roaming), never with
// what the DHT says: an old announcement must not divert a session.
func (m *sessionManager) setEndpoint(peerKey publicKey, addr netip.AddrPort) {
	if !m.cfg.Allowed(peerKey) {
		return // removed while a lookup ran: no session with a non-contact
	}
	now := m.cfg.Now()
	m.mu.Lock()
	p := m.peerLocked(peerKey)
	if p.online && m.usableLocked(p, now) != nil {
		m.mu.Unlock()
		return
	}
	isNew := addCandidateLocked(p, addr)
	if !p.endpoint.IsValid() {
		p.endpoint = addr
	}
	var init []byte
	var to []netip.AddrPort
	switch {
	case p.hs == nil:
		if init = m.maybeInitiateLocked(p, now); init != nil {
			to = initTargetsLocked(p)
		}
	case isNew && p.lastInit != nil:
		init, to = p.lastInit, []netip.AddrPort{addr}
	}
	m.mu.Unlock()
	m.sendInitiation(to, init)
}

// hasSession reports whether peer has a confirmed, unexpired session.
func (m *sessionManager) hasSession(peerKey publicKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[peerKey]
	return p != nil && m.usableLocked(p, m.cfg.Now()) != nil
}

// forget erases everything about peer: a removed contact.
func (m *sessionManager) forget(peerKey publicKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[peerKey]
	if p == nil {
		return
	}
	m.abandonLocked(p)
	m.retireLocked(p.current)
	m.retireLocked(p.previous)
	m.retireLocked(p.next)
	for _, b := range p.queue {
		wipe(b)
	}
	delete(m.peers, peerKey)
}

// run drives the timers until ctx ends, then erases every session: keys are
// never written to disk and do not outlive the process.
func (m *sessionManager) run(ctx context.Context) {
	t := time.NewTicker(m.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.eraseAll()
			return
		case <-t.C:
			m.tick()
		}
	}
}

func (m *sessionManager) eraseAll() {
	m.mu.Lock()
	keys := make([]publicKey, 0, len(m.peers))
	for k := range m.peers {
		keys = append(keys, k)
	}
	m.mu.Unlock()
	for _, k := range keys {
		m.forget(k)
	}
}

// tick runs the timers once: retransmit or give up pending handshakes,
// rekey busy sessions, erase expired keys.
func (m *sessionManager) tick() {
	now := m.cfg.Now()
	type out struct {
		to []netip.AddrPort
		b  []byte
	}
	var sends []out
	var keepalive []*peer
	var ended []publicKey
	m.mu.Lock()
	for _, p := range m.peers {
		if b := m.tickPeerLocked(p, now); b != nil {
			sends = append(sends, out{initTargetsLocked(p), b})
		}
		if m.endedLocked(p, now) {
			ended = append(ended, p.key)
		} else if p.online && now.Sub(p.lastSend) >= m.cfg.Keepalive {
			keepalive = append(keepalive, p)
		}
	}
	m.mu.Unlock()
	for _, s := range sends {
		m.sendInitiation(s.to, s.b)
	}
	for _, p := range keepalive {
		m.flush(p, true)
	}
	for _, k := range ended {
		m.ended(k)
	}
}

// established and ended report a peer's session state in the order it
// changed: evMu orders the callbacks, and ended re-checks under mu, so a
// packet that revived the peer after tick decided it had ended wins.
func (m *sessionManager) established(k publicKey, addr netip.AddrPort) {
	m.evMu.Lock()
	defer m.evMu.Unlock()
	m.cfg.Established(k, addr)
}

func (m *sessionManager) ended(k publicKey) {
	m.evMu.Lock()
	defer m.evMu.Unlock()
	m.mu.Lock()
	p := m.peers[k]
	still := p != nil && !p.online
	m.mu.Unlock()
	if still {
		m.cfg.Ended(k)
	}
}

// endedLocked reports, once, that p's session is over: its keys expired
// without a successor, or it has been silent for DeadAfter (keepalives
// make silence mean absence).
func (m *sessionManager) endedLocked(p *peer, now time.Time) bool {
	if !p.online || (p.current != nil && now.Sub(p.lastRecv) < m.cfg.DeadAfter) {
		return false
	}
	p.online = false
	return true
}

func (m *sessionManager) tickPeerLocked(p *peer, now time.Time) []byte {
	for _, kp := range []**keypair{&p.current, &p.previous, &p.next} {
		if *kp != nil && now.Sub((*kp).created) >= m.cfg.RejectAfterTime {
			m.retireLocked(*kp)
			*kp = nil
		}
	}
	if p.hasCookie && now.Sub(p.cookieTime) >= cookieRefreshTime {
		wipe(p.cookie[:])
		p.hasCookie = false
	}
	if p.hs != nil {
		if now.Sub(p.hsStarted) >= m.cfg.RekeyAttemptTime {
			m.abandonLocked(p)
			for _, b := range p.queue {
				wipe(b)
			}
			m.stats.queueDropped.Add(uint64(len(p.queue)))
			p.queue = nil
			return nil
		}
		if now.Sub(p.hsLastSent) >= m.cfg.RekeyTimeout {
			return m.initiateLocked(p, now)
		}
		return nil
	}
	if len(p.queue) > 0 && m.usableLocked(p, now) == nil {
		return m.maybeInitiateLocked(p, now)
	}
	// A session in use is rekeyed before it expires, even if only the
	// other side sends: keys older than RejectAfterTime are refused.
	if kp := p.current; kp != nil && now.Sub(p.lastSend) < m.cfg.RekeyAfterTime && m.needsRekeyLocked(p, kp, now) {
		return m.maybeInitiateLocked(p, now)
	}
	return nil
}
