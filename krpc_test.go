package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// testID is a recognisable id: every byte is b.
func testID(b byte) nodeID {
	var id nodeID
	for i := range id {
		id[i] = b
	}
	return id
}

// benchGetPeersResponse is the typical get_peers response of the benchmark:
// 8 nodes, 8 peers, a token and our "ip" (no "v": SPEC.md 3.2).
func benchGetPeersResponse() krpcMsg {
	var ns []nodeInfo
	var peers []netip.AddrPort
	for i := range 8 {
		ns = append(ns, nodeInfo{ID: testID(byte(0x10 + i)), Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)}), uint16(6881+i))})
		peers = append(peers, netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i)}), uint16(51413+i)))
	}
	return krpcMsg{
		TID:  []byte{0x8a, 0x1f},
		Type: 'r',
		IP:   netip.MustParseAddrPort("203.0.113.7:6881"),
		Reply: krpcReply{
			ID:     testID(0x42),
			Nodes:  appendCompactNodes(nil, ns),
			Token:  []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04},
			Values: appendPeerList(nil, peers),
		},
	}
}

func benchPingQuery() krpcMsg {
	return krpcMsg{TID: []byte{0x8a, 0x20}, Type: 'q', Method: methodPing, Args: krpcArgs{ID: testID(0x42)}}
}

// sampleMsgs covers every message kind we send, with optional fields set.
func sampleMsgs() map[string]krpcMsg {
	k := [32]byte{1, 2, 3}
	sig := [64]byte{4, 5, 6}
	tid := []byte("aa")
	return map[string]krpcMsg{
		"ping":          benchPingQuery(),
		"ping ro":       {TID: tid, Type: 'q', Method: methodPing, ReadOnly: true, Args: krpcArgs{ID: testID(1)}},
		"find_node":     {TID: tid, Type: 'q', Method: methodFindNode, Args: krpcArgs{ID: testID(1), Target: testID(2), Want: wantN4 | wantN6}},
		"get_peers":     {TID: tid, Type: 'q', Method: methodGetPeers, Args: krpcArgs{ID: testID(1), InfoHash: testID(3), Want: wantN6}},
		"announce":      {TID: tid, Type: 'q', Method: methodAnnouncePeer, Args: krpcArgs{ID: testID(1), InfoHash: testID(3), Port: 6881, Token: []byte("tok")}},
		"announce impl": {TID: tid, Type: 'q', Method: methodAnnouncePeer, Args: krpcArgs{ID: testID(1), InfoHash: testID(3), ImpliedPort: true, Token: []byte("tok")}},
		"get":           {TID: tid, Type: 'q', Method: methodGet, Args: krpcArgs{ID: testID(1), Target: testID(4), Seq: 7, HasSeq: true}},
		"put immutable": {TID: tid, Type: 'q', Method: methodPut, Args: krpcArgs{ID: testID(1), Token: []byte("tok"), V: []byte("12:Hello World!")}},
		"put mutable": {TID: tid, Type: 'q', Method: methodPut, Args: krpcArgs{ID: testID(1), Token: []byte("tok"), V: []byte("li1ee"),
			K: k, HasK: true, Sig: sig, Seq: 4, HasSeq: true, Salt: []byte("foobar"), CAS: 3, HasCAS: true}},
		"response":   benchGetPeersResponse(),
		"response 6": {TID: tid, Type: 'r', IP: netip.MustParseAddrPort("[2001:db8::1]:443"), Reply: krpcReply{ID: testID(5), Nodes6: appendCompactNodes6(nil, []nodeInfo{{testID(6), netip.MustParseAddrPort("[2001:db8::2]:6881")}})}},
		"get reply": {TID: tid, Type: 'r', Reply: krpcReply{ID: testID(5), Token: []byte("tk"), V: []byte("d1:xi1ee"),
			K: k, HasK: true, Sig: sig, Seq: 9, HasSeq: true, Nodes: []byte{}}},
		"error": {TID: tid, Type: 'e', ErrCode: krpcErrMethodUnknown, ErrMsg: []byte("Method Unknown")},
	}
}

func TestKRPCRoundTrip(t *testing.T) {
	for name, m := range sampleMsgs() {
		b := m.appendTo(nil)
		if err := checkBencode(b); err != nil {
			t.Fatalf("%s: appendTo = %q, not canonical: %v", name, b, err)
		}
		got, ignored, err := parseKRPCIgnored(b)
		if err != nil {
			t.Fatalf("%s: parseKRPC(%q): %v", name, b, err)
		}
		if ignored {
			t.Errorf("%s: parseKRPC(%q) ignored something", name, b)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%s: parseKRPC(%q) =\n%+v, want\n%+v", name, b, got, m)
		}
		for i := range len(b) {
			if _, err := parseKRPC(b[:i]); err == nil {
				t.Fatalf("%s: strict prefix %q parses", name, b[:i])
			}
		}
	}
}

