// The anacrolix/dht side: servers on loopback inside the test process, and
// the few calls the tests make through them.
//
// Flow: newAnacrolix opens a socket on 127.0.0.1:0 and starts a dht.Server
// whose starting nodes are the given addresses, with a peer store that keeps
// each announced peer under its full ip:port (addrPeerStore) and without the
// shared global send limiter. The helpers below wrap one traversal each
// (bootstrap, announce, get_peers, BEP 44 get and put) in a bounded context.
package interop

import (
	"context"
	"crypto/ed25519"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/anacrolix/dht/v2"
	"github.com/anacrolix/dht/v2/bep44"
	"github.com/anacrolix/dht/v2/exts/getput"
	"github.com/anacrolix/dht/v2/krpc"
	peer_store "github.com/anacrolix/dht/v2/peer-store"
	"github.com/anacrolix/log"
	"github.com/anacrolix/torrent/bencode"
	"golang.org/x/time/rate"
)

const (
	// anacrolixResend is its retransmission delay: it also bounds how long a
	// traversal waits for a silent node, so keep it short on loopback.
	anacrolixResend = 500 * time.Millisecond
	// traversalTimeout bounds one whole anacrolix traversal.
	traversalTimeout = 10 * time.Second
	// peerStoreWait bounds waiting for anacrolix's asynchronous AddPeer.
	peerStoreWait = 2 * time.Second
	peerStorePoll = 10 * time.Millisecond
)

// anacrolixNode is one anacrolix/dht server and what the tests inspect of it.
type anacrolixNode struct {
	*dht.Server
	addr    netip.AddrPort
	id      string // 40 hex digits
	peers   *addrPeerStore
	items   *bep44.Memory
	queries *queryLog
}

// newAnacrolix starts an anacrolix/dht server on loopback that bootstraps
// from starting. NoSecurity: loopback ids are exempt from BEP 42 anyway, and
// its own id must not be derived from 127.0.0.1.
func newAnacrolix(t testing.TB, starting ...netip.AddrPort) *anacrolixNode {
	t.Helper()
	return newAnacrolixID(t, krpc.RandomNodeID(), starting...)
}

// newAnacrolixID is newAnacrolix with a chosen node id.
func newAnacrolixID(t testing.TB, id krpc.ID, starting ...netip.AddrPort) *anacrolixNode {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := dht.NewDefaultServerConfig()
	cfg.Conn = conn
	cfg.NodeId = id
	cfg.NoSecurity = true
	a := &anacrolixNode{peers: &addrPeerStore{}, items: bep44.NewMemory(), queries: &queryLog{}}
	cfg.PeerStore, cfg.Store, cfg.OnQuery = a.peers, a.items, a.queries.record
	cfg.StartingNodes = func() ([]dht.Addr, error) {
		addrs := make([]dht.Addr, len(starting))
		for i, a := range starting {
			addrs[i] = dht.NewAddr(net.UDPAddrFromAddrPort(a))
		}
		return addrs, nil
	}
	cfg.QueryResendDelay = func() time.Duration { return anacrolixResend }
	// Its default limiter is a package global shared by every server.
	cfg.SendLimiter = rate.NewLimiter(rate.Inf, 0)
	cfg.Logger = quietLogger
	s, err := dht.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	a.Server, a.addr = s, s.Addr().(*net.UDPAddr).AddrPort()
	a.id = hex.EncodeToString(id[:])
	return a
}

// queryLog records the queries a server received, to check what went over
// the wire when the server's reaction is invisible (e.g. a dropped put).
type queryLog struct {
	mu sync.Mutex
	qs []receivedQuery
}

type receivedQuery struct {
	from   netip.AddrPort
	method string
	args   krpc.MsgArgs
}

// record is a ServerConfig.OnQuery hook; it never stops the query.
func (l *queryLog) record(m *krpc.Msg, from net.Addr) bool {
	q := receivedQuery{method: m.Q}
	if ua, ok := from.(*net.UDPAddr); ok {
		q.from = ua.AddrPort()
		q.from = netip.AddrPortFrom(q.from.Addr().Unmap(), q.from.Port())
	}
	if m.A != nil {
		q.args = *m.A
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.qs = append(l.qs, q)
	return true
}

// find returns the queries of method received from from.
func (l *queryLog) find(method string, from netip.AddrPort) []receivedQuery {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []receivedQuery
	for _, q := range l.qs {
		if q.method == method && q.from == from {
			out = append(out, q)
		}
	}
	return out
}

// addrPeerStore is a peer_store.Interface keyed by the full ip:port.
// anacrolix's InMemory store keys peers by IP alone, so two peers behind one
// IP (every node of a loopback test) overwrite each other and get_peers
// hands back the last port announced for that IP.
type addrPeerStore struct {
	mu    sync.Mutex
	peers map[peer_store.InfoHash]map[netip.AddrPort]struct{}
}

func (s *addrPeerStore) AddPeer(ih peer_store.InfoHash, na krpc.NodeAddr) {
	ip, ok := netip.AddrFromSlice(na.IP)
	if !ok || na.Port <= 0 || na.Port > 0xffff {
		return
	}
	ap := netip.AddrPortFrom(ip.Unmap(), uint16(na.Port))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peers == nil {
		s.peers = make(map[peer_store.InfoHash]map[netip.AddrPort]struct{})
	}
	if s.peers[ih] == nil {
		s.peers[ih] = make(map[netip.AddrPort]struct{})
	}
	s.peers[ih][ap] = struct{}{}
}

func (s *addrPeerStore) GetPeers(ih peer_store.InfoHash) []krpc.NodeAddr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []krpc.NodeAddr
	for ap := range s.peers[ih] {
		out = append(out, krpc.NodeAddr{IP: ap.Addr().AsSlice(), Port: int(ap.Port())})
	}
	return out
}

