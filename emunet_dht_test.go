// kadchat's DHT on the emulated internet (emunet_test.go): the driver that
// runs its nodes there, TestEmunet, which runs the issue 11 scenarios, and
// TestEmunetTail, which measures (iii)'s get_peers p99 on a large sample.
//
// Short by default (emuShort: 200 nodes, a few seconds of real time, in
// every `go test`; the tail pass skips); KADCHAT_EMUNET=full runs emuFull
// (1,000 nodes) and the tail pass, and KADCHAT_EMUNET_REPORT=FILE writes
// TestEmunet's report as JSON for the interop module's side-by-side
// comparison with anacrolix/dht.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// kadchatDriver is an emuDriver for kadchat's DHT: one Node and dht per
// host, with production timings, run as `run` would except that the join
// (bootstrap) happens before start returns.
type kadchatDriver struct {
	dir string // where stopped nodes save their tables

	mu    sync.Mutex
	nodes map[int]*kadchatHost
}

type kadchatHost struct {
	d      *dht
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newKadchatDriver(dir string) *kadchatDriver {
	return &kadchatDriver{dir: dir, nodes: map[int]*kadchatHost{}}
}

func (k *kadchatDriver) node(host int) *dht {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.nodes[host].d
}

func (k *kadchatDriver) start(ctx context.Context, host int, c *emuConn, id [20]byte, boot []netip.AddrPort, saved any) error {
	n := &Node{conn: c, log: slog.New(slog.DiscardHandler), now: time.Now}
	// newDHT draws its id first: make it ours.
	cfg := dhtConfig{Rand: io.MultiReader(bytes.NewReader(id[:]), rand.Reader)}
	for _, b := range boot {
		cfg.Bootstrap = append(cfg.Bootstrap, b.String())
	}
	if saved != nil {
		cfg.Dir = saved.(string)
	}
	d, err := newDHT(n, cfg)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	h := &kadchatHost{d: d, cancel: cancel}
	h.wg.Add(2)
	go func() {
		defer h.wg.Done()
		n.run(runCtx)
	}()
	k.mu.Lock()
	k.nodes[host] = h
	k.mu.Unlock()
	err = d.maint.bootstrap(ctx)
	go func() {
		defer h.wg.Done()
		maintain(runCtx, d)
	}()
	return err
}

// maintain is maintainer.run after its bootstrap: refresh every maintenance
// interval (saving is left out: stop saves).
func maintain(ctx context.Context, d *dht) {
	tick := time.NewTicker(d.timing.maintenance)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d.maint.refresh(ctx)
	}
}

func (k *kadchatDriver) stop(host int) any {
	k.mu.Lock()
	h := k.nodes[host]
	delete(k.nodes, host)
	k.mu.Unlock()
	if h == nil {
		return nil
	}
	h.cancel()
	h.d.tx.close()
	h.wg.Wait()
	dir, err := os.MkdirTemp(k.dir, "node")
	if err != nil {
		return nil
	}
	h.d.mu.Lock()
	ns := h.d.table.nodes()
	h.d.mu.Unlock()
	if saveRoutingTable(filepath.Join(dir, routingFile), ns) != nil {
		return nil
	}
	return dir
}

// announce returns no peers: the scenarios time announces and lookups
// apart (kadchat's announce does hand back what its lookup found, 5.2).
func (k *kadchatDriver) announce(ctx context.Context, host int, ih [20]byte) ([]netip.AddrPort, error) {
	_, _, err := k.node(host).announce(ctx, nodeID(ih), 0, true)
	return nil, err
}

func (k *kadchatDriver) getPeers(ctx context.Context, host int, ih [20]byte, _ netip.AddrPort) ([]netip.AddrPort, error) {
	return k.node(host).getPeers(ctx, nodeID(ih))
}

func (k *kadchatDriver) holds(host int, ih [20]byte, peer netip.AddrPort) bool {
	return slices.Contains(k.node(host).peers.peers(nodeID(ih), maxLookupPeers), peer)
}

