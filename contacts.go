// Contacts, the verify code and the contacts file (SPEC.md 5.1, 5.5).
//
// Flow: the contacts file is read once, by newChat (parseContacts), and rewritten
// whole by saveContacts after every change, a contact going offline and at
// exit. addContact and removeContact change the file first and memory only
// once it is written, so the two agree; removing a contact also logs a
// "forget" record to the outbox and waits for it. verifyCodeFor turns two
// public keys into the code two people compare aloud.
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Contact names, the contacts file and the verify code (SPEC.md 5.1, 5.5).
const (
	maxNameLen     = 32
	contactsFile   = "contacts"
	contactsHeader = "# kadchat contacts v1: name key [last-seen]"
	verifyLabel    = "kadchat verify v1"
	verifyGroups   = 6
)

// validName checks a contact name: 1-32 of A-Z a-z 0-9 - _.
func validName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("chat: name %q: want 1 to %d characters", name, maxNameLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("chat: name %q: only letters, digits, '-' and '_' are allowed", name)
		}
	}
	return nil
}

// verifyCodeFor computes the safety code of two keys: SHA-256(label ||
// lower key || higher key), the first 30 bytes read as six 40-bit big-endian
// numbers, each mod 100000 and printed as 5 digits. Sorting the keys makes it
// the same on both sides.
func verifyCodeFor(a, b publicKey) string {
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	h := sha256.New()
	h.Write([]byte(verifyLabel))
	h.Write(a[:])
	h.Write(b[:])
	sum := h.Sum(nil)
	groups := make([]string, verifyGroups)
	for i := range groups {
		var v uint64
		for _, c := range sum[5*i : 5*i+5] {
			v = v<<8 | uint64(c)
		}
		groups[i] = fmt.Sprintf("%05d", v%100000)
	}
	return strings.Join(groups, " ")
}

// contactEntry is one line of the contacts file.
type contactEntry struct {
	Name     string
	Key      publicKey
	LastSeen time.Time // zero: never seen
}

// parseContacts parses the contacts file: one contact per line, "NAME KEY"
// or "NAME KEY LAST-SEEN" (RFC 3339, UTC), separated by spaces; blank lines
// and lines starting with '#' are ignored so people can edit it by hand.
// Any other deviation is an error naming the line.
func parseContacts(b []byte, self publicKey) ([]contactEntry, error) {
	var out []contactEntry
	names := map[string]int{}
	keys := map[publicKey]int{}
	for i, line := range strings.Split(string(b), "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		e, err := parseContactLine(line)
		if err != nil {
			return nil, fmt.Errorf("chat: contacts line %d: %w", n, err)
		}
		switch {
		case names[e.Name] != 0:
			return nil, fmt.Errorf("chat: contacts line %d: name %q already on line %d", n, e.Name, names[e.Name])
		case keys[e.Key] != 0:
			return nil, fmt.Errorf("chat: contacts line %d: key already on line %d", n, keys[e.Key])
		case e.Key == self:
			return nil, fmt.Errorf("chat: contacts line %d: that is your own key", n)
		}
		names[e.Name], keys[e.Key] = n, n
		out = append(out, e)
	}
	return out, nil
}

func parseContactLine(line string) (contactEntry, error) {
	f := strings.Fields(line)
	if len(f) != 2 && len(f) != 3 {
		return contactEntry{}, fmt.Errorf("want \"NAME KEY [LAST-SEEN]\", got %d fields", len(f))
	}
	if err := validName(f[0]); err != nil {
		return contactEntry{}, err
	}
	k, err := parsePublicKey(f[1])
	if err != nil {
		return contactEntry{}, fmt.Errorf("key: %w", err)
	}
	e := contactEntry{Name: f[0], Key: k}
	if len(f) == 3 {
		t, err := time.Parse(time.RFC3339, f[2])
		if err != nil {
			return contactEntry{}, fmt.Errorf("last seen %q: want RFC 3339 like 2026-01-02T15:04:05Z", f[2])
		}
		e.LastSeen = t.UTC()
	}
	return e, nil
}

