// Package test renders the Helm chart in ../tokenbroker with helm (pinned in
// this module's go.mod as a tool), decodes every manifest strictly into the
// Kubernetes API types, and holds the container's arguments against the
// flags the real binary accepts. It is a module of its own so that the
// broker's module does not depend on Kubernetes.
package test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

const chartDir = "../tokenbroker"

// kinds are the types a rendered manifest may decode into.
var kinds = map[string]func() any{
	"v1/ConfigMap":                            func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                               func() any { return &corev1.Secret{} },
	"v1/Service":                              func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                       func() any { return &corev1.ServiceAccount{} },
	"apps/v1/Deployment":                      func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":           func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return &networkingv1.NetworkPolicy{} },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return &monitoringv1.ServiceMonitor{} },
}

// release is a rendered chart, decoded.
type release struct {
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	services        map[string]*corev1.Service
	serviceAccounts map[string]*corev1.ServiceAccount
	deployments     []*appsv1.Deployment
	pdbs            []*policyv1.PodDisruptionBudget
	netpols         []*networkingv1.NetworkPolicy
	monitors        []*monitoringv1.ServiceMonitor
}

// helm runs the pinned helm with its homes in a temporary directory.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String(), nil
}

// render renders the chart with a values file of testdata and extra --set
// arguments, and decodes every manifest strictly: a field the API type
// does not have, a duplicate key or an unknown kind fails the test.
func render(t *testing.T, values string, set ...string) *release {
	t.Helper()
	args := []string{"template", "tb", chartDir, "--namespace", "platform", "-f", filepath.Join("testdata", values)}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	r := &release{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		services: map[string]*corev1.Service{}, serviceAccounts: map[string]*corev1.ServiceAccount{}}
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		raw, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatalf("manifest %d is not valid YAML: %v\n%s", i, err, doc)
		}
		var meta metav1.TypeMeta
		if err := json.Unmarshal(raw, &meta); err != nil {
			t.Fatalf("manifest %d: %v", i, err)
		}
		newObj, ok := kinds[meta.APIVersion+"/"+meta.Kind]
		if !ok {
			t.Fatalf("manifest %d is a %s %s, which this test does not know\n%s", i, meta.APIVersion, meta.Kind, doc)
		}
		obj := newObj()
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			t.Fatalf("manifest %d (%s) does not decode strictly into %T: %v\n%s", i, meta.Kind, obj, err, doc)
		}
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *corev1.Secret:
			r.secrets[o.Name] = o
		case *corev1.Service:
			r.services[o.Name] = o
		case *corev1.ServiceAccount:
			r.serviceAccounts[o.Name] = o
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *networkingv1.NetworkPolicy:
			r.netpols = append(r.netpols, o)
		case *monitoringv1.ServiceMonitor:
			r.monitors = append(r.monitors, o)
		}
	}
	return r
}

// TestChartRendersValidManifests renders the chart with the least a release
// needs and with every option on, and checks that the parts fit together:
// selectors select the pods, probes and Services name the container's
// ports, the pod runs as 65532 with a read-only root, every file the
// config names is mounted, and the container's arguments are flags that
// `tokenbroker serve` accepts.
func TestChartRendersValidManifests(t *testing.T) {
	flags := serveFlags(t)
	tests := []struct {
		values       string
		wantReplicas int32
		wantKinds    map[string]int // kind → count
		external     []string       // the Secrets the values name, not rendered
	}{
		{"minimal.yaml", 3, map[string]int{"ConfigMap": 1, "Secret": 0, "Service": 1, "ServiceAccount": 1, "Deployment": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 0, "ServiceMonitor": 0},
			[]string{"tokenbroker-master-key"}},
		{"full.yaml", 5, map[string]int{"ConfigMap": 1, "Secret": 1, "Service": 2, "ServiceAccount": 1, "Deployment": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1, "ServiceMonitor": 1},
			[]string{"tokenbroker-etcd-client", "tokenbroker-tls", "haven-client-key"}},
	}
	for _, tt := range tests {
		t.Run(tt.values, func(t *testing.T) {
			r := render(t, tt.values)
			got := map[string]int{"ConfigMap": len(r.configMaps), "Secret": len(r.secrets), "Service": len(r.services), "ServiceAccount": len(r.serviceAccounts),
				"Deployment": len(r.deployments), "PodDisruptionBudget": len(r.pdbs), "NetworkPolicy": len(r.netpols), "ServiceMonitor": len(r.monitors)}
			for kind, want := range tt.wantKinds {
				if got[kind] != want {
					t.Errorf("%d %s rendered, want %d", got[kind], kind, want)
				}
			}
			if len(r.deployments) != 1 {
				t.Fatalf("no single Deployment")
			}
			d := r.deployments[0]
			if d.Spec.Replicas == nil || *d.Spec.Replicas != tt.wantReplicas {
				t.Errorf("replicas = %v, want %d", d.Spec.Replicas, tt.wantReplicas)
			}
			checkPod(t, r, d, tt.external)
			checkArgs(t, d.Spec.Template.Spec.Containers[0].Args, flags)
			checkConfig(t, r, d)
			checkSelectors(t, r, d)
		})
	}
}

