// Post-quantum secrets (SPEC.md 4.12): an ML-KEM-768 exchange inside every
// session, whose result is the PSK of the next handshakes with the contact.
//
// Flow: when a session we initiated becomes current, start makes a fresh
// ML-KEM key and sends its encapsulation key in two key fragments (tick
// resends them every pqRetry until pqWait). The responder (onKeyFragment)
// encapsulates, derives the PSK from the shared key and the session's
// handshake hash, has it written to disk (pqfile.go) and only then answers
// with the ciphertext; the initiator (onCiphertext) decapsulates, writes
// the same PSK, and rekeys at once if the session was classical. pqSecrets
// holds one contact's PSKs: which one a response mixes, which ones an
// initiator tries, and what a handshake that used one lets go.
package main

import (
	"bytes"
	"crypto/mlkem"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2s"
)

// Wire format and limits (SPEC.md 4.12). Both frames are session payloads
// (sessionControl first, 4.6), so a version-1 peer drops them unread.
const (
	pqKeyFragment    = 0x01                          // 00 || 01 || index || one half of the encapsulation key
	pqCiphertext     = 0x02                          // 00 || 02 || the ciphertext
	pqEncapKeyLen    = mlkem.EncapsulationKeySize768 // 1184
	pqCiphertextLen  = mlkem.CiphertextSize768       // 1088
	pqSeedLen        = mlkem.SeedSize                // 64: the decapsulation key's seed
	pqFragments      = 2                             // 1184 bytes do not fit one 1168-byte payload
	pqFragmentLen    = pqEncapKeyLen / pqFragments   // 592
	pqKeyFrameLen    = 3 + pqFragmentLen             // 595: a 627-byte datagram
	pqCipherFrameLen = 2 + pqCiphertextLen           // 1090: a 1122-byte datagram

	// pqKept: a contact's PSKs are at most the latest exchange's and the
	// one its session used, which the contact holds even if it never got
	// the ciphertext.
	pqKept  = 2
	pqRetry = time.Second     // the key is sent again this often until the ciphertext comes
	pqWait  = 5 * time.Second // then the exchange is given up for this session
	// pqIdleEvery: a session that follows only idle ones (no payload of
	// the layer above either way since the last exchange) runs the
	// exchange only if the last one is this old (SPEC.md 4.12, "When").
	pqIdleEvery = 30 * time.Minute
	labelPQ     = "kadchat pq v1"
)

// Both frames fit a transport payload.
const _ = uint(maxTransportPayload - max(pqKeyFrameLen, pqCipherFrameLen))

var errPQFrame = errors.New("session: malformed post-quantum frame")

// pqFrame is a parsed key fragment or ciphertext frame.
type pqFrame struct {
	kind  byte   // pqKeyFragment or pqCiphertext
	index byte   // key fragment: which half, 0 or 1
	body  []byte // the half of the key, or the ciphertext; aliases the input
}

// parsePQFrame accepts exactly the two frames of SPEC.md 4.12, each of its
// exact size; anything else after the session-control byte is an error.
func parsePQFrame(b []byte) (pqFrame, error) {
	if len(b) < 2 || b[0] != sessionControl {
		return pqFrame{}, errPQFrame
	}
	switch b[1] {
	case pqKeyFragment:
		if len(b) != pqKeyFrameLen || b[2] >= pqFragments {
			return pqFrame{}, fmt.Errorf("%w: key fragment of %d bytes", errPQFrame, len(b))
		}
		return pqFrame{kind: pqKeyFragment, index: b[2], body: b[3:]}, nil
	case pqCiphertext:
		if len(b) != pqCipherFrameLen {
			return pqFrame{}, fmt.Errorf("%w: ciphertext of %d bytes", errPQFrame, len(b))
		}
		return pqFrame{kind: pqCiphertext, body: b[2:]}, nil
	}
	return pqFrame{}, fmt.Errorf("%w: type %02x", errPQFrame, b[1])
}

func (f *pqFrame) appendTo(dst []byte) []byte {
	dst = append(dst, sessionControl, f.kind)
	if f.kind == pqKeyFragment {
		dst = append(dst, f.index)
	}
	return append(dst, f.body...)
}

