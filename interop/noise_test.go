// Noise interop: a kadchat peer built on flynn/noise, framed only from
// SPEC.md sections 4 and 5, completes a session with the running binary,
// runs the post-quantum exchange of 4.12 in it, completes a second session
// with the PSK it derived and exchanges transport packets both ways; a
// single changed byte in any packet makes that packet count for nothing.
// The Noise messages are flynn's; the fields around them (tag, stamp, mac1,
// cookie replies) are keyed by the pair's static-static secret, so a
// stranger's flood draws nothing.
//
// Flow: the test learns the binary's key (/id), adds the client as a contact
// (/add), then sends an initiation (flynn's IKpsk2 first message inside the
// SPEC's framing, with mac1) and reads the response; it sends an ML-KEM-768
// key in two transport packets, reads the ciphertext and derives the PSK;
// it shakes hands again with that PSK and sends one chat data frame in a
// transport packet; the binary shows the message and answers with an ack
// frame in a transport packet; when it quits it says goodbye in two
// transport packets. Before each genuine packet it sends every one-byte
// corruption of it and checks the binary stays silent; every corruption of
// the binary's packets must fail the client's checks. A client that skips
// the exchange (a version-1 client) still gets its messages through.
package interop

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flynn/noise"
	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// Session layer wire constants, SPEC.md section 4.
const (
	sessionPrologue = "kadchat session v1"
	labelMAC1       = "kadchat mac1 v2"
	labelTag        = "kadchat tag v1"
	labelStamp      = "kadchat stamp v1"
	labelCookie     = "kadchat cookie v2"

	packetInitiation  = 1
	packetResponse    = 2
	packetCookieReply = 3
	packetTransport   = 4

	headerLen  = 4 // type, then three zero bytes
	macLen     = 16
	tagLen     = 16
	pskLen     = 32
	tai64nLen  = 12
	counterLen = 8
	sessTagLen = 8

	initiationOffSender    = 4
	initiationOffEphemeral = 8
	initiationOffTag       = 116
	initiationOffStamp     = 124
	initiationOffMAC1      = 136
	initiationOffMAC2      = 152
	initiationSize         = 168
	responseOffSender      = 4
	responseOffReceiver    = 8
	responseOffEphemeral   = 12
	responseOffMAC1        = 60
	responseOffMAC2        = 76
	responseSize           = 92
	cookieOffReceiver      = 4
	cookieOffNonce         = 8
	cookieOffCookie        = 32
	cookieReplySize        = 64
	transportOffReceiver   = 4
	transportOffCounter    = 8
	transportOffData       = 16

	goodbye       = 0x00 // the session layer's goodbye: this one byte is the whole payload
	goodbyeSize   = 33   // header 16, the encrypted byte, tag 16
	goodbyeCopies = 2
)

// Chat frames, SPEC.md section 5.
const (
	chatFrameData     = 0x01
	chatFrameAck      = 0x02
	chatDataHeaderLen = 19 // type || stream 8 || seq 8 || index || count
	chatAckHeaderLen  = 17 // type || stream 8 || cumulative seq 8
)

const (
	// silence is how long the binary gets to answer a packet it must drop;
	// a genuine packet is answered on loopback in a few milliseconds.
	silence = 300 * time.Millisecond
	// answerTimeout bounds waiting for a packet the binary must send.
	answerTimeout = 5 * time.Second
)

// noiseClient is the test's side of one session.
type noiseClient struct {
	t      *testing.T
	conn   *net.UDPConn
	to     netip.AddrPort
	static noise.DHKey
	peer   []byte // the binary's static public key
	hs     *noise.HandshakeState

	local, remote uint32       // our index and the binary's
	send, recv    noise.Cipher // transport keys, nonces managed by hand
	sendCounter   uint64
	psk           []byte // the psk slot of our next initiation; nil: zeros
}

func newNoiseClient(t *testing.T, to netip.AddrPort, peer []byte) *noiseClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	static, err := noise.DH25519.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := &noiseClient{t: t, conn: conn, to: to, static: static, peer: peer}
	var idx [4]byte
	rand.Read(idx[:])
	c.local = binary.LittleEndian.Uint32(idx[:])
	return c
}

