// Chat core: contacts, private rendezvous, reliable ordered messages and the
// durable outbox (SPEC.md section 5).
//
// Outbound flow: send validates the text, appends a "queued" record to the
// outbox log and waits for the group commit (one fsync shared by every
// concurrent sender), then transmits the message as data frames through the
// injected session send. The run loop retransmits unacknowledged messages
// with backoff. A cumulative ack removes messages from the outbox ("acked"
// record) and reports them delivered.
// Inbound flow: handlePayload parses a frame (pure parseChatFrame), data
// frames go to the reassembly buffer; messages that complete in order are
// logged as "delivered" and, once that record is durable, reported to the UI
// and acknowledged. Rendezvous: run derives each contact's infohash for the
// current epochs, announces there and looks the contact up, handing found
// addresses to the session layer.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Wire constants of the chat frames and delivery (SPEC.md 5.3, 5.4, 5.6).
const (
	chatFrameData      = 0x01
	chatFrameAck       = 0x02
	chatDataHeaderLen  = 19 // type 1 || stream 8 || seq 8 || index 1 || count 1
	chatAckHeaderLen   = 17 // type 1 || stream 8 || cumulative 8
	chatSackMaxLen     = 32 // selective-ack bitmap, bytes
	chatWindow         = 8 * chatSackMaxLen
	maxMessageText     = 4096
	minChatPayload     = 64 // smallest session payload limit we accept
	maxOutboxPerPeer   = 10000
	maxReassemblyBytes = 256 << 10
	retransmitMin      = 200 * time.Millisecond
	retransmitMax      = 10 * time.Second
	fastRetransmit     = 50 * time.Millisecond
	chatTick           = 50 * time.Millisecond
	streamRandBits     = 20 // low bits of a stream id that are random
	sendQueueLen       = 1024
)

// Rendezvous and verify-code constants (SPEC.md 5.1, 5.2).
const (
	rendezvousLabel    = "kadchat rendezvous v1"
	rendezvousEpoch    = time.Hour
	rendezvousSkew     = 10 * time.Minute
	lookupFastInterval = 5 * time.Second
	lookupFastPeriod   = 60 * time.Second
	lookupSlowInterval = 90 * time.Second
	announceInterval   = 5 * time.Minute
	announceRetry      = 15 * time.Second
	dhtRetryMin        = 100 * time.Millisecond
	maxLookupTries     = 64 // rendezvous candidates remembered per contact
	dhtOpTimeout       = 30 * time.Second
	maxDHTOps          = 4
	verifyLabel        = "kadchat verify v1"
	verifyGroups       = 6
)

// Contact names and the files in the data directory (SPEC.md 5.1, 5.5).
const (
	maxNameLen     = 32
	contactsFile   = "contacts"
	contactsHeader = "# kadchat contacts v1: name key [last-seen]"
	outboxFile     = "outbox"
	outboxMagic    = "KCOUTBX1"
	compactMin     = 1 << 20
)

// Errors callers may branch on.
var (
	errNoContact  = errors.New("chat: no such contact")
	errOutboxFull = errors.New("chat: outbox full")
	errChatClosed = errors.New("chat: closed")
)

// chatFrame is one parsed frame of the chat layer. Text and Sack alias the
// parsed input.
type chatFrame struct {
	Type   byte
	Stream uint64 // the sender's stream id, never 0
	Seq    uint64 // data: message sequence (>= 1); ack: cumulative sequence
	Index  uint8  // data: fragment index, < Count
	Count  uint8  // data: fragment count, >= 1
	Text   []byte // data: fragment bytes, at least one
	Sack   []byte // ack: bitmap, no trailing zero byte
}

// parseChatFrame parses one frame strictly: exact lengths, no zero stream,
// canonical bitmap. It has no side effects.
func parseChatFrame(b []byte) (chatFrame, error) {
	if len(b) == 0 {
		return chatFrame{}, errors.New("chat: empty frame")
	}
	switch b[0] {
	case chatFrameData:
		if len(b) < chatDataHeaderLen+1 {
			return chatFrame{}, fmt.Errorf("chat: data frame of %d bytes: want at least %d", len(b), chatDataHeaderLen+1)
		}
		f := chatFrame{Type: b[0], Stream: binary.BigEndian.Uint64(b[1:9]), Seq: binary.BigEndian.Uint64(b[9:17]),
			Index: b[17], Count: b[18], Text: b[chatDataHeaderLen:]}
		switch {
		case f.Stream == 0:
			return chatFrame{}, errors.New("chat: data frame: zero stream")
		case f.Seq == 0:
			return chatFrame{}, errors.New("chat: data frame: zero sequence")
		case f.Count == 0 || f.Index >= f.Count:
			return chatFrame{}, fmt.Errorf("chat: data frame: fragment %d of %d", f.Index, f.Count)
		}
		return f, nil
	case chatFrameAck:
		if len(b) < chatAckHeaderLen || len(b) > chatAckHeaderLen+chatSackMaxLen {
			return chatFrame{}, fmt.Errorf("chat: ack frame of %d bytes: want %d..%d", len(b), chatAckHeaderLen, chatAckHeaderLen+chatSackMaxLen)
		}
		f := chatFrame{Type: b[0], Stream: binary.BigEndian.Uint64(b[1:9]), Seq: binary.BigEndian.Uint64(b[9:17])}
		if f.Stream == 0 {
			return chatFrame{}, errors.New("chat: ack frame: zero stream")
		}
		if len(b) > chatAckHeaderLen {
			f.Sack = b[chatAckHeaderLen:]
			if f.Sack[len(f.Sack)-1] == 0 {
				return chatFrame{}, errors.New("chat: ack frame: trailing zero byte in bitmap")
			}
		}
		return f, nil
	}
	return chatFrame{}, fmt.Errorf("chat: unknown frame type 0x%02x", b[0])
}

// appendTo appends the frame's wire form; it is the inverse of parseChatFrame.
func (f *chatFrame) appendTo(dst []byte) []byte {
	dst = append(dst, f.Type)
	dst = binary.BigEndian.AppendUint64(dst, f.Stream)
	dst = binary.BigEndian.AppendUint64(dst, f.Seq)
	if f.Type == chatFrameData {
		return append(append(dst, f.Index, f.Count), f.Text...)
	}
	return append(dst, f.Sack...)
}

// sackBit reports whether the bitmap marks seq cum+1+i as received.
func sackBit(sack []byte, i uint64) bool {
	return i < uint64(8*len(sack)) && sack[i/8]&(0x80>>(i%8)) != 0
}

// validText checks a message before it is queued.
func validText(text string) error {
	switch {
	case text == "":
		return errors.New("chat: empty message")
	case len(text) > maxMessageText:
		return fmt.Errorf("chat: message of %d bytes: the limit is %d", len(text), maxMessageText)
	case !utf8.ValidString(text):
		return errors.New("chat: message is not valid UTF-8")
	}
	return nil
}

// validName checks a contact name: 1-32 of A-Z a-z 0-9 - _.
func validName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("chat: name %q: want 1 to %d characters", name, maxNameLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("chat: name %q: only letters, digits, '-' and '_' are allowed", name)
		}
	}
	return nil
}

// rendezvousInfohash derives the infohash both contacts use in an epoch:
// HMAC-SHA256(secret, label || epoch) truncated to 20 bytes. The secret is
// their static-static X25519 result, so only the two of them can compute it,
// and a fresh PRF output per epoch cannot be linked to the previous one.
func rendezvousInfohash(secret [32]byte, epoch uint64) nodeID {
	m := hmac.New(sha256.New, secret[:])
	m.Write([]byte(rendezvousLabel))
	m.Write(binary.BigEndian.AppendUint64(nil, epoch))
	var id nodeID
	copy(id[:], m.Sum(nil))
	return id
}

