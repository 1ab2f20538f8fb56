package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// Every key, invitation code and command line README.md shows is one the
// program accepts (issue 8 item 11: its example code was rejected).
func TestREADMEExamples(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	keys := regexp.MustCompile(`\bkc1[a-z2-7]{10,}\b`).FindAllString(readme, -1)
	codes := regexp.MustCompile(`\b\d+-[a-z]+-[a-z]+\b`).FindAllString(readme, -1)
	if len(keys) == 0 || len(codes) == 0 {
		t.Fatalf("README.md: %d keys and %d codes found; want some of each", len(keys), len(codes))
	}
	for _, k := range keys {
		if _, err := parsePublicKey(k); err != nil {
			t.Errorf("README.md key %s: %v", k, err)
		}
	}
	for _, c := range codes {
		if _, _, err := parseInviteCode(c); err != nil {
			t.Errorf("README.md code %s: %v", c, err)
		}
	}
	// Every command shown in backquotes is one the UI knows.
	known := map[string]bool{}
	for _, c := range commands {
		known[c.name] = true
	}
	for _, m := range regexp.MustCompile("`(/[a-z_]+)[ `]").FindAllStringSubmatch(readme, -1) {
		if name := strings.ToLower(m[1]); !known[name] {
			t.Errorf("README.md shows %s, which is not a command", m[1])
		}
	}
	// The whole "id KEY" line pastes as a key.
	for _, k := range keys {
		if _, err := parsePublicKey(cleanKey("id " + k)); err != nil {
			t.Errorf("pasting %q: %v", "id "+k, err)
		}
	}
}