var suite = noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashBLAKE2s)

// initiation is a fresh first handshake message to the binary.
func (c *noiseClient) initiation(now time.Time) []byte {
	return c.initiationTS(c.local, tai64n(now))
}

// initiationTS is a fresh first handshake message with the given sender
// index and timestamp.
func (c *noiseClient) initiationTS(sender uint32, ts [tai64nLen]byte) []byte {
	c.t.Helper()
	psk := c.psk
	if psk == nil {
		psk = make([]byte, pskLen)
	}
	hs, err := newHandshakePSK(true, c.static, c.peer, rand.Reader, psk)
	if err != nil {
		c.t.Fatal(err)
	}
	c.hs = hs
	b, err := writeInitiation(hs, sender, ts, pairKeys(c.t, c.static, c.peer))
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

// pairDir holds the keys of one direction of a pair, SPEC.md 4.3.
type pairDir struct{ mac1, tag, stamp, cookie [32]byte }

// pairKeys derives the keys of the direction from self to peer from the
// static-static secret.
func pairKeys(t testing.TB, self noise.DHKey, peer []byte) pairDir {
	s, err := curve25519.X25519(self.Private, peer)
	if err != nil {
		t.Fatal(err)
	}
	k := func(label string) [32]byte {
		return blake2s.Sum256(slices.Concat([]byte(label), s, self.Public, peer))
	}
	return pairDir{mac1: k(labelMAC1), tag: k(labelTag), stamp: k(labelStamp), cookie: k(labelCookie)}
}

// peerKeys derives the keys of the direction from peer to self.
func peerKeys(t testing.TB, self noise.DHKey, peer []byte) pairDir {
	s, err := curve25519.X25519(self.Private, peer)
	if err != nil {
		t.Fatal(err)
	}
	k := func(label string) [32]byte {
		return blake2s.Sum256(slices.Concat([]byte(label), s, peer, self.Public))
	}
	return pairDir{mac1: k(labelMAC1), tag: k(labelTag), stamp: k(labelStamp), cookie: k(labelCookie)}
}

// newHandshake is flynn's IKpsk2 with SPEC.md 4.3's parameters and the zero
// PSK. rng supplies the ephemeral private key (32 bytes).
func newHandshake(initiator bool, static noise.DHKey, peer []byte, rng io.Reader) (*noise.HandshakeState, error) {
	return newHandshakePSK(initiator, static, peer, rng, make([]byte, pskLen))
}

// newHandshakePSK is newHandshake with psk in the psk slot (SPEC.md 4.12).
func newHandshakePSK(initiator bool, static noise.DHKey, peer []byte, rng io.Reader, psk []byte) (*noise.HandshakeState, error) {
	return noise.NewHandshakeState(noise.Config{
		CipherSuite: suite, Random: rng, Pattern: noise.HandshakeIK, Initiator: initiator,
		Prologue: []byte(sessionPrologue), PresharedKey: psk, PresharedKeyPlacement: 2,
		StaticKeypair: static, PeerStatic: peer,
	})
}

// writeInitiation frames Noise message 1 ("-> e, es, s, ss" with the
// timestamp as payload) as SPEC.md 4.3's initiation, with the tag, stamp
// and mac1 of the initiator-to-responder keys k, mac2 zero (no cookie).
func writeInitiation(hs *noise.HandshakeState, sender uint32, ts [tai64nLen]byte, k pairDir) ([]byte, error) {
	b := []byte{packetInitiation, 0, 0, 0}
	b = binary.LittleEndian.AppendUint32(b, sender)
	b, _, _, err := hs.WriteMessage(b, ts[:])
	if err != nil {
		return nil, err
	}
	if len(b) != initiationOffTag {
		return nil, fmt.Errorf("initiation body is %d bytes, SPEC says the tag starts at %d", len(b), initiationOffTag)
	}
	tag := keyedMAC(k.tag, binary.BigEndian.AppendUint64(nil, tai64nEpoch(ts)))
	b = append(b, tag[:sessTagLen]...)
	b = append(b, stampOf(k, b[initiationOffEphemeral:initiationOffEphemeral+32], ts)...)
	mac1 := keyedMAC(k.mac1, b)
	b = append(b, mac1[:]...)
	return append(b, make([]byte, macLen)...), nil
}

// tai64nEpoch is the hour of a TAI64N label, SPEC.md 4.3.
func tai64nEpoch(ts [tai64nLen]byte) uint64 {
	return (binary.BigEndian.Uint64(ts[:8]) - (1<<62 + 10)) / 3600
}

// stampOf masks ts with the pad of the ephemeral key.
func stampOf(k pairDir, ephemeral []byte, ts [tai64nLen]byte) []byte {
	pad := keyedMAC(k.stamp, ephemeral)
	out := make([]byte, tai64nLen)
	for i := range out {
		out[i] = ts[i] ^ pad[i]
	}
	return out
}

// writeResponse is the responder's side, used only to check SPEC.md's
// vectors: it reads an initiation and frames Noise message 2, with the
// mac1 of the responder-to-initiator keys k.
func writeResponse(hs *noise.HandshakeState, sender uint32, init []byte, k pairDir) (resp []byte, ts []byte, send, recv *noise.CipherState, err error) {
	ts, _, _, err = hs.ReadMessage(nil, init[initiationOffEphemeral:initiationOffTag])
	if err != nil {
		return nil, nil, nil, nil, err
	}
	b := []byte{packetResponse, 0, 0, 0}
	b = binary.LittleEndian.AppendUint32(b, sender)
	b = append(b, init[initiationOffSender:initiationOffEphemeral]...)
	b, recv, send, err = hs.WriteMessage(b, nil)
	if err != nil || len(b) != responseOffMAC1 {
		return nil, nil, nil, nil, fmt.Errorf("response body of %d bytes: %v", len(b), err)
	}
	mac1 := keyedMAC(k.mac1, b)
	b = append(b, mac1[:]...)
	return append(b, make([]byte, macLen)...), ts, send, recv, nil
}

// consumeResponse checks a response and, if it is genuine, derives the
// transport keys. On error nothing changes, so a corrupted copy can be tried
// before the real one.
func (c *noiseClient) consumeResponse(b []byte) error {
	if len(b) != responseSize || !bytes.Equal(b[:headerLen], []byte{packetResponse, 0, 0, 0}) {
		return errors.New("not a response")
	}
	if binary.LittleEndian.Uint32(b[responseOffReceiver:]) != c.local {
		return errors.New("response to another index")
	}
	mac1 := keyedMAC(peerKeys(c.t, c.static, c.peer).mac1, b[:responseOffMAC1])
	if !bytes.Equal(mac1[:], b[responseOffMAC1:responseOffMAC2]) {
		return errors.New("bad mac1")
	}
	payload, cs1, cs2, err := c.hs.ReadMessage(nil, b[responseOffEphemeral:responseOffMAC1])
	if err != nil {
		return err
	}
	if len(payload) != 0 || cs1 == nil {
		return errors.New("response payload not empty or handshake not over")
	}
	// Split: the first key is the initiator's sending key.
	c.remote = binary.LittleEndian.Uint32(b[responseOffSender:])
	c.send, c.recv = cs1.Cipher(), cs2.Cipher()
	c.sendCounter = 0
	return nil
}

// transport seals p in the next transport packet.
func (c *noiseClient) transport(p []byte) []byte {
	b := []byte{packetTransport, 0, 0, 0}
	b = binary.LittleEndian.AppendUint32(b, c.remote)
	b = binary.LittleEndian.AppendUint64(b, c.sendCounter)
	b = c.send.Encrypt(b, c.sendCounter, nil, p)
	c.sendCounter++
	return b
}

// openTransport checks and decrypts a transport packet from the binary.
func (c *noiseClient) openTransport(b []byte) ([]byte, error) {
	if len(b) < transportOffData+tagLen || !bytes.Equal(b[:headerLen], []byte{packetTransport, 0, 0, 0}) {
		return nil, errors.New("not a transport packet")
	}
	if binary.LittleEndian.Uint32(b[transportOffReceiver:]) != c.local {
		return nil, errors.New("transport packet for another index")
	}
	n := binary.LittleEndian.Uint64(b[transportOffCounter:])
	return c.recv.Decrypt(nil, n, nil, b[transportOffData:])
}

func (c *noiseClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(b, c.to); err != nil {
		c.t.Fatal(err)
	}
}

// read returns the next datagram within d, or nil. A transport packet
// that carries a prekey frame (SPEC.md 8.3: kadchat sends its prekey status,
// unasked, when a session starts and then every few seconds while it lacks
// the peer's prekeys) is skipped: it answers nothing the test sent, and a
// client that does not use drops ignores it as any frame it does not know.
func (c *noiseClient) read(d time.Duration) []byte {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 2048)
		c.conn.SetReadDeadline(deadline)
		n, _, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			c.t.Fatal(err)
		}
		if !c.isPrekeyFrame(buf[:n]) {
			return buf[:n]
		}
	}
}

