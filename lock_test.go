package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A second lock on one directory fails and names the holder; after
// release it succeeds. (flock locks belong to an open file, so two opens
// in one process conflict like two processes.)
func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	l, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDir(dir)
	var inUse *dirInUseError
	if !errors.As(err, &inUse) || inUse.pid != os.Getpid() {
		t.Fatalf("second lockDir = %v, want in use by pid %d", err, os.Getpid())
	}
	l.release()
	l, err = lockDir(dir)
	if err != nil {
		t.Fatalf("lockDir after release: %v", err)
	}
	l.release()
}

// dirState lists a directory's files with their sizes and times.
func dirState(t *testing.T, dir string) string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range es {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %d %v\n", e.Name(), fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// Issue 8 item 1: a second kadchat on one data directory exits 1 with the
// first one's pid before touching any file; after the first is killed
// (SIGKILL), the kernel's release lets the next one start.
func TestE2EOneProcessPerDir(t *testing.T) {
	u := newUser(t, "hana", "127.0.0.1:1")
	p := u.start(t)
	p.send("/add ivan %s", testKey(t))
	p.expect("* added ivan", 5*time.Second)
	before := dirState(t, u.dir)
	cmd := exec.Command(kadchatBinary(t), "-listen", "127.0.0.1:0", "-bootstrap", u.boot, "-dir", u.dir)
	cmd.Stdin = strings.NewReader("/add jack " + testKey(t) + "\n")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("second process: %v, want exit status 1", err)
	}
	want := fmt.Sprintf("error: %s is in use by another kadchat (pid %d)\n", u.dir, p.cmd.Process.Pid)
	if stderr.String() != want || stdout.String() != "" {
		t.Fatalf("second process: stdout %q, stderr %q; want only %q on stderr", stdout.String(), stderr.String(), want)
	}
	if after := dirState(t, u.dir); after != before {
		t.Fatalf("the second process changed the directory:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	p.kill()
	p = u.start(t)
	p.send("/contacts")
	p.expect("contact ivan", 5*time.Second)
	p.quit()
}

// testKey makes a fresh identity and returns its key's text form.
func testKey(t *testing.T) string {
	t.Helper()
	id, err := loadOrCreateIdentity(t.TempDir(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id.public().String()
}

// The lock file is in the data directory; nothing else is named like it.
func TestLockFileName(t *testing.T) {
	dir := t.TempDir()
	l, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.release()
	b, err := os.ReadFile(filepath.Join(dir, lockFile))
	if err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(os.Getpid()) {
		t.Fatalf("lock file holds %q, %v; want our pid", b, err)
	}
}
