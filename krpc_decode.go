// KRPC decoding (SPEC.md 3.2, its rejection rules above all): one pass
// over the datagram, no allocation for a valid message.
//
// Flow: parseKRPC walks the datagram once. scanDict records where the value
// of each key we know lies, at the top level and inside "a" and "r"
// (fieldSet), checking every byte as canonical bencode on the way. Then
// finish interprets the message by its "y": finishQuery checks the method's
// arguments (an error there becomes *krpcBadQuery, answered with 203),
// finishReply the response, finishError the error list. Slices alias the
// datagram; only fixed-size ids and keys are copied.
package main

import "fmt"

// The keys we read, in bencode order, as bit indexes into fieldSet.found.
// keyIndex maps a key to its index.
const (
	topA = iota
	topE
	topIP
	topQ
	topR
	topRO
	topT
	topV
	topY
)

const (
	argCAS = iota
	argID
	argImplied
	argInfoHash
	argK
	argPort
	argSalt
	argSeq
	argSig
	argTarget
	argToken
	argV
	argWant
)

const (
	replyID = iota
	replyK
	replyNodes
	replyNodes6
	replySeq
	replySig
	replyToken
	replyV
	replyValues
)

// maxKRPCLen bounds a message: a UDP payload is never longer, and it lets
// fieldSet keep offsets in 16 bits (a smaller parse state to zero).
const maxKRPCLen = 65535

// dictKind selects the keys we look for in a dict.
type dictKind uint8

const (
	dictTop   dictKind = iota // the message itself
	dictArgs                  // "a"
	dictReply                 // "r"
)

// keyIndex returns the index of a key we read in a dict of kind, or -1.
// Switches, not a table walk: the compiler's string switch made the parse
// of a ping a third faster than a loop over a key list.
func keyIndex(kind dictKind, key []byte) int {
	switch kind {
	case dictTop:
		return topKeyIndex(key)
	case dictArgs:
		return argKeyIndex(key)
	}
	return replyKeyIndex(key)
}

func topKeyIndex(key []byte) int {
	switch string(key) {
	case "a":
		return topA
	case "e":
		return topE
	case "ip":
		return topIP
	case "q":
		return topQ
	case "r":
		return topR
	case "ro":
		return topRO
	case "t":
		return topT
	case "v":
		return topV
	case "y":
		return topY
	}
	return -1
}

func argKeyIndex(key []byte) int {
	switch string(key) {
	case "cas":
		return argCAS
	case "id":
		return argID
	case "implied_port":
		return argImplied
	case "info_hash":
		return argInfoHash
	case "k":
		return argK
	case "port":
		return argPort
	case "salt":
		return argSalt
	case "seq":
		return argSeq
	case "sig":
		return argSig
	case "target":
		return argTarget
	case "token":
		return argToken
	case "v":
		return argV
	case "want":
		return argWant
	}
	return -1
}

func replyKeyIndex(key []byte) int {
	switch string(key) {
	case "id":
		return replyID
	case "k":
		return replyK
	case "nodes":
		return replyNodes
	case "nodes6":
		return replyNodes6
	case "seq":
		return replySeq
	case "sig":
		return replySig
	case "token":
		return replyToken
	case "v":
		return replyV
	case "values":
		return replyValues
	}
	return -1
}

// fieldSet records where the value of each known key of one dict lies in
// the message b (offsets, not slices, to keep the parse state small).
type fieldSet struct {
	b     []byte
	pos   [16][3]uint16 // start, start of string contents (strings only) and end of the value of key i
	found uint32        // bit i: key i is present
	strs  uint32        // bit i: key i is a string
	extra bool          // some key we don't read was present: ignored on purpose
	// peersBad: "values" (in "r") is a list with an entry that is not a
	// compact peer; found during the scan so the list is walked only once.
	peersBad bool
}

func (f *fieldSet) has(i int) bool { return f.found&(1<<i) != 0 }

// raw is the encoded value of key i (nil if absent).
func (f *fieldSet) raw(i int) []byte {
	if !f.has(i) {
		return nil
	}
	return f.b[f.pos[i][0]:f.pos[i][2]]
}

