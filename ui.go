// The line UI: one command or message per line on stdin, one result or
// event per line on stdout, equally for a person at a terminal and for a
// script on a pipe.
//
// Flow: main's loop reads a line and calls ui.handleLine, which parses it
// into a command and calls the app (chat, sessions, DHT). Results print as
// lines that start with a keyword; events from the chat core arrive on other
// goroutines and print through the same mutex, so lines never interleave.
// Every refused line gets an "error" line, whichever way it came.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"
	"unicode"
)

// maxLine bounds a typed line: a 4 KiB message plus the command and name.
const maxLine = 4096 + 256

// ui prints to out and remembers the current /to target.
type ui struct {
	app *app

	mu  sync.Mutex
	out io.Writer
	to  string // the contact plain lines go to; "" until /to
	now func() time.Time

	// onTarget, if set, learns each change of the /to target (the line
	// editor shows it in the prompt). Called on handleLine's goroutine.
	onTarget func(name string)
}

// ownName stands for us in the echo of our own messages; no contact may
// take it, so an echo cannot be mistaken for a message received.
const ownName = "me"

// setTarget changes where plain lines go.
func (u *ui) setTarget(name string) {
	u.to = name
	if u.onTarget != nil {
		u.onTarget(name)
	}
}

// printf writes one line; safe for concurrent use.
func (u *ui) printf(format string, args ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	fmt.Fprintf(u.out, format+"\n", args...)
}

// Write lets the DHT's command writer share the mutex. What it writes may
// hold text from remote nodes (BEP 44 values, error messages), so each
// line is made printable like a contact's message.
func (u *ui) Write(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	lines := strings.SplitAfter(string(p), "\n")
	for _, l := range lines {
		body, nl := strings.CutSuffix(l, "\n")
		if _, err := io.WriteString(u.out, printable(body)); err != nil {
			return 0, err
		}
		if nl {
			if _, err := io.WriteString(u.out, "\n"); err != nil {
				return 0, err
			}
		}
	}
	return len(p), nil
}

// errQuit is returned by handleLine for /quit.
var errQuit = errors.New("ui: quit")

type command struct {
	name  string
	usage string
	help  string
	run   func(u *ui, ctx context.Context, rest string) error
}

var commands []command

func init() {
	commands = []command{
		{"/help", "/help", "list the commands", (*ui).cmdHelp},
		{"/id", "/id", "print your key, to give to others", (*ui).cmdID},
		{"/add", "/add NAME KEY", "add a contact by their key", (*ui).cmdAdd},
		{"/invite", "/invite NAME", "make a short code to read to NAME, who types /accept", (*ui).cmdInvite},
		{"/accept", "/accept NAME CODE", "add NAME with the code NAME read to you", (*ui).cmdAccept},
		{"/remove", "/remove NAME [force]", "remove a contact (force: and drop its queued messages)", (*ui).cmdRemove},
		{"/contacts", "/contacts", "list contacts, online or offline, last seen", (*ui).cmdContacts},
		{"/msg", "/msg NAME TEXT", "send a message", (*ui).cmdMsg},
		{"/to", "/to NAME", "send plain lines to NAME from now on", (*ui).cmdTo},
		{"/verify", "/verify NAME", "a safety code to compare with NAME aloud", (*ui).cmdVerify},
		{"/status", "/status", "your node, the DHT and the sessions", (*ui).cmdStatus},
		{"/dht", "/dht status|ping|find_node|get_peers|announce|put|get|mput|mget ...", "talk to the DHT directly", (*ui).cmdDHT},
		{"/quit", "/quit", "save and exit", func(*ui, context.Context, string) error { return errQuit }},
	}
}

