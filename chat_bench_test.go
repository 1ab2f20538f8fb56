// Benchmarks of the chat over the whole stack: Node (one UDP socket),
// sessions, chat core with its durable outbox and, for the time to the
// first message, a DHT. They live apart from message_test.go because they
// start real sockets and files and measure, where the unit tests check.
//
// Flow: benchStack assembles the layers the way app.build does, but hands
// the chat's events to the benchmark instead of the UI. Two stacks on
// 127.0.0.1 befriend each other and get a session; the benchmarks then
// time sends against the receiver's message events.
//
//	go test -run='^$' -bench=BenchmarkDeliveryLatency -benchtime=200x
//	go test -run='^$' -bench=BenchmarkThroughput -benchtime=20000x
//	go test -run='^$' -bench=BenchmarkTimeToFirstMessage -benchtime=20x
//
// BENCHLOG=1 sends the debug logs of the stacks that run a DHT to stderr.
package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchStack is one kadchat without its UI.
type benchStack struct {
	dir  string
	id   *identity
	node *Node
	dht  *dht // nil when built without the DHT
	sess *sessionManager
	chat *chat

	onEvent atomic.Pointer[func(chatEvent)]

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// benchStackOpts says how to build a stack.
type benchStackOpts struct {
	dir    string
	listen string   // "127.0.0.1:0" if empty
	boot   []string // DHT bootstrap; used only with withDHT
	dht    bool
}

// startBenchStack builds and runs a stack from dir.
func startBenchStack(tb testing.TB, o benchStackOpts) *benchStack {
	tb.Helper()
	if o.listen == "" {
		o.listen = "127.0.0.1:0"
	}
	s := &benchStack{dir: o.dir}
	var err error
	if s.id, err = loadOrCreateIdentity(o.dir, rand.Reader); err != nil {
		tb.Fatal(err)
	}
	if s.node, err = listenNode(o.listen, nil); err != nil {
		tb.Fatal(err)
	}
	if o.dht {
		if s.dht, err = newDHT(s.node, dhtConfig{Bootstrap: o.boot, Dir: o.dir}); err != nil {
			tb.Fatal(err)
		}
	}
	pq, err := openPQStore(o.dir)
	if err != nil {
		tb.Fatal(err)
	}
	var lg *slog.Logger
	if os.Getenv("BENCHLOG") != "" && o.dht {
		lg = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", o.listen)
	}
	s.sess = newSessionManager(sessionConfig{
		Log:         lg,
		Identity:    s.id,
		Send:        s.node.send,
		Deliver:     func(k publicKey, from netip.AddrPort, b []byte) { s.chat.handlePayload(k, from, b) },
		Established: func(k publicKey, addr netip.AddrPort) { s.chat.presence.online(k, addr) },
		Ended:       func(k publicKey, seen time.Time) { s.chat.presence.offline(k, seen) },
		PQ:          pq,
	})
	s.node.onSession = s.sess.handlePacket
	cfg := chatConfig{
		Log:          lg,
		Dir:          o.dir,
		Self:         s.id.public(),
		StaticSecret: s.id.staticSecret,
		SetEndpoint:  s.sess.setEndpoint,
		IsSelf:       func(a netip.AddrPort) bool { return a == s.node.LocalAddr() },
		OwnIP:        func(ip netip.Addr) bool { return ip == s.node.LocalAddr().Addr() },
		Send:         s.sess.send,
		MaxPayload:   maxTransportPayload,
		Event: func(e chatEvent) {
			if f := s.onEvent.Load(); f != nil {
				(*f)(e)
			}
		},
	}
	if s.dht != nil {
		cfg.Announce = func(ctx context.Context, ih nodeID) ([]netip.AddrPort, int, error) {
			return s.dht.announce(ctx, ih, 0, true)
		}
		cfg.GetPeers = s.dht.getPeers
		cfg.PutItem, cfg.GetItem = s.dht.putMutableN, s.dht.getMutable
	}
	if s.chat, err = newChat(cfg); err != nil {
		s.node.Close()
		tb.Fatal(err)
	}
	for _, c := range s.chat.contactList() {
		if err := s.sess.addContact(c.Key); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

// setEvents installs the event handler; it must not block.
func (s *benchStack) setEvents(f func(chatEvent)) { s.onEvent.Store(&f) }

// run starts the goroutines of every layer.
func (s *benchStack) run() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	fs := []func(context.Context) error{
		s.node.run,
		func(ctx context.Context) error { s.sess.run(ctx); return nil },
		s.chat.run,
	}
	if s.dht != nil {
		fs = append(fs, s.dht.maint.run)
	}
	for _, f := range fs {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); f(ctx) }()
	}
}

