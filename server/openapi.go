package server

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/tokenbroker/tokenbroker/gen/openapiv2"
)

// openAPIRoutes describes the routes served by hand-written handlers, which
// protoc-gen-openapiv2 cannot see: the RFC 7662 endpoint, the consent
// callback, the REST event stream, the JWKS and the probes. openAPIDoc
// merges it into the generated document.
//
//go:embed openapi_routes.json
var openAPIRoutes []byte

// openAPIDoc is the document served at OpenAPIPath: the generated one with
// openAPIRoutes merged in. A path and method, a definition or a tag that
// both declare is an error.
var openAPIDoc = sync.OnceValues(func() ([]byte, error) {
	return mergeOpenAPI(openapiv2.JSON, openAPIRoutes)
})

// mergeOpenAPI returns base with the paths, definitions and tags of extra
// added.
func mergeOpenAPI(base, extra []byte) ([]byte, error) {
	var doc, add map[string]any
	if err := json.Unmarshal(base, &doc); err != nil {
		return nil, fmt.Errorf("openapi: generated document: %w", err)
	}
	if err := json.Unmarshal(extra, &add); err != nil {
		return nil, fmt.Errorf("openapi: hand-written routes: %w", err)
	}
	paths := object(doc, "paths")
	for path, ops := range object(add, "paths") {
		have := object(paths, path)
		for method, op := range ops.(map[string]any) {
			if _, dup := have[method]; dup {
				return nil, fmt.Errorf("openapi: %s %s is both generated and hand-written", method, path)
			}
			have[method] = op
		}
	}
	defs := object(doc, "definitions")
	for name, def := range object(add, "definitions") {
		if _, dup := defs[name]; dup {
			return nil, fmt.Errorf("openapi: definition %s is both generated and hand-written", name)
		}
		defs[name] = def
	}
	tags, _ := doc["tags"].([]any)
	doc["tags"] = append(tags, add["tags"].([]any)...)
	return json.MarshalIndent(doc, "", "  ")
}

// object returns m[key] as an object, creating it when absent.
func object(m map[string]any, key string) map[string]any {
	o, ok := m[key].(map[string]any)
	if !ok {
		o = map[string]any{}
		m[key] = o
	}
	return o
}

// OpenAPIPath serves the OpenAPI document on the metrics listener.
const OpenAPIPath = "/openapi.json"

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	doc, err := openAPIDoc()
	if err != nil {
		http.Error(w, "the OpenAPI document is unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc)
}

// routeMux is the API listener's ServeMux, which remembers the patterns it
// serves so that a test can hold them against the OpenAPI document.
type routeMux struct {
	*http.ServeMux
	patterns []string
}

func newRouteMux() *routeMux { return &routeMux{ServeMux: http.NewServeMux()} }

func (m *routeMux) Handle(pattern string, h http.Handler) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(h))
}
