// Per-source query limits (SPEC.md 3.4.1 "What a source can draw"): a
// source that sends more than a few queries per second is answered at that
// rate, not more, so that nobody can use us as a reflector.
//
// Flow: handleKRPC asks sourceLimiter.allow before it answers a query (a
// malformed one with 203 or 204 included). Each source (rateKey: an IPv4
// address, an IPv6 /64, a loopback address with its port) has a token
// bucket of srcQueryBurst queries refilled at srcQueryRate per second; a
// query that finds no token is dropped unanswered and unrecorded. The
// table holds at most maxRateSources buckets: a new source takes the slot
// of the fullest of the next rateEvictScan buckets (round robin), whose
// source could draw little more than a new one.
package main

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// Limits on what one source draws from us; SPEC.md 3.4.1 lists them.
const (
	srcQueryRate   = 5    // queries per second a source is answered at, sustained
	srcQueryBurst  = 20   // queries a quiet source is answered at once
	maxRateSources = 1024 // sources tracked at once: at most 126 KB of heap
	rateEvictScan  = 8    // buckets a new source looks at for the one to take over
)

// What we draw from one node (SPEC.md 3.4.2, "Pacing"): below what our
// own limit answers, and below libtorrent's, which blocks an address that
// sends more than 5 packets a second (50 in 10 s) for five minutes.
const (
	dstQueryRate  = 3               // queries per second we send one node, sustained
	dstQueryBurst = 16              // queries we send a node we have been quiet to, at once
	maxPaceWait   = 2 * time.Second // a query that would wait longer fails at once
)

// rateKey is what one bucket counts (the stores' sourceKey counts writers
// by /24 instead). An IPv4 address, whatever the port: ports cost an
// attacker nothing and a reflection's victim is an address. LAN addresses
// too: behind a full-cone NAT a forged LAN source can come from outside.
// An IPv6 /64: one host or household holds a whole /64. A loopback address
// with its port: only this machine can send from loopback (the kernel drops
// such sources arriving from outside), and tests run many nodes on
// 127.0.0.1.
func rateKey(a netip.AddrPort) netip.AddrPort {
	ip := a.Addr().Unmap()
	switch {
	case ip.IsLoopback():
		return netip.AddrPortFrom(ip, a.Port())
	case ip.Is4():
		return netip.AddrPortFrom(ip, 0)
	}
	p, _ := ip.Prefix(64)
	return netip.AddrPortFrom(p.Addr(), 0)
}

// srcBucket is one source's token bucket.
type srcBucket struct {
	key    netip.AddrPort
	tokens float64
	last   time.Time // when tokens was last brought up to date
}

// level is the bucket's tokens at now.
func (b *srcBucket) level(now time.Time, rate, burst float64) float64 {
	return min(burst, b.tokens+rate*now.Sub(b.last).Seconds())
}

// sourceLimiter is a token bucket per source in a table of fixed size, so
// its memory is bounded whatever the number of sources. The zero value
// is not ready: use newSourceLimiter. Not safe for concurrent use: the
// Node's read goroutine owns it.
type sourceLimiter struct {
	rate, burst float64
	buckets     []srcBucket
	index       map[netip.AddrPort]int // key -> position in buckets
	hand        int                    // where the next eviction scan starts
	dropped     atomic.Uint64          // queries refused so far; others may read it
}

func newSourceLimiter(rate, burst float64) *sourceLimiter {
	return &sourceLimiter{rate: rate, burst: burst, index: make(map[netip.AddrPort]int)}
}

// allow takes a token from from's bucket at now, and reports whether
// there was one.
func (l *sourceLimiter) allow(from netip.AddrPort, now time.Time) bool {
	key := rateKey(from)
	i, ok := l.index[key]
	if !ok {
		i = l.slot(key, now)
	}
	b := &l.buckets[i]
	b.tokens, b.last = b.level(now, l.rate, l.burst), now
	if b.tokens < 1 {
		l.dropped.Add(1)
		return false
	}
	b.tokens--
	return true
}

// reserve takes a token from to's bucket at now, borrowing it from the
// future if there is none, and returns how long the caller must wait
// before it is due. A wait over maxWait takes nothing and reports !ok. The
// DHT client paces its queries with it (SPEC.md 3.4.2): a bucket in debt
// is the emptiest, so the eviction scan passes it by.
func (l *sourceLimiter) reserve(to netip.AddrPort, now time.Time, maxWait time.Duration) (wait time.Duration, ok bool) {
	key := rateKey(to)
	i, found := l.index[key]
	if !found {
		i = l.slot(key, now)
	}
	b := &l.buckets[i]
	lv := b.level(now, l.rate, l.burst)
	if lv < 1 {
		wait = time.Duration((1 - lv) / l.rate * float64(time.Second))
		if wait > maxWait {
			return wait, false
		}
	}
	b.tokens, b.last = lv-1, now
	return wait, true
}

// slot gives key a full bucket: a free one, or the fullest of the next
// rateEvictScan in use, which a clock hand walks round. A full bucket says
// nothing a fresh one would not, so its source gains nothing from the
// eviction, and one that is being limited (an empty bucket) keeps it while
// fuller ones are near. A bounded scan keeps a flood of new sources cheap.
func (l *sourceLimiter) slot(key netip.AddrPort, now time.Time) int {
	i := len(l.buckets)
	if i < maxRateSources {
		l.buckets = append(l.buckets, srcBucket{})
	} else {
		fullest := -1.0
		for range rateEvictScan {
			j := l.hand
			l.hand = (l.hand + 1) % len(l.buckets)
			if lv := l.buckets[j].level(now, l.rate, l.burst); lv > fullest {
				i, fullest = j, lv
			}
		}
		delete(l.index, l.buckets[i].key)
	}
	l.buckets[i] = srcBucket{key: key, tokens: l.burst, last: now}
	l.index[key] = i
	return i
}
