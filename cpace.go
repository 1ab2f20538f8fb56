// CPace and Elligator 2 for invitations (SPEC.md 7.3).
//
// Flow: both parties hash the generator string (DSI, the code as PRS, CI,
// sid) with SHA-512, decode 255 bits as a u-coordinate and map it onto
// Curve25519 with Elligator 2: that point is the generator g. Each draws
// a scalar and sends Y = X25519(y, g); each computes K = X25519(y, Y'),
// aborting on the neutral element, then ISK from K and the transcript,
// and the confirmation key and tags from ISK. invite.go drives it and
// derives the sealing keys; this file knows nothing of the wire.
package main

import (
	"crypto/hmac"
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/big"
)

// CPace, ciphersuite CPACE-X25519-SHA512 (draft-irtf-cfrg-cpace-21), in the
// draft's own words: prepend_len, lv_cat, generator_string,
// calculate_generator, scalar_mult_vfy, transcript_ir and the ISK.

const (
	cpaceDSI        = "CPace255"     // G_X25519.DSI
	cpaceDSIISK     = "CPace255_ISK" // G.DSI || b"_ISK"
	cpaceMacLabel   = "CPaceMac"     // key confirmation, draft section "Key confirmation"
	cpaceHashBlock  = 128            // H.s_in_bytes of SHA-512
	cpaceFieldBytes = 32             // G_X25519.field_size_bytes
	cpaceISKLen     = sha512.Size    // H.b_in_bytes
)

// errCPaceIdentity is scalar_mult_vfy's abort: the result was G.I (zero).
var errCPaceIdentity = errors.New("cpace: scalar_mult_vfy gave the neutral element")

// prependLen is prepend_len (draft 6.3, Appendix A.1.1): the LEB128
// length of s, then s, appended to dst.
func prependLen(dst, s []byte) []byte {
	n := len(s)
	for n >= 0x80 {
		dst = append(dst, byte(n)|0x80)
		n >>= 7
	}
	return append(append(dst, byte(n)), s...)
}

// lvCat is lv_cat (draft 6.3, Appendix A.1.3): every argument with its
// length prepended.
func lvCat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = prependLen(out, p)
	}
	return out
}

// cpaceGeneratorString is generator_string(DSI, PRS, CI, sid, s_in_bytes)
// (draft 8.1, Appendix A.2):
// the zero padding makes DSI and PRS fill the first hash block, so the
// work done on the password does not depend on its length.
func cpaceGeneratorString(dsi, prs, ci, sid []byte) []byte {
	zpad := cpaceHashBlock - 1 - len(prependLen(nil, prs)) - len(prependLen(nil, dsi))
	return lvCat(dsi, prs, make([]byte, max(0, zpad)), ci, sid)
}

// cpaceCalculateGenerator is G_X25519.calculate_generator (draft 8.2) with
// H = SHA-512:
// hash the generator string, decode 255 bits as a u-coordinate, and map it
// onto Curve25519 with Elligator 2.
func cpaceCalculateGenerator(prs, ci, sid []byte) [cpaceFieldBytes]byte {
	h := sha512.Sum512(cpaceGeneratorString([]byte(cpaceDSI), prs, ci, sid))
	u := decodeUCoordinate(h[:cpaceFieldBytes])
	return encodeUCoordinate(elligator2Curve25519(u))
}

// cpaceScalarMultVfy is G_X25519.scalar_mult_vfy(y, g) = X25519(y, g)
// (draft 8.2), aborting on the neutral element (draft 7.2); crypto/ecdh clamps y, clears bit 255
// of g and refuses the all-zero result itself.
func cpaceScalarMultVfy(y, g [cpaceFieldBytes]byte) ([cpaceFieldBytes]byte, error) {
	var out [cpaceFieldBytes]byte
	priv, err := x25519.NewPrivateKey(y[:])
	if err != nil {
		return out, fmt.Errorf("cpace: %w", err)
	}
	pub, err := x25519.NewPublicKey(g[:])
	if err != nil {
		return out, fmt.Errorf("cpace: %w", err)
	}
	k, err := priv.ECDH(pub)
	if err != nil || subtle.ConstantTimeCompare(k, out[:]) == 1 {
		return out, errCPaceIdentity
	}
	copy(out[:], k)
	wipe(k)
	return out, nil
}

// cpaceTranscriptIR is transcript_ir(Ya, ADa, Yb, ADb) (draft 6.3):
// initiator first.
func cpaceTranscriptIR(ya, ada, yb, adb []byte) []byte {
	return append(lvCat(ya, ada), lvCat(yb, adb)...)
}

