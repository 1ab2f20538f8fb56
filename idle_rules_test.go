package main

// The rules that keep an idle user's traffic low (issue 13 item 8) without
// taking from hole punching what it needs: per-path keepalives (SPEC.md
// 5.8.4), the record reads of an offline contact (5.8.3 step 3) and the
// back-off of drops collection (8.5). TestIdleCost measures the result on
// the real binary.

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestPathTimers: 55 s keepalives only when both sides are public and the
// path is direct IPv4; DeadAfter 80 s only when a NAT is known to be on
// the path, so that it fits whatever keepalive the contact chose.
func TestPathTimers(t *testing.T) {
	public := localView{Hosts: []netip.Prefix{netip.MustParsePrefix("203.0.113.9/30")}, Port: 6881,
		External: netip.MustParseAddrPort("203.0.113.9:6881"), Behaviour: natPublic}
	behind := natView("192.168.1.10", "203.0.113.1")
	unknown := localView{Hosts: behind.Hosts, Port: 6881}
	recPublic := endpointRecord{Nonce: 1, Cands: []endpointCandidate{
		{Kind: endpointCandReflexive, Addr: netip.MustParseAddrPort("198.51.100.7:6881")},
		{Kind: endpointCandHost, Addr: netip.MustParseAddrPort("198.51.100.7:6881")}}}
	recNAT := endpointRecord{Nonce: 1, Cands: []endpointCandidate{
		{Kind: endpointCandReflexive, Addr: netip.MustParseAddrPort("198.51.100.7:6881")},
		{Kind: endpointCandHost, Addr: netip.MustParseAddrPort("10.0.0.7:6881")}}}
	v4 := netip.MustParseAddrPort("198.51.100.7:6881")
	v6 := netip.MustParseAddrPort("[2001:db8::7]:6881")
	for _, tc := range []struct {
		name                string
		view                localView
		rec                 *endpointRecord
		addr                netip.AddrPort
		wantEvery, wantDead time.Duration
	}{
		{"both public", public, &recPublic, v4, keepaliveNoNAT, deadAfterNoNAT},
		{"both public, IPv6", public, &recPublic, v6, 0, deadAfterNoNAT},
		{"contact behind NAT", public, &recNAT, v4, 0, 0},
		{"both behind NATs", behind, &recNAT, v4, 0, 0},
		{"we behind NAT", behind, &recPublic, v4, 0, deadAfterNoNAT}, // the contact may keep 55 s by an old record of ours
		{"our NAT unknown", unknown, &recPublic, v4, 0, deadAfterNoNAT},
		{"no record", public, nil, v4, 0, deadAfterNoNAT},
	} {
		p := &punchPeer{}
		if tc.rec != nil {
			p.rec, p.recSeq = *tc.rec, 1 // however old: read before the session
		}
		every, dead := pathTimers(p, tc.addr, &tc.view)
		if every != tc.wantEvery || dead != tc.wantDead {
			t.Errorf("%s: pathTimers = %v, %v; want %v, %v", tc.name, every, dead, tc.wantEvery, tc.wantDead)
		}
	}
}

// TestPathKeepaliveTimeline is TestSilentPeerTimeline on a path with no
// NAT: the first keepalive still after 25 s, then every 55 s; Ended at
// 170 s. The rekey initiations are as before.
func TestPathKeepaliveTimeline(t *testing.T) {
	var n fakeNet
	clock := newFakeClock()
	start := clock.now()
	var endedAt []time.Duration
	a, b := newTestPair(t, &n, clock, func(c *sessionConfig) {
		c.Ended = func(publicKey, time.Time) { endedAt = append(endedAt, clock.now().Sub(start)) }
	})
	a.m.setEndpoint(b.id.public(), b.addr)
	n.pump(t)
	if !a.m.hasSession(b.id.public()) {
		t.Fatal("no session")
	}
	a.m.timers.setPath(b.id.public(), b.addr, keepaliveNoNAT, deadAfterNoNAT)
	keepalives, inits := silentTimeline(&n, clock, a, start) // b is silent
	if want := []time.Duration{25 * time.Second, 80 * time.Second, 135 * time.Second}; !slices.Equal(keepalives, want) {
		t.Errorf("keepalives at %v, want %v", keepalives, want)
	}
	if want := []time.Duration{170 * time.Second}; !slices.Equal(endedAt, want) {
		t.Errorf("Ended at %v, want %v", endedAt, want)
	}
	if len(inits) == 0 || inits[0] != 120*time.Second {
		t.Errorf("initiations at %v, want the first at 120 s", inits)
	}
}

// countingGets wraps a punchDHT's get and counts the reads of records.
type countingGets struct {
	d      *punchDHT
	mu     sync.Mutex
	n      int
	checks int // re-reads (checks, watcher.mutable)
}

