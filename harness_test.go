// The test harness every test file shares: SPEC.md's tagged blocks, a fake
// clock, a swarm of DHT nodes on 127.0.0.1, and the -update switch that
// regenerates SPEC.md's computed vectors and testdata/ from the code.
//
// Flow: a test reads its vectors with specBlocks (or specVectorMap) and
// checks them against what the code computes; run with -update, it first
// writes what the code computes into SPEC.md (updateSpecBlock) or testdata/
// (updateFile), so `go test -run TestX -update .` then `git diff` shows what
// changed. Timing tests inject fakeClock.now; network tests build nodes with
// startTestDHT and swarms with startSwarm.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// --- SPEC.md's tagged blocks

// specFile is the document the tests read their vectors from.
const specFile = "SPEC.md"

// update makes the vector tests write what the code computes into SPEC.md
// and testdata/ before they compare (then nothing differs): the one switch
// to regenerate vectors after a deliberate change.
var update = flag.Bool("update", false, "rewrite SPEC.md's computed vectors and testdata/ from the code")

// specBlock is a fenced block of SPEC.md whose info string is "<kind>" or
// "<kind> name=<name>". Its lines are "key = value", and a line that starts
// with a space continues the value above it (joined with one space: long
// hex wraps so); the first line may instead be a body that is not
// "key = value" (a quoted datagram, say). A key may repeat (a token-vector
// lists ip, token, ip, token): keys and values keep every line in order,
// fields the last value of each key.
type specBlock struct {
	name   string
	line   int      // of the opening fence, for messages
	lines  []string // the raw lines between the fences
	body   string
	keys   []string // every key, in order, repeats included
	values []string // values[i] is the value of keys[i]
	fields map[string]string
}

// specRawBlocks returns every block of the given kind in SPEC.md with its
// raw lines only, for a block that is not "key = value" (a hex dump).
func specRawBlocks(t testing.TB, kind string) []specBlock {
	t.Helper()
	b, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []specBlock
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		info, ok := strings.CutPrefix(lines[i], "```")
		words := strings.Fields(info)
		if !ok || len(words) == 0 || words[0] != kind {
			continue
		}
		blk := specBlock{line: i + 1}
		for _, w := range words[1:] {
			name, ok := strings.CutPrefix(w, "name=")
			if !ok || blk.name != "" {
				t.Fatalf("%s:%d: want \"```%s name=NAME\", got %q", specFile, i+1, kind, lines[i])
			}
			blk.name = name
		}
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			blk.lines = append(blk.lines, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("%s:%d: %s block never closed", specFile, blk.line, kind)
		}
		out = append(out, blk)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no %s blocks", specFile, kind)
	}
	return out
}

// specBlocks returns every block of the given kind in SPEC.md, its lines
// read as "key = value".
func specBlocks(t testing.TB, kind string) []specBlock {
	t.Helper()
	blocks := specRawBlocks(t, kind)
	for i := range blocks {
		blocks[i].parseFields(t)
	}
	return blocks
}

