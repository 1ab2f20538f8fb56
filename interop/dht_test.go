// DHT interop: the kadchat binary and anacrolix/dht v2.23.0 answer each
// other's queries, bootstrap from each other, and read back through one
// implementation what was stored through the other.
//
// Flow: each test builds a small loopback swarm (newSwarm: one anacrolix
// server and two kadchat processes that all know each other), acts through
// one implementation (a /dht command or an anacrolix call) and checks the
// result through the other. Where anacrolix is provably wrong, the test
// pins its observed behaviour next to a quote of the BEP it breaks, and
// never relaxes what kadchat must do.
package interop

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/dht/v2"
	"github.com/anacrolix/dht/v2/bep44"
	"github.com/anacrolix/dht/v2/int160"
	"github.com/anacrolix/dht/v2/krpc"
	"github.com/anacrolix/torrent/bencode"
)

const (
	// settleTimeout bounds waiting for routing tables to fill after start.
	settleTimeout = 15 * time.Second // a bound, not a wait: generous for a loaded CI machine
	settlePoll    = 50 * time.Millisecond
)

// swarm is one anacrolix server and two kadchat nodes that know each other:
// a lookup from any of them reaches the other two.
type swarm struct {
	a      *anacrolixNode
	k1, k2 *kadchat
}

func newSwarm(t *testing.T) swarm {
	t.Helper()
	a := newAnacrolix(t)
	k1 := startKadchat(t, a.addr)
	k2 := startKadchat(t, a.addr, k1.addr)
	k1.waitNodes(2)
	k2.waitNodes(2)
	anacrolixBootstrap(t, a)
	waitAnacrolixNodes(t, a, 2)
	return swarm{a: a, k1: k1, k2: k2}
}

// waitNodes polls `/dht status` until the routing table holds n nodes.
func (p *kadchat) waitNodes(n int) {
	p.t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		st := p.status()
		if got, err := strconv.Atoi(st.nodes); err == nil && got >= n {
			return
		}
		if time.Now().After(deadline) {
			p.fatalf("routing table still has %s nodes after %v, want %d", st.nodes, settleTimeout, n)
		}
		time.Sleep(settlePoll)
	}
}

func waitAnacrolixNodes(t *testing.T, a *anacrolixNode, n int) {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for a.NumNodes() < n {
		if time.Now().After(deadline) {
			t.Fatalf("anacrolix table has %d nodes after %v, want %d: %v", a.NumNodes(), settleTimeout, n, a.Nodes())
		}
		time.Sleep(settlePoll)
	}
}

// udp converts for anacrolix's API.
func udp(a netip.AddrPort) dht.Addr { return dht.NewAddr(net.UDPAddrFromAddrPort(a)) }

func randomID(t *testing.T) [20]byte {
	var id [20]byte
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	return id
}

// uniqueText is a value no other test stores, so targets never collide.
func uniqueText(t *testing.T, what string) string {
	id := randomID(t)
	return fmt.Sprintf("%s-%x", what, id[:6])
}

func hexID(id [20]byte) string { return hex.EncodeToString(id[:]) }

// queryContext bounds one direct anacrolix query.
func queryContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPingBothWays(t *testing.T) {
	t.Parallel()
	a := newAnacrolix(t)
	k := startKadchat(t, a.addr)

	if f := k.run("/dht ping "+a.addr.String(), "pong"); len(f) != 2 || f[1] != a.id {
		k.fatalf("/dht ping anacrolix: got %q, want pong %s", strings.Join(f, " "), a.id)
	}

	res := a.Ping(net.UDPAddrFromAddrPort(k.addr))
	if err := res.ToError(); err != nil {
		k.fatalf("anacrolix ping: %v", err)
	}
	if id := res.Reply.SenderID(); id == nil || hexID(*id) != k.id {
		k.fatalf("anacrolix ping: reply id %v, want %s", id, k.id)
	}
}