// rendezvousEpochs lists, in order and without repeats, the epochs of t-skew,
// t and t+skew: two contacts whose clocks differ by less than the skew then
// always share at least one infohash.
func rendezvousEpochs(t time.Time) []uint64 {
	var es []uint64
	for _, d := range []time.Duration{-rendezvousSkew, 0, rendezvousSkew} {
		e := uint64(t.Add(d).Unix()) / uint64(rendezvousEpoch/time.Second)
		if len(es) == 0 || es[len(es)-1] != e {
			es = append(es, e)
		}
	}
	return es
}

// verifyCodeFor computes the safety code of two keys: SHA-256(label ||
// lower key || higher key), the first 30 bytes read as six 40-bit big-endian
// numbers, each mod 100000 and printed as 5 digits. Sorting the keys makes it
// the same on both sides.
func verifyCodeFor(a, b publicKey) string {
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	h := sha256.New()
	h.Write([]byte(verifyLabel))
	h.Write(a[:])
	h.Write(b[:])
	sum := h.Sum(nil)
	groups := make([]string, verifyGroups)
	for i := range groups {
		var v uint64
		for _, c := range sum[5*i : 5*i+5] {
			v = v<<8 | uint64(c)
		}
		groups[i] = fmt.Sprintf("%05d", v%100000)
	}
	return strings.Join(groups, " ")
}

// contactEntry is one line of the contacts file.
type contactEntry struct {
	Name     string
	Key      publicKey
	LastSeen time.Time // zero: never seen
}

// parseContacts parses the contacts file: one contact per line, "NAME KEY"
// or "NAME KEY LAST-SEEN" (RFC 3339, UTC), separated by spaces; blank lines
// and lines starting with '#' are ignored so people can edit it by hand.
// Any other deviation is an error naming the line.
func parseContacts(b []byte, self publicKey) ([]contactEntry, error) {
	var out []contactEntry
	names := map[string]int{}
	keys := map[publicKey]int{}
	for i, line := range strings.Split(string(b), "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		e, err := parseContactLine(line)
		if err != nil {
			return nil, fmt.Errorf("chat: contacts line %d: %w", n, err)
		}
		switch {
		case names[e.Name] != 0:
			return nil, fmt.Errorf("chat: contacts line %d: name %q already on line %d", n, e.Name, names[e.Name])
		case keys[e.Key] != 0:
			return nil, fmt.Errorf("chat: contacts line %d: key already on line %d", n, keys[e.Key])
		case e.Key == self:
			return nil, fmt.Errorf("chat: contacts line %d: that is your own key", n)
		}
		names[e.Name], keys[e.Key] = n, n
		out = append(out, e)
	}
	return out, nil
}

func parseContactLine(line string) (contactEntry, error) {
	f := strings.Fields(line)
	if len(f) != 2 && len(f) != 3 {
		return contactEntry{}, fmt.Errorf("want \"NAME KEY [LAST-SEEN]\", got %d fields", len(f))
	}
	if err := validName(f[0]); err != nil {
		return contactEntry{}, err
	}
	k, err := parsePublicKey(f[1])
	if err != nil {
		return contactEntry{}, fmt.Errorf("key: %w", err)
	}
	e := contactEntry{Name: f[0], Key: k}
	if len(f) == 3 {
		t, err := time.Parse(time.RFC3339, f[2])
		if err != nil {
			return contactEntry{}, fmt.Errorf("last seen %q: want RFC 3339 like 2026-01-02T15:04:05Z", f[2])
		}
		e.LastSeen = t.UTC()
	}
	return e, nil
}

// formatContacts is the inverse of parseContacts for a file we write.
func formatContacts(es []contactEntry) []byte {
	var b strings.Builder
	b.WriteString(contactsHeader + "\n")
	for _, e := range es {
		b.WriteString(e.Name + " " + e.Key.String())
		if !e.LastSeen.IsZero() {
			b.WriteString(" " + e.LastSeen.UTC().Format(time.RFC3339))
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}

// Outbox log record types (SPEC.md 5.5).
const (
	recStream    = 'S'       // key 32 || stream 8 || acked 8
	recQueued    = 'Q'       // key 32 || seq 8 || text
	recAcked     = 'A'       // key 32 || seq 8: every seq <= this is delivered
	recDelivered = 'D'       // key 32 || stream 8 || seq 8: receiver progress
	recForget    = 'X'       // key 32: the contact was removed
	recOverhead  = 2 + 1 + 4 // length || type || ... || CRC-32C
	recKeyLen    = 32
)

var outboxCRCTable = crc32.MakeTable(crc32.Castagnoli)

// outboxRec is one parsed outbox log record.
type outboxRec struct {
	Type   byte
	Key    publicKey
	Stream uint64
	Seq    uint64
	Text   []byte // recQueued, aliasing the input
}

// appendRecord appends one framed record: length 2 || type || body || CRC.
func appendRecord(dst []byte, r outboxRec) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, r.Type)
	dst = append(dst, r.Key[:]...)
	switch r.Type {
	case recStream, recDelivered:
		dst = binary.BigEndian.AppendUint64(dst, r.Stream)
		dst = binary.BigEndian.AppendUint64(dst, r.Seq)
	case recQueued:
		dst = binary.BigEndian.AppendUint64(dst, r.Seq)
		dst = append(dst, r.Text...)
	case recAcked:
		dst = binary.BigEndian.AppendUint64(dst, r.Seq)
	}
	binary.BigEndian.PutUint16(dst[start:], uint16(len(dst)-start-2))
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], outboxCRCTable))
}

// errTornRecord marks a record cut short or damaged; only acceptable at the
// very end of the log, where a crash mid-append leaves one.
var errTornRecord = errors.New("damaged record: bad length or checksum")

// parseRecord parses the record at the start of b and returns its length.
// maxRecordLen is the longest record: a "queued" one with 4 KiB of text.
const maxRecordLen = recOverhead + recKeyLen + 8 + maxMessageText

func parseRecord(b []byte) (outboxRec, int, error) {
	if len(b) < 2 {
		return outboxRec{}, 0, errTornRecord
	}
	n := 2 + int(binary.BigEndian.Uint16(b)) + 4
	if n < recOverhead+recKeyLen || len(b) < n {
		return outboxRec{}, 0, errTornRecord
	}
	if crc32.Checksum(b[:n-4], outboxCRCTable) != binary.BigEndian.Uint32(b[n-4:]) {
		return outboxRec{}, 0, errTornRecord
	}
	r := outboxRec{Type: b[2]}
	copy(r.Key[:], b[3:])
	body := b[3+recKeyLen : n-4]
	want := map[byte]int{recStream: 16, recDelivered: 16, recAcked: 8, recForget: 0}
	switch l, ok := want[r.Type]; {
	case r.Type == recQueued:
		if len(body) < 9 || len(body) > 8+maxMessageText {
			return outboxRec{}, 0, fmt.Errorf("queued record with %d text bytes", len(body)-8)
		}
		r.Seq, r.Text = binary.BigEndian.Uint64(body), body[8:]
	case !ok:
		return outboxRec{}, 0, fmt.Errorf("unknown record type 0x%02x", r.Type)
	case len(body) != l:
		return outboxRec{}, 0, fmt.Errorf("record %q of %d bytes", r.Type, len(body))
	case l == 16:
		r.Stream, r.Seq = binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])
	case l == 8:
		r.Seq = binary.BigEndian.Uint64(body)
	}
	return r, n, nil
}

