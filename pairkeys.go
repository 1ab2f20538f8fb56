// Pair keys, tags and stamps (SPEC.md 4.3, 4.5): how a responder tells a
// contact's handshake messages from a stranger's before any Diffie-Hellman
// work, so that nobody but a contact ever draws a byte from us.
//
// Flow: addContact derives from the two users' static-static secret S one
// set of keys per direction (pairKeys). An initiation carries, outside the
// Noise message, the tag of the hour of its timestamp, the timestamp masked
// (the stamp) and mac1 over both, all under the sender-to-receiver keys. The
// receiver keeps every contact's tags for the hours around its clock in a
// tagTable: a map lookup finds the contact or drops the stranger, one MAC
// checks mac1, and the unmasked stamp must be newer than the contact's last
// accepted timestamp. Responses and cookie replies name our index, which
// names the contact; their MAC and cookie keys are pairwise too.
package main

import (
	"encoding/binary"
	"errors"
	"slices"
	"time"
)

// tagEpoch is how long an initiator uses one tag for a contact; the
// responder accepts the tags of the epochs before, of and after its clock's.
const tagEpoch = time.Hour

// tai64nOffset is 2^62 + 10: TAI64N seconds minus this are Unix seconds.
const tai64nOffset = uint64(1)<<62 + 10

// pairDir holds the keys of one direction between two contacts, each
// HASH(label || S || sender's key || receiver's key).
type pairDir struct {
	mac1   [noiseHashLen]byte // mac1 of initiations and responses
	tag    [noiseHashLen]byte // tags of initiations
	stamp  [noiseHashLen]byte // masks the timestamp of initiations
	cookie [noiseHashLen]byte // cookie replies
}

// pairKeys are a contact's keys: send for what we send it, recv for what
// it sends us.
type pairKeys struct{ send, recv pairDir }

func derivePairKeys(secret *[noiseDHLen]byte, self, peer publicKey) pairKeys {
	return pairKeys{send: derivePairDir(secret, self, peer), recv: derivePairDir(secret, peer, self)}
}

func derivePairDir(secret *[noiseDHLen]byte, from, to publicKey) pairDir {
	k := func(label string) [noiseHashLen]byte { return noiseHash([]byte(label), secret[:], from[:], to[:]) }
	return pairDir{mac1: k(labelMAC1), tag: k(labelTag), stamp: k(labelStamp), cookie: k(labelCookie)}
}

// wipe erases the keys of a removed contact (SPEC.md 4.9).
func (k *pairKeys) wipe() { *k = pairKeys{} }

// clockEpoch is the tag epoch of our clock.
func clockEpoch(t time.Time) uint64 { return uint64(t.Unix()) / uint64(tagEpoch/time.Second) }

// tai64nEpoch is the tag epoch of a timestamp; a label before 1970 has none.
func tai64nEpoch(ts [timestampLen]byte) (uint64, bool) {
	s := binary.BigEndian.Uint64(ts[:8])
	if s < tai64nOffset {
		return 0, false
	}
	return (s - tai64nOffset) / uint64(tagEpoch/time.Second), true
}

// sessionTag is the tag of an epoch: the first 8 bytes of MAC(tag key,
// epoch as 8 bytes big-endian).
func sessionTag(key *[noiseHashLen]byte, epoch uint64) [tagLen]byte {
	var e [8]byte
	binary.BigEndian.PutUint64(e[:], epoch)
	mac := keyedMAC(key[:], e[:])
	return [tagLen]byte(mac[:tagLen])
}

// maskStamp masks (and unmasks) a timestamp: XOR with the first 12 bytes
// of MAC(stamp key, ephemeral), a pad that is fresh with every ephemeral
// key, so the stamp reveals neither the clock nor an order to observers.
// The ephemeral key is taken by value: the MAC moves its input to the heap,
// and a handler's message must stay on the stack for strangers' packets,
// which never get here.
func maskStamp(key *[noiseHashLen]byte, ephemeral [noiseDHLen]byte, ts [timestampLen]byte) [timestampLen]byte {
	pad := keyedMAC(key[:], ephemeral[:])
	for i := range ts {
		ts[i] ^= pad[i]
	}
	return ts
}

