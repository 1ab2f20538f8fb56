// The drops file (SPEC.md 8.6): one-time prekeys, outstanding drops and
// the acknowledgement items, per contact.
//
// Flow: newDropper reads the file once (parseDropFile) into dropPeer
// states. After a change that must survive a crash (a prekey issued or
// used, a drop made or retired, a prekey erased) the dropper encodes its
// whole state (appendDropFile) and replaces the file atomically; the
// replaced file, which may hold erased prekeys, is then overwritten with
// zeros (saveDropFile). Like the outbox it is small, so rewriting it whole
// keeps the format and the crash rules simple.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"os"
	"slices"
	"time"
)

// The drops file (SPEC.md 8.6).
const (
	dropsFile  = "drops"
	dropsMagic = "KCDROPS1"
	dropsCRC   = 4
)

// Record types and their body sizes, after type 1 || key 32.
const (
	dropRecContact = 'C' // nextID 4 || theirMax 4 || collected 8 || ackStream 8 || ackSeq 8 || ackAt 8
	dropRecMine    = 'P' // id 4 || private 32 || goneAt 8
	dropRecTheirs  = 'K' // id 4 || public 32
	dropRecDrop    = 'D' // stream 8 || seq 8 || made 8 || parts 1 || id 4 || eph 32 || key 32

	dropRecContactLen = 40
	dropRecMineLen    = 44
	dropRecTheirsLen  = 36
	dropRecDropLen    = 93
	dropRecHead       = 1 + 32
)

// dropRecLen is the body size of each record type.
var dropRecLen = map[byte]int{dropRecContact: dropRecContactLen, dropRecMine: dropRecMineLen,
	dropRecTheirs: dropRecTheirsLen, dropRecDrop: dropRecDropLen}

// myPrekey is a prekey we issued to a contact: its private half, and
// since when the contact no longer holds it (0: it does), in Unix seconds.
type myPrekey struct {
	priv   [32]byte
	goneAt int64
}

// dropRec is one outstanding drop: a message of ours placed in the DHT,
// with what re-seals its items exactly (the seal) and where they are
// (the day of made). made, in Unix milliseconds, is also the items' BEP 44
// seq, so a later drop at a reused location always replaces an earlier one.
type dropRec struct {
	stream, seq uint64
	made        int64
	parts       int // items the message takes, 1..dropMaxParts
	seal        dropSeal

	// not on disk
	stored  bool      // every part was stored once: "* dropped" was printed
	nextPut time.Time // next re-put; zero: now
	busy    bool      // a put of it is running
	fails   int
}

// dropPeer is the drop state of one contact.
type dropPeer struct {
	nextID    uint32 // the next prekey id we issue to them, from 1
	theirMax  uint32 // the highest prekey id they issued us
	collected int64  // Unix seconds: their drops made before this were collected
	ackStream uint64 // the last acknowledgement item we put for them
	ackSeq    uint64
	ackAt     int64 // Unix seconds, when it was first put

	mine   map[uint32]*myPrekey
	theirs map[uint32][32]byte
	drops  map[uint64]*dropRec // by message seq

	lastMade int64   // the highest made of our drops, so seqs only grow; not on disk
	run      dropRun // what is in flight and when; not on disk // what is in flight and when; not on disk
}

func newDropPeer() *dropPeer {
	return &dropPeer{nextID: 1, mine: map[uint32]*myPrekey{}, theirs: map[uint32][32]byte{}, drops: map[uint64]*dropRec{}}
}

// empty reports whether the peer has nothing worth a record.
func (d *dropPeer) empty() bool {
	return d.nextID == 1 && d.theirMax == 0 && d.collected == 0 && d.ackSeq == 0 &&
		len(d.mine) == 0 && len(d.theirs) == 0 && len(d.drops) == 0
}

var errDropsFile = errors.New("drop: damaged drops file")

// dropRecRank orders the record types within one contact's records.
var dropRecRank = map[byte]int{dropRecContact: 0, dropRecMine: 1, dropRecTheirs: 2, dropRecDrop: 3}

