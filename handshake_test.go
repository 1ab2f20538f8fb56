package main

import (
	"bytes"
	cryptorand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestReplayedInitiationDropped(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	init := firstOfType(t, &n, packetInitiation)
	n.deliver(init)
	n.pump(t)
	if !a.m.hasSession(b.id.public()) {
		t.Fatal("no session")
	}
	sent := n.sent
	n.deliver(init) // the same initiation again
	if n.sent != sent || b.m.stats.staleInit.Load() != 1 {
		t.Errorf("replayed initiation: sent %d more, staleInit %d", n.sent-sent, b.m.stats.staleInit.Load())
	}
}

func TestOlderInitiationDropped(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil)
	a.m.setEndpoint(b.id.public(), b.addr)
	older := firstOfType(t, &n, packetInitiation)
	clock.advance(6 * time.Second) // past RekeyTimeout: a retransmits
	a.m.timers.tick()
	newer := firstOfType(t, &n, packetInitiation)
	if bytes.Equal(older.b[initiationOffEphemeral:initiationOffStatic], newer.b[initiationOffEphemeral:initiationOffStatic]) {
		t.Fatal("retransmission reused the ephemeral key")
	}
	n.deliver(newer)
	sent := n.sent
	n.deliver(older)
	if n.sent != sent || b.m.stats.staleInit.Load() != 1 {
		t.Errorf("older initiation: sent %d, staleInit %d", n.sent-sent, b.m.stats.staleInit.Load())
	}
	n.pump(t)
	if !a.m.hasSession(b.id.public()) {
		t.Error("the newer initiation did not make a session")
	}
}

func FuzzHandshake(f *testing.F) {
	n, a, b, seeds := fuzzPair(f)
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add(make([]byte, initiationSize))
	f.Add(append([]byte{packetResponse}, make([]byte, responseSize-1)...))
	f.Add(append([]byte{packetCookieReply}, make([]byte, cookieReplySize-1)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, err := parseInitiation(data); err == nil {
			if got := m.appendTo(nil); !bytes.Equal(got, data) {
				t.Fatalf("initiation re-encodes to %x", got)
			}
		} else if m != (initiationMsg{}) {
			t.Fatal("parseInitiation: error with a non-zero result")
		}
		if m, err := parseResponse(data); err == nil {
			if got := m.appendTo(nil); !bytes.Equal(got, data) {
				t.Fatalf("response re-encodes to %x", got)
			}
		} else if m != (responseMsg{}) {
			t.Fatal("parseResponse: error with a non-zero result")
		}
		if m, err := parseCookieReply(data); err == nil {
			if got := m.appendTo(nil); !bytes.Equal(got, data) {
				t.Fatalf("cookie reply re-encodes to %x", got)
			}
		} else if m != (cookieReplyMsg{}) {
			t.Fatal("parseCookieReply: error with a non-zero result")
		}
		b.m.handlePacket(a.addr, data)
		a.m.handlePacket(b.addr, data)
		for _, p := range n.take() {
			if len(p.b) > maxTransportSize {
				t.Fatalf("sent a %d-byte datagram", len(p.b))
			}
		}
	})
}

