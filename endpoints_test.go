package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// endpointVector is SPEC.md 5.8.2's vector.
func endpointVector(t *testing.T) map[string]string {
	t.Helper()
	v := specVectorMap(t, "endpoint-vector")["record"]
	if len(v) == 0 {
		t.Fatal("SPEC.md has no endpoint-vector record")
	}
	return v
}

func TestEndpointSpecVector(t *testing.T) {
	v := endpointVector(t)
	secret := [32]byte(vectorHex(t, v["secret"]))
	sender := publicKey(vectorHex(t, v["sender"]))
	epoch, _ := strconv.ParseUint(v["epoch"], 10, 64)
	seed, seal := endpointKeys(secret, sender, epoch)
	if got := hex.EncodeToString(seed[:]); got != v["seed"] {
		t.Errorf("seed = %s, want %s", got, v["seed"])
	}
	if got := hex.EncodeToString(seal[:]); got != v["seal"] {
		t.Errorf("seal = %s, want %s", got, v["seal"])
	}
	k := endpointItemKey(seed)
	if got := hex.EncodeToString(k[:]); got != v["k"] {
		t.Errorf("k = %s, want %s", got, v["k"])
	}
	if got := mutableTarget(k, nil).String(); got != v["target"] {
		t.Errorf("target = %s, want %s", got, v["target"])
	}
	rec := vectorHex(t, v["record"])
	r, err := parseEndpointRecord(rec)
	if err != nil {
		t.Fatalf("record: %v", err)
	}
	want := endpointRecord{Nonce: 0x0123456789abcdef, Ack: 0xfedcba9876543210, Cands: []endpointCandidate{
		{endpointCandReflexive, netip.MustParseAddrPort("203.0.113.7:6881")},
		{endpointCandHost, netip.MustParseAddrPort("[2001:db8:300:1::10]:6881")},
		{endpointCandHost, netip.MustParseAddrPort("192.168.1.10:6881")},
	}}
	relay := publicKey(vectorHex(t, v["relay"]))
	tag := relayTag(secret, relay)
	if got := strconv.FormatUint(tag, 16); got != strings.TrimLeft(v["tag"], "0") {
		t.Errorf("tag = %016x, want %s", tag, v["tag"])
	}
	want.Relays = []uint64{tag}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("record parses to %+v, want %+v", r, want)
	}
	if out := r.appendTo(nil); !bytes.Equal(out, rec) {
		t.Errorf("record re-encodes to %x", out)
	}
	seq, _ := strconv.ParseInt(v["seq"], 10, 64)
	n := [24]byte(vectorHex(t, v["n"]))
	value := vectorHex(t, v["value"])
	if got := sealEndpointValue(seal, seq, rec, n); !bytes.Equal(got, value) {
		t.Errorf("value = %x, want %x", got, value)
	}
	if got, err := openEndpointValue(seal, seq, value); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("open(value) = %+v, %v", got, err)
	}
	// The item a storing node sees verifies under k and lands at the target.
	it := signItem(ed25519.NewKeyFromSeed(seed[:]), nil, seq, value)
	if err := verifyItem(it); err != nil || it.target().String() != v["target"] {
		t.Errorf("item: %v, target %v", err, it.target())
	}
	if _, err := openEndpointValue(seal, seq+1, value); err == nil {
		t.Error("the value opened under another seq")
	}
}

// TestEndpointSpecNegatives builds SPEC.md 5.8.2's negative vectors.
func TestEndpointSpecNegatives(t *testing.T) {
	v := endpointVector(t)
	rec := vectorHex(t, v["record"])
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(rec)) }
	const cand2 = endpointHeaderLen + endpointCand4Len // the IPv6 host candidate
	const cand3 = cand2 + endpointCand6Len             // the IPv4 host candidate
	const relays = cand3 + endpointCand4Len            // the relay count
	for name, b := range map[string][]byte{
		"version 02":       edit(func(b []byte) []byte { b[0] = 2; return b }),
		"flags 02":         edit(func(b []byte) []byte { b[1] = 2; return b }),
		"nonce 0":          edit(func(b []byte) []byte { clear(b[2:10]); return b }),
		"count 9":          edit(func(b []byte) []byte { b[18] = 9; return b }),
		"byte appended":    append(bytes.Clone(rec), 0),
		"last byte gone":   rec[:len(rec)-1],
		"family 04 for v6": edit(func(b []byte) []byte { b[cand2+1] = endpointFamily4; return b }),
		"port 0":           edit(func(b []byte) []byte { b[relays-1], b[relays-2] = 0, 0; return b }),
		"candidate twice": edit(func(b []byte) []byte {
			return append(append(b[:cand3], rec[endpointHeaderLen:cand2]...), rec[relays:]...)
		}),
		"relays 5": edit(func(b []byte) []byte { b[relays] = 5; return b }),
		"hint twice": edit(func(b []byte) []byte {
			b[relays] = 2
			return append(b, rec[relays+1:]...)
		}),
	} {
		if r, err := parseEndpointRecord(b); err == nil || !reflect.DeepEqual(r, endpointRecord{}) {
			t.Errorf("%s: parse(%x) = %+v, %v; want an error and a zero record", name, b, r, err)
		}
	}
	seal := [32]byte(vectorHex(t, v["seal"]))
	seq, _ := strconv.ParseInt(v["seq"], 10, 64)
	value := vectorHex(t, v["value"])
	value[len(value)-1] ^= 1
	if _, err := openEndpointValue(seal, seq, value); err == nil {
		t.Error("a changed value opened")
	}
}

