// Timeouts that fit the Internet (SPEC.md 3.4.2): how long to wait for a
// node, how many times to ask it, and which nodes to stop asking.
//
// Flow: txTable.send asks peerTimes for a query's timeout (rto) and its
// number of transmissions (tries); retry asks how long a query stays open
// after its last one (patience). take reports every answer (answered): its
// round trip feeds the peer's own estimate and, when unambiguous, the
// distribution of every peer's round trips, which sets the timeout for
// strangers; queries to known peers also feed the loss estimate that sets
// tries. retry reports every query given up (failed): lookups then skip
// that address (dead) for deadMemory.
package main

import (
	"math"
	"net/netip"
	"time"
)

// Limits of peerTimes; SPEC.md 3.4.2 lists them.
const (
	maxPeerTimes    = 4096             // peers remembered: an RTT estimate or a failure
	peerRTTHalfLife = 10 * time.Second // a peer's own estimate counts half as much after this
	deadMemory      = 10 * time.Minute // lookups skip a node that failed for this long
	lossTarget      = 0.002            // chance that a live node misses every transmission
	minAttempts     = 2                // transmissions of a query, at least
	strangerQ       = 0.90             // a stranger's timeout: the round trip 90% of answers beat
	patienceQ       = 0.99             // a query stays open 2x the round trip 99% of answers beat,
	maxPatience     = 3 * time.Second  // at most this
	rttBins         = 64               // histogram bins, a quarter octave each from rttBinBase
	rttBinBase      = 100 * time.Microsecond
	rttMinSamples   = 8       // before this many, strangers get rtoInitial
	rttGain         = 1. / 32 // weight of a new round trip in the histogram
	lossGain        = 1. / 32 // weight of a new query in the loss estimate
	lossPrior       = 0.1     // the loss estimate before any answer,
	lossPriorWeight = 8       // worth this many transmissions
)

// rttHistogram is the distribution of recent round trips: log-spaced bins
// whose counts fade, each sample weighing rttGain of the total. A quantile
// of it, unlike RFC 6298's mean plus four deviations, does not swing with
// each sample of a heavy-tailed mix: one answer from a slow far node does
// not double the timeout for everyone. The zero value is ready to use.
type rttHistogram struct {
	bins  [rttBins]float64
	total float64
	w     float64 // the next sample's weight; grows so that older ones fade
	n     int
}

func rttBin(r time.Duration) int {
	if r <= rttBinBase {
		return 0
	}
	return min(int(4*math.Log2(float64(r)/float64(rttBinBase))), rttBins-1)
}

// binTop is the upper edge of bin i.
func binTop(i int) time.Duration {
	return time.Duration(float64(rttBinBase) * math.Exp2(float64(i+1)/4))
}

func (h *rttHistogram) sample(r time.Duration) {
	if h.w == 0 {
		h.w = 1
	}
	h.bins[rttBin(r)] += h.w
	h.total += h.w
	h.n++
	h.w /= 1 - rttGain
	if h.w > 1e100 { // rescale before the weights overflow
		for i := range h.bins {
			h.bins[i] /= h.w
		}
		h.total /= h.w
		h.w = 1
	}
}

// quantile is the upper edge of the bin where the fraction p of the
// weight is reached; ok is false before rttMinSamples.
func (h *rttHistogram) quantile(p float64) (time.Duration, bool) {
	if h.n < rttMinSamples {
		return 0, false
	}
	acc := 0.0
	for i, c := range h.bins {
		acc += c
		if acc >= p*h.total {
			return binTop(i), true
		}
	}
	return binTop(rttBins - 1), true
}

// peerTime is what we know of one peer's timing.
type peerTime struct {
	rtt     rttEstimator // from its own answers
	sampled time.Time    // its last answer
	failed  time.Time    // every transmission to it went unanswered then; zero if it answered since
}

// peerTimes holds the timing state of a node's queries. Not safe for
// concurrent use: txTable.mu guards it.
type peerTimes struct {
	all        rttHistogram
	peers      map[netip.AddrPort]*peerTime // at most maxPeerTimes
	sent, lost float64                      // transmissions to known peers, and the unanswered ones, fading
}

func newPeerTimes() peerTimes {
	return peerTimes{peers: map[netip.AddrPort]*peerTime{}, sent: lossPriorWeight, lost: lossPrior * lossPriorWeight}
}

