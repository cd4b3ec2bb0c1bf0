package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/workload"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// AnonymousIdentity is the identity of callers without credentials on a
// server run with AuthConfig.InsecureNoAuth.
const AnonymousIdentity = "anonymous"

// AuthConfig says how callers authenticate and what they may do.
type AuthConfig struct {
	// Keys checks API keys sent as "authorization: Bearer <key>"; nil
	// accepts none. The Server does not close it.
	Keys *apikey.Store
	// Workload verifies JWTs sent as "authorization: Bearer <jwt>"
	// (Kubernetes service-account tokens, SPIFFE JWT-SVIDs, OIDC tokens);
	// nil accepts none. SetWorkloadVerifier replaces it.
	Workload *workload.Verifier
	// Policy says who may do what; nil allows nothing. SetPolicy replaces it.
	Policy *policy.Policy
	// RateLimit applies per caller identity; DefaultRateLimit when zero.
	RateLimit RateLimit
	// UnauthenticatedRateLimit applies to failed authentications per
	// remote address (IPv4 address, IPv6 /64): beyond it they are answered
	// ResourceExhausted instead of Unauthenticated, and logged less.
	// Credentials are still checked, so valid callers behind the same
	// address are not locked out. DefaultUnauthenticatedRateLimit when
	// zero.
	UnauthenticatedRateLimit RateLimit
	// InsecureNoAuth lets callers without credentials in as
	// AnonymousIdentity and allows every caller every action. Credentials
	// that are presented are still checked.
	InsecureNoAuth bool
}

// How a caller authenticated (Caller.Via).
const (
	ViaAPIKey = "api_key"
	ViaMTLS   = "mtls"
	ViaJWT    = "jwt"
	ViaNone   = "none" // InsecureNoAuth, no credentials
)

// Caller is an authenticated caller.
type Caller struct {
	// Identity is the API key's identity, the client certificate's first URI
	// SAN or its subject CN, the JWT issuer's identity prefix and claim, or
	// AnonymousIdentity.
	Identity string
	// Via is ViaAPIKey, ViaMTLS, ViaJWT or ViaNone.
	Via string
	// KeyID is the public id of the API key, when Via is ViaAPIKey.
	KeyID string
	// Issuer is the JWT's issuer, when Via is ViaJWT.
	Issuer string
}

// callState travels in the context of one call: the logging interceptor
// creates it, authentication fills it in, the handlers and the log line
// read it.
type callState struct {
	caller        Caller
	authenticated bool
	policy        *policy.Policy
	peer          peerName
}

type callStateKey struct{}

// callContext carries a call's state: one allocation where
// context.WithValue and the state would take two.
type callContext struct {
	context.Context
	st callState
}

func (c *callContext) Value(key any) any {
	if key == (callStateKey{}) {
		return &c.st
	}
	return c.Context.Value(key)
}

// withCallState returns ctx with a callState, reusing the one it has.
func withCallState(ctx context.Context) (context.Context, *callState) {
	if st, ok := ctx.Value(callStateKey{}).(*callState); ok {
		return ctx, st
	}
	c := &callContext{Context: ctx}
	return c, &c.st
}

// peerName is the caller's address, formatted only when a log line
// names it.
type peerName struct {
	addr net.Addr
	s    string
}

func (p peerName) String() string {
	if p.addr != nil {
		return p.addr.String()
	}
	return p.s
}

// CallerFrom returns the authenticated caller of the call ctx belongs to.
func CallerFrom(ctx context.Context) (Caller, bool) {
	st, ok := ctx.Value(callStateKey{}).(*callState)
	if !ok || !st.authenticated {
		return Caller{}, false
	}
	return st.caller, true
}

// callerMay reports whether the caller of ctx may perform action on
// provider's account, under the policy that authorized the call. Without
// an authenticated caller it is false.
func callerMay(ctx context.Context, action policy.Action, provider, account string) bool {
	st, ok := ctx.Value(callStateKey{}).(*callState)
	if !ok || !st.authenticated {
		return false
	}
	return st.policy.Allow(st.caller.Identity, action, provider, account)
}

