// Session packets and the handshake steps (SPEC.md 4.2-4.4) of the
// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s sessions of SPEC.md section 4.
//
//	IKpsk2:
//	  <- s
//	  ...
//	  -> e, es, s, ss
//	  <- e, ee, se, psk
//
// Flow: an initiation (type 1) carries "-> e, es, s, ss" plus a TAI64N
// timestamp, and outside the Noise message a tag, the masked timestamp and
// mac1, all keyed by the pair's static-static secret (pairkeys.go). The
// responder finds the contact by the tag and checks mac1 and the timestamp
// (and, under load, mac2) before any Diffie-Hellman work, so a stranger
// gets nothing; it answers with a response (type 2) carrying
// "<- e, ee, se, psk". Split gives one transport key per direction;
// transport packets (type 4) carry a receiver index and a 64-bit counter
// (the nonce), checked against a replay window (replay.go) after they
// authenticate. A loaded responder sends a cookie reply (type 3) instead.
//
// This file holds the packet types, the wire constants, the parse and append
// functions, the handshake steps with their stages, and TAI64N. The rest of
// the session layer:
//
//	noise.go       the Noise core: hash, HKDF, CipherState, SymmetricState,
//	               HandshakeState, the IKpsk2 pattern
//	identity.go    the long-term key, its text form and the key file (4.1)
//	pairkeys.go    pair keys, tags and stamps: contacts told from strangers
//	               before any DH (4.3)
//	timestamps.go  the last timestamp accepted per contact, on disk (4.11)
//	cookie.go      mac1, mac2 and cookie replies under load (4.5)
//	keypair.go     transport keys: seal, open, wipe (4.6)
//	replay.go      the replay window (4.6)
//	session.go     the manager: dispatch, simultaneous open, rotation,
//	               sending (4.2, 4.6-4.8)
//	peer.go        what the manager holds per peer: pending initiation,
//	               keypairs, addresses, send queue, timers (4.6-4.8)
//	timers.go      retransmission, rekeying, expiry, keepalives (4.7)
//	pq.go          the post-quantum exchange, and which PSK a handshake
//	               mixes (4.12); pqfile.go keeps the PSKs on disk
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
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
	tagLen       = 8  // names the contact an initiation comes from
	counterLen   = 8  // transport counter, little-endian
	xNonceLen    = 24 // XChaCha20-Poly1305

	initiationOffSender    = 4
	initiationOffEphemeral = 8
	initiationOffStatic    = 40  // 32 + 16
	initiationOffTimestamp = 88  // 12 + 16
	initiationOffTag       = 116 // end of the Noise message
	initiationOffStamp     = 124
	initiationOffMAC1      = 136
	initiationOffMAC2      = 152
	initiationSize         = 168
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

	// Labels of the pair keys (SPEC.md 4.3): each key is the hash of its
	// label, the static-static secret, the sender's and the receiver's
	// public keys.
	labelMAC1   = "kadchat mac1 v2"
	labelTag    = "kadchat tag v1"
	labelStamp  = "kadchat stamp v1"
	labelCookie = "kadchat cookie v2"
)

var errMalformed = errors.New("session: malformed packet")

