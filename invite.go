// Invitations (SPEC.md 7.2, 7.4-7.8): a short code read aloud becomes a
// contact. Rendezvous, messages, key schedule, processing, limits and
// outcomes, and the inviter's side, are here; the acceptor's side is in
// invite_accept.go, the code and its words (7.1) in invite_words.go,
// CPace (7.3) in cpace.go. Packet type 5 on the shared socket.
//
// Flow: invite draws a code NNNNNN-even-odd, announces the nameplate's
// infohash and punches towards acceptors found at theirs. An acceptor
// runs one CPace run with each address at the nameplate, behind a NAT
// only once that address's punch came (SPEC 5.8's rule). The inviter
// answers msg1 (sid, Ya) with msg2 (Yb) and keeps nothing: yb comes from
// the invitation's secret, sid and Ya. msg3 (Ya again, tag_a, the sealed
// key) is one password guess: the inviter checks it, counts it if wrong
// (the third closes the code) and answers msg4 (tag_b, its sealed key) or
// a refuse. Every table is bounded; everything expires.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"
)

// ---------------------------------------------------------------------------
// Rendezvous (SPEC.md 7.2).

const (
	inviteRendezvousV2 = "kadchat invite v2"          // the inviters' infohash
	inviteAcceptorsV2  = "kadchat invite v2 acceptor" // the acceptors' infohash
	inviteCI           = "kadchat invite v2"          // the CPace channel identifier
)

// inviteInfohash is the rendezvous where inviters announce: SHA-256("kadchat
// invite v2" || nameplate as 6 ASCII digits), first 20 bytes.
func inviteInfohash(nameplate uint32) nodeID { return nameplateHash(inviteRendezvousV2, nameplate) }

// inviteAcceptorInfohash is where acceptors announce, so that an inviter
// behind a NAT can open it towards them. Acceptors have their own
// infohash because an acceptor must not take another acceptor for an
// inviter (it would wait for an answer that never comes).
func inviteAcceptorInfohash(nameplate uint32) nodeID {
	return nameplateHash(inviteAcceptorsV2, nameplate)
}

// inviteGated reports whether an inviter's address may sit behind a NAT
// that a msg1 arriving before the inviter's punch would break (SPEC.md
// 5.8, 7.2): an IPv4 address beyond every LAN. An IPv6 firewall keeps no
// state for a packet it drops, and a LAN address has no NAT in the way.
func inviteGated(a netip.AddrPort) bool {
	ip := a.Addr().Unmap()
	return ip.Is4() && !isExemptBEP42(ip)
}

func nameplateHash(label string, nameplate uint32) nodeID {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s%06d", label, nameplate)))
	var id nodeID
	copy(id[:], h[:])
	return id
}

// ---------------------------------------------------------------------------
// Wire format (SPEC.md 7.4). Every message starts with the packet type,
// the sub-type and the session id of one acceptor's run.

const (
	packetInvite = 5

	inviteSubMsg1   = 1 // acceptor to inviter: sid, nameplate, Ya
	inviteSubMsg2   = 2 // inviter to acceptor: sid, Yb
	inviteSubMsg3   = 3 // acceptor to inviter: sid, nameplate, Ya, tag_a, sealed key
	inviteSubMsg4   = 4 // inviter to acceptor: sid, wrong, tag_b, sealed key
	inviteSubPunch  = 5 // inviter to acceptor: opens the inviter's NAT; the acceptor's msg1 may follow
	inviteSubRefuse = 6 // inviter to acceptor: sid, reason

	inviteRefuseWrong  = 1 // msg3's tag did not verify: a wrong code
	inviteRefuseClosed = 2 // the code takes no more tries

	inviteSIDLen       = 8
	inviteHeaderLen    = 2 + inviteSIDLen // type, sub-type, sid
	inviteNameplateOff = inviteHeaderLen  // msg1 and msg3, uint32 big-endian
	inviteNameplateLen = 4                // bytes on the wire
	inviteYLen         = cpaceFieldBytes
	inviteTagLen       = sha512.Size
	inviteSealedLen    = len(publicKey{}) + chacha20poly1305.Overhead // 48

	inviteMsg1Len   = inviteHeaderLen + inviteNameplateLen + inviteYLen                                  // 46
	inviteMsg2Len   = inviteHeaderLen + inviteYLen                                                       // 42
	inviteMsg3Len   = inviteHeaderLen + inviteNameplateLen + inviteYLen + inviteTagLen + inviteSealedLen // 158
	inviteMsg4Len   = inviteHeaderLen + 1 + inviteTagLen + inviteSealedLen                               // 123
	invitePunchLen  = inviteHeaderLen                                                                    // 10, sid all zero
	inviteRefuseLen = inviteHeaderLen + 1                                                                // 11
)

