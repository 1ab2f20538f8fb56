// Atomic file writes (SPEC.md 6.7) shared by everything kadchat keeps on
// disk: the identity, the contacts, the outbox and the routing table.
//
// Flow: writeFileAtomic writes a temporary file beside the target, fsyncs
// it, renames it over the target and fsyncs the directory, so a reader sees
// either the old file or the new one, never a torn mix, even after SIGKILL
// or power loss.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

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
