// The Noise core (SPEC.md 4.3, 4.4): the Noise Protocol Framework,
// revision 34, sections 4 (crypto functions), 5 (processing rules) and 9
// (the psk modifier), for the 25519_ChaChaPoly_BLAKE2s suite.
//
// Flow: a noiseHandshakeState is initialized with a pattern, prologue and
// keys; writeMessage and readMessage walk the pattern's tokens, each "e",
// "s", "ee", "es", "se", "ss" or "psk" driving the symmetricState (mixHash,
// mixKey, encryptAndHash, ...), which drives the cipherState. splitAndErase
// ends it with the two transport keys and wipes the rest. Only the IKpsk2
// pattern is compiled in; the vector tests add NN, XX and IK.
package main

import (
	"crypto/ecdh"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

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
// (RFC 2104 with BLAKE2s-256). It is written out rather than built on
// crypto/hmac so that the padded key, which is the chaining key XOR a
// constant, is wiped (SPEC.md 4.9): crypto/hmac keeps its pads in heap
// memory it never clears. (Speed is no reason: with crypto/hmac
// BenchmarkHandshake runs as fast, at 557 allocations instead of 285.)
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
// patternIKpsk2 is the pattern kadchat uses; the vector tests add NN, XX and IK.
var patternIKpsk2 = noisePattern{name: "IKpsk2", preResponderS: true, psk: true, messages: [][]noiseToken{
	{tokE, tokES, tokS, tokSS},
	{tokE, tokEE, tokSE, tokPSK},
}}

// noiseSuite names the DH, cipher and hash functions of every protocol here.
const noiseSuite = "25519_ChaChaPoly_BLAKE2s"

// x25519 is the only curve in use.
var x25519 = ecdh.X25519()

// dhKeys is an X25519 key pair.
type dhKeys struct {
	priv *ecdh.PrivateKey
	pub  [noiseDHLen]byte
}

// newDHKeys makes a key pair from 32 private bytes (clamped by X25519).
// ecdh's own GenerateKey may ignore its reader, so we read the bytes
// ourselves: test vectors fix the ephemeral keys through rand.
func newDHKeys(private []byte) (dhKeys, error) {
	priv, err := x25519.NewPrivateKey(private)
	if err != nil {
		return dhKeys{}, fmt.Errorf("noise: %w", err)
	}
	var k dhKeys
	k.priv = priv
	copy(k.pub[:], priv.PublicKey().Bytes())
	return k, nil
}

func generateDHKeys(rand io.Reader) (dhKeys, error) {
	var b [noiseDHLen]byte
	defer wipe(b[:])
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return dhKeys{}, fmt.Errorf("noise: generate key: %w", err)
	}
	return newDHKeys(b[:])
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

// noiseHandshakeState is the Noise HandshakeState.
type noiseHandshakeState struct {
	ss        symmetricState
	pattern   *noisePattern
	initiator bool
	s, e      dhKeys
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

// noiseHandshakeParams configures initialize; rs is required when the pattern
// pre-knows the responder's static key and we are the initiator.
type noiseHandshakeParams struct {
	pattern   *noisePattern
	initiator bool
	prologue  []byte
	s         *dhKeys
	rs        *[noiseDHLen]byte
	psk       [noiseKeyLen]byte
	rand      io.Reader
	dh        *dhCounter
}

func noiseProtocolName(pat *noisePattern) string {
	return "Noise_" + pat.name + "_" + noiseSuite
}

// initialize is the Noise Initialize(): protocol name, prologue, pre-messages.
func (hs *noiseHandshakeState) initialize(params noiseHandshakeParams) {
	*hs = noiseHandshakeState{pattern: params.pattern, initiator: params.initiator, psk: params.psk, rand: params.rand, dh: params.dh}
	hs.ss.initializeSymmetric(noiseProtocolName(params.pattern))
	hs.ss.mixHash(params.prologue)
	if params.s != nil {
		hs.s, hs.hasS = *params.s, true
	}
	if params.rs != nil {
		hs.rs, hs.hasRS = *params.rs, true
	}
	if params.pattern.preResponderS {
		// "<- s": both sides hash the responder's static public key.
		if hs.initiator {
			hs.ss.mixHash(hs.rs[:])
		} else {
			hs.ss.mixHash(hs.s.pub[:])
		}
	}
}

// myTurn reports whether this side writes the next message.
func (hs *noiseHandshakeState) myTurn() bool { return (hs.msg%2 == 0) == hs.initiator }

func (hs *noiseHandshakeState) finished() bool { return hs.msg >= len(hs.pattern.messages) }

// writeMessage is the Noise WriteMessage: it appends the next handshake
// message carrying payload to dst.
func (hs *noiseHandshakeState) writeMessage(dst, payload []byte) ([]byte, error) {
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

func (hs *noiseHandshakeState) writeToken(dst []byte, tok noiseToken) ([]byte, error) {
	switch tok {
	case tokE:
		e, err := generateDHKeys(hs.rand)
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
func (hs *noiseHandshakeState) readMessage(dst, msg []byte) ([]byte, error) {
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

// readMessageTrial is readMessage for a message whose last token is "psk",
// when the reader holds several candidate PSKs (SPEC.md 4.12): the tokens
// before "psk", with their Diffie-Hellman work, run once; then each
// candidate in turn costs one HKDF and one AEAD open of the payload, and
// the first that authenticates wins. It returns the payload and the index
// of that candidate. On error the state is spent: callers work on a copy.
func (hs *noiseHandshakeState) readMessageTrial(dst, msg []byte, psks [][noiseKeyLen]byte) ([]byte, int, error) {
	if hs.finished() || hs.myTurn() {
		return nil, -1, errNoiseOrder
	}
	tokens := hs.pattern.messages[hs.msg]
	if len(tokens) == 0 || tokens[len(tokens)-1] != tokPSK {
		return nil, -1, errNoiseOrder
	}
	for _, tok := range tokens[:len(tokens)-1] {
		var err error
		if msg, err = hs.readToken(msg, tok); err != nil {
			return nil, -1, err
		}
	}
	for i, psk := range psks {
		try := *hs
		try.psk = psk
		try.ss.mixKeyAndHash(try.psk[:]) // psk
		out, err := try.ss.decryptAndHash(dst, msg)
		if err == nil {
			hs.erase()
			*hs = try
			hs.msg++
			return out, i, nil
		}
		wipe(try.ss.ck[:])
		try.ss.cs.destroy()
		wipe(try.psk[:])
	}
	return nil, -1, errNoiseDecrypt
}

func (hs *noiseHandshakeState) readToken(msg []byte, tok noiseToken) ([]byte, error) {
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
func (hs *noiseHandshakeState) mixDH(tok noiseToken) error {
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
func (hs *noiseHandshakeState) splitAndErase() (k1, k2 [noiseKeyLen]byte, h [noiseHashLen]byte) {
	k1, k2 = hs.ss.split()
	h = hs.ss.h
	hs.erase()
	return k1, k2, h
}

// erase forgets the ephemeral private key and all derived secrets. The
// ecdh.PrivateKey is dropped (its bytes are not reachable for wiping);
// everything this struct owns is zeroed.
func (hs *noiseHandshakeState) erase() {
	hs.e = dhKeys{}
	hs.hasE = false
	wipe(hs.ss.ck[:])
	hs.ss.cs.destroy()
	wipe(hs.psk[:])
}