// handleLine runs one line. It returns errQuit for /quit; every other
// problem is printed as an "error" line and the UI carries on.
//
// White space around a command is ignored and its name is case-insensitive
// (" /MSG" is /msg); a line that is not a command is a message to the /to
// target, sent as typed. "//text" sends "/text".
func (u *ui) handleLine(ctx context.Context, line string) error {
	line = strings.TrimRight(line, "\r\n")
	trimmed := strings.TrimSpace(line)
	if trimmed == "" {
		return nil
	}
	if !strings.HasPrefix(trimmed, "/") || strings.HasPrefix(trimmed, "//") {
		if strings.HasPrefix(trimmed, "//") {
			line = trimmed[1:]
		}
		if u.to == "" {
			u.printf("error ui: no recipient: use /to NAME or /msg NAME TEXT")
			return nil
		}
		u.report(ctx, u.sendText(ctx, u.to, line))
		return nil
	}
	name, rest := trimmed, ""
	if i := strings.IndexFunc(trimmed, unicode.IsSpace); i >= 0 {
		name, rest = trimmed[:i], strings.TrimSpace(trimmed[i:])
	}
	name = strings.ToLower(name)
	for _, c := range commands {
		if c.name == name {
			err := c.run(u, ctx, rest)
			if err == errQuit {
				return err
			}
			u.report(ctx, err)
			return nil
		}
	}
	u.printf("error ui: unknown command %q: try /help", name)
	return nil
}

// report prints err, if any, as an "error" line; not when we are
// quitting, which cut the command short.
func (u *ui) report(ctx context.Context, err error) {
	if err != nil && ctx.Err() == nil {
		u.printf("error %v", err)
	}
}

// untilDone is the DHT's command writer: what a command prints after ctx
// ended (its "context canceled" errors as we quit) is dropped.
type untilDone struct {
	ctx context.Context
	u   *ui
}

func (w untilDone) Write(p []byte) (int, error) {
	if w.ctx.Err() != nil {
		return len(p), nil
	}
	return w.u.Write(p)
}

func (u *ui) cmdHelp(_ context.Context, _ string) error {
	for _, c := range commands {
		u.printf("help %-24s %s", c.usage, c.help)
	}
	return nil
}

func (u *ui) cmdID(_ context.Context, _ string) error {
	u.printf("id %s", u.app.id.public())
	return nil
}

// words splits rest into exactly n fields, the last taking the remainder.
func words(rest string, n int, usage string) ([]string, error) {
	f := strings.SplitN(rest, " ", n)
	if len(f) != n {
		return nil, fmt.Errorf("ui: usage: %s", usage)
	}
	for i := range f {
		f[i] = strings.TrimSpace(f[i])
		if f[i] == "" {
			return nil, fmt.Errorf("ui: usage: %s", usage)
		}
	}
	return f, nil
}

func (u *ui) cmdAdd(_ context.Context, rest string) error {
	if hint := swappedAdd(rest); hint != "" {
		return fmt.Errorf("ui: did you mean %s?", hint)
	}
	f, err := words(rest, 2, "/add NAME KEY")
	if err != nil {
		return err
	}
	if err := checkName(f[0]); err != nil {
		return err
	}
	key, err := parsePublicKey(cleanKey(f[1]))
	if err != nil {
		return err
	}
	if err := u.app.addContact(f[0], key); err != nil {
		return err
	}
	u.printf("* added %s", f[0])
	return nil
}

// keyWrappers are what a key tends to arrive wrapped in when pasted from
// a message, a web page or a document.
const keyWrappers = "\"'`<>[](){}\u2018\u2019\u201c\u201d\u2039\u203a\u00ab\u00bb"

// cleanKey undoes what copying and pasting adds to a key: quotes or
// brackets around it, the "id " that /id prints before it, and white space
// or line breaks inside it. What is left is parsed strictly.
func cleanKey(s string) string {
	s = strings.Trim(strings.TrimSpace(s), keyWrappers)
	if rest, ok := strings.CutPrefix(s, "id"); ok && strings.TrimLeftFunc(rest, unicode.IsSpace) != rest &&
		strings.HasPrefix(strings.TrimSpace(rest), idPrefix) {
		s = rest
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, s)
	return strings.Trim(s, keyWrappers)
}

// swappedAdd recognises "/add KEY NAME" and returns the command meant,
// or "" if rest is not that.
func swappedAdd(rest string) string {
	i := strings.LastIndexFunc(rest, unicode.IsSpace)
	if i < 0 {
		return ""
	}
	keyText, name := rest[:i], strings.TrimSpace(rest[i:])
	if validName(name) != nil {
		return ""
	}
	key, err := parsePublicKey(cleanKey(keyText))
	if err != nil {
		return ""
	}
	return fmt.Sprintf("/add %s %s", name, key)
}

// checkName refuses a contact name that is invalid or reserved.
func checkName(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if strings.EqualFold(name, ownName) {
		return fmt.Errorf("ui: the name %q stands for you; choose another", name)
	}
	return nil
}

