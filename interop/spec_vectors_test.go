// SPEC.md's session vectors (section 4.10) recomputed with flynn/noise: an
// independent Noise implementation, fed only the keys and values the vector
// blocks list and framed from the tables of section 4, must produce the same
// bytes. The blocks are read from ../SPEC.md itself, so the document cannot
// drift from what this test checks.
package interop

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flynn/noise"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// specPath is the main module's specification.
const specPath = "../SPEC.md"

// specVector returns the "key = value" lines of the fenced block
// "```session-vector name=<name>" in SPEC.md; an indented line continues
// the value above it (long hex wraps so).
func specVector(t *testing.T, name string) map[string]string {
	t.Helper()
	f, err := os.Open(specPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v := map[string]string{}
	in := false
	last := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		raw := sc.Text()
		line := strings.TrimSpace(raw)
		switch {
		case line == "```session-vector name="+name:
			in = true
		case in && line == "```":
			return v
		case in && last != "" && strings.HasPrefix(raw, " "):
			v[last] += line
		case in:
			k, val, ok := strings.Cut(line, " = ")
			if !ok {
				t.Fatalf("%s: vector %s: malformed line %q", specPath, name, line)
			}
			v[k], last = val, k
		}
	}
	t.Fatalf("%s: no complete vector block %q", specPath, name)
	return nil
}

// hexField decodes a hex vector value.
func hexField(t *testing.T, v map[string]string, key string) []byte {
	t.Helper()
	s, ok := v[key]
	if !ok {
		t.Fatalf("vector lacks %q", key)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("vector %q: %v", key, err)
	}
	return b
}

// keyPair derives the X25519 public key of a vector's private key (used as
// the scalar as given) and checks it against the vector's public key.
func keyPair(t *testing.T, v map[string]string, priv, pub string) noise.DHKey {
	t.Helper()
	k := noise.DHKey{Private: hexField(t, v, priv)}
	var err error
	if k.Public, err = curve25519.X25519(k.Private, curve25519.Basepoint); err != nil {
		t.Fatal(err)
	}
	if want := hexField(t, v, pub); !bytes.Equal(k.Public, want) {
		t.Fatalf("X25519(%s) = %x, vector %s = %x", priv, k.Public, pub, want)
	}
	return k
}

func TestSpecIdentityVector(t *testing.T) {
	v := specVector(t, "identity")
	k := keyPair(t, v, "private", "public")
	if got := keyText([32]byte(k.Public)); got != v["text"] {
		t.Errorf("keyText(%x) = %q, SPEC says %q", k.Public, got, v["text"])
	}
	if got, err := parseKeyText(v["text"]); err != nil || !bytes.Equal(got[:], k.Public) {
		t.Errorf("parseKeyText(%q) = %x, %v", v["text"], got, err)
	}
	for _, typo := range []string{"substituted", "swapped"} {
		if _, err := parseKeyText(v[typo]); err == nil {
			t.Errorf("parseKeyText(%q) (%s) accepted", v[typo], typo)
		}
	}
}

