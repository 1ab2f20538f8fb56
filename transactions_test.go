package main

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Our queries to one node keep within what it answers (SPEC.md 3.4.2,
// "Pacing"): a burst of pings through real sockets goes out at
// dstQueryRate after the first dstQueryBurst, the node's own limit
// (3.4.1) drops none, and every one is answered.
func TestQueriesPaced(t *testing.T) {
	server := newTestDHT(t, dhtConfig{}, 0)
	client := newTestDHT(t, dhtConfig{}, 0)
	// Loopback buckets are per port, like the node's own limit's: a
	// burst from one port, well above what it may draw at once.
	const n = dstQueryBurst + 5 // the last waits 5/3 s: within maxPaceWait
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := krpcMsg{Method: methodPing}
			errs <- client.tx.query(ctx, server.addr(), &q, txOpts{}).Err
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a paced ping failed: %v", err)
		}
	}
	if d := server.srv.limit.dropped.Load(); d != 0 {
		t.Errorf("the node dropped %d of our queries", d)
	}
	// The last token comes 5/3 s after the burst; allow for the timer's
	// and scheduler's lateness only on the long side.
	if want := time.Duration(n-dstQueryBurst) * time.Second / dstQueryRate; took < want-50*time.Millisecond {
		t.Errorf("%d pings answered within %v, want pacing to take at least %v", n, took, want)
	}
	t.Logf("%d pings: all answered in %v", n, took)
}
