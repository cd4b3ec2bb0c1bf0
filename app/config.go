package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/broker/seal/pkcs11"
	"github.com/tokenbroker/tokenbroker/broker/workload"
	"github.com/tokenbroker/tokenbroker/server"
)

// Config is the broker's configuration file. Unknown fields are errors.
type Config struct {
	// GRPCAddr and HTTPAddr are the listen addresses.
	GRPCAddr string `yaml:"grpc_addr"`
	HTTPAddr string `yaml:"http_addr"`
	// MetricsAddr serves /metrics and /openapi.json, without credentials:
	// a loopback address by default, one only the scraper reaches in a
	// cluster; "" serves neither.
	MetricsAddr string `yaml:"metrics_addr"`
	// PublicURL is the REST listener's URL as browsers and providers reach
	// it (e.g. https://tokenbroker.example.com); the consent callback is
	// PublicURL + /v1/oauth/callback. Derived from the bound address when
	// empty.
	PublicURL string `yaml:"public_url"`
	// DataDir holds the embedded etcd's data; unused with etcd.endpoints.
	DataDir string     `yaml:"data_dir"`
	Etcd    EtcdConfig `yaml:"etcd"`
	Log     LogConfig  `yaml:"log"`
	// DefaultMinTTL applies to GetToken calls that name no min_ttl.
	DefaultMinTTL time.Duration `yaml:"default_min_ttl"`
	// MinForcedRefreshInterval coalesces forced refreshes (Refresh without
	// stale_access_token) across the fleet: at most one provider call per
	// token key in this interval; 0 turns coalescing off.
	MinForcedRefreshInterval time.Duration `yaml:"min_forced_refresh_interval"`
	// Refresher tunes the locks and the leader-elected refresh shards.
	Refresher RefresherConfig `yaml:"refresher"`
	// ShutdownTimeout bounds the drain of in-flight calls.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Providers are registered (created or updated) at start.
	Providers []ProviderConfig `yaml:"providers"`
	// Events bounds the events kept and tunes webhook delivery.
	Events EventsConfig `yaml:"events"`
	// Webhooks are subscriptions registered (created or updated) at start
	// and on SIGHUP.
	Webhooks []WebhookConfig `yaml:"webhooks"`
	// Auth says who may call and what they may do; SIGHUP reloads it.
	Auth AuthConfig `yaml:"auth"`
	// TLS serves both listeners over TLS, with client certificates when it
	// names a client CA.
	TLS TLSConfig `yaml:"tls"`
	// Seal names the master key file; $TOKENBROKER_MASTER_KEY is the
	// alternative.
	Seal SealConfig `yaml:"seal"`
	// Tracing exports OpenTelemetry spans of calls and provider requests;
	// off by default.
	Tracing TracingConfig `yaml:"tracing"`

	// The fields below are set by the program, never by the file.

	// InsecureHTTPLoopback lets providers use plain http on loopback
	// addresses (--insecure-http-loopback; tokenbroker dev).
	InsecureHTTPLoopback bool `yaml:"-"`

	// Getenv resolves client_secret_env at start; os.Getenv when nil.
	Getenv func(string) string `yaml:"-"`
	// InsecureNoAuth and InsecureGenerateMasterKey are the --insecure-*
	// flags of serve.
	InsecureNoAuth            bool `yaml:"-"`
	InsecureGenerateMasterKey bool `yaml:"-"`
	// Keyring is the master keyring when the caller made one (dev mode);
	// nil resolves it from Seal and the environment at start.
	Keyring *seal.Keyring `yaml:"-"`
	// EtcdDialOptions are added to those of the etcd client (tbbench
	// counts the client's requests with interceptors).
	EtcdDialOptions []grpc.DialOption `yaml:"-"`
	// Deprecations are warnings, one per deprecated field name the file
	// used; set by DecodeConfig.
	Deprecations []string `yaml:"-"`
}

// RefresherConfig tunes failover and the spread of background refreshes.
type RefresherConfig struct {
	// SessionTTL is the lease of a replica's locks and shard leadership: a
	// replica that dies holding them frees them after this long. Whole
	// seconds, at least 2s.
	SessionTTL time.Duration `yaml:"session_ttl"`
	// Shards is the number of refresh shards, each with its own election,
	// so that several replicas share the refreshing.
	Shards int `yaml:"shards"`
}

// Bounds of the refresher section.
const (
	minSessionTTL = 2 * time.Second
	maxShards     = 256
)

func (r RefresherConfig) validate() []error {
	var errs []error
	if r.SessionTTL < minSessionTTL || r.SessionTTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("refresher.session_ttl %s must be whole seconds, at least %s (etcd leases count in seconds)", r.SessionTTL, minSessionTTL))
	}
	if r.Shards < 1 || r.Shards > maxShards {
		errs = append(errs, fmt.Errorf("refresher.shards %d must be between 1 and %d", r.Shards, maxShards))
	}
	return errs
}

