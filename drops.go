// Dead drops: their locations, the item format and sealing (SPEC.md 8.1, 8.2).
//
// Flow: both contacts derive, from their static-static secret, one key per
// direction (dropDirKey); from it a signing key per day (dropDayKey) and a
// salt per message part (dropSlotSalt) or per day's acknowledgement
// (dropAckSalt), which together give BEP 44 locations only the two can
// compute. The sender seals a chat frame into an item of one fixed size
// under a key made from a fresh ephemeral X25519 key, the recipient's
// one-time prekey (or static key) and the direction key (newDropSeal,
// sealItem); the recipient opens it (openDropItem) and hands the frame to
// the chat's exactly-once path. Filler of the same size replaces an item
// that has been acknowledged (dropFiller). Everything here is pure.
package main

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// The item format (SPEC.md 8.2).
const (
	dropItemLen   = 992 // a sealed item; its bencoding "992:" || item is 996 bytes, within maxItemValue
	dropEphLen    = 32  // the ephemeral X25519 public key
	dropIDLen     = 4   // the prekey id, masked
	dropHeaderLen = dropEphLen + dropIDLen
	dropTagLen    = chacha20poly1305.Overhead
	dropPlainLen  = dropItemLen - dropHeaderLen - dropTagLen // 940: length || frame || zero padding
	dropLenLen    = 2
	dropMaxFrame  = dropPlainLen - dropLenLen        // 938
	dropChunk     = dropMaxFrame - chatDataHeaderLen // 919 bytes of text per item
	dropMaxParts  = (maxMessageText + dropChunk - 1) / dropChunk
	dropSaltLen   = 16
	dropDay       = 24 * time.Hour
)

// Labels of the derivations (SPEC.md 8.1).
const (
	dropLabelDir  = "kadchat drop v1 dir"
	dropLabelSign = "kadchat drop v1 sign"
	dropLabelSlot = "kadchat drop v1 slot"
	dropLabelAck  = "kadchat drop v1 ack"
	dropLabelID   = "kadchat drop v1 id"
	dropLabelKey  = "kadchat drop v1 key"
)

// dropValuePrefix is the bencoding's length prefix of every item value.
var dropValuePrefix = []byte(strconv.Itoa(dropItemLen) + ":")

// Errors of opening an item; all mean "not an item of ours", which a
// collector treats like an empty location.
var (
	errDropValue = errors.New("drop: value is not one sealed item")
	errDropOpen  = errors.New("drop: item does not open")
	errDropPlain = errors.New("drop: bad plaintext")
)

// dropMAC is HMAC-SHA256(key, label || parts...).
func dropMAC(key []byte, label string, parts ...[]byte) [32]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	for _, p := range parts {
		m.Write(p)
	}
	var out [32]byte
	m.Sum(out[:0])
	return out
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// dropDirKey is the key of one direction, from to to: both contacts
// compute it from their static-static secret, and the two directions
// differ because the keys are in order.
func dropDirKey(secret [32]byte, from, to publicKey) [32]byte {
	return dropMAC(secret[:], dropLabelDir, from[:], to[:])
}

// dropDayOf is the day number of t: Unix seconds / 86400.
func dropDayOf(t time.Time) uint64 { return uint64(t.Unix()) / uint64(dropDay/time.Second) }

// dropDayKey is the ed25519 key that signs a direction's items of one day;
// its seed is a PRF output, so a day's key says nothing about another's.
func dropDayKey(dir [32]byte, day uint64) ed25519.PrivateKey {
	seed := dropMAC(dir[:], dropLabelSign, be64(day))
	defer clear(seed[:])
	return ed25519.NewKeyFromSeed(seed[:])
}

// dropSlotSalt is the salt of part `part` of message seq, dropped on day.
func dropSlotSalt(dir [32]byte, day, seq uint64, part uint8) []byte {
	m := dropMAC(dir[:], dropLabelSlot, be64(day), be64(seq), []byte{part})
	return m[:dropSaltLen]
}

// dropAckSalt is the salt of the day's acknowledgement in a direction.
func dropAckSalt(dir [32]byte, day uint64) []byte {
	m := dropMAC(dir[:], dropLabelAck, be64(day))
	return m[:dropSaltLen]
}