// emunetEnv selects the full run; emunetReportEnv names a JSON report file.
const (
	emunetEnv       = "KADCHAT_EMUNET"
	emunetReportEnv = "KADCHAT_EMUNET_REPORT"
)

func TestEmunet(t *testing.T) {
	cfg := emuShort
	if os.Getenv(emunetEnv) == "full" {
		cfg = emuFull
	}
	dir := t.TempDir()
	start := time.Now()
	var datagrams int64
	defer func() {
		el := time.Since(start)
		t.Logf("real time: %v for %d datagrams (%.0f/s)", el.Round(time.Millisecond), datagrams, float64(datagrams)/el.Seconds())
	}()
	synctest.Test(t, func(t *testing.T) {
		rep, err := runEmunet(context.Background(), "kadchat", cfg, func() emuDriver { return newKadchatDriver(dir) })
		if rep != nil {
			datagrams = rep.Datagrams
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("\n%v", rep)
		checkEmunetTargets(t, rep, cfg == emuFull)
		if f := os.Getenv(emunetReportEnv); f != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Error(err)
			}
		}
	})
}

// emuSwarm starts n kadchat nodes on a clean emulated internet, each
// joining through the first; the caller runs inside a synctest bubble and
// must call stop.
func emuSwarm(t *testing.T, n int) (*emuNet, *kadchatDriver, func()) {
	net := newEmuNet(n, 7)
	drv := newKadchatDriver(t.TempDir())
	for i := range n {
		c, err := net.listen(i)
		if err != nil {
			t.Fatal(err)
		}
		var boot []netip.AddrPort
		if i > 0 {
			boot = []netip.AddrPort{net.addr(0)}
		}
		if err := drv.start(context.Background(), i, c, emuID(7, "node", i), boot, nil); err != nil {
			t.Fatal(err)
		}
	}
	return net, drv, func() {
		for i := range n {
			drv.stop(i)
		}
		time.Sleep(emuSettle)
	}
}

// getPeers ends once peersQuorum nodes handed over peers other than us,
// before the lookup would have converged on the k closest; our own
// announcement does not count (two contacts announce one infohash, and
// each must find the other).
func TestGetPeersStopsAtQuorum(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, drv, stop := emuSwarm(t, 40)
		defer stop()
		ih := nodeID(emuID(7, "quorum", 0))
		ctx := context.Background()
		d := drv.node(2)
		if _, err := drv.announce(ctx, 2, ih); err != nil {
			t.Fatal(err)
		}
		own, err := d.lookup(ctx, lookupOpts{target: ih, method: methodGetPeers, stopOnPeers: true})
		if err != nil || own.Stats.Responded < bucketSize {
			t.Fatalf("with only our own announcement: %d answers, %v; want the whole lookup", own.Stats.Responded, err)
		}
		if _, err := drv.announce(ctx, 1, ih); err != nil {
			t.Fatal(err)
		}
		r, err := d.lookup(ctx, lookupOpts{target: ih, method: methodGetPeers, stopOnPeers: true})
		if err != nil || !slices.Contains(r.Peers, net.addr(1)) {
			t.Fatalf("lookup = %v, %v; want %v among the peers", r.Peers, err, net.addr(1))
		}
		full, err := d.lookup(ctx, lookupOpts{target: ih, method: methodGetPeers})
		if err != nil {
			t.Fatal(err)
		}
		if r.Stats.Responded >= full.Stats.Responded || r.Stats.Duration >= full.Stats.Duration {
			t.Errorf("stopping at the quorum took %d answers in %v, the full lookup %d in %v",
				r.Stats.Responded, r.Stats.Duration, full.Stats.Responded, full.Stats.Duration)
		}
	})
}

