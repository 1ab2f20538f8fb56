// kadchat: serverless chat over the BitTorrent mainline DHT.
//
// A user is an X25519 public key. Two people who hold each other's key find
// each other's address through the DHT (a rendezvous infohash only they can
// derive) and talk over Noise IKpsk2 sessions with fresh keys per session.
//
// Flow: main parses flags, opens the data directory and the one UDP socket,
// then starts the DHT, the session layer and the chat core on it, and reads
// commands from stdin until /quit, end of input, SIGINT or SIGTERM; then the
// sessions say goodbye to the contacts, and it stops everything and saves
// state.
package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
)

// defaultBootstrap are the well-known mainline routers. Tests never use them.
var defaultBootstrap = []string{
	"router.bittorrent.com:6881",
	"dht.transmissionbt.com:6881",
	"router.utorrent.com:6881",
	"dht.libtorrent.org:25401",
}

// defaultListen is the mainline DHT's customary port.
const defaultListen = ":6881"

// defaultNowRandLog fills in the real clock, crypto/rand and a logger that
// discards, where a layer's config left them nil. Every layer takes the
// three from its config so that tests can pass a fake clock and a seeded
// reader (STYLE 7); the program itself passes nothing or its own logger.
func defaultNowRandLog(now *func() time.Time, r *io.Reader, log **slog.Logger) {
	if *now == nil {
		*now = time.Now
	}
	if *r == nil {
		*r = rand.Reader
	}
	if *log == nil {
		*log = slog.New(slog.DiscardHandler)
	}
}

type options struct {
	dir       string
	listen    string
	bootstrap []string
	demo      bool
	verbose   bool
	punchTTL  int  // TTL of opening packets (SPEC.md 5.8.3); zero: the default
	relay     bool // forward between contacts (SPEC.md 5.9)
	metered   bool // BEP 43 read-only DHT node

	rekeyAfter time.Duration // the demo shortens it; zero: the default
	dropDelay  time.Duration // the demo shortens it; zero: the default (dropDelay)
}

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return // -h or -version: printed to stdout, exit 0
	}
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if opts.demo {
		err = runDemo(ctx, os.Stdout)
	} else {
		err = runStdio(ctx, opts)
	}
	if err != nil {
		// Said once, without a prefix of our own: the error names its layer.
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// parseFlags parses the command line. -h and -version print to stdout and
// return flag.ErrHelp (exit 0: the user asked); a mistake prints the usage
// to stderr and returns another error (exit 2).
func parseFlags(args []string, stdout, stderr io.Writer) (options, error) {
	var o options
	var usage strings.Builder
	fs := flag.NewFlagSet("kadchat", flag.ContinueOnError)
	fs.SetOutput(&usage)
	defDir := "kadchat-data"
	if d, err := os.UserConfigDir(); err == nil {
		defDir = filepath.Join(d, "kadchat")
	}
	fs.StringVar(&o.dir, "dir", defDir, "data directory (identity, contacts, outbox, routing table)")
	fs.StringVar(&o.listen, "listen", defaultListen, "UDP address to listen on (if busy: the port used last time, else a free one)")
	boot := fs.String("bootstrap", strings.Join(defaultBootstrap, ","), "DHT bootstrap nodes, HOST:PORT[,HOST:PORT...]")
	fs.BoolVar(&o.demo, "demo", false, "run a self-contained loopback demo and exit")
	fs.BoolVar(&o.metered, "metered", false, "metered connection: a read-only DHT node (BEP 43) that answers no one's queries")
	fs.BoolVar(&o.verbose, "v", false, "debug logs on stderr")
	fs.BoolVar(&o.relay, "relay", false, "relay for contacts of yours who cannot reach each other directly: their messages stay encrypted end to end, but pass through your connection")
	fs.IntVar(&o.punchTTL, "punch-ttl", defaultPunchTTL, "TTL of hole-punching packets: enough to cross your own NAT (raise it behind a carrier's NAT), too little to reach a contact's")
	version := fs.Bool("version", false, "print the version and exit")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		io.WriteString(stdout, usage.String())
		return o, err
	case err != nil:
		io.WriteString(stderr, usage.String())
		return o, err
	case *version:
		fmt.Fprintln(stdout, versionLine())
		return o, flag.ErrHelp
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "kadchat: unexpected argument %q\n", fs.Arg(0))
		return o, errors.New("usage")
	case o.punchTTL < 1 || o.punchTTL > 255:
		fmt.Fprintf(stderr, "kadchat: -punch-ttl %d: want 1 to 255\n", o.punchTTL)
		return o, errors.New("usage")
	}
	for _, b := range strings.Split(*boot, ",") {
		if b = strings.TrimSpace(b); b != "" {
			o.bootstrap = append(o.bootstrap, b)
		}
	}
	return o, nil
}