// TestChartRefusesWhatServeCannotRun: without an external etcd or a master
// key the chart does not render, and says what to set.
func TestChartRefusesWhatServeCannotRun(t *testing.T) {
	tests := []struct {
		name string
		set  []string
		want string
	}{
		{"no etcd", []string{"etcd.endpoints=null"}, "etcd.endpoints"},
		{"no master key", []string{"masterKey.existingSecret="}, "masterKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"template", "tb", chartDir, "-f", "testdata/minimal.yaml"}
			for _, s := range tt.set {
				args = append(args, "--set", s)
			}
			out, err := helm(t, args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("helm template with %v = %v (%d bytes rendered), want an error naming %s", tt.set, err, len(out), tt.want)
			}
		})
	}
}

// TestArgsCheckCatchesAnUnknownFlag: the check of the container's
// arguments fails on a flag serve does not have.
func TestArgsCheckCatchesAnUnknownFlag(t *testing.T) {
	flags := serveFlags(t)
	d := render(t, "minimal.yaml", "extraArgs={--no-such-flag}").deployments[0]
	rec := &recorder{}
	checkArgs(rec, d.Spec.Template.Spec.Containers[0].Args, flags)
	if len(rec.errs) == 0 || !strings.Contains(rec.errs[0], "no-such-flag") {
		t.Errorf("checkArgs on --no-such-flag reported %q, want an error naming it", rec.errs)
	}
}

// TestConfigCheckCatchesAnUnknownField: a config field the binary does not
// know, passed through the config value, is refused by the validation the
// render test runs.
func TestConfigCheckCatchesAnUnknownField(t *testing.T) {
	r := render(t, "minimal.yaml", "config.refresher.shard_count=4")
	text := r.configMaps["tb-tokenbroker"].Data["tokenbroker.yaml"]
	files := map[string]string{}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatal(err)
	}
	collectFiles("", cfg, files)
	err := validateConfig(t, text, files)
	if err == nil || !strings.Contains(err.Error(), "shard_count") {
		t.Errorf("validateConfig of a config with refresher.shard_count = %v, want an error naming the field", err)
	}
}

// tb is the part of testing.TB the checks use, so that a test can watch a
// check fail.
type tb interface {
	Helper()
	Errorf(format string, args ...any)
}

type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func checkPod(t *testing.T, r *release, d *appsv1.Deployment, external []string) {
	t.Helper()
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Errorf("pod security context %+v, want runAsNonRoot as uid 65532", psc)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("container security context %+v, want a read-only root, no privilege escalation, every capability dropped", sc)
	}
	ports := map[string]bool{}
	for _, p := range c.Ports {
		ports[p.Name] = true
	}
	for _, want := range []string{"grpc", "http", "metrics"} {
		if !ports[want] {
			t.Errorf("container ports %v lack %s", c.Ports, want)
		}
	}
	for name, probe := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != name || !ports[probe.HTTPGet.Port.String()] {
			t.Errorf("probe %s = %+v, want an HTTP GET of %s on a container port", name, probe, name)
		}
	}
	if c.Resources.Limits.Memory().IsZero() {
		t.Errorf("no memory limit")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Errorf("mount %s has no volume", m.Name)
			continue
		}
		if v.Secret != nil && r.secrets[v.Secret.SecretName] == nil && !slices.Contains(external, v.Secret.SecretName) {
			t.Errorf("volume %s names Secret %s, neither rendered nor given in the values", v.Name, v.Secret.SecretName)
		}
	}
	if sa := pod.ServiceAccountName; r.serviceAccounts[sa] == nil {
		t.Errorf("serviceAccountName %s is not rendered", sa)
	}
}

