// KRPC messages (SPEC.md 3.2; BEP 5, with BEP 32 "want"/"nodes6", BEP 42
// "ip", BEP 43 "ro" and BEP 44 get/put): the message types, the encoder and
// the compact address forms; the codec keeps no state.
//
// Inbound flow: parseKRPC (krpc_decode.go) turns a datagram into a krpcMsg
// whose slices alias it; the compact node and peer lists in it are read
// later, by whoever uses them, with parseCompactNodes and walkPeers.
// Outbound flow: appendTo writes a krpcMsg as canonical bencode (keys
// sorted) into the caller's buffer, without allocating when it has room;
// appendCompactNodes and appendPeerList build the lists it carries.
package main

import (
	"errors"
	"fmt"
	"net/netip"
)

// KRPC error codes (BEP 5). 205-207 and 301-302 (BEP 44) live in store.go.
const (
	krpcErrGeneric       = 201
	krpcErrServer        = 202
	krpcErrProtocol      = 203
	krpcErrMethodUnknown = 204
)

// Wire sizes, see SPEC.md 3.2.
const (
	minTIDLen       = 1  // "t": at least one byte
	maxTIDLen       = 16 // "t": mainline uses 2-4; more is not a transaction id but a payload
	minTokenLen     = 1  // "token"
	maxTokenLen     = 64 // "token": mainline uses 4-20
	compactAddr4Len = 6  // IPv4 address || port
	compactAddr6Len = 18 // IPv6 address || port
	compactNodeLen  = idLen + compactAddr4Len
	compactNode6Len = idLen + compactAddr6Len
	ed25519KeyLen   = 32 // BEP 44 "k"
	ed25519SigLen   = 64 // BEP 44 "sig"
)

// krpcMethod is a query method we implement.
type krpcMethod uint8

const (
	methodUnknown krpcMethod = iota
	methodPing
	methodFindNode
	methodGetPeers
	methodAnnouncePeer
	methodGet
	methodPut
)

// methodNames are the wire names, indexed by krpcMethod. Read-only.
var methodNames = [...]string{"unknown", "ping", "find_node", "get_peers", "announce_peer", "get", "put"}

func (m krpcMethod) String() string {
	if int(m) < len(methodNames) {
		return methodNames[m]
	}
	return methodNames[methodUnknown]
}

// lookupMethod maps a wire name to a method; methodUnknown if we have none.
func lookupMethod(name []byte) krpcMethod {
	for i := methodPing; int(i) < len(methodNames); i++ {
		if string(name) == methodNames[i] {
			return i
		}
	}
	return methodUnknown
}

// BEP 32 "want" bits.
const (
	wantN4 = 1 << iota
	wantN6
)

// krpcMsg is one parsed KRPC message. Slices alias the parsed datagram.
type krpcMsg struct {
	TID      []byte         // "t", minTIDLen..maxTIDLen bytes
	Type     byte           // 'q', 'r' or 'e'
	Method   krpcMethod     // Type 'q' only; methodUnknown for a method we don't implement
	Version  []byte         // "v", nil if absent; read, never sent by us (SPEC.md 3.2)
	IP       netip.AddrPort // "ip" (BEP 42), zero value if absent
	ReadOnly bool           // "ro" (BEP 43) = 1, queries only
	Args     krpcArgs       // Type 'q'
	Reply    krpcReply      // Type 'r'
	ErrCode  int            // Type 'e'
	ErrMsg   []byte         // Type 'e'
}

// krpcArgs are the arguments of a query ("a"); only those of its method are set.
type krpcArgs struct {
	ID          nodeID
	Target      nodeID // find_node, get
	InfoHash    nodeID // get_peers, announce_peer
	Port        uint16 // announce_peer; with ImpliedPort 0 if absent or 0
	ImpliedPort bool   // announce_peer implied_port=1
	Token       []byte // announce_peer, put
	Want        uint8  // wantN4|wantN6; 0 when absent
	Seq         int64  // get (optional "seq"), put
	HasSeq      bool
	V           []byte   // put: the raw bencoded value, aliasing the input
	K           [32]byte // put (mutable)
	HasK        bool
	Sig         [64]byte // put (mutable)
	Salt        []byte   // put (mutable), nil if absent
	CAS         int64    // put (mutable)
	HasCAS      bool
}

