// Tests of CPace and Elligator 2 (SPEC.md 7.3) against the CPace draft's
// and RFC 9380's vectors in testdata/cpace.
package main

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"regexp"
	"strings"
	"testing"
)

// cpaceVectors is the CPACE-X25519-SHA512 part of the draft's vector file.
type cpaceVectors struct {
	G map[string]string `json:"G_25519"`
	P map[string]string `json:"X25519_points"`
}

func loadCPaceVectors(t *testing.T) cpaceVectors {
	t.Helper()
	b, err := os.ReadFile("testdata/cpace/x25519_sha512.json")
	if err != nil {
		t.Fatal(err)
	}
	var v cpaceVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func cpHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ToLower(s))
	if err != nil {
		t.Fatalf("hex %q: %v", s, err)
	}
	return b
}

func cpHex32(t *testing.T, s string) [32]byte {
	t.Helper()
	var a [32]byte
	if b := cpHex(t, s); len(b) != 32 || copy(a[:], b) != 32 {
		t.Fatalf("hex %q: want 32 bytes", s)
	}
	return a
}

// textBlockHex collects the hex lines that follow the line containing
// label in one of the draft's text blocks.
func textBlockHex(t *testing.T, text, label string) []byte {
	t.Helper()
	i := strings.Index(text, label)
	if i < 0 {
		t.Fatalf("label %q not found", label)
	}
	lines := strings.Split(text[i+len(label):], "\n")[1:]
	isHex := regexp.MustCompile(`^[0-9a-f]+$`)
	var sb strings.Builder
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "(length:") && sb.Len() == 0 {
			continue
		}
		if !isHex.MatchString(l) {
			break
		}
		sb.WriteString(l)
	}
	return cpHex(t, sb.String())
}

func TestCPaceStringFunctions(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"prepend_len empty", prependLen(nil, nil), "00"},
		{"prepend_len 1234", prependLen(nil, []byte("1234")), "0431323334"},
		{"lv_cat", lvCat([]byte("1234"), []byte("5"), nil, []byte("678")), "043132333401350003363738"},
		{"transcript_ir 1", cpaceTranscriptIR([]byte("123"), []byte("PartyA"), []byte("234"), []byte("PartyB")),
			"03313233065061727479410332333406506172747942"},
		{"transcript_ir 2", cpaceTranscriptIR([]byte("3456"), []byte("PartyA"), []byte("2345"), []byte("PartyB")),
			"043334353606506172747941043233343506506172747942"},
	}
	for _, tt := range tests {
		if got := hex.EncodeToString(tt.got); got != tt.want {
			t.Errorf("%s = %s, want %s", tt.name, got, tt.want)
		}
	}
	// LEB128 lengths of 127 and 128 bytes.
	r127, r128 := make([]byte, 127), make([]byte, 128)
	for i := range r128 {
		r128[i] = byte(i)
		if i < 127 {
			r127[i] = byte(i)
		}
	}
	if got := prependLen(nil, r127); got[0] != 0x7f || !bytes.Equal(got[1:], r127) {
		t.Errorf("prepend_len(range(127)) starts %x", got[:2])
	}
	if got := prependLen(nil, r128); got[0] != 0x80 || got[1] != 0x01 || !bytes.Equal(got[2:], r128) {
		t.Errorf("prepend_len(range(128)) starts %x", got[:3])
	}
}

// TestCPaceCalculateGenerator follows the draft's block for
// calculate_generator step by step.
func TestCPaceCalculateGenerator(t *testing.T) {
	raw, err := os.ReadFile("testdata/cpace/calculate_generator.txt")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	v := loadCPaceVectors(t)
	prs, ci, sid := cpHex(t, v.G["PRS"]), cpHex(t, v.G["CI"]), cpHex(t, v.G["sid"])
	if string(prs) != "Password" || !strings.Contains(text, "ZPAD length: 109") {
		t.Fatalf("unexpected vector inputs %q", prs)
	}
	gs := cpaceGeneratorString([]byte(cpaceDSI), prs, ci, sid)
	if want := textBlockHex(t, text, "generator_string(G.DSI,PRS,CI,sid,H.s_in_bytes):"); !bytes.Equal(gs, want) {
		t.Fatalf("generator_string = %x\nwant %x", gs, want)
	}
	h := sha512.Sum512(gs)
	if want := textBlockHex(t, text, "hash generator string"); !bytes.Equal(h[:32], want) {
		t.Errorf("hash = %x, want %x", h[:32], want)
	}
	u := encodeUCoordinate(decodeUCoordinate(h[:32]))
	if want := textBlockHex(t, text, "decoded field element of 255 bits"); !bytes.Equal(u[:], want) {
		t.Errorf("decoded u = %x, want %x", u, want)
	}
	g := cpaceCalculateGenerator(prs, ci, sid)
	if want := textBlockHex(t, text, "generator g:"); !bytes.Equal(g[:], want) || g != cpHex32(t, v.G["g"]) {
		t.Errorf("g = %x, want %x", g, want)
	}
}

