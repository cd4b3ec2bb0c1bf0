// Package interop holds tokenbroker's interoperability tests: the broker
// against a real, independently written OAuth 2.0 / OpenID Connect
// authorization server (panva/oidc-provider from the npm registry, pinned in
// package-lock.json), started on loopback by the tests from server.mjs.
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
