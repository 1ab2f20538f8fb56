//go:build linux

// The NAT lab: a simulated internet of network namespaces with real Linux
// NAT, built and torn down by the test itself (issue 9).
//
// Topology: one "internet" router namespace; ten DHT nodes, each in its own
// namespace on a /30 of its own /24 of 198.18.0.0/15, RFC 2544's range for
// test networks (so each counts as a distinct voter on our external
// address, SPEC.md 3.3), and a /64 of 2001:db8:100::/48;
// per case, sites on /30s of 203.0.113.0/24 (and 2001:db8:200::/48; a
// site whose WAN address changes mid-case moves to its /30 of
// 198.51.100.0/24 and back): a site
// is either a public host or a home router whose LAN bridge (192.168.1.0/24
// in every home, as real homes are, and 2001:db8:300:SITE::/64) holds one or
// two hosts. The lab has no link to the machine's own network: every packet
// stays between its namespaces. natlab_cases_test.go holds the cases, the
// trials and the report.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	natlabEnv       = "KADCHAT_NATLAB"         // set to 1 to run the lab
	natlabTrialsEnv = "KADCHAT_NATLAB_N"       // trials per case
	natlabWaitEnv   = "KADCHAT_NATLAB_TIMEOUT" // bound on one trial's wait, a Go duration
	natlabCasesEnv  = "KADCHAT_NATLAB_CASES"   // a regular expression: only the cases it matches
	natlabSlowEnv   = "KADCHAT_NATLAB_SLOW"    // a duration: log the lines of trials slower than it
	natlabDHTNodes  = 10
	natlabPort      = 6881 // every kadchat in the lab listens here, as users do
	natlabCmdWait   = 15 * time.Second
	natlabStaleAge  = time.Hour // other runs' namespaces older than this are swept
	natlabLANPrefix = "192.168.1."
	natlabHostBase  = 10 // hosts are .10, .11 on the LAN (and ::10, ::11)
)

// routerKind is how a site meets the internet.
type routerKind int

const (
	sitePublic routerKind = iota // the host sits on the internet link itself
	natPlain                     // port-preserving MASQUERADE, unsolicited packets to itself accepted (answered by ICMP)
	natStrict                    // the same, but INPUT drops unsolicited packets to itself
	natRandom                    // MASQUERADE --random-fully
	natForward                   // plain, plus a DNAT of the host's UDP port (what UPnP/PCP give)
	v6Firewall                   // IPv6 only: stateful ip6tables, no NAT
	dualPlain                    // natPlain for IPv4 and v6Firewall for IPv6
)

func (k routerKind) String() string {
	return [...]string{"public", "plain", "strict", "random", "forward", "v6fw", "dual"}[k]
}

func (k routerKind) hasV4() bool { return k != v6Firewall }
func (k routerKind) hasV6() bool { return k == v6Firewall || k == dualPlain || k == sitePublic }

// natlab is one lab: the internet, the DHT and the sites of every case.
type natlab struct {
	t       *testing.T
	prefix  string // namespace name prefix, unique to this run
	bin     string
	tmp     string
	inet    string // the internet router's namespace
	setupNS string // only loopback: where users' data directories are made

	mu        sync.Mutex
	nextSite  int
	nextTable int
	dht4      []string // DHT nodes' IPv4 HOST:PORT
	dht6      []string
}

// site is one attachment to the internet: a router and its hosts, or one
// public host (then router is "" and hosts[0] holds the WAN link).
type site struct {
	index  int
	kind   routerKind
	router string   // namespace of the router, "" for a public host
	hosts  []string // namespaces of the hosts
	link   string   // the internet router's interface toward this site
	wan4   string   // the site's address on the internet
	wan6   string
	moved  bool // the host (moveHost) or the WAN (moveWAN) is on its other address
}

