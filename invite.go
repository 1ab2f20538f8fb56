// Invitations (SPEC.md 7.1, 7.2, 7.4-7.8): a short code read aloud becomes
// a contact. The code, rendezvous, messages, key schedule, processing,
// retransmission, limits and outcomes are here; CPace (7.3) is in cpace.go,
// the word lists (7.1) in invite_words.go. Packet type 5 on the shared socket.
//
// Flow: invite draws a code NNNN-even-odd and announces the nameplate's
// infohash. The acceptor looks it up, sends msg1 (sid, Ya) to each address
// found and announces itself at the acceptors' infohash; the inviter finds
// it there and punches its NAT open. The inviter answers msg1 with msg2
// (Yb, tag_b, its sealed key); the acceptor checks it and answers msg3
// (tag_a, its sealed key) or an abort, and returns the inviter's key; the
// inviter checks msg3 and delivers the acceptor's key on done. msg1 and
// msg2 repeat every tick, and a repeat gets the stored answer. Every table
// is bounded; everything expires.
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"
)

// ---------------------------------------------------------------------------
// The code (SPEC.md 7.1): NNNN-even-odd. The nameplate is public (a
// rendezvous channel, 7.2); the two words are the password, 8 bits each.

const (
	inviteNameplates   = 10000                        // 0000..9999
	inviteNameplateLen = 4                            // digits
	inviteCodeParts    = 3                            // nameplate, even word, odd word
	inviteRendezvousV1 = "kadchat invite v1"          // the inviters' infohash
	inviteAcceptorsV1  = "kadchat invite v1 acceptor" // the acceptors' infohash
	inviteCI           = "kadchat invite v1"          // the CPace channel identifier
)

// Errors of parseInviteCode; each says what a person should fix.
var (
	errInviteCodeForm      = errors.New("invite: the code has the form 1234-word-word")
	errInviteCodeNameplate = errors.New("invite: the code must start with 4 digits")
	errInviteCodeWord      = errors.New("invite: unknown word")
)

// parseInviteCode reads what a person typed: case, surrounding spaces and
// any run of spaces and dashes between the parts are forgiven; unknown
// words get a suggestion.
// password is the canonical "even-odd" in lowercase.
func parseInviteCode(s string) (nameplate uint16, password string, err error) {
	parts := strings.FieldsFunc(strings.ToLower(strings.TrimSpace(s)), func(r rune) bool { return r == '-' || r == ' ' })
	if len(parts) != inviteCodeParts {
		return 0, "", fmt.Errorf("%w: %q has %d parts, want 3", errInviteCodeForm, s, len(parts))
	}
	np := parts[0]
	if len(np) != inviteNameplateLen || strings.Trim(np, "0123456789") != "" {
		return 0, "", fmt.Errorf("%w, not %q", errInviteCodeNameplate, parts[0])
	}
	n, _ := strconv.Atoi(np)
	if _, err := wordIndex(&pgpEven, &pgpOdd, parts[1], "first"); err != nil {
		return 0, "", err
	}
	if _, err := wordIndex(&pgpOdd, &pgpEven, parts[2], "second"); err != nil {
		return 0, "", err
	}
	return uint16(n), parts[1] + "-" + parts[2], nil
}

// wordIndex finds w in list; otherwise the error names the closest word,
// or says that w belongs to the other position.
func wordIndex(list, other *[256]string, w, pos string) (int, error) {
	for i, x := range list {
		if x == w {
			return i, nil
		}
	}
	for _, x := range other {
		if x == w {
			return -1, fmt.Errorf("%w %q as the %s word: it is a word for the other position (swapped?)", errInviteCodeWord, w, pos)
		}
	}
	best, bestD := "", -1
	for _, x := range list {
		if d := editDistance(w, x); bestD < 0 || d < bestD {
			best, bestD = x, d
		}
	}
	return -1, fmt.Errorf("%w %q as the %s word (did you mean %q?)", errInviteCodeWord, w, pos, best)
}

