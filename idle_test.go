package main

// The idle-cost measurement (issue 13 item 8, SPEC.md 5.2 and 4.7): one
// user, the real binary, with five contacts either offline (they ran once,
// announced, and were killed: their addresses in the DHT are stale) or
// online and idle, on a loopback DHT of 20 nodes. tcpdump on lo records
// every datagram to or from the user's port, from its start to the end of
// the window; the test sorts them by kind and prints the figures per hour.
//
//	KADCHAT_IDLE_HOUR=1 KADCHAT_IDLE_DURATION=1h KADCHAT_IDLE_CASE=offline \
//	  go test -run TestIdleCost -count=1 -v -timeout 2h .
//
// KADCHAT_IDLE_CASE is offline, online or both (default); KADCHAT_IDLE_FLAGS
// adds flags to the user's command line (e.g. -metered). Needs root (tcpdump).
// It fails when either direction of the first hour exceeds issue 13's
// goals (300 KB offline, 200 KB online, each way); SPEC.md 6.6 gives the
// measured figures.

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIdleCost(t *testing.T) {
	if os.Getenv("KADCHAT_IDLE_HOUR") == "" {
		t.Skip("set KADCHAT_IDLE_HOUR=1 to measure the idle cost (root, tcpdump)")
	}
	window := time.Hour
	if s := os.Getenv("KADCHAT_IDLE_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		window = d
	}
	var extra []string
	if s := os.Getenv("KADCHAT_IDLE_FLAGS"); s != "" {
		extra = strings.Fields(s)
	}
	for _, c := range []string{"offline", "online"} {
		if cs := os.Getenv("KADCHAT_IDLE_CASE"); cs != "" && cs != "both" && cs != c {
			continue
		}
		t.Run(c, func(t *testing.T) { measureIdle(t, c == "online", window, extra) })
	}
}

