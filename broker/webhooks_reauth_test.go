package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// The trouble an operator must hear of, end to end: replicas that share
// one etcd, each on an etcd client of its own; a provider (the sandbox)
// that revokes a person's consent, so that the next refresh is answered
// invalid_grant; and a webhook receiver that verifies each delivery as
// the Standard Webhooks specification says (see receiver).

// reauthFleet is that setup: an authorization-code account "bob" of
// provider "media", consented, and a subscription to the grant events.
type reauthFleet struct {
	t        *testing.T
	e        *etcdtest.Etcd
	f        *sandboxFront
	cfg      Config
	replicas []*fleetReplica
	r        *receiver
	joined   int
}

const reauthRedirect = "https://broker.example/v1/oauth/callback"

func newReauthFleet(t *testing.T, n int) *reauthFleet {
	t.Helper()
	rf := &reauthFleet{t: t, e: etcdtest.Start(t)}
	rf.f = newSandboxFront(t, sandbox.Config{
		Users:         map[string]string{"bob": "builder"},
		RedirectURIs:  map[string][]string{sandboxClientID: {reauthRedirect}},
		RefreshTokens: true,
	})
	rf.cfg = fleetConfig()
	rf.cfg.CallbackURL = reauthRedirect
	rf.cfg.MinForcedRefreshInterval = -1 // each refresh below reaches the provider
	rf.cfg.Webhooks = WebhookConfig{Schedule: []time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond},
		Poll: 50 * time.Millisecond, Timeout: 5 * time.Second, BreakerThreshold: 1000}
	for range n {
		rf.join()
	}
	b := rf.replicas[0].Broker
	p := sandboxProvider("media", rf.f.TokenURL())
	p.AuthorizeURL = rf.f.URL + sandbox.AuthorizePath
	p.GrantTypes = []GrantType{GrantRefreshToken, GrantAuthorizationCode}
	p.RefreshRevokesAccessToken = ptr(false) // a forced refresh goes to the provider at once
	putProvider(t, b, p, sandboxClientSecret)
	if _, err := b.PutAccount(context.Background(), Account{Provider: "media", Account: "bob", Type: GrantAuthorizationCode}); err != nil {
		t.Fatal(err)
	}
	rf.r = newReceiver(t, "")
	rf.r.secret = putWebhook(t, b, Webhook{ID: "oncall", URL: rf.r.URL, Providers: []string{"media"},
		EventTypes: []event.Type{event.GrantReauthorizationRequired, event.GrantAuthorized, event.GrantRecovered}})
	rf.consent()
	return rf
}

// join starts one more replica.
func (rf *reauthFleet) join() *fleetReplica {
	rf.joined++
	r := newFleetReplica(rf.t, rf.e.Endpoint, fmt.Sprintf("replica-%d", rf.joined), rf.cfg)
	rf.replicas = append(rf.replicas, r)
	return r
}

func (rf *reauthFleet) alive() []*fleetReplica {
	var out []*fleetReplica
	for _, r := range rf.replicas {
		if !r.killed.Load() {
			out = append(out, r)
		}
	}
	return out
}

// consent completes bob's consent at the sandbox through a live replica.
func (rf *reauthFleet) consent() {
	rf.t.Helper()
	consentAtSandbox(rf.t, rf.alive()[0].Broker, rf.f.sb, "media", "bob", "bob")
}

