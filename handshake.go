// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s sessions.
//
// SKELETON: to be written by the sessions work.
package main

// Packet types of the session layer. None of them is 'd' (0x64), the first
// byte of every KRPC message, so one socket carries both.
const (
	packetInitiation  = 1
	packetResponse    = 2
	packetCookieReply = 3
	packetTransport   = 4
)

// isSessionPacketType reports whether b is the first byte of a session packet.
func isSessionPacketType(b byte) bool { return b >= packetInitiation && b <= packetTransport }
