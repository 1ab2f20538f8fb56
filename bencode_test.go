package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestDecodeBencode(t *testing.T) {
	deep := strings.Repeat("l", maxBencodeDepth) + strings.Repeat("e", maxBencodeDepth)
	tooDeep := strings.Repeat("l", maxBencodeDepth+1) + strings.Repeat("e", maxBencodeDepth+1)
	tests := []struct {
		name    string
		in      string
		want    any
		wantErr error
		wantOff int
	}{
		{"zero", "i0e", int64(0), nil, 0},
		{"int", "i42e", int64(42), nil, 0},
		{"negative", "i-42e", int64(-42), nil, 0},
		{"max int64", "i9223372036854775807e", int64(9223372036854775807), nil, 0},
		{"min int64", "i-9223372036854775808e", int64(-9223372036854775808), nil, 0},
		{"string", "4:spam", []byte("spam"), nil, 0},
		{"empty string", "0:", []byte{}, nil, 0},
		{"binary string", "3:\x00\xff\x01", []byte{0, 0xff, 1}, nil, 0},
		{"list", "l4:spami42ee", []any{[]byte("spam"), int64(42)}, nil, 0},
		{"empty list", "le", []any{}, nil, 0},
		{"dict", "d3:bar4:spam3:fooi42ee", map[string]any{"bar": []byte("spam"), "foo": int64(42)}, nil, 0},
		{"empty dict", "de", map[string]any{}, nil, 0},
		{"empty key", "d0:i1e1:ai2ee", map[string]any{"": int64(1), "a": int64(2)}, nil, 0},
		{"prefix key sorts first", "d1:ai1e2:aai2ee", map[string]any{"a": int64(1), "aa": int64(2)}, nil, 0},
		{"binary keys sort bytewise", "d1:\x7fi1e1:\x80i2ee", map[string]any{"\x7f": int64(1), "\x80": int64(2)}, nil, 0},
		{"depth limit", deep, nil, nil, 0},

		{"empty input", "", nil, errBencodeEOF, 0},
		{"leading zero int", "i03e", nil, errBencodeLeadingZero, 1},
		{"leading zero negative", "i-03e", nil, errBencodeLeadingZero, 2},
		{"negative zero", "i-0e", nil, errBencodeNegZero, 1},
		{"empty int", "ie", nil, errBencodeEmptyInt, 1},
		{"minus only", "i-e", nil, errBencodeEmptyInt, 2},
		{"plus sign", "i+1e", nil, errBencodeSyntax, 1},
		{"int overflow", "i9223372036854775808e", nil, errBencodeIntRange, 1},
		{"int underflow", "i-9223372036854775809e", nil, errBencodeIntRange, 2},
		{"int too many digits", "i12345678901234567890e", nil, errBencodeIntRange, 1},
		{"unterminated int", "i12", nil, errBencodeEOF, 3},
		{"leading zero length", "01:a", nil, errBencodeLeadingZero, 0},
		{"string past end", "5:abc", nil, errBencodeStrLen, 0},
		{"huge length", "999999999:a", nil, errBencodeStrTooLong, 0},
		{"length over limit", "2000000:a", nil, errBencodeStrTooLong, 0},
		{"missing colon", "3abc", nil, errBencodeSyntax, 1},
		{"negative length", "-1:a", nil, errBencodeSyntax, 0},
		{"unsorted keys", "d1:bi1e1:ai2ee", nil, errBencodeKeyOrder, 7},
		{"duplicate keys", "d1:ai1e1:ai2ee", nil, errBencodeDupKey, 7},
		{"int key", "di1ei2ee", nil, errBencodeSyntax, 1},
		{"dict missing value", "d1:ae", nil, errBencodeSyntax, 4},
		{"unterminated list", "l", nil, errBencodeEOF, 1},
		{"unterminated dict", "d1:ai1e", nil, errBencodeEOF, 7},
		{"trailing bytes", "i1ei2e", nil, errBencodeTrailing, 3},
		{"trailing newline", "4:spam\n", nil, errBencodeTrailing, 6},
		{"bad byte", "x", nil, errBencodeSyntax, 0},
		{"too deep", tooDeep, nil, errBencodeDepth, maxBencodeDepth},
		{"stray e", "e", nil, errBencodeSyntax, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeBencode([]byte(tt.in))
			cerr := checkBencode([]byte(tt.in))
			if tt.wantErr == nil {
				if err != nil || cerr != nil {
					t.Fatalf("decodeBencode(%q) = %v, %v; checkBencode = %v", tt.in, got, err, cerr)
				}
				if tt.want != nil && !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("decodeBencode(%q) = %#v, want %#v", tt.in, got, tt.want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || !errors.Is(cerr, tt.wantErr) {
				t.Fatalf("decodeBencode(%q) error = %v, checkBencode = %v, want %v", tt.in, err, cerr, tt.wantErr)
			}
			if got != nil {
				t.Fatalf("decodeBencode(%q) = %v with error", tt.in, got)
			}
			var be *bencodeError
			if !errors.As(err, &be) || be.Off != tt.wantOff {
				t.Fatalf("decodeBencode(%q) error %v, want offset %d", tt.in, err, tt.wantOff)
			}
		})
	}
}

func TestBencodeErrorText(t *testing.T) {
	err := checkBencode([]byte("d1:bi1e1:ai2ee"))
	if got, want := err.Error(), "bencode: dict keys not sorted at offset 7"; got != want {
		t.Fatalf("error = %q, want %q", got, want)
	}
}

var bencodeValid = []string{
	"i0e", "i-1e", "0:", "4:spam", "le", "de", "l4:spami42ee", "d3:bar4:spam3:fooi42ee",
	"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
	"lli1eeld1:xleeee", "d0:0:1:a0:e",
}

func TestBencodeRoundTrip(t *testing.T) {
	for _, in := range bencodeValid {
		v, err := decodeBencode([]byte(in))
		if err != nil {
			t.Fatalf("decodeBencode(%q): %v", in, err)
		}
		out, err := appendBencode(nil, v)
		if err != nil || string(out) != in {
			t.Fatalf("appendBencode(decode(%q)) = %q, %v", in, out, err)
		}
	}
}

// TestBencodeNoStrictPrefix: no proper prefix of a value is a value, and
// nothing can be appended to one.
func TestBencodeNoStrictPrefix(t *testing.T) {
	for _, in := range bencodeValid {
		for i := range len(in) {
			if err := checkBencode([]byte(in[:i])); err == nil {
				t.Errorf("checkBencode(%q) (prefix of %q) accepted", in[:i], in)
			}
		}
		if err := checkBencode([]byte(in + "e")); err == nil {
			t.Errorf("checkBencode(%q) accepted", in+"e")
		}
	}
}

func TestAppendBencodePrimitives(t *testing.T) {
	if got := appendBencodeString([]byte("x"), []byte("spam")); string(got) != "x4:spam" {
		t.Errorf("appendBencodeString = %q", got)
	}
	if got := appendBencodeInt(nil, -3); string(got) != "i-3e" {
		t.Errorf("appendBencodeInt = %q", got)
	}
	m := map[string]any{"b": 1, "a": "x", "c": []any{int64(-1)}}
	if got, err := appendBencode(nil, m); err != nil || string(got) != "d1:a1:x1:bi1e1:cli-1eee" {
		t.Errorf("appendBencode(%v) = %q, %v", m, got, err)
	}
	if _, err := appendBencode(nil, 1.5); err == nil {
		t.Error("appendBencode(float) succeeded")
	}
}

func FuzzBencode(f *testing.F) {
	for _, s := range bencodeValid {
		f.Add([]byte(s))
	}
	f.Add([]byte("i-0e"))
	f.Add([]byte("d1:bi1e1:ai2ee"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decodeBencode(b)
		cerr := checkBencode(b)
		if (err == nil) != (cerr == nil) {
			t.Fatalf("decodeBencode(%q) err %v, checkBencode err %v", b, err, cerr)
		}
		if err != nil {
			if v != nil {
				t.Fatalf("decodeBencode(%q) = %v with error %v", b, v, err)
			}
			if !strings.HasPrefix(err.Error(), "bencode: ") {
				t.Fatalf("error %q lacks the layer prefix", err)
			}
			return
		}
		out, err := appendBencode(nil, v)
		if err != nil {
			t.Fatalf("appendBencode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip of %q gave %q", b, out)
		}
	})
}

// decodeBencode decodes one canonical value into a tree: []byte (copied),
// int64, []any and map[string]any. On error the value is nil.
func decodeBencode(b []byte) (any, error) {
	v, end, err := decodeValue(b, 0, 0)
	if err != nil {
		return nil, err
	}
	if end != len(b) {
		return nil, bencodeErr(end, errBencodeTrailing)
	}
	return v, nil
}

// decodeValue is skipValue building the tree; the same primitives enforce
// the same rules.
func decodeValue(b []byte, off, depth int) (any, int, error) {
	if off >= len(b) {
		return nil, 0, bencodeErr(off, errBencodeEOF)
	}
	switch c := b[off]; {
	case c == 'i':
		n, end, err := scanInt(b, off)
		if err != nil {
			return nil, 0, err
		}
		return n, end, nil
	case isDigit(c):
		s, end, err := scanString(b, off)
		if err != nil {
			return nil, 0, err
		}
		return bytes.Clone(s), end, nil
	case c != 'l' && c != 'd':
		return nil, 0, bencodeErr(off, errBencodeSyntax)
	case depth >= maxBencodeDepth:
		return nil, 0, bencodeErr(off, errBencodeDepth)
	case c == 'l':
		return decodeList(b, off, depth)
	}
	return decodeDict(b, off, depth)
}

func decodeList(b []byte, off, depth int) (any, int, error) {
	l := []any{}
	for off++; ; {
		if off >= len(b) {
			return nil, 0, bencodeErr(off, errBencodeEOF)
		}
		if b[off] == 'e' {
			return l, off + 1, nil
		}
		v, end, err := decodeValue(b, off, depth+1)
		if err != nil {
			return nil, 0, err
		}
		l, off = append(l, v), end
	}
}

func decodeDict(b []byte, off, depth int) (any, int, error) {
	m := map[string]any{}
	d := dictReader{b: b, off: off + 1}
	for {
		key, ok, err := d.next()
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			return m, d.off, nil
		}
		var v any
		if v, d.off, err = decodeValue(b, d.off, depth+1); err != nil {
			return nil, 0, err
		}
		m[string(key)] = v
	}
}

