// The outbox log (SPEC.md 5.4, 5.5): record format, group commit, loading
// and compaction, and the rule that the chat shows and acknowledges only
// what is on disk.
//
// Flow: every change the chat must not forget (a stream started, a message
// queued, acknowledged or delivered, a contact forgotten) is a record in the
// journal's current batch; one committer goroutine writes and fsyncs each
// batch, then calls back (chat.afterSync) to release the deliveries waiting
// for it. At start the records are parsed (parseOutbox), the state is rebuilt
// from them (chat.restore), and the log is replaced by that state's snapshot
// unless it is one already (settle). Later a snapshot of the live state
// (outboxSnapshot) replaces it at most scrubAfter after a message's text left
// the outbox (noteDropped, scrubIfDue), when the log has grown, and at exit;
// the replaced file is then overwritten with zeros (wipeFile).
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// The outbox file (SPEC.md 5.5).
const (
	outboxFile  = "outbox"
	outboxMagic = "KCOUTBX1"
	compactMin  = 1 << 20
	// scrubAfter is how long the text of a message that left the outbox
	// (delivered, or its contact removed) may stay in the log: half of the
	// one minute SPEC.md 6.7 promises, so a slow disk or a loaded machine
	// still keeps the promise. Compactions it causes are at least this far
	// apart: the next deadline is set only by text dropped after a
	// compaction's snapshot.
	scrubAfter = 30 * time.Second
)

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

// scrubEnv names the test-only environment variable that shortens
// scrubAfter (never lengthens it), e.g. KADCHAT_SCRUB_AFTER=1s, so that
// end-to-end tests need not wait half a minute.
const scrubEnv = "KADCHAT_SCRUB_AFTER"

// scrubAfterFromEnv reads scrubEnv; zero when it is not set.
func scrubAfterFromEnv() (time.Duration, error) {
	s := os.Getenv(scrubEnv)
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > scrubAfter {
		return 0, fmt.Errorf("chat: %s=%q: want a duration in (0, %v]", scrubEnv, s, scrubAfter)
	}
	return d, nil
}

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
	mu       sync.Mutex
	synced   *sync.Cond // signalled when a batch is durable
	f        *os.File
	path     string
	size     int64 // bytes in the file
	snapSize int64 // size of the last compacted file
	buf      []byte
	spare    []byte
	gen      uint64 // the batch buf belongs to
	done     uint64 // every batch <= done is durable (or failed: err)
	err      error  // sticky write error
	syncs    uint64 // fsyncs done, for the benchmarks
	closed   bool
	kick     chan struct{}
	exited   chan struct{}

	intact  []byte // the intact log read at open, until settle
	torn    int64  // bytes after it at open (a torn append), until settle
	settled bool

	scrubAfter  time.Duration
	scrubAt     time.Time // compact by then: dropped text is in the log; zero: none is
	compactReq  bool      // scrubIfDue asks the committer to compact
	compactions uint64    // for the tests and benchmarks

	onSync  func(gen uint64) // after a batch is durable; called by the committer
	compact func()           // the owner's compaction, which calls replace
}

// openJournal opens (or creates) the log at path and returns its records.
// A torn last record is left in place for settle, which replaces the file
// and wipes the old one, tail included (truncating would free the tail's
// blocks unwiped); other damage is an error and the file is left untouched.
// Temporary files a crashed compaction left behind are wiped and removed.
func openJournal(path string, scrub time.Duration) (*journal, []outboxRec, error) {
	if err := removeStaleTemps(path); err != nil {
		return nil, nil, fmt.Errorf("chat: outbox: %w", err)
	}
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
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("chat: outbox: %w", err)
	}
	j := &journal{f: f, path: path, size: int64(good), snapSize: int64(good), gen: 1,
		kick: make(chan struct{}, 1), exited: make(chan struct{}),
		intact: b[:good], torn: int64(len(b) - good), scrubAfter: scrub}
	j.synced = sync.NewCond(&j.mu)
	return j, recs, nil
}

// settle makes the log exactly snap, the snapshot of the state its records
// rebuilt, before anything is appended. A log that is already snap (the
// usual start after a clean exit) is left alone; one that holds more (the
// records appended after the last snapshot, before a crash: delivered
// messages' text among them, or a torn tail) is replaced, and the old file
// is returned for wiping. It must run once, before start.
func (j *journal) settle(snap []byte) (*os.File, error) {
	intact, torn := j.intact, j.torn
	j.intact, j.torn, j.settled = nil, 0, true
	if torn == 0 && bytes.Equal(snap, intact) {
		return nil, nil
	}
	_, old, err := j.replace(snap)
	return old, err
}

// start runs the committer.
func (j *journal) start() {
	if !j.settled {
		panic("chat: outbox: journal started before settle")
	}
	go j.loop()
}

