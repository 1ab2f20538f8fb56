// Attacks on invitations through real packets on loopback (issue 13 item
// 4, SPEC.md 7.9): what it costs to deny an invitation, measured with an
// attacker that is its own DHT node and its own UDP sockets.
package main

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newCountingDHT starts a DHT node on ip (a 127.0.0.0/8 address, so that
// each attacker node has its own IP) that counts the queries it sends.
func newCountingDHT(t *testing.T, ip string, boot []string) (*dht, *atomic.Int64) {
	t.Helper()
	n, err := listenNode(ip+":0", nil)
	if err != nil {
		t.Fatal(err)
	}
	var queries atomic.Int64
	n.trace = func(out bool, _ netip.AddrPort, b []byte) {
		if out && bytes.HasSuffix(b, []byte("1:y1:qe")) {
			queries.Add(1)
		}
	}
	d, err := newDHT(n, dhtConfig{Bootstrap: boot})
	if err != nil {
		t.Fatal(err)
	}
	d.timing.rtoInitial = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	bootstrapRetrying(t, d)
	queries.Store(0) // joining the DHT is not part of any attack
	return d, &queries
}

// announcePorts is the thrifty attacker's announce: one get_peers lookup
// for the tokens, then one announce_peer per port to each of the k
// closest nodes. It returns how many announces were stored.
func announcePorts(ctx context.Context, d *dht, ih nodeID, ports []uint16) int {
	r, err := d.lookup(ctx, lookupOpts{target: ih, method: methodGetPeers})
	if err != nil {
		return 0
	}
	var to []nodeInfo
	var toks [][]byte
	for _, n := range r.Closest {
		if n.Token != nil {
			to, toks = append(to, n.nodeInfo), append(toks, n.Token)
		}
	}
	stored := 0
	for _, p := range ports {
		for _, res := range d.tx.queryAll(ctx, to, func(i int) krpcMsg {
			return krpcMsg{Method: methodAnnouncePeer, Args: krpcArgs{InfoHash: ih, Port: p, Token: toks[i]}}
		}) {
			if res.Err == nil {
				stored++
			}
		}
	}
	return stored
}

// fakeInviter is an attacker's address at a nameplate: it answers every
// msg1 with a msg2 of random bytes (a password guess against the
// acceptor) and ignores everything else.
type fakeInviter struct {
	addr   netip.AddrPort
	msg1s  atomic.Int64
	others atomic.Int64 // msg3 or anything else: a guess handed to it
}

func newFakeInviter(t *testing.T, ip string) *fakeInviter {
	t.Helper()
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeInviter{addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			m, err := parseInvite(buf[:n])
			if err != nil || m.Sub != inviteSubMsg1 {
				f.others.Add(1)
				continue
			}
			f.msg1s.Add(1)
			r := inviteMsg{Sub: inviteSubMsg2, SID: m.SID}
			cryptorand.Read(r.Y[:])
			cryptorand.Read(r.Tag[:])
			cryptorand.Read(r.Sealed[:])
			conn.WriteToUDPAddrPort(r.encode(), from)
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return f
}

// attackSwarm is a DHT on loopback with a real inviter and acceptor that
// use it for the rendezvous.
type attackSwarm struct {
	ds   []*dht
	boot []string
}

func newAttackSwarm(t *testing.T, size int) *attackSwarm {
	ds := newSwarm(t, size, 0)
	return &attackSwarm{ds: ds, boot: []string{ds[0].addr().String()}}
}

// pair makes an inviter that announces through one swarm node and an
// acceptor that looks up through another.
func (s *attackSwarm) pair(t *testing.T) (inv, acc *invitePeer) {
	inv = newInvitePeer(t, nil, nil, nil)
	acc = newInvitePeer(t, nil, nil, nil)
	inv.v.cfg.Announce = func(ctx context.Context, ih nodeID) (int, error) {
		return s.ds[1].announce(ctx, ih, int(inv.addr.Port()), false)
	}
	inv.v.cfg.GetPeers = s.ds[1].getPeers
	acc.v.cfg.Announce = func(ctx context.Context, ih nodeID) (int, error) {
		return s.ds[2].announce(ctx, ih, int(acc.addr.Port()), false)
	}
	acc.v.cfg.GetPeers = s.ds[2].getPeers
	return inv, acc
}

// attackerIP is the loopback address of attacker number i.
func attackerIP(i int) string { return fmt.Sprintf("127.0.%d.%d", 1+i/200, 2+i%200) }

// TestInviteAttackCost measures what denying one invitation costs, with
// the two attacks of issue 13 item 4, and logs the figures; set
// KADCHAT_INVITE_ATTACK=1 to run it. Exhaust: the attacker finds the
// inviter at the nameplate and sends it msg1s from a plain UDP socket.
// Poison: before the inviter announces, attacker IPs announce 4 ports
// each at the nameplate, and every port answers msg1 with a guess.
func TestInviteAttackCost(t *testing.T) {
	if os.Getenv("KADCHAT_INVITE_ATTACK") == "" {
		t.Skip("a measurement; KADCHAT_INVITE_ATTACK=1 runs it")
	}
	s := newAttackSwarm(t, 16)
	t.Logf("nameplates: %d", inviteNameplates)
	measureExhaust(t, s)
	measurePoison(t, s, []int{1, 2, 4, 8, 16}, 6)
}

// measureExhaust sends n msg1s with fresh sids for n = 1, 2, ... and
// reports the first n after which the real acceptor gets no key.
func measureExhaust(t *testing.T, s *attackSwarm) {
	ad, queries := newCountingDHT(t, attackerIP(0), s.boot)
	raw, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(attackerIP(0))})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, n := range []int{1, 2, 3, 4, 8, 64, 1000} {
		inv, acc := s.pair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		code, done, err := inv.v.invite(ctx)
		if err != nil {
			t.Fatal(err)
		}
		np, _, _ := parseInviteCode(code)
		waitFor(t, "the announce", func() bool { p, _ := s.ds[3].getPeers(ctx, inviteInfohash(np)); return len(p) > 0 })
		queries.Store(0)
		peers, _ := ad.getPeers(ctx, inviteInfohash(np))
		lookup := queries.Load()
		for i := range n {
			for _, p := range peers {
				m := inviteMsg{Sub: inviteSubMsg1, SID: [inviteSIDLen]byte{byte(i), byte(i >> 8), 0xa7}, Nameplate: np, Y: [inviteYLen]byte{9}}
				raw.WriteToUDPAddrPort(m.encode(), p)
			}
		}
		time.Sleep(50 * time.Millisecond)
		actx, acancel := context.WithTimeout(ctx, time.Second)
		k, err := acc.v.accept(actx, code)
		acancel()
		cancel()
		r := <-done
		t.Logf("exhaust: %d msg1 (+%d queries to find the inviter): acceptor %v (key %v), inviter %v",
			n, lookup, err, k == inv.key, r.Err)
		if k != inv.key {
			t.Logf("exhaust: DENIED with %d datagrams per nameplate", int(lookup)+n)
			return
		}
	}
	t.Logf("exhaust: never denied")
}

