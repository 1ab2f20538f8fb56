// BenchmarkDecodeAnacrolix: anacrolix/torrent's bencode decoding the same
// KRPC datagrams into anacrolix/dht's krpc.Msg as the main module's
// BenchmarkDecode parses with parseKRPC, so .ci/interop-bench can print the
// ratio per input. Sub-benchmark names match BenchmarkDecode's.
package interop

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/anacrolix/dht/v2/krpc"
	"github.com/anacrolix/torrent/bencode"
)

// krpcTestdata is the main module's KRPC sample directory.
const krpcTestdata = "../testdata/krpc"

// decodeInputs are BenchmarkDecode's inputs, by sub-benchmark name.
var decodeInputs = []struct{ name, file string }{
	{"get_peers_response", "get_peers_response.bin"},
	{"ping_query", "ping_query.bin"},
}

func BenchmarkDecodeAnacrolix(b *testing.B) {
	for _, in := range decodeInputs {
		data, err := os.ReadFile(filepath.Join(krpcTestdata, in.file))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(in.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				var m krpc.Msg
				if err := bencode.Unmarshal(data, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestDecodeAnacrolixInputs checks that anacrolix decodes each benchmark
// input into the message it is, so the benchmark measures real work.
func TestDecodeAnacrolixInputs(t *testing.T) {
	for _, in := range decodeInputs {
		data, err := os.ReadFile(filepath.Join(krpcTestdata, in.file))
		if err != nil {
			t.Fatal(err)
		}
		var m krpc.Msg
		if err := bencode.Unmarshal(data, &m); err != nil {
			t.Fatalf("%s: %v", in.file, err)
		}
		switch in.name {
		case "ping_query":
			if m.Y != "q" || m.Q != "ping" || m.A == nil {
				t.Errorf("%s decoded to %+v, want a ping query", in.file, m)
			}
		case "get_peers_response":
			if m.Y != "r" || m.R == nil || len(m.R.Nodes) == 0 || len(m.R.Values) == 0 || m.R.Token == nil {
				t.Errorf("%s decoded to %+v, want a get_peers response with nodes, values and token", in.file, m)
			}
		}
	}
}