// scanDict walks the dict at p.b[off], whose enclosing containers number
// depth, validating every byte and recording the keys of kind. The values of
// "a" and "r" in the message are walked the same way, in the same pass.
func (p *krpcParse) scanDict(off, depth int, kind dictKind) (int, error) {
	b := p.b
	f := p.set(kind)
	f.b = b
	d := dictReader{b: b, off: off + 1}
	for {
		key, ok, err := d.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return d.off, nil
		}
		start := d.off
		j := keyIndex(kind, key)
		if j < 0 {
			f.extra = true
			if d.off, err = skipValue(b, start, depth+1); err != nil {
				return 0, err
			}
			continue
		}
		f.found |= 1 << j
		f.pos[j][0] = uint16(start)
		if d.off, err = p.scanKnown(f, kind, j, start, depth+1); err != nil {
			return 0, err
		}
		f.pos[j][2] = uint16(d.off)
	}
}

// scanKnown validates the value of known key j at b[off]: strings are read
// (their contents located), "a" and "r" walked as dicts, "values" checked
// for compact peers, anything else skipped.
func (p *krpcParse) scanKnown(f *fieldSet, kind dictKind, j, off, depth int) (int, error) {
	b := p.b
	if off >= len(b) {
		return 0, bencodeErr(off, errBencodeEOF)
	}
	switch c := b[off]; {
	case isDigit(c):
		s, end, err := scanString(b, off)
		f.strs |= 1 << j
		f.pos[j][1] = uint16(end - len(s))
		return end, err
	case c == 'd' && kind == dictTop && j == topA:
		return p.scanDict(off, depth, dictArgs)
	case c == 'd' && kind == dictTop && j == topR:
		return p.scanDict(off, depth, dictReply)
	case c == 'l' && kind == dictReply && j == replyValues:
		end, ok, err := scanPeerList(b, off, depth)
		f.peersBad = !ok
		return end, err
	}
	return skipValue(b, off, depth)
}

// scanPeerList is skipValue for a "values" list, also reporting whether
// every entry is a compact peer (6 or 18 bytes, IPv6 not IPv4-mapped).
func scanPeerList(b []byte, off, depth int) (end int, ok bool, err error) {
	if depth >= maxBencodeDepth {
		return 0, false, bencodeErr(off, errBencodeDepth)
	}
	ok = true
	for off++; ; {
		if off >= len(b) {
			return 0, false, bencodeErr(off, errBencodeEOF)
		}
		switch c := b[off]; {
		case c == 'e':
			return off + 1, ok, nil
		case isDigit(c):
			var s []byte
			if s, off, err = scanString(b, off); err != nil {
				return 0, false, err
			}
			ok = ok && (len(s) == compactAddr4Len || len(s) == compactAddr6Len && !isMapped4(s))
		default:
			ok = false
			if off, err = skipValue(b, off, depth+1); err != nil {
				return 0, false, err
			}
		}
	}
}

// isMapped4 reports whether the 16-byte address at the start of s is an
// IPv4-mapped IPv6 address (::ffff:a.b.c.d).
func isMapped4(s []byte) bool {
	for _, c := range s[:10] {
		if c != 0 {
			return false
		}
	}
	return s[10] == 0xff && s[11] == 0xff
}

func (p *krpcParse) set(kind dictKind) *fieldSet {
	switch kind {
	case dictTop:
		return &p.top
	case dictArgs:
		return &p.args
	}
	return &p.reply
}

// Typed readers of a recorded value. The raw bytes were validated by the
// scan, so only the type and size are checked here.

func (f *fieldSet) str(i int, name string) ([]byte, error) {
	if !f.has(i) {
		return nil, fmt.Errorf("%s: %w", name, errKRPCMissing)
	}
	if f.strs&(1<<i) == 0 {
		return nil, fmt.Errorf("%s: %w: want string", name, errKRPCType)
	}
	end := f.pos[i][2]
	return f.b[f.pos[i][1]:end:end], nil
}

