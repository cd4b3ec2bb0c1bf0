package broker

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzNewTokenKey feeds request validation what a caller may send: a
// provider name, an account name and scopes (newline-separated, so that
// empty scopes and scopes with spaces can be tried). It must not panic; an
// error must be ErrInvalidArgument; an accepted key's id must have exactly
// the two '/' that separate its parts and must give the key back, and the
// key must not depend on the order or repetition of the scopes.
func FuzzNewTokenKey(f *testing.F) {
	for _, seed := range []struct{ provider, account, scopes string }{
		{"mediahound", "", ""},
		{"mediahound", "", "public"},
		{"mediavalet", "alice@example.com", "openid\napi\noffline_access\napi"},
		{"mediahaven", "svc/../x", "a b"},
		{"media.flow_1", "%2F", "https://graph.example.com/.default\nread:all"},
		{"Upper", "", `quote"`},
		{"x", strings.Repeat("a", 129), "\n"},
		{"-x", "tab\there", "back\\slash"},
		{"ok", "", "\x00\nü"},
	} {
		f.Add(seed.provider, seed.account, seed.scopes)
	}
	f.Fuzz(func(t *testing.T, provider, account, joined string) {
		var scopes []string
		if joined != "" {
			scopes = strings.Split(joined, "\n")
		}
		given := slices.Clone(scopes)

		key, err := NewTokenKey(provider, account, scopes)

		if !slices.Equal(scopes, given) {
			t.Fatalf("NewTokenKey changed the caller's scopes %q to %q", given, scopes)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("NewTokenKey(%q, %q, %q) error = %v, want ErrInvalidArgument", provider, account, scopes, err)
			}
			return
		}
		id := key.id()
		if n := strings.Count(id, "/"); n != 2 {
			t.Fatalf("NewTokenKey(%q, %q, %q): id %q has %d '/', want 2", provider, account, scopes, id, n)
		}
		parts := strings.Split(id, "/")
		gotAccount, err1 := url.PathUnescape(parts[1])
		gotScope, err2 := url.PathUnescape(parts[2])
		if parts[0] != key.Provider || err1 != nil || err2 != nil || gotAccount != key.Account || gotScope != key.Scope {
			t.Fatalf("id %q gives back %q, %q (%v), %q (%v); want %+v", id, parts[0], gotAccount, err1, gotScope, err2, key)
		}
		if key.Provider != provider || key.Account != account {
			t.Fatalf("key %+v, want provider %q and account %q as given", key, provider, account)
		}

		// The scope set is normalized: sorted, without duplicates, and
		// whatever order the caller used.
		normal := strings.Fields(key.Scope)
		want := slices.Compact(slices.Sorted(slices.Values(scopes)))
		if !slices.Equal(normal, want) || strings.Join(normal, " ") != key.Scope {
			t.Fatalf("scopes %q gave scope %q, want %q", scopes, key.Scope, strings.Join(want, " "))
		}
		shuffled := slices.Clone(scopes)
		slices.Reverse(shuffled)
		if len(shuffled) > 0 && len(shuffled) < maxScopes {
			shuffled = append(shuffled, shuffled[0])
		}
		again, err := NewTokenKey(provider, account, shuffled)
		if err != nil || again != key {
			t.Fatalf("scopes %q reordered as %q gave %+v, %v; want %+v", scopes, shuffled, again, err, key)
		}
	})
}
