// Package event is the grant lifecycle events the broker records: each is
// written to etcd in the same transaction as the change it describes (an
// outbox), so that an event is neither lost when a replica dies nor
// recorded for a change that did not happen. Events carry no secret and no
// token.
package event

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Type names what happened.
type Type string

// The event types.
const (
	// GrantReauthorizationRequired: the provider refused the grant (consent
	// revoked, refresh token lapsed or rotated away); callers fail until an
	// admin acts.
	GrantReauthorizationRequired Type = "grant.reauthorization_required"
	// GrantFailing: token requests for the grant fail (the provider is
	// down, refuses the client, ...); still-valid tokens are served.
	GrantFailing Type = "grant.failing"
	// GrantRecovered: a grant that was failing or needed reauthorization
	// obtained a token again.
	GrantRecovered Type = "grant.recovered"
	// GrantAuthorized: a person completed consent for an account.
	GrantAuthorized Type = "grant.authorized"
	// GrantRevoked: an admin revoked the grant.
	GrantRevoked Type = "grant.revoked"
	// ProviderSecretRotated: the provider's client secret was rotated.
	ProviderSecretRotated Type = "provider.secret_rotated"
	// ProviderClientKeyRotated: the key the broker signs the provider's
	// client assertions with was replaced.
	ProviderClientKeyRotated Type = "provider.client_key_rotated"
	// ProviderChanged: a provider was created or changed.
	ProviderChanged Type = "provider.changed"
	// APIKeyCreated and APIKeyRetired: an API key was issued or retired.
	APIKeyCreated Type = "apikey.created"
	APIKeyRetired Type = "apikey.retired"
	// RefreshAnswerLost: a replica died between presenting a rotating
	// refresh token and storing the answer; the provider refused the
	// stored refresh token after.
	RefreshAnswerLost Type = "refresh.answer_lost"
)

// Types lists every type, in the order above.
var Types = []Type{GrantReauthorizationRequired, GrantFailing, GrantRecovered, GrantAuthorized, GrantRevoked,
	ProviderSecretRotated, ProviderClientKeyRotated, ProviderChanged, APIKeyCreated, APIKeyRetired, RefreshAnswerLost}

// Valid reports whether t is one of Types.
func (t Type) Valid() bool {
	for _, k := range Types {
		if t == k {
			return true
		}
	}
	return false
}

// Event is one recorded change.
type Event struct {
	// ID orders events by the time they were recorded: 16 hex digits of
	// the Unix time in nanoseconds and 8 random ones.
	ID       string    `json:"id"`
	Type     Type      `json:"type"`
	Time     time.Time `json:"time"`
	Provider string    `json:"provider,omitempty"`
	Account  string    `json:"account,omitempty"`
	// HealthBefore and HealthAfter are the grant's health around the
	// change, for grant events.
	HealthBefore string `json:"health_before,omitempty"`
	HealthAfter  string `json:"health_after,omitempty"`
	// Subject names what else the event is about: an API key's id.
	Subject string `json:"subject,omitempty"`
	// Detail says why, in words safe to show an admin: the grant's last
	// error, never a secret or token.
	Detail string `json:"detail,omitempty"`
	// Revision is the etcd revision the event was written at; set when
	// read.
	Revision int64 `json:"-"`
}

// Prefix is where events live below the broker's etcd prefix.
const Prefix = "events/"

// New returns an event of type t at now with a fresh id.
func New(t Type, now time.Time) Event {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return Event{ID: fmt.Sprintf("%016x%08x", now.UnixNano(), binary.BigEndian.Uint32(r[:])), Type: t, Time: now.UTC()}
}

// ValidID reports whether id has the form New gives.
func ValidID(id string) bool {
	if len(id) != 24 {
		return false
	}
	return strings.Trim(id, "0123456789abcdef") == ""
}

// Key is the etcd key of the event id below prefix (the broker's).
func Key(prefix, id string) string { return prefix + Prefix + id }

// Encode is the stored form of e (before its record tag).
func Encode(e Event) ([]byte, error) { return json.Marshal(e) }

// Decode reads a stored event.
func Decode(data []byte, rev int64) (Event, error) {
	var e Event
	if err := json.Unmarshal(data, &e); err != nil {
		return Event{}, fmt.Errorf("event: decode: %w", err)
	}
	e.Revision = rev
	return e, nil
}