// appendBencode appends the canonical encoding of a tree as decodeBencode
// returns it (string and int are accepted too). Dict keys are sorted.
func appendBencode(dst []byte, v any) ([]byte, error) {
	var err error
	switch v := v.(type) {
	case []byte:
		return appendBencodeString(dst, v), nil
	case string:
		return appendBencodeKey(dst, v), nil
	case int64:
		return appendBencodeInt(dst, v), nil
	case int:
		return appendBencodeInt(dst, int64(v)), nil
	case []any:
		dst = append(dst, 'l')
		for _, e := range v {
			if dst, err = appendBencode(dst, e); err != nil {
				return nil, err
			}
		}
		return append(dst, 'e'), nil
	case map[string]any:
		dst = append(dst, 'd')
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys) // Go compares strings bytewise, as BEP 3 wants
		for _, k := range keys {
			dst = appendBencodeKey(dst, k)
			if dst, err = appendBencode(dst, v[k]); err != nil {
				return nil, err
			}
		}
		return append(dst, 'e'), nil
	}
	return nil, fmt.Errorf("bencode: cannot encode %T", v)
}

// BenchmarkDecodeTree decodes BenchmarkDecode's inputs with the tree
// decoder: a floor for what a KRPC parser built on the tree would cost, to
// weigh against parseKRPC's single pass (issue 7).
func BenchmarkDecodeTree(b *testing.B) {
	for _, bm := range decodeBenchInputs {
		in, err := os.ReadFile(bm.file)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, err := decodeBencode(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