// parseOutbox splits a whole outbox log into records. good is the length of
// the intact prefix: a damaged last record is a torn append (send never
// returned for it) and is cut off; damage anywhere else is an error.
func parseOutbox(b []byte) (recs []outboxRec, good int, err error) {
	if !bytes.HasPrefix(b, []byte(outboxMagic)) {
		return nil, 0, errors.New("chat: outbox: not a kadchat outbox (bad magic)")
	}
	off := len(outboxMagic)
	for off < len(b) {
		r, n, err := parseRecord(b[off:])
		if errors.Is(err, errTornRecord) && isLastRecord(b, off) {
			return recs, off, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("chat: outbox: record at offset %d: %w", off, err)
		}
		recs = append(recs, r)
		off += n
	}
	return recs, off, nil
}

// isLastRecord reports whether the record at off, by its length field, runs
// to (or past) the end of b, or only zeros follow.
func isLastRecord(b []byte, off int) bool {
	if len(b)-off < 2 || len(bytes.Trim(b[off:], "\x00")) == 0 {
		return true // a filesystem may expose a torn append as zeros
	}
	if off+2+int(binary.BigEndian.Uint16(b[off:]))+4 < len(b) {
		return false
	}
	// The record claims to run past the end. A torn append is shorter
	// than one record and holds no whole record after its start; a
	// damaged length field in the middle of the log is neither, and must
	// not silently cut off the records behind it.
	rest := b[off:]
	if len(rest) > maxRecordLen {
		return false
	}
	for i := 1; i+recOverhead+recKeyLen <= len(rest); i++ {
		if _, _, err := parseRecord(rest[i:]); err == nil {
			return false
		}
	}
	return true
}

// journal is the append-only outbox log with group commit: records appended
// while an fsync is in progress form the next batch, so any number of
// concurrent senders share one fsync. A single committer goroutine writes and
// syncs batches. Safe for concurrent use; callers must not wait for a batch
// while holding a lock the onSync callback takes.
type journal struct {
	mu     sync.Mutex
	synced *sync.Cond // signalled when a batch is durable
	f      *os.File
	path   string
	size   int64 // bytes in the file
	snap   int64 // size of the last compacted file
	buf    []byte
	spare  []byte
	gen    uint64 // the batch buf belongs to
	done   uint64 // every batch <= done is durable (or failed: err)
	err    error  // sticky write error
	syncs  uint64 // fsyncs done, for the benchmarks
	closed bool
	kick   chan struct{}
	exited chan struct{}

	onSync  func(gen uint64) // after a batch is durable; called by the committer
	compact func()           // the owner's compaction, which calls replace
}

// openJournal opens (or creates) the log at path and returns its records.
// A torn last record is cut off; other damage is an error and the file is
// left untouched.
func openJournal(path string) (*journal, []outboxRec, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		b = []byte(outboxMagic)
		if err := writeFileAtomic(path, b, 0o600); err != nil {
			return nil, nil, fmt.Errorf("chat: outbox: %w", err)
		}
	} else if err != nil {
		return nil, nil, fmt.Errorf("chat: outbox: %w", err)
	}
	recs, good, err := parseOutbox(b)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("chat: outbox: %w", err)
	}
	if good < len(b) {
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("chat: outbox: cut torn record: %w", err)
		}
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("chat: outbox: %w", err)
	}
	j := &journal{f: f, path: path, size: int64(good), snap: int64(good), gen: 1,
		kick: make(chan struct{}, 1), exited: make(chan struct{})}
	j.synced = sync.NewCond(&j.mu)
	return j, recs, nil
}

// start runs the committer.
func (j *journal) start() { go j.loop() }

// append adds a record to the current batch and returns the batch number to
// wait for. It never blocks on I/O.
func (j *journal) append(r outboxRec) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return 0, j.err
	}
	if j.closed {
		return 0, errChatClosed
	}
	j.buf = appendRecord(j.buf, r)
	select {
	case j.kick <- struct{}{}:
	default:
	}
	return j.gen, nil
}

// wait blocks until batch gen is durable.
func (j *journal) wait(gen uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	// The committer flushes everything before it exits, so this ends.
	for j.done < gen && j.err == nil {
		j.synced.Wait()
	}
	if j.done >= gen {
		return nil
	}
	return j.err
}

// loop is the committer: it takes the pending batch, writes and fsyncs it,
// and wakes its waiters. Whatever is appended meanwhile is the next batch.
func (j *journal) loop() {
	defer close(j.exited)
	for {
		j.mu.Lock()
		for len(j.buf) == 0 && !j.closed {
			j.mu.Unlock()
			<-j.kick
			j.mu.Lock()
		}
		if len(j.buf) == 0 || j.err != nil {
			j.mu.Unlock()
			j.synced.Broadcast()
			return
		}
		buf, gen := j.buf, j.gen
		j.buf, j.gen = j.spare[:0], j.gen+1
		j.mu.Unlock()

		err := j.writeSync(buf)
		j.mu.Lock()
		j.spare = buf
		if err != nil {
			j.err = fmt.Errorf("chat: outbox: %w", err)
		} else {
			j.done = gen
			j.syncs++
		}
		j.synced.Broadcast()
		j.mu.Unlock()
		if err != nil {
			continue
		}
		j.onSync(gen)
		j.maybeCompact()
	}
}

func (j *journal) writeSync(b []byte) error {
	if _, err := j.f.Write(b); err != nil {
		return err
	}
	j.size += int64(len(b)) // only the committer touches size between compactions
	return j.f.Sync()
}

// maybeCompact asks the chat to compact a log that has grown well past its
// live contents.
func (j *journal) maybeCompact() {
	j.mu.Lock()
	big := j.size > compactMin && j.size > 4*j.snap
	j.mu.Unlock()
	if big {
		j.compact()
	}
}

// replace rewrites the log as snap, atomically. The caller holds the chat
// lock and built snap from the state that every record appended so far has
// already changed, so the pending batch is durable with it and is dropped.
// Only the committer, or anyone once it has exited, may call replace.
func (j *journal) replace(snap []byte) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return 0, j.err
	}
	if err := writeFileAtomic(j.path, snap, 0o600); err != nil {
		j.err = fmt.Errorf("chat: outbox: compact: %w", err)
		j.synced.Broadcast()
		return 0, j.err
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		j.err = fmt.Errorf("chat: outbox: compact: %w", err)
		j.synced.Broadcast()
		return 0, j.err
	}
	j.f.Close()
	j.f = f
	j.size, j.snap = int64(len(snap)), int64(len(snap))
	j.buf = j.buf[:0]
	gen := j.gen
	j.done, j.gen = gen, gen+1
	j.synced.Broadcast()
	return gen, nil
}

// stop flushes what is pending and stops the committer; the owner closes
// the file (after a last compaction).
func (j *journal) stop() {
	j.mu.Lock()
	j.closed = true
	j.mu.Unlock()
	select {
	case j.kick <- struct{}{}:
	default:
	}
	<-j.exited
}

// chatConfig holds what the chat core needs from the rest of the program.
// The functions are injected so the core stands alone in tests.
type chatConfig struct {
	Dir  string    // data directory: files "contacts" and "outbox"
	Self publicKey // our key; adding it as a contact is refused

	StaticSecret func(peer publicKey) ([32]byte, error)                  // X25519(our static, peer static)
	Announce     func(ctx context.Context, infohash nodeID) (int, error) // announce_peer, implied_port
	GetPeers     func(ctx context.Context, infohash nodeID) ([]netip.AddrPort, error)
	SetEndpoint  func(peer publicKey, addr netip.AddrPort)  // an address found by rendezvous
	IsSelf       func(addr netip.AddrPort) bool             // optional: our own announced address
	OwnIP        func(ip netip.Addr) bool                   // optional: an IP we announce from (candidates there are tried last)
	Send         func(peer publicKey, payload []byte) error // one session payload; may fail: we retransmit
	MaxPayload   int                                        // the session's plaintext limit per packet
	// Event receives events in order, without chat locks held. It may run on
	// the outbox committer, so it must not block nor call send.
	Event func(chatEvent)

	Now  func() time.Time
	Rand io.Reader
	Log  *slog.Logger
}

