package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// grantSnapshot is what must survive a failed callback or refresh: the
// grant (as ListGrants shows it) and the account's stored token.
type grantSnapshot struct {
	grant *Grant
	token *TokenRecord
}

func snapshotGrant(t *testing.T, b *Broker, provider, account string) grantSnapshot {
	t.Helper()
	key, err := NewTokenKey(provider, account, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := b.readToken(context.Background(), key.id())
	if err != nil || rec == nil {
		t.Fatalf("read the token of %s: %v, %v", key, rec, err)
	}
	return grantSnapshot{grant: grantOf(t, b, provider, account), token: rec}
}

// sameGrant reports how after differs from before in what a failed request
// must leave alone; "" when it does not. exact also compares the health and
// the etcd revision: nothing may have been written.
func sameGrant(before, after grantSnapshot, exact bool) string {
	g, h := before.grant, after.grant
	switch {
	case g.Type != h.Type || g.RefreshToken != h.RefreshToken || g.Generation != h.Generation || g.Username != h.Username:
		return "the grant's type, refresh token or generation changed"
	case h.Health == HealthReauthorizationRequired:
		return "the grant was marked reauthorization_required"
	case exact && (g.Health != h.Health || g.LastError != h.LastError || g.Revision != h.Revision):
		return "the grant was written"
	case before.token.AccessToken != after.token.AccessToken || before.token.Revision != after.token.Revision:
		return "the stored token changed"
	}
	return ""
}

// TestCompleteAuthorizationBadCallback gives the broker callbacks that must
// fail: each gets a clear error, and the account's stored grant and token
// stay as they were.
func TestCompleteAuthorizationBadCallback(t *testing.T) {
	type env struct {
		b     *Broker
		f     *fakes.Server
		clock *fakeClock
	}
	type want struct {
		is   error
		code string // the provider's OAuth error, when it answered one
		text string // in the error's message
	}
	tests := []struct {
		name string
		seed string
		give func(t *testing.T, e env) Callback
		want want
	}{
		{
			name: "missing state",
			seed: "mediahaven",
			give: func(t *testing.T, e env) Callback {
				_, cb := consentInBrowser(t, e.b, e.f, "mediahaven", "alice", nil)
				return Callback{Code: cb.Code}
			},
			want: want{is: ErrInvalidArgument, text: "no state"},
		},
		{
			name: "unknown state",
			seed: "mediahaven",
			give: func(t *testing.T, e env) Callback {
				_, cb := consentInBrowser(t, e.b, e.f, "mediahaven", "alice", nil)
				return Callback{State: "never-issued-" + cb.State[:8], Code: cb.Code}
			},
			want: want{is: ErrInvalidArgument, text: "unknown, used or expired state"},
		},
		{
			name: "reused state",
			seed: "mediahaven",
			give: func(t *testing.T, e env) Callback {
				_, cb := consentInBrowser(t, e.b, e.f, "mediahaven", "alice", nil)
				if _, err := e.b.CompleteAuthorization(context.Background(), cb); err != nil {
					t.Fatalf("first CompleteAuthorization: %v", err)
				}
				return cb
			},
			want: want{is: ErrInvalidArgument, text: "unknown, used or expired state"},
		},
		{
			name: "expired state",
			seed: "mediahaven",
			give: func(t *testing.T, e env) Callback {
				_, cb := consentInBrowser(t, e.b, e.f, "mediahaven", "alice", nil)
				e.clock.Advance(AuthorizationTTL + time.Second)
				return cb
			},
			want: want{is: ErrInvalidArgument, text: "expired state"},
		},
		{
			name: "access_denied",
			seed: "mediahaven",
			give: func(t *testing.T, e env) Callback {
				auth, err := e.b.StartAuthorization(context.Background(), "mediahaven", "alice", nil)
				if err != nil {
					t.Fatal(err)
				}
				loc, err := e.f.Deny(auth.URL)
				if err != nil {
					t.Fatalf("deny at %s: %v", auth.URL, err)
				}
				q := loc.Query()
				return Callback{State: q.Get("state"), Error: q.Get("error"), ErrorDescription: q.Get("error_description")}
			},
			want: want{is: ErrAuthorizationDenied, text: "access_denied"},
		},
		{
			name: "neither code nor error",
			seed: "mediahaven",
			give: func(t *testing.T, e env) Callback {
				_, cb := consentInBrowser(t, e.b, e.f, "mediahaven", "alice", nil)
				return Callback{State: cb.State}
			},
			want: want{is: ErrInvalidArgument, text: "neither code nor error"},
		},
		{
			name: "code older than MediaValet's 60 s",
			seed: "mediavalet",
			give: func(t *testing.T, e env) Callback {
				_, cb := consentInBrowser(t, e.b, e.f, "mediavalet", "alice", nil)
				e.clock.Advance(61 * time.Second)
				return cb
			},
			want: want{code: "invalid_grant", text: "expired"},
		},
		{
			name: "Mediaflow echoes another state",
			seed: "mediaflow",
			give: func(t *testing.T, e env) Callback {
				_, cb := consentInBrowser(t, e.b, e.f, "mediaflow", "alice", nil)
				(&fakes.Mediaflow{Server: e.f}).EchoForeignState(true)
				return cb
			},
			want: want{is: oauth.ErrBadResponse, text: "echoed state differs"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			etcd := etcdtest.Start(t)
			clock := newClock()
			b, seed := startSeed(t, etcd, clock, tt.seed)
			authorizeAccount(t, b, seed.fake, tt.seed, "alice", nil)
			accountToken(t, b, tt.seed, "alice")
			cb := tt.give(t, env{b: b, f: seed.fake, clock: clock})
			before := snapshotGrant(t, b, tt.seed, "alice")

			g, err := b.CompleteAuthorization(context.Background(), cb)
			var oe *oauth.Error
			if err == nil || (tt.want.is != nil && !errors.Is(err, tt.want.is)) ||
				(tt.want.code != "" && (!errors.As(err, &oe) || oe.Code != tt.want.code)) || !strings.Contains(err.Error(), tt.want.text) {
				t.Fatalf("CompleteAuthorization = %v, %v; want an error wrapping %v (provider error %q) that says %q",
					g, err, tt.want.is, tt.want.code, tt.want.text)
			}
			if diff := sameGrant(before, snapshotGrant(t, b, tt.seed, "alice"), true); diff != "" {
				t.Errorf("after the failed callback %s", diff)
			}
			if rec := accountToken(t, b, tt.seed, "alice"); rec.AccessToken != before.token.AccessToken {
				t.Errorf("GetToken after the failed callback = %q, want the stored %q", rec.AccessToken, before.token.AccessToken)
			}
		})
	}
}

// badAnswerVia makes the fake answer body to a code exchange or to a
// refresh of MediaHaven's consented account alice, and returns the error
// of the broker call that got it.
var badAnswerVia = map[string]func(t *testing.T, b *Broker, f *fakes.Server, clock *fakeClock, body string) error{
	"callback": func(t *testing.T, b *Broker, f *fakes.Server, _ *fakeClock, body string) error {
		_, cb := consentInBrowser(t, b, f, "mediahaven", "alice", nil)
		f.Fail(200, body)
		defer f.Recover()
		_, err := b.CompleteAuthorization(context.Background(), cb)
		return err
	},
	"refresh": func(t *testing.T, b *Broker, f *fakes.Server, clock *fakeClock, body string) error {
		clock.Advance(2 * time.Hour)
		f.Fail(200, body)
		defer f.Recover()
		_, err := b.GetToken(context.Background(), TokenRequest{Provider: "mediahaven", Account: "alice"})
		return err
	},
}

// TestBadTokenResponses makes the provider answer a code exchange or a
// refresh with a 200 that is not a usable bearer token. Each is a clear
// *ProviderError that stores nothing: the grant keeps its refresh token
// (the fake fails the test if the broker later sends one it had
// consumed), and once the provider answers well the grant works again.
func TestBadTokenResponses(t *testing.T) {
	type give struct {
		via  string // "callback" or "refresh"
		body string // the provider's 200 answer
	}
	type want struct {
		is   error
		code string // the OAuth error in the 200 answer
		text string
	}
	const (
		noAccessToken = `{"token_type":"bearer","expires_in":3600,"refresh_token":"rt-without-access-token"}`
		macToken      = `{"access_token":"at-mac","token_type":"mac","expires_in":3600}`
		errorIn200    = `{"error":"invalid_request","error_description":"the request is malformed"}`
		notJSON       = `<html>maintenance</html>`
	)
	tests := []struct {
		name string
		give give
		want want
	}{
		{name: "callback/no access_token", give: give{via: "callback", body: noAccessToken},
			want: want{is: oauth.ErrBadResponse, text: "missing access_token"}},
		{name: "callback/token_type mac", give: give{via: "callback", body: macToken},
			want: want{is: oauth.ErrBadResponse, text: `token_type "mac" is not bearer`}},
		{name: "callback/200 with error", give: give{via: "callback", body: errorIn200},
			want: want{code: "invalid_request", text: "the request is malformed"}},
		{name: "callback/not JSON", give: give{via: "callback", body: notJSON},
			want: want{is: oauth.ErrBadResponse, text: "not a JSON object"}},
		{name: "refresh/no access_token", give: give{via: "refresh", body: noAccessToken},
			want: want{is: oauth.ErrBadResponse, text: "missing access_token"}},
		{name: "refresh/token_type mac", give: give{via: "refresh", body: macToken},
			want: want{is: oauth.ErrBadResponse, text: `token_type "mac" is not bearer`}},
		{name: "refresh/200 with error", give: give{via: "refresh", body: errorIn200},
			want: want{code: "invalid_request", text: "the request is malformed"}},
		{name: "refresh/not JSON", give: give{via: "refresh", body: notJSON},
			want: want{is: oauth.ErrBadResponse, text: "not a JSON object"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			clock := newClock()
			b, env := startSeed(t, e, clock, "mediahaven")
			f := env.fake
			authorizeAccount(t, b, f, "mediahaven", "alice", nil)
			accountToken(t, b, "mediahaven", "alice")
			before := snapshotGrant(t, b, "mediahaven", "alice")

			err := badAnswerVia[tt.give.via](t, b, f, clock, tt.give.body)
			var oe *oauth.Error
			if err == nil || (tt.want.is != nil && !errors.Is(err, tt.want.is)) ||
				(tt.want.code != "" && (!errors.As(err, &oe) || oe.Code != tt.want.code || oe.StatusCode != 200)) ||
				!strings.Contains(err.Error(), tt.want.text) {
				t.Fatalf("%s answered %s: error %v; want one wrapping %v (OAuth error %q) that says %q",
					tt.give.via, tt.give.body, err, tt.want.is, tt.want.code, tt.want.text)
			}
			if pe := (*ProviderError)(nil); !errors.As(err, &pe) || pe.Provider != "mediahaven" {
				t.Errorf("error %v is not a *ProviderError of mediahaven", err)
			}
			// A failed callback writes nothing; a failed refresh records the
			// failure on the grant, and nothing else.
			if diff := sameGrant(before, snapshotGrant(t, b, "mediahaven", "alice"), tt.give.via == "callback"); diff != "" {
				t.Errorf("after the bad answer %s", diff)
			}

			clock.Advance(time.Minute) // past the grant's cooldown
			rec := accountToken(t, b, "mediahaven", "alice")
			if !f.Active(rec.AccessToken) {
				t.Errorf("GetToken once the provider answers well = %q, which the provider does not hold as active", rec.AccessToken)
			}
			if g := grantOf(t, b, "mediahaven", "alice"); g.Health != HealthOK {
				t.Errorf("grant once the provider answers well is %s (%s), want ok", g.Health, g.LastError)
			}
		})
	}
}

// TestBearerCaseInsensitive: token_type "BEARER" is a bearer token, in a
// code exchange and in a refresh.
func TestBearerCaseInsensitive(t *testing.T) {
	tests := []struct {
		name string
		give string // how the answer comes
		want string // the access token served
	}{
		{name: "callback", give: "callback", want: "at-upper"},
		{name: "refresh", give: "refresh", want: "at-upper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			clock := newClock()
			b, env := startSeed(t, e, clock, "mediahaven")
			authorizeAccount(t, b, env.fake, "mediahaven", "alice", nil)
			accountToken(t, b, "mediahaven", "alice")
			body := `{"access_token":"` + tt.want + `","token_type":"BEARER","expires_in":3600}`
			if err := badAnswerVia[tt.give](t, b, env.fake, clock, body); err != nil {
				t.Fatalf("%s answered %s: %v, want success", tt.give, body, err)
			}
			if rec := accountToken(t, b, "mediahaven", "alice"); rec.AccessToken != tt.want || rec.Type() != "Bearer" {
				t.Errorf("GetToken = %q of type %q, want %q of type Bearer", rec.AccessToken, rec.Type(), tt.want)
			}
		})
	}
}
