// Endpoint records (SPEC.md 5.8.1, 5.8.2): where a contact can reach us,
// readable by that contact alone.
//
// Flow: the puncher (punch.go) fills an endpointRecord with our candidates
// (interface addresses, the address DHT nodes see, the NAT's behaviour),
// its punch nonce and the contact's nonce it has opened toward; appendTo
// encodes it and sealEndpointValue encrypts it under the pair's key for the
// epoch (endpointKeys) and wraps it as a BEP 44 value, which the DHT stores
// as a mutable item signed with the pair's epoch key. Reading is the reverse:
// openEndpointValue decrypts, parseEndpointRecord checks every byte. None of
// these functions has side effects.
package main

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/crypto/chacha20poly1305"
)

// Wire constants of the endpoint record (SPEC.md 5.8.1, 5.8.2).
const (
	endpointSignLabel      = "kadchat endpoints v1 sign"
	endpointSealLabel      = "kadchat endpoints v1 seal"
	relayTagLabel          = "kadchat relay v1"
	endpointVersion        = 0x01
	endpointFlagRandom     = 0x01 // the writer's NAT gives each destination its own port
	endpointFlagsKnown     = endpointFlagRandom
	endpointHeaderLen      = 19 // version 1 || flags 1 || nonce 8 || ack 8 || count 1
	endpointCandHost       = 0x01
	endpointCandReflexive  = 0x02
	endpointFamily4        = 0x04
	endpointFamily6        = 0x06
	maxEndpointCandidates  = 8
	endpointCand4Len       = 2 + 4 + 2  // type || family || address || port
	endpointCand6Len       = 2 + 16 + 2 // the same with an IPv6 address
	maxRelayHints          = 4
	relayTagLen            = 8
	maxEndpointRecord      = endpointHeaderLen + maxEndpointCandidates*endpointCand6Len + 1 + maxRelayHints*relayTagLen
	endpointSealedOverhead = chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead // 24 + 16
)

// endpointCandidate is one address the writer may be reached at.
type endpointCandidate struct {
	Kind byte // endpointCandHost or endpointCandReflexive
	Addr netip.AddrPort
}

// endpointRecord is the plaintext of a record (SPEC.md 5.8.2).
type endpointRecord struct {
	Flags byte
	Nonce uint64 // the writer's punch nonce, never 0
	Ack   uint64 // the reader's nonce the writer has opened toward; 0: none
	Cands []endpointCandidate
	// Relays are tags (relayTag) of the writer's contacts that are online
	// with it and relay (SPEC.md 5.9): the reader looks for its own among them.
	Relays []uint64
}

var errEndpointRecord = errors.New("endpoints: malformed record")

// parseEndpointRecord parses a record strictly: version 1, known flags, a
// nonce, at most maxEndpointCandidates well-formed and distinct candidates,
// at most maxRelayHints distinct relay tags, nothing after them. It has no
// side effects; on error the record is zero.
func parseEndpointRecord(b []byte) (endpointRecord, error) {
	if len(b) < endpointHeaderLen {
		return endpointRecord{}, fmt.Errorf("%w: %d bytes, want at least %d", errEndpointRecord, len(b), endpointHeaderLen)
	}
	r := endpointRecord{Flags: b[1], Nonce: binary.BigEndian.Uint64(b[2:10]), Ack: binary.BigEndian.Uint64(b[10:18])}
	n := int(b[18])
	switch {
	case b[0] != endpointVersion:
		return endpointRecord{}, fmt.Errorf("%w: version %d", errEndpointRecord, b[0])
	case r.Flags&^endpointFlagsKnown != 0:
		return endpointRecord{}, fmt.Errorf("%w: unknown flags %02x", errEndpointRecord, r.Flags)
	case r.Nonce == 0:
		return endpointRecord{}, fmt.Errorf("%w: zero nonce", errEndpointRecord)
	case n > maxEndpointCandidates:
		return endpointRecord{}, fmt.Errorf("%w: %d candidates, at most %d", errEndpointRecord, n, maxEndpointCandidates)
	}
	rest := b[endpointHeaderLen:]
	for range n {
		c, size, err := parseEndpointCandidate(rest)
		if err != nil {
			return endpointRecord{}, err
		}
		for _, o := range r.Cands {
			if o == c {
				return endpointRecord{}, fmt.Errorf("%w: candidate %v twice", errEndpointRecord, c.Addr)
			}
		}
		r.Cands = append(r.Cands, c)
		rest = rest[size:]
	}
	if len(rest) == 0 {
		return endpointRecord{}, fmt.Errorf("%w: no relay count", errEndpointRecord)
	}
	n, rest = int(rest[0]), rest[1:]
	if n > maxRelayHints || len(rest) != n*relayTagLen {
		return endpointRecord{}, fmt.Errorf("%w: %d relay hints in %d bytes", errEndpointRecord, n, len(rest))
	}
	for i := range n {
		tag := binary.BigEndian.Uint64(rest[i*relayTagLen:])
		if slices.Contains(r.Relays, tag) {
			return endpointRecord{}, fmt.Errorf("%w: relay hint %016x twice", errEndpointRecord, tag)
		}
		r.Relays = append(r.Relays, tag)
	}
	return r, nil
}

