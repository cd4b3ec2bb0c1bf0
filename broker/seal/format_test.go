package seal_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
)

// This file re-implements the documented format independently of the
// package, so that a change to the format fails a test.

// openWith opens a sealed value as the package documentation describes it,
// with AES-256-GCM under key.
func openWith(key, sealed []byte, etcdKey string) bool {
	if len(sealed) < 2 || sealed[0] != 1 || len(sealed) < 2+int(sealed[1])+12+16 {
		return false
	}
	id := sealed[2 : 2+int(sealed[1])]
	nonce := sealed[2+len(id) : 2+len(id)+12]
	ciphertext := sealed[2+len(id)+12:]
	block, err := aes.NewCipher(key)
	if err != nil {
		return false
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return false
	}
	aad := "tokenbroker/seal/v1\x00" + string(id) + "\x00" + etcdKey
	_, err = aead.Open(nil, nonce, ciphertext, []byte(aad))
	return err == nil
}

func rawOpens(secret, sealed []byte, etcdKey string) bool {
	return openWith(secret, sealed, etcdKey)
}

func derivedOpens(secret, sealed []byte, etcdKey string) bool {
	key, err := hkdf.Key(sha256.New, secret, nil, "tokenbroker seal v1", 32)
	if err != nil {
		return false
	}
	return openWith(key, sealed, etcdKey)
}
