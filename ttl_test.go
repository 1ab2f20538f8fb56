//go:build linux

package main

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSendTTL: an opening packet leaves with the TTL asked for, and the
// next datagram with the socket's usual one again (SPEC.md 5.8.3).
func TestSendTTL(t *testing.T) {
	n, err := listenNode("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	rc, err := rx.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1) })
	if err != nil {
		t.Fatal(err)
	}
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := n.sendTTL(to, nil, 2); err != nil {
		t.Fatal(err)
	}
	if err := n.send(to, []byte("d")); err != nil {
		t.Fatal(err)
	}
	var got []int
	for range 2 {
		buf, oob := make([]byte, 16), make([]byte, 128)
		rx.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, oobn, _, _, err := rx.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 || len(msgs[0].Data) < 4 {
			t.Fatalf("control messages %v, %v", msgs, err)
		}
		ttl := int(binary.NativeEndian.Uint32(msgs[0].Data)) // IP_TTL carries an int
		if m == 0 && len(got) != 0 || m != 0 && len(got) != 1 {
			t.Fatalf("datagram %d has %d bytes", len(got), m)
		}
		got = append(got, ttl)
	}
	if got[0] != 2 || got[1] == 2 {
		t.Fatalf("TTLs %v: want 2 for the opening packet, the default after", got)
	}
}
