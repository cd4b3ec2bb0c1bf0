package broker

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTokenRecordFresh(t *testing.T) {
	issued := t0
	tests := []struct {
		name         string
		giveLifetime time.Duration
		giveAge      time.Duration // now - issued
		giveMinTTL   time.Duration
		want         bool
	}{
		{name: "new", giveLifetime: time.Hour, giveAge: 0, giveMinTTL: time.Minute, want: true},
		{name: "just above min_ttl", giveLifetime: time.Hour, giveAge: 59*time.Minute - time.Nanosecond, giveMinTTL: time.Minute, want: true},
		{name: "exactly min_ttl left", giveLifetime: time.Hour, giveAge: 59 * time.Minute, giveMinTTL: time.Minute, want: false},
		{name: "below min_ttl", giveLifetime: time.Hour, giveAge: 59*time.Minute + time.Second, giveMinTTL: time.Minute, want: false},
		{name: "expired", giveLifetime: time.Hour, giveAge: 2 * time.Hour, giveMinTTL: time.Minute, want: false},
		{name: "zero min_ttl, valid", giveLifetime: time.Hour, giveAge: time.Hour - time.Nanosecond, giveMinTTL: 0, want: true},
		{name: "zero min_ttl, expiring now", giveLifetime: time.Hour, giveAge: time.Hour, giveMinTTL: 0, want: false},
		// min_ttl is capped at half the lifetime: a 60s token asked for with
		// min_ttl 5m is fresh while more than 30s remain.
		{name: "cap: more than half left", giveLifetime: time.Minute, giveAge: 29 * time.Second, giveMinTTL: 5 * time.Minute, want: true},
		{name: "cap: exactly half left", giveLifetime: time.Minute, giveAge: 30 * time.Second, giveMinTTL: 5 * time.Minute, want: false},
		{name: "cap: min_ttl equal to the lifetime", giveLifetime: time.Hour, giveAge: 29 * time.Minute, giveMinTTL: time.Hour, want: true},
		{name: "cap: min_ttl longer than the lifetime, past half", giveLifetime: time.Hour, giveAge: 31 * time.Minute, giveMinTTL: 2 * time.Hour, want: false},
		{name: "min_ttl below half applies as given", giveLifetime: time.Hour, giveAge: 40 * time.Minute, giveMinTTL: 10 * time.Minute, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &TokenRecord{IssuedAt: issued, ExpiresAt: issued.Add(tt.giveLifetime)}
			if got := r.Fresh(issued.Add(tt.giveAge), tt.giveMinTTL); got != tt.want {
				t.Errorf("lifetime %v, age %v: Fresh(min_ttl %v) = %t, want %t", tt.giveLifetime, tt.giveAge, tt.giveMinTTL, got, tt.want)
			}
		})
	}
}

func TestTokenRecordTypeAndScope(t *testing.T) {
	tests := []struct {
		name         string
		giveKeyScope string
		giveType     string
		giveScope    string
		give         TokenRecord
		wantType     string
		wantGranted  string
		wantLifetime time.Duration
	}{
		{name: "lowercase bearer", giveType: "bearer", giveScope: "public", wantType: "Bearer", wantGranted: "public"},
		{name: "no type, no granted scope", giveKeyScope: "api openid", wantType: "Bearer", wantGranted: "api openid"},
		{name: "Bearer, granted as asked", giveKeyScope: "api openid", giveType: "Bearer", giveScope: "api openid", wantType: "Bearer", wantGranted: "api openid"},
		{name: "BEARER", giveType: "BEARER", wantType: "Bearer"},
		{name: "other type kept", giveType: "DPoP", giveScope: "read", giveKeyScope: "read write", wantType: "DPoP", wantGranted: "read"},
		{name: "lifetime", give: TokenRecord{IssuedAt: t0, ExpiresAt: t0.Add(7200 * time.Second)}, wantType: "Bearer", wantLifetime: 2 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.give
			r.Key.Scope = tt.giveKeyScope
			r.fill(tt.giveType, tt.giveScope, rareFields{})
			// The record answers with what it was given, as stored.
			if got := r.TokenType(); got != tt.giveType {
				t.Errorf("TokenType() = %q, want %q", got, tt.giveType)
			}
			if got := r.Scope(); got != tt.giveScope {
				t.Errorf("Scope() = %q, want %q", got, tt.giveScope)
			}
			if got := r.Type(); got != tt.wantType {
				t.Errorf("Type() = %q, want %q", got, tt.wantType)
			}
			if got := r.GrantedScope(); got != tt.wantGranted {
				t.Errorf("GrantedScope() = %q, want %q", got, tt.wantGranted)
			}
			if got := r.Lifetime(); got != tt.wantLifetime {
				t.Errorf("Lifetime() = %v, want %v", got, tt.wantLifetime)
			}
		})
	}
}

