package main

import "testing"

func TestReplayWindow(t *testing.T) {
	type step struct {
		n    uint64
		want bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first zero", []step{{0, true}, {0, false}}},
		{"in order", []step{{0, true}, {1, true}, {2, true}, {1, false}, {2, false}}},
		{"reordered", []step{{5, true}, {3, true}, {4, true}, {3, false}, {6, true}, {0, true}, {0, false}}},
		{"edge of window", []step{
			{replayWindowSize + 10, true}, {11, true}, {10, false}, {11, false}, {12, true},
		}},
		{"far jump clears", []step{{1, true}, {1 << 40, true}, {1, false}, {1<<40 - 1, true}, {1 << 40, false}}},
		{"block boundary", []step{{63, true}, {64, true}, {127, true}, {128, true}, {63, false}, {65, true}}},
		{"max counter", []step{{^uint64(0) - 1, true}, {^uint64(0) - 1, false}, {^uint64(0) - 2, true}}},
	}
	for _, tt := range tests {
		var w replayWindow
		for i, s := range tt.steps {
			if got := w.accept(s.n); got != s.want {
				t.Errorf("%s: step %d: accept(%d) = %v, want %v", tt.name, i, s.n, got, s.want)
			}
		}
	}
}

// TestReplayWindowExhaustive compares the ring with a plain set over a
// deterministic shuffled stream with duplicates and old packets.
func TestReplayWindowExhaustive(t *testing.T) {
	var w replayWindow
	seen := map[uint64]bool{}
	var top uint64
	x := uint64(12345)
	for i := range 200000 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		n := uint64(i) + x%20000 // jitter up to 20000 behind/ahead
		if n > uint64(i) {
			n -= x % 9000
		}
		want := !seen[n] && (n >= top || top-n <= replayWindowSize)
		if got := w.check(n); got != want {
			t.Fatalf("check(%d) at top %d = %v, want %v", n, top, got, want)
		}
		if got := w.accept(n); got != want {
			t.Fatalf("accept(%d) at top %d = %v, want %v", n, top, got, want)
		}
		if want {
			seen[n] = true
			top = max(top, n+1)
		}
	}
}

// The largest counter is refused by the window itself, not only by the
// transport's message limit: accepting it would wrap the window to zero.
func TestReplayWindowMaxCounter(t *testing.T) {
	var w replayWindow
	if !w.accept(5) {
		t.Fatal("accept(5) = false")
	}
	if w.accept(^uint64(0)) {
		t.Fatal("accept(2^64-1) = true")
	}
	if w.accept(5) {
		t.Fatal("replay of 5 accepted after the max counter")
	}
}
