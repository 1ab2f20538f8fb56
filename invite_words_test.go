// Tests of the word lists (SPEC.md 7.1): the lists printed in SPEC.md
// are the program's, and their checksums hold.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// wordListDigest is SHA-256 over SPEC.md 7.1's canonical serialisation:
// each word in index order followed by a line feed.
func wordListDigest(words []string) string {
	h := sha256.New()
	for _, w := range words {
		h.Write([]byte(w + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestInviteWordsSpec reads the invite-words blocks of SPEC.md: each has
// 16 lines of 16 words keyed by the first word's index in hex, then the
// checksum; the words must be the program's, in order.
func TestInviteWordsSpec(t *testing.T) {
	lists := map[string]*[256]string{"even": &pgpEven, "odd": &pgpOdd}
	var wantKeys []string
	for row := 0; row < 256; row += 16 {
		wantKeys = append(wantKeys, fmt.Sprintf("%02x", row))
	}
	wantKeys = append(wantKeys, "sha256")
	seen := map[string]bool{}
	for _, b := range specBlocks(t, "invite-words") {
		list := lists[b.name]
		if list == nil || seen[b.name] || b.body != "" {
			t.Fatalf("SPEC.md invite-words %s: unknown, repeated, or with a body line %q", b.name, b.body)
		}
		seen[b.name] = true
		if !slices.Equal(b.keys, wantKeys) {
			t.Fatalf("SPEC.md invite-words %s: keys %v, want %v", b.name, b.keys, wantKeys)
		}
		var words []string
		for _, k := range wantKeys[:16] {
			row := strings.Fields(b.fields[k])
			if len(row) != 16 {
				t.Errorf("SPEC.md invite-words %s line %s: %d words, want 16", b.name, k, len(row))
			}
			words = append(words, row...)
		}
		if !slices.Equal(words, list[:]) {
			for i := range min(len(words), len(list)) {
				if words[i] != list[i] {
					t.Errorf("SPEC.md %s[%02x] = %q, program has %q", b.name, i, words[i], list[i])
				}
			}
			t.Fatalf("SPEC.md invite-words %s differs from the program's list", b.name)
		}
		if got := wordListDigest(list[:]); got != b.fields["sha256"] {
			t.Errorf("SHA-256 of the %s list = %s, SPEC.md says %s", b.name, got, b.fields["sha256"])
		}
	}
	if len(seen) != len(lists) {
		t.Errorf("SPEC.md has invite-words blocks for %v, want even and odd", seen)
	}
}

// TestInviteWordsForm checks what SPEC.md 7.1 says of the lists: 512
// distinct words, lowercase ASCII letters only.
func TestInviteWordsForm(t *testing.T) {
	all := append(slices.Clone(pgpEven[:]), pgpOdd[:]...)
	seen := map[string]bool{}
	for _, w := range all {
		if w == "" || strings.Trim(w, "abcdefghijklmnopqrstuvwxyz") != "" || seen[w] {
			t.Errorf("word %q is empty, not lowercase ASCII, or repeated", w)
		}
		seen[w] = true
	}
}
