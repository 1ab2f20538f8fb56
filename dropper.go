// Offline messages, the sender's side and the schedule (SPEC.md 8.4, 8.7).
//
// Flow: the chat's tick calls dropper.tick, which looks at every contact
// under the chat's lock. A message of ours that waited dropDelay while the
// contact had no session gets a seal (a prekey of theirs, or their static
// key) and a record in the drops file; a job saves the file, then puts its
// items (putDrop) and reports "* dropped". Outstanding drops are put again
// hourly and at start; once acknowledged (by a session's ack or an
// acknowledgement item) the record goes and filler overwrites the items
// (putFiller). Collection (dropcollect.go) and our own acknowledgement
// items (putAck) are scheduled here too; every DHT job runs on its own
// goroutine, at most maxDropOps at once.
package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Timers and limits of drops (SPEC.md 8.7).
const (
	dropDelay        = 5 * time.Second    // a message waits this long for a session before it is dropped
	dropRepublish    = time.Hour          // outstanding drops and acknowledgements are put again this often
	dropRenew        = 6 * 24 * time.Hour // a drop older than this is made anew, at today's locations
	dropDays         = 7                  // days a collector looks back
	dropCollectEvery = 3 * time.Minute    // the first gap between collection rounds while a contact is offline; it doubles after each
	dropCollectMax   = 6 * time.Minute    // the longest gap: a round after the first asks one node per location (watcher.mutable)
	dropRetryMax     = 15 * time.Second   // ceiling of the retry delay of a failed job
	collectRetryMax  = 2 * time.Minute    // ceiling of the retry delay of an incomplete collection round
	sessionCovers    = 2 * time.Second    // a session this long delivered what was dropped before it: sent at once, resent from 200 ms
	dropWindow       = 16                 // message seqs a collector fetches at once
	maxDropOps       = 8                  // DHT operations in flight for drops
	dropMaintEvery   = 10 * time.Second   // prekey expiry checks
)

// dropRun is one contact's schedule; it is not on disk.
type dropRun struct {
	dirOut, dirIn *[32]byte // direction keys, derived once
	online        bool      // as of the last tick

	pending       map[uint64]time.Time // our messages waiting while the contact is offline: since when
	collectAt     time.Time
	collectGap    time.Duration // after the next complete round; zero: dropCollectEvery
	collectBusy   bool
	collectFails  int
	collectedOnce bool      // a collection round ended since the start
	ackNext       time.Time // the next re-put of an unchanged acknowledgement
	ackRetry      time.Time // after a failed put, no other before this
	ackBusy       bool
	ackFails      int
	statusAt      time.Time            // next prekey status frame, while online
	onlineSince   time.Time            // the session's start, as the tick saw it
	want          int                  // prekeys the contact lacks, from its last status
	wantAbove     uint32               // its status's Max: ours above it are unconfirmed
	issuing       bool                 // issuePrekeys is running
	gaps          map[uint32]bool      // their prekey ids below theirMax not yet received
	erase         map[uint64]dropErase // their messages read from a drop, by seq
}

// dropErase is a prekey of ours a drop used: erased once the message it
// sealed is delivered and on disk.
type dropErase struct {
	stream uint64
	id     uint32
}

// dropper runs the drops of every contact. Its state lives in dropPeer
// values guarded by the chat's lock; saving the file takes saveMu first,
// then the chat's lock only to encode.
type dropper struct {
	c     *chat
	path  string
	delay time.Duration // dropDelay; tests shorten it
	peers map[publicKey]*dropPeer

	gen, savedGen uint64    // the state changed (gen) and what the file holds
	saving        bool      // a background save runs
	sessionAcked  bool      // a session's acknowledgement moved ackSeq: save at exit
	saveRetry     time.Time // after a failed background save, none before this
	saveFails     int
	maintAt       time.Time

	col dropCollector  // collection rounds (dropcollect.go)
	pk  prekeyExchange // the prekey frames (prekeys.go)

	saveMu sync.Mutex
	sem    chan struct{}
	wg     sync.WaitGroup
}