// krpcReply is the body of a response ("r").
type krpcReply struct {
	ID     nodeID
	Nodes  []byte // raw compact IPv4 node info (26 bytes each), validated; nil if absent
	Nodes6 []byte // raw compact IPv6 node info (38 bytes each), validated; nil if absent
	Token  []byte
	Values []byte // the raw bencoded list of compact peers (6 or 18 byte strings), validated; nil if absent
	V      []byte // BEP 44 get: raw bencoded value
	K      [32]byte
	HasK   bool
	Sig    [64]byte // present exactly when HasK
	Seq    int64
	HasSeq bool
}

// krpcBadQuery is the error for a datagram that is canonical bencode with a
// usable "t" and "y" == "q" but whose query is otherwise wrong: the node
// answers it with error 203. TID aliases the datagram.
type krpcBadQuery struct {
	TID []byte
	Err error
}

func (e *krpcBadQuery) Error() string { return "krpc: bad query: " + e.Err.Error() }
func (e *krpcBadQuery) Unwrap() error { return e.Err }

// Sentinel errors, wrapped with the key they concern.
var (
	errKRPCNotDict  = errors.New("message is not a dict")
	errKRPCTooLong  = errors.New("message too long")
	errKRPCMissing  = errors.New("missing")
	errKRPCType     = errors.New("wrong type")
	errKRPCSize     = errors.New("wrong size")
	errKRPCValue    = errors.New("bad value")
	errKRPCMsgType  = errors.New("unknown message type")
	errKRPCCompact  = errors.New("bad compact address")
	errKRPCMappedV4 = errors.New("ipv4-mapped address in ipv6 form")
)

// appendTo appends the message as canonical bencode: keys sorted, only the
// fields meaningful for its Type and Method. It does not allocate if dst has
// room.
func (m *krpcMsg) appendTo(dst []byte) []byte {
	dst = append(dst, 'd')
	switch m.Type {
	case 'q':
		dst = appendBencodeKey(dst, "a")
		dst = m.Args.appendTo(dst, m.Method)
	case 'e':
		dst = appendBencodeKey(dst, "e")
		dst = append(dst, 'l')
		dst = appendBencodeInt(dst, int64(m.ErrCode))
		dst = appendBencodeString(dst, m.ErrMsg)
		dst = append(dst, 'e')
	}
	if m.IP.IsValid() {
		dst = appendBencodeKey(dst, "ip")
		dst = appendCompactAddrString(dst, m.IP)
	}
	switch m.Type {
	case 'q':
		dst = appendBencodeKey(dst, "q")
		dst = appendBencodeKey(dst, m.Method.String())
	case 'r':
		dst = appendBencodeKey(dst, "r")
		dst = m.Reply.appendTo(dst)
	}
	if m.Type == 'q' && m.ReadOnly {
		dst = appendBencodeKey(dst, "ro")
		dst = appendBencodeInt(dst, 1)
	}
	dst = appendBencodeKey(dst, "t")
	dst = appendBencodeString(dst, m.TID)
	if m.Version != nil {
		dst = appendBencodeKey(dst, "v")
		dst = appendBencodeString(dst, m.Version)
	}
	dst = appendBencodeKey(dst, "y")
	dst = append(dst, '1', ':', m.Type)
	return append(dst, 'e')
}

// appendTo appends the "a" dict for method.
func (a *krpcArgs) appendTo(dst []byte, method krpcMethod) []byte {
	dst = append(dst, 'd')
	mutable := method == methodPut && a.HasK
	if mutable && a.HasCAS {
		dst = appendBencodeKey(dst, "cas")
		dst = appendBencodeInt(dst, a.CAS)
	}
	dst = appendBencodeKey(dst, "id")
	dst = appendBencodeString(dst, a.ID[:])
	if method == methodAnnouncePeer && a.ImpliedPort {
		dst = appendBencodeKey(dst, "implied_port")
		dst = appendBencodeInt(dst, 1)
	}
	if method == methodGetPeers || method == methodAnnouncePeer {
		dst = appendBencodeKey(dst, "info_hash")
		dst = appendBencodeString(dst, a.InfoHash[:])
	}
	if mutable {
		dst = appendBencodeKey(dst, "k")
		dst = appendBencodeString(dst, a.K[:])
	}
	if method == methodAnnouncePeer && a.Port != 0 {
		dst = appendBencodeKey(dst, "port")
		dst = appendBencodeInt(dst, int64(a.Port))
	}
	if mutable && a.Salt != nil {
		dst = appendBencodeKey(dst, "salt")
		dst = appendBencodeString(dst, a.Salt)
	}
	if mutable || (method == methodGet && a.HasSeq) {
		dst = appendBencodeKey(dst, "seq")
		dst = appendBencodeInt(dst, a.Seq)
	}
	if mutable {
		dst = appendBencodeKey(dst, "sig")
		dst = appendBencodeString(dst, a.Sig[:])
	}
	if method == methodFindNode || method == methodGet {
		dst = appendBencodeKey(dst, "target")
		dst = appendBencodeString(dst, a.Target[:])
	}
	if method == methodAnnouncePeer || method == methodPut {
		dst = appendBencodeKey(dst, "token")
		dst = appendBencodeString(dst, a.Token)
	}
	if method == methodPut {
		dst = appendBencodeKey(dst, "v")
		dst = append(dst, a.V...)
	}
	if a.Want&(wantN4|wantN6) != 0 && (method == methodFindNode || method == methodGetPeers || method == methodGet) {
		dst = appendWant(dst, a.Want)
	}
	return append(dst, 'e')
}