// Prekey frame types (SPEC.md 8.3).
const (
	chatFramePrekeys      = 0x10
	chatFramePrekeyStatus = 0x11
)

// isPrekeyFrame reports whether b is a transport packet of our session
// whose payload is a prekey frame.
func (c *noiseClient) isPrekeyFrame(b []byte) bool {
	if c.recv == nil {
		return false
	}
	p, err := c.openTransport(b)
	return err == nil && len(p) > 0 && (p[0] == chatFramePrekeys || p[0] == chatFramePrekeyStatus)
}

// sendCorruptions sends b with each byte in [0, upto) changed in turn, then
// checks that none of them drew an answer. upto excludes only what SPEC.md
// says a receiver does not check (mac2 when it is not under load).
func (c *noiseClient) sendCorruptions(p *kadchat, what string, b []byte, upto int) {
	c.t.Helper()
	for i := range upto {
		bad := bytes.Clone(b)
		bad[i] ^= 0x01
		c.write(bad)
	}
	if got := c.read(silence); got != nil {
		p.fatalf("a corrupted %s drew an answer: % x", what, got)
	}
}

// checkCorruptions applies each one-byte corruption of b to check, which
// must reject every one.
func checkCorruptions(t *testing.T, what string, b []byte, upto int, check func([]byte) error) {
	t.Helper()
	for i := range upto {
		bad := bytes.Clone(b)
		bad[i] ^= 0x01
		if check(bad) == nil {
			t.Fatalf("%s with byte %d changed was accepted", what, i)
		}
	}
}

