// Private rendezvous (SPEC.md 5.2).
//
// Flow: two contacts meet on an infohash only they can compute: an HMAC of their
// static-static X25519 secret and the hour (rendezvousInfohash), for each of
// the epochs within the clock skew (rendezvousEpochs). The scheduler keeps,
// per contact, when to announce and when to look the contact up; the chat's
// tick calls tick, which starts the due DHT operations (at most maxDHTOps at
// once), for contacts without a session only. An announce (whose lookup is
// also the contact's) or a lookup hands one found address, picked by
// pickCandidate, to the session layer; done records the epochs announced
// and schedules the retry of a failed operation.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Rendezvous constants (SPEC.md 5.2, 5.6).
const (
	rendezvousLabel    = "kadchat rendezvous v1"
	rendezvousEpoch    = time.Hour
	rendezvousSkew     = 10 * time.Minute
	lookupFastInterval = 5 * time.Second  // the first gap between lookups; it doubles after each
	lookupFastPeriod   = 60 * time.Second // lookups of their own only this long after start, add or going offline
	announceInterval   = 25 * time.Minute // per epoch, well within peerTTL: DHT nodes keep an announce 30 minutes
	announceRetry      = 15 * time.Second
	candidateQuiet     = peerTTL // an address that brought no session is not handed over again for this long
	dhtRetryMin        = 100 * time.Millisecond
	maxLookupTries     = 64 // quiet candidates remembered per contact
	dhtOpTimeout       = 30 * time.Second
	maxDHTOps          = 4
)

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

// rendezvousEpochOf is epoch(t) of SPEC.md 5.2.
func rendezvousEpochOf(t time.Time) uint64 {
	return uint64(t.Unix()) / uint64(rendezvousEpoch/time.Second)
}

// rendezvousEpochs lists, in order and without repeats, the epochs of t-skew,
// t and t+skew: two contacts whose clocks differ by less than the skew then
// always share at least one infohash.
func rendezvousEpochs(t time.Time) []uint64 {
	var es []uint64
	for _, d := range []time.Duration{-rendezvousSkew, 0, rendezvousSkew} {
		e := rendezvousEpochOf(t.Add(d))
		if len(es) == 0 || es[len(es)-1] != e {
			es = append(es, e)
		}
	}
	return es
}

// rendezvousConfig is what the scheduler needs from the rest of the program
// (the rendezvous part of chatConfig). Announce returns the peers its
// get_peers lookup found as well: the same infohash is ours and the
// contact's, so one lookup serves both.
type rendezvousConfig struct {
	StaticSecret func(peer publicKey) ([32]byte, error)
	Announce     func(ctx context.Context, infohash nodeID) ([]netip.AddrPort, int, error)
	GetPeers     func(ctx context.Context, infohash nodeID) ([]netip.AddrPort, error)
	SetEndpoint  func(peer publicKey, addr netip.AddrPort)
	IsSelf       func(addr netip.AddrPort) bool // optional
	OwnIP        func(ip netip.Addr) bool       // optional
	Now          func() time.Time
	Log          *slog.Logger

	// Optional: told of each announce and each lookup with what it found,
	// so the endpoint records (punch.go) follow the same schedule.
	Announced func(peer publicKey)
	LookedUp  func(peer publicKey, found []netip.AddrPort)
}

// rendezvousState is one contact's place in the schedule.
type rendezvousState struct {
	online                     bool // a session is up: no lookups, no announces
	fastUntil, nextLookup      time.Time
	lookupGap                  time.Duration // before the next lookup of our own; doubles
	nextAnnounce               time.Time     // no announce before (after a failure)
	announced                  map[uint64]time.Time
	lookupBusy, announceBusy   bool
	lookupFails, announceFails int                          // consecutive failed DHT operations
	quiet                      map[netip.AddrPort]time.Time // candidates handed over that brought no session, until when they are skipped
}

// rendezvousScheduler decides when each contact is announced and looked up,
// runs those DHT operations and picks the address a lookup hands to the
// session layer. Safe for concurrent use; its lock is taken after the
// chat's, never before.
type rendezvousScheduler struct {
	cfg rendezvousConfig

	mu       sync.Mutex
	contacts map[publicKey]*rendezvousState

	sem chan struct{}  // bounds the DHT operations in flight to maxDHTOps
	wg  sync.WaitGroup // DHT operations in flight
}

func newRendezvousScheduler(cfg rendezvousConfig) *rendezvousScheduler {
	return &rendezvousScheduler{cfg: cfg, contacts: map[publicKey]*rendezvousState{}, sem: make(chan struct{}, maxDHTOps)}
}

// add schedules a new contact; fastUntil ends its lookups of their own
// (zero for contacts loaded at start: start sets it).
func (s *rendezvousScheduler) add(key publicKey, fastUntil time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.contacts[key] = &rendezvousState{fastUntil: fastUntil, lookupGap: lookupFastInterval,
		announced: map[uint64]time.Time{}, quiet: map[netip.AddrPort]time.Time{}}
}