// dropIDMask hides the prekey id: XORed with it, the id looks random to
// anyone without the direction key, and sequential ids link nothing.
func dropIDMask(dir, eph [32]byte) uint32 {
	m := dropMAC(dir[:], dropLabelID, eph[:])
	return binary.BigEndian.Uint32(m[:dropIDLen])
}

// dropMsgKey is the AEAD key of one message: the DH result of the fresh
// ephemeral key with the prekey (or static key), bound to the direction
// key, so only the two contacts can have made it.
func dropMsgKey(dir, dh, eph [32]byte, id uint32) [32]byte {
	return dropMAC(dir[:], dropLabelKey, dh[:], eph[:], binary.BigEndian.AppendUint32(nil, id))
}

// dropSeal is what seals the items of one message (or one
// acknowledgement): the ephemeral public key, the prekey id (0: the
// recipient's static key) and the message key.
type dropSeal struct {
	Eph [32]byte
	ID  uint32
	Key [32]byte
}

// newDropSeal makes a fresh ephemeral key and derives the message key with
// the recipient's key `to` (prekey id, or the static key when id is 0).
// The ephemeral private key is dropped at once.
func newDropSeal(rand io.Reader, dir [32]byte, to [32]byte, id uint32) (dropSeal, error) {
	e, err := ecdh.X25519().GenerateKey(rand)
	if err != nil {
		return dropSeal{}, fmt.Errorf("drop: ephemeral key: %w", err)
	}
	return dropSealFrom(e, dir, to, id)
}

// dropSealFrom is newDropSeal with a given ephemeral key (the test vectors').
func dropSealFrom(e *ecdh.PrivateKey, dir [32]byte, to [32]byte, id uint32) (dropSeal, error) {
	pub, err := ecdh.X25519().NewPublicKey(to[:])
	if err != nil {
		return dropSeal{}, fmt.Errorf("drop: recipient key: %w", err)
	}
	shared, err := e.ECDH(pub) // refuses an all-zero result
	if err != nil {
		return dropSeal{}, fmt.Errorf("drop: %w", err)
	}
	var dh [32]byte
	copy(dh[:], shared)
	clear(shared)
	defer clear(dh[:])
	s := dropSeal{ID: id}
	copy(s.Eph[:], e.PublicKey().Bytes())
	s.Key = dropMsgKey(dir, dh, s.Eph, id)
	return s, nil
}

// dropNonce is the AEAD nonce of part i: as Noise's, 4 zero bytes and the
// counter in little-endian.
func dropNonce(part uint8) []byte {
	n := noiseNonce(uint64(part))
	return n[:]
}

// dropHeader is E || (id XOR mask(E)), the item's first 36 bytes.
func dropHeader(dir [32]byte, s dropSeal) []byte {
	h := make([]byte, 0, dropHeaderLen)
	h = append(h, s.Eph[:]...)
	return binary.BigEndian.AppendUint32(h, s.ID^dropIDMask(dir, s.Eph))
}

// sealItem seals one chat frame as item `part`: header, then the padded
// frame encrypted with the header as associated data. The same seal,
// frame and part always give the same bytes, so an item can be re-sealed
// for a re-put after a restart and is accepted as a refresh.
func (s dropSeal) sealItem(dir [32]byte, part uint8, frame []byte) ([]byte, error) {
	if len(frame) == 0 || len(frame) > dropMaxFrame {
		return nil, fmt.Errorf("drop: frame of %d bytes: want 1..%d", len(frame), dropMaxFrame)
	}
	plain := make([]byte, dropPlainLen)
	binary.BigEndian.PutUint16(plain, uint16(len(frame)))
	copy(plain[dropLenLen:], frame)
	aead, err := chacha20poly1305.New(s.Key[:])
	if err != nil {
		return nil, fmt.Errorf("drop: %w", err)
	}
	item := dropHeader(dir, s)
	return aead.Seal(item, dropNonce(part), plain, item[:dropHeaderLen]), nil
}

// dropItem is a parsed item: the header fields, unmasked id still masked.
type dropItem struct {
	Eph    [32]byte
	Masked uint32
	Body   []byte // ciphertext and tag, aliasing the input
}