func TestNoiseSessionWithFlynn(t *testing.T) {
	k := startKadchat(t)
	f := k.run("/id", "id")
	peerKey, err := parseKeyText(f[1])
	if err != nil {
		k.fatalf("/id printed %q: %v", f[1], err)
	}
	c := newNoiseClient(t, k.addr, peerKey[:])
	if line := k.try("/add flynn "+keyText([32]byte(c.static.Public)), "* added"); !strings.HasPrefix(line, "* added") {
		k.fatalf("/add: %s", line)
	}

	c.handshake(k)
	c.pqExchange(k)
	init := c.handshake(k) // with the PSK: the binary answers with it
	pkt := c.messageToKadchat(k)

	// Replays are dropped: the same transport packet, the same initiation.
	c.write(pkt)
	c.write(init)
	if got := c.read(silence); got != nil {
		k.fatalf("a replayed packet drew an answer: % x", got)
	}

	c.messageFromKadchat(k)
	c.goodbyeFromKadchat(k)
}

// goodbyeFromKadchat has the binary quit and checks that it says goodbye
// on the session (SPEC.md 4.6): two 33-byte transport packets with
// consecutive counters whose payload is the single byte 00.
func (c *noiseClient) goodbyeFromKadchat(k *kadchat) {
	c.t.Helper()
	k.send("/quit")
	var counters []uint64
	for range maxTransportReads {
		pkt := c.read(answerTimeout)
		if pkt == nil {
			break
		}
		p, err := c.openTransport(pkt)
		if err != nil {
			k.fatalf("transport packet % x: %v", pkt, err)
		}
		if len(p) > 0 && p[0] == goodbye {
			if len(p) != 1 || len(pkt) != goodbyeSize {
				k.fatalf("goodbye % x: payload % x, want the one byte 00 in %d bytes", pkt, p, goodbyeSize)
			}
			counters = append(counters, binary.LittleEndian.Uint64(pkt[transportOffCounter:]))
			if len(counters) == goodbyeCopies {
				break
			}
		}
	}
	if len(counters) != goodbyeCopies || counters[1] != counters[0]+1 {
		k.fatalf("after /quit: goodbyes with counters %v, want %d consecutive ones", counters, goodbyeCopies)
	}
}