// pqDerive is the PSK an exchange yields: HMAC keyed with the session's
// handshake hash (which covers both static keys and this handshake), over
// the label, the hashes of the key and ciphertext exchanged, and the ML-KEM
// shared key.
func pqDerive(h [noiseHashLen]byte, ek, ct, shared []byte) [noiseKeyLen]byte {
	ekHash, ctHash := blake2s.Sum256(ek), blake2s.Sum256(ct)
	return hmacHash(h[:], []byte(labelPQ), ekHash[:], ctHash[:], shared)
}

// pqSecrets are the PSKs a contact and we share, newest first. The zero
// value (no exchange has succeeded) lets handshakes use the zero PSK; once a
// handshake has used a post-quantum PSK, never again. Not safe for
// concurrent use: the manager's mu guards it.
type pqSecrets struct {
	psks    [pqKept][noiseKeyLen]byte
	n       int
	used    bool // a handshake used one: the zero PSK is refused from now on
	missed  int  // responder: our responses not confirmed since the last one that was
	retried bool // initiator: a response opened with none of them since the last handshake
}

// candidates are the PSKs a handshake with the contact may use, newest
// first: ours, then the zero PSK while none has been used. The caller wipes
// the copies.
func (s *pqSecrets) candidates() [][noiseKeyLen]byte {
	out := append(make([][noiseKeyLen]byte, 0, pqKept+1), s.psks[:s.n]...)
	if !s.used {
		out = append(out, zeroPSK)
	}
	return out
}

// forResponse is the PSK a response mixes: the newest, unless our last
// response was never confirmed (the initiator may lack the newest: a
// ciphertext was lost), and then each older one in turn, so that two
// contacts always meet on a PSK both hold.
func (s *pqSecrets) forResponse(unconfirmed bool) [noiseKeyLen]byte {
	if unconfirmed {
		s.missed++
	}
	c := s.candidates()
	if len(c) == 0 {
		return zeroPSK // cannot happen: used is set only with a PSK held
	}
	psk := c[s.missed%len(c)]
	wipeKeys(c)
	return psk
}

// commit records that a handshake used psk: both sides hold it, so the
// older ones can go, and if it is post-quantum the zero PSK is over. If psk
// is no longer among ours (an exchange on the previous session replaced
// it while this one waited for its confirmation), it is all we keep.
func (s *pqSecrets) commit(psk [noiseKeyLen]byte) {
	s.missed, s.retried = 0, false
	if psk == zeroPSK {
		return
	}
	s.used = true
	for i := range s.n {
		if s.psks[i] == psk {
			wipeKeys(s.psks[i+1 : s.n])
			s.n = i + 1
			return
		}
	}
	wipeKeys(s.psks[:s.n])
	s.psks[0], s.n = psk, 1
}

// add records an exchange's result, made on a session keyed with
// sessionPSK: the new PSK, then that one (the contact holds it even if it
// never got our ciphertext); anything else goes.
func (s *pqSecrets) add(psk, sessionPSK [noiseKeyLen]byte) {
	wipeKeys(s.psks[:s.n])
	s.psks[0], s.n = psk, 1
	if sessionPSK != zeroPSK && sessionPSK != psk {
		s.psks[1], s.n = sessionPSK, 2
	}
}

func (s *pqSecrets) wipe() { wipeKeys(s.psks[:]); *s = pqSecrets{} }

func wipeKeys(ks [][noiseKeyLen]byte) {
	for i := range ks {
		wipe(ks[i][:])
	}
}

// pqExchange is the exchange running on one session, kp: frames on any
// other session are dropped, and a new current session starts afresh.
type pqExchange struct {
	kp       *keypair
	dk       *mlkem.DecapsulationKey768 // initiator: until the ciphertext comes
	ek       [pqEncapKeyLen]byte        // the key as sent (initiator) or received (responder)
	have     [pqFragments]bool          // responder: halves received since the last answer
	ct       []byte                     // responder: its answer, sent again to a repeated key
	lastSent time.Time                  // initiator
}

// keyFrames are the two key fragments of x.ek.
func (x *pqExchange) keyFrames() [][]byte {
	out := make([][]byte, pqFragments)
	for i := range out {
		f := pqFrame{kind: pqKeyFragment, index: byte(i), body: x.ek[i*pqFragmentLen : (i+1)*pqFragmentLen]}
		out[i] = f.appendTo(make([]byte, 0, pqKeyFrameLen))
	}
	return out
}

