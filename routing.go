// Routing table (BEP 5): 160-bit ids, k-buckets, XOR metric.
//
// SKELETON: the shared types are final; the table is to be written.
package main

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"time"
)

// idLen is the length of a node id and of an infohash (BEP 5).
const idLen = 20

// nodeID is a 160-bit DHT id; infohashes and BEP 44 targets share the type.
type nodeID [idLen]byte

func (id nodeID) String() string { return hex.EncodeToString(id[:]) }

// parseNodeID parses 40 hex digits (either case).
func parseNodeID(s string) (nodeID, error) {
	var id nodeID
	if len(s) != 2*idLen {
		return id, fmt.Errorf("routing: id %q: want %d hex digits", s, 2*idLen)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return nodeID{}, fmt.Errorf("routing: id %q: %w", s, err)
	}
	return id, nil
}

// nodeInfo is a contact in the DHT: an id and the address it answers on.
type nodeInfo struct {
	ID   nodeID
	Addr netip.AddrPort
}

// routingTable: SKELETON, see the routing helper's contract.
type routingTable struct{}

func newRoutingTable(self nodeID, now func() time.Time) *routingTable { panic("unimplemented") }
func (t *routingTable) closest(target nodeID, n int) []nodeInfo       { panic("unimplemented") }
func (t *routingTable) size() int                                     { panic("unimplemented") }