// noteDropped records that text left the outbox at now: the log must be
// compacted by now + scrubAfter. An earlier deadline stands.
func (j *journal) noteDropped(now time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.scrubAt.IsZero() {
		j.scrubAt = now.Add(j.scrubAfter)
	}
}

// scrubIfDue asks the committer to compact once the deadline noteDropped
// set has come.
func (j *journal) scrubIfDue(now time.Time) {
	j.mu.Lock()
	due := !j.scrubAt.IsZero() && !now.Before(j.scrubAt) && !j.compactReq
	if due {
		j.compactReq = true
	}
	j.mu.Unlock()
	if due {
		select {
		case j.kick <- struct{}{}:
		default:
		}
	}
}

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

// waitBatch blocks until batch gen is durable.
func (j *journal) waitBatch(gen uint64) error {
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

// loop is the committer: it commits the pending batches and compacts when
// asked to or when the log has grown, until stop.
func (j *journal) loop() {
	defer close(j.exited)
	for {
		j.mu.Lock()
		for len(j.buf) == 0 && !j.closed && !j.compactReq {
			j.mu.Unlock()
			<-j.kick
			j.mu.Lock()
		}
		exit := j.err != nil || (len(j.buf) == 0 && j.closed)
		pending := len(j.buf) > 0
		j.mu.Unlock()
		if exit {
			j.synced.Broadcast()
			return
		}
		if pending && !j.commit() {
			continue
		}
		j.maybeCompact()
	}
}

// commit takes the pending batch, writes and fsyncs it, and wakes its
// waiters. Whatever is appended meanwhile is the next batch. It reports
// whether the batch is durable.
func (j *journal) commit() bool {
	j.mu.Lock()
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
		return false
	}
	j.onSync(gen)
	return true
}

func (j *journal) writeSync(b []byte) error {
	if _, err := j.f.Write(b); err != nil {
		return err
	}
	j.size += int64(len(b)) // only the committer touches size between compactions
	return j.f.Sync()
}

// maybeCompact asks the chat to compact when scrubIfDue asked for it, or
// when the log has grown well past its live contents.
func (j *journal) maybeCompact() {
	j.mu.Lock()
	want := j.compactReq || (j.size > compactMin && j.size > 4*j.snapSize)
	j.compactReq = false
	j.mu.Unlock()
	if want {
		j.compact()
	}
}

// replace rewrites the log as snap, atomically, and returns the durable
// batch number and the old file, which no name leads to any more, for the
// caller to wipe. The caller holds the chat lock and built snap from the
// state that every record appended so far has already changed, so the
// pending batch is durable with it and is dropped, and so is every text
// dropped so far: the scrub deadline is cleared. Only the committer, or
// anyone while it is not running, may call replace.
func (j *journal) replace(snap []byte) (uint64, *os.File, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return 0, nil, j.err
	}
	if err := writeFileAtomic(j.path, snap, 0o600); err != nil {
		j.err = fmt.Errorf("chat: outbox: compact: %w", err)
		j.synced.Broadcast()
		return 0, nil, j.err
	}
	// Not O_APPEND: wipeFile overwrites this file in place (WriteAt) once
	// the next compaction has renamed another over it.
	f, err := os.OpenFile(j.path, os.O_RDWR, 0o600)
	if err == nil {
		if _, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
		}
	}
	if err != nil {
		j.err = fmt.Errorf("chat: outbox: compact: %w", err)
		j.synced.Broadcast()
		return 0, nil, j.err
	}
	old := j.f
	j.f = f
	j.size, j.snapSize = int64(len(snap)), int64(len(snap))
	j.buf = j.buf[:0]
	j.scrubAt, j.compactReq = time.Time{}, false
	j.compactions++
	gen := j.gen
	j.done, j.gen = gen, gen+1
	j.synced.Broadcast()
	return gen, old, nil
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

