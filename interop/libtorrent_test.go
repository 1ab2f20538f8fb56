// A libtorrent-rasterbar DHT node for the tests, through its Python binding
// (Debian's python3-libtorrent; .ci/run installs it where it can). Tests
// that need it are skipped, saying why, where the binding is missing.
//
// Flow: newLibtorrent writes a short Python program that starts a session
// with only the DHT on 127.0.0.1:0, prints the port and runs until its
// standard input closes; the test's cleanup closes it.
package interop

import (
	"bufio"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// libtorrentNode is the program: libtorrent's DHT settings as shipped, on
// loopback only. Local peer discovery, UPnP and NAT-PMP would send to the
// LAN, and the default bootstrap routers are on the internet: all off.
const libtorrentNode = `import sys, time
import libtorrent as lt
s = lt.session({
    'listen_interfaces': '127.0.0.1:0',
    'enable_dht': True, 'enable_lsd': False, 'enable_upnp': False, 'enable_natpmp': False,
    'dht_bootstrap_nodes': '',
    'alert_mask': 0,
})
for _ in range(100):
    if s.listen_port():
        break
    time.sleep(0.05)
print(s.listen_port(), flush=True)
sys.stdin.read()
`

// libtorrentPythons are the interpreters tried, in order: one on PATH may
// be a separate installation without Debian's binding.
var libtorrentPythons = []string{"/usr/bin/python3", "python3"}

// newLibtorrent starts a libtorrent DHT node and returns its address.
func newLibtorrent(t *testing.T) netip.AddrPort {
	t.Helper()
	py := ""
	for _, p := range libtorrentPythons {
		if exec.Command(p, "-c", "import libtorrent").Run() == nil {
			py = p
			break
		}
	}
	if py == "" {
		t.Skip("no Python with libtorrent (Debian: apt-get install python3-libtorrent)")
	}
	script := filepath.Join(t.TempDir(), "node.py")
	if err := os.WriteFile(script, []byte(libtorrentNode), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(quitGrace):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	port, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil || port <= 0 || port > 0xffff {
		t.Fatalf("libtorrent node printed %q: %v %v", line, err, perr)
	}
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
}
