// The post-quantum secrets file (SPEC.md 4.12, 5.5, 6.7).
//
// Flow: openPQStore reads the file once at start (a corrupt one stops the
// start, and is never replaced) and wipes what a crash left of earlier
// writes; newSessionManager takes the records it read. After each exchange,
// and when a contact is removed, the session layer hands save the PSKs of
// every contact; save writes them atomically, mode 0600, then overwrites the
// file it replaced with zeros, so an erased PSK leaves the file system's
// live data (SPEC.md 6.7 says where that is not enough).
package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

const (
	pqFileName   = "pqsecrets"
	pqFileHeader = "kadchat pq v1"
	pqStateNew   = "new"  // no handshake has used a post-quantum PSK yet
	pqStateUsed  = "used" // one has: the zero PSK is refused
)

// pqRecord is one line of the file: a contact's PSKs, newest first.
type pqRecord struct {
	key  publicKey
	used bool
	psks [][noiseKeyLen]byte
}

var errPQFile = errors.New("session: pqsecrets")

// parsePQFile reads the file strictly: the header line, then one line per
// contact, sorted by key text, each "key state psk [psk]".
func parsePQFile(b []byte) ([]pqRecord, error) {
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 || lines[0] != pqFileHeader || lines[len(lines)-1] != "" {
		return nil, fmt.Errorf("%w: not a %q file", errPQFile, pqFileHeader)
	}
	var recs []pqRecord
	prev := ""
	for i, l := range lines[1 : len(lines)-1] {
		r, err := parsePQLine(l)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", errPQFile, i+2, err)
		}
		if k := r.key.String(); k <= prev {
			return nil, fmt.Errorf("%w: line %d: keys out of order or repeated", errPQFile, i+2)
		} else {
			prev = k
		}
		recs = append(recs, r)
	}
	return recs, nil
}

func parsePQLine(l string) (pqRecord, error) {
	f := strings.Split(l, " ")
	if len(f) < 3 || len(f) > 2+pqKept {
		return pqRecord{}, errors.New("want key, state and one or two PSKs, separated by single spaces")
	}
	var r pqRecord
	var err error
	if r.key, err = parsePublicKey(f[0]); err != nil {
		return pqRecord{}, err
	}
	switch f[1] {
	case pqStateNew:
	case pqStateUsed:
		r.used = true
	default:
		return pqRecord{}, fmt.Errorf("state %q is neither %q nor %q", f[1], pqStateNew, pqStateUsed)
	}
	for _, h := range f[2:] {
		var psk [noiseKeyLen]byte
		if len(h) != hex.EncodedLen(noiseKeyLen) || strings.ToLower(h) != h {
			return pqRecord{}, errors.New("a PSK is not 64 lowercase hex digits")
		}
		if _, err := hex.Decode(psk[:], []byte(h)); err != nil {
			return pqRecord{}, errors.New("a PSK is not 64 lowercase hex digits")
		}
		if psk == zeroPSK || slices.Contains(r.psks, psk) {
			return pqRecord{}, errors.New("a PSK is zero or repeated")
		}
		r.psks = append(r.psks, psk)
	}
	return r, nil
}

// formatPQFile writes recs in the file's layout, sorted by key text.
func formatPQFile(recs []pqRecord) []byte {
	recs = slices.Clone(recs)
	slices.SortFunc(recs, func(a, b pqRecord) int { return strings.Compare(a.key.String(), b.key.String()) })
	var b bytes.Buffer
	b.WriteString(pqFileHeader + "\n")
	for _, r := range recs {
		state := pqStateNew
		if r.used {
			state = pqStateUsed
		}
		b.WriteString(r.key.String() + " " + state)
		for _, psk := range r.psks {
			b.WriteString(" " + hex.EncodeToString(psk[:]))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// pqStore is the file in a data directory. save may be called from any
// goroutine; writes happen one at a time.
type pqStore struct {
	path   string
	loaded []pqRecord // what the file held at start, for newSessionManager
	mu     sync.Mutex
}

// openPQStore reads dir's file, if any, and removes what a crash left of
// an unfinished write (which may hold PSKs erased since).
func openPQStore(dir string) (*pqStore, error) {
	s := &pqStore{path: filepath.Join(dir, pqFileName)}
	if err := removeStaleTemps(s.path); err != nil {
		return nil, err
	}
	b, err := readFileMax(s.path, maxStateFile)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errPQFile, err)
	}
	defer wipe(b)
	if s.loaded, err = parsePQFile(b); err != nil {
		return nil, err
	}
	return s, nil
}

// save replaces the file with recs and wipes the one it replaced.
func (s *pqStore) save(recs []pqRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data := formatPQFile(recs)
	defer wipe(data)
	old, err := os.OpenFile(s.path, os.O_WRONLY, 0)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %w", errPQFile, err)
	}
	if err := writeFileAtomic(s.path, data, 0o600); err != nil {
		if old != nil {
			old.Close()
		}
		return fmt.Errorf("%w: %w", errPQFile, err)
	}
	if old != nil {
		return wipeFile(old)
	}
	return nil
}
