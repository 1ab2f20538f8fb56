// Opening packets (SPEC.md 5.8.3) need a per-packet TTL, which this build
// does not set: the puncher then sends none, and a contact behind a NAT is
// reached only where the NAT needs no opening.

//go:build !unix

package main

import (
	"errors"
	"net/netip"
)

func (n *Node) sendTTL(netip.AddrPort, []byte, int) error {
	return errors.New("node: ttl: not supported on this system")
}