func TestSpecHandshakeVector(t *testing.T) {
	v := specVector(t, "handshake")
	if got := hex.EncodeToString([]byte("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")); got != v["protocol_name"] {
		t.Errorf("protocol name %s, SPEC says %s", got, v["protocol_name"])
	}
	if !bytes.Equal(hexField(t, v, "prologue"), []byte(sessionPrologue)) ||
		!bytes.Equal(hexField(t, v, "psk"), make([]byte, pskLen)) {
		t.Errorf("prologue or psk differ from SPEC.md 4.3's table")
	}
	ist := keyPair(t, v, "initiator_static", "initiator_public")
	rst := keyPair(t, v, "responder_static", "responder_public")
	i2r, r2i := checkPairKeys(t, v, ist, rst)
	// 2026-01-02T03:04:05.6Z, nanoseconds rounded down to a multiple of 2^24.
	ts := tai64n(time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC))
	if !bytes.Equal(ts[:], hexField(t, v, "timestamp")) {
		t.Errorf("tai64n = %x, SPEC says %s", ts, v["timestamp"])
	}

	ihs, err := newHandshake(true, ist, rst.Public, bytes.NewReader(hexField(t, v, "initiator_ephemeral")))
	if err != nil {
		t.Fatal(err)
	}
	init, err := writeInitiation(ihs, binary.LittleEndian.Uint32(hexField(t, v, "initiator_index")), ts, i2r)
	if err != nil || !bytes.Equal(init, hexField(t, v, "initiation")) {
		t.Fatalf("initiation (%v):\n got %x\nwant %s", err, init, v["initiation"])
	}
	checkOuterFields(t, v, i2r, init, ts)
	rhs, err := newHandshake(false, rst, nil, bytes.NewReader(hexField(t, v, "responder_ephemeral")))
	if err != nil {
		t.Fatal(err)
	}
	resp, gotTS, _, rrecv, err := writeResponse(rhs, binary.LittleEndian.Uint32(hexField(t, v, "responder_index")), init, r2i)
	if err != nil || !bytes.Equal(resp, hexField(t, v, "response")) || !bytes.Equal(gotTS, ts[:]) {
		t.Fatalf("response (%v, timestamp %x):\n got %x\nwant %s", err, gotTS, resp, v["response"])
	}
	if !bytes.Equal(resp[responseOffMAC1:responseOffMAC2], hexField(t, v, "response_mac1")) {
		t.Errorf("response mac1 %x, SPEC says %s", resp[responseOffMAC1:responseOffMAC2], v["response_mac1"])
	}
	checkInitiatorSide(t, v, ihs, resp, rrecv)
}

// checkPairKeys derives the static-static secret and the keys of both
// directions from the vector's private keys, and checks each against the
// vector; either side's secret must agree.
func checkPairKeys(t *testing.T, v map[string]string, ist, rst noise.DHKey) (i2r, r2i pairDir) {
	t.Helper()
	s, err := curve25519.X25519(ist.Private, rst.Public)
	if err != nil {
		t.Fatal(err)
	}
	if s2, _ := curve25519.X25519(rst.Private, ist.Public); !bytes.Equal(s, s2) || !bytes.Equal(s, hexField(t, v, "static_secret")) {
		t.Errorf("static-static secret %x / %x, SPEC says %s", s, s2, v["static_secret"])
	}
	i2r, r2i = pairKeys(t, ist, rst.Public), peerKeys(t, ist, rst.Public)
	if r := pairKeys(t, rst, ist.Public); r != r2i {
		t.Errorf("the responder's send keys differ from the initiator's receive keys")
	}
	for prefix, k := range map[string]pairDir{"i2r_": i2r, "r2i_": r2i} {
		for name, key := range map[string][32]byte{"mac1": k.mac1, "tag": k.tag, "stamp": k.stamp, "cookie": k.cookie} {
			if !bytes.Equal(key[:], hexField(t, v, prefix+name)) {
				t.Errorf("%s%s = %x, SPEC says %s", prefix, name, key, v[prefix+name])
			}
		}
	}
	return i2r, r2i
}

// checkOuterFields checks the epoch, tag, stamp pad, stamp and mac1 of the
// vector's initiation, field by field.
func checkOuterFields(t *testing.T, v map[string]string, i2r pairDir, init []byte, ts [tai64nLen]byte) {
	t.Helper()
	epoch := binary.BigEndian.AppendUint64(nil, tai64nEpoch(ts))
	tag := keyedMAC(i2r.tag, epoch)
	pad := keyedMAC(i2r.stamp, init[initiationOffEphemeral:initiationOffEphemeral+32])
	mac1 := keyedMAC(i2r.mac1, init[:initiationOffMAC1])
	for _, f := range []struct {
		name string
		got  []byte
	}{
		{"epoch", epoch}, {"tag", tag[:sessTagLen]}, {"stamp_pad", pad[:tai64nLen]},
		{"stamp", stampOf(i2r, init[initiationOffEphemeral:initiationOffEphemeral+32], ts)},
		{"initiation_mac1", mac1[:]},
	} {
		if !bytes.Equal(f.got, hexField(t, v, f.name)) {
			t.Errorf("%s = %x, SPEC says %s", f.name, f.got, v[f.name])
		}
	}
}