func (f *fieldSet) fixed(i int, name string, dst []byte) error {
	s, err := f.str(i, name)
	if err != nil {
		return err
	}
	if len(s) != len(dst) {
		return fmt.Errorf("%s: %w: %d bytes, want %d", name, errKRPCSize, len(s), len(dst))
	}
	copy(dst, s)
	return nil
}

func (f *fieldSet) int(i int, name string) (int64, error) {
	raw := f.raw(i)
	if raw == nil {
		return 0, fmt.Errorf("%s: %w", name, errKRPCMissing)
	}
	if len(raw) == 0 || raw[0] != 'i' {
		return 0, fmt.Errorf("%s: %w: want integer", name, errKRPCType)
	}
	n, _, err := scanInt(raw, 0)
	return n, err
}

// flag reads an integer that must be 0 or 1.
func (f *fieldSet) flag(i int, name string) (bool, error) {
	n, err := f.int(i, name)
	if err == nil && n != 0 && n != 1 {
		err = fmt.Errorf("%s: %w: %d, want 0 or 1", name, errKRPCValue, n)
	}
	return n == 1, err
}

// seqInt reads a BEP 44 sequence number; negative ones are refused (BEP 44 allows that).
func (f *fieldSet) seqInt(i int, name string) (int64, error) {
	n, err := f.int(i, name)
	if err == nil && n < 0 {
		return 0, fmt.Errorf("%s: %w: negative", name, errKRPCValue)
	}
	return n, err
}

// krpcParse is the state of one parseKRPC call.
type krpcParse struct {
	b                []byte
	top, args, reply fieldSet
	ignored          bool // something will not survive appendTo
}

// parseKRPC is pure and strict. Slices alias b. See the contract in
// SPEC.md 3.2: unknown keys, and known keys the message's type or method
// does not use, are ignored on purpose (BEP 5 lets clients extend messages).
func parseKRPC(b []byte) (m krpcMsg, err error) {
	// m is filled in place: the struct is large, and copying it would cost
	// more than the parse of a ping.
	if _, err = parseKRPCInto(b, &m); err != nil {
		return krpcMsg{}, err
	}
	return m, nil
}

// parseKRPCInto is parseKRPC into a zero *m, also reporting whether anything
// was ignored, i.e. whether appendTo would not reproduce b exactly. On error
// *m is left partly filled.
func parseKRPCInto(b []byte, m *krpcMsg) (ignored bool, err error) {
	if len(b) == 0 || b[0] != 'd' {
		return false, fmt.Errorf("krpc: %w", errKRPCNotDict)
	}
	if len(b) > maxKRPCLen {
		return false, fmt.Errorf("krpc: %w: %d bytes", errKRPCTooLong, len(b))
	}
	p := krpcParse{b: b}
	end, err := p.scanDict(0, 0, dictTop)
	if err != nil {
		return false, fmt.Errorf("krpc: %w", err)
	}
	if end != len(b) {
		return false, fmt.Errorf("krpc: %w", bencodeErr(end, errBencodeTrailing))
	}
	if err := p.finish(m); err != nil {
		return false, err
	}
	return p.ignored, nil
}

// finish interprets the recorded fields by the message type.
func (p *krpcParse) finish(m *krpcMsg) error {
	var err error
	if m.TID, err = p.top.str(topT, "t"); err != nil {
		return fmt.Errorf("krpc: %w", err)
	}
	if len(m.TID) < minTIDLen || len(m.TID) > maxTIDLen {
		return fmt.Errorf("krpc: t: %w: %d bytes, want %d..%d", errKRPCSize, len(m.TID), minTIDLen, maxTIDLen)
	}
	y, err := p.top.str(topY, "y")
	if err == nil && len(y) != 1 {
		err = fmt.Errorf("y: %w: %q", errKRPCMsgType, y)
	}
	if err != nil {
		return fmt.Errorf("krpc: %w", err)
	}
	m.Type = y[0]
	used := uint32(1<<topT | 1<<topY | 1<<topV | 1<<topIP)
	switch m.Type {
	case 'q':
		used |= 1<<topQ | 1<<topA | 1<<topRO
		if err = p.finishQuery(m); err != nil {
			return &krpcBadQuery{TID: m.TID, Err: err}
		}
	case 'r':
		used |= 1 << topR
		err = p.finishReply(m)
	case 'e':
		used |= 1 << topE
		err = p.finishError(m)
	default:
		err = fmt.Errorf("y: %w: %q", errKRPCMsgType, y)
	}
	if err != nil {
		return fmt.Errorf("krpc: %w", err)
	}
	p.ignored = p.ignored || p.top.extra || p.top.found&^used != 0
	return nil
}