// AuthConfig configures caller authentication and authorization.
type AuthConfig struct {
	// APIKeys are static keys, declared by id and the SHA-256 of their
	// secret part (`tokenbroker apikeys create --offline` prints both), so that the first
	// admin can get in; AdminService.CreateApiKey issues the others.
	APIKeys []APIKeyConfig `yaml:"api_keys"`
	// JWTIssuers are trusted issuers of workload tokens (Kubernetes
	// service-account tokens, SPIFFE JWT-SVIDs, OIDC tokens) that callers
	// may present instead of an API key.
	JWTIssuers []JWTIssuerConfig `yaml:"jwt_issuers"`
	// Policy rules; whatever no rule allows is denied.
	Policy    []PolicyRule    `yaml:"policy"`
	RateLimit RateLimitConfig `yaml:"rate_limit"`
	// UnauthenticatedRateLimit limits failed authentications per remote
	// address (an IPv4 address, an IPv6 /64): beyond it they are answered
	// ResourceExhausted (HTTP 429) with a Retry-After, and logged less.
	UnauthenticatedRateLimit RateLimitConfig `yaml:"unauthenticated_rate_limit"`
}

// JWTIssuerConfig declares a trusted issuer of workload tokens; see
// workload.Issuer for each field. Exactly one of jwks_url, jwks_file and
// discovery says where its keys are.
type JWTIssuerConfig struct {
	Issuer         string        `yaml:"issuer"`
	JWKSURL        string        `yaml:"jwks_url"`
	JWKSFile       string        `yaml:"jwks_file"`
	Discovery      bool          `yaml:"discovery"`
	CAFile         string        `yaml:"ca_file"`
	Audiences      []string      `yaml:"audiences"`
	Algorithms     []string      `yaml:"algorithms"`
	IdentityClaim  string        `yaml:"identity_claim"`
	IdentityPrefix string        `yaml:"identity_prefix"`
	TrustDomain    string        `yaml:"trust_domain"`
	ClockSkew      time.Duration `yaml:"clock_skew"`
	MaxLifetime    time.Duration `yaml:"max_lifetime"`
}

func (j JWTIssuerConfig) issuer() workload.Issuer {
	return workload.Issuer{
		Issuer: j.Issuer, JWKSURL: j.JWKSURL, JWKSFile: j.JWKSFile, Discovery: j.Discovery, CAFile: j.CAFile,
		Audiences: j.Audiences, Algorithms: j.Algorithms, IdentityClaim: j.IdentityClaim,
		IdentityPrefix: j.IdentityPrefix, TrustDomain: j.TrustDomain, ClockSkew: j.ClockSkew, MaxLifetime: j.MaxLifetime,
	}
}

// APIKeyConfig declares a static API key.
type APIKeyConfig struct {
	ID       string `yaml:"id"`
	Identity string `yaml:"identity"`
	SHA256   string `yaml:"sha256"`
}

// PolicyRule allows identities actions (token, introspect, admin) on
// providers' accounts; each entry is an exact name or a pattern with '*'.
// Empty providers or accounts mean all of them.
type PolicyRule struct {
	Identities []string `yaml:"identities"`
	Providers  []string `yaml:"providers"`
	Accounts   []string `yaml:"accounts"`
	Actions    []string `yaml:"actions"`
}

// RateLimitConfig is a token bucket: RPS refills a second, at most Burst.
type RateLimitConfig struct {
	RPS   float64 `yaml:"rps"`
	Burst int     `yaml:"burst"`
}

// maxBurst bounds a rate limit's burst.
const maxBurst = 1_000_000

// validate reports a bucket that is empty, infinite or not a number; name
// is its place in the file.
func (r RateLimitConfig) validate(name string) error {
	if !(r.RPS > 0) || math.IsInf(r.RPS, 0) || r.Burst < 1 || r.Burst > maxBurst {
		return fmt.Errorf("%s: rps must be a number above 0 and burst between 1 and %d", name, maxBurst)
	}
	return nil
}

func (r RateLimitConfig) limit() server.RateLimit {
	return server.RateLimit{RPS: r.RPS, Burst: r.Burst}
}

// TLSConfig names the PEM files of the listeners' TLS.
type TLSConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

func (t TLSConfig) files() server.TLSFiles {
	return server.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile}
}

// SealConfig locates the master key.
type SealConfig struct {
	// KeyFile holds "<id>:<base64 of 32 bytes>" lines, the primary first;
	// with PKCS11, "<id>:<base64 of the key wrapped by the token's KEK>".
	KeyFile string `yaml:"key_file"`
	// PKCS11, when set, keeps the master keys wrapped by a key that never
	// leaves a PKCS#11 token (envelope encryption); binaries built with
	// -tags pkcs11 only.
	PKCS11 *PKCS11Config `yaml:"pkcs11"`
}

