package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
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

// specSectionsRE finds the SPEC.md sections a file's first comment line
// names: "(SPEC.md 3.4.1, 3.4.2, 3.4.4)", "(SPEC.md 4.2-4.4)".
var specSectionsRE = regexp.MustCompile(`SPEC\.md (\d+(?:\.\d+)*(?:-\d+(?:\.\d+)*)?(?:, \d+(?:\.\d+)*(?:-\d+(?:\.\d+)*)?)*)`)

// README.md's layout table has one row per production file, names only
// files that exist, and gives each file the SPEC.md sections its first
// comment line names ("—" for none), so that the table cannot rot.
func TestREADMELayout(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, layout, ok := strings.Cut(string(b), "\n## Layout\n")
	if !ok {
		t.Fatal("README.md has no Layout section")
	}
	layout, _, _ = strings.Cut(layout, "\n## ")
	rows := map[string]string{} // file -> its SPEC.md cell
	for _, line := range strings.Split(layout, "\n") {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| `") || len(cells) != 5 {
			continue
		}
		file := strings.Trim(strings.TrimSpace(cells[1]), "`")
		if _, dup := rows[file]; dup {
			t.Errorf("README.md layout: %s has two rows", file)
		}
		rows[file] = strings.TrimSpace(cells[2])
		if _, err := os.Stat(file); err != nil {
			t.Errorf("README.md layout names %s: %v", file, err)
		}
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(string(src), "\n")
		want := "—"
		if m := specSectionsRE.FindStringSubmatch(first); m != nil {
			want = m[1]
		}
		got, ok := rows[f]
		switch {
		case !ok:
			t.Errorf("README.md layout has no row for %s (SPEC.md %s)", f, want)
		case got != want:
			t.Errorf("README.md layout: %s implements SPEC.md %q, its first line says %q", f, got, want)
		}
	}
}

// The fuzz targets README.md lists and the ones .ci/run smoke-tests are
// exactly the Fuzz functions of the tests.
func TestFuzzTargetsListed(t *testing.T) {
	fuzzRE := regexp.MustCompile(`\bFuzz[A-Z]\w*`)
	tests, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range tests {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`(?m)^func (Fuzz\w+)\(`).FindAllStringSubmatch(string(src), -1) {
			want = append(want, m[1])
		}
	}
	slices.Sort(want)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, more, _ := strings.Cut(string(readme), "\n## More tests and measurements\n")
	more, _, _ = strings.Cut(more, "\n## ")
	ci, err := os.ReadFile(".ci/run")
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"README.md": more, ".ci/run": string(ci)} {
		got := fuzzRE.FindAllString(text, -1)
		slices.Sort(got)
		if got = slices.Compact(got); !slices.Equal(got, want) {
			t.Errorf("%s lists the fuzz targets %v, want %v", name, got, want)
		}
	}
}