// chatEventKind says what a chatEvent reports.
type chatEventKind uint8

const (
	eventQueued    chatEventKind = iota + 1 // our message is durable in the outbox
	eventDelivered                          // the contact acknowledged our message
	eventMessage                            // a message from a contact
	eventOnline
	eventOffline
	eventMoved // the contact's session moved to another address
)

func (k chatEventKind) String() string {
	names := [...]string{"", "queued", "delivered", "message", "online", "offline", "moved"}
	if int(k) < len(names) && k != 0 {
		return names[k]
	}
	return "unknown"
}

// chatEvent is what the UI prints.
type chatEvent struct {
	Kind    chatEventKind
	Contact string
	Key     publicKey
	MsgID   uint64 // queued, delivered, message: the per-contact sequence number
	Text    string // message
	Time    time.Time
	Addr    netip.AddrPort // online, moved
}

// contactInfo is one row of contactList.
type contactInfo struct {
	Name     string
	Key      publicKey
	Online   bool
	Addr     netip.AddrPort
	LastSeen time.Time
	Outbox   int // messages not yet acknowledged
}

// outMsg is a message in the outbox.
type outMsg struct {
	seq     uint64
	text    string
	durable bool          // its "queued" record is synced: only then is it sent
	rto     time.Duration // wait after the last send; 0: start again at retransmitMin
	sent    time.Time     // last send; zero: never sent
	next    time.Time     // next (re)transmission; zero: now
}

// inMsg is a message being reassembled.
type inMsg struct {
	frags [][]byte
	got   int
	size  int
}

func (m *inMsg) complete() bool { return m != nil && m.got == len(m.frags) }

// text is the reassembled message. A contact's client is trusted to send
// UTF-8; if it does not, the message is still delivered (the stream must
// not stall), repaired.
func (m *inMsg) text() string {
	var t string
	if len(m.frags) == 1 {
		t = string(m.frags[0]) // the common case, without a join
	} else {
		t = string(bytes.Join(m.frags, nil))
	}
	if utf8.ValidString(t) {
		return t
	}
	return strings.ToValidUTF8(t, "\uFFFD")
}

// recvState is how far a contact's stream to us has come: their stream,
// delivered in memory, delivered on disk. It outlives the contact's
// removal (chat.gone), so that a contact removed and added again, who kept
// us and so its stream, is not met by a receiver starting from seq 1.
type recvState struct {
	rstream, delivered, durable uint64
}

// maxGone bounds the receive states kept for removed contacts.
const maxGone = 1024

// chatPeer is everything the chat keeps per contact.
type chatPeer struct {
	contactEntry
	online bool
	addr   netip.AddrPort

	stream, acked, nextSeq uint64 // sending: our stream, acknowledged, next sequence
	out                    []*outMsg

	recvState
	reasm      map[uint64]*inMsg
	reasmBytes int

	fastUntil, nextLookup, nextAnnounce time.Time
	lookupBusy, announceBusy            bool
	lookupFails, announceFails          int              // consecutive failed DHT operations
	tried                               []netip.AddrPort // rendezvous candidates handed over since the last session
}

// pendingDelivery is a message delivered in memory whose "delivered"
// record waits for its batch to be durable before the UI sees it.
type pendingDelivery struct {
	gen    uint64
	key    publicKey
	stream uint64
	seq    uint64
	ev     chatEvent
}

// chat is the chat core. Safe for concurrent use.
type chat struct {
	cfg chatConfig
	j   *journal

	saveMu sync.Mutex // serialises contact-file writes; taken before mu
	mu     sync.Mutex
	peers  map[publicKey]*chatPeer
	gone   map[publicKey]recvState // removed contacts' receive state (recvState)
	names  map[string]*chatPeer
	events []chatEvent
	spareE []chatEvent // the drained slice, reused so events cost no allocation
	drain  bool        // someone is emitting events
	wait   []pendingDelivery
	epochs []uint64
	closed bool

	dhtSem chan struct{}
	dhtWG  sync.WaitGroup

	outq  chan queuedFrames // to the sender goroutine
	outWG sync.WaitGroup    // frames queued and not yet sent
	stop  chan struct{}     // closed by close: the sender exits
}

// queuedFrames are frames for one contact waiting for the sender goroutine.
type queuedFrames struct {
	key    publicKey
	frames [][]byte
}

// newChat loads the contacts and the outbox log from cfg.Dir and starts the
// committer. A damaged contacts file or outbox is an error and left as is.
func newChat(cfg chatConfig) (*chat, error) {
	if cfg.Dir == "" || cfg.Send == nil || cfg.MaxPayload < minChatPayload {
		return nil, fmt.Errorf("chat: config needs Dir, Send and MaxPayload >= %d", minChatPayload)
	}
	if cfg.Event == nil {
		cfg.Event = func(chatEvent) {}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = cryptorand.Reader
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &chat{cfg: cfg, peers: map[publicKey]*chatPeer{}, gone: map[publicKey]recvState{}, names: map[string]*chatPeer{}, dhtSem: make(chan struct{}, maxDHTOps),
		outq: make(chan queuedFrames, sendQueueLen), stop: make(chan struct{})}
	b, err := os.ReadFile(filepath.Join(cfg.Dir, contactsFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("chat: contacts: %w", err)
	}
	es, err := parseContacts(b, cfg.Self)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		c.insertLocked(e)
	}
	j, recs, err := openJournal(filepath.Join(cfg.Dir, outboxFile))
	if err != nil {
		return nil, err
	}
	if err := c.replay(recs); err != nil {
		j.f.Close()
		return nil, err
	}
	j.onSync, j.compact = c.afterSync, c.compactNow
	c.j = j
	j.start()
	go c.sender()
	return c, nil
}

func (c *chat) insertLocked(e contactEntry) *chatPeer {
	p := &chatPeer{contactEntry: e, nextSeq: 1, recvState: c.gone[e.Key]}
	delete(c.gone, e.Key)
	c.peers[e.Key], c.names[e.Name] = p, p
	return p
}

// replay rebuilds the per-contact state from the outbox log. Records of
// keys that are no longer contacts are skipped (compaction drops them).
func (c *chat) replay(recs []outboxRec) error {
	for i, r := range recs {
		p := c.peers[r.Key]
		if p == nil {
			if r.Type == recDelivered {
				c.keepGoneLocked(r.Key, recvState{r.Stream, r.Seq, r.Seq})
			}
			continue
		}
		switch r.Type {
		case recStream:
			p.stream, p.acked, p.nextSeq, p.out = r.Stream, r.Seq, r.Seq+1, nil
		case recQueued:
			if p.stream == 0 || r.Seq != p.nextSeq {
				return fmt.Errorf("chat: outbox: record %d: queued sequence %d, want %d", i, r.Seq, p.nextSeq)
			}
			p.out = append(p.out, &outMsg{seq: r.Seq, text: string(r.Text), durable: true})
			p.nextSeq++
		case recAcked:
			p.ackTo(r.Seq)
		case recDelivered:
			p.rstream, p.delivered, p.durable = r.Stream, r.Seq, r.Seq
		case recForget:
			*p = chatPeer{contactEntry: p.contactEntry, nextSeq: 1, recvState: p.recvState}
		}
	}
	return nil
}

// ackTo drops the messages up to seq from the outbox and returns how many
// it dropped and the first one's sequence number (the outbox holds
// consecutive numbers, so they are first .. first+n-1).
func (p *chatPeer) ackTo(seq uint64) (first uint64, n int) {
	if seq <= p.acked {
		return 0, 0
	}
	for n < len(p.out) && p.out[n].seq <= seq {
		n++
	}
	if n > 0 {
		first = p.out[0].seq
	}
	clear(p.out[:n])
	p.out, p.acked = p.out[n:], seq
	return first, n
}

// newStream picks a stream id for a fresh conversation: the time in
// milliseconds above 20 random bits, so a re-added contact's new stream
// sorts after the old one (removing takes an fsync, so not within the same
// millisecond) and the receiver can tell late frames of the old one apart.
func (c *chat) newStream() uint64 {
	var r [4]byte
	if _, err := io.ReadFull(c.cfg.Rand, r[:]); err != nil {
		c.cfg.Log.Debug("chat: rand", "err", err)
	}
	return uint64(c.cfg.Now().UnixMilli())<<streamRandBits | uint64(binary.BigEndian.Uint32(r[:]))>>(32-streamRandBits)
}

// send queues text for the contact name. It returns once the message is
// durable in the outbox (sharing the fsync with concurrent senders); the
// message id is the per-contact sequence number.
func (c *chat) send(ctx context.Context, name, text string) (uint64, error) {
	if err := validText(text); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("chat: send: %w", err)
	}
	c.mu.Lock()
	p, m, gen, err := c.queueLocked(name, text)
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if err := c.j.wait(gen); err != nil {
		return 0, err
	}
	c.mu.Lock()
	now := c.cfg.Now()
	m.durable = true
	c.events = append(c.events, chatEvent{Kind: eventQueued, Contact: p.Name, Key: p.Key, MsgID: m.seq, Time: now})
	frames := c.dueLocked(p, now, false)
	c.mu.Unlock()
	c.sendFrames(p.Key, frames)
	c.flushEvents()
	return m.seq, nil
}