// stop ends the goroutines and saves state, as app.close does.
func (s *benchStack) stop(tb testing.TB) {
	s.cancel()
	s.wg.Wait()
	if err := s.chat.close(); err != nil {
		tb.Error(err)
	}
	s.node.Close()
}

// benchDir makes a data directory under root ("" is the default temp dir).
func benchDir(tb testing.TB, root, name string) string {
	tb.Helper()
	d, err := os.MkdirTemp(root, "kadchat-bench-"+name+"-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// benchBefriend makes a and b contacts named "b" and "a".
func benchBefriend(tb testing.TB, a, b *benchStack) {
	tb.Helper()
	for _, x := range []struct {
		s, other *benchStack
		name     string
	}{{a, b, "b"}, {b, a, "a"}} {
		if err := x.s.chat.addContact(x.name, x.other.id.public()); err != nil {
			tb.Fatal(err)
		}
		if err := x.s.sess.addContact(x.other.id.public()); err != nil {
			tb.Fatal(err)
		}
	}
}

// benchConnect gives a the address of b and waits until both have a session.
func benchConnect(tb testing.TB, a, b *benchStack) {
	tb.Helper()
	a.sess.setEndpoint(b.id.public(), b.node.LocalAddr())
	deadline := time.Now().Add(10 * time.Second)
	for !a.sess.hasSession(b.id.public()) || !b.sess.hasSession(a.id.public()) {
		if time.Now().After(deadline) {
			tb.Fatal("no session within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// percentile of sorted durations, in microseconds.
func percentileUS(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(len(sorted)-1, int(p*float64(len(sorted))))
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// udpRTT measures n round trips between two plain UDP sockets on
// loopback, the floor under any protocol on this machine.
func udpRTT(tb testing.TB, n int) []time.Duration {
	tb.Helper()
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer a.Close()
	b, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer b.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			m, from, err := b.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b.WriteToUDPAddrPort(buf[:m], from)
		}
	}()
	to := b.LocalAddr().(*net.UDPAddr).AddrPort()
	msg := make([]byte, 64) // about a one-fragment chat frame in a transport packet
	buf := make([]byte, 2048)
	out := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if _, err := a.WriteToUDPAddrPort(msg, to); err != nil {
			tb.Fatal(err)
		}
		a.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := a.ReadFromUDPAddrPort(buf); err != nil {
			tb.Fatal(err)
		}
		out = append(out, time.Since(t0))
	}
	slices.Sort(out)
	return out
}

// benchRoots are the two places the data directories go: the default temp
// dir (a real disk: fsync costs what the device makes it cost) and tmpfs.
var benchRoots = []struct{ name, root string }{{"disk", ""}, {"tmpfs", "/dev/shm"}}

// benchPair starts two befriended stacks with a session between them.
func benchPair(b *testing.B, root string) (snd, rcv *benchStack) {
	if root != "" {
		if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
			b.Skipf("%s not available", root)
		}
	}
	snd = startBenchStack(b, benchStackOpts{dir: benchDir(b, root, "a")})
	rcv = startBenchStack(b, benchStackOpts{dir: benchDir(b, root, "b")})
	benchBefriend(b, snd, rcv)
	snd.run()
	rcv.run()
	b.Cleanup(func() { snd.stop(b); rcv.stop(b) })
	benchConnect(b, snd, rcv)
	return snd, rcv
}

// BenchmarkDeliveryLatency times one message on an established session,
// from the send call to the receiver's message event (after the receiver's
// "delivered" record is durable), one message at a time.
func BenchmarkDeliveryLatency(b *testing.B) {
	for _, r := range benchRoots {
		b.Run(r.name, func(b *testing.B) { benchLatency(b, r.root) })
	}
}

func benchLatency(b *testing.B, root string) {
	snd, rcv := benchPair(b, root)
	got := make(chan uint64, 16)
	done := make(chan uint64, 16)
	rcv.setEvents(func(e chatEvent) {
		if e.Kind == eventMessage {
			got <- e.MsgID
		}
	})
	snd.setEvents(func(e chatEvent) {
		if e.Kind == eventDelivered {
			done <- e.MsgID
		}
	})
	ctx := context.Background()
	text := "a message of about the size people type"
	// A few untimed messages first, so that small -benchtime counts do not
	// measure the first use of every buffer and code path.
	for i := range 10 {
		id, err := snd.chat.send(ctx, "b", text)
		if err != nil {
			b.Fatal(err)
		}
		waitID(b, got, id, i)
		waitID(b, done, id, i)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		id, err := snd.chat.send(ctx, "b", text)
		if err != nil {
			b.Fatal(err)
		}
		waitID(b, got, id, i)
		lat = append(lat, time.Since(t0))
		// Let the ack and its outbox record settle, so each message
		// starts from the same quiet state.
		waitID(b, done, id, i)
	}
	b.StopTimer()
	slices.Sort(lat)
	rtt := udpRTT(b, max(b.N, 1000))
	p50, rtt50 := percentileUS(lat, 0.5), percentileUS(rtt, 0.5)
	b.ReportMetric(p50, "p50-us")
	b.ReportMetric(percentileUS(lat, 0.99), "p99-us")
	b.ReportMetric(rtt50, "udp-rtt-p50-us")
	b.ReportMetric(p50/rtt50, "p50/rtt")
}

// waitID waits for want on ch; ids arrive in order.
func waitID(b *testing.B, ch <-chan uint64, want uint64, i int) {
	b.Helper()
	t := waitTimers.Get().(*time.Timer)
	t.Reset(10 * time.Second)
	defer func() { t.Stop(); waitTimers.Put(t) }()
	for {
		select {
		case id := <-ch:
			if id == want {
				return
			}
			if id > want {
				b.Fatalf("message %d: got id %d, want %d", i, id, want)
			}
		case <-t.C:
			b.Fatalf("message %d (id %d): no event within 10 s", i, want)
		}
	}
}

// waitTimers spares waitID a timer allocation per message, which would
// otherwise show in the benchmarks' allocs/op.
var waitTimers = sync.Pool{New: func() any { return time.NewTimer(time.Hour) }}

// BenchmarkThroughput sends b.N messages from one sender to one receiver
// as fast as the chat allows, with at most chatWindow of them not yet
// delivered: many concurrent send calls share each outbox fsync (group
// commit) on both sides.
func BenchmarkThroughput(b *testing.B) {
	for _, r := range benchRoots {
		b.Run(r.name, func(b *testing.B) { benchThroughput(b, r.root) })
	}
}

func benchThroughput(b *testing.B, root string) {
	snd, rcv := benchPair(b, root)
	window := make(chan struct{}, chatWindow)
	var delivered atomic.Int64
	all := make(chan struct{})
	n := int64(b.N)
	rcv.setEvents(func(e chatEvent) {
		if e.Kind != eventMessage {
			return
		}
		<-window
		if delivered.Add(1) == n {
			close(all)
		}
	})
	ctx := context.Background()
	text := "throughput test message"
	var failed atomic.Pointer[error]
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	var wg sync.WaitGroup
	for range b.N {
		window <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := snd.chat.send(ctx, "b", text); err != nil {
				failed.Store(&err)
			}
		}()
	}
	select {
	case <-all:
	case <-time.After(60 * time.Second):
		b.Fatalf("%d of %d messages delivered within 60 s", delivered.Load(), b.N)
	}
	el := time.Since(t0)
	b.StopTimer()
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(snd.chat.ob.j.syncCount()+rcv.chat.ob.j.syncCount())/float64(b.N), "fsyncs/msg")
}

// syncCount is how many fsyncs the journal did.
func (j *journal) syncCount() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.syncs
}