// finishCommon reads the keys every message type may carry: "v" and "ip".
func (p *krpcParse) finishCommon(m *krpcMsg) error {
	var err error
	if p.top.has(topV) {
		if m.Version, err = p.top.str(topV, "v"); err != nil {
			return err
		}
	}
	if p.top.has(topIP) {
		ip, err := p.top.str(topIP, "ip")
		if err != nil {
			return err
		}
		if m.IP, err = parseCompactAddr(ip); err != nil {
			return fmt.Errorf("ip: %w", err)
		}
	}
	return nil
}

// finishQuery reads "q", "ro" and the method's arguments.
func (p *krpcParse) finishQuery(m *krpcMsg) error {
	if err := p.finishCommon(m); err != nil {
		return err
	}
	name, err := p.top.str(topQ, "q")
	if err != nil {
		return err
	}
	if p.top.has(topRO) {
		if m.ReadOnly, err = p.top.flag(topRO, "ro"); err != nil {
			return err
		}
		p.ignored = p.ignored || !m.ReadOnly // "ro" 0 is not written back
	}
	if m.Method = lookupMethod(name); m.Method == methodUnknown {
		// The node answers 204; the arguments are not examined, and the
		// method name is not kept, so appendTo cannot reproduce this message.
		p.ignored = true
		return nil
	}
	if !p.top.has(topA) {
		return fmt.Errorf("a: %w", errKRPCMissing)
	}
	if p.top.raw(topA)[0] != 'd' {
		return fmt.Errorf("a: %w: want dict", errKRPCType)
	}
	if err = p.readArgs(m.Method, &m.Args); err != nil {
		return fmt.Errorf("a: %w", err)
	}
	return nil
}

// argsUsed lists, per method, the argument keys it reads; any other key in
// "a" is ignored.
var argsUsed = [...]uint32{
	methodPing:         1 << argID,
	methodFindNode:     1<<argID | 1<<argTarget | 1<<argWant,
	methodGetPeers:     1<<argID | 1<<argInfoHash | 1<<argWant,
	methodAnnouncePeer: 1<<argID | 1<<argInfoHash | 1<<argPort | 1<<argImplied | 1<<argToken,
	methodGet:          1<<argID | 1<<argTarget | 1<<argSeq | 1<<argWant,
	methodPut:          1<<argID | 1<<argToken | 1<<argV | 1<<argK | 1<<argSig | 1<<argSeq | 1<<argSalt | 1<<argCAS,
}

// readArgs checks and reads the arguments method needs into a.
func (p *krpcParse) readArgs(method krpcMethod, a *krpcArgs) error {
	f := &p.args
	p.ignored = p.ignored || f.extra || f.found&^argsUsed[method] != 0
	if err := f.fixed(argID, "id", a.ID[:]); err != nil {
		return err
	}
	var err error
	switch method {
	case methodFindNode:
		err = f.fixed(argTarget, "target", a.Target[:])
	case methodGetPeers:
		err = f.fixed(argInfoHash, "info_hash", a.InfoHash[:])
	case methodAnnouncePeer:
		err = p.readAnnounce(a)
	case methodGet:
		err = f.fixed(argTarget, "target", a.Target[:])
		if err == nil && f.has(argSeq) {
			a.Seq, err = f.seqInt(argSeq, "seq")
			a.HasSeq = true
		}
	case methodPut:
		err = p.readPut(a)
	}
	if err == nil && argsUsed[method]&(1<<argWant) != 0 && f.has(argWant) {
		a.Want, err = p.readWant()
	}
	return err
}