// newNATLab checks the tools, sweeps stale namespaces and builds the
// internet and its DHT nodes. It skips the test where namespaces cannot be
// made.
func newNATLab(t *testing.T) *natlab {
	if os.Getenv(natlabEnv) == "" {
		t.Skipf("NAT lab: set %s=1 to run it, as root (e.g. %s=1 %s=3 go test -v -count=1 -timeout 30m -run TestNATLab .)", natlabEnv, natlabEnv, natlabTrialsEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("NAT lab: needs root to make network namespaces")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("NAT lab: %s not found (apt-get install iproute2 iptables conntrack)", tool)
		}
	}
	l := &natlab{t: t, prefix: fmt.Sprintf("kcl%03d", os.Getpid()%1000), tmp: t.TempDir()}
	l.sweep()
	probe := l.prefix + "probe"
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("NAT lab: cannot make a network namespace: %v: %s", err, out)
	}
	exec.Command("ip", "netns", "del", probe).Run()
	l.bin = kadchatBinary(t)
	l.inet = l.addNS("i")
	l.sysctl(l.inet, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	l.startDHT()
	return l
}

// sweep deletes namespaces of this prefix left by an earlier run whose pid
// matched ours, and any lab namespace older than natlabStaleAge, killing
// what still runs inside them.
func (l *natlab) sweep() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "kcl") {
			continue
		}
		info, err := e.Info()
		stale := err == nil && time.Since(info.ModTime()) > natlabStaleAge
		if !strings.HasPrefix(name, l.prefix) && !stale {
			continue
		}
		l.deleteNS(name)
	}
}

// deleteNS kills the processes inside ns and deletes it.
func (l *natlab) deleteNS(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := exec.Command("ip", "netns", "del", ns).Run(); err != nil {
		l.t.Logf("NAT lab: delete namespace %s: %v", ns, err)
	}
}

// addNS makes a namespace named prefix+suffix with lo up; the test's
// cleanup deletes it.
func (l *natlab) addNS(suffix string) string {
	ns := l.prefix + suffix
	l.must("", "ip", "netns", "add", ns)
	l.t.Cleanup(func() { l.deleteNS(ns) })
	l.must("", "ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

// run runs a command, inside ns unless ns is "", bounded by natlabCmdWait.
func (l *natlab) run(ns string, args ...string) error {
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), natlabCmdWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (l *natlab) must(ns string, args ...string) {
	l.t.Helper()
	if err := l.run(ns, args...); err != nil {
		l.t.Fatalf("NAT lab: %v", err)
	}
}

// script runs each line of s as one command in ns.
func (l *natlab) script(ns, s string) {
	l.t.Helper()
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			l.must(ns, f...)
		}
	}
}

func (l *natlab) sysctl(ns string, kv ...string) {
	l.t.Helper()
	for _, s := range kv {
		l.must(ns, "sysctl", "-qw", s)
	}
}

// veth links ifA in nsA to ifB in nsB, both up.
func (l *natlab) veth(nsA, ifA, nsB, ifB string) {
	l.t.Helper()
	l.must(nsA, "ip", "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", nsB)
	l.must(nsA, "ip", "link", "set", ifA, "up")
	l.must(nsB, "ip", "link", "set", ifB, "up")
}

// attach links ns to the internet router on a /30 (and a /64) of the given
// ranges, numbered i, with ns's side named "wan" and a default route. It
// returns the internet's interface and ns's two addresses.
func (l *natlab) attach(ns, link string, i int, net4 string, net6 string) (wan4, wan6 string) {
	l.t.Helper()
	l.veth(l.inet, link, ns, "wan")
	gw4, wan4 := fmt.Sprintf("%s%d", net4, 4*i+1), fmt.Sprintf("%s%d", net4, 4*i+2)
	gw6, wan6 := fmt.Sprintf("%s%x::1", net6, i), fmt.Sprintf("%s%x::2", net6, i)
	l.must(l.inet, "ip", "addr", "add", gw4+"/30", "dev", link)
	l.must(l.inet, "ip", "-6", "addr", "add", gw6+"/64", "dev", link, "nodad")
	l.must(ns, "ip", "addr", "add", wan4+"/30", "dev", "wan")
	l.must(ns, "ip", "-6", "addr", "add", wan6+"/64", "dev", "wan", "nodad")
	l.must(ns, "ip", "route", "add", "default", "via", gw4)
	l.must(ns, "ip", "-6", "route", "add", "default", "via", gw6)
	return wan4, wan6
}

