// Invitations, the acceptor's side (SPEC.md 7.2, 7.5, 7.6, 7.8): one
// CPace run with every address found at the nameplate.
//
// Flow: accept parses the code and looks up the nameplate every few
// ticks; each new address (at most 16, 2 per host, in random order)
// gets its own sid and scalar and a msg1, or, if a NAT may sit in front
// of it, opening packets until its punch (or a timeout) lets msg1 go;
// the first lookup that found anyone announces us to the inviters'
// punches. A msg2 from an address gives the keys
// and our msg3 (a guess handed to that address); a msg4 that verifies
// ends the run with the inviter's key, a refuse ends that address's run
// only. msg1 and msg3 repeat every tick; the run ends early when a lookup
// finds every address refused, else at its timeout.
package main

import (
	"context"
	"crypto/hmac"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// acceptor is the acceptor role of an inviter: its runs and their
// candidates. It is safe for concurrent use.
type acceptor struct {
	*inviteIO

	mu    sync.Mutex
	cands map[[inviteSIDLen]byte]*acceptCand // every run's candidates, by sid
	runs  int                                // runs in progress
}

// acceptResult is what a finished acceptor run yields besides its error.
type acceptResult struct {
	Key        publicKey
	WrongTries int // wrong codes the inviter saw before ours (msg4)
	Others     int // other addresses at the nameplate that took a guess
}

// warning is the plain-words reason to suspect a guesser, or "".
func (r acceptResult) warning() string {
	var w []string
	if r.WrongTries > 0 {
		w = append(w, fmt.Sprintf("the inviter saw %d wrong %s before yours", r.WrongTries, plural(r.WrongTries, "code", "codes")))
	}
	if r.Others > 0 {
		w = append(w, fmt.Sprintf("%d other %s at the code's nameplate answered", r.Others, plural(r.Others, "address", "addresses")))
	}
	return strings.Join(w, "; ")
}

// acceptRun is one /accept: a CPace run (an acceptCand) for every address
// found at the nameplate, at most inviteMaxCandidates.
type acceptRun struct {
	nameplate uint32
	prs       []byte
	cands     map[netip.AddrPort]*acceptCand
	groups    map[netip.Prefix]int // candidates per IPv4 address or IPv6 /64
	result    chan acceptOutcome
	over      bool
}

type acceptOutcome struct {
	res acceptResult
	err error
}

type acceptState uint8

const (
	acceptOpening    acceptState = iota // opening packets sent, waiting for the inviter's punch
	acceptProbing                       // msg1 sent, waiting for msg2
	acceptConfirming                    // msg3 sent (a guess handed over), waiting for msg4
	acceptRefused                       // the address refused: wrong code or closed
	acceptFailed                        // its Yb was a low-order point: no guess given
)

// acceptCand is one CPace run with one address at the nameplate.
type acceptCand struct {
	run    *acceptRun
	addr   netip.AddrPort
	sid    [inviteSIDLen]byte
	y      [cpaceFieldBytes]byte // the scalar ya, until msg2
	ya     [inviteYLen]byte      // the share Ya
	msg1   []byte
	msg3   []byte
	keys   inviteKeys // once msg2 came: to check msg4
	state  acceptState
	reason byte      // why it refused
	since  time.Time // when the first opening packet went
}

// accept runs a run with a code the user typed; it blocks until success,
// failure or the end of ctx.
func (v *acceptor) accept(ctx context.Context, code string) (acceptResult, error) {
	np, pw, err := parseInviteCode(code)
	if err != nil {
		return acceptResult{}, err
	}
	r, err := v.newAcceptRun(np, pw)
	if err != nil {
		return acceptResult{}, err
	}
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { v.lookupLoop(lctx, r) })
	out := v.waitAccept(ctx, r)
	cancel()
	wg.Wait() // the lookup may be computing a candidate from r.prs
	v.endRun(r)
	return out.res, out.err
}

