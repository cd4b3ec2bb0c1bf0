package policy_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/policy"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, give string
		want          bool
	}{
		{"svc-a", "svc-a", true},
		{"svc-a", "svc-ab", false},
		{"svc-a", "", false},
		{"*", "", true},
		{"*", "anything/at/all", true},
		{"svc-*", "svc-a", true},
		{"svc-*", "svc-", true},
		{"svc-*", "sv", false},
		{"*-prod", "billing-prod", true},
		{"*-prod", "billing-dev", false},
		{"spiffe://corp/*", "spiffe://corp/ns/billing", true},
		{"spiffe://corp/*", "spiffe://other/ns/billing", false},
		{"spiffe://corp/*/billing", "spiffe://corp/ns/billing", true},
		{"spiffe://corp/*/billing", "spiffe://corp/ns/billing2", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"**", "x", true},
		{"a?c", "abc", false}, // '?' is literal
		{"a[b]c", "a[b]c", true},
	}
	for _, tt := range tests {
		if got := policy.Match(tt.pattern, tt.give); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.give, got, tt.want)
		}
	}
}

// FuzzMatch compares Match with the equivalent regular expression.
func FuzzMatch(f *testing.F) {
	for _, seed := range [][2]string{{"a*b", "axb"}, {"*", ""}, {"a*a*a", "aaaa"}, {"spiffe://*/x", "spiffe://c/x"}, {"**a", "ba"}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		parts := strings.Split(pattern, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		re, err := regexp.Compile(`(?s)\A` + strings.Join(parts, ".*") + `\z`)
		if err != nil {
			t.Skip()
		}
		if got, want := policy.Match(pattern, s), re.MatchString(s); got != want {
			t.Errorf("Match(%q, %q) = %v, want %v", pattern, s, got, want)
		}
	})
}

func TestAllow(t *testing.T) {
	p, err := policy.New([]policy.Rule{
		{Identities: []string{"spiffe://corp/billing"}, Providers: []string{"stripe"}, Actions: []policy.Action{policy.Token}},
		{Identities: []string{"svc-*"}, Providers: []string{"mediahaven"}, Accounts: []string{"", "archive-*"}, Actions: []policy.Action{policy.Token, policy.Introspect}},
		{Identities: []string{"ops"}, Actions: []policy.Action{policy.Admin}},
		{Identities: []string{"auditor"}, Providers: []string{"stripe"}, Actions: []policy.Action{policy.Introspect}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		identity          string
		action            policy.Action
		provider, account string
		want              bool
	}{
		{"spiffe://corp/billing", policy.Token, "stripe", "", true},
		{"spiffe://corp/billing", policy.Token, "stripe", "alice", true},
		{"spiffe://corp/billing", policy.Token, "mediahaven", "", false},
		{"spiffe://corp/billing", policy.Introspect, "stripe", "", false},
		{"spiffe://corp/billing", policy.Admin, "", "", false},
		{"svc-archive", policy.Token, "mediahaven", "", true},
		{"svc-archive", policy.Token, "mediahaven", "archive-eu", true},
		{"svc-archive", policy.Token, "mediahaven", "alice", false},
		{"svc-archive", policy.Introspect, "mediahaven", "archive-eu", true},
		{"svc-archive", policy.Token, "stripe", "", false},
		{"ops", policy.Admin, "", "", true},
		{"ops", policy.Admin, "anything", "x", true},
		{"ops", policy.Token, "stripe", "", false},
		{"nobody", policy.Token, "stripe", "", false},
		{"", policy.Token, "stripe", "", false},
		{"ops", policy.Action("root"), "", "", false},
	}
	for _, tt := range tests {
		if got := p.Allow(tt.identity, tt.action, tt.provider, tt.account); got != tt.want {
			t.Errorf("Allow(%q, %s, %q, %q) = %v, want %v", tt.identity, tt.action, tt.provider, tt.account, got, tt.want)
		}
	}

	some := []struct {
		identity string
		action   policy.Action
		want     bool
	}{
		{"auditor", policy.Introspect, true},
		{"auditor", policy.Token, false},
		{"spiffe://corp/billing", policy.Introspect, false},
		{"svc-x", policy.Introspect, true},
		{"nobody", policy.Introspect, false},
	}
	for _, tt := range some {
		if got := p.AllowSome(tt.identity, tt.action); got != tt.want {
			t.Errorf("AllowSome(%q, %s) = %v, want %v", tt.identity, tt.action, got, tt.want)
		}
	}
}

func TestNilAndEmptyPoliciesDenyEverything(t *testing.T) {
	empty, err := policy.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*policy.Policy{nil, empty} {
		for _, a := range policy.Actions {
			if p.Allow("anyone", a, "p", "") || p.AllowSome("anyone", a) {
				t.Errorf("policy with %d rules allows %s, want deny", p.Len(), a)
			}
		}
	}
}

func TestAllowAll(t *testing.T) {
	p := policy.AllowAll()
	for _, a := range policy.Actions {
		if !p.Allow("anonymous", a, "p", "acct") || !p.AllowSome("anonymous", a) {
			t.Errorf("AllowAll denies %s", a)
		}
	}
	if p.Allow("anonymous", "root", "", "") {
		t.Errorf("AllowAll allows an unknown action")
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := policy.New([]policy.Rule{
		{Actions: []policy.Action{policy.Token}},
		{Identities: []string{"a"}},
		{Identities: []string{"a"}, Actions: []policy.Action{"root"}},
		{Identities: []string{""}, Providers: []string{""}, Actions: []policy.Action{policy.Token}},
		{Identities: []string{"ok"}, Accounts: []string{""}, Actions: []policy.Action{policy.Token}},
	})
	if !errors.Is(err, policy.ErrInvalidRule) {
		t.Fatalf("New = %v, want ErrInvalidRule", err)
	}
	for _, want := range []string{
		"rule 1: identities is empty",
		"rule 2: actions is empty",
		`rule 3: unknown action "root"`,
		"rule 4: identities has an empty pattern",
		"rule 4: providers has an empty pattern",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New error = %q, want it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "rule 5") {
		t.Errorf("New error = %q, want no problem with rule 5 (the empty account is the provider's own)", err)
	}
}

func BenchmarkAllow(b *testing.B) {
	rules := make([]policy.Rule, 0, 50)
	for range 49 {
		rules = append(rules, policy.Rule{Identities: []string{"svc-other-*"}, Providers: []string{"p"}, Actions: []policy.Action{policy.Token}})
	}
	rules = append(rules, policy.Rule{Identities: []string{"spiffe://corp/*"}, Providers: []string{"sandbox"}, Actions: []policy.Action{policy.Token}})
	p, err := policy.New(rules)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !p.Allow("spiffe://corp/ns/svc", policy.Token, "sandbox", "") {
			b.Fatal("denied")
		}
	}
}
