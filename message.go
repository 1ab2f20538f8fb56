// Chat frames and delivery (SPEC.md 5.3, 5.4, 5.6).
//
// Outbound flow: send logs a "queued" record to the outbox, waits until it
// is durable, then transmits the message as data frames through the
// injected session send; run retransmits with backoff every tick, and a
// cumulative ack removes messages from the outbox and reports them
// delivered. Inbound flow: handlePayload parses a frame (parseChatFrame);
// fragments are reassembled, and messages complete in order are logged as
// "delivered" and held by the outbox until that record is durable
// (afterSync), then shown and acknowledged. frameSender sends from the
// session layer's callbacks; eventQueue hands events to the UI in order.
package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// chatConfig holds what the chat core needs from the rest of the program.
// The functions are injected so the core stands alone in tests.
type chatConfig struct {
	Dir  string    // data directory: files "contacts" and "outbox"
	Self publicKey // our key; adding it as a contact is refused

	StaticSecret func(peer publicKey) ([32]byte, error)                                    // X25519(our static, peer static)
	Announce     func(ctx context.Context, infohash nodeID) ([]netip.AddrPort, int, error) // announce_peer, implied_port; the peers its lookup found
	GetPeers     func(ctx context.Context, infohash nodeID) ([]netip.AddrPort, error)
	SetEndpoint  func(peer publicKey, addr netip.AddrPort)  // an address found by rendezvous
	IsSelf       func(addr netip.AddrPort) bool             // optional: our own announced address
	OwnIP        func(ip netip.Addr) bool                   // optional: an IP we announce from (candidates there are tried last)
	Send         func(peer publicKey, payload []byte) error // one session payload; may fail: we retransmit
	MaxPayload   int                                        // the session's plaintext limit per packet
	ScrubAfter   time.Duration                              // dropped text leaves the outbox log this soon; zero: scrubAfter
	// BEP 44 mutable items with salt, for offline messages (drops,
	// SPEC.md 8); both nil: no drops are made or collected.
	PutItem func(ctx context.Context, priv ed25519.PrivateKey, salt []byte, seq int64, v []byte) (int, error)
	GetItem func(ctx context.Context, k [32]byte, salt []byte) (it bep44Item, found bool, err error)
	// Event receives events in order, without chat locks held. It may run on
	// the outbox committer, so it must not block nor call send.
	Event func(chatEvent)

	Now  func() time.Time
	Rand io.Reader
	Log  *slog.Logger

	Announced func(peer publicKey)                         // optional: see rendezvousConfig
	LookedUp  func(peer publicKey, found []netip.AddrPort) // optional: see rendezvousConfig
}

// chatEventKind says what a chatEvent reports.
type chatEventKind uint8

const (
	eventQueued    chatEventKind = iota + 1 // our message is durable in the outbox
	eventDelivered                          // the contact acknowledged our message
	eventMessage                            // a message from a contact
	eventOnline
	eventOffline
	eventMoved   // the contact's session moved to another address
	eventDropped // our message was placed in the DHT for the offline contact (SPEC.md 8)
)

func (k chatEventKind) String() string {
	names := [...]string{"", "queued", "delivered", "message", "online", "offline", "moved", "dropped"}
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
// not stall), repaired: each run of bad bytes becomes one U+FFFD
// (strings.ToValidUTF8).
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
	rstream, delivered, onDisk uint64
}

// maxGone bounds the receive states kept for removed contacts.
const maxGone = 1024

// goneStates holds removed contacts' receive states (see recvState).
type goneStates map[publicKey]recvState

// keep remembers a removed contact's receive state, at most maxGone of them
// (any one is forgotten when full).
func (g goneStates) keep(k publicKey, st recvState) {
	if _, ok := g[k]; !ok && len(g) >= maxGone {
		for old := range g {
			delete(g, old)
			break
		}
	}
	g[k] = st
}

// chatPeer is everything the chat keeps per contact (its rendezvous
// schedule is the scheduler's).
type chatPeer struct {
	contactEntry
	online bool
	addr   netip.AddrPort

	stream, acked, nextSeq uint64 // sending: our stream, acknowledged, next sequence
	out                    []*outMsg

	recvState
	reasm      map[uint64]*inMsg
	reasmBytes int
}

