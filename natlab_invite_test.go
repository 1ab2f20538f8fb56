//go:build linux

// The NAT lab's invitation cases (SPEC.md 7): two users who are not yet
// contacts, alice runs /invite bob and bob /accept alice CODE.
//
// Each trial starts both fresh (new identities, no contacts), waits until
// both joined the DHT, has alice invite and bob accept the code after up
// to 1 s (reading it aloud), waits for each to add the other, then has
// each send a message and waits for both to be delivered. The report's
// columns for these cases: accept->both added (the invitation) and
// accept->both delivered (the invitation, then the session).
package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// natlabInviteWait bounds an invitation trial: the acceptor gives up after
// inviteAcceptTimeout, and the new contacts' session takes a few seconds.
const natlabInviteWait = inviteAcceptTimeout + 20*time.Second

// inviteTrial runs one invitation trial of the case.
func (e *caseEnv) inviteTrial(t *testing.T, i int, wait time.Duration) trialResult {
	l := e.lab
	time.Sleep(2*e.c.delay + 100*time.Millisecond) // as in trial: no packet of the last one in flight
	for _, s := range e.sites {
		l.flush(s)
	}
	names := [2]string{"alice", "bob"}
	var ps [2]*labProc
	for u := range ps {
		dir := filepath.Join(e.tmp, fmt.Sprintf("t%d-%s", i, names[u]))
		defer os.RemoveAll(dir)
		ps[u] = l.start(e.hosts[u], names[u], dir, l.bootstrap(e.kinds[u]), true)
		defer ps[u].kill()
	}
	ctx := context.Background()
	deadline := time.Now().Add(wait)
	fail := func(format string, args ...any) trialResult {
		return trialResult{why: fmt.Sprintf(format, args...) + ps[0].tail() + ps[1].tail() + e.conntrack()}
	}
	for u, p := range ps {
		if _, ok := p.waitOut(ctx, time.Until(deadline), "* dht: joined"); !ok {
			return fail("%s did not join the DHT", names[u])
		}
	}
	ps[0].send("/invite bob")
	ln, ok := ps[0].waitOut(ctx, natlabCmdWait, "invite bob ")
	if !ok {
		return fail("alice printed no code")
	}
	code := strings.TrimPrefix(ln.text, "invite bob ")
	time.Sleep(rand.N(time.Second))
	acceptAt := time.Now()
	ps[1].send("/accept alice " + code)
	var added time.Time
	for u, p := range ps {
		ln, ok := p.wait(ctx, time.Until(deadline), func(l labLine) bool {
			return !l.log && (l.text == "* added "+names[1-u] || strings.HasPrefix(l.text, "error invite "))
		})
		if !ok || strings.HasPrefix(ln.text, "error") {
			return fail("%s did not add %s within %v: %s", names[u], names[1-u], wait, ln.text)
		}
		added = maxTime(added, ln.at)
	}
	for u, p := range ps {
		p.send(fmt.Sprintf("/msg %s hello-from-%s", names[1-u], names[u]))
	}
	var delivered time.Time
	for u, p := range ps {
		ln, ok := p.waitOut(ctx, time.Until(deadline), "* delivered ")
		if !ok {
			return fail("%s's message not delivered within %v", names[u], wait)
		}
		delivered = maxTime(delivered, ln.at)
		if _, ok := ps[1-u].waitOut(ctx, time.Until(deadline), "["); !ok {
			return fail("%s saw no message from %s", names[1-u], names[u])
		}
	}
	return trialResult{ok: true, toMsg: added.Sub(acceptAt), fromUp: delivered.Sub(acceptAt)}
}

// natlabInviteNote says what an invitation case's columns measure.
const natlabInviteNote = "invite: accept->both added, accept->both delivered"