// formatContacts is the inverse of parseContacts for a file we write.
func formatContacts(es []contactEntry) []byte {
	var b strings.Builder
	b.WriteString(contactsHeader + "\n")
	for _, e := range es {
		b.WriteString(e.Name + " " + e.Key.String())
		if !e.LastSeen.IsZero() {
			b.WriteString(" " + e.LastSeen.UTC().Format(time.RFC3339))
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}

// contactInfo is one row of contactList.
type contactInfo struct {
	Name     string
	Key      publicKey
	Online   bool
	Addr     netip.AddrPort
	LastSeen time.Time
	Outbox   int // messages not yet acknowledged
}

// saveContacts writes the contacts file from memory. edit, if not nil,
// checks and changes the entries first; commit, if not nil, then changes
// memory under the lock, only once the file is written, so the two agree.
// saveMu keeps writers in order: contacts come and go only in here.
func (c *chat) saveContacts(edit func([]contactEntry) ([]contactEntry, error), commit func()) error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	es := make([]contactEntry, 0, len(c.peers))
	for _, p := range c.peers {
		es = append(es, p.contactEntry)
	}
	c.mu.Unlock()
	var err error
	if edit != nil {
		if es, err = edit(es); err != nil {
			return err
		}
	}
	slices.SortFunc(es, func(a, b contactEntry) int { return strings.Compare(a.Name, b.Name) })
	if err := writeFileAtomic(filepath.Join(c.cfg.Dir, contactsFile), formatContacts(es), 0o600); err != nil {
		return fmt.Errorf("chat: contacts: %w", err)
	}
	if commit != nil {
		c.mu.Lock()
		commit()
		c.mu.Unlock()
	}
	return nil
}

// addContact adds a contact; names and keys must be unique and not ours.
func (c *chat) addContact(name string, key publicKey) error {
	if err := validName(name); err != nil {
		return err
	}
	if key == c.cfg.Self {
		return errors.New("chat: that is your own key")
	}
	e := contactEntry{Name: name, Key: key}
	return c.saveContacts(func(es []contactEntry) ([]contactEntry, error) {
		for _, o := range es {
			switch {
			case o.Name == name:
				return nil, fmt.Errorf("chat: a contact named %q exists already", name)
			case o.Key == key:
				return nil, fmt.Errorf("chat: that key is already your contact %q", o.Name)
			}
		}
		return append(es, e), nil
	}, func() {
		c.insertLocked(e, c.cfg.Now().Add(lookupFastPeriod))
	})
}

// removeContact forgets a contact, its outbox and its delivery state.
func (c *chat) removeContact(name string) error {
	var key publicKey
	var gen uint64
	var jerr error
	err := c.saveContacts(func(es []contactEntry) ([]contactEntry, error) {
		i := slices.IndexFunc(es, func(e contactEntry) bool { return e.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("%w %q", errNoContact, name)
		}
		key = es[i].Key
		return slices.Delete(es, i, i+1), nil
	}, func() {
		p := c.peers[key]
		if p != nil && p.rstream != 0 {
			c.gone.keep(key, p.recvState)
		}
		if p != nil && len(p.out) > 0 {
			c.ob.dropped(c.cfg.Now()) // its undelivered text is dropped too
		}
		delete(c.peers, key)
		delete(c.names, name)
		c.sched.remove(key)
		gen, jerr = c.ob.record(outboxRec{Type: recForget, Key: key})
	})
	if err != nil {
		return err
	}
	if jerr != nil {
		return jerr
	}
	// Waited for: if the contact is added again, its old outbox must not
	// come back after a crash.
	return c.ob.waitDurable(gen)
}

// contactList lists the contacts by name.
func (c *chat) contactList() []contactInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]contactInfo, 0, len(c.peers))
	for _, p := range c.peers {
		out = append(out, p.info())
	}
	slices.SortFunc(out, func(a, b contactInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (p *chatPeer) info() contactInfo {
	return contactInfo{Name: p.Name, Key: p.Key, Online: p.online, Addr: p.addr, LastSeen: p.LastSeen, Outbox: len(p.out)}
}

// contactByName looks a contact up by name.
func (c *chat) contactByName(name string) (contactInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.names[name]; p != nil {
		return p.info(), true
	}
	return contactInfo{}, false
}

// contactByKey looks a contact up by key (e.g. to name an incoming session).
func (c *chat) contactByKey(key publicKey) (contactInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.peers[key]; p != nil {
		return p.info(), true
	}
	return contactInfo{}, false
}

// verifyCode is the safety code to compare with the contact aloud.
func (c *chat) verifyCode(name string) (string, error) {
	ci, ok := c.contactByName(name)
	if !ok {
		return "", fmt.Errorf("%w %q", errNoContact, name)
	}
	return verifyCodeFor(c.cfg.Self, ci.Key), nil
}
