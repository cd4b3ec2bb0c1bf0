package workload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
)

// errRefreshLimited: a fetch was due but the issuer's rate limit held it
// back.
var errRefreshLimited = errors.New("key set refresh rate-limited")

// keySet holds one issuer's public keys: fetched on first use, again when
// older than KeySetMaxAge, and again when a token names a key id it does
// not hold, at most as often as the limiter allows.
type keySet struct {
	cfg     Issuer
	algs    []jose.SignatureAlgorithm
	client  *http.Client
	loop    bool // plain http to loopback allowed
	timeout time.Duration
	now     func() time.Time
	limiter *rate.Limiter
	log     *zap.Logger
	flight  singleflight.Group

	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetched time.Time
	jwksURL string // JWKSURL, or what discovery found
}

func newKeySet(cfg Issuer, algs []jose.SignatureAlgorithm, opts Options, log *zap.Logger) (*keySet, error) {
	ks := &keySet{
		cfg: cfg, algs: algs, loop: opts.AllowHTTPLoopback, timeout: opts.FetchTimeout, now: opts.Now, log: log,
		limiter: rate.NewLimiter(rate.Every(opts.MinRefreshInterval), 2),
		jwksURL: cfg.JWKSURL,
	}
	if cfg.JWKSFile != "" {
		return ks, nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", cfg.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	ks.client = &http.Client{
		Transport: tr,
		// A redirect could leave https; the issuer's URLs are configured.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return ks, nil
}

// lookup returns the keys that may have signed a token with key id kid
// (every key when kid is empty). It fetches the set when none is held,
// when it is older than KeySetMaxAge, or when kid is unknown, within the
// rate limit.
func (ks *keySet) lookup(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	keys, fetched := ks.snapshot()
	match := matching(keys, kid)
	stale := ks.now().Sub(fetched) > KeySetMaxAge
	if len(match) > 0 && !stale {
		return match, nil
	}
	fresh, err := ks.refresh(ctx)
	switch {
	case err == nil:
		match = matching(fresh, kid)
	case keys == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("%w: %v", ErrKeysUnavailable, err)
	case keys == nil:
		return nil, err
	}
	if len(match) == 0 {
		if kid == "" {
			return nil, ErrSignature
		}
		return nil, ErrUnknownKey
	}
	return match, nil
}

func (ks *keySet) snapshot() ([]jose.JSONWebKey, time.Time) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.keys, ks.fetched
}

func matching(keys []jose.JSONWebKey, kid string) []jose.JSONWebKey {
	if kid == "" {
		return keys
	}
	var out []jose.JSONWebKey
	for _, k := range keys {
		if k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out
}

// refresh fetches the set once for all callers waiting at the same time,
// within the rate limit; a failed fetch keeps the keys held. The fetch
// runs under its own timeout, not ctx: a caller that gives up does not
// fail it for the others.
func (ks *keySet) refresh(ctx context.Context) ([]jose.JSONWebKey, error) {
	ch := ks.flight.DoChan("", func() (any, error) {
		if !ks.limiter.Allow() {
			return nil, errRefreshLimited
		}
		fctx, cancel := context.WithTimeout(context.Background(), ks.timeout)
		defer cancel()
		keys, err := ks.fetch(fctx)
		if err != nil {
			ks.log.Warn("fetching the issuer's keys failed; keeping the keys held", zap.Error(err))
			return nil, err
		}
		ks.mu.Lock()
		ks.keys, ks.fetched = keys, ks.now()
		ks.mu.Unlock()
		ks.log.Info("issuer keys fetched", zap.Int("keys", len(keys)))
		return keys, nil
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]jose.JSONWebKey), nil
	}
}

// fetch reads and parses the key set from where the issuer says.
func (ks *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	if ks.cfg.JWKSFile != "" {
		raw, err := readFileLimited(ks.cfg.JWKSFile)
		if err != nil {
			return nil, err
		}
		return parseKeySet(raw, ks.algs)
	}
	ks.mu.Lock()
	u := ks.jwksURL
	ks.mu.Unlock()
	if u == "" {
		var err error
		if u, err = ks.discover(ctx); err != nil {
			return nil, err
		}
	}
	raw, err := ks.get(ctx, u)
	if err != nil {
		if ks.cfg.Discovery { // discover again next time
			ks.mu.Lock()
			ks.jwksURL = ""
			ks.mu.Unlock()
		}
		return nil, err
	}
	return parseKeySet(raw, ks.algs)
}

// discover reads the issuer's OpenID configuration for its jwks_uri.
func (ks *keySet) discover(ctx context.Context) (string, error) {
	raw, err := ks.get(ctx, strings.TrimSuffix(ks.cfg.Issuer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return "", err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return "", fmt.Errorf("discovery document: %w", err)
	}
	if doc.Issuer != ks.cfg.Issuer {
		return "", errors.New("discovery document names another issuer")
	}
	if err := checkFetchURL(doc.JWKSURI, ks.loop); err != nil {
		return "", fmt.Errorf("discovery document: jwks_uri: %w", err)
	}
	ks.mu.Lock()
	ks.jwksURL = doc.JWKSURI
	ks.mu.Unlock()
	return doc.JWKSURI, nil
}

// get fetches u, at most MaxKeySetBytes of it.
func (ks *keySet) get(ctx context.Context, u string) ([]byte, error) {
	if err := checkFetchURL(u, ks.loop); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	return readLimited(resp.Body, u)
}

func readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, path)
}

func readLimited(r io.Reader, name string) ([]byte, error) {
	raw, err := io.ReadAll(io.LimitReader(r, MaxKeySetBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(raw) > MaxKeySetBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, MaxKeySetBytes)
	}
	return raw, nil
}

// parseKeySet keeps the usable keys of a JWKS document: public
// asymmetric signing keys whose algorithm, when they name one, is allowed.
// Keys it does not understand are skipped; a set with no usable key is an
// error.
func parseKeySet(raw []byte, algs []jose.SignatureAlgorithm) ([]jose.JSONWebKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("key set is not a JWKS document: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, r := range doc.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(r); err != nil {
			continue
		}
		// IsPublic is false for symmetric and private keys.
		if !k.Valid() || !k.IsPublic() || (k.Use != "" && k.Use != "sig") {
			continue
		}
		if k.Algorithm != "" && !slices.Contains(algs, jose.SignatureAlgorithm(k.Algorithm)) {
			continue
		}
		if keys = append(keys, k); len(keys) == MaxKeys {
			break
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("key set has no usable public signing key")
	}
	return keys, nil
}
