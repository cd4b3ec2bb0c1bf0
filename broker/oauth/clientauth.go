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
	aud := a.Audience
	if aud == "" {
		aud = endpoint
	}
	out, err := SignAssertion(a.Key, AssertionClaims{Issuer: a.ClientID, Subject: a.ClientID, Audience: aud, Lifetime: a.Lifetime, NotBefore: true}, a.Now)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrClientAssertion, err)
	}
	return out, nil
}

// NoClientAuth authenticates nothing: the request carries no client
// credentials and no client_id (AuthNone).
type NoClientAuth struct{}

// Authenticate leaves form and header as they are.
func (NoClientAuth) Authenticate(string, url.Values, http.Header) error { return nil }

// Secrets returns nothing.
func (NoClientAuth) Secrets() []string { return nil }

// JWTBearerGrantType is the grant_type of the JWT-bearer authorization
// grant (RFC 7523 §2.1); the signed assertion goes in the assertion
// parameter.
const JWTBearerGrantType = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// AssertionClaims are the claims of a JWT the broker signs (RFC 7523 §3).
type AssertionClaims struct {
	Issuer   string
	Subject  string // left out when empty
	Audience string
	// Scope, when set, is sent as a "scope" claim (space-separated), as
	// Google's service accounts want it.
	Scope string
	// Lifetime bounds the validity; zero means DefaultAssertionLifetime.
	Lifetime time.Duration
	// NotBefore adds an nbf claim of the issue time.
	NotBefore bool
}

// ErrSignAssertion means an assertion could not be signed: no private key,
// or one unusable for its algorithm. Its text names the key id, never the
// key.
var ErrSignAssertion = errors.New("oauth: cannot sign assertion")

// SignAssertion signs a JWT of c with key (its KeyID and Algorithm, RS256,
// ES256 or EdDSA, set): iat now, exp after c.Lifetime, and a new random
// jti. now is the clock; nil means time.Now. Errors wrap ErrSignAssertion.
func SignAssertion(key jose.JSONWebKey, c AssertionClaims, now func() time.Time) (string, error) {
	if key.Key == nil || key.IsPublic() {
		return "", fmt.Errorf("%w: no private key", ErrSignAssertion)
	}
	alg := jose.SignatureAlgorithm(key.Algorithm)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		// go-jose's errors name the algorithm or key type, never the key.
		return "", fmt.Errorf("%w: key %s: %v", ErrSignAssertion, key.KeyID, err)
	}
	var jti [18]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("%w: %v", ErrSignAssertion, err)
	}
	if now == nil {
		now = time.Now
	}
	t := now()
	lifetime := c.Lifetime
	if lifetime <= 0 {
		lifetime = DefaultAssertionLifetime
	}
	claims := jwt.Claims{
		Issuer: c.Issuer, Subject: c.Subject, Audience: jwt.Audience{c.Audience},
		ID: base64.RawURLEncoding.EncodeToString(jti[:]), IssuedAt: jwt.NewNumericDate(t),
		Expiry: jwt.NewNumericDate(t.Add(lifetime)),
	}
	if c.NotBefore {
		claims.NotBefore = jwt.NewNumericDate(t)
	}
	builder := jwt.Signed(signer).Claims(claims)
	if c.Scope != "" {
		builder = builder.Claims(map[string]any{"scope": c.Scope})
	}
	out, err := builder.Serialize()
	if err != nil {
		return "", fmt.Errorf("%w: key %s: %v", ErrSignAssertion, key.KeyID, err)
	}
	return out, nil
}
