// chart-render: a small stand-in for `helm template NAME CHART` for charts without
// dependencies or hooks, built from the libraries helm renders with (text/template, sprig v3,
// sigs.k8s.io/yaml, gojsonschema), so that its output is what helm's would be. helm itself is not
// packaged in Debian; scripts/render-chart.sh builds this from Debian's packages.
//
//	chart-render [--namespace NS] [--include-crds] [--kube-version V] [--set k=v]... [-f FILE]... NAME CHART
//
// What follows helm 3 (pkg/chartutil, pkg/engine, pkg/releaseutil, pkg/action/install.go) is
// marked "as helm" below; where helm's behaviour surprises, the comment says so.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/Masterminds/semver/v3"
	"sigs.k8s.io/yaml"
)

// Metadata is Chart.yaml, with the field names templates see (.Chart.Name, .Chart.AppVersion),
// as helm's chart.Metadata.
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []interface{}     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// KubeVersion and Capabilities: what .Capabilities offers templates (no cluster is asked).
type KubeVersion struct{ Version, Major, Minor string }

func (k KubeVersion) String() string     { return k.Version }
func (k KubeVersion) GitVersion() string { return k.Version }

// VersionSet answers .Capabilities.APIVersions.Has "group/version" (or "group/version/Kind").
type VersionSet []string

func (v VersionSet) Has(s string) bool {
	for _, x := range v {
		if x == s {
			return true
		}
	}
	return false
}

type Capabilities struct {
	APIVersions VersionSet
	KubeVersion KubeVersion
	HelmVersion map[string]string
}

// The built-in API group versions a current cluster serves; CRD-backed ones (such as
// monitoring.coreos.com/v1) are absent, as in helm template without --api-versions.
var builtinAPIVersions = VersionSet{
	"v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1",
	"rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "storage.k8s.io/v1",
	"coordination.k8s.io/v1", "events.k8s.io/v1", "discovery.k8s.io/v1", "node.k8s.io/v1",
	"scheduling.k8s.io/v1", "apiextensions.k8s.io/v1", "apiregistration.k8s.io/v1",
	"admissionregistration.k8s.io/v1", "authentication.k8s.io/v1", "authorization.k8s.io/v1",
	"certificates.k8s.io/v1", "flowcontrol.apiserver.k8s.io/v1",
}

// multi collects a repeated flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s\n", err) // as helm prints errors
		os.Exit(1)
	}
}

func run() error {
	var sets, valueFiles multi
	namespace := flag.String("namespace", "default", "the release namespace (.Release.Namespace)")
	includeCRDs := flag.Bool("include-crds", false, "print the chart's crds/ first")
	// helm 3.19's default: the Kubernetes version of the client-go it was built with.
	kubeVersion := flag.String("kube-version", "v1.34.0", "the Kubernetes version .Capabilities reports")
	flag.Var(&sets, "set", "key=value[,key=value]: set values (dotted keys), after the -f files")
	flag.Var(&valueFiles, "f", "a values file, merged over values.yaml (repeatable)")
	flag.Var(&valueFiles, "values", "same as -f")
	flag.Parse()
	if flag.NArg() != 2 {
		return errors.New("usage: chart-render [flags] NAME CHART")
	}
	name, dir := flag.Arg(0), flag.Arg(1)

	var meta Metadata
	if err := readYAML(filepath.Join(dir, "Chart.yaml"), &meta); err != nil {
		return err
	}
	if meta.Name == "" || meta.Version == "" {
		return fmt.Errorf("%s/Chart.yaml: name and version are required", dir)
	}
	// This stand-in has no dependency handling: refuse rather than render something else.
	if _, err := os.Stat(filepath.Join(dir, "charts")); len(meta.Dependencies) > 0 || err == nil {
		return errors.New("charts with dependencies (subcharts) are not supported by chart-render")
	}
	kv, err := parseKubeVersion(*kubeVersion)
	if err != nil {
		return err
	}
	// As helm install/template: the chart's kubeVersion constraint must admit the cluster's.
	if meta.KubeVersion != "" {
		c, err := semver.NewConstraint(meta.KubeVersion)
		if err != nil {
			return fmt.Errorf("Chart.yaml kubeVersion %q: %w", meta.KubeVersion, err)
		}
		if v, err := semver.NewVersion(kv.Version); err != nil || !c.Check(v) {
			return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", meta.KubeVersion, kv.Version)
		}
	}

	values, err := userValues(valueFiles, sets)
	if err != nil {
		return err
	}
	defaults := map[string]interface{}{}
	if err := readYAML(filepath.Join(dir, "values.yaml"), &defaults); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	values = coalesce(values, defaults)
	if err := validateSchema(filepath.Join(dir, "values.schema.json"), meta.Name, values); err != nil {
		return err
	}

	top := map[string]interface{}{
		"Values": values,
		"Chart":  &meta,
		"Release": map[string]interface{}{ // as helm's chartutil.ToRenderValues
			"Name": name, "Namespace": *namespace, "IsUpgrade": false, "IsInstall": true,
			"Revision": 1, "Service": "Helm",
		},
		"Capabilities": &Capabilities{APIVersions: builtinAPIVersions, KubeVersion: kv,
			HelmVersion: map[string]string{"Version": "v3.19.0"}},
		"Files": chartFiles{},
	}
	templates, err := readTree(dir, "templates", meta.Name)
	if err != nil {
		return err
	}
	rendered, err := render(templates, top)
	if err != nil {
		return err
	}
	manifests, err := sortManifests(rendered)
	if err != nil {
		return err
	}

	// As helm's action.renderResources and cmd/helm/template.go: CRDs as they are, then each
	// document, each under a "# Source:" line; the whole stream trimmed.
	var b strings.Builder
	if *includeCRDs {
		crds, err := readTree(dir, "crds", meta.Name)
		if err != nil {
			return err
		}
		for _, f := range sortedKeys(crds) {
			if ext := filepath.Ext(f); ext == ".yaml" || ext == ".yml" || ext == ".json" {
				fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", f, crds[f])
			}
		}
	}
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.name, m.content)
	}
	fmt.Println(strings.TrimSpace(b.String()))
	return nil
}

