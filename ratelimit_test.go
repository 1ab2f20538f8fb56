package main

import (
	"net/netip"
	"testing"
	"time"
)

func TestRateKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"127.0.0.1:6881", "127.0.0.1:6881"}, // loopback: one node per port
		{"127.0.0.2:9", "127.0.0.2:9"},
		{"[::1]:6881", "[::1]:6881"},
		{"[::ffff:127.0.0.1]:5", "127.0.0.1:5"},
		{"203.0.113.7:6881", "203.0.113.7:0"}, // public IPv4: the address
		{"192.168.1.5:6881", "192.168.1.5:0"}, // LAN too: spoofable from outside through a NAT
		{"[::ffff:203.0.113.7]:1", "203.0.113.7:0"},
		{"[2001:db8:1:2:3:4:5:6]:6881", "[2001:db8:1:2::]:0"}, // IPv6: the /64
	}
	for _, tt := range tests {
		if got := rateKey(netip.MustParseAddrPort(tt.in)); got != netip.MustParseAddrPort(tt.want) {
			t.Errorf("rateKey(%s) = %v, want %s", tt.in, got, tt.want)
		}
	}
}

// A source gets srcQueryBurst queries at once, then srcQueryRate a second;
// the ports of a public address share its bucket, other addresses do not.
func TestSourceLimiterRate(t *testing.T) {
	l := newSourceLimiter(srcQueryRate, srcQueryBurst)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := netip.MustParseAddrPort("203.0.113.7:6881")
	count := func(from netip.AddrPort, n int, at time.Time) (ok int) {
		for range n {
			if l.allow(from, at) {
				ok++
			}
		}
		return ok
	}
	if got := count(a, 100, t0); got != srcQueryBurst {
		t.Fatalf("burst: %d of 100 allowed, want %d", got, srcQueryBurst)
	}
	if got := count(netip.AddrPortFrom(a.Addr(), 1), 1, t0); got != 0 {
		t.Errorf("another port of the same address was allowed")
	}
	if got := count(netip.MustParseAddrPort("203.0.113.8:6881"), 1, t0); got != 1 {
		t.Errorf("another address was refused")
	}
	if got := count(a, 100, t0.Add(time.Second)); got != srcQueryRate {
		t.Errorf("a second later: %d allowed, want %d", got, srcQueryRate)
	}
	if got := count(a, 100, t0.Add(time.Hour)); got != srcQueryBurst {
		t.Errorf("an hour later: %d allowed, want a full burst of %d", got, srcQueryBurst)
	}
	if got, want := l.dropped.Load(), uint64(3*100+1-2*srcQueryBurst-srcQueryRate); got != want {
		t.Errorf("dropped = %d, want %d", got, want)
	}
}

// However many sources come, the table holds maxRateSources buckets, and a
// source being limited keeps its empty bucket while others are fuller: it
// cannot get a fresh one by making us forget it.
func TestSourceLimiterBounded(t *testing.T) {
	l := newSourceLimiter(srcQueryRate, srcQueryBurst)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	victim := netip.MustParseAddrPort("198.51.100.1:1")
	for range srcQueryBurst {
		l.allow(victim, t0)
	}
	for i := range 100 * maxRateSources {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)
		if !l.allow(a, t0) {
			t.Fatalf("new source %v refused", a)
		}
	}
	if len(l.buckets) != maxRateSources || len(l.index) != maxRateSources {
		t.Fatalf("%d buckets, %d index entries; want %d", len(l.buckets), len(l.index), maxRateSources)
	}
	if l.allow(victim, t0) {
		t.Errorf("the drained source got a fresh bucket after %d others came", 100*maxRateSources)
	}
	for k, i := range l.index {
		if l.buckets[i].key != k {
			t.Fatalf("index %v -> %d holds %v", k, i, l.buckets[i].key)
		}
	}
}

// BenchmarkSourceLimiter: the cost per query of a known source, and of a
// new source each time with the table full (a spoofed flood: the slowest
// case, a scan for the fullest bucket).
func BenchmarkSourceLimiter(b *testing.B) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b.Run("known", func(b *testing.B) {
		l := newSourceLimiter(1e9, 1e9)
		a := netip.MustParseAddrPort("203.0.113.7:6881")
		b.ReportAllocs()
		for b.Loop() {
			l.allow(a, t0)
		}
	})
	b.Run("new", func(b *testing.B) {
		l := newSourceLimiter(srcQueryRate, srcQueryBurst)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			l.allow(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1), t0)
		}
	})
}

// reserve hands out the burst at once, then one token per 1/rate, and
// refuses a wait beyond its bound without taking anything (SPEC.md 3.4.2,
// "Pacing").
func TestSourceLimiterReserve(t *testing.T) {
	l := newSourceLimiter(dstQueryRate, dstQueryBurst)
	to := netip.MustParseAddrPort("198.51.100.7:6881")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	step := time.Second / dstQueryRate
	for i := range dstQueryBurst + 3 {
		want := time.Duration(max(i-dstQueryBurst+1, 0)) * step
		wait, ok := l.reserve(to, now, maxPaceWait)
		if !ok || (wait-want).Abs() > time.Millisecond {
			t.Fatalf("query %d: wait %v ok %v, want %v", i+1, wait, ok, want)
		}
	}
	// Three tokens are owed: a fourth would wait 4 steps; refused with a
	// bound of 3, and then nothing was taken.
	if wait, ok := l.reserve(to, now, 3*step); ok || (wait-4*step).Abs() > time.Millisecond {
		t.Fatalf("over the bound: wait %v ok %v, want %v refused", wait, ok, 4*step)
	}
	if wait, ok := l.reserve(to, now, maxPaceWait); !ok || (wait-4*step).Abs() > time.Millisecond {
		t.Fatalf("after a refusal: wait %v ok %v, want %v", wait, ok, 4*step)
	}
	// Another port of the same IPv4 address is the same node's budget;
	// another address has its own.
	if wait, _ := l.reserve(netip.MustParseAddrPort("198.51.100.7:1"), now, maxPaceWait); wait < 5*step-time.Millisecond {
		t.Errorf("same address, other port: wait %v, want %v", wait, 5*step)
	}
	if wait, _ := l.reserve(netip.MustParseAddrPort("198.51.100.8:6881"), now, maxPaceWait); wait != 0 {
		t.Errorf("another address: wait %v, want 0", wait)
	}
}