// restRequest is what the REST gateway knows of a caller, captured from the
// HTTP request before the gateway turns headers into gRPC metadata. Its
// context key type is unexported: nothing a caller sends can forge it.
type restRequest struct {
	authorization []string
	cert          *x509.Certificate // verified client certificate
	remoteAddr    string
}

type restRequestKey struct{}

// withRESTCredentials records the REST caller's Authorization header and
// verified client certificate in the request context. The interceptors use
// that and never the gRPC metadata of a REST call, which a caller shapes
// with headers such as Grpc-Metadata-Authorization.
func withRESTCredentials(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(withRESTRequest(r)))
	})
}

// withRESTRequest returns r's context carrying what r's caller presented.
func withRESTRequest(r *http.Request) context.Context {
	rr := &restRequest{authorization: r.Header.Values("Authorization"), remoteAddr: r.RemoteAddr, cert: verifiedLeaf(r.TLS)}
	return context.WithValue(r.Context(), restRequestKey{}, rr)
}

// asRESTCall marks ctx as a REST call with no credentials unless
// withRESTCredentials marked it already: a gateway call never falls back to
// gRPC metadata.
func asRESTCall(ctx context.Context) context.Context {
	if _, ok := ctx.Value(restRequestKey{}).(*restRequest); ok {
		return ctx
	}
	return context.WithValue(ctx, restRequestKey{}, &restRequest{})
}

func verifiedLeaf(cs *tls.ConnectionState) *x509.Certificate {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	return cs.VerifiedChains[0][0]
}

// presented is what a caller presented.
type presented struct {
	authorization []string
	cert          *x509.Certificate
	peer          peerName
}

func credentialsOf(ctx context.Context) presented {
	if rr, ok := ctx.Value(restRequestKey{}).(*restRequest); ok {
		return presented{authorization: rr.authorization, cert: rr.cert, peer: peerName{s: rr.remoteAddr}}
	}
	// Only the one value: FromIncomingContext would copy all metadata.
	p := presented{authorization: metadata.ValueFromIncomingContext(ctx, "authorization")}
	if pr, ok := peer.FromContext(ctx); ok {
		p.peer.addr = pr.Addr
		if info, ok := pr.AuthInfo.(credentials.TLSInfo); ok {
			p.cert = verifiedLeaf(&info.State)
		}
	}
	return p
}

// certIdentity is a client certificate's first URI SAN (a SPIFFE ID, say)
// or else its subject CN.
func certIdentity(c *x509.Certificate) string {
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	return c.Subject.CommonName
}