func TestKRPCEncodeNoAlloc(t *testing.T) {
	msgs := sampleMsgs()
	buf := make([]byte, 0, 2048)
	for name, m := range msgs {
		if n := testing.AllocsPerRun(10, func() { buf = m.appendTo(buf[:0]) }); n != 0 {
			t.Errorf("%s: appendTo allocates %v times", name, n)
		}
	}
}

func TestKRPCParseNoAlloc(t *testing.T) {
	for _, name := range []string{"ping", "response", "put mutable", "error"} {
		m := sampleMsgs()[name]
		b := m.appendTo(nil)
		if n := testing.AllocsPerRun(10, func() { _, _ = parseKRPC(b) }); n != 0 {
			t.Errorf("%s: parseKRPC allocates %v times", name, n)
		}
	}
}

const (
	id20  = "20:abcdefghij0123456789"
	id20b = "20:mnopqrstuvwxyz123456"
)

func TestParseKRPC(t *testing.T) {
	abc := nodeID([]byte("abcdefghij0123456789"))
	tests := []struct {
		name     string
		in       string
		want     *krpcMsg // nil: don't compare
		wantErr  error    // nil: must parse
		badQuery bool     // error must be a *krpcBadQuery
	}{
		{"bep5 ping", "d1:ad2:id" + id20 + "e1:q4:ping1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodPing, Args: krpcArgs{ID: abc}}, nil, false},
		{"bep5 ping response", "d1:rd2:id" + id20b + "e1:t2:aa1:y1:re",
			&krpcMsg{TID: []byte("aa"), Type: 'r', Reply: krpcReply{ID: nodeID([]byte("mnopqrstuvwxyz123456"))}}, nil, false},
		{"bep5 error", "d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
			&krpcMsg{TID: []byte("aa"), Type: 'e', ErrCode: 201, ErrMsg: []byte("A Generic Error Ocurred")}, nil, false},
		{"unknown keys ignored", "d1:ad2:id" + id20 + "3:zzzi1ee1:q4:ping1:t2:aa1:y1:q1:zlee",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodPing, Args: krpcArgs{ID: abc}}, nil, false},
		{"unknown method", "d1:ad2:id" + id20 + "e1:q4:vote1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodUnknown}, nil, false},
		{"ro", "d1:ad2:id" + id20 + "e1:q4:ping2:roi1e1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodPing, ReadOnly: true, Args: krpcArgs{ID: abc}}, nil, false},
		{"ip", "d2:ip6:\xc0\x00\x02\x01\x1a\xe11:rd2:id" + id20 + "e1:t2:aa1:y1:re",
			&krpcMsg{TID: []byte("aa"), Type: 'r', IP: netip.MustParseAddrPort("192.0.2.1:6881"), Reply: krpcReply{ID: abc}}, nil, false},
		{"implied port without port", "d1:ad2:id" + id20 + "12:implied_porti1e9:info_hash" + id20 + "5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodAnnouncePeer, Args: krpcArgs{ID: abc, InfoHash: abc, ImpliedPort: true, Token: []byte("tk")}}, nil, false},
		{"implied port with port 0", "d1:ad2:id" + id20 + "12:implied_porti1e9:info_hash" + id20 + "4:porti0e5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodAnnouncePeer, Args: krpcArgs{ID: abc, InfoHash: abc, ImpliedPort: true, Token: []byte("tk")}}, nil, false},
		{"implied port with port 65535", "d1:ad2:id" + id20 + "12:implied_porti1e9:info_hash" + id20 + "4:porti65535e5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodAnnouncePeer, Args: krpcArgs{ID: abc, InfoHash: abc, Port: 65535, ImpliedPort: true, Token: []byte("tk")}}, nil, false},

		{"unused arg of wrong type ignored", "d1:ad2:id" + id20 + "6:targeti5ee1:q4:ping1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodPing, Args: krpcArgs{ID: abc}}, nil, false},
		{"r in a query ignored", "d1:ad2:id" + id20 + "e1:q4:ping1:ri1e1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodPing, Args: krpcArgs{ID: abc}}, nil, false},
		{"ro in a response ignored", "d1:rd2:id" + id20 + "e2:ro3:xyz1:t2:aa1:y1:re",
			&krpcMsg{TID: []byte("aa"), Type: 'r', Reply: krpcReply{ID: abc}}, nil, false},
		{"want with unknown entry", "d1:ad2:id" + id20 + "6:target" + id20 + "4:wantl2:n52:n6ee1:q9:find_node1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodFindNode, Args: krpcArgs{ID: abc, Target: abc, Want: wantN6}}, nil, false},
		{"deep v in put", "d1:ad2:id" + id20 + "5:token2:tk1:v" + strings.Repeat("l", maxBencodeDepth-2) + strings.Repeat("e", maxBencodeDepth-2) + "e1:q3:put1:t2:aa1:y1:qe", nil, nil, false},

		// not canonical bencode: never a bad query, we don't answer garbage
		{"too deep v in put", "d1:ad2:id" + id20 + "5:token2:tk1:v" + strings.Repeat("l", maxBencodeDepth-1) + strings.Repeat("e", maxBencodeDepth-1) + "e1:q3:put1:t2:aa1:y1:qe", nil, errBencodeDepth, false},
		{"too long", "d1:t2:aa1:y1:r1:z65536:" + strings.Repeat("x", 65536) + "e", nil, errKRPCTooLong, false},
		{"unsorted top keys", "d1:t2:aa1:ad2:id" + id20 + "e1:q4:ping1:y1:qe", nil, errBencodeKeyOrder, false},
		{"trailing byte", "d1:ad2:id" + id20 + "e1:q4:ping1:t2:aa1:y1:qex", nil, errBencodeTrailing, false},
		{"leading zero inside a", "d1:ad2:id" + id20 + "1:xi01ee1:q4:ping1:t2:aa1:y1:qe", nil, errBencodeLeadingZero, false},
		{"not a dict", "l1:ae", nil, errKRPCNotDict, false},
		{"empty", "", nil, errKRPCNotDict, false},
		// envelope bad: no reply possible
		{"no tid", "d1:ad2:id" + id20 + "e1:q4:ping1:y1:qe", nil, errKRPCMissing, false},
		{"empty tid", "d1:ad2:id" + id20 + "e1:q4:ping1:t0:1:y1:qe", nil, errKRPCSize, false},
		{"long tid", "d1:ad2:id" + id20 + "e1:q4:ping1:t17:aaaaaaaaaaaaaaaaa1:y1:qe", nil, errKRPCSize, false},
		{"int tid", "d1:ad2:id" + id20 + "e1:q4:ping1:ti1e1:y1:qe", nil, errKRPCType, false},
		{"bad y", "d1:ad2:id" + id20 + "e1:q4:ping1:t2:aa1:y1:xe", nil, errKRPCMsgType, false},
		{"long y", "d1:ad2:id" + id20 + "e1:q4:ping1:t2:aa1:y2:qqe", nil, errKRPCMsgType, false},
		// bad queries: answered with 203
		{"no a", "d1:q4:ping1:t2:aa1:y1:qe", nil, errKRPCMissing, true},
		{"a not dict", "d1:ai1e1:q4:ping1:t2:aa1:y1:qe", nil, errKRPCType, true},
		{"no q", "d1:ad2:id" + id20 + "e1:t2:aa1:y1:qe", nil, errKRPCMissing, true},
		{"short id", "d1:ad2:id19:abcdefghij012345678e1:q4:ping1:t2:aa1:y1:qe", nil, errKRPCSize, true},
		{"int id", "d1:ad2:idi1ee1:q4:ping1:t2:aa1:y1:qe", nil, errKRPCType, true},
		{"find_node no target", "d1:ad2:id" + id20 + "e1:q9:find_node1:t2:aa1:y1:qe", nil, errKRPCMissing, true},
		{"announce no port", "d1:ad2:id" + id20 + "9:info_hash" + id20 + "5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCMissing, true},
		{"announce port 0", "d1:ad2:id" + id20 + "9:info_hash" + id20 + "4:porti0e5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCValue, true},
		{"announce port big", "d1:ad2:id" + id20 + "9:info_hash" + id20 + "4:porti65536e5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCValue, true},
		{"announce no token", "d1:ad2:id" + id20 + "9:info_hash" + id20 + "4:porti1ee1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCMissing, true},
		{"implied port with port big", "d1:ad2:id" + id20 + "12:implied_porti1e9:info_hash" + id20 + "4:porti65536e5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCValue, true},
		{"implied port with port -1", "d1:ad2:id" + id20 + "12:implied_porti1e9:info_hash" + id20 + "4:porti-1e5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCValue, true},
		{"implied port with string port", "d1:ad2:id" + id20 + "12:implied_porti1e9:info_hash" + id20 + "4:port1:05:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCType, true},
		{"implied_port 2", "d1:ad2:id" + id20 + "12:implied_porti2e9:info_hash" + id20 + "5:token2:tke1:q13:announce_peer1:t2:aa1:y1:qe", nil, errKRPCValue, true},
		{"ro 2", "d1:ad2:id" + id20 + "e1:q4:ping2:roi2e1:t2:aa1:y1:qe", nil, errKRPCValue, true},
		{"bad ip in query", "d1:ad2:id" + id20 + "e2:ip3:abc1:q4:ping1:t2:aa1:y1:qe", nil, errKRPCCompact, true},
		{"want not list", "d1:ad2:id" + id20 + "6:target" + id20 + "4:want2:n4e1:q9:find_node1:t2:aa1:y1:qe", nil, errKRPCType, true},
		{"put without v", "d1:ad2:id" + id20 + "5:token2:tke1:q3:put1:t2:aa1:y1:qe", nil, errKRPCMissing, true},
		// Without k a put is immutable: sig, seq, salt and cas are ignored
		// (anacrolix sends "seq": 0 with immutable puts).
		{"put sig without k", "d1:ad2:id" + id20 + "3:sig64:" + strings.Repeat("s", 64) + "5:token2:tk1:vi1ee1:q3:put1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodPut, Args: krpcArgs{ID: abc, Token: []byte("tk"), V: []byte("i1e")}}, nil, false},
		{"immutable put with seq 0", "d1:ad2:id" + id20 + "3:seqi0e5:token2:tk1:vi1ee1:q3:put1:t2:aa1:y1:qe",
			&krpcMsg{TID: []byte("aa"), Type: 'q', Method: methodPut, Args: krpcArgs{ID: abc, Token: []byte("tk"), V: []byte("i1e")}}, nil, false},
		{"put k without sig", "d1:ad2:id" + id20 + "1:k32:" + strings.Repeat("k", 32) + "3:seqi1e5:token2:tk1:vi1ee1:q3:put1:t2:aa1:y1:qe", nil, errKRPCMissing, true},
		{"put negative seq", "d1:ad2:id" + id20 + "1:k32:" + strings.Repeat("k", 32) + "3:seqi-1e3:sig64:" + strings.Repeat("s", 64) + "5:token2:tk1:vi1ee1:q3:put1:t2:aa1:y1:qe", nil, errKRPCValue, true},
		{"token too long", "d1:ad2:id" + id20 + "5:token65:" + strings.Repeat("t", 65) + "1:vi1ee1:q3:put1:t2:aa1:y1:qe", nil, errKRPCSize, true},
		// responses
		{"response no r", "d1:t2:aa1:y1:re", nil, errKRPCMissing, false},
		{"response no id", "d1:rd5:nodes0:e1:t2:aa1:y1:re", nil, errKRPCMissing, false},
		{"nodes not multiple of 26", "d1:rd2:id" + id20 + "5:nodes25:" + strings.Repeat("n", 25) + "e1:t2:aa1:y1:re", nil, errKRPCSize, false},
		{"nodes6 not multiple of 38", "d1:rd2:id" + id20 + "6:nodes626:" + strings.Repeat("n", 26) + "e1:t2:aa1:y1:re", nil, errKRPCSize, false},
		{"nodes6 mapped v4", "d1:rd2:id" + id20 + "6:nodes638:" + strings.Repeat("n", 20) + strings.Repeat("\x00", 10) + "\xff\xff\x01\x02\x03\x04\x00\x01e1:t2:aa1:y1:re", nil, errKRPCMappedV4, false},
		{"values entry 5 bytes", "d1:rd2:id" + id20 + "6:valuesl5:abcdeee1:t2:aa1:y1:re", nil, errKRPCCompact, false},
		{"values int entry", "d1:rd2:id" + id20 + "6:valuesli1eee1:t2:aa1:y1:re", nil, errKRPCType, false},
		{"values not list", "d1:rd2:id" + id20 + "6:values6:abcdefe1:t2:aa1:y1:re", nil, errKRPCType, false},
		{"k without sig", "d1:rd2:id" + id20 + "1:k32:" + strings.Repeat("k", 32) + "e1:t2:aa1:y1:re", nil, errKRPCValue, false},
		{"bad ip in response", "d2:ip5:abcde1:rd2:id" + id20 + "e1:t2:aa1:y1:re", nil, errKRPCCompact, false},
		// errors
		{"error no e", "d1:t2:aa1:y1:ee", nil, errKRPCMissing, false},
		{"error three elements", "d1:eli201e1:x1:ye1:t2:aa1:y1:ee", nil, errKRPCType, false},
		{"error one element", "d1:eli201ee1:t2:aa1:y1:ee", nil, errKRPCType, false},
		{"error swapped", "d1:el1:xi201ee1:t2:aa1:y1:ee", nil, errKRPCType, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseKRPC([]byte(tt.in))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("parseKRPC(%q) error %v", tt.in, err)
				}
				if tt.want != nil && !reflect.DeepEqual(got, *tt.want) {
					t.Fatalf("parseKRPC(%q) =\n%+v, want\n%+v", tt.in, got, *tt.want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parseKRPC(%q) error %v, want %v", tt.in, err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "krpc: ") {
				t.Errorf("error %q lacks the layer prefix", err)
			}
			if !reflect.DeepEqual(got, krpcMsg{}) {
				t.Errorf("parseKRPC(%q) = %+v with error", tt.in, got)
			}
			var bq *krpcBadQuery
			if errors.As(err, &bq) != tt.badQuery {
				t.Fatalf("parseKRPC(%q) error %T %v, bad query %v", tt.in, err, err, tt.badQuery)
			}
			if bq != nil && string(bq.TID) != "aa" {
				t.Errorf("bad query TID %q", bq.TID)
			}
		})
	}
}

func TestCompactAddr(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{"v4", "\xc0\x00\x02\x01\x1a\xe1", "192.0.2.1:6881", nil},
		{"v6", "\x20\x01\x0d\xb8" + strings.Repeat("\x00", 11) + "\x01\x01\xbb", "[2001:db8::1]:443", nil},
		{"short", "\x01\x02\x03", "", errKRPCCompact},
		{"mapped", strings.Repeat("\x00", 10) + "\xff\xff\x01\x02\x03\x04\x00\x01", "", errKRPCMappedV4},
	}
	for _, tt := range tests {
		got, err := parseCompactAddr([]byte(tt.in))
		if !errors.Is(err, tt.wantErr) {
			t.Fatalf("%s: parseCompactAddr(%q) error %v, want %v", tt.name, tt.in, err, tt.wantErr)
		}
		if err != nil {
			continue
		}
		if got.String() != tt.want {
			t.Fatalf("%s: parseCompactAddr(%q) = %v, want %v", tt.name, tt.in, got, tt.want)
		}
		if back := appendCompactAddr(nil, got); string(back) != tt.in {
			t.Fatalf("%s: appendCompactAddr(%v) = %q", tt.name, got, back)
		}
	}
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:1.2.3.4"), 1)
	if got := appendCompactAddr(nil, mapped); string(got) != "\x01\x02\x03\x04\x00\x01" {
		t.Errorf("appendCompactAddr(%v) = %q, want the IPv4 form", mapped, got)
	}
	if got := appendCompactAddr([]byte("x"), netip.AddrPort{}); string(got) != "x" {
		t.Errorf("appendCompactAddr(invalid) = %q", got)
	}
}

func TestCompactNodesAndPeers(t *testing.T) {
	ns := []nodeInfo{
		{testID(1), netip.MustParseAddrPort("192.0.2.1:1")},
		{testID(2), netip.MustParseAddrPort("[2001:db8::2]:2")},
		{testID(3), netip.MustParseAddrPort("192.0.2.3:3")},
	}
	raw4, raw6 := appendCompactNodes(nil, ns), appendCompactNodes6(nil, ns)
	if len(raw4) != 2*compactNodeLen || len(raw6) != compactNode6Len {
		t.Fatalf("lengths %d, %d", len(raw4), len(raw6))
	}
	got4, err := parseCompactNodes(raw4)
	if err != nil || !reflect.DeepEqual(got4, []nodeInfo{ns[0], ns[2]}) {
		t.Fatalf("parseCompactNodes = %v, %v", got4, err)
	}
	got6, err := parseCompactNodes6(raw6)
	if err != nil || !reflect.DeepEqual(got6, []nodeInfo{ns[1]}) {
		t.Fatalf("parseCompactNodes6 = %v, %v", got6, err)
	}
	if _, err := parseCompactNodes(raw4[:25]); !errors.Is(err, errKRPCSize) {
		t.Fatalf("parseCompactNodes(25 bytes) error %v", err)
	}
	if _, err := parseCompactNodes6(raw4[:26]); !errors.Is(err, errKRPCSize) {
		t.Fatalf("parseCompactNodes6(26 bytes) error %v", err)
	}
	if ns, err := parseCompactNodes(nil); err != nil || len(ns) != 0 {
		t.Fatalf("parseCompactNodes(nil) = %v, %v", ns, err)
	}
	peers := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:9"), netip.MustParseAddrPort("[2001:db8::9]:9")}
	values := appendPeerList(nil, append(peers, netip.AddrPort{}))
	if err := checkBencode(values); err != nil {
		t.Fatalf("appendPeerList = %q: %v", values, err)
	}
	got, err := parsePeers(values)
	if err != nil || !reflect.DeepEqual(got, peers) {
		t.Fatalf("parsePeers(%q) = %v, %v", values, got, err)
	}
	for _, bad := range []string{"", "l", "le6:abcdef", "l6:abcdef", "d1:a6:abcdefe", "l3:abce"} {
		if _, err := parsePeers([]byte(bad)); err == nil {
			t.Errorf("parsePeers(%q) accepted", bad)
		}
	}
}

// TestKRPCUnknownMethodRoundTrip: a query for a method we lack parses
// (so the node can answer 204) and re-encodes to one that parses the same.
func TestKRPCUnknownMethodRoundTrip(t *testing.T) {
	m, ignored, err := parseKRPCIgnored([]byte("d1:ad2:id" + id20 + "e1:q4:vote1:t2:aa1:y1:qe"))
	if err != nil || !ignored || m.Method != methodUnknown {
		t.Fatalf("parse = %+v, %v, %v", m, ignored, err)
	}
	m2, err := parseKRPC(m.appendTo(nil))
	if err != nil || !reflect.DeepEqual(m, m2) {
		t.Fatalf("re-parse = %+v, %v", m2, err)
	}
}

func TestKRPCMethodString(t *testing.T) {
	for m := methodUnknown; m <= methodPut; m++ {
		if got := lookupMethod([]byte(m.String())); got != m {
			t.Errorf("lookupMethod(%q) = %v, want %v", m.String(), got, m)
		}
	}
	if got := krpcMethod(99).String(); got != "unknown" {
		t.Errorf("krpcMethod(99) = %q", got)
	}
}

// parseKRPCIgnored is parseKRPCInto returning the message.
func parseKRPCIgnored(b []byte) (krpcMsg, bool, error) {
	var m krpcMsg
	ignored, err := parseKRPCInto(b, &m)
	if err != nil {
		return krpcMsg{}, false, err
	}
	return m, ignored, nil
}

// TestKRPCKeyIndex: the key tables are in bencode order (so their indexes
// are the order keys appear in) and keyIndex knows exactly them.
func TestKRPCKeyIndex(t *testing.T) {
	tables := map[dictKind][]string{
		dictTop:   {"a", "e", "ip", "q", "r", "ro", "t", "v", "y"},
		dictArgs:  {"cas", "id", "implied_port", "info_hash", "k", "port", "salt", "seq", "sig", "target", "token", "v", "want"},
		dictReply: {"id", "k", "nodes", "nodes6", "seq", "sig", "token", "v", "values"},
	}
	for kind, keys := range tables {
		if len(keys) > len(fieldSet{}.pos) {
			t.Errorf("%d keys do not fit a fieldSet", len(keys))
		}
		for i, k := range keys {
			if i > 0 && keys[i-1] >= k {
				t.Errorf("%q before %q", keys[i-1], k)
			}
			if got := keyIndex(kind, []byte(k)); got != i {
				t.Errorf("keyIndex(%d, %q) = %d, want %d", kind, k, got, i)
			}
		}
		for _, k := range []string{"", "x", "values6", "ids"} {
			if got := keyIndex(kind, []byte(k)); got != -1 {
				t.Errorf("keyIndex(%d, %q) = %d, want -1", kind, k, got)
			}
		}
	}
}

// TestKRPCBenchInputs keeps the committed benchmark inputs (shared with the
// interop module) equal to the messages they are said to be.
func TestKRPCBenchInputs(t *testing.T) {
	for file, m := range map[string]krpcMsg{
		"testdata/krpc/get_peers_response.bin": benchGetPeersResponse(),
		"testdata/krpc/ping_query.bin":         benchPingQuery(),
	} {
		want := m.appendTo(nil)
		updateFile(t, file, want)
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s = %q, want %q", file, got, want)
		}
	}
}

// krpcExample is one ```krpc-example block of SPEC.md: a Go-quoted
// datagram (the body), then the fields it states.
type krpcExample struct {
	specBlock
	wire []byte
}

func specKRPCExamples(t testing.TB) []krpcExample {
	t.Helper()
	var out []krpcExample
	for _, b := range specBlocks(t, "krpc-example") {
		w, err := strconv.Unquote(b.body)
		if err != nil {
			t.Fatalf("SPEC.md:%d: %s: %q: %v", b.line, b.name, b.body, err)
		}
		out = append(out, krpcExample{specBlock: b, wire: []byte(w)})
	}
	return out
}

// krpcFieldText renders the fields an example may state, as SPEC.md 3.2
// writes them; byte strings (which SPEC.md writes Go-quoted) as they are.
func krpcFieldText(m krpcMsg) map[string]string {
	f := map[string]string{"type": string(m.Type), "tid": string(m.TID)}
	if m.Type == 'q' {
		f["method"] = m.Method.String()
		f["id"] = m.Args.ID.String()
		f["ro"] = strconv.FormatBool(m.ReadOnly)
		f["target"] = m.Args.Target.String()
		f["info_hash"] = m.Args.InfoHash.String()
		f["port"] = strconv.Itoa(int(m.Args.Port))
		f["implied_port"] = strconv.FormatBool(m.Args.ImpliedPort)
		f["token"] = hex.EncodeToString(m.Args.Token)
		f["want"] = fmt.Sprintf("n4=%v n6=%v", m.Args.Want&wantN4 != 0, m.Args.Want&wantN6 != 0)
		f["v_item"] = string(m.Args.V)
		if m.Args.HasSeq {
			f["seq"] = strconv.FormatInt(m.Args.Seq, 10)
		}
	}
	if m.Type == 'r' {
		f["id"] = m.Reply.ID.String()
		f["token"] = hex.EncodeToString(m.Reply.Token)
		if ns, err := parseCompactNodes(m.Reply.Nodes); err == nil {
			f["nodes"] = strconv.Itoa(len(ns))
			if len(ns) > 0 {
				f["node0"] = ns[0].ID.String() + " " + ns[0].Addr.String()
			}
		}
		if ps, err := parsePeers(m.Reply.Values); err == nil {
			f["values"] = strconv.Itoa(len(ps))
			f["value0"] = ps[0].String()
		}
	}
	if m.Type == 'e' {
		f["code"] = strconv.Itoa(m.ErrCode)
		f["message"] = string(m.ErrMsg)
	}
	f["v"] = string(m.Version)
	if m.IP.IsValid() {
		f["ip"] = m.IP.String()
	}
	return f
}

// TestSpecKRPCExamples: every example in SPEC.md parses to the fields it
// states, and appendTo gives back its exact bytes.
func TestSpecKRPCExamples(t *testing.T) {
	exs := specKRPCExamples(t)
	if len(exs) < 3 {
		t.Fatalf("SPEC.md has %d krpc-example blocks, want at least 3", len(exs))
	}
	for _, ex := range exs {
		m, err := parseKRPC(ex.wire)
		if err != nil {
			t.Errorf("SPEC.md:%d %s: parseKRPC: %v", ex.line, ex.name, err)
			continue
		}
		for _, k := range []string{"type", "tid"} {
			if _, ok := ex.fields[k]; !ok {
				t.Errorf("SPEC.md:%d %s: does not state %s", ex.line, ex.name, k)
			}
		}
		have := krpcFieldText(m)
		for k, stated := range ex.fields {
			want := stated
			if strings.HasPrefix(stated, `"`) {
				var err error
				if want, err = strconv.Unquote(stated); err != nil {
					t.Fatalf("SPEC.md:%d %s: %s = %s: %v", ex.line, ex.name, k, stated, err)
				}
			}
			if got, ok := have[k]; !ok || got != want {
				t.Errorf("SPEC.md:%d %s: %s = %s, parsed %q", ex.line, ex.name, k, stated, got)
			}
		}
		if got := m.appendTo(nil); !bytes.Equal(got, ex.wire) {
			t.Errorf("SPEC.md:%d %s: appendTo = %q, want %q", ex.line, ex.name, got, ex.wire)
		}
		for i := range len(ex.wire) {
			if _, err := parseKRPC(ex.wire[:i]); err == nil {
				t.Errorf("SPEC.md:%d %s: strict prefix %q parses", ex.line, ex.name, ex.wire[:i])
			}
		}
	}
}

// FuzzKRPC: parseKRPC never panics, accepts only canonical bencode, gives
// zero results with its errors, and what it accepts survives appendTo: the
// re-encoding parses to the same message, and equals the input byte for
// byte unless the parser reported ignoring something.
func FuzzKRPC(f *testing.F) {
	for _, m := range sampleMsgs() {
		f.Add(m.appendTo(nil))
	}
	for _, ex := range specKRPCExamples(f) {
		f.Add(ex.wire)
	}
	f.Add([]byte("d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"))
	f.Add([]byte("d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re"))
	f.Add([]byte("d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee"))
	f.Add([]byte("d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe"))
	f.Add([]byte("d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe"))
	f.Add([]byte("d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe"))
	f.Add([]byte("d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti0e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ignored, err := parseKRPCIgnored(b)
		if err != nil {
			if !reflect.DeepEqual(m, krpcMsg{}) || ignored {
				t.Fatalf("parseKRPC(%q) = %+v, %v with error %v", b, m, ignored, err)
			}
			var bq *krpcBadQuery
			if checkBencode(b) != nil && errors.As(err, &bq) {
				t.Fatalf("parseKRPC(%q): bad query %v for invalid bencode", b, err)
			}
			return
		}
		if err := checkBencode(b); err != nil {
			t.Fatalf("parseKRPC(%q) accepted non-canonical input: %v", b, err)
		}
		out := m.appendTo(nil)
		m2, ignored2, err := parseKRPCIgnored(out)
		if err != nil {
			t.Fatalf("parseKRPC(appendTo(parseKRPC(%q))) = %q: %v", b, out, err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip of %q:\n%+v\n%+v", b, m, m2)
		}
		if !ignored && !bytes.Equal(out, b) {
			t.Fatalf("appendTo(parseKRPC(%q)) = %q, nothing was ignored", b, out)
		}
		if ignored2 && m.Method != methodUnknown {
			t.Fatalf("re-encoding %q of %q has ignored parts", out, b)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	for _, bm := range []struct{ name, file string }{
		{"get_peers_response", "testdata/krpc/get_peers_response.bin"},
		{"ping_query", "testdata/krpc/ping_query.bin"},
	} {
		in, err := os.ReadFile(bm.file)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, err := parseKRPC(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, bm := range []struct {
		name string
		m    krpcMsg
	}{
		{"get_peers_response", benchGetPeersResponse()},
		{"ping_query", benchPingQuery()},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 2048)
			for b.Loop() {
				buf = bm.m.appendTo(buf[:0])
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

func BenchmarkCheckBencode(b *testing.B) {
	in, err := os.ReadFile("testdata/krpc/get_peers_response.bin")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := checkBencode(in); err != nil {
			b.Fatal(err)
		}
	}
}

// maxGetPeersReply is the budget of a get_peers reply: a 1,280-byte packet
// (the IPv6 minimum MTU) less 40 bytes of IPv6 and 8 of UDP header, so no
// reply is ever fragmented (SPEC.md 3.5.2).
const maxGetPeersReply = 1280 - 40 - 8

// worstGetPeersReply is the longest get_peers reply we send to a requester
// of the family of ip with n peers: a 16-byte tid, both node lists full
// (want n4 and n6), a token and the BEP 42 "ip" (and no "v", SPEC.md 3.2).
func worstGetPeersReply(ip netip.Addr, n int) []byte {
	peers := make([]netip.AddrPort, n)
	for i := range peers {
		peers[i] = netip.AddrPortFrom(ip, uint16(i+1))
	}
	m := krpcMsg{
		TID: make([]byte, maxTIDLen), Type: 'r', IP: netip.AddrPortFrom(ip, 1),
		Reply: krpcReply{
			Nodes: make([]byte, bucketSize*compactNodeLen), Nodes6: make([]byte, bucketSize*compactNode6Len),
			Token: make([]byte, tokenLen), Values: appendPeerList(nil, peers),
		},
	}
	return m.appendTo(nil)
}

// TestGetPeersReplyFits: with maxPeersReply IPv4 or maxPeersReply6 IPv6
// peers the worst reply fits the budget, and the sizes are those SPEC.md
// quotes.
func TestGetPeersReplyFits(t *testing.T) {
	tests := []struct {
		name      string
		ip        netip.Addr
		max, want int // peers allowed; the worst reply's length
	}{
		{"ipv4", netip.MustParseAddr("192.0.2.1"), maxPeersReply, 1036},
		{"ipv6", netip.MustParseAddr("2001:db8::1"), maxPeersReply6, 1216},
	}
	for _, tt := range tests {
		got := len(worstGetPeersReply(tt.ip, tt.max))
		if got != tt.want || got > maxGetPeersReply {
			t.Errorf("%s: worst reply with %d peers is %d bytes, want %d (budget %d)", tt.name, tt.max, got, tt.want, maxGetPeersReply)
		}
		if tt.ip.Is6() && len(worstGetPeersReply(tt.ip, tt.max+1)) <= maxGetPeersReply {
			t.Errorf("%s: %d peers would fit too; the cap is not the largest", tt.name, tt.max+1)
		}
	}
}
