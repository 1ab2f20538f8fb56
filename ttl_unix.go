// Opening packets (SPEC.md 5.8.3): an empty datagram with a small TTL, so
// that it makes our own NAT's mapping and dies before the contact's router.
//
// Flow: sendTTL takes the socket for itself (Node.ttlMu, which every other
// send holds shared), lowers the socket's unicast TTL and hop limit, writes,
// and puts the old values back, so no other datagram leaves with them.

//go:build unix

package main

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// sendTTL sends b to `to` with IP TTL (IPv6: hop limit) ttl.
func (n *Node) sendTTL(to netip.AddrPort, b []byte, ttl int) error {
	if n.lose() {
		return nil
	}
	rc, err := n.conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("node: ttl: %w", err)
	}
	level, opt := unix.IPPROTO_IP, unix.IP_TTL
	if to.Addr().Is6() && !to.Addr().Is4In6() {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS
	}
	n.ttlMu.Lock()
	defer n.ttlMu.Unlock()
	old, err := setSockInt(rc, level, opt, ttl)
	if err != nil {
		return fmt.Errorf("node: set ttl: %w", err)
	}
	if n.trace != nil {
		n.trace(true, to, b)
	}
	_, werr := n.conn.WriteToUDPAddrPort(b, to)
	if _, err := setSockInt(rc, level, opt, old); err != nil {
		// The socket would keep sending everything with the small TTL.
		return fmt.Errorf("node: restore ttl: %w", err)
	}
	if werr != nil {
		return fmt.Errorf("node: send to %v: %w", to, werr)
	}
	return nil
}

// setSockInt sets an int socket option and returns its former value.
func setSockInt(rc interface {
	Control(func(fd uintptr)) error
}, level, opt, v int) (old int, err error) {
	cerr := rc.Control(func(fd uintptr) {
		if old, err = unix.GetsockoptInt(int(fd), level, opt); err == nil {
			err = unix.SetsockoptInt(int(fd), level, opt, v)
		}
	})
	return old, errors.Join(cerr, err)
}
