package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

func TestTransportReplayAndReorder(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil)
	establish(t, &n, a, b)
	var pkts []fakePacket
	for i := range 5 {
		a.m.send(b.id.public(), fmt.Appendf(nil, "m%d", i))
		pkts = append(pkts, n.take()...)
	}
	for _, i := range []int{3, 0, 4, 0, 1, 3, 2, 2, 4} {
		n.deliver(pkts[i])
	}
	want := []string{"m3", "m0", "m4", "m1", "m2"}
	if got := b.delivered(); !slices.Equal(got, want) {
		t.Errorf("delivered %q, want %q", got, want)
	}
	if got := b.m.stats.replayed.Load(); got != 4 {
		t.Errorf("replayed = %d, want 4", got)
	}
	// A forged packet with a fresh counter must not move the window.
	forged := bytes.Clone(pkts[0].b)
	binary.LittleEndian.PutUint64(forged[transportOffCounter:], 1000)
	n.deliver(fakePacket{pkts[0].from, pkts[0].to, forged})
	if b.m.stats.authFail.Load() != 1 {
		t.Errorf("forged packet: authFail = %d", b.m.stats.authFail.Load())
	}
	a.m.send(b.id.public(), []byte("m5"))
	n.pump(t)
	if got := b.delivered(); len(got) != 6 || got[5] != "m5" {
		t.Errorf("after forgery: %q", got)
	}
}

// ---------------------------------------------------------------------------
// Allocations and benchmarks.

func TestTransportZeroAllocs(t *testing.T) {
	var n fakeNet
	a, b := newTestPair(t, &n, newFakeClock(), nil)
	establish(t, &n, a, b)
	var last []byte
	a.m.cfg.Send = func(_ netip.AddrPort, p []byte) error { last = append(last[:0], p...); return nil }
	payload := make([]byte, 1000)
	if allocs := testing.AllocsPerRun(100, func() { a.m.send(b.id.public(), payload) }); allocs != 0 {
		t.Errorf("send: %v allocations per packet", allocs)
	}
	b.m.cfg.Deliver = func(publicKey, netip.AddrPort, []byte) {}
	pkt := slices.Clone(last)
	counter := uint64(1 << 20)
	allocs := testing.AllocsPerRun(100, func() {
		// A fresh counter each run, sealed outside the measured call.
		binary.LittleEndian.PutUint64(pkt[transportOffCounter:], counter)
		b.m.handlePacket(a.addr, pkt) // fails authentication: the counter changed
		counter++
	})
	if allocs != 0 {
		t.Errorf("handlePacket (rejected): %v allocations per packet", allocs)
	}
	kp := a.m.peers[b.id.public()].keypairs.current
	good := make([][]byte, 101)
	for i := range good {
		good[i], _ = kp.seal(nil, payload)
	}
	i := 0
	allocs = testing.AllocsPerRun(100, func() { b.m.handlePacket(a.addr, good[i]); i++ })
	if allocs != 0 {
		t.Errorf("handlePacket: %v allocations per packet", allocs)
	}
}

func TestWipeAEAD(t *testing.T) {
	key := seqBytes(5, 32)
	aead, _ := chacha20poly1305.New(key)
	if !wipeAEAD(aead) {
		t.Fatal("wipeAEAD: the AEAD layout is not the one we know; retired keys are not erased")
	}
	zero, _ := chacha20poly1305.New(make([]byte, 32))
	nonce := make([]byte, chacha20poly1305.NonceSize)
	if !bytes.Equal(aead.Seal(nil, nonce, []byte("x"), nil), zero.Seal(nil, nonce, []byte("x"), nil)) {
		t.Error("after wipeAEAD the key is not all zeros")
	}
}

func benchKeypair() *keypair {
	var k1, k2 [32]byte
	copy(k1[:], seqBytes(1, 32))
	copy(k2[:], seqBytes(1, 32)) // same key both ways: open what we seal
	return newKeypair(k1, k2, 1, 2, true, time.Now())
}

func BenchmarkSeal(b *testing.B) {
	for _, size := range []int{100, 1200 - transportOffData - noiseTagLen} {
		payload := make([]byte, size)
		b.Run(fmt.Sprintf("kadchat/%d", size), func(b *testing.B) {
			kp := benchKeypair()
			buf := make([]byte, maxDatagram)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				kp.seal(buf, payload)
			}
		})
		b.Run(fmt.Sprintf("raw/%d", size), func(b *testing.B) {
			aead, _ := chacha20poly1305.New(seqBytes(1, 32))
			buf := make([]byte, maxDatagram)
			nonce := make([]byte, chacha20poly1305.NonceSize)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			n := uint64(0)
			for b.Loop() {
				binary.LittleEndian.PutUint64(nonce[4:], n)
				n++
				aead.Seal(buf[:0], nonce, payload, nil)
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	for _, size := range []int{100, 1200 - transportOffData - noiseTagLen} {
		payload := make([]byte, size)
		b.Run(fmt.Sprintf("kadchat/%d", size), func(b *testing.B) {
			kp := benchKeypair()
			const batch = 4096
			pkts := make([][]byte, batch)
			for i := range pkts {
				pkts[i] = make([]byte, 0, maxDatagram)
			}
			out := make([]byte, maxDatagram)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for done := 0; done < b.N; done += batch {
				b.StopTimer() // fresh counters: the replay window rejects repeats
				for i := range pkts {
					pkts[i], _ = kp.seal(pkts[i], payload)
				}
				b.StartTimer()
				for i := 0; i < batch && done+i < b.N; i++ {
					m, err := parseTransport(pkts[i])
					if err != nil {
						b.Fatal(err)
					}
					if _, err := kp.open(out, &m); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(fmt.Sprintf("raw/%d", size), func(b *testing.B) {
			aead, _ := chacha20poly1305.New(seqBytes(1, 32))
			nonce := make([]byte, chacha20poly1305.NonceSize)
			ct := aead.Seal(nil, nonce, payload, nil)
			out := make([]byte, maxDatagram)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, err := aead.Open(out[:0], nonce, ct, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