// chartFiles is .Files; this stand-in serves no chart files to templates (the chart uses none).
type chartFiles map[string][]byte

func (f chartFiles) Get(name string) string { return string(f[name]) }

func readYAML(path string, into interface{}) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	return nil
}

// readTree reads CHART/SUB/** into a map keyed as helm names them: "<chart name>/SUB/<path>".
func readTree(dir, sub, chartName string) (map[string]string, error) {
	out := map[string]string{}
	root := filepath.Join(dir, sub)
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[chartName+"/"+filepath.ToSlash(rel)] = string(data)
		return nil
	})
	return out, err
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func parseKubeVersion(s string) (KubeVersion, error) {
	v, err := semver.NewVersion(s)
	if err != nil {
		return KubeVersion{}, fmt.Errorf("--kube-version %q: %w", s, err)
	}
	return KubeVersion{Version: "v" + v.String(), Major: strconv.FormatUint(v.Major(), 10),
		Minor: strconv.FormatUint(v.Minor(), 10)}, nil
}

// userValues merges the -f files in order, then applies the --set values, as helm's
// pkg/cli/values.Options.MergeValues.
func userValues(files, sets []string) (map[string]interface{}, error) {
	base := map[string]interface{}{}
	for _, f := range files {
		m := map[string]interface{}{}
		if err := readYAML(f, &m); err != nil {
			return nil, err
		}
		base = mergeMaps(base, m)
	}
	for _, s := range sets {
		if err := parseSet(s, base); err != nil {
			return nil, fmt.Errorf("failed parsing --set data: %w", err)
		}
	}
	return base, nil
}

func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if vm, ok := v.(map[string]interface{}); ok {
			if om, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(om, vm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// parseSet handles the simple form of helm's strvals: "a.b.c=v,d=w". Lists ("a[0]", "{x,y}")
// and escaped commas are refused rather than guessed at.
func parseSet(s string, into map[string]interface{}) error {
	for _, kv := range strings.Split(s, ",") {
		key, val, ok := strings.Cut(kv, "=")
		if !ok || key == "" {
			return fmt.Errorf("key %q has no value", kv)
		}
		if strings.ContainsAny(key, "[]{}\\") || strings.ContainsAny(val, "{}\\") {
			return fmt.Errorf("%q: only simple dotted keys and scalar values are supported", kv)
		}
		path := strings.Split(key, ".")
		m := into
		for _, p := range path[:len(path)-1] {
			next, ok := m[p].(map[string]interface{})
			if !ok {
				next = map[string]interface{}{}
				m[p] = next
			}
			m = next
		}
		m[path[len(path)-1]] = typedVal(val)
	}
	return nil
}

// typedVal is strvals' typing of --set values: booleans, null, and int64 (never float: unlike
// values files, whose numbers sigs.k8s.io/yaml turns into float64).
func typedVal(val string) interface{} {
	switch {
	case strings.EqualFold(val, "true"):
		return true
	case strings.EqualFold(val, "false"):
		return false
	case strings.EqualFold(val, "null"):
		return nil
	case val == "0":
		return int64(0)
	}
	if val != "" && val[0] != '0' {
		if i, err := strconv.ParseInt(val, 10, 64); err == nil {
			return i
		}
	}
	return val
}

// coalesce lays the user's values over the chart's defaults, as helm's chartutil.CoalesceValues:
// maps merge key by key, anything else replaces, and a user's null deletes the default.
func coalesce(user, defaults map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(user)+len(defaults))
	for k, v := range defaults {
		out[k] = v
	}
	for k, v := range user {
		if v == nil {
			delete(out, k)
			continue
		}
		um, uok := v.(map[string]interface{})
		dm, dok := out[k].(map[string]interface{})
		if uok && dok {
			out[k] = coalesce(um, dm)
		} else {
			out[k] = v
		}
	}
	return out
}
