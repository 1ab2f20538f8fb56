// Reads of watched locations: SPEC.md 3.4.3 ("Checks") and 5.8.3 step 3.
//
// Some targets are read again and again: a contact's endpoint record
// while we punch (several times a second), and, while the contact is
// away, its rendezvous infohash, its record and its drops (every few
// minutes). A lookup each time would ask the same k nodes again and
// again; a watcher asks one of them, in turn, and looks the target up
// only when that cannot do.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// watcher reads watched locations through d. Its state is d.recent.
type watcher struct{ d *dht }

// poll reads the mutable item of key k (no salt) the way a record watched
// several times a second is read (SPEC.md 5.8.3): from one node, the next
// in turn of those that sent it in a lookup within pollLookupEvery, so
// that each of them is asked about once every few polls, not at every
// one; while none did, of the nodes closest to it that answered a lookup
// within pollMissEvery; else by a lookup. found is false when the node
// asked has no item.
func (w watcher) poll(ctx context.Context, k [32]byte) (it bep44Item, found bool, err error) {
	d := w.d
	target := mutableTarget(k, nil)
	n, ok := d.recent.nextPoll(target, d.now())
	if !ok {
		it, err = d.get(ctx, target)
		if errors.Is(err, errNotFound) {
			return bep44Item{}, false, nil
		}
		return it, err == nil, err
	}
	q := krpcMsg{Method: methodGet, Args: krpcArgs{Target: target}}
	r := d.tx.query(ctx, n.Addr, &q, txOpts{expect: &n.ID})
	if r.Err != nil {
		return bep44Item{}, false, fmt.Errorf("dht: get %v from %v: %w", target, n.Addr, r.Err)
	}
	it, found = mutableItemFrom(&r.Msg.Reply, target, nil)
	return it, found, nil
}

// mutable reads the mutable item of key k and salt where it is looked for
// again and again while mostly absent (an offline contact's record and
// drops): a check (SPEC.md 3.4.3), else a lookup (getMutable). Our own
// store competes on seq, as in getMutable.
func (w watcher) mutable(ctx context.Context, k [32]byte, salt []byte) (it bep44Item, found bool, err error) {
	d := w.d
	target := mutableTarget(k, salt)
	r, ok := w.check(ctx, target, krpcMsg{Method: methodGet, Args: krpcArgs{Target: target}})
	if !ok {
		return d.getMutable(ctx, k, salt)
	}
	it, found = mutableItemFrom(r, target, salt)
	it, found = d.newerMutable(target, k, it, found)
	return it, found, nil
}

// peers is getPeers for an infohash looked at again and again (a
// contact's rendezvous after our announce): a check (SPEC.md 3.4.3), else
// a lookup. The peers in our own store come first, as in getPeers.
func (w watcher) peers(ctx context.Context, infohash nodeID) ([]netip.AddrPort, error) {
	d := w.d
	r, ok := w.check(ctx, infohash, krpcMsg{Method: methodGetPeers, Args: krpcArgs{InfoHash: infohash}})
	if !ok {
		return d.getPeers(ctx, infohash)
	}
	var found []netip.AddrPort
	if r.Values != nil {
		found, _ = parsePeers(r.Values) // ill-formed: ignored whole, as in a lookup
	}
	return addPeers(d.peers.peers(infohash, maxLookupPeers), found), nil
}

// check sends q to the next node in turn of the last lookup of target
// (recentLookups.nextCheck) and returns its reply. ok is false when a
// lookup is due instead: there was no such lookup, or the node did not
// answer within maxPatience (so that the lookup still has time).
func (w watcher) check(ctx context.Context, target nodeID, q krpcMsg) (*krpcReply, bool) {
	d := w.d
	n, ok := d.recent.nextCheck(target, d.now())
	if !ok {
		return nil, false
	}
	qctx, cancel := context.WithTimeout(ctx, maxPatience)
	defer cancel()
	r := d.tx.query(qctx, n.Addr, &q, txOpts{expect: &n.ID})
	if r.Err != nil {
		return nil, false
	}
	return &r.Msg.Reply, true
}
