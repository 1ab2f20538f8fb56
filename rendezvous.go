// Private rendezvous (SPEC.md 5.2).
//
// Flow: two contacts meet on an infohash only they can compute: an HMAC of their
// static-static X25519 secret and the hour (rendezvousInfohash), for each of
// the epochs within the clock skew (rendezvousEpochs). The scheduler keeps,
// per contact, when to announce and when to look the contact up; the chat's
// tick calls tick, which starts the due DHT operations (at most maxDHTOps at
// once). A lookup hands one found address, picked by pickCandidate, to the
// session layer; done schedules the retry of a failed operation.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"log/slog"
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
	lookupFastInterval = 5 * time.Second
	lookupFastPeriod   = 60 * time.Second
	lookupSlowInterval = 90 * time.Second
	announceInterval   = 5 * time.Minute
	announceRetry      = 15 * time.Second
	dhtRetryMin        = 100 * time.Millisecond
	maxLookupTries     = 64 // rendezvous candidates remembered per contact
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

// rendezvousConfig is what the scheduler needs from the rest of the program
// (the rendezvous part of chatConfig).
type rendezvousConfig struct {
	StaticSecret func(peer publicKey) ([32]byte, error)
	Announce     func(ctx context.Context, infohash nodeID) (int, error)
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
	online                              bool // a session is up: no lookups
	fastUntil, nextLookup, nextAnnounce time.Time
	lookupBusy, announceBusy            bool
	lookupFails, announceFails          int              // consecutive failed DHT operations
	tried                               []netip.AddrPort // candidates handed over since the last session
}

// rendezvousScheduler decides when each contact is announced and looked up,
// runs those DHT operations and picks the address a lookup hands to the
// session layer. Safe for concurrent use; its lock is taken after the
// chat's, never before.
type rendezvousScheduler struct {
	cfg rendezvousConfig

	mu       sync.Mutex
	contacts map[publicKey]*rendezvousState
	epochs   []uint64 // of the last tick: a change means announce at once

	sem chan struct{}  // bounds the DHT operations in flight to maxDHTOps
	wg  sync.WaitGroup // DHT operations in flight
}

func newRendezvousScheduler(cfg rendezvousConfig) *rendezvousScheduler {
	return &rendezvousScheduler{cfg: cfg, contacts: map[publicKey]*rendezvousState{}, sem: make(chan struct{}, maxDHTOps)}
}

// add schedules a new contact; fastUntil ends its first minute of fast
// lookups (zero for contacts loaded at start: start sets it).
func (s *rendezvousScheduler) add(key publicKey, fastUntil time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.contacts[key] = &rendezvousState{fastUntil: fastUntil}
}

// remove forgets a contact; its operations in flight end without effect.
func (s *rendezvousScheduler) remove(key publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.contacts, key)
}

// online stops the lookups of a contact with a session and starts a new
// round of candidates.
func (s *rendezvousScheduler) online(key publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.contacts[key]; r != nil {
		r.online, r.tried = true, r.tried[:0]
	}
}

// offline puts a contact whose session ended back on fast lookups.
func (s *rendezvousScheduler) offline(key publicKey, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.contacts[key]; r != nil {
		r.online = false
		r.fastUntil, r.nextLookup = now.Add(lookupFastPeriod), now
	}
}

// start makes every contact due for an announce and a lookup now, with a
// minute of fast lookups.
func (s *rendezvousScheduler) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	for _, r := range s.contacts {
		r.fastUntil, r.nextLookup, r.nextAnnounce = now.Add(lookupFastPeriod), now, now
	}
}

// waitOps returns once the DHT operations started so far have ended.
func (s *rendezvousScheduler) waitOps() { s.wg.Wait() }

// rendezvousJob is one DHT task for one contact.
type rendezvousJob struct {
	key      publicKey
	announce bool // announce_peer; otherwise get_peers
}

