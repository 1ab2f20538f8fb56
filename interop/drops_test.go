// Offline messages (SPEC.md section 8) on an anacrolix/dht node: the
// sealed items are BEP 44 mutable items with a 16-byte salt and a 992-byte
// value, and anacrolix must store them and serve them back, since on the
// real network most nodes that hold a drop are not kadchat.
//
// Flow: bob learns his key and quits. alice, whose only DHT node is an
// anacrolix server, adds bob and writes to him; the drop's puts reach
// anacrolix, whose store is inspected. alice quits; bob starts again with
// the same anacrolix node as his only DHT node and must show the message,
// which only anacrolix can have served; his acknowledgement item is put on
// anacrolix too. Quirks of anacrolix met on the way: none beyond those of
// dht_test.go (it stores V as a decoded interface{} and re-encodes it to
// check the signature, which for a byte string gives the same bytes).
package interop

import (
	"crypto/sha1"
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

func TestDropStoredAndServedByAnacrolix(t *testing.T) {
	t.Parallel()
	a := newAnacrolix(t)
	bobDir := t.TempDir()
	bob := startKadchatDir(t, bobDir, a.addr)
	bobKey := bob.run("/id", "id")[1]
	bob.stop()

	alice := startKadchat(t, a.addr)
	alice.waitNodes(1)
	aliceKey := alice.run("/id", "id")[1]
	if line := alice.try("/add bob "+bobKey, "* added"); !strings.HasPrefix(line, "* added") {
		alice.fatalf("/add bob: %s", line)
	}
	text := uniqueText(t, "left-on-anacrolix")
	alice.send("/msg bob " + text)
	alice.expect("* dropped")

	var stored int
	for _, q := range a.queries.find("put", alice.addr) {
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
	alice.stop()

	bob = startKadchatDir(t, bobDir, a.addr)
	if line := bob.try("/add alice "+aliceKey, "* added"); !strings.HasPrefix(line, "* added") {
		bob.fatalf("/add alice: %s", line)
	}
	bob.expectFunc("alice's message, served by anacrolix", func(l string) bool { return strings.HasSuffix(l, "<alice> "+text) })

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