// handshake sends every corruption of an initiation, then the initiation,
// and completes the handshake with the response; it returns the initiation.
func (c *noiseClient) handshake(k *kadchat) []byte {
	c.t.Helper()
	init := c.initiation(time.Now())
	c.sendCorruptions(k, "initiation", init, initiationOffMAC2)
	c.write(init)
	resp := c.read(answerTimeout)
	if resp == nil {
		k.fatalf("no response to the initiation")
	}
	checkCorruptions(c.t, "response", resp, responseOffMAC2, c.consumeResponse)
	if err := c.consumeResponse(resp); err != nil {
		k.fatalf("response % x: %v", resp, err)
	}
	return init
}

// messageToKadchat sends one chat message in a transport packet (after
// every corruption of that packet) and checks the binary shows it and
// acknowledges it. It returns the packet.
func (c *noiseClient) messageToKadchat(k *kadchat) []byte {
	c.t.Helper()
	text := uniqueText(c.t, "hello-over-noise")
	stream := newStreamID(c.t)
	data := append([]byte{chatFrameData}, stream[:]...)
	data = binary.BigEndian.AppendUint64(data, 1) // the stream's first message
	data = append(data, 0, 1)                     // fragment 0 of 1
	data = append(data, text...)
	pkt := c.transport(data)
	c.sendCorruptions(k, "transport packet", pkt, len(pkt))
	c.write(pkt)
	c.t.Logf("kadchat shows %q", k.expectContaining(text))

	ackPkt, ack := c.readPayload(k, answerTimeout, "an ack for the data frame")
	if len(ack) < chatAckHeaderLen || ack[0] != chatFrameAck || !bytes.Equal(ack[1:9], stream[:]) ||
		binary.BigEndian.Uint64(ack[9:17]) != 1 {
		k.fatalf("got frame % x, want an ack of stream % x up to 1", ack, stream)
	}
	checkCorruptions(c.t, "transport packet from kadchat", ackPkt, len(ackPkt), c.openOnly)
	return pkt
}

// messageFromKadchat has the binary send a message over the session, checks
// it, and acknowledges it: every corrupted ack is ignored, the real one
// makes the binary report the message delivered.
func (c *noiseClient) messageFromKadchat(k *kadchat) {
	c.t.Helper()
	text := uniqueText(c.t, "reply-over-noise")
	k.send("/msg flynn " + text)
	var frame, pkt []byte
	for range maxTransportReads {
		if pkt = c.read(answerTimeout); pkt == nil {
			k.fatalf("no transport packet after /msg")
		}
		var err error
		if frame, err = c.openTransport(pkt); err != nil {
			k.fatalf("transport packet % x: %v", pkt, err)
		}
		if len(frame) > 0 { // an empty payload is a keepalive
			break
		}
	}
	if len(frame) < chatDataHeaderLen || frame[0] != chatFrameData || binary.BigEndian.Uint64(frame[9:17]) != 1 ||
		frame[17] != 0 || frame[18] != 1 || string(frame[chatDataHeaderLen:]) != text {
		k.fatalf("got frame % x, want data seq 1 fragment 0 of 1 %q", frame, text)
	}
	checkCorruptions(c.t, "data packet from kadchat", pkt, len(pkt), c.openOnly)

	ack := append([]byte{chatFrameAck}, frame[1:9]...)
	ack = binary.BigEndian.AppendUint64(ack, 1)
	ackPkt := c.transport(ack)
	for i := range ackPkt {
		bad := bytes.Clone(ackPkt)
		bad[i] ^= 0x01
		c.write(bad)
	}
	time.Sleep(silence) // the binary may retransmit meanwhile: only stdout tells
	if line, ok := k.seen("* delivered"); ok {
		k.fatalf("a corrupted ack was taken: %q", line)
	}
	c.write(ackPkt)
	k.expect("* delivered")
}

// maxTransportReads bounds the packets read while waiting for a data frame.
const maxTransportReads = 10