func appendWant(dst []byte, want uint8) []byte {
	dst = appendBencodeKey(dst, "want")
	dst = append(dst, 'l')
	if want&wantN4 != 0 {
		dst = appendBencodeKey(dst, "n4")
	}
	if want&wantN6 != 0 {
		dst = appendBencodeKey(dst, "n6")
	}
	return append(dst, 'e')
}

// appendTo appends the "r" dict.
func (r *krpcReply) appendTo(dst []byte) []byte {
	dst = append(dst, 'd')
	dst = appendBencodeKey(dst, "id")
	dst = appendBencodeString(dst, r.ID[:])
	if r.HasK {
		dst = appendBencodeKey(dst, "k")
		dst = appendBencodeString(dst, r.K[:])
	}
	if r.Nodes != nil {
		dst = appendBencodeKey(dst, "nodes")
		dst = appendBencodeString(dst, r.Nodes)
	}
	if r.Nodes6 != nil {
		dst = appendBencodeKey(dst, "nodes6")
		dst = appendBencodeString(dst, r.Nodes6)
	}
	if r.HasSeq {
		dst = appendBencodeKey(dst, "seq")
		dst = appendBencodeInt(dst, r.Seq)
	}
	if r.HasK {
		dst = appendBencodeKey(dst, "sig")
		dst = appendBencodeString(dst, r.Sig[:])
	}
	if r.Token != nil {
		dst = appendBencodeKey(dst, "token")
		dst = appendBencodeString(dst, r.Token)
	}
	if r.V != nil {
		dst = appendBencodeKey(dst, "v")
		dst = append(dst, r.V...)
	}
	if r.Values != nil {
		dst = appendBencodeKey(dst, "values")
		dst = append(dst, r.Values...)
	}
	return append(dst, 'e')
}

// parseCompactAddr reads "compact IP-address/port info": 4 or 16 address
// bytes, then the port, big-endian. An IPv4-mapped address in the 18-byte
// form is refused: IPv4 has its own form, and one address has one encoding.
func parseCompactAddr(b []byte) (netip.AddrPort, error) {
	var ip netip.Addr
	switch len(b) {
	case compactAddr4Len:
		ip = netip.AddrFrom4([4]byte(b[:4]))
	case compactAddr6Len:
		ip = netip.AddrFrom16([16]byte(b[:16]))
		if ip.Is4In6() {
			return netip.AddrPort{}, fmt.Errorf("krpc: %w", errKRPCMappedV4)
		}
	default:
		return netip.AddrPort{}, fmt.Errorf("krpc: %w: %d bytes, want %d or %d", errKRPCCompact, len(b), compactAddr4Len, compactAddr6Len)
	}
	n := len(b)
	return netip.AddrPortFrom(ip, uint16(b[n-2])<<8|uint16(b[n-1])), nil
}

// appendCompactAddr appends the 6- or 18-byte compact form of a; an
// IPv4-mapped address is written as IPv4. An invalid address appends nothing.
func appendCompactAddr(dst []byte, a netip.AddrPort) []byte {
	ip := a.Addr().Unmap()
	switch {
	case ip.Is4():
		b := ip.As4()
		dst = append(dst, b[:]...)
	case ip.Is6():
		b := ip.As16()
		dst = append(dst, b[:]...)
	default:
		return dst
	}
	return append(dst, byte(a.Port()>>8), byte(a.Port()))
}

// appendCompactAddrString appends the compact form as a bencode string.
func appendCompactAddrString(dst []byte, a netip.AddrPort) []byte {
	if a.Addr().Unmap().Is4() {
		dst = append(dst, '6', ':')
	} else {
		dst = append(dst, '1', '8', ':')
	}
	return appendCompactAddr(dst, a)
}

