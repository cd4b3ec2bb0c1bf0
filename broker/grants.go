package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// grantHandler is one way of obtaining a token at a provider's token
// endpoint (RFC 6749 §4 and its extensions): it adds its grant's
// parameters to the token request of an account. The token endpoint
// client, the client's authentication, retries, caching and refreshing
// are the same for every grant; each grant type is one entry of
// grantHandlers.
type grantHandler interface {
	// tokenParams adds to form (which holds grant_type, the provider's
	// token_params and the scope asked for, if any) the parameters of a
	// token request for account g of provider p. Its errors wrap
	// ErrInvalidArgument when the provider or account is not configured
	// for the grant, and carry no secret.
	tokenParams(ctx context.Context, b *Broker, p *Provider, g *Grant, form url.Values) error
	// standalone reports whether the grant obtains a token from what is
	// configured alone, whenever asked: a refresh token that comes with
	// it is not kept (the next token is obtained the same way), and its
	// tokens are served until the provider's expiry.
	standalone() bool
}

// grantHandlers are the grants the broker obtains tokens with.
// authorization_code is not here: its code is exchanged once, by
// CompleteAuthorization, and the account then lives on refresh_token.
var grantHandlers = map[GrantType]grantHandler{
	GrantClientCredentials: clientCredentialsGrant{},
	GrantPassword:          passwordGrant{},
	GrantRefreshToken:      refreshTokenGrant{},
	GrantJWTBearer:         jwtBearerGrant{},
	GrantTokenExchange:     tokenExchangeGrant{},
}

// clientCredentialsGrant is RFC 6749 §4.4: the client's credentials alone.
type clientCredentialsGrant struct{}

func (clientCredentialsGrant) tokenParams(context.Context, *Broker, *Provider, *Grant, url.Values) error {
	return nil
}
func (clientCredentialsGrant) standalone() bool { return true }

// passwordGrant is RFC 6749 §4.3: the resource owner's username and
// password.
type passwordGrant struct{}

func (passwordGrant) tokenParams(_ context.Context, _ *Broker, _ *Provider, g *Grant, form url.Values) error {
	form.Set("username", g.Username)
	form.Set("password", g.Password)
	return nil
}
func (passwordGrant) standalone() bool { return false }

// refreshTokenGrant is RFC 6749 §6: the account's refresh token.
type refreshTokenGrant struct{}

func (refreshTokenGrant) tokenParams(_ context.Context, _ *Broker, _ *Provider, g *Grant, form url.Values) error {
	form.Set("refresh_token", g.RefreshToken)
	return nil
}
func (refreshTokenGrant) standalone() bool { return false }

// jwtBearerGrant is RFC 7523 §2.1: an assertion signed with the
// provider's signing key, whose claims p.JWTBearer says. The provider's
// own token (account "") has the configured subject; a named account's
// subject is its username (a user the service account acts for, as
// Google's domain-wide delegation has it).
type jwtBearerGrant struct{}

func (jwtBearerGrant) tokenParams(_ context.Context, _ *Broker, p *Provider, g *Grant, form url.Values) error {
	k, ok := p.SigningKey()
	if !ok {
		return invalidf("provider %q: the jwt-bearer grant has no signing key", p.Name)
	}
	c := oauth.AssertionClaims{
		Issuer:   orString(p.JWTBearer.Issuer, p.ClientID),
		Subject:  p.JWTBearer.Subject,
		Audience: orString(p.JWTBearer.Audience, p.TokenURLFor(GrantJWTBearer)),
		Lifetime: p.JWTBearer.Lifetime,
	}
	if g.Account != "" {
		c.Subject = g.Username
	}
	if p.JWTBearer.ScopeClaim {
		c.Scope = form.Get("scope")
		form.Del("scope")
	}
	assertion, err := oauth.SignAssertion(k.JWK(), c, nil)
	if err != nil {
		return fmt.Errorf("provider %q: %w", p.Name, err)
	}
	form.Set("assertion", assertion)
	return nil
}
func (jwtBearerGrant) standalone() bool { return true }

// tokenExchangeGrant is RFC 8693 §2.1: a subject token, obtained at each
// request, exchanged for the provider's own token (p.TokenExchange).
type tokenExchangeGrant struct{}

func (tokenExchangeGrant) tokenParams(ctx context.Context, b *Broker, p *Provider, _ *Grant, form url.Values) error {
	return b.exchangeParams(ctx, p, form)
}
func (tokenExchangeGrant) standalone() bool { return true }

// ownGrant is the grant type of p's own tokens (account ""): token
// exchange when p allows it and has its settings; else the JWT-bearer
// grant when p allows it and not client_credentials; else
// client_credentials.
func (p *Provider) ownGrant() GrantType {
	if p.TokenExchange != nil && p.Allows(GrantTokenExchange) {
		return GrantTokenExchange
	}
	if p.Allows(GrantJWTBearer) && !p.Allows(GrantClientCredentials) {
		return GrantJWTBearer
	}
	return GrantClientCredentials
}

// standalone reports whether grant type g obtains tokens from what is
// configured alone (see grantHandler).
func standalone(g GrantType) bool {
	h, ok := grantHandlers[g]
	return ok && h.standalone()
}

const maxAssertionLifetime = time.Hour

// validate reports what is wrong with j.
func (j JWTBearer) validate() []error {
	var errs []error
	if err := validateURL(j.Audience); err != nil && !isURI(j.Audience) {
		errs = append(errs, fmt.Errorf("jwt_bearer.audience: %w", err))
	}
	for name, v := range map[string]string{"issuer": j.Issuer, "subject": j.Subject, "audience": j.Audience} {
		if len(v) > MaxURLLen {
			errs = append(errs, fmt.Errorf("jwt_bearer.%s: %w", name, tooLong("the value", len(v), MaxURLLen)))
		}
	}
	if j.Lifetime < 0 || j.Lifetime > maxAssertionLifetime {
		errs = append(errs, errors.New("jwt_bearer.lifetime must be between 0 and 1h"))
	}
	return errs
}

// isURI reports whether s is an absolute URI that is not a web URL (an
// audience such as "urn:example:idp" is allowed).
func isURI(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme != "" && u.Scheme != "http" && u.Scheme != "https"
}