// chat is the chat core: contacts, delivery, and the parts it drives (the
// outbox, the rendezvous scheduler, the frame sender, the event queue and
// presence).
// Safe for concurrent use.
type chat struct {
	cfg   chatConfig
	ob    *outbox
	sched *rendezvousScheduler
	out   *frameSender
	ev    *eventQueue
	drops *dropper // offline messages (drops.go)

	presence presence // contacts' sessions coming and going

	saveMu sync.Mutex // serialises contact-file writes; taken before mu
	mu     sync.Mutex
	peers  map[publicKey]*chatPeer
	gone   goneStates // removed contacts' receive state (recvState)
	names  map[string]*chatPeer
	closed bool
}

// frameSender sends frames through the session layer: at once (sendNow) or
// from its own goroutine (sendLater).
type frameSender struct {
	send func(peer publicKey, payload []byte) error
	log  *slog.Logger
	q    chan queuedFrames
	wg   sync.WaitGroup // frames queued and not yet sent
	quit chan struct{}  // closed by stop: the goroutine exits
}

// queuedFrames are frames for one contact waiting for the sender goroutine.
type queuedFrames struct {
	key    publicKey
	frames [][]byte
}

func newFrameSender(send func(publicKey, []byte) error, log *slog.Logger) *frameSender {
	s := &frameSender{send: send, log: log, q: make(chan queuedFrames, sendQueueLen), quit: make(chan struct{})}
	go s.loop()
	return s
}

// sendNow hands frames to the session layer, outside every lock. A
// failure (no session yet) is left to the retransmission timer.
func (s *frameSender) sendNow(key publicKey, frames [][]byte) {
	for _, f := range frames {
		if err := s.send(key, f); err != nil {
			s.log.Debug("chat: send", "peer", key.String(), "err", err)
			return
		}
	}
}

// sendLater hands frames to the sender goroutine. handlePayload and
// presence.online use it because the session layer calls them from its own
// callbacks (Deliver, Established), perhaps holding its locks: sending from
// there could deadlock. A full queue drops the frames; retransmission and
// the next ack repair that.
func (s *frameSender) sendLater(key publicKey, frames [][]byte) {
	if len(frames) == 0 {
		return
	}
	s.wg.Add(1)
	select {
	case s.q <- queuedFrames{key, frames}:
	default:
		s.wg.Done()
		s.log.Debug("chat: send queue full", "peer", key.String(), "frames", len(frames))
	}
}

// loop sends what sendLater queued until stop.
func (s *frameSender) loop() {
	for {
		select {
		case q := <-s.q:
			s.sendNow(q.key, q.frames)
			s.wg.Done()
		case <-s.quit:
			return
		}
	}
}

// stop ends the goroutine; frames still queued are dropped.
func (s *frameSender) stop() { close(s.quit) }

// eventQueue hands events to the UI in the order they were queued, without
// the chat's lock held. Safe for concurrent use; its lock is taken after
// the chat's, never before.
type eventQueue struct {
	emit   func(chatEvent)
	mu     sync.Mutex
	events []chatEvent
	spare  []chatEvent // the drained slice, reused so events cost no allocation
	drain  bool        // someone is emitting events
}

// push queues an event; the caller holds the chat's lock, which orders
// the events.
func (q *eventQueue) push(e chatEvent) {
	q.mu.Lock()
	q.events = append(q.events, e)
	q.mu.Unlock()
}

// flush emits queued events in the order they were queued. It is
// re-entrant: an event handler that calls back into the chat only queues.
func (q *eventQueue) flush() {
	q.mu.Lock()
	if q.drain {
		q.mu.Unlock()
		return
	}
	q.drain = true
	for len(q.events) > 0 {
		evs := q.events
		q.events = q.spare[:0]
		q.mu.Unlock()
		for _, e := range evs {
			q.emit(e)
		}
		clear(evs) // drop the texts
		q.mu.Lock()
		q.spare = evs
	}
	q.drain = false
	q.mu.Unlock()
}

