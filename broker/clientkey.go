package broker

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Client key algorithms: the JWS algorithms the broker signs client
// assertions with.
const (
	KeyRS256 = "RS256"
	KeyES256 = "ES256"
	KeyEdDSA = "EdDSA"
)

// DefaultClientKeyAlgorithm is generated when a provider names none.
const DefaultClientKeyAlgorithm = KeyES256

// DefaultClientKeyOverlap is how long a replaced client key stays in the
// JWKS when a provider's configuration brings a new one.
const DefaultClientKeyOverlap = 24 * time.Hour

const maxClientKeyOverlap = 30 * 24 * time.Hour

// ClientKey is a key pair the broker signs client assertions with
// (private_key_jwt). The private half is write-only: it is stored sealed,
// used for signing, and never returned by the admin API.
type ClientKey struct {
	KeyID     string // "kid"; the RFC 7638 thumbprint unless imported with one
	Algorithm string // KeyRS256, KeyES256 or KeyEdDSA
	// Private is the private key; never logged or returned.
	Private    crypto.Signer
	CreateTime time.Time
	// RetireTime is when a replaced key leaves the JWKS; zero for the key
	// that signs.
	RetireTime time.Time
}

// Format implements fmt.Formatter so that no verb prints the private key.
func (k ClientKey) Format(f fmt.State, _ rune) {
	_, _ = fmt.Fprintf(f, "ClientKey{%s %s}", k.KeyID, k.Algorithm)
}

// JWK returns the private key as a JSON Web Key.
func (k ClientKey) JWK() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.Private, KeyID: k.KeyID, Algorithm: k.Algorithm, Use: "sig"}
}

// Public returns the public key as a JSON Web Key.
func (k ClientKey) Public() jose.JSONWebKey {
	jwk := k.JWK()
	return jwk.Public()
}

// Thumbprint returns the RFC 7638 SHA-256 thumbprint of the public key,
// base64url-encoded.
func (k ClientKey) Thumbprint() string {
	pub := k.Public()
	sum, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(sum)
}

// GenerateClientKey makes a new key for alg (RSA 2048 for RS256, P-256 for
// ES256, Ed25519 for EdDSA); its KeyID is its thumbprint. An unknown alg
// wraps ErrInvalidArgument.
func GenerateClientKey(alg string) (ClientKey, error) {
	if alg == "" {
		alg = DefaultClientKeyAlgorithm
	}
	var priv crypto.Signer
	var err error
	switch alg {
	case KeyRS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case KeyES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyEdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return ClientKey{}, invalidf("client key algorithm %q is not RS256, ES256 or EdDSA", alg)
	}
	if err != nil {
		return ClientKey{}, fmt.Errorf("generate client key: %w", err)
	}
	return newClientKey(priv, alg, "")
}

// ParseClientKey reads a private key in PEM (PKCS#8, PKCS#1 or SEC 1) or as
// a JWK. alg may be empty: the JWK's own "alg", else the one the key type
// allows (RS256 for RSA, ES256 for P-256, EdDSA for Ed25519). The KeyID is
// the JWK's "kid", else the thumbprint. Errors wrap ErrInvalidArgument and
// never quote the input.
func ParseClientKey(data []byte, alg string) (ClientKey, error) {
	text := strings.TrimSpace(string(data))
	var priv any
	kid := ""
	switch {
	case strings.HasPrefix(text, "{"):
		var jwk jose.JSONWebKey
		if err := json.Unmarshal([]byte(text), &jwk); err != nil {
			return ClientKey{}, invalidf("client key: not a valid JWK")
		}
		if jwk.IsPublic() {
			return ClientKey{}, invalidf("client key: the JWK is a public key; the private key is needed")
		}
		priv, kid = jwk.Key, jwk.KeyID
		if alg == "" {
			alg = jwk.Algorithm
		}
	case strings.HasPrefix(text, "-----BEGIN"):
		block, _ := pem.Decode([]byte(text))
		if block == nil {
			return ClientKey{}, invalidf("client key: not a valid PEM block")
		}
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			priv, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			priv, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			priv, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			return ClientKey{}, invalidf("client key: PEM block %q is not a private key", block.Type)
		}
		if err != nil {
			return ClientKey{}, invalidf("client key: the PEM private key does not parse")
		}
	default:
		return ClientKey{}, invalidf("client key: neither PEM nor a JWK")
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return ClientKey{}, invalidf("client key: not a signing key")
	}
	if alg == "" {
		alg = algorithmOf(signer)
	}
	return newClientKey(signer, alg, kid)
}

// algorithmOf is the algorithm key's type allows; "" when none.
func algorithmOf(key crypto.Signer) string {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return KeyRS256
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P256() {
			return KeyES256
		}
	case ed25519.PrivateKey:
		return KeyEdDSA
	}
	return ""
}

// newClientKey checks that priv suits alg and names the key.
func newClientKey(priv crypto.Signer, alg, kid string) (ClientKey, error) {
	if got := algorithmOf(priv); got == "" || got != alg {
		return ClientKey{}, invalidf("client key: %s needs %s", orString(alg, "the algorithm"), keyTypeFor(alg))
	}
	if k, ok := priv.(*rsa.PrivateKey); ok && k.N.BitLen() < 2048 {
		return ClientKey{}, invalidf("client key: RSA keys must have at least 2048 bits")
	}
	k := ClientKey{Private: priv, Algorithm: alg, KeyID: kid}
	if k.KeyID == "" {
		k.KeyID = k.Thumbprint()
	}
	if k.KeyID == "" {
		return ClientKey{}, errors.New("client key: no thumbprint")
	}
	return k, nil
}

func keyTypeFor(alg string) string {
	switch alg {
	case KeyRS256:
		return "an RSA key"
	case KeyES256:
		return "a P-256 key"
	case KeyEdDSA:
		return "an Ed25519 key"
	}
	return "one of RS256, ES256, EdDSA"
}

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// SigningKey returns the key that signs p's client assertions, and false
// when p has none.
func (p *Provider) SigningKey() (ClientKey, bool) {
	for _, k := range p.ClientKeys {
		if k.RetireTime.IsZero() {
			return k, true
		}
	}
	return ClientKey{}, false
}

// PublicKeys returns the public halves of p's keys that are served at now:
// the signing key and the replaced ones whose overlap has not ended.
func (p *Provider) PublicKeys(now time.Time) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range p.ClientKeys {
		if k.RetireTime.IsZero() || now.Before(k.RetireTime) {
			out = append(out, k.Public())
		}
	}
	return out
}

// withKey returns keys with k as the signing key: the one that signed
// before is kept until now+overlap (dropped when overlap is zero), replaced
// keys whose overlap has ended are dropped. A k with the signing key's
// thumbprint changes nothing.
func withKey(keys []ClientKey, k ClientKey, now time.Time, overlap time.Duration) []ClientKey {
	out := []ClientKey{k}
	for _, old := range keys {
		switch {
		case old.Thumbprint() == k.Thumbprint():
			if old.RetireTime.IsZero() {
				return keys
			}
		case old.RetireTime.IsZero():
			if overlap > 0 {
				old.RetireTime = now.Add(overlap)
				out = append(out, old)
			}
		case now.Before(old.RetireTime):
			out = append(out, old)
		}
	}
	return out
}