// remove forgets a contact; its operations in flight end without effect.
func (s *rendezvousScheduler) remove(key publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.contacts, key)
}

// online stops the lookups and announces of a contact with a session: it
// knows where we are. Every candidate may be tried again later.
func (s *rendezvousScheduler) online(key publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.contacts[key]; r != nil {
		r.online = true
		clear(r.quiet)
	}
}

// offline puts a contact whose session ended back on the schedule: an
// announce (unless a recent one still holds) and lookups from now on.
func (s *rendezvousScheduler) offline(key publicKey, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.contacts[key]; r != nil {
		r.online = false
		r.restart(now)
	}
}

// start makes every contact due for an announce and a lookup now.
func (s *rendezvousScheduler) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	for _, r := range s.contacts {
		r.restart(now)
	}
}

// restart begins the lookups of our own again: now, then after gaps of
// lookupFastInterval, doubling, until lookupFastPeriod has passed.
func (r *rendezvousState) restart(now time.Time) {
	r.fastUntil, r.nextLookup, r.lookupGap = now.Add(lookupFastPeriod), now, lookupFastInterval
}

// waitOps returns once the DHT operations started so far have ended.
func (s *rendezvousScheduler) waitOps() { s.wg.Wait() }

// rendezvousJob is one DHT task for one contact.
type rendezvousJob struct {
	key      publicKey
	announce bool     // announce_peer (with the lookup before it); otherwise get_peers
	epochs   []uint64 // the epochs whose infohashes the job uses
}

// tick starts the announces and lookups that are due, for contacts without
// a session only. An epoch is announced when it enters the set of current
// epochs and again every announceInterval while it stays there, as DHT
// nodes forget an announce after peerTTL. A contact is looked up at start,
// add or going offline, then at 5, 15 and 35 s (the gap doubles) while
// lookupFastPeriod lasts, on the current epoch only. After that only the
// lookups that announces make anyway find it, and the puncher re-reads the
// contact's record (punch.go): a contact who comes online looks us up and
// initiates, or writes a record we read. At most maxDHTOps run at once.
func (s *rendezvousScheduler) tick(ctx context.Context) {
	if s.cfg.Announce == nil || s.cfg.GetPeers == nil || s.cfg.StaticSecret == nil {
		return
	}
	now := s.cfg.Now()
	// A lookup needs the current epoch only: with clocks less than
	// rendezvousSkew apart, it is among the epochs the contact announces.
	epochs, current := rendezvousEpochs(now), rendezvousEpochOf(now)
	s.mu.Lock()
	var jobs []rendezvousJob
	for k, r := range s.contacts {
		if r.online {
			continue
		}
		lookupDue := !r.lookupBusy && !now.Before(r.nextLookup) && now.Before(r.fastUntil)
		if due := r.dueEpochs(epochs, now); len(due) > 0 && !r.announceBusy && !now.Before(r.nextAnnounce) {
			r.announceBusy = true
			jobs = append(jobs, rendezvousJob{k, true, due})
			if lookupDue && slices.Contains(due, current) {
				r.advanceLookup(now) // the announce looks the current epoch up: it is this lookup
				lookupDue = false
			}
		}
		if lookupDue {
			r.lookupBusy = true
			r.advanceLookup(now)
			jobs = append(jobs, rendezvousJob{k, false, []uint64{current}})
		}
	}
	s.mu.Unlock()
	for _, jb := range jobs {
		s.wg.Add(1)
		go s.run(ctx, jb)
	}
}

// dueEpochs lists the current epochs not announced within
// announceInterval, except those whose last announce lasts (peerTTL) until
// they stop being current, and forgets epochs no longer current.
func (r *rendezvousState) dueEpochs(epochs []uint64, now time.Time) []uint64 {
	var due []uint64
	for e := range r.announced {
		if !slices.Contains(epochs, e) {
			delete(r.announced, e)
		}
	}
	for _, e := range epochs {
		at, ok := r.announced[e]
		if !ok || now.Sub(at) >= announceInterval && at.Add(peerTTL).Before(epochUsedUntil(e)) {
			due = append(due, e)
		}
	}
	return due
}

// epochUsedUntil is when e leaves rendezvousEpochs: its end plus the skew.
func epochUsedUntil(e uint64) time.Time {
	return time.Unix(int64(e+1)*int64(rendezvousEpoch/time.Second), 0).Add(rendezvousSkew)
}

// advanceLookup schedules the next lookup of our own, a doubled gap later.
func (r *rendezvousState) advanceLookup(now time.Time) {
	r.nextLookup = now.Add(r.lookupGap)
	r.lookupGap *= 2
}

