#!/usr/bin/env bash
# Smoke test of the e2e API server: start it, exercise what DiffKeeper's tests rely on with
# kubectl (CRDs with CEL validation and printer columns, pods and their status, watches,
# server-side apply, leases, dry-run of the chart's kinds, TokenReview, SubjectAccessReview
# through RBAC), stop it. Exits non-zero on the first failure.
#
#   bash e2e/apiserver/smoke.sh          (runs scripts/e2e-apiserver.sh install first)
#   DK_SMOKE_KEEP=1 bash e2e/apiserver/smoke.sh   leaves the server running for a look
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRIPT="$REPO/scripts/e2e-apiserver.sh"
DIR="$(mktemp -d /tmp/dk-e2e-smoke.XXXXXX)"
PASSED=0
FAILED=0

cleanup() {
  if [[ -n "${DK_SMOKE_KEEP:-}" ]]; then echo "left running: $DIR" >&2; return; fi
  bash "$SCRIPT" stop "$DIR" || true
  if ((FAILED == 0)); then rm -rf "$DIR"; else echo "kept $DIR for inspection" >&2; fi
}
trap cleanup EXIT

fail() {
  FAILED=$((FAILED + 1))
  echo "FAIL: $*" >&2
  echo "---- apiserver.log (tail) ----" >&2
  tail -n 20 "$DIR/apiserver.log" >&2 || true
  echo "$PASSED passed, $FAILED failed"
  exit 1
}
ok() { PASSED=$((PASSED + 1)); echo "ok: $*"; }

bash "$SCRIPT" install
bash "$SCRIPT" start "$DIR"
# shellcheck disable=SC1091
set -a; source "$DIR/env"; set +a
k() { "$DK_E2E_KUBECTL" "$@"; }