// startDHT starts natlabDHTNodes kadchat processes, each in its own
// namespace with one IPv4 and one IPv6 address, bootstrapped to each other.
func (l *natlab) startDHT() {
	for i := range natlabDHTNodes {
		wan4, wan6 := fmt.Sprintf("198.18.%d.2", i), fmt.Sprintf("2001:db8:100:%x::2", i)
		l.dht4 = append(l.dht4, fmt.Sprintf("%s:%d", wan4, natlabPort))
		l.dht6 = append(l.dht6, fmt.Sprintf("[%s]:%d", wan6, natlabPort))
	}
	for i := range natlabDHTNodes {
		ns := l.addNS(fmt.Sprintf("d%d", i))
		l.attach(ns, fmt.Sprintf("d%d", i), 0, fmt.Sprintf("198.18.%d.", i), fmt.Sprintf("2001:db8:100:%x:", i))
		boot := strings.Join(append(append([]string{}, l.dht4...), l.dht6...), ",")
		p := l.start(ns, fmt.Sprintf("dht%d", i), filepath.Join(l.tmp, fmt.Sprintf("dht%d", i)), boot, false)
		l.t.Cleanup(p.kill)
		if _, ok := p.waitOut(context.Background(), natlabCmdWait, "* ready "); !ok {
			l.t.Fatalf("NAT lab: DHT node %d did not start: %s", i, p.tail())
		}
	}
	// One round of find_node among the nodes before the first user joins.
	time.Sleep(time.Second)
}

// addSite attaches a site of kind with hosts hosts (ignored for a public
// site, which is its own one host).
func (l *natlab) addSite(kind routerKind, hosts int) *site {
	l.t.Helper()
	l.mu.Lock()
	i := l.nextSite
	l.nextSite++
	l.mu.Unlock()
	s := &site{index: i, kind: kind, link: fmt.Sprintf("s%d", i)}
	ns := l.addNS(fmt.Sprintf("s%d", i))
	s.wan4, s.wan6 = l.attach(ns, s.link, i, "203.0.113.", "2001:db8:200:")
	if kind == sitePublic {
		s.hosts = []string{ns}
		return s
	}
	s.router = ns
	lan6 := fmt.Sprintf("2001:db8:300:%x::", i)
	l.must(l.inet, "ip", "-6", "route", "add", lan6+"/64", "via", s.wan6)
	l.script(ns, "ip link add lan type bridge\nip link set lan up\nip addr add "+natlabLANPrefix+"1/24 dev lan\n"+
		"ip -6 addr add "+lan6+"1/64 dev lan nodad")
	for h := range hosts {
		hns := l.addNS(fmt.Sprintf("s%dh%d", i, h))
		l.veth(ns, fmt.Sprintf("l%d", h), hns, "eth0")
		l.must(ns, "ip", "link", "set", fmt.Sprintf("l%d", h), "master", "lan")
		if kind.hasV4() {
			l.must(hns, "ip", "addr", "add", fmt.Sprintf("%s%d/24", natlabLANPrefix, natlabHostBase+h), "dev", "eth0")
			l.must(hns, "ip", "route", "add", "default", "via", natlabLANPrefix+"1")
		}
		if kind.hasV6() {
			l.must(hns, "ip", "-6", "addr", "add", fmt.Sprintf("%s%x/64", lan6, natlabHostBase+h), "dev", "eth0", "nodad")
			l.must(hns, "ip", "-6", "route", "add", "default", "via", lan6+"1")
		}
		s.hosts = append(s.hosts, hns)
	}
	l.configureRouter(s)
	return s
}