// sealOuter fills the tag and the stamp of an initiation we send; mac1 and
// mac2 come after them (cookieGenerator.addMACs).
func (k *pairDir) sealOuter(m *initiationMsg, ts [timestampLen]byte) {
	e, _ := tai64nEpoch(ts)
	m.tag = sessionTag(&k.tag, e)
	m.stamp = maskStamp(&k.stamp, m.ephemeral, ts)
}

// tagEntry is a contact whose tag for epoch is the key of the entry.
type tagEntry struct {
	peer  *peer
	epoch uint64
}

// tagTable finds the contact behind an initiation's tag. It holds each
// contact's tags for the epochs before, of and after the clock's, so
// clocks up to an hour apart always meet; only the two contacts can compute
// them. A slice per tag, so that even two contacts whose tags collide (a
// chance of about 2^-64 per pair) are both found. Guarded by the manager's
// mu.
type tagTable struct {
	epoch uint64 // the clock's epoch the table holds tags around
	built bool
	tags  map[[tagLen]byte][]tagEntry
}

func (t *tagTable) epochs() [3]uint64 { return [3]uint64{t.epoch - 1, t.epoch, t.epoch + 1} }

// add enters p's tags.
func (t *tagTable) add(p *peer) {
	for _, e := range t.epochs() {
		tag := sessionTag(&p.keys.recv.tag, e)
		t.tags[tag] = append(t.tags[tag], tagEntry{peer: p, epoch: e})
	}
}

// remove takes p's tags out at once: a removed contact is a stranger.
func (t *tagTable) remove(p *peer) {
	if !t.built {
		return
	}
	for _, e := range t.epochs() {
		tag := sessionTag(&p.keys.recv.tag, e)
		if es := slices.DeleteFunc(t.tags[tag], func(x tagEntry) bool { return x.peer == p }); len(es) > 0 {
			t.tags[tag] = es
		} else {
			delete(t.tags, tag)
		}
	}
}

// refresh rebuilds the table once the clock is in another epoch and
// reports whether it did.
func (t *tagTable) refresh(now time.Time, peers map[publicKey]*peer) bool {
	if e := clockEpoch(now); !t.built || e != t.epoch {
		t.epoch, t.built, t.tags = e, true, make(map[[tagLen]byte][]tagEntry, 3*len(peers))
		for _, p := range peers {
			t.add(p)
		}
		return true
	}
	return false
}

// Why an initiation was dropped before any DH (sessionStats.countDrop).
var (
	errStranger  = errors.New("session: initiation from a stranger")
	errBadMAC1   = errors.New("session: bad mac1")
	errStaleInit = errors.New("session: replayed, old or mistimed initiation")
)

// identified is what the checks before any DH learned of an initiation.
type identified struct {
	peer *peer
	ts   [timestampLen]byte // unmasked from the stamp
	mac1 [macLen]byte       // a cookie reply is bound to it
}

// identify runs the checks of an initiation that come before any
// Diffie-Hellman work and before it counts towards load: its tag must name
// a contact for an epoch around our clock (a stranger's packet ends here,
// after one map lookup), mac1 must be right under that contact's key, and
// the unmasked timestamp must lie in the tag's epoch. The caller then
// checks that the timestamp is newer than the contact's last accepted one
// (timestampStore.newer), which ends a replayed initiation here too.
func (t *tagTable) identify(b []byte, msg *initiationMsg) (identified, error) {
	es := t.tags[msg.tag]
	if len(es) == 0 {
		return identified{}, errStranger
	}
	for _, e := range es {
		k := &e.peer.keys.recv
		mac1, ok := checkMAC1(&k.mac1, b, initiationOffMAC1)
		if !ok {
			continue
		}
		ts := maskStamp(&k.stamp, msg.ephemeral, msg.stamp)
		if te, ok := tai64nEpoch(ts); !ok || te != e.epoch {
			return identified{}, errStaleInit
		}
		return identified{peer: e.peer, ts: ts, mac1: mac1}, nil
	}
	return identified{}, errBadMAC1
}
