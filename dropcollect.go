// Offline messages, the collector's side (SPEC.md 8.5).
//
// Flow: collect runs one round for a contact without a session. For each
// day since the last complete round (at most dropDays back) it fetches the
// contact's drop at the next message seq we lack, all days at once; on a
// day that has it, it goes on in windows of dropWindow seqs until the
// first one missing (scanDay). A message is its parts, fetched together
// (fetchMessage); every frame goes through the chat's exactly-once path
// (feed), as if it came over a session, so a message that arrives both
// ways is shown once. The same round reads the contact's acknowledgement
// items for the days of our outstanding drops.
package main

import (
	"context"
	"crypto/ed25519"
	"sync"
	"time"
)

// dropCollector runs the collection rounds of a dropper; its state is
// the dropper's.
type dropCollector struct{ d *dropper }

// dropDaysBetween lists the days from `from` to `to` (each less the clock skew
// allowed, rendezvousSkew), at most dropDays+1 of them.
func dropDaysBetween(from, to time.Time) []uint64 {
	first, last := dropDayOf(from.Add(-rendezvousSkew)), dropDayOf(to.Add(rendezvousSkew))
	if last-first > dropDays {
		first = last - dropDays
	}
	var days []uint64
	for d := first; d <= last; d++ {
		days = append(days, d)
	}
	return days
}

// dropFetch is one message looked for at a location.
type dropFetch struct {
	frames [][]byte // its frames, part order; nil: nothing of ours there
	ids    []uint32 // the prekey id each part was sealed with
	whole  bool     // every part was found
	err    error    // a lookup failed (no node answered)
}

// collectPlan is what a round needs, read under the chat's lock.
type collectPlan struct {
	start        time.Time
	dirIn        [32]byte
	rstream      uint64
	next         uint64   // the contact's next message we lack
	restarts     bool     // look for a restarted stream too (the first round since the start)
	days         []uint64 // of their drops to us
	ackDays      []uint64 // of their acknowledgements of our drops; nil: none outstanding
	dayKeys      map[uint64]ed25519.PublicKey
	dayKeysMutex sync.Mutex
}

// collect runs one round for contact k and schedules the next.
func (x dropCollector) collect(ctx context.Context, k publicKey) {
	d := x.d
	plan, ok := x.planCollect(k)
	complete := false
	if ok {
		complete = x.collectAcks(ctx, k, plan)
		complete = x.collectDrops(ctx, k, plan) && complete
	}
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	dp := d.peers[k]
	if dp == nil {
		return
	}
	dp.run.collectBusy, dp.run.collectedOnce = false, true
	now := c.cfg.Now()
	if !complete {
		// A round repeats every lookup it made: retried as fast as
		// other jobs, a DHT that drops our queries (rate limits) would
		// see the whole round every 15 s.
		dp.run.collectAt = now.Add(min(dhtRetryMin<<min(dp.run.collectFails, 16), collectRetryMax))
		dp.run.collectFails++
		return
	}
	dp.run.collectFails, dp.run.collectAt = 0, now.Add(dropCollectEvery)
	if t := plan.start.Unix(); t > dp.collected {
		dp.collected = t
		d.gen++
	}
}

// planCollect reads what the round needs.
func (x dropCollector) planCollect(k publicKey) (*collectPlan, bool) {
	d := x.d
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	p, dp := c.peers[k], d.peers[k]
	if p == nil || dp == nil {
		return nil, false
	}
	_, dirIn, err := d.dirsLocked(k, dp)
	if err != nil {
		return nil, false
	}
	now := c.cfg.Now()
	from := now.Add(-dropDays * dropDay)
	if t := time.Unix(dp.collected, 0); t.After(from) {
		from = t
	}
	plan := &collectPlan{start: now, dirIn: dirIn, rstream: p.rstream, next: p.delivered + 1,
		restarts: !dp.run.collectedOnce, days: dropDaysBetween(from, now), dayKeys: map[uint64]ed25519.PublicKey{}}
	if len(dp.drops) > 0 {
		oldest := now
		for _, r := range dp.drops {
			if t := time.UnixMilli(r.made); t.Before(oldest) {
				oldest = t
			}
		}
		plan.ackDays = dropDaysBetween(oldest, now)
	}
	return plan, true
}

