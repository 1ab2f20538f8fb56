// The timestamps file (SPEC.md 4.11): the newest initiation timestamp
// accepted from each contact, kept across restarts so that a recorded
// initiation cannot be replayed to a responder that restarted.
//
// Flow: app start calls loadTimestamps before adding the contacts, and
// addContact takes each contact's timestamp from what was loaded. Whenever
// a contact's accepted timestamp changes, or a contact is removed,
// timestampsChanged wakes the timer goroutine (timers.go), which rewrites
// the whole file atomically; it writes once more as it stops. Writing off
// the packet path keeps a burst of handshakes from waiting on the disk.
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

// loadTimestamps reads the file, if there is one (a data directory from
// before it existed has none: every timestamp then starts at zero). Call
// it before addContact. A corrupt file is an error and is not rewritten.
func (m *sessionManager) loadTimestamps() error {
	if m.cfg.Dir == "" {
		return nil
	}
	path := filepath.Join(m.cfg.Dir, timestampsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	ts, err := parseTimestamps(b)
	if err != nil {
		return fmt.Errorf("%w (%s; deleting it only loses replay protection for initiations of the last two hours)", err, path)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saved = ts
	return nil
}

// timestampsChanged asks the timer goroutine to save the file. It never
// blocks: one pending request covers any number of changes.
func (m *sessionManager) timestampsChanged() {
	select {
	case m.tsDirty <- struct{}{}:
	default:
	}
}

// saveTimestamps writes the contacts' accepted timestamps, if they changed
// since the last write. Only the timer goroutine calls it.
func (m *sessionManager) saveTimestamps() {
	if m.cfg.Dir == "" {
		return
	}
	ts := map[publicKey][timestampLen]byte{}
	m.mu.Lock()
	for k, p := range m.peers {
		if p.inits.recvTS != ([timestampLen]byte{}) {
			ts[k] = p.inits.recvTS
		}
	}
	m.mu.Unlock()
	b := formatTimestamps(ts)
	if bytes.Equal(b, m.lastSavedTS) {
		return
	}
	if err := writeFileAtomic(filepath.Join(m.cfg.Dir, timestampsFile), b, 0o600); err != nil {
		m.cfg.Log.Warn("session: timestamps", "err", err)
		return
	}
	m.lastSavedTS = b
}
