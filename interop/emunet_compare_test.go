// kadchat and anacrolix/dht on the same emulated internet (emunet_test.go,
// issue 11): the anacrolix driver, and TestEmunetCompare, which runs the
// scenarios for both on the same topology and prints them side by side.
//
// Flow: kadchat's side runs in the main module (TestEmunet there, as a
// `go test` subprocess, since package main cannot be imported) and hands
// back its report as JSON; anacrolix's side runs here, in a synctest bubble,
// meanwhile. Both reports must carry the same topology fingerprint. The
// short run (200 nodes) is part of `go test ./...`; KADCHAT_EMUNET=full runs
// 1,000 nodes. KADCHAT_EMUNET_KADCHAT=FILE takes kadchat's report from FILE
// instead of running it (.ci/run hands over the one its `go test -race`
// wrote: virtual time makes -race change no figure), and
// KADCHAT_EMUNET_COMPARE=FILE writes the comparison there.
package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/anacrolix/dht/v2"
	"github.com/anacrolix/dht/v2/krpc"
	"golang.org/x/time/rate"
)

// The environment variables of the comparison; the first two are the main
// module's TestEmunet's.
const (
	emunetEnv        = "KADCHAT_EMUNET"
	emunetReportEnv  = "KADCHAT_EMUNET_REPORT"
	emunetKadchatEnv = "KADCHAT_EMUNET_KADCHAT" // take kadchat's report from this file
	emunetCompareEnv = "KADCHAT_EMUNET_COMPARE" // write the comparison to this file
)

// anacrolixDriver is an emuDriver for anacrolix/dht as shipped: default
// timeouts (one transmission, 2 s), alpha 3, k 8, its own table upkeep
// (TableMaintainer). Only the global send limiter is replaced (it is shared
// by every server of the process) and BEP 42 is off (private addresses).
type anacrolixDriver struct {
	mu    sync.Mutex
	nodes map[int]*anacrolixHost
}

type anacrolixHost struct {
	s     *dht.Server
	peers *addrPeerStore
	done  chan struct{} // TableMaintainer returned
}

func newAnacrolixDriver() *anacrolixDriver {
	return &anacrolixDriver{nodes: map[int]*anacrolixHost{}}
}

func (a *anacrolixDriver) node(host int) *anacrolixHost {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nodes[host]
}

func (a *anacrolixDriver) start(ctx context.Context, host int, c *emuConn, id [20]byte, boot []netip.AddrPort, saved any) error {
	cfg := dht.NewDefaultServerConfig()
	cfg.Conn, cfg.NodeId, cfg.NoSecurity = c, id, true
	h := &anacrolixHost{peers: &addrPeerStore{}, done: make(chan struct{})}
	cfg.PeerStore = h.peers
	cfg.StartingNodes = func() ([]dht.Addr, error) {
		addrs := make([]dht.Addr, len(boot))
		for i, b := range boot {
			addrs[i] = dht.NewAddr(net.UDPAddrFromAddrPort(b))
		}
		return addrs, nil
	}
	cfg.SendLimiter = rate.NewLimiter(rate.Inf, 0)
	cfg.Logger = quietLogger
	s, err := dht.NewServer(cfg)
	if err != nil {
		return err
	}
	h.s = s
	a.mu.Lock()
	a.nodes[host] = h
	a.mu.Unlock()
	if saved != nil {
		for _, ni := range saved.([]krpc.NodeInfo) {
			s.AddNode(ni)
		}
	}
	first := saved == nil && len(boot) == 0
	if !first {
		_, err = s.BootstrapContext(ctx)
	}
	go func() {
		defer close(h.done)
		// Its Bootstrap leaks a traversal goroutine when the table is
		// empty, as the first node's is until someone joins through it.
		for first && s.NumNodes() == 0 {
			time.Sleep(time.Second)
		}
		s.TableMaintainer()
	}()
	return err
}

func (a *anacrolixDriver) stop(host int) any {
	a.mu.Lock()
	h := a.nodes[host]
	delete(a.nodes, host)
	a.mu.Unlock()
	if h == nil {
		return nil
	}
	saved := h.s.Nodes()
	h.s.Close()
	<-h.done
	return saved
}

// announce runs anacrolix's announce: a get_peers traversal, whose peers
// it returns, then announce_peer (implied port) to the closest nodes that
// gave a token.
func (a *anacrolixDriver) announce(ctx context.Context, host int, ih [20]byte) ([]netip.AddrPort, error) {
	an, err := a.node(host).s.Announce(ih, 0, true)
	if err != nil {
		return nil, err
	}
	return collectPeers(ctx, an, netip.AddrPort{})
}

// getPeers runs a get_peers traversal and returns as soon as want arrives:
// anacrolix streams peers as nodes hand them over, so its caller has them
// then, while kadchat's getPeers returns at the lookup's end.
func (a *anacrolixDriver) getPeers(ctx context.Context, host int, ih [20]byte, want netip.AddrPort) ([]netip.AddrPort, error) {
	an, err := a.node(host).s.AnnounceTraversal(ih)
	if err != nil {
		return nil, err
	}
	return collectPeers(ctx, an, want)
}

