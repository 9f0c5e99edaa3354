package main

// Storage for the built-in kinds: the apiserver library's generic registry Store (the same
// etcd-backed store, watch cache, preconditions, finalizers, dry-run and server-side apply that
// kube-apiserver's registries are built on) with one small, generic strategy. kube-apiserver's
// per-kind strategies add defaulting and full validation from k8s.io/kubernetes, which is not
// packaged; ours keep what clients observe: object-meta validation, status kept apart from the
// main resource (and spec from the status subresource), metadata.generation, graceful pod
// deletion, immutable roleRef.

import (
	"context"
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// resource describes one served built-in resource.
type resource struct {
	gv                     schema.GroupVersion
	plural, singular, kind string
	namespaced             bool
	nameFn                 apivalidation.ValidateNameFunc
	status                 bool // has a /status subresource: main resource ignores status, status ignores spec
	generation             bool // metadata.generation starts at 1 and is bumped on spec changes
	createOnUpdate         bool // PUT may create (kube allows it for these kinds)
	keepStatusOnCreate     bool // nodes: the kubelet creates them with status
	shortNames, categories []string
	// storage overrides: events.k8s.io Events live with core Events
	storageGV       *schema.GroupVersion
	storageResource *schema.GroupResource
	// onCreate runs after the generic PrepareForCreate (a few kind-specific initial values),
	// onUpdate after the generic PrepareForUpdate of the main resource
	onCreate func(obj runtime.Object)
	onUpdate func(obj, old runtime.Object)
}

func (r *resource) newObj() runtime.Object {
	obj, err := Scheme.New(schema.GroupVersion{Group: r.gv.Group, Version: runtime.APIVersionInternal}.WithKind(r.kind))
	must(err)
	return obj
}

func (r *resource) newList() runtime.Object {
	obj, err := Scheme.New(schema.GroupVersion{Group: r.gv.Group, Version: runtime.APIVersionInternal}.WithKind(r.kind + "List"))
	must(err)
	return obj
}

func (r *resource) apiVersion() fieldpath.APIVersion {
	return fieldpath.APIVersion(r.gv.String())
}

// strategy is the create/update/delete strategy for the main resource.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	r *resource
}

