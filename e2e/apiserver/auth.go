package main

// Authentication: a static token file (token,user,uid,"group1,group2", kube's --token-auth-file
// format) plus the opaque tokens this server hands out on serviceaccounts/NAME/token. Requests
// without a token are system:anonymous (as with kube's default --anonymous-auth=true); a wrong
// token is a 401. Authenticated users get the system:authenticated group, as in kube.
//
// Authorization: members of system:masters may do anything (kube's privileged-group
// authorizer); everyone else goes through RBAC (rbac.go).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/group"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/request/union"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/token/tokenfile"
	tokenunion "k8s.io/apiserver/pkg/authentication/token/union"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authzunion "k8s.io/apiserver/pkg/authorization/union"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/client-go/kubernetes"
)

// apiAudiences: the audiences a token is for when nobody names one (kube's default: the
// service account issuer).
var apiAudiences = authenticator.Audiences{"https://kubernetes.default.svc.cluster.local"}

type authState struct {
	issued *issuedTokens
	bearer authenticator.Request // token only: for TokenReview
	all    authenticator.Request // token, else anonymous: for requests
	authz  authorizer.Authorizer
}

func newAuthState(tokenFile string, rbac *rbacAuthorizer) (*authState, error) {
	static, err := tokenfile.NewCSV(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	issued := &issuedTokens{m: map[string]issuedToken{}}
	tokens := tokenunion.New(authenticator.WrapAudienceAgnosticToken(apiAudiences, static), issued)
	bearer := group.NewAuthenticatedGroupAdder(bearertoken.New(tokens))
	return &authState{
		issued: issued,
		bearer: bearer,
		all:    union.NewFailOnError(bearer, anonymous.NewAuthenticator(nil)),
		authz:  authzunion.New(authorizerfactory.NewPrivilegedGroups(user.SystemPrivilegedGroup), rbac),
	}, nil
}

// issuedTokens are the tokens made by serviceaccounts/token (kept in memory: they do not
// survive a restart, unlike kube's signed JWTs).
type issuedTokens struct {
	mu sync.Mutex
	m  map[string]issuedToken
}

type issuedToken struct {
	user      *user.DefaultInfo
	audiences authenticator.Audiences
	expires   time.Time
}

func (t *issuedTokens) AuthenticateToken(ctx context.Context, token string) (*authenticator.Response, bool, error) {
	t.mu.Lock()
	it, ok := t.m[token]
	t.mu.Unlock()
	if !ok {
		return nil, false, nil
	}
	if time.Now().After(it.expires) {
		return nil, false, fmt.Errorf("service account token has expired")
	}
	want, ok := authenticator.AudiencesFrom(ctx)
	if !ok {
		want = apiAudiences
	}
	auds := want.Intersect(it.audiences)
	if len(auds) == 0 {
		return nil, false, fmt.Errorf("token audiences %q is invalid for the target audiences %q", it.audiences, want)
	}
	return &authenticator.Response{User: it.user, Audiences: auds}, true, nil
}

// tokenRequestREST is serviceaccounts/NAME/token (TokenRequest, kubectl create token).
type tokenRequestREST struct {
	sa   *genericregistry.Store
	auth *authState
}

var _ rest.NamedCreater = &tokenRequestREST{}
var _ rest.GroupVersionKindProvider = &tokenRequestREST{}

func (r *tokenRequestREST) New() runtime.Object     { return &authenticationv1.TokenRequest{} }
func (r *tokenRequestREST) Destroy()                {}
func (r *tokenRequestREST) NamespaceScoped() bool   { return true }
func (r *tokenRequestREST) GetSingularName() string { return "token" }
func (r *tokenRequestREST) GroupVersionKind(schema.GroupVersion) schema.GroupVersionKind {
	return authenticationv1.SchemeGroupVersion.WithKind("TokenRequest")
}

func (r *tokenRequestREST) Create(ctx context.Context, name string, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	req, ok := obj.(*authenticationv1.TokenRequest)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a TokenRequest: %T", obj))
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	saObj, err := r.sa.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	sa := saObj.(*corev1.ServiceAccount)
	seconds := int64(3600)
	if req.Spec.ExpirationSeconds != nil {
		seconds = *req.Spec.ExpirationSeconds
	}
	if seconds < 600 {
		return nil, apierrors.NewInvalid(schema.GroupKind{Group: authenticationv1.GroupName, Kind: "TokenRequest"}, name,
			field.ErrorList{field.Invalid(field.NewPath("spec", "expirationSeconds"), seconds, "may not specify a duration less than 10 minutes")})
	}
	auds := req.Spec.Audiences
	if len(auds) == 0 {
		auds = apiAudiences
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return nil, err
	}
	token := "dk-sa-" + hex.EncodeToString(buf)
	expires := time.Now().Add(time.Duration(seconds) * time.Second)
	out := req.DeepCopy()
	out.Spec.Audiences = auds
	out.Spec.ExpirationSeconds = &seconds
	out.Status = authenticationv1.TokenRequestStatus{Token: token, ExpirationTimestamp: metav1.NewTime(expires)}
	if options != nil && len(options.DryRun) > 0 {
		return out, nil
	}
	r.auth.issued.mu.Lock()
	r.auth.issued.m[token] = issuedToken{
		user: &user.DefaultInfo{
			Name:   serviceaccount.MakeUsername(sa.Namespace, sa.Name),
			UID:    string(sa.UID),
			Groups: serviceaccount.MakeGroupNames(sa.Namespace),
		},
		audiences: authenticator.Audiences(auds),
		expires:   expires,
	}
	r.auth.issued.mu.Unlock()
	return out, nil
}

// bootstrap creates what kube-apiserver's bootstrap controllers create on an empty etcd: the
// system namespaces and the bootstrap RBAC policy that lets every user discover the API and
// read health, version and who they are (plus cluster-admin for system:masters).
func bootstrap(ctx context.Context, c kubernetes.Interface) error {
	for _, ns := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic, corev1.NamespaceNodeLease} {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	bootstrapLabels := map[string]string{"kubernetes.io/bootstrapping": "rbac-defaults"}
	roles := []rbacv1.ClusterRole{
		{ObjectMeta: metav1.ObjectMeta{Name: "cluster-admin"}, Rules: []rbacv1.PolicyRule{
			{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}},
			{Verbs: []string{"*"}, NonResourceURLs: []string{"*"}},
		}},
		{ObjectMeta: metav1.ObjectMeta{Name: "system:discovery"}, Rules: []rbacv1.PolicyRule{
			{Verbs: []string{"get"}, NonResourceURLs: []string{"/api", "/api/*", "/apis", "/apis/*", "/healthz",
				"/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"}},
		}},
		{ObjectMeta: metav1.ObjectMeta{Name: "system:basic-user"}, Rules: []rbacv1.PolicyRule{
			{Verbs: []string{"create"}, APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"selfsubjectaccessreviews", "selfsubjectrulesreviews"}},
			{Verbs: []string{"create"}, APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"selfsubjectreviews"}},
		}},
		{ObjectMeta: metav1.ObjectMeta{Name: "system:public-info-viewer"}, Rules: []rbacv1.PolicyRule{
			{Verbs: []string{"get"}, NonResourceURLs: []string{"/healthz", "/livez", "/readyz", "/version", "/version/"}},
		}},
		{ObjectMeta: metav1.ObjectMeta{Name: "system:auth-delegator"}, Rules: []rbacv1.PolicyRule{
			{Verbs: []string{"create"}, APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}},
			{Verbs: []string{"create"}, APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}},
		}},
	}
	bindings := map[string][]rbacv1.Subject{
		"cluster-admin":             {{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: user.SystemPrivilegedGroup}},
		"system:discovery":          {{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: user.AllAuthenticated}},
		"system:basic-user":         {{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: user.AllAuthenticated}},
		"system:public-info-viewer": {{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: user.AllAuthenticated}, {Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: user.AllUnauthenticated}},
	}
	for _, role := range roles {
		role.Labels = bootstrapLabels
		role.Annotations = map[string]string{"rbac.authorization.kubernetes.io/autoupdate": "true"}
		if _, err := c.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("clusterrole %s: %w", role.Name, err)
		}
		subjects, ok := bindings[role.Name]
		if !ok {
			continue
		}
		b := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role.Name, Labels: bootstrapLabels,
				Annotations: map[string]string{"rbac.authorization.kubernetes.io/autoupdate": "true"}},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects: subjects,
		}
		if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("clusterrolebinding %s: %w", role.Name, err)
		}
	}
	return nil
}