// peerPQ is what the manager holds about one contact's post-quantum state.
type peerPQ struct {
	secrets pqSecrets
	ex      pqExchange
	// classical: the contact's client answered no exchange within pqWait
	// and none ever succeeded, so its classical sessions may carry chat
	// (a version-1 client). Not kept across restarts.
	classical bool
	refused   bool // the refusal was reported (once per run)
	// last is when our latest exchange with the contact ended (zero: none
	// since we started), carried whether a payload of the layer above went
	// either way (or was queued) since.
	last    time.Time
	carried bool
}

// exchangeDue reports whether the initiator runs the exchange on kp, a
// session that has just become current: on a classical one, when a
// payload of the layer above went either way or was queued since the last
// exchange, and
// when that exchange is pqIdleEvery old or was before our start. An idle session carries nothing the PSK
// protects, so its PSK may key the next one too (SPEC.md 4.12, "When").
func (p *peer) exchangeDue(kp *keypair, now time.Time) bool {
	x := &p.pq
	return !kp.pqKeyed() || x.carried || x.last.IsZero() || now.Sub(x.last) >= pqIdleEvery
}

// dropExchange forgets the exchange unless it runs on the current session;
// crypto/mlkem's copy of the decapsulation key is dropped, not wiped
// (SPEC.md 4.9).
func (p *peer) dropExchange() {
	if p.pq.ex.kp != p.keypairs.current || p.keypairs.current == nil {
		p.pq.ex = pqExchange{}
	}
}

// mayCarryChat reports whether payloads of the layer above may go on kp: a
// session keyed with a post-quantum PSK, or a classical one with a contact
// whose client does no exchange.
func (p *peer) mayCarryChat(kp *keypair) bool {
	return kp != nil && (kp.pqKeyed() || (p.pq.secrets.n == 0 && p.pq.classical))
}

// pqEvent is something about a contact's post-quantum state that its user
// should know.
type pqEvent uint8

const (
	pqClassical pqEvent = iota + 1 // its client did no exchange: the session is classical
	pqRefused                      // it answered with the zero PSK though we share a post-quantum one
)

func (e pqEvent) String() string {
	switch e {
	case pqClassical:
		return "classical"
	case pqRefused:
		return "refused"
	}
	return fmt.Sprintf("pqEvent(%d)", uint8(e))
}

// pqStats count the exchanges and what was refused.
type pqStats struct {
	exchanges atomic.Uint64 // completed on our side
	refused   atomic.Uint64 // responses with the zero PSK from a contact past it
	bad       atomic.Uint64 // frames malformed or out of place, keys ML-KEM rejects
}

// pqLayer runs the exchanges of a session manager. mu orders the steps that
// write the file: derive, write, then install and answer, one at a time.
// It is taken before, never inside, the manager's mu.
type pqLayer struct {
	m     *sessionManager
	store *pqStore // nil: PSKs live in memory only (tests)
	stats pqStats
	mu    sync.Mutex
	// unclaimed holds what the file held for keys that are not (yet)
	// contacts: addContact claims a record, saves keep the rest. Under m.mu.
	unclaimed map[publicKey]pqRecord
}

// claimLocked gives p the PSKs the file held for it, if any.
func (l *pqLayer) claimLocked(p *peer) {
	r, ok := l.unclaimed[p.key]
	if !ok {
		return
	}
	delete(l.unclaimed, p.key)
	p.pq.secrets.n = copy(p.pq.secrets.psks[:], r.psks)
	p.pq.secrets.used = r.used
	wipeKeys(r.psks)
}

// startLocked begins the exchange on kp, a session we initiated that has
// just become current, and returns the frames to send on it.
func (l *pqLayer) startLocked(p *peer, kp *keypair, now time.Time) [][]byte {
	var seed [pqSeedLen]byte
	defer wipe(seed[:])
	if _, err := io.ReadFull(l.m.cfg.Rand, seed[:]); err != nil {
		l.m.debug("pq: key", p.addrs.endpoint, err)
		return nil
	}
	dk, err := mlkem.NewDecapsulationKey768(seed[:])
	if err != nil {
		return nil
	}
	p.pq.ex = pqExchange{kp: kp, dk: dk, lastSent: now}
	copy(p.pq.ex.ek[:], dk.EncapsulationKey().Bytes())
	return p.pq.ex.keyFrames()
}

