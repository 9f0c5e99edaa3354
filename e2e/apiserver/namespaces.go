package main

// Namespace deletion, as kube does it: a namespace is created with the "kubernetes" finalizer;
// deleting it marks it (deletionTimestamp, phase Terminating; NamespaceLifecycle then refuses new
// objects in it), this small stand-in for kube-controller-manager's namespace controller deletes
// everything in it (built-in kinds and custom resources), and once it is empty removes the
// finalizer, which lets the namespace go.
//
// Difference: pods are deleted with gracePeriodSeconds=0, since there is no kubelet to finish
// them (in a real cluster the namespace stays Terminating until the kubelets are done).

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/wait"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	apiextensionslisters "k8s.io/apiextensions-apiserver/pkg/client/listers/apiextensions/v1"
)

func prepareNamespace(o runtime.Object) {
	ns := o.(*corev1.Namespace)
	ns.Status.Phase = corev1.NamespaceActive
	ns.Spec.Finalizers = []corev1.FinalizerName{corev1.FinalizerKubernetes}
}

type namespaceController struct {
	client  kubernetes.Interface
	dynamic dynamic.Interface
	crds    apiextensionslisters.CustomResourceDefinitionLister
	queue   workqueue.TypedRateLimitingInterface[string]
}

func runNamespaceController(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface,
	factory informers.SharedInformerFactory, crds apiextensionslisters.CustomResourceDefinitionLister) {
	c := &namespaceController{client: client, dynamic: dyn, crds: crds,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 5*time.Second))}
	enqueue := func(obj interface{}) {
		if ns, ok := obj.(*corev1.Namespace); ok && ns.DeletionTimestamp != nil {
			c.queue.Add(ns.Name)
		}
	}
	factory.Core().V1().Namespaces().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj interface{}) { enqueue(obj) },
	})
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	go func() {
		for {
			name, quit := c.queue.Get()
			if quit {
				return
			}
			if err := c.finalize(ctx, name); err != nil {
				klog.V(2).InfoS("namespace not finalized yet", "namespace", name, "err", err)
				c.queue.AddRateLimited(name)
			} else {
				c.queue.Forget(name)
			}
			c.queue.Done(name)
		}
	}()
}

