package main

// The template engine and the manifest sorter, as helm's pkg/engine and pkg/releaseutil.

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"sigs.k8s.io/yaml"
)

// render parses every file of templates/ into one template set (so each may include what any
// defines) and executes each but the partials (_*), as helm's engine.render.
func render(templates map[string]string, top map[string]interface{}) (map[string]string, error) {
	t := template.New("gotpl")
	// Missing map keys print "<no value>", removed below: helm's non-strict mode.
	t.Option("missingkey=zero")
	t.Funcs(funcMap(t))
	for _, name := range parseOrder(templates) {
		if _, err := t.New(name).Parse(templates[name]); err != nil {
			return nil, cleanupParseError(name, err)
		}
	}
	out := map[string]string{}
	for _, name := range parseOrder(templates) {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		top["Template"] = map[string]interface{}{"Name": name, "BasePath": path.Dir(name)}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, top); err != nil {
			return nil, cleanupExecError(name, err)
		}
		out[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return out, nil
}

// parseOrder is helm's (sort.Reverse(byPathLen)): deeper paths first, then names descending;
// it decides which of two `define`s of the same name wins (the last parsed).
func parseOrder(templates map[string]string) []string {
	keys := sortedKeys(templates)
	sort.Slice(keys, func(i, j int) bool {
		ci, cj := strings.Count(keys[i], "/"), strings.Count(keys[j], "/")
		if ci != cj {
			return ci > cj
		}
		return keys[i] > keys[j]
	})
	return keys
}

// funcMap is sprig's (less env and expandenv, as helm) plus helm's own functions.
func funcMap(t *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")

	included := map[string]int{}
	f["include"] = func(name string, data interface{}) (string, error) {
		if included[name] > 1000 { // helm's guard against a template including itself forever
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		included[name]++
		defer func() { included[name]-- }()
		var buf strings.Builder
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	// tpl renders a string as a template, with every define of the chart in reach; it is named
	// after the calling template so that errors point there, as helm's.
	f["tpl"] = func(text string, vals map[string]interface{}) (string, error) {
		name := "tpl"
		if tm, ok := vals["Template"].(map[string]interface{}); ok {
			name, _ = tm["Name"].(string)
		}
		c, err := t.Clone()
		if err != nil {
			return "", err
		}
		if _, err := c.New(name).Parse(text); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %w", text, cleanupParseError(name, err))
		}
		var buf strings.Builder
		if err := c.ExecuteTemplate(&buf, name, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %w", text, cleanupExecError(name, err))
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["required"] = func(warn string, val interface{}) (interface{}, error) {
		if s, ok := val.(string); val == nil || (ok && s == "") {
			return val, fmt.Errorf("%s", warnStart+warn+warnEnd)
		}
		return val, nil
	}
	// helm's toYaml: sigs.k8s.io/yaml (keys sorted, via JSON), trailing newline trimmed, errors
	// swallowed into "".
	f["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	f["mustToYaml"] = func(v interface{}) (string, error) {
		data, err := yaml.Marshal(v)
		return strings.TrimSuffix(string(data), "\n"), err
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromYamlArray"] = func(s string) []interface{} {
		a := []interface{}{}
		if err := yaml.Unmarshal([]byte(s), &a); err != nil {
			a = []interface{}{err.Error()}
		}
		return a
	}
	f["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	// helm template has no cluster: lookup finds nothing.
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return f
}

// required's message travels inside text/template's error wrapped in these markers, which
// cleanupExecError finds again (as helm's warnWrap).
const warnStart, warnEnd = "HELM_ERR_START", "HELM_ERR_END"

var warnRegex = regexp.MustCompile(warnStart + `(.*)` + warnEnd)

// "template: NAME:LINE:COL: ... : MSG" -> "parse error at (NAME:LINE:COL): MSG", as helm.
func cleanupParseError(name string, err error) error {
	tokens := strings.Split(err.Error(), ": ")
	if len(tokens) == 1 {
		return fmt.Errorf("parse error in (%s): %s", name, err)
	}
	return fmt.Errorf("parse error at (%s): %s", tokens[1], tokens[len(tokens)-1])
}

func cleanupExecError(name string, err error) error {
	if _, ok := err.(template.ExecError); !ok {
		return err
	}
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return fmt.Errorf("execution error in (%s): %s", name, err)
	}
	if parts := warnRegex.FindStringSubmatch(tokens[2]); len(parts) >= 2 {
		return fmt.Errorf("execution error at (%s): %s", tokens[1], parts[1])
	}
	return err
}

type manifest struct{ name, content, kind string }

// helm's releaseutil.SplitManifests separator.
var docSep = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

// installOrder is helm 3.19's releaseutil.InstallOrder.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

// sortManifests splits each rendered file (by name) into documents and orders them by kind, as
// helm's releaseutil.SortManifests: NOTES.txt and files that render blank are dropped; a
// document of comments only is kept (helm keeps it too, as an unknown kind).
func sortManifests(rendered map[string]string) ([]manifest, error) {
	var out []manifest
	for _, name := range sortedKeys(rendered) {
		content := rendered[name]
		if strings.HasSuffix(name, "NOTES.txt") || strings.TrimSpace(content) == "" {
			continue
		}
		for _, doc := range docSep.Split(strings.TrimSpace(content), -1) {
			if doc == "" {
				continue
			}
			doc = strings.TrimSpace(doc)
			var head struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return nil, fmt.Errorf("YAML parse error on %s: %w", name, err)
			}
			// Hooks go elsewhere in helm's output, in an order of their own: not done here.
			if _, ok := head.Metadata.Annotations["helm.sh/hook"]; ok {
				return nil, fmt.Errorf("%s: helm hooks are not supported by chart-render", name)
			}
			out = append(out, manifest{name: name, content: doc, kind: head.Kind})
		}
	}
	rank := map[string]int{}
	for i, k := range installOrder {
		rank[k] = i
	}
	// Known kinds in install order, unknown ones last by kind name; otherwise stable.
	sort.SliceStable(out, func(i, j int) bool {
		a, aok := rank[out[i].kind]
		b, bok := rank[out[j].kind]
		switch {
		case !aok && !bok:
			return out[i].kind < out[j].kind
		case !aok:
			return false
		case !bok:
			return true
		}
		return a < b
	})
	return out, nil
}
