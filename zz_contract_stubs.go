// TEMPORARY: panicking stubs with the exact signatures of contracts A, B and
// C, so the DHT compiles while those parts are written in parallel. Deleted
// as soon as the real code is merged into main.
package main

import (
	"crypto/ed25519"
	"io"
	"net/netip"
	"time"
)

// --- A. codec

func checkBencode(b []byte) error                 { panic("unimplemented") }
func appendBencodeString(dst, s []byte) []byte    { panic("unimplemented") }
func appendBencodeInt(dst []byte, i int64) []byte { panic("unimplemented") }

const (
	krpcErrGeneric       = 201
	krpcErrServer        = 202
	krpcErrProtocol      = 203
	krpcErrMethodUnknown = 204
)
const krpcVersion = "KC\x00\x01"

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

func (m krpcMethod) String() string { panic("unimplemented") }

const (
	wantN4 = 1 << iota
	wantN6
)

type krpcMsg struct {
	TID      []byte
	Type     byte
	Method   krpcMethod
	Version  []byte
	IP       netip.AddrPort
	ReadOnly bool
	Args     krpcArgs
	Reply    krpcReply
	ErrCode  int
	ErrMsg   []byte
}
type krpcArgs struct {
	ID          nodeID
	Target      nodeID
	InfoHash    nodeID
	Port        uint16
	ImpliedPort bool
	Token       []byte
	Want        uint8
	Seq         int64
	HasSeq      bool
	V           []byte
	K           [32]byte
	HasK        bool
	Sig         [64]byte
	Salt        []byte
	CAS         int64
	HasCAS      bool
}
type krpcReply struct {
	ID     nodeID
	Nodes  []byte
	Nodes6 []byte
	Token  []byte
	Values []byte
	V      []byte
	K      [32]byte
	HasK   bool
	Sig    [64]byte
	Seq    int64
	HasSeq bool
}
type krpcBadQuery struct {
	TID []byte
	Err error
}

func (e *krpcBadQuery) Error() string { panic("unimplemented") }

func parseKRPC(b []byte) (krpcMsg, error)                      { panic("unimplemented") }
func (m *krpcMsg) appendTo(dst []byte) []byte                  { panic("unimplemented") }
func parseCompactNodes(raw []byte) ([]nodeInfo, error)         { panic("unimplemented") }
func parseCompactNodes6(raw []byte) ([]nodeInfo, error)        { panic("unimplemented") }
func appendCompactNodes(dst []byte, ns []nodeInfo) []byte      { panic("unimplemented") }
func appendCompactNodes6(dst []byte, ns []nodeInfo) []byte     { panic("unimplemented") }
func parsePeers(values []byte) ([]netip.AddrPort, error)       { panic("unimplemented") }
func appendPeerList(dst []byte, peers []netip.AddrPort) []byte { panic("unimplemented") }
func appendCompactAddr(dst []byte, a netip.AddrPort) []byte    { panic("unimplemented") }
func parseCompactAddr(b []byte) (netip.AddrPort, error)        { panic("unimplemented") }

// --- B. routing (the rest of the skeleton in routing.go)

const bucketSize = 8
const bucketRefresh = 15 * time.Minute

func (t *routingTable) self() nodeID                                       { panic("unimplemented") }
func (t *routingTable) heard(n nodeInfo, responded bool) []nodeInfo        { panic("unimplemented") }
func (t *routingTable) failed(n nodeInfo)                                  { panic("unimplemented") }
func (t *routingTable) refreshTargets() []nodeID                           { panic("unimplemented") }
func (t *routingTable) nodes() []nodeInfo                                  { panic("unimplemented") }
func xorLess(target, a, b nodeID) bool                                     { panic("unimplemented") }
func secureNodeID(ip netip.Addr, rand io.Reader) (nodeID, error)           { panic("unimplemented") }
func isSecureNodeID(id nodeID, ip netip.Addr) bool                         { panic("unimplemented") }
func isExemptBEP42(ip netip.Addr) bool                                     { panic("unimplemented") }
func saveRoutingTable(path string, self nodeID, ns []nodeInfo) error       { panic("unimplemented") }
func loadRoutingTable(path string) (self nodeID, ns []nodeInfo, err error) { panic("unimplemented") }

type ipVoter struct{}

func (v *ipVoter) vote(voter netip.Addr, claimed netip.AddrPort) (netip.AddrPort, bool) {
	panic("unimplemented")
}
func (v *ipVoter) external() (netip.AddrPort, bool) { panic("unimplemented") }

// --- C. storage

const tokenRotation = 5 * time.Minute

type tokenBox struct{}

func newTokenBox(rand io.Reader, now func() time.Time) *tokenBox { panic("unimplemented") }
func (b *tokenBox) issue(ip netip.Addr) []byte                   { panic("unimplemented") }
func (b *tokenBox) valid(tok []byte, ip netip.Addr) bool         { panic("unimplemented") }

type peerStore struct{}

func newPeerStore(now func() time.Time) *peerStore                   { panic("unimplemented") }
func (s *peerStore) add(infohash nodeID, peer netip.AddrPort)        { panic("unimplemented") }
func (s *peerStore) peers(infohash nodeID, max int) []netip.AddrPort { panic("unimplemented") }
func (s *peerStore) infohashes() int                                 { panic("unimplemented") }

const (
	bep44ErrTooBig     = 205
	bep44ErrSig        = 206
	bep44ErrSaltTooBig = 207
	bep44ErrCAS        = 301
	bep44ErrSeq        = 302
)
const (
	maxItemValue = 1000
	maxSalt      = 64
)

type bep44Item struct {
	V       []byte
	Mutable bool
	K       [32]byte
	Salt    []byte
	Seq     int64
	Sig     [64]byte
}
type bep44Error struct {
	Code int
	Msg  string
}

func (e *bep44Error) Error() string                            { panic("unimplemented") }
func immutableTarget(v []byte) nodeID                          { panic("unimplemented") }
func mutableTarget(k [32]byte, salt []byte) nodeID             { panic("unimplemented") }
func mutableSigBuffer(salt []byte, seq int64, v []byte) []byte { panic("unimplemented") }
func signItem(priv ed25519.PrivateKey, salt []byte, seq int64, v []byte) bep44Item {
	panic("unimplemented")
}
func verifyItem(it bep44Item) error { panic("unimplemented") }

type itemStore struct{}

func newItemStore(now func() time.Time) *itemStore                  { panic("unimplemented") }
func (s *itemStore) put(it bep44Item, cas int64, hasCAS bool) error { panic("unimplemented") }
func (s *itemStore) get(target nodeID) (bep44Item, bool)            { panic("unimplemented") }
