// Package workload authenticates callers by the JWTs their platform issues
// them: Kubernetes projected service-account tokens, SPIFFE JWT-SVIDs and
// any OIDC issuer's tokens. A token is verified against its issuer's
// published keys (a JWKS), with a required audience, an expiry, a bounded
// clock skew and an allow-list of signature algorithms; what it asserts
// then names the caller, like an API key or a client certificate does.
package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// Errors of Verify. None of them carries the token or a claim of it.
var (
	// ErrMalformed: the token is not a compact JWS, is too long, or its
	// claims are not a JSON object.
	ErrMalformed = errors.New("workload: malformed token")
	// ErrUnknownIssuer: no configured issuer has the token's "iss".
	ErrUnknownIssuer = errors.New("workload: token of an issuer that is not configured")
	// ErrAlgorithm: the token's algorithm is not one its issuer allows.
	ErrAlgorithm = errors.New("workload: signature algorithm not allowed")
	// ErrUnknownKey: the issuer's key set has no key of the token's "kid",
	// even after a refresh.
	ErrUnknownKey = errors.New("workload: token signed by a key the issuer does not publish")
	// ErrSignature: no key of the issuer verifies the signature.
	ErrSignature = errors.New("workload: signature does not verify")
	// ErrClaims: expired, not yet valid, wrong audience, no expiry, an
	// expiry too far ahead, or no usable identity claim.
	ErrClaims = errors.New("workload: token claims refused")
	// ErrKeysUnavailable: the issuer's keys could not be fetched and none
	// are cached. The caller may retry.
	ErrKeysUnavailable = errors.New("workload: issuer keys unavailable")
)

// Limits.
const (
	// MaxTokenBytes bounds a token's length.
	MaxTokenBytes = 16 << 10
	// MaxKeySetBytes bounds a JWKS document and a discovery document.
	MaxKeySetBytes = 512 << 10
	// MaxKeys bounds the keys kept of one key set.
	MaxKeys = 64
	// MaxClockSkew bounds Issuer.ClockSkew.
	MaxClockSkew = 5 * time.Minute

	// DefaultClockSkew is the leeway on exp, nbf and iat.
	DefaultClockSkew = time.Minute
	// DefaultMaxLifetime bounds how far ahead a token's expiry may be.
	DefaultMaxLifetime = 24 * time.Hour
	// DefaultIdentityClaim names the caller: "sub" is
	// system:serviceaccount:<namespace>:<name> for Kubernetes and the
	// SPIFFE ID for a JWT-SVID.
	DefaultIdentityClaim = "sub"
	// DefaultMinRefreshInterval spaces the fetches of one issuer's keys
	// that tokens with unknown key ids cause.
	DefaultMinRefreshInterval = 10 * time.Second
	// KeySetMaxAge is how long fetched keys are used before they are
	// fetched again (keys the issuer retired stop working then). When the
	// fetch fails, the keys held are kept.
	KeySetMaxAge = time.Hour
)

// DefaultAlgorithms are the algorithms an issuer allows when it names none:
// Kubernetes signs with RS256, SPIRE with RS256 or ES256.
var DefaultAlgorithms = []string{string(jose.RS256), string(jose.ES256)}

// asymmetric are the algorithms an issuer may allow: public-key signatures
// only, never "none" or HMAC (whose key a JWKS would publish).
var asymmetric = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// Issuer is one trusted token issuer.
type Issuer struct {
	// Issuer is the exact "iss" of its tokens (for Kubernetes, the
	// cluster's --service-account-issuer).
	Issuer string
	// Where its keys are: exactly one of a JWKS URL, a JWKS file (re-read
	// as it changes; for clusters whose issuer cannot be reached), or
	// OIDC discovery from Issuer + "/.well-known/openid-configuration".
	JWKSURL   string
	JWKSFile  string
	Discovery bool
	// CAFile holds PEM roots for the https fetches; the system's when empty.
	CAFile string
	// Audiences: a token's "aud" must contain one of them. Required.
	Audiences []string
	// Algorithms allowed; DefaultAlgorithms when empty.
	Algorithms []string
	// IdentityClaim names the caller; DefaultIdentityClaim when empty. Its
	// value must be a string.
	IdentityClaim string
	// IdentityPrefix is put before the claim's value, so that an issuer's
	// identities cannot be mistaken for another's (e.g. "k8s-prod:").
	IdentityPrefix string
	// TrustDomain, when set, requires the identity claim to be a SPIFFE ID
	// of that trust domain (spiffe://<TrustDomain>/...).
	TrustDomain string
	// ClockSkew is the leeway on exp, nbf and iat; DefaultClockSkew when 0.
	ClockSkew time.Duration
	// MaxLifetime refuses tokens that expire further ahead than this;
	// DefaultMaxLifetime when 0.
	MaxLifetime time.Duration
}

