//go:build linux

// The NAT lab's cases, trials and report (issue 9).
//
// Each case builds its sites once; each trial then flushes the routers'
// conntrack tables, makes two fresh users (identities and each other as
// contacts, made offline in an isolated namespace), starts them with up to
// 1 s of skew, each queueing one message to the other at once, and waits
// for both messages to be delivered. The report per case: successes, and
// the time from both sides having the other's address (a rendezvous lookup
// found it, or a session brought it) to the first delivered message. The f
// cases then break the path (a conntrack flush, or alice's host or router
// changing address), each side sends again, and the report adds the time
// from the break to both second messages delivered.
package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// natlabCase is one arrangement of two users.
type natlabCase struct {
	name    string
	a, b    routerKind
	sameNAT bool          // both users behind site a's router (b unused)
	delay   time.Duration // one-way delay between the two sites
	flush   bool          // flush both routers' conntrack after the first exchange
	move    siteMove      // after the first exchange, alice's host or router changes address
	note    string        // what the measurement found
	// fast: the case must succeed every time with addr->msg p50 under
	// natlabP50 and p99 under natlabP99 (issue 9's targets). A flush
	// case must lose no message. known: why the case is expected to fail.
	fast  bool
	known string
	// idle: after the first exchange, both stay silent this long, then
	// each sends again; the session must not have ended meanwhile (what
	// keepalives are for). Such a case is long and runs only when
	// KADCHAT_NATLAB_CASES names it.
	idle time.Duration
	// relay: carol, on a public address with -relay, is a contact of both
	// and online first; the case must succeed, directly or through her.
	relay bool
	// invite: the two are not contacts; alice invites and bob accepts
	// (natlab_invite_test.go). Every trial must succeed; the columns
	// measure from bob's /accept.
	invite bool
	wait   time.Duration // the bound of one trial's wait, if longer than the default
}

// siteMove is what changes address mid-conversation.
type siteMove int

const (
	moveNone siteMove = iota
	moveHost          // alice's host gets another LAN address (a new DHCP lease)
	moveWAN           // alice's router (or public host) gets another WAN address (the ISP's new lease)
)

// midway: the case breaks the path after the first exchange, and its
// target is that no message is lost.
func (c *natlabCase) midway() bool { return c.flush || c.move != moveNone }

// Issue 9's targets for the cases that must be fast.
const (
	natlabP50 = time.Second
	natlabP99 = 3 * time.Second
	// natlabRecovery bounds the wait for messages after a flush: a path
	// through a plain NAT recovers only once the half-open entries our
	// packets left have expired (SPEC.md 5.8.4: stall 15 s, quiet 35 s).
	natlabRecovery = 90 * time.Second
)

// natlabRandomKnown is why the port-randomising cases fail.
const natlabRandomKnown = "known failure: a port-randomising NAT gives the flow toward the contact a port " +
	"nobody can learn (SPEC.md 5.8.3); direct traversal would take the birthday method (many sockets), " +
	"and without a relaying contact there is no other path (the -relay cases)"