func (p *krpcParse) readAnnounce(a *krpcArgs) error {
	f := &p.args
	if err := f.fixed(argInfoHash, "info_hash", a.InfoHash[:]); err != nil {
		return err
	}
	var err error
	if f.has(argImplied) {
		if a.ImpliedPort, err = f.flag(argImplied, "implied_port"); err != nil {
			return err
		}
		p.ignored = p.ignored || !a.ImpliedPort // implied_port 0 is not written back
	}
	if f.has(argPort) || !a.ImpliedPort {
		port, err := f.int(argPort, "port")
		if err != nil {
			return err
		}
		// With implied_port the port is informative only (libtorrent sends
		// its listen port, possibly 0), so any 16-bit value will do.
		lo := int64(1)
		if a.ImpliedPort {
			lo = 0
		}
		if port < lo || port > 65535 {
			return fmt.Errorf("port: %w: %d", errKRPCValue, port)
		}
		a.Port = uint16(port)
		p.ignored = p.ignored || port == 0 // port 0 is not written back
	}
	a.Token, err = p.readToken(f, argToken)
	return err
}

// readPut reads a BEP 44 put: immutable (token, v) or mutable (also k, sig,
// seq; salt and cas optional). Sizes of v and salt are the store's business
// (errors 205, 207), so they are not limited here.
func (p *krpcParse) readPut(a *krpcArgs) error {
	f := &p.args
	var err error
	if a.Token, err = p.readToken(f, argToken); err != nil {
		return err
	}
	if !f.has(argV) {
		return fmt.Errorf("v: %w", errKRPCMissing)
	}
	a.V = f.raw(argV)
	if !f.has(argK) {
		// Immutable. sig, seq, salt and cas mean nothing here and are
		// ignored like unknown keys: anacrolix/dht sends "seq": 0 with
		// its immutable puts, and refusing them would split the network.
		if f.found&(1<<argSig|1<<argSeq|1<<argSalt|1<<argCAS) != 0 {
			p.ignored = true
		}
		return nil
	}
	a.HasK = true
	if err = f.fixed(argK, "k", a.K[:]); err != nil {
		return err
	}
	if err = f.fixed(argSig, "sig", a.Sig[:]); err != nil {
		return err
	}
	if a.Seq, err = f.seqInt(argSeq, "seq"); err != nil {
		return err
	}
	a.HasSeq = true
	if f.has(argSalt) {
		if a.Salt, err = f.str(argSalt, "salt"); err != nil {
			return err
		}
	}
	if f.has(argCAS) {
		a.CAS, err = f.seqInt(argCAS, "cas")
		a.HasCAS = true
	}
	return err
}

func (p *krpcParse) readToken(f *fieldSet, i int) ([]byte, error) {
	tok, err := f.str(i, "token")
	if err == nil && (len(tok) < minTokenLen || len(tok) > maxTokenLen) {
		err = fmt.Errorf("token: %w: %d bytes, want %d..%d", errKRPCSize, len(tok), minTokenLen, maxTokenLen)
	}
	return tok, err
}

// readWant reads the BEP 32 list of strings. Entries other than "n4" and
// "n6" are ignored; anything but the canonical ["n4"], ["n6"], ["n4","n6"]
// is marked as not reproducible.
func (p *krpcParse) readWant() (uint8, error) {
	raw := p.args.raw(argWant)
	if raw[0] != 'l' {
		return 0, fmt.Errorf("want: %w: want list", errKRPCType)
	}
	var want uint8
	canonical := true
	for off := 1; raw[off] != 'e'; {
		if !isDigit(raw[off]) {
			return 0, fmt.Errorf("want: %w: want list of strings", errKRPCType)
		}
		s, end, err := scanString(raw, off)
		if err != nil {
			return 0, err
		}
		var bit uint8
		switch string(s) {
		case "n4":
			bit = wantN4
		case "n6":
			bit = wantN6
		}
		canonical = canonical && bit > want // in order, no repeats, nothing unknown
		want |= bit
		off = end
	}
	p.ignored = p.ignored || !canonical || want == 0
	return want, nil
}