// editDistance is the Levenshtein distance; words are short.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// formatInviteCode is the canonical code text; it is also CPace's PRS.
func formatInviteCode(nameplate uint16, password string) string {
	return fmt.Sprintf("%04d-%s", nameplate, password)
}

// newInviteCode draws a nameplate uniformly from 0..9999 (rejection
// sampling, bounded: 60000/65536 of the draws succeed) and two words.
func newInviteCode(rand io.Reader) (uint16, string, error) {
	var b [4]byte
	for range 64 {
		if _, err := io.ReadFull(rand, b[:]); err != nil {
			return 0, "", fmt.Errorf("invite: random code: %w", err)
		}
		n := binary.BigEndian.Uint16(b[:2])
		if n < 6*inviteNameplates {
			return n % inviteNameplates, pgpEven[b[2]] + "-" + pgpOdd[b[3]], nil
		}
	}
	return 0, "", errors.New("invite: random code: the random source is biased")
}

// inviteInfohash is the rendezvous where inviters announce: SHA-256("kadchat
// invite v1" || nameplate as 4 ASCII digits), first 20 bytes.
func inviteInfohash(nameplate uint16) nodeID { return nameplateHash(inviteRendezvousV1, nameplate) }

// inviteAcceptorInfohash is where acceptors announce, so that an inviter
// behind a NAT can open it towards them. Acceptors have their own
// infohash because an acceptor must not take another acceptor for an
// inviter (it would wait for an answer that never comes).
func inviteAcceptorInfohash(nameplate uint16) nodeID {
	return nameplateHash(inviteAcceptorsV1, nameplate)
}

func nameplateHash(label string, nameplate uint16) nodeID {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s%04d", label, nameplate)))
	var id nodeID
	copy(id[:], h[:])
	return id
}

// ---------------------------------------------------------------------------
// Wire format (SPEC.md 7.4). Every message starts with the packet type,
// the sub-type and the acceptor's session id.

const (
	packetInvite = 5

	inviteSubMsg1  = 1
	inviteSubMsg2  = 2
	inviteSubMsg3  = 3
	inviteSubAbort = 4
	inviteSubPunch = 5 // inviter to acceptor: opens the inviter's NAT; ignored

	inviteSIDLen       = 8
	inviteHeaderLen    = 2 + inviteSIDLen // type, sub-type, sid
	inviteNameplateOff = inviteHeaderLen  // msg1 only, uint16 big-endian
	inviteYLen         = cpaceFieldBytes
	inviteTagLen       = sha512.Size
	inviteSealedLen    = len(publicKey{}) + chacha20poly1305.Overhead // 48

	inviteMsg1Len  = inviteHeaderLen + 2 + inviteYLen                              // 44
	inviteMsg2Len  = inviteHeaderLen + inviteYLen + inviteTagLen + inviteSealedLen // 154
	inviteMsg3Len  = inviteHeaderLen + inviteTagLen + inviteSealedLen              // 122
	inviteAbortLen = inviteHeaderLen                                               // 10
	invitePunchLen = inviteHeaderLen                                               // 10, sid all zero
)

// inviteMsg is one parsed invitation packet; which fields are set depends
// on Sub (msg1: Nameplate, Y; msg2: Y, Tag, Sealed; msg3: Tag, Sealed).
type inviteMsg struct {
	Sub       byte
	SID       [inviteSIDLen]byte
	Nameplate uint16
	Y         [inviteYLen]byte
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
	case inviteSubAbort:
		return inviteAbortLen
	case inviteSubPunch:
		return invitePunchLen
	}
	return 0
}

