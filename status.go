// The DHT's state in plain words (README.md, "Output lines"): one "*" line
// when it changes, and the "reach" line of /status. Logs stay on stderr and
// only with -v: a person without a network should read one sentence, not a
// screen of records repeated every minute.
//
// Flow: the DHT reports each failed bootstrap (dhtConfig.BootstrapFailed),
// which the app turns into a signal on a channel. dhtWatch polls the
// routing table's count of good nodes once a second and, with that signal,
// steps a three-state machine (joining, joined, unreachable); each change
// prints one line through the UI.
package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

const (
	// dhtWatchPoll is how often the watcher counts the routing table.
	dhtWatchPoll = time.Second
	// dhtJoinGrace is how long a start may take before an empty table
	// counts as unreachable without the DHT's own word for it.
	dhtJoinGrace = 30 * time.Second
	// dhtJoinSettle lets the first lookups fill the table before "joined"
	// prints, so its count means something; a full bucket is enough too.
	dhtJoinSettle = 3 * time.Second
)

// The "*" lines the watcher prints.
const (
	dhtLineUnreachable = "* dht: no nodes reachable (retrying; check the network or use -bootstrap)"
	dhtLineJoined      = "* dht: joined, %d nodes"
)

// dhtState is what the watcher last said.
type dhtState int32

const (
	dhtJoining dhtState = iota
	dhtJoined
	dhtUnreachable
)

// dhtWatch turns the node count into state changes. Its state is read by
// /status on another goroutine, hence atomic.
type dhtWatch struct {
	state atomic.Int32
	nodes atomic.Int64 // at the last poll
}

// step is one poll: n good nodes, whether the DHT reported a failed
// bootstrap since the last poll, and the time since the start. It returns
// the line to print, or "".
func (w *dhtWatch) step(n int, failed bool, elapsed time.Duration) string {
	w.nodes.Store(int64(n))
	st := dhtState(w.state.Load())
	switch {
	case n > 0 && st != dhtJoined && (n >= bucketSize || st == dhtUnreachable || elapsed >= dhtJoinSettle):
		w.state.Store(int32(dhtJoined))
		return fmt.Sprintf(dhtLineJoined, n)
	case n == 0 && (st == dhtJoined || st == dhtJoining && (failed || elapsed >= dhtJoinGrace)):
		w.state.Store(int32(dhtUnreachable))
		return dhtLineUnreachable
	}
	return ""
}

// run polls until ctx ends.
func (w *dhtWatch) run(ctx context.Context, count func() int, failed <-chan struct{}, print func(string)) {
	start := time.Now()
	tick := time.NewTicker(dhtWatchPoll)
	defer tick.Stop()
	for {
		sawFailure := false
		select {
		case <-ctx.Done():
			return
		case <-failed:
			sawFailure = true
		case <-tick.C:
		}
		if line := w.step(count(), sawFailure, time.Since(start)); line != "" {
			print(line)
		}
	}
}

// reach says in words whether contacts can be reached, for /status.
func (w *dhtWatch) reach() string {
	n := w.nodes.Load()
	switch dhtState(w.state.Load()) {
	case dhtJoined:
		return fmt.Sprintf("reach yes: the DHT answers (%d nodes), so contacts who are online can be found", n)
	case dhtUnreachable:
		return "reach no: no DHT node answers, so only contacts already online can be reached (retrying; check the network or use -bootstrap)"
	}
	return "reach not yet: joining the DHT"
}
