// Node (SPEC.md 2): one UDP socket carrying the DHT, the sessions and the
// invitations.
//
// Inbound flow: readLoop reads a datagram, demux looks at its first byte and
// hands it to the DHT (a bencoded KRPC dictionary starts with 'd') or to the
// session layer (packet types 1-4, see handshake.go) or to invitations
// (type 5, invite.go). Anything else is
// dropped and counted. Outbound flow: every layer sends through Node.send,
// which is where the test-only lossy wrapper drops datagrams.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// socketBuffer is the receive buffer we ask the kernel for.
const socketBuffer = 4 << 20

// maxDatagram bounds what we read: a KRPC message or chat packet is never
// near this, and a larger read buffer would only invite waste.
const maxDatagram = 2048

// dropEnv names the test-only environment variable that makes a Node drop
// a fraction of its datagrams in both directions, e.g. KADCHAT_DROP=0.2.
const dropEnv = "KADCHAT_DROP"

// firstByteKRPC is the first byte of every KRPC message: a bencoded dict.
const firstByteKRPC = 'd'

// datagramConn is what a Node needs of its socket: *net.UDPConn, or the
// emulated internet of the DHT benchmarks (emunet_test.go).
type datagramConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	LocalAddr() net.Addr
	Close() error
	SyscallConn() (syscall.RawConn, error) // socket options: the TTL of opening packets
}

// Node owns the socket and everything keyed by it: the DHT and the sessions.
type Node struct {
	conn datagramConn
	log  *slog.Logger
	now  func() time.Time

	drop float64 // fraction of datagrams to drop (tests only)
	rmu  sync.Mutex
	rng  *rand.Rand // for drop decisions only, never for keys

	// ttlMu is held shared by every send and alone by sendTTL, which
	// changes the socket's TTL for one datagram (ttl_unix.go).
	ttlMu sync.RWMutex

	dropped   atomic.Uint64 // datagrams not recognised by the demux
	lossDrops atomic.Uint64 // datagrams dropped by the lossy wrapper

	// trace, if set before run, sees every datagram sent or received
	// (after the lossy wrapper); the demo prints it.
	trace func(out bool, peer netip.AddrPort, b []byte)

	// handlers, set before run; nil means the layer is off.
	onKRPC    func(from netip.AddrPort, b []byte)
	onSession func(from netip.AddrPort, b []byte)
	onInvite  func(from netip.AddrPort, b []byte)
}

// listenNode opens the UDP socket. addr is host:port; the port may be 0.
func listenNode(addr string, log *slog.Logger) (*Node, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("node: listen %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("node: listen %q: %w", addr, err)
	}
	// A burst of chat messages (a 256-message window) overflows the default
	// receive buffer of about 200 KiB, and every datagram lost there stalls
	// an in-order stream until its retransmission. Best effort: the kernel
	// may cap it lower.
	if err := conn.SetReadBuffer(socketBuffer); err != nil {
		log = cmp.Or(log, slog.New(slog.DiscardHandler))
		log.Debug("node: read buffer", "err", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{conn: conn, log: log, now: time.Now, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	if s := os.Getenv(dropEnv); s != "" {
		p, err := strconv.ParseFloat(s, 64)
		if err != nil || p < 0 || p >= 1 {
			conn.Close()
			return nil, fmt.Errorf("node: %s=%q: want a fraction in [0,1)", dropEnv, s)
		}
		n.drop = p
	}
	return n, nil
}

// LocalAddr is the address the socket is bound to.
func (n *Node) LocalAddr() netip.AddrPort {
	return n.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// lose reports whether the lossy wrapper drops this datagram.
func (n *Node) lose() bool {
	if n.drop == 0 {
		return false
	}
	n.rmu.Lock()
	defer n.rmu.Unlock()
	if n.rng.Float64() < n.drop {
		n.lossDrops.Add(1)
		return true
	}
	return false
}

// send writes one datagram. It is safe for concurrent use.
func (n *Node) send(to netip.AddrPort, b []byte) error {
	if n.lose() {
		return nil
	}
	if n.trace != nil {
		n.trace(true, to, b)
	}
	n.ttlMu.RLock()
	_, err := n.conn.WriteToUDPAddrPort(b, to)
	n.ttlMu.RUnlock()
	if err != nil {
		return fmt.Errorf("node: send to %v: %w", to, err)
	}
	return nil
}

// run reads datagrams until ctx ends, then closes the socket.
func (n *Node) run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { n.conn.Close() })
	defer stop()
	buf := make([]byte, maxDatagram)
	for {
		m, from, err := n.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			n.log.Debug("node: read", "err", err)
			continue
		}
		if n.lose() {
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if n.trace != nil {
			n.trace(false, from, buf[:m])
		}
		// Handlers may keep b only for the duration of the call.
		n.demux(from, buf[:m])
	}
}

// demux routes a datagram by its first byte; see SPEC.md "One socket".
func (n *Node) demux(from netip.AddrPort, b []byte) {
	switch {
	case len(b) == 0:
	case b[0] == firstByteKRPC && n.onKRPC != nil:
		n.onKRPC(from, b)
		return
	case isSessionPacketType(b[0]) && n.onSession != nil:
		n.onSession(from, b)
		return
	case b[0] == packetInvite && n.onInvite != nil:
		n.onInvite(from, b)
		return
	}
	n.dropped.Add(1)
}

// Close closes the socket; run returns.
func (n *Node) Close() error { return n.conn.Close() }