// initiationMsg is a parsed initiation; the Noise part is still sealed.
type initiationMsg struct {
	sender    uint32
	ephemeral [noiseDHLen]byte
	static    [noiseDHLen + noiseTagLen]byte
	timestamp [timestampLen + noiseTagLen]byte
	tag       [tagLen]byte
	stamp     [timestampLen]byte // the timestamp, masked
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
	copy(m.timestamp[:], b[initiationOffTimestamp:initiationOffTag])
	copy(m.tag[:], b[initiationOffTag:initiationOffStamp])
	copy(m.stamp[:], b[initiationOffStamp:initiationOffMAC1])
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
	dst = append(dst, m.tag[:]...)
	dst = append(dst, m.stamp[:]...)
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

// handshake is one run of IKpsk2 with one peer: the Noise HandshakeState
// it drives, plus what SPEC.md adds around it (the indices, the timestamp,
// and the stage that keeps our steps in order). The peer's timers and
// retries around it are peerInitiations (session.go).
type handshake struct {
	stage       handshakeStage
	noise       noiseHandshakeState // the Noise HandshakeState this run drives
	peer        publicKey           // the remote static key
	localIndex  uint32
	remoteIndex uint32
	timestamp   [timestampLen]byte // the initiator's, as received or sent
}

// zeroPSK is the psk slot of a handshake with a contact for whom no
// post-quantum secret exists yet (SPEC.md 4.3, 4.12).
var zeroPSK [noiseKeyLen]byte

func (h *handshake) advance(from, to handshakeStage) error {
	if h.stage != from {
		return fmt.Errorf("%w: %v -> %v from %v", errNoiseOrder, from, to, h.stage)
	}
	h.stage = to
	return nil
}

// createInitiation writes "-> e, es, s, ss" with the timestamp as payload.
// The fields outside the Noise message are left zero for the caller.
func (h *handshake) createInitiation(id *identity, peer publicKey, index uint32, ts [timestampLen]byte, rand io.Reader, dh *dhCounter) (initiationMsg, error) {
	if err := h.advance(stageZeroed, stageInitiationCreated); err != nil {
		return initiationMsg{}, err
	}
	rs := [noiseDHLen]byte(peer)
	h.noise.initialize(noiseHandshakeParams{pattern: &patternIKpsk2, initiator: true, prologue: []byte(sessionPrologue),
		s: &id.keys, rs: &rs, rand: rand, dh: dh})
	h.peer, h.localIndex, h.timestamp = peer, index, ts
	var buf [initiationOffTag - initiationOffEphemeral]byte
	// e, es, s, ss, then the encrypted timestamp.
	out, err := h.noise.writeMessage(buf[:0], ts[:])
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
func (h *handshake) consumeInitiation(id *identity, m *initiationMsg, dh *dhCounter) error {
	if err := h.advance(stageZeroed, stageInitiationConsumed); err != nil {
		return err
	}
	h.noise.initialize(noiseHandshakeParams{pattern: &patternIKpsk2, prologue: []byte(sessionPrologue),
		s: &id.keys, dh: dh})
	var msg [initiationOffTag - initiationOffEphemeral]byte
	copy(msg[:], m.ephemeral[:])
	copy(msg[noiseDHLen:], m.static[:])
	copy(msg[initiationOffTimestamp-initiationOffEphemeral:], m.timestamp[:])
	ts, err := h.noise.readMessage(h.timestamp[:0], msg[:])
	if err != nil || len(ts) != timestampLen {
		h.noise.erase()
		return fmt.Errorf("session: initiation: %w", errNoiseDecrypt)
	}
	h.peer, h.remoteIndex = h.noise.rs, m.sender
	return nil
}

// createResponse writes "<- e, ee, se, psk" with an empty payload; psk is
// the one the responder chose (SPEC.md 4.12).
func (h *handshake) createResponse(index uint32, rand io.Reader, psk [noiseKeyLen]byte) (responseMsg, error) {
	if err := h.advance(stageInitiationConsumed, stageResponseCreated); err != nil {
		return responseMsg{}, err
	}
	h.noise.rand, h.noise.psk = rand, psk
	h.localIndex = index
	var buf [responseOffMAC1 - responseOffEphemeral]byte
	out, err := h.noise.writeMessage(buf[:0], nil)
	if err != nil || len(out) != len(buf) {
		return responseMsg{}, fmt.Errorf("session: response: %v", err)
	}
	m := responseMsg{sender: index, receiver: h.remoteIndex}
	copy(m.ephemeral[:], out)
	copy(m.empty[:], out[noiseDHLen:])
	return m, nil
}

// errPSKRefused: a response authenticated only with a PSK we refuse (the
// zero PSK from a contact with whom a post-quantum secret is in use).
var errPSKRefused = errors.New("session: response: the contact's PSK is refused (SPEC.md 4.12)")

// consumeResponse reads "<- e, ee, se, psk" and its empty payload, trying
// each of psks (SPEC.md 4.12) and returning the index of the one the
// responder used. One of psks[accept:] that authenticates is reported as
// errPSKRefused and, like any failure, leaves the handshake as it was.
func (h *handshake) consumeResponse(m *responseMsg, psks [][noiseKeyLen]byte, accept int) (int, error) {
	if err := h.advance(stageInitiationCreated, stageResponseConsumed); err != nil {
		return -1, err
	}
	var msg [responseOffMAC1 - responseOffEphemeral]byte
	copy(msg[:], m.ephemeral[:])
	copy(msg[noiseDHLen:], m.empty[:])
	// readMessage changes the state as it goes; a forged response must not
	// spoil the pending handshake for the genuine one, so work on a copy.
	saved := h.noise
	defer saved.erase()
	_, which, err := h.noise.readMessageTrial(nil, msg[:], psks)
	if err == nil && which >= accept {
		err = errPSKRefused
	}
	if err != nil {
		h.noise.erase()
		h.noise, saved = saved, h.noise
		h.stage = stageInitiationCreated
		return which, fmt.Errorf("session: response: %w", err)
	}
	h.remoteIndex = m.sender
	return which, nil
}

// beginSession splits and erases the handshake: send and receive keys from
// this side's point of view, and the handshake hash the session's
// post-quantum exchange is bound to (SPEC.md 4.12).
func (h *handshake) beginSession() (send, recv [noiseKeyLen]byte, hash [noiseHashLen]byte, err error) {
	initiator := h.stage == stageResponseConsumed
	if h.stage != stageResponseConsumed && h.stage != stageResponseCreated {
		return send, recv, hash, fmt.Errorf("%w: split in stage %v", errNoiseOrder, h.stage)
	}
	h.stage = stageDone
	k1, k2, hash := h.noise.splitAndErase()
	if initiator {
		return k1, k2, hash, nil
	}
	return k2, k1, hash, nil
}

func (h *handshake) erase() {
	h.noise.erase()
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
