package oauth

// Hooks for the external tests in package oauth_test.
var (
	ParseResponse   = parseResponse
	ParseRetryAfter = parseRetryAfter
	Sanitize        = sanitize
)