// versionLine names the module version, the VCS revision when the build
// recorded one, and the Go release.
func versionLine() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "kadchat unknown " + runtime.Version()
	}
	v := "kadchat " + bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			v += " " + s.Value
		}
	}
	return v + " " + bi.GoVersion
}

// newLogHandler logs to stderr with -v only: without it, what a person
// needs to know arrives as "*" lines (see dhtWatch), not as log records.
func newLogHandler(verbose bool, stderr io.Writer) slog.Handler {
	if !verbose {
		return slog.DiscardHandler
	}
	return slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
}

// run is the program: everything but flag parsing and signals, so tests
// can run it in-process. Lines come from src; results and events go to
// stdout, logs (with -v) to stderr.
func run(ctx context.Context, o options, src lineSource, stdout, stderr io.Writer) error {
	a, err := openApp(o, slog.New(newLogHandler(o.verbose, stderr)), stdout)
	if err != nil {
		return err
	}
	src.attach(a.ui)
	// A signal ends the commands (ctx) but not the layers: the sessions
	// must still say goodbye on an open socket before everything stops.
	cmds, stopCmds := context.WithCancel(ctx)
	layers, stopLayers := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	a.start(layers, &wg)
	a.watch = &dhtWatch{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watch.run(layers, a.dht.goodNodes, a.dhtFailed, func(l string) { a.ui.printf("%s", l) })
	}()
	if a.busyPort != "" {
		a.ui.printf("* listening on %s (%s was busy)", a.node.LocalAddr(), a.busyPort)
	}
	a.ui.printf("* ready %s %s", a.node.LocalAddr(), a.id.public())
	err = a.readCommands(cmds, src)
	stopCmds()
	a.sess.goodbye.say() // /quit, end of input, SIGINT and SIGTERM alike
	stopLayers()
	wg.Wait()
	if cerr := a.close(); err == nil {
		err = cerr
	}
	return err
}

// lineSource is where command lines come from: plain lines from a pipe or
// a script, or the line editor at a terminal (term.go).
type lineSource interface {
	// attach gives the source the UI it serves, before the first read.
	attach(u *ui)
	// readLines sends each line, without its newline, to lines until end
	// of input (then it returns nil) or the end of ctx.
	readLines(ctx context.Context, lines chan<- string) error
}

// readCommands feeds the source's lines to the UI until end of input,
// /quit or the end of ctx.
func (a *app) readCommands(ctx context.Context, src lineSource) error {
	lines := make(chan string)
	errc := make(chan error, 1)
	go func() { errc <- src.readLines(ctx, lines) }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case line := <-lines:
			if err := a.ui.handleLine(ctx, line); errors.Is(err, errQuit) {
				return nil
			}
		}
	}
}

// plainSource reads lines as they come, for a pipe or a script: no
// prompt, no echo, the event format unchanged.
type plainSource struct {
	r io.Reader
	u *ui
}

func (p *plainSource) attach(u *ui) { p.u = u }

func (p *plainSource) readLines(ctx context.Context, lines chan<- string) error {
	return readLines(ctx, p.r, lines, p.u)
}

// readLines sends each line of r (without its newline) to lines. It
// returns nil at end of input. A line longer than maxLine is refused with
// an error line and skipped, never buffered without bound.
func readLines(ctx context.Context, r io.Reader, lines chan<- string, u *ui) error {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		b, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			u.printf("error line longer than %d bytes ignored: a message is at most %d bytes", maxLine, maxMessageText)
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			b = nil // the tail of the long line is not a line either
			if err == nil {
				continue
			}
		}
		if len(b) > 0 && (err == nil || err == io.EOF) {
			select {
			case lines <- string(b):
			case <-ctx.Done():
				return nil
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("ui: read: %w", err)
		}
	}
}

