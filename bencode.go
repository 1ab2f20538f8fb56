// Bencode, strict (SPEC.md 3.1; BEP 3): the encoding of every KRPC message
// and BEP 44 value.
//
// Flow: bytes go through the scanner primitives below (scanInt, scanString,
// dictReader, skipValue). They never copy and never allocate on success;
// strings come back as slices aliasing the input. krpc.go builds its
// single-pass message parser on them; checkBencode validates one whole
// value (the tree form, decodeBencode, is test code in bencode_test.go).
// Only canonical input is accepted, so every value has
// exactly one encoding: BEP 44 signs and hashes encodings, and a lenient
// decoder would let two different byte strings mean the same item.
package main

import (
	"bytes"
	"errors"
	"math"
	"strconv"
)

// Limits, see SPEC.md 3.1.
const (
	maxBencodeDepth     = 32      // lists/dicts nested inside one value
	maxBencodeIntDigits = 19      // digits of an integer: int64 has at most 19
	maxBencodeLenDigits = 8       // digits of a string length prefix
	maxBencodeString    = 1 << 20 // bytes in one string (a datagram is far smaller)
)

// Sentinel errors; a *bencodeError wraps one of them with the offset.
var (
	errBencodeEOF         = errors.New("unexpected end of input")
	errBencodeSyntax      = errors.New("invalid byte")
	errBencodeLeadingZero = errors.New("leading zero")
	errBencodeNegZero     = errors.New("negative zero")
	errBencodeEmptyInt    = errors.New("empty integer")
	errBencodeIntRange    = errors.New("integer out of int64 range")
	errBencodeStrLen      = errors.New("string length past end of input")
	errBencodeStrTooLong  = errors.New("string too long")
	errBencodeKeyOrder    = errors.New("dict keys not sorted")
	errBencodeDupKey      = errors.New("duplicate dict key")
	errBencodeDepth       = errors.New("nesting too deep")
	errBencodeTrailing    = errors.New("trailing bytes")
)

// bencodeError says what went wrong and where: "bencode: <what> at offset N".
type bencodeError struct {
	Off int
	Err error
}

func (e *bencodeError) Error() string {
	return "bencode: " + e.Err.Error() + " at offset " + strconv.Itoa(e.Off)
}

func (e *bencodeError) Unwrap() error { return e.Err }

func bencodeErr(off int, err error) error { return &bencodeError{Off: off, Err: err} }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanInt reads the integer "i<n>e" at b[off] and returns it and the offset
// just past it. Canonical only: no leading zeros, no "-0", no empty "ie".
func scanInt(b []byte, off int) (int64, int, error) {
	if off >= len(b) {
		return 0, 0, bencodeErr(off, errBencodeEOF)
	}
	if b[off] != 'i' {
		return 0, 0, bencodeErr(off, errBencodeSyntax)
	}
	i := off + 1
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	var u uint64 // 19 decimal digits always fit
	for ; i < len(b) && isDigit(b[i]); i++ {
		if i-start == maxBencodeIntDigits {
			return 0, 0, bencodeErr(start, errBencodeIntRange)
		}
		u = u*10 + uint64(b[i]-'0')
	}
	if i >= len(b) {
		return 0, 0, bencodeErr(i, errBencodeEOF)
	}
	if b[i] != 'e' {
		return 0, 0, bencodeErr(i, errBencodeSyntax)
	}
	switch n := i - start; {
	case n == 0:
		return 0, 0, bencodeErr(start, errBencodeEmptyInt)
	case b[start] == '0' && n > 1:
		return 0, 0, bencodeErr(start, errBencodeLeadingZero)
	case neg && u == 0:
		return 0, 0, bencodeErr(off+1, errBencodeNegZero)
	}
	if neg {
		if u > 1<<63 {
			return 0, 0, bencodeErr(start, errBencodeIntRange)
		}
		return int64(-u), i + 1, nil // -u wraps to the two's complement, also for 1<<63
	}
	if u > math.MaxInt64 {
		return 0, 0, bencodeErr(start, errBencodeIntRange)
	}
	return int64(u), i + 1, nil
}

