// Transport keypairs (SPEC.md 4.6).
//
// Flow: a handshake's split gives one key per direction; newKeypair builds
// the two AEADs once. seal numbers each outgoing packet with the send
// counter (the nonce); open checks the counter against the replay window
// (replay.go), authenticates, and only then records it. wipe zeroes both
// keys when the keypair retires (SPEC.md 4.9).
package main

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Transport keypairs (SPEC.md 4.6).

// rejectAfterMessages is the last counter a keypair may use: a nonce must
// never repeat, and the replay window needs headroom below 2^64.
const rejectAfterMessages = ^uint64(0) - (1 << 13)

var (
	errKeypairExpired = errors.New("session: keys expired")
	errReplay         = errors.New("session: replayed or too old packet")
)

// keypair is one session's transport state: a key per direction (Split),
// the send counter and the receive replay window. The AEADs are built once
// so the packet path allocates nothing.
type keypair struct {
	mu          sync.Mutex // guards replay, wiped and the AEAD keys (wipe)
	send, recv  cipher.AEAD
	sendCounter atomic.Uint64
	replay      replayWindow
	wiped       bool
	// The nonces live here, not on the stack: a slice of a local array
	// passed to an interface method escapes, one allocation per packet.
	sendNonce   [chacha20poly1305.NonceSize]byte
	recvNonce   [chacha20poly1305.NonceSize]byte
	localIndex  uint32
	remoteIndex uint32
	created     time.Time
	initiator   bool
	// What the session's post-quantum exchange needs (SPEC.md 4.12): the
	// PSK its handshake mixed (zero: a classical session), kept until the
	// keypair retires, and the handshake hash the exchange is bound to.
	psk  [noiseKeyLen]byte
	hash [noiseHashLen]byte
}

// pqKeyed reports whether the session's handshake used a post-quantum PSK.
func (kp *keypair) pqKeyed() bool { return kp.psk != zeroPSK }

func newKeypair(send, recv [noiseKeyLen]byte, local, remote uint32, initiator bool, now time.Time) *keypair {
	s, _ := chacha20poly1305.New(send[:])
	r, _ := chacha20poly1305.New(recv[:])
	wipe(send[:])
	wipe(recv[:])
	return &keypair{send: s, recv: r, localIndex: local, remoteIndex: remote, initiator: initiator, created: now}
}

// seal appends a whole transport packet carrying payload to dst[:0]; dst should
// have room for len(payload)+32 bytes so nothing is allocated.
func (kp *keypair) seal(dst, payload []byte) ([]byte, error) {
	n := kp.sendCounter.Add(1) - 1
	if n >= rejectAfterMessages {
		return nil, errKeypairExpired
	}
	dst = append(dst[:0], packetTransport, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, kp.remoteIndex)
	dst = binary.LittleEndian.AppendUint64(dst, n)
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.wiped {
		return nil, errKeypairExpired
	}
	kp.sendNonce = noiseNonce(n)
	return kp.send.Seal(dst, kp.sendNonce[:], payload, nil), nil
}

// open authenticates m and returns its plaintext appended to dst[:0]. The
// replay window is checked before and updated only after authentication.
func (kp *keypair) open(dst []byte, m *transportMsg) ([]byte, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.wiped || m.counter >= rejectAfterMessages {
		return nil, errKeypairExpired
	}
	if !kp.replay.check(m.counter) {
		return nil, errReplay
	}
	kp.recvNonce = noiseNonce(m.counter)
	out, err := kp.recv.Open(dst[:0], kp.recvNonce[:], m.data, nil)
	if err != nil {
		return nil, errNoiseDecrypt
	}
	if !kp.replay.accept(m.counter) {
		return nil, errReplay
	}
	return out, nil
}

// wipe overwrites both transport keys with zeros; the keypair refuses all
// further use.
func (kp *keypair) wipe() {
	if kp == nil {
		return
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.wiped {
		return
	}
	kp.wiped = true
	wipe(kp.psk[:])
	wipeAEAD(kp.send)
	wipeAEAD(kp.recv)
	kp.replay = replayWindow{}
}

// wipeAEAD zeroes the key inside an x/crypto ChaCha20-Poly1305 AEAD. The
// package keeps its key in an unexported [32]byte, the only field of the
// struct the AEAD points to; we check that layout by reflection before
// writing, and do nothing if a future version changes it
// (TestWipeAEAD notices). Without this the retired key would stay in memory
// until the garbage collector reuses it.
func wipeAEAD(a cipher.AEAD) bool {
	v := reflect.ValueOf(a)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return false
	}
	t := v.Elem().Type()
	if t.Kind() != reflect.Struct || t.NumField() != 1 || t.Field(0).Name != "key" ||
		t.Field(0).Type != reflect.TypeFor[[noiseKeyLen]byte]() {
		return false
	}
	clear((*[noiseKeyLen]byte)(v.UnsafePointer())[:])
	return true
}