// app is one running kadchat: its identity, socket, DHT, sessions and chat.
type app struct {
	dir  string
	log  *slog.Logger
	id   *identity
	node *Node
	dht  *dht
	sess *sessionManager
	chat *chat
	inv  *inviter
	ui   *ui
	lock *dirLock

	busyPort  string        // the port asked for, when it was busy; "" if we got it
	watch     *dhtWatch     // nil in the demo
	dhtFailed chan struct{} // a bootstrap failed (buffered 1: one pending signal is enough)

	punch *puncher     // hole punching (punch.go)
	hosts *hostScanner // our interface addresses
	relay *relayer     // relaying for and through contacts (relay.go)
}

// openApp opens the data directory and builds the layers on one socket.
func openApp(o options, log *slog.Logger, stdout io.Writer) (*app, error) {
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return nil, fmt.Errorf("kadchat: data directory: %w", err)
	}
	// The lock comes before every other file of the directory: a second
	// process must not read a half-written outbox, nor write anything.
	lock, err := lockDir(o.dir)
	if err != nil {
		return nil, err
	}
	a := &app{dir: o.dir, log: log, lock: lock}
	a.ui = &ui{app: a, out: stdout, now: time.Now}
	if err := a.open(o); err != nil {
		if a.node != nil {
			a.node.Close()
		}
		lock.release()
		return nil, err
	}
	return a, nil
}

// open loads the identity, opens the socket and builds the layers.
func (a *app) open(o options) error {
	var err error
	if a.id, err = loadOrCreateIdentity(o.dir, rand.Reader); err != nil {
		return err
	}
	if a.node, a.busyPort, err = listenRemembered(o.dir, o.listen, a.log); err != nil {
		return err
	}
	return a.build(o)
}