// newDropper loads the drops file. States of keys that are no longer
// contacts are dropped (the next save removes them).
func newDropper(c *chat) (*dropper, error) {
	d := &dropper{c: c, path: filepath.Join(c.cfg.Dir, dropsFile), delay: dropDelay, sem: make(chan struct{}, maxDropOps)}
	d.col, d.pk = dropCollector{d}, prekeyExchange{d}
	peers, err := loadDropFile(d.path)
	if err != nil {
		return nil, err
	}
	for k := range peers {
		if c.peers[k] == nil {
			delete(peers, k)
			d.gen++
		}
	}
	d.peers = peers
	return d, nil
}

// enabled reports whether the DHT functions and the static secret are there.
func (d *dropper) enabled() bool {
	return d.c.cfg.PutItem != nil && d.c.cfg.GetItem != nil && d.c.cfg.StaticSecret != nil
}

// peerLocked returns the state of a contact, made on first use.
func (d *dropper) peerLocked(k publicKey) *dropPeer {
	dp := d.peers[k]
	if dp == nil {
		dp = newDropPeer()
		d.peers[k] = dp
	}
	return dp
}

// dirsLocked returns the direction keys to and from the contact.
func (d *dropper) dirsLocked(k publicKey, dp *dropPeer) (out, in [32]byte, err error) {
	if dp.run.dirOut == nil {
		s, err := d.c.cfg.StaticSecret(k)
		if err != nil {
			return out, in, fmt.Errorf("drop: %w", err)
		}
		o, i := dropDirKey(s, d.c.cfg.Self, k), dropDirKey(s, k, d.c.cfg.Self)
		clear(s[:])
		dp.run.dirOut, dp.run.dirIn = &o, &i
	}
	return *dp.run.dirOut, *dp.run.dirIn, nil
}

// errDropGone: the message of a drop left the outbox before its put.
var errDropGone = errors.New("drop: message no longer queued")

// dropJob is one DHT task started by tick.
type dropJob func(ctx context.Context)

// tick starts what is due. It runs on the chat's tick.
func (d *dropper) tick(ctx context.Context) {
	if !d.enabled() {
		return
	}
	c := d.c
	c.mu.Lock()
	now := c.cfg.Now()
	for k := range d.peers {
		if c.peers[k] == nil { // a removed contact: its prekeys go at once
			delete(d.peers, k)
			d.gen++
		}
	}
	var jobs []dropJob
	var frames []queuedFrames
	maint := !now.Before(d.maintAt)
	if maint {
		d.maintAt = now.Add(dropMaintEvery)
	}
	for k, p := range c.peers {
		dp := d.peerLocked(k)
		jobs = d.retireLocked(jobs, p, dp)
		jobs = d.makeLocked(jobs, p, dp, now)
		jobs = d.republishLocked(jobs, p, dp, now)
		jobs = d.scheduleLocked(jobs, p, dp, now)
		jobs = d.pk.prekeysDueLocked(jobs, p, dp)
		d.eraseReadLocked(p, dp)
		if f := d.pk.statusDueLocked(p, dp, now); f != nil {
			frames = append(frames, queuedFrames{k, [][]byte{f}})
		}
		if maint {
			d.pk.expirePrekeysLocked(dp, now)
		}
		dp.run.online = p.online
	}
	if d.gen != d.savedGen && len(jobs) == 0 && !d.saving && !now.Before(d.saveRetry) {
		d.saving = true
		jobs = append(jobs, func(context.Context) { d.saveInBackground() })
	}
	c.mu.Unlock()
	for _, f := range frames {
		c.out.sendNow(f.key, f.frames)
	}
	for _, j := range jobs {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			j(ctx)
		}()
	}
}

// retireLocked removes the drops the contact has acknowledged (or that
// belong to a stream we since replaced) and overwrites their items with
// filler.
func (d *dropper) retireLocked(jobs []dropJob, p *chatPeer, dp *dropPeer) []dropJob {
	for seq, r := range dp.drops {
		if r.stream == p.stream && seq > p.acked {
			continue
		}
		delete(dp.drops, seq)
		d.gen++
		if r.stored || r.busy {
			rec := *r
			jobs = append(jobs, func(ctx context.Context) { d.putFiller(ctx, p.Key, rec) })
		}
	}
	return jobs
}