// cpaceISK is H.hash(lv_cat(DSI || "_ISK", sid, K) || transcript_ir(...))
// (draft 7.2).
func cpaceISK(sid, k, ya, ada, yb, adb []byte) [cpaceISKLen]byte {
	buf := append(lvCat([]byte(cpaceDSIISK), sid, k), cpaceTranscriptIR(ya, ada, yb, adb)...)
	defer wipe(buf)
	return sha512.Sum512(buf)
}

// cpaceMacKey is mac_key = H.hash(b"CPaceMac" || sid || ISK) (draft 10.4).
func cpaceMacKey(sid []byte, isk [cpaceISKLen]byte) [sha512.Size]byte {
	buf := append(append([]byte(cpaceMacLabel), sid...), isk[:]...)
	defer wipe(buf)
	return sha512.Sum512(buf)
}

// cpaceTag is the confirmation tag MAC(mac_key, lv_cat(Y, AD)) (draft
// 10.4), with HMAC-SHA-512.
func cpaceTag(macKey [sha512.Size]byte, y, ad []byte) [sha512.Size]byte {
	m := hmac.New(sha512.New, macKey[:])
	m.Write(lvCat(y, ad))
	var t [sha512.Size]byte
	m.Sum(t[:0])
	return t
}

// ---------------------------------------------------------------------------
// Field arithmetic mod p = 2^255-19 and the Elligator 2 map of RFC 9380
// (map_to_curve_elligator2 with Curve25519's A = 486662, B = 1, Z = 2).
// math/big is not constant-time: see SPEC.md 7.9 on what that exposes.

var (
	fieldP     = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	curveA     = big.NewInt(486662)
	ell2Z      = big.NewInt(2)
	fieldPm2   = new(big.Int).Sub(fieldP, big.NewInt(2))
	fieldHalfP = new(big.Int).Rsh(new(big.Int).Sub(fieldP, big.NewInt(1)), 1) // (p-1)/2
)

// decodeUCoordinate is RFC 7748's (section 5): little-endian, bit 255 ignored, and the
// result reduced mod p (values p..2^255-1 are non-canonical encodings).
func decodeUCoordinate(b []byte) *big.Int {
	var be [cpaceFieldBytes]byte
	for i := range be {
		be[i] = b[cpaceFieldBytes-1-i]
	}
	be[0] &= 0x7f
	return new(big.Int).Mod(new(big.Int).SetBytes(be[:]), fieldP)
}

// encodeUCoordinate writes a reduced field element little-endian.
func encodeUCoordinate(x *big.Int) [cpaceFieldBytes]byte {
	var be, le [cpaceFieldBytes]byte
	x.FillBytes(be[:])
	for i := range le {
		le[i] = be[cpaceFieldBytes-1-i]
	}
	return le
}

func fieldMul(a, b *big.Int) *big.Int { return new(big.Int).Mod(new(big.Int).Mul(a, b), fieldP) }
func fieldAdd(a, b *big.Int) *big.Int { return new(big.Int).Mod(new(big.Int).Add(a, b), fieldP) }
func fieldNeg(a *big.Int) *big.Int    { return new(big.Int).Mod(new(big.Int).Neg(a), fieldP) }

// fieldInv0 is inv0 (RFC 9380 section 4): x^(p-2), so 0 maps to 0.
func fieldInv0(a *big.Int) *big.Int { return new(big.Int).Exp(a, fieldPm2, fieldP) }

// fieldIsSquare is is_square (RFC 9380 section 4): x^((p-1)/2) is 0 or 1.
func fieldIsSquare(a *big.Int) bool {
	return new(big.Int).Exp(a, fieldHalfP, fieldP).Cmp(big.NewInt(1)) <= 0
}

// elligator2Curve25519 is map_to_curve_elligator2 (RFC 9380 6.7.1) for
// Curve25519 with the constants of RFC 9380 8.5, returning the Montgomery
// u-coordinate (the v-coordinate is not needed by X25519 and is not
// computed).
func elligator2Curve25519(u *big.Int) *big.Int {
	tv1 := fieldMul(ell2Z, fieldMul(u, u))     // Z * u^2
	if tv1.Cmp(fieldNeg(big.NewInt(1))) == 0 { // exceptional case: 1 + Z u^2 = 0
		tv1.SetInt64(0)
	}
	x1 := fieldMul(fieldNeg(curveA), fieldInv0(fieldAdd(tv1, big.NewInt(1))))
	gx1 := fieldAdd(fieldMul(fieldAdd(fieldMul(x1, x1), fieldMul(curveA, x1)), x1), x1) // x1^3 + A x1^2 + x1
	if fieldIsSquare(gx1) {
		return x1
	}
	return fieldAdd(fieldNeg(x1), fieldNeg(curveA)) // x2 = -x1 - A
}
