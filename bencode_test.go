package main

import (
	"bytes"
	"errors"
	"reflect"
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
