package oauth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// ClientAuthenticator is one way a client authenticates to a provider's
// endpoints (RFC 6749 §2.3): a client secret in one of its styles, a signed
// client assertion (RFC 7523 §2.2), and so on. Each is its own type; the
// provider's configuration picks one, and token, introspection and
// revocation requests all go through it.
type ClientAuthenticator interface {
	// Authenticate adds the client's credentials for a request to endpoint
	// (an absolute URL) to form and header. Its errors are safe to log:
	// they carry no credential.
	Authenticate(endpoint string, form url.Values, header http.Header) error
	// Secrets returns the values that must never appear in an error, even
	// when a provider echoes them (a client secret, in whatever form it
	// was sent). Credentials put in the form's client_secret or
	// client_assertion are redacted without being named here.
	Secrets() []string
}

// ClientSecret authenticates with a client id and secret (RFC 6749 §2.3.1)
// in the given style.
type ClientSecret struct {
	ID     string
	Secret string
	Style  AuthStyle
}

// Authenticate puts the id and secret in an HTTP Basic header, the form or
// both, as Style says. An invalid Style is an error.
func (c ClientSecret) Authenticate(_ string, form url.Values, header http.Header) error {
	if !c.Style.valid() {
		return errInvalidStyle(c.Style)
	}
	if c.Style != AuthBasic {
		form.Set("client_id", c.ID)
		if c.Secret != "" { // RFC 6749 §2.3.1: may be omitted when empty
			form.Set("client_secret", c.Secret)
		}
	}
	if c.Style != AuthPost {
		header.Set("Authorization", basicAuth(c.ID, c.Secret))
	}
	return nil
}

// Secrets returns the secret.
func (c ClientSecret) Secrets() []string { return []string{c.Secret} }

// authenticator is r.Auth, or the client secret of r in r.AuthStyle.
func (r *Request) authenticator() ClientAuthenticator {
	if r.Auth != nil {
		return r.Auth
	}
	return ClientSecret{ID: r.ClientID, Secret: r.ClientSecret, Style: r.AuthStyle}
}

// ClientAssertionType is the client_assertion_type of a JWT client
// assertion (RFC 7523 §2.2).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// DefaultAssertionLifetime is how long a client assertion is valid when
// PrivateKeyJWT names no lifetime.
const DefaultAssertionLifetime = time.Minute

// PrivateKeyJWT authenticates with a client assertion signed by the
// client's private key (RFC 7523 §2.2, OpenID Connect Core §9
// private_key_jwt): iss and sub are the client id, aud is Audience, jti is
// new for every request, and the assertion expires after Lifetime.
type PrivateKeyJWT struct {
	ClientID string
	// Key is the private key, with its KeyID and Algorithm (RS256, ES256
	// or EdDSA) set.
	Key jose.JSONWebKey
	// Audience is the assertion's aud; empty means the endpoint the
	// request goes to.
	Audience string
	// Lifetime bounds the assertion's validity; zero means
	// DefaultAssertionLifetime.
	Lifetime time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// ErrClientAssertion means a client assertion could not be signed: the
// key is unusable for its algorithm, or there is no key.
var ErrClientAssertion = errors.New("oauth: cannot sign client assertion")

// Authenticate signs a new assertion and puts it in the form with
// client_assertion_type and client_id. Its errors wrap ErrClientAssertion.
func (a PrivateKeyJWT) Authenticate(endpoint string, form url.Values, _ http.Header) error {
	assertion, err := a.Assertion(endpoint)
	if err != nil {
		return err
	}
	form.Set("client_id", a.ClientID)
	form.Set("client_assertion_type", ClientAssertionType)
	form.Set("client_assertion", assertion)
	return nil
}

// Secrets returns nothing: the assertion travels in client_assertion, and
// the private key never leaves the process.
func (a PrivateKeyJWT) Secrets() []string { return nil }

// Assertion returns a new signed assertion for a request to endpoint.
// Errors wrap ErrClientAssertion.
func (a PrivateKeyJWT) Assertion(endpoint string) (string, error) {
	if a.Key.Key == nil || a.Key.IsPublic() {
		return "", fmt.Errorf("%w: no private key", ErrClientAssertion)
	}
	alg := jose.SignatureAlgorithm(a.Key.Algorithm)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: a.Key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		// go-jose's errors name the algorithm or key type, never the key.
		return "", fmt.Errorf("%w: key %s: %v", ErrClientAssertion, a.Key.KeyID, err)
	}
	var jti [18]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("%w: %v", ErrClientAssertion, err)
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	aud := a.Audience
	if aud == "" {
		aud = endpoint
	}
	t := now()
	lifetime := a.Lifetime
	if lifetime <= 0 {
		lifetime = DefaultAssertionLifetime
	}
	out, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: a.ClientID, Subject: a.ClientID, Audience: jwt.Audience{aud},
		ID: base64.RawURLEncoding.EncodeToString(jti[:]), IssuedAt: jwt.NewNumericDate(t),
		NotBefore: jwt.NewNumericDate(t), Expiry: jwt.NewNumericDate(t.Add(lifetime)),
	}).Serialize()
	if err != nil {
		return "", fmt.Errorf("%w: key %s: %v", ErrClientAssertion, a.Key.KeyID, err)
	}
	return out, nil
}
