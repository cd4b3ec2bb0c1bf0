package server

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// ErrorDomain is the domain of the ErrorInfo details the broker attaches.
const ErrorDomain = "tokenbroker"

// An ErrorInfo with metadata fault=broker marks a provider's refusal of the
// broker's own credentials or configuration: an admin must act, and REST
// answers it 502 rather than blaming the caller with a 4xx.
const (
	faultKey    = "fault"
	faultBroker = "broker"
)

// statusTable maps the broker's sentinel errors to status codes, first match
// wins. Provider answers (*oauth.Error) are mapped by providerStatus.
var statusTable = []struct {
	err  error
	code codes.Code
}{
	{broker.ErrInvalidArgument, codes.InvalidArgument},
	{broker.ErrNotFound, codes.NotFound},
	{broker.ErrReauthorizationRequired, codes.FailedPrecondition},
	{broker.ErrAuthorizationDenied, codes.PermissionDenied},
	{broker.ErrProviderCoolingDown, codes.Unavailable},
	{broker.ErrStoreUnavailable, codes.Unavailable},
	{broker.ErrProviderTimeout, codes.Unavailable},
	{broker.ErrClosed, codes.Unavailable},
	// A token exchange whose subject token file is missing: it may appear
	// (a projected token being mounted).
	{broker.ErrSubjectToken, codes.Unavailable},
	{broker.ErrLockLost, codes.Aborted},
	{broker.ErrConflict, codes.Aborted},
	// A watcher that fell behind resumes after the last event it got.
	{broker.ErrSlowConsumer, codes.Aborted},
	// A record someone without the master key wrote or altered: the
	// store's fault, not the caller's; the message names the record.
	{broker.ErrUntrustedRecord, codes.Internal},
	{oauth.ErrTransport, codes.Unavailable},
	{oauth.ErrBadResponse, codes.Unavailable},
	{oauth.ErrResponseTooLarge, codes.Unavailable},
}

// maxStatusMessage bounds the message of every status the server answers
// with, whatever made it: a message that quotes input is cut.
const maxStatusMessage = 1024

// boundMessage returns err with its status message cut to
// maxStatusMessage bytes (at a rune boundary, then "…"); err itself when
// it is shorter or not a status.
func boundMessage(err error) error {
	st, ok := status.FromError(err)
	if !ok || len(st.Message()) <= maxStatusMessage {
		return err
	}
	p := st.Proto()
	p.Message = broker.Cut(p.Message, maxStatusMessage)
	return status.FromProto(p).Err()
}

// toStatus converts an error of package broker into a status error a caller
// can act on. Context errors pass through as Canceled and DeadlineExceeded;
// an error it does not know becomes Internal with a generic message, and its
// detail goes to the log instead.
func toStatus(log *zap.Logger, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var oe *oauth.Error
	if errors.As(err, &oe) {
		return providerStatus(err, oe)
	}
	for _, m := range statusTable {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	log.Error("internal error", zap.Error(err))
	return status.Error(codes.Internal, "internal error")
}

// providerStatus maps a provider's error answer: rate limits are
// ResourceExhausted, other temporary failures Unavailable (both with
// RetryInfo when the provider said when to retry), invalid_scope is the
// caller's InvalidArgument, and every other OAuth2 error is
// FailedPrecondition: nothing changes until an admin acts. The OAuth2 error
// and error_description travel in an ErrorInfo detail.
//
// Among those FailedPreconditions, a refusal of the broker's own client
// registration (invalid_client, unauthorized_client,
// unsupported_grant_type, invalid_request, or any refusal that is not about
// the grant) is the broker's fault, not the caller's: its ErrorInfo carries
// fault=broker and REST answers it 502 Bad Gateway (see restError). A
// refused grant (invalid_grant: re-authorization required) and a client
// secret the caller supplied (broker.ErrSecretRefused) keep HTTP 400.
func providerStatus(err error, oe *oauth.Error) error {
	code := codes.FailedPrecondition
	brokerFault := false
	switch {
	case oe.StatusCode == 429:
		code = codes.ResourceExhausted
	case oe.Temporary():
		code = codes.Unavailable
	case oe.Code == "invalid_scope":
		code = codes.InvalidArgument
	case oe.Code == "invalid_grant", errors.Is(err, broker.ErrReauthorizationRequired), errors.Is(err, broker.ErrSecretRefused):
		// The grant, or a secret the caller gave: FailedPrecondition alone.
	default:
		brokerFault = true
	}
	info := &errdetails.ErrorInfo{
		Reason: "PROVIDER_ERROR",
		Domain: ErrorDomain,
		Metadata: map[string]string{
			"http_status": strconv.Itoa(oe.StatusCode),
		},
	}
	if oe.Code != "" {
		info.Reason = strings.ToUpper(oe.Code)
		info.Metadata["error"] = oe.Code
	}
	if oe.Description != "" {
		info.Metadata["error_description"] = oe.Description
	}
	if brokerFault {
		info.Metadata[faultKey] = faultBroker
	}
	var pe *broker.ProviderError
	if errors.As(err, &pe) {
		info.Metadata["provider"] = pe.Provider
	}
	st, detailErr := status.New(code, err.Error()).WithDetails(info)
	if detailErr != nil {
		return status.Error(code, err.Error())
	}
	if oe.RetryAfter > 0 {
		if withRetry, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(oe.RetryAfter)}); err == nil {
			st = withRetry
		}
	}
	return st.Err()
}