// readPayload reads transport packets from the binary until one carries a
// payload (an empty one is a keepalive), within d each, and returns it.
func (c *noiseClient) readPayload(k *kadchat, d time.Duration, what string) (pkt, payload []byte) {
	c.t.Helper()
	for range maxTransportReads {
		if pkt = c.read(d); pkt == nil {
			break
		}
		p, err := c.openTransport(pkt)
		if err != nil {
			k.fatalf("transport packet % x: %v", pkt, err)
		}
		if len(p) > 0 {
			return pkt, p
		}
	}
	k.fatalf("no transport packet with %s", what)
	return nil, nil
}

func (c *noiseClient) openOnly(b []byte) error {
	_, err := c.openTransport(b)
	return err
}

// newStreamID is a stream id as SPEC.md 5.4 makes them: Unix milliseconds
// shifted left by 20, or 20 random bits.
func newStreamID(t *testing.T) [8]byte {
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	id := uint64(time.Now().UnixMilli())<<20 | uint64(binary.BigEndian.Uint32(r[:])&(1<<20-1))
	return [8]byte(binary.BigEndian.AppendUint64(nil, id))
}

// keyedMAC is SPEC.md's MAC(key, data): keyed BLAKE2s with a 16-byte output.
func keyedMAC(key [32]byte, data []byte) [macLen]byte { return keyedMACKey(key[:], data) }

// keyedMACKey is MAC with a key of any length up to 32 bytes (a cookie is 16).
func keyedMACKey(key []byte, data []byte) [macLen]byte {
	h, err := blake2s.New128(key)
	if err != nil {
		panic(err)
	}
	h.Write(data)
	var out [macLen]byte
	h.Sum(out[:0])
	return out
}

// tai64n is the TAI64N label of t: big-endian 2^62 + 10 + seconds, then
// big-endian nanoseconds rounded down to a multiple of 2^24.
func tai64n(t time.Time) [tai64nLen]byte {
	var b [tai64nLen]byte
	binary.BigEndian.PutUint64(b[:], 1<<62+10+uint64(t.Unix()))
	binary.BigEndian.PutUint32(b[8:], uint32(t.Nanosecond())&^(1<<24-1))
	return b
}

// expectContaining waits for a stdout line containing s.
func (p *kadchat) expectContaining(s string) string {
	p.t.Helper()
	return p.expectFunc(fmt.Sprintf("a line containing %q", s), func(l string) bool { return strings.Contains(l, s) })
}

// TestNoiseStrangerFloodSilent: a stranger who knows the binary's key
// floods it with initiations, valid in every part a stranger can compute
// (flynn's Noise message to the binary's key; mac1 keyed by that key, as
// SPEC version 1 had it; tag, stamp and mac1 from the stranger's own pair
// keys), and with responses: it gets nothing back, and a contact's
// initiation during the flood is answered at once, with no cookie round.
func TestNoiseStrangerFloodSilent(t *testing.T) {
	k := startKadchat(t)
	peerKey, err := parseKeyText(k.run("/id", "id")[1])
	if err != nil {
		k.fatalf("/id: %v", err)
	}
	c := newNoiseClient(t, k.addr, peerKey[:])
	k.try("/add flynn "+keyText([32]byte(c.static.Public)), "* added")

	stranger := newNoiseClient(t, k.addr, peerKey[:])
	for i := range loadFlood {
		init := stranger.initiationTS(uint32(i), tai64n(time.Now()))
		stranger.write(init)
		old := bytes.Clone(init)
		v1 := blake2s.Sum256(append([]byte("kadchat mac1 v1"), peerKey[:]...))
		mac := keyedMAC(v1, old[:initiationOffMAC1])
		copy(old[initiationOffMAC1:], mac[:])
		stranger.write(old)
		resp := make([]byte, responseSize)
		resp[0] = packetResponse
		binary.LittleEndian.PutUint32(resp[responseOffReceiver:], uint32(i))
		mac = keyedMAC(v1, resp[:responseOffMAC1])
		copy(resp[responseOffMAC1:], mac[:])
		stranger.write(resp)
	}
	c.write(c.initiation(time.Now()))
	resp := c.read(answerTimeout)
	if resp == nil || resp[0] != packetResponse {
		k.fatalf("a contact's initiation during a stranger's flood drew % x, want a response", resp)
	}
	if err := c.consumeResponse(resp); err != nil {
		k.fatalf("response % x: %v", resp, err)
	}
	if got := stranger.read(silence); got != nil {
		k.fatalf("the stranger's flood drew an answer: % x", got)
	}
}