// scanString reads the string "<len>:<bytes>" at b[off] and returns its
// contents (aliasing b, capacity clipped so appends cannot clobber b) and the
// offset just past it.
func scanString(b []byte, off int) ([]byte, int, error) {
	i, n := off, 0
	for ; i < len(b) && isDigit(b[i]); i++ {
		if i-off == maxBencodeLenDigits {
			return nil, 0, bencodeErr(off, errBencodeStrTooLong)
		}
		n = n*10 + int(b[i]-'0')
	}
	if i >= len(b) {
		return nil, 0, bencodeErr(i, errBencodeEOF)
	}
	if i == off || b[i] != ':' {
		return nil, 0, bencodeErr(i, errBencodeSyntax)
	}
	if b[off] == '0' && i-off > 1 {
		return nil, 0, bencodeErr(off, errBencodeLeadingZero)
	}
	if n > maxBencodeString {
		return nil, 0, bencodeErr(off, errBencodeStrTooLong)
	}
	i++
	if n > len(b)-i {
		return nil, 0, bencodeErr(off, errBencodeStrLen)
	}
	return b[i : i+n : i+n], i + n, nil
}

// dictReader walks the keys of a dict whose 'd' is just before off, checking
// that every key is a string strictly greater than the one before it (sorted
// as raw byte strings, BEP 3; equal means duplicate). The caller reads or
// skips each value and stores the offset past it back into off.
type dictReader struct {
	b       []byte
	off     int
	prev    []byte
	started bool
}

// next returns the next key, or ok == false once the closing 'e' is consumed.
func (d *dictReader) next() (key []byte, ok bool, err error) {
	if d.off >= len(d.b) {
		return nil, false, bencodeErr(d.off, errBencodeEOF)
	}
	if d.b[d.off] == 'e' {
		d.off++
		return nil, false, nil
	}
	at := d.off
	key, d.off, err = scanString(d.b, d.off)
	if err != nil {
		return nil, false, err
	}
	if d.started {
		switch c := bytes.Compare(key, d.prev); {
		case c == 0:
			return nil, false, bencodeErr(at, errBencodeDupKey)
		case c < 0:
			return nil, false, bencodeErr(at, errBencodeKeyOrder)
		}
	}
	d.started, d.prev = true, key
	return key, true, nil
}

// skipValue validates the value at b[off] and returns the offset past it.
// depth counts the lists and dicts enclosing the value.
func skipValue(b []byte, off, depth int) (int, error) {
	if off >= len(b) {
		return 0, bencodeErr(off, errBencodeEOF)
	}
	var err error
	switch c := b[off]; {
	case c == 'i':
		_, off, err = scanInt(b, off)
		return off, err
	case isDigit(c):
		_, off, err = scanString(b, off)
		return off, err
	case c != 'l' && c != 'd':
		return 0, bencodeErr(off, errBencodeSyntax)
	case depth >= maxBencodeDepth:
		return 0, bencodeErr(off, errBencodeDepth)
	case c == 'l':
		for off++; ; {
			if off >= len(b) {
				return 0, bencodeErr(off, errBencodeEOF)
			}
			if b[off] == 'e' {
				return off + 1, nil
			}
			if off, err = skipValue(b, off, depth+1); err != nil {
				return 0, err
			}
		}
	}
	d := dictReader{b: b, off: off + 1}
	for {
		_, ok, err := d.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return d.off, nil
		}
		if d.off, err = skipValue(b, d.off, depth+1); err != nil {
			return 0, err
		}
	}
}

// checkBencode reports whether b is exactly one canonical bencode value
// within the limits, with nothing after it.
func checkBencode(b []byte) error {
	end, err := skipValue(b, 0, 0)
	if err != nil {
		return err
	}
	if end != len(b) {
		return bencodeErr(end, errBencodeTrailing)
	}
	return nil
}

// appendBencodeString appends "<len>:<s>".
func appendBencodeString(dst, s []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(s)), 10)
	dst = append(dst, ':')
	return append(dst, s...)
}

// appendBencodeKey is appendBencodeString for a constant key, without a
// []byte conversion.
func appendBencodeKey(dst []byte, s string) []byte {
	dst = strconv.AppendInt(dst, int64(len(s)), 10)
	dst = append(dst, ':')
	return append(dst, s...)
}

// appendBencodeInt appends "i<n>e".
func appendBencodeInt(dst []byte, i int64) []byte {
	dst = append(dst, 'i')
	dst = strconv.AppendInt(dst, i, 10)
	return append(dst, 'e')
}