// finishReply reads "r". Only "id" is required; what else a response must
// hold depends on the query, which the caller knows.
func (p *krpcParse) finishReply(m *krpcMsg) error {
	if err := p.finishCommon(m); err != nil {
		return err
	}
	if !p.top.has(topR) {
		return fmt.Errorf("r: %w", errKRPCMissing)
	}
	if p.top.raw(topR)[0] != 'd' {
		return fmt.Errorf("r: %w: want dict", errKRPCType)
	}
	f := &p.reply
	p.ignored = p.ignored || f.extra
	r := &m.Reply
	if err := f.fixed(replyID, "id", r.ID[:]); err != nil {
		return fmt.Errorf("r: %w", err)
	}
	if err := p.readNodes(r); err != nil {
		return fmt.Errorf("r: %w", err)
	}
	if err := p.readItem(r); err != nil {
		return fmt.Errorf("r: %w", err)
	}
	var err error
	if f.has(replyToken) {
		if r.Token, err = p.readToken(f, replyToken); err != nil {
			return fmt.Errorf("r: %w", err)
		}
	}
	return nil
}

// readNodes reads and validates "nodes", "nodes6" and "values".
func (p *krpcParse) readNodes(r *krpcReply) error {
	f := &p.reply
	var err error
	if f.has(replyNodes) {
		if r.Nodes, err = f.str(replyNodes, "nodes"); err != nil {
			return err
		}
		if len(r.Nodes)%compactNodeLen != 0 {
			return fmt.Errorf("nodes: %w: %d bytes, want a multiple of %d", errKRPCSize, len(r.Nodes), compactNodeLen)
		}
	}
	if f.has(replyNodes6) {
		if r.Nodes6, err = f.str(replyNodes6, "nodes6"); err != nil {
			return err
		}
		if err = checkCompactNodes6(r.Nodes6); err != nil {
			return fmt.Errorf("nodes6: %w", err)
		}
	}
	if f.has(replyValues) {
		r.Values = f.raw(replyValues)
		if r.Values[0] != 'l' || f.peersBad {
			// the scan saw a problem; walk again for the precise error
			return fmt.Errorf("values: %w", walkPeers(r.Values, nil))
		}
	}
	return nil
}

// readItem reads the BEP 44 fields of a get response: "v", "seq", and "k"
// with "sig" (both or neither).
func (p *krpcParse) readItem(r *krpcReply) error {
	f := &p.reply
	var err error
	if f.has(replyV) {
		r.V = f.raw(replyV)
	}
	if f.has(replySeq) {
		if r.Seq, err = f.seqInt(replySeq, "seq"); err != nil {
			return err
		}
		r.HasSeq = true
	}
	if f.has(replyK) != f.has(replySig) {
		return fmt.Errorf("k and sig: %w: one without the other", errKRPCValue)
	}
	if !f.has(replyK) {
		return nil
	}
	r.HasK = true
	if err = f.fixed(replyK, "k", r.K[:]); err != nil {
		return err
	}
	return f.fixed(replySig, "sig", r.Sig[:])
}

// finishError reads "e": exactly [code, message].
func (p *krpcParse) finishError(m *krpcMsg) error {
	if err := p.finishCommon(m); err != nil {
		return err
	}
	raw := p.top.raw(topE)
	if raw == nil {
		return fmt.Errorf("e: %w", errKRPCMissing)
	}
	badList := func() error { return fmt.Errorf("e: %w: want [integer, string]", errKRPCType) }
	if raw[0] != 'l' || raw[1] != 'i' {
		return badList()
	}
	code, off, err := scanInt(raw, 1)
	if err != nil {
		return err
	}
	if !isDigit(raw[off]) {
		return badList()
	}
	if m.ErrMsg, off, err = scanString(raw, off); err != nil {
		return err
	}
	if raw[off] != 'e' {
		return badList()
	}
	if m.ErrCode = int(code); int64(m.ErrCode) != code {
		return fmt.Errorf("e: %w: code %d", errKRPCValue, code)
	}
	return nil
}
