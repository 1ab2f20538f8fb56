// TEMPORARY until sessions land: the coordinator deletes this file at merge.
// The real publicKey, its String() and parsePublicKey live in handshake.go
// (contract D); these stubs use plain hex so the chat core builds alone.
package main

import (
	"encoding/hex"
	"fmt"
)

type publicKey [32]byte

func (k publicKey) String() string { return hex.EncodeToString(k[:]) }

func parsePublicKey(s string) (publicKey, error) {
	var k publicKey
	if len(s) != 64 {
		return k, fmt.Errorf("key: %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return publicKey{}, fmt.Errorf("key: %q: %w", s, err)
	}
	return k, nil
}