// strangerRTO is the timeout for a peer we have no estimate of.
func (p *peerTimes) strangerRTO(t *dhtTiming) time.Duration {
	q, ok := p.all.quantile(strangerQ)
	if !ok {
		return t.rtoInitial
	}
	return min(max(q, t.rtoMin), t.rtoMax)
}

// rto is the first timeout of a query to addr. A peer's own estimate
// fades into the strangers' one with age, so that an estimate learned in a
// burst of load cannot stay high (nor one learned in a lull stay low): a
// dead peer must not hold a lookup for long on the strength of an old
// estimate, as it did when per-peer estimates did not fade.
func (p *peerTimes) rto(addr netip.AddrPort, now time.Time, t *dhtTiming) time.Duration {
	g := p.strangerRTO(t)
	pt, ok := p.peers[addr]
	if !ok || !pt.rtt.has {
		return g
	}
	own := pt.rtt.rto(t)
	w := math.Exp2(-float64(now.Sub(pt.sampled)) / float64(peerRTTHalfLife))
	return g + time.Duration(w*float64(own-g))
}

// patience is how long after its first transmission a query stays open,
// however few its transmissions: the slowest answers still arrive, so a
// far node is never taken for dead because near ones set the timeout.
func (p *peerTimes) patience(t *dhtTiming) time.Duration {
	q, ok := p.all.quantile(patienceQ)
	if !ok { // a node whose every round trip takes 2 s can still join
		return min(6*t.rtoInitial, maxPatience)
	}
	return min(max(2*q, t.rtoMin), maxPatience)
}

// tries is how many transmissions a query gets: enough that a live node
// misses them all with probability lossTarget, between minAttempts and
// maxAttempts. A dead node costs that many datagrams, so on a clean
// network it costs two. The loss L is known only from a few dozen
// transmissions: taking the expected L^n over what they allow (L ~
// Beta(lost, sent − lost), so E[L^n] = Π_{i<n} (lost + i)/(sent + i))
// rather than the estimate's own n-th power keeps a node that drew a
// lucky few from sending too few.
func (p *peerTimes) tries() int {
	miss := 1.0
	for n := 1; n <= maxAttempts; n++ {
		miss *= (p.lost + float64(n-1)) / (p.sent + float64(n-1))
		if n >= minAttempts && miss <= lossTarget {
			return n
		}
	}
	return maxAttempts
}

// answered records an answer from addr after attempts transmissions, r
// after the first. Karn's rule: after a retransmission r is ambiguous, so
// only a first-attempt answer is a sample for the distribution and for a
// peer's estimate; a peer with no estimate takes r all the same, an upper
// bound that errs towards waiting longer for a node that proved slow. A
// query to a peer with a fresh estimate timed out only if a datagram was
// lost, not because it was slow: those queries measure the loss.
func (p *peerTimes) answered(addr netip.AddrPort, r time.Duration, attempts int, now time.Time) {
	pt := p.peer(addr)
	if pt.rtt.has && now.Sub(pt.sampled) < 2*peerRTTHalfLife {
		p.sent = (1-lossGain)*p.sent + float64(attempts)
		p.lost = (1-lossGain)*p.lost + float64(attempts-1)
	}
	if attempts == 1 || p.all.n < rttMinSamples {
		// Until rttMinSamples, an upper bound is better than rtoInitial:
		// a node all of whose round trips exceed it would keep it forever.
		p.all.sample(r)
	}
	if attempts == 1 || !pt.rtt.has {
		pt.rtt.sample(r)
	}
	pt.sampled, pt.failed = now, time.Time{}
}

// failed records that no transmission to addr was answered.
func (p *peerTimes) failed(addr netip.AddrPort, now time.Time) {
	p.peer(addr).failed = now
}

// dead reports whether addr failed within deadMemory and has not
// answered since.
func (p *peerTimes) dead(addr netip.AddrPort, now time.Time) bool {
	pt, ok := p.peers[addr]
	return ok && !pt.failed.IsZero() && now.Sub(pt.failed) < deadMemory
}

// peer returns addr's entry, making room for it if needed.
func (p *peerTimes) peer(addr netip.AddrPort) *peerTime {
	if pt, ok := p.peers[addr]; ok {
		return pt
	}
	if len(p.peers) >= maxPeerTimes {
		for a := range p.peers { // map order is random: evict any one
			delete(p.peers, a)
			break
		}
	}
	pt := &peerTime{}
	p.peers[addr] = pt
	return pt
}