// parseDropFile parses the whole file strictly: magic, records of known
// types and exact sizes in the one order appendDropFile writes (contacts
// by key, each starting with its "C" record, then "P", "K" and "D"
// records by id or seq), no contact with nothing to keep, and the CRC-32C
// of everything before it last. So a file parses only if it re-encodes to
// the same bytes. It has no side effects.
func parseDropFile(b []byte) (map[publicKey]*dropPeer, error) {
	if len(b) < len(dropsMagic)+dropsCRC || string(b[:len(dropsMagic)]) != dropsMagic {
		return nil, fmt.Errorf("%w: bad magic", errDropsFile)
	}
	body, sum := b[:len(b)-dropsCRC], binary.BigEndian.Uint32(b[len(b)-dropsCRC:])
	if crc32.Checksum(body, outboxCRCTable) != sum {
		return nil, fmt.Errorf("%w: bad checksum", errDropsFile)
	}
	peers := map[publicKey]*dropPeer{}
	var cur *dropPeer
	var curKey publicKey
	lastRank, lastNum := 0, uint64(0)
	for off := len(dropsMagic); off < len(body); {
		if len(body)-off < dropRecHead {
			return nil, fmt.Errorf("%w: record at offset %d cut short", errDropsFile, off)
		}
		typ := body[off]
		n, ok := dropRecLen[typ]
		if !ok || len(body)-off-dropRecHead < n {
			return nil, fmt.Errorf("%w: record at offset %d: type 0x%02x", errDropsFile, off, typ)
		}
		key := publicKey(body[off+1 : off+dropRecHead])
		rec := body[off+dropRecHead : off+dropRecHead+n]
		rank, num := dropRecRank[typ], dropRecNum(typ, rec)
		switch {
		case cur != nil && key == curKey:
			if rank < lastRank || rank == lastRank && num <= lastNum {
				return nil, fmt.Errorf("%w: record at offset %d out of order", errDropsFile, off)
			}
		case cur != nil && (bytes.Compare(key[:], curKey[:]) < 0 || cur.empty()), typ != dropRecContact:
			return nil, fmt.Errorf("%w: record at offset %d: contacts out of order, or one without its first record", errDropsFile, off)
		default:
			cur, curKey = newDropPeer(), key
			peers[key] = cur
		}
		lastRank, lastNum = rank, num
		if err := cur.apply(typ, rec); err != nil {
			return nil, fmt.Errorf("%w: record at offset %d: %v", errDropsFile, off, err)
		}
		off += dropRecHead + n
	}
	if cur != nil && cur.empty() {
		return nil, fmt.Errorf("%w: a contact with nothing to keep", errDropsFile)
	}
	return peers, nil
}

// dropRecNum is what orders records of one type: the id or the seq.
func dropRecNum(typ byte, rec []byte) uint64 {
	switch typ {
	case dropRecMine, dropRecTheirs:
		return uint64(binary.BigEndian.Uint32(rec))
	case dropRecDrop:
		return binary.BigEndian.Uint64(rec[8:])
	}
	return 0
}