// parseInvite parses strictly: known sub-type, exact length, nameplate in
// range. It has no side effects.
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
	case inviteSubMsg1:
		m.Nameplate = binary.BigEndian.Uint16(rest)
		if m.Nameplate >= inviteNameplates {
			return inviteMsg{}, fmt.Errorf("%w: nameplate %d", errInvitePacket, m.Nameplate)
		}
		copy(m.Y[:], rest[2:])
	case inviteSubMsg2:
		copy(m.Y[:], rest)
		copy(m.Tag[:], rest[inviteYLen:])
		copy(m.Sealed[:], rest[inviteYLen+inviteTagLen:])
	case inviteSubMsg3:
		copy(m.Tag[:], rest)
		copy(m.Sealed[:], rest[inviteTagLen:])
	case inviteSubPunch:
		if m.SID != ([inviteSIDLen]byte{}) {
			return inviteMsg{}, fmt.Errorf("%w: punch with a session id", errInvitePacket)
		}
	}
	return m, nil
}

// header is the 10 bytes every message starts with.
func (m *inviteMsg) header() []byte {
	return append([]byte{packetInvite, m.Sub}, m.SID[:]...)
}

// sealedAD is what the AEAD authenticates: every byte before Sealed.
func (m *inviteMsg) sealedAD() []byte {
	switch m.Sub {
	case inviteSubMsg2:
		return append(append(m.header(), m.Y[:]...), m.Tag[:]...)
	case inviteSubMsg3:
		return append(m.header(), m.Tag[:]...)
	}
	return nil
}

// encode is the inverse of parseInvite.
func (m *inviteMsg) encode() []byte {
	b := m.header()
	switch m.Sub {
	case inviteSubMsg1:
		b = binary.BigEndian.AppendUint16(b, m.Nameplate)
		b = append(b, m.Y[:]...)
	case inviteSubMsg2, inviteSubMsg3:
		b = append(m.sealedAD(), m.Sealed[:]...)
	}
	return b
}

// ---------------------------------------------------------------------------
// Key schedule (SPEC.md 7.5): CPace's ISK, then the draft's mac_key for
// the two confirmation tags and HKDF-SHA-512 for the two sealing keys.