// run does one job for each of its epochs.
func (s *rendezvousScheduler) run(ctx context.Context, jb rendezvousJob) {
	defer s.wg.Done()
	var done []uint64 // epochs announced, or looked up
	defer func() { s.done(jb, done) }()
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	case <-ctx.Done():
		return
	}
	secret, err := s.cfg.StaticSecret(jb.key)
	if err != nil {
		s.cfg.Log.Debug("chat: rendezvous secret", "peer", jb.key.String(), "err", err)
		return
	}
	var found []netip.AddrPort
	for _, e := range jb.epochs {
		octx, cancel := context.WithTimeout(ctx, dhtOpTimeout)
		ih := rendezvousInfohash(secret, e)
		var addrs []netip.AddrPort
		if jb.announce {
			var n int
			addrs, n, err = s.cfg.Announce(octx, ih)
			if err == nil && n == 0 {
				err = errNoneAnswered
			}
		} else {
			addrs, err = s.cfg.GetPeers(octx, ih)
		}
		cancel()
		if err == nil {
			done = append(done, e)
		}
		for _, a := range addrs {
			if !slices.Contains(found, a) && (s.cfg.IsSelf == nil || !s.cfg.IsSelf(a)) {
				found = append(found, a)
			}
		}
	}
	s.cfg.Log.Debug("chat: rendezvous", "peer", jb.key.String(), "announce", jb.announce, "done", done, "found", found)
	s.mu.Lock()
	_, still := s.contacts[jb.key] // not removed meanwhile
	s.mu.Unlock()
	if still && jb.announce && s.cfg.Announced != nil {
		s.cfg.Announced(jb.key)
	}
	// An announce starts with a lookup of the same infohash (SPEC.md
	// 5.2): what it found goes to the puncher as a lookup's would.
	if still && s.cfg.LookedUp != nil && (!jb.announce || len(found) > 0) {
		s.cfg.LookedUp(jb.key, found)
	}
	if a, ok := s.pickCandidate(jb.key, found); ok {
		s.cfg.SetEndpoint(jb.key, a)
	}
}

// pickCandidate chooses the one address a lookup hands to the session
// layer. A lookup often finds stale addresses next to the live one: our
// own or the contact's earlier ports, kept by DHT nodes for peerTTL. The
// session layer sends its initiation to the address it is given and
// resends it for RekeyAttemptTime, so each lookup hands over one
// candidate, in the DHT's order but with addresses on our own IP last
// (most likely our own earlier announcements), and one that brought no
// session is not handed over again for candidateQuiet: by then a stale
// announce is gone from the DHT, and one found again is fresh. A contact
// who is really there initiates to us once it looks us up.
func (s *rendezvousScheduler) pickCandidate(key publicKey, found []netip.AddrPort) (netip.AddrPort, bool) {
	if len(found) == 0 {
		return netip.AddrPort{}, false
	}
	if s.cfg.OwnIP != nil {
		slices.SortStableFunc(found, func(a, b netip.AddrPort) int {
			oa, ob := s.cfg.OwnIP(a.Addr()), s.cfg.OwnIP(b.Addr())
			switch {
			case oa == ob:
				return 0
			case ob:
				return -1
			}
			return 1
		})
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.contacts[key]
	if r == nil || r.online {
		return netip.AddrPort{}, false
	}
	maps.DeleteFunc(r.quiet, func(_ netip.AddrPort, until time.Time) bool { return !now.Before(until) })
	i := slices.IndexFunc(found, func(a netip.AddrPort) bool { _, q := r.quiet[a]; return !q })
	if i < 0 {
		return netip.AddrPort{}, false
	}
	if len(r.quiet) < maxLookupTries {
		r.quiet[found[i]] = now.Add(candidateQuiet)
	}
	return found[i], true
}

// done clears the busy mark and records the epochs announced. A failed
// operation is retried soon: after dhtRetryMin, doubling with each
// further failure up to announceRetry (announce) or lookupFastInterval.
// The first ones at start usually fail only because the DHT is still
// pinging its saved nodes, and a contact waiting for us should not wait a
// whole interval for that.
func (s *rendezvousScheduler) done(jb rendezvousJob, done []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.contacts[jb.key]
	if r == nil {
		return
	}
	now := s.cfg.Now()
	ok := len(done) > 0
	if jb.announce {
		r.announceBusy = false
		for _, e := range done {
			r.announced[e] = now
		}
		r.nextAnnounce = retryAfter(&r.announceFails, ok, now, announceRetry, now.Add(announceRetry))
		if ok {
			r.nextAnnounce = now
		}
		return
	}
	r.lookupBusy = false
	if !ok { // a failed lookup does not count: retry it soon, with the same gap after
		r.lookupGap /= 2
		r.nextLookup = retryAfter(&r.lookupFails, ok, now, lookupFastInterval, r.nextLookup)
		r.fastUntil = later(r.fastUntil, r.nextLookup.Add(time.Nanosecond))
		return
	}
	r.lookupFails = 0
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