// TestKadchatBootstrapsFromAnacrolix: ours joins through theirs, learns a
// second anacrolix node from its find_node reply, and theirs can look up
// through ours.
//
// BEP 5: find_node is answered with "the K (8) closest good nodes in its own
// routing table". anacrolix v2.23 scans only the target's bucket and those
// below it (table.closestNodes), so it leaves out every good node in a higher
// bucket and may answer with no nodes at all. a2's id differs from a1's in
// the first bit, which puts a2 in a1's bucket 0, the one always scanned.
func TestKadchatBootstrapsFromAnacrolix(t *testing.T) {
	t.Parallel()
	id1, id2 := krpc.RandomNodeID(), krpc.RandomNodeID()
	id2[0] = id1[0] ^ 0x80
	a1 := newAnacrolixID(t, id1)
	a2 := newAnacrolixID(t, id2, a1.addr)
	anacrolixBootstrap(t, a2)
	anacrolixPing(t, a1, a2.addr) // so a1 hands a2 out in find_node replies
	k := startKadchat(t, a1.addr)
	k.waitNodes(2)

	nodes, _ := k.list("/dht find_node "+a2.id, "node", "done")
	if !containsNode(nodes, a2.id, a2.addr) {
		k.fatalf("/dht find_node %s: no line %q in %v", a2.id, "node "+a2.id+" "+a2.addr.String(), nodes)
	}

	// a1 has k in its table since k queried it; its find_node to k returns a2.
	res := a1.FindNode(udp(k.addr), mustInt160(t, a2.id), dht.QueryRateLimiting{})
	if err := res.ToError(); err != nil {
		k.fatalf("anacrolix find_node to kadchat: %v", err)
	}
	if !replyHasNode(res.Reply.R, a2.id, a2.addr) {
		k.fatalf("anacrolix find_node to kadchat: reply nodes %v lack %s at %s", res.Reply.R.Nodes, a2.id, a2.addr)
	}
}

// TestAnacrolixBootstrapsFromKadchat: theirs joins through ours only, its
// table then holds both kadchat nodes, and both implementations find each
// other with find_node.
func TestAnacrolixBootstrapsFromKadchat(t *testing.T) {
	t.Parallel()
	k1 := startKadchat(t)
	k2 := startKadchat(t, k1.addr)
	k1.waitNodes(1)
	k2.waitNodes(1)
	a := newAnacrolix(t, k1.addr)
	anacrolixBootstrap(t, a)
	// anacrolix hands a response to the waiting traversal before it adds
	// the responder to its table (server.go: "go t.handleResponse(d)",
	// then updateNode), so its bootstrap can return a moment before the
	// last responder is in: wait for both, bounded.
	waitAnacrolixNodes(t, a, 2)

	table := a.Nodes()
	for _, k := range []*kadchat{k1, k2} {
		if !slices.ContainsFunc(table, func(n krpc.NodeInfo) bool { return nodeIs(n, k.id, k.addr) }) {
			k.fatalf("anacrolix table after bootstrap from kadchat: %v, want %s at %s", table, k.id, k.addr)
		}
	}

	res := a.FindNode(udp(k1.addr), mustInt160(t, k2.id), dht.QueryRateLimiting{})
	if err := res.ToError(); err != nil {
		k1.fatalf("anacrolix find_node: %v", err)
	}
	if !replyHasNode(res.Reply.R, k2.id, k2.addr) {
		k1.fatalf("anacrolix find_node %s: reply nodes %v lack it", k2.id, res.Reply.R.Nodes)
	}

	// k2 reaches a through k1, which a queried while bootstrapping.
	nodes, _ := k2.list("/dht find_node "+a.id, "node", "done")
	if !containsNode(nodes, a.id, a.addr) {
		k2.fatalf("/dht find_node %s: no line for anacrolix at %s in %v", a.id, a.addr, nodes)
	}
}

