// Package pkcs11 keeps the broker's master keys wrapped by a key-encryption
// key (KEK) that never leaves a PKCS#11 token (an HSM, or SoftHSM):
// envelope encryption. The key file holds "<id>:<base64 of the wrapped
// key>" lines; at start the broker asks the token to unwrap each one
// (AES-256-GCM under the KEK, the key id as additional data) and seals with
// the result as with a plain key file.
//
// The binding to the token's C library needs cgo; it is built with the
// build tag "pkcs11". Without it, Open reports ErrNotBuilt, and the default
// binary stays static and cgo-free.
package pkcs11

import "errors"

// Config locates the token and the KEK.
type Config struct {
	// Module is the path of the token's PKCS#11 library, e.g.
	// /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel names the token (slot) to use.
	TokenLabel string
	// PIN is the user PIN of the token.
	PIN string
	// KeyLabel is the CKA_LABEL of the AES KEK.
	KeyLabel string
}

// ErrNotBuilt: this binary was built without PKCS#11 support.
var ErrNotBuilt = errors.New("pkcs11: this binary was built without PKCS#11 support; build it with -tags pkcs11 (needs cgo)")

// kekAAD binds a wrapped key to its id.
func kekAAD(id string) []byte { return []byte("tokenbroker/master-key/v1\x00" + id) }

const (
	ivSize  = 12
	tagBits = 128
	kekSize = 32
)
