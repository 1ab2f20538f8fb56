package main

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dropVector is one ```drop-vector block of SPEC.md 8.8.
type dropVector map[string]string

func (v dropVector) hex(t *testing.T, key string) []byte {
	t.Helper()
	s, ok := v[key]
	if !ok {
		t.Fatalf("vector lacks %q", key)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", "")) // long values continue on indented lines
	if err != nil {
		t.Fatalf("vector %s: %v", key, err)
	}
	return b
}

func (v dropVector) num(t *testing.T, key string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(v[key], 10, 64)
	if err != nil {
		t.Fatalf("vector %s: %v", key, err)
	}
	return n
}

// check compares a computed value with the vector's, in hex.
func (v dropVector) check(t *testing.T, key string, got []byte) {
	t.Helper()
	if want := strings.ReplaceAll(v[key], " ", ""); hex.EncodeToString(got) != want {
		t.Errorf("%s = %x, SPEC.md says %s", key, got, want)
	}
}

func dropSpecVectors(t *testing.T) map[string]dropVector {
	out := map[string]dropVector{}
	for name, fields := range specVectorMap(t, "drop-vector") {
		out[name] = fields
	}
	return out
}

// checkDropSeal recomputes a vector's direction key, ephemeral key, DH,
// mask, message key and item from its inputs, and opens the item with the
// recipient's key; from is the sender's key, to the recipient's.
func checkDropSeal(t *testing.T, v dropVector, from, to publicKey, recipient func(id uint32, eph [32]byte) ([32]byte, bool), toKey [32]byte) []byte {
	t.Helper()
	dir := dropDirKey([32]byte(v.hex(t, "secret")), from, to)
	v.check(t, "dir", dir[:])
	day := v.num(t, "day")
	priv := dropDayKey(dir, day)
	v.check(t, "k", priv.Public().(ed25519.PublicKey))
	e, err := ecdh.X25519().NewPrivateKey(v.hex(t, "eph-priv"))
	if err != nil {
		t.Fatal(err)
	}
	v.check(t, "eph-pub", e.PublicKey().Bytes())
	shared, err := e.ECDH(mustX25519Pub(t, toKey[:]))
	if err != nil {
		t.Fatal(err)
	}
	v.check(t, "dh", shared)
	id := uint32(v.num(t, "id"))
	seal, err := dropSealFrom(e, dir, toKey, id)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%08x", dropIDMask(dir, seal.Eph)); got != v["mask"] {
		t.Errorf("mask = %s, SPEC.md says %s", got, v["mask"])
	}
	v.check(t, "key", seal.Key[:])
	frame := v.hex(t, "frame")
	item, err := seal.sealItem(dir, 0, frame)
	if err != nil {
		t.Fatal(err)
	}
	v.check(t, "item", item)
	it, err := parseDropValue(appendDropValue(nil, v.hex(t, "item")))
	if err != nil {
		t.Fatal(err)
	}
	got, gotID, err := openDropItem(dir, it, 0, recipient)
	if err != nil || gotID != id || !bytes.Equal(got, frame) {
		t.Errorf("opening the vector's item = %x, id %d, %v; want the frame, id %d", got, gotID, err, id)
	}
	return item
}

func mustX25519Pub(t *testing.T, b []byte) *ecdh.PublicKey {
	t.Helper()
	p, err := ecdh.X25519().NewPublicKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDropSpecMessageVector(t *testing.T) {
	v := dropSpecVectors(t)["message"]
	a, b := testIdentity(t, 0x40), testIdentity(t, 0x80)
	v.check(t, "pub-a", a.keys.pub[:])
	v.check(t, "pub-b", b.keys.pub[:])
	s, _ := a.staticSecret(b.public())
	v.check(t, "secret", s[:])
	if d := dropDayOf(time.Unix(int64(v.num(t, "time")), 0)); d != v.num(t, "day") {
		t.Errorf("day = %d, SPEC.md says %s", d, v["day"])
	}
	dir := dropDirKey(s, a.public(), b.public())
	day := v.num(t, "day")
	seed := dropMAC(dir[:], dropLabelSign, be64(day))
	v.check(t, "seed", seed[:])
	salt := dropSlotSalt(dir, day, v.num(t, "seq"), uint8(v.num(t, "part")))
	v.check(t, "salt", salt)
	k := [32]byte(v.hex(t, "k"))
	v.check(t, "target", func() []byte { tg := mutableTarget(k, salt); return tg[:] }())
	pre, err := ecdh.X25519().NewPrivateKey(v.hex(t, "prekey-priv"))
	if err != nil {
		t.Fatal(err)
	}
	v.check(t, "prekey-pub", pre.PublicKey().Bytes())
	if f := dropFrame(0x6b06daa49e3779b9, 1, "hi", 0); !bytes.Equal(f, v.hex(t, "frame")) {
		t.Errorf("frame = %x", f)
	}
	prekey := func(id uint32, eph [32]byte) ([32]byte, bool) {
		if id != 1 {
			return [32]byte{}, false
		}
		return dropX25519([32]byte(pre.Bytes()), eph)
	}
	item := checkDropSeal(t, v, a.public(), b.public(), prekey, [32]byte(pre.PublicKey().Bytes()))
	made := int64(v.num(t, "made"))
	it := signItem(dropDayKey(dir, day), salt, made, appendDropValue(nil, item))
	v.check(t, "sig", it.Sig[:])
	if err := verifyItem(it); err != nil {
		t.Errorf("the vector's item as a BEP 44 put: %v", err)
	}

	// Negative cases of SPEC.md 8.8, each treated as absent.
	vi, _ := parseDropValue(appendDropValue(nil, item))
	static := func(id uint32, eph [32]byte) ([32]byte, bool) {
		sb, err := b.staticSecret(publicKey(eph))
		return sb, err == nil
	}
	dirBA := dropDirKey(s, b.public(), a.public())
	if _, _, err := openDropItem(dir, vi, 0, static); err == nil {
		t.Error("the prekey drop opens with bob's static key")
	}
	if _, _, err := openDropItem(dir, vi, 1, prekey); err == nil {
		t.Error("the item opens as part 1")
	}
	if _, _, err := openDropItem(dirBA, vi, 0, prekey); err == nil {
		t.Error("the item opens in the other direction")
	}
	for i := range 8 * dropItemLen {
		bad := bytes.Clone(item)
		bad[i/8] ^= 1 << (i % 8)
		bi, _ := parseDropValue(appendDropValue(nil, bad))
		if _, _, err := openDropItem(dir, bi, 0, prekey); err == nil {
			t.Fatalf("bit %d flipped: the item opens", i)
		}
	}
	for _, n := range []int{dropItemLen - 1, dropItemLen + 1} {
		raw := make([]byte, n)
		if _, err := parseDropValue(append([]byte(strconv.Itoa(n)+":"), raw...)); err == nil {
			t.Errorf("a value of %d bytes parses", n)
		}
	}
}

func TestDropSpecAckVector(t *testing.T) {
	v := dropSpecVectors(t)["ack"]
	a, b := testIdentity(t, 0x40), testIdentity(t, 0x80)
	s, _ := a.staticSecret(b.public())
	dir := dropDirKey(s, b.public(), a.public())
	v.check(t, "salt", dropAckSalt(dir, v.num(t, "day")))
	ack := chatFrame{Type: chatFrameAck, Stream: 0x6b06daa49e3779b9, Seq: 1}
	v.check(t, "frame", ack.appendTo(nil))
	static := func(id uint32, eph [32]byte) ([32]byte, bool) {
		if id != 0 {
			return [32]byte{}, false
		}
		sa, err := a.staticSecret(publicKey(eph))
		return sa, err == nil
	}
	checkDropSeal(t, v, b.public(), a.public(), static, [32]byte(a.public()))
}

func TestDropSpecFrameVectors(t *testing.T) {
	v := dropSpecVectors(t)["frames"]
	pre, err := ecdh.X25519().NewPrivateKey(dropSpecVectors(t)["message"].hex(t, "prekey-priv"))
	if err != nil {
		t.Fatal(err)
	}
	v.check(t, "prekeys", appendPrekeys(nil, []prekeyEntry{{1, [32]byte(pre.PublicKey().Bytes())}}))
	v.check(t, "status", appendPrekeyStatus(nil, prekeyStatus{Max: 1, Held: []uint32{1}}))
	if es, err := parsePrekeys(v.hex(t, "prekeys")); err != nil || len(es) != 1 || es[0].ID != 1 {
		t.Errorf("parsePrekeys(vector) = %v, %v", es, err)
	}
	if st, err := parsePrekeyStatus(v.hex(t, "status")); err != nil || st.Max != 1 || len(st.Held) != 1 {
		t.Errorf("parsePrekeyStatus(vector) = %+v, %v", st, err)
	}
}