# --- discovery, version, OpenAPI
[[ "$(k version -o json | grep -c '"gitVersion": "v1.36')" == 2 ]] || fail "kubectl/server version is not 1.36"
k api-resources >/dev/null || fail "api-resources"
grep -q '"io.k8s.api.apps.v1.Deployment"' <<<"$(k get --raw /openapi/v2)" || fail "OpenAPI v2 lacks Deployment"
grep -q fieldValidation <<<"$(k get --raw /openapi/v3/apis/apps/v1)" || fail "OpenAPI v3 for apps/v1"
ok "discovery and OpenAPI"

# --- a CRD with a CEL rule, defaulting, printer columns, status subresource
k apply --server-side -f - <<'EOF' >/dev/null || fail "apply CRD"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: recordings.e2e.diffkeeper.dev
spec:
  group: e2e.diffkeeper.dev
  scope: Namespaced
  names: {plural: recordings, singular: recording, kind: Recording, shortNames: [rec]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Target, type: string, jsonPath: .spec.target}
    - {name: MaxBytes, type: integer, jsonPath: .spec.maxBytes}
    - {name: Phase, type: string, jsonPath: .status.phase}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [target]
            x-kubernetes-validations:
            - rule: "self.maxBytes > 0"
              message: "maxBytes must be positive"
            properties:
              target: {type: string}
              maxBytes: {type: integer, default: 1048576}
          status:
            type: object
            properties:
              phase: {type: string}
EOF
k wait --for=condition=Established crd/recordings.e2e.diffkeeper.dev --timeout=30s >/dev/null || fail "CRD not established"
out="$(k apply -f - 2>&1 <<'EOF'
apiVersion: e2e.diffkeeper.dev/v1alpha1
kind: Recording
metadata: {name: bad}
spec: {target: web, maxBytes: -1}
EOF
)" && fail "a CR breaking the CEL rule was accepted"
grep -q "maxBytes must be positive" <<<"$out" || fail "CEL refusal lacks the rule's message: $out"
ok "CEL rule refuses a bad CR: $(grep -o -m1 'spec: Invalid value.*' <<<"$out")"
k apply -f - <<'EOF' >/dev/null || fail "create good CR"
apiVersion: e2e.diffkeeper.dev/v1alpha1
kind: Recording
metadata: {name: good}
spec: {target: web}
EOF
[[ "$(k get recording good -o jsonpath='{.spec.maxBytes}')" == 1048576 ]] || fail "CRD default not applied"
k patch recording good --subresource=status --type=merge -p '{"status":{"phase":"Recording"}}' >/dev/null || fail "CR status patch"
cols="$(k get rec good)"
grep -q "TARGET.*MAXBYTES.*PHASE" <<<"$cols" && grep -q "good.*web.*1048576.*Recording" <<<"$cols" ||
  fail "printer columns: $cols"
ok "CR defaulting, status subresource, printer columns"

# --- pods: create, get, watch, status patch, binding, graceful delete
k apply -f - <<'EOF' >/dev/null || fail "create pod"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers: [{name: c, image: busybox}]
EOF
[[ "$(k get pod web -o jsonpath='{.status.phase}')" == Pending ]] || fail "new pod is not Pending"
k get pods --watch-only -o name >"$DIR/watch.out" 2>&1 &
watch_pid=$!
sleep 1
k patch pod web --subresource=status --type=merge -p '{"status":{"phase":"Running","podIP":"10.0.0.7"}}' >/dev/null ||
  fail "pod status patch"
for _ in $(seq 1 50); do grep -q "pod/web" "$DIR/watch.out" && break; sleep 0.1; done
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
grep -q "pod/web" "$DIR/watch.out" || fail "watch did not see the status change"
[[ "$(k get pods --field-selector status.phase=Running -o name)" == pod/web ]] || fail "field selector status.phase"
k create -f - <<'EOF' >/dev/null || fail "pods/binding"
apiVersion: v1
kind: Binding
metadata: {name: web}
target: {kind: Node, name: node-1}
EOF
[[ "$(k get pods --field-selector spec.nodeName=node-1 -o name)" == pod/web ]] || fail "binding did not set spec.nodeName"
k delete pod web --wait=false >/dev/null || fail "delete pod"
[[ -n "$(k get pod web -o jsonpath='{.metadata.deletionTimestamp}')" ]] || fail "a bound pod should stay Terminating"
k delete pod web --grace-period=0 --force >/dev/null 2>&1 || fail "force delete"
k get pod web >/dev/null 2>&1 && fail "pod still there after a forced delete"
ok "pods: status, watch, field selectors, binding, graceful delete"

k create -f - >/dev/null 2>&1 <<'EOF' && fail "object in a missing namespace was accepted"
apiVersion: v1
kind: ConfigMap
metadata: {name: x, namespace: nope}
EOF
ok "NamespaceLifecycle refuses objects in missing namespaces"

# --- server-side apply: field managers and conflicts
k create namespace diffkeeper >/dev/null || fail "create namespace"
cm() { printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: diffkeeper}\ndata: {%s}\n' "$1"; }
cm 'a: "1"' | k apply --server-side --field-manager=one -f - >/dev/null || fail "SSA one"
cm 'b: "2"' | k apply --server-side --field-manager=two -f - >/dev/null || fail "SSA two"
[[ "$(k get cm cfg -n diffkeeper -o jsonpath='{.data.a},{.data.b}')" == 1,2 ]] || fail "SSA merge of two managers"
cm 'a: "3"' | k apply --server-side --field-manager=two -f - >/dev/null 2>&1 && fail "SSA conflict not reported"
grep -q "one two" <<<"$(k get cm cfg -n diffkeeper -o jsonpath='{.metadata.managedFields[*].manager}')" || fail "managedFields"
k apply --server-side -f - <<'EOF' >/dev/null || fail "SSA of a Deployment"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: diffkeeper}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: nginx, ports: [{containerPort: 80}]}]
EOF
[[ "$(k get deploy web -n diffkeeper -o jsonpath='{.metadata.generation}')" == 1 ]] || fail "deployment generation"
k scale deploy web -n diffkeeper --replicas=3 >/dev/null || fail "kubectl scale (deployments/scale)"
[[ "$(k get deploy web -n diffkeeper -o jsonpath='{.spec.replicas}/{.metadata.generation}')" == 3/2 ]] || fail "scale result"
ok "server-side apply (merge, conflict, managedFields, built-in kinds)"