// queueLocked appends the message to the outbox log and to memory.
func (c *chat) queueLocked(name, text string) (*chatPeer, *outMsg, uint64, error) {
	p := c.names[name]
	switch {
	case c.closed:
		return nil, nil, 0, errChatClosed
	case p == nil:
		return nil, nil, 0, fmt.Errorf("%w %q", errNoContact, name)
	case len(p.out) >= maxOutboxPerPeer:
		return nil, nil, 0, fmt.Errorf("%w: %d messages to %s wait for delivery", errOutboxFull, len(p.out), name)
	}
	if p.stream == 0 {
		s := c.newStream()
		if _, err := c.j.append(outboxRec{Type: recStream, Key: p.Key, Stream: s}); err != nil {
			return nil, nil, 0, err
		}
		p.stream, p.acked, p.nextSeq = s, 0, 1
	}
	m := &outMsg{seq: p.nextSeq, text: text}
	gen, err := c.j.append(outboxRec{Type: recQueued, Key: p.Key, Seq: m.seq, Text: []byte(text)})
	if err != nil {
		return nil, nil, 0, err
	}
	p.nextSeq++
	p.out = append(p.out, m)
	return p, m, gen, nil
}

// dueLocked returns the frames of the durable messages in the window whose
// (re)transmission is due, and schedules the next one: 200 ms doubling to
// 10 s (markAcked restarts the backoff when acks show progress).
// force (a new session) sends everything in the window now.
func (c *chat) dueLocked(p *chatPeer, now time.Time, force bool) [][]byte {
	var frames [][]byte
	for _, m := range p.out {
		if m.seq > p.acked+chatWindow {
			break
		}
		if !m.durable || (!force && now.Before(m.next)) {
			continue
		}
		if force || m.rto == 0 {
			m.rto = retransmitMin
		} else {
			m.rto = min(2*m.rto, retransmitMax)
		}
		m.sent, m.next = now, now.Add(m.rto)
		frames = c.appendFrames(frames, p.stream, m)
	}
	return frames
}

// appendFrames splits a message into data frames that fit MaxPayload.
func (c *chat) appendFrames(frames [][]byte, stream uint64, m *outMsg) [][]byte {
	chunk := c.cfg.MaxPayload - chatDataHeaderLen
	count := (len(m.text) + chunk - 1) / chunk
	for i := range count {
		text := m.text[i*chunk : min(len(m.text), (i+1)*chunk)]
		f := chatFrame{Type: chatFrameData, Stream: stream, Seq: m.seq, Index: uint8(i), Count: uint8(count), Text: []byte(text)}
		frames = append(frames, f.appendTo(make([]byte, 0, chatDataHeaderLen+len(text))))
	}
	return frames
}

// sendFrames hands frames to the session layer, outside every lock. A
// failure (no session yet) is left to the retransmission timer.
func (c *chat) sendFrames(key publicKey, frames [][]byte) {
	for _, f := range frames {
		if err := c.cfg.Send(key, f); err != nil {
			c.cfg.Log.Debug("chat: send", "peer", key.String(), "err", err)
			return
		}
	}
}

// sendLater hands frames to the sender goroutine. handlePayload and
// setOnline use it because the session layer calls them from its own
// callbacks (Deliver, Established), perhaps holding its locks: sending from
// there could deadlock. A full queue drops the frames; retransmission and
// the next ack repair that.
func (c *chat) sendLater(key publicKey, frames [][]byte) {
	if len(frames) == 0 {
		return
	}
	c.outWG.Add(1)
	select {
	case c.outq <- queuedFrames{key, frames}:
	default:
		c.outWG.Done()
		c.cfg.Log.Debug("chat: send queue full", "peer", key.String(), "frames", len(frames))
	}
}

// sender sends what sendLater queued until stop is closed.
func (c *chat) sender() {
	for {
		select {
		case q := <-c.outq:
			c.sendFrames(q.key, q.frames)
			c.outWG.Done()
		case <-c.stop:
			return
		}
	}
}

// flushEvents emits queued events in the order they were queued. It is
// re-entrant: an event handler that calls back into the chat only queues.
func (c *chat) flushEvents() {
	c.mu.Lock()
	if c.drain {
		c.mu.Unlock()
		return
	}
	c.drain = true
	for len(c.events) > 0 {
		evs := c.events
		c.events = c.spareE[:0]
		c.mu.Unlock()
		for _, e := range evs {
			c.cfg.Event(e)
		}
		clear(evs) // drop the texts
		c.mu.Lock()
		c.spareE = evs
	}
	c.drain = false
	c.mu.Unlock()
}

// handlePayload takes one decrypted session payload from peer. The session
// layer calls it with b valid only during the call; an empty payload is a
// keepalive.
func (c *chat) handlePayload(key publicKey, from netip.AddrPort, b []byte) {
	if len(b) == 0 {
		return
	}
	f, err := parseChatFrame(b)
	if err != nil {
		c.cfg.Log.Debug("chat: drop frame", "peer", key.String(), "from", from, "err", err)
		return
	}
	c.mu.Lock()
	p := c.peers[key]
	if p == nil || c.closed {
		c.mu.Unlock()
		return
	}
	now := c.cfg.Now()
	p.LastSeen = now
	var frames [][]byte
	if f.Type == chatFrameData {
		frames = c.onDataLocked(p, f, now)
	} else {
		frames = c.onAckLocked(p, f, now)
	}
	c.mu.Unlock()
	c.sendLater(key, frames)
	c.flushEvents()
}