func TestAnnounceKadchatGetPeersAnacrolix(t *testing.T) {
	t.Parallel()
	s := newSwarm(t)
	ih := randomID(t)
	peer := netip.MustParseAddrPort("127.0.0.1:40001")

	f := s.k1.run(fmt.Sprintf("/dht announce %x %d", ih, peer.Port()), "announced")
	if n, _ := strconv.Atoi(f[1]); n < 2 {
		s.k1.fatalf("announce: %q, want at least 2 nodes (anacrolix and the other kadchat)", strings.Join(f, " "))
	}
	// anacrolix accepted our token and stored the port we named.
	if !s.a.peers.waitFor(ih, peer) {
		t.Fatalf("anacrolix did not store %v for %x", peer, ih)
	}
	// An implied_port announce stores the port the query came from.
	s.k1.run(fmt.Sprintf("/dht announce %x", ih), "announced")
	if !s.a.peers.waitFor(ih, s.k1.addr) {
		t.Fatalf("anacrolix did not store the implied port %v for %x", s.k1.addr, ih)
	}

	// anacrolix's traversal reads the peer from kadchat nodes' get_peers replies
	// (it never asks itself).
	if got := anacrolixGetPeers(t, s.a, ih, 0); !slices.Contains(got, peer) {
		t.Fatalf("anacrolix get_peers %x = %v, want it to contain %v", ih, got, peer)
	}
}

func TestAnnounceAnacrolixGetPeersKadchat(t *testing.T) {
	t.Parallel()
	s := newSwarm(t)
	ih := randomID(t)
	const port = 40002
	// Announce returns once the announce_peer queries are answered.
	anacrolixGetPeers(t, s.a, ih, port)

	// anacrolix does not store its own announce, so the peer k1 finds comes
	// from a kadchat node that accepted anacrolix's token and announce_peer.
	peers, done := s.k1.list(fmt.Sprintf("/dht get_peers %x", ih), "peer", "done")
	want := fmt.Sprintf("127.0.0.1:%d", port)
	if !slices.ContainsFunc(peers, func(f []string) bool { return len(f) == 2 && f[1] == want }) {
		s.k1.fatalf("/dht get_peers: %v then %v, want peer %s", peers, done, want)
	}
}

// TestImmutableKadchatToAnacrolix: `/dht put` stores on the kadchat node and
// anacrolix reads it back; anacrolix itself refuses the BEP 44 put.
func TestImmutableKadchatToAnacrolix(t *testing.T) {
	t.Parallel()
	s := newSwarm(t)
	text := uniqueText(t, "immutable-from-kadchat")
	target := immutableTarget(text)

	f := s.k1.run("/dht put "+text, "stored")
	if len(f) != 4 || f[1] != hexID(target) {
		s.k1.fatalf("/dht put: %q, want stored %x <n> nodes", strings.Join(f, " "), target)
	}
	// BEP 44: an immutable put carries "token", "v" and no "seq" ("seq" is an
	// argument of mutable puts only). anacrolix v2.23 answers such a put with
	// error 203 "expected seq argument" and stores nothing, so only the other
	// kadchat node counts.
	if f[2] != "1" {
		s.k1.fatalf("/dht put: stored on %s nodes, want 1 (kadchat yes, anacrolix refuses)", f[2])
	}
	puts := s.a.queries.find("put", s.k1.addr)
	if len(puts) == 0 {
		t.Fatalf("anacrolix received no put from kadchat")
	}
	for _, q := range puts {
		if q.args.Seq != nil {
			t.Errorf("kadchat's immutable put carried seq %d; BEP 44 has none", *q.args.Seq)
		}
		if q.args.K != [32]byte{} || q.args.Sig != [64]byte{} {
			t.Errorf("kadchat's immutable put carried k or sig")
		}
	}
	if _, err := s.a.items.Get(target); !errors.Is(err, bep44.ErrItemNotFound) {
		t.Fatalf("anacrolix stored the seq-less put (err %v): its 203 fault is gone; update this test", err)
	}
	checkAnacrolixRefusesImmutablePut(t, s.a, text)

	res, ok := anacrolixGet(t, s.a, target)
	if !ok || res.Mutable || !bytes.Equal(res.V, bencode.MustMarshal(text)) {
		t.Fatalf("anacrolix get %x = %+v (found %v), want immutable %q", target, res, ok, text)
	}
}