// newChat loads the contacts and the outbox log from cfg.Dir and starts the
// committer and the frame sender. A damaged contacts file or outbox is an
// error and left as is.
func newChat(cfg chatConfig) (*chat, error) {
	if cfg.Dir == "" || cfg.Send == nil || cfg.MaxPayload < minChatPayload {
		return nil, fmt.Errorf("chat: config needs Dir, Send and MaxPayload >= %d", minChatPayload)
	}
	if cfg.Event == nil {
		cfg.Event = func(chatEvent) {}
	}
	defaultNowRandLog(&cfg.Now, &cfg.Rand, &cfg.Log)
	c := &chat{cfg: cfg, peers: map[publicKey]*chatPeer{}, gone: goneStates{}, names: map[string]*chatPeer{},
		ev: &eventQueue{emit: cfg.Event},
		sched: newRendezvousScheduler(rendezvousConfig{StaticSecret: cfg.StaticSecret, Announce: cfg.Announce,
			GetPeers: cfg.GetPeers, SetEndpoint: cfg.SetEndpoint, IsSelf: cfg.IsSelf, OwnIP: cfg.OwnIP, Now: cfg.Now, Log: cfg.Log,
			Announced: cfg.Announced, LookedUp: cfg.LookedUp})}
	c.presence.c = c
	b, err := readFileMax(filepath.Join(cfg.Dir, contactsFile), maxStateFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("chat: contacts: %w", err)
	}
	es, err := parseContacts(b, cfg.Self)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		c.insertLocked(e, time.Time{})
	}
	ob, recs, err := openOutbox(cfg.Dir, cmp.Or(cfg.ScrubAfter, scrubAfter))
	if err != nil {
		return nil, err
	}
	if err := c.restore(recs); err != nil {
		ob.j.f.Close()
		return nil, err
	}
	// Before anything else: a log a crash left with delivered messages'
	// text in it keeps that text no longer than this start.
	old, err := ob.settle(outboxSnapshot(c.peers, c.gone))
	if err != nil {
		ob.j.f.Close()
		return nil, err
	}
	wipeRetired(old, cfg.Log)
	if c.drops, err = newDropper(c); err != nil {
		ob.j.f.Close()
		return nil, err
	}
	c.ob = ob
	ob.start(c.afterSync, c.compactNow)
	c.out = newFrameSender(cfg.Send, cfg.Log)
	return c, nil
}

// insertLocked adds a contact to memory and to the rendezvous schedule, with
// fast lookups until fastUntil.
func (c *chat) insertLocked(e contactEntry, fastUntil time.Time) {
	p := &chatPeer{contactEntry: e, nextSeq: 1, recvState: c.gone[e.Key]}
	delete(c.gone, e.Key)
	c.peers[e.Key], c.names[e.Name] = p, p
	c.sched.add(e.Key, fastUntil)
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
func newStream(now time.Time, rnd io.Reader, log *slog.Logger) uint64 {
	var r [4]byte
	if _, err := io.ReadFull(rnd, r[:]); err != nil {
		log.Debug("chat: rand", "err", err)
	}
	return uint64(now.UnixMilli())<<streamRandBits | uint64(binary.BigEndian.Uint32(r[:]))>>(32-streamRandBits)
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
	if err := c.ob.waitDurable(gen); err != nil {
		return 0, err
	}
	c.mu.Lock()
	now := c.cfg.Now()
	m.durable = true
	c.ev.push(chatEvent{Kind: eventQueued, Contact: p.Name, Key: p.Key, MsgID: m.seq, Time: now})
	frames := c.dueLocked(p, now, false)
	c.mu.Unlock()
	c.out.sendNow(p.Key, frames)
	c.ev.flush()
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
		s := newStream(c.cfg.Now(), c.cfg.Rand, c.cfg.Log)
		if _, err := c.ob.record(outboxRec{Type: recStream, Key: p.Key, Stream: s}); err != nil {
			return nil, nil, 0, err
		}
		p.stream, p.acked, p.nextSeq = s, 0, 1
	}
	m := &outMsg{seq: p.nextSeq, text: text}
	gen, err := c.ob.record(outboxRec{Type: recQueued, Key: p.Key, Seq: m.seq, Text: []byte(text)})
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
		frames = appendFrames(frames, c.cfg.MaxPayload, p.stream, m)
	}
	return frames
}