// benchSwarm starts size DHT nodes that run as the program's do and waits
// until their tables have filled; it returns a few of their addresses to
// bootstrap from.
func benchSwarm(b *testing.B, size int) []string {
	b.Helper()
	s := startSwarm(b, size, swarmOpts{maintain: true})
	deadline := time.Now().Add(20 * time.Second)
	for _, d := range s.nodes {
		for d.size() < bucketSize && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return s.addrs(3)
}

// sessionDrops summarises why a stack's session layer dropped handshakes.
func sessionDrops(s *benchStack) string {
	st := &s.sess.stats
	ci, _ := s.chat.contactByName("b")
	if ci.Name == "" {
		ci, _ = s.chat.contactByName("a")
	}
	return fmt.Sprintf("contact online %v at %v; simultaneous %d, stale %d, failed %d, unknown index %d, strangers %d, bad mac %d, cookies %d",
		ci.Online, ci.Addr, st.simultaneous.Load(), st.staleInit.Load(), st.handshakeFail.Load(), st.unknownIndex.Load(),
		st.stranger.Load(), st.badMAC.Load(), st.cookiesSent.Load())
}

// BenchmarkTimeToFirstMessage: a sender is online with a message queued
// for a receiver that is offline; the receiver starts from its data
// directory (contact already added) on a new port, and the time from its
// start to its first message event is measured. The swarm is 100 DHT nodes
// on loopback, built once. The sender listens on 127.0.0.2 so that, as on
// the Internet, it does not share an IP address with the receiver (a DHT
// node keeps only a few ports per IP and infohash).
func BenchmarkTimeToFirstMessage(b *testing.B) {
	seeds := benchSwarm(b, 100)
	snd := startBenchStack(b, benchStackOpts{dir: benchDir(b, "", "a"), listen: "127.0.0.2:0", boot: seeds, dht: true})
	rdir := benchDir(b, "", "b")
	// The receiver's first run: create its identity, add the contact, join
	// the DHT (its routing table is saved for the next start).
	rcv := startBenchStack(b, benchStackOpts{dir: rdir, boot: seeds, dht: true})
	benchBefriend(b, snd, rcv)
	snd.run()
	b.Cleanup(func() { snd.stop(b) })
	rcv.run()
	// They find each other through the DHT and talk once, as two contacts
	// who were both online before the receiver went away.
	deadline := time.Now().Add(30 * time.Second)
	for !snd.sess.hasSession(rcv.id.public()) || !rcv.sess.hasSession(snd.id.public()) {
		if time.Now().After(deadline) {
			b.Fatalf("sender and receiver found no session within 30 s; sender %s; receiver %s", sessionDrops(snd), sessionDrops(rcv))
		}
		time.Sleep(10 * time.Millisecond)
	}
	rcv.stop(b)
	// The side with the lower key ignores initiations for RekeyTimeout
	// after its own initiation succeeded (SPEC.md 4.8): a receiver that
	// restarts sooner than that is refused once. Wait that out.
	time.Sleep(defaultRekeyTimeout + 100*time.Millisecond)

	got := make(chan uint64, 16)
	events := func(e chatEvent) {
		if e.Kind == eventMessage {
			got <- e.MsgID
		}
	}
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		id, err := snd.chat.send(ctx, "b", fmt.Sprintf("message %d while you were away", i))
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		rcv = startBenchStack(b, benchStackOpts{dir: rdir, boot: seeds, dht: true})
		rcv.setEvents(events)
		rcv.run()
		waitID(b, got, id, i)
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		rcv.stop(b)
		// A real restart takes longer than this: the session layer
		// refuses an initiation whose timestamp (rounded to about 17 ms)
		// is not newer than the last one accepted from the same key.
		time.Sleep(50 * time.Millisecond)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(percentileUS(lat, 0.5)/1e3, "p50-ms")
	b.ReportMetric(percentileUS(lat, 0.99)/1e3, "p99-ms")
}