// checkInitiatorSide consumes the vector's response with flynn and checks
// the handshake hash, both transport keys and the first transport packet,
// which the responder's flynn state must open.
func checkInitiatorSide(t *testing.T, v map[string]string, ihs *noise.HandshakeState, resp []byte, rrecv *noise.CipherState) {
	t.Helper()
	_, send, recv, err := ihs.ReadMessage(nil, resp[responseOffEphemeral:responseOffMAC1])
	if err != nil || send == nil {
		t.Fatalf("initiator reading the response: %v", err)
	}
	if h := ihs.ChannelBinding(); !bytes.Equal(h, hexField(t, v, "handshake_hash")) {
		t.Errorf("handshake hash %x, SPEC says %s", h, v["handshake_hash"])
	}
	sk, rk := send.UnsafeKey(), recv.UnsafeKey()
	if !bytes.Equal(sk[:], hexField(t, v, "initiator_send_key")) || !bytes.Equal(rk[:], hexField(t, v, "initiator_receive_key")) {
		t.Errorf("keys send %x receive %x, SPEC says %s and %s", sk, rk, v["initiator_send_key"], v["initiator_receive_key"])
	}
	c := &noiseClient{t: t, send: send.Cipher(), remote: binary.LittleEndian.Uint32(resp[responseOffSender:])}
	payload := hexField(t, v, "transport_payload")
	pkt := c.transport(payload)
	if !bytes.Equal(pkt, hexField(t, v, "transport_0")) {
		t.Fatalf("transport_0:\n got %x\nwant %s", pkt, v["transport_0"])
	}
	got, err := rrecv.Cipher().Decrypt(nil, 0, nil, pkt[transportOffData:])
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("responder opening transport_0: %q, %v", got, err)
	}
}

// TestSpecCookieVector recomputes SPEC.md 4.5's cookie reply from the
// handshake vector's initiation, with x/crypto's XChaCha20-Poly1305 under
// the responder-to-initiator cookie key.
func TestSpecCookieVector(t *testing.T) {
	hs, v := specVector(t, "handshake"), specVector(t, "cookie")
	init := hexField(t, hs, "initiation")
	source := hexField(t, v, "source") // 192.0.2.1:4242 as IP || port
	cookie := keyedMAC([32]byte(hexField(t, v, "secret")), source)
	if !bytes.Equal(cookie[:], hexField(t, v, "cookie")) {
		t.Errorf("cookie = %x, SPEC says %s", cookie, v["cookie"])
	}
	ist := keyPair(t, hs, "initiator_static", "initiator_public")
	rst := keyPair(t, hs, "responder_static", "responder_public")
	key := pairKeys(t, rst, ist.Public).cookie // the responder replies
	if !bytes.Equal(key[:], hexField(t, v, "cookie_key")) || !bytes.Equal(key[:], hexField(t, hs, "r2i_cookie")) {
		t.Errorf("cookie key = %x, SPEC says %s", key, v["cookie_key"])
	}
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		t.Fatal(err)
	}
	reply := []byte{packetCookieReply, 0, 0, 0}
	reply = append(reply, init[initiationOffSender:initiationOffEphemeral]...)
	reply = append(reply, hexField(t, v, "nonce")...)
	reply = aead.Seal(reply, hexField(t, v, "nonce"), cookie[:], init[initiationOffMAC1:initiationOffMAC2])
	if !bytes.Equal(reply, hexField(t, v, "cookie_reply")) {
		t.Errorf("cookie reply:\n got %x\nwant %s", reply, v["cookie_reply"])
	}
	mac2 := keyedMACKey(cookie[:], init[:initiationOffMAC2])
	if !bytes.Equal(mac2[:], hexField(t, v, "mac2_of_initiation")) {
		t.Errorf("mac2 = %x, SPEC says %s", mac2, v["mac2_of_initiation"])
	}
}