// makeLocked drops the messages that waited dropDelay for a session, and
// renews drops older than dropRenew. Only the messages the contact's
// receive window can take (acked + chatWindow) are dropped.
func (d *dropper) makeLocked(jobs []dropJob, p *chatPeer, dp *dropPeer, now time.Time) []dropJob {
	if p.online {
		clear(dp.run.pending)
		return jobs
	}
	if dp.run.pending == nil {
		dp.run.pending = map[uint64]time.Time{}
	}
	for seq := range dp.run.pending {
		if seq <= p.acked {
			delete(dp.run.pending, seq) // delivered before it was dropped
		}
	}
	for _, m := range p.out {
		if m.seq > p.acked+chatWindow {
			break
		}
		r := dp.drops[m.seq]
		if r != nil && !r.busy && now.Sub(time.UnixMilli(r.made)) > dropRenew {
			delete(dp.drops, m.seq) // its items expire; a fresh drop takes its place
			d.gen++
			r = nil
		}
		if !m.durable || r != nil {
			continue
		}
		since, ok := dp.run.pending[m.seq]
		if !ok {
			dp.run.pending[m.seq] = now
			continue
		}
		if now.Sub(since) < d.delay {
			continue
		}
		r, err := d.newDropLocked(p, dp, m, now)
		if err != nil {
			d.c.cfg.Log.Warn("drop: seal", "peer", p.Name, "err", err)
			continue
		}
		delete(dp.run.pending, m.seq)
		r.busy = true
		jobs = append(jobs, func(ctx context.Context) { d.putDrop(ctx, p.Key, r) })
	}
	return jobs
}

// newDropLocked seals a message: with the lowest-numbered prekey of the
// contact we hold (it is then used up), else with their static key.
func (d *dropper) newDropLocked(p *chatPeer, dp *dropPeer, m *outMsg, now time.Time) (*dropRec, error) {
	dirOut, _, err := d.dirsLocked(p.Key, dp)
	if err != nil {
		return nil, err
	}
	to, id := [32]byte(p.Key), uint32(0)
	if len(dp.theirs) > 0 {
		id = slices.Min(slices.Collect(maps.Keys(dp.theirs)))
		to = dp.theirs[id]
	}
	seal, err := newDropSeal(d.c.cfg.Rand, dirOut, to, id)
	if err != nil {
		return nil, err
	}
	if id != 0 {
		delete(dp.theirs, id)
	}
	made := now.UnixMilli()
	if old := dp.lastMade; made <= old {
		made = old + 1 // seqs of our items only grow, also within one millisecond
	}
	dp.lastMade = made
	r := &dropRec{stream: p.stream, seq: m.seq, made: made, parts: dropParts(len(m.text)), seal: seal}
	dp.drops[m.seq] = r
	d.gen++
	return r, nil
}

// republishLocked puts outstanding drops again when due: hourly after
// their last put, after a failure sooner, and after a start once the
// first collection has looked for their acknowledgement.
func (d *dropper) republishLocked(jobs []dropJob, p *chatPeer, dp *dropPeer, now time.Time) []dropJob {
	if p.online || !dp.run.collectedOnce {
		// A contact with a session gets the messages there; after a
		// start, the first collection may find them acknowledged already.
		return jobs
	}
	for _, r := range dp.drops {
		if r.busy || now.Before(r.nextPut) {
			continue
		}
		r.busy = true
		jobs = append(jobs, func(ctx context.Context) { d.putDrop(ctx, p.Key, r) })
	}
	return jobs
}

// scheduleLocked starts collection and our acknowledgement item for a
// contact without a session, and resets the prekey sync when one starts.
func (d *dropper) scheduleLocked(jobs []dropJob, p *chatPeer, dp *dropPeer, now time.Time) []dropJob {
	if p.online {
		if !dp.run.online {
			dp.run.statusAt, dp.run.onlineSince = now, now // a new session: sync prekeys at once
		}
		if p.rstream != 0 && (p.rstream != dp.ackStream || p.onDisk > dp.ackSeq) {
			// The session acknowledges this far: no item is needed for it,
			// now or after a restart, and none is refreshed. Saved at exit,
			// not for this alone (a busy session would rewrite the file
			// every tick): after a crash, one item too many is put.
			dp.ackStream, dp.ackSeq, dp.ackAt = p.rstream, p.onDisk, 0
			d.sessionAcked = true
		}
		return jobs
	}
	k := p.Key
	if dp.run.online {
		// The session just ended: collect at the first gap again, as
		// the contact may drop for us while it cannot reach us.
		dp.run.collectGap = 0
		d.sessionCoveredLocked(dp, now)
	}
	if !dp.run.collectBusy && !now.Before(dp.run.collectAt) {
		dp.run.collectBusy = true
		jobs = append(jobs, func(ctx context.Context) { d.col.collect(ctx, k) })
	}
	if d.ackDueLocked(p, dp, now) {
		dp.run.ackBusy = true
		jobs = append(jobs, func(ctx context.Context) { d.putAck(ctx, k) })
	}
	return jobs
}