// PKCS11Config locates the token and its key-encryption key.
type PKCS11Config struct {
	// Module is the token's PKCS#11 library.
	Module     string `yaml:"module"`
	TokenLabel string `yaml:"token_label"`
	KeyLabel   string `yaml:"key_label"`
	// PINEnv or PINFile holds the user PIN.
	PINEnv  string `yaml:"pin_env"`
	PINFile string `yaml:"pin_file"`
}

func (p *PKCS11Config) validate(getenv func(string) string) []error {
	var errs []error
	for _, f := range []struct{ name, v string }{{"module", p.Module}, {"token_label", p.TokenLabel}, {"key_label", p.KeyLabel}} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("seal.pkcs11.%s is empty", f.name))
		}
	}
	switch {
	case (p.PINEnv == "") == (p.PINFile == ""):
		errs = append(errs, errors.New("seal.pkcs11: set one of pin_env and pin_file"))
	case p.PINEnv != "" && getenv(p.PINEnv) == "":
		errs = append(errs, fmt.Errorf("seal.pkcs11.pin_env: $%s is empty", p.PINEnv))
	}
	return errs
}

// Config checks the section and resolves the PIN.
func (p *PKCS11Config) Config(getenv func(string) string) (pkcs11.Config, error) {
	if errs := p.validate(getenv); len(errs) > 0 {
		return pkcs11.Config{}, errors.Join(errs...)
	}
	cfg := pkcs11.Config{Module: p.Module, TokenLabel: p.TokenLabel, KeyLabel: p.KeyLabel, PIN: getenv(p.PINEnv)}
	if p.PINFile != "" {
		b, err := os.ReadFile(p.PINFile)
		if err != nil {
			return cfg, fmt.Errorf("seal.pkcs11.pin_file: %w", err)
		}
		cfg.PIN = strings.TrimSpace(string(b))
	}
	return cfg, nil
}

// MasterKeyEnv holds the master key(s) when seal.key_file is not set.
const MasterKeyEnv = "TOKENBROKER_MASTER_KEY"

func (c *Config) env() func(string) string {
	if c.Getenv == nil {
		return os.Getenv
	}
	return c.Getenv
}

// EtcdConfig selects the store.
type EtcdConfig struct {
	// Endpoints of an external etcd cluster; empty starts an embedded one in DataDir.
	Endpoints   []string      `yaml:"endpoints"`
	Prefix      string        `yaml:"prefix"`
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds each etcd request: with etcd unreachable, a call
	// that needs it answers Unavailable after this long (a still-valid
	// token is served from memory regardless).
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// TLS secures the connection to an external etcd cluster (https://
	// endpoints): the cluster's CA, and a client certificate when the
	// cluster authenticates clients.
	TLS EtcdTLSConfig `yaml:"tls"`
}

