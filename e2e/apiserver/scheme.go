package main

// The scheme for the built-in API groups this server serves.
//
// A real kube-apiserver has an "internal" (hub) Go type for every kind and generated conversions
// between it and each served version; those live in k8s.io/kubernetes, which is not packaged.
// We serve exactly one version per group, so the versioned type from k8s.io/api IS the hub: each
// kind is registered twice, as GROUP/v1 and as GROUP/__internal, with the same Go type. The
// apiserver's handlers then "convert" by copying and re-stamping the kind.
//
// One exception mirrors kube: events.k8s.io/v1 Events are stored as core/v1 Events (the same
// etcd keys), so an event written by kube-rs's Recorder (events.k8s.io/v1) is listed by
// `kubectl get events` (core/v1), and vice versa. For that the events.k8s.io hub is
// *corev1.Event, with hand-written conversions below (the same field mapping as kube's
// pkg/apis/events/v1/conversion.go).

import (
	"fmt"
	"reflect"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/conversion"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

var (
	Scheme = runtime.NewScheme()
	Codecs = serializer.NewCodecFactory(Scheme)
)

// builtinGroups are the served group versions, each with the function that registers its kinds.
var builtinGroups = []struct {
	gv  schema.GroupVersion
	add func(*runtime.Scheme) error
}{
	{corev1.SchemeGroupVersion, corev1.AddToScheme},
	{appsv1.SchemeGroupVersion, appsv1.AddToScheme},
	{batchv1.SchemeGroupVersion, batchv1.AddToScheme},
	{coordinationv1.SchemeGroupVersion, coordinationv1.AddToScheme},
	{eventsv1.SchemeGroupVersion, eventsv1.AddToScheme},
	{rbacv1.SchemeGroupVersion, rbacv1.AddToScheme},
	{authenticationv1.SchemeGroupVersion, authenticationv1.AddToScheme},
	{authorizationv1.SchemeGroupVersion, authorizationv1.AddToScheme},
}

func init() {
	for _, g := range builtinGroups {
		if err := addGroup(g.gv, g.add); err != nil {
			panic(err)
		}
	}
	// known but not served as a group: autoscaling/v1 Scale, for deployments/scale
	must(addGroup(autoscalingv1.SchemeGroupVersion, autoscalingv1.AddToScheme))
	// Options types and the unversioned meta kinds, as apiextensions-apiserver does for "v1".
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	Scheme.AddUnversionedTypes(schema.GroupVersion{Version: "v1"},
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})

	must(addEventConversions(Scheme))
	must(addFieldLabelConversions(Scheme))
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// addGroup registers gv's kinds as external and as internal (same Go type), plus an identity
// conversion for each type (Scheme.Convert between two objects of one type needs one).
func addGroup(gv schema.GroupVersion, add func(*runtime.Scheme) error) error {
	if err := add(Scheme); err != nil {
		return err
	}
	// The kinds metav1.AddToGroupVersion puts in every group (ListOptions, WatchEvent, ...) are
	// not resources: they stay external only.
	metaOnly := runtime.NewScheme()
	metav1.AddToGroupVersion(metaOnly, gv)
	internal := schema.GroupVersion{Group: gv.Group, Version: runtime.APIVersionInternal}
	for kind, t := range Scheme.KnownTypes(gv) {
		if _, isMeta := metaOnly.KnownTypes(gv)[kind]; isMeta {
			continue
		}
		if gv == eventsv1.SchemeGroupVersion && (kind == "Event" || kind == "EventList") {
			continue // hub is corev1.Event, registered below
		}
		obj := reflect.New(t).Interface().(runtime.Object)
		Scheme.AddKnownTypeWithName(internal.WithKind(kind), obj)
		if err := addIdentityConversion(Scheme, t); err != nil {
			return err
		}
	}
	if gv == eventsv1.SchemeGroupVersion {
		Scheme.AddKnownTypeWithName(internal.WithKind("Event"), &corev1.Event{})
		Scheme.AddKnownTypeWithName(internal.WithKind("EventList"), &corev1.EventList{})
	}
	return Scheme.SetVersionPriority(gv)
}

func addIdentityConversion(s *runtime.Scheme, t reflect.Type) error {
	a := reflect.New(t).Interface()
	b := reflect.New(t).Interface()
	return s.AddConversionFunc(a, b, func(in, out interface{}, _ conversion.Scope) error {
		cp := in.(runtime.Object).DeepCopyObject()
		reflect.ValueOf(out).Elem().Set(reflect.ValueOf(cp).Elem())
		return nil
	})
}

// addEventConversions maps events.k8s.io/v1 Event <-> core/v1 Event (the storage form).
func addEventConversions(s *runtime.Scheme) error {
	if err := s.AddConversionFunc((*eventsv1.Event)(nil), (*corev1.Event)(nil), func(a, b interface{}, _ conversion.Scope) error {
		eventsToCore(a.(*eventsv1.Event), b.(*corev1.Event))
		return nil
	}); err != nil {
		return err
	}
	if err := s.AddConversionFunc((*corev1.Event)(nil), (*eventsv1.Event)(nil), func(a, b interface{}, _ conversion.Scope) error {
		coreToEvents(a.(*corev1.Event), b.(*eventsv1.Event))
		return nil
	}); err != nil {
		return err
	}
	if err := s.AddConversionFunc((*eventsv1.EventList)(nil), (*corev1.EventList)(nil), func(a, b interface{}, _ conversion.Scope) error {
		in, out := a.(*eventsv1.EventList), b.(*corev1.EventList)
		out.ListMeta = in.ListMeta
		out.Items = make([]corev1.Event, len(in.Items))
		for i := range in.Items {
			eventsToCore(&in.Items[i], &out.Items[i])
		}
		return nil
	}); err != nil {
		return err
	}
	return s.AddConversionFunc((*corev1.EventList)(nil), (*eventsv1.EventList)(nil), func(a, b interface{}, _ conversion.Scope) error {
		in, out := a.(*corev1.EventList), b.(*eventsv1.EventList)
		out.ListMeta = in.ListMeta
		out.Items = make([]eventsv1.Event, len(in.Items))
		for i := range in.Items {
			coreToEvents(&in.Items[i], &out.Items[i])
		}
		return nil
	})
}

func eventsToCore(in *eventsv1.Event, out *corev1.Event) {
	in = in.DeepCopy()
	*out = corev1.Event{
		ObjectMeta:          in.ObjectMeta,
		InvolvedObject:      in.Regarding,
		Reason:              in.Reason,
		Message:             in.Note,
		Source:              in.DeprecatedSource,
		FirstTimestamp:      in.DeprecatedFirstTimestamp,
		LastTimestamp:       in.DeprecatedLastTimestamp,
		Count:               in.DeprecatedCount,
		Type:                in.Type,
		EventTime:           in.EventTime,
		Action:              in.Action,
		Related:             in.Related,
		ReportingController: in.ReportingController,
		ReportingInstance:   in.ReportingInstance,
	}
	if in.Series != nil {
		out.Series = &corev1.EventSeries{Count: in.Series.Count, LastObservedTime: in.Series.LastObservedTime}
	}
}

func coreToEvents(in *corev1.Event, out *eventsv1.Event) {
	in = in.DeepCopy()
	*out = eventsv1.Event{
		ObjectMeta:               in.ObjectMeta,
		EventTime:                in.EventTime,
		ReportingController:      in.ReportingController,
		ReportingInstance:        in.ReportingInstance,
		Action:                   in.Action,
		Reason:                   in.Reason,
		Regarding:                in.InvolvedObject,
		Related:                  in.Related,
		Note:                     in.Message,
		Type:                     in.Type,
		DeprecatedSource:         in.Source,
		DeprecatedFirstTimestamp: in.FirstTimestamp,
		DeprecatedLastTimestamp:  in.LastTimestamp,
		DeprecatedCount:          in.Count,
	}
	if in.Series != nil {
		out.Series = &eventsv1.EventSeries{Count: in.Series.Count, LastObservedTime: in.Series.LastObservedTime}
	}
}

// Field selectors. The apiserver only accepts a field selector label the kind's conversion
// function knows; these are the labels kube-apiserver accepts for these kinds (see
// k8s.io/kubernetes pkg/apis/*/v1/conversion.go). The values are computed in fields.go.
var selectableFields = map[schema.GroupVersionKind][]string{
	corev1.SchemeGroupVersion.WithKind("Pod"): {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
		"spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs",
		"status.nominatedNodeName"},
	corev1.SchemeGroupVersion.WithKind("Event"): {"involvedObject.kind", "involvedObject.namespace",
		"involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion",
		"involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent",
		"source", "type"},
	corev1.SchemeGroupVersion.WithKind("Namespace"):             {"status.phase"},
	corev1.SchemeGroupVersion.WithKind("Secret"):                {"type"},
	corev1.SchemeGroupVersion.WithKind("Node"):                  {"spec.unschedulable"},
	corev1.SchemeGroupVersion.WithKind("PersistentVolume"):      {},
	corev1.SchemeGroupVersion.WithKind("PersistentVolumeClaim"): {},
	corev1.SchemeGroupVersion.WithKind("Service"):               {"spec.clusterIP", "spec.type"},
	corev1.SchemeGroupVersion.WithKind("ServiceAccount"):        {},
	corev1.SchemeGroupVersion.WithKind("ConfigMap"):             {},
	corev1.SchemeGroupVersion.WithKind("Endpoints"):             {},
	batchv1.SchemeGroupVersion.WithKind("Job"):                  {"status.successful"},
	appsv1.SchemeGroupVersion.WithKind("DaemonSet"):             {},
	appsv1.SchemeGroupVersion.WithKind("Deployment"):            {},
}

// events.k8s.io/v1 selectors name fields in events.k8s.io terms; storage is core/v1.
var eventsV1FieldMap = map[string]string{
	"reason":                    "reason",
	"type":                      "type",
	"reportingController":       "reportingComponent",
	"regarding.kind":            "involvedObject.kind",
	"regarding.namespace":       "involvedObject.namespace",
	"regarding.name":            "involvedObject.name",
	"regarding.uid":             "involvedObject.uid",
	"regarding.apiVersion":      "involvedObject.apiVersion",
	"regarding.resourceVersion": "involvedObject.resourceVersion",
	"regarding.fieldPath":       "involvedObject.fieldPath",
}

func addFieldLabelConversions(s *runtime.Scheme) error {
	for gvk, labels := range selectableFields {
		allowed := map[string]bool{"metadata.name": true, "metadata.namespace": true}
		for _, l := range labels {
			allowed[l] = true
		}
		kind := gvk.Kind
		if err := s.AddFieldLabelConversionFunc(gvk, func(label, value string) (string, string, error) {
			if allowed[label] {
				return label, value, nil
			}
			return "", "", fmt.Errorf("field label not supported: %s", label)
		}); err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
	}
	return s.AddFieldLabelConversionFunc(eventsv1.SchemeGroupVersion.WithKind("Event"), func(label, value string) (string, string, error) {
		if label == "metadata.name" || label == "metadata.namespace" {
			return label, value, nil
		}
		if to, ok := eventsV1FieldMap[label]; ok {
			return to, value, nil
		}
		return "", "", fmt.Errorf("field label not supported: %s", label)
	})
}
