package server_test

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1" // registers the API's descriptors
	"github.com/tokenbroker/tokenbroker/server"
)

// TestOpenAPIDescribesEveryRoute: the document served on the metrics
// listener names the API and its version, declares the bearer scheme, and
// describes every route the API listener serves: the patterns of its mux,
// and behind the gateway's "/v1/" every HTTP rule of the API's proto
// methods and the event stream served by hand.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	code, doc, raw := restCall(t, http.MethodGet, in.metricsURL+server.OpenAPIPath, nil)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %.200s", server.OpenAPIPath, code, raw)
	}

	info, _ := doc["info"].(map[string]any)
	if info["title"] != "tokenbroker" || info["version"] != "v1" {
		t.Errorf("info = %v, want title tokenbroker and version v1", info)
	}
	bearer, _ := doc["securityDefinitions"].(map[string]any)["bearer"].(map[string]any)
	if bearer["type"] != "apiKey" || bearer["in"] != "header" || bearer["name"] != "Authorization" {
		t.Errorf("securityDefinitions.bearer = %v, want an apiKey in the Authorization header", bearer)
	}
	if sec, _ := doc["security"].([]any); len(sec) != 1 || sec[0].(map[string]any)["bearer"] == nil {
		t.Errorf("security = %v, want bearer for every operation by default", doc["security"])
	}

	documented := map[string]bool{}
	for path, ops := range doc["paths"].(map[string]any) {
		for method := range ops.(map[string]any) {
			documented[routeKey(strings.ToUpper(method), path)] = true
		}
	}
	var served []string
	for _, p := range server.Routes(in.server) {
		if p == "/v1/" { // the gateway: its routes follow
			continue
		}
		method, path, ok := strings.Cut(p, " ")
		if !ok {
			t.Errorf("the API mux serves %q for every method; routes should name theirs", p)
			continue
		}
		served = append(served, routeKey(method, path))
	}
	if !slices.Contains(server.Routes(in.server), "/v1/") {
		t.Errorf("the API mux does not mount the gateway at /v1/: %v", server.Routes(in.server))
	}
	served = append(served, gatewayRoutes(t)...)
	watchMethod, watchPath, _ := strings.Cut(server.RESTWatchEventsRoute, " ")
	served = append(served, routeKey(watchMethod, watchPath))
	if len(served) < 25 {
		t.Fatalf("found %d served routes, want every route of the API: %v", len(served), served)
	}
	for _, r := range served {
		if !documented[r] {
			t.Errorf("%s is served but not in %s", r, server.OpenAPIPath)
		}
	}
	t.Logf("%d served routes, all documented", len(served))
}

// gatewayRoutes returns the HTTP rules of every method of package
// tokenbroker.v1, additional bindings included.
func gatewayRoutes(t *testing.T) []string {
	var routes []string
	protoregistry.GlobalFiles.RangeFilesByPackage("tokenbroker.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			methods := f.Services().Get(i).Methods()
			for j := range methods.Len() {
				m := methods.Get(j)
				rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil {
					if !m.IsStreamingServer() {
						t.Errorf("%s has no HTTP rule", m.FullName())
					}
					continue
				}
				for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
					routes = append(routes, routeKey(httpRule(r)))
				}
			}
		}
		return true
	})
	return routes
}

func httpRule(r *annotations.HttpRule) (method, path string) {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return http.MethodGet, p.Get
	case *annotations.HttpRule_Put:
		return http.MethodPut, p.Put
	case *annotations.HttpRule_Post:
		return http.MethodPost, p.Post
	case *annotations.HttpRule_Delete:
		return http.MethodDelete, p.Delete
	case *annotations.HttpRule_Patch:
		return http.MethodPatch, p.Patch
	case *annotations.HttpRule_Custom:
		return p.Custom.GetKind(), p.Custom.GetPath()
	}
	return "", ""
}

var pathParam = regexp.MustCompile(`\{[^}]*\}`)

// routeKey is "METHOD path" with every path parameter written {}.
func routeKey(method, path string) string {
	return method + " " + pathParam.ReplaceAllString(path, "{}")
}
