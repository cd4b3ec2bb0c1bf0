package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
)

// Token exchange (RFC 8693). A provider with a TokenExchange obtains the
// tokens of its own identity (the account "") by exchanging a subject
// token: another provider's token, obtained through the broker, or the
// contents of a file (a projected service-account token, re-read at every
// exchange). Its tokens are cached per scope set like any provider's; the
// subject source and the audience are the provider's, so a changed source
// or audience drops them (see sameIdentity).

// GrantTokenExchange is the token exchange grant (RFC 8693 §2.1).
const GrantTokenExchange GrantType = "urn:ietf:params:oauth:grant-type:token-exchange"

// Token type URIs (RFC 8693 §3).
const (
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
)

// TokenExchange says where a provider's subject token comes from and what
// the exchange asks for.
type TokenExchange struct {
	// SubjectProvider, SubjectAccount and SubjectScopes name the broker
	// token that is the subject token (another provider's); or
	// SubjectTokenFile names a file whose contents are.
	SubjectProvider  string
	SubjectAccount   string
	SubjectScopes    []string
	SubjectTokenFile string
	// SubjectTokenType is subject_token_type: TokenTypeAccessToken for a
	// broker token, TokenTypeJWT for a file, when empty.
	SubjectTokenType string
	// RequestedTokenType is requested_token_type; not sent when empty.
	RequestedTokenType string
	// Audience and Resource are the audience and resource parameters, each
	// value sent once.
	Audience []string
	Resource []string
}

// ErrSubjectToken means the subject token of a token exchange could not be
// read (its file is missing or empty).
var ErrSubjectToken = errors.New("broker: subject token unavailable")

const maxExchangeValues = 16

// validate reports the problems of x, the token exchange of provider
// name.
func (x *TokenExchange) validate(name string) []error {
	var errs []error
	switch {
	case (x.SubjectProvider == "") == (x.SubjectTokenFile == ""):
		errs = append(errs, errors.New("token_exchange: set exactly one of subject_provider and subject_token_file"))
	case x.SubjectProvider == name:
		errs = append(errs, errors.New("token_exchange: subject_provider is the provider itself"))
	case x.SubjectProvider != "":
		if err := ValidateProviderName(x.SubjectProvider); err != nil {
			errs = append(errs, fmt.Errorf("token_exchange: subject_provider: %w", err))
		}
		if err := ValidateAccountName(x.SubjectAccount); err != nil {
			errs = append(errs, fmt.Errorf("token_exchange: subject_account: %w", err))
		}
		if _, err := normalizeScopes(x.SubjectScopes); err != nil {
			errs = append(errs, fmt.Errorf("token_exchange: subject_scopes: %w", err))
		}
	case x.SubjectAccount != "" || len(x.SubjectScopes) > 0:
		errs = append(errs, errors.New("token_exchange: subject_account and subject_scopes go with subject_provider"))
	}
	if len(x.SubjectTokenFile) > MaxURLLen {
		errs = append(errs, tooLong("token_exchange: subject_token_file", len(x.SubjectTokenFile), MaxURLLen))
	}
	for field, v := range map[string]string{"subject_token_type": x.SubjectTokenType, "requested_token_type": x.RequestedTokenType} {
		if u, err := url.Parse(v); v != "" && (err != nil || u.Scheme == "" || len(v) > MaxURLLen) {
			errs = append(errs, fmt.Errorf("token_exchange: %s %s is not a URI", field, quote(v)))
		}
	}
	if len(x.Audience) > maxExchangeValues || len(x.Resource) > maxExchangeValues {
		errs = append(errs, fmt.Errorf("token_exchange: more than %d audiences or resources", maxExchangeValues))
	}
	for _, a := range x.Audience {
		if a == "" || len(a) > MaxURLLen {
			errs = append(errs, errors.New("token_exchange: an audience is empty or too long"))
		}
	}
	for _, r := range x.Resource {
		// RFC 8693 §2.1: an absolute URI without a fragment.
		if u, err := url.Parse(r); err != nil || !u.IsAbs() || u.Fragment != "" || len(r) > MaxURLLen {
			errs = append(errs, fmt.Errorf("token_exchange: resource %s is not an absolute URI without a fragment", quote(r)))
		}
	}
	return errs
}

func (x *TokenExchange) equal(y *TokenExchange) bool {
	if x == nil || y == nil {
		return x == y
	}
	return x.SubjectProvider == y.SubjectProvider && x.SubjectAccount == y.SubjectAccount &&
		slices.Equal(x.SubjectScopes, y.SubjectScopes) && x.SubjectTokenFile == y.SubjectTokenFile &&
		x.SubjectTokenType == y.SubjectTokenType && x.RequestedTokenType == y.RequestedTokenType &&
		slices.Equal(x.Audience, y.Audience) && slices.Equal(x.Resource, y.Resource)
}

// exchangeParams adds to params what a token exchange of p sends: the
// subject token (obtained now), its type, and the requested token type,
// audiences and resources. Errors are those of GetToken for a broker
// subject token, or wrap ErrSubjectToken.
func (b *Broker) exchangeParams(ctx context.Context, p *Provider, params url.Values) error {
	if p.TokenExchange == nil {
		return invalidf("provider %q: the token exchange grant has no token_exchange settings", p.Name)
	}
	x := p.TokenExchange
	var subject, subjectType string
	if x.SubjectProvider != "" {
		rec, err := b.GetToken(ctx, TokenRequest{Provider: x.SubjectProvider, Account: x.SubjectAccount, Scopes: x.SubjectScopes})
		if err != nil {
			return fmt.Errorf("subject token of provider %s: %w", p.Name, err)
		}
		subject, subjectType = rec.AccessToken, TokenTypeAccessToken
	} else {
		data, err := os.ReadFile(x.SubjectTokenFile)
		if err != nil {
			return fmt.Errorf("%w: provider %s: cannot read subject_token_file %s", ErrSubjectToken, p.Name, x.SubjectTokenFile)
		}
		if subject = strings.TrimSpace(string(data)); subject == "" {
			return fmt.Errorf("%w: provider %s: subject_token_file %s is empty", ErrSubjectToken, p.Name, x.SubjectTokenFile)
		}
		subjectType = TokenTypeJWT
	}
	params.Set("subject_token", subject)
	params.Set("subject_token_type", cmp(x.SubjectTokenType, subjectType))
	if x.RequestedTokenType != "" {
		params.Set("requested_token_type", x.RequestedTokenType)
	}
	for _, a := range x.Audience {
		params.Add("audience", a)
	}
	for _, r := range x.Resource {
		params.Add("resource", r)
	}
	return nil
}