// outbox is the chat's durable log and the deliveries waiting for it. It
// enforces the chat's one durability rule: a message is shown and
// acknowledged only once it is on disk. Our own message: send waits in
// waitDurable for its "queued" record before it reports it queued and marks
// it durable, the only state in which it is transmitted, so a sequence
// number is never reused after a crash. A
// contact's message: it is held (hold) until the batch of its "delivered"
// record is durable, and only release hands it on to be shown and to move
// the ack's cumulative value, which therefore never covers what a crash
// could forget. pending is guarded by the chat's lock; the journal guards
// itself.
type outbox struct {
	j       *journal
	pending []pendingDelivery // in order; gen 0: its record was not logged
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

// openOutbox opens (or creates) the outbox log in dir and returns its
// records, for chat.restore. Text that leaves the outbox is compacted out
// of the log after scrub.
func openOutbox(dir string, scrub time.Duration) (*outbox, []outboxRec, error) {
	j, recs, err := openJournal(filepath.Join(dir, outboxFile), scrub)
	if err != nil {
		return nil, nil, err
	}
	return &outbox{j: j}, recs, nil
}

// settle makes the log exactly snap, the snapshot of the restored state,
// before start; the old file, if it was replaced, is returned for wiping
// (wipeRetired).
func (o *outbox) settle(snap []byte) (*os.File, error) { return o.j.settle(snap) }

// start runs the committer: onSync after each durable batch, compact when
// the log has grown or dropped text is due to leave it.
func (o *outbox) start(onSync func(gen uint64), compact func()) {
	o.j.onSync, o.j.compact = onSync, compact
	o.j.start()
}

// record appends r to the current batch and returns the batch number.
func (o *outbox) record(r outboxRec) (uint64, error) { return o.j.append(r) }

// waitDurable blocks until batch gen is on disk.
func (o *outbox) waitDurable(gen uint64) error { return o.j.waitBatch(gen) }

// hold keeps a delivered message back until its "delivered" record, logged
// by logDelivered, is durable.
func (o *outbox) hold(d pendingDelivery) { o.pending = append(o.pending, d) }

// logDelivered appends the "delivered" record that covers the last n held
// messages and ties them to its batch. If the append fails they stay held
// (gen 0): neither shown nor acknowledged.
func (o *outbox) logDelivered(r outboxRec, n int) error {
	gen, err := o.j.append(r)
	for i := len(o.pending) - n; i < len(o.pending); i++ {
		o.pending[i].gen = gen
	}
	return err
}

// release hands show, in order, every held message whose batch is durable
// by gen, and forgets it.
func (o *outbox) release(gen uint64, show func(pendingDelivery)) {
	n := 0
	for ; n < len(o.pending) && o.pending[n].gen != 0 && o.pending[n].gen <= gen; n++ {
		show(o.pending[n])
	}
	o.pending = slices.Delete(o.pending, 0, n)
}

// dropped notes that a message's text left the outbox at now (delivered,
// or its contact removed): the log still holds it until the compaction
// scrubIfDue asks for scrubAfter later.
func (o *outbox) dropped(now time.Time) { o.j.noteDropped(now) }

// scrubIfDue has the committer compact the log if dropped text is due to
// leave it. The chat calls it every tick.
func (o *outbox) scrubIfDue(now time.Time) { o.j.scrubIfDue(now) }

// compact replaces the log by snap (outboxSnapshot of the current state)
// and returns the batch number that is now durable and the old file, to be
// wiped (wipeRetired) once the caller has let go of the chat's lock.
func (o *outbox) compact(snap []byte) (uint64, *os.File, error) { return o.j.replace(snap) }

// wipeRetired overwrites an outbox file that a compaction replaced (nil:
// none was); a failure costs only the wipe and is logged.
func wipeRetired(old *os.File, log *slog.Logger) {
	if old == nil {
		return
	}
	if err := wipeFile(old); err != nil {
		log.Warn("chat: outbox: wipe the replaced log", "err", err)
	}
}

// stop flushes what is pending and stops the committer.
func (o *outbox) stop() { o.j.stop() }

// close closes the log file and returns the journal's sticky write error.
func (o *outbox) close() error {
	o.j.mu.Lock()
	defer o.j.mu.Unlock()
	err := o.j.err
	o.j.f.Close()
	return err
}

// restore rebuilds the per-contact state from the outbox log. Records of
// keys that are no longer contacts are skipped (compaction drops them),
// except a removed contact's receive state.
func (c *chat) restore(recs []outboxRec) error {
	for i, r := range recs {
		p := c.peers[r.Key]
		if p == nil {
			if r.Type == recDelivered {
				c.gone.keep(r.Key, recvState{r.Stream, r.Seq, r.Seq})
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
			p.rstream, p.delivered, p.onDisk = r.Stream, r.Seq, r.Seq
		case recForget:
			*p = chatPeer{contactEntry: p.contactEntry, nextSeq: 1, recvState: p.recvState}
		}
	}
	return nil
}

// outboxSnapshot is the outbox log that rebuilds the current state: per
// contact (sorted by key) its stream and unacknowledged messages, if it has
// a stream, and how far we delivered its messages, if it sent any; then the
// removed contacts' receive states. A contact without either writes nothing.
func outboxSnapshot(peers map[publicKey]*chatPeer, gone goneStates) []byte {
	keys := make([]publicKey, 0, len(peers))
	for k := range peers {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b publicKey) int { return bytes.Compare(a[:], b[:]) })
	b := []byte(outboxMagic)
	for _, k := range keys {
		p := peers[k]
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
	for _, k := range slices.SortedFunc(maps.Keys(gone), func(a, b publicKey) int { return bytes.Compare(a[:], b[:]) }) {
		g := gone[k]
		b = appendRecord(b, outboxRec{Type: recDelivered, Key: k, Stream: g.rstream, Seq: g.onDisk})
	}
	return b
}
