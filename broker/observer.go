package broker

import (
	"time"

	"github.com/tokenbroker/tokenbroker/broker/event"
)

// Observer is told what the broker does, for metrics. Its methods are
// called on the hot path (TokenServed) and must be cheap and safe for
// concurrent use; they must not block.
type Observer interface {
	// TokenServed reports a GetToken answer: "hit" (from memory), "miss"
	// (fetched or re-read) or "error".
	TokenServed(outcome string)
	// ProviderCall reports one token-endpoint request: outcome "ok",
	// "rejected" (an OAuth2 error), "unavailable" (5xx, 429, timeout,
	// transport) or "malformed".
	ProviderCall(provider string, grant GrantType, outcome string, d time.Duration)
	// Refreshed reports a token obtained by the background refresher,
	// with how long before expiry it was refreshed.
	Refreshed(provider string, ahead time.Duration)
	// RefreshFailed reports a failed background refresh.
	RefreshFailed(provider string)
	// Leading reports whether this replica leads shard.
	Leading(shard int, leading bool)
	// WebhookAttempt reports one delivery attempt to subscription
	// webhook; lag, on success, is how long after the event was recorded
	// it was delivered.
	WebhookAttempt(webhook string, ok bool, lag time.Duration)
	// WebhookDeadLettered reports a delivery that exhausted its schedule.
	WebhookDeadLettered(webhook string)
	// EventWatcherDropped reports an event watch ended because its
	// consumer fell too far behind (ErrSlowConsumer).
	EventWatcherDropped()
	// EventRecorded reports an event recorded by any replica; the leader
	// of refresh shard 0 reports each once.
	EventRecorded(t event.Type)
}

// Outcomes of TokenServed.
const (
	OutcomeHit   = "hit"
	OutcomeMiss  = "miss"
	OutcomeError = "error"
)

type nopObserver struct{}

func (nopObserver) TokenServed(string)                                    {}
func (nopObserver) ProviderCall(string, GrantType, string, time.Duration) {}
func (nopObserver) Refreshed(string, time.Duration)                       {}
func (nopObserver) RefreshFailed(string)                                  {}
func (nopObserver) Leading(int, bool)                                     {}
func (nopObserver) WebhookAttempt(string, bool, time.Duration)            {}
func (nopObserver) WebhookDeadLettered(string)                            {}
func (nopObserver) EventWatcherDropped()                                  {}
func (nopObserver) EventRecorded(event.Type)                              {}
