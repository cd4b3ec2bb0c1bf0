// Package testkeys holds the master keys tests seal with. They are fixed, so
// that brokers started by one test (or restarted in it) open each other's
// records; they protect nothing.
package testkeys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"

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

// NewClientKeyPEM returns a new P-256 private key in PKCS#8 PEM, to import
// as a client key, and the base64url of its private scalar (a JWK's "d"),
// to look for where it must not be.
func NewClientKeyPEM() (pemText, d string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	scalar, err := k.Bytes() // fixed length (SEC 1 §2.3.6), as in a JWK
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), base64.RawURLEncoding.EncodeToString(scalar)
}
