package main

import (
	"bytes"
	"crypto/ecdh"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"
)

// FuzzDropItem: whatever parses as an item value, an opened plaintext or
// a prekey frame re-encodes to exactly its input, and on an error the
// other results are zero. An item opens only if it is the vector's (the
// fuzzer cannot forge a tag). Seeded from SPEC.md 8.8.
func FuzzDropItem(f *testing.F) {
	vs := specVectorMap(f, "drop-vector")
	for _, name := range []string{"message", "ack"} {
		item, _ := hex.DecodeString(strings.ReplaceAll(vs[name]["item"], " ", ""))
		f.Add(appendDropValue(nil, item))
		frame, _ := hex.DecodeString(vs[name]["frame"])
		plain := make([]byte, dropPlainLen)
		binary.BigEndian.PutUint16(plain, uint16(len(frame)))
		copy(plain[dropLenLen:], frame)
		f.Add(plain)
	}
	for _, k := range []string{"prekeys", "status"} {
		b, _ := hex.DecodeString(vs["frames"][k])
		f.Add(b)
	}
	f.Add([]byte("992:"))
	msg := vs["message"]
	secret, _ := hex.DecodeString(msg["secret"])
	pa, _ := hex.DecodeString(msg["pub-a"])
	pb, _ := hex.DecodeString(msg["pub-b"])
	dir := dropDirKey([32]byte(secret), publicKey(pa), publicKey(pb))
	pre, _ := hex.DecodeString(msg["prekey-priv"])
	want, _ := hex.DecodeString(msg["frame"])
	preKey, _ := ecdh.X25519().NewPrivateKey(pre)
	dh := func(id uint32, eph [32]byte) ([32]byte, bool) {
		if id != 1 {
			return [32]byte{}, false
		}
		return dropX25519([32]byte(preKey.Bytes()), eph)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		it, err := parseDropValue(b)
		if err != nil {
			if !reflect.DeepEqual(it, dropItem{}) {
				t.Fatalf("error %v with a non-zero item", err)
			}
		} else {
			if out := appendDropValue(nil, append(it.header(), it.Body...)); !bytes.Equal(out, b) {
				t.Fatalf("value %x re-encodes to %x", b, out)
			}
			if frame, _, err := openDropItem(dir, it, 0, dh); err == nil && !bytes.Equal(frame, want) {
				t.Fatalf("an item that is not the vector's opens: %x", frame)
			}
		}
		if frame, err := parseDropPlain(b); err == nil {
			plain := make([]byte, dropPlainLen)
			binary.BigEndian.PutUint16(plain, uint16(len(frame)))
			copy(plain[dropLenLen:], frame)
			if !bytes.Equal(plain, b) {
				t.Fatalf("plaintext %x re-encodes to %x", b, plain)
			}
		} else if frame != nil {
			t.Fatalf("error %v with a frame", err)
		}
		if es, err := parsePrekeys(b); err == nil {
			if out := appendPrekeys(nil, es); !bytes.Equal(out, b) {
				t.Fatalf("prekeys %x re-encode to %x", b, out)
			}
		} else if es != nil {
			t.Fatalf("error %v with entries", err)
		}
		if st, err := parsePrekeyStatus(b); err == nil {
			if out := appendPrekeyStatus(nil, st); !bytes.Equal(out, b) {
				t.Fatalf("status %x re-encodes to %x", b, out)
			}
		} else if !reflect.DeepEqual(st, prekeyStatus{}) {
			t.Fatalf("error %v with a status", err)
		}
	})
}

// FuzzDropFile: a drops file parses only if it re-encodes to the same
// bytes. The fuzzer's input is the file without its CRC, which is added,
// so that mutations reach the records instead of failing the checksum.
func FuzzDropFile(f *testing.F) {
	dp := newDropPeer()
	dp.nextID, dp.theirMax, dp.collected, dp.ackStream, dp.ackSeq, dp.ackAt = 3, 2, 1795611300, 7, 1, 1795611000
	dp.mine[1] = &myPrekey{priv: [32]byte{1}}
	dp.mine[2] = &myPrekey{priv: [32]byte{2}, goneAt: 1795600000}
	dp.theirs[2] = [32]byte{3}
	dp.drops[1] = &dropRec{stream: 7, seq: 1, made: 1795611300123, parts: 1, seal: dropSeal{Eph: [32]byte{4}, ID: 1, Key: [32]byte{5}}}
	for _, peers := range []map[publicKey]*dropPeer{{}, {chatKey(1): dp}, {chatKey(1): dp, chatKey(9): dp}} {
		b := appendDropFile(nil, peers)
		f.Add(b[:len(b)-dropsCRC])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		b := binary.BigEndian.AppendUint32(bytes.Clone(body), crc32.Checksum(body, outboxCRCTable))
		peers, err := parseDropFile(b)
		if err != nil {
			if peers != nil {
				t.Fatalf("error %v with peers", err)
			}
			return
		}
		if out := appendDropFile(nil, peers); !bytes.Equal(out, b) {
			t.Fatalf("file %x re-encodes to %x", b, out)
		}
	})
}
