package broker

import (
	"net/url"
	"strings"
	"time"
)

// TokenKey names one token lineage: a provider, an account under it, and the
// normalized (sorted, deduplicated, space-joined) scope set; "" means the
// provider's default scopes.
type TokenKey struct {
	Provider string
	Account  string
	Scope    string
}

// NewTokenKey validates its arguments and returns the key of the token they
// name. Errors wrap ErrInvalidArgument.
func NewTokenKey(provider, account string, scopes []string) (TokenKey, error) {
	if err := ValidateProviderName(provider); err != nil {
		return TokenKey{}, err
	}
	if err := ValidateAccountName(account); err != nil {
		return TokenKey{}, err
	}
	scope, err := normalizeScopes(scopes)
	if err != nil {
		return TokenKey{}, err
	}
	return TokenKey{Provider: provider, Account: account, Scope: scope}, nil
}

// id is the key's path below the tokens prefix: provider/account/scope, each
// part escaped so that '/' separates the parts alone.
func (k TokenKey) id() string {
	return k.Provider + "/" + url.PathEscape(k.Account) + "/" + url.PathEscape(k.Scope)
}

// String is a loggable form of the key.
func (k TokenKey) String() string {
	return k.Provider + "/" + k.Account + "[" + k.Scope + "]"
}

// TokenRecord is a token the broker obtained, as stored and cached. Values
// are immutable once published: a refresh makes a new record.
type TokenRecord struct {
	Key          TokenKey
	AccessToken  string
	TokenType    string
	Scope        string // granted scopes, space-separated ("" when the provider did not say)
	IDToken      string
	RefreshToken string
	IssuedAt     time.Time
	ExpiresAt    time.Time
	// Generation counts the tokens of this lineage: 1 for the first.
	Generation int64
	// Revision is the etcd revision that stored the record.
	Revision int64
	// previous are the tokens this one replaced that are still valid.
	previous []previousToken
}

// Lifetime is how long the token was valid when it was issued.
func (r *TokenRecord) Lifetime() time.Duration { return r.ExpiresAt.Sub(r.IssuedAt) }

// Fresh reports whether the token stays valid for at least minTTL after now.
// minTTL is capped at half the token's lifetime, so that a provider issuing
// tokens shorter than a caller's min_ttl is not asked again on every call.
func (r *TokenRecord) Fresh(now time.Time, minTTL time.Duration) bool {
	if half := r.Lifetime() / 2; minTTL > half {
		minTTL = half
	}
	return r.ExpiresAt.Sub(now) > minTTL
}

// GrantedScope is the scope the token carries: what the provider said it
// granted, else what was asked for.
func (r *TokenRecord) GrantedScope() string {
	if r.Scope != "" {
		return r.Scope
	}
	return r.Key.Scope
}

// TokenType returns the token type, "Bearer" when the provider sent none.
func (r *TokenRecord) Type() string {
	if r.TokenType == "" || strings.EqualFold(r.TokenType, "bearer") {
		return "Bearer"
	}
	return r.TokenType
}