// cmdRemove removes a contact. Queued messages would be lost with it, so
// then it wants "force" and says how many.
func (u *ui) cmdRemove(_ context.Context, rest string) error {
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 || len(f) == 2 && !strings.EqualFold(f[1], "force") {
		return fmt.Errorf("ui: usage: /remove NAME [force]")
	}
	name := f[0]
	if c, ok := u.app.chat.contactByName(name); ok && c.Outbox > 0 && len(f) == 1 {
		return fmt.Errorf("ui: %s has %d queued %s that would be dropped: /remove %s force",
			name, c.Outbox, plural(c.Outbox, "message", "messages"), name)
	}
	if err := u.app.removeContact(name); err != nil {
		return err
	}
	if u.to == name {
		u.setTarget("")
	}
	u.printf("* removed %s", name)
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func (u *ui) cmdMsg(ctx context.Context, rest string) error {
	f, err := words(rest, 2, "/msg NAME TEXT")
	if err != nil {
		return err
	}
	return u.sendText(ctx, f[0], f[1])
}

func (u *ui) cmdTo(_ context.Context, rest string) error {
	f, err := words(rest, 1, "/to NAME")
	if err != nil {
		return err
	}
	if !u.app.hasContact(f[0]) {
		return fmt.Errorf("%w %q", errNoContact, f[0])
	}
	u.setTarget(f[0])
	u.printf("* to %s", f[0])
	return nil
}

func (u *ui) cmdDHT(ctx context.Context, rest string) error {
	args := strings.Fields(rest)
	if len(args) == 0 {
		return fmt.Errorf("ui: usage: /dht status|ping|find_node|get_peers|announce|put|get|mput|mget ...")
	}
	// put and mput take free text: keep its spaces.
	switch args[0] {
	case "put":
		_, text, _ := strings.Cut(rest, " ")
		args = []string{"put", strings.TrimSpace(text)}
	case "mput":
		f := strings.SplitN(rest, " ", 4)
		if len(f) == 4 {
			args = f
		}
	}
	u.app.dht.command(ctx, args, untilDone{ctx, u})
	return nil
}

// sendText queues text for name. The message is durable in the outbox
// before "* queued" prints; then it is echoed as a message line from
// "me", so a conversation reads as one.
func (u *ui) sendText(ctx context.Context, name, text string) error {
	if _, err := u.app.chat.send(ctx, name, text); err != nil {
		return err
	}
	u.printf("[%s] <%s> %s", u.now().Format("15:04"), ownName, printable(text))
	return nil
}

func (u *ui) cmdContacts(_ context.Context, _ string) error {
	list := u.app.chat.contactList()
	for _, c := range list {
		u.printf("%s", contactLine(c, u.app.addrText))
	}
	u.printf("done %d contacts", len(list))
	return nil
}

// contactLine is one line of /contacts. A contact never seen since it was
// added is "waiting", not "offline": we cannot tell whether it has not
// added us (its rendezvous is keyed by a secret only the two of us hold,
// so it announces nothing we could see until it does) or has simply not
// been online at the same time as us; the line's end says both.
func contactLine(c contactInfo, addrText func(netip.AddrPort) string) string {
	state, addr, seen, why := "offline", "-", "never", ""
	switch {
	case c.Online:
		// One word, as the line's format wants: "via:NAME" for a relay.
		state, addr = "online", strings.Replace(addrText(c.Addr), "via ", "via:", 1)
	case c.LastSeen.IsZero():
		state, why = "waiting", fmt.Sprintf(" (waiting for %s to add you, or for you both to be online at once)", c.Name)
	}
	if !c.LastSeen.IsZero() {
		seen = c.LastSeen.Format(time.RFC3339)
	}
	return fmt.Sprintf("contact %s %s %s last-seen %s outbox %d key %s%s", c.Name, state, addr, seen, c.Outbox, c.Key, why)
}

func (u *ui) cmdVerify(_ context.Context, rest string) error {
	f, err := words(rest, 1, "/verify NAME")
	if err != nil {
		return err
	}
	code, err := u.app.chat.verifyCode(f[0])
	if err != nil {
		return err
	}
	u.printf("verify %s %s", f[0], code)
	return nil
}

func (u *ui) cmdStatus(ctx context.Context, _ string) error {
	u.printf("status %s listening %s", u.app.id.public(), u.app.node.LocalAddr())
	u.app.dht.command(ctx, []string{"status"}, u)
	online := 0
	list := u.app.chat.contactList()
	for _, c := range list {
		if c.Online {
			online++
		}
	}
	u.printf("contacts %d online of %d", online, len(list))
	u.printf("%s", u.app.natLine())
	for _, c := range list {
		if c.Online {
			u.printf("path %s %s", c.Name, u.app.pathText(c.Addr))
		}
	}
	for _, d := range u.app.chat.dropSummaries() {
		u.printf("drops %s %d outstanding, %d prekeys left", d.Name, d.Outstanding, d.Prekeys)
	}
	if w := u.app.watch; w != nil {
		u.printf("%s", w.reach())
	}
	return nil
}

// event prints a chat event. It must not block: it runs on the chat core's
// goroutines (see chatConfig.Event).
func (u *ui) event(e chatEvent) {
	switch e.Kind {
	case eventMessage:
		u.printf("[%s] <%s> %s", e.Time.Format("15:04"), e.Contact, printable(e.Text))
	case eventQueued, eventDelivered, eventDropped:
		u.printf("* %s %s %d", e.Kind, e.Contact, e.MsgID)
	case eventOnline, eventMoved:
		u.printf("* %s %s %s", e.Kind, e.Contact, u.app.addrText(e.Addr))
	case eventOffline:
		u.printf("* offline %s", e.Contact)
	}
}

// pqEvent prints what the session layer says about a contact's
// post-quantum secret (SPEC.md 4.12). It runs on the session layer's
// goroutines and must not block.
func (u *ui) pqEvent(k publicKey, e pqEvent) {
	name := k.String()
	if c, ok := u.app.chat.contactByKey(k); ok {
		name = c.Name
	}
	switch e {
	case pqClassical:
		u.printf("* classical %s: its kadchat made no post-quantum exchange; this session is not protected against a future quantum computer", name)
	case pqRefused:
		u.printf("* refused %s: it answered without your shared post-quantum secret (its data directory was reset, or someone else holds its key)", name)
	}
}

// printable replaces control and format characters (bidi overrides
// among them) and line separators, so a contact's text cannot break a line,
// forge an event line on a script's stdout, or reorder what a person sees.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return '\uFFFD'
		}
		return r
	}, s)
}

