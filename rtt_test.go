package main

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

func TestRTTHistogramQuantile(t *testing.T) {
	var h rttHistogram
	if _, ok := h.quantile(0.5); ok {
		t.Fatal("quantile of an empty histogram")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 { // 1..100 ms in random order
		for _, i := range rng.Perm(100) {
			h.sample(time.Duration(i+1) * time.Millisecond)
		}
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond}} {
		// A bin is a quarter octave, and the last samples weigh most.
		got, _ := h.quantile(tc.p)
		if got < tc.want*2/3 || got > tc.want*3/2 {
			t.Errorf("quantile(%v) = %v, want about %v", tc.p, got, tc.want)
		}
	}
	// Old samples fade: after a burst of slow round trips, 200 normal ones
	// bring the 90% point back down.
	for range 100 {
		h.sample(2 * time.Second)
	}
	if q, _ := h.quantile(0.9); q < time.Second {
		t.Errorf("after a slow burst quantile(0.9) = %v, want over 1s", q)
	}
	for range 200 {
		h.sample(20 * time.Millisecond)
	}
	if q, _ := h.quantile(0.9); q > 30*time.Millisecond {
		t.Errorf("after the burst quantile(0.9) = %v, want about 20ms", q)
	}
}

var (
	addrA = netip.MustParseAddrPort("10.0.0.1:6881")
	addrB = netip.MustParseAddrPort("10.0.0.2:6881")
)

// A peer's own estimate sets its timeout while it is fresh, then fades into
// the strangers' one: an estimate learned in a burst cannot stay high.
func TestPeerRTOFades(t *testing.T) {
	tm := defaultTiming()
	p := newPeerTimes()
	t0 := time.Unix(1e9, 0)
	for range 20 {
		p.answered(addrB, 50*time.Millisecond, 1, t0)
	}
	stranger := p.strangerRTO(&tm)
	p.answered(addrA, 900*time.Millisecond, 1, t0)
	fresh := p.rto(addrA, t0, &tm)
	if fresh < 900*time.Millisecond || fresh > tm.rtoMax {
		t.Errorf("fresh rto of a 900ms peer = %v, want at least its round trip", fresh)
	}
	half := p.rto(addrA, t0.Add(peerRTTHalfLife), &tm)
	if want := (fresh + stranger) / 2; half < want-time.Millisecond || half > want+time.Millisecond {
		t.Errorf("rto after one half-life = %v, want %v", half, want)
	}
	if old := p.rto(addrA, t0.Add(10*peerRTTHalfLife), &tm); old > stranger+5*time.Millisecond {
		t.Errorf("rto after ten half-lives = %v, want the strangers' %v", old, stranger)
	}
	if got := p.rto(netip.MustParseAddrPort("10.0.0.9:1"), t0, &tm); got != stranger {
		t.Errorf("rto of an unknown peer = %v, want the strangers' %v", got, stranger)
	}
}

// Karn: an answer after a retransmission is ambiguous. It seeds a peer we
// know nothing of (an upper bound), but no estimate we already have.
func TestAmbiguousAnswers(t *testing.T) {
	tm := defaultTiming()
	p := newPeerTimes()
	t0 := time.Unix(1e9, 0)
	for range rttMinSamples {
		p.answered(addrB, 40*time.Millisecond, 1, t0)
	}
	before, _ := p.all.quantile(0.5)
	p.answered(addrA, 700*time.Millisecond, 2, t0)
	if after, _ := p.all.quantile(0.5); after != before || p.all.n != rttMinSamples {
		t.Errorf("an ambiguous sample moved the distribution: %v -> %v", before, after)
	}
	if got := p.rto(addrA, t0, &tm); got < 700*time.Millisecond {
		t.Errorf("rto of a peer first heard after a retransmission = %v, want at least 700ms", got)
	}
	p.answered(addrA, 1900*time.Millisecond, 3, t0)
	if got := p.peers[addrA].rtt.srtt; got != 700*time.Millisecond {
		t.Errorf("a second ambiguous sample moved the peer's srtt to %v", got)
	}
}

