package main

// The built-in resources served, and their installation on the generic API server.

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
)

var (
	dnsSubdomain = apivalidation.NameIsDNSSubdomain
	dnsLabel     = apivalidation.NameIsDNSLabel
	dns1035      = apivalidation.NameIsDNS1035Label
	pathSegment  = path.ValidatePathSegmentName // RBAC names may contain ':' (system:foo)
	core         = corev1.SchemeGroupVersion
	all          = []string{"all"}
)

var builtinResources = []*resource{
	{gv: core, plural: "namespaces", singular: "namespace", kind: "Namespace", nameFn: dnsLabel, status: true,
		shortNames: []string{"ns"}, onCreate: prepareNamespace, onUpdate: func(o, old runtime.Object) {
			// spec.finalizers only change through namespaces/finalize
			o.(*corev1.Namespace).Spec.Finalizers = old.(*corev1.Namespace).Spec.Finalizers
		}},
	{gv: core, plural: "pods", singular: "pod", kind: "Pod", namespaced: true, nameFn: dnsSubdomain, status: true,
		generation: true, shortNames: []string{"po"}, categories: all, onCreate: func(o runtime.Object) {
			p := o.(*corev1.Pod)
			p.Status = corev1.PodStatus{Phase: corev1.PodPending}
		}},
	{gv: core, plural: "persistentvolumeclaims", singular: "persistentvolumeclaim", kind: "PersistentVolumeClaim",
		namespaced: true, nameFn: dnsSubdomain, status: true, shortNames: []string{"pvc"}, onCreate: func(o runtime.Object) {
			o.(*corev1.PersistentVolumeClaim).Status.Phase = corev1.ClaimPending
		}},
	{gv: core, plural: "persistentvolumes", singular: "persistentvolume", kind: "PersistentVolume", nameFn: dnsSubdomain,
		status: true, shortNames: []string{"pv"}, onCreate: func(o runtime.Object) {
			o.(*corev1.PersistentVolume).Status.Phase = corev1.VolumePending
		}},
	{gv: core, plural: "events", singular: "event", kind: "Event", namespaced: true, nameFn: dnsSubdomain,
		createOnUpdate: true, shortNames: []string{"ev"}},
	{gv: core, plural: "nodes", singular: "node", kind: "Node", nameFn: dnsSubdomain, status: true,
		keepStatusOnCreate: true, shortNames: []string{"no"}},
	{gv: core, plural: "configmaps", singular: "configmap", kind: "ConfigMap", namespaced: true, nameFn: dnsSubdomain,
		shortNames: []string{"cm"}},
	{gv: core, plural: "secrets", singular: "secret", kind: "Secret", namespaced: true, nameFn: dnsSubdomain,
		onCreate: func(o runtime.Object) {
			if s := o.(*corev1.Secret); s.Type == "" {
				s.Type = corev1.SecretTypeOpaque // the one defaulting clients rely on
			}
		}},
	{gv: core, plural: "serviceaccounts", singular: "serviceaccount", kind: "ServiceAccount", namespaced: true,
		nameFn: dnsSubdomain, createOnUpdate: true, shortNames: []string{"sa"}},
	{gv: core, plural: "services", singular: "service", kind: "Service", namespaced: true, nameFn: dns1035, status: true,
		createOnUpdate: true, shortNames: []string{"svc"}, categories: all},
	{gv: core, plural: "endpoints", singular: "endpoints", kind: "Endpoints", namespaced: true, nameFn: dnsSubdomain,
		createOnUpdate: true, shortNames: []string{"ep"}},

	{gv: appsv1.SchemeGroupVersion, plural: "deployments", singular: "deployment", kind: "Deployment", namespaced: true,
		nameFn: dnsSubdomain, status: true, generation: true, shortNames: []string{"deploy"}, categories: all},
	{gv: appsv1.SchemeGroupVersion, plural: "daemonsets", singular: "daemonset", kind: "DaemonSet", namespaced: true,
		nameFn: dnsSubdomain, status: true, generation: true, shortNames: []string{"ds"}, categories: all},
	{gv: batchv1.SchemeGroupVersion, plural: "jobs", singular: "job", kind: "Job", namespaced: true,
		nameFn: dnsSubdomain, status: true, generation: true, categories: all},

	{gv: coordinationv1.SchemeGroupVersion, plural: "leases", singular: "lease", kind: "Lease", namespaced: true,
		nameFn: dnsSubdomain, createOnUpdate: true},
	// events.k8s.io/v1 Events are core Events in etcd (see scheme.go)
	{gv: eventsv1.SchemeGroupVersion, plural: "events", singular: "event", kind: "Event", namespaced: true,
		nameFn: dnsSubdomain, createOnUpdate: true, shortNames: []string{"ev"},
		storageGV: &core, storageResource: &schema.GroupResource{Resource: "events"}},

	{gv: rbacv1.SchemeGroupVersion, plural: "roles", singular: "role", kind: "Role", namespaced: true,
		nameFn: pathSegment, createOnUpdate: true},
	{gv: rbacv1.SchemeGroupVersion, plural: "rolebindings", singular: "rolebinding", kind: "RoleBinding",
		namespaced: true, nameFn: pathSegment, createOnUpdate: true},
	{gv: rbacv1.SchemeGroupVersion, plural: "clusterroles", singular: "clusterrole", kind: "ClusterRole",
		nameFn: pathSegment, createOnUpdate: true},
	{gv: rbacv1.SchemeGroupVersion, plural: "clusterrolebindings", singular: "clusterrolebinding",
		kind: "ClusterRoleBinding", nameFn: pathSegment, createOnUpdate: true},
}