// newAcceptRun registers a run.
func (v *acceptor) newAcceptRun(np uint32, password string) (*acceptRun, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.runs >= inviteMaxAccepts {
		return nil, errInviteBusy
	}
	v.runs++
	return &acceptRun{nameplate: np, prs: []byte(formatInviteCode(np, password)),
		cands: map[netip.AddrPort]*acceptCand{}, groups: map[netip.Prefix]int{},
		result: make(chan acceptOutcome, 1)}, nil
}

// waitAccept repeats each candidate's last message every tick until a
// result, the timeout or ctx.
func (v *acceptor) waitAccept(ctx context.Context, r *acceptRun) acceptOutcome {
	deadline := v.cfg.Now().Add(inviteAcceptTimeout)
	tick := time.NewTicker(v.cfg.Tick)
	defer tick.Stop()
	for {
		select {
		case out := <-r.result:
			return out
		case <-ctx.Done():
			return acceptOutcome{err: fmt.Errorf("invite: %w", ctx.Err())}
		case <-tick.C:
		}
		v.mu.Lock()
		v.retransmit(r)
		var err error
		if !v.cfg.Now().Before(deadline) {
			err = r.timeoutErr()
		}
		v.mu.Unlock()
		if err != nil {
			return acceptOutcome{err: err}
		}
	}
}

// retransmit repeats msg1 to candidates that have not answered and msg3
// to those that have not confirmed. One still waiting for its punch gets
// another opening packet, which keeps our mapping, or, after
// inviteOpenTicks, its msg1 anyway: the inviter may be one that never
// punches us (its punch lost, or it cannot find us at ACCEPTORS).
func (v *acceptor) retransmit(r *acceptRun) {
	for _, c := range r.cands {
		switch c.state {
		case acceptOpening:
			if v.cfg.Now().Sub(c.since) >= inviteOpenTicks*v.cfg.Tick {
				v.probe(c)
			} else {
				v.open(c)
			}
		case acceptProbing:
			v.send(c.addr, c.msg1)
		case acceptConfirming:
			v.send(c.addr, c.msg3)
		}
	}
}

// timeoutErr says what the run learned: a refusal if there was one, else
// whether anyone took a guess without finishing.
func (r *acceptRun) timeoutErr() error {
	var wrong, closed, unfinished int
	for _, c := range r.cands {
		switch {
		case c.state == acceptRefused && c.reason == inviteRefuseWrong:
			wrong++
		case c.state == acceptRefused:
			closed++
		case c.state == acceptConfirming:
			unfinished++
		}
	}
	switch {
	case wrong > 0:
		return errInviteWrongCode
	case closed > 0:
		return errInviteClosed
	case unfinished > 0:
		return errInviteUnfinished(unfinished)
	}
	return errInviteNoAnswer
}

// endRun forgets the run's candidates and wipes its secrets.
func (v *acceptor) endRun(r *acceptRun) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r.over = true
	for _, c := range r.cands {
		if v.cands[c.sid] == c {
			delete(v.cands, c.sid)
		}
		wipe(c.y[:])
		c.keys.wipe()
	}
	wipe(r.prs)
	v.runs--
}

