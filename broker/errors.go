package broker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// Sentinel errors of the broker. Errors returned by the broker wrap one of
// these, a context error, or an error of package oauth (a provider's answer).
var (
	// ErrNotFound: the provider (or account) does not exist.
	ErrNotFound = errors.New("broker: not found")
	// ErrInvalidArgument: the request is malformed.
	ErrInvalidArgument = errors.New("broker: invalid argument")
	// ErrStoreUnavailable: etcd could not be reached in time.
	ErrStoreUnavailable = errors.New("broker: store unavailable")
	// ErrLockLost: the lock that fenced a write was lost before the write
	// committed; the write was discarded.
	ErrLockLost = errors.New("broker: lock lost")
	// ErrConflict: a concurrent change won; the caller may retry.
	ErrConflict = errors.New("broker: conflicting change")
	// ErrUntrustedRecord: a record in etcd that must carry a tag made with
	// the master key has none, or one that does not verify: it was written
	// by someone without the master key, or altered. It is never used.
	ErrUntrustedRecord = errors.New("broker: stored record failed authentication")
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// storeError turns an etcd client error into ErrStoreUnavailable, except when
// the caller's own context ended: then its error passes through.
func storeError(ctx context.Context, op string, err error) error {
	storeErrors.Add(1)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	return fmt.Errorf("%w: %s: %v", ErrStoreUnavailable, op, err)
}

// ErrSecretRefused: the provider refused a client secret that the caller
// supplied (RotateClientSecret proves the new secret first). It wraps the
// *ProviderError: the caller's input is wrong, not the broker's
// configuration.
var ErrSecretRefused = errors.New("broker: the provider refused the new client secret")

// ErrProviderTimeout: the provider did not answer within the fetch deadline.
var ErrProviderTimeout = errors.New("broker: provider timed out")

// ProviderError is a failed call to a provider. Err is an error of package
// oauth: an *oauth.Error carrying the provider's OAuth2 error, or one of its
// sentinels. Its text is safe to log and to return to callers.
type ProviderError struct {
	Provider string
	Err      error
}

func (e *ProviderError) Error() string { return "provider " + e.Provider + ": " + e.Err.Error() }

func (e *ProviderError) Unwrap() error { return e.Err }

// storeErrors counts failed etcd calls, for metrics (StoreErrors).
var storeErrors atomic.Int64

// untrustedRecords counts records refused by verifyRecord.
var untrustedRecords atomic.Int64

// UntrustedRecords is the number of etcd records that failed
// authentication, read by any broker in this process.
func UntrustedRecords() int64 { return untrustedRecords.Load() }

// StoreErrors is the number of failed etcd calls of every broker in this
// process.
func StoreErrors() int64 { return storeErrors.Load() }