// inviteMsg is one parsed invitation packet; which fields are set depends
// on Sub (msg1: Nameplate, Y = Ya; msg2: Y = Yb; msg3: Nameplate, Y = Ya,
// Tag, Sealed; msg4: Wrong, Tag, Sealed; refuse: Reason).
type inviteMsg struct {
	Sub       byte
	SID       [inviteSIDLen]byte
	Nameplate uint32
	Y         [inviteYLen]byte
	Wrong     byte // wrong tries the invitation counted before this run
	Reason    byte
	Tag       [inviteTagLen]byte
	Sealed    [inviteSealedLen]byte
}

var errInvitePacket = errors.New("invite: malformed packet")

// inviteLen is the exact length of each sub-type, 0 if unknown.
func inviteLen(sub byte) int {
	switch sub {
	case inviteSubMsg1:
		return inviteMsg1Len
	case inviteSubMsg2:
		return inviteMsg2Len
	case inviteSubMsg3:
		return inviteMsg3Len
	case inviteSubMsg4:
		return inviteMsg4Len
	case inviteSubPunch:
		return invitePunchLen
	case inviteSubRefuse:
		return inviteRefuseLen
	}
	return 0
}

// parseInvite parses strictly: known sub-type, exact length, every field
// in range. It has no side effects.
func parseInvite(b []byte) (inviteMsg, error) {
	if len(b) < inviteHeaderLen || b[0] != packetInvite {
		return inviteMsg{}, fmt.Errorf("%w: short or not type %d", errInvitePacket, packetInvite)
	}
	var m inviteMsg
	m.Sub = b[1]
	if n := inviteLen(m.Sub); n == 0 || len(b) != n {
		return inviteMsg{}, fmt.Errorf("%w: sub-type %d with %d bytes", errInvitePacket, b[1], len(b))
	}
	copy(m.SID[:], b[2:inviteHeaderLen])
	rest := b[inviteHeaderLen:]
	switch m.Sub {
	case inviteSubMsg1, inviteSubMsg3:
		m.Nameplate = binary.BigEndian.Uint32(rest)
		rest = rest[inviteNameplateLen:]
		copy(m.Y[:], rest)
		if m.Sub == inviteSubMsg3 {
			copy(m.Tag[:], rest[inviteYLen:])
			copy(m.Sealed[:], rest[inviteYLen+inviteTagLen:])
		}
	case inviteSubMsg2:
		copy(m.Y[:], rest)
	case inviteSubMsg4:
		m.Wrong = rest[0]
		copy(m.Tag[:], rest[1:])
		copy(m.Sealed[:], rest[1+inviteTagLen:])
	case inviteSubRefuse:
		m.Reason = rest[0]
	}
	if err := checkInviteFields(&m); err != nil {
		return inviteMsg{}, err
	}
	return m, nil
}

// checkInviteFields rejects values no honest sender writes.
func checkInviteFields(m *inviteMsg) error {
	switch {
	case (m.Sub == inviteSubMsg1 || m.Sub == inviteSubMsg3) && m.Nameplate >= inviteNameplates:
		return fmt.Errorf("%w: nameplate %d", errInvitePacket, m.Nameplate)
	case m.Sub == inviteSubMsg4 && m.Wrong >= inviteMaxTries:
		return fmt.Errorf("%w: %d wrong tries before success", errInvitePacket, m.Wrong)
	case m.Sub == inviteSubRefuse && m.Reason != inviteRefuseWrong && m.Reason != inviteRefuseClosed:
		return fmt.Errorf("%w: refuse reason %d", errInvitePacket, m.Reason)
	case m.Sub == inviteSubPunch && m.SID != ([inviteSIDLen]byte{}):
		return fmt.Errorf("%w: punch with a session id", errInvitePacket)
	}
	return nil
}