func (s strategy) NamespaceScoped() bool     { return s.r.namespaced }
func (s strategy) AllowCreateOnUpdate() bool { return s.r.createOnUpdate }
func (s strategy) AllowUnconditionalUpdate() bool {
	return true
}
func (s strategy) Canonicalize(runtime.Object) {}
func (s strategy) WarningsOnCreate(context.Context, runtime.Object) []string {
	return nil
}
func (s strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

func (s strategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	if s.r.status && !s.r.keepStatusOnCreate {
		setField(obj, "Status", reflect.Value{})
	}
	if s.r.generation {
		m, _ := meta.Accessor(obj)
		m.SetGeneration(1)
	}
	if s.r.onCreate != nil {
		s.r.onCreate(obj)
	}
}

func (s strategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	if s.r.status {
		setField(obj, "Status", getField(old, "Status"))
	}
	if s.r.generation {
		m, _ := meta.Accessor(obj)
		o, _ := meta.Accessor(old)
		gen := o.GetGeneration()
		if spec := getField(obj, "Spec"); spec.IsValid() && !apiequality.Semantic.DeepEqual(spec.Interface(), getField(old, "Spec").Interface()) {
			gen++
		}
		m.SetGeneration(gen)
	}
	if s.r.onUpdate != nil {
		s.r.onUpdate(obj, old)
	}
}

func (s strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	m, err := meta.Accessor(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	return apivalidation.ValidateObjectMetaAccessor(m, s.r.namespaced, s.r.nameFn, field.NewPath("metadata"))
}

func (s strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	m, _ := meta.Accessor(obj)
	o, _ := meta.Accessor(old)
	errs := apivalidation.ValidateObjectMetaAccessorUpdate(m, o, field.NewPath("metadata"))
	errs = append(errs, s.Validate(ctx, obj)...)
	// kube refuses to change a binding's roleRef (the binding must be deleted and recreated)
	if rr := getField(obj, "RoleRef"); rr.IsValid() {
		if !apiequality.Semantic.DeepEqual(rr.Interface(), getField(old, "RoleRef").Interface()) {
			errs = append(errs, field.Invalid(field.NewPath("roleRef"), rr.Interface(), "cannot change roleRef"))
		}
	}
	return errs
}

// GetResetFields: fields a write to this endpoint does not own (for server-side apply).
func (s strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.r.status {
		return nil
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{s.r.apiVersion(): fieldpath.NewSet(fieldpath.MakePathOrDie("status"))}
}

// podStrategy adds kube's graceful deletion: a pod bound to a node is only marked for deletion
// (deletionTimestamp) and waits for its kubelet, which does not exist here; a pod that is not
// scheduled or has finished, or a delete with gracePeriodSeconds=0, removes it at once.
type podStrategy struct{ strategy }

func (podStrategy) CheckGracefulDelete(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool {
	if options == nil {
		return false
	}
	pod := obj.(*corev1.Pod)
	period := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if options.GracePeriodSeconds != nil {
		period = *options.GracePeriodSeconds
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		period = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		period = 0
	}
	options.GracePeriodSeconds = &period
	return true
}

// statusStrategy is for the /status subresource: only status (and metadata) change.
type statusStrategy struct{ strategy }

func (s statusStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	if spec := getField(old, "Spec"); spec.IsValid() {
		setField(obj, "Spec", spec)
	}
	// generation follows spec, which did not change
	if s.r.generation {
		m, _ := meta.Accessor(obj)
		o, _ := meta.Accessor(old)
		m.SetGeneration(o.GetGeneration())
	}
}

func (s statusStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	m, _ := meta.Accessor(obj)
	o, _ := meta.Accessor(old)
	return apivalidation.ValidateObjectMetaAccessorUpdate(m, o, field.NewPath("metadata"))
}

func (s statusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{s.r.apiVersion(): fieldpath.NewSet(fieldpath.MakePathOrDie("spec"))}
}

// getField returns obj's top-level field NAME, or an invalid Value if it has none.
func getField(obj runtime.Object, name string) reflect.Value {
	v := reflect.ValueOf(obj).Elem()
	f := v.FieldByName(name)
	if !f.IsValid() {
		return reflect.Value{}
	}
	return f
}

// setField sets obj's field NAME to val (a deep copy is not needed: old objects are discarded),
// or to its zero value when val is invalid.
func setField(obj runtime.Object, name string, val reflect.Value) {
	f := reflect.ValueOf(obj).Elem().FieldByName(name)
	if !f.IsValid() {
		return
	}
	if !val.IsValid() {
		f.Set(reflect.Zero(f.Type()))
		return
	}
	f.Set(val)
}

// store wraps the generic Store to add the discovery details kube shows for these kinds.
type store struct {
	*genericregistry.Store
	shortNames, categories []string
}

func (s *store) ShortNames() []string { return s.shortNames }
func (s *store) Categories() []string { return s.categories }

// restOptionsFor gives the etcd options for one resource: JSON in etcd, encoded as its storage
// version, under /registry/<group>/<resource> (core: /registry/<resource>), with the watch cache.
func restOptionsFor(etcd *genericoptions.EtcdOptions, r *resource) generic.RESTOptionsGetter {
	gv := r.gv
	if r.storageGV != nil {
		gv = *r.storageGV
	}
	cfg := etcd.StorageConfig
	cfg.Codec = Codecs.LegacyCodec(gv)
	cfg.EncodeVersioner = gv
	inner := etcd.CreateRESTOptionsGetter(&genericoptions.SimpleStorageFactory{StorageConfig: cfg}, nil)
	gr := schema.GroupResource{Group: r.gv.Group, Resource: r.plural}
	if r.storageResource != nil {
		gr = *r.storageResource
	}
	return fixedResource{inner, gr}
}

type fixedResource struct {
	inner generic.RESTOptionsGetter
	gr    schema.GroupResource
}

func (f fixedResource) GetRESTOptions(_ schema.GroupResource, example runtime.Object) (generic.RESTOptions, error) {
	return f.inner.GetRESTOptions(f.gr, example)
}

// newStores builds the storage map entries for r: "plural" and, if any, "plural/status".
func newStores(etcd *genericoptions.EtcdOptions, r *resource) (map[string]rest.Storage, *genericregistry.Store, error) {
	st := strategy{ObjectTyper: Scheme, NameGenerator: names.SimpleNameGenerator, r: r}
	var create rest.RESTCreateStrategy = st
	var update rest.RESTUpdateStrategy = st
	var del rest.RESTDeleteStrategy = st
	if r.kind == "Pod" && r.gv.Group == "" {
		ps := podStrategy{st}
		create, update, del = ps, ps, ps
	}
	qualified := schema.GroupResource{Group: r.gv.Group, Resource: r.plural}
	s := &genericregistry.Store{
		NewFunc:                   r.newObj,
		NewListFunc:               r.newList,
		DefaultQualifiedResource:  qualified,
		SingularQualifiedResource: schema.GroupResource{Group: r.gv.Group, Resource: r.singular},
		CreateStrategy:            create,
		UpdateStrategy:            update,
		DeleteStrategy:            del,
		ResetFieldsStrategy:       st,
		ReturnDeletedObject:       true,
		TableConvertor:            tableConvertorFor(r, qualified),
	}
	if err := s.CompleteWithOptions(&generic.StoreOptions{
		RESTOptions: restOptionsFor(etcd, r),
		AttrFunc:    attrFunc(r.namespaced),
	}); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", qualified, err)
	}
	out := map[string]rest.Storage{r.plural: &store{Store: s, shortNames: r.shortNames, categories: r.categories}}
	if r.status {
		ss := *s
		sst := statusStrategy{st}
		ss.CreateStrategy = nil
		ss.DeleteStrategy = nil
		ss.UpdateStrategy = sst
		ss.ResetFieldsStrategy = sst
		out[r.plural+"/status"] = &statusREST{store: &ss}
	}
	return out, s, nil
}

// statusREST serves GET/PUT/PATCH of the /status subresource.
type statusREST struct{ store *genericregistry.Store }

var _ = rest.Patcher(&statusREST{})

func (r *statusREST) New() runtime.Object { return r.store.New() }
func (r *statusREST) Destroy()            {}
func (r *statusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}
func (r *statusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	// status updates never create
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}
func (r *statusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}
func (r *statusREST) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, object, tableOptions)
}

// bindingREST is pods/binding: what a scheduler posts to put a pod on a node.
type bindingREST struct{ store *genericregistry.Store }

func (r *bindingREST) New() runtime.Object     { return &corev1.Binding{} }
func (r *bindingREST) Destroy()                {}
func (r *bindingREST) NamespaceScoped() bool   { return true }
func (r *bindingREST) GetSingularName() string { return "binding" }

// legacyBindingREST is the older top-level "bindings" resource: the same, named by the object.
type legacyBindingREST struct{ *bindingREST }

func (r *legacyBindingREST) GetSingularName() string { return "binding" }
func (r *legacyBindingREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	b, ok := obj.(*corev1.Binding)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a Binding object: %T", obj))
	}
	return r.bindingREST.Create(ctx, b.Name, obj, createValidation, options)
}