// namespacedBuiltins are deleted from a terminating namespace (events.k8s.io events are the
// core events).
var namespacedBuiltins = []schema.GroupVersionResource{
	{Version: "v1", Resource: "pods"}, {Version: "v1", Resource: "persistentvolumeclaims"},
	{Version: "v1", Resource: "events"}, {Version: "v1", Resource: "configmaps"},
	{Version: "v1", Resource: "secrets"}, {Version: "v1", Resource: "serviceaccounts"},
	{Version: "v1", Resource: "services"}, {Version: "v1", Resource: "endpoints"},
	{Group: "apps", Version: "v1", Resource: "deployments"}, {Group: "apps", Version: "v1", Resource: "daemonsets"},
	{Group: "batch", Version: "v1", Resource: "jobs"}, {Group: "coordination.k8s.io", Version: "v1", Resource: "leases"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
}

func (c *namespaceController) finalize(ctx context.Context, name string) error {
	ns, err := c.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ns.DeletionTimestamp == nil {
		return nil
	}
	if ns.Status.Phase != corev1.NamespaceTerminating {
		ns.Status.Phase = corev1.NamespaceTerminating
		if ns, err = c.client.CoreV1().Namespaces().UpdateStatus(ctx, ns, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	resources := append([]schema.GroupVersionResource(nil), namespacedBuiltins...)
	if crds, err := c.crds.List(labels.Everything()); err == nil {
		for _, crd := range crds {
			if crd.Spec.Scope != "Namespaced" {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if v.Storage {
					resources = append(resources, schema.GroupVersionResource{Group: crd.Spec.Group, Version: v.Name, Resource: crd.Spec.Names.Plural})
				}
			}
		}
	}
	zero := int64(0)
	remaining := 0
	for _, gvr := range resources {
		ri := c.dynamic.Resource(gvr).Namespace(name)
		err := ri.DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		list, err := ri.List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if list != nil {
			remaining += len(list.Items)
		}
	}
	if remaining > 0 {
		return wait.ErrWaitTimeout // objects with finalizers of their own are still there: retry
	}
	var keep []corev1.FinalizerName
	for _, f := range ns.Spec.Finalizers {
		if f != corev1.FinalizerKubernetes {
			keep = append(keep, f)
		}
	}
	ns.Spec.Finalizers = keep
	if _, err = c.client.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	// as kube's controller does: delete again, now that nothing holds the namespace
	err = c.client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// namespaceREST is the namespaces storage with kube's two-step delete.
type namespaceREST struct{ *store }

func (r *namespaceREST) Delete(ctx context.Context, name string, deleteValidation rest.ValidateObjectFunc, options *metav1.DeleteOptions) (runtime.Object, bool, error) {
	obj, err := r.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, false, err
	}
	ns := obj.(*corev1.Namespace)
	if options == nil {
		options = metav1.NewDeleteOptions(0)
	}
	if options.Preconditions == nil {
		options.Preconditions = &metav1.Preconditions{}
	}
	if options.Preconditions.UID == nil {
		options.Preconditions.UID = &ns.UID
	} else if *options.Preconditions.UID != ns.UID {
		return nil, false, apierrors.NewConflict(corev1.Resource("namespaces"), name,
			fmt.Errorf("precondition failed: UID in precondition: %v, UID in object meta: %v", *options.Preconditions.UID, ns.UID))
	}
	if ns.DeletionTimestamp.IsZero() {
		if deleteValidation != nil {
			if err := deleteValidation(ctx, obj); err != nil {
				return nil, false, err
			}
		}
		key, err := r.KeyFunc(ctx, name)
		if err != nil {
			return nil, false, err
		}
		out := r.NewFunc()
		pre := storage.Preconditions{UID: options.Preconditions.UID, ResourceVersion: options.Preconditions.ResourceVersion}
		err = r.Storage.GuaranteedUpdate(ctx, key, out, false, &pre, storage.SimpleUpdate(func(existing runtime.Object) (runtime.Object, error) {
			ns := existing.(*corev1.Namespace)
			if ns.DeletionTimestamp.IsZero() {
				now := metav1.Now()
				ns.DeletionTimestamp = &now
				zero := int64(0)
				ns.DeletionGracePeriodSeconds = &zero
			}
			ns.Status.Phase = corev1.NamespaceTerminating
			return ns, nil
		}), len(options.DryRun) > 0, nil)
		if err != nil {
			return nil, false, err
		}
		if len(out.(*corev1.Namespace).Spec.Finalizers) > 0 {
			return out, false, nil
		}
		return r.Store.Delete(ctx, name, nil, options)
	}
	if len(ns.Spec.Finalizers) != 0 {
		return nil, false, apierrors.NewConflict(corev1.Resource("namespaces"), name,
			fmt.Errorf("The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."))
	}
	return r.Store.Delete(ctx, name, deleteValidation, options)
}

// finalizeREST is namespaces/NAME/finalize: the only way to change spec.finalizers.
type finalizeREST struct{ store *genericregistry.Store }

func (r *finalizeREST) New() runtime.Object { return &corev1.Namespace{} }
func (r *finalizeREST) Destroy()            {}
func (r *finalizeREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}

type finalizeStrategy struct{ strategy }

func (finalizeStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	obj.(*corev1.Namespace).Status = old.(*corev1.Namespace).Status
}

func (s finalizeStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	m, _ := meta.Accessor(obj)
	o, _ := meta.Accessor(old)
	return apivalidation.ValidateObjectMetaAccessorUpdate(m, o, field.NewPath("metadata"))
}

func (finalizeStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{"v1": fieldpath.NewSet(fieldpath.MakePathOrDie("status"))}
}

// namespaceStorage replaces the generic namespaces storage.
func namespaceStorage(m map[string]rest.Storage, s *genericregistry.Store) {
	m["namespaces"] = &namespaceREST{m["namespaces"].(*store)}
	fs := *s
	st := s.UpdateStrategy.(strategy)
	fs.UpdateStrategy = finalizeStrategy{st}
	fs.ResetFieldsStrategy = finalizeStrategy{st}
	fs.CreateStrategy = nil
	fs.DeleteStrategy = nil
	m["namespaces/finalize"] = &finalizeREST{store: &fs}
}