const (
	inviteLabelSealInviter  = "kadchat invite v1 inviter key"
	inviteLabelSealAcceptor = "kadchat invite v1 acceptor key"
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

func hkdfExpand(secret, salt []byte, label string, out []byte) {
	// HKDF-SHA-512 cannot fail for 32 bytes of output.
	io.ReadFull(hkdf.New(sha512.New, secret, salt, []byte(label)), out)
}

func (k *inviteKeys) wipe() {
	wipe(k.sealInviter[:])
	wipe(k.sealAcc[:])
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
// invitations and sessions, the acceptor's runs.

const (
	inviteLifetime       = 10 * time.Minute // a code is dead after this
	inviteMaxAttempts    = 3                // PAKE runs (msg1 with a new sid) per code
	inviteMaxSessions    = 8                // inviter sessions in flight, all codes together
	inviteMaxActive      = 4                // open invitations per inviter
	inviteMaxAccepts     = 4                // acceptor runs, lingering ones included
	inviteMaxCandidates  = 4                // addresses an acceptor sends msg1 to: each one a guess (SPEC 7.9)
	inviteRetry          = time.Second      // retransmission tick
	inviteSessionTimeout = 30 * time.Second // the inviter waits this long for msg3
	inviteAcceptTimeout  = 30 * time.Second // the acceptor waits this long for msg2
	inviteLinger         = 30 * time.Second // a finished run still answers repeats
	inviteLookupTicks    = 5                // get_peers again every 5 ticks
	inviteAnnounceTicks  = 5                // announce again every 5 ticks until stored
	invitePunchTicks     = 10               // the inviter looks for acceptors every 10 ticks
	inviteMaxPunched     = 16               // acceptor addresses an invitation punches towards
)

// Errors the caller can branch on; each says what a person should do.
var (
	errInviteBusy      = errors.New("invite: too many invitations in progress")
	errInviteWrongCode = errors.New("invite: wrong code: the other side has a different code (check it and try again)")
	errInviteNoAnswer  = errors.New("invite: nobody answered at this code's nameplate (is the inviter online and the code fresh?)")
	errInviteExpired   = errors.New("invite: the code expired; make a new invitation")
	errInviteUsedUp    = errors.New("invite: the code was tried 3 times without success; make a new invitation")
)

// inviteConfig is what an inviter needs from the Node and the DHT.
type inviteConfig struct {
	Self     publicKey
	Send     func(to netip.AddrPort, b []byte) error
	Announce func(ctx context.Context, ih nodeID) (int, error)
	GetPeers func(ctx context.Context, ih nodeID) ([]netip.AddrPort, error)
	Now      func() time.Time
	Rand     io.Reader
	Log      *slog.Logger
	Tick     time.Duration // retransmission tick; 0 means inviteRetry (tests shorten it)
}

// inviteResult is what an invitation ends with: the acceptor's key or why not.
type inviteResult struct {
	Key publicKey
	Err error
}

// inviter runs both roles of the invitation protocol for one Node. It is
// safe for concurrent use; handlePacket never blocks on the network.
type inviter struct {
	cfg inviteConfig

	// dropped counts packets dropped because they did not parse or did
	// not authenticate (SPEC.md 7.4, 7.5); the drop itself is silent.
	dropped atomic.Uint64

	mu       sync.Mutex
	invites  map[uint16]*invitation                // inviter role, by nameplate
	sessions map[[inviteSIDLen]byte]*inviteSession // inviter role, by sid
	accepts  map[[inviteSIDLen]byte]*acceptRun     // acceptor role, by sid
}

// invitation is one code the user handed out.
type invitation struct {
	nameplate uint16
	prs       []byte // the canonical code text: CPace's PRS
	expires   time.Time
	attempts  int // msg1s with a new sid, each one password guess
	failures  int // sessions that ended without success
	done      chan inviteResult
	over      bool
}

// inviteSession is the inviter's side of one PAKE run, after msg2.
type inviteSession struct {
	inv     *invitation
	peer    netip.AddrPort
	ya      [inviteYLen]byte // as received, to recognise a repeated msg1
	msg2    []byte
	keys    inviteKeys
	started time.Time
}

// acceptRun is the acceptor's side: one sid and one ya for every inviter
// found at the nameplate.
type acceptRun struct {
	sid       [inviteSIDLen]byte
	nameplate uint16
	prs       []byte
	y         [cpaceFieldBytes]byte // the scalar ya
	ya        [inviteYLen]byte      // the share Ya
	msg1      []byte
	cands     map[netip.AddrPort]bool // address -> failed
	result    chan inviteResult
	msg3      []byte
	msg3To    netip.AddrPort
	over      bool
	lingerTo  time.Time
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
	return &inviter{
		cfg:      cfg,
		invites:  map[uint16]*invitation{},
		sessions: map[[inviteSIDLen]byte]*inviteSession{},
		accepts:  map[[inviteSIDLen]byte]*acceptRun{},
	}
}

func (v *inviter) send(to netip.AddrPort, b []byte) {
	if err := v.cfg.Send(to, b); err != nil {
		v.cfg.Log.Debug("invite: send", "to", to, "err", err)
	}
}

// handlePacket takes one datagram whose first byte is packetInvite.
// Anything that does not parse or authenticate is dropped silently.
func (v *inviter) handlePacket(from netip.AddrPort, b []byte) {
	m, err := parseInvite(b)
	if err != nil {
		v.dropped.Add(1)
		v.cfg.Log.Debug("invite: drop", "from", from, "err", err)
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch m.Sub {
	case inviteSubMsg1:
		v.onMsg1(from, &m)
	case inviteSubMsg2:
		v.onMsg2(from, &m)
	case inviteSubMsg3:
		v.onMsg3(from, &m)
	case inviteSubAbort:
		v.onAbort(from, &m)
	case inviteSubPunch:
		// Its only job was to open the sender's NAT towards us.
	}
}

// ---------------------------------------------------------------------------
// Inviter role (SPEC.md 7.5, 7.6).

// invite starts an invitation and returns the code at once; the peer's
// key (or the reason there is none) arrives on done, once.
func (v *inviter) invite(ctx context.Context) (code string, done <-chan inviteResult, err error) {
	for range 16 { // a nameplate this inviter already uses is drawn again
		np, pw, err := newInviteCode(v.cfg.Rand)
		if err != nil {
			return "", nil, err
		}
		code, done, err = v.inviteWith(ctx, np, pw)
		if err == nil || errors.Is(err, errInviteBusy) {
			return code, done, err
		}
	}
	return "", nil, errors.New("invite: no free nameplate")
}

var errInviteNameplateTaken = errors.New("invite: nameplate in use")

// inviteWith starts an invitation with a given code (tests use it to put
// two invitations on one nameplate).
func (v *inviter) inviteWith(ctx context.Context, np uint16, password string) (string, <-chan inviteResult, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.invites) >= inviteMaxActive {
		return "", nil, errInviteBusy
	}
	if v.invites[np] != nil {
		return "", nil, errInviteNameplateTaken
	}
	code := formatInviteCode(np, password)
	inv := &invitation{nameplate: np, prs: []byte(code), expires: v.cfg.Now().Add(inviteLifetime), done: make(chan inviteResult, 1)}
	v.invites[np] = inv
	go v.runInvite(ctx, inv)
	return code, inv.done, nil
}

// runInvite announces the nameplate and drives the invitation's timers
// until it is over.
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
			v.finish(inv, inviteResult{Err: fmt.Errorf("invite: %w", ctx.Err())})
			v.mu.Unlock()
			return
		case <-tick.C:
		}
		if v.tickInvite(inv) {
			return
		}
	}
}