// bearer extracts the token of "Bearer <token>"; the scheme is case
// insensitive.
func bearer(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// requirement is what a method asks of its caller.
type requirement struct {
	action policy.Action
	scope  scope
}

type scope int

const (
	// scopeAuthenticated: any authenticated caller (reflection).
	scopeAuthenticated scope = iota
	// scopeRequest: the action on the request's provider and account.
	scopeRequest
	// scopeSome: the action on at least one provider (Introspect, whose
	// handler narrows the answer to what the caller may see).
	scopeSome
	// scopeGlobal: the action, regardless of provider (admin).
	scopeGlobal
)

// requirements maps every method the server serves to what it requires; a
// method missing here is denied. Every AdminService method requires admin,
// including ones added later.
var requirements = func() map[string]requirement {
	m := map[string]requirement{
		tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName:   {policy.Token, scopeRequest},
		tokenbrokerv1.TokenBrokerService_Refresh_FullMethodName:    {policy.Token, scopeRequest},
		tokenbrokerv1.TokenBrokerService_Introspect_FullMethodName: {policy.Introspect, scopeSome},
	}
	for _, md := range tokenbrokerv1.AdminService_ServiceDesc.Methods {
		m["/"+tokenbrokerv1.AdminService_ServiceDesc.ServiceName+"/"+md.MethodName] = requirement{policy.Admin, scopeGlobal}
	}
	for _, sd := range tokenbrokerv1.AdminService_ServiceDesc.Streams {
		m["/"+tokenbrokerv1.AdminService_ServiceDesc.ServiceName+"/"+sd.StreamName] = requirement{policy.Admin, scopeGlobal}
	}
	return m
}()

const (
	healthPrefix     = "/grpc.health.v1.Health/"
	reflectionPrefix = "/grpc.reflection."
)

func requirementOf(method string) (requirement, bool) {
	if strings.HasPrefix(method, reflectionPrefix) {
		return requirement{scope: scopeAuthenticated}, true
	}
	r, ok := requirements[method]
	return r, ok
}

// scoped is a request that names a provider and an account.
type scoped interface {
	GetProvider() string
	GetAccount() string
}

// AuthStats counts refused calls since the server started.
type AuthStats struct {
	Unauthenticated  uint64
	PermissionDenied uint64
	RateLimited      uint64
	// UnauthenticatedRateLimited counts failed authentications answered
	// ResourceExhausted (see AuthConfig.UnauthenticatedRateLimit).
	UnauthenticatedRateLimited uint64
}

// guard authenticates, rate-limits, authorizes and audits calls.
type guard struct {
	keys     *apikey.Store
	workload atomic.Pointer[workload.Verifier]
	insecure bool
	policy   atomic.Pointer[policy.Policy]
	limiter  atomic.Pointer[rateLimiter]
	failures atomic.Pointer[failureLimiter]
	log      *zap.Logger
	audit    *zap.Logger

	failureLog *failureLog

	unauthenticated        atomic.Uint64
	permissionDenied       atomic.Uint64
	rateLimited            atomic.Uint64
	unauthenticatedLimited atomic.Uint64
}

func newGuard(cfg AuthConfig, log, audit *zap.Logger) *guard {
	g := &guard{keys: cfg.Keys, insecure: cfg.InsecureNoAuth, log: log.Named("auth"), audit: audit, failureLog: newFailureLog()}
	g.setPolicy(cfg.Policy)
	g.workload.Store(cfg.Workload)
	g.limiter.Store(newRateLimiter(cfg.RateLimit, nil))
	g.failures.Store(newFailureLimiter(cfg.UnauthenticatedRateLimit, nil))
	return g
}

func (g *guard) setPolicy(p *policy.Policy) {
	if g.insecure {
		p = policy.AllowAll()
	}
	g.policy.Store(p)
}

func (g *guard) stats() AuthStats {
	return AuthStats{
		Unauthenticated:  g.unauthenticated.Load(),
		PermissionDenied: g.permissionDenied.Load(),
		RateLimited:      g.rateLimited.Load(),

		UnauthenticatedRateLimited: g.unauthenticatedLimited.Load(),
	}
}

var (
	errUnauthenticated = status.Error(codes.Unauthenticated, "missing or invalid credentials")
	// errIssuerKeysUnavailable: a JWT's issuer keys cannot be fetched now.
	errIssuerKeysUnavailable = status.Error(codes.Unavailable, "cannot verify the token now: its issuer's keys are unavailable")
)

// authenticate finds out who the caller is. An Authorization value wins
// over a client certificate and must be a valid API key or JWT. The
// reason it returns on failure is for the log; the caller sees
// errUnauthenticated, or errIssuerKeysUnavailable.
func (g *guard) authenticate(ctx context.Context, p presented) (Caller, string, error) {
	switch {
	case len(p.authorization) > 1:
		return Caller{}, "more than one authorization value", errUnauthenticated
	case len(p.authorization) == 1:
		key, ok := bearer(p.authorization[0])
		if !ok {
			return Caller{}, "authorization is not a bearer token", errUnauthenticated
		}
		if workload.LooksLikeJWT(key) {
			return g.authenticateJWT(ctx, key)
		}
		if g.keys == nil {
			return Caller{}, "api keys are not enabled", errUnauthenticated
		}
		identity, err := g.keys.Authenticate(key)
		if err != nil {
			return Caller{}, "invalid, unknown or retired api key", errUnauthenticated
		}
		id, _ := apikey.ParseID(key)
		return Caller{Identity: identity, Via: ViaAPIKey, KeyID: id}, "", nil
	case p.cert != nil:
		identity := certIdentity(p.cert)
		if apikey.ValidateIdentity(identity) != nil {
			return Caller{}, "client certificate has no usable URI SAN or CN", errUnauthenticated
		}
		return Caller{Identity: identity, Via: ViaMTLS}, "", nil
	case g.insecure:
		return Caller{Identity: AnonymousIdentity, Via: ViaNone}, "", nil
	}
	return Caller{}, "no credentials", errUnauthenticated
}

// authenticateJWT verifies a bearer JWT. The reason never quotes the
// token.
func (g *guard) authenticateJWT(ctx context.Context, token string) (Caller, string, error) {
	v := g.workload.Load()
	if v.Len() == 0 {
		return Caller{}, "jwt issuers are not configured", errUnauthenticated
	}
	id, err := v.Verify(ctx, token)
	switch {
	case errors.Is(err, workload.ErrKeysUnavailable):
		return Caller{}, err.Error(), errIssuerKeysUnavailable
	case ctx.Err() != nil:
		return Caller{}, "jwt verification interrupted", status.FromContextError(ctx.Err()).Err()
	case err != nil:
		return Caller{}, err.Error(), errUnauthenticated
	}
	if apikey.ValidateIdentity(id.Name) != nil {
		return Caller{}, "jwt identity is not usable (empty, too long or not printable)", errUnauthenticated
	}
	return Caller{Identity: id.Name, Via: ViaJWT, Issuer: id.Issuer}, "", nil
}

// admit authenticates the call, records the caller in st, and applies the
// rate limit and the policy. It returns the status error to answer with.
func (g *guard) admit(ctx context.Context, st *callState, method string, req any) error {
	p := credentialsOf(ctx)
	st.peer = p.peer
	caller, reason, err := g.authenticate(ctx, p)
	if err != nil {
		return g.rejectFailure(method, p, reason, err)
	}
	pol := g.policy.Load()
	st.caller, st.authenticated, st.policy = caller, true, pol

	if ok, wait := g.limiter.Load().allow(caller.Identity); !ok {
		g.rateLimited.Add(1)
		g.log.Info("rate limited", zap.String("caller", caller.Identity), zap.String("method", method))
		return retryLater("rate limit exceeded", wait)
	}

	rq, known := requirementOf(method)
	var provider, account string
	allowed := false
	switch {
	case !known:
	case rq.scope == scopeAuthenticated:
		allowed = true
	case rq.scope == scopeGlobal:
		allowed = pol.Allow(caller.Identity, rq.action, "", "")
	case rq.scope == scopeSome:
		allowed = pol.AllowSome(caller.Identity, rq.action)
	case rq.scope == scopeRequest:
		if r, ok := req.(scoped); ok {
			provider, account = r.GetProvider(), r.GetAccount()
			allowed = pol.Allow(caller.Identity, rq.action, provider, account)
		}
	}
	if !allowed {
		g.permissionDenied.Add(1)
		g.log.Info("permission denied",
			zap.String("caller", caller.Identity), zap.String("method", method),
			zap.String("provider", provider), zap.String("account", account), zap.Stringer("peer", p.peer))
		return status.Errorf(codes.PermissionDenied, "permission denied: %s may not call %s", caller.Identity, method)
	}
	return nil
}

// serve admits the call (unless it is a health check), audits it when it
// is an admin change, and runs the handler, turning a panic into Internal.
func (g *guard) serve(ctx context.Context, st *callState, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, log *zap.Logger) (resp any, err error) {
	if !strings.HasPrefix(info.FullMethod, healthPrefix) {
		if audited(info.FullMethod) {
			start := time.Now()
			defer func() { g.auditCall(st, info.FullMethod, req, resp, err, start) }()
		}
		if err := g.admit(ctx, st, info.FullMethod, req); err != nil {
			return nil, err
		}
	}
	return recovering(ctx, req, info, handler, log)
}

// stream is the streaming counterpart of serve (reflection is a stream).
func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, healthPrefix) {
		return handler(srv, ss)
	}
	ctx, st := withCallState(ss.Context())
	if err := g.admit(ctx, st, info.FullMethod, nil); err != nil {
		return err
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

// contextStream is a ServerStream with another context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