// TestNoiseCookieUnderLoad: once a contact's flood of fresh initiations puts
// the binary under load (SPEC.md 4.5), the contact's next initiation without
// mac2 gets a cookie reply; the client opens the cookie with the pair's
// cookie key, and its next initiation, with mac2, completes the handshake.
func TestNoiseCookieUnderLoad(t *testing.T) {
	k := startKadchat(t)
	peerKey, err := parseKeyText(k.run("/id", "id")[1])
	if err != nil {
		k.fatalf("/id: %v", err)
	}
	c := newNoiseClient(t, k.addr, peerKey[:])
	k.try("/add flynn "+keyText([32]byte(c.static.Public)), "* added")

	// Only a contact's messages count towards load, each with a newer
	// timestamp than the last.
	ts := tai64n(time.Now())
	sent := map[uint32][]byte{}
	for i := range loadFlood {
		ts = nextTAI64N(ts)
		init := c.initiationTS(uint32(i), ts)
		sent[uint32(i)] = init
		c.write(init)
	}
	var reply, init []byte
	for range 2 * loadFlood { // responses, then cookie replies
		b := c.read(answerTimeout)
		if b == nil {
			k.fatalf("no cookie reply to a flood of %d initiations", loadFlood)
		}
		if b[0] == packetCookieReply && len(b) == cookieReplySize {
			reply, init = b, sent[binary.LittleEndian.Uint32(b[cookieOffReceiver:])]
			break
		}
	}
	if init == nil {
		k.fatalf("no cookie reply to a flood of %d initiations", loadFlood)
	}
	cookie, err := c.openCookieReply(reply, init)
	if err != nil {
		k.fatalf("cookie reply % x: %v", reply, err)
	}
	checkCorruptions(t, "cookie reply", reply, len(reply), func(b []byte) error {
		_, err := c.openCookieReply(b, init)
		return err
	})

	init = c.initiationTS(c.local, nextTAI64N(ts))
	mac2 := keyedMACKey(cookie, init[:initiationOffMAC2])
	copy(init[initiationOffMAC2:], mac2[:])
	c.write(init)
	for range 3 * loadFlood { // answers to the flood may still be on the way
		resp := c.read(answerTimeout)
		if resp == nil {
			k.fatalf("no response to the initiation with mac2")
		}
		if resp[0] != packetResponse || binary.LittleEndian.Uint32(resp[responseOffReceiver:]) != c.local {
			continue
		}
		if err := c.consumeResponse(resp); err != nil {
			k.fatalf("response % x: %v", resp, err)
		}
		return
	}
	k.fatalf("no response to the initiation with mac2")
}

// nextTAI64N is ts plus one in its last byte: a newer timestamp.
func nextTAI64N(ts [tai64nLen]byte) [tai64nLen]byte {
	for i := tai64nLen - 1; i >= 0; i-- {
		ts[i]++
		if ts[i] != 0 {
			break
		}
	}
	return ts
}

// loadFlood is more than twice the 64 handshake messages per second that put
// a responder under load, so one one-second window surely holds 65.
const loadFlood = 150

// openCookieReply checks a cookie reply to init and returns the cookie.
func (c *noiseClient) openCookieReply(b, init []byte) ([]byte, error) {
	if len(b) != cookieReplySize || !bytes.Equal(b[:headerLen], []byte{packetCookieReply, 0, 0, 0}) {
		return nil, errors.New("not a cookie reply")
	}
	if !bytes.Equal(b[cookieOffReceiver:cookieOffNonce], init[initiationOffSender:initiationOffEphemeral]) {
		return nil, errors.New("cookie reply to another index")
	}
	key := peerKeys(c.t, c.static, c.peer).cookie
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return nil, err
	}
	return aead.Open(nil, b[cookieOffNonce:cookieOffCookie], b[cookieOffCookie:], init[initiationOffMAC1:initiationOffMAC2])
}