// checkEmunetTargets checks issue 11's targets: success of at least 99.5%
// where 30% of the nodes are dead, get_peers in under 3 round trips (the
// median one to the nodes it asked) at the median, at most 40 queries per
// lookup, retransmissions included, and a rendezvous in under 1 s at the
// median. The short run, with a tenth of the samples, gets some slack. A
// p99 over 2 s is only logged: over 400 lookups it is the 5th slowest, which
// the few hosts whose own access link adds half a second each way decide
// (every round trip of theirs takes a second, and a lookup two); without
// them (P99Near) the full run's p99 must be under 2 s, and TestEmunetTail
// checks the p99 of all lookups on a sample large enough to tell.
func checkEmunetTargets(t *testing.T, rep *emuReport, full bool) {
	minSuccess, maxRTTs, maxRendezvous := 95.0, 3.5, 1500*time.Millisecond
	if full {
		minSuccess, maxRTTs, maxRendezvous = 99.5, 3.0, time.Second
	}
	for _, s := range rep.Scenarios {
		for _, op := range []struct {
			name string
			st   emuOpStats
		}{{"get_peers", s.GetPeers}, {"announce", s.Announce}, {"rendezvous", s.Rendezvous}} {
			if op.st.Success() < minSuccess {
				t.Errorf("%s %s: success %.1f%%, want at least %.1f%%", s.Name, op.name, op.st.Success(), minSuccess)
			}
			if op.name != "rendezvous" && op.st.Lookup > 40 {
				t.Errorf("%s %s: %.1f get_peers queries per lookup, want at most 40", s.Name, op.name, op.st.Lookup)
			}
		}
		if s.GetPeers.RTTs50 >= maxRTTs {
			t.Errorf("%s get_peers: %.1f round trips at the median, want under %.1f", s.Name, s.GetPeers.RTTs50, maxRTTs)
		}
		if s.GetPeers.P99 >= 2*time.Second {
			t.Logf("%s get_peers: p99 %v (%.1f round trips), %v without the %d from far queriers",
				s.Name, s.GetPeers.P99, s.GetPeers.RTTs99, s.GetPeers.P99Near, s.GetPeers.Far)
		}
		if full && s.GetPeers.P99Near >= 2*time.Second {
			t.Errorf("%s get_peers: p99 %v from queriers whose median round trip is under %v, want under 2 s",
				s.Name, s.GetPeers.P99Near, emuFarRTT)
		}
	}
	if s := rep.scenario("(ii) dead"); s != nil && s.Rendezvous.P50 >= maxRendezvous {
		t.Errorf("(ii) rendezvous: p50 %v, want under %v", s.Rendezvous.P50, maxRendezvous)
	}
}

// A second lookup of a target starts from where the first ended: it asks
// the nodes near the target in its first round (the rendezvous looks one
// infohash up again and again).
func TestLookupStartsWhereTheLastEnded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, drv, stop := emuSwarm(t, 60)
		defer stop()
		d := drv.node(3)
		target := nodeID(emuID(7, "again", 0))
		ctx := context.Background()
		first, err := d.lookup(ctx, lookupOpts{target: target, method: methodFindNode})
		if err != nil {
			t.Fatal(err)
		}
		second, err := d.lookup(ctx, lookupOpts{target: target, method: methodFindNode})
		if err != nil {
			t.Fatal(err)
		}
		if first.Stats.Rounds < 2 || second.Stats.Rounds != 1 || second.Stats.Duration >= first.Stats.Duration {
			t.Errorf("first lookup %+v, second %+v: want the second in one round", first.Stats, second.Stats)
		}
	})
}

// The tail pass of the full run. Issue 11's target of a get_peers p99
// under 2 s in (iii) is about lookups from any querier, and TestEmunet's
// p99 over 400 lookups is their 5th slowest, which a handful of lookups
// from the hosts behind a slow access link decide: the share of such hosts
// differs from one topology to the next (seed 11's has 7 of its 700 live
// hosts with a median round trip over 1 s, the model 0.4%), and every run
// draws the same queriers, since the seed is fixed. So this pass runs (iii)
// alone, kadchat alone, with emuTailSamples announce-then-get_peers pairs
// drawn as TestEmunet draws them (uniformly over the running hosts), on
// each topology of emuTailSeeds (KADCHAT_EMUNET_SEEDS=11,12 picks others),
// and reports the p99 of all the lookups with a bootstrap interval that
// resamples topologies, not lookups: lookups on one topology share its
// slow hosts.
const (
	emuTailSamples    = 4000
	emunetSeedsEnv    = "KADCHAT_EMUNET_SEEDS"
	emuTailSlowRTT    = 500 * time.Millisecond // a querier this slow or slower, for the log
	emuTailZ95        = 1.96
	emuTailResamples  = 2000
	emuTailTarget     = 2 * time.Second
	emuTailMinSuccess = 99.5
)