// lookupLoop asks the DHT for the nameplate's inviters now and every few
// ticks, and starts a run with each new address. After the first lookup
// that found anyone, it announces itself once at the acceptors'
// infohash, for the inviter's punch: only then, so that our NAT has
// opened towards the inviter before the punch can come (SPEC.md 7.2).
func (v *acceptor) lookupLoop(ctx context.Context, r *acceptRun) {
	ih := inviteInfohash(r.nameplate)
	announced := false
	for i := 0; ; i++ {
		peers, err := v.cfg.GetPeers(ctx, ih)
		v.cfg.Log.Debug("invite: get_peers", "found", peers, "err", err)
		v.addCandidates(r, v.pickCandidates(r, peers))
		if i > 0 {
			v.checkRefused(r)
		}
		v.mu.Lock()
		found := len(r.cands) > 0
		v.mu.Unlock()
		if found && !announced {
			announced = true
			if _, err := v.cfg.Announce(ctx, inviteAcceptorInfohash(r.nameplate)); err != nil {
				v.cfg.Log.Debug("invite: announce acceptor", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(inviteLookupTicks * v.cfg.Tick):
		}
	}
}

// addrGroup is what one host can hold cheaply: an IPv4 address or an
// IPv6 /64.
func addrGroup(a netip.AddrPort) netip.Prefix {
	ip := a.Addr().Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// pickCandidates chooses, in random order, the new addresses the run may
// still take: an attacker who announces many addresses first does not
// push the inviter out of the first places.
func (v *acceptor) pickCandidates(r *acceptRun, peers []netip.AddrPort) []netip.AddrPort {
	peers = slices.Clone(peers)
	mrand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []netip.AddrPort
	groups := map[netip.Prefix]int{}
	for _, a := range peers {
		g := addrGroup(a)
		switch {
		case !a.IsValid() || r.cands[a] != nil || slices.Contains(out, a):
		case r.groups[g]+groups[g] >= inviteMaxPerGroup:
		case len(r.cands)+len(out) >= inviteMaxCandidates:
		default:
			out = append(out, a)
			groups[g]++
		}
	}
	return out
}

// addCandidates starts a run with each address and sends its msg1, or
// its first opening packet if the address is gated. The CPace work is
// done without the lock.
func (v *acceptor) addCandidates(r *acceptRun, addrs []netip.AddrPort) {
	for _, a := range addrs {
		c, err := newAcceptCand(r, a, v.cfg.Rand)
		if err != nil {
			v.cfg.Log.Debug("invite: candidate", "addr", a, "err", err)
			continue
		}
		v.mu.Lock()
		if !r.over && v.cands[c.sid] == nil {
			r.cands[a] = c
			r.groups[addrGroup(a)]++
			v.cands[c.sid] = c
			if v.cfg.Gated(a) {
				c.state, c.since = acceptOpening, v.cfg.Now()
				v.open(c)
			} else {
				v.probe(c)
			}
		}
		v.mu.Unlock()
	}
}

// open sends c's address an opening packet; where none can be sent, its
// msg1 goes at once, as it did before punches were awaited.
func (v *acceptor) open(c *acceptCand) {
	if err := v.cfg.Open(c.addr); err != nil {
		v.cfg.Log.Debug("invite: open", "to", c.addr, "err", err)
		v.probe(c)
	}
}

// probe starts c's CPace run proper: msg1, repeated every tick.
func (v *acceptor) probe(c *acceptCand) {
	c.state = acceptProbing
	v.send(c.addr, c.msg1)
}

// onPunch: the inviter at from has opened its NAT towards us, and ours is
// open towards it (we announced only after opening): every run waiting
// for that address sends its msg1 now. A forged punch only makes msg1 go
// early, as it would to a public inviter.
func (v *acceptor) onPunch(from netip.AddrPort) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.cands {
		if c.addr == from && c.state == acceptOpening && !c.run.over {
			v.probe(c)
		}
	}
}

// newAcceptCand draws sid and ya and computes Ya and msg1.
func newAcceptCand(r *acceptRun, addr netip.AddrPort, rand io.Reader) (*acceptCand, error) {
	c := &acceptCand{run: r, addr: addr}
	if _, err := io.ReadFull(rand, c.sid[:]); err != nil {
		return nil, fmt.Errorf("invite: random sid: %w", err)
	}
	if _, err := io.ReadFull(rand, c.y[:]); err != nil {
		return nil, fmt.Errorf("invite: random scalar: %w", err)
	}
	g := cpaceCalculateGenerator(r.prs, []byte(inviteCI), c.sid[:])
	ya, err := cpaceScalarMultVfy(c.y, g)
	if err != nil {
		return nil, err
	}
	c.ya = ya
	m := inviteMsg{Sub: inviteSubMsg1, SID: c.sid, Nameplate: r.nameplate, Y: ya}
	c.msg1 = m.encode()
	return c, nil
}

// candFor finds the live candidate a packet from from with sid belongs
// to: the sid is secret to that address (and the path to it), so nobody
// else can act on its run.
func (v *acceptor) candFor(from netip.AddrPort, sid [inviteSIDLen]byte) *acceptCand {
	c := v.cands[sid]
	if c == nil || c.addr != from || c.run.over {
		return nil
	}
	return c
}

// onMsg2 is CPace's party A receiving Yb: compute the keys and hand the
// inviter our guess (msg3). Only the first msg2 of a run counts.
func (v *acceptor) onMsg2(from netip.AddrPort, m *inviteMsg) {
	c := v.candFor(from, m.SID)
	if c == nil || c.state != acceptProbing {
		return
	}
	keys, err := runKeys(c.sid[:], c.y, m.Y, c.ya[:], m.Y[:])
	wipe(c.y[:])
	if err != nil {
		v.drop(from, "msg2 share", err)
		c.state = acceptFailed
		return
	}
	c.keys = keys
	out := inviteMsg{Sub: inviteSubMsg3, SID: c.sid, Nameplate: c.run.nameplate, Y: c.ya, Tag: keys.tagA}
	out.Sealed = sealKey(keys.sealAcc, out.sealedAD(), v.cfg.Self)
	c.msg3, c.state = out.encode(), acceptConfirming
	v.send(from, c.msg3)
}

// onMsg4 ends the run with the inviter's key. A msg4 that does not
// verify is dropped: a good repeat may follow. One that verifies counts
// even after a refuse from that address, which proves nothing.
func (v *acceptor) onMsg4(from netip.AddrPort, m *inviteMsg) {
	c := v.candFor(from, m.SID)
	if c == nil || c.msg3 == nil {
		return
	}
	if !hmac.Equal(c.keys.tagB[:], m.Tag[:]) {
		v.drop(from, "msg4 tag", errInviteAuth)
		return
	}
	pk, err := openKey(c.keys.sealInviter, m.sealedAD(), m.Sealed)
	if err != nil {
		v.drop(from, "msg4 key", err)
		return
	}
	others := 0
	for _, o := range c.run.cands {
		if o != c && (o.state == acceptConfirming || o.state == acceptRefused && o.reason == inviteRefuseWrong) {
			others++
		}
	}
	v.finishRun(c.run, acceptOutcome{res: acceptResult{Key: pk, WrongTries: int(m.Wrong), Others: others}})
}

// onRefuse ends one candidate's run: only that address (and the path to
// it) knows its sid, so a refuse cannot end anyone else's.
func (v *acceptor) onRefuse(from netip.AddrPort, m *inviteMsg) {
	c := v.candFor(from, m.SID)
	if c == nil || c.state != acceptProbing && c.state != acceptConfirming {
		return
	}
	c.state, c.reason = acceptRefused, m.Reason
}

// checkRefused, after every lookup but the first, ends the run when every
// address found so far has refused or failed and at least one refused:
// a refuse alone never ends a run, since the inviter may yet be found.
func (v *acceptor) checkRefused(r *acceptRun) {
	v.mu.Lock()
	defer v.mu.Unlock()
	refused := false
	for _, c := range r.cands {
		switch c.state {
		case acceptOpening, acceptProbing, acceptConfirming:
			return
		case acceptRefused:
			refused = true
		}
	}
	if refused {
		v.finishRun(r, acceptOutcome{err: r.timeoutErr()})
	}
}

func (v *acceptor) finishRun(r *acceptRun, out acceptOutcome) {
	if r.over {
		return
	}
	r.over = true
	r.result <- out
}

// handle takes a parsed msg2, msg4 or refuse.
func (v *acceptor) handle(from netip.AddrPort, m *inviteMsg) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch m.Sub {
	case inviteSubMsg2:
		v.onMsg2(from, m)
	case inviteSubMsg4:
		v.onMsg4(from, m)
	case inviteSubRefuse:
		v.onRefuse(from, m)
	}
}