// checkArgs holds args against the flags serve accepts: the first is the
// subcommand, every "-x"/"--x"/"--x=v" one of its flags.
func checkArgs(t tb, args []string, flags map[string]bool) {
	t.Helper()
	if len(args) == 0 || args[0] != "serve" {
		t.Errorf("container args %q, want serve first", args)
		return
	}
	for _, a := range args[1:] {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !flags[name] {
			t.Errorf("container arg %s: tokenbroker serve has no flag %q (it has %v)", a, name, sortedKeys(flags))
		}
	}
}

// checkConfig: the args name the ConfigMap's tokenbroker.yaml where it is
// mounted, and every *_file of the config is under a mount.
func checkConfig(t *testing.T, r *release, d *appsv1.Deployment) {
	t.Helper()
	c := d.Spec.Template.Spec.Containers[0]
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 >= len(c.Args) {
		t.Fatalf("args %q name no --config", c.Args)
	}
	path := c.Args[i+1]
	var cm *corev1.ConfigMap
	for _, m := range c.VolumeMounts {
		if filepath.Dir(path) != m.MountPath {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				cm = r.configMaps[v.ConfigMap.Name]
			}
		}
	}
	if cm == nil {
		t.Fatalf("--config %s is not in a mounted, rendered ConfigMap", path)
	}
	text, ok := cm.Data[filepath.Base(path)]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s", cm.Name, filepath.Base(path))
	}
	var cfg map[string]any
	if err := yaml.UnmarshalStrict([]byte(text), &cfg); err != nil {
		t.Fatalf("the config is not YAML: %v\n%s", err, text)
	}
	etcd, _ := cfg["etcd"].(map[string]any)
	if eps, _ := etcd["endpoints"].([]any); len(eps) == 0 {
		t.Errorf("config etcd.endpoints = %v, want the external cluster", etcd["endpoints"])
	}
	files := map[string]string{}
	collectFiles("", cfg, files)
	if files["seal.key_file"] == "" {
		t.Errorf("config has no seal.key_file: %v", files)
	}
	for key, f := range files {
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || strings.HasPrefix(f, m.MountPath+"/")
		}
		if !mounted {
			t.Errorf("config %s = %s is under no volume mount", key, f)
		}
	}
	if err := validateConfig(t, text, files); err != nil {
		t.Error(err)
	}
}

// validateConfig runs `tokenbroker config validate` on the rendered config,
// its files replaced by real ones of the right kind (a generated master
// key, a certificate and its key) and its *_env variables set, so that
// the binary's own decoding (unknown fields are errors) and checks judge
// what the chart writes.
func validateConfig(t *testing.T, text string, files map[string]string) error {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	masterKey, err := exec.Command(tokenbrokerBin(t), "keys", "generate", "--id", "k1").Output()
	if err != nil {
		t.Fatalf("keys generate: %v", err)
	}
	i := 0
	for key, path := range files {
		var content []byte
		switch {
		case key == "seal.key_file":
			content = masterKey
		case strings.HasSuffix(key, "key_file"):
			content = keyPEM
		default: // cert_file, ca_file, client_ca_file
			content = certPEM
		}
		i++
		local := filepath.Join(dir, fmt.Sprintf("file%d", i))
		if err := os.WriteFile(local, content, 0o600); err != nil {
			t.Fatal(err)
		}
		text = strings.ReplaceAll(text, path, local)
	}
	cfgPath := filepath.Join(dir, "tokenbroker.yaml")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tokenbrokerBin(t), "config", "validate", cfgPath)
	cmd.Env = os.Environ()
	for _, m := range regexp.MustCompile(`(?m)_env:\s*"?([A-Z_][A-Z0-9_]*)`).FindAllStringSubmatch(text, -1) {
		cmd.Env = append(cmd.Env, m[1]+"=placeholder-for-validate")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tokenbroker config validate refuses the chart's config: %v\n%s\n%s", err, out, text)
	}
	return nil
}