var emuTailSeeds = []uint64{11, 12, 13, 14, 15, 16, 17, 18, 19, 20}

func TestEmunetTail(t *testing.T) {
	if os.Getenv(emunetEnv) != "full" {
		t.Skipf("the tail pass runs with %s=full", emunetEnv)
	}
	seeds := emuTailSeeds
	if s := os.Getenv(emunetSeedsEnv); s != "" {
		seeds = nil
		for _, f := range strings.Split(s, ",") {
			v, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", emunetSeedsEnv, err)
			}
			seeds = append(seeds, v)
		}
	}
	var groups [][]time.Duration
	for _, seed := range seeds {
		durs := emuTailRun(t, seed)
		if durs == nil {
			return
		}
		groups = append(groups, durs)
	}
	lo, p99, hi := emuClusterBootstrap(groups, 99, emuTailResamples)
	ps := make([]time.Duration, len(groups))
	n := 0
	for i, g := range groups {
		ps[i], n = emuPercentile(g, 99), n+len(g)
	}
	t.Logf("(iii) get_peers over %d topologies: p99 %v of %d lookups (95%% bootstrap interval over topologies %v to %v); p99 of one topology %v to %v",
		len(groups), p99, n, lo, hi, slices.Min(ps), slices.Max(ps))
	if p99 >= emuTailTarget {
		t.Errorf("(iii) get_peers: p99 %v over %d lookups, want under %v", p99, n, emuTailTarget)
	}
}

// emuTailRun runs (iii) on seed's topology and returns the lookups' times,
// sorted (nil if it failed).
func emuTailRun(t *testing.T, seed uint64) []time.Duration {
	cfg := emuFull
	cfg.Seed, cfg.Samples, cfg.Rendezvous = seed, emuTailSamples, 0
	start := time.Now()
	var gp []emuSample
	ok := t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			dir := t.TempDir()
			rep, err := runEmunetSteps(context.Background(), "kadchat", cfg,
				func() emuDriver { return newKadchatDriver(dir) }, emuDeadAndLossy)
			if err != nil {
				t.Fatal(err)
			}
			s := rep.Scenarios[0]
			gp = s.gp
			t.Logf("topology %s: %v", rep.Fingerprint, s.GetPeers)
			if s.GetPeers.Success() < emuTailMinSuccess {
				t.Errorf("get_peers success %.2f%%, want at least %.1f%%", s.GetPeers.Success(), emuTailMinSuccess)
			}
		})
		lo, p99, hi := emuPercentileCI(emuTailTimes(gp), 99, emuTailZ95)
		t.Logf("get_peers p99 %v (95%% interval %v to %v); %s; real time %v",
			p99, lo, hi, emuTailSlow(gp, p99), time.Since(start).Round(time.Second))
	})
	if !ok {
		return nil
	}
	return emuTailTimes(gp)
}

// emuTailTimes is each lookup's time, sorted.
func emuTailTimes(gp []emuSample) []time.Duration {
	var durs []time.Duration
	for _, s := range gp {
		durs = append(durs, s.took)
	}
	slices.Sort(durs)
	return durs
}

// emuTailSlow says how many of the lookups at or over the p99 came from a
// querier whose median round trip was emuTailSlowRTT or more.
func emuTailSlow(gp []emuSample, p99 time.Duration) string {
	var tail, slow, slowAll int
	for _, s := range gp {
		if s.rtt >= emuTailSlowRTT {
			slowAll++
		}
		if s.took >= p99 {
			tail++
			if s.rtt >= emuTailSlowRTT {
				slow++
			}
		}
	}
	return fmt.Sprintf("%d of the %d at or over it, and %d of all, from queriers whose median round trip is %v or more",
		slow, tail, slowAll, emuTailSlowRTT)
}