// cmdInvite starts an invitation and prints its code at once; the contact
// is added when the other side accepts (section 7 of SPEC.md).
func (u *ui) cmdInvite(ctx context.Context, rest string) error {
	f, err := words(rest, 1, "/invite NAME")
	if err != nil {
		return err
	}
	if err := u.app.checkNewContact(f[0]); err != nil {
		return err
	}
	code, events, err := u.app.inv.invite(ctx)
	if err != nil {
		return err
	}
	u.printf("invite %s %s", f[0], code)
	go func() {
		for ev := range events {
			if ev.Wrong {
				u.printf("* invite %s: a wrong code was tried (%d %s left)", f[0], ev.TriesLeft, plural(ev.TriesLeft, "try", "tries"))
				continue
			}
			u.finishInvite(f[0], ev.Key, ev.Err)
		}
	}()
	return nil
}

// cmdAccept runs the acceptor side in the background: it may take a few
// seconds to find the inviter through the DHT.
func (u *ui) cmdAccept(ctx context.Context, rest string) error {
	f, err := words(rest, 2, "/accept NAME CODE")
	if err != nil {
		return err
	}
	if err := u.app.checkNewContact(f[0]); err != nil {
		return err
	}
	if _, _, err := parseInviteCode(f[1]); err != nil {
		return err
	}
	u.printf("* accepting %s", f[0])
	go func() {
		res, err := u.app.inv.accept(ctx, f[1])
		if u.finishInvite(f[0], res.Key, err) && res.warning() != "" {
			u.printf("* invite %s: someone may have tried the code (%s); compare /verify %s", f[0], res.warning(), f[0])
		}
	}()
	return nil
}

// finishInvite adds the contact an invitation produced, or says why not;
// it reports whether the contact was added.
func (u *ui) finishInvite(name string, key publicKey, err error) bool {
	if errors.Is(err, context.Canceled) {
		return false // we are quitting: nobody is waiting for this any more
	}
	if err == nil {
		err = u.app.addContact(name, key)
	}
	if err != nil {
		u.printf("error invite %s: %v", name, err)
		return false
	}
	u.printf("* added %s", name)
	return true
}
