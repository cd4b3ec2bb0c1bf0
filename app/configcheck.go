package app

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/server"
)

// Problem is one thing wrong with a configuration, at its place: the field
// path ("providers[0].client_secret_env") and, when the file says it, the
// line.
type Problem struct {
	// Path is the field's place in the YAML; "" for the file as a whole.
	Path string
	// Line is the line of the field in the file; 0 when unknown.
	Line int
	// Message says what is wrong and what is expected.
	Message string
	// spaced: the message reads on from the path ("log.level \"loud\" is
	// not one of ...").
	spaced bool
}

func (p Problem) Error() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		if p.spaced || startsSentence(p.Message) {
			b.WriteString(" ")
		} else {
			b.WriteString(": ")
		}
	}
	b.WriteString(p.Message)
	return b.String()
}

// In is the problem as a compiler would print it for file: "FILE:LINE:
// path: message".
func (p Problem) In(file string) string {
	q := p
	q.Line = 0
	if p.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", file, p.Line, q.Error())
	}
	return fmt.Sprintf("%s: %s", file, q.Error())
}

// startsSentence reports whether msg reads on from a field's name
// ("token_url is required").
func startsSentence(msg string) bool {
	for _, w := range []string{"is ", "are ", "must ", "has ", "needs ", "and ", "go together", "applies "} {
		if strings.HasPrefix(msg, w) {
			return true
		}
	}
	return false
}

// Problems is every problem of a configuration, in the order of the file
// where known; one per line.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// deprecatedFields are former field names still read, by the type that
// holds them: old name → new name.
var deprecatedFields = map[reflect.Type]map[string]string{
	reflect.TypeFor[ProviderConfig](): {"redirect_url": "redirect_uri"},
}

// decodeChecked decodes the YAML document doc over cfg. It first walks the
// document against Config's fields and reports every unknown field (with
// the nearest known name) and every value of the wrong kind (with the
// format expected) at once; deprecated field names are renamed in doc and
// noted in cfg.Deprecations. The lines of the fields are kept for the
// problems Validate and Check find later.
func decodeChecked(doc *yaml.Node, cfg *Config) error {
	w := &walker{lines: map[string]int{}}
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	w.walk(root, reflect.TypeFor[Config](), "")
	if len(w.problems) > 0 {
		return w.problems
	}
	if err := doc.Decode(cfg); err != nil {
		return Problems{{Message: err.Error()}}
	}
	cfg.Deprecations = append(cfg.Deprecations, w.deprecations...)
	return nil
}

// ConfigLines maps the field paths of a YAML config file to their lines
// ("providers[0].client_id" → 12), for Problems.Locate; nil when the file
// does not parse.
func ConfigLines(data []byte) map[string]int {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) != 1 {
		return nil
	}
	w := &walker{lines: map[string]int{}}
	w.walk(doc.Content[0], reflect.TypeFor[Config](), "")
	return w.lines
}

// Locate returns the problems with the line of each one's field, or of its
// nearest ancestor, from lines (ConfigLines), in the order of the file.
func (ps Problems) Locate(lines map[string]int) Problems {
	out := slices.Clone(ps)
	for i, p := range out {
		if p.Line == 0 {
			out[i].Line = lineOf(lines, p.Path)
		}
	}
	order := func(p Problem) int {
		if p.Line == 0 {
			return math.MaxInt
		}
		return p.Line
	}
	sort.SliceStable(out, func(i, j int) bool { return order(out[i]) < order(out[j]) })
	return out
}

// lineOf is the line of path in lines, or of its nearest ancestor there.
func lineOf(lines map[string]int, path string) int {
	for p := path; p != ""; {
		if l, ok := lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

// walker checks a YAML tree against a Go type.
type walker struct {
	problems     Problems
	deprecations []string
	lines        map[string]int // field path → line
}

func (w *walker) add(path string, line int, format string, args ...any) {
	w.problems = append(w.problems, Problem{Path: path, Line: line, Message: fmt.Sprintf(format, args...)})
}

var durationType = reflect.TypeFor[time.Duration]()

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value leaves the default
	}
	switch {
	case t == durationType:
		w.scalar(n, t, path)
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.add(path, n.Line, "want a mapping of fields (name: value lines), not %s", describe(n))
			return
		}
		w.fields(n, t, path)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.add(path, n.Line, "want a list (- item lines, or [a, b]), not %s", describe(n))
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.lines[p] = item.Line
			w.walk(item, t.Elem(), p)
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.add(path, n.Line, "want a mapping (key: value lines), not %s", describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := fmt.Sprintf("%s[%s]", path, n.Content[i].Value)
			w.lines[p] = n.Content[i].Line
			w.walk(n.Content[i+1], t.Elem(), p)
		}
	default:
		w.scalar(n, t, path)
	}
}