// handle takes an authenticated frame from p on kp.
func (l *pqLayer) handle(p *peer, kp *keypair, pt []byte, now time.Time) {
	f, err := parsePQFrame(pt)
	if err != nil {
		l.stats.bad.Add(1)
		l.m.debug("pq", p.addrs.endpoint, err)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if f.kind == pqKeyFragment {
		l.onKeyFragment(p, kp, f)
	} else {
		l.onCiphertext(p, kp, f, now)
	}
}

// onKeyFragment is the responder's side: once both halves of the key are
// in, encapsulate, write the PSK, then answer.
func (l *pqLayer) onKeyFragment(p *peer, kp *keypair, f pqFrame) {
	m := l.m
	m.mu.Lock()
	ek, again, ok := p.takeKeyFragment(kp, f)
	hash, to := kp.hash, p.addrs.endpoint
	m.mu.Unlock()
	if !ok {
		l.stats.bad.Add(1)
		return
	}
	if again != nil {
		l.sent(p)
		m.sendTransport(kp, to, again)
		return
	}
	if ek == nil {
		return // the other half is still to come
	}
	key, err := mlkem.NewEncapsulationKey768(ek)
	if err != nil {
		l.stats.bad.Add(1)
		return
	}
	// crypto/mlkem draws the encapsulation's randomness from crypto/rand
	// itself; the SPEC.md vector fixes it through crypto/mlkem/mlkemtest.
	shared, ct := key.Encapsulate()
	psk := pqDerive(hash, ek, ct, shared)
	wipe(shared)
	defer wipe(psk[:])
	frame := (&pqFrame{kind: pqCiphertext, body: ct}).appendTo(make([]byte, 0, pqCipherFrameLen))
	if l.install(p, kp, psk, func(x *pqExchange) { x.ct, x.have = frame, [pqFragments]bool{} }) {
		l.sent(p)
		m.sendTransport(kp, to, frame)
	}
}

// sent records a packet sent to p, which the Keepalive timer runs from.
func (l *pqLayer) sent(p *peer) {
	l.m.mu.Lock()
	p.timers.lastSend = l.m.cfg.Now()
	l.m.mu.Unlock()
}

// takeKeyFragment records one half of the initiator's key on kp. It
// returns the whole key once both halves are in and the exchange has not
// been answered, or the answer to send again when a key already answered
// comes again; ok is false for a fragment that has no place here.
func (p *peer) takeKeyFragment(kp *keypair, f pqFrame) (ek, again []byte, ok bool) {
	if kp != p.keypairs.current || kp.initiator {
		return nil, nil, false // only the session's initiator sends keys
	}
	x := &p.pq.ex
	if x.kp != kp {
		*x = pqExchange{kp: kp}
	}
	part := x.ek[int(f.index)*pqFragmentLen : int(f.index+1)*pqFragmentLen]
	if x.ct != nil && !bytes.Equal(part, f.body) {
		return nil, nil, false // one key per session
	}
	copy(part, f.body)
	x.have[f.index] = true
	if x.have != [pqFragments]bool{true, true} {
		return nil, nil, true
	}
	if x.ct != nil {
		x.have = [pqFragments]bool{}
		return nil, x.ct, true
	}
	return bytes.Clone(x.ek[:]), nil, true
}

// onCiphertext is the initiator's side: decapsulate, write the PSK, and if
// the session was classical rekey at once, so what waits goes out under it.
func (l *pqLayer) onCiphertext(p *peer, kp *keypair, f pqFrame, now time.Time) {
	m := l.m
	m.mu.Lock()
	x := &p.pq.ex
	if kp != p.keypairs.current || x.kp != kp || x.dk == nil {
		m.mu.Unlock()
		l.stats.bad.Add(1)
		return
	}
	dk, ek, hash := x.dk, bytes.Clone(x.ek[:]), kp.hash
	x.dk = nil // one ciphertext per exchange; the key is dropped
	m.mu.Unlock()
	shared, err := dk.Decapsulate(f.body)
	if err != nil {
		l.stats.bad.Add(1)
		return
	}
	psk := pqDerive(hash, ek, f.body, shared)
	wipe(shared)
	defer wipe(psk[:])
	if !l.install(p, kp, psk, nil) {
		return
	}
	m.mu.Lock()
	var init []byte
	var targets []netip.AddrPort
	if !kp.pqKeyed() && p.keypairs.current == kp {
		if init = m.maybeInitiateLocked(p, now); init != nil {
			targets = p.addrs.targets()
		}
	}
	m.mu.Unlock()
	m.sendRaw(init, targets...)
}

// install makes psk, from the exchange on kp, p's newest PSK: first on
// disk, then in memory, so that no handshake uses a PSK a crash could
// lose. It gives up, reporting false, if kp stopped being p's current
// session meanwhile. then, if not nil, updates the exchange as it installs.
func (l *pqLayer) install(p *peer, kp *keypair, psk [noiseKeyLen]byte, then func(*pqExchange)) bool {
	m := l.m
	m.mu.Lock()
	if m.peers[p.key] != p || p.keypairs.current != kp {
		m.mu.Unlock()
		return false
	}
	next := p.pq.secrets
	next.add(psk, kp.psk)
	recs := l.snapshotLocked(p, &next)
	next.wipe()
	m.mu.Unlock()
	err := l.save(recs)
	if err != nil {
		m.cfg.Log.Warn("session: post-quantum secret not saved; the exchange is dropped", "err", err)
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.peers[p.key] != p || p.keypairs.current != kp {
		return false
	}
	p.pq.secrets.add(psk, kp.psk)
	p.pq.last, p.pq.carried = m.cfg.Now(), len(p.queue.payloads) > 0 // what waits goes under this PSK
	if then != nil {
		then(&p.pq.ex)
	}
	l.stats.exchanges.Add(1)
	return true
}

// snapshotLocked lists every contact's PSKs for the file, with next in
// place of p's own if p is not nil.
func (l *pqLayer) snapshotLocked(p *peer, next *pqSecrets) []pqRecord {
	var recs []pqRecord
	for k, q := range l.m.peers {
		s := &q.pq.secrets
		if q == p {
			s = next
		}
		if s.n > 0 {
			recs = append(recs, pqRecord{key: k, used: s.used, psks: append([][noiseKeyLen]byte(nil), s.psks[:s.n]...)})
		}
	}
	for k, r := range l.unclaimed {
		recs = append(recs, pqRecord{key: k, used: r.used, psks: append([][noiseKeyLen]byte(nil), r.psks...)})
	}
	return recs
}

// save writes recs to the file, if there is one, and wipes them.
func (l *pqLayer) save(recs []pqRecord) error {
	defer func() {
		for _, r := range recs {
			wipeKeys(r.psks)
		}
	}()
	if l.store == nil {
		return nil
	}
	return l.store.save(recs)
}

// tickLocked resends the key of an exchange still waiting for its
// ciphertext, and reports a contact whose client did no exchange within
// pqWait on a classical session (then its sessions may carry chat).
func (l *pqLayer) tickLocked(p *peer, now time.Time) (frames [][]byte, classical bool) {
	kp := p.keypairs.current
	if kp == nil {
		return nil, false
	}
	x, age := &p.pq.ex, now.Sub(kp.created)
	if x.kp == kp && x.dk != nil && age < pqWait && now.Sub(x.lastSent) >= pqRetry {
		x.lastSent, p.timers.lastSend = now, now
		frames = x.keyFrames()
	}
	if !kp.pqKeyed() && p.pq.secrets.n == 0 && !p.pq.classical && age >= pqWait {
		p.pq.classical = true
		classical = true
	}
	return frames, classical
}

// forget erases p's PSKs, in memory and on disk: a removed contact.
func (l *pqLayer) forget(k publicKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.m
	m.mu.Lock()
	p := m.peers[k]
	r, had := l.unclaimed[k]
	delete(l.unclaimed, k)
	wipeKeys(r.psks)
	if p != nil {
		m.forgetLocked(p)
	}
	recs := l.snapshotLocked(nil, nil)
	m.mu.Unlock()
	if p == nil && !had {
		return
	}
	if err := l.save(recs); err != nil {
		m.cfg.Log.Warn("session: post-quantum secrets of a removed contact not erased from disk", "err", err)
	}
}
