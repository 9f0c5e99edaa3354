package main

// Field values for field selectors (list/watch ?fieldSelector=...), one function per kind. The
// generic registry matches selectors against the fields.Set these return; they follow
// kube-apiserver's per-kind GetAttrs (pkg/registry/*/strategy.go).

import (
	"fmt"
	"strconv"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// attrFunc returns the storage.AttrFunc for objects of this store.
func attrFunc(namespaced bool) func(runtime.Object) (labels.Set, fields.Set, error) {
	return func(obj runtime.Object) (labels.Set, fields.Set, error) {
		m, err := meta.Accessor(obj)
		if err != nil {
			return nil, nil, err
		}
		var fs fields.Set
		switch o := obj.(type) {
		case *corev1.Pod:
			ips := make([]string, 0, len(o.Status.PodIPs))
			for _, ip := range o.Status.PodIPs {
				ips = append(ips, ip.IP)
			}
			fs = fields.Set{
				"spec.nodeName":            o.Spec.NodeName,
				"spec.restartPolicy":       string(o.Spec.RestartPolicy),
				"spec.schedulerName":       o.Spec.SchedulerName,
				"spec.serviceAccountName":  o.Spec.ServiceAccountName,
				"spec.hostNetwork":         strconv.FormatBool(o.Spec.HostNetwork),
				"status.phase":             string(o.Status.Phase),
				"status.podIP":             o.Status.PodIP,
				"status.podIPs":            strings.Join(ips, ","),
				"status.nominatedNodeName": o.Status.NominatedNodeName,
			}
		case *corev1.Event:
			source := o.Source.Component
			if source == "" {
				source = o.ReportingController
			}
			fs = fields.Set{
				"involvedObject.kind":            o.InvolvedObject.Kind,
				"involvedObject.namespace":       o.InvolvedObject.Namespace,
				"involvedObject.name":            o.InvolvedObject.Name,
				"involvedObject.uid":             string(o.InvolvedObject.UID),
				"involvedObject.apiVersion":      o.InvolvedObject.APIVersion,
				"involvedObject.resourceVersion": o.InvolvedObject.ResourceVersion,
				"involvedObject.fieldPath":       o.InvolvedObject.FieldPath,
				"reason":                         o.Reason,
				"reportingComponent":             o.ReportingController,
				"source":                         source,
				"type":                           o.Type,
			}
		case *corev1.Namespace:
			fs = fields.Set{"status.phase": string(o.Status.Phase)}
		case *corev1.Secret:
			fs = fields.Set{"type": string(o.Type)}
		case *corev1.Node:
			fs = fields.Set{"spec.unschedulable": strconv.FormatBool(o.Spec.Unschedulable)}
		case *corev1.Service:
			fs = fields.Set{"spec.clusterIP": o.Spec.ClusterIP, "spec.type": string(o.Spec.Type)}
		case *batchv1.Job:
			fs = fields.Set{"status.successful": fmt.Sprint(o.Status.Succeeded)}
		}
		if fs == nil {
			fs = fields.Set{}
		}
		fs["metadata.name"] = m.GetName()
		if namespaced {
			fs["metadata.namespace"] = m.GetNamespace()
		}
		return labels.Set(m.GetLabels()), fs, nil
	}
}