# --- leases and events (events.k8s.io/v1 shows up in core/v1)
k apply -f - <<'EOF' >/dev/null || fail "lease"
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: agent-lock, namespace: diffkeeper}
spec: {holderIdentity: agent-0, leaseDurationSeconds: 15}
EOF
k create -f - <<'EOF' >/dev/null || fail "events.k8s.io event"
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: ev1, namespace: diffkeeper}
eventTime: "2024-01-01T00:00:00.000000Z"
reportingController: diffkeeper.dev/agent
reportingInstance: agent-0
action: Record
reason: Started
note: recording started
type: Normal
regarding: {kind: Pod, name: web, namespace: diffkeeper}
EOF
[[ "$(k get events.v1. ev1 -n diffkeeper -o jsonpath='{.message}/{.involvedObject.name}')" == "recording started/web" ]] ||
  fail "events.k8s.io event not visible as a core event"
ok "leases, events (events.k8s.io and core share storage)"

# --- dry-run of the kinds a Helm chart brings, with kubectl's default validation
cat >"$DIR/chart.yaml" <<'EOF'
apiVersion: v1
kind: ServiceAccount
metadata: {name: agent, namespace: diffkeeper}
---
apiVersion: v1
kind: Service
metadata: {name: agent, namespace: diffkeeper}
spec: {selector: {app: agent}, ports: [{port: 9090, targetPort: 9090}]}
---
apiVersion: v1
kind: Secret
metadata: {name: agent, namespace: diffkeeper}
stringData: {token: x}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: diffkeeper}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      serviceAccountName: agent
      hostPID: true
      containers:
      - name: agent
        image: diffkeeper:dev
        securityContext: {privileged: true}
        volumeMounts: [{name: state, mountPath: /var/lib/diffkeeper}]
      volumes: [{name: state, hostPath: {path: /var/lib/diffkeeper}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: operator, namespace: diffkeeper}
spec:
  replicas: 1
  selector: {matchLabels: {app: operator}}
  template:
    metadata: {labels: {app: operator}}
    spec: {containers: [{name: operator, image: diffkeeper:dev}]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: diffkeeper-agent}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [e2e.diffkeeper.dev], resources: [recordings, recordings/status], verbs: ["*"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: diffkeeper-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: diffkeeper-agent}
subjects: [{kind: ServiceAccount, name: agent, namespace: diffkeeper}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: leader, namespace: diffkeeper}
rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: leader, namespace: diffkeeper}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: leader}
subjects: [{kind: ServiceAccount, name: agent}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: agent, namespace: diffkeeper}
data: {config.yaml: "x: 1"}
EOF
out="$(k apply --dry-run=server -f "$DIR/chart.yaml" 2>&1)" || fail "dry-run=server apply: $out"
[[ "$(grep -c 'created (server dry run)' <<<"$out")" == 10 ]] || fail "dry-run output: $out"
k get ds agent -n diffkeeper >/dev/null 2>&1 && fail "dry-run created something"
out="$(k apply --dry-run=server -f - 2>&1 <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: typo, namespace: diffkeeper}
spec:
  replicaz: 1
  selector: {matchLabels: {app: t}}
  template: {metadata: {labels: {app: t}}, spec: {containers: [{name: c, image: x}]}}
EOF
)" && fail "strict validation accepted an unknown field"
grep -q 'unknown field "spec.replicaz"' <<<"$out" || fail "unknown-field message: $out"
k apply --server-side -f "$DIR/chart.yaml" >/dev/null || fail "server-side apply of the chart kinds"
ok "chart kinds: dry-run=server, strict field validation, server-side apply"

# --- authentication and authorization
tr="$(k create -o jsonpath='{.status.authenticated} {.status.user.username} {.status.user.groups}' -f - <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec: {token: $DK_E2E_ALICE_TOKEN}
EOF
)" || fail "TokenReview"
[[ "$tr" == 'true alice ["system:authenticated"]' ]] || fail "TokenReview for alice: $tr"
tr="$(printf 'apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {token: nope}\n' |
  k create -o jsonpath='{.status.authenticated}' -f -)" || fail "TokenReview (bad token)"
[[ "$tr" != true ]] || fail "a bad token was authenticated"
ok "TokenReview"