// header is the 10 bytes every message starts with.
func (m *inviteMsg) header() []byte {
	return append([]byte{packetInvite, m.Sub}, m.SID[:]...)
}

// sealedAD is what the AEAD authenticates: every byte before Sealed.
func (m *inviteMsg) sealedAD() []byte {
	switch m.Sub {
	case inviteSubMsg3:
		b := binary.BigEndian.AppendUint32(m.header(), m.Nameplate)
		return append(append(b, m.Y[:]...), m.Tag[:]...)
	case inviteSubMsg4:
		return append(append(m.header(), m.Wrong), m.Tag[:]...)
	}
	return nil
}

// encode is the inverse of parseInvite.
func (m *inviteMsg) encode() []byte {
	b := m.header()
	switch m.Sub {
	case inviteSubMsg1:
		b = binary.BigEndian.AppendUint32(b, m.Nameplate)
		b = append(b, m.Y[:]...)
	case inviteSubMsg2:
		b = append(b, m.Y[:]...)
	case inviteSubMsg3, inviteSubMsg4:
		b = append(m.sealedAD(), m.Sealed[:]...)
	case inviteSubRefuse:
		b = append(b, m.Reason)
	}
	return b
}

func refuseMsg(sid [inviteSIDLen]byte, reason byte) []byte {
	m := inviteMsg{Sub: inviteSubRefuse, SID: sid, Reason: reason}
	return m.encode()
}

// ---------------------------------------------------------------------------
// Key schedule (SPEC.md 7.5): CPace's ISK, then the draft's mac_key for
// the two confirmation tags and HKDF-SHA-512 for the two sealing keys.

const (
	inviteLabelSealInviter  = "kadchat invite v2 inviter key"
	inviteLabelSealAcceptor = "kadchat invite v2 acceptor key"
	inviteLabelScalar       = "kadchat invite v2 yb"
	inviteSecretLen         = 32
)

// The CPace associated data: the roles, so a tag cannot be reflected.
var (
	inviteADa = []byte("acceptor") // party A speaks first: the acceptor
	inviteADb = []byte("inviter")
)

// inviteKeys is everything one CPace run yields.
type inviteKeys struct {
	tagA, tagB           [inviteTagLen]byte // the expected confirmation tags
	sealInviter, sealAcc [chacha20poly1305.KeySize]byte
}

// deriveInviteKeys runs the key schedule from ISK; Ya and Yb are the
// public shares as sent.
func deriveInviteKeys(sid []byte, isk [cpaceISKLen]byte, ya, yb []byte) inviteKeys {
	var k inviteKeys
	mk := cpaceMacKey(sid, isk)
	k.tagA = cpaceTag(mk, ya, inviteADa)
	k.tagB = cpaceTag(mk, yb, inviteADb)
	wipe(mk[:])
	hkdfExpand(isk[:], sid, inviteLabelSealInviter, k.sealInviter[:])
	hkdfExpand(isk[:], sid, inviteLabelSealAcceptor, k.sealAcc[:])
	return k
}

// runKeys is both parties' last step: K = y * Y' (G.I aborts), ISK, the
// keys. ya and yb are the shares as sent.
func runKeys(sid []byte, y, peer [cpaceFieldBytes]byte, ya, yb []byte) (inviteKeys, error) {
	k, err := cpaceScalarMultVfy(y, peer)
	if err != nil {
		return inviteKeys{}, err
	}
	isk := cpaceISK(sid, k[:], ya, inviteADa, yb, inviteADb)
	wipe(k[:])
	keys := deriveInviteKeys(sid, isk, ya, yb)
	wipe(isk[:])
	return keys, nil
}

func hkdfExpand(secret, salt []byte, label string, out []byte) {
	// HKDF-SHA-512 cannot fail for 32 bytes of output.
	io.ReadFull(hkdf.New(sha512.New, secret, salt, []byte(label)), out)
}

func (k *inviteKeys) wipe() {
	wipe(k.tagA[:])
	wipe(k.tagB[:])
	wipe(k.sealInviter[:])
	wipe(k.sealAcc[:])
}

