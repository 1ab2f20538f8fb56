// Replay protection for transport packets (SPEC.md 4.6): an RFC 6479
// sliding window.
//
// Flow: a transport packet's counter is first checked (check, no state
// change), then the packet is authenticated, and only then is the counter
// recorded (accept). A forged packet thus cannot move the window.
package main

// replayWindow is the anti-replay window of RFC 6479: a ring of 64-bit
// blocks, so advancing the window clears whole blocks instead of shifting
// bits. It remembers the highest counter seen and which of the
// replayWindowSize counters below it have been seen; anything older is
// rejected. Like wireguard-go's replay package it is a small unit of its
// own; the zero value is ready to use (nothing seen yet) and it is not safe
// for concurrent use: the keypair that owns it holds a mutex.
type replayWindow struct {
	last   uint64 // highest counter accepted, plus one (0: none yet)
	blocks [replayBlocks]uint64
}

const (
	replayBlockBits = 64
	replayBlocks    = 128 // a power of two: ring index by mask
	// replayWindowSize is how far behind the highest counter a packet may
	// arrive and still be accepted: one block is kept as slack so the
	// block being cleared never holds live bits (RFC 6479 section 2).
	replayWindowSize = (replayBlocks - 1) * replayBlockBits // 8128
)

// check reports whether counter n could be accepted: not too old, not seen.
// It changes nothing.
func (w *replayWindow) check(n uint64) bool {
	if n == ^uint64(0) {
		return false // last = n+1 would wrap to 0 and reset the window
	}
	if n >= w.last {
		return true
	}
	if w.last-n > replayWindowSize {
		return false
	}
	block := (n / replayBlockBits) % replayBlocks
	return w.blocks[block]&(1<<(n%replayBlockBits)) == 0
}

// accept records counter n and reports whether it was new and in the
// window. Call it only after the packet has authenticated.
func (w *replayWindow) accept(n uint64) bool {
	if !w.check(n) {
		return false
	}
	if n >= w.last {
		w.advance(n)
	}
	block := (n / replayBlockBits) % replayBlocks
	w.blocks[block] |= 1 << (n % replayBlockBits)
	return true
}

// advance moves the window so n is its highest counter, clearing the blocks
// that fall between the old and the new top.
func (w *replayWindow) advance(n uint64) {
	oldTop := w.last / replayBlockBits // block of the old highest counter + 1 (or 0)
	if w.last > 0 {
		oldTop = (w.last - 1) / replayBlockBits
	}
	newTop := n / replayBlockBits
	if w.last == 0 {
		oldTop = newTop
		clear(w.blocks[:])
	}
	diff := newTop - oldTop
	if diff > replayBlocks {
		diff = replayBlocks
	}
	for i := uint64(1); i <= diff; i++ {
		w.blocks[(oldTop+i)%replayBlocks] = 0
	}
	w.last = n + 1
}
