package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// Key prefixes below the broker's etcd prefix.
const (
	providersPrefix  = "providers/"
	tokensPrefix     = "tokens/"
	introspectPrefix = "introspect/"
	locksPrefix      = "locks/"
)

// DefaultPrefix is the etcd prefix of every key the broker writes.
const DefaultPrefix = "/tokenbroker/"

// storedProvider is the etcd encoding of a Provider.
type storedProvider struct {
	Name                 string            `json:"name"`
	TokenURL             string            `json:"token_url"`
	AuthorizeURL         string            `json:"authorize_url,omitempty"`
	IntrospectionURL     string            `json:"introspection_url,omitempty"`
	RevocationURL        string            `json:"revocation_url,omitempty"`
	GrantTokenURLs       map[string]string `json:"grant_token_urls,omitempty"`
	ClientID             string            `json:"client_id"`
	ClientSecret         string            `json:"client_secret,omitempty"`
	ClientAuth           string            `json:"client_auth"`
	DefaultScopes        []string          `json:"default_scopes,omitempty"`
	TokenParams          map[string]string `json:"token_params,omitempty"`
	GrantTypes           []string          `json:"grant_types,omitempty"`
	DefaultTokenLifetime time.Duration     `json:"default_token_lifetime,omitempty"`
	SecretUpdateTime     time.Time         `json:"secret_update_time"`
	CreateTime           time.Time         `json:"create_time"`
	UpdateTime           time.Time         `json:"update_time"`
}

func encodeProvider(p *Provider) ([]byte, error) {
	s := storedProvider{
		Name: p.Name, TokenURL: p.TokenURL, AuthorizeURL: p.AuthorizeURL,
		IntrospectionURL: p.IntrospectionURL, RevocationURL: p.RevocationURL,
		ClientID: p.ClientID, ClientSecret: p.ClientSecret, ClientAuth: p.ClientAuth.String(),
		DefaultScopes: p.DefaultScopes, TokenParams: p.TokenParams,
		DefaultTokenLifetime: p.DefaultTokenLifetime,
		SecretUpdateTime:     p.SecretUpdateTime, CreateTime: p.CreateTime, UpdateTime: p.UpdateTime,
	}
	if len(p.GrantTokenURLs) > 0 {
		s.GrantTokenURLs = make(map[string]string, len(p.GrantTokenURLs))
		for g, u := range p.GrantTokenURLs {
			s.GrantTokenURLs[string(g)] = u
		}
	}
	for _, g := range p.GrantTypes {
		s.GrantTypes = append(s.GrantTypes, string(g))
	}
	return json.Marshal(s)
}

func decodeProvider(b []byte) (*Provider, error) {
	var s storedProvider
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode provider: %w", err)
	}
	auth, err := oauth.ParseAuthStyle(s.ClientAuth)
	if err != nil {
		return nil, fmt.Errorf("decode provider %s: %w", s.Name, err)
	}
	p := &Provider{
		Name: s.Name, TokenURL: s.TokenURL, AuthorizeURL: s.AuthorizeURL,
		IntrospectionURL: s.IntrospectionURL, RevocationURL: s.RevocationURL,
		ClientID: s.ClientID, ClientSecret: s.ClientSecret, ClientAuth: auth,
		DefaultScopes: s.DefaultScopes, TokenParams: s.TokenParams,
		DefaultTokenLifetime: s.DefaultTokenLifetime,
		SecretUpdateTime:     s.SecretUpdateTime, CreateTime: s.CreateTime, UpdateTime: s.UpdateTime,
	}
	if len(s.GrantTokenURLs) > 0 {
		p.GrantTokenURLs = make(map[GrantType]string, len(s.GrantTokenURLs))
		for g, u := range s.GrantTokenURLs {
			p.GrantTokenURLs[GrantType(g)] = u
		}
	}
	for _, g := range s.GrantTypes {
		p.GrantTypes = append(p.GrantTypes, GrantType(g))
	}
	return p, nil
}

// storedToken is the etcd encoding of a TokenRecord.
type storedToken struct {
	Provider     string    `json:"provider"`
	Account      string    `json:"account,omitempty"`
	Scope        string    `json:"scope,omitempty"`
	AccessToken  string    `json:"access_token"`
	TokenType    string    `json:"token_type,omitempty"`
	GrantedScope string    `json:"granted_scope,omitempty"`
	IDToken      string    `json:"id_token,omitempty"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	IssuedAt     time.Time `json:"issued_at"`
	ExpiresAt    time.Time `json:"expires_at"`
	Generation   int64     `json:"generation"`
}

func encodeToken(r *TokenRecord) ([]byte, error) {
	return json.Marshal(storedToken{
		Provider: r.Key.Provider, Account: r.Key.Account, Scope: r.Key.Scope,
		AccessToken: r.AccessToken, TokenType: r.TokenType, GrantedScope: r.Scope,
		IDToken: r.IDToken, RefreshToken: r.RefreshToken,
		IssuedAt: r.IssuedAt, ExpiresAt: r.ExpiresAt, Generation: r.Generation,
	})
}

func decodeToken(b []byte, rev int64) (*TokenRecord, error) {
	var s storedToken
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode token record: %w", err)
	}
	return &TokenRecord{
		Key:         TokenKey{Provider: s.Provider, Account: s.Account, Scope: s.Scope},
		AccessToken: s.AccessToken, TokenType: s.TokenType, Scope: s.GrantedScope,
		IDToken: s.IDToken, RefreshToken: s.RefreshToken,
		IssuedAt: s.IssuedAt, ExpiresAt: s.ExpiresAt, Generation: s.Generation, Revision: rev,
	}, nil
}

// storedIntrospection is the introspection index entry of a token the broker
// handed out, kept under the token's hash and leased to vanish with it.
type storedIntrospection struct {
	Provider  string    `json:"provider"`
	Account   string    `json:"account,omitempty"`
	Scope     string    `json:"scope,omitempty"`
	ClientID  string    `json:"client_id,omitempty"`
	TokenType string    `json:"token_type,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// tokenHash names a token in the introspection index without storing it.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
