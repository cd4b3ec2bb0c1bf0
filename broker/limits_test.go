package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
)

func TestQuoteCutsLongInput(t *testing.T) {
	tests := []struct {
		give, want string
	}{
		{"short", `"short"`},
		{strings.Repeat("a", 64), `"` + strings.Repeat("a", 64) + `"`},
		{strings.Repeat("a", 65), `"` + strings.Repeat("a", 64) + `"…`},
		{strings.Repeat("a", 63) + "é" + "b", `"` + strings.Repeat("a", 63) + `"…`}, // not cut inside é
		{"new\nline", `"new\nline"`},
	}
	for _, tt := range tests {
		if got := quote(tt.give); got != tt.want {
			t.Errorf("quote(%.20q…) = %s, want %s", tt.give, got, tt.want)
		}
	}
}

// numbered is n token params p0..p(n-1), each of value v.
func numbered(n int, v string) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("p%d", i)] = v
	}
	return m
}

// TestOversizedAdminInputIsRefusedAndNotEchoed: a provider with a 100 KB
// name, one with 1 MB of token_params, and an account with a 100 KB
// password, among others, are refused with ErrInvalidArgument; no error is
// longer than 4 KB (one bounded line per problem), and etcd holds none of
// them.
func TestOversizedAdminInputIsRefusedAndNotEchoed(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	inspect := e.Client(t, nil)
	ctx := context.Background()
	valid := Provider{Name: "big", TokenURL: "https://example.com/token", ClientID: "id", ClientAuth: oauth.AuthBasic,
		GrantTypes: []GrantType{GrantClientCredentials, GrantPassword}}
	putProvider(t, b, valid, "secret")
	bigName := strings.Repeat("N", 100<<10)
	tests := []struct {
		name string
		put  func() error
	}{
		{"100 KB name", func() error {
			p := valid
			p.Name = bigName
			_, err := b.PutProvider(ctx, p, "")
			return err
		}},
		{"100 KB name with a bad character", func() error {
			p := valid
			p.Name = "a/" + strings.Repeat("n", 100<<10)
			_, err := b.PutProvider(ctx, p, "")
			return err
		}},
		{"1 MB of token_params in 16 params", func() error {
			p := valid
			p.TokenParams = numbered(16, strings.Repeat("v", 64<<10))
			_, err := b.PutProvider(ctx, p, "")
			return err
		}},
		{"1 MB of token_params in 4096 params", func() error {
			p := valid
			p.TokenParams = numbered(4096, strings.Repeat("v", 256))
			_, err := b.PutProvider(ctx, p, "")
			return err
		}},
		{"100 KB token URL", func() error {
			p := valid
			p.TokenURL = "https://example.com/" + strings.Repeat("t", 100<<10)
			_, err := b.PutProvider(ctx, p, "")
			return err
		}},
		{"100 KB secret", func() error {
			_, err := b.PutProvider(ctx, valid, strings.Repeat("s", 100<<10))
			return err
		}},
		{"100 KB rotated secret", func() error {
			_, err := b.RotateClientSecret(ctx, "big", strings.Repeat("s", 100<<10), false, 0)
			return err
		}},
		{"100 KB password", func() error {
			_, err := b.PutAccount(ctx, Account{Provider: "big", Account: "a", Type: GrantPassword, Username: "u", Password: strings.Repeat("p", 100<<10)})
			return err
		}},
		{"100 KB username", func() error {
			_, err := b.PutAccount(ctx, Account{Provider: "big", Account: "a", Type: GrantPassword, Username: strings.Repeat("u", 100<<10)})
			return err
		}},
		{"100 KB grant type", func() error {
			_, err := b.PutAccount(ctx, Account{Provider: "big", Account: "a", Type: GrantType(strings.Repeat("g", 100<<10))})
			return err
		}},
		{"100 KB preset base URL", func() error {
			p := valid
			return b.ApplyPreset(ctx, &p, "oidc", "https://example.com/"+strings.Repeat("b", 100<<10))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.put()
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("error = %.200v, want ErrInvalidArgument", err)
			}
			if len(err.Error()) > 4<<10 {
				t.Errorf("error is %d bytes, want at most 4 KB: %.400s", len(err.Error()), err)
			}
		})
	}
	got, err := b.GetProvider(ctx, "big")
	if err != nil || len(got.TokenParams) != 0 || got.TokenURL != valid.TokenURL {
		t.Errorf("provider big after the refused updates = %+v, %v; want it unchanged", got, err)
	}
	for k, v := range etcdKeys(t, inspect, DefaultPrefix) {
		if len(v) > 4<<10 {
			t.Errorf("etcd holds %s of %d bytes, want no record over 4 KB", k, len(v))
		}
	}
	if kvs := etcdKeys(t, inspect, DefaultPrefix+grantsPrefix); len(kvs) != 0 {
		t.Errorf("etcd holds grants %v after refused accounts, want none", kvs)
	}
}