// TestCPaceVectors runs both sides with the draft's scalars: Ya, Yb, K, ISK
// (initiator-responder), and the confirmation keys' inputs.
func TestCPaceVectors(t *testing.T) {
	v := loadCPaceVectors(t)
	g := cpaceCalculateGenerator(cpHex(t, v.G["PRS"]), cpHex(t, v.G["CI"]), cpHex(t, v.G["sid"]))
	ya, yb := cpHex32(t, v.G["ya"]), cpHex32(t, v.G["yb"])
	Ya, err := cpaceScalarMultVfy(ya, g)
	if err != nil || Ya != cpHex32(t, v.G["Ya"]) {
		t.Fatalf("Ya = %x, %v; want %s", Ya, err, v.G["Ya"])
	}
	Yb, err := cpaceScalarMultVfy(yb, g)
	if err != nil || Yb != cpHex32(t, v.G["Yb"]) {
		t.Fatalf("Yb = %x, %v; want %s", Yb, err, v.G["Yb"])
	}
	ka, errA := cpaceScalarMultVfy(ya, Yb)
	kb, errB := cpaceScalarMultVfy(yb, Ya)
	if errA != nil || errB != nil || ka != kb || ka != cpHex32(t, v.G["K"]) {
		t.Fatalf("K = %x / %x (%v, %v), want %s", ka, kb, errA, errB, v.G["K"])
	}
	sid, ada, adb := cpHex(t, v.G["sid"]), cpHex(t, v.G["ADa"]), cpHex(t, v.G["ADb"])
	isk := cpaceISK(sid, ka[:], Ya[:], ada, Yb[:], adb)
	if want := cpHex(t, v.G["ISK_IR"]); !bytes.Equal(isk[:], want) {
		t.Errorf("ISK_IR = %x\nwant %x", isk, want)
	}
}

func TestCPaceScalarMultVfyLowOrder(t *testing.T) {
	raw, err := os.ReadFile("testdata/cpace/x25519_scalar_mult_vfy.txt")
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		k, val, ok := strings.Cut(l, ":")
		if !ok {
			k, val, ok = strings.Cut(l, "=")
		}
		if !ok {
			t.Fatalf("line %q", l)
		}
		vals[strings.TrimSpace(k)] = strings.TrimSpace(val)
	}
	s := cpHex32(t, vals["s"])
	for _, i := range "0123456789ab" {
		u, q := cpHex32(t, vals["u"+string(i)]), cpHex32(t, vals["q"+string(i)])
		got, err := cpaceScalarMultVfy(s, u)
		if q == [32]byte{} {
			if err == nil {
				t.Errorf("u%c: scalar_mult_vfy = %x, want the abort", i, got)
			}
			continue
		}
		if err != nil || got != q {
			t.Errorf("u%c: scalar_mult_vfy = %x, %v; want %x", i, got, err, q)
		}
	}
	// The JSON names the same inputs; u0..u5 and u7 must abort as Ya or Yb.
	v := loadCPaceVectors(t)
	for _, i := range []string{"0", "1", "2", "3", "4", "5", "7"} {
		if _, err := cpaceScalarMultVfy(s, cpHex32(t, v.P["Invalid Y"+i])); err == nil {
			t.Errorf("Invalid Y%s accepted", i)
		}
	}
}

// TestElligator2RFC9380 checks map_to_curve_elligator2 on curve25519
// against RFC 9380 J.4.2 (the _NU_ suite): u[0] maps to Q.x.
func TestElligator2RFC9380(t *testing.T) {
	raw, err := os.ReadFile("testdata/cpace/rfc9380_curve25519_ell2_nu.txt")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, then read "name = value" pairs in order.
	var fields [][2]string
	for _, l := range strings.Split(string(raw), "\n") {
		if k, val, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, " ") {
			fields = append(fields, [2]string{strings.TrimSpace(k), strings.TrimSpace(val)})
		} else if s := strings.TrimSpace(l); s != "" && len(fields) > 0 {
			fields[len(fields)-1][1] += s
		}
	}
	n := 0
	var u string
	for _, f := range fields {
		switch f[0] {
		case "u[0]":
			u = f[1]
		case "Q.x":
			in, _ := new(big.Int).SetString(u, 16)
			want, _ := new(big.Int).SetString(f[1], 16)
			if got := elligator2Curve25519(in); got.Cmp(want) != 0 {
				t.Errorf("map(%s) = %x, want %x", u, got, want)
			}
			n++
		}
	}
	if n != 5 {
		t.Fatalf("checked %d vectors, want 5", n)
	}
}

// BenchmarkCPaceGenerator measures calculate_generator (SHA-512 and the
// big-integer Elligator 2 map), done once per run on each side.
func BenchmarkCPaceGenerator(b *testing.B) {
	b.ReportAllocs()
	sid := make([]byte, inviteSIDLen)
	for i := 0; b.Loop(); i++ {
		sid[0] = byte(i)
		cpaceCalculateGenerator([]byte("4821-tumor-unicorn"), []byte(inviteCI), sid)
	}
}