func TestNewTokenKey(t *testing.T) {
	tests := []struct {
		name        string
		giveAccount string
		giveScopes  []string
		want        TokenKey
		wantID      string
	}{
		{name: "defaults", want: TokenKey{Provider: "mediavalet"}, wantID: "mediavalet//"},
		{name: "one scope", giveScopes: []string{"api"}, want: TokenKey{Provider: "mediavalet", Scope: "api"}, wantID: "mediavalet//api"},
		{name: "sorted and deduplicated", giveScopes: []string{"openid", "api", "offline_access", "api"},
			want: TokenKey{Provider: "mediavalet", Scope: "api offline_access openid"}, wantID: "mediavalet//api%20offline_access%20openid"},
		{name: "slash in a scope is escaped", giveScopes: []string{"https://graph.example.com/.default"},
			want: TokenKey{Provider: "mediavalet", Scope: "https://graph.example.com/.default"}, wantID: "mediavalet//https:%2F%2Fgraph.example.com%2F.default"},
		{name: "account", giveAccount: "alice@example.com", giveScopes: []string{"api"},
			want: TokenKey{Provider: "mediavalet", Account: "alice@example.com", Scope: "api"}, wantID: "mediavalet/alice@example.com/api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scopes := slices.Clone(tt.giveScopes)
			got, err := NewTokenKey("mediavalet", tt.giveAccount, scopes)
			if err != nil {
				t.Fatalf("NewTokenKey: %v", err)
			}
			if got != tt.want || got.id() != tt.wantID {
				t.Errorf("NewTokenKey(%q, %q) = %+v with id %q, want %+v with id %q", tt.giveAccount, tt.giveScopes, got, got.id(), tt.want, tt.wantID)
			}
			if !slices.Equal(scopes, tt.giveScopes) {
				t.Errorf("NewTokenKey changed the caller's scopes %q to %q", tt.giveScopes, scopes)
			}
		})
	}
}

func TestValidateAccountName(t *testing.T) {
	tests := []struct {
		give string
		want error
	}{
		{give: "", want: nil},
		{give: "alice@example.com", want: nil},
		{give: strings.Repeat("a", 128), want: nil},
		{give: strings.Repeat("a", 129), want: ErrInvalidArgument},
		{give: "a/b", want: ErrInvalidArgument},
		{give: "a%2F", want: ErrInvalidArgument},
		{give: "a b", want: ErrInvalidArgument},
		{give: "tab\t", want: ErrInvalidArgument},
		{give: "del\x7f", want: ErrInvalidArgument},
		{give: "é", want: ErrInvalidArgument},
	}
	for _, tt := range tests {
		if err := ValidateAccountName(tt.give); !errors.Is(err, tt.want) {
			t.Errorf("ValidateAccountName(%q) = %v, want %v", tt.give, err, tt.want)
		}
	}
}

// tokenID is NewTokenKey(...).id() whenever NewTokenKey succeeds, and
// fails whenever it fails.
func TestTokenIDIsTheKeysID(t *testing.T) {
	tests := []struct {
		provider, account string
		scopes            []string
	}{
		{"mediahound", "", nil},
		{"mediahound", "", []string{"read"}},
		{"mediahound", "alice@example.com", []string{"write", "read", "read", "admin:org"}},
		{"p", "a+b=c;d,e?f&g$h:i~j", []string{"z", "a", "m", "b", "y", "c", "x", "d", "w", "e"}},
		{"p", "", []string{"https://api.example.com/.default", "offline_access", "openid"}},
		{"p", "", []string{"a!#'()*[]^`{|}", "b"}},
		{"p", "", []string{"read", ""}},
		{"p", "", []string{"read write"}},
		{"P", "", nil},
		{"", "", nil},
		{"p", "a/b", nil},
		{"p", "a b", nil},
		{"p", "", make([]string, maxScopes+1)},
	}
	for _, tt := range tests {
		key, kerr := NewTokenKey(tt.provider, tt.account, tt.scopes)
		id, ok := tokenID(tt.provider, tt.account, tt.scopes)
		if (kerr == nil) != ok || (ok && id != key.id()) {
			t.Errorf("tokenID(%q, %q, %q) = %q, %t; NewTokenKey gives %q, %v", tt.provider, tt.account, tt.scopes, id, ok, key.id(), kerr)
		}
	}
	// Every byte escapes as url.PathEscape escapes it.
	for c := range 256 {
		s := string([]byte{byte(c)})
		var b strings.Builder
		writePathEscaped(&b, s)
		if b.String() != url.PathEscape(s) || pathEscapedLen(s) != len(url.PathEscape(s)) {
			t.Errorf("byte %#x escapes to %q (length %d), url.PathEscape gives %q", c, b.String(), pathEscapedLen(s), url.PathEscape(s))
		}
	}
}

func FuzzTokenID(f *testing.F) {
	f.Add("mediahound", "alice", "write read read admin:org")
	f.Add("p", "a;b,c", "z a")
	f.Fuzz(func(t *testing.T, provider, account, scopes string) {
		var list []string
		if scopes != "" {
			list = strings.Split(scopes, " ")
		}
		key, kerr := NewTokenKey(provider, account, list)
		id, ok := tokenID(provider, account, list)
		if (kerr == nil) != ok || (ok && id != key.id()) {
			t.Errorf("tokenID(%q, %q, %q) = %q, %t; NewTokenKey gives %q, %v", provider, account, list, id, ok, key.id(), kerr)
		}
	})
}