// checkAnacrolixRefusesImmutablePut sends anacrolix the immutable put of
// BEP 44's example layout ({id, token, v}, with a token from its own get) and
// checks the answer is the fault described above: error 203.
func checkAnacrolixRefusesImmutablePut(t *testing.T, a *anacrolixNode, text string) {
	t.Helper()
	const id = "interop-test-node-id"
	target := immutableTarget(text)
	get := rawQuery(t, a.addr, fmt.Appendf(nil, "d1:ad2:id20:%s6:target20:%se1:q3:get1:t2:g11:y1:qe", id, target[:]))
	if get.R == nil || get.R.Token == nil {
		t.Fatalf("anacrolix get: %+v, want a token", get)
	}
	put := rawQuery(t, a.addr, fmt.Appendf(nil, "d1:ad2:id20:%s5:token%s1:v%se1:q3:put1:t2:p11:y1:qe",
		id, bencodeString(*get.R.Token), bencodeString(text)))
	if put.E == nil || put.E.Code != krpc.ErrorCodeProtocolError {
		t.Fatalf("anacrolix answered a BEP 44 immutable put with %+v, want its error 203", put)
	}
	t.Logf("anacrolix refuses a BEP 44 immutable put: %d %q", put.E.Code, put.E.Msg)
}

// TestImmutableAnacrolixToKadchat: anacrolix puts an immutable item on the
// kadchat nodes, and `/dht get` reads it back. anacrolix's put carries
// "seq": 0, which BEP 44 does not call for ("The distinction between storing
// mutable and immutable items is the inclusion of a public key, a sequence
// number, signature and an optional salt"); without k it is still plainly
// immutable, and kadchat ignores the extra key (SPEC.md 3.2).
func TestImmutableAnacrolixToKadchat(t *testing.T) {
	t.Parallel()
	s := newSwarm(t)
	text := uniqueText(t, "immutable-from-anacrolix")
	target := immutableTarget(text)
	for _, k := range []*kadchat{s.k1, s.k2} {
		get := s.a.Get(queryContext(t), udp(k.addr), target, nil, dht.QueryRateLimiting{})
		if err := get.ToError(); err != nil || get.Reply.R == nil || get.Reply.R.Token == nil {
			k.fatalf("anacrolix get from kadchat: %v (reply %+v), want a token", err, get.Reply.R)
		}
		put := s.a.Put(queryContext(t), udp(k.addr), immutablePut(text), *get.Reply.R.Token, dht.QueryRateLimiting{})
		if err := put.ToError(); err != nil {
			k.fatalf("anacrolix's immutable put (with seq 0): %v, want it stored", err)
		}
	}
	// Read back through kadchat's own lookup, from the kadchat nodes'
	// stores (the other kadchat node stores a copy too).
	if f := s.k2.run(fmt.Sprintf("/dht get %x", target), "value"); strings.Join(f[1:], " ") != text {
		s.k2.fatalf("/dht get: %q, want value %s", strings.Join(f, " "), text)
	}
	get := s.a.Get(queryContext(t), udp(s.k1.addr), target, nil, dht.QueryRateLimiting{})
	if err := get.ToError(); err != nil || get.Reply.R == nil || get.Reply.R.V == nil {
		t.Fatalf("anacrolix get from kadchat after the put: %v, want the value", err)
	}
}