// EtcdTLSConfig names the files of the etcd client's TLS.
type EtcdTLSConfig struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// EtcdClientConfig is the etcd client configuration of cfg for endpoints.
// A TLS misconfiguration (unreadable file, key not matching the
// certificate, no certificate in the CA file) is an error naming the file.
func EtcdClientConfig(cfg EtcdConfig, endpoints []string, log *zap.Logger) (clientv3.Config, error) {
	cc := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: cfg.DialTimeout,
		Logger:      log.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.WarnLevel)),
		Context:     context.Background(),
	}
	t := cfg.TLS
	if t == (EtcdTLSConfig{}) || len(cfg.Endpoints) == 0 { // the embedded member is local
		return cc, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return cc, fmt.Errorf("etcd.tls.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return cc, fmt.Errorf("etcd.tls.ca_file %s holds no PEM certificate", t.CAFile)
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return cc, errors.New("etcd.tls: cert_file and key_file go together")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return cc, fmt.Errorf("etcd.tls: client certificate %s and key %s: %w", t.CertFile, t.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	cc.TLS = tc
	return cc, nil
}

// LogConfig configures the logger.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or console
}

// ProviderConfig declares a provider. The client secret comes from exactly
// one of ClientSecret, ClientSecretEnv and ClientSecretFile, or none: then
// the stored secret is kept.
type ProviderConfig struct {
	Name             string            `yaml:"name"`
	TokenURL         string            `yaml:"token_url"`
	AuthorizeURL     string            `yaml:"authorize_url"`
	IntrospectionURL string            `yaml:"introspection_url"`
	RevocationURL    string            `yaml:"revocation_url"`
	GrantTokenURLs   map[string]string `yaml:"grant_token_urls"`
	ClientID         string            `yaml:"client_id"`
	ClientSecret     string            `yaml:"client_secret"`
	ClientSecretEnv  string            `yaml:"client_secret_env"`
	ClientSecretFile string            `yaml:"client_secret_file"`
	ClientAuthStyle  string            `yaml:"client_auth_style"` // basic (default), post, basic+post, private_key_jwt
	// ClientKeyFile is a private key (PEM or JWK) to sign client assertions
	// with (private_key_jwt); without it the broker generates one of
	// ClientKeyAlgorithm (RS256, ES256 (default) or EdDSA). A changed file
	// replaces the key, the old one served in the JWKS for a day.
	ClientKeyFile      string `yaml:"client_key_file"`
	ClientKeyAlgorithm string `yaml:"client_key_algorithm"`
	// ClientAssertionAudience is the aud of client assertions (the
	// provider's issuer, for providers that want it); the token endpoint
	// when empty.
	ClientAssertionAudience string `yaml:"client_assertion_audience"`
	// JWTBearer is the assertion of the JWT-bearer grant (grant_types:
	// [jwt-bearer]), signed with the client key.
	JWTBearer *JWTBearerConfig `yaml:"jwt_bearer"`
	// ServiceAccountKeyFile is a Google service account key file (JSON),
	// for preset google-service-account: its private key becomes the
	// client key, its client_email the issuer, its token_uri the token
	// endpoint and audience.
	ServiceAccountKeyFile string            `yaml:"service_account_key_file"`
	DefaultScopes         []string          `yaml:"default_scopes"`
	TokenParams           map[string]string `yaml:"token_params"`
	GrantTypes            []string          `yaml:"grant_types"`
	DefaultTokenLifetime  time.Duration     `yaml:"default_token_lifetime"`
	// PKCE sends an S256 code challenge with authorization requests.
	PKCE bool `yaml:"pkce"`
	// RedirectURI is the callback registered at the provider; the broker's
	// public_url + /v1/oauth/callback when empty. The former name
	// redirect_url is read too, with a deprecation warning.
	RedirectURI string `yaml:"redirect_uri"`
	// Preset fills endpoints, client authentication, grants and scopes of a
	// known provider from BaseURL: mediacore, mediahound, mediavalet,
	// mediaflow, mediahaven, oidc or oauth (OpenID Connect discovery or RFC
	// 8414 metadata, each falling back to the other, from the issuer
	// BaseURL, at start). Fields set here win over the preset.
	Preset  string `yaml:"preset"`
	BaseURL string `yaml:"base_url"`
	// Refresh tuning of this provider's tokens (see the broker's defaults).
	RefreshLeadFraction float64       `yaml:"refresh_lead_fraction"`
	RefreshMinLead      time.Duration `yaml:"refresh_min_lead"`
	RefreshIdleAfter    time.Duration `yaml:"refresh_idle_after"`
	KeepAlive           time.Duration `yaml:"keep_alive"`
	// RefreshRevokesAccessToken says whether a refresh revokes the access
	// tokens issued before it; such tokens are served until the broker
	// replaces them, before the provider's expiry. Unset: learned through
	// the introspection endpoint, and assumed true until then (the
	// mediahaven preset sets true).
	RefreshRevokesAccessToken *bool `yaml:"refresh_revokes_access_token"`

	// DeviceAuthorizationURL is the RFC 8628 device authorization
	// endpoint, for the device_code grant (grant_types: [device_code,
	// refresh_token]).
	DeviceAuthorizationURL string `yaml:"device_authorization_url"`
	// ClientCertificateFile (a PEM chain, the leaf first) and
	// ClientCertificateKeyFile (its PEM private key) are presented on the
	// TLS connection with client_auth_style tls_client_auth or
	// self_signed_tls_client_auth (RFC 8705). The key is sealed in etcd.
	ClientCertificateFile    string `yaml:"client_certificate_file"`
	ClientCertificateKeyFile string `yaml:"client_certificate_key_file"`
	// TokenExchange, with grant_types [token_exchange], makes the
	// provider's own identity exchange a subject token (RFC 8693).
	TokenExchange *TokenExchangeConfig `yaml:"token_exchange"`
}

// TokenExchangeConfig is where a provider's subject token comes from
// (subject_provider, through the broker, or subject_token_file, read at
// every exchange) and what the exchange asks for.
type TokenExchangeConfig struct {
	SubjectProvider    string   `yaml:"subject_provider"`
	SubjectAccount     string   `yaml:"subject_account"`
	SubjectScopes      []string `yaml:"subject_scopes"`
	SubjectTokenFile   string   `yaml:"subject_token_file"`
	SubjectTokenType   string   `yaml:"subject_token_type"`
	RequestedTokenType string   `yaml:"requested_token_type"`
	Audience           []string `yaml:"audience"`
	Resource           []string `yaml:"resource"`
}

// JWTBearerConfig is what the assertions of a JWT-bearer grant claim.
type JWTBearerConfig struct {
	Issuer   string `yaml:"issuer"`   // iss; the client_id when empty
	Subject  string `yaml:"subject"`  // sub of the provider's own token; none when empty
	Audience string `yaml:"audience"` // aud; the token endpoint when empty
	// ScopeClaim sends the scopes in a "scope" claim instead of the scope
	// parameter (Google).
	ScopeClaim bool          `yaml:"scope_claim"`
	Lifetime   time.Duration `yaml:"lifetime"` // of each assertion; 1m when zero
}

// DefaultMetricsAddr keeps the metrics on the machine unless the file says
// otherwise.
const DefaultMetricsAddr = "127.0.0.1:9464"

// DefaultConfig is what applies where neither file, environment nor flags
// say otherwise.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:                 ":9090",
		HTTPAddr:                 ":8080",
		MetricsAddr:              DefaultMetricsAddr,
		DataDir:                  "tokenbroker-data",
		Etcd:                     EtcdConfig{Prefix: broker.DefaultPrefix, DialTimeout: 5 * time.Second, RequestTimeout: time.Second},
		Log:                      LogConfig{Level: "info", Format: "json"},
		DefaultMinTTL:            time.Minute,
		MinForcedRefreshInterval: broker.DefaultMinForcedRefreshInterval,
		Refresher:                RefresherConfig{SessionTTL: 10 * time.Second, Shards: 1},
		ShutdownTimeout:          15 * time.Second,
		Auth: AuthConfig{
			RateLimit: RateLimitConfig{RPS: server.DefaultRateLimit.RPS, Burst: server.DefaultRateLimit.Burst},
			UnauthenticatedRateLimit: RateLimitConfig{
				RPS: server.DefaultUnauthenticatedRateLimit.RPS, Burst: server.DefaultUnauthenticatedRateLimit.Burst,
			},
		},
		Tracing: TracingConfig{SampleRatio: 1, ServiceName: "tokenbroker"},
	}
}

