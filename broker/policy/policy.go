// Package policy decides which caller may do what: get tokens of which
// provider and account, introspect them, or administer the broker. It denies
// whatever no rule allows.
package policy

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Action is what a caller wants to do.
type Action string

// The actions a rule can allow.
const (
	// Token allows GetToken and Refresh for the rule's providers and accounts.
	Token Action = "token"
	// Introspect allows Introspect; the answer reveals a token's details only
	// for the rule's providers and accounts.
	Introspect Action = "introspect"
	// Admin allows every AdminService call. Admin is global: a rule's
	// providers and accounts do not narrow it.
	Admin Action = "admin"
)

// Actions lists every action, in a stable order.
var Actions = []Action{Token, Introspect, Admin}

// ErrInvalidRule: a rule is malformed.
var ErrInvalidRule = errors.New("policy: invalid rule")

// Rule allows the identities it names the actions it lists, on the
// providers and accounts it names. Each name is a pattern: an exact string,
// or one with '*' wildcards, each matching any run of characters ('/'
// included, so "spiffe://corp/*" matches "spiffe://corp/ns/svc"). Empty
// Providers or Accounts mean every one ("*"); the account "" is a
// provider's own client identity, which "*" matches too.
type Rule struct {
	Identities []string
	Providers  []string
	Accounts   []string
	Actions    []Action
}

// Policy is an immutable set of rules. The nil *Policy allows nothing.
// Safe for concurrent use.
type Policy struct {
	rules []rule
	all   bool
}

type rule struct {
	identities []pattern
	providers  []pattern
	accounts   []pattern
	actions    actionSet
}

type actionSet uint8

func bit(a Action) actionSet {
	for i, known := range Actions {
		if a == known {
			return 1 << i
		}
	}
	return 0
}

// maxPattern bounds a pattern's length.
const maxPattern = 512

// New compiles rules into a Policy. Its error wraps ErrInvalidRule and names
// every problem of every rule at once: no identities, no actions, an
// unknown action, an empty identity or provider pattern, an overlong pattern
// or one that is not UTF-8.
func New(rules []Rule) (*Policy, error) {
	p := &Policy{rules: make([]rule, 0, len(rules))}
	var errs []error
	for i, r := range rules {
		var c rule
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%w: rule %d: %s", ErrInvalidRule, i+1, fmt.Sprintf(format, args...)))
		}
		if len(r.Identities) == 0 {
			bad("identities is empty")
		}
		if len(r.Actions) == 0 {
			bad("actions is empty")
		}
		for _, a := range r.Actions {
			b := bit(a)
			if b == 0 {
				bad("unknown action %q (want token, introspect or admin)", a)
			}
			c.actions |= b
		}
		compile := func(field string, pats []string, allowEmpty bool) []pattern {
			if len(pats) == 0 {
				return []pattern{compilePattern("*")}
			}
			out := make([]pattern, 0, len(pats))
			for _, s := range pats {
				switch {
				case s == "" && !allowEmpty:
					bad("%s has an empty pattern", field)
				case len(s) > maxPattern:
					bad("%s has a pattern longer than %d bytes", field, maxPattern)
				case !utf8.ValidString(s):
					bad("%s has a pattern that is not UTF-8", field)
				}
				out = append(out, compilePattern(s))
			}
			return out
		}
		if len(r.Identities) > 0 {
			c.identities = compile("identities", r.Identities, false)
		}
		c.providers = compile("providers", r.Providers, false)
		c.accounts = compile("accounts", r.Accounts, true)
		p.rules = append(p.rules, c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// AllowAll returns a policy that allows every identity every action; for
// servers run explicitly without authentication.
func AllowAll() *Policy { return &Policy{all: true} }

// Allow reports whether identity may perform action on provider's account.
// For Admin, provider and account are ignored.
func (p *Policy) Allow(identity string, action Action, provider, account string) bool {
	if p == nil {
		return false
	}
	if p.all {
		return bit(action) != 0
	}
	b := bit(action)
	if b == 0 {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.actions&b == 0 || !matchAny(r.identities, identity) {
			continue
		}
		if action == Admin || (matchAny(r.providers, provider) && matchAny(r.accounts, account)) {
			return true
		}
	}
	return false
}

// AllowSome reports whether identity may perform action on at least one
// provider and account; Introspect, whose request names no provider, is
// let through on this and narrowed by Allow once the token's provider is
// known.
func (p *Policy) AllowSome(identity string, action Action) bool {
	if p == nil {
		return false
	}
	if p.all {
		return bit(action) != 0
	}
	b := bit(action)
	for i := range p.rules {
		r := &p.rules[i]
		if b != 0 && r.actions&b != 0 && matchAny(r.identities, identity) {
			return true
		}
	}
	return false
}

// Len returns the number of rules.
func (p *Policy) Len() int {
	if p == nil {
		return 0
	}
	return len(p.rules)
}

// pattern is a compiled name pattern: the literal parts between '*'s.
type pattern struct {
	parts []string // len 1: no wildcard
}

func compilePattern(s string) pattern {
	return pattern{parts: strings.Split(s, "*")}
}

func matchAny(pats []pattern, s string) bool {
	for _, p := range pats {
		if p.match(s) {
			return true
		}
	}
	return false
}

// Match reports whether s matches pattern, where each '*' matches any run
// of characters and everything else matches itself.
func Match(pattern, s string) bool { return compilePattern(pattern).match(s) }

func (p pattern) match(s string) bool {
	parts := p.parts
	if len(parts) == 1 {
		return s == parts[0]
	}
	first, last := parts[0], parts[len(parts)-1]
	if len(s) < len(first)+len(last) || !strings.HasPrefix(s, first) || !strings.HasSuffix(s, last) {
		return false
	}
	s = s[len(first) : len(s)-len(last)]
	// Each middle part matches at its leftmost position: a later match
	// never helps the parts after it.
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return true
}