// ackDueLocked: an acknowledgement item is due when we delivered more of
// the contact's stream than the last one said, or hourly for a week after
// it was first put, while the contact has no session.
func (d *dropper) ackDueLocked(p *chatPeer, dp *dropPeer, now time.Time) bool {
	if dp.run.ackBusy || p.rstream == 0 || now.Before(dp.run.ackRetry) {
		return false
	}
	if p.rstream != dp.ackStream || p.onDisk > dp.ackSeq {
		return p.onDisk > 0
	}
	return dp.ackSeq > 0 && !now.Before(dp.run.ackNext) && now.Sub(time.Unix(dp.ackAt, 0)) < dropDays*dropDay
}

// retry counts a failure and returns when to try again.
func dropRetry(fails *int, now time.Time) time.Time {
	d := min(dhtRetryMin<<min(*fails, 16), dropRetryMax)
	*fails++
	return now.Add(d)
}

// putItem runs one BEP 44 put under the semaphore and dhtOpTimeout.
func (d *dropper) putItem(ctx context.Context, priv ed25519.PrivateKey, salt []byte, seq int64, item []byte) error {
	select {
	case d.sem <- struct{}{}:
		defer func() { <-d.sem }()
	case <-ctx.Done():
		return ctx.Err()
	}
	octx, cancel := context.WithTimeout(ctx, dhtOpTimeout)
	defer cancel()
	n, err := d.c.cfg.PutItem(octx, priv, salt, seq, appendDropValue(nil, item))
	if err == nil && n == 0 {
		err = errNoneAnswered
	}
	return err
}

// getItem runs one BEP 44 get of a salted mutable item; found is false
// when no node holds one.
func (d *dropper) getItem(ctx context.Context, k [32]byte, salt []byte) (bep44Item, bool, error) {
	select {
	case d.sem <- struct{}{}:
		defer func() { <-d.sem }()
	case <-ctx.Done():
		return bep44Item{}, false, ctx.Err()
	}
	octx, cancel := context.WithTimeout(ctx, dhtOpTimeout)
	defer cancel()
	return d.c.cfg.GetItem(octx, k, salt)
}

// putDrop saves the file (the drop's seal must be on disk before any of
// its items is out), then puts every part. The first time all parts are
// stored it reports "* dropped".
func (d *dropper) putDrop(ctx context.Context, k publicKey, r *dropRec) {
	err := d.save()
	c := d.c
	c.mu.Lock()
	p, dp := c.peers[k], d.peers[k]
	var frames [][]byte
	var dirOut [32]byte
	if err == nil && p != nil && dp != nil && dp.drops[r.seq] == r {
		if i := slices.IndexFunc(p.out, func(m *outMsg) bool { return m.seq == r.seq }); i >= 0 && p.stream == r.stream {
			for part := range r.parts {
				frames = append(frames, dropFrame(r.stream, r.seq, p.out[i].text, part))
			}
			dirOut, _, err = d.dirsLocked(k, dp)
		}
	}
	c.mu.Unlock()
	if len(frames) == 0 && err == nil {
		err = errDropGone // acknowledged or removed meanwhile: retireLocked sees to it
	}
	if err != nil {
		d.putDone(k, r, err)
		return
	}
	priv := dropDayKey(dirOut, dropDayOf(time.UnixMilli(r.made)))
	for part, f := range frames {
		item, serr := r.seal.sealItem(dirOut, uint8(part), f)
		if serr == nil {
			serr = d.putItem(ctx, priv, dropSlotSalt(dirOut, dropDayOf(time.UnixMilli(r.made)), r.seq, uint8(part)), r.made, item)
		}
		if serr != nil {
			err = serr
			break
		}
	}
	d.putDone(k, r, err)
}