// TestMutableKadchatToAnacrolix: `/dht mput` stores a signed item that
// anacrolix verifies, keeps, and reads back through kadchat.
func TestMutableKadchatToAnacrolix(t *testing.T) {
	t.Parallel()
	s := newSwarm(t)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	target := sha1.Sum(pub)
	text := uniqueText(t, "mutable-from-kadchat")
	const seq = 7

	f := s.k1.run(fmt.Sprintf("/dht mput %x %d %s", priv.Seed(), seq, text), "stored")
	if len(f) != 4 || f[1] != hexID(target) || f[2] != "2" {
		s.k1.fatalf("/dht mput: %q, want stored %x 2 nodes", strings.Join(f, " "), target)
	}
	it, err := s.a.items.Get(target)
	if err != nil || it.Seq != seq || it.V != text || !bytes.Equal(it.K[:], pub) {
		t.Fatalf("anacrolix's stored item %+v (err %v), want seq %d v %q", it, err, seq, text)
	}

	res, ok := anacrolixGet(t, s.a, target)
	if !ok || !res.Mutable || res.Seq != seq || !bytes.Equal(res.V, bencode.MustMarshal(text)) {
		t.Fatalf("anacrolix get %x = %+v (found %v), want mutable seq %d %q", target, res, ok, seq, text)
	}
}

// TestMutableAnacrolixToKadchat: anacrolix's signed put lands on kadchat
// nodes and `/dht mget` reads it back.
func TestMutableAnacrolixToKadchat(t *testing.T) {
	t.Parallel()
	s := newSwarm(t)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	target := sha1.Sum(pub)
	text := uniqueText(t, "mutable-from-anacrolix")
	const seq = 3
	anacrolixPut(t, s.a, mutablePut(priv, seq, text))

	for _, k := range []*kadchat{s.k1, s.k2} {
		res := s.a.Get(queryContext(t), udp(k.addr), target, nil, dht.QueryRateLimiting{})
		if err := res.ToError(); err != nil {
			k.fatalf("anacrolix get from kadchat: %v", err)
		}
		r := res.Reply.R
		if r == nil || r.Seq == nil || *r.Seq != seq || !bytes.Equal(r.V, bencode.MustMarshal(text)) ||
			!bytes.Equal(r.K[:], pub) || !ed25519.Verify(pub, mutableSigned(seq, text), r.Sig[:]) {
			k.fatalf("kadchat's get reply %+v is not the signed item seq %d %q", r, seq, text)
		}
	}

	f := s.k1.run(fmt.Sprintf("/dht mget %x", pub), "value")
	if len(f) < 3 || f[1] != strconv.Itoa(seq) || strings.Join(f[2:], " ") != text {
		s.k1.fatalf("/dht mget: %q, want value %d %s", strings.Join(f, " "), seq, text)
	}
}

// mutableSigned is the buffer BEP 44 signs for a mutable item without salt:
// "3:seqi<seq>e1:v" followed by the bencoded value. Written from the BEP, not
// from either implementation, so it checks both.
func mutableSigned(seq int64, text string) []byte {
	return fmt.Appendf(nil, "3:seqi%de1:v%d:%s", seq, len(text), text)
}

// containsNode reports whether find_node output has "node <id> <addr>".
func containsNode(lines [][]string, id string, addr netip.AddrPort) bool {
	return slices.ContainsFunc(lines, func(f []string) bool {
		return len(f) == 3 && f[1] == id && f[2] == addr.String()
	})
}

func replyHasNode(r *krpc.Return, id string, addr netip.AddrPort) bool {
	if r == nil {
		return false
	}
	return slices.ContainsFunc(r.Nodes, func(n krpc.NodeInfo) bool { return nodeIs(n, id, addr) })
}

func nodeIs(n krpc.NodeInfo, id string, addr netip.AddrPort) bool {
	ap := n.Addr.ToNodeAddrPort().AddrPort
	return hexID(n.ID) == id && netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) == addr
}

func mustInt160(t *testing.T, id string) int160.T {
	b, err := hex.DecodeString(id)
	if err != nil || len(b) != 20 {
		t.Fatalf("bad id %q", id)
	}
	return int160.FromByteArray([20]byte(b))
}