// apply reads one record body into the peer.
func (d *dropPeer) apply(typ byte, b []byte) error {
	u32, u64 := binary.BigEndian.Uint32, binary.BigEndian.Uint64
	switch typ {
	case dropRecContact:
		d.nextID, d.theirMax = u32(b), u32(b[4:])
		d.collected, d.ackStream, d.ackSeq, d.ackAt = int64(u64(b[8:])), u64(b[16:]), u64(b[24:]), int64(u64(b[32:]))
		if d.nextID == 0 {
			return errors.New("prekey id 0")
		}
	case dropRecMine:
		id := u32(b)
		if _, dup := d.mine[id]; dup || id == 0 {
			return fmt.Errorf("prekey %d repeated or 0", id)
		}
		k := &myPrekey{goneAt: int64(u64(b[36:]))}
		copy(k.priv[:], b[4:36])
		d.mine[id] = k
	case dropRecTheirs:
		id := u32(b)
		if _, dup := d.theirs[id]; dup || id == 0 {
			return fmt.Errorf("their prekey %d repeated or 0", id)
		}
		d.theirs[id] = [32]byte(b[4:36])
	case dropRecDrop:
		r := &dropRec{stream: u64(b), seq: u64(b[8:]), made: int64(u64(b[16:])), parts: int(b[24]), stored: true}
		r.seal.ID = u32(b[25:])
		r.seal.Eph, r.seal.Key = [32]byte(b[29:61]), [32]byte(b[61:93])
		if _, dup := d.drops[r.seq]; dup || r.seq == 0 || r.stream == 0 || r.made <= 0 || r.parts < 1 || r.parts > dropMaxParts {
			return fmt.Errorf("drop of seq %d repeated or invalid", r.seq)
		}
		d.drops[r.seq] = r
		d.lastMade = max(d.lastMade, r.made)
	}
	return nil
}

// appendDropFile encodes the state: for each contact in key order its
// contact record, its prekeys, their prekeys and its drops, each in id or
// seq order; then the CRC. It is the inverse of parseDropFile.
func appendDropFile(dst []byte, peers map[publicKey]*dropPeer) []byte {
	dst = append(dst, dropsMagic...)
	start := len(dst) - len(dropsMagic)
	for _, k := range slices.SortedFunc(maps.Keys(peers), func(a, b publicKey) int { return bytes.Compare(a[:], b[:]) }) {
		dst = peers[k].appendRecords(dst, k)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], outboxCRCTable))
}

func (d *dropPeer) appendRecords(dst []byte, k publicKey) []byte {
	if d.empty() {
		return dst
	}
	head := func(typ byte) []byte { return append(append(dst, typ), k[:]...) }
	a32, a64 := binary.BigEndian.AppendUint32, binary.BigEndian.AppendUint64
	dst = head(dropRecContact)
	dst = a32(a32(dst, d.nextID), d.theirMax)
	dst = a64(a64(a64(a64(dst, uint64(d.collected)), d.ackStream), d.ackSeq), uint64(d.ackAt))
	for _, id := range slices.Sorted(maps.Keys(d.mine)) {
		m := d.mine[id]
		dst = a64(append(a32(head(dropRecMine), id), m.priv[:]...), uint64(m.goneAt))
	}
	for _, id := range slices.Sorted(maps.Keys(d.theirs)) {
		pub := d.theirs[id]
		dst = append(a32(head(dropRecTheirs), id), pub[:]...)
	}
	for _, seq := range slices.Sorted(maps.Keys(d.drops)) {
		r := d.drops[seq]
		dst = a64(a64(a64(head(dropRecDrop), r.stream), r.seq), uint64(r.made))
		dst = a32(append(dst, byte(r.parts)), r.seal.ID)
		dst = append(append(dst, r.seal.Eph[:]...), r.seal.Key[:]...)
	}
	return dst
}

// saveDropFile replaces the file at path by b atomically, then overwrites
// the replaced file with zeros: it may hold prekeys erased since, which
// must not stay readable under the old inode's blocks (SPEC.md 8.9).
func saveDropFile(path string, b []byte) error {
	old, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("drop: %w", err)
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		if old != nil {
			old.Close()
		}
		return fmt.Errorf("drop: %w", err)
	}
	if old != nil {
		if err := wipeFile(old); err != nil {
			return fmt.Errorf("drop: %w", err)
		}
	}
	return nil
}

// loadDropFile reads the drops file in dir; a missing file is empty.
func loadDropFile(path string) (map[publicKey]*dropPeer, error) {
	b, err := readFileMax(path, maxStateFile)
	if errors.Is(err, os.ErrNotExist) {
		return map[publicKey]*dropPeer{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("drop: %w", err)
	}
	peers, err := parseDropFile(b)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return peers, nil
}
