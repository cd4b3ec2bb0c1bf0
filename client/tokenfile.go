package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// MaxTokenFileBytes bounds what TokenFile reads.
const MaxTokenFileBytes = 16 << 10

// DefaultTokenFileReread is how often a TokenFile reads its file again when
// it sees no change.
const DefaultTokenFileReread = time.Minute

// TokenFile is gRPC per-RPC credentials that send the token in a file as
// "authorization: Bearer <token>": a Kubernetes projected service-account
// token, a SPIFFE JWT-SVID written by an agent, any JWT the broker's
// auth.jwt_issuers accept. The file is read again when its modification
// time or size changes, as the kubelet's atomic rotation makes them, and at
// least every Reread, so a rotated token is sent without a restart. It
// starts no goroutine. Errors name the file, never its content.
type TokenFile struct {
	// Path of the token file.
	Path string
	// Reread bounds how long a token read is sent without looking at the
	// file again; DefaultTokenFileReread when 0.
	Reread time.Duration
	// AllowPlaintext sends the token over connections without transport
	// security (loopback, tests). Without it gRPC refuses such a
	// connection: a bearer token must not cross a network in the clear.
	AllowPlaintext bool

	mu    sync.Mutex
	token string
	mod   time.Time
	size  int64
	read  time.Time
}

// WithTokenFile dials with TokenFile credentials reading path; the
// connection needs transport security.
func WithTokenFile(path string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(&TokenFile{Path: path})
}

var _ credentials.PerRPCCredentials = (*TokenFile)(nil)

// GetRequestMetadata returns the authorization metadata with the file's
// current token.
func (f *TokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok, err := f.Token()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity is true unless AllowPlaintext.
func (f *TokenFile) RequireTransportSecurity() bool { return !f.AllowPlaintext }

// Token returns the file's token, read again if the file changed or the
// last read is older than Reread. A file that is missing, empty or larger
// than MaxTokenFileBytes is an error; so is one that cannot be read.
func (f *TokenFile) Token() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.Path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	every := f.Reread
	if every <= 0 {
		every = DefaultTokenFileReread
	}
	if f.token != "" && fi.ModTime().Equal(f.mod) && fi.Size() == f.size && time.Since(f.read) < every {
		return f.token, nil
	}
	tok, err := readTokenFile(f.Path)
	if err != nil {
		return "", err
	}
	f.token, f.mod, f.size, f.read = tok, fi.ModTime(), fi.Size(), time.Now()
	return tok, nil
}

func readTokenFile(path string) (string, error) {
	file, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	defer file.Close()
	raw, err := io.ReadAll(io.LimitReader(file, MaxTokenFileBytes+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("token file %s: %w", path, err)
	case len(raw) > MaxTokenFileBytes:
		return "", fmt.Errorf("token file %s is larger than %d bytes", path, MaxTokenFileBytes)
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", errors.New("token file " + path + " is empty")
	}
	return tok, nil
}
