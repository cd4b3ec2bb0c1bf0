package app

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// referenceConfig documents every field of Config, with a comment each.
var referenceConfig = filepath.Join("..", "deploy", "config.reference.yaml")

// configFieldPaths lists every field path a file can set in a value of type
// t, lists and maps as "[]": "providers[].client_id".
func configFieldPaths(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	switch {
	case t == reflect.TypeFor[time.Duration]():
	case t.Kind() == reflect.Struct:
		for name, f := range yamlFields(t) {
			p := join(prefix, name)
			out = append(out, p)
			out = append(out, configFieldPaths(f.Type, p)...)
		}
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Map:
		out = append(out, configFieldPaths(t.Elem(), prefix+"[]")...)
	}
	return out
}

var indexes = regexp.MustCompile(`\[[^\]]*\]`)

// TestReferenceConfigDocumentsEveryField: deploy/config.reference.yaml
// decodes strictly, without deprecated names, and sets every field of
// Config (a new field fails this test until the file documents it), each
// with a comment on its line or just above it.
func TestReferenceConfigDocumentsEveryField(t *testing.T) {
	data, err := os.ReadFile(referenceConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	if err := DecodeConfig(strings.NewReader(string(data)), &cfg); err != nil {
		t.Fatalf("%s does not decode:\n%v", referenceConfig, err)
	}
	if len(cfg.Deprecations) > 0 {
		t.Errorf("%s uses deprecated names: %v", referenceConfig, cfg.Deprecations)
	}
	lines := ConfigLines(data)
	documented := map[string]int{}
	for p, l := range lines {
		documented[indexes.ReplaceAllString(p, "[]")] = l
	}
	text := strings.Split(string(data), "\n")
	var missing, uncommented []string
	for _, p := range configFieldPaths(reflect.TypeFor[Config](), "") {
		l, ok := documented[p]
		switch {
		case !ok:
			missing = append(missing, p)
		case !strings.Contains(text[l-1], "#") && (l < 2 || !strings.HasPrefix(strings.TrimSpace(text[l-2]), "#")):
			uncommented = append(uncommented, p)
		}
	}
	slices.Sort(missing)
	slices.Sort(uncommented)
	if len(missing) > 0 {
		t.Errorf("%s does not set these fields; add each, with a comment saying what it does and its default:\n  %s",
			referenceConfig, strings.Join(missing, "\n  "))
	}
	if len(uncommented) > 0 {
		t.Errorf("%s sets these fields without a comment on their line or the line above:\n  %s", referenceConfig, strings.Join(uncommented, "\n  "))
	}
}
