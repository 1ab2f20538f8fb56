package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestContactsFile(t *testing.T) {
	dir := t.TempDir()
	self := chatKey(1)
	c, _ := testChat(t, dir, self, func(publicKey, []byte) error { return nil }, nil)
	tests := []struct {
		name    string
		key     publicKey
		wantErr string
	}{
		{"alice", chatKey(2), ""},
		{"bob_2-x", chatKey(3), ""},
		{"alice", chatKey(4), "exists already"},
		{"carol", chatKey(2), "already your contact \"alice\""},
		{"me", self, "your own key"},
		{"", chatKey(5), "1 to 32"},
		{strings.Repeat("a", 33), chatKey(5), "1 to 32"},
		{"bad name", chatKey(5), "only letters"},
		{"émile", chatKey(5), "only letters"},
	}
	for _, tt := range tests {
		err := c.addContact(tt.name, tt.key)
		if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("addContact(%q) = %v, want error %q", tt.name, err, tt.wantErr)
		}
	}
	if err := c.removeContact("bob_2-x"); err != nil {
		t.Fatal(err)
	}
	if err := c.removeContact("bob_2-x"); !errors.Is(err, errNoContact) {
		t.Errorf("removing twice: %v, want errNoContact", err)
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	c, _ = testChat(t, dir, self, func(publicKey, []byte) error { return nil }, nil)
	defer c.close()
	list := c.contactList()
	if len(list) != 1 || list[0].Name != "alice" || list[0].Key != chatKey(2) || list[0].Online {
		t.Fatalf("contacts after reopen = %+v, want only alice, offline", list)
	}
	if ci, ok := c.contactByKey(chatKey(2)); !ok || ci.Name != "alice" {
		t.Errorf("contactByKey = %+v, %v", ci, ok)
	}
	if _, ok := c.contactByName("bob_2-x"); ok {
		t.Errorf("removed contact still found")
	}
}

func TestContactsLastSeen(t *testing.T) {
	clock := newFakeClockAt(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	dir := t.TempDir()
	c, l := testChat(t, dir, chatKey(1), func(publicKey, []byte) error { return nil }, clock.now)
	if err := c.addContact("alice", chatKey(2)); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort("192.0.2.1:6881")
	c.presence.online(chatKey(2), addr)
	c.presence.online(chatKey(2), addr)
	c.presence.online(chatKey(2), netip.MustParseAddrPort("192.0.2.2:6881"))
	clock.advance(20 * time.Second)
	c.handlePayload(chatKey(2), addr, nil) // a keepalive is a sign of life
	if ci, _ := c.contactByKey(chatKey(2)); !ci.LastSeen.Equal(clock.now()) {
		t.Errorf("last seen %v after a keepalive at %v", ci.LastSeen, clock.now())
	}
	clock.advance(40 * time.Second)
	// Its last packet came half a minute before its silence was noticed:
	// that is when it was last seen.
	c.presence.offline(chatKey(2), clock.now().Add(-30*time.Second))
	var kinds []string
	for _, e := range l.evs {
		kinds = append(kinds, e.Kind.String())
	}
	if got := strings.Join(kinds, " "); got != "online moved offline" {
		t.Errorf("events %q, want \"online moved offline\"", got)
	}
	c.close()
	b, _ := os.ReadFile(filepath.Join(dir, contactsFile))
	want := contactsHeader + "\nalice " + chatKey(2).String() + " 2026-11-25T12:00:30Z\n"
	if string(b) != want {
		t.Errorf("contacts file:\n%s\nwant:\n%s", b, want)
	}
}

func TestContactsFileRejected(t *testing.T) {
	k2, k3 := chatKey(2).String(), chatKey(3).String()
	tests := []struct {
		name, file, wantErr string
	}{
		{"bad key", "alice zz\n", "line 1: key"},
		{"one field", "# comment\n\nalice\n", "line 3: want"},
		{"bad name", "al!ce " + k2 + "\n", "line 1: chat: name"},
		{"duplicate name", "alice " + k2 + "\nalice " + k3 + "\n", "line 2: name \"alice\" already on line 1"},
		{"duplicate key", "alice " + k2 + "\nbob " + k2 + "\n", "line 2: key already on line 1"},
		{"own key", "me " + chatKey(1).String() + "\n", "line 1: that is your own key"},
		{"bad time", "alice " + k2 + " yesterday\n", "line 1: last seen"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		path := filepath.Join(dir, contactsFile)
		if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := newChat(chatConfig{Dir: dir, Self: chatKey(1), Send: func(publicKey, []byte) error { return nil }, MaxPayload: 1100})
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: newChat = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
		if b, _ := os.ReadFile(path); string(b) != tt.file {
			t.Errorf("%s: the file was changed to %q", tt.name, b)
		}
	}
}

func TestVerifyCode(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	a, _ := testChat(t, dir1, chatKey(1), func(publicKey, []byte) error { return nil }, nil)
	b, _ := testChat(t, dir2, chatKey(2), func(publicKey, []byte) error { return nil }, nil)
	defer a.close()
	defer b.close()
	a.addContact("bob", chatKey(2))
	b.addContact("alice", chatKey(1))
	ca, err1 := a.verifyCode("bob")
	cb, err2 := b.verifyCode("alice")
	if err1 != nil || err2 != nil || ca != cb || len(ca) != 6*5+5 {
		t.Fatalf("codes %q, %q (%v, %v): want equal, 6 groups of 5 digits", ca, cb, err1, err2)
	}
	if other := verifyCodeFor(chatKey(1), chatKey(3)); other == ca {
		t.Errorf("different keys give the same code %s", ca)
	}
	if _, err := a.verifyCode("nobody"); !errors.Is(err, errNoContact) {
		t.Errorf("verifyCode(nobody) = %v", err)
	}
}

func TestReAddStartsNewStream(t *testing.T) {
	p := newChatPair(t, 0)
	p.connect()
	defer p.close(t)
	p.deliverOne(t, "one")
	if err := p.a.removeContact("bob"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // a new stream id needs a later millisecond
	if err := p.a.addContact("bob", p.kb); err != nil {
		t.Fatal(err)
	}
	p.a.presence.online(p.kb, p.link.addrs[p.kb])
	id, err := p.a.send(context.Background(), "bob", "two")
	if err != nil || id != 1 {
		t.Fatalf("first send after re-adding = %d, %v; want id 1", id, err)
	}
	got := p.lb.waitFor(t, eventMessage, 2, 2*time.Second)
	if got[1].Text != "two" || got[1].MsgID != 1 {
		t.Fatalf("bob got %+v, want \"two\" as message 1 of the new stream", got[1])
	}
	p.la.waitFor(t, eventDelivered, 2, 2*time.Second)
}

// A receiver that removes and re-adds the sender keeps how far the sender's
// stream was delivered, so the stream goes on (it stalled at seq 2 before).
func TestReceiverReAddResumesStream(t *testing.T) {
	p := newChatPair(t, 0)
	p.connect()
	defer p.close(t)
	p.deliverOne(t, "one")
	if err := p.b.removeContact("alice"); err != nil {
		t.Fatal(err)
	}
	if err := p.b.addContact("alice", p.ka); err != nil {
		t.Fatal(err)
	}
	if _, err := p.a.send(context.Background(), "bob", "two"); err != nil {
		t.Fatal(err)
	}
	p.lb.waitFor(t, eventMessage, 2, 3*time.Second)
	if got := p.lb.of(eventMessage); got[1].Text != "two" {
		t.Errorf("second message %q, want \"two\"", got[1].Text)
	}
}
