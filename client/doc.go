// Package client lets Go services use tokenbroker's tokens as ordinary
// golang.org/x/oauth2 tokens.
//
// NewTokenSource turns a gRPC connection to the broker into an
// oauth2.TokenSource for one provider, account and scope set. It keeps the
// token in memory until shortly before it expires (WithEarlyExpiry), so the
// broker is asked about once per token lifetime, and concurrent callers
// share each call:
//
//	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
//		grpc.WithPerRPCCredentials(apiKey)) // "authorization: Bearer <key>"
//	...
//	ts := client.NewTokenSource(conn, "mediahound", client.WithScopes("read"))
//	httpClient := client.NewClient(ctx, ts)
//
// A workload without an API key authenticates with the token its platform
// gives it (a Kubernetes projected service-account token, a SPIFFE
// JWT-SVID), read from its file and read again as it rotates:
//
//	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
//		client.WithTokenFile("/var/run/secrets/tokenbroker/token"))
//
// The TokenSource works anywhere an oauth2.TokenSource does, oauth2.NewClient
// included. NewClient and NewTransport add what oauth2.NewClient lacks: when
// the provider's API answers 401 because a token was revoked or rotated
// away before its expiry, they ask the broker for a new one with
// TokenSource.Refresh, naming the refused token, and retry the request once.
// However many goroutines, processes and broker replicas see that 401 at
// the same time, the provider is called for one new token. (oauth2.NewClient
// wraps the TokenSource in an oauth2.ReuseTokenSource whose cache Refresh
// cannot reach: pair Refresh with NewClient or NewTransport, not with it.)
//
// # Errors
//
// Errors from the broker are gRPC status errors, passed through unchanged:
// use status.Code, and status.FromError for the details (errdetails.ErrorInfo
// carries the provider's OAuth2 error and error_description,
// errdetails.RetryInfo the wait after a rate limit). The codes a caller acts
// on:
//
//   - codes.Unauthenticated: the broker did not accept the connection's
//     credentials;
//   - codes.NotFound: the provider or account is not registered;
//   - codes.PermissionDenied: this caller may not have the provider's tokens;
//   - codes.FailedPrecondition: the provider refused the grant; for an
//     account this means a person has to authorize it again, and retrying
//     does not help;
//   - codes.InvalidArgument: a malformed request, or a scope the provider
//     does not know;
//   - codes.ResourceExhausted: the provider rate-limits, retry later;
//   - codes.Unavailable: neither the provider nor the broker's store could be
//     reached and no valid token is left.
package client
