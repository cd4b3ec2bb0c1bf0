// Package testkeys holds the master keys tests seal with. They are fixed, so
// that brokers started by one test (or restarted in it) open each other's
// records; they protect nothing.
package testkeys

import (
	"bytes"

	"github.com/tokenbroker/tokenbroker/broker/seal"
)

// Primary and Older are two distinct test keys.
var (
	Primary = seal.Key{ID: "test1", Secret: bytes.Repeat([]byte{0x5a}, seal.KeySize)}
	Older   = seal.Key{ID: "test0", Secret: bytes.Repeat([]byte{0xa5}, seal.KeySize)}
)

// Keyring returns a keyring sealing with Primary.
func Keyring() *seal.Keyring {
	k, err := seal.NewKeyring(Primary)
	if err != nil {
		panic(err)
	}
	return k
}