// ReadConfig is the default configuration overridden by the file at path
// (none when path is empty) and then by the TOKENBROKER_* environment. An
// error names the file.
func ReadConfig(path string, getenv func(string) string) (Config, error) {
	cfg := DefaultConfig()
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return cfg, err
		}
		err = DecodeConfig(f, &cfg)
		f.Close()
		if err != nil {
			return cfg, fmt.Errorf("%s: %w", path, err)
		}
	}
	applyEnv(&cfg, getenv)
	return cfg, nil
}

// DecodeConfig reads YAML over cfg, strictly: an unknown field (with the
// nearest known name), a value of the wrong kind (with the format
// expected) or a second document is an error, all of them at once as
// Problems. A deprecated field name is read as its new name and noted in
// cfg.Deprecations.
func DecodeConfig(r io.Reader, cfg *Config) error {
	data, err := io.ReadAll(io.LimitReader(r, 4<<20))
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) { // only comments
			return nil
		}
		return Problems{{Message: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Problems{{Line: extra.Line, Message: "more than one YAML document (a line \"---\"): a config file holds one"}}
	}
	return decodeChecked(&doc, cfg)
}

// applyEnv overrides cfg from TOKENBROKER_* variables.
func applyEnv(cfg *Config, getenv func(string) string) {
	set := func(dst *string, name string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set(&cfg.GRPCAddr, "TOKENBROKER_GRPC_ADDR")
	set(&cfg.HTTPAddr, "TOKENBROKER_HTTP_ADDR")
	set(&cfg.MetricsAddr, "TOKENBROKER_METRICS_ADDR")
	set(&cfg.DataDir, "TOKENBROKER_DATA_DIR")
	set(&cfg.Log.Level, "TOKENBROKER_LOG_LEVEL")
	set(&cfg.Log.Format, "TOKENBROKER_LOG_FORMAT")
	set(&cfg.Etcd.Prefix, "TOKENBROKER_ETCD_PREFIX")
	if v := getenv("TOKENBROKER_ETCD_ENDPOINTS"); v != "" {
		cfg.Etcd.Endpoints = SplitList(v)
	}
}

// SplitList is the non-empty, trimmed items of a comma-separated list.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Validate reports every problem of the values at once, as Problems with
// their field paths (and lines, for a configuration read from a file).
// Secrets named by client_secret_env are looked up with getenv. Check
// adds what only the machine can tell.
func (c *Config) Validate(getenv func(string) string) error {
	var errs []error
	if c.GRPCAddr == "" {
		errs = append(errs, errors.New("grpc_addr is empty"))
	}
	if c.HTTPAddr == "" {
		errs = append(errs, errors.New("http_addr is empty"))
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("metrics_addr %q is not host:port (\"\" serves no metrics)", c.MetricsAddr))
		}
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("public_url %q is not an http(s) URL", c.PublicURL))
		}
	}
	if len(c.Etcd.Endpoints) == 0 && c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is empty and no etcd.endpoints are set"))
	}
	if c.Etcd.TLS != (EtcdTLSConfig{}) && len(c.Etcd.Endpoints) == 0 {
		errs = append(errs, errors.New("etcd.tls applies to an external cluster: set etcd.endpoints"))
	}
	if !strings.HasPrefix(c.Etcd.Prefix, "/") {
		errs = append(errs, errors.New("etcd.prefix must start with '/'"))
	}
	if c.DefaultMinTTL < 0 {
		errs = append(errs, errors.New("default_min_ttl must not be negative"))
	}
	if c.MinForcedRefreshInterval < 0 {
		errs = append(errs, errors.New("min_forced_refresh_interval must not be negative (0 turns coalescing off)"))
	}
	if c.Etcd.RequestTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("etcd.request_timeout %s is shorter than 100ms", c.Etcd.RequestTimeout))
	}
	errs = append(errs, c.Refresher.validate()...)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q is not one of debug, info, warn, error", c.Log.Level))
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format %q is not json or console", c.Log.Format))
	}
	errs = append(errs, c.Auth.validate(c.InsecureHTTPLoopback)...)
	errs = append(errs, c.Tracing.validate()...)
	switch t := c.TLS; {
	case t.CertFile == "" && t.KeyFile == "" && t.ClientCAFile != "":
		errs = append(errs, errors.New("tls.client_ca_file needs tls.cert_file and tls.key_file"))
	case (t.CertFile == "") != (t.KeyFile == ""):
		errs = append(errs, errors.New("tls.cert_file and tls.key_file go together"))
	}
	if c.Seal.KeyFile != "" && getenv(MasterKeyEnv) != "" {
		errs = append(errs, fmt.Errorf("seal.key_file and $%s are both set; set one", MasterKeyEnv))
	}
	if c.Seal.PKCS11 != nil {
		errs = append(errs, c.Seal.PKCS11.validate(getenv)...)
	}
	errs = append(errs, c.Events.validate()...)
	errs = append(errs, c.validateWebhooks(getenv)...)
	seen := map[string]bool{}
	for i, pc := range c.Providers {
		if seen[pc.Name] {
			errs = append(errs, fmt.Errorf("providers[%d]: %q is declared twice", i, pc.Name))
		}
		seen[pc.Name] = true
		if _, _, err := pc.provider(getenv); err != nil {
			errs = append(errs, c.under(fmt.Sprintf("providers[%d]", i), err)...)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return c.problems(errors.Join(errs...))
}

// ValidateForReseal checks what `keys reseal` needs of the configuration:
// a store and a master key. The rest (listeners, auth, providers and their
// secrets) is for serve.
func (c *Config) ValidateForReseal() error {
	var errs []error
	if len(c.Etcd.Endpoints) == 0 && c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is empty and no etcd.endpoints are set"))
	}
	if !strings.HasPrefix(c.Etcd.Prefix, "/") {
		errs = append(errs, errors.New("etcd.prefix must start with '/'"))
	}
	switch {
	case c.Seal.KeyFile != "" && c.env()(MasterKeyEnv) != "":
		errs = append(errs, fmt.Errorf("seal.key_file and $%s are both set; set one", MasterKeyEnv))
	case c.Seal.KeyFile == "" && c.env()(MasterKeyEnv) == "":
		errs = append(errs, fmt.Errorf("no master key: set seal.key_file (or $%s) to the new key first, then the old keys", MasterKeyEnv))
	}
	return errors.Join(errs...)
}