// tick starts the announces and lookups that are due: announces every
// 5 minutes and whenever the set of epochs changes; lookups of an offline
// contact every 5 s in its first minute (after start, add or going
// offline), then every 90 s. At most maxDHTOps run at once.
func (s *rendezvousScheduler) tick(ctx context.Context) {
	if s.cfg.Announce == nil || s.cfg.GetPeers == nil || s.cfg.StaticSecret == nil {
		return
	}
	now := s.cfg.Now()
	epochs := rendezvousEpochs(now)
	s.mu.Lock()
	if !slices.Equal(epochs, s.epochs) {
		s.epochs = epochs
		for _, r := range s.contacts {
			r.nextAnnounce = time.Time{}
		}
	}
	var jobs []rendezvousJob
	for k, r := range s.contacts {
		if !r.announceBusy && !now.Before(r.nextAnnounce) {
			r.announceBusy, r.nextAnnounce = true, now.Add(announceInterval)
			jobs = append(jobs, rendezvousJob{k, true})
		}
		if !r.online && !r.lookupBusy && !now.Before(r.nextLookup) {
			every := lookupSlowInterval
			if now.Before(r.fastUntil) {
				every = lookupFastInterval
			}
			r.lookupBusy, r.nextLookup = true, now.Add(every)
			jobs = append(jobs, rendezvousJob{k, false})
		}
	}
	s.mu.Unlock()
	for _, jb := range jobs {
		s.wg.Add(1)
		go s.run(ctx, jb, epochs)
	}
}

// run does one job for every current epoch.
func (s *rendezvousScheduler) run(ctx context.Context, jb rendezvousJob, epochs []uint64) {
	defer s.wg.Done()
	ok := false
	defer func() { s.done(jb, ok) }()
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
	for _, e := range epochs {
		octx, cancel := context.WithTimeout(ctx, dhtOpTimeout)
		ih := rendezvousInfohash(secret, e)
		if jb.announce {
			n, err := s.cfg.Announce(octx, ih)
			ok = ok || (err == nil && n > 0)
		} else {
			addrs, err := s.cfg.GetPeers(octx, ih)
			ok = ok || err == nil
			for _, a := range addrs {
				if !slices.Contains(found, a) && (s.cfg.IsSelf == nil || !s.cfg.IsSelf(a)) {
					found = append(found, a)
				}
			}
		}
		cancel()
	}
	s.cfg.Log.Debug("chat: rendezvous", "peer", jb.key.String(), "announce", jb.announce, "ok", ok, "found", found)
	s.mu.Lock()
	_, still := s.contacts[jb.key] // not removed meanwhile
	s.mu.Unlock()
	switch {
	case still && jb.announce && s.cfg.Announced != nil:
		s.cfg.Announced(jb.key)
	case still && !jb.announce && s.cfg.LookedUp != nil:
		s.cfg.LookedUp(jb.key, found)
	}
	if a, ok := s.pickCandidate(jb.key, found); ok {
		s.cfg.SetEndpoint(jb.key, a)
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
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.contacts[key]
	if r == nil {
		return netip.AddrPort{}, false
	}
	i := slices.IndexFunc(found, func(a netip.AddrPort) bool { return !slices.Contains(r.tried, a) })
	if i < 0 {
		r.tried, i = r.tried[:0], 0
	}
	if len(r.tried) < maxLookupTries {
		r.tried = append(r.tried, found[i])
	}
	return found[i], true
}

// done clears the busy mark. A failed operation is retried soon: after
// dhtRetryMin, doubling with each further failure up to announceRetry
// (announce) or the lookup interval. The first ones at start usually fail
// only because the DHT is still pinging its saved nodes, and a contact
// waiting for us should not wait a whole interval for that.
func (s *rendezvousScheduler) done(jb rendezvousJob, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.contacts[jb.key]
	if r == nil {
		return
	}
	now := s.cfg.Now()
	if jb.announce {
		r.announceBusy = false
		r.nextAnnounce = retryAfter(&r.announceFails, ok, now, announceRetry, r.nextAnnounce)
		return
	}
	r.lookupBusy = false
	r.nextLookup = retryAfter(&r.lookupFails, ok, now, lookupFastInterval, r.nextLookup)
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
