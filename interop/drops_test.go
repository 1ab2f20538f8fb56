// Offline messages (SPEC.md section 8) on other implementations' DHT
// nodes: the sealed items are BEP 44 mutable items with a 16-byte salt and
// a 996-byte value, and anacrolix/dht and libtorrent-rasterbar must store
// them and serve them back, since on the real network most nodes that hold
// a drop are not kadchat.
//
// Flow (dropThrough): bob learns his key and quits. alice, whose only DHT
// node is the other implementation's, adds bob and writes to him; "*
// dropped" means a put was stored there, and for anacrolix its store is
// inspected too. alice quits; bob starts again with that node as his only
// one and must show the message, which only it can have served. Quirks met
// on the way: none beyond those of dht_test.go (anacrolix stores V as a
// decoded interface{} and re-encodes it to check the signature, which for
// a byte string gives the same bytes); libtorrent 2.0.8 with its default
// DHT settings stores and serves the items as they are.
package interop

import (
	"crypto/sha1"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/bencode"
)

// dropSaltLen and dropValueLen are SPEC.md 8.1's salt and 8.2's value.
const (
	dropSaltLen  = 16
	dropValueLen = 996
)

// dropThrough runs the flow above with node as the only DHT node; stored,
// if set, inspects node's store once alice's drop is out.
func dropThrough(t *testing.T, node netip.AddrPort, stored func(alice *kadchat)) (alice, bob *kadchat) {
	bobDir := t.TempDir()
	bob = startKadchatDir(t, bobDir, node)
	bobKey := bob.run("/id", "id")[1]
	bob.stop()

	alice = startKadchat(t, node)
	alice.waitNodes(1)
	aliceKey := alice.run("/id", "id")[1]
	if line := alice.try("/add bob "+bobKey, "* added"); !strings.HasPrefix(line, "* added") {
		alice.fatalf("/add bob: %s", line)
	}
	text := uniqueText(t, "left-in-another-dht")
	alice.send("/msg bob " + text)
	alice.expect("* dropped")
	if stored != nil {
		stored(alice)
	}
	alice.stop()

	bob = startKadchatDir(t, bobDir, node)
	if line := bob.try("/add alice "+aliceKey, "* added"); !strings.HasPrefix(line, "* added") {
		bob.fatalf("/add alice: %s", line)
	}
	bob.expectFunc("alice's message, served by the other implementation", func(l string) bool { return strings.HasSuffix(l, "<alice> "+text) })
	return alice, bob
}

func TestDropStoredAndServedByAnacrolix(t *testing.T) {
	t.Parallel()
	a := newAnacrolix(t)
	_, bob := dropThrough(t, a.addr, func(alice *kadchat) {
		var stored int
		for _, q := range a.queries.find("put", alice.addr) {
			if len(q.args.Salt) == 0 {
				continue // an endpoint record (SPEC.md 5.8.1), not a drop
			}
			if len(q.args.Salt) != dropSaltLen || q.args.Seq == nil {
				t.Fatalf("alice's put to anacrolix: salt %x seq %v, want a %d-byte salt and a seq", q.args.Salt, q.args.Seq, dropSaltLen)
			}
			target := sha1.Sum(append(q.args.K[:], q.args.Salt...))
			it, err := a.items.Get(target)
			if err != nil {
				t.Fatalf("anacrolix did not keep the drop put at %x: %v", target, err)
			}
			if v := bencode.MustMarshal(it.V); len(v) != dropValueLen || it.Seq != *q.args.Seq || string(it.Salt) != string(q.args.Salt) {
				t.Fatalf("anacrolix keeps a %d-byte value, seq %d, salt %x; want %d bytes, seq %d, salt %x",
					len(v), it.Seq, it.Salt, dropValueLen, *q.args.Seq, q.args.Salt)
			}
			stored++
		}
		if stored == 0 {
			alice.fatalf("no BEP 44 put reached anacrolix, though it is alice's only DHT node")
		}
	})

	// bob acknowledges with an item of the same shape, also kept by anacrolix.
	deadline := time.Now().Add(expectTimeout)
	for {
		ok := false
		for _, q := range a.queries.find("put", bob.addr) {
			target := sha1.Sum(append(q.args.K[:], q.args.Salt...))
			if it, err := a.items.Get(target); err == nil && len(it.Salt) == dropSaltLen {
				ok = true
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			bob.fatalf("bob's acknowledgement item never reached anacrolix")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDropStoredAndServedByLibtorrent(t *testing.T) {
	t.Parallel()
	dropThrough(t, newLibtorrent(t), nil)
}