// fields checks a mapping against struct type t.
func (w *walker) fields(n *yaml.Node, t reflect.Type, path string) {
	known := yamlFields(t)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		name := key.Value
		if to, ok := deprecatedFields[t][name]; ok {
			if line, both := seen[to]; both {
				w.add(join(path, name), key.Line, "set only %s (%s is its former name; %s is set on line %d)", to, name, to, line)
				continue
			}
			w.deprecations = append(w.deprecations, fmt.Sprintf("line %d: %s is deprecated: write %s", key.Line, join(path, name), to))
			key.Value, name = to, to
		}
		p := join(path, name)
		if line, dup := seen[name]; dup {
			w.add(p, key.Line, "is set twice (first on line %d)", line)
			continue
		}
		seen[name] = key.Line
		f, ok := known[name]
		if !ok {
			msg := fmt.Sprintf("unknown field %q", name)
			if near := nearest(name, slices.Sorted(mapKeys(known))); near != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", near)
			}
			w.add(path, key.Line, "%s", msg)
			continue
		}
		w.lines[p] = key.Line
		w.walk(value, f.Type, p)
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// yamlFields are the fields of struct type t by their YAML names; fields
// the file cannot set (yaml:"-", unexported) are left out.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f
	}
	return out
}

// scalar checks that n decodes as a value of type t.
func (w *walker) scalar(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.ScalarNode {
		w.add(path, n.Line, "want %s, not %s", expected(t), describe(n))
		return
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		w.add(path, n.Line, "%q is not %s", n.Value, expected(t))
	}
}

// expected says what a value of type t looks like in the file.
func expected(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration: a number with a unit, e.g. 60s, 5m or 1h30m"
	case t.Kind() == reflect.Bool:
		return "a boolean: true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "a whole number"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number, e.g. 0.5"
	}
	return "a string"
}

// describe names what a node holds, for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

// nearest is the candidate closest to name by edit distance, when it is
// close enough to be a typo; "" otherwise.
func nearest(name string, candidates []string) string {
	best, bestDist := "", max(2, len(name)/3)+1
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Check reports every problem that would keep serve from starting with this
// configuration, as Problems: what Validate finds, and what Start checks of
// the machine: the master key (the key file, $TOKENBROKER_MASTER_KEY or the
// PKCS#11 token), the listeners' and etcd's TLS files, the JWT issuers, that
// some caller can authenticate, the listen addresses and the data
// directory. It starts nothing and contacts no network service.
//
// One thing only the store knows: API keys issued earlier through the API
// let serve start without any in the file; Check asks for one in the file
// (or a JWT issuer, or a client CA) all the same.
func (c *Config) Check(getenv func(string) string) error {
	var errs []error
	if err := c.Validate(getenv); err != nil {
		errs = append(errs, err)
	}
	for _, a := range []struct{ name, addr string }{{"grpc_addr", c.GRPCAddr}, {"http_addr", c.HTTPAddr}} {
		if _, _, err := splitHostPort(a.addr); a.addr != "" && err != nil {
			errs = append(errs, fmt.Errorf("%s %q is not host:port (e.g. :9090 or 127.0.0.1:9090)", a.name, a.addr))
		}
	}
	if len(c.Etcd.Endpoints) == 0 && c.DataDir != "" {
		if err := creatableDir(c.DataDir); err != nil {
			errs = append(errs, fmt.Errorf("data_dir %s: %w", c.DataDir, err))
		}
	}
	nop := zap.NewNop()
	cc := *c
	cc.Getenv = getenv
	if _, err := cc.MasterKeyring(nop); err != nil {
		errs = append(errs, fmt.Errorf("seal: %w", err))
	}
	if files := c.TLS.files(); files.Enabled() && c.TLS.CertFile != "" && c.TLS.KeyFile != "" {
		if _, err := server.LoadTLS(files, time.Now()); err != nil {
			errs = append(errs, fmt.Errorf("tls: %w", err))
		}
	}
	if len(c.Etcd.Endpoints) > 0 {
		if _, err := EtcdClientConfig(c.Etcd, c.Etcd.Endpoints, nop); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := c.Auth.verifier(c.InsecureHTTPLoopback, nop); err != nil {
		errs = append(errs, err)
	}
	if !c.InsecureNoAuth && len(c.Auth.APIKeys) == 0 && len(c.Auth.JWTIssuers) == 0 && c.TLS.ClientCAFile == "" {
		errs = append(errs, errors.New("auth is empty: no API key in auth.api_keys, no auth.jwt_issuers and no tls.client_ca_file, so no caller "+
			"could authenticate; `tokenbroker apikeys create --offline --identity admin` prints a key and its entry"))
	}
	if len(errs) == 0 {
		return nil
	}
	return c.problems(errors.Join(errs...))
}

func splitHostPort(addr string) (string, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && port == "" {
		err = errors.New("no port")
	}
	return host, port, err
}

// creatableDir reports why serve could not use dir as its data directory:
// it is not a directory, or it does not exist and its nearest existing
// parent is not a directory this user may write in.
func creatableDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		switch {
		case err == nil && !fi.IsDir():
			return fmt.Errorf("%s is not a directory", p)
		case err == nil:
			if syscall.Access(p, 0o2|0o1) != nil { // W_OK|X_OK
				return fmt.Errorf("%s is not writable by this user", p)
			}
			return nil
		case !errors.Is(err, os.ErrNotExist):
			return err
		case filepath.Dir(p) == p:
			return err
		}
	}
}

