package main

// RBAC authorization over the Roles, ClusterRoles and bindings stored in this server.
//
// kube-apiserver's RBAC authorizer lives in k8s.io/kubernetes (plugin/pkg/auth/authorizer/rbac),
// which is not packaged, and k8s.io/component-helpers only has rule *coverage* (escalation)
// helpers. This is a faithful port of its evaluation: a request is allowed when any rule of a
// role bound to the user allows it; ClusterRoleBindings apply everywhere, RoleBindings only in
// their namespace (to a Role of that namespace or to a ClusterRole); RBAC never denies, it only
// has no opinion. It is used both for this server's own requests and for SubjectAccessReviews.
// Differences: ClusterRole aggregationRules are evaluated on the fly (kube's controller copies the
// aggregated rules into .rules instead), and there is no escalation check on writes of roles.

import (
	"context"
	"fmt"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	rbaclisters "k8s.io/client-go/listers/rbac/v1"
)

type rbacAuthorizer struct {
	roles               rbaclisters.RoleLister
	roleBindings        rbaclisters.RoleBindingLister
	clusterRoles        rbaclisters.ClusterRoleLister
	clusterRoleBindings rbaclisters.ClusterRoleBindingLister
}

func (r *rbacAuthorizer) Authorize(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
	var allowedBy string
	var errs []string
	r.visitRules(a.GetUser(), a.GetNamespace(), func(source string, rule *rbacv1.PolicyRule, err error) bool {
		if err != nil {
			errs = append(errs, err.Error())
			return true
		}
		if ruleAllows(a, rule) {
			allowedBy = source
			return false
		}
		return true
	})
	if allowedBy != "" {
		return authorizer.DecisionAllow, "RBAC: allowed by " + allowedBy, nil
	}
	reason := ""
	if len(errs) > 0 {
		reason = "RBAC: " + strings.Join(errs, ", ")
	}
	return authorizer.DecisionNoOpinion, reason, nil
}

// visitRules calls visit for every rule that applies to u in namespace (cluster-wide first),
// until visit returns false.
func (r *rbacAuthorizer) visitRules(u user.Info, namespace string, visit func(source string, rule *rbacv1.PolicyRule, err error) bool) {
	if u == nil {
		return
	}
	crbs, err := r.clusterRoleBindings.List(labels.Everything())
	if err != nil && !visit("", nil, err) {
		return
	}
	for _, b := range crbs {
		i, ok := appliesTo(u, b.Subjects, "")
		if !ok {
			continue
		}
		rules, err := r.rulesFor(b.RoleRef, "")
		if err != nil {
			if !visit("", nil, err) {
				return
			}
			continue
		}
		source := fmt.Sprintf("ClusterRoleBinding %q of %s %q to %s", b.Name, b.RoleRef.Kind, b.RoleRef.Name, describeSubject(b.Subjects[i], ""))
		for j := range rules {
			if !visit(source, &rules[j], nil) {
				return
			}
		}
	}
	if namespace == "" {
		return
	}
	rbs, err := r.roleBindings.RoleBindings(namespace).List(labels.Everything())
	if err != nil && !visit("", nil, err) {
		return
	}
	for _, b := range rbs {
		i, ok := appliesTo(u, b.Subjects, namespace)
		if !ok {
			continue
		}
		rules, err := r.rulesFor(b.RoleRef, namespace)
		if err != nil {
			if !visit("", nil, err) {
				return
			}
			continue
		}
		source := fmt.Sprintf("RoleBinding %q of %s %q to %s", b.Name+"/"+namespace, b.RoleRef.Kind, b.RoleRef.Name, describeSubject(b.Subjects[i], namespace))
		for j := range rules {
			if !visit(source, &rules[j], nil) {
				return
			}
		}
	}
}

