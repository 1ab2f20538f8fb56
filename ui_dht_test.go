package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
)

func TestValueText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"5:hello", "hello"},
		{"0:", ""},
		{"i42e", "i42e"},
		{"05:hello", "05:hello"},
		{"3:hello", "3:hello"},
		{"l1:ae", "l1:ae"},
	}
	for _, tc := range tests {
		if got := valueText([]byte(tc.in)); got != tc.want {
			t.Errorf("valueText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCommands(t *testing.T) {
	ds := newSwarm(t, 10, 0)
	d, other := ds[3], ds[7]
	seed := strings.Repeat("07", 32)
	pub := hex.EncodeToString(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)).Public().(ed25519.PublicKey))
	ih := strings.Repeat("5a", 20)
	hexID := `[0-9a-f]{40}`
	tests := []struct {
		on   *dht
		args string
		want string // regexp for the whole output
	}{
		{d, "status", `^node ` + hexID + ` (unknown|127\.0\.0\.1:\d+) \d+ nodes\n$`},
		{d, "ping " + other.addr().String(), `^pong ` + other.id().String() + `\n$`},
		{d, "find_node " + other.id().String(), `^(node ` + hexID + ` 127\.0\.0\.1:\d+\n){8}done 8 nodes\n$`},
		{d, "get_peers " + ih, `^done 0 peers\n$`},
		{d, "announce " + ih + " 4242", `^announced [1-8] nodes\n$`},
		{other, "get_peers " + ih, `^peer 127\.0\.0\.1:4242\ndone 1 peers\n$`},
		{d, "put hello dht", `^stored ` + hexID + ` [1-8] nodes\n$`},
		{d, "mput " + seed + " 3 mutable text", `^stored ` + hexID + ` [1-8] nodes\n$`},
		{other, "mget " + pub, `^value 3 mutable text\n$`},
		{other, "get " + strings.Repeat("00", 20), `^error not found\n$`},
		{d, "", `^error usage`},
		{d, "frobnicate", `^error dht: unknown command`},
		{d, "ping", `^error usage`},
		{d, "find_node 12", `^error `},
		{d, "announce " + ih + " 0", `^error bad port`},
		{d, "mput 00 1 x", `^error bad seed`},
		{d, "mget zz", `^error bad public key`},
	}
	for _, tc := range tests {
		var out bytes.Buffer
		tc.on.command(context.Background(), strings.Fields(tc.args), &out)
		if !regexp.MustCompile(tc.want).MatchString(out.String()) {
			t.Errorf("/dht %s:\n%s\nwant %s", tc.args, out.String(), tc.want)
		}
	}
	// the immutable round trip, through the printed target
	var out bytes.Buffer
	d.command(context.Background(), []string{"put", "round", "trip"}, &out)
	f := strings.Fields(out.String())
	if len(f) < 2 {
		t.Fatalf("put: %q", out.String())
	}
	out.Reset()
	other.command(context.Background(), []string{"get", f[1]}, &out)
	if out.String() != "value round trip\n" {
		t.Errorf("get %s = %q, want \"value round trip\\n\"", f[1], out.String())
	}
}