// benchHandshake runs one full IKpsk2 handshake, both sides, in process.
func benchHandshake(b *testing.B, ia, ib *identity) {
	var hi, hr handshake
	init, err := hi.createInitiation(ia, ib.public(), 1, tai64n(time.Now()), cryptorand.Reader, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := hr.consumeInitiation(ib, &init, nil); err != nil {
		b.Fatal(err)
	}
	resp, err := hr.createResponse(2, cryptorand.Reader, zeroPSK)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, _, err := hr.beginSession(); err != nil {
		b.Fatal(err)
	}
	if _, err := hi.consumeResponse(&resp, [][noiseKeyLen]byte{zeroPSK}, 1); err != nil {
		b.Fatal(err)
	}
	if _, _, _, err := hi.beginSession(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkHandshake compares a full handshake with the X25519 operations
// it needs (counted by TestWrongMAC1CostsNoDH and dhCounter): two key
// generations (initiator e, responder e) and eight DHs (es, ss on each
// side; ee, se on each side).
func BenchmarkHandshake(b *testing.B) {
	ia, ib := testIdentity(b, 1), testIdentity(b, 2)
	b.Run("kadchat", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			benchHandshake(b, ia, ib)
		}
	})
	b.Run("x25519-ops", func(b *testing.B) {
		b.ReportAllocs()
		var seed [32]byte
		for b.Loop() {
			var pubs [2][]byte
			for i := range 2 {
				cryptorand.Read(seed[:])
				priv, _ := x25519.NewPrivateKey(seed[:])
				pubs[i] = priv.PublicKey().Bytes()
			}
			for i := range 8 {
				pub, _ := x25519.NewPublicKey(pubs[i%2])
				priv := ia.keys.priv
				if i%2 == 1 {
					priv = ib.keys.priv
				}
				priv.ECDH(pub)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// SPEC.md vectors: SPEC.md section 4 carries ```session-vector name=<name>
// blocks of `key = value` lines; TestSpecVectors recomputes every value.

// fixedReader returns its chunks in order, for fixed ephemeral keys.
type fixedReader struct{ chunks [][]byte }

func (r *fixedReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	if len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

// specVectors computes every vector SPEC.md shows.
func specVectors(t *testing.T) map[string]map[string]string {
	hs, initBytes, mac1 := handshakeVector(t)
	return map[string]map[string]string{
		"identity":   identityVector(t),
		"handshake":  hs,
		"cookie":     cookieVector(t, initBytes, mac1),
		"negative":   negativeVector(t, initBytes),
		"timestamps": timestampsVector(t),
	}
}

// negativeVector feeds the responder of the handshake vector (who has the
// initiator as a contact) variants of the initiation, in order, and
// records what it does with each.
func negativeVector(t *testing.T, initBytes []byte) map[string]string {
	var n fakeNet
	res := newTestPeer(t, &n, newFakeClock(), 0x40, 2, nil)
	ini := testIdentity(t, 0x10)
	if err := res.m.addContact(ini.public()); err != nil {
		t.Fatal(err)
	}
	macKey := res.m.peers[ini.public()].keys.recv.mac1
	remac := func(p []byte) []byte {
		mac := keyedMAC(macKey[:], p[:initiationOffMAC1])
		copy(p[initiationOffMAC1:], mac[:])
		return p
	}
	flip := func(p []byte, i int) []byte { p = bytes.Clone(p); p[i] ^= 1; return p }
	cases := []struct {
		name string
		pkt  []byte
	}{
		{"reserved", remac(flip(initBytes, 1))},
		{"truncated", initBytes[:initiationSize-1]},
		{"unknown_tag", remac(flip(initBytes, initiationOffTag))},
		{"bad_mac1", flip(initBytes, initiationOffMAC2-1)},
		{"bad_static", remac(flip(initBytes, initiationOffStatic))},
		{"stamp_mismatch", remac(flip(initBytes, initiationOffMAC1-1))},
		{"genuine", initBytes},
		{"replayed", initBytes},
	}
	out := map[string]string{}
	st := &res.m.stats
	counters := []struct {
		c       *atomic.Uint64
		outcome string
	}{
		{&st.malformed, "drop malformed"},
		{&st.stranger, "drop stranger before any MAC"},
		{&st.badMAC, "drop bad-mac1 before DH"},
		{&st.staleInit, "drop stale-timestamp before DH"},
		{&st.handshakeFail, "drop not-authentic"},
	}
	for i, c := range cases {
		var before [5]uint64
		for j, k := range counters {
			before[j] = k.c.Load()
		}
		dh := res.m.dh.n.Load()
		res.m.handlePacket(netip.MustParseAddrPort("192.0.2.1:4242"), c.pkt)
		sent := n.take()
		outcome := "unexpected"
		if len(sent) == 1 && sent[0].b[0] == packetResponse {
			outcome = "response"
		}
		for j, k := range counters {
			beforeDH := !strings.Contains(k.outcome, "before") || res.m.dh.n.Load() == dh
			if len(sent) == 0 && k.c.Load() == before[j]+1 && beforeDH {
				outcome = k.outcome
			}
		}
		key := fmt.Sprintf("%d_%s", i+1, c.name)
		out[key] = hex.EncodeToString(c.pkt)
		out[key+"_outcome"] = outcome
	}
	return out
}

// timestampsVector: the timestamps file of the handshake vector's responder
// once it accepted the initiation.
func timestampsVector(t *testing.T) map[string]string {
	ini := testIdentity(t, 0x10)
	ts := tai64n(time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC))
	file := formatTimestamps(map[publicKey][timestampLen]byte{ini.public(): ts})
	if got, err := parseTimestamps(file); err != nil || len(got) != 1 || got[ini.public()] != ts {
		t.Fatalf("parseTimestamps(formatTimestamps) = %v, %v", got, err)
	}
	return map[string]string{"contact": ini.public().String(), "timestamp": hex.EncodeToString(ts[:]), "file": hex.EncodeToString(file)}
}

// identityVector: a fixed private key, its public key and text form, and
// two typos that must fail the checksum.
func identityVector(t *testing.T) map[string]string {
	ini := testIdentity(t, 0x10)
	good := ini.public().String()
	sub := []byte(good)
	sub[20] = idAlphabet[(strings.IndexByte(idAlphabet, sub[20])+1)%32]
	swap := []byte(good)
	i := 30
	for swap[i] == swap[i+1] {
		i++
	}
	swap[i], swap[i+1] = swap[i+1], swap[i]
	for _, bad := range []string{string(sub), string(swap)} {
		if _, err := parsePublicKey(bad); !errors.Is(err, errIDChecksum) {
			t.Fatalf("typo %q: %v", bad, err)
		}
	}
	return map[string]string{
		"private": hex.EncodeToString(seqBytes(0x10, 32)), "public": hex.EncodeToString(ini.keys.pub[:]),
		"text": good, "substituted": string(sub), "swapped": string(swap),
	}
}

// handshakeVector runs one handshake with fixed keys, timestamp and
// indices; it also returns the initiation and its mac1 for the cookie.
func handshakeVector(t *testing.T) (map[string]string, []byte, [macLen]byte) {
	hx := hex.EncodeToString
	ini, res := testIdentity(t, 0x10), testIdentity(t, 0x40)
	ts := tai64n(time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC))
	iEph, rEph := seqBytes(0x70, 32), seqBytes(0xa0, 32)
	secret, err := ini.staticSecret(res.public())
	if err != nil {
		t.Fatal(err)
	}
	i2r := derivePairKeys(&secret, ini.public(), res.public()).send
	r2i := derivePairKeys(&secret, res.public(), ini.public()).send
	var hi, hr handshake
	init, err := hi.createInitiation(ini, res.public(), 0x11223344, ts, &fixedReader{[][]byte{bytes.Clone(iEph)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	epoch, _ := tai64nEpoch(ts)
	i2r.sealOuter(&init, ts)
	pad := maskStamp(&i2r.stamp, init.ephemeral, [timestampLen]byte{})
	initBytes := init.appendTo(nil)
	mac1 := keyedMAC(i2r.mac1[:], initBytes[:initiationOffMAC1])
	copy(initBytes[initiationOffMAC1:], mac1[:])
	if err := hr.consumeInitiation(res, &init, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := hr.createResponse(0x55667788, &fixedReader{[][]byte{bytes.Clone(rEph)}}, zeroPSK)
	if err != nil {
		t.Fatal(err)
	}
	respBytes := resp.appendTo(nil)
	rmac1 := keyedMAC(r2i.mac1[:], respBytes[:responseOffMAC1])
	copy(respBytes[responseOffMAC1:], rmac1[:])
	if _, err := hi.consumeResponse(&resp, [][noiseKeyLen]byte{zeroPSK}, 1); err != nil {
		t.Fatal(err)
	}
	send, recv, h, err := hi.beginSession()
	if err != nil {
		t.Fatal(err)
	}
	if rsend, rrecv, _, _ := hr.beginSession(); rsend != recv || rrecv != send {
		t.Fatal("the two sides split differently")
	}
	kp := newKeypair(send, recv, 0x11223344, 0x55667788, true, time.Time{})
	first, _ := kp.seal(nil, []byte("hello"))
	goodbye, _ := kp.seal(nil, []byte{sessionControl})
	return map[string]string{
		"protocol_name":         hx([]byte(noiseProtocolName(&patternIKpsk2))),
		"prologue":              hx([]byte(sessionPrologue)),
		"psk":                   hx(zeroPSK[:]),
		"initiator_static":      hx(seqBytes(0x10, 32)),
		"initiator_public":      hx(ini.keys.pub[:]),
		"responder_static":      hx(seqBytes(0x40, 32)),
		"responder_public":      hx(res.keys.pub[:]),
		"static_secret":         hx(secret[:]),
		"i2r_mac1":              hx(i2r.mac1[:]),
		"i2r_tag":               hx(i2r.tag[:]),
		"i2r_stamp":             hx(i2r.stamp[:]),
		"i2r_cookie":            hx(i2r.cookie[:]),
		"r2i_mac1":              hx(r2i.mac1[:]),
		"r2i_tag":               hx(r2i.tag[:]),
		"r2i_stamp":             hx(r2i.stamp[:]),
		"r2i_cookie":            hx(r2i.cookie[:]),
		"initiator_ephemeral":   hx(iEph),
		"responder_ephemeral":   hx(rEph),
		"timestamp":             hx(ts[:]),
		"epoch":                 hx(binary.BigEndian.AppendUint64(nil, epoch)),
		"tag":                   hx(init.tag[:]),
		"stamp_pad":             hx(pad[:]),
		"stamp":                 hx(init.stamp[:]),
		"initiation_mac1":       hx(mac1[:]),
		"initiator_index":       hx(binary.LittleEndian.AppendUint32(nil, 0x11223344)),
		"responder_index":       hx(binary.LittleEndian.AppendUint32(nil, 0x55667788)),
		"initiation":            hx(initBytes),
		"response_mac1":         hx(rmac1[:]),
		"response":              hx(respBytes),
		"handshake_hash":        hx(h[:]),
		"initiator_send_key":    hx(send[:]),
		"initiator_receive_key": hx(recv[:]),
		"transport_payload":     hx([]byte("hello")),
		"transport_0":           hx(first),
		"goodbye_payload":       hx([]byte{sessionControl}),
		"goodbye":               hx(goodbye),
	}, initBytes, mac1
}

// cookieVector: a loaded responder with secret R answers that initiation,
// from 192.0.2.1:4242, with a cookie reply sealed under the r2i cookie key;
// the initiator's next initiation carries mac2.
func cookieVector(t *testing.T, initBytes []byte, mac1 [macLen]byte) map[string]string {
	hx := hex.EncodeToString
	ini, res := testIdentity(t, 0x10), testIdentity(t, 0x40)
	secret, err := res.staticSecret(ini.public())
	if err != nil {
		t.Fatal(err)
	}
	ck := derivePairKeys(&secret, res.public(), ini.public()).send.cookie
	cookieSecret, nonce := seqBytes(0xc0, 32), seqBytes(0xe0, xNonceLen)
	src := netip.MustParseAddrPort("192.0.2.1:4242")
	cookie := keyedMAC(cookieSecret, addrBytes(src))
	c := newCookieChecker(1, &fixedReader{[][]byte{nonce}})
	reply, err := c.createReply(&ck, 0x11223344, mac1, cookie)
	if err != nil {
		t.Fatal(err)
	}
	mac2 := keyedMAC(cookie[:], initBytes[:initiationOffMAC2])
	return map[string]string{
		"secret": hx(cookieSecret), "source": hx(addrBytes(src)), "cookie": hx(cookie[:]),
		"cookie_key": hx(ck[:]), "nonce": hx(nonce), "cookie_reply": hx(reply.appendTo(nil)),
		"mac2_of_initiation": hx(mac2[:]),
	}
}

func TestSpecVectors(t *testing.T) {
	want := specVectors(t)
	for name, kv := range want {
		updateSpecBlock(t, "session-vector", name, slices.Sorted(maps.Keys(kv)), kv)
	}
	got := specVectorMap(t, "session-vector")
	for name, kv := range want {
		if got[name] == nil {
			t.Errorf("SPEC.md has no session-vector %s", name)
			continue
		}
		for k, v := range kv {
			if got[name][k] != v {
				t.Errorf("SPEC.md %s: %s = %s, want %s", name, k, got[name][k], v)
			}
		}
		for k := range got[name] {
			if _, ok := kv[k]; !ok {
				t.Errorf("SPEC.md %s: unchecked key %s", name, k)
			}
		}
	}
}

// TestHandshakeStepsInOrder: every step refuses to run out of order, and a
// forged response does not end a real handshake.
func TestHandshakeStepsInOrder(t *testing.T) {
	ia, ib := testIdentity(t, 1), testIdentity(t, 2)
	rnd := mrand.NewChaCha8([32]byte{7})
	var hi, hr handshake
	if _, err := hi.consumeResponse(&responseMsg{}, nil, 0); !errors.Is(err, errNoiseOrder) {
		t.Errorf("consumeResponse before createInitiation: %v", err)
	}
	if _, err := hr.createResponse(1, rnd, zeroPSK); !errors.Is(err, errNoiseOrder) {
		t.Errorf("createResponse before consumeInitiation: %v", err)
	}
	if _, _, _, err := hi.beginSession(); !errors.Is(err, errNoiseOrder) {
		t.Errorf("beginSession in stage %v: %v", hi.stage, err)
	}
	init, err := hi.createInitiation(ia, ib.public(), 1, tai64n(time.Unix(1, 0)), rnd, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hi.createInitiation(ia, ib.public(), 1, tai64n(time.Unix(1, 0)), rnd, nil); !errors.Is(err, errNoiseOrder) {
		t.Errorf("second createInitiation: %v", err)
	}
	if err := hr.consumeInitiation(ib, &init, nil); err != nil {
		t.Fatal(err)
	}
	if err := hr.consumeInitiation(ib, &init, nil); !errors.Is(err, errNoiseOrder) {
		t.Errorf("second consumeInitiation: %v", err)
	}
	resp, err := hr.createResponse(2, rnd, zeroPSK)
	if err != nil {
		t.Fatal(err)
	}
	forged := resp
	forged.empty[0] ^= 1
	if _, err := hi.consumeResponse(&forged, [][noiseKeyLen]byte{zeroPSK}, 1); err == nil || hi.stage != stageInitiationCreated {
		t.Errorf("forged response: %v, stage %v", err, hi.stage)
	}
	if _, err := hi.consumeResponse(&resp, [][noiseKeyLen]byte{zeroPSK}, 1); err != nil {
		t.Fatalf("genuine response after a forged one: %v", err)
	}
	if _, _, _, err := hi.beginSession(); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := hi.beginSession(); !errors.Is(err, errNoiseOrder) {
		t.Errorf("second beginSession: %v", err)
	}
	for s, want := range []string{"zeroed", "initiation created", "initiation consumed",
		"response created", "response consumed", "done", "stage(6)"} {
		if got := handshakeStage(s).String(); got != want {
			t.Errorf("handshakeStage(%d).String() = %q, want %q", s, got, want)
		}
	}
	// The generic core refuses to write when it should read, and vice versa.
	var hs noiseHandshakeState
	hs.initialize(noiseHandshakeParams{pattern: &patternNN, prologue: nil, rand: rnd})
	if _, err := hs.writeMessage(nil, nil); !errors.Is(err, errNoiseOrder) {
		t.Errorf("responder writing first: %v", err)
	}
}

// An initiation dropped by the simultaneous-open rule still burns its
// timestamp: replayed later from elsewhere, while a rekey is pending, it
// must not move the session (SPEC 6.1).
func TestDroppedInitiationCannotBeReplayed(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	a, b := newTestPair(t, &n, clock, nil) // a's key is lower: a's initiation wins
	a.m.setEndpoint(b.id.public(), b.addr)
	b.m.setEndpoint(a.id.public(), a.addr)
	var bInit []byte
	for _, p := range n.take() {
		if p.from == b.addr && p.b[0] == packetInitiation {
			bInit = p.b
		}
		n.deliver(p)
	}
	n.pump(t)
	if bInit == nil || !a.m.hasSession(b.id.public()) {
		t.Fatal("no simultaneous open, or no session after it")
	}
	clock.advance(defaultRekeyAfterTime + time.Second)
	a.m.send(b.id.public(), []byte("rekey now")) // a has a pending initiation
	evil := netip.MustParseAddrPort("10.6.6.6:6666")
	n.deliver(fakePacket{from: evil, to: a.addr, b: bInit})
	a.m.mu.Lock()
	ep := a.m.peers[b.id.public()].addrs.endpoint
	a.m.mu.Unlock()
	if ep != b.addr {
		t.Fatalf("endpoint %v after a replayed initiation, want %v", ep, b.addr)
	}
}