func (r *rbacAuthorizer) rulesFor(ref rbacv1.RoleRef, namespace string) ([]rbacv1.PolicyRule, error) {
	switch ref.Kind {
	case "Role":
		role, err := r.roles.Roles(namespace).Get(ref.Name)
		if err != nil {
			return nil, err
		}
		return role.Rules, nil
	case "ClusterRole":
		cr, err := r.clusterRoles.Get(ref.Name)
		if err != nil {
			return nil, err
		}
		rules := append([]rbacv1.PolicyRule(nil), cr.Rules...)
		if cr.AggregationRule != nil {
			all, _ := r.clusterRoles.List(labels.Everything())
			for _, sel := range cr.AggregationRule.ClusterRoleSelectors {
				s, err := metav1.LabelSelectorAsSelector(&sel)
				if err != nil {
					continue
				}
				for _, other := range all {
					if other.Name != cr.Name && s.Matches(labels.Set(other.Labels)) {
						rules = append(rules, other.Rules...)
					}
				}
			}
		}
		return rules, nil
	default:
		return nil, fmt.Errorf("unsupported role reference kind: %q", ref.Kind)
	}
}

// appliesTo returns the index of the first subject matching u.
func appliesTo(u user.Info, subjects []rbacv1.Subject, namespace string) (int, bool) {
	for i, s := range subjects {
		switch s.Kind {
		case rbacv1.UserKind:
			if u.GetName() == s.Name {
				return i, true
			}
		case rbacv1.GroupKind:
			for _, g := range u.GetGroups() {
				if g == s.Name {
					return i, true
				}
			}
		case rbacv1.ServiceAccountKind:
			// a binding's ServiceAccount subject defaults to the binding's namespace
			ns := namespace
			if s.Namespace != "" {
				ns = s.Namespace
			}
			if ns != "" && serviceaccount.MatchesUsername(ns, s.Name, u.GetName()) {
				return i, true
			}
		}
	}
	return 0, false
}

func describeSubject(s rbacv1.Subject, bindingNamespace string) string {
	switch s.Kind {
	case rbacv1.ServiceAccountKind:
		ns := s.Namespace
		if ns == "" {
			ns = bindingNamespace
		}
		return fmt.Sprintf("%s %q", s.Kind, ns+"/"+s.Name)
	default:
		return fmt.Sprintf("%s %q", s.Kind, s.Name)
	}
}

// ruleAllows: the rule matching of kube's rbac.RuleAllows and rbacv1helpers.
func ruleAllows(a authorizer.Attributes, rule *rbacv1.PolicyRule) bool {
	if !hasOrStar(rule.Verbs, a.GetVerb()) {
		return false
	}
	if a.IsResourceRequest() {
		combined := a.GetResource()
		if a.GetSubresource() != "" {
			combined += "/" + a.GetSubresource()
		}
		return hasOrStar(rule.APIGroups, a.GetAPIGroup()) &&
			resourceMatches(rule, combined, a.GetSubresource()) &&
			(len(rule.ResourceNames) == 0 || has(rule.ResourceNames, a.GetName()))
	}
	for _, u := range rule.NonResourceURLs {
		if u == rbacv1.NonResourceAll || u == a.GetPath() ||
			(strings.HasSuffix(u, "*") && strings.HasPrefix(a.GetPath(), strings.TrimRight(u, "*"))) {
			return true
		}
	}
	return false
}

func resourceMatches(rule *rbacv1.PolicyRule, combined, subresource string) bool {
	for _, r := range rule.Resources {
		if r == rbacv1.ResourceAll || r == combined {
			return true
		}
		// "*/subresource" matches that subresource of every resource
		if subresource != "" && len(r) == len(subresource)+2 && strings.HasPrefix(r, "*/") && strings.HasSuffix(r, subresource) {
			return true
		}
	}
	return false
}

func hasOrStar(list []string, v string) bool {
	for _, s := range list {
		if s == "*" || s == v {
			return true
		}
	}
	return false
}

func has(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}
