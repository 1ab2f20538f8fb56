// One-time prekeys (SPEC.md 8.3): forward secrecy for drops.
//
// Flow: while a session is up, each side tells the other, in a status
// frame (chatFramePrekeyStatus) once a minute and when the session
// starts, which of the other's prekeys it holds. The owner of those
// prekeys notes which ones the holder no longer has (used in a drop, or
// lost), resends the ones it sent but the holder has not confirmed, and
// issues new ones up to prekeyTarget: the privates are saved to the drops
// file before the publics leave in a prekeys frame (chatFramePrekeys).
// A sender seals a drop to one prekey and forgets it (dropper.go); the
// recipient erases the private once the message is on disk, or
// prekeyKeep after the holder stopped listing it.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"slices"
	"time"
)

// Prekey frames and limits (SPEC.md 8.3, 8.7).
const (
	chatFramePrekeys      = 0x10
	chatFramePrekeyStatus = 0x11
	prekeyEntryLen        = 4 + 32 // id || X25519 public key
	prekeyStatusHead      = 1 + 4 + 1
	prekeyTarget          = 32                 // prekeys of ours a contact should hold
	prekeyMaxMine         = 4 * prekeyTarget   // privates we keep per contact
	prekeyMaxTheirs       = 2 * prekeyTarget   // a contact's prekeys we keep
	prekeyKeep            = 8 * 24 * time.Hour // a prekey the holder no longer lists is erased after this
	prekeySyncEvery       = 30 * time.Minute   // while a session lasts: no prekey is used meanwhile (issue 13 item 8)
	prekeySyncFast        = 5 * time.Second    // in a session's first prekeySyncFastFor, while we hold fewer than prekeyTarget
	prekeySyncFastFor     = time.Minute
)

var errPrekeyFrame = errors.New("chat: bad prekey frame")

// prekeyExchange runs the prekey frames of a dropper; its state is the
// dropper's (dropPeer.mine, theirs, run).
type prekeyExchange struct{ d *dropper }

// prekeyEntry is one prekey in a prekeys frame.
type prekeyEntry struct {
	ID  uint32
	Pub [32]byte
}

// parsePrekeys parses a prekeys frame: type || count 1..255 || count
// entries, ids not 0 and strictly increasing, nothing after. It has no
// side effects; Pub values are copies.
func parsePrekeys(b []byte) ([]prekeyEntry, error) {
	if len(b) < 2 || b[0] != chatFramePrekeys || b[1] == 0 || len(b) != 2+int(b[1])*prekeyEntryLen {
		return nil, errPrekeyFrame
	}
	es := make([]prekeyEntry, b[1])
	for i := range es {
		e := b[2+i*prekeyEntryLen:]
		es[i] = prekeyEntry{ID: binary.BigEndian.Uint32(e), Pub: [32]byte(e[4:prekeyEntryLen])}
		if es[i].ID == 0 || i > 0 && es[i].ID <= es[i-1].ID {
			return nil, errPrekeyFrame
		}
	}
	return es, nil
}

// appendPrekeys is the inverse of parsePrekeys; es must be sorted by id.
func appendPrekeys(dst []byte, es []prekeyEntry) []byte {
	dst = append(dst, chatFramePrekeys, byte(len(es)))
	for _, e := range es {
		dst = append(binary.BigEndian.AppendUint32(dst, e.ID), e.Pub[:]...)
	}
	return dst
}

// prekeyStatus says which of the receiver's prekeys the sender holds: Max,
// the highest id it ever got, and Held, the ids it still has, in order.
type prekeyStatus struct {
	Max  uint32
	Held []uint32
}

// parsePrekeyStatus parses a status frame: type || max 4 || count 0..64 ||
// count ids, each in 1..max and strictly increasing, nothing after.
func parsePrekeyStatus(b []byte) (prekeyStatus, error) {
	if len(b) < prekeyStatusHead || b[0] != chatFramePrekeyStatus || int(b[5]) > prekeyMaxTheirs ||
		len(b) != prekeyStatusHead+4*int(b[5]) {
		return prekeyStatus{}, errPrekeyFrame
	}
	s := prekeyStatus{Max: binary.BigEndian.Uint32(b[1:])}
	for i := range int(b[5]) {
		id := binary.BigEndian.Uint32(b[prekeyStatusHead+4*i:])
		if id == 0 || id > s.Max || len(s.Held) > 0 && id <= s.Held[len(s.Held)-1] {
			return prekeyStatus{}, errPrekeyFrame
		}
		s.Held = append(s.Held, id)
	}
	return s, nil
}