// inviterScalar is yb = HMAC-SHA-512(secret, label || sid || Ya), first 32
// bytes: as random as a fresh draw to anyone without the secret, and the
// same for a repeated msg1, so the inviter needs no state per run.
func inviterScalar(secret *[inviteSecretLen]byte, sid, ya []byte) [cpaceFieldBytes]byte {
	m := hmac.New(sha512.New, secret[:])
	m.Write([]byte(inviteLabelScalar))
	m.Write(sid)
	m.Write(ya)
	var sum [sha512.Size]byte
	m.Sum(sum[:0])
	var y [cpaceFieldBytes]byte
	copy(y[:], sum[:])
	wipe(sum[:])
	return y
}

// seal encrypts a public key; each key seals exactly one plaintext, so
// the nonce is zero.
func sealKey(key [chacha20poly1305.KeySize]byte, ad []byte, pk publicKey) [inviteSealedLen]byte {
	aead, _ := chacha20poly1305.New(key[:]) // only fails for a wrong key size
	var out [inviteSealedLen]byte
	aead.Seal(out[:0], make([]byte, chacha20poly1305.NonceSize), pk[:], ad)
	return out
}

var errInviteAuth = errors.New("invite: authentication failed")

func openKey(key [chacha20poly1305.KeySize]byte, ad []byte, sealed [inviteSealedLen]byte) (publicKey, error) {
	aead, _ := chacha20poly1305.New(key[:])
	var pk publicKey
	if _, err := aead.Open(pk[:0], make([]byte, chacha20poly1305.NonceSize), sealed[:], ad); err != nil {
		return publicKey{}, errInviteAuth
	}
	if isLowOrder(pk) {
		return publicKey{}, fmt.Errorf("%w: low-order key", errInviteAuth)
	}
	return pk, nil
}

// ---------------------------------------------------------------------------
// The protocol state (SPEC.md 7.7): timers and limits, the inviter's
// invitations, the acceptor's runs.

const (
	inviteLifetime      = 10 * time.Minute // a code is dead after this
	inviteMaxTries      = 3                // wrong codes (msg3s that fail) that close an invitation
	inviteMaxActive     = 4                // open invitations per inviter
	inviteMaxEnded      = 16               // ended invitations kept until their lifetime ends, to answer latecomers
	inviteMaxAnswers    = 100              // runs the inviter computes per tick (msg1 and msg3), all invitations together
	inviteMaxAccepts    = 4                // acceptor runs at once
	inviteMaxCandidates = 16               // addresses one acceptor run tries: each one a possible guess (SPEC 7.9)
	inviteMaxPerGroup   = 2                // of them in one IPv4 address or IPv6 /64
	inviteRetry         = time.Second      // retransmission tick
	inviteAcceptTimeout = 30 * time.Second // the acceptor gives up after this
	inviteLookupTicks   = 5                // get_peers again every 5 ticks
	inviteAnnounceTicks = 5                // announce again every 5 ticks until stored
	invitePunchTicks    = 2                // the inviter looks for acceptors every 2 ticks
	inviteMaxPunched    = 16               // acceptor addresses an invitation punches towards
	invitePunches       = 3                // punches per acceptor address, one per lookup that finds it
	inviteOpenTicks     = 12               // an acceptor waits this long for the punch before msg1 anyway
)

// Errors the caller can branch on; each says what a person should do.
var (
	errInviteBusy      = errors.New("invite: too many invitations in progress")
	errInviteWrongCode = errors.New("invite: wrong code: the inviter's kadchat refused it and was told that a wrong code was tried (check the code with them)")
	errInviteClosed    = errors.New("invite: the code is used up: wrong codes were tried against it, so someone may have tried to guess it (ask for a new invitation)")
	errInviteNoAnswer  = errors.New("invite: nobody answered at this code's nameplate (is the inviter online and the code fresh?)")
	errInviteExpired   = errors.New("invite: the code expired; make a new invitation")
	errInviteUsedUp    = errors.New("invite: a wrong code was tried 3 times, so someone may have tried to guess it: the code is closed; make a new invitation")
)