// provider converts the declaration, reading the secret from where it says.
func (pc ProviderConfig) provider(getenv func(string) string) (broker.Provider, string, error) {
	var errs []error
	var auth oauth.AuthStyle // the preset's, else basic
	if pc.ClientAuthStyle != "" {
		a, err := oauth.ParseAuthStyle(pc.ClientAuthStyle)
		if err != nil {
			// Reported here; Validate below checks the rest with the default.
			errs = append(errs, fmt.Errorf("client_auth_style %q is not basic, post, basic+post, private_key_jwt, none, tls_client_auth or self_signed_tls_client_auth", pc.ClientAuthStyle))
		} else {
			auth = a
		}
	}
	secret, err := pc.secret(getenv)
	if err != nil {
		errs = append(errs, err)
	}
	p := broker.Provider{
		Name: pc.Name, TokenURL: pc.TokenURL, AuthorizeURL: pc.AuthorizeURL,
		IntrospectionURL: pc.IntrospectionURL, RevocationURL: pc.RevocationURL,
		ClientID: pc.ClientID, ClientAuth: auth, DefaultScopes: pc.DefaultScopes,
		TokenParams: pc.TokenParams, DefaultTokenLifetime: pc.DefaultTokenLifetime,
	}
	if len(pc.GrantTokenURLs) > 0 {
		p.GrantTokenURLs = map[broker.GrantType]string{}
		for g, u := range pc.GrantTokenURLs {
			p.GrantTokenURLs[broker.GrantType(g)] = u
		}
	}
	for _, g := range pc.GrantTypes {
		switch g { // short for the URNs
		case "jwt-bearer", "jwt_bearer":
			g = string(broker.GrantJWTBearer)
		case "device_code":
			g = string(broker.GrantDeviceCode)
		case "token_exchange":
			g = string(broker.GrantTokenExchange)
		}
		p.GrantTypes = append(p.GrantTypes, broker.GrantType(g))
	}
	if j := pc.JWTBearer; j != nil {
		p.JWTBearer = broker.JWTBearer{Issuer: j.Issuer, Subject: j.Subject, Audience: j.Audience, ScopeClaim: j.ScopeClaim, Lifetime: j.Lifetime}
	}
	p.PKCE, p.RedirectURL = pc.PKCE, pc.RedirectURI
	p.DeviceAuthorizationURL = pc.DeviceAuthorizationURL
	if pc.TokenExchange != nil {
		x := broker.TokenExchange(*pc.TokenExchange)
		p.TokenExchange = &x
	}
	for _, f := range []struct {
		name, path string
		dst        *string
	}{
		{"client_certificate_file", pc.ClientCertificateFile, &p.ClientCertificate},
		{"client_certificate_key_file", pc.ClientCertificateKeyFile, &p.ClientCertificateKey},
	} {
		if f.path == "" {
			continue
		}
		data, err := os.ReadFile(f.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: cannot read %s", f.name, f.path))
			continue
		}
		*f.dst = string(data)
	}
	p.ClientKeyAlgorithm, p.AssertionAudience = pc.ClientKeyAlgorithm, pc.ClientAssertionAudience
	if pc.ClientKeyFile != "" {
		data, err := os.ReadFile(pc.ClientKeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("client_key_file: cannot read %s", pc.ClientKeyFile))
		} else if k, err := broker.ParseClientKey(data, pc.ClientKeyAlgorithm); err != nil {
			errs = append(errs, fmt.Errorf("client_key_file %s: %w", pc.ClientKeyFile, err))
		} else {
			p.ClientKeys = []broker.ClientKey{k}
		}
	}
	if pc.ServiceAccountKeyFile != "" {
		data, err := os.ReadFile(pc.ServiceAccountKeyFile)
		switch {
		case pc.ClientKeyFile != "":
			errs = append(errs, errors.New("set client_key_file or service_account_key_file, not both"))
		case err != nil:
			errs = append(errs, fmt.Errorf("service_account_key_file: cannot read %s", pc.ServiceAccountKeyFile))
		default:
			if err := broker.ApplyServiceAccountKey(&p, data); err != nil {
				errs = append(errs, fmt.Errorf("service_account_key_file %s: %w", pc.ServiceAccountKeyFile, err))
			}
		}
	}
	p.RefreshLeadFraction, p.RefreshMinLead, p.RefreshIdleAfter, p.KeepAlive = pc.RefreshLeadFraction, pc.RefreshMinLead, pc.RefreshIdleAfter, pc.KeepAlive
	p.RefreshRevokesAccessToken = pc.RefreshRevokesAccessToken
	switch pc.Preset {
	case "":
	case "oidc", "oauth":
		// Discovery runs at start; the endpoints are checked then.
		if pc.BaseURL == "" {
			errs = append(errs, fmt.Errorf("preset %s needs base_url (the issuer)", pc.Preset))
		}
		return p, secret, errors.Join(errs...)
	default:
		if err := broker.ApplyStaticPreset(&p, pc.Preset, pc.BaseURL); err != nil {
			errs = append(errs, err)
		}
	}
	p.FillDefaults()
	if err := p.Validate(); err != nil {
		errs = append(errs, err)
	}
	return p, secret, errors.Join(errs...)
}