var natlabCases = []natlabCase{
	{name: "public-public", a: sitePublic, b: sitePublic, note: "issue: 5/5, 0.04 s", fast: true},
	{name: "public-plain", a: sitePublic, b: natPlain, note: "issue: 5/5, p50 5.05 s", fast: true},
	{name: "a-plain-plain", a: natPlain, b: natPlain, note: "issue: 0/5", fast: true},
	{name: "a-strict-strict", a: natStrict, b: natStrict, note: "issue: 5/5, 0.04 s", fast: true},
	{name: "a-plain-strict", a: natPlain, b: natStrict, fast: true},
	{name: "b-plain-plain-50ms", a: natPlain, b: natPlain, delay: 50 * time.Millisecond, fast: true},
	{name: "b-strict-strict-50ms", a: natStrict, b: natStrict, delay: 50 * time.Millisecond, fast: true},
	{name: "c-random-forward", a: natRandom, b: natForward, note: "issue: 5/5, p50 5.1 s", fast: true},
	{name: "d-random-plain", a: natRandom, b: natPlain, note: "issue: 0/5", known: natlabRandomKnown},
	{name: "d-random-random", a: natRandom, b: natRandom, known: natlabRandomKnown},
	{name: "d-random-plain-relay", a: natRandom, b: natPlain, relay: true, wait: 40 * time.Second},
	{name: "d-random-random-relay", a: natRandom, b: natRandom, relay: true, wait: 40 * time.Second},
	{name: "e-same-nat", a: natPlain, sameNAT: true, note: "issue: 0/5", fast: true},
	{name: "f-strict-flush", a: natStrict, b: natStrict, flush: true, fast: true},
	{name: "f-plain-flush", a: natPlain, b: natPlain, flush: true, fast: true},
	{name: "f-strict-host-move", a: natStrict, b: natStrict, move: moveHost, fast: true},
	{name: "f-plain-host-move", a: natPlain, b: natPlain, move: moveHost, fast: true},
	{name: "f-plain-wan-move", a: natPlain, b: natPlain, move: moveWAN, fast: true},
	{name: "f-plain-public-host-move", a: natPlain, b: sitePublic, move: moveHost, fast: true},
	{name: "f-public-plain-move", a: sitePublic, b: natPlain, move: moveWAN, fast: true},
	{name: "g-v6-firewalls", a: v6Firewall, b: v6Firewall, fast: true},
	{name: "g-dual-stack", a: dualPlain, b: dualPlain, fast: true},
	{name: "h-plain-idle-150s", a: natPlain, b: natPlain, idle: 150 * time.Second},
	{name: "i-plain-plain", a: natPlain, b: natPlain, invite: true, note: natlabInviteNote, wait: natlabInviteWait},
	{name: "i-plain-strict", a: natPlain, b: natStrict, invite: true, note: natlabInviteNote, wait: natlabInviteWait},
	{name: "i-strict-plain", a: natStrict, b: natPlain, invite: true, note: natlabInviteNote, wait: natlabInviteWait},
	{name: "i-plain-plain-50ms", a: natPlain, b: natPlain, delay: 50 * time.Millisecond, invite: true, note: natlabInviteNote, wait: natlabInviteWait},
	{name: "i-public-plain", a: sitePublic, b: natPlain, invite: true, note: natlabInviteNote, wait: natlabInviteWait,
		known: "known flake (about 1 trial in 13): the public, dual-stack inviter's announce reports 8 nodes stored, " +
			"yet the IPv4-only acceptor's get_peers finds nobody for 30 s; a DHT announce/family question, not the NAT"},
}

// trialResult is what one trial measured.
type trialResult struct {
	ok       bool
	toMsg    time.Duration // both sides had the address -> first delivery
	fromUp   time.Duration // the later user's start -> both deliveries
	recovery time.Duration // flush or idle -> both second messages delivered
	why      string        // on failure
	relayed  bool          // the session went through carol
}

// natlabSummary is one case's line in the report.
type natlabSummary struct {
	c       natlabCase
	results []trialResult
}