// Transmissions follow the loss measured on queries to known peers: two on
// a clean network, more as loss grows, so that a live node misses them all
// with probability lossTarget. Before any measurement: four.
func TestTriesFollowLoss(t *testing.T) {
	for _, tc := range []struct {
		loss     float64
		min, max int
	}{{0, minAttempts, minAttempts}, {0.1, 3, 4}, {0.34, maxAttempts, maxAttempts}} {
		p := newPeerTimes()
		rng := rand.New(rand.NewPCG(1, 2))
		now := time.Unix(1e9, 0)
		p.answered(addrA, 10*time.Millisecond, 1, now) // known from now on
		for range 2000 {
			attempts := 1
			for rng.Float64() < tc.loss && attempts < maxAttempts {
				attempts++
			}
			p.answered(addrA, 10*time.Millisecond, attempts, now)
		}
		if got := p.tries(); got < tc.min || got > tc.max {
			t.Errorf("loss %v: tries() = %d (estimate %.3f), want %d to %d", tc.loss, got, p.lost/p.sent, tc.min, tc.max)
		}
	}
	// Queries to strangers say nothing about loss: their retransmissions
	// may only mean they are slower than the timeout.
	p := newPeerTimes()
	for i := range 500 {
		p.answered(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 1), time.Second, 3, time.Unix(1e9, 0))
	}
	if got := p.tries(); got != 4 {
		t.Errorf("after answers from strangers tries() = %d, want the prior's 4", got)
	}
}

func TestDeadMemory(t *testing.T) {
	p := newPeerTimes()
	t0 := time.Unix(1e9, 0)
	p.failed(addrA, t0)
	if !p.dead(addrA, t0.Add(time.Minute)) {
		t.Error("a node that just failed is not remembered as dead")
	}
	if p.dead(addrA, t0.Add(deadMemory)) {
		t.Error("a node is remembered as dead after deadMemory")
	}
	p.answered(addrA, time.Millisecond, 1, t0.Add(time.Second))
	if p.dead(addrA, t0.Add(2*time.Second)) {
		t.Error("a node that answered is still remembered as dead")
	}
	for i := range maxPeerTimes + 10 {
		p.failed(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), 1), t0)
	}
	if len(p.peers) > maxPeerTimes {
		t.Errorf("%d peers remembered, want at most %d", len(p.peers), maxPeerTimes)
	}
}

// A query stays open for twice the round trip 99% of answers beat, within
// [rtoMin, maxPatience]; before any answer, six initial RTOs.
func TestPatience(t *testing.T) {
	tm := defaultTiming()
	p := newPeerTimes()
	if got := p.patience(&tm); got != 3*time.Second {
		t.Errorf("patience before any answer = %v, want 3s", got)
	}
	for range 50 {
		p.answered(addrA, 100*time.Millisecond, 1, time.Unix(1e9, 0))
	}
	if got := p.patience(&tm); got < 200*time.Millisecond || got > 250*time.Millisecond {
		t.Errorf("patience with 100ms round trips = %v, want about 200ms", got)
	}
}

// slowResponder answers every query it receives after delay, until the
// test ends.
func slowResponder(t *testing.T, delay time.Duration) netip.AddrPort {
	p := newRawPeer(t)
	id := nodeID{0x51, 0x0a}
	go func() {
		for range 64 {
			b, from := p.recv(5 * time.Second)
			if b == nil {
				return
			}
			m, err := parseKRPC(b)
			if err != nil || m.Type != 'q' {
				continue
			}
			r := krpcMsg{TID: bytes.Clone(m.TID), Type: 'r', Reply: krpcReply{ID: id}}
			out := r.appendTo(nil)
			time.AfterFunc(delay, func() { p.conn.WriteToUDPAddrPort(out, from) })
		}
	}()
	return p.addr()
}

// Near nodes pull the strangers' timeout down to its floor; a far node is
// not starved for it: its late answer is taken (the query's patience
// outlasts its transmissions), and from then on it has its own timeout,
// so the next query to it is answered at the first attempt.
func TestFarNodeNotStarved(t *testing.T) {
	d := newTestDHT(t, dhtConfig{}, 0)
	d.tx.mu.Lock()
	for range 5 { // a few slow answers: patience 2 x 100 ms
		d.tx.times.all.sample(100 * time.Millisecond)
	}
	for range 50 {
		d.tx.times.answered(netip.MustParseAddrPort("127.0.0.1:9"), time.Millisecond, 1, d.now())
	}
	if rto := d.tx.times.strangerRTO(&d.timing); rto >= 100*time.Millisecond {
		t.Fatalf("strangers' timeout %v, want it pulled down by the near nodes", rto)
	}
	d.tx.mu.Unlock()
	slow := slowResponder(t, 120*time.Millisecond)
	q := krpcMsg{Method: methodPing}
	first := d.tx.query(testCtx(t), slow, &q, txOpts{})
	if first.Err != nil || first.Attempts == 1 {
		t.Fatalf("first ping: %v after %d attempts, want an answer after retransmissions", first.Err, first.Attempts)
	}
	q = krpcMsg{Method: methodPing}
	second := d.tx.query(testCtx(t), slow, &q, txOpts{})
	if second.Err != nil || second.Attempts != 1 {
		t.Fatalf("second ping: %v after %d attempts, want an answer to the first", second.Err, second.Attempts)
	}
}