// Validate reports every problem of the declaration, each prefixed with
// the name of its field. Plain http URLs are refused unless
// allowHTTPLoopback and they name a loopback address.
func (is Issuer) Validate(allowHTTPLoopback bool) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if u, err := url.Parse(is.Issuer); is.Issuer == "" || err != nil || u.Scheme == "" || u.Host == "" && u.Scheme != "spiffe" {
		bad("issuer %q is not a URL", short(is.Issuer))
	}
	n := 0
	for _, set := range []bool{is.JWKSURL != "", is.JWKSFile != "", is.Discovery} {
		if set {
			n++
		}
	}
	if n != 1 {
		bad("set exactly one of jwks_url, jwks_file and discovery")
	}
	if is.JWKSURL != "" {
		if err := checkFetchURL(is.JWKSURL, allowHTTPLoopback); err != nil {
			bad("jwks_url: %v", err)
		}
	}
	if is.Discovery {
		if err := checkFetchURL(is.Issuer, allowHTTPLoopback); err != nil {
			bad("discovery: issuer: %v", err)
		}
	}
	if len(is.Audiences) == 0 {
		bad("audiences: at least one is required")
	}
	for i, a := range is.Audiences {
		if a == "" {
			bad("audiences[%d] is empty", i)
		}
	}
	for i, a := range is.Algorithms {
		if !slices.Contains(asymmetric, jose.SignatureAlgorithm(a)) {
			bad("algorithms[%d] %q is not one of %v (no none, no HMAC)", i, short(a), asymmetric)
		}
	}
	if is.TrustDomain != "" && strings.ContainsAny(is.TrustDomain, "/:") {
		bad("trust_domain %q is a bare trust domain name, without spiffe:// or a path", short(is.TrustDomain))
	}
	if is.ClockSkew < 0 || is.ClockSkew > MaxClockSkew {
		bad("clock_skew %s must be between 0 and %s", is.ClockSkew, MaxClockSkew)
	}
	if is.MaxLifetime < 0 {
		bad("max_lifetime must not be negative")
	}
	return errors.Join(errs...)
}

// checkFetchURL requires https, or plain http to a loopback address when
// allowHTTPLoopback.
func checkFetchURL(s string, allowHTTPLoopback bool) error {
	u, err := url.Parse(s)
	switch {
	case err != nil, u.Host == "", u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("%q is not an absolute https URL", short(s))
	case u.User != nil:
		return errors.New("URL must not carry credentials")
	case u.Scheme == "http" && !(allowHTTPLoopback && oauth.IsLoopback(u.Hostname())):
		return fmt.Errorf("%q must use https (plain http only to a loopback address in development)", short(s))
	}
	return nil
}

// short quotes at most a prefix of configured text in an error.
func short(s string) string {
	const limit = 80
	if len(s) > limit {
		return s[:limit] + "…"
	}
	return s
}

// Options tune a Verifier.
type Options struct {
	// AllowHTTPLoopback lets key sets be fetched over plain http from
	// loopback addresses (development).
	AllowHTTPLoopback bool
	// MinRefreshInterval spaces the fetches of one issuer's keys after a
	// burst of two; DefaultMinRefreshInterval when 0.
	MinRefreshInterval time.Duration
	// FetchTimeout bounds one fetch; 10s when 0.
	FetchTimeout time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger is scoped with Named("workload"); nop when nil.
	Logger *zap.Logger
}

// Identity is a verified caller.
type Identity struct {
	// Name is the issuer's IdentityPrefix and the identity claim.
	Name string
	// Issuer is the token's (configured) issuer.
	Issuer string
}

// Verifier verifies tokens of a fixed set of issuers. It is safe for
// concurrent use and holds no goroutine.
type Verifier struct {
	issuers map[string]*issuer
	algs    []jose.SignatureAlgorithm // union of the issuers'
	now     func() time.Time
}

type issuer struct {
	cfg   Issuer
	algs  []jose.SignatureAlgorithm
	claim string
	skew  time.Duration
	life  time.Duration
	keys  *keySet
}

// New builds a Verifier of issuers, after Validate. Keys are fetched on
// first use, so an issuer that cannot be reached at start is not an
// error here. Two issuers with the same "iss" are an error.
func New(issuers []Issuer, opts Options) (*Verifier, error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("workload")
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MinRefreshInterval <= 0 {
		opts.MinRefreshInterval = DefaultMinRefreshInterval
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = 10 * time.Second
	}
	v := &Verifier{issuers: map[string]*issuer{}, now: opts.Now}
	for i, cfg := range issuers {
		if err := cfg.Validate(opts.AllowHTTPLoopback); err != nil {
			return nil, fmt.Errorf("issuer %d: %w", i, err)
		}
		if _, dup := v.issuers[cfg.Issuer]; dup {
			return nil, fmt.Errorf("issuer %d: %q is declared twice", i, short(cfg.Issuer))
		}
		is := &issuer{cfg: cfg, claim: cfg.IdentityClaim, skew: cfg.ClockSkew, life: cfg.MaxLifetime}
		names := cfg.Algorithms
		if len(names) == 0 {
			names = DefaultAlgorithms
		}
		for _, a := range names {
			is.algs = append(is.algs, jose.SignatureAlgorithm(a))
			if !slices.Contains(v.algs, jose.SignatureAlgorithm(a)) {
				v.algs = append(v.algs, jose.SignatureAlgorithm(a))
			}
		}
		if is.claim == "" {
			is.claim = DefaultIdentityClaim
		}
		if is.skew == 0 {
			is.skew = DefaultClockSkew
		}
		if is.life == 0 {
			is.life = DefaultMaxLifetime
		}
		ks, err := newKeySet(cfg, is.algs, opts, log.With(zap.String("issuer", cfg.Issuer)))
		if err != nil {
			return nil, fmt.Errorf("issuer %q: %w", short(cfg.Issuer), err)
		}
		is.keys = ks
		v.issuers[cfg.Issuer] = is
	}
	return v, nil
}