func TestNATLab(t *testing.T) {
	lab := newNATLab(t)
	lab.setupNS = lab.addNS("u")
	trials := 3
	if s := os.Getenv(natlabTrialsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive count", natlabTrialsEnv, s)
		}
		trials = n
	}
	wait := 20 * time.Second
	if s := os.Getenv(natlabWaitEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a duration", natlabWaitEnv, s)
		}
		wait = d
	}
	began := time.Now()
	var mu sync.Mutex
	var sums []natlabSummary
	// Every case at once, whatever -parallel says: the cases spend their
	// time waiting, and t.Run may be called from several goroutines.
	var wg sync.WaitGroup
	only, err := regexp.Compile(os.Getenv(natlabCasesEnv))
	if err != nil {
		t.Fatalf("%s: %v", natlabCasesEnv, err)
	}
	for _, c := range natlabCases {
		if !only.MatchString(c.name) || c.idle > 0 && only.String() == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(c.name, func(t *testing.T) {
				env := lab.buildCase(t, c)
				s := natlabSummary{c: c}
				for i := range trials {
					r := env.trial(t, i, max(wait, c.wait))
					if r.why != "" {
						t.Logf("trial %d: %s", i, r.why)
					}
					s.results = append(s.results, r)
				}
				mu.Lock()
				sums = append(sums, s)
				mu.Unlock()
			})
		}()
	}
	wg.Wait()
	slices.SortFunc(sums, func(a, b natlabSummary) int {
		return slices.IndexFunc(natlabCases, func(c natlabCase) bool { return c.name == a.c.name }) -
			slices.IndexFunc(natlabCases, func(c natlabCase) bool { return c.name == b.c.name })
	})
	if d, err := time.ParseDuration(os.Getenv("KADCHAT_NATLAB_HOLD")); err == nil {
		t.Logf("NAT lab: holding the lab for %v (namespaces %s*)", d, lab.prefix)
		time.Sleep(min(d, 10*time.Minute))
	}
	report := natlabReport(sums, trials, wait, time.Since(began))
	t.Log("\n" + report)
	if path := os.Getenv("KADCHAT_NATLAB_REPORT"); path != "" {
		os.WriteFile(path, []byte(report), 0o644)
	}
	for _, s := range sums {
		if why := s.missed(); why != "" {
			t.Errorf("NAT lab: %s missed its target: %s", s.c.name, why)
		}
		if s.c.known != "" {
			t.Logf("NAT lab: %s: %s", s.c.name, s.c.known)
		}
	}
}

// note is the report's last column: what the issue said, and how many
// sessions went through the relay.
func (s *natlabSummary) note() string {
	n := 0
	for _, r := range s.results {
		if r.relayed {
			n++
		}
	}
	if n == 0 {
		return s.c.note
	}
	if s.c.note == "" {
		return fmt.Sprintf("%d relayed via carol", n)
	}
	return fmt.Sprintf("%d relayed via carol; %s", n, s.c.note)
}