// parseFields reads b.lines as the body and "key = value" lines.
func (b *specBlock) parseFields(t testing.TB) {
	t.Helper()
	b.fields = map[string]string{}
	for n, l := range b.lines {
		at := fmt.Sprintf("%s:%d", specFile, b.line+1+n)
		if strings.HasPrefix(l, " ") {
			if len(b.values) == 0 {
				t.Fatalf("%s: %q continues nothing", at, l)
			}
			b.values[len(b.values)-1] += " " + strings.TrimSpace(l)
			b.fields[b.keys[len(b.keys)-1]] = b.values[len(b.values)-1]
			continue
		}
		k, v, ok := strings.Cut(l, " = ")
		if !ok {
			if n > 0 {
				t.Fatalf("%s: want key = value, got %q", at, l)
			}
			b.body = l
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		b.keys, b.values = append(b.keys, k), append(b.values, v)
		b.fields[k] = v
	}
}

// specVectorMap returns the blocks of one kind as name -> key -> value;
// each block must be "key = value" lines only, each key once.
func specVectorMap(t testing.TB, kind string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, b := range specBlocks(t, kind) {
		if b.body != "" || len(b.fields) != len(b.keys) {
			t.Fatalf("%s:%d: %s %s: want key = value lines, each key once", specFile, b.line, kind, b.name)
		}
		out[b.name] = b.fields
	}
	return out
}

// updateSpecBlock, with -update, replaces the lines of the block "```kind
// name=NAME" in SPEC.md by "key = value" for each of keys, in that order.
func updateSpecBlock(t testing.TB, kind, name string, keys []string, fields map[string]string) {
	t.Helper()
	if !*update {
		return
	}
	b, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	head := "```" + kind + " name=" + name + "\n"
	before, rest, ok := strings.Cut(string(b), head)
	if !ok {
		t.Fatalf("%s has no %q to update", specFile, strings.TrimSpace(head))
	}
	// The closing fence is the first line that is only ``` (the block's
	// first line, if the block is empty).
	end := strings.Index("\n"+rest, "\n```\n")
	if end < 0 {
		t.Fatalf("%s: %q never closed", specFile, strings.TrimSpace(head))
	}
	after := rest[end+len("```\n"):]
	var blk strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&blk, "%s = %s\n", k, fields[k])
	}
	updateFile(t, specFile, []byte(before+head+blk.String()+"```\n"+after))
}