// problems turns the errors of Validate and Check into Problems: one per
// error, with its field path split off the message where the message starts
// with one.
func (c *Config) problems(err error) Problems {
	var ps Problems
	for _, e := range leaves(err) {
		if p, ok := e.(Problem); ok {
			ps = append(ps, p)
			continue
		}
		ps = append(ps, c.problem("", e.Error()))
	}
	return ps
}

// leadingPath matches a field path at the start of a message.
var leadingPath = regexp.MustCompile(`^[a-z0-9_]+(\[[^\]\s]+\])?(\.[a-z0-9_]+(\[[^\]\s]+\])?)*`)

// problem makes a Problem of msg found under the field path prefix.
func (c *Config) problem(prefix, msg string) Problem {
	path := prefix
	if m := leadingPath.FindString(msg); m != "" && validPath(join(prefix, m)) {
		path = join(prefix, m)
		rest := msg[len(m):]
		spaced := strings.HasPrefix(rest, " ")
		return Problem{Path: path, Message: strings.TrimPrefix(strings.TrimPrefix(rest, ":"), " "), spaced: spaced}
	}
	return Problem{Path: path, Message: msg}
}

// validPath reports whether path names a field of Config.
func validPath(path string) bool {
	t := reflect.TypeFor[Config]()
	for _, part := range strings.Split(path, ".") {
		name, index, _ := strings.Cut(part, "[")
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return false
		}
		f, ok := yamlFields(t)[name]
		if !ok {
			return false
		}
		t = f.Type
		if index != "" {
			if t.Kind() != reflect.Slice && t.Kind() != reflect.Map {
				return false
			}
			t = t.Elem()
		}
	}
	return true
}

// leaves flattens joined errors into the errors they join. An error that
// wraps several (fmt.Errorf with more than one %w) stands for its last,
// which holds the detail: "provider x: invalid argument: <joined>".
func leaves(err error) []error {
	if err == nil {
		return nil
	}
	if _, ok := err.(Problem); ok {
		return []error{err}
	}
	if ps, ok := err.(Problems); ok {
		out := make([]error, len(ps))
		for i, p := range ps {
			out[i] = p
		}
		return out
	}
	multi, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	parts := multi.Unwrap()
	if fmt.Sprintf("%T", err) == "*errors.joinError" {
		var out []error
		for _, p := range parts {
			out = append(out, leaves(p)...)
		}
		return out
	}
	return leaves(parts[len(parts)-1])
}

// under makes a Problem of each of err's leaves, found under the field
// path prefix ("providers[0]").
func (c *Config) under(prefix string, err error) []error {
	var out []error
	for _, e := range leaves(err) {
		if p, ok := e.(Problem); ok {
			p.Path = join(prefix, p.Path)
			out = append(out, p)
			continue
		}
		out = append(out, c.problem(prefix, e.Error()))
	}
	return out
}