// errInviteUnfinished is the acceptor's timeout when some address at the
// nameplate took a guess and never answered it.
func errInviteUnfinished(n int) error {
	return fmt.Errorf("invite: no answer from the inviter, and %d other %s at the code's nameplate answered but never finished: someone may have tried the code (ask for a new invitation)",
		n, plural(n, "address", "addresses"))
}

// inviteConfig is what an inviter needs from the Node and the DHT.
type inviteConfig struct {
	Self     publicKey
	Send     func(to netip.AddrPort, b []byte) error
	Announce func(ctx context.Context, ih nodeID) (int, error)
	GetPeers func(ctx context.Context, ih nodeID) ([]netip.AddrPort, error)
	// Open sends one opening packet (SPEC.md 5.8.3: empty, small TTL) to
	// an address Gated reports; nil: nothing is gated, msg1 goes at once.
	// Gated nil means inviteGated.
	Open  func(to netip.AddrPort) error
	Gated func(to netip.AddrPort) bool
	Now   func() time.Time
	Rand  io.Reader
	Log   *slog.Logger
	Tick  time.Duration // retransmission tick; 0 means inviteRetry (tests shorten it)
}

// inviteEvent is what an invitation reports: a wrong try (Wrong, with the
// tries left), then once the end: the acceptor's key or why not.
type inviteEvent struct {
	Wrong     bool
	TriesLeft int
	Key       publicKey
	Err       error
}

// inviteIO is what both roles share: the configuration and the count of
// packets dropped because they did not parse or did not authenticate
// (SPEC.md 7.4, 7.5); the drop itself is silent.
type inviteIO struct {
	cfg     inviteConfig
	dropped atomic.Uint64
}

func (x *inviteIO) send(to netip.AddrPort, b []byte) {
	if err := x.cfg.Send(to, b); err != nil {
		x.cfg.Log.Debug("invite: send", "to", to, "err", err)
	}
}

// drop counts and logs a packet that is ignored on purpose.
func (x *inviteIO) drop(from netip.AddrPort, why string, err error) {
	x.dropped.Add(1)
	x.cfg.Log.Debug("invite: drop", "from", from, "why", why, "err", err)
}

// inviter runs the invitation protocol for one Node: the inviter role
// here, the acceptor role in its acceptor (invite_accept.go). The two
// share no state. It is safe for concurrent use; handlePacket never
// blocks on the network.
type inviter struct {
	*inviteIO
	acceptor *acceptor

	mu      sync.Mutex
	invites map[uint32]*invitation // by nameplate
	budget  struct {
		start time.Time
		used  int
	}
}

type inviteState uint8

const (
	inviteOpen   inviteState = iota // answers msg1, checks msg3
	inviteDone                      // a msg3 verified; repeats of it get msg4
	inviteClosed                    // 3 wrong tries; refuses everyone
)

// invitation is one code the user handed out. It stays after it ends,
// until its lifetime is over, to answer repeats and tell latecomers.
type invitation struct {
	nameplate uint32
	prs       []byte                // the canonical code text: CPace's PRS
	secret    [inviteSecretLen]byte // yb of each run derives from it
	expires   time.Time
	state     inviteState
	failed    [][inviteSIDLen]byte // sids of the wrong msg3s, at most inviteMaxTries
	okMsg3    [sha256.Size]byte    // the msg3 that succeeded
	msg4      []byte               // its answer, for repeats
	events    chan inviteEvent
}

// newInviter makes an inviter; nil Now, Rand and Log get the defaults,
// and nil Announce and GetPeers do nothing.
func newInviter(cfg inviteConfig) *inviter {
	defaultNowRandLog(&cfg.Now, &cfg.Rand, &cfg.Log)
	if cfg.Tick <= 0 {
		cfg.Tick = inviteRetry
	}
	if cfg.Announce == nil { // no DHT: nothing is announced
		cfg.Announce = func(context.Context, nodeID) (int, error) { return 0, nil }
	}
	if cfg.GetPeers == nil { // no DHT: nobody is found
		cfg.GetPeers = func(context.Context, nodeID) ([]netip.AddrPort, error) { return nil, nil }
	}
	switch {
	case cfg.Open == nil: // no way to open our NAT: msg1 at once, as to a public inviter
		cfg.Gated = func(netip.AddrPort) bool { return false }
	case cfg.Gated == nil:
		cfg.Gated = inviteGated
	}
	shared := &inviteIO{cfg: cfg}
	return &inviter{
		inviteIO: shared,
		acceptor: &acceptor{inviteIO: shared, cands: map[[inviteSIDLen]byte]*acceptCand{}},
		invites:  map[uint32]*invitation{},
	}
}

