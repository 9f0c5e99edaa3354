package main

// Legacy discovery of CRD groups. In a real cluster /apis (the APIGroupList, not the aggregated
// form) is served by the kube-aggregator, which lists CRD groups via auto-registered
// APIServices. Here the generic server only lists the groups installed in Go, so for a plain
// JSON GET /apis we add the groups of established CRDs. Aggregated discovery (what kubectl
// asks for first) already includes them; clients that use the legacy form, such as kube-rs's
// Discovery, need this.

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionslisters "k8s.io/apiextensions-apiserver/pkg/client/listers/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/version"
)

// crdLister is set once the apiextensions server (and its CRD informer) exists; the handler
// chain is built before that.
var crdLister atomic.Pointer[apiextensionslisters.CustomResourceDefinitionLister]

func withCRDGroupsInLegacyDiscovery(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lister := crdLister.Load()
		if r.Method != http.MethodGet || (r.URL.Path != "/apis" && r.URL.Path != "/apis/") ||
			strings.Contains(r.Header.Get("Accept"), "apidiscovery.k8s.io") || lister == nil {
			h.ServeHTTP(w, r)
			return
		}
		inner := r.Clone(r.Context())
		inner.Header.Set("Accept", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, inner)
		var list metav1.APIGroupList
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &list) != nil {
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		known := map[string]bool{}
		for _, g := range list.Groups {
			known[g.Name] = true
		}
		crds, _ := (*lister).List(labels.Everything())
		versions := map[string][]string{}
		for _, crd := range crds {
			if known[crd.Spec.Group] || !established(crd) {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if v.Served && !contains(versions[crd.Spec.Group], v.Name) {
					versions[crd.Spec.Group] = append(versions[crd.Spec.Group], v.Name)
				}
			}
		}
		groups := make([]string, 0, len(versions))
		for g := range versions {
			groups = append(groups, g)
		}
		sort.Strings(groups)
		for _, g := range groups {
			vs := versions[g]
			sort.Slice(vs, func(i, j int) bool { return version.CompareKubeAwareVersionStrings(vs[i], vs[j]) > 0 })
			group := metav1.APIGroup{Name: g}
			for _, v := range vs {
				group.Versions = append(group.Versions, metav1.GroupVersionForDiscovery{GroupVersion: g + "/" + v, Version: v})
			}
			group.PreferredVersion = group.Versions[0]
			list.Groups = append(list.Groups, group)
		}
		list.Kind, list.APIVersion = "APIGroupList", "v1"
		body, _ := json.Marshal(&list)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