// measurePoison puts k attacker IPs with 4 ports each at the nameplate
// before the inviter, for each k, trials times, and reports how often the
// real acceptor still gets the inviter's key, and the attacker's datagrams.
func measurePoison(t *testing.T, s *attackSwarm, ks []int, trials int) {
	next := 1
	for _, k := range ks {
		type attacker struct {
			d       *dht
			queries *atomic.Int64
			ports   []uint16
			fakes   []*fakeInviter
		}
		var as []attacker
		for range k {
			ip := attackerIP(next)
			next++
			d, q := newCountingDHT(t, ip, s.boot)
			a := attacker{d: d, queries: q}
			for range maxPortsPerIP {
				f := newFakeInviter(t, ip)
				a.fakes, a.ports = append(a.fakes, f), append(a.ports, f.addr.Port())
			}
			as = append(as, a)
		}
		ok, datagrams, guesses := 0, int64(0), int64(0)
		errs := map[string]int{}
		for range trials {
			np, pw, err := newInviteCode(cryptorand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var wg sync.WaitGroup
			for _, a := range as {
				a.queries.Store(0)
				wg.Go(func() { announcePorts(ctx, a.d, inviteInfohash(np), a.ports) })
			}
			wg.Wait()
			for _, a := range as {
				datagrams += a.queries.Load()
			}
			inv, acc := s.pair(t)
			code, done, err := inv.v.inviteWith(ctx, np, pw)
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the announce", func() bool {
				p, _ := s.ds[3].getPeers(ctx, inviteInfohash(np))
				return len(p) > k*maxPortsPerIP
			})
			var before int64
			for _, a := range as {
				for _, f := range a.fakes {
					before += f.others.Load()
				}
			}
			actx, acancel := context.WithTimeout(ctx, 2*time.Second)
			key, err := acc.v.accept(actx, code)
			acancel()
			if err == nil && key == inv.key {
				ok++
			} else {
				errs[fmt.Sprint(err)]++
			}
			cancel()
			<-done
			time.Sleep(20 * time.Millisecond) // the last answers in flight
			for _, a := range as {
				for _, f := range a.fakes {
					guesses += f.others.Load()
				}
			}
			guesses -= before
		}
		t.Logf("poison: %d attacker IPs x %d ports: %.0f datagrams per nameplate; acceptor succeeded %d of %d %v; %d msg3/abort to the attacker",
			k, maxPortsPerIP, float64(datagrams)/float64(trials), ok, trials, errs, guesses)
	}
}