// putDone records the outcome of putDrop: the next re-put, or a retry.
func (d *dropper) putDone(k publicKey, r *dropRec, err error) {
	c := d.c
	c.mu.Lock()
	now := c.cfg.Now()
	r.busy = false
	p := c.peers[k]
	switch {
	case errors.Is(err, errDropGone):
	case err != nil:
		r.nextPut = dropRetry(&r.fails, now)
		c.cfg.Log.Debug("drop: put", "seq", r.seq, "err", err)
	default:
		r.fails, r.nextPut = 0, now.Add(dropRepublish)
		if !r.stored && p != nil && d.peers[k] != nil && d.peers[k].drops[r.seq] == r {
			r.stored = true
			c.ev.push(chatEvent{Kind: eventDropped, Contact: p.Name, Key: k, MsgID: r.seq, Time: now})
		}
	}
	c.mu.Unlock()
	c.ev.flush()
}

// putFiller overwrites the items of an acknowledged drop with filler under
// a higher seq, once, best effort: items it misses expire within itemTTL.
func (d *dropper) putFiller(ctx context.Context, k publicKey, r dropRec) {
	d.c.mu.Lock()
	var dirOut [32]byte
	var err error
	if dp := d.peers[k]; dp != nil {
		dirOut, _, err = d.dirsLocked(k, dp)
	} else {
		dirOut, _, err = d.dirsLocked(k, newDropPeer())
	}
	d.c.mu.Unlock()
	if err != nil {
		return
	}
	day := dropDayOf(time.UnixMilli(r.made))
	priv := dropDayKey(dirOut, day)
	for part := range r.parts {
		item, err := dropFiller(d.c.cfg.Rand)
		if err == nil {
			err = d.putItem(ctx, priv, dropSlotSalt(dirOut, day, r.seq, uint8(part)), r.made+1, item)
		}
		if err != nil {
			d.c.cfg.Log.Debug("drop: filler", "seq", r.seq, "err", err)
		}
	}
}

