// Post-quantum interop (SPEC.md 4.12): the exchange and its PSK derived from
// the SPEC's text alone, with the standard library's ML-KEM, crypto/hmac
// over x/crypto's BLAKE2s, and flynn/noise for the handshake that mixes the
// PSK: vector `pq` recomputed, and the exchange run with the binary.
//
// Flow: TestSpecPQVector rebuilds every value of vector `pq` from its seed
// and randomness and the `handshake` vector's keys; pqExchange (used by
// TestNoiseSessionWithFlynn) sends a fresh key in two fragments on a live
// session and derives the PSK from the binary's ciphertext;
// TestNoiseClassicalClient is a client that never does the exchange.
package interop

import (
	"bytes"
	"crypto/hmac"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"
)

// Post-quantum frames, SPEC.md 4.12.
const (
	sessionControl   = 0x00
	pqKeyFragment    = 0x01
	pqCiphertext     = 0x02
	pqFragmentLen    = 592
	pqCiphertextLen  = 1088
	labelPQ          = "kadchat pq v1"
	pqWait           = 5 * time.Second // a classical session may carry chat after this
	pqKeyDatagram    = transportOffData + 3 + pqFragmentLen + tagLen
	pqCipherDatagram = transportOffData + 2 + pqCiphertextLen + tagLen
)

// pqPSK is SPEC.md 4.12's derivation: HMAC-BLAKE2s keyed with the
// handshake hash over the label, HASH(ek), HASH(ciphertext) and the shared key.
func pqPSK(h, ek, ct, shared []byte) []byte {
	ekHash, ctHash := blake2s.Sum256(ek), blake2s.Sum256(ct)
	mac := hmac.New(func() hash.Hash { d, _ := blake2s.New256(nil); return d }, h)
	mac.Write([]byte(labelPQ))
	mac.Write(ekHash[:])
	mac.Write(ctHash[:])
	mac.Write(shared)
	return mac.Sum(nil)
}

// keyFragment is half i of ek in its frame.
func keyFragment(ek []byte, i int) []byte {
	return append([]byte{sessionControl, pqKeyFragment, byte(i)}, ek[i*pqFragmentLen:(i+1)*pqFragmentLen]...)
}

func TestSpecPQVector(t *testing.T) {
	hs, v := specVector(t, "handshake"), specVector(t, "pq")
	if v["handshake_hash"] != hs["handshake_hash"] {
		t.Fatal("vector pq is not on the session of vector handshake")
	}
	dk, err := mlkem.NewDecapsulationKey768(hexField(t, v, "seed"))
	if err != nil {
		t.Fatal(err)
	}
	ek := dk.EncapsulationKey().Bytes()
	if !bytes.Equal(ek, hexField(t, v, "encapsulation_key")) {
		t.Fatal("ML-KEM-768 key from the seed differs from the vector's")
	}
	for i := range 2 {
		if h := hex.EncodeToString(keyFragment(ek, i)[:3]); h != v[[]string{"key_fragment_0_header", "key_fragment_1_header"}[i]] {
			t.Errorf("key fragment %d header %s", i, h)
		}
	}
	shared, ct, err := mlkemtest.Encapsulate768(dk.EncapsulationKey(), hexField(t, v, "randomness"))
	if err != nil || !bytes.Equal(ct, hexField(t, v, "ciphertext")) || !bytes.Equal(shared, hexField(t, v, "shared_key")) {
		t.Fatalf("encapsulation differs from the vector's (%v)", err)
	}
	if got, err := dk.Decapsulate(ct); err != nil || !bytes.Equal(got, shared) {
		t.Fatalf("decapsulation: %v", err)
	}
	ekHash, ctHash := blake2s.Sum256(ek), blake2s.Sum256(ct)
	if hex.EncodeToString(ekHash[:]) != v["encapsulation_key_hash"] || hex.EncodeToString(ctHash[:]) != v["ciphertext_hash"] ||
		v["ciphertext_header"] != "0002" {
		t.Error("hashes or ciphertext header differ from the vector's")
	}
	psk := pqPSK(hexField(t, v, "handshake_hash"), ek, ct, shared)
	if !bytes.Equal(psk, hexField(t, v, "psk")) {
		t.Fatalf("psk %x, SPEC says %s", psk, v["psk"])
	}

	// flynn, given the PSK, makes the next handshake of the vector.
	ist := keyPair(t, hs, "initiator_static", "initiator_public")
	rst := keyPair(t, hs, "responder_static", "responder_public")
	ts := tai64n(time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC))
	ihs, err := newHandshakePSK(true, ist, rst.Public, bytes.NewReader(hexField(t, hs, "initiator_ephemeral")), psk)
	if err != nil {
		t.Fatal(err)
	}
	init, err := writeInitiation(ihs, binary.LittleEndian.Uint32(hexField(t, hs, "initiator_index")), ts, pairKeys(t, ist, rst.Public))
	if err != nil || !bytes.Equal(init, hexField(t, v, "next_initiation")) || !bytes.Equal(init, hexField(t, hs, "initiation")) {
		t.Fatalf("initiation with the psk (%v) differs from the vectors'", err)
	}
	rhs, err := newHandshakePSK(false, rst, nil, bytes.NewReader(hexField(t, hs, "responder_ephemeral")), psk)
	if err != nil {
		t.Fatal(err)
	}
	resp, _, _, _, err := writeResponse(rhs, binary.LittleEndian.Uint32(hexField(t, hs, "responder_index")), init, pairKeys(t, rst, ist.Public))
	if err != nil || !bytes.Equal(resp, hexField(t, v, "next_response")) {
		t.Fatalf("response with the psk (%v):\n got %x\nwant %s", err, resp, v["next_response"])
	}
	_, send, recv, err := ihs.ReadMessage(nil, resp[responseOffEphemeral:responseOffMAC1])
	if err != nil || send == nil {
		t.Fatalf("initiator reading the response: %v", err)
	}
	sk, rk := send.UnsafeKey(), recv.UnsafeKey()
	if h := ihs.ChannelBinding(); !bytes.Equal(h, hexField(t, v, "next_handshake_hash")) ||
		!bytes.Equal(sk[:], hexField(t, v, "next_initiator_send_key")) || !bytes.Equal(rk[:], hexField(t, v, "next_initiator_receive_key")) {
		t.Error("handshake hash or keys differ from the vector's")
	}

	// An initiator holding the psk cannot open the zero-PSK response of
	// vector handshake: what it authenticates with is not its psk.
	ihs, _ = newHandshakePSK(true, ist, rst.Public, bytes.NewReader(hexField(t, hs, "initiator_ephemeral")), psk)
	writeInitiation(ihs, binary.LittleEndian.Uint32(hexField(t, hs, "initiator_index")), ts, pairKeys(t, ist, rst.Public))
	zero := hexField(t, hs, "response")
	if _, _, _, err := ihs.ReadMessage(nil, zero[responseOffEphemeral:responseOffMAC1]); err == nil || v["zero_psk_response_outcome"] != "refused" {
		t.Errorf("the zero-PSK response: %v, SPEC says %s", err, v["zero_psk_response_outcome"])
	}
	if want := keyText([32]byte(rst.Public)) + " used " + hex.EncodeToString(psk); v["file_line"] != want {
		t.Errorf("file line %q, want %q", v["file_line"], want)
	}
}