// parseDropValue parses a BEP 44 value as one item: exactly "992:" and
// 992 bytes. It has no side effects.
func parseDropValue(v []byte) (dropItem, error) {
	raw, ok := bytes.CutPrefix(v, dropValuePrefix)
	if !ok || len(raw) != dropItemLen {
		return dropItem{}, errDropValue
	}
	it := dropItem{Masked: binary.BigEndian.Uint32(raw[dropEphLen:]), Body: raw[dropHeaderLen:]}
	copy(it.Eph[:], raw)
	return it, nil
}

// appendDropValue is the inverse of parseDropValue: the bencoded value of
// a sealed item.
func appendDropValue(dst, item []byte) []byte {
	return append(append(dst, dropValuePrefix...), item...)
}

// header re-encodes the first 36 bytes, the associated data.
func (it *dropItem) header() []byte {
	return binary.BigEndian.AppendUint32(append(make([]byte, 0, dropHeaderLen), it.Eph[:]...), it.Masked)
}

// dropDH computes, for the recipient, X25519(our key for id, eph): id 0 is
// our static key, another id one of our prekeys; ok is false if we hold no
// such key (erased, never issued, or the item is filler).
type dropDH func(id uint32, eph [32]byte) (dh [32]byte, ok bool)

// openDropItem opens item `part` sealed to us in direction dir and returns
// the chat frame inside (aliasing a fresh buffer) and the prekey id used.
// Filler, an item of someone else and a tampered item all fail alike.
func openDropItem(dir [32]byte, it dropItem, part uint8, dh dropDH) ([]byte, uint32, error) {
	id := it.Masked ^ dropIDMask(dir, it.Eph)
	shared, ok := dh(id, it.Eph)
	if !ok {
		return nil, 0, errDropOpen
	}
	key := dropMsgKey(dir, shared, it.Eph, id)
	clear(shared[:])
	aead, err := chacha20poly1305.New(key[:])
	clear(key[:])
	if err != nil {
		return nil, 0, fmt.Errorf("drop: %w", err)
	}
	plain, err := aead.Open(nil, dropNonce(part), it.Body, it.header())
	if err != nil {
		return nil, 0, errDropOpen
	}
	frame, err := parseDropPlain(plain)
	return frame, id, err
}

// parseDropPlain takes the frame out of an opened item: a 2-byte length
// of 1..938, the frame, then only zeros. Padding must be zero so that
// every plaintext has one encoding.
func parseDropPlain(plain []byte) ([]byte, error) {
	if len(plain) != dropPlainLen {
		return nil, errDropPlain
	}
	n := int(binary.BigEndian.Uint16(plain))
	if n == 0 || n > dropMaxFrame {
		return nil, errDropPlain
	}
	pad := plain[dropLenLen+n:]
	if subtle.ConstantTimeCompare(pad, make([]byte, len(pad))) != 1 {
		return nil, errDropPlain
	}
	return plain[dropLenLen : dropLenLen+n], nil
}

// dropFiller is an item that opens for nobody: a fresh X25519 public key,
// as every item starts with one (a random 32 bytes would have its top bit
// set half the time, which no public key has), then random bytes.
func dropFiller(rand io.Reader) ([]byte, error) {
	e, err := ecdh.X25519().GenerateKey(rand)
	if err != nil {
		return nil, fmt.Errorf("drop: filler: %w", err)
	}
	item := make([]byte, dropItemLen)
	copy(item, e.PublicKey().Bytes())
	if _, err := io.ReadFull(rand, item[dropEphLen:]); err != nil {
		return nil, fmt.Errorf("drop: filler: %w", err)
	}
	return item, nil
}

// dropParts is how many items a message of n bytes takes.
func dropParts(n int) int { return max(1, (n+dropChunk-1)/dropChunk) }

// dropFrame is the data frame of part i of message m on stream: as a
// session's data frame, but cut at dropChunk bytes of text.
func dropFrame(stream, seq uint64, text string, part int) []byte {
	count := dropParts(len(text))
	chunk := text[part*dropChunk : min(len(text), (part+1)*dropChunk)]
	f := chatFrame{Type: chatFrameData, Stream: stream, Seq: seq, Index: uint8(part), Count: uint8(count), Text: []byte(chunk)}
	return f.appendTo(make([]byte, 0, chatDataHeaderLen+len(chunk)))
}
