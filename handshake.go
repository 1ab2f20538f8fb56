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
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

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

// noiseHash is HASH(data...) = BLAKE2s-256 of the concatenation.
func noiseHash(data ...[]byte) [noiseHashLen]byte {
	h, _ := blake2s.New256(nil)
	for _, d := range data {
		h.Write(d)
	}
	var out [noiseHashLen]byte
	h.Sum(out[:0])
	return out
}

func newBLAKE2s() hash.Hash { h, _ := blake2s.New256(nil); return h }

// hmacHash is HMAC-HASH(key, data...) as Noise section 4.3 defines it.
func hmacHash(key []byte, data ...[]byte) [noiseHashLen]byte {
	m := hmac.New(newBLAKE2s, key)
	for _, d := range data {
		m.Write(d)
	}
	var out [noiseHashLen]byte
	m.Sum(out[:0])
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

// transportSeal and transportOpen are the Noise transport CipherState
// operations for the vector tests; sessions use keypair (below), which
// is the same computation without allocations.
func transportSeal(aead cipher.AEAD, n uint64, dst, plaintext []byte) []byte {
	nonce := noiseNonce(n)
	return aead.Seal(dst, nonce[:], plaintext, nil)
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