// checkCompactNodes6 validates "nodes6": whole 38-byte entries with no
// IPv4-mapped address.
func checkCompactNodes6(raw []byte) error {
	if len(raw)%compactNode6Len != 0 {
		return fmt.Errorf("%w: %d bytes, want a multiple of %d", errKRPCSize, len(raw), compactNode6Len)
	}
	for off := 0; off < len(raw); off += compactNode6Len {
		if _, err := parseCompactAddr(raw[off+idLen : off+compactNode6Len]); err != nil {
			return err
		}
	}
	return nil
}

// parseCompactNodes reads "nodes": 26-byte entries (id || IPv4 || port).
func parseCompactNodes(raw []byte) ([]nodeInfo, error) {
	if len(raw)%compactNodeLen != 0 {
		return nil, fmt.Errorf("krpc: nodes: %w: %d bytes, want a multiple of %d", errKRPCSize, len(raw), compactNodeLen)
	}
	return parseNodeEntries(raw, compactNodeLen)
}

// parseCompactNodes6 reads "nodes6": 38-byte entries (id || IPv6 || port).
func parseCompactNodes6(raw []byte) ([]nodeInfo, error) {
	if err := checkCompactNodes6(raw); err != nil {
		return nil, fmt.Errorf("krpc: nodes6: %w", err)
	}
	return parseNodeEntries(raw, compactNode6Len)
}

func parseNodeEntries(raw []byte, size int) ([]nodeInfo, error) {
	ns := make([]nodeInfo, 0, len(raw)/size)
	for off := 0; off < len(raw); off += size {
		var n nodeInfo
		copy(n.ID[:], raw[off:off+idLen])
		var err error
		if n.Addr, err = parseCompactAddr(raw[off+idLen : off+size]); err != nil {
			return nil, err
		}
		ns = append(ns, n)
	}
	return ns, nil
}

// appendCompactNodes appends the IPv4 entries of ns as compact node info
// (the raw "nodes" string contents); other entries are skipped.
func appendCompactNodes(dst []byte, ns []nodeInfo) []byte {
	for _, n := range ns {
		if n.Addr.Addr().Unmap().Is4() {
			dst = append(dst, n.ID[:]...)
			dst = appendCompactAddr(dst, n.Addr)
		}
	}
	return dst
}

// appendCompactNodes6 appends the IPv6 entries of ns (not IPv4-mapped ones).
func appendCompactNodes6(dst []byte, ns []nodeInfo) []byte {
	for _, n := range ns {
		if ip := n.Addr.Addr(); ip.Is6() && !ip.Is4In6() {
			dst = append(dst, n.ID[:]...)
			dst = appendCompactAddr(dst, n.Addr)
		}
	}
	return dst
}

// walkPeers validates a "values" list (strings of 6 or 18 bytes) and calls
// fn, if not nil, with each peer.
func walkPeers(values []byte, fn func(netip.AddrPort)) error {
	if len(values) < 2 || values[0] != 'l' {
		return fmt.Errorf("%w: want list", errKRPCType)
	}
	off := 1
	for off < len(values) && values[off] != 'e' {
		if !isDigit(values[off]) {
			return fmt.Errorf("%w: want list of strings", errKRPCType)
		}
		s, end, err := scanString(values, off)
		if err != nil {
			return err
		}
		a, err := parseCompactAddr(s)
		if err != nil {
			return err
		}
		if fn != nil {
			fn(a)
		}
		off = end
	}
	if off != len(values)-1 {
		return fmt.Errorf("%w: malformed list", errKRPCType)
	}
	return nil
}

// parsePeers reads the peers of krpcReply.Values.
func parsePeers(values []byte) ([]netip.AddrPort, error) {
	var peers []netip.AddrPort
	err := walkPeers(values, func(a netip.AddrPort) { peers = append(peers, a) })
	if err != nil {
		return nil, fmt.Errorf("krpc: values: %w", err)
	}
	return peers, nil
}

// appendPeerList appends a bencoded list of compact peers, for
// krpcReply.Values. Invalid addresses are skipped.
func appendPeerList(dst []byte, peers []netip.AddrPort) []byte {
	dst = append(dst, 'l')
	for _, a := range peers {
		if a.Addr().IsValid() {
			dst = appendCompactAddrString(dst, a)
		}
	}
	return append(dst, 'e')
}
