// kadchat: serverless chat over the BitTorrent mainline DHT.
//
// SKELETON.
package main

func main() {}
