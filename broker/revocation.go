package broker

import (
	"context"
	"encoding/json"
	"net/url"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Whether a provider's refresh revokes the access tokens issued before it
// decides how long those tokens are served (TokenRecord.ProviderExpiresAt).
// A provider that does not say (Provider.RefreshRevokesAccessToken unset)
// but has an introspection endpoint is asked once: after a refresh, the
// broker introspects the access token the refresh replaced, while the
// provider's own expiry of it has not come, and keeps the answer in etcd
// under learned/<provider> for every replica. Until then, and for a
// provider without introspection, revocation is assumed.

// storedLearned is the etcd encoding of what the broker learned of a
// provider.
type storedLearned struct {
	RefreshRevokesAccessToken bool      `json:"refresh_revokes_access_token"`
	LearnTime                 time.Time `json:"learn_time"`
	LearnedBy                 string    `json:"learned_by,omitempty"`
}

func (b *Broker) learnedKey(provider string) string { return b.prefix + learnedPrefix + provider }

// decodeLearned returns what a learned record says; nil for a record it
// cannot read, which is then learned again, and for one without a valid
// tag made with the master key: a forged "does not revoke" must not bring
// back early revocations, so the broker assumes revocation instead.
func (b *Broker) decodeLearned(key string, data []byte) *bool {
	if err := b.verifyRecord(key, data); err != nil {
		b.log.Error("ignore a learned provider record that failed authentication", zap.Error(err))
		return nil
	}
	var s storedLearned
	if err := json.Unmarshal(data, &s); err != nil {
		b.log.Warn("ignore undecodable learned provider record", zap.Error(err))
		return nil
	}
	return &s.RefreshRevokesAccessToken
}

// learnRevocation learns, when p leaves it open and has not been asked yet,
// whether its refreshes revoke the access tokens issued before: prev, the
// token a refresh has just replaced, is introspected at p. The answer is
// stored only while p is unchanged since it was read. Failures are logged
// and learned again on a later refresh; nothing is returned.
func (b *Broker) learnRevocation(ctx context.Context, p *Provider, prev *TokenRecord) {
	if p.RefreshRevokesAccessToken != nil || p.LearnedRefreshRevokesAccessToken != nil || p.IntrospectionURL == "" {
		return
	}
	expiry := prev.ProviderExpiresAt()
	if expiry.IsZero() {
		expiry = prev.ExpiresAt
	}
	if !b.now().Before(expiry) {
		return // expired at the provider: its answer would say nothing
	}
	log := b.log.With(zap.String("provider", p.Name))
	req, err := p.endpointRequest(p.IntrospectionURL, url.Values{"token_type_hint": {"access_token"}}, true)
	if err != nil {
		log.Warn("introspect the replaced access token to learn whether refreshes revoke it", zap.Error(err))
		return
	}
	in, err := b.oauth.Introspect(ctx, req, prev.AccessToken)
	if err != nil {
		log.Warn("introspect the replaced access token to learn whether refreshes revoke it", zap.Error(err))
		return
	}
	revokes := !in.Active
	val, err := b.signRecord(b.learnedKey(p.Name), storedLearned{RefreshRevokesAccessToken: revokes, LearnTime: b.now().UTC(), LearnedBy: b.replica})
	if err != nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	pkey := b.prefix + providersPrefix + p.Name
	resp, err := b.cli.Txn(sctx).If(clientv3.Compare(clientv3.ModRevision(pkey), "=", p.Revision)).
		Then(clientv3.OpPut(b.learnedKey(p.Name), string(val))).Commit()
	switch {
	case err != nil:
		log.Warn("store whether refreshes revoke access tokens", zap.Error(storeError(ctx, "write learned provider record", err)))
	case resp.Succeeded:
		log.Info("learned whether refreshes revoke access tokens", zap.Bool("refresh_revokes_access_token", revokes))
	}
}