// onDataLocked files a fragment. Messages that complete in order are logged
// as delivered and acknowledged once durable (afterSync); anything else is
// acknowledged at once so the sender learns what we hold.
func (c *chat) onDataLocked(p *chatPeer, f chatFrame, now time.Time) [][]byte {
	switch {
	case f.Stream < p.rstream:
		return nil // a late frame of a conversation the sender has since reset
	case f.Stream > p.rstream:
		p.rstream, p.delivered, p.durable, p.reasm, p.reasmBytes = f.Stream, 0, 0, nil, 0
	}
	if f.Seq > p.delivered && f.Seq <= p.delivered+chatWindow {
		p.addFragment(f)
		if c.advanceLocked(p, now) {
			return nil
		}
	}
	return [][]byte{p.ackFrame()}
}

// addFragment stores a fragment, within the reassembly bounds.
func (p *chatPeer) addFragment(f chatFrame) {
	m := p.reasm[f.Seq]
	if m == nil {
		if p.reasm == nil {
			p.reasm = map[uint64]*inMsg{}
		}
		m = &inMsg{frags: make([][]byte, f.Count)}
		p.reasm[f.Seq] = m
	}
	if int(f.Count) != len(m.frags) || m.frags[f.Index] != nil ||
		m.size+len(f.Text) > maxMessageText ||
		// The next message in order is always taken (4 KiB at most past
		// the cap): held later ones must not block the one they wait for.
		(p.reasmBytes+len(f.Text) > maxReassemblyBytes && f.Seq != p.delivered+1) {
		return
	}
	m.frags[f.Index] = bytes.Clone(f.Text)
	m.got++
	m.size += len(f.Text)
	p.reasmBytes += len(f.Text)
}

// advanceLocked delivers (in memory) the messages that are now complete in
// order and logs how far delivery got. It reports whether it advanced.
func (c *chat) advanceLocked(p *chatPeer, now time.Time) bool {
	first := len(c.wait)
	for m := p.reasm[p.delivered+1]; m.complete(); m = p.reasm[p.delivered+1] {
		p.delivered++
		delete(p.reasm, p.delivered)
		p.reasmBytes -= m.size
		text := m.text()
		c.wait = append(c.wait, pendingDelivery{key: p.Key, stream: p.rstream, seq: p.delivered,
			ev: chatEvent{Kind: eventMessage, Contact: p.Name, Key: p.Key, MsgID: p.delivered, Text: text, Time: now}})
	}
	if len(c.wait) == first {
		return false
	}
	gen, err := c.j.append(outboxRec{Type: recDelivered, Key: p.Key, Stream: p.rstream, Seq: p.delivered})
	if err != nil {
		c.cfg.Log.Warn("chat: cannot log delivery", "err", err)
	}
	for i := first; i < len(c.wait); i++ {
		c.wait[i].gen = gen
	}
	return true
}

// ackFrame acknowledges everything durable and marks what we hold beyond.
func (p *chatPeer) ackFrame() []byte {
	var sack [chatSackMaxLen]byte
	n := 0
	for i := uint64(0); i < chatWindow; i++ {
		seq := p.durable + 1 + i
		if seq <= p.delivered || p.reasm[seq].complete() {
			sack[i/8] |= 0x80 >> (i % 8)
			n = int(i/8) + 1
		}
	}
	f := chatFrame{Type: chatFrameAck, Stream: p.rstream, Seq: p.durable, Sack: sack[:n]}
	return f.appendTo(make([]byte, 0, chatAckHeaderLen+n))
}

// afterSync runs once batch gen is durable: deliveries waiting for it reach
// the UI and are acknowledged.
func (c *chat) afterSync(gen uint64) {
	c.mu.Lock()
	var acks []*chatPeer
	n := 0
	for ; n < len(c.wait) && c.wait[n].gen != 0 && c.wait[n].gen <= gen; n++ {
		d := c.wait[n]
		p := c.peers[d.key]
		if p == nil || p.rstream != d.stream {
			continue
		}
		p.durable = max(p.durable, d.seq)
		c.events = append(c.events, d.ev)
		if !slices.Contains(acks, p) {
			acks = append(acks, p)
		}
	}
	c.wait = slices.Delete(c.wait, 0, n)
	frames := make([][]byte, len(acks))
	for i, p := range acks {
		frames[i] = p.ackFrame()
	}
	c.mu.Unlock()
	for i, p := range acks {
		c.sendFrames(p.Key, frames[i:i+1])
	}
	c.flushEvents()
}

// onAckLocked removes acknowledged messages from the outbox, notes the
// selectively acknowledged ones, and sends what the window now allows.
func (c *chat) onAckLocked(p *chatPeer, f chatFrame, now time.Time) [][]byte {
	if f.Stream != p.stream || f.Seq >= p.nextSeq {
		return nil // not our current conversation, or acks what we never sent
	}
	first, n := p.ackTo(f.Seq)
	if n > 0 {
		// Not waited for: if this record is lost, the messages are sent
		// again and the receiver acknowledges them as duplicates.
		if _, err := c.j.append(outboxRec{Type: recAcked, Key: p.Key, Seq: f.Seq}); err != nil {
			c.cfg.Log.Warn("chat: cannot log ack", "err", err)
		}
	}
	for seq := first; seq < first+uint64(n); seq++ {
		c.events = append(c.events, chatEvent{Kind: eventDelivered, Contact: p.Name, Key: p.Key, MsgID: seq, Time: now})
	}
	markAcked(p.out, f, now, n > 0)
	return c.dueLocked(p, now, false)
}

// markAcked applies an ack to the messages still in the outbox. Progress
// shows the path works, so backoff restarts at retransmitMin. A message the
// receiver holds (its bit is set) is not sent again for retransmitMin: only
// its cumulative ack is missing. A hole below a held message was most likely
// lost and is sent again at once if its last send is older than
// fastRetransmit (which bounds how often acks can trigger that), else
// fastRetransmit after its last send: when the window is full no further
// ack may come to trigger it, and waiting for the full timeout would stall
// the stream for retransmitMin.
func markAcked(out []*outMsg, f chatFrame, now time.Time, progress bool) {
	last := -1 // index in out of the highest message the bitmap marks
	for i, m := range out {
		if bit := m.seq - f.Seq - 1; bit >= uint64(8*len(f.Sack)) {
			break
		} else if sackBit(f.Sack, bit) {
			last = i
		}
	}
	for i, m := range out {
		if m.seq > f.Seq+chatWindow {
			break // beyond the window nothing was sent
		}
		switch {
		case m.sent.IsZero():
		case sackBit(f.Sack, m.seq-f.Seq-1):
			m.rto, m.next = 0, now.Add(retransmitMin)
		case i < last:
			if soon := m.sent.Add(fastRetransmit); soon.Before(m.next) {
				m.next = soon // in the past if the last send is old: now
			}
		case progress && m.rto > retransmitMin:
			m.rto = 0
			if soon := m.sent.Add(retransmitMin); soon.Before(m.next) {
				m.next = soon
			}
		}
	}
}

// compactNow replaces the outbox log by a snapshot of the live state. It is
// called by the committer when the log has grown, and by close.
func (c *chat) compactNow() {
	c.mu.Lock()
	gen, err := c.j.replace(c.snapshotLocked())
	c.mu.Unlock()
	if err != nil {
		c.cfg.Log.Warn("chat: compact outbox", "err", err)
		return
	}
	c.afterSync(gen)
}