// spend takes one CPace computation from this tick's budget: a flood of
// msg1s costs the node at most inviteMaxAnswers computations a tick.
func (v *inviter) spend() bool {
	now := v.cfg.Now()
	if now.Sub(v.budget.start) >= v.cfg.Tick || now.Before(v.budget.start) {
		v.budget.start, v.budget.used = now, 0
	}
	if v.budget.used >= inviteMaxAnswers {
		return false
	}
	v.budget.used++
	return true
}

// handlePacket takes one datagram whose first byte is packetInvite.
// Anything that does not parse or authenticate is dropped silently.
func (v *inviter) handlePacket(from netip.AddrPort, b []byte) {
	m, err := parseInvite(b)
	if err != nil {
		v.drop(from, "parse", err)
		return
	}
	switch m.Sub {
	case inviteSubMsg1, inviteSubMsg3:
		v.mu.Lock()
		defer v.mu.Unlock()
		if m.Sub == inviteSubMsg1 {
			v.onMsg1(from, &m)
		} else {
			v.onMsg3(from, &m, b)
		}
	case inviteSubMsg2, inviteSubMsg4, inviteSubRefuse:
		v.acceptor.handle(from, &m)
	case inviteSubPunch:
		v.acceptor.onPunch(from)
	}
}

// accept runs the acceptor side with a code the user typed; it blocks
// until success, failure or the end of ctx.
func (v *inviter) accept(ctx context.Context, code string) (acceptResult, error) {
	return v.acceptor.accept(ctx, code)
}

// ---------------------------------------------------------------------------
// Inviter role (SPEC.md 7.5, 7.6).

// invite starts an invitation and returns the code at once; its events
// (wrong tries, then the end) arrive on events, which is closed after
// the end.
func (v *inviter) invite(ctx context.Context) (code string, events <-chan inviteEvent, err error) {
	for range 16 { // a nameplate this inviter already uses is drawn again
		np, pw, err := newInviteCode(v.cfg.Rand)
		if err != nil {
			return "", nil, err
		}
		code, events, err = v.inviteWith(ctx, np, pw)
		if !errors.Is(err, errInviteNameplateTaken) {
			return code, events, err
		}
	}
	return "", nil, errors.New("invite: no free nameplate")
}

var errInviteNameplateTaken = errors.New("invite: nameplate in use")

// inviteWith starts an invitation with a given code (tests use it to put
// two invitations on one nameplate).
func (v *inviter) inviteWith(ctx context.Context, np uint32, password string) (string, <-chan inviteEvent, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pruneInvites()
	open := 0
	for _, inv := range v.invites {
		if inv.state == inviteOpen {
			open++
		}
	}
	if open >= inviteMaxActive {
		return "", nil, errInviteBusy
	}
	if v.invites[np] != nil {
		return "", nil, errInviteNameplateTaken
	}
	code := formatInviteCode(np, password)
	inv := &invitation{nameplate: np, prs: []byte(code), expires: v.cfg.Now().Add(inviteLifetime),
		events: make(chan inviteEvent, inviteMaxTries)}
	if _, err := io.ReadFull(v.cfg.Rand, inv.secret[:]); err != nil {
		return "", nil, fmt.Errorf("invite: random secret: %w", err)
	}
	v.invites[np] = inv
	go v.runInvite(ctx, inv)
	return code, inv.events, nil
}

// pruneInvites forgets ended invitations whose lifetime is over and, past
// inviteMaxEnded, the ones that would expire first.
func (v *inviter) pruneInvites() {
	now := v.cfg.Now()
	var ended []*invitation
	for np, inv := range v.invites {
		switch {
		case inv.state == inviteOpen:
		case !now.Before(inv.expires):
			delete(v.invites, np)
		default:
			ended = append(ended, inv)
		}
	}
	if len(ended) < inviteMaxEnded {
		return
	}
	slices.SortFunc(ended, func(a, b *invitation) int { return a.expires.Compare(b.expires) })
	for _, inv := range ended[:len(ended)-inviteMaxEnded+1] {
		delete(v.invites, inv.nameplate)
	}
}