// announceLoop announces until one DHT node has stored the announce.
func (v *inviter) announceLoop(ctx context.Context, ih nodeID) {
	for {
		n, err := v.cfg.Announce(ctx, ih)
		if err == nil && n > 0 {
			return
		}
		v.cfg.Log.Debug("invite: announce", "stored", n, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(inviteAnnounceTicks * v.cfg.Tick):
		}
	}
}

// punchLoop looks up the acceptors' infohash and sends each new address
// one punch: if we are behind a NAT, the acceptor's next msg1 gets in.
func (v *inviter) punchLoop(ctx context.Context, np uint16) {
	ih := inviteAcceptorInfohash(np)
	punched := map[netip.AddrPort]bool{}
	punch := (&inviteMsg{Sub: inviteSubPunch}).encode()
	for {
		peers, err := v.cfg.GetPeers(ctx, ih)
		if err != nil {
			v.cfg.Log.Debug("invite: get_peers acceptors", "err", err)
		}
		for _, a := range peers {
			if a.IsValid() && !punched[a] && len(punched) < inviteMaxPunched {
				punched[a] = true
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

// tickInvite expires the invitation and its sessions, and repeats msg2
// to sessions still waiting for msg3 (the acceptor may have lost it, or
// we may have lost msg3). It reports whether the invitation is over.
func (v *inviter) tickInvite(inv *invitation) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.cfg.Now()
	if !inv.over && !now.Before(inv.expires) {
		v.finish(inv, inviteResult{Err: errInviteExpired})
	}
	if inv.over {
		return true
	}
	for sid, s := range v.sessions {
		switch {
		case s.inv != inv:
		case now.Sub(s.started) >= inviteSessionTimeout:
			v.failSession(sid, s, "no msg3")
		default:
			v.send(s.peer, s.msg2)
		}
	}
	return inv.over
}

// onMsg1 answers a new PAKE run with msg2, or repeats msg2 for a known one.
func (v *inviter) onMsg1(from netip.AddrPort, m *inviteMsg) {
	if s := v.sessions[m.SID]; s != nil {
		if s.peer == from && s.ya == m.Y {
			v.send(from, s.msg2)
		}
		return
	}
	inv := v.invites[m.Nameplate]
	switch {
	case inv == nil || inv.over:
		return
	case inv.attempts >= inviteMaxAttempts:
		v.cfg.Log.Debug("invite: attempt cap", "nameplate", m.Nameplate, "from", from)
		return
	case len(v.sessions) >= inviteMaxSessions:
		v.cfg.Log.Debug("invite: session cap", "from", from)
		return
	}
	s, err := v.respond(inv, from, m)
	if err != nil { // a low-order Ya: nothing computed, no guess spent
		v.cfg.Log.Debug("invite: msg1", "from", from, "err", err)
		return
	}
	inv.attempts++
	v.sessions[m.SID] = s
	v.send(from, s.msg2)
}

// respond is CPace's party B: Yb = yb*g, K = yb*Ya, ISK, then msg2.
func (v *inviter) respond(inv *invitation, from netip.AddrPort, m *inviteMsg) (*inviteSession, error) {
	var yb [cpaceFieldBytes]byte
	defer wipe(yb[:])
	if _, err := io.ReadFull(v.cfg.Rand, yb[:]); err != nil {
		return nil, fmt.Errorf("invite: random scalar: %w", err)
	}
	g := cpaceCalculateGenerator(inv.prs, []byte(inviteCI), m.SID[:])
	Yb, err := cpaceScalarMultVfy(yb, g)
	if err != nil {
		return nil, err
	}
	k, err := cpaceScalarMultVfy(yb, m.Y)
	if err != nil {
		return nil, err
	}
	isk := cpaceISK(m.SID[:], k[:], m.Y[:], inviteADa, Yb[:], inviteADb)
	wipe(k[:])
	keys := deriveInviteKeys(m.SID[:], isk, m.Y[:], Yb[:])
	wipe(isk[:])
	r := inviteMsg{Sub: inviteSubMsg2, SID: m.SID, Y: Yb, Tag: keys.tagB}
	r.Sealed = sealKey(keys.sealInviter, r.sealedAD(), v.cfg.Self)
	return &inviteSession{inv: inv, peer: from, ya: m.Y, msg2: r.encode(), keys: keys, started: v.cfg.Now()}, nil
}

// onMsg3 ends the invitation with the acceptor's key. A msg3 that does
// not authenticate is dropped, not counted: a repeat may still come.
func (v *inviter) onMsg3(from netip.AddrPort, m *inviteMsg) {
	s := v.sessions[m.SID]
	if s == nil || s.peer != from {
		return
	}
	if !hmac.Equal(s.keys.tagA[:], m.Tag[:]) {
		v.dropped.Add(1)
		v.cfg.Log.Debug("invite: msg3 tag", "from", from)
		return
	}
	pk, err := openKey(s.keys.sealAcc, m.sealedAD(), m.Sealed)
	if err != nil {
		v.dropped.Add(1)
		v.cfg.Log.Debug("invite: msg3", "from", from, "err", err)
		return
	}
	v.finish(s.inv, inviteResult{Key: pk})
}

// onAbort ends a session whose acceptor found our msg2 wrong.
func (v *inviter) onAbort(from netip.AddrPort, m *inviteMsg) {
	if s := v.sessions[m.SID]; s != nil && s.peer == from {
		v.failSession(m.SID, s, "aborted by the acceptor")
	}
}

// failSession ends one PAKE run; the third failure kills the code.
func (v *inviter) failSession(sid [inviteSIDLen]byte, s *inviteSession, why string) {
	v.cfg.Log.Debug("invite: session failed", "peer", s.peer, "why", why)
	delete(v.sessions, sid)
	s.keys.wipe()
	s.inv.failures++
	if s.inv.failures >= inviteMaxAttempts {
		v.finish(s.inv, inviteResult{Err: errInviteUsedUp})
	}
}

// finish ends an invitation once: its sessions go, the result is sent.
func (v *inviter) finish(inv *invitation, res inviteResult) {
	if inv.over {
		return
	}
	inv.over = true
	wipe(inv.prs)
	delete(v.invites, inv.nameplate)
	for sid, s := range v.sessions {
		if s.inv == inv {
			delete(v.sessions, sid)
			s.keys.wipe()
		}
	}
	inv.done <- res
	close(inv.done)
}

// ---------------------------------------------------------------------------
// Acceptor role (SPEC.md 7.5, 7.6).

// accept runs the acceptor side with a code the user typed; it blocks
// until success, failure or the end of ctx.
func (v *inviter) accept(ctx context.Context, code string) (publicKey, error) {
	np, pw, err := parseInviteCode(code)
	if err != nil {
		return publicKey{}, err
	}
	r, err := v.newAcceptRun(np, pw)
	if err != nil {
		return publicKey{}, err
	}
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { v.lookupLoop(lctx, r) })
	defer wg.Wait()
	defer cancel()
	res := v.waitAccept(ctx, r)
	v.endRun(r)
	return res.Key, res.Err
}

// waitAccept repeats msg1 every tick until a result, the timeout or ctx.
func (v *inviter) waitAccept(ctx context.Context, r *acceptRun) inviteResult {
	deadline := v.cfg.Now().Add(inviteAcceptTimeout)
	tick := time.NewTicker(v.cfg.Tick)
	defer tick.Stop()
	for {
		select {
		case res := <-r.result:
			return res
		case <-ctx.Done():
			return inviteResult{Err: fmt.Errorf("invite: %w", ctx.Err())}
		case <-tick.C:
		}
		v.mu.Lock()
		for a, failed := range r.cands {
			if !failed {
				v.send(a, r.msg1)
			}
		}
		v.mu.Unlock()
		if !v.cfg.Now().Before(deadline) {
			return inviteResult{Err: errInviteNoAnswer}
		}
	}
}

// newAcceptRun draws sid and ya, computes Ya and registers the run.
func (v *inviter) newAcceptRun(np uint16, password string) (*acceptRun, error) {
	r := &acceptRun{nameplate: np, prs: []byte(formatInviteCode(np, password)),
		cands: map[netip.AddrPort]bool{}, result: make(chan inviteResult, 1)}
	if _, err := io.ReadFull(v.cfg.Rand, r.sid[:]); err != nil {
		return nil, fmt.Errorf("invite: random sid: %w", err)
	}
	if _, err := io.ReadFull(v.cfg.Rand, r.y[:]); err != nil {
		return nil, fmt.Errorf("invite: random scalar: %w", err)
	}
	g := cpaceCalculateGenerator(r.prs, []byte(inviteCI), r.sid[:])
	ya, err := cpaceScalarMultVfy(r.y, g)
	if err != nil {
		return nil, err
	}
	r.ya = ya
	m := inviteMsg{Sub: inviteSubMsg1, SID: r.sid, Nameplate: np, Y: ya}
	r.msg1 = m.encode()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pruneAccepts()
	if len(v.accepts) >= inviteMaxAccepts {
		return nil, errInviteBusy
	}
	v.accepts[r.sid] = r
	return r, nil
}

// pruneAccepts drops finished runs whose linger time is over and, if the
// table is still full, the finished run that would linger least: lingering
// only answers repeats, and a new run the user started matters more.
func (v *inviter) pruneAccepts() {
	now := v.cfg.Now()
	var oldest *acceptRun
	for sid, r := range v.accepts {
		switch {
		case !r.over:
		case !now.Before(r.lingerTo):
			delete(v.accepts, sid)
		case oldest == nil || r.lingerTo.Before(oldest.lingerTo):
			oldest = r
		}
	}
	if len(v.accepts) >= inviteMaxAccepts && oldest != nil {
		delete(v.accepts, oldest.sid)
	}
}

// lookupLoop asks the DHT for the nameplate's inviters now and every few
// ticks, and sends msg1 to each new one. After the first lookup it
// announces itself once at the acceptors' infohash, for the inviter's
// punch.
func (v *inviter) lookupLoop(ctx context.Context, r *acceptRun) {
	ih := inviteInfohash(r.nameplate)
	for i := 0; ; i++ {
		peers, err := v.cfg.GetPeers(ctx, ih)
		if err != nil {
			v.cfg.Log.Debug("invite: get_peers", "err", err)
		}
		v.addCandidates(r, peers)
		if i == 0 {
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

func (v *inviter) addCandidates(r *acceptRun, peers []netip.AddrPort) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, a := range peers {
		if _, known := r.cands[a]; known || !a.IsValid() || r.over || len(r.cands) >= inviteMaxCandidates {
			continue
		}
		r.cands[a] = false
		v.send(a, r.msg1)
	}
}

// endRun keeps a finished run for inviteLinger, so that a repeated msg2
// still gets msg3 (or the abort) and nothing else; the scalar and the
// code go.
func (v *inviter) endRun(r *acceptRun) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r.over = true
	r.lingerTo = v.cfg.Now().Add(inviteLinger)
	wipe(r.y[:])
	wipe(r.prs)
}

// onMsg2 is CPace's party A receiving Yb: check the inviter's tag, open
// its key, answer msg3. A wrong tag gets an abort; when every inviter
// found at the nameplate has answered wrongly, the code is wrong.
func (v *inviter) onMsg2(from netip.AddrPort, m *inviteMsg) {
	r := v.accepts[m.SID]
	if r == nil {
		return
	}
	failed, known := r.cands[from]
	switch {
	case r.msg3 != nil:
		if from == r.msg3To {
			v.send(from, r.msg3) // the inviter lost our msg3
		}
		return
	case !known:
		return
	case failed:
		v.send(from, abortMsg(r.sid))
		return
	case r.over:
		return
	}
	pk, msg3, err := r.answer(m, v.cfg.Self)
	if err != nil {
		v.cfg.Log.Debug("invite: msg2", "from", from, "err", err)
		r.cands[from] = true
		v.send(from, abortMsg(r.sid))
		if r.allFailed() {
			r.result <- inviteResult{Err: errInviteWrongCode}
			r.over = true
		}
		return
	}
	r.msg3, r.msg3To = msg3, from
	v.send(from, msg3)
	r.result <- inviteResult{Key: pk}
	r.over = true
}

func (r *acceptRun) allFailed() bool {
	for _, failed := range r.cands {
		if !failed {
			return false
		}
	}
	return true
}

func abortMsg(sid [inviteSIDLen]byte) []byte {
	m := inviteMsg{Sub: inviteSubAbort, SID: sid}
	return m.encode()
}

// answer computes K = ya*Yb and ISK, checks the tag and opens the key.
func (r *acceptRun) answer(m *inviteMsg, self publicKey) (publicKey, []byte, error) {
	k, err := cpaceScalarMultVfy(r.y, m.Y)
	if err != nil {
		return publicKey{}, nil, err
	}
	isk := cpaceISK(r.sid[:], k[:], r.ya[:], inviteADa, m.Y[:], inviteADb)
	wipe(k[:])
	keys := deriveInviteKeys(r.sid[:], isk, r.ya[:], m.Y[:])
	wipe(isk[:])
	defer keys.wipe()
	if !hmac.Equal(keys.tagB[:], m.Tag[:]) {
		return publicKey{}, nil, fmt.Errorf("%w: msg2 tag", errInviteAuth)
	}
	pk, err := openKey(keys.sealInviter, m.sealedAD(), m.Sealed)
	if err != nil {
		return publicKey{}, nil, err
	}
	out := inviteMsg{Sub: inviteSubMsg3, SID: r.sid, Tag: keys.tagA}
	out.Sealed = sealKey(keys.sealAcc, out.sealedAD(), self)
	return pk, out.encode(), nil
}