// missed says how a case that must be fast missed its target, or "".
func (s *natlabSummary) missed() string {
	if (s.c.relay || s.c.invite) && s.c.known == "" {
		for _, r := range s.results {
			if !r.ok {
				return "a trial failed: " + firstLine(r.why)
			}
		}
		return ""
	}
	if !s.c.fast {
		return ""
	}
	var toMsg []time.Duration
	for _, r := range s.results {
		if !r.ok {
			return "a trial failed: " + firstLine(r.why)
		}
		toMsg = append(toMsg, r.toMsg)
	}
	if s.c.midway() {
		return "" // the target is that no message is lost
	}
	if p50, p99 := natlabQuantile(toMsg, 0.5), natlabQuantile(toMsg, 0.99); p50 >= natlabP50 || p99 >= natlabP99 {
		return fmt.Sprintf("addr->msg p50 %v, p99 %v; want under %v and %v", p50, p99, natlabP50, natlabP99)
	}
	return ""
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// caseEnv is one case's sites and users' namespaces.
type caseEnv struct {
	lab   *natlab
	c     natlabCase
	sites []*site
	hosts [2]string // namespaces of alice and bob
	kinds [2]routerKind
	tmp   string
	carol string // the relay's namespace (relay cases)
}

// buildCase makes the case's sites.
func (l *natlab) buildCase(t *testing.T, c natlabCase) *caseEnv {
	e := &caseEnv{lab: l, c: c, tmp: t.TempDir()}
	if c.sameNAT {
		s := l.addSite(c.a, 2)
		e.sites = []*site{s}
		e.hosts = [2]string{s.hosts[0], s.hosts[1]}
		e.kinds = [2]routerKind{c.a, c.a}
		return e
	}
	sa, sb := l.addSite(c.a, 1), l.addSite(c.b, 1)
	if c.relay {
		e.carol = l.addSite(sitePublic, 1).hosts[0]
	}
	e.sites = []*site{sa, sb}
	e.hosts = [2]string{sa.hosts[0], sb.hosts[0]}
	e.kinds = [2]routerKind{c.a, c.b}
	if c.delay > 0 {
		l.delayBetween(sa, sb, c.delay)
	}
	if c.move == moveWAN {
		l.addAltWAN(sa)
	}
	return e
}

// bootstrap is the DHT node list a host of kind can reach.
func (l *natlab) bootstrap(k routerKind) string {
	var b []string
	if k.hasV4() {
		b = append(b, l.dht4...)
	}
	if k.hasV6() {
		b = append(b, l.dht6...)
	}
	return strings.Join(b, ",")
}

// makeUsers creates the users' data directories, each holding an
// identity and every other user as a contact. It runs them in a namespace
// with only loopback, so nothing they do reaches the lab's DHT.
func (l *natlab) makeUsers(t *testing.T, names, dirs []string) error {
	ps := make([]*labProc, len(names))
	keys := make([]string, len(names))
	for i := range ps {
		ps[i] = l.start(l.setupNS, "setup-"+names[i], dirs[i], "127.0.0.1:9", false)
		defer ps[i].kill()
		ln, ok := ps[i].waitOut(context.Background(), natlabCmdWait, "* ready ")
		if !ok {
			return fmt.Errorf("setup %s: no ready line:%s", names[i], ps[i].tail())
		}
		f := strings.Fields(ln.text)
		keys[i] = f[len(f)-1]
	}
	for i, p := range ps {
		for j := range names {
			if j == i {
				continue
			}
			p.send(fmt.Sprintf("/add %s %s", names[j], keys[j]))
			if _, ok := p.waitOut(context.Background(), natlabCmdWait, "* added "+names[j]); !ok {
				return fmt.Errorf("setup %s: /add failed:%s", names[i], p.tail())
			}
		}
		p.send("/quit")
	}
	for _, p := range ps {
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
			p.mu.Lock()
			p.killed = true
			p.mu.Unlock()
		case <-time.After(natlabCmdWait):
			return fmt.Errorf("setup %s: did not quit", p.name)
		}
	}
	return nil
}