// invitation is the invitation with this nameplate, nil if none or if
// it ended and its lifetime is over.
func (v *inviter) invitation(np uint32) *invitation {
	inv := v.invites[np]
	if inv != nil && inv.state != inviteOpen && !v.cfg.Now().Before(inv.expires) {
		delete(v.invites, np)
		return nil
	}
	return inv
}

// runInvite announces the nameplate and looks for acceptors to punch
// towards until the invitation ends, expires or ctx ends.
func (v *inviter) runInvite(ctx context.Context, inv *invitation) {
	actx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { v.announceLoop(actx, inviteInfohash(inv.nameplate)) })
	wg.Go(func() { v.punchLoop(actx, inv.nameplate) })
	defer wg.Wait()
	defer cancel()
	tick := time.NewTicker(v.cfg.Tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			v.mu.Lock()
			v.forget(inv, fmt.Errorf("invite: %w", ctx.Err()))
			v.mu.Unlock()
			return
		case <-tick.C:
		}
		v.mu.Lock()
		if inv.state == inviteOpen && !v.cfg.Now().Before(inv.expires) {
			v.forget(inv, errInviteExpired)
		}
		over := inv.state != inviteOpen
		v.mu.Unlock()
		if over {
			return
		}
	}
}

// announceLoop announces until one DHT node has stored the announce.
func (v *inviter) announceLoop(ctx context.Context, ih nodeID) {
	for {
		n, err := v.cfg.Announce(ctx, ih)
		v.cfg.Log.Debug("invite: announce", "stored", n, "err", err)
		if err == nil && n > 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(inviteAnnounceTicks * v.cfg.Tick):
		}
	}
}

