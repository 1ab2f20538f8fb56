package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readFileMax reads up to its bound and refuses one byte more.
func TestReadFileMax(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if _, err := readFileMax(path, 4); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err %v, want os.ErrNotExist", err)
	}
	for _, tt := range []struct {
		data string
		ok   bool
	}{{"", true}, {"abcd", true}, {"abcde", false}} {
		if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := readFileMax(path, 4)
		if (err == nil) != tt.ok || tt.ok && string(b) != tt.data {
			t.Errorf("%q with a bound of 4: %q, %v", tt.data, b, err)
		}
	}
}

// A data file bigger than kadchat ever writes stops the start with one
// error line, and is left as it was (SPEC.md 6.7): reading it whole would
// take any amount of memory. The files are sparse: no test writes 64 MiB.
func TestE2EOversizedDataFiles(t *testing.T) {
	bin := kadchatBinary(t)
	run := func(dir string) (string, int) {
		cmd := exec.Command(bin, "-dir", dir, "-listen", "127.0.0.1:0", "-bootstrap", "127.0.0.1:1")
		cmd.Stdin = strings.NewReader("")
		var e strings.Builder
		cmd.Stderr = &e
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return e.String(), exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return e.String(), 0
	}
	seed := t.TempDir()
	if e, code := run(seed); code != 0 { // makes an identity the others copy
		t.Fatalf("first start: exit %d, %q", code, e)
	}
	id, err := os.ReadFile(filepath.Join(seed, identityFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		file string
		max  int64
	}{
		{identityFile, maxSmallFile},
		{contactsFile, maxStateFile},
		{timestampsFile, maxStateFile},
		{pqFileName, maxStateFile},
		{dropsFile, maxStateFile},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, identityFile), id, 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, tt.file)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(tt.max + 1); err != nil {
			t.Fatal(err)
		}
		f.Close()
		e, code := run(dir)
		if code != 1 || strings.Count(e, "\n") != 1 || !strings.HasPrefix(e, "error: ") || !strings.Contains(e, "not a file kadchat wrote") {
			t.Errorf("%s of %d bytes: exit %d, stderr %q; want one error line", tt.file, tt.max+1, code, e)
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() != tt.max+1 {
			t.Errorf("%s was changed: %v", tt.file, err)
		}
	}
}
