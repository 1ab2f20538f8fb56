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