// emuPercentileCI is the p-th percentile of sorted (nearest rank) with a
// distribution-free confidence interval: the order statistics whose ranks
// lie z binomial standard deviations either side of n·p/100 (z = 1.96 for
// 95%), as for any quantile of an i.i.d. sample.
func emuPercentileCI(sorted []time.Duration, p int, z float64) (lo, q, hi time.Duration) {
	n := len(sorted)
	if n == 0 {
		return 0, 0, 0
	}
	f := float64(p) / 100
	sd := math.Sqrt(float64(n) * f * (1 - f))
	at := func(rank float64) time.Duration { // 1-based rank, clamped
		return sorted[max(0, min(int(math.Ceil(rank))-1, n-1))]
	}
	return at(float64(n)*f - z*sd), emuPercentile(sorted, p), at(float64(n)*f + z*sd)
}

// emuClusterBootstrap is the p-th percentile of all the groups' samples
// together, with the 2.5th and 97.5th percentiles of that figure over
// resamples that draw whole groups with replacement (a cluster bootstrap:
// samples within a group are not independent). Each group is sorted.
func emuClusterBootstrap(groups [][]time.Duration, p, resamples int) (lo, q, hi time.Duration) {
	var all []time.Duration
	every := make([]int, len(groups))
	for i, g := range groups {
		all, every[i] = append(all, g...), i
	}
	slices.Sort(all)
	rng := mrand.New(mrand.NewPCG(1, 2))
	qs := make([]time.Duration, resamples)
	pick := make([]int, len(groups))
	for r := range qs {
		for i := range pick {
			pick[i] = rng.IntN(len(groups))
		}
		qs[r] = emuPooledPercentile(all, groups, pick, p)
	}
	slices.Sort(qs)
	return qs[resamples*25/1000], emuPooledPercentile(all, groups, every, p), qs[resamples*975/1000]
}

// emuPooledPercentile is the p-th percentile (nearest rank, as
// emuPercentile) of the groups picked, each as often as it is picked; all
// is every group's samples, sorted.
func emuPooledPercentile(all []time.Duration, groups [][]time.Duration, pick []int, p int) time.Duration {
	n := 0
	for _, g := range pick {
		n += len(groups[g])
	}
	rank := (n*p + 99) / 100
	atMost := func(v time.Duration) int {
		c := 0
		for _, g := range pick {
			c += sort.Search(len(groups[g]), func(j int) bool { return groups[g][j] > v })
		}
		return c
	}
	i := sort.Search(len(all), func(i int) bool { return atMost(all[i]) >= rank })
	return all[min(i, len(all)-1)]
}

// The percentile helpers of the tail pass agree with emuPercentile.
func TestEmunetTailPercentiles(t *testing.T) {
	a := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	b := []time.Duration{5, 15, 25, 35}
	all := slices.Sorted(slices.Values(append(slices.Clone(a), b...)))
	for _, p := range []int{1, 50, 90, 99} {
		if got, want := emuPooledPercentile(all, [][]time.Duration{a, b}, []int{0, 1}, p), emuPercentile(all, p); got != want {
			t.Errorf("emuPooledPercentile(a+b, %d) = %v, want %v", p, got, want)
		}
		twice := slices.Sorted(slices.Values(append(slices.Clone(b), b...)))
		if got, want := emuPooledPercentile(all, [][]time.Duration{a, b}, []int{1, 1}, p), emuPercentile(twice, p); got != want {
			t.Errorf("emuPooledPercentile(b+b, %d) = %v, want %v", p, got, want)
		}
	}
	if lo, q, hi := emuPercentileCI(a, 50, emuTailZ95); lo > q || q > hi || q != emuPercentile(a, 50) {
		t.Errorf("emuPercentileCI(1..10, 50) = %v, %v, %v", lo, q, hi)
	}
	if lo, q, hi := emuClusterBootstrap([][]time.Duration{a, a}, 50, 100); lo != q || q != hi {
		t.Errorf("emuClusterBootstrap of equal groups = %v, %v, %v, want one value", lo, q, hi)
	}
}
