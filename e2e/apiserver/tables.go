package main

// Server-side printing (`kubectl get`) of a few built-in kinds, with the main columns of
// kube-apiserver's printers (pkg/printers/internalversion, not packaged). Other kinds print
// NAME and CREATED AT.

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apiserver/pkg/registry/rest"
)

type printer struct {
	columns []metav1.TableColumnDefinition
	row     func(obj runtime.Object) []interface{}
}

func col(name, typ string, priority int32) metav1.TableColumnDefinition {
	return metav1.TableColumnDefinition{Name: name, Type: typ, Priority: priority}
}

var nameCol = metav1.TableColumnDefinition{Name: "Name", Type: "string", Format: "name"}

func age(t metav1.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(time.Since(t.Time))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

var printers = map[string]printer{
	"Pod": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Ready", "string", 0), col("Status", "string", 0),
			col("Restarts", "string", 0), col("Age", "string", 0), col("IP", "string", 1), col("Node", "string", 1)},
		row: func(o runtime.Object) []interface{} {
			p := o.(*corev1.Pod)
			ready, restarts := 0, int32(0)
			for _, c := range p.Status.ContainerStatuses {
				if c.Ready {
					ready++
				}
				restarts += c.RestartCount
			}
			status := string(p.Status.Phase)
			if p.Status.Reason != "" {
				status = p.Status.Reason
			}
			if p.DeletionTimestamp != nil {
				status = "Terminating"
			}
			return []interface{}{p.Name, fmt.Sprintf("%d/%d", ready, len(p.Spec.Containers)), status,
				fmt.Sprint(restarts), age(p.CreationTimestamp), orNone(p.Status.PodIP), orNone(p.Spec.NodeName)}
		},
	},
	"Namespace": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Status", "string", 0), col("Age", "string", 0)},
		row: func(o runtime.Object) []interface{} {
			n := o.(*corev1.Namespace)
			return []interface{}{n.Name, string(n.Status.Phase), age(n.CreationTimestamp)}
		},
	},
	"Node": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Status", "string", 0), col("Age", "string", 0),
			col("Version", "string", 0)},
		row: func(o runtime.Object) []interface{} {
			n := o.(*corev1.Node)
			status := "Unknown"
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady {
					status = map[corev1.ConditionStatus]string{corev1.ConditionTrue: "Ready"}[c.Status]
					if status == "" {
						status = "NotReady"
					}
				}
			}
			if n.Spec.Unschedulable {
				status += ",SchedulingDisabled"
			}
			return []interface{}{n.Name, status, age(n.CreationTimestamp), n.Status.NodeInfo.KubeletVersion}
		},
	},
	"Deployment": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Ready", "string", 0), col("Up-to-date", "integer", 0),
			col("Available", "integer", 0), col("Age", "string", 0)},
		row: func(o runtime.Object) []interface{} {
			d := o.(*appsv1.Deployment)
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			return []interface{}{d.Name, fmt.Sprintf("%d/%d", d.Status.ReadyReplicas, want), d.Status.UpdatedReplicas,
				d.Status.AvailableReplicas, age(d.CreationTimestamp)}
		},
	},
	"DaemonSet": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Desired", "integer", 0), col("Current", "integer", 0),
			col("Ready", "integer", 0), col("Up-to-date", "integer", 0), col("Available", "integer", 0), col("Age", "string", 0)},
		row: func(o runtime.Object) []interface{} {
			d := o.(*appsv1.DaemonSet)
			s := d.Status
			return []interface{}{d.Name, s.DesiredNumberScheduled, s.CurrentNumberScheduled, s.NumberReady,
				s.UpdatedNumberScheduled, s.NumberAvailable, age(d.CreationTimestamp)}
		},
	},
	"Job": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Status", "string", 0), col("Completions", "string", 0),
			col("Age", "string", 0)},
		row: func(o runtime.Object) []interface{} {
			j := o.(*batchv1.Job)
			status := "Running"
			for _, c := range j.Status.Conditions {
				if c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) {
					status = string(c.Type)
				}
			}
			want := int32(1)
			if j.Spec.Completions != nil {
				want = *j.Spec.Completions
			}
			return []interface{}{j.Name, status, fmt.Sprintf("%d/%d", j.Status.Succeeded, want), age(j.CreationTimestamp)}
		},
	},
	"Service": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Type", "string", 0), col("Cluster-IP", "string", 0),
			col("Port(s)", "string", 0), col("Age", "string", 0)},
		row: func(o runtime.Object) []interface{} {
			s := o.(*corev1.Service)
			var ports []string
			for _, p := range s.Spec.Ports {
				ports = append(ports, fmt.Sprintf("%d/%s", p.Port, orDefault(string(p.Protocol), "TCP")))
			}
			return []interface{}{s.Name, orDefault(string(s.Spec.Type), "ClusterIP"), orNone(s.Spec.ClusterIP),
				orNone(strings.Join(ports, ",")), age(s.CreationTimestamp)}
		},
	},
	"Lease": {
		columns: []metav1.TableColumnDefinition{nameCol, col("Holder", "string", 0), col("Age", "string", 0)},
		row: func(o runtime.Object) []interface{} {
			l := o.(*coordinationv1.Lease)
			holder := ""
			if l.Spec.HolderIdentity != nil {
				holder = *l.Spec.HolderIdentity
			}
			return []interface{}{l.Name, holder, age(l.CreationTimestamp)}
		},
	},
	"Event": {
		columns: []metav1.TableColumnDefinition{col("Last Seen", "string", 0), col("Type", "string", 0),
			col("Reason", "string", 0), col("Object", "string", 0), col("Message", "string", 0),
			{Name: "Name", Type: "string", Format: "name", Priority: 1}},
		row: func(o runtime.Object) []interface{} {
			e := o.(*corev1.Event)
			last := e.LastTimestamp
			if last.IsZero() {
				last = metav1.NewTime(e.EventTime.Time)
			}
			obj := strings.ToLower(e.InvolvedObject.Kind) + "/" + e.InvolvedObject.Name
			return []interface{}{age(last), e.Type, e.Reason, obj, strings.TrimSpace(e.Message), e.Name}
		},
	},
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

type tableConvertor struct{ p printer }

func (t tableConvertor) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	table := &metav1.Table{ColumnDefinitions: t.p.columns}
	add := func(obj runtime.Object) error {
		table.Rows = append(table.Rows, metav1.TableRow{Cells: t.p.row(obj), Object: runtime.RawExtension{Object: obj}})
		return nil
	}
	if meta.IsListType(object) {
		if err := meta.EachListItem(object, add); err != nil {
			return nil, err
		}
		if l, err := meta.ListAccessor(object); err == nil {
			table.ResourceVersion = l.GetResourceVersion()
			table.Continue = l.GetContinue()
			table.RemainingItemCount = l.GetRemainingItemCount()
		}
	} else {
		if err := add(object); err != nil {
			return nil, err
		}
		if m, err := meta.Accessor(object); err == nil {
			table.ResourceVersion = m.GetResourceVersion()
		}
	}
	if opt, ok := tableOptions.(*metav1.TableOptions); ok && opt != nil && opt.NoHeaders {
		table.ColumnDefinitions = nil
	}
	return table, nil
}

func tableConvertorFor(r *resource, qualified schema.GroupResource) rest.TableConvertor {
	// (events.k8s.io Events are *corev1.Event here, so one printer serves both groups)
	if p, ok := printers[r.kind]; ok {
		return tableConvertor{p: p}
	}
	return rest.NewDefaultTableConvertor(qualified)
}