// consentAtSandbox has user consent at sb to account of provider, as in
// a browser, and completes the authorization through b.
func consentAtSandbox(t *testing.T, b *Broker, sb *sandbox.Server, provider, account, user string) {
	t.Helper()
	ctx := context.Background()
	auth, err := b.StartAuthorization(ctx, provider, account, nil)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(auth.URL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	code, err := sb.Authorize(sandboxClientID, q.Get("redirect_uri"), user, q.Get("scope"), q.Get("state"), q.Get("code_challenge"))
	if err != nil {
		t.Fatalf("sandbox Authorize: %v", err)
	}
	if _, err := b.CompleteAuthorization(ctx, Callback{State: auth.State, Code: code}); err != nil {
		t.Fatalf("CompleteAuthorization: %v", err)
	}
}

// revoke has the person withdraw consent at the provider, then every live
// replica but skip asks for a new token at once, several times: each is
// refused, and the grant needs reauthorization. It returns when the
// grant's state changed.
func (rf *reauthFleet) revoke(skip *fleetReplica) {
	t := rf.t
	t.Helper()
	rf.f.sb.RevokeGrant(grantOf(t, rf.alive()[0].Broker, "media", "bob").RefreshToken)
	var wg sync.WaitGroup
	for _, b := range rf.alive() {
		if b == skip {
			continue
		}
		for range 3 {
			wg.Go(func() {
				_, err := b.Refresh(context.Background(), TokenRequest{Provider: "media", Account: "bob"}, "")
				if !errors.Is(err, ErrReauthorizationRequired) {
					t.Errorf("%s: Refresh after the consent was revoked = %v, want ErrReauthorizationRequired", b.name, err)
				}
			})
		}
	}
	wg.Wait()
	if g := grantOf(t, rf.alive()[0].Broker, "media", "bob"); g.Health != HealthReauthorizationRequired {
		t.Fatalf("grant is %s after the refusals, want reauthorization_required", g.Health)
	}
}

// reauthEvents lists the recorded grant.reauthorization_required events.
func (rf *reauthFleet) reauthEvents() []event.Event {
	rf.t.Helper()
	evs, _, err := rf.alive()[0].ListEvents(context.Background(), "", 0, EventFilter{Types: []event.Type{event.GrantReauthorizationRequired}})
	if err != nil {
		rf.t.Fatal(err)
	}
	return evs
}

// deliveriesOf returns how often the receiver got event id.
func (rf *reauthFleet) deliveriesOf(id string) int {
	n := 0
	for _, got := range rf.r.received() {
		if got == id {
			n++
		}
	}
	return n
}

// checkOrder fails the test unless the receiver got the grant's events in
// the order they were recorded, a duplicate only repeating the one before.
func (rf *reauthFleet) checkOrder() {
	rf.t.Helper()
	evs, _, err := rf.alive()[0].ListEvents(context.Background(), "", 0, EventFilter{Provider: "media",
		Types: []event.Type{event.GrantReauthorizationRequired, event.GrantAuthorized, event.GrantRecovered}})
	if err != nil {
		rf.t.Fatal(err)
	}
	var want []string
	for _, e := range evs {
		want = append(want, e.ID)
	}
	got := rf.r.received()
	var order []string
	for _, id := range got {
		if len(order) == 0 || order[len(order)-1] != id {
			order = append(order, id)
		}
	}
	if !slices.Equal(order, want) {
		rf.t.Errorf("receiver got %v, want the grant's events in the order recorded %v", got, want)
	}
}

// latencies are the times from each event's recording to its first
// arrival at the receiver.
func (rf *reauthFleet) latencies(types ...event.Type) []time.Duration {
	rf.r.mu.Lock()
	defer rf.r.mu.Unlock()
	seen := map[string]bool{}
	var out []time.Duration
	for i, e := range rf.r.got {
		if seen[e.ID] || !slices.Contains(types, e.Type) {
			continue
		}
		seen[e.ID] = true
		out = append(out, rf.r.at[i].Sub(e.Time))
	}
	return out
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// A grant driven to reauthorization_required by the provider, while three
// replicas refresh it at once, yields exactly one event of that type, and
// the receiver gets it once, signed; every time the person consents again
// and revokes again, the same. The delivery latency from the state change
// to the receiver is logged.
func TestWebhookReauthorizationRequiredOnce(t *testing.T) {
	rounds := shortOrLong(t, "rounds", 10, 50)
	rf := newReauthFleet(t, 3)
	for round := range rounds {
		if round > 0 {
			rf.consent()
		}
		rf.revoke(nil)
		evs := rf.reauthEvents()
		if len(evs) != round+1 {
			t.Fatalf("round %d: %d grant.reauthorization_required events recorded, want %d: one per revocation", round, len(evs), round+1)
		}
		ev := evs[round]
		if ev.Provider != "media" || ev.Account != "bob" || ev.HealthBefore != string(HealthOK) || ev.HealthAfter != string(HealthReauthorizationRequired) {
			t.Errorf("round %d: event %+v, want media/bob ok→reauthorization_required", round, ev)
		}
		eventually(t, "the receiver gets the event", func() bool { return rf.deliveriesOf(ev.ID) > 0 })
	}
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	for _, ev := range rf.reauthEvents() {
		if n := rf.deliveriesOf(ev.ID); n != 1 {
			t.Errorf("event %s delivered %d times, want once", ev.ID, n)
		}
	}
	rf.checkOrder()
	rf.r.mu.Lock()
	sample, _ := json.Marshal(rf.r.got[len(rf.r.got)-1])
	rf.r.mu.Unlock()
	t.Logf("the last delivery: %s", sample)
	lat := rf.latencies(event.GrantReauthorizationRequired, event.GrantAuthorized)
	t.Logf("delivery latency from state change to receiver over %d events: p50 %v, p99 %v, max %v",
		len(lat), percentile(lat, .5), percentile(lat, .99), percentile(lat, 1))
}

// The leader of shard 0 (the one that delivers) is killed, as a crash
// does, between the state change and the delivery: while its delivery is
// on the way and before the receiver acted on it, or after the receiver
// acted on it and before its answer reached the leader. The next leader
// delivers the event: nothing is lost, a duplicate (only in the second
// case) has the same webhook-id, and the grant's events arrive in order.
// The duplicates are counted and logged.
func TestWebhookReauthorizationLeaderKilled(t *testing.T) {
	rounds := shortOrLong(t, "kills", 4, 12)
	rf := newReauthFleet(t, 3)
	eventually(t, "the first consent's event delivered", func() bool { return len(rf.r.received()) == 1 })
	var sinceKill []time.Duration
	wantDuplicates := 0
	for round := range rounds {
		if round > 0 {
			rf.consent()
			want := 2*round + 1 // the first consent, and each round's reauthorization and consent
			eventually(t, "the consent's event delivered", func() bool { return len(uniq(rf.r.received())) == want })
		}
		leader := waitForLeader(t, rf.alive(), 0)
		actedOn := round%2 == 1
		hold, held := make(chan struct{}), make(chan struct{})
		t.Cleanup(func() {
			select {
			case <-hold:
			default:
				close(hold)
			}
		})
		rf.r.mu.Lock()
		rf.r.hold, rf.r.held, rf.r.processHeld = hold, held, actedOn
		rf.r.mu.Unlock()
		rf.revoke(leader) // the other replicas change the grant
		select {
		case <-held:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: no delivery reached the receiver", round)
		}
		killed := time.Now()
		leader.kill()
		if actedOn {
			close(hold) // the receiver answers a sender that is gone
		} // else the held request ends when the dead leader's does
		ev := rf.reauthEvents()[round]
		want := 1
		if actedOn {
			want, wantDuplicates = 2, wantDuplicates+1
		}
		eventually(t, "the next leader delivers", func() bool { return rf.deliveriesOf(ev.ID) == want })
		sinceKill = append(sinceKill, time.Since(killed))
		rf.join() // the fleet keeps three replicas
		t.Logf("round %d: leader %s killed mid-delivery (receiver acted on it: %v); event at the receiver %d times, the last %v after the kill",
			round, leader.name, actedOn, rf.deliveriesOf(ev.ID), sinceKill[round])
	}
	waitForLeader(t, rf.alive(), 0)
	time.Sleep(500 * time.Millisecond) // room for a late duplicate to show
	evs := rf.reauthEvents()
	if len(evs) != rounds {
		t.Fatalf("%d grant.reauthorization_required events recorded over %d revocations, want one each", len(evs), rounds)
	}
	got := rf.r.received()
	duplicates := len(got) - len(uniq(got))
	if duplicates != wantDuplicates {
		t.Errorf("%d duplicate deliveries, want %d: one per kill after the receiver acted, none otherwise", duplicates, wantDuplicates)
	}
	rf.checkOrder()
	t.Logf("%d leader kills: %d reauthorization events, each recorded once; %d deliveries of %d events, %d duplicates (each with the webhook-id of its original); the next leader delivered within max %v of a kill (session TTL %ds)",
		rounds, len(evs), len(got), len(uniq(got)), duplicates, percentile(sinceKill, 1), rf.cfg.SessionTTL)
}

func uniq(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// Receivers that fail, with replicas sharing the work: one that answers
// 500 for a while gets each of the grant's events once it recovers, in
// the order recorded; one that never recovers ends with every event
// dead-lettered, visible with its attempts and last answer, and delivery
// to it moves on instead of stopping at the first.
func TestWebhookReauthorizationReceiverDown(t *testing.T) {
	rf := newReauthFleet(t, 2)
	eventually(t, "the first consent's event delivered", func() bool { return len(rf.r.received()) == 1 })
	rf.r.mu.Lock()
	base := rf.r.attempts
	rf.r.answer = func(n int) int {
		if n <= base+3 { // three failures, then the schedule's last retry succeeds
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	rf.r.mu.Unlock()
	down := newReceiver(t, "")
	down.answer = func(int) int { return http.StatusServiceUnavailable }
	down.secret = putWebhook(t, rf.replicas[1].Broker, Webhook{ID: "down", URL: down.URL, Providers: []string{"media"}})

	rf.revoke(nil)
	rf.consent()
	rf.revoke(nil)
	evs, _, err := rf.replicas[0].ListEvents(context.Background(), "", 0, EventFilter{Provider: "media"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the events after the receiver recovered", func() bool { return len(uniq(rf.r.received())) == 4 })
	rf.checkOrder()

	var later []string // the events recorded after the subscription "down"
	for _, e := range evs {
		if e.Type == event.GrantReauthorizationRequired || e.Type == event.GrantAuthorized {
			later = append(later, e.ID)
		}
	}
	later = later[1:] // the first consent's came before "down"
	var dead []WebhookDelivery
	eventually(t, "every event dead-lettered for down", func() bool {
		ds, err := rf.replicas[0].ListWebhookDeliveries(context.Background(), "down")
		dead = dead[:0]
		for _, d := range ds {
			if d.Status == DeliveryDead {
				dead = append(dead, d)
			}
		}
		return err == nil && len(dead) >= len(later)
	})
	var ids []string
	for i := len(dead) - 1; i >= 0; i-- { // newest first
		d := dead[i]
		ids = append(ids, d.EventID)
		if d.Attempts != len(rf.cfg.Webhooks.Schedule)+1 || d.LastHTTPStatus != http.StatusServiceUnavailable || d.LastError != "HTTP 503" {
			t.Errorf("dead letter %+v, want %d attempts, the last answered 503", d, len(rf.cfg.Webhooks.Schedule)+1)
		}
	}
	var want []string
	for _, e := range evs[len(evs)-len(dead):] {
		want = append(want, e.ID)
	}
	if !slices.Equal(ids, want) {
		t.Errorf("dead letters for %v, want each event recorded after the subscription, in order: %v", ids, want)
	}
	if len(down.received()) != 0 {
		t.Errorf("the receiver that never recovered got %v", down.received())
	}
}
