// Tests of the -demo program (demo.go).
package main

import (
	"context"
	"strings"
	"sync"
	"testing"
)

// The README's first command: the demo runs on loopback only, rekeys, and
// ends well.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 30-node DHT and two users")
	}
	var out strings.Builder
	w := &lockedWriter{mu: &sync.Mutex{}, w: &out}
	if err := runDemo(context.Background(), w); err != nil {
		t.Fatalf("runDemo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"alice sees: * online bob", "bob sees: * online alice",
		"handshake initiation", "handshake response", "half of an ML-KEM-768 key", "an ML-KEM-768 ciphertext",
		"bob sees: [", "alice sees: * delivered bob 3", "alice sees: * offline bob",
		"alice sees: * dropped bob 4", "alice sees: * delivered bob 4", "done:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("transcript lacks %q\n%s", want, out.String())
		}
	}
}