// appendFrames splits a message into data frames that fit maxPayload.
func appendFrames(frames [][]byte, maxPayload int, stream uint64, m *outMsg) [][]byte {
	chunk := maxPayload - chatDataHeaderLen
	count := (len(m.text) + chunk - 1) / chunk
	for i := range count {
		text := m.text[i*chunk : min(len(m.text), (i+1)*chunk)]
		f := chatFrame{Type: chatFrameData, Stream: stream, Seq: m.seq, Index: uint8(i), Count: uint8(count), Text: []byte(text)}
		frames = append(frames, f.appendTo(make([]byte, 0, chatDataHeaderLen+len(text))))
	}
	return frames
}

// handlePayload takes one decrypted session payload from peer. The session
// layer calls it with b valid only during the call; an empty payload is a
// keepalive, which only says the contact is there (last seen).
func (c *chat) handlePayload(key publicKey, from netip.AddrPort, b []byte) {
	if len(b) == 0 {
		c.presence.seen(key)
		return
	}
	if isPrekeyFrame(b) {
		c.drops.handleFrame(key, b)
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
	c.out.sendLater(key, frames)
	c.ev.flush()
}

// onDataLocked files a fragment. Messages that complete in order are logged
// as delivered and acknowledged once durable (afterSync); anything else is
// acknowledged at once so the sender learns what we hold.
func (c *chat) onDataLocked(p *chatPeer, f chatFrame, now time.Time) [][]byte {
	switch {
	case f.Stream < p.rstream:
		return nil // a late frame of a conversation the sender has since reset
	case f.Stream > p.rstream:
		p.rstream, p.delivered, p.onDisk, p.reasm, p.reasmBytes = f.Stream, 0, 0, nil, 0
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
	n := 0
	for m := p.reasm[p.delivered+1]; m.complete(); m = p.reasm[p.delivered+1] {
		p.delivered++
		delete(p.reasm, p.delivered)
		p.reasmBytes -= m.size
		text := m.text()
		c.ob.hold(pendingDelivery{key: p.Key, stream: p.rstream, seq: p.delivered,
			ev: chatEvent{Kind: eventMessage, Contact: p.Name, Key: p.Key, MsgID: p.delivered, Text: text, Time: now}})
		n++
	}
	if n == 0 {
		return false
	}
	if err := c.ob.logDelivered(outboxRec{Type: recDelivered, Key: p.Key, Stream: p.rstream, Seq: p.delivered}, n); err != nil {
		c.cfg.Log.Warn("chat: cannot log delivery", "err", err)
	}
	return true
}

// ackFrame acknowledges everything durable and marks what we hold beyond.
func (p *chatPeer) ackFrame() []byte {
	var sack [chatSackMaxLen]byte
	n := 0
	for i := uint64(0); i < chatWindow; i++ {
		seq := p.onDisk + 1 + i
		if seq <= p.delivered || p.reasm[seq].complete() {
			sack[i/8] |= 0x80 >> (i % 8)
			n = int(i/8) + 1
		}
	}
	f := chatFrame{Type: chatFrameAck, Stream: p.rstream, Seq: p.onDisk, Sack: sack[:n]}
	return f.appendTo(make([]byte, 0, chatAckHeaderLen+n))
}

// afterSync runs once batch gen is durable: deliveries waiting for it reach
// the UI and are acknowledged.
func (c *chat) afterSync(gen uint64) {
	c.mu.Lock()
	var acks []*chatPeer
	c.ob.release(gen, func(d pendingDelivery) {
		p := c.peers[d.key]
		if p == nil || p.rstream != d.stream {
			return
		}
		p.onDisk = max(p.onDisk, d.seq)
		c.ev.push(d.ev)
		if !slices.Contains(acks, p) {
			acks = append(acks, p)
		}
	})
	frames := make([][]byte, len(acks))
	for i, p := range acks {
		frames[i] = p.ackFrame()
	}
	c.mu.Unlock()
	for i, p := range acks {
		c.out.sendNow(p.Key, frames[i:i+1])
	}
	c.ev.flush()
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
		if _, err := c.ob.record(outboxRec{Type: recAcked, Key: p.Key, Seq: f.Seq}); err != nil {
			c.cfg.Log.Warn("chat: cannot log ack", "err", err)
		}
		c.ob.dropped(now)
	}
	for seq := first; seq < first+uint64(n); seq++ {
		c.ev.push(chatEvent{Kind: eventDelivered, Contact: p.Name, Key: p.Key, MsgID: seq, Time: now})
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

// compactNow replaces the outbox log by a snapshot of the live state and
// wipes the old file. The committer calls it when the log has grown or
// dropped text is due to leave it (scrubAfter), and close at exit.
func (c *chat) compactNow() {
	c.mu.Lock()
	gen, old, err := c.ob.compact(outboxSnapshot(c.peers, c.gone))
	c.mu.Unlock()
	if err != nil {
		c.cfg.Log.Warn("chat: compact outbox", "err", err)
		return
	}
	c.afterSync(gen)
	wipeRetired(old, c.cfg.Log)
}

// presence follows each contact's sessions as the session layer reports
// them (Established, keepalives, Ended): online, moved, last seen and
// offline, each an event for the UI and a change to the rendezvous
// schedule. A session that comes up gets the outbox at once.
type presence struct{ c *chat }

// online records that a session with the contact is up at addr (the UI
// calls it on the session layer's Established) and sends the outbox to it
// at once.
func (pr *presence) online(key publicKey, addr netip.AddrPort) {
	c := pr.c
	c.mu.Lock()
	p := c.peers[key]
	if p == nil {
		c.mu.Unlock()
		return
	}
	now := c.cfg.Now()
	switch {
	case !p.online:
		c.ev.push(chatEvent{Kind: eventOnline, Contact: p.Name, Key: key, Time: now, Addr: addr})
	case p.addr != addr:
		c.ev.push(chatEvent{Kind: eventMoved, Contact: p.Name, Key: key, Time: now, Addr: addr})
	}
	p.online, p.addr, p.LastSeen = true, addr, now
	c.sched.online(key)
	frames := c.dueLocked(p, now, true)
	c.mu.Unlock()
	c.out.sendLater(key, frames)
	c.ev.flush()
}

// seen records a keepalive from the contact as its last-seen time.
func (pr *presence) seen(key publicKey) {
	c := pr.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.peers[key]; p != nil {
		p.LastSeen = c.cfg.Now()
	}
}

// offline records that the contact's session ended, lastSeen being the
// time of its last packet (not now: silence is noticed DeadAfter late);
// rendezvous lookups for it go back to the fast schedule.
func (pr *presence) offline(key publicKey, lastSeen time.Time) {
	c := pr.c
	c.mu.Lock()
	p := c.peers[key]
	if p == nil || !p.online {
		c.mu.Unlock()
		return
	}
	now := c.cfg.Now()
	p.online = false
	if !lastSeen.IsZero() {
		p.LastSeen = lastSeen
	}
	c.sched.offline(key, now)
	c.ev.push(chatEvent{Kind: eventOffline, Contact: p.Name, Key: key, Time: now, Addr: p.addr})
	c.mu.Unlock()
	c.ev.flush()
	if err := c.saveContacts(nil, nil); err != nil {
		c.cfg.Log.Warn("chat: save contacts", "err", err)
	}
}

// run drives the timers: retransmissions every tick and the rendezvous
// schedule. It returns when ctx ends, after the DHT operations it started
// have ended and the contacts (last seen) are saved.
func (c *chat) run(ctx context.Context) error {
	c.sched.start()
	// The first rendezvous runs now, not a tick later: a contact waiting
	// for us should hear from us as soon as the DHT can answer.
	c.sched.tick(ctx)
	t := time.NewTicker(chatTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.sched.waitOps()
			c.drops.wait()
			return c.saveContacts(nil, nil)
		case <-t.C:
			c.retransmit()
			c.ob.scrubIfDue(c.cfg.Now())
			c.sched.tick(ctx)
			c.drops.tick(ctx)
		}
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
		c.out.sendNow(b.key, b.frames)
	}
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
	c.ob.stop()
	c.compactNow()
	c.out.stop() // frames still queued are dropped: the peer retransmits
	err := c.ob.close()
	if derr := c.drops.close(); err == nil {
		err = derr
	}
	if serr := c.saveContacts(nil, nil); err == nil {
		err = serr
	}
	return err
}