// configureRouter writes the router's forwarding, firewall and NAT rules.
func (l *natlab) configureRouter(s *site) {
	l.t.Helper()
	ns := s.router
	l.sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// A home router switches its LAN: two hosts there talk without its
	// firewall. With br_netfilter loaded, Linux would filter bridged
	// packets through FORWARD (and drop them there) unless told not to.
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		l.sysctl(ns, "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
	}
	// Both families: a stateful FORWARD that lets out what the LAN sends and
	// in only what answers it. Without IPv6 (or IPv4) service the family's
	// FORWARD drops everything.
	for _, fw := range []string{"iptables", "ip6tables"} {
		l.script(ns, fw+" -P FORWARD DROP\n"+
			fw+" -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"+
			fw+" -A FORWARD -i lan -o wan -j ACCEPT")
	}
	if !s.kind.hasV4() {
		l.must(ns, "iptables", "-F", "FORWARD")
	}
	if !s.kind.hasV6() {
		l.must(ns, "ip6tables", "-F", "FORWARD")
	}
	switch s.kind {
	case natPlain, natStrict, natForward, dualPlain:
		l.must(ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
	case natRandom:
		l.must(ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE", "--random-fully")
	}
	if s.kind == natStrict {
		l.script(ns, "iptables -A INPUT -i lo -j ACCEPT\n"+
			"iptables -A INPUT -i lan -j ACCEPT\n"+
			"iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"+
			"iptables -P INPUT DROP")
	}
	if s.kind == natForward {
		port := fmt.Sprint(natlabPort)
		l.must(ns, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "--dport", port,
			"-j", "DNAT", "--to-destination", fmt.Sprintf("%s%d:%s", natlabLANPrefix, natlabHostBase, port))
		l.must(ns, "iptables", "-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
	}
}

// flush empties the conntrack table of the site's router: every mapping
// and firewall state is forgotten, as after a router restart.
func (l *natlab) flush(s *site) {
	if s.router == "" {
		return
	}
	// conntrack -F also flushes the IPv6 table (family unspec).
	if err := l.run(s.router, "conntrack", "-F"); err != nil {
		l.t.Logf("NAT lab: %v", err)
	}
}

// Where a moving site's addresses go (natlabCase.move): the host's other
// LAN address, and the router's other WAN /30, numbered as in attach but
// in RFC 5737's TEST-NET-2 (an ISP's new lease from another pool).
const (
	natlabMovedHost = natlabHostBase + 5
	natlabAltWAN    = "198.51.100."
)

// moveHost moves the site's first host to its other LAN address, as a new
// DHCP lease does: the old address goes, the new one comes, the default
// route is restored. The host's socket (bound to the wildcard) stays.
func (l *natlab) moveHost(s *site) error {
	from, to := natlabHostBase, natlabMovedHost
	if s.moved {
		from, to = to, from
	}
	ns := s.hosts[0]
	for _, cmd := range [][]string{
		{"ip", "addr", "del", fmt.Sprintf("%s%d/24", natlabLANPrefix, from), "dev", "eth0"},
		{"ip", "addr", "add", fmt.Sprintf("%s%d/24", natlabLANPrefix, to), "dev", "eth0"},
		{"ip", "route", "replace", "default", "via", natlabLANPrefix + "1"},
	} {
		if err := l.run(ns, cmd...); err != nil {
			return err
		}
	}
	s.moved = !s.moved
	return nil
}

// addAltWAN gives the internet router a gateway on the site's other WAN
// /30, so that moveWAN can put the router there.
func (l *natlab) addAltWAN(s *site) {
	l.t.Helper()
	l.must(l.inet, "ip", "addr", "add", fmt.Sprintf("%s%d/30", natlabAltWAN, 4*s.index+1), "dev", s.link)
}

// moveWAN moves the site's router (or public host) to its other WAN
// address, as an ISP's new lease does: Linux MASQUERADE then drops every
// mapping it made on the old address, and new flows leave from the new one.
func (l *natlab) moveWAN(s *site) error {
	ns := s.router
	if ns == "" {
		ns = s.hosts[0]
	}
	net4 := [2]string{"203.0.113.", natlabAltWAN}
	if s.moved {
		net4[0], net4[1] = net4[1], net4[0]
	}
	from, to, gw := fmt.Sprintf("%s%d/30", net4[0], 4*s.index+2), fmt.Sprintf("%s%d", net4[1], 4*s.index+2), fmt.Sprintf("%s%d", net4[1], 4*s.index+1)
	for _, cmd := range [][]string{
		{"ip", "addr", "del", from, "dev", "wan"},
		{"ip", "addr", "add", to + "/30", "dev", "wan"},
		{"ip", "route", "replace", "default", "via", gw},
	} {
		if err := l.run(ns, cmd...); err != nil {
			return err
		}
	}
	s.moved, s.wan4 = !s.moved, to
	return nil
}

// delayBetween sends the packets between sites a and b through a user-space
// forwarder in the internet namespace that holds each for d: policy routes
// steer them into a TUN device, whose reader writes them back after d, and
// the written packets (arriving on the TUN) take the main table onward.
func (l *natlab) delayBetween(a, b *site, d time.Duration) {
	l.t.Helper()
	l.mu.Lock()
	table := 100 + l.nextTable
	l.nextTable++
	l.mu.Unlock()
	name := fmt.Sprintf("dly%d", table)
	tun, err := openTUN(filepath.Join("/run/netns", l.inet), name)
	if err != nil {
		l.t.Fatalf("NAT lab: %v", err)
	}
	l.t.Cleanup(func() { tun.Close() })
	l.sysctl(l.inet, "net.ipv4.conf."+name+".rp_filter=0")
	tbl := fmt.Sprint(table)
	l.must(l.inet, "ip", "link", "set", name, "up")
	l.must(l.inet, "ip", "route", "add", "default", "dev", name, "table", tbl)
	l.must(l.inet, "ip", "rule", "add", "iif", a.link, "to", b.wan4, "table", tbl)
	l.must(l.inet, "ip", "rule", "add", "iif", b.link, "to", a.wan4, "table", tbl)
	l.t.Cleanup(func() {
		l.run(l.inet, "ip", "rule", "del", "iif", a.link, "to", b.wan4, "table", tbl)
		l.run(l.inet, "ip", "rule", "del", "iif", b.link, "to", a.wan4, "table", tbl)
	})
	go delayPackets(tun, d)
}

// delayPackets writes every packet read from tun back after d, in order,
// until tun is closed. A full queue drops, as a router's would.
func delayPackets(tun *os.File, d time.Duration) {
	type held struct {
		due time.Time
		b   []byte
	}
	q := make(chan held, 4096)
	go func() {
		for h := range q {
			time.Sleep(time.Until(h.due))
			tun.Write(h.b)
		}
	}()
	defer close(q)
	buf := make([]byte, 65536)
	for {
		n, err := tun.Read(buf)
		if err != nil {
			return
		}
		select {
		case q <- held{time.Now().Add(d), append([]byte(nil), buf[:n]...)}:
		default:
		}
	}
}

// openTUN creates the TUN device name (no packet information header) in
// the namespace at nsPath. The device lives while the file is open. A
// thread is moved into the namespace to create it and is never returned to
// the scheduler, so no other goroutine runs there.
func openTUN(nsPath, name string) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	rc := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, back, err := openTUNHere(nsPath, name)
		if back {
			runtime.UnlockOSThread()
		} // else the thread stays locked and exits with the goroutine
		rc <- result{f, err}
	}()
	r := <-rc
	return r.f, r.err
}

// openTUNHere does openTUN's work on a locked thread, and moves the thread
// back to its own namespace; back reports whether it is there.
func openTUNHere(nsPath, name string) (f *os.File, back bool, err error) {
	home, err := syscall.Open("/proc/thread-self/ns/net", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, fmt.Errorf("natlab: own namespace: %w", err)
	}
	defer syscall.Close(home)
	nsfd, err := syscall.Open(nsPath, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, fmt.Errorf("natlab: open %s: %w", nsPath, err)
	}
	defer syscall.Close(nsfd)
	if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("natlab: setns: %w", err)
	}
	f, err = createTUN(name)
	return f, unix.Setns(home, unix.CLONE_NEWNET) == nil, err
}