func TestParseEndpointRecord(t *testing.T) {
	head := func(count byte) []byte {
		return append([]byte{endpointVersion, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, count)
	}
	noRelays := []byte{0}
	cand4 := func(kind byte, a string) []byte {
		return appendCompactAddr([]byte{kind, endpointFamily4}, netip.MustParseAddrPort(a))
	}
	cat := func(bs ...[]byte) []byte { return append(bytes.Join(bs, nil), noRelays...) }
	raw := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{"no candidates", cat(head(0)), false},
		{"no relay count", head(0), true},
		{"empty", nil, true},
		{"header cut", head(0)[:18], true},
		{"two hints", raw(head(0), []byte{2}, make([]byte, 7), []byte{1}, make([]byte, 7), []byte{2}), false},
		{"hint cut", raw(head(0), []byte{1}, make([]byte, 7)), true},
		{"five hints", raw(head(0), []byte{5}, make([]byte, 40)), true},
		{"one reflexive", cat(head(1), cand4(endpointCandReflexive, "203.0.113.1:1")), false},
		{"unknown type", cat(head(1), cand4(3, "203.0.113.1:1")), true},
		{"type 0", cat(head(1), cand4(0, "203.0.113.1:1")), true},
		{"family 05", cat(head(1), []byte{1, 5, 1, 2, 3, 4, 0, 1}), true},
		{"unspecified", cat(head(1), cand4(1, "0.0.0.0:1")), true},
		{"multicast", cat(head(1), cand4(1, "224.0.0.1:1")), true},
		{"broadcast", cat(head(1), cand4(1, "255.255.255.255:1")), true},
		{"link-local", cat(head(1), cand4(1, "169.254.1.1:1")), true},
		{"loopback is fine", cat(head(1), cand4(1, "127.0.0.1:1")), false},
		{"same address, other type", cat(head(2), cand4(1, "203.0.113.1:1"), cand4(2, "203.0.113.1:1")), false},
		{"mapped v4 in family 06", cat(head(1), []byte{1, 6}, netip.MustParseAddr("::ffff:1.2.3.4").AsSlice(), []byte{0, 1}), true},
		{"v6 link-local", cat(head(1), []byte{1, 6}, netip.MustParseAddr("fe80::1").AsSlice(), []byte{0, 1}), true},
		{"count says 2, holds 1", cat(head(2), cand4(1, "203.0.113.1:1")), true},
		{"eight", cat(head(8), bytes.Repeat(cand4(1, "203.0.113.1:1"), 1), cand4(1, "203.0.113.1:2"),
			cand4(1, "203.0.113.1:3"), cand4(1, "203.0.113.1:4"), cand4(1, "203.0.113.1:5"),
			cand4(1, "203.0.113.1:6"), cand4(1, "203.0.113.1:7"), cand4(1, "203.0.113.1:8")), false},
	}
	for _, tt := range tests {
		r, err := parseEndpointRecord(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: parseEndpointRecord(%x) error = %v, want error %v", tt.name, tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && !bytes.Equal(r.appendTo(nil), tt.in) {
			t.Errorf("%s: re-encodes to %x, want %x", tt.name, r.appendTo(nil), tt.in)
		}
	}
}

// TestEndpointRecordMax: eight IPv6 candidates make the longest record,
// and its sealed value is a valid BEP 44 value well under the limit.
func TestEndpointRecordMax(t *testing.T) {
	r := endpointRecord{Flags: endpointFlagRandom, Nonce: 1, Relays: []uint64{1, 2, 3, 4}}
	for i := range maxEndpointCandidates {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)})
		r.Cands = append(r.Cands, endpointCandidate{endpointCandHost, netip.AddrPortFrom(a, 6881)})
	}
	b := r.appendTo(nil)
	if len(b) != maxEndpointRecord {
		t.Fatalf("longest record is %d bytes, want %d", len(b), maxEndpointRecord)
	}
	v := sealEndpointValue([32]byte{1}, 7, b, [24]byte{})
	if err := checkBencode(v); err != nil || len(v) > maxItemValue {
		t.Fatalf("sealed value of %d bytes: %v", len(v), err)
	}
	if got, err := openEndpointValue([32]byte{1}, 7, v); err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("open = %+v, %v", got, err)
	}
	if _, err := openEndpointValue([32]byte{1}, 7, append(v, '0')); err == nil {
		t.Fatal("a value with a trailing byte opened")
	}
}

func FuzzEndpointRecord(f *testing.F) {
	for _, s := range []string{
		"01000123456789abcdeffedcba9876543210030204cb0071071ae1010620010db80300000100000000000000101ae10104c0a8010a1ae101471372e71ffb91a2",
		"0100000000000000000100000000000000000000",
		"0101000000000000000100000000000000000101047f0000011ae100",
		"0200000000000000000100000000000000000000",
		"010000000000000000000000000000000000000000",
		"01000000000000000001000000000000000000020000000000000001000000000000000001",
	} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseEndpointRecord(b)
		if err != nil {
			if !reflect.DeepEqual(r, endpointRecord{}) {
				t.Fatalf("error %v with a non-zero record %+v", err, r)
			}
			return
		}
		if out := r.appendTo(nil); !bytes.Equal(out, b) {
			t.Fatalf("parse(%x) re-encodes to %x", b, out)
		}
	})
}