// dayKey is the contact's signing key of a day, derived once per round.
func (pl *collectPlan) dayKey(day uint64) [32]byte {
	pl.dayKeysMutex.Lock()
	defer pl.dayKeysMutex.Unlock()
	k, ok := pl.dayKeys[day]
	if !ok {
		k = dropDayKey(pl.dirIn, day).Public().(ed25519.PublicKey)
		pl.dayKeys[day] = k
	}
	return [32]byte(k)
}

// collectDrops fetches the contact's messages to us. It reports whether
// the round was complete: every lookup answered and every message found
// was whole (otherwise the days are looked at again next round).
func (x dropCollector) collectDrops(ctx context.Context, k publicKey, pl *collectPlan) bool {
	complete := true
	start := pl.next
	probes := make([]dropFetch, len(pl.days))
	restarts := make([]dropFetch, len(pl.days)) // seq 1: a stream the contact started anew
	parallel(len(pl.days), func(i int) {
		probes[i] = x.fetchMessage(ctx, k, pl, pl.days[i], start)
		if start > 1 && pl.restarts {
			restarts[i] = x.fetchMessage(ctx, k, pl, pl.days[i], 1)
		}
	})
	for i := range pl.days {
		if isNewerStream(restarts[i], pl.rstream) {
			start, probes = 1, restarts // its seqs start again from 1
			break
		}
	}
	next := start
	for i, day := range pl.days {
		f := probes[i]
		if next != start {
			f = x.fetchMessage(ctx, k, pl, day, next)
		}
		complete = complete && f.err == nil
		if f.frames == nil {
			continue
		}
		n, ok := x.scanDay(ctx, k, pl, day, next, f)
		next, complete = max(next, n), complete && ok
	}
	return complete
}

// isNewerStream reports whether a fetched seq-1 message is of a stream newer
// than the one we receive.
func isNewerStream(f dropFetch, rstream uint64) bool {
	if f.frames == nil {
		return false
	}
	fr, err := parseChatFrame(f.frames[0])
	return err == nil && fr.Stream > rstream
}

// scanDay feeds the message first found at seq on day, then fetches the
// following seqs dropWindow at a time until one is missing; it returns
// that seq, and whether everything it met was whole and answered.
func (x dropCollector) scanDay(ctx context.Context, k publicKey, pl *collectPlan, day, seq uint64, first dropFetch) (uint64, bool) {
	complete := first.whole
	x.feed(k, first)
	for seq++; seq < pl.next+chatWindow; seq += dropWindow {
		fs := make([]dropFetch, dropWindow)
		parallel(dropWindow, func(i int) { fs[i] = x.fetchMessage(ctx, k, pl, day, seq+uint64(i)) })
		miss := -1
		for i, f := range fs {
			complete = complete && f.err == nil && (f.frames == nil || f.whole)
			if f.frames == nil && miss < 0 {
				miss = i
			}
			if f.frames != nil {
				x.feed(k, f) // those after a gap are held for reassembly
			}
		}
		if miss >= 0 {
			return seq + uint64(miss), complete
		}
	}
	return seq, complete
}

// fetchMessage gets message seq of day: part 0 first, which says how many
// parts there are, then the others at once. Each part must open and be
// the data frame of that seq and part.
func (x dropCollector) fetchMessage(ctx context.Context, k publicKey, pl *collectPlan, day, seq uint64) dropFetch {
	f0, id0, err := x.fetchPart(ctx, k, pl, day, seq, 0, nil)
	if f0 == nil {
		return dropFetch{err: err}
	}
	head, _ := parseChatFrame(f0)
	out := dropFetch{frames: make([][]byte, head.Count), ids: make([]uint32, head.Count), whole: true}
	out.frames[0], out.ids[0] = f0, id0
	parallel(int(head.Count)-1, func(i int) {
		out.frames[i+1], out.ids[i+1], _ = x.fetchPart(ctx, k, pl, day, seq, uint8(i+1), &head)
	})
	for i := len(out.frames) - 1; i > 0; i-- {
		if out.frames[i] == nil {
			out.whole = false
			out.frames, out.ids = append(out.frames[:i], out.frames[i+1:]...), append(out.ids[:i], out.ids[i+1:]...)
		}
	}
	return out
}