// createTUN creates the TUN device in the calling thread's namespace.
func createTUN(name string) (*os.File, error) {
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("natlab: open tun: %w", err)
	}
	var req struct {
		name  [16]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = syscall.IFF_TUN | syscall.IFF_NO_PI
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		syscall.Close(fd)
		return nil, fmt.Errorf("natlab: TUNSETIFF %s: %w", name, e)
	}
	// Non-blocking, so the runtime poller serves it and Close ends a Read.
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("natlab: tun nonblock: %w", err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// labLine is one line a lab process wrote, with when it was read.
type labLine struct {
	at   time.Time
	text string
	log  bool // from stderr (the -v debug log), else stdout
}

// labProc is one kadchat running in a namespace.
type labProc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	start time.Time

	mu      sync.Mutex
	lines   []labLine
	changed chan struct{} // closed and replaced at every new line
	killed  bool
}

// start runs kadchat in ns with data directory dir. With verbose, the debug
// log lines that say what the rendezvous found, and the session's, are kept.
func (l *natlab) start(ns, name, dir, boot string, verbose bool, flags ...string) *labProc {
	l.t.Helper()
	args := []string{"netns", "exec", ns, l.bin, "-dir", dir, "-listen", fmt.Sprintf(":%d", natlabPort), "-bootstrap", boot}
	if verbose {
		args = append(args, "-v")
	}
	args = append(args, flags...)
	p := &labProc{name: name, changed: make(chan struct{})}
	p.cmd = exec.Command("ip", args...)
	// ip netns exec becomes kadchat (same pid); the signal reaches it if
	// the test dies.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		l.t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		l.t.Fatalf("NAT lab: start %s: %v", name, err)
	}
	go p.read(stdout, false)
	go p.read(stderr, true)
	return p
}

