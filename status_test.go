// Tests of the DHT state lines (status.go): the state machine alone, and
// the lines the binary prints.
package main

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestDHTWatchStep(t *testing.T) {
	var w dhtWatch
	steps := []struct {
		n       int
		failed  bool
		elapsed time.Duration
		want    string
	}{
		{0, false, time.Second, ""},
		{2, false, time.Second, ""}, // still filling
		{0, true, 2 * time.Second, dhtLineUnreachable},
		{0, true, 70 * time.Second, ""}, // said once
		{3, false, 80 * time.Second, "* dht: joined, 3 nodes"},
		{9, false, 81 * time.Second, ""},
		{0, false, 99 * time.Minute, dhtLineUnreachable},
	}
	for i, s := range steps {
		if got := w.step(s.n, s.failed, s.elapsed); got != s.want {
			t.Errorf("step %d (%d nodes, failed %v) = %q, want %q", i, s.n, s.failed, got, s.want)
		}
	}
}

// Issue 8 item 9: without a reachable DHT node, one plain line and no
// logs; /status says it in words. With a swarm, "joined".
func TestE2EDHTStateLines(t *testing.T) {
	u := newUser(t, "nora", "127.0.0.1:1")
	p := u.start(t)
	p.expect("* dht: no nodes reachable (retrying; check the network or use -bootstrap)", 40*time.Second)
	p.send("/status")
	p.expect("reach no: ", 5*time.Second)
	p.quit()
	p.mu.Lock()
	stderr := p.stderr.String()
	p.mu.Unlock()
	if stderr != "" {
		t.Errorf("stderr without -v: %q", stderr)
	}
	boot := testSwarm(t, 8)
	v := newUser(t, "olga", boot)
	p = v.start(t)
	p.expect("* dht: joined, ", 30*time.Second)
	p.send("/status")
	p.expect("reach yes: ", 5*time.Second)
	p.quit()
}

// The DHT says itself that a bootstrap failed (status.go reads no logs):
// BootstrapFailed hears of it, once per attempt, and not when a router
// answers.
func TestDHTReportsBootstrapFailure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	start := func(boot string) (*dht, chan error) {
		failed := make(chan error, 4)
		d := newTestDHT(t, dhtConfig{Bootstrap: []string{boot}, BootstrapFailed: func(err error) { failed <- err }}, 0)
		d.timing.bootstrap = 200 * time.Millisecond
		wg.Add(1)
		go func() { defer wg.Done(); d.maint.run(ctx) }()
		return d, failed
	}
	_, failed := start("127.0.0.1:1")
	select {
	case err := <-failed:
		if !errors.Is(err, errNoneAnswered) {
			t.Errorf("BootstrapFailed(%v), want errNoneAnswered", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no BootstrapFailed from a bootstrap that nobody answered")
	}

	router := newTestDHT(t, dhtConfig{}, 0)
	joined, failed := start(router.addr().String())
	for deadline := time.Now().Add(5 * time.Second); joined.goodNodes() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no node joined through the router")
		}
	}
	time.Sleep(100 * time.Millisecond) // the bootstrap's own lookup ends
	if len(failed) != 0 {
		t.Errorf("BootstrapFailed(%v) although the router answered", <-failed)
	}
}