// trial runs one trial of the case.
func (e *caseEnv) trial(t *testing.T, i int, wait time.Duration) trialResult {
	if e.c.invite {
		return e.inviteTrial(t, i, wait)
	}
	l := e.lab
	// The last trial's final packets may still be in the delay line; one
	// that reached a router after the flush would leave a half-open entry
	// there (SPEC.md 5.8), and this trial's users, at the same addresses,
	// would start against it. And the lab's DHT nodes answer each address
	// srcQueryRate queries a second after a burst (SPEC.md 3.4.1): the
	// last trial's users, at the same addresses, may have drawn it all.
	// Users on the Internet do not restart at one address every few
	// seconds; wait until every node's bucket for these addresses is full.
	time.Sleep(2*e.c.delay + srcQueryBurst*time.Second/srcQueryRate + time.Second)
	for _, s := range e.sites {
		l.flush(s)
	}
	names := [2]string{"alice", "bob"}
	var dirs [2]string
	for u := range dirs {
		dirs[u] = filepath.Join(e.tmp, fmt.Sprintf("t%d-%s", i, names[u]))
	}
	defer func() {
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	}()
	users, udirs := names[:], dirs[:]
	if e.c.relay {
		users, udirs = append(users, "carol"), append(udirs, filepath.Join(e.tmp, fmt.Sprintf("t%d-carol", i)))
		defer os.RemoveAll(udirs[2])
	}
	if err := l.makeUsers(t, users, udirs); err != nil {
		return trialResult{why: err.Error()}
	}
	if e.c.relay {
		carol := l.start(e.carol, "carol", udirs[2], l.bootstrap(sitePublic), true, "-relay")
		defer carol.kill()
		if _, ok := carol.waitOut(context.Background(), natlabCmdWait, "* dht: joined"); !ok {
			return trialResult{why: "carol did not join the DHT" + carol.tail()}
		}
	}
	// Up to 1 s of skew, either one first.
	first := rand.IntN(2)
	skew := rand.N(time.Second)
	var ps [2]*labProc
	for k := range 2 {
		u := (first + k) % 2
		if k == 1 {
			time.Sleep(skew)
		}
		ps[u] = l.start(e.hosts[u], names[u], dirs[u], l.bootstrap(e.kinds[u]), true)
		defer ps[u].kill()
		ps[u].send(fmt.Sprintf("/msg %s hello-from-%s", names[1-u], names[u]))
	}
	upAt := ps[1-first].start
	ctx := context.Background()
	deadline := time.Now().Add(wait)
	fail := func(format string, args ...any) trialResult {
		return trialResult{why: fmt.Sprintf(format, args...) + ps[0].tail() + ps[1].tail() + e.conntrack()}
	}
	var delivered [2]time.Time
	for u, p := range ps {
		ln, ok := p.waitOut(ctx, time.Until(deadline), "* delivered ")
		if !ok {
			return fail("%s's message not delivered within %v (skew %v, %s first)", names[u], wait, skew, names[first])
		}
		delivered[u] = ln.at
		if _, ok := ps[1-u].waitOut(ctx, time.Until(deadline), "["); !ok {
			return fail("%s saw no message from %s", names[1-u], names[u])
		}
	}
	r := trialResult{ok: true}
	for u, p := range ps {
		if _, ok := p.first(func(l labLine) bool { return l.text == "* online "+names[1-u]+" via carol" }); ok {
			r.relayed = true
		}
	}
	firstMsg := minTime(delivered[0], delivered[1])
	r.fromUp = maxTime(delivered[0], delivered[1]).Sub(upAt)
	var have [2]time.Time
	for u, p := range ps {
		have[u] = firstAddress(p, names[1-u])
	}
	r.toMsg = max(0, firstMsg.Sub(maxTime(have[0], have[1])))
	if d, err := time.ParseDuration(os.Getenv(natlabSlowEnv)); err == nil && r.fromUp > d {
		t.Logf("trial %d took %v (skew %v, %s first):%s%s", i, r.fromUp, skew, names[first], ps[0].tail(), ps[1].tail())
	}
	if e.c.midway() || e.c.idle > 0 {
		return e.again(ps, names, wait, r)
	}
	return r
}

// conntrack lists the routers' UDP conntrack entries, for a failed trial.
func (e *caseEnv) conntrack() string {
	var b strings.Builder
	for _, s := range e.sites {
		if s.router == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), natlabCmdWait)
		out, _ := exec.CommandContext(ctx, "ip", "netns", "exec", s.router, "conntrack", "-L", "-p", "udp").CombinedOutput()
		cancel()
		fmt.Fprintf(&b, "\n  conntrack of router %d (%s, %s):", s.index, s.kind, s.wan4)
		for _, ln := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if !strings.Contains(ln, "198.18.") { // DHT traffic is not the point
				fmt.Fprintf(&b, "\n    %s", ln)
			}
		}
	}
	return b.String()
}

