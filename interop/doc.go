// Package interop checks kadchat against other people's code: the kadchat
// binary is built once from the parent module and driven through its line
// UI, while independent implementations run in the test process.
//
// Flow: a test starts one or more kadchat processes (driver_test.go), then
// talks to them through its stdin/stdout and through the network: an
// anacrolix/dht server for the DHT (dht_test.go, anacrolix_test.go) and a
// flynn/noise client framed only from SPEC.md section 4 for the sessions
// (noise_test.go), with the post-quantum exchange of 4.12 from the standard
// library's ML-KEM (pq_test.go); offline messages (drops_test.go) go through
// an anacrolix node and a libtorrent-rasterbar node (libtorrent_test.go: its
// Python binding, in a child process). BenchmarkDecodeAnacrolix decodes the same KRPC inputs as
// the main module's BenchmarkDecode, for .ci/interop-bench to compare.
//
// This is a separate module so that the main module keeps golang.org/x/crypto
// as its only dependency.
//
// Run: `cd interop && go test -count=1 ./...` (it builds the parent module
// first; KADCHAT_BIN=path drives a prebuilt binary instead, and
// KADCHAT_INTEROP_VERBOSE=1 passes -v to every kadchat). `.ci/interop-bench`
// from the repository root compares the decoders.
package interop
