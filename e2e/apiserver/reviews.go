package main

// The create-only review resources: TokenReview and SelfSubjectReview (authentication.k8s.io),
// SubjectAccessReview, SelfSubjectAccessReview and LocalSubjectAccessReview
// (authorization.k8s.io). They answer from the same authenticator and authorizer that guard this
// server's own requests, as kube-apiserver's do. Nothing is stored.

import (
	"context"
	"fmt"
	"net/http"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
)

func validateCreate(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc) error {
	if createValidation != nil {
		return createValidation(ctx, obj.DeepCopyObject())
	}
	return nil
}

// --- authentication.k8s.io

type tokenReviewREST struct{ auth *authState }

var _ rest.Creater = &tokenReviewREST{}

func (r *tokenReviewREST) New() runtime.Object     { return &authenticationv1.TokenReview{} }
func (r *tokenReviewREST) Destroy()                {}
func (r *tokenReviewREST) NamespaceScoped() bool   { return false }
func (r *tokenReviewREST) GetSingularName() string { return "tokenreview" }

func (r *tokenReviewREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	tr, ok := obj.(*authenticationv1.TokenReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a TokenReview: %T", obj))
	}
	if tr.Spec.Token == "" {
		return nil, apierrors.NewBadRequest("token is required for TokenReview in authentication")
	}
	if err := validateCreate(ctx, obj, createValidation); err != nil {
		return nil, err
	}
	auds := authenticator.Audiences(tr.Spec.Audiences)
	if len(auds) == 0 {
		auds = apiAudiences
	}
	req := (&http.Request{Header: http.Header{"Authorization": {"Bearer " + tr.Spec.Token}}}).
		WithContext(authenticator.WithAudiences(ctx, auds))
	resp, ok, err := r.auth.bearer.AuthenticateRequest(req)
	out := tr.DeepCopy()
	out.Status = authenticationv1.TokenReviewStatus{Authenticated: ok}
	if err != nil {
		out.Status.Error = err.Error()
	}
	if ok && resp != nil && resp.User != nil {
		out.Status.User = userInfo(resp.User)
		out.Status.Audiences = resp.Audiences
	}
	return out, nil
}

func userInfo(u user.Info) authenticationv1.UserInfo {
	ui := authenticationv1.UserInfo{Username: u.GetName(), UID: u.GetUID(), Groups: u.GetGroups()}
	if extra := u.GetExtra(); len(extra) > 0 {
		ui.Extra = map[string]authenticationv1.ExtraValue{}
		for k, v := range extra {
			ui.Extra[k] = v
		}
	}
	return ui
}

type selfSubjectReviewREST struct{}

func (r *selfSubjectReviewREST) New() runtime.Object {
	return &authenticationv1.SelfSubjectReview{}
}
func (r *selfSubjectReviewREST) Destroy()                {}
func (r *selfSubjectReviewREST) NamespaceScoped() bool   { return false }
func (r *selfSubjectReviewREST) GetSingularName() string { return "selfsubjectreview" }
func (r *selfSubjectReviewREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	u, ok := genericapirequest.UserFrom(ctx)
	if !ok {
		return nil, apierrors.NewBadRequest("no user present on request")
	}
	if err := validateCreate(ctx, obj, createValidation); err != nil {
		return nil, err
	}
	out := obj.(*authenticationv1.SelfSubjectReview).DeepCopy()
	out.Status.UserInfo = userInfo(u)
	return out, nil
}

// --- authorization.k8s.io

func attributes(u user.Info, ra *authorizationv1.ResourceAttributes, nra *authorizationv1.NonResourceAttributes) authorizer.AttributesRecord {
	if ra != nil {
		version := ra.Version
		if version == "" {
			version = "*"
		}
		return authorizer.AttributesRecord{User: u, Verb: ra.Verb, Namespace: ra.Namespace, APIGroup: ra.Group,
			APIVersion: version, Resource: ra.Resource, Subresource: ra.Subresource, Name: ra.Name, ResourceRequest: true}
	}
	return authorizer.AttributesRecord{User: u, Verb: nra.Verb, Path: nra.Path}
}

func review(ctx context.Context, authz authorizer.Authorizer, attrs authorizer.AttributesRecord) authorizationv1.SubjectAccessReviewStatus {
	decision, reason, err := authz.Authorize(ctx, attrs)
	st := authorizationv1.SubjectAccessReviewStatus{
		Allowed: decision == authorizer.DecisionAllow,
		Denied:  decision == authorizer.DecisionDeny,
		Reason:  reason,
	}
	if err != nil {
		st.EvaluationError = err.Error()
	}
	return st
}

