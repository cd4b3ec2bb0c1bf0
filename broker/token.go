package broker

import (
	"net/url"
	"slices"
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
//
// Every cached token costs a record in memory, so a record pays for no
// field most records leave empty or share: what few records carry (an ID
// token, a hand-over, replaced tokens still valid, an unusual token type
// or granted scope) lives behind one pointer, nil for most; see TokenType,
// Scope, IDToken and ProviderExpiresAt.
type TokenRecord struct {
	Key         TokenKey
	AccessToken string
	IssuedAt    time.Time
	// ExpiresAt is the expiry served to callers. For most tokens it is
	// the provider's; for a token that its replacement revokes, it is the
	// moment the broker replaces it (see ProviderExpiresAt).
	ExpiresAt time.Time
	// Generation counts the tokens of this lineage: 1 for the first.
	Generation int64
	// Revision is the etcd revision that stored the record.
	Revision int64
	// rare holds the fields most records leave empty; nil when all are.
	rare *rareFields
	// tokenType and scope say where TokenType and Scope are: the token
	// types almost every provider sends, and the granted scope that is the
	// one asked for, take a byte rather than a string each.
	tokenType tokenTypeKind
	scope     scopeKind
}

// tokenTypeKind is the token type of a record, or typeRare when the record
// keeps it in its rareFields.
type tokenTypeKind uint8

const (
	typeNone tokenTypeKind = iota // the provider sent none
	typeBearer
	typeLowerBearer // "bearer"
	typeRare
)

// scopeKind is the granted scope of a record: none, the scope asked for
// (Key.Scope), or scopeRare when the record keeps it in its rareFields.
type scopeKind uint8

const (
	scopeNone scopeKind = iota
	scopeAsked
	scopeRare
)

// rareFields are the fields of a TokenRecord that most records leave
// empty. A record's rareFields are never changed once set: a setter makes
// new ones, so that a copy of a record (*rec) does not see the change.
type rareFields struct {
	tokenType         string // when the record's tokenType is typeRare
	scope             string // when the record's scope is scopeRare
	idToken           string
	providerExpiresAt time.Time
	// previous are the tokens this one replaced that are still valid.
	previous []previousToken
}

func (f *rareFields) empty() bool {
	return f.tokenType == "" && f.scope == "" && f.idToken == "" && f.providerExpiresAt.IsZero() && len(f.previous) == 0
}

// setRare sets r's rare fields to f (none when f is empty).
func (r *TokenRecord) setRare(f rareFields) {
	if f.empty() {
		r.rare = nil
		return
	}
	r.rare = &f
}

func (r *TokenRecord) rareOf() rareFields {
	if r.rare == nil {
		return rareFields{}
	}
	return *r.rare
}

// TokenType is the token type the provider sent, "" when it sent none
// (see Type).
func (r *TokenRecord) TokenType() string {
	switch r.tokenType {
	case typeNone:
		return ""
	case typeBearer:
		return "Bearer"
	case typeLowerBearer:
		return "bearer"
	}
	return r.rare.tokenType
}

// Scope is the scope the provider said it granted, space-separated; ""
// when it did not say (see GrantedScope).
func (r *TokenRecord) Scope() string {
	switch r.scope {
	case scopeNone:
		return ""
	case scopeAsked:
		return r.Key.Scope
	}
	return r.rare.scope
}

// fill sets the token type, granted scope and rare fields of r, a record
// not published yet whose Key is set.
func (r *TokenRecord) fill(tokenType, scope string, f rareFields) {
	f.tokenType, f.scope = "", ""
	switch tokenType {
	case "":
		r.tokenType = typeNone
	case "Bearer":
		r.tokenType = typeBearer
	case "bearer":
		r.tokenType = typeLowerBearer
	default:
		r.tokenType, f.tokenType = typeRare, tokenType
	}
	switch scope {
	case "":
		r.scope = scopeNone
	case r.Key.Scope:
		r.scope = scopeAsked
	default:
		r.scope, f.scope = scopeRare, scope
	}
	r.setRare(f)
}

// IDToken is the OpenID Connect ID token issued with the access token, ""
// when there was none.
func (r *TokenRecord) IDToken() string {
	if r.rare == nil {
		return ""
	}
	return r.rare.idToken
}

// ProviderExpiresAt is zero unless the token's replacement revokes it (a
// refresh-token grant of a provider that revokes on refresh, see
// Provider.RevokesOnRefresh). It is then the expiry the provider gave, and
// ExpiresAt is earlier: the hand-over, the moment the broker plans to
// replace the token. Every replica serves that same ExpiresAt, and nothing
// replaces the token before it (see Promised), so that no caller holds a
// token that dies before the expiry it was told.
func (r *TokenRecord) ProviderExpiresAt() time.Time {
	if r.rare == nil {
		return time.Time{}
	}
	return r.rare.providerExpiresAt
}

// setProviderExpiresAt sets the provider's expiry of r, a record not
// published yet (see ProviderExpiresAt).
func (r *TokenRecord) setProviderExpiresAt(t time.Time) {
	f := r.rareOf()
	f.providerExpiresAt = t
	r.setRare(f)
}

func (r *TokenRecord) setReplaced(p []previousToken) {
	f := r.rareOf()
	f.previous = p
	r.setRare(f)
}

// replaced returns the tokens r replaced that are still valid.
func (r *TokenRecord) replaced() []previousToken {
	if r.rare == nil {
		return nil
	}
	return r.rare.previous
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

// Promised reports whether the token must not be replaced at now: its
// replacement revokes it and its served expiry has not come. Callers are
// served it until then even when it cannot meet their min_ttl.
func (r *TokenRecord) Promised(now time.Time) bool {
	return r.rare != nil && !r.rare.providerExpiresAt.IsZero() && now.Before(r.ExpiresAt)
}

// servable reports whether the token may be served now to a caller asking
// for minTTL: it is fresh, or promised until its served expiry, which is
// then the best any token of its lineage can do.
func (r *TokenRecord) servable(now time.Time, minTTL time.Duration) bool {
	return r.Fresh(now, minTTL) || r.Promised(now)
}

// GrantedScope is the scope the token carries: what the provider said it
// granted, else what was asked for.
func (r *TokenRecord) GrantedScope() string {
	if r.scope == scopeRare {
		return r.rare.scope
	}
	return r.Key.Scope
}

// Type returns the token type, "Bearer" when the provider sent none.
func (r *TokenRecord) Type() string {
	if r.tokenType != typeRare {
		return "Bearer"
	}
	return tokenTypeOf(r.rare.tokenType)
}

// tokenTypeOf is the token type served for t, a type a provider sent:
// "Bearer" when it sent none.
func tokenTypeOf(t string) string {
	if t == "" || strings.EqualFold(t, "bearer") {
		return "Bearer"
	}
	return t
}

// tokenID is NewTokenKey(provider, account, scopes).id() built without the
// intermediate strings: the hot path's one allocation is the id itself. It
// reports false whenever NewTokenKey would fail, which then says why.
func tokenID(provider, account string, scopes []string) (string, bool) {
	if ValidateProviderName(provider) != nil || ValidateAccountName(account) != nil || len(scopes) > maxScopes {
		return "", false
	}
	for _, s := range scopes {
		if validateScope(s) != nil {
			return "", false
		}
	}
	// The scope part lists the scopes sorted, without duplicates; a
	// request that names them so (the usual case) is used as it is.
	ordered := scopes
	if !sortedUnique(scopes) {
		var buf [8]string
		tmp := append(buf[:0], scopes...)
		slices.Sort(tmp)
		ordered = slices.Compact(tmp)
	}
	n := len(provider) + 2 + pathEscapedLen(account)
	for i, s := range ordered {
		if i > 0 {
			n += len("%20")
		}
		n += pathEscapedLen(s)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(provider)
	b.WriteByte('/')
	writePathEscaped(&b, account)
	b.WriteByte('/')
	for i, s := range ordered {
		if i > 0 {
			b.WriteString("%20")
		}
		writePathEscaped(&b, s)
	}
	return b.String(), true
}

func sortedUnique(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i-1] >= s[i] {
			return false
		}
	}
	return true
}

// pathEscapedLen and writePathEscaped escape as url.PathEscape does.
func pathEscapedLen(s string) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if escapeInPathSegment(s[i]) {
			n += 2
		}
	}
	return n
}

func writePathEscaped(b *strings.Builder, s string) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		if c := s[i]; escapeInPathSegment(c) {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		} else {
			b.WriteByte(c)
		}
	}
}

// escapeInPathSegment is net/url's rule for a path segment (RFC 3986
// §2.3, §3.3): unreserved characters and the sub-delimiters a segment may
// hold stay; '/', ';', ',', '?' and everything else are escaped.
func escapeInPathSegment(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return false
	}
	switch c {
	case '-', '_', '.', '~', '$', '&', '+', ':', '=', '@':
		return false
	}
	return true
}