// punchLoop looks up the acceptors' infohash and sends each address one
// punch per lookup that finds it, a few in all: it opens our NAT, if any,
// towards the acceptor, and tells an acceptor behind a NAT that its msg1
// may now come (SPEC.md 7.2). A repeat covers a lost punch.
func (v *inviter) punchLoop(ctx context.Context, np uint32) {
	ih := inviteAcceptorInfohash(np)
	punched := map[netip.AddrPort]int{}
	punch := (&inviteMsg{Sub: inviteSubPunch}).encode()
	for {
		peers, err := v.cfg.GetPeers(ctx, ih)
		if err != nil {
			v.cfg.Log.Debug("invite: get_peers acceptors", "err", err)
		}
		for _, a := range peers {
			n, ok := punched[a]
			if a.IsValid() && n < invitePunches && (ok || len(punched) < inviteMaxPunched) {
				punched[a] = n + 1
				v.send(a, punch)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(invitePunchTicks * v.cfg.Tick):
		}
	}
}

// onMsg1 answers a run with msg2. Nothing is kept: the same msg1 gets the
// same msg2, and msg3 brings everything needed to check it.
func (v *inviter) onMsg1(from netip.AddrPort, m *inviteMsg) {
	inv := v.invitation(m.Nameplate)
	switch {
	case inv == nil:
		return
	case inv.state != inviteOpen:
		v.send(from, refuseMsg(m.SID, inviteRefuseClosed))
		return
	case !v.spend():
		v.drop(from, "msg1 budget", nil)
		return
	case isLowOrder(publicKey(m.Y)):
		v.drop(from, "msg1 share", errCPaceIdentity) // no run: no guess
		return
	}
	yb, Yb, err := inv.share(m.SID[:], m.Y[:])
	wipe(yb[:])
	if err != nil {
		v.drop(from, "msg1 generator", err)
		return
	}
	r := inviteMsg{Sub: inviteSubMsg2, SID: m.SID, Y: Yb}
	v.send(from, r.encode())
}

// onMsg3 checks one password guess. A repeat gets the answer it got
// before; a new wrong one counts, and the third closes the code. An
// acceptor sends one msg3 per run, so any msg3 in a run that failed is
// refused unchecked: it can be nothing but a repeat, a forgery or
// tampering, and it tests no password.
func (v *inviter) onMsg3(from netip.AddrPort, m *inviteMsg, raw []byte) {
	inv := v.invitation(m.Nameplate)
	if inv == nil {
		return
	}
	h := sha256.Sum256(raw)
	switch {
	case inv.state == inviteDone && h == inv.okMsg3:
		v.send(from, inv.msg4) // the acceptor lost msg4
		return
	case slices.Contains(inv.failed, m.SID): // a repeat, or another msg3 in a failed run
		v.send(from, refuseMsg(m.SID, inviteRefuseWrong))
		return
	case inv.state != inviteOpen:
		v.send(from, refuseMsg(m.SID, inviteRefuseClosed))
		return
	case !v.spend():
		v.drop(from, "msg3 budget", nil)
		return
	case isLowOrder(publicKey(m.Y)):
		v.drop(from, "msg3 share", errCPaceIdentity) // no run: no guess
		return
	}
	keys, err := inv.keysFor(m.SID, m.Y)
	if err != nil {
		v.drop(from, "msg3", err)
		return
	}
	defer keys.wipe()
	if !hmac.Equal(keys.tagA[:], m.Tag[:]) {
		v.wrongTry(from, inv, m.SID)
		return
	}
	pk, err := openKey(keys.sealAcc, m.sealedAD(), m.Sealed)
	if err != nil { // the code was right: tampering, not a guess
		v.drop(from, "msg3 key", err)
		return
	}
	r := inviteMsg{Sub: inviteSubMsg4, SID: m.SID, Wrong: byte(len(inv.failed)), Tag: keys.tagB}
	r.Sealed = sealKey(keys.sealInviter, r.sealedAD(), v.cfg.Self)
	inv.okMsg3, inv.msg4 = h, r.encode()
	v.send(from, inv.msg4)
	v.end(inv, inviteDone, inviteEvent{Key: pk})
}

// share is the inviter's yb and Yb for the run (sid, Ya).
func (inv *invitation) share(sid, ya []byte) (yb, Yb [cpaceFieldBytes]byte, err error) {
	yb = inviterScalar(&inv.secret, sid, ya)
	g := cpaceCalculateGenerator(inv.prs, []byte(inviteCI), sid)
	Yb, err = cpaceScalarMultVfy(yb, g)
	return yb, Yb, err
}

// keysFor recomputes the inviter's side of the run (sid, Ya): yb, Yb, K
// and the keys.
func (inv *invitation) keysFor(sid [inviteSIDLen]byte, ya [inviteYLen]byte) (inviteKeys, error) {
	yb, Yb, err := inv.share(sid[:], ya[:])
	defer wipe(yb[:])
	if err != nil {
		return inviteKeys{}, err
	}
	return runKeys(sid[:], yb, ya, ya[:], Yb[:])
}

// wrongTry counts a wrong code, tells the acceptor and the user, and
// closes the invitation at the last try.
func (v *inviter) wrongTry(from netip.AddrPort, inv *invitation, sid [inviteSIDLen]byte) {
	inv.failed = append(inv.failed, sid)
	v.cfg.Log.Debug("invite: wrong code", "nameplate", inv.nameplate, "from", from, "tries", len(inv.failed))
	v.send(from, refuseMsg(sid, inviteRefuseWrong))
	if len(inv.failed) >= inviteMaxTries {
		v.end(inv, inviteClosed, inviteEvent{Err: errInviteUsedUp})
		return
	}
	inv.events <- inviteEvent{Wrong: true, TriesLeft: inviteMaxTries - len(inv.failed)}
}

// end ends an open invitation once and reports ev, its last event; the
// invitation stays to answer repeats until its lifetime is over.
func (v *inviter) end(inv *invitation, state inviteState, ev inviteEvent) {
	if inv.state != inviteOpen {
		return
	}
	inv.state = state
	wipe(inv.prs)
	wipe(inv.secret[:])
	inv.events <- ev
	close(inv.events)
}

// forget ends an invitation that expired or whose context ended: nothing
// of it stays.
func (v *inviter) forget(inv *invitation, err error) {
	v.end(inv, inviteClosed, inviteEvent{Err: err})
	if v.invites[inv.nameplate] == inv {
		delete(v.invites, inv.nameplate)
	}
}