// selfSigned returns a certificate for localhost and its key, in PEM.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokenbroker"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// collectFiles gathers the string values of keys ending in _file.
func collectFiles(prefix string, v any, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && strings.HasSuffix(k, "_file") {
				out[prefix+k] = s
				continue
			}
			collectFiles(prefix+k+".", e, out)
		}
	case []any:
		for i, e := range v {
			collectFiles(fmt.Sprintf("%s%d.", prefix, i), e, out)
		}
	}
}

// checkSelectors: every Service, the PDB, the NetworkPolicy and the
// ServiceMonitor select what they should.
func checkSelectors(t *testing.T, r *release, d *appsv1.Deployment) {
	t.Helper()
	podLabels := labels.Set(d.Spec.Template.Labels)
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("the Deployment's selector %v does not select its pods %v (%v)", d.Spec.Selector, podLabels, err)
	}
	containerPorts := map[string]bool{}
	for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
		containerPorts[p.Name] = true
	}
	for name, s := range r.services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) || len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s selector %v does not select the pods %v", name, s.Spec.Selector, podLabels)
		}
		for _, p := range s.Spec.Ports {
			if !containerPorts[p.TargetPort.String()] {
				t.Errorf("Service %s port %s targets %s, not a container port", name, p.Name, p.TargetPort.String())
			}
			if p.Name == "metrics" && s.Spec.ClusterIP != corev1.ClusterIPNone {
				t.Errorf("Service %s exposes the metrics port (served without credentials) on a cluster IP", name)
			}
		}
	}
	for _, p := range r.pdbs {
		if s, err := metav1.LabelSelectorAsSelector(p.Spec.Selector); err != nil || !s.Matches(podLabels) {
			t.Errorf("PodDisruptionBudget selector %v does not select the pods", p.Spec.Selector)
		}
	}
	for _, np := range r.netpols {
		if s, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil || !s.Matches(podLabels) {
			t.Errorf("NetworkPolicy selector %v does not select the pods", np.Spec.PodSelector)
		}
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port == nil || !containerPorts[p.Port.String()] {
					t.Errorf("NetworkPolicy port %v is not a container port", p.Port)
				}
				if p.Port != nil && p.Port.String() == "metrics" && len(rule.From) == 0 {
					t.Errorf("NetworkPolicy opens the metrics port to everyone")
				}
			}
		}
	}
	for _, m := range r.monitors {
		s, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, svc := range r.services {
			if s.Matches(labels.Set(svc.Labels)) && slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "metrics" }) {
				found = true
			}
		}
		if !found || len(m.Spec.Endpoints) == 0 || m.Spec.Endpoints[0].Port != "metrics" {
			t.Errorf("ServiceMonitor %s selects no Service with a metrics port (endpoints %+v)", m.Name, m.Spec.Endpoints)
		}
	}
}

// binOnce finds the tokenbroker binary: $TOKENBROKER_BIN, or one built
// from the module at the repository's root.
var binOnce = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv("TOKENBROKER_BIN"); bin != "" {
		return bin, nil
	}
	dir, err := os.MkdirTemp("", "tokenbroker-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "tokenbroker")
	build := exec.Command("go", "build", "-o", bin, "./cmd/tokenbroker")
	build.Dir = "../../.."
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build tokenbroker: %v: %s", err, out)
	}
	return bin, nil
})

func tokenbrokerBin(t *testing.T) string {
	t.Helper()
	bin, err := binOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// serveFlags returns the flags of `tokenbroker serve`, read from its
// --help. Both the flag package's "  -name type" and cobra's
// "  -n, --name type" lines are read.
var serveFlagsOnce = sync.OnceValues(func() (map[string]bool, error) {
	bin, err := binOnce()
	if err != nil {
		return nil, err
	}
	out, _ := exec.Command(bin, "serve", "--help").CombinedOutput() // the flag package exits 2 after -help
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-[a-zA-Z],\s+)?--?([a-zA-Z0-9][a-zA-Z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if !flags["config"] || !flags["data-dir"] {
		return nil, fmt.Errorf("%s serve --help lists no --config or --data-dir; read %v from:\n%s", bin, sortedKeys(flags), out)
	}
	return flags, nil
})

func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	flags, err := serveFlagsOnce()
	if err != nil {
		t.Fatal(err)
	}
	return flags
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
