// Tests of the remembered listening port (port.go): the port file, and a
// busy -listen port that falls back to the saved one or a free one.
package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseSavedPort(t *testing.T) {
	good := savedPort{listen: ":6881", port: 35839}
	got, err := parseSavedPort(good.format())
	if err != nil || got != good {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	for _, bad := range []string{"", ":6881", ":6881 0", ":6881 70000", ":6881 x", "a b c"} {
		if _, err := parseSavedPort([]byte(bad)); err == nil {
			t.Errorf("parseSavedPort(%q) accepted", bad)
		}
	}
}

// Issue 8 item 10: when the port asked for is busy, the one used instead
// is said, remembered, and used again at the next start.
func TestE2EPortRemembered(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.LocalAddr().String()
	_, busyPort, _ := net.SplitHostPort(addr)
	u := newUser(t, "pia", "127.0.0.1:1")
	var first string
	for i := range 2 {
		p := startProc(t, u.name, nil, "-listen", addr, "-bootstrap", u.boot, "-dir", u.dir)
		l := p.expect("* listening on ", 10*time.Second)
		f := strings.Fields(l)
		if len(f) != 7 || f[4] != "("+busyPort || f[3] == addr {
			t.Fatalf("start %d: %q", i, l)
		}
		if i == 0 {
			first = f[3]
		} else if f[3] != first {
			t.Fatalf("second start on %s, first on %s: want the same port", f[3], first)
		}
		p.expect("* ready "+f[3], 5*time.Second)
		p.quit()
	}
}

// A busy -listen port falls back to a free one instead of failing.
func TestE2EListenFallback(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	u := newUser(t, "gina", "127.0.0.1:1")
	p := startProc(t, u.name, nil, "-listen", busy.LocalAddr().String(), "-bootstrap", u.boot, "-dir", u.dir)
	ready := p.expect("* ready", 10*time.Second)
	if strings.Contains(ready, busy.LocalAddr().String()) {
		t.Fatalf("listening on the busy port: %q", ready)
	}
	p.quit()
}