sar() { # USER VERB RESOURCE [SUBRESOURCE]
  k create -o jsonpath='{.status.allowed}' -f - <<EOF
apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: $1
  resourceAttributes: {namespace: diffkeeper, verb: $2, group: e2e.diffkeeper.dev, resource: $3, subresource: "${4:-}"}
EOF
}
[[ "$(sar alice get recordings)" == false ]] || fail "alice allowed before any RBAC"
k create role rec-reader -n diffkeeper --verb=get,list --resource=recordings.e2e.diffkeeper.dev >/dev/null || fail "create role"
k create -n diffkeeper -f - >/dev/null <<'EOF' || fail "role with a subresource rule"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: rec-export}
rules: [{apiGroups: [e2e.diffkeeper.dev], resources: [recordings/export], verbs: [get]}]
EOF
k create rolebinding alice-rec -n diffkeeper --role=rec-reader --user=alice >/dev/null || fail "create rolebinding"
k create rolebinding alice-export -n diffkeeper --role=rec-export --user=alice >/dev/null || fail "create rolebinding"
sleep 0.5 # the authorizer reads roles through an informer
[[ "$(sar alice get recordings)" == true ]] || fail "alice not allowed after the RoleBinding"
[[ "$(sar alice get recordings export)" == true ]] || fail "alice not allowed recordings/export"
[[ "$(sar alice delete recordings)" == false ]] || fail "alice allowed to delete"
[[ "$(sar bob get recordings)" == false ]] || fail "bob allowed"
[[ "$(sar system:serviceaccount:diffkeeper:agent update recordings status)" == true ]] || fail "agent SA via ClusterRoleBinding"
ok "SubjectAccessReview through RBAC (roles, subresources, service accounts)"

# the same rules guard requests: alice can read recordings in diffkeeper, nothing else
ka() { "$DK_E2E_KUBECTL" --kubeconfig "$DK_E2E_KUBECONFIG_ALICE" "$@"; }
ka get recordings -n diffkeeper >/dev/null 2>&1 || fail "alice cannot list recordings"
ka get pods -n diffkeeper >/dev/null 2>&1 && fail "alice may list pods"
[[ "$(ka auth can-i get recordings.e2e.diffkeeper.dev -n diffkeeper)" == yes ]] || fail "kubectl auth can-i"
[[ "$(ka auth whoami -o jsonpath='{.status.userInfo.username}')" == alice ]] || fail "kubectl auth whoami"
k create token agent -n diffkeeper >"$DIR/sa.token" || fail "serviceaccounts/token"
"$DK_E2E_KUBECTL" --server "$DK_E2E_SERVER" --certificate-authority "$DK_E2E_CA" --token "$(cat "$DIR/sa.token")" \
  get pods -n diffkeeper >/dev/null 2>&1 || fail "the issued service account token does not work"
ok "requests are authorized by RBAC; kubectl auth can-i / whoami / create token"

# --- deleting a namespace deletes what is in it (custom resources too), then the namespace
printf 'apiVersion: e2e.diffkeeper.dev/v1alpha1\nkind: Recording\nmetadata: {name: r, namespace: diffkeeper}\nspec: {target: x}\n' |
  k apply -f - >/dev/null || fail "CR in namespace"
k delete namespace diffkeeper --timeout=30s >/dev/null || fail "namespace deletion did not finish"
k get namespace diffkeeper >/dev/null 2>&1 && fail "namespace still there"
[[ -z "$(k get recordings,pods,configmaps,deployments,leases -n diffkeeper -o name 2>/dev/null)" ]] || fail "objects survived their namespace"
ok "namespace deletion empties the namespace first"

# --- stop is quick and leaves nothing behind
t0=$SECONDS
bash "$SCRIPT" stop "$DIR"
((SECONDS - t0 < 8)) || fail "stop took $((SECONDS - t0))s"
kill -0 "$DK_E2E_APISERVER_PID" 2>/dev/null && fail "apiserver still running after stop"
kill -0 "$DK_E2E_ETCD_PID" 2>/dev/null && fail "etcd still running after stop"
ok "stop"

echo "$PASSED passed, $FAILED failed"
