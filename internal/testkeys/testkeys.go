// Package testkeys holds the master keys tests seal with. They are fixed, so
// that brokers started by one test (or restarted in it) open each other's
// records; they protect nothing.
package testkeys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"

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

// NewServiceAccountKey returns a Google service account key file for a new
// RSA key whose private_key_id is kid, with tokenURI as its token_uri, the
// key, and the base64url of its private members (a JWK's d, p, q, dp, dq
// and qi), to look for where they must not be.
func NewServiceAccountKey(kid, tokenURI string) (file []byte, key *rsa.PrivateKey, private []string) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	file, err = json.Marshal(map[string]string{
		"type": "service_account", "project_id": "demo-project", "private_key_id": kid,
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "reporter@demo-project.iam.gserviceaccount.com", "client_id": "1098765432101234567890",
		"auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": tokenURI,
	})
	if err != nil {
		panic(err)
	}
	for _, n := range []*big.Int{k.D, k.Primes[0], k.Primes[1], k.Precomputed.Dp, k.Precomputed.Dq, k.Precomputed.Qinv} {
		private = append(private, base64.RawURLEncoding.EncodeToString(n.Bytes()))
	}
	return file, k, private
}

// PrivatePart returns the base64 characters of a PEM PKCS#8 private key
// (ECDSA or RSA) that encode only bytes of its private scalar or exponent:
// what a leak check looks for, since the PEM armor and the DER around the
// secret (algorithm identifiers, public key) also appear in certificates.
func PrivatePart(pemText string) string {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		panic("testkeys: not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		panic(err)
	}
	var secret []byte
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if secret, err = k.Bytes(); err != nil {
			panic(err)
		}
	case *rsa.PrivateKey:
		secret = k.D.Bytes()
	default:
		panic("testkeys: not an ECDSA or RSA key")
	}
	off := bytes.Index(block.Bytes, secret)
	if off < 0 {
		panic("testkeys: the secret is not in the key's DER")
	}
	start, end := (off+2)/3*4, (off+len(secret))/3*4
	return base64.StdEncoding.EncodeToString(block.Bytes)[start:end]
}