func (p *labProc) read(r io.Reader, log bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		s := sc.Text()
		if log && !strings.Contains(s, `msg="chat: rendezvous"`) && !strings.Contains(s, `msg="session:`) &&
			!strings.Contains(s, `msg="punch:`) && !strings.Contains(s, `msg="invite:`) &&
			!strings.Contains(s, "level=WARN") && !strings.Contains(s, "level=ERROR") {
			continue
		}
		p.mu.Lock()
		p.lines = append(p.lines, labLine{time.Now(), s, log})
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
}

// send writes one command line to the process.
func (p *labProc) send(line string) {
	io.WriteString(p.stdin, line+"\n")
}

// wait returns the first line that match accepts, waiting at most d.
func (p *labProc) wait(ctx context.Context, d time.Duration, match func(labLine) bool) (labLine, bool) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		p.mu.Lock()
		for _, ln := range p.lines {
			if match(ln) {
				p.mu.Unlock()
				return ln, true
			}
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return labLine{}, false
		}
	}
}

// waitOut waits for a stdout line starting with prefix.
func (p *labProc) waitOut(ctx context.Context, d time.Duration, prefix string) (labLine, bool) {
	return p.wait(ctx, d, func(l labLine) bool { return !l.log && strings.HasPrefix(l.text, prefix) })
}

// first returns the first line match accepts without waiting.
func (p *labProc) first(match func(labLine) bool) (labLine, bool) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return p.wait(ctx, 0, match)
}

// tail is the last lines, for failure messages.
func (p *labProc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, ln := range p.lines[max(0, len(p.lines)-30):] {
		fmt.Fprintf(&b, "\n  %s %s| %s", ln.at.Format("15:04:05.000"), p.name, ln.text)
	}
	return b.String()
}

// kill ends the process and reaps it.
func (p *labProc) kill() {
	p.mu.Lock()
	done := p.killed
	p.killed = true
	p.mu.Unlock()
	if done {
		return
	}
	p.stdin.Close()
	p.cmd.Process.Kill()
	p.cmd.Wait()
}
