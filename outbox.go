// The outbox log (SPEC.md 5.4, 5.5): record format, group commit, loading
// and compaction, and the rule that the chat shows and acknowledges only
// what is on disk.
//
// Flow: every change to what the chat must not forget (a stream started, a message
// queued, acknowledged or delivered, a contact forgotten) is a record
// appended to the journal's current batch. One committer goroutine writes
// and fsyncs each batch, then calls back (chat.afterSync), which releases
// the deliveries that waited for it. At start the records are parsed
// (parseOutbox) and the state in memory is rebuilt from them (chat.restore);
// when the log has grown, and at exit, it is replaced by a snapshot of the
// live state (outboxSnapshot).
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// The outbox file (SPEC.md 5.5).
const (
	outboxFile  = "outbox"
	outboxMagic = "KCOUTBX1"
	compactMin  = 1 << 20
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
	j := &journal{f: f, path: path, size: int64(good), snapSize: int64(good), gen: 1,
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
	big := j.size > compactMin && j.size > 4*j.snapSize
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
	j.size, j.snapSize = int64(len(snap)), int64(len(snap))
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
// records, for chat.restore.
func openOutbox(dir string) (*outbox, []outboxRec, error) {
	j, recs, err := openJournal(filepath.Join(dir, outboxFile))
	if err != nil {
		return nil, nil, err
	}
	return &outbox{j: j}, recs, nil
}

// start runs the committer: onSync after each durable batch, compact when
// the log has grown.
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

// compact replaces the log by snap (outboxSnapshot of the current state)
// and returns the batch number that is now durable.
func (o *outbox) compact(snap []byte) (uint64, error) { return o.j.replace(snap) }

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