// installBuiltins installs the built-in groups on s. extra adds storage that is not a plain
// store (reviews, pods/binding, pods/portforward, serviceaccounts/token), keyed by group then resource path.
func installBuiltins(s *genericapiserver.GenericAPIServer, etcd *genericoptions.EtcdOptions, auth *authState) error {
	byGroup := map[string]map[string]rest.Storage{}
	stores := map[string]*genericregistry.Store{}
	for _, r := range builtinResources {
		m, st, err := newStores(etcd, r)
		if err != nil {
			return err
		}
		if byGroup[r.gv.Group] == nil {
			byGroup[r.gv.Group] = map[string]rest.Storage{}
		}
		for k, v := range m {
			byGroup[r.gv.Group][k] = v
		}
		stores[r.gv.Group+"/"+r.plural] = st
	}
	namespaceStorage(byGroup[""], stores["/namespaces"])
	byGroup["apps"]["deployments/scale"] = &scaleREST{store: stores["apps/deployments"]}
	binding := &bindingREST{store: stores["/pods"]}
	byGroup[""]["pods/binding"] = binding
	byGroup[""]["bindings"] = &legacyBindingREST{binding}
	byGroup[""]["pods/portforward"] = &portForwardREST{pods: stores["/pods"], nodes: stores["/nodes"], authz: auth.authz}
	byGroup[""]["serviceaccounts/token"] = &tokenRequestREST{sa: stores["/serviceaccounts"], auth: auth}
	byGroup[authenticationv1.GroupName] = map[string]rest.Storage{
		"tokenreviews":       &tokenReviewREST{auth: auth},
		"selfsubjectreviews": &selfSubjectReviewREST{},
	}
	byGroup[authorizationv1.GroupName] = map[string]rest.Storage{
		"subjectaccessreviews":      &sarREST{auth: auth},
		"selfsubjectaccessreviews":  &selfSARREST{auth: auth},
		"localsubjectaccessreviews": &localSARREST{auth: auth},
	}

	var infos []*genericapiserver.APIGroupInfo
	for _, g := range builtinGroups {
		info := genericapiserver.NewDefaultAPIGroupInfo(g.gv.Group, Scheme, metav1.ParameterCodec, Codecs)
		info.VersionedResourcesStorageMap[g.gv.Version] = byGroup[g.gv.Group]
		if g.gv.Group == "" {
			if err := s.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, &info); err != nil {
				return fmt.Errorf("installing core/v1: %w", err)
			}
			continue
		}
		infos = append(infos, &info)
	}
	return s.InstallAPIGroups(infos...)
}