// snapshotLocked is the outbox log that rebuilds the current state: per
// contact (sorted by key) its stream, its unacknowledged messages and how far
// we delivered its messages.
func (c *chat) snapshotLocked() []byte {
	keys := make([]publicKey, 0, len(c.peers))
	for k := range c.peers {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b publicKey) int { return bytes.Compare(a[:], b[:]) })
	b := []byte(outboxMagic)
	for _, k := range keys {
		p := c.peers[k]
		if p.stream != 0 {
			b = appendRecord(b, outboxRec{Type: recStream, Key: k, Stream: p.stream, Seq: p.acked})
			for _, m := range p.out {
				b = appendRecord(b, outboxRec{Type: recQueued, Key: k, Seq: m.seq, Text: []byte(m.text)})
			}
		}
		if p.rstream != 0 {
			b = appendRecord(b, outboxRec{Type: recDelivered, Key: k, Stream: p.rstream, Seq: p.delivered})
		}
	}
	gone := slices.SortedFunc(maps.Keys(c.gone), func(a, b publicKey) int { return bytes.Compare(a[:], b[:]) })
	for _, k := range gone {
		g := c.gone[k]
		b = appendRecord(b, outboxRec{Type: recDelivered, Key: k, Stream: g.rstream, Seq: g.durable})
	}
	return b
}

// keepGoneLocked remembers a removed contact's receive state, at most
// maxGone of them (any one is forgotten when full).
func (c *chat) keepGoneLocked(k publicKey, st recvState) {
	if _, ok := c.gone[k]; !ok && len(c.gone) >= maxGone {
		for old := range c.gone {
			delete(c.gone, old)
			break
		}
	}
	c.gone[k] = st
}

// setOnline records that a session with the contact is up at addr (the UI
// calls it on the session layer's Established) and sends the outbox to it
// at once.
func (c *chat) setOnline(key publicKey, addr netip.AddrPort) {
	c.mu.Lock()
	p := c.peers[key]
	if p == nil {
		c.mu.Unlock()
		return
	}
	now := c.cfg.Now()
	switch {
	case !p.online:
		c.events = append(c.events, chatEvent{Kind: eventOnline, Contact: p.Name, Key: key, Time: now, Addr: addr})
	case p.addr != addr:
		c.events = append(c.events, chatEvent{Kind: eventMoved, Contact: p.Name, Key: key, Time: now, Addr: addr})
	}
	p.online, p.addr, p.LastSeen = true, addr, now
	p.tried = p.tried[:0]
	frames := c.dueLocked(p, now, true)
	c.mu.Unlock()
	c.sendLater(key, frames)
	c.flushEvents()
}

// setOffline records that the contact's session ended; rendezvous lookups
// for it go back to the fast schedule.
func (c *chat) setOffline(key publicKey) {
	c.mu.Lock()
	p := c.peers[key]
	if p == nil || !p.online {
		c.mu.Unlock()
		return
	}
	now := c.cfg.Now()
	p.online, p.LastSeen = false, now
	p.fastUntil, p.nextLookup = now.Add(lookupFastPeriod), now
	c.events = append(c.events, chatEvent{Kind: eventOffline, Contact: p.Name, Key: key, Time: now, Addr: p.addr})
	c.mu.Unlock()
	c.flushEvents()
	if err := c.saveContacts(nil, nil); err != nil {
		c.cfg.Log.Warn("chat: save contacts", "err", err)
	}
}

// saveContacts writes the contacts file from memory. edit, if not nil,
// checks and changes the entries first; commit, if not nil, then changes
// memory under the lock, only once the file is written, so the two agree.
// saveMu keeps writers in order: contacts come and go only in here.
func (c *chat) saveContacts(edit func([]contactEntry) ([]contactEntry, error), commit func()) error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	es := make([]contactEntry, 0, len(c.peers))
	for _, p := range c.peers {
		es = append(es, p.contactEntry)
	}
	c.mu.Unlock()
	var err error
	if edit != nil {
		if es, err = edit(es); err != nil {
			return err
		}
	}
	slices.SortFunc(es, func(a, b contactEntry) int { return strings.Compare(a.Name, b.Name) })
	if err := writeFileAtomic(filepath.Join(c.cfg.Dir, contactsFile), formatContacts(es), 0o600); err != nil {
		return fmt.Errorf("chat: contacts: %w", err)
	}
	if commit != nil {
		c.mu.Lock()
		commit()
		c.mu.Unlock()
	}
	return nil
}

// addContact adds a contact; names and keys must be unique and not ours.
func (c *chat) addContact(name string, key publicKey) error {
	if err := validName(name); err != nil {
		return err
	}
	if key == c.cfg.Self {
		return errors.New("chat: that is your own key")
	}
	e := contactEntry{Name: name, Key: key}
	return c.saveContacts(func(es []contactEntry) ([]contactEntry, error) {
		for _, o := range es {
			switch {
			case o.Name == name:
				return nil, fmt.Errorf("chat: a contact named %q exists already", name)
			case o.Key == key:
				return nil, fmt.Errorf("chat: that key is already your contact %q", o.Name)
			}
		}
		return append(es, e), nil
	}, func() {
		now := c.cfg.Now()
		p := c.insertLocked(e)
		p.fastUntil = now.Add(lookupFastPeriod)
	})
}

// removeContact forgets a contact, its outbox and its delivery state.
func (c *chat) removeContact(name string) error {
	var key publicKey
	var gen uint64
	var jerr error
	err := c.saveContacts(func(es []contactEntry) ([]contactEntry, error) {
		i := slices.IndexFunc(es, func(e contactEntry) bool { return e.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("%w %q", errNoContact, name)
		}
		key = es[i].Key
		return slices.Delete(es, i, i+1), nil
	}, func() {
		if p := c.peers[key]; p != nil && p.rstream != 0 {
			c.keepGoneLocked(key, p.recvState)
		}
		delete(c.peers, key)
		delete(c.names, name)
		gen, jerr = c.j.append(outboxRec{Type: recForget, Key: key})
	})
	if err != nil {
		return err
	}
	if jerr != nil {
		return jerr
	}
	// Waited for: if the contact is added again, its old outbox must not
	// come back after a crash.
	return c.j.wait(gen)
}

// contactList lists the contacts by name.
func (c *chat) contactList() []contactInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]contactInfo, 0, len(c.peers))
	for _, p := range c.peers {
		out = append(out, p.info())
	}
	slices.SortFunc(out, func(a, b contactInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (p *chatPeer) info() contactInfo {
	return contactInfo{Name: p.Name, Key: p.Key, Online: p.online, Addr: p.addr, LastSeen: p.LastSeen, Outbox: len(p.out)}
}

// contactByName looks a contact up by name.
func (c *chat) contactByName(name string) (contactInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.names[name]; p != nil {
		return p.info(), true
	}
	return contactInfo{}, false
}

// contactByKey looks a contact up by key (e.g. to name an incoming session).
func (c *chat) contactByKey(key publicKey) (contactInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.peers[key]; p != nil {
		return p.info(), true
	}
	return contactInfo{}, false
}

// isContact is the session layer's Allowed check.
func (c *chat) isContact(key publicKey) bool {
	_, ok := c.contactByKey(key)
	return ok
}

// verifyCode is the safety code to compare with the contact aloud.
func (c *chat) verifyCode(name string) (string, error) {
	ci, ok := c.contactByName(name)
	if !ok {
		return "", fmt.Errorf("%w %q", errNoContact, name)
	}
	return verifyCodeFor(c.cfg.Self, ci.Key), nil
}

// run drives the timers: retransmissions every tick and the rendezvous
// schedule. It returns when ctx ends, after the DHT operations it started
// have ended and the contacts (last seen) are saved.
func (c *chat) run(ctx context.Context) error {
	c.startSchedule()
	// The first rendezvous runs now, not a tick later: a contact waiting
	// for us should hear from us as soon as the DHT can answer.
	c.rendezvous(ctx)
	t := time.NewTicker(chatTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.dhtWG.Wait()
			return c.saveContacts(nil, nil)
		case <-t.C:
			c.retransmit()
			c.rendezvous(ctx)
		}
	}
}

// startSchedule makes every contact due for an announce and a lookup now,
// with a minute of fast lookups.
func (c *chat) startSchedule() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	for _, p := range c.peers {
		p.fastUntil, p.nextLookup, p.nextAnnounce = now.Add(lookupFastPeriod), now, now
	}
}