func exactlyOneAttributes(ra *authorizationv1.ResourceAttributes, nra *authorizationv1.NonResourceAttributes) field.ErrorList {
	if (ra == nil) == (nra == nil) {
		return field.ErrorList{field.Invalid(field.NewPath("spec", "resourceAttributes"), ra,
			`exactly one of nonResourceAttributes or resourceAttributes must be specified`)}
	}
	return nil
}

var authzGK = func(kind string) schema.GroupKind {
	return schema.GroupKind{Group: authorizationv1.GroupName, Kind: kind}
}

type sarREST struct{ auth *authState }

func (r *sarREST) New() runtime.Object     { return &authorizationv1.SubjectAccessReview{} }
func (r *sarREST) Destroy()                {}
func (r *sarREST) NamespaceScoped() bool   { return false }
func (r *sarREST) GetSingularName() string { return "subjectaccessreview" }
func (r *sarREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	sar, ok := obj.(*authorizationv1.SubjectAccessReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a SubjectAccessReview: %T", obj))
	}
	errs := exactlyOneAttributes(sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes)
	if sar.Spec.User == "" && len(sar.Spec.Groups) == 0 {
		errs = append(errs, field.Invalid(field.NewPath("spec", "user"), sar.Spec.User, `at least one of user or group must be specified`))
	}
	if len(errs) > 0 {
		return nil, apierrors.NewInvalid(authzGK("SubjectAccessReview"), "", errs)
	}
	if err := validateCreate(ctx, obj, createValidation); err != nil {
		return nil, err
	}
	u := &user.DefaultInfo{Name: sar.Spec.User, UID: sar.Spec.UID, Groups: sar.Spec.Groups}
	if len(sar.Spec.Extra) > 0 {
		u.Extra = map[string][]string{}
		for k, v := range sar.Spec.Extra {
			u.Extra[k] = v
		}
	}
	out := sar.DeepCopy()
	out.Status = review(ctx, r.auth.authz, attributes(u, sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes))
	return out, nil
}

type selfSARREST struct{ auth *authState }

func (r *selfSARREST) New() runtime.Object     { return &authorizationv1.SelfSubjectAccessReview{} }
func (r *selfSARREST) Destroy()                {}
func (r *selfSARREST) NamespaceScoped() bool   { return false }
func (r *selfSARREST) GetSingularName() string { return "selfsubjectaccessreview" }
func (r *selfSARREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	sar, ok := obj.(*authorizationv1.SelfSubjectAccessReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a SelfSubjectAccessReview: %T", obj))
	}
	if errs := exactlyOneAttributes(sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes); len(errs) > 0 {
		return nil, apierrors.NewInvalid(authzGK("SelfSubjectAccessReview"), "", errs)
	}
	u, ok := genericapirequest.UserFrom(ctx)
	if !ok {
		return nil, apierrors.NewBadRequest("no user present on request")
	}
	if err := validateCreate(ctx, obj, createValidation); err != nil {
		return nil, err
	}
	out := sar.DeepCopy()
	out.Status = review(ctx, r.auth.authz, attributes(u, sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes))
	return out, nil
}

type localSARREST struct{ auth *authState }

func (r *localSARREST) New() runtime.Object     { return &authorizationv1.LocalSubjectAccessReview{} }
func (r *localSARREST) Destroy()                {}
func (r *localSARREST) NamespaceScoped() bool   { return true }
func (r *localSARREST) GetSingularName() string { return "localsubjectaccessreview" }
func (r *localSARREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	sar, ok := obj.(*authorizationv1.LocalSubjectAccessReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a LocalSubjectAccessReview: %T", obj))
	}
	errs := exactlyOneAttributes(sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes)
	if sar.Spec.User == "" && len(sar.Spec.Groups) == 0 {
		errs = append(errs, field.Invalid(field.NewPath("spec", "user"), sar.Spec.User, `at least one of user or group must be specified`))
	}
	ns := genericapirequest.NamespaceValue(ctx)
	if sar.Spec.ResourceAttributes != nil && sar.Spec.ResourceAttributes.Namespace != ns {
		errs = append(errs, field.Invalid(field.NewPath("spec", "resourceAttributes", "namespace"), sar.Spec.ResourceAttributes.Namespace,
			"must match metadata.namespace"))
	}
	if len(errs) > 0 {
		return nil, apierrors.NewInvalid(authzGK("LocalSubjectAccessReview"), "", errs)
	}
	if err := validateCreate(ctx, obj, createValidation); err != nil {
		return nil, err
	}
	u := &user.DefaultInfo{Name: sar.Spec.User, UID: sar.Spec.UID, Groups: sar.Spec.Groups}
	out := sar.DeepCopy()
	out.Status = review(ctx, r.auth.authz, attributes(u, sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes))
	return out, nil
}