// build wires the DHT, the sessions and the chat core to each other.
func (a *app) build(o options) error {
	var err error
	a.dhtFailed = make(chan struct{}, 1)
	a.dht, err = newDHT(a.node, dhtConfig{Bootstrap: o.bootstrap, Dir: o.dir, Now: time.Now, Rand: rand.Reader, Log: a.log, ReadOnly: o.metered,
		BootstrapFailed: func(error) {
			select {
			case a.dhtFailed <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return err
	}
	pq, err := openPQStore(o.dir)
	if err != nil {
		return err
	}
	timestamps, err := loadTimestamps(o.dir)
	if err != nil {
		return err
	}
	a.sess = newSessionManager(sessionConfig{
		Identity:   a.id,
		Dir:        o.dir,
		Timestamps: timestamps,
		Send:       a.sendPacket,
		Deliver: func(k publicKey, from netip.AddrPort, b []byte) {
			if !a.relay.handle(k, b) {
				a.chat.handlePayload(k, from, b)
			}
		},
		Established: func(k publicKey, addr netip.AddrPort) {
			a.chat.presence.online(k, addr)
			every, dead := a.punch.online(k, addr)
			a.sess.timers.setPath(k, addr, every, dead)
			a.relay.online(k)
		},
		Ended: func(k publicKey, seen time.Time) {
			a.chat.presence.offline(k, seen)
			a.punch.offline(k)
			a.relay.offline(k)
		},
		Stalled:        func(k publicKey) { a.punch.stalled(k) },
		PQEvent:        a.ui.pqEvent,
		PQ:             pq,
		RekeyAfterTime: o.rekeyAfter,
		Now:            time.Now,
		Rand:           rand.Reader,
		Log:            a.log,
	})
	a.node.onSession = a.sess.handlePacket
	a.buildPuncher(o)
	scrub, err := scrubAfterFromEnv()
	if err != nil {
		return err
	}
	a.chat, err = newChat(chatConfig{
		Dir:          o.dir,
		Self:         a.id.public(),
		StaticSecret: a.id.staticSecret,
		Announce: func(ctx context.Context, ih nodeID) ([]netip.AddrPort, int, error) {
			return a.dht.announce(ctx, ih, 0, true)
		},
		GetPeers:    watcher{a.dht}.peers,
		PutItem:     a.dht.putMutableN,
		GetItem:     watcher{a.dht}.mutable,
		SetEndpoint: a.punch.found,
		Announced:   a.punch.announced,
		LookedUp:    a.punch.lookedUp,
		IsSelf:      a.isSelf,
		OwnIP:       a.isOwnIP,
		Send:        a.sess.send,
		MaxPayload:  relayChatPayload, // so that a chat frame also fits a relay frame (SPEC.md 5.9)
		ScrubAfter:  scrub,
		Event:       a.ui.event,
		Now:         time.Now,
		Rand:        rand.Reader,
		Log:         a.log,
	})
	if err != nil {
		return err
	}
	if o.dropDelay > 0 {
		a.chat.drops.delay = o.dropDelay
	}
	// The session layer answers contacts only: it learns them here and
	// from addContact and removeContact.
	for _, c := range a.chat.contactList() {
		if err := a.sess.addContact(c.Key); err != nil {
			return err
		}
	}
	a.inv = newInviter(inviteConfig{
		Self: a.id.public(),
		Send: a.node.send,
		Announce: func(ctx context.Context, ih nodeID) (int, error) {
			_, n, err := a.dht.announce(ctx, ih, 0, true)
			return n, err
		},
		GetPeers: a.dht.getPeers,
		Open:     func(to netip.AddrPort) error { return a.node.sendTTL(to, nil, o.punchTTL) },
		Now:      time.Now,
		Rand:     rand.Reader,
		Log:      a.log,
	})
	a.node.onInvite = a.inv.handlePacket
	return nil
}

// start runs every layer's goroutines until ctx ends.
func (a *app) start(ctx context.Context, wg *sync.WaitGroup) {
	for _, f := range []func(context.Context) error{
		a.node.run,
		a.dht.maint.run,
		func(ctx context.Context) error { a.sess.run(ctx); return nil },
		a.chat.run,
		a.punch.run,
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Warn("stopped", "err", err)
			}
		}()
	}
}

// close saves state; call it after the goroutines of start have ended.
func (a *app) close() error {
	err := a.chat.close()
	a.node.Close()
	a.lock.release()
	return err
}

// addContact adds k to the session layer first, so that neither the
// rendezvous's first address nor the contact's first initiation finds it
// missing there.
func (a *app) addContact(name string, k publicKey) error {
	_, known := a.chat.contactByKey(k)
	if err := a.sess.addContact(k); err != nil {
		return err
	}
	if err := a.chat.addContact(name, k); err != nil {
		if !known {
			a.sess.forget(k)
		}
		return err
	}
	return nil
}

func (a *app) removeContact(name string) error {
	c, ok := a.chat.contactByName(name)
	if err := a.chat.removeContact(name); err != nil {
		return err
	}
	if ok {
		a.sess.forget(c.Key)
		a.punch.forget(c.Key)
	}
	return nil
}

func (a *app) hasContact(name string) bool {
	_, ok := a.chat.contactByName(name)
	return ok
}

// isSelf reports whether addr is one of ours: the rendezvous finds our own
// announcement next to the contact's.
func (a *app) isSelf(addr netip.AddrPort) bool {
	if addr == a.node.LocalAddr() {
		return true
	}
	ext, ok := a.dht.external()
	return ok && addr == ext
}

// checkNewContact refuses a name that is invalid or taken before an
// invitation starts, rather than after it succeeded.
func (a *app) checkNewContact(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if a.hasContact(name) {
		return fmt.Errorf("kadchat: a contact named %q exists", name)
	}
	return nil
}

// isOwnIP reports whether ip is an address we are reachable at; the
// rendezvous tries candidates there last (they are mostly our own old ports).
func (a *app) isOwnIP(ip netip.Addr) bool {
	if ip == a.node.LocalAddr().Addr() {
		return true
	}
	ext, ok := a.dht.external()
	return ok && ip == ext.Addr()
}

// buildPuncher wires hole punching (punch.go) to the DHT, where endpoint
// records live, and to the socket and sessions it opens paths for; and the
// relay (relay.go) to the sessions it carries packets on.
func (a *app) buildPuncher(o options) {
	a.relay = newRelayer(relayConfig{
		Enabled: o.relay,
		Send:    a.sess.send,
		Deliver: a.sess.handlePacket,
		Online: func(k publicKey) bool {
			c, ok := a.chat.contactByKey(k)
			return ok && c.Online
		},
		Contact: func(k publicKey) bool {
			_, ok := a.chat.contactByKey(k)
			return ok
		},
		Now: time.Now,
		Log: a.log,
	})
	a.hosts = newHostScanner(a.node.LocalAddr().Addr(), time.Now)
	// Read-only from the first query when we are surely behind a NAT;
	// localView corrects it once DHT nodes have told us.
	a.dht.tx.readOnly.Store(o.metered || startsBehindNAT(a.hosts.get(), o.bootstrap))
	a.punch = newPuncher(punchConfig{
		Self:         a.id.public(),
		StaticSecret: a.id.staticSecret,
		Put: func(ctx context.Context, seed [32]byte, seq int64, v []byte) error {
			_, _, err := a.dht.putMutable(ctx, ed25519.NewKeyFromSeed(seed[:]), nil, seq, v)
			return err
		},
		Get: func(ctx context.Context, k [32]byte, check bool) (int64, []byte, error) {
			w := watcher{a.dht}
			read := w.poll
			if check {
				read = func(ctx context.Context, k [32]byte) (bep44Item, bool, error) { return w.mutable(ctx, k, nil) }
			}
			it, found, err := read(ctx, k)
			if err == nil && !found {
				err = errNotFound
			}
			return it.Seq, it.V, err
		},
		Open:    func(to netip.AddrPort, ttl int) error { return a.node.sendTTL(to, nil, ttl) },
		Connect: a.sess.setEndpoint,
		Forget:  a.sess.forgetPath,
		Local:   a.localView,
		Relays:  a.relay.relays,
		Via:     a.relay.pathAddr,
		TTL:     o.punchTTL,
		Now:     time.Now,
		Rand:    rand.Reader,
		Log:     a.log,
	})
}

// localView is what we know of our own addresses now (nat.go). It also
// keeps the DHT read-only (BEP 43) while we are behind a NAT, as the
// puncher, which calls it every tick, needs (SPEC.md 3.4.2, 5.8.3).
func (a *app) localView() localView {
	v := localView{Hosts: a.hosts.get(), Port: a.node.LocalAddr().Port()}
	var ports []uint16
	v.External, ports = a.dht.externalPorts()
	v.Behaviour = classifyNAT(v.Hosts, v.Port, v.External, ports)
	if v.Behaviour != natUnknown {
		a.dht.tx.readOnly.Store(a.dht.cfg.ReadOnly || v.Behaviour != natPublic)
	}
	return v
}

// natLine is /status's "nat" line: what DHT nodes tell us about our way to
// the internet (nat.go), and the external addresses they see.
func (a *app) natLine() string {
	v := a.localView()
	ext, ports := a.dht.externalPorts()
	seen := make([]string, 0, len(ports))
	for _, p := range ports {
		seen = append(seen, netip.AddrPortFrom(ext.Addr(), p).String())
	}
	if len(seen) == 0 {
		seen = append(seen, "-")
	}
	return fmt.Sprintf("nat %s %s", v.Behaviour, strings.Join(seen, ","))
}

// sendPacket is the session layer's Send: a relay path's packets go through
// the relay (relay.go), the rest out of the socket.
func (a *app) sendPacket(to netip.AddrPort, b []byte) error {
	if handled, err := a.relay.sendPacket(to, b); handled {
		return err
	}
	return a.node.send(to, b)
}

// addrText shows where a contact is: its address, or "via NAME" for a
// session through the relay NAME.
func (a *app) addrText(addr netip.AddrPort) string {
	if p, ok := a.relay.path(addr); ok {
		if c, ok := a.chat.contactByKey(p.relay); ok {
			return "via " + c.Name
		}
		return "via a former contact"
	}
	return addr.String()
}

// pathText is /status's account of a session's path: "direct|lan|ipv6
// ADDR" (nat.go pathKind), or "relay NAME".
func (a *app) pathText(addr netip.AddrPort) string {
	if t := a.addrText(addr); strings.HasPrefix(t, "via ") {
		return "relay " + strings.TrimPrefix(t, "via ")
	}
	return pathKind(addr) + " " + addr.String()
}
