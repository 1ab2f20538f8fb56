// The timestamps file (SPEC.md 4.11): the newest initiation timestamp
// accepted from each contact, kept across restarts so that a recorded
// initiation cannot be replayed to a responder that restarted.
//
// Flow: the program loads the file (loadTimestamps) into the session
// manager's config; the manager's timestampStore hands each contact its
// timestamp as the contact is added. Whenever a contact's accepted
// timestamp changes, or a contact is removed, the store wakes the timer
// goroutine (timers.go), which rewrites the whole file atomically; it
// writes once more as it stops. Writing off the packet path keeps a burst
// of handshakes from waiting on the disk.
package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// The timestamps file (SPEC.md 4.11).
const (
	timestampsFile   = "timestamps"
	timestampsHeader = "kadchat timestamps v1"
)

var errTimestampsCorrupt = errors.New("session: corrupt timestamps file")

// parseTimestamps parses the file strictly: the header line, then one line
// per contact, "KEY HEX" with the key's text form and the 24 lowercase hex
// digits of the TAI64N label, sorted by key and each key once, every line
// ending in a line feed.
func parseTimestamps(b []byte) (map[publicKey][timestampLen]byte, error) {
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 || lines[0] != timestampsHeader || lines[len(lines)-1] != "" {
		return nil, fmt.Errorf("%w: bad header or last line", errTimestampsCorrupt)
	}
	out := map[publicKey][timestampLen]byte{}
	prev := ""
	for i, line := range lines[1 : len(lines)-1] {
		keyText, tsHex, ok := strings.Cut(line, " ")
		ts, err := hex.DecodeString(tsHex)
		if !ok || err != nil || len(ts) != timestampLen || tsHex != hex.EncodeToString(ts) {
			return nil, fmt.Errorf("%w: line %d: want \"KEY HEX\" with 24 lowercase hex digits", errTimestampsCorrupt, i+2)
		}
		k, err := parsePublicKey(keyText)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", errTimestampsCorrupt, i+2, err)
		}
		if keyText <= prev {
			return nil, fmt.Errorf("%w: line %d: keys not sorted or repeated", errTimestampsCorrupt, i+2)
		}
		prev = keyText
		out[k] = [timestampLen]byte(ts)
	}
	return out, nil
}

// formatTimestamps is the inverse of parseTimestamps.
func formatTimestamps(ts map[publicKey][timestampLen]byte) []byte {
	lines := make([]string, 0, len(ts))
	for k, t := range ts {
		lines = append(lines, k.String()+" "+hex.EncodeToString(t[:]))
	}
	slices.Sort(lines)
	var b bytes.Buffer
	b.WriteString(timestampsHeader + "\n")
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return b.Bytes()
}

// loadTimestamps reads dir's timestamps file, if there is one (a data
// directory from before it existed has none: every timestamp then starts
// at zero), for sessionConfig.Timestamps. A corrupt file is an error and is
// not rewritten.
func loadTimestamps(dir string) (map[publicKey][timestampLen]byte, error) {
	path := filepath.Join(dir, timestampsFile)
	b, err := readFileMax(path, maxStateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	ts, err := parseTimestamps(b)
	if err != nil {
		return nil, fmt.Errorf("%w (%s; deleting it only loses replay protection for initiations of the last two hours)", err, path)
	}
	return ts, nil
}

// timestampStore holds the greatest initiation timestamp accepted from
// each contact (SPEC.md 4.3) and keeps the timestamps file up to date. It
// is safe for concurrent use; save is for the timer goroutine alone.
type timestampStore struct {
	path  string // "" keeps the timestamps in memory only
	log   *slog.Logger
	dirty chan struct{} // the file is out of date; the timer goroutine saves it

	mu       sync.Mutex
	accepted map[publicKey][timestampLen]byte // of the contacts
	loaded   map[publicKey][timestampLen]byte // from the file, of keys not added (yet)
	last     []byte                           // the file as last written
}

func newTimestampStore(dir string, loaded map[publicKey][timestampLen]byte, log *slog.Logger) *timestampStore {
	s := &timestampStore{log: log, dirty: make(chan struct{}, 1), accepted: map[publicKey][timestampLen]byte{}, loaded: maps.Clone(loaded)}
	if dir != "" {
		s.path = filepath.Join(dir, timestampsFile)
	}
	return s
}

// add starts a new contact k at its timestamp from the file, or at zero.
func (s *timestampStore) add(k publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ts, ok := s.loaded[k]; ok {
		s.accepted[k] = ts
		delete(s.loaded, k)
	}
}

// newer reports whether ts is greater than the last timestamp accepted
// from k.
func (s *timestampStore) newer(k publicKey, ts [timestampLen]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.accepted[k]
	return bytes.Compare(ts[:], last[:]) > 0
}

// accept records ts as k's last accepted timestamp if it is newer, and
// reports whether it was.
func (s *timestampStore) accept(k publicKey, ts [timestampLen]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if last := s.accepted[k]; bytes.Compare(ts[:], last[:]) <= 0 {
		return false
	}
	s.accepted[k] = ts
	s.changed()
	return true
}

// drop forgets a removed contact: the next write leaves it out.
func (s *timestampStore) drop(k publicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.accepted, k)
	s.changed()
}

// changed asks the timer goroutine to save the file. It never blocks: one
// pending request covers any number of changes.
func (s *timestampStore) changed() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// save writes the contacts' timestamps, if they changed since the last
// write.
func (s *timestampStore) save() {
	if s.path == "" {
		return
	}
	s.mu.Lock()
	b := formatTimestamps(s.accepted)
	s.mu.Unlock()
	if bytes.Equal(b, s.last) {
		return
	}
	if err := writeFileAtomic(s.path, b, 0o600); err != nil {
		s.log.Warn("session: timestamps", "err", err)
		return
	}
	s.last = b
}