// again flushes every router's conntrack mid-conversation, or moves
// alice's host or router to another address (or lets the conversation
// idle), and checks that a second message each way arrives.
func (e *caseEnv) again(ps [2]*labProc, names [2]string, wait time.Duration, r trialResult) trialResult {
	if e.c.idle > 0 {
		idleFrom := time.Now()
		time.Sleep(e.c.idle)
		for _, p := range ps {
			if ln, ok := p.first(func(l labLine) bool { return l.at.After(idleFrom) && strings.HasPrefix(l.text, "* offline ") }); ok {
				return trialResult{why: fmt.Sprintf("%s went offline while idle: %s", p.name, ln.text) + ps[0].tail() + ps[1].tail()}
			}
		}
	}
	flushed := time.Now()
	for _, s := range e.sites {
		if e.c.flush {
			e.lab.flush(s)
		}
	}
	if err := e.move(); err != nil {
		return trialResult{why: "move: " + err.Error()}
	}
	for u, p := range ps {
		p.send(fmt.Sprintf("/msg %s again-from-%s", names[1-u], names[u]))
	}
	var last time.Time
	for u, p := range ps {
		ln, ok := p.wait(context.Background(), max(wait, natlabRecovery), func(l labLine) bool {
			return !l.log && l.at.After(flushed) && strings.HasPrefix(l.text, "* delivered ")
		})
		if !ok {
			return trialResult{why: fmt.Sprintf("after the flush or move, %s's second message not delivered within %v", names[u], max(wait, natlabRecovery)) + ps[0].tail() + ps[1].tail()}
		}
		last = maxTime(last, ln.at)
	}
	r.recovery = last.Sub(flushed)
	if d, err := time.ParseDuration(os.Getenv(natlabSlowEnv)); err == nil && r.recovery > d {
		r.why = fmt.Sprintf("recovery took %v:%s%s%s", r.recovery, ps[0].tail(), ps[1].tail(), e.conntrack())
	}
	return r
}

// move changes alice's address as the case says.
func (e *caseEnv) move() error {
	switch e.c.move {
	case moveHost:
		return e.lab.moveHost(e.sites[0])
	case moveWAN:
		return e.lab.moveWAN(e.sites[0])
	}
	return nil
}

// firstAddress is when p first had peer's address: its first rendezvous
// lookup that found anything, or the session coming online, whichever was
// first.
func firstAddress(p *labProc, peer string) time.Time {
	var at time.Time
	if ln, ok := p.first(func(l labLine) bool {
		return l.log && strings.Contains(l.text, `msg="chat: rendezvous"`) &&
			strings.Contains(l.text, "announce=false") && !strings.Contains(l.text, "found=[]")
	}); ok {
		at = ln.at
	}
	if ln, ok := p.first(func(l labLine) bool {
		return !l.log && strings.HasPrefix(l.text, "* online "+peer+" ")
	}); ok && (at.IsZero() || ln.at.Before(at)) {
		at = ln.at
	}
	return at
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// natlabQuantile is the nearest-rank q-quantile of ds (q in (0,1]).
func natlabQuantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[max(0, int(math.Ceil(q*float64(len(s))))-1)]
}

// natlabReport formats the table the issue asks for.
func natlabReport(sums []natlabSummary, trials int, wait, took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "NAT lab: %d trials per case, %v bound per wait, %v in all\n", trials, wait, took.Round(time.Second))
	fmt.Fprintf(&b, "%-24s %7s %16s %16s %16s %-7s  %s\n", "case", "ok", "addr->msg p50/99", "start->both p50/99", "again->both p50/99", "target", "issue said")
	sec := func(d time.Duration) string {
		if d < 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", d.Seconds())
	}
	for _, s := range sums {
		var toMsg, fromUp, rec []time.Duration
		ok := 0
		for _, r := range s.results {
			if r.ok {
				ok++
				toMsg = append(toMsg, r.toMsg)
				fromUp = append(fromUp, r.fromUp)
				if s.c.midway() || s.c.idle > 0 {
					rec = append(rec, r.recovery)
				}
			}
		}
		target := "met"
		switch {
		case s.c.known != "":
			target = "known"
		case s.missed() != "":
			target = "MISSED"
		}
		fmt.Fprintf(&b, "%-24s %7s %16s %16s %16s %-7s  %s\n", s.c.name, fmt.Sprintf("%d/%d", ok, len(s.results)),
			sec(natlabQuantile(toMsg, 0.5))+"/"+sec(natlabQuantile(toMsg, 0.99)),
			sec(natlabQuantile(fromUp, 0.5))+"/"+sec(natlabQuantile(fromUp, 0.99)),
			sec(natlabQuantile(rec, 0.5))+"/"+sec(natlabQuantile(rec, 0.99)), target, s.note())
	}
	return b.String()
}