func (r *bindingREST) Create(ctx context.Context, name string, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	binding, ok := obj.(*corev1.Binding)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a Binding object: %T", obj))
	}
	if name != binding.Name {
		return nil, apierrors.NewBadRequest("name in URL does not match name in Binding object")
	}
	if binding.Target.Name == "" {
		return nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Binding"}, name,
			field.ErrorList{field.Required(field.NewPath("target", "name"), "")})
	}
	if createValidation != nil {
		if err := createValidation(ctx, binding.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	key, err := r.store.KeyFunc(ctx, name)
	if err != nil {
		return nil, err
	}
	dryRun := options != nil && len(options.DryRun) > 0
	err = r.store.Storage.GuaranteedUpdate(ctx, key, &corev1.Pod{}, false, nil, storage.SimpleUpdate(func(obj runtime.Object) (runtime.Object, error) {
		pod := obj.(*corev1.Pod)
		if pod.DeletionTimestamp != nil {
			return nil, apierrors.NewConflict(corev1.Resource("pods/binding"), name, fmt.Errorf("pod %s is being deleted, cannot be assigned to a host", name))
		}
		if pod.Spec.NodeName != "" {
			return nil, apierrors.NewConflict(corev1.Resource("pods/binding"), name, fmt.Errorf("pod %v is already assigned to node %q", name, pod.Spec.NodeName))
		}
		pod.Spec.NodeName = binding.Target.Name
		for k, v := range binding.Annotations {
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[k] = v
		}
		cond := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}
		replaced := false
		for i := range pod.Status.Conditions {
			if pod.Status.Conditions[i].Type == corev1.PodScheduled {
				pod.Status.Conditions[i] = cond
				replaced = true
			}
		}
		if !replaced {
			pod.Status.Conditions = append(pod.Status.Conditions, cond)
		}
		return pod, nil
	}), dryRun, nil)
	if err != nil {
		return nil, err
	}
	return &metav1.Status{Status: metav1.StatusSuccess}, nil
}