// collectPeers gathers the peers a traversal hands over until it ends,
// ctx ends, or want (if valid) arrives; then it closes the traversal.
func collectPeers(ctx context.Context, an *dht.Announce, want netip.AddrPort) ([]netip.AddrPort, error) {
	defer an.Close()
	var peers []netip.AddrPort
	for {
		select {
		case v, ok := <-an.Peers:
			if !ok {
				return peers, nil
			}
			for _, p := range v.Peers {
				ap := p.ToNodeAddrPort().AddrPort
				peers = append(peers, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
				if want.IsValid() && peers[len(peers)-1] == want {
					go drainPeers(an)
					return peers, nil
				}
			}
		case <-ctx.Done():
			go drainPeers(an)
			return peers, ctx.Err()
		}
	}
}

// drainPeers takes what a closed traversal's queries still hand over:
// they block on the channel until someone does.
func drainPeers(an *dht.Announce) {
	for range an.Peers {
	}
}

func (a *anacrolixDriver) holds(host int, ih [20]byte, peer netip.AddrPort) bool {
	return a.node(host).peers.has(ih, peer)
}

// kadchatEmunetReport runs the main module's TestEmunet and returns its
// report, or reads the one named by KADCHAT_EMUNET_KADCHAT if it exists.
func kadchatEmunetReport(full bool) (*emuReport, error) {
	if f := os.Getenv(emunetKadchatEnv); f != "" {
		if _, err := os.Stat(f); err == nil {
			return readEmuReport(f)
		}
	}
	dir, err := tmpRoot()
	if err != nil {
		return nil, err
	}
	f := filepath.Join(dir, "kadchat-emunet.json")
	cmd := exec.Command("go", "test", "-count=1", "-run", "^TestEmunet$", ".")
	cmd.Dir = buildRoot
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false", emunetReportEnv+"="+f, emunetEnv+"=")
	if full {
		cmd.Env = append(cmd.Env, emunetEnv+"=full")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("kadchat's TestEmunet: %v\n%s", err, out)
	}
	return readEmuReport(f)
}

func readEmuReport(f string) (*emuReport, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, err
	}
	var r emuReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	return &r, nil
}

func TestEmunetCompare(t *testing.T) {
	full := os.Getenv(emunetEnv) == "full"
	cfg := emuShort
	if full {
		cfg = emuFull
	}
	var kad *emuReport
	var kadErr error
	var kadWall time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		start := time.Now()
		kad, kadErr = kadchatEmunetReport(full)
		kadWall = time.Since(start)
	}()
	start := time.Now()
	var ana *emuReport
	synctest.Test(t, func(t *testing.T) {
		var err error
		ana, err = runEmunet(context.Background(), "anacrolix", cfg, func() emuDriver { return newAnacrolixDriver() })
		if err != nil {
			t.Fatal(err)
		}
	})
	anaWall := time.Since(start)
	<-done
	if kadErr != nil {
		t.Fatal(kadErr)
	}
	if kad.Config != ana.Config || kad.Fingerprint != ana.Fingerprint {
		t.Fatalf("not the same network: kadchat %+v %s, anacrolix %+v %s", kad.Config, kad.Fingerprint, ana.Config, ana.Fingerprint)
	}
	text := fmt.Sprintf("real time: kadchat %v, anacrolix %v\n%v%v\n%s", kadWall.Round(time.Second), anaWall.Round(time.Second),
		kad, ana, compareEmu(kad, ana))
	t.Log(text)
	if f := os.Getenv(emunetCompareEnv); f != "" {
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Error(err)
		}
	}
	if full { // the short run's 60 samples leave too much to chance
		for _, ks := range kad.Scenarios {
			as := ana.scenario(ks.Name)
			if as == nil {
				t.Errorf("anacrolix ran no %s", ks.Name)
				continue
			}
			for _, op := range []struct {
				name string
				k, a emuOpStats
			}{{"get_peers", ks.GetPeers, as.GetPeers}, {"announce", ks.Announce, as.Announce}, {"rendezvous", ks.Rendezvous, as.Rendezvous}} {
				if op.k.Success() < op.a.Success() {
					t.Errorf("%s %s: kadchat's success %.1f%% below anacrolix's %.1f%%", ks.Name, op.name, op.k.Success(), op.a.Success())
				}
			}
		}
	}
}

// compareEmu prints kadchat's figures as ratios to anacrolix's.
func compareEmu(kad, ana *emuReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kadchat / anacrolix (success in points, times and messages as ratios)\n")
	for _, ks := range kad.Scenarios {
		as := ana.scenario(ks.Name)
		if as == nil {
			continue
		}
		for _, op := range []struct {
			name string
			k, a emuOpStats
		}{{"get_peers", ks.GetPeers, as.GetPeers}, {"announce", ks.Announce, as.Announce}, {"rendezvous", ks.Rendezvous, as.Rendezvous}} {
			fmt.Fprintf(&b, "  %-12s %-10s success %+6.1f  p50 %5.2f  p99 %5.2f  msgs %5.2f\n", ks.Name, op.name,
				op.k.Success()-op.a.Success(), ratio(op.k.P50, op.a.P50), ratio(op.k.P99, op.a.P99), op.k.Msgs/max(op.a.Msgs, 1e-9))
		}
	}
	return b.String()
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(max(b, 1)) }

// The emulator is copied word for word from the main module's: a fix to
// one must reach the other.
func TestEmunetCopiesAgree(t *testing.T) {
	ours, err := os.ReadFile("emunet_test.go")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := os.ReadFile(filepath.Join(buildRoot, "emunet_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	theirs = bytes.Replace(theirs, []byte("\npackage main\n"), []byte("\npackage interop\n"), 1)
	if !bytes.Equal(ours, theirs) {
		t.Fatal("interop/emunet_test.go differs from ../emunet_test.go (apart from the package clause): copy it over")
	}
}
