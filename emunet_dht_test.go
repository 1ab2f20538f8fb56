// kadchat's DHT on the emulated internet (emunet_test.go): the driver that
// runs its nodes there, and TestEmunet, which runs the issue 11 scenarios.
//
// Short by default (emuShort: 200 nodes, a few seconds of real time, in
// every `go test`); KADCHAT_EMUNET=full runs emuFull (1,000 nodes), and
// KADCHAT_EMUNET_REPORT=FILE writes the report as JSON for the interop
// module's side-by-side comparison with anacrolix/dht.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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

// announce returns no peers: kadchat's announce hands back only how many
// nodes stored it, and its rendezvous looks the contact up apart.
func (k *kadchatDriver) announce(ctx context.Context, host int, ih [20]byte) ([]netip.AddrPort, error) {
	_, err := k.node(host).announce(ctx, nodeID(ih), 0, true)
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
// p99 over 2 s is only logged: in this model it comes from the few hosts
// whose own access link adds half a second each way, where every round
// trip takes a second and a lookup takes two; without them (P99Near) the
// full run's p99 must be under 2 s.
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
