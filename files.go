// Atomic file writes and wiping (SPEC.md 6.7) shared by everything kadchat
// keeps on disk: the identity, the contacts, the outbox and the routing table.
//
// Flow: writeFileAtomic writes a temporary file beside the target, fsyncs
// it, renames it over the target and fsyncs the directory, so a reader sees
// either the old file or the new one, never a torn mix, even after SIGKILL
// or power loss. A file that held text which must not outlive it (the
// outbox replaced by a compaction) is overwritten with zeros once no name
// leads to it any more (wipeFile); removeStaleTemps wipes and removes the
// temporary files a crash left behind.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Bounds on reading the data directory's files (SPEC.md 6.7): a file
// larger than kadchat ever writes is not one of its own, and reading it
// whole would let it take any amount of memory.
const (
	maxSmallFile = 64 << 10 // the key file, the lock's pid, the remembered port
	maxStateFile = 64 << 20 // contacts, timestamps, PQ secrets, drops: 400,000 contacts' records
)

// readFileMax reads path whole, or fails without reading further if it
// holds more than max bytes. A missing file's error is os.ErrNotExist.
func readFileMax(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is over %d bytes: not a file kadchat wrote", path, max)
	}
	return b, nil
}

// writeFileAtomic writes data to a temporary file in the same directory,
// fsyncs it, renames it over path and fsyncs the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("file: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	ok = true
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("file: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("file: sync %s: %w", dir, err)
	}
	return nil
}

// wipeChunk is how many zeros wipeFile writes per call.
const wipeChunk = 64 << 10

// wipeFile overwrites the whole of f with zeros, fsyncs and closes it. It is
// for a file that no name leads to any more (renamed over, or about to be
// removed): overwriting a file that is still someone's durable state would
// break its crash safety. Whether the old bytes are really gone is the
// file system's and the device's business (SPEC.md 6.7).
func wipeFile(f *os.File) error {
	err := zeroFile(f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("file: wipe: %w", cerr)
	}
	return err
}

func zeroFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("file: wipe: %w", err)
	}
	zeros := make([]byte, min(fi.Size(), wipeChunk))
	for off := int64(0); off < fi.Size(); off += int64(len(zeros)) {
		n := min(int64(len(zeros)), fi.Size()-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return fmt.Errorf("file: wipe: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("file: wipe: %w", err)
	}
	return nil
}

// removeStaleTemps wipes and removes the temporary files writeFileAtomic
// leaves beside path when a crash stops it before the rename: one may hold
// text that has left the real file since. Only one kadchat uses a data
// directory at a time (lock.go), so no other writer owns such a file.
func removeStaleTemps(path string) error {
	dir, prefix := filepath.Dir(path), "."+filepath.Base(path)+".tmp"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("file: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		tmp := filepath.Join(dir, e.Name())
		if f, err := os.OpenFile(tmp, os.O_WRONLY, 0); err == nil {
			errs = append(errs, wipeFile(f))
		}
		if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("file: %w", err))
		}
	}
	return errors.Join(errs...)
}