// fetchPart gets and opens one part; like is part 0's frame, which the
// other parts must agree with. A nil frame with a nil error: nothing of
// ours is there (empty, filler, or not openable any more).
func (x dropCollector) fetchPart(ctx context.Context, k publicKey, pl *collectPlan, day, seq uint64, part uint8, like *chatFrame) ([]byte, uint32, error) {
	d := x.d
	it, found, err := d.getItem(ctx, pl.dayKey(day), dropSlotSalt(pl.dirIn, day, seq, part))
	if err != nil || !found {
		return nil, 0, err
	}
	frame, id, ok := x.open(k, pl.dirIn, it.V, part)
	if !ok {
		return nil, 0, nil
	}
	f, err := parseChatFrame(frame)
	switch {
	case err != nil, f.Type != chatFrameData, f.Seq != seq, f.Index != part, int(f.Count) > dropMaxParts,
		like != nil && (f.Stream != like.Stream || f.Count != like.Count):
		return nil, 0, nil
	}
	return frame, id, nil
}

// open opens a value sealed to us in direction dir.
func (x dropCollector) open(k publicKey, dir [32]byte, v []byte, part uint8) ([]byte, uint32, bool) {
	d := x.d
	it, err := parseDropValue(v)
	if err != nil {
		return nil, 0, false
	}
	frame, id, err := openDropItem(dir, it, part, func(id uint32, eph [32]byte) ([32]byte, bool) {
		if id == 0 {
			s, err := d.c.cfg.StaticSecret(publicKey(eph))
			return s, err == nil
		}
		return d.pk.prekeyDH(k, id, eph)
	})
	return frame, id, err == nil
}

// collectAcks reads the contact's acknowledgement items of the days of our
// outstanding drops and applies each; it reports whether every lookup
// answered.
func (x dropCollector) collectAcks(ctx context.Context, k publicKey, pl *collectPlan) bool {
	d := x.d
	errs := make([]error, len(pl.ackDays))
	parallel(len(pl.ackDays), func(i int) {
		day := pl.ackDays[i]
		it, found, err := d.getItem(ctx, pl.dayKey(day), dropAckSalt(pl.dirIn, day))
		errs[i] = err
		if !found {
			return
		}
		if frame, _, ok := x.open(k, pl.dirIn, it.V, 0); ok {
			if f, err := parseChatFrame(frame); err == nil && f.Type == chatFrameAck {
				x.feed(k, dropFetch{frames: [][]byte{frame}})
			}
		}
	})
	for _, err := range errs {
		if err != nil {
			return false
		}
	}
	return true
}

// feed hands frames read from drops to the chat, as if they had come over
// a session (but without making the contact "seen"), and notes the
// prekeys to erase once their messages are on disk.
func (x dropCollector) feed(k publicKey, f dropFetch) {
	d := x.d
	c := d.c
	c.mu.Lock()
	p := c.peers[k]
	if p == nil || c.closed {
		c.mu.Unlock()
		return
	}
	now := c.cfg.Now()
	var out [][]byte
	for i, b := range f.frames {
		fr, err := parseChatFrame(b)
		if err != nil {
			continue
		}
		if fr.Type == chatFrameAck {
			out = append(out, c.onAckLocked(p, fr, now)...)
			continue
		}
		out = append(out, c.onDataLocked(p, fr, now)...)
		if i < len(f.ids) && f.ids[i] != 0 {
			id := f.ids[i]
			dp := d.peerLocked(k)
			if dp.run.erase == nil {
				dp.run.erase = map[uint64]dropErase{}
			}
			dp.run.erase[fr.Seq] = dropErase{stream: fr.Stream, id: id}
		}
	}
	c.mu.Unlock()
	c.out.sendNow(k, out)
	c.ev.flush()
}

// parallel runs f(0..n-1) at once and waits for all.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}