// putAck puts our acknowledgement of the contact's stream, as far as it is
// on disk, at today's acknowledgement location in our direction, sealed to
// their static key (it says only how far we read).
func (d *dropper) putAck(ctx context.Context, k publicKey) {
	c := d.c
	c.mu.Lock()
	p, dp := c.peers[k], d.peers[k]
	var frame []byte
	var stream, cum uint64
	var dirOut [32]byte
	var err error
	if p != nil && dp != nil && p.rstream != 0 {
		frame, stream, cum = p.ackFrame(), p.rstream, p.onDisk
		dirOut, _, err = d.dirsLocked(k, dp)
	}
	now := c.cfg.Now()
	c.mu.Unlock()
	if frame != nil && err == nil {
		err = d.putAckItem(ctx, k, dirOut, frame, now)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if dp = d.peers[k]; dp == nil {
		return
	}
	dp.run.ackBusy = false
	if frame == nil || err != nil {
		dp.run.ackRetry = dropRetry(&dp.run.ackFails, c.cfg.Now())
		return
	}
	dp.run.ackFails, dp.run.ackRetry, dp.run.ackNext = 0, time.Time{}, now.Add(dropRepublish)
	if stream != dp.ackStream || cum != dp.ackSeq {
		dp.ackStream, dp.ackSeq, dp.ackAt = stream, cum, now.Unix()
		d.gen++
	}
}

// putAckItem seals and puts one acknowledgement item; its seq is the time.
func (d *dropper) putAckItem(ctx context.Context, k publicKey, dirOut [32]byte, frame []byte, now time.Time) error {
	seal, err := newDropSeal(d.c.cfg.Rand, dirOut, k, 0)
	if err != nil {
		return err
	}
	item, err := seal.sealItem(dirOut, 0, frame)
	if err != nil {
		return err
	}
	day := dropDayOf(now)
	return d.putItem(ctx, dropDayKey(dirOut, day), dropAckSalt(dirOut, day), now.UnixMilli(), item)
}

// eraseReadLocked erases the prekeys of drops we read once their messages
// are delivered and on disk (or belong to a stream the contact replaced).
func (d *dropper) eraseReadLocked(p *chatPeer, dp *dropPeer) {
	for seq, e := range dp.run.erase {
		if e.stream == p.rstream && seq > p.onDisk {
			continue
		}
		if k := dp.mine[e.id]; k != nil {
			clear(k.priv[:])
			delete(dp.mine, e.id)
			d.gen++
		}
		delete(dp.run.erase, seq)
	}
}

// save writes the state to the drops file if it changed.
func (d *dropper) save() error {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	d.c.mu.Lock()
	gen := d.gen
	if gen == d.savedGen {
		d.c.mu.Unlock()
		return nil
	}
	b := appendDropFile(nil, d.peers)
	d.c.mu.Unlock()
	err := saveDropFile(d.path, b)
	clear(b)
	if err != nil {
		d.c.cfg.Log.Warn("drop: save", "err", err)
		return err
	}
	d.c.mu.Lock()
	d.savedGen = gen
	d.c.mu.Unlock()
	return nil
}

// saveInBackground saves what changed without another job's save; a
// failure is retried later, not on every tick.
func (d *dropper) saveInBackground() {
	err := d.save()
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	d.saving = false
	if err != nil {
		d.saveRetry = dropRetry(&d.saveFails, d.c.cfg.Now())
	} else {
		d.saveFails = 0
	}
}

// sessionCoveredLocked runs when dp's session ends (or we exit during
// it). A session that lasted carried whatever the contact had dropped for
// us before it began (its outbox sends every message we lack within the
// window on the session, SPEC.md 5.4), so later rounds need not look
// before its start: a restart then looks back to the last session, not 8
// days.
func (d *dropper) sessionCoveredLocked(dp *dropPeer, now time.Time) {
	if since := dp.run.onlineSince; !since.IsZero() && now.Sub(since) >= sessionCovers && since.Unix() > dp.collected {
		dp.collected = since.Unix()
		d.gen++
	}
}

// close saves the state at exit, with what only an exit saves.
func (d *dropper) close() error {
	d.c.mu.Lock()
	if d.sessionAcked {
		d.gen++
	}
	now := d.c.cfg.Now()
	for _, dp := range d.peers {
		if dp.run.online {
			d.sessionCoveredLocked(dp, now)
		}
	}
	d.c.mu.Unlock()
	return d.save()
}

// wait returns once the jobs started so far have ended.
func (d *dropper) wait() { d.wg.Wait() }

// dropX25519 is X25519(priv, pub), refusing an all-zero result.
func dropX25519(priv, pub [32]byte) ([32]byte, bool) {
	var out [32]byte
	k, err := x25519.NewPrivateKey(priv[:])
	if err != nil {
		return out, false
	}
	pk, err := x25519.NewPublicKey(pub[:])
	if err != nil {
		return out, false
	}
	s, err := k.ECDH(pk)
	if err != nil {
		return out, false
	}
	copy(out[:], s)
	clear(s)
	return out, true
}

// dropSummary is one contact's line of /status: our messages in the DHT
// not yet acknowledged, and how many of its prekeys we hold (so how many
// more can be dropped with forward secrecy).
type dropSummary struct {
	Name                 string
	Outstanding, Prekeys int
}

// dropSummaries lists, by name, the contacts with outstanding drops.
func (c *chat) dropSummaries() []dropSummary {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []dropSummary
	for k, dp := range c.drops.peers {
		p := c.peers[k]
		if p == nil {
			continue
		}
		n := 0
		for _, r := range dp.drops {
			if r.stream == p.stream && r.seq > p.acked { // not retired by the tick yet
				n++
			}
		}
		if n > 0 {
			out = append(out, dropSummary{p.Name, n, len(dp.theirs)})
		}
	}
	slices.SortFunc(out, func(a, b dropSummary) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// dropAckPut reports whether an acknowledgement item covers everything
// we delivered of the contact's stream (the demo waits for it: no line
// says so).
func (c *chat) dropAckPut(k publicKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	dp, p := c.drops.peers[k], c.peers[k]
	return dp != nil && p != nil && p.onDisk > 0 && dp.ackStream == p.rstream && dp.ackSeq >= p.onDisk && dp.ackAt != 0
}