// pqExchange runs SPEC.md 4.12's exchange on the current session as its
// initiator: a fresh key in two fragments (every corruption of the first
// dropped unread), the binary's ciphertext (every corruption of it failing
// our checks), and the PSK of our next initiation.
func (c *noiseClient) pqExchange(k *kadchat) {
	c.t.Helper()
	h := c.hs.ChannelBinding()
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		c.t.Fatal(err)
	}
	ek := dk.EncapsulationKey().Bytes()
	first := c.transport(keyFragment(ek, 0))
	if len(first) != pqKeyDatagram {
		c.t.Fatalf("a key fragment is %d bytes, SPEC.md says %d", len(first), pqKeyDatagram)
	}
	// A corrupted fragment is dropped unread; had one authenticated, it
	// would have confirmed the session and drawn the binary's keepalive.
	c.sendCorruptions(k, "key fragment", first, len(first))
	c.write(first)
	c.write(c.transport(keyFragment(ek, 1)))
	pkt, frame := c.readPayload(k, answerTimeout, "the ciphertext")
	if len(pkt) != pqCipherDatagram || frame[0] != sessionControl || frame[1] != pqCiphertext {
		k.fatalf("got a %d-byte packet with % x..., want the ciphertext", len(pkt), frame[:min(4, len(frame))])
	}
	checkCorruptions(c.t, "ciphertext packet", pkt, len(pkt), c.openOnly)
	ct := frame[2:]
	shared, err := dk.Decapsulate(ct)
	if err != nil {
		k.fatalf("decapsulate: %v", err)
	}
	c.psk = pqPSK(h, ek, ct, shared)
	var idx [4]byte
	if _, err := rand.Read(idx[:]); err != nil {
		c.t.Fatal(err)
	}
	c.local = binary.LittleEndian.Uint32(idx[:]) // the next session's packets are told from this one's

}

// TestNoiseClassicalClient: a client that does no post-quantum exchange (a
// version-1 client) completes a session, its message is shown at once, and
// the binary's ack comes once the binary has taken it for a version-1
// client (pqWait), telling its user so.
func TestNoiseClassicalClient(t *testing.T) {
	k := startKadchat(t)
	peerKey, err := parseKeyText(k.run("/id", "id")[1])
	if err != nil {
		k.fatalf("/id: %v", err)
	}
	c := newNoiseClient(t, k.addr, peerKey[:])
	k.try("/add flynn "+keyText([32]byte(c.static.Public)), "* added")
	c.handshake(k)
	text := uniqueText(t, "classical")
	stream := newStreamID(t)
	data := append([]byte{chatFrameData}, stream[:]...)
	data = binary.BigEndian.AppendUint64(data, 1)
	data = append(data, 0, 1)
	c.write(c.transport(append(data, text...)))
	k.expectContaining(text)
	start := time.Now()
	_, ack := c.readPayload(k, answerTimeout+pqWait, "the ack")
	if len(ack) < chatAckHeaderLen || ack[0] != chatFrameAck || !bytes.Equal(ack[1:9], stream[:]) {
		k.fatalf("got frame % x, want an ack", ack)
	}
	if waited := time.Since(start); waited > pqWait+answerTimeout {
		t.Errorf("the ack came %v after the message", waited)
	}
	if line := k.expectContaining("* classical flynn"); !strings.Contains(line, "post-quantum") {
		t.Errorf("the classical session was announced as %q", line)
	}
}