// parseEndpointCandidate reads one candidate from the front of b and
// returns its size.
func parseEndpointCandidate(b []byte) (endpointCandidate, int, error) {
	if len(b) < 2 {
		return endpointCandidate{}, 0, fmt.Errorf("%w: truncated candidate", errEndpointRecord)
	}
	kind, family := b[0], b[1]
	if kind != endpointCandHost && kind != endpointCandReflexive {
		return endpointCandidate{}, 0, fmt.Errorf("%w: candidate type %02x", errEndpointRecord, kind)
	}
	size := 0
	switch family {
	case endpointFamily4:
		size = endpointCand4Len
	case endpointFamily6:
		size = endpointCand6Len
	default:
		return endpointCandidate{}, 0, fmt.Errorf("%w: address family %02x", errEndpointRecord, family)
	}
	if len(b) < size {
		return endpointCandidate{}, 0, fmt.Errorf("%w: truncated candidate", errEndpointRecord)
	}
	a, err := parseCompactAddr(b[2:size])
	if err != nil {
		return endpointCandidate{}, 0, fmt.Errorf("%w: %w", errEndpointRecord, err)
	}
	if !validCandidateAddr(a) {
		return endpointCandidate{}, 0, fmt.Errorf("%w: candidate %v is not a unicast address and port", errEndpointRecord, a)
	}
	return endpointCandidate{Kind: kind, Addr: a}, size, nil
}

// validCandidateAddr: a unicast address another host can send to, and a
// port. Link-local addresses are refused: without their zone, which the
// wire form has no room for, they name no interface.
func validCandidateAddr(a netip.AddrPort) bool {
	ip := a.Addr()
	return a.IsValid() && a.Port() != 0 && !ip.IsUnspecified() && !ip.IsMulticast() &&
		!ip.IsLinkLocalUnicast() && ip != netip.AddrFrom4([4]byte{255, 255, 255, 255}) && ip.Zone() == ""
}

// appendTo appends the record's wire form; it is the inverse of
// parseEndpointRecord for every record that parses.
func (r *endpointRecord) appendTo(dst []byte) []byte {
	dst = append(dst, endpointVersion, r.Flags)
	dst = binary.BigEndian.AppendUint64(dst, r.Nonce)
	dst = binary.BigEndian.AppendUint64(dst, r.Ack)
	dst = append(dst, byte(len(r.Cands)))
	for _, c := range r.Cands {
		family := byte(endpointFamily6)
		if c.Addr.Addr().Is4() {
			family = endpointFamily4
		}
		dst = appendCompactAddr(append(dst, c.Kind, family), c.Addr)
	}
	dst = append(dst, byte(len(r.Relays)))
	for _, tag := range r.Relays {
		dst = binary.BigEndian.AppendUint64(dst, tag)
	}
	return dst
}

// relayTag names a relay in a record for one pair of contacts: only a
// reader who shares the pair's secret and knows the relay's key can tell
// which contact it is (SPEC.md 5.9).
func relayTag(secret [32]byte, relay publicKey) uint64 {
	m := hmac.New(sha256.New, secret[:])
	m.Write([]byte(relayTagLabel))
	m.Write(relay[:])
	return binary.BigEndian.Uint64(m.Sum(nil))
}

// endpointKeys derives the writer's keys for one epoch: the ed25519 seed
// that signs its BEP 44 item and the key that seals the record. sender is
// the writer's public key, so each direction has its own item.
func endpointKeys(secret [32]byte, sender publicKey, epoch uint64) (seed, seal [32]byte) {
	derive := func(label string) (out [32]byte) {
		m := hmac.New(sha256.New, secret[:])
		m.Write([]byte(label))
		m.Write(sender[:])
		m.Write(binary.BigEndian.AppendUint64(nil, epoch))
		m.Sum(out[:0])
		return out
	}
	return derive(endpointSignLabel), derive(endpointSealLabel)
}

// endpointItemKey is the BEP 44 public key of a writer's item: its target
// is SHA-1 of it (no salt).
func endpointItemKey(seed [32]byte) [32]byte {
	return [32]byte(ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey))
}

// sealEndpointValue encrypts a record and wraps it as the bencoded string
// that is the BEP 44 value: nonce (24) || XChaCha20-Poly1305 ciphertext,
// with the item's seq (8 bytes) as associated data.
func sealEndpointValue(key [32]byte, seq int64, record []byte, nonce [chacha20poly1305.NonceSizeX]byte) []byte {
	aead, _ := chacha20poly1305.NewX(key[:]) // only fails for a wrong key size
	body := make([]byte, 0, len(nonce)+len(record)+chacha20poly1305.Overhead)
	body = aead.Seal(append(body, nonce[:]...), nonce[:], record, binary.BigEndian.AppendUint64(nil, uint64(seq)))
	return appendBencodeString(nil, body)
}

// openEndpointValue reverses sealEndpointValue and parses the record.
func openEndpointValue(key [32]byte, seq int64, v []byte) (endpointRecord, error) {
	body, end, err := scanString(v, 0)
	if err != nil || end != len(v) {
		return endpointRecord{}, fmt.Errorf("%w: value is not one bencoded string", errEndpointRecord)
	}
	if len(body) < endpointSealedOverhead || len(body) > endpointSealedOverhead+maxEndpointRecord {
		return endpointRecord{}, fmt.Errorf("%w: sealed value of %d bytes", errEndpointRecord, len(body))
	}
	aead, _ := chacha20poly1305.NewX(key[:])
	nonce := body[:chacha20poly1305.NonceSizeX]
	pt, err := aead.Open(nil, nonce, body[len(nonce):], binary.BigEndian.AppendUint64(nil, uint64(seq)))
	if err != nil {
		return endpointRecord{}, fmt.Errorf("endpoints: open: %w", err)
	}
	return parseEndpointRecord(pt)
}

// public reports whether the writer sits on the internet itself: one of
// its interface addresses is the IPv4 address DHT nodes see.
func (r *endpointRecord) public() bool {
	for _, c := range r.Cands {
		if c.Kind != endpointCandReflexive || !c.Addr.Addr().Is4() {
			continue
		}
		for _, h := range r.Cands {
			if h.Kind == endpointCandHost && h.Addr.Addr() == c.Addr.Addr() {
				return true
			}
		}
	}
	return false
}