// measureIdle sets the five contacts up with the user, stops the user (and,
// offline, kills the contacts), then restarts the user under tcpdump and
// counts its datagrams for window.
func measureIdle(t *testing.T, online bool, window time.Duration, extra []string) {
	boot := testSwarm(t, 20)
	port := freeUDPPort(t)
	u := newUser(t, "user", boot)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	startUser := func() *proc {
		args := append([]string{"-listen", listen, "-bootstrap", boot, "-dir", u.dir}, extra...)
		p := startProc(t, "user", nil, args...)
		p.expect("* ready", 30*time.Second)
		return p
	}
	pu := startUser()
	pu.send("/id")
	u.key = strings.TrimPrefix(pu.expect("id ", 5*time.Second), "id ")
	var contacts []*proc
	for i := range 5 {
		c := newUser(t, fmt.Sprintf("c%d", i), boot)
		pc := c.start(t)
		befriendProcs(t, u, c, pu, pc)
		contacts = append(contacts, pc)
	}
	for i, pc := range contacts {
		pu.send("/msg c%d hello", i)
		pc.expectMessage("<user> hello", 2*time.Minute)
	}
	pu.quit()
	if !online {
		for _, pc := range contacts {
			pc.kill() // no goodbye: their announces stay in the DHT
		}
	}
	pcap := filepath.Join(t.TempDir(), "user.pcap")
	dump := exec.Command("tcpdump", "-i", "lo", "-U", "-s", "0", "-w", pcap, "udp port "+fmt.Sprint(port))
	stderr, _ := dump.StderrPipe()
	if err := dump.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	t.Cleanup(func() { dump.Process.Kill(); dump.Wait() })
	waitListening(t, stderr)
	pu = startUser()
	t.Logf("user %s on %s, %d contacts %s, window %v, flags %q", u.key, listen, len(contacts), map[bool]string{true: "online", false: "offline"}[online], window, extra)
	time.Sleep(window)
	dump.Process.Signal(os.Interrupt)
	dump.Wait()
	pu.quit()
	b, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	tally, err := tallyPcap(b, uint16(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", tally.report(window))
	goal := idleGoalOffline
	if online {
		goal = idleGoalOnline
	}
	for _, dir := range []string{"out", "in"} {
		got := tally.perHour(dir+" total", window)
		if got >= goal {
			t.Errorf("%s: %.0f KB/h; issue 13 item 8 asks under %.0f", dir, got/1000, goal/1000)
		}
		t.Logf("%s: %.0f KB/h; issue 13 item 8 asks under %.0f (met: %v)", dir, got/1000, goal/1000, got < goal)
	}
}

// Issue 13 item 8's goals, in bytes of UDP payload per hour each way, for
// an idle user with five contacts offline or online. Measured (SPEC.md
// 6.6): 176 / 239 KB offline, 121 / 109 KB online.
const (
	idleGoalOffline = 300e3
	idleGoalOnline  = 200e3
)

// perHour is the bytes of kind k per hour: scaled from a window of an hour
// or more; a shorter one, which holds the start, counts as the whole first
// hour (a lower bound of it, so a failure is real).
func (tl *idleTally) perHour(k string, window time.Duration) float64 {
	b := float64(tl.bytes[k])
	if window > time.Hour {
		b *= float64(time.Hour) / float64(window)
	}
	return b
}

func freeUDPPort(t *testing.T) int {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// waitListening reads tcpdump's stderr until it says it listens.
func waitListening(t *testing.T, r io.Reader) {
	buf := make([]byte, 512)
	var got []byte
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if strings.Contains(string(got), "listening on") {
			go io.Copy(io.Discard, r)
			return
		}
		if err != nil {
			break
		}
	}
	t.Fatalf("tcpdump did not start: %s", got)
}

// idleTally counts datagrams and UDP payload bytes per direction and kind.
type idleTally struct {
	n, bytes map[string]int // key: "out kind" or "in kind"
}

// tallyPcap reads a pcap file of Ethernet-framed IPv4 UDP (tcpdump on lo)
// and sorts each datagram to or from port by kind.
func tallyPcap(b []byte, port uint16) (*idleTally, error) {
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		return nil, fmt.Errorf("pcap: bad header")
	}
	if lt := binary.LittleEndian.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet", lt)
	}
	tl := &idleTally{n: map[string]int{}, bytes: map[string]int{}}
	for off := 24; off+16 <= len(b); {
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		if off+16+incl > len(b) {
			break // the last record, cut short
		}
		frame := b[off+16 : off+16+incl]
		off += 16 + incl
		if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 17 || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		src, dst := binary.BigEndian.Uint16(udp), binary.BigEndian.Uint16(udp[2:])
		payload := udp[8:]
		dir := "in"
		switch {
		case src == port:
			dir = "out"
		case dst != port:
			continue
		}
		k := dir + " " + datagramKind(payload)
		tl.n[k]++
		tl.bytes[k] += len(payload)
		tl.n[dir+" total"]++
		tl.bytes[dir+" total"] += len(payload)
	}
	return tl, nil
}

// datagramKind names a datagram: a KRPC query by method, a response or an
// error, or a session message by type, an empty transport as keepalive.
func datagramKind(b []byte) string {
	if len(b) > 0 && b[0] == 'd' {
		m, err := parseKRPC(b)
		switch {
		case err != nil:
			return "krpc-unparsed"
		case m.Type == 'q' && m.ReadOnly:
			return "q-" + m.Method.String() + "-ro"
		case m.Type == 'q':
			return "q-" + m.Method.String()
		}
		return "krpc-" + string(m.Type)
	}
	if len(b) == 0 {
		return "empty"
	}
	switch b[0] {
	case packetInitiation:
		return "initiation"
	case packetResponse:
		return "response"
	case packetCookieReply:
		return "cookie"
	case packetTransport:
		if len(b) == transportMinSize {
			return "keepalive"
		}
		return "transport"
	}
	return fmt.Sprintf("type-%d", b[0])
}

// report lists every kind with datagrams and KB (1000 bytes of UDP
// payload) per hour, scaled from window.
func (tl *idleTally) report(window time.Duration) string {
	scale := float64(time.Hour) / float64(window)
	keys := make([]string, 0, len(tl.n))
	for k := range tl.n {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-28s %10s %10s %12s %10s\n", "direction kind", "datagrams", "bytes", "datagrams/h", "KB/h")
	for _, k := range keys {
		fmt.Fprintf(&sb, "%-28s %10d %10d %12.0f %10.1f\n", k, tl.n[k], tl.bytes[k], float64(tl.n[k])*scale, float64(tl.bytes[k])*scale/1000)
	}
	return sb.String()
}
