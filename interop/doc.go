// Package interop holds tokenbroker's interoperability tests: the broker
// against a real, independently written OAuth 2.0 / OpenID Connect
// authorization server (panva/oidc-provider from the npm registry, pinned in
// package-lock.json), started on loopback by the tests from server.mjs, and
// against ory/fosite (the OAuth2 engine of Ory Hydra, a Go module) run in
// the test's process. Besides client secrets they cover private_key_jwt
// with the broker's JWKS (both), the JWT-bearer grant through fosite's RFC
// 7523 handler, and RFC 8414 metadata.
//
// The tests need Node.js and the server's packages; from the repository
// root:
//
//	npm ci --prefix interop
//	go test -race ./interop/
//
// Without them the tests fail (they do not skip), so that CI cannot pass
// without running them.
package interop