// updateFile, with -update, writes data to path.
func updateFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if !*update {
		return
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// --- a clock that moves only when told

// fakeClock is an injected clock (its now method) that moves only when a
// test moves it. It is safe for concurrent use: the code under test reads
// it from its own goroutines.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// newFakeClock starts at 2026-01-02T03:04:05Z.
func newFakeClock() *fakeClock { return newFakeClockAt(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) }

func newFakeClockAt(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// --- DHT nodes and swarms on 127.0.0.1

// swarmJoinTimeout bounds one bootstrap of a swarm node; a whole network
// being built at once loads both cores, so it is generous.
const swarmJoinTimeout = 20 * time.Second

// startTestDHT starts a DHT on its own Node on 127.0.0.1 and returns it with
// the function that stops it (a second call does nothing). drop is the
// fraction of datagrams the Node loses in each direction; maintain also
// runs the DHT's own loop (d.maint.run: bootstrap, refresh, save), as the program
// does.
func startTestDHT(tb testing.TB, cfg dhtConfig, drop float64, maintain bool) (*dht, func()) {
	tb.Helper()
	return startTunedTestDHT(tb, cfg, drop, maintain, nil)
}

// startTunedTestDHT is startTestDHT with tune, if not nil, applied before
// the node runs.
func startTunedTestDHT(tb testing.TB, cfg dhtConfig, drop float64, maintain bool, tune func(*dht)) (*dht, func()) {
	tb.Helper()
	n, err := listenNode("127.0.0.1:0", nil)
	if err != nil {
		tb.Fatal(err)
	}
	n.drop = drop // before run: the read goroutine reads it
	d, err := newDHT(n, cfg)
	if err != nil {
		n.Close()
		tb.Fatal(err)
	}
	// Before the first RTT sample: loopback needs no 500 ms, and a lost
	// first datagram would dominate the tests' run time.
	d.timing.rtoInitial = 100 * time.Millisecond
	if tune != nil {
		tune(d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); n.run(ctx) }()
	if maintain {
		wg.Add(1)
		go func() { defer wg.Done(); d.maint.run(ctx) }()
	}
	var once sync.Once
	return d, func() { once.Do(func() { cancel(); wg.Wait() }) }
}

// newTestDHT starts a DHT (without its own loop) that stops when the test
// ends.
func newTestDHT(tb testing.TB, cfg dhtConfig, drop float64) *dht {
	tb.Helper()
	d, stop := startTestDHT(tb, cfg, drop, false)
	tb.Cleanup(stop)
	return d
}

// newTunedTestDHT is newTestDHT with tune, if not nil, applied before the
// node runs.
func newTunedTestDHT(tb testing.TB, cfg dhtConfig, drop float64, tune func(*dht)) *dht {
	tb.Helper()
	d, stop := startTunedTestDHT(tb, cfg, drop, false, tune)
	tb.Cleanup(stop)
	return d
}

// unlimited lifts d's per-source query limit (SPEC.md 3.4.1) and its
// pacing of its own queries (3.4.2), for tests and benchmarks that hammer
// one node from one socket to measure something else.
func unlimited(d *dht) {
	d.srv.limit = newSourceLimiter(1e9, 1e9)
	d.tx.pace = newSourceLimiter(1e9, 1e9)
}

func (d *dht) addr() netip.AddrPort { return d.node.LocalAddr() }

// swarmOpts says how startSwarm builds a swarm; the zero value is a quiet
// swarm whose nodes joined from the first one, one after another.
type swarmOpts struct {
	drop     float64    // fraction of datagrams every node loses in each direction
	seeds    int        // node i bootstraps from the first min(i, seeds) nodes; 0 means 1
	parallel int        // nodes after the seeds joining at once; 0 means 1
	maintain bool       // run each node's own loop (d.maint.run), which joins in the background
	owner    testing.TB // whose end stops the swarm; nil means the tb given to startSwarm
}

// swarm is a network of DHT nodes in this process.
type swarm struct {
	nodes []*dht
	stops []func()
}

// startSwarm starts size nodes on 127.0.0.1. Without o.maintain it also
// joins them (bootstrap) before it returns: the seeds one after another,
// then the rest o.parallel at a time.
func startSwarm(tb testing.TB, size int, o swarmOpts) *swarm {
	tb.Helper()
	o.seeds, o.parallel = max(o.seeds, 1), max(o.parallel, 1)
	if o.owner == nil {
		o.owner = tb
	}
	s := &swarm{}
	o.owner.Cleanup(s.close)
	for i := range size {
		d, stop := startTestDHT(tb, dhtConfig{Bootstrap: s.addrs(min(i, o.seeds))}, o.drop, o.maintain)
		s.nodes, s.stops = append(s.nodes, d), append(s.stops, stop)
	}
	if o.maintain || size < 2 {
		return s
	}
	seeds := min(o.seeds, size)
	for _, d := range s.nodes[1:seeds] {
		bootstrapRetrying(tb, d)
	}
	var mu sync.Mutex
	var errs []error
	inParallel(s.nodes[seeds:], o.parallel, func(d *dht) {
		if err := joinRetrying(d); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	})
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("%d of %d nodes did not join: %v", len(errs), size, err)
	}
	return s
}

// newSwarm starts size nodes, each joined from the first one.
func newSwarm(tb testing.TB, size int, drop float64) []*dht {
	tb.Helper()
	return startSwarm(tb, size, swarmOpts{drop: drop}).nodes
}

// testSwarm starts size nodes that run as the program's do, for the
// binaries of the end-to-end tests, and returns their -bootstrap value.
func testSwarm(t *testing.T, size int) string {
	t.Helper()
	return strings.Join(startSwarm(t, size, swarmOpts{maintain: true}).addrs(3), ",")
}

// addrs are the addresses of the first n nodes (fewer if there are fewer).
func (s *swarm) addrs(n int) []string {
	var out []string
	for _, d := range s.nodes[:min(n, len(s.nodes))] {
		out = append(out, d.addr().String())
	}
	return out
}

// stop ends node i's goroutines and closes its socket, telling nobody.
func (s *swarm) stop(i int) { s.stops[i]() }

func (s *swarm) close() {
	for i := range s.stops {
		s.stop(i)
	}
}

// joinRetrying bootstraps d; a lossy node may need a second go.
func joinRetrying(d *dht) error {
	var err error
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), swarmJoinTimeout)
		err = d.maint.bootstrap(ctx)
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%v: bootstrap: %w", d.addr(), err)
}

// bootstrapRetrying is joinRetrying that fails the test.
func bootstrapRetrying(tb testing.TB, d *dht) {
	tb.Helper()
	if err := joinRetrying(d); err != nil {
		tb.Fatal(err)
	}
}

// inParallel calls f for every node, n at a time.
func inParallel(ds []*dht, n int, f func(*dht)) {
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, d := range ds {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(d)
		}()
	}
	wg.Wait()
}