// retransmit sends whatever is due to every contact.
func (c *chat) retransmit() {
	c.mu.Lock()
	now := c.cfg.Now()
	type batch struct {
		key    publicKey
		frames [][]byte
	}
	var bs []batch
	for k, p := range c.peers {
		if fs := c.dueLocked(p, now, false); len(fs) > 0 {
			bs = append(bs, batch{k, fs})
		}
	}
	c.mu.Unlock()
	for _, b := range bs {
		c.sendFrames(b.key, b.frames)
	}
}

// rendezvousJob is one DHT task for one contact.
type rendezvousJob struct {
	key      publicKey
	announce bool // announce_peer; otherwise get_peers
}

// rendezvous starts the announces and lookups that are due: announces every
// 5 minutes and whenever the set of epochs changes; lookups of an offline
// contact every 5 s in its first minute (after start, add or going
// offline), then every 90 s. At most maxDHTOps run at once.
func (c *chat) rendezvous(ctx context.Context) {
	if c.cfg.Announce == nil || c.cfg.GetPeers == nil || c.cfg.StaticSecret == nil {
		return
	}
	now := c.cfg.Now()
	epochs := rendezvousEpochs(now)
	c.mu.Lock()
	if !slices.Equal(epochs, c.epochs) {
		c.epochs = epochs
		for _, p := range c.peers {
			p.nextAnnounce = time.Time{}
		}
	}
	var jobs []rendezvousJob
	for k, p := range c.peers {
		if !p.announceBusy && !now.Before(p.nextAnnounce) {
			p.announceBusy, p.nextAnnounce = true, now.Add(announceInterval)
			jobs = append(jobs, rendezvousJob{k, true})
		}
		if !p.online && !p.lookupBusy && !now.Before(p.nextLookup) {
			every := lookupSlowInterval
			if now.Before(p.fastUntil) {
				every = lookupFastInterval
			}
			p.lookupBusy, p.nextLookup = true, now.Add(every)
			jobs = append(jobs, rendezvousJob{k, false})
		}
	}
	c.mu.Unlock()
	for _, jb := range jobs {
		c.dhtWG.Add(1)
		go c.runRendezvous(ctx, jb, epochs)
	}
}

// runRendezvous does one job for every current epoch.
func (c *chat) runRendezvous(ctx context.Context, jb rendezvousJob, epochs []uint64) {
	defer c.dhtWG.Done()
	ok := false
	defer func() { c.rendezvousDone(jb, ok) }()
	select {
	case c.dhtSem <- struct{}{}:
		defer func() { <-c.dhtSem }()
	case <-ctx.Done():
		return
	}
	secret, err := c.cfg.StaticSecret(jb.key)
	if err != nil {
		c.cfg.Log.Debug("chat: rendezvous secret", "peer", jb.key.String(), "err", err)
		return
	}
	var found []netip.AddrPort
	for _, e := range epochs {
		octx, cancel := context.WithTimeout(ctx, dhtOpTimeout)
		ih := rendezvousInfohash(secret, e)
		if jb.announce {
			n, err := c.cfg.Announce(octx, ih)
			ok = ok || (err == nil && n > 0)
		} else {
			addrs, err := c.cfg.GetPeers(octx, ih)
			ok = ok || err == nil
			for _, a := range addrs {
				if !slices.Contains(found, a) && (c.cfg.IsSelf == nil || !c.cfg.IsSelf(a)) {
					found = append(found, a)
				}
			}
		}
		cancel()
	}
	c.cfg.Log.Debug("chat: rendezvous", "peer", jb.key.String(), "announce", jb.announce, "ok", ok, "found", found)
	if a, ok := c.pickCandidate(jb.key, found); ok {
		c.cfg.SetEndpoint(jb.key, a)
	}
}

// pickCandidate chooses the one address a lookup hands to the session
// layer. A lookup often finds stale addresses next to the live one: our
// own or the contact's earlier ports, kept by DHT nodes for 30 minutes. The
// session layer sends its initiation to the first address it is given and
// resends it, after RekeyTimeout, to the last one, so each lookup hands
// over one candidate: one not tried since the last session, in the DHT's
// order but with addresses on our own IP last (most likely our own earlier
// announcements); once all were tried, the round starts again.
func (c *chat) pickCandidate(key publicKey, found []netip.AddrPort) (netip.AddrPort, bool) {
	if len(found) == 0 {
		return netip.AddrPort{}, false
	}
	if c.cfg.OwnIP != nil {
		slices.SortStableFunc(found, func(a, b netip.AddrPort) int {
			oa, ob := c.cfg.OwnIP(a.Addr()), c.cfg.OwnIP(b.Addr())
			switch {
			case oa == ob:
				return 0
			case ob:
				return -1
			}
			return 1
		})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[key]
	if p == nil {
		return netip.AddrPort{}, false
	}
	i := slices.IndexFunc(found, func(a netip.AddrPort) bool { return !slices.Contains(p.tried, a) })
	if i < 0 {
		p.tried, i = p.tried[:0], 0
	}
	if len(p.tried) < maxLookupTries {
		p.tried = append(p.tried, found[i])
	}
	return found[i], true
}

// rendezvousDone clears the busy mark. A failed operation is retried
// soon: after dhtRetryMin, doubling with each further failure up to
// announceRetry (announce) or the lookup interval. The first ones at start
// usually fail only because the DHT is still pinging its saved nodes, and
// a contact waiting for us should not wait a whole interval for that.
func (c *chat) rendezvousDone(jb rendezvousJob, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[jb.key]
	if p == nil {
		return
	}
	now := c.cfg.Now()
	if jb.announce {
		p.announceBusy = false
		p.nextAnnounce = retryAfter(&p.announceFails, ok, now, announceRetry, p.nextAnnounce)
		return
	}
	p.lookupBusy = false
	p.nextLookup = retryAfter(&p.lookupFails, ok, now, lookupFastInterval, p.nextLookup)
}

// retryAfter counts consecutive failures and returns when to try again:
// next if ok, else dhtRetryMin doubled per earlier failure, at most ceil
// and never later than next.
func retryAfter(fails *int, ok bool, now time.Time, ceil time.Duration, next time.Time) time.Time {
	if ok {
		*fails = 0
		return next
	}
	d := min(dhtRetryMin<<min(*fails, 16), ceil)
	*fails++
	if retry := now.Add(d); retry.Before(next) {
		return retry
	}
	return next
}

// close flushes the outbox log, compacts it and saves the contacts. The
// chat must not be used afterwards; run should have returned.
func (c *chat) close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.j.stop()
	c.compactNow()
	close(c.stop) // frames still queued are dropped: the peer retransmits
	c.j.mu.Lock()
	err := c.j.err
	c.j.f.Close()
	c.j.mu.Unlock()
	if serr := c.saveContacts(nil, nil); err == nil {
		err = serr
	}
	return err
}