func (c *countingGets) get(ctx context.Context, k [32]byte, check bool) (int64, []byte, error) {
	c.mu.Lock()
	c.n++
	if check {
		c.checks++
	}
	c.mu.Unlock()
	return c.d.get(ctx, k, check)
}

func (c *countingGets) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// readsSide is a puncher behind a NAT whose reads are counted.
func readsSide(t *testing.T, d *punchDHT, clock *fakeClock) (*punchSide, *countingGets) {
	a := newPunchSide(t, d, clock, 1, natView("192.168.1.10", "203.0.113.1"))
	gets := &countingGets{d: d}
	a.p.cfg.Get = gets.get
	return a, gets
}

// TestPunchReadsOfflineContact: a contact who wrote its record and went
// away. A lookup that finds its stale announce makes two reads, not 120
// (the second finds the same record, minutes old); then the record is
// re-read at 90 s, 270 s, 570 s and every 5 minutes after, each re-read a
// check (one node asked, watcher.mutable).
func TestPunchReadsOfflineContact(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	b := newPunchSide(t, d, clock, 2, natView("192.168.2.10", "203.0.113.2"))
	b.p.announced(testIdentity(t, 1).public())
	b.tick() // b's record is out; b is gone from now on
	clock.advance(5 * time.Minute)
	a, gets := readsSide(t, d, clock)
	a.p.lookedUp(b.id.public(), []netip.AddrPort{netip.MustParseAddrPort("203.0.113.2:6881")})
	for range int(punchPeriod / punchTick) {
		clock.advance(punchTick)
		a.tick()
	}
	if n := gets.count(); n != 2 || gets.checks != 0 {
		t.Errorf("a lookup that found a gone contact: %d reads in %v, want 2", n, punchPeriod)
	}
	before := gets.count()
	var at []time.Duration
	start := clock.now().Add(-punchPeriod)
	for clock.now().Sub(start) < time.Hour {
		clock.advance(time.Second)
		a.tick()
		if gets.count() != before {
			at = append(at, clock.now().Sub(start).Round(time.Second))
			before = gets.count()
		}
	}
	want := []time.Duration{90 * time.Second, 270 * time.Second}
	for s := 570; s < 3600; s += 300 {
		want = append(want, time.Duration(s)*time.Second)
	}
	if !slices.Equal(at, want) {
		t.Errorf("re-reads at %v, want %v", at, want)
	}
	if gets.checks != len(want) {
		t.Errorf("%d of the %d re-reads were checks, want all", gets.checks, len(want))
	}
}

// TestPunchReadsNoRecord: nothing written yet. The reads of an attempt's
// first recordWait come at gaps doubling from punchPoll (a contact
// starting with us writes within a second or two), then end.
func TestPunchReadsNoRecord(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	a, gets := readsSide(t, d, clock)
	k := testIdentity(t, 2).public()
	a.p.lookedUp(k, []netip.AddrPort{netip.MustParseAddrPort("203.0.113.2:6881")})
	for range int(punchPeriod / punchTick) {
		clock.advance(punchTick)
		a.tick()
	}
	// 0.25, 0.75, 1.75, 3.75, 7.75, 11.75, 15.75, 19.75 and the one
	// that ends them: about 10, where every 250 ms made 120.
	if n := gets.count(); n < 6 || n > 12 {
		t.Errorf("%d reads without a record in %v, want about 10", n, punchPeriod)
	}
	// A record that appears later is found at the next re-read.
	b := newPunchSide(t, d, clock, 2, natView("192.168.2.10", "203.0.113.2"))
	b.p.announced(a.id.public())
	b.tick()
	for range int(recheckMin / punchTick) {
		clock.advance(punchTick)
		a.tick()
	}
	a.p.mu.Lock()
	got := a.p.peers[k].recSeq
	a.p.mu.Unlock()
	if got == 0 {
		t.Error("the record written later was not read by the first re-read")
	}
}

// TestDropCollectBackoff: while a contact stays offline, complete rounds
// come 3, then every 6 minutes (each a check of one node per location,
// watcher.mutable); a session that ends starts the gaps again.
func TestDropCollectBackoff(t *testing.T) {
	var r dropRun
	now := time.Unix(1_800_000_000, 0)
	var gaps []time.Duration
	for range 6 {
		r.scheduleRound(now)
		gaps = append(gaps, r.collectAt.Sub(now))
		now = r.collectAt
	}
	want := []time.Duration{3 * time.Minute, 6 * time.Minute, 6 * time.Minute, 6 * time.Minute, 6 * time.Minute, 6 * time.Minute}
	if !slices.Equal(gaps, want) {
		t.Errorf("gaps %v, want %v", gaps, want)
	}
	r.collectGap = 0 // what scheduleLocked does when the session ends
	r.scheduleRound(now)
	if g := r.collectAt.Sub(now); g != dropCollectEvery {
		t.Errorf("after a session: %v, want %v", g, dropCollectEvery)
	}
}