// Len is the number of issuers.
func (v *Verifier) Len() int {
	if v == nil {
		return 0
	}
	return len(v.issuers)
}

// LooksLikeJWT reports whether a bearer token has the shape of a compact
// JWS (three dot-separated parts), as opposed to an API key.
func LooksLikeJWT(token string) bool {
	return strings.Count(token, ".") == 2
}

// Verify checks token and returns the identity it asserts. Its errors wrap
// one of the package's sentinels and say why the token was refused,
// without quoting it. Fetching the issuer's keys, when needed, stops
// waiting when ctx ends (the fetch itself goes on for others).
func (v *Verifier) Verify(ctx context.Context, token string) (Identity, error) {
	if len(token) > MaxTokenBytes {
		return Identity{}, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenBytes)
	}
	if len(v.issuers) == 0 {
		return Identity{}, ErrUnknownIssuer
	}
	tok, err := jwt.ParseSigned(token, v.algs)
	if err != nil {
		if _, ok := errors.AsType[*jose.ErrUnexpectedSignatureAlgorithm](err); ok {
			return Identity{}, ErrAlgorithm
		}
		return Identity{}, ErrMalformed
	}
	var unverified struct {
		Issuer string `json:"iss"`
	}
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return Identity{}, ErrMalformed
	}
	is, ok := v.issuers[unverified.Issuer]
	if !ok {
		return Identity{}, ErrUnknownIssuer
	}
	if len(tok.Headers) != 1 {
		return Identity{}, ErrMalformed
	}
	h := tok.Headers[0]
	alg := jose.SignatureAlgorithm(h.Algorithm)
	if !slices.Contains(is.algs, alg) {
		return Identity{}, fmt.Errorf("%w: %s for issuer %q", ErrAlgorithm, alg, short(is.cfg.Issuer))
	}
	keys, err := is.keys.lookup(ctx, h.KeyID)
	if err != nil {
		return Identity{}, fmt.Errorf("issuer %q: %w", short(is.cfg.Issuer), err)
	}
	var payload json.RawMessage
	verified := false
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != string(alg) {
			continue
		}
		if err := tok.Claims(k.Key, &payload); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return Identity{}, fmt.Errorf("%w: issuer %q", ErrSignature, short(is.cfg.Issuer))
	}
	var std jwt.Claims
	var all map[string]any
	if json.Unmarshal(payload, &std) != nil || json.Unmarshal(payload, &all) != nil {
		return Identity{}, fmt.Errorf("%w: registered claims of the wrong type (issuer %q)", ErrClaims, short(is.cfg.Issuer))
	}
	return is.identity(std, all, v.now())
}

// identity checks the verified claims and names the caller.
func (is *issuer) identity(std jwt.Claims, all map[string]any, now time.Time) (Identity, error) {
	refuse := func(why string) (Identity, error) {
		return Identity{}, fmt.Errorf("%w: %s (issuer %q)", ErrClaims, why, short(is.cfg.Issuer))
	}
	if std.Expiry == nil {
		return refuse("no expiry")
	}
	err := std.ValidateWithLeeway(jwt.Expected{Issuer: is.cfg.Issuer, AnyAudience: is.cfg.Audiences, Time: now}, is.skew)
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return refuse("expired")
	case errors.Is(err, jwt.ErrNotValidYet):
		return refuse("not valid yet")
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return refuse("issued in the future")
	case errors.Is(err, jwt.ErrInvalidAudience):
		return refuse("audience is not one the broker accepts")
	case err != nil:
		return refuse("invalid")
	}
	if std.Expiry.Time().After(now.Add(is.life + is.skew)) {
		return refuse(fmt.Sprintf("expires more than %s ahead", is.life))
	}
	name, ok := all[is.claim].(string)
	if !ok || name == "" {
		return refuse(fmt.Sprintf("claim %q is missing or not a string", is.claim))
	}
	if td := is.cfg.TrustDomain; td != "" && !strings.HasPrefix(name, "spiffe://"+td+"/") {
		return refuse("identity is not a SPIFFE ID of trust domain " + td)
	}
	return Identity{Name: is.cfg.IdentityPrefix + name, Issuer: is.cfg.Issuer}, nil
}
