// Tests of the DHT state lines (status.go): the state machine alone, and
// the lines the binary prints.
package main

import (
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