// TestRecordWritesPerEpoch: the record goes out with each announce (:40,
// :50, :15 of the next hour), in every current epoch, except an epoch that
// got the same record under recordRewrite ago: at :50 only the next hour's
// epoch is written, the current one having it from :40. A changed record
// goes to every current epoch at once.
func TestRecordWritesPerEpoch(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClockAt(time.Date(2026, 1, 2, 3, 40, 0, 0, time.UTC))
	a := newPunchSide(t, d, clock, 1, natView("192.168.1.10", "203.0.113.1"))
	k := testIdentity(t, 2).public()
	step := func(at time.Time) int {
		clock.set(at)
		before := d.puts
		a.p.announced(k)
		a.tick()
		return d.puts - before
	}
	for _, c := range []struct {
		at   time.Time
		want int
	}{
		{time.Date(2026, 1, 2, 3, 40, 0, 0, time.UTC), 1}, // epoch 3 alone
		{time.Date(2026, 1, 2, 3, 50, 0, 0, time.UTC), 1}, // 3 and 4 current: 4 alone
		{time.Date(2026, 1, 2, 3, 55, 0, 0, time.UTC), 0}, // 3 and 4, both written under 20 minutes ago
		{time.Date(2026, 1, 2, 4, 15, 0, 0, time.UTC), 1}, // 4, 25 minutes on
	} {
		if got := step(c.at); got != c.want {
			t.Errorf("announce at %s: %d records written, want %d", c.at.Format("15:04"), got, c.want)
		}
	}
	// A new attempt changes the record (its nonce): both epochs at once.
	// The put to one of them fails: that epoch alone is written again.
	clock.set(time.Date(2026, 1, 2, 4, 55, 0, 0, time.UTC))
	a.p.mu.Lock()
	a.p.newAttemptLocked(a.p.peers[k], clock.now())
	a.p.mu.Unlock()
	d.mu.Lock()
	d.failPuts = 1
	d.mu.Unlock()
	before := d.puts
	a.tick()
	if got := d.puts - before; got != 1 {
		t.Fatalf("a changed record at 04:55, one put failing: %d written, want 1 of epochs 4 and 5", got)
	}
	for range 10 {
		clock.advance(time.Second)
		a.tick()
	}
	if got := d.puts - before; got != 2 {
		t.Errorf("10 s after the failed put: %d written in all, want 2 (the failed epoch again, alone)", got)
	}
}

// TestPunchReadsUngated: after the start's attempt, a lookup that finds
// an address needing no punch (here we are public) reads the record once,
// as a check; the 250 ms reads are for gated addresses alone.
func TestPunchReadsUngated(t *testing.T) {
	d := &punchDHT{items: map[[32]byte]punchItem{}}
	clock := newFakeClock()
	public := localView{Hosts: []netip.Prefix{netip.MustParsePrefix("203.0.113.9/30")}, Port: 6881,
		External: netip.MustParseAddrPort("203.0.113.9:6881"), Behaviour: natPublic}
	a := newPunchSide(t, d, clock, 1, public)
	k := testIdentity(t, 2).public()
	a.p.announced(k) // the start's attempt, and its reads, end
	for range int(2 * punchPeriod / punchTick) {
		clock.advance(punchTick)
		a.tick()
	}
	gets := &countingGets{d: d}
	a.p.cfg.Get = gets.get
	a.p.lookedUp(k, []netip.AddrPort{netip.MustParseAddrPort("198.51.100.2:6881")})
	for range int(punchPeriod / punchTick) {
		clock.advance(punchTick)
		a.tick()
	}
	if gets.count() != 1 || gets.checks != 1 {
		t.Errorf("an ungated address found: %d reads (%d checks) in %v, want one check", gets.count(), gets.checks, punchPeriod)
	}
}

// TestDropSessionCoversCollection: a session of sessionCovers or more
// moves the start of the next collection to its start (it carried what the
// contact had dropped before), so a later round, or a restart, does not
// look back 8 days; a shorter session does not.
func TestDropSessionCoversCollection(t *testing.T) {
	for _, tc := range []struct {
		lasted time.Duration
		moved  bool
	}{{sessionCovers, true}, {sessionCovers - time.Second, false}} {
		d := &dropper{peers: map[publicKey]*dropPeer{}}
		dp := newDropPeer()
		p := &chatPeer{contactEntry: contactEntry{Key: chatKey(1)}, online: true}
		start := time.Unix(1_800_000_000, 0)
		run := func(now time.Time) {
			d.scheduleLocked(nil, p, dp, now)
			dp.run.online = p.online // as tick does
		}
		run(start)
		p.online = false
		run(start.Add(tc.lasted))
		if moved := dp.collected == start.Unix(); moved != tc.moved {
			t.Errorf("a session of %v: collected %d, moved to its start %v, want %v", tc.lasted, dp.collected, moved, tc.moved)
		}
	}
}