// has reports whether peer was announced for ih.
func (s *addrPeerStore) has(ih [20]byte, peer netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.peers[ih][peer]
	return ok
}

// waitFor reports whether peer gets announced for ih within peerStoreWait:
// anacrolix adds a peer on its own goroutine after answering announce_peer.
func (s *addrPeerStore) waitFor(ih [20]byte, peer netip.AddrPort) bool {
	deadline := time.Now().Add(peerStoreWait)
	for !s.has(ih, peer) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(peerStorePoll)
	}
	return true
}

// quietLogger keeps anacrolix's expected complaints (e.g. a refused put)
// out of the test output; the tests check outcomes themselves.
var quietLogger = log.Default.FilterLevel(log.Critical)

// traversalContext bounds one traversal and ends with the test. getput logs
// through the context's logger, so it carries the quiet one.
func traversalContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(log.ContextWithLogger(context.Background(), quietLogger), traversalTimeout)
	t.Cleanup(cancel)
	return ctx
}

// anacrolixBootstrap fills s's table from its starting nodes.
func anacrolixBootstrap(t testing.TB, s *anacrolixNode) {
	t.Helper()
	if _, err := s.BootstrapContext(traversalContext(t)); err != nil {
		t.Fatalf("anacrolix bootstrap: %v", err)
	}
}

// anacrolixPing pings to; anacrolix hands out in find_node replies only the
// nodes that have answered it, so this makes to one of those.
func anacrolixPing(t testing.TB, s *anacrolixNode, to netip.AddrPort) {
	t.Helper()
	if err := s.Ping(net.UDPAddrFromAddrPort(to)).ToError(); err != nil {
		t.Fatalf("anacrolix ping %v: %v", to, err)
	}
}

// anacrolixGetPeers runs a get_peers traversal from s, announcing port
// (when non-zero) to the closest nodes at its end, and returns the peers
// every node handed back.
func anacrolixGetPeers(t testing.TB, s *anacrolixNode, ih [20]byte, port int) []netip.AddrPort {
	t.Helper()
	a, err := s.Announce(ih, port, false)
	if err != nil {
		t.Fatalf("anacrolix announce: %v", err)
	}
	defer a.Close()
	ctx := traversalContext(t)
	var peers []netip.AddrPort
	for {
		select {
		case v, ok := <-a.Peers:
			if !ok {
				return peers
			}
			for _, p := range v.Peers {
				peers = append(peers, p.ToNodeAddrPort().AddrPort)
			}
		case <-ctx.Done():
			t.Fatalf("anacrolix get_peers %x: %v", ih, ctx.Err())
		}
	}
}

// anacrolixPut stores an item through a get traversal then puts to the
// closest nodes that gave a token. getput.Put logs and swallows each node's
// error, so callers check the result on the receiving side.
func anacrolixPut(t testing.TB, s *anacrolixNode, put bep44.Put) {
	t.Helper()
	_, err := getput.Put(traversalContext(t), put.Target(), s.Server, put.Salt,
		func(int64) bep44.Put { return put })
	if err != nil {
		t.Fatalf("anacrolix put %x: %v", put.Target(), err)
	}
}

// anacrolixGet looks target up; ok is false when no node had it.
func anacrolixGet(t testing.TB, s *anacrolixNode, target [20]byte) (getput.GetResult, bool) {
	t.Helper()
	res, _, err := getput.Get(traversalContext(t), target, s.Server, nil, nil)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("anacrolix get %x: %v", target, err)
		}
		return res, false
	}
	return res, true
}

// immutablePut is the BEP 44 immutable item whose value is the bencoded
// string text, as `/dht put text` stores it.
func immutablePut(text string) bep44.Put {
	return bep44.Put{V: text}
}

// mutablePut is the signed BEP 44 mutable item (no salt) that
// `/dht mput <seed> <seq> <text>` stores.
func mutablePut(priv ed25519.PrivateKey, seq int64, text string) bep44.Put {
	k := [32]byte(priv.Public().(ed25519.PublicKey))
	p := bep44.Put{V: text, K: &k, Seq: seq}
	p.Sign(priv)
	return p
}

// immutableTarget is SHA-1 of the bencoded value (BEP 44).
func immutableTarget(text string) [20]byte {
	return sha1.Sum(bencode.MustMarshal(text))
}

// rawQuery sends one hand-written KRPC query from a fresh loopback socket
// and decodes the answer, for checks that anacrolix's client API would
// phrase differently from the BEP.
func rawQuery(t testing.TB, to netip.AddrPort, q []byte) krpc.Msg {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort(q, to); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(rawQueryTimeout))
	buf := make([]byte, 2048)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no answer from %v to %q: %v", to, q, err)
	}
	var m krpc.Msg
	if err := bencode.Unmarshal(buf[:n], &m); err != nil {
		t.Fatalf("answer %q: %v", buf[:n], err)
	}
	return m
}

// rawQueryTimeout bounds waiting for one answer on loopback.
const rawQueryTimeout = 2 * time.Second

// bencodeString is "<len>:<s>".
func bencodeString(s string) string { return fmt.Sprintf("%d:%s", len(s), s) }