func (pc ProviderConfig) secret(getenv func(string) string) (string, error) {
	n := 0
	for _, s := range []string{pc.ClientSecret, pc.ClientSecretEnv, pc.ClientSecretFile} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		return "", errors.New("set only one of client_secret, client_secret_env and client_secret_file")
	case pc.ClientSecretEnv != "":
		v := getenv(pc.ClientSecretEnv)
		if v == "" {
			return "", fmt.Errorf("client_secret_env: $%s is empty", pc.ClientSecretEnv)
		}
		return v, nil
	case pc.ClientSecretFile != "":
		b, err := os.ReadFile(pc.ClientSecretFile)
		if err != nil {
			return "", fmt.Errorf("client_secret_file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return pc.ClientSecret, nil
}

// validate reports every problem of the auth section. Plain http JWKS URLs
// are allowed to loopback addresses with allowHTTPLoopback only.
func (a AuthConfig) validate(allowHTTPLoopback bool) []error {
	var errs []error
	seen := map[string]bool{}
	for i, j := range a.JWTIssuers {
		path := fmt.Sprintf("auth.jwt_issuers[%d]", i)
		if seen[j.Issuer] {
			errs = append(errs, fmt.Errorf("%s: issuer %q is declared twice", path, j.Issuer))
		}
		seen[j.Issuer] = true
		err := j.issuer().Validate(allowHTTPLoopback)
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				errs = append(errs, fmt.Errorf("%s: %w", path, e))
			}
		}
	}
	if err := apikey.ValidateStatic(a.staticKeys()); err != nil {
		errs = append(errs, fmt.Errorf("auth.api_keys: %w", err))
	}
	if _, err := a.policy(); err != nil {
		errs = append(errs, fmt.Errorf("auth.policy: %w", err))
	}
	for _, err := range []error{a.RateLimit.validate("auth.rate_limit"), a.UnauthenticatedRateLimit.validate("auth.unauthenticated_rate_limit")} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func (a AuthConfig) staticKeys() []apikey.StaticKey {
	out := make([]apikey.StaticKey, len(a.APIKeys))
	for i, k := range a.APIKeys {
		out[i] = apikey.StaticKey{ID: k.ID, Identity: k.Identity, SHA256: strings.ToLower(k.SHA256)}
	}
	return out
}

func (a AuthConfig) policy() (*policy.Policy, error) {
	rules := make([]policy.Rule, len(a.Policy))
	for i, r := range a.Policy {
		rules[i] = policy.Rule{Identities: r.Identities, Providers: r.Providers, Accounts: r.Accounts}
		for _, act := range r.Actions {
			rules[i].Actions = append(rules[i].Actions, policy.Action(act))
		}
	}
	return policy.New(rules)
}

// verifier builds the verifier of the declared JWT issuers; nil when none
// is declared.
func (a AuthConfig) verifier(allowHTTPLoopback bool, log *zap.Logger) (*workload.Verifier, error) {
	if len(a.JWTIssuers) == 0 {
		return nil, nil
	}
	issuers := make([]workload.Issuer, len(a.JWTIssuers))
	for i, j := range a.JWTIssuers {
		issuers[i] = j.issuer()
	}
	v, err := workload.New(issuers, workload.Options{AllowHTTPLoopback: allowHTTPLoopback, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("auth.jwt_issuers: %w", err)
	}
	return v, nil
}

// errNoMasterKey is what serve says when no master key is configured.
var errNoMasterKey = fmt.Errorf("no master key: set seal.key_file to a file of \"<id>:<base64 of 32 random bytes>\" lines "+
	"(the first is primary; for example echo \"k1:$(head -c 32 /dev/urandom | base64)\" > master.key), or put the same in $%s; "+
	"or pass --insecure-generate-master-key for a throwaway key that leaves every stored secret unreadable after a restart", MasterKeyEnv)

// MasterKeyring returns the master keyring: the one the caller set, the
// key file's, the environment's, or with InsecureGenerateMasterKey a
// generated one. It fails with errNoMasterKey when there is none.
func (c *Config) MasterKeyring(log *zap.Logger) (*seal.Keyring, error) {
	switch {
	case c.Keyring != nil:
		return c.Keyring, nil
	case c.Seal.PKCS11 != nil:
		return c.unwrapMasterKeys()
	case c.Seal.KeyFile != "":
		return seal.LoadKeyFile(c.Seal.KeyFile)
	case c.env()(MasterKeyEnv) != "":
		kr, err := seal.ParseKeyEnv(c.env()(MasterKeyEnv))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", MasterKeyEnv, err)
		}
		return kr, nil
	case c.InsecureGenerateMasterKey:
		k, err := seal.GenerateKey("ephemeral")
		if err != nil {
			return nil, err
		}
		defer clear(k.Secret)
		log.Warn("INSECURE: using a generated, ephemeral master key (--insecure-generate-master-key): " +
			"secrets and tokens stored now cannot be opened after a restart; do not use this in production")
		return seal.NewKeyring(k)
	}
	return nil, errNoMasterKey
}

// unwrapMasterKeys opens the token, unwraps the master keys of the key file
// (or $TOKENBROKER_MASTER_KEY) with its KEK, and closes it again: the
// keyring keeps only the ciphers derived from the keys.
func (c *Config) unwrapMasterKeys() (*seal.Keyring, error) {
	pc, err := c.Seal.PKCS11.Config(c.env())
	if err != nil {
		return nil, err
	}
	h, err := pkcs11.Open(pc)
	if err != nil {
		return nil, fmt.Errorf("seal.pkcs11: %w", err)
	}
	defer h.Close()
	if c.Seal.KeyFile != "" {
		return seal.LoadWrappedKeyFile(c.Seal.KeyFile, h)
	}
	if v := c.env()(MasterKeyEnv); v != "" {
		return seal.ParseWrappedKeyEnv(v, h)
	}
	return nil, errNoMasterKey
}