// appendPrekeyStatus is the inverse of parsePrekeyStatus.
func appendPrekeyStatus(dst []byte, s prekeyStatus) []byte {
	dst = binary.BigEndian.AppendUint32(append(dst, chatFramePrekeyStatus), s.Max)
	dst = append(dst, byte(len(s.Held)))
	for _, id := range s.Held {
		dst = binary.BigEndian.AppendUint32(dst, id)
	}
	return dst
}

// isPrekeyFrame reports whether a session payload is one of ours.
func isPrekeyFrame(b []byte) bool {
	return len(b) > 0 && (b[0] == chatFramePrekeys || b[0] == chatFramePrekeyStatus)
}

// handleFrame takes a prekey frame from a contact's session. The session
// layer calls it from its callbacks, so nothing here blocks or sends: a
// status only records what the contact needs, which the next tick sends.
func (d *dropper) handleFrame(k publicKey, b []byte) {
	c := d.c
	var es []prekeyEntry
	var st prekeyStatus
	var err error
	if b[0] == chatFramePrekeys {
		es, err = parsePrekeys(b)
	} else {
		st, err = parsePrekeyStatus(b)
	}
	if err != nil {
		c.cfg.Log.Debug("chat: drop frame", "peer", k.String(), "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.peers[k] == nil || c.closed {
		return
	}
	dp := d.peerLocked(k)
	if b[0] == chatFramePrekeys {
		d.pk.takePrekeysLocked(dp, es)
	} else {
		d.pk.onStatusLocked(dp, st, c.cfg.Now())
	}
}

// takePrekeysLocked keeps the contact's new prekeys: ids above the
// highest we ever had, and ids below it that we saw skipped (frames of one
// batch may arrive out of order). Any other id we hold already or used (a
// resend that crossed our status): using one twice would make the second
// drop unreadable, since the owner erases it once the first is read.
func (x prekeyExchange) takePrekeysLocked(dp *dropPeer, es []prekeyEntry) {
	d := x.d
	if dp.run.gaps == nil {
		dp.run.gaps = map[uint32]bool{}
	}
	for _, e := range es {
		switch {
		case e.ID > dp.theirMax:
			for id := dp.theirMax + 1; id < e.ID && len(dp.run.gaps) < prekeyMaxMine; id++ {
				dp.run.gaps[id] = true
			}
			dp.theirMax = e.ID
			d.gen++
		case dp.run.gaps[e.ID]:
			delete(dp.run.gaps, e.ID)
		default:
			continue
		}
		if len(dp.theirs) < prekeyMaxTheirs {
			dp.theirs[e.ID] = e.Pub
			d.gen++
		}
	}
}

// onStatusLocked applies a contact's status to our prekeys: those it
// still holds are kept (however old), those at or below its Max that it no
// longer holds are marked gone (erased prekeyKeep later, unless a drop
// with them is read first); and it records how many it lacks, for the
// next tick to send (issuePrekeys).
func (x prekeyExchange) onStatusLocked(dp *dropPeer, st prekeyStatus, now time.Time) {
	d := x.d
	for id, k := range dp.mine {
		_, held := slices.BinarySearch(st.Held, id)
		switch {
		case held && k.goneAt != 0:
			k.goneAt = 0
			d.gen++
		case !held && id <= st.Max && k.goneAt == 0:
			k.goneAt = now.Unix()
			d.gen++
		}
	}
	dp.run.want = max(0, prekeyTarget-len(st.Held))
	dp.run.wantAbove = max(dp.run.wantAbove, st.Max)
}

// statusDueLocked returns our status frame for a contact with a session:
// at once when the session starts, then every 5 s in its first minute
// while we lack prekeys (a lost frame is repaired quickly), then once a
// minute.
func (x prekeyExchange) statusDueLocked(p *chatPeer, dp *dropPeer, now time.Time) []byte {
	d := x.d
	if !p.online || now.Before(dp.run.statusAt) {
		return nil
	}
	every := prekeySyncEvery
	if len(dp.theirs) < prekeyTarget && now.Sub(dp.run.onlineSince) < prekeySyncFastFor {
		every = prekeySyncFast
	}
	dp.run.statusAt = now.Add(every)
	held := slices.Sorted(maps.Keys(dp.theirs))
	if room := (d.c.cfg.MaxPayload - prekeyStatusHead) / 4; len(held) > room {
		held = held[:room]
	}
	return appendPrekeyStatus(nil, prekeyStatus{Max: dp.theirMax, Held: held})
}

// prekeysDueLocked starts sending a contact the prekeys it lacks.
func (x prekeyExchange) prekeysDueLocked(jobs []dropJob, p *chatPeer, dp *dropPeer) []dropJob {
	if !p.online || dp.run.want == 0 || dp.run.issuing {
		return jobs
	}
	dp.run.issuing = true
	k := p.Key
	return append(jobs, func(context.Context) { x.issuePrekeys(k) })
}

// issuePrekeys resends the prekeys the contact has not confirmed, makes
// new ones for the rest of what it lacks, saves them, and only then sends
// the public halves: a crash in between must not leave the contact
// holding a prekey whose private half is lost.
func (x prekeyExchange) issuePrekeys(k publicKey) {
	d := x.d
	c := d.c
	c.mu.Lock()
	dp := d.peers[k]
	var es []prekeyEntry
	if dp != nil {
		es = x.pickPrekeysLocked(dp)
		dp.run.want = 0
	}
	c.mu.Unlock()
	err := d.save()
	c.mu.Lock()
	if dp != nil {
		dp.run.issuing = false
	}
	c.mu.Unlock()
	if len(es) == 0 || err != nil {
		return
	}
	per := max(1, min(255, (c.cfg.MaxPayload-2)/prekeyEntryLen))
	var frames [][]byte
	for chunk := range slices.Chunk(es, per) {
		frames = append(frames, appendPrekeys(nil, chunk))
	}
	c.out.sendNow(k, frames)
}

// pickPrekeysLocked chooses what to send: the prekeys above the contact's
// Max (sent, not yet confirmed), then new ones, want in all, and never
// more than prekeyMaxMine privates kept.
func (x prekeyExchange) pickPrekeysLocked(dp *dropPeer) []prekeyEntry {
	d := x.d
	var es []prekeyEntry
	for _, id := range slices.Sorted(maps.Keys(dp.mine)) {
		if id > dp.run.wantAbove && len(es) < dp.run.want {
			if pub, ok := prekeyPublic(dp.mine[id].priv); ok {
				es = append(es, prekeyEntry{id, pub})
			}
		}
	}
	for len(es) < dp.run.want && len(dp.mine) < prekeyMaxMine {
		e, err := x25519.GenerateKey(d.c.cfg.Rand)
		if err != nil {
			d.c.cfg.Log.Warn("drop: prekey", "err", err)
			break
		}
		id := dp.nextID
		dp.nextID++
		dp.mine[id] = &myPrekey{priv: [32]byte(e.Bytes())}
		es = append(es, prekeyEntry{id, [32]byte(e.PublicKey().Bytes())})
		d.gen++
	}
	return es
}

// prekeyPublic is the public half of a private prekey.
func prekeyPublic(priv [32]byte) ([32]byte, bool) {
	k, err := x25519.NewPrivateKey(priv[:])
	if err != nil {
		return [32]byte{}, false
	}
	return [32]byte(k.PublicKey().Bytes()), true
}

// expirePrekeysLocked erases the prekeys the contact stopped listing
// prekeyKeep ago: a drop sealed with one has been unfindable for a day
// (drops are renewed before they are dropDays old).
func (x prekeyExchange) expirePrekeysLocked(dp *dropPeer, now time.Time) {
	d := x.d
	for id, k := range dp.mine {
		if k.goneAt != 0 && now.Sub(time.Unix(k.goneAt, 0)) > prekeyKeep {
			clear(k.priv[:])
			delete(dp.mine, id)
			d.gen++
		}
	}
}

// prekeyDH is X25519 of our prekey id with eph, for openDropItem.
func (x prekeyExchange) prekeyDH(k publicKey, id uint32, eph [32]byte) ([32]byte, bool) {
	d := x.d
	d.c.mu.Lock()
	var priv [32]byte
	ok := false
	if dp := d.peers[k]; dp != nil {
		if m := dp.mine[id]; m != nil {
			priv, ok = m.priv, true
		}
	}
	d.c.mu.Unlock()
	if !ok {
		return [32]byte{}, false
	}
	defer clear(priv[:])
	return dropX25519(priv, eph)
}
