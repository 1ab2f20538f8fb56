package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestE2EDropWhileBothAway: the binary, as a user sees it. Alice and bob
// meet once, then are never online together: alice's message waits in the
// DHT ("* dropped", "/status"), bob reads it when he starts, and alice
// learns it was delivered from bob's acknowledgement when she starts again.
func TestE2EDropWhileBothAway(t *testing.T) {
	boot := testSwarm(t, 16)
	alice, bob := newUser(t, "alice", boot), newUser(t, "bob", boot)
	pa, pb := alice.start(t), bob.start(t)
	befriendProcs(t, alice, bob, pa, pb)
	pa.expect("* online bob", e2eWait)
	pb.expect("* online alice", e2eWait)
	waitDropFile(t, alice, bob, "bob's prekeys", func(dp *dropPeer) bool { return len(dp.theirs) == prekeyTarget })
	pa.quit()
	pb.quit()

	pa = alice.start(t)
	pa.send("/msg bob left for you in the DHT")
	pa.expect("* queued bob 1", 5*time.Second)
	pa.expect("* dropped bob 1", e2eWait)
	pa.send("/status")
	pa.expect("drops bob 1 outstanding, 31 prekeys left", 5*time.Second)
	pa.quit()

	pb = bob.start(t)
	pb.expectMessage("<alice> left for you in the DHT", e2eWait)
	waitDropFile(t, bob, alice, "an acknowledgement item", func(dp *dropPeer) bool { return dp.ackSeq > 0 && dp.ackAt != 0 })
	pb.quit()

	pa = alice.start(t)
	pa.expect("* delivered bob 1", e2eWait)
	pa.send("/status")
	pa.expect("contacts 0 online of 1", 5*time.Second)
	pa.quit()
	for _, l := range pa.lines() {
		if l == "* dropped bob 1" {
			t.Error("alice's restart announced the drop again")
		}
		if strings.HasPrefix(l, "drops bob") {
			t.Errorf("after the acknowledgement /status still shows %q", l)
		}
	}
}

// waitDropFile waits until u's drops file shows what cond wants of
// contact's state: no output line says so.
func waitDropFile(t *testing.T, u, contact *user, what string, cond func(*dropPeer) bool) {
	t.Helper()
	k, err := parsePublicKey(contact.key)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(e2eWait)
	for {
		peers, err := loadDropFile(filepath.Join(u.dir, dropsFile))
		if err == nil && peers[k] != nil && cond(peers[k]) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's drops file shows no %s within %v (%v)", u.name, what, e2eWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
