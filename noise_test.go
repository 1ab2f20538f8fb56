package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
)

// noiseVector is one test vector from testdata/noise/, normalized from the
// three source formats (cacophony and snow JSON, flynn key=value text).
type noiseVector struct {
	source, protocol             string
	initPrologue, respPrologue   []byte
	initPSK, respPSK             []byte
	initStatic, respStatic       []byte // private keys, nil if absent
	initEphemeral, respEphemeral []byte // private keys
	handshakeHash                []byte // nil if absent
	messages                     []noiseVectorMessage
}

type noiseVectorMessage struct{ payload, ciphertext []byte }

// noisePatterns maps the protocol names we test to their patterns.
var noisePatterns = map[string]*noisePattern{
	"Noise_NN_25519_ChaChaPoly_BLAKE2s":     &patternNN,
	"Noise_XX_25519_ChaChaPoly_BLAKE2s":     &patternXX,
	"Noise_IK_25519_ChaChaPoly_BLAKE2s":     &patternIK,
	"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s": &patternIKpsk2,
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	if s == "" {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("hex %q: %v", s, err)
	}
	return b
}

func loadJSONVectors(t *testing.T, file string) []noiseVector {
	t.Helper()
	raw, err := os.ReadFile("testdata/noise/" + file)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Vectors []struct {
			ProtocolName  string   `json:"protocol_name"`
			InitPrologue  string   `json:"init_prologue"`
			RespPrologue  string   `json:"resp_prologue"`
			InitPSKs      []string `json:"init_psks"`
			RespPSKs      []string `json:"resp_psks"`
			InitStatic    string   `json:"init_static"`
			RespStatic    string   `json:"resp_static"`
			InitEphemeral string   `json:"init_ephemeral"`
			RespEphemeral string   `json:"resp_ephemeral"`
			HandshakeHash string   `json:"handshake_hash"`
			Messages      []struct {
				Payload    string `json:"payload"`
				Ciphertext string `json:"ciphertext"`
			} `json:"messages"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var out []noiseVector
	for _, v := range doc.Vectors {
		nv := noiseVector{
			source: file, protocol: v.ProtocolName,
			initPrologue: mustHex(t, v.InitPrologue), respPrologue: mustHex(t, v.RespPrologue),
			initStatic: mustHex(t, v.InitStatic), respStatic: mustHex(t, v.RespStatic),
			initEphemeral: mustHex(t, v.InitEphemeral), respEphemeral: mustHex(t, v.RespEphemeral),
			handshakeHash: mustHex(t, v.HandshakeHash),
		}
		if len(v.InitPSKs) > 0 {
			nv.initPSK = mustHex(t, v.InitPSKs[0])
		}
		if len(v.RespPSKs) > 0 {
			nv.respPSK = mustHex(t, v.RespPSKs[0])
		}
		for _, m := range v.Messages {
			nv.messages = append(nv.messages, noiseVectorMessage{mustHex(t, m.Payload), mustHex(t, m.Ciphertext)})
		}
		out = append(out, nv)
	}
	return out
}

func loadFlynnVectors(t *testing.T) []noiseVector {
	t.Helper()
	f, err := os.Open("testdata/noise/flynn.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []noiseVector
	var cur *noiseVector
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue // blank line between records
		}
		if key == "handshake" {
			out = append(out, noiseVector{source: "flynn.txt", protocol: val})
			cur = &out[len(out)-1]
			continue
		}
		b := mustHex(t, val)
		switch {
		case key == "init_static":
			cur.initStatic = b
		case key == "resp_static":
			cur.respStatic = b
		case key == "gen_init_ephemeral":
			cur.initEphemeral = b
		case key == "gen_resp_ephemeral":
			cur.respEphemeral = b
		case key == "prologue":
			cur.initPrologue, cur.respPrologue = b, b
		case key == "preshared_key":
			cur.initPSK, cur.respPSK = b, b
		case strings.HasSuffix(key, "_payload"):
			cur.messages = append(cur.messages, noiseVectorMessage{payload: b})
		case strings.HasSuffix(key, "_ciphertext"):
			cur.messages[len(cur.messages)-1].ciphertext = b
		default:
			t.Fatalf("flynn.txt: unknown key %q", key)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func vectorDHKeys(t *testing.T, priv []byte) *dhKeys {
	if priv == nil {
		return nil
	}
	kp, err := newDHKeys(priv)
	if err != nil {
		t.Fatal(err)
	}
	return &kp
}

// runNoiseVector plays both sides of a vector, checking every ciphertext,
// every decrypted payload and, where given, the handshake hash.
func runNoiseVector(t *testing.T, v noiseVector) {
	p := noisePatterns[v.protocol]
	var psk [noiseKeyLen]byte
	var init, resp noiseHandshakeState
	ip := noiseHandshakeParams{pattern: p, initiator: true, prologue: v.initPrologue, s: vectorDHKeys(t, v.initStatic),
		rand: bytes.NewReader(v.initEphemeral)}
	copy(psk[:], v.initPSK)
	ip.psk = psk
	rp := noiseHandshakeParams{pattern: p, prologue: v.respPrologue, s: vectorDHKeys(t, v.respStatic),
		rand: bytes.NewReader(v.respEphemeral)}
	copy(psk[:], v.respPSK)
	rp.psk = psk
	if p.preResponderS {
		ip.rs = &rp.s.pub
	}
	init.initialize(ip)
	resp.initialize(rp)
	n := len(p.messages)
	for i, m := range v.messages[:n] {
		w, r := &init, &resp
		if i%2 == 1 {
			w, r = r, w
		}
		ct, err := w.writeMessage(nil, m.payload)
		if err != nil || !bytes.Equal(ct, m.ciphertext) {
			t.Fatalf("message %d: writeMessage = %x, %v; want %x", i, ct, err, m.ciphertext)
		}
		pt, err := r.readMessage(nil, ct)
		if err != nil || !bytes.Equal(pt, m.payload) {
			t.Fatalf("message %d: readMessage = %x, %v; want %x", i, pt, err, m.payload)
		}
	}
	i1, i2, ih := init.splitAndErase()
	r1, r2, rh := resp.splitAndErase()
	if ih != rh || (v.handshakeHash != nil && !bytes.Equal(ih[:], v.handshakeHash)) {
		t.Fatalf("handshake hash %x / %x, want %x", ih, rh, v.handshakeHash)
	}
	var iSend, iRecv, rSend, rRecv cipherState
	iSend.initializeKey(i1)
	iRecv.initializeKey(i2)
	rRecv.initializeKey(r1)
	rSend.initializeKey(r2)
	for i, m := range v.messages[n:] {
		w, r := &iSend, &rRecv
		// The JSON files keep alternating after the handshake; flynn's
		// generator restarts with the initiator (they differ only for XX).
		turn := n + i
		if v.source == "flynn.txt" {
			turn = i
		}
		if turn%2 == 1 {
			w, r = &rSend, &iRecv
		}
		ct, _ := w.encryptWithAd(nil, nil, m.payload)
		if !bytes.Equal(ct, m.ciphertext) {
			t.Fatalf("transport message %d: %x, want %x", n+i, ct, m.ciphertext)
		}
		pt, err := r.decryptWithAd(nil, nil, ct)
		if err != nil || !bytes.Equal(pt, m.payload) {
			t.Fatalf("transport message %d: decrypt = %x, %v", n+i, pt, err)
		}
	}
}

func TestNoiseVectors(t *testing.T) {
	var all []noiseVector
	all = append(all, loadJSONVectors(t, "cacophony.json")...)
	all = append(all, loadJSONVectors(t, "snow.json")...)
	all = append(all, loadFlynnVectors(t)...)
	count := map[string]int{}
	for i, v := range all {
		if noisePatterns[v.protocol] == nil {
			t.Fatalf("%s: unexpected protocol %s", v.source, v.protocol)
		}
		count[v.source+" "+v.protocol]++
		t.Run(fmt.Sprintf("%s/%d/%s", v.source, i, v.protocol), func(t *testing.T) { runNoiseVector(t, v) })
	}
	// Every source and protocol we claim must be present (snow has no IKpsk2
	// vector of this suite).
	for _, want := range []string{
		"cacophony.json Noise_NN_25519_ChaChaPoly_BLAKE2s", "cacophony.json Noise_XX_25519_ChaChaPoly_BLAKE2s",
		"cacophony.json Noise_IK_25519_ChaChaPoly_BLAKE2s", "cacophony.json Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
		"snow.json Noise_NN_25519_ChaChaPoly_BLAKE2s", "snow.json Noise_XX_25519_ChaChaPoly_BLAKE2s",
		"snow.json Noise_IK_25519_ChaChaPoly_BLAKE2s",
		"flynn.txt Noise_NN_25519_ChaChaPoly_BLAKE2s", "flynn.txt Noise_XX_25519_ChaChaPoly_BLAKE2s",
		"flynn.txt Noise_IK_25519_ChaChaPoly_BLAKE2s", "flynn.txt Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
	} {
		if count[want] == 0 {
			t.Errorf("no vector for %s", want)
		}
	}
	t.Logf("%d vectors: %v", len(all), count)
}

// The patterns only the vector tests use; patternIKpsk2 (noise.go) is the
// one kadchat runs.
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
)
