// The /dht commands (SPEC.md 3.4.5): diagnostics and the interoperability
// tests drive the DHT through them.
//
// Flow: the UI hands command the words after "/dht"; command bounds the
// whole run by commandTimeout and picks one cmdX function, which checks its
// arguments (wantArgs, parseNodeID), calls the DHT's client side (ping,
// lookups, announce, put, get) and prints the result lines. Every failure
// becomes one line "error <what>", and errNotFound prints exactly
// "error not found".
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// command runs one /dht command (args are the words after "/dht") and
// writes its result lines to out; failures print "error <what>".
func (d *dht) command(ctx context.Context, args []string, out io.Writer) {
	ctx, cancel := context.WithTimeout(ctx, d.timing.command)
	defer cancel()
	if len(args) == 0 {
		fmt.Fprintln(out, "error usage: /dht status|ping|find_node|get_peers|announce|put|get|mput|mget")
		return
	}
	var err error
	switch rest := args[1:]; args[0] {
	case "status":
		err = cmdStatus(d, rest, out)
	case "ping":
		err = cmdPing(ctx, d, rest, out)
	case "find_node":
		err = cmdFindNode(ctx, d, rest, out)
	case "get_peers":
		err = cmdGetPeers(ctx, d, rest, out)
	case "announce":
		err = cmdAnnounce(ctx, d, rest, out)
	case "put":
		err = cmdPut(ctx, d, rest, out)
	case "get":
		err = cmdGet(ctx, d, rest, out)
	case "mput":
		err = cmdMput(ctx, d, rest, out)
	case "mget":
		err = cmdMget(ctx, d, rest, out)
	default:
		err = fmt.Errorf("dht: unknown command %q", args[0])
	}
	if errors.Is(err, errNotFound) {
		err = errNotFound // print exactly "error not found"
	}
	if err != nil {
		fmt.Fprintf(out, "error %v\n", err)
	}
}

func wantArgs(args []string, lo, hi int, usage string) error {
	if len(args) < lo || (hi >= 0 && len(args) > hi) {
		return fmt.Errorf("usage: /dht %s", usage)
	}
	return nil
}

func cmdStatus(d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 0, 0, "status"); err != nil {
		return err
	}
	ext := "unknown"
	if a, ok := d.external(); ok {
		ext = a.String()
	}
	fmt.Fprintf(out, "node %v %s %d nodes\n", d.id(), ext, d.size())
	return nil
}

func cmdPing(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "ping HOST:PORT"); err != nil {
		return err
	}
	a, err := resolveUDP(ctx, args[0])
	if err != nil {
		return fmt.Errorf("dht: ping %w", err)
	}
	id, err := d.ping(ctx, a)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pong %v\n", id)
	return nil
}

func cmdFindNode(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "find_node ID"); err != nil {
		return err
	}
	target, err := parseNodeID(args[0])
	if err != nil {
		return err
	}
	ns, err := d.findNode(ctx, target)
	if err != nil {
		return err
	}
	for _, n := range ns {
		fmt.Fprintf(out, "node %v %v\n", n.ID, n.Addr)
	}
	fmt.Fprintf(out, "done %d nodes\n", len(ns))
	return nil
}

func cmdGetPeers(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "get_peers INFOHASH"); err != nil {
		return err
	}
	ih, err := parseNodeID(args[0])
	if err != nil {
		return err
	}
	ps, err := d.getPeers(ctx, ih)
	if err != nil {
		return err
	}
	for _, p := range ps {
		fmt.Fprintf(out, "peer %v\n", p)
	}
	fmt.Fprintf(out, "done %d peers\n", len(ps))
	return nil
}

func cmdAnnounce(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 2, "announce INFOHASH [PORT]"); err != nil {
		return err
	}
	ih, err := parseNodeID(args[0])
	if err != nil {
		return err
	}
	port, implied := 0, true
	if len(args) == 2 {
		p, err := strconv.ParseUint(args[1], 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("bad port %q", args[1])
		}
		port, implied = int(p), false
	}
	_, n, err := d.announce(ctx, ih, port, implied)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "announced %d nodes\n", n)
	return nil
}

func cmdPut(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, -1, "put TEXT"); err != nil {
		return err
	}
	v := appendBencodeString(nil, []byte(strings.Join(args, " ")))
	target, n, err := d.putImmutable(ctx, v)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "stored %v %d nodes\n", target, n)
	return nil
}

func cmdGet(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "get TARGET"); err != nil {
		return err
	}
	target, err := parseNodeID(args[0])
	if err != nil {
		return err
	}
	it, err := d.get(ctx, target)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "value %s\n", valueText(it.V))
	return nil
}

func cmdMput(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 3, -1, "mput SEEDHEX SEQ TEXT"); err != nil {
		return err
	}
	seed, err := hex.DecodeString(args[0])
	if err != nil || len(seed) != ed25519.SeedSize {
		return fmt.Errorf("bad seed: want %d hex digits", 2*ed25519.SeedSize)
	}
	seq, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || seq < 0 {
		return fmt.Errorf("bad seq %q", args[1])
	}
	v := appendBencodeString(nil, []byte(strings.Join(args[2:], " ")))
	target, n, err := d.putMutable(ctx, ed25519.NewKeyFromSeed(seed), nil, seq, v)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "stored %v %d nodes\n", target, n)
	return nil
}

func cmdMget(ctx context.Context, d *dht, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "mget PUBKEYHEX"); err != nil {
		return err
	}
	var k [32]byte
	if b, err := hex.DecodeString(args[0]); err != nil || len(b) != len(k) {
		return fmt.Errorf("bad public key: want %d hex digits", 2*len(k))
	} else {
		copy(k[:], b)
	}
	it, err := d.get(ctx, mutableTarget(k, nil))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "value %d %s\n", it.Seq, valueText(it.V))
	return nil
}

// valueText shows a bencoded string value as its text, anything else raw.
func valueText(v []byte) string {
	i := bytes.IndexByte(v, ':')
	if i <= 0 {
		return string(v)
	}
	n, err := strconv.Atoi(string(v[:i]))
	if err != nil || strconv.Itoa(n) != string(v[:i]) || n != len(v)-i-1 {
		return string(v)
	}
	return string(v[i+1:])
}
