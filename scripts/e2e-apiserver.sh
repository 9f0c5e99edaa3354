#!/usr/bin/env bash
# A real Kubernetes API server (plus etcd and kubectl) for DiffKeeper's end-to-end tests, built
# from Debian unstable's packages of the upstream Kubernetes libraries. See
# e2e/apiserver/README.md.
#
#   scripts/e2e-apiserver.sh install      download, unpack, build (idempotent; quick when done)
#   scripts/e2e-apiserver.sh start DIR    etcd + API server on free loopback ports; writes
#                                         DIR/kubeconfig, DIR/env, DIR/tokens.csv
#   scripts/e2e-apiserver.sh stop DIR     stop both (safe to repeat)
#   scripts/e2e-apiserver.sh status DIR   exit 0 if both run
#
# Environment: DK_E2E_CACHE (default /var/cache/diffkeeper-e2e): downloads, unpacked packages,
# Go build cache, and bin/ with dk-apiserver, etcd, kubectl. DK_E2E_REFRESH=1 makes install
# fetch the package lists and packages again.
#
# Debian unstable is reached through a private apt configuration under $DK_E2E_CACHE/apt: the
# system's apt sources, lists and installed packages are never touched. Nothing is installed
# into the system.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$REPO/e2e/apiserver"
CACHE="${DK_E2E_CACHE:-/var/cache/diffkeeper-e2e}"
BIN="$CACHE/bin"
ROOT="$CACHE/root"                  # the unpacked .debs
GOROOT_DIR="$ROOT/usr/lib/go-1.26"
GOCODE="$ROOT/usr/share/gocode"     # where Debian's golang-*-dev packages put Go sources
BUILD="$CACHE/build"                # GOPATH for our package and its generated OpenAPI code
PKG="diffkeeper.dev/e2e-apiserver"

# The packages asked for; their dependency closure is added.
ROOT_PACKAGES=(
  golang-1.26-go golang-1.26-src
  golang-k8s-apiserver-dev golang-k8s-apiextensions-apiserver-dev golang-k8s-client-go-dev
  golang-k8s-api-dev golang-k8s-apimachinery-dev golang-k8s-kube-openapi-dev
  golang-k8s-component-base-dev golang-github-kubernetes-gengo-dev
  etcd-server kubectl kubernetes-client
)
# The k8s.io/api packages whose OpenAPI definitions the server serves (see main.go).
OPENAPI_PACKAGES=(
  k8s.io/api/core/v1 k8s.io/api/apps/v1 k8s.io/api/batch/v1 k8s.io/api/coordination/v1
  k8s.io/api/events/v1 k8s.io/api/rbac/v1 k8s.io/api/authentication/v1 k8s.io/api/authorization/v1
  k8s.io/api/autoscaling/v1 k8s.io/api/policy/v1
  k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version
  k8s.io/apimachinery/pkg/util/intstr k8s.io/apimachinery/pkg/api/resource
)

die() { echo "e2e-apiserver: error: $*" >&2; exit 1; }
log() { echo "e2e-apiserver: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# install

apt_private() {
  local a="$CACHE/apt"
  mkdir -p "$a/etc/apt.conf.d" "$a/etc/preferences.d" "$a/etc/sources.list.d" \
    "$a/state/lists/partial" "$a/cache/archives/partial"
  [[ -f "$a/state/status" ]] || : >"$a/state/status"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f $keyring ]] || die "$keyring is missing (apt-get install debian-archive-keyring)"
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian unstable main" >"$a/etc/sources.list"
  cat >"$a/apt.conf" <<EOF
Dir::Etc "$a/etc";
Dir::Etc::SourceList "$a/etc/sources.list";
Dir::Etc::SourceParts "$a/etc/sources.list.d";
Dir::Etc::Parts "$a/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$a/etc/preferences.d";
Dir::State "$a/state";
Dir::State::status "$a/state/status";
Dir::Cache "$a/cache";
APT::Architecture "$(dpkg --print-architecture)";
APT::Sandbox::User "root";
Acquire::Languages "none";
// unstable's Release files are refreshed daily; a mirror that lags must not block us
Acquire::Check-Valid-Until "false";
EOF
  export APT_CONFIG="$a/apt.conf"
}

source_hash() {
  # what the binary depends on: our sources, the unpacked package set, this script's build steps
  { cat "$SRC"/*.go; cat "$ROOT/.debs" 2>/dev/null; sed -n '/^build()/,/^}/p' "${BASH_SOURCE[0]}"; } |
    sha256sum | cut -d' ' -f1
}

fetch_and_unpack() {
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "apt-get and dpkg are needed (Debian)"
  apt_private
  log "updating the private package lists for Debian unstable"
  apt-get -q update >"$CACHE/apt-update.log" 2>&1 || { tail -20 "$CACHE/apt-update.log" >&2; die "apt-get update (private config) failed"; }
  log "resolving the dependency closure"
  local closure
  closure="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${ROOT_PACKAGES[@]}" 2>/dev/null | grep -v '^[ <]' | sort -u)" ||
    die "apt-cache depends failed: is unstable reachable? see $CACHE/apt-update.log"
  # Go sources (golang-*-dev), the toolchain, etcd and kubectl; not C libraries or the like
  local want=()
  for p in $closure; do
    case "$p" in
      golang-1.26-go|golang-1.26-src|etcd-server|kubectl|kubernetes-client) want+=("$p") ;;
      golang-1.*) ;;                      # other toolchains pulled in by golang-go
      golang-*-dev) want+=("$p") ;;
    esac
  done
  for p in "${ROOT_PACKAGES[@]}"; do
    grep -qxF "$p" <<<"$(printf '%s\n' "${want[@]}")" || die "package $p is not in Debian unstable any more"
  done
  mkdir -p "$CACHE/debs"
  # download only what is missing (file names carry versions)
  local uris missing=()
  # (from an empty directory: apt-get download does not print what is already in its directory)
  uris="$(cd "$(mktemp -d)" && apt-get download --print-uris "${want[@]}" 2>/dev/null)" || die "apt-get download --print-uris failed"
  while read -r _uri file _rest; do
    [[ -f "$CACHE/debs/$file" ]] || missing+=("${file%%_*}")
  done <<<"$uris"
  if ((${#missing[@]})); then
    log "downloading ${#missing[@]} of ${#want[@]} packages"
    (cd "$CACHE/debs" && apt-get -q download "${missing[@]}" >"$CACHE/apt-download.log" 2>&1) ||
      { tail -20 "$CACHE/apt-download.log" >&2; die "apt-get download failed"; }
  fi
  local files=()
  while read -r _uri file _rest; do files+=("$file"); done <<<"$uris"
  if [[ -f "$ROOT/.debs" ]] && [[ "$(printf '%s\n' "${files[@]}" | sort)" == "$(cat "$ROOT/.debs")" ]]; then
    log "unpacked packages are current"
    return
  fi
  log "unpacking ${#files[@]} packages"
  rm -rf "$ROOT.new"
  mkdir -p "$ROOT.new"
  for f in "${files[@]}"; do dpkg -x "$CACHE/debs/$f" "$ROOT.new" || die "dpkg -x $f failed"; done
  printf '%s\n' "${files[@]}" | sort >"$ROOT.new/.debs"
  rm -rf "$ROOT"
  mv "$ROOT.new" "$ROOT"
  rm -f "$BIN/openapi-gen"
  # keep the cache small: drop packages no longer in the set
  (cd "$CACHE/debs" && for f in *.deb; do grep -qx "$f" "$ROOT/.debs" || rm -f "$f"; done)
}

go_env() {
  export PATH="$GOROOT_DIR/bin:$PATH" GOROOT="$GOROOT_DIR" GO111MODULE=off GOPATH="$BUILD:$GOCODE" \
    GOCACHE="$CACHE/gocache" GOTOOLCHAIN=local GOPROXY=off GOFLAGS= CGO_ENABLED=0
}

build() {
  go_env
  mkdir -p "$BIN"
  if [[ ! -x "$BIN/openapi-gen" ]]; then
    log "building openapi-gen"
    (cd / && go build -o "$BIN/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen) || die "building openapi-gen failed"
  fi
  local out="$BUILD/src/$PKG"
  rm -rf "$out"
  mkdir -p "$out/openapi"
  cp "$SRC"/*.go "$out/"
  log "generating OpenAPI definitions for the built-in kinds"
  : >"$BUILD/boilerplate.txt"
  (cd "$out" && "$BIN/openapi-gen" --go-header-file "$BUILD/boilerplate.txt" --output-dir "$out/openapi" \
      --output-pkg "$PKG/openapi" --output-file zz_generated.openapi.go \
      --report-filename "$BUILD/openapi-violations.txt" "${OPENAPI_PACKAGES[@]}") >"$BUILD/openapi-gen.log" 2>&1 ||
    { tail -20 "$BUILD/openapi-gen.log" >&2; die "openapi-gen failed"; }
  local version
  version="$(dpkg-deb -f "$CACHE"/debs/golang-k8s-apiserver-dev_*.deb Version | sed 's/^0\.\([0-9]*\)\.\([0-9]*\).*/v1.\1.\2/')"
  local minor="${version#v1.}"; minor="${minor%%.*}"
  log "building dk-apiserver ($version; the first build takes a few minutes)"
  (cd "$out" && go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$version \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean" -o "$BIN/dk-apiserver.new" .) ||
    die "building dk-apiserver failed (sources: $SRC, build tree: $out)"
  mv -f "$BIN/dk-apiserver.new" "$BIN/dk-apiserver"
}

cmd_install() {
  mkdir -p "$CACHE" "$BIN" || die "cannot create $CACHE (set DK_E2E_CACHE, or run as root)"
  local t0=$SECONDS
  # one install at a time (tests may run it in parallel)
  exec 9>"$CACHE/.install.lock"
  flock 9
  if ! command -v openssl >/dev/null; then
    # start needs it for the CA and serving certificate; an ordinary bookworm package
    ((EUID == 0)) || die "openssl is missing: apt-get install openssl"
    log "installing openssl (Debian package, system apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >/dev/null; } ||
      die "could not install openssl"
  fi
  if [[ -n "${DK_E2E_REFRESH:-}" || ! -f "$ROOT/.debs" || ! -x "$GOROOT_DIR/bin/go" ]]; then
    fetch_and_unpack
  fi
  local b
  for b in etcd kubectl; do
    # replace by rename, never in place: other tests may be running these binaries
    if ! cmp -s "$ROOT/usr/bin/$b" "$BIN/$b"; then
      install -m 0755 "$ROOT/usr/bin/$b" "$BIN/.$b.new" && mv -f "$BIN/.$b.new" "$BIN/$b"
    fi
  done
  local hash
  hash="$(source_hash)"
  if [[ -x "$BIN/dk-apiserver" && "$(cat "$BIN/.dk-apiserver.hash" 2>/dev/null)" == "$hash" ]]; then
    log "dk-apiserver is up to date"
  else
    build
    echo "$hash" >"$BIN/.dk-apiserver.hash"
  fi
  log "ready in $((SECONDS - t0))s: $BIN/{dk-apiserver,etcd,kubectl} ($("$BIN/kubectl" version --client 2>/dev/null | sed -n 1p))"
}

# ---------------------------------------------------------------------------------------------
# start / stop

port_in_use() {
  local hex
  hex="$(printf ':%04X ' "$1")"
  grep -q "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 30000))
    port_in_use "$p" || { echo "$p"; return; }
  done
  die "no free port found"
}

# running PID: the process we just started is still there (a zombie counts as gone). Unlike
# `alive`, it does not ask which binary runs: right after `cmd &` the child may not have exec'd
# yet and still shows as bash, which a loaded machine stretches to many milliseconds (that made
# `start` report "etcd did not start" at random).
running() {
  local state
  state="$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# alive PIDFILE NAME: the pid in PIDFILE runs a binary called NAME (so a reused pid is left alone)
alive() {
  local pid argv0
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  # (read, not `tr | head`: under pipefail a pipeline cut short by head fails at random)
  IFS= read -r -d '' argv0 <"/proc/$pid/cmdline" 2>/dev/null || [[ -n "$argv0" ]] || return 1
  [[ "${argv0##*/}" == "$2" ]]
}

stop_one() { # PIDFILE NAME [no-signal: already sent]
  local pid
  alive "$1" "$2" || { rm -f "$1"; return 0; }
  pid="$(cat "$1")"
  [[ -n "${3:-}" ]] || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 (pid $pid) did not stop in 10s; killing it (goroutine dump in its log)"
    kill -QUIT "$pid" 2>/dev/null || true # Go programs print their goroutines and exit
    sleep 1
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$1"
}

gen_pki() { # DIR
  local d="$1/pki"
  [[ -f "$d/ca.crt" && -f "$d/server.crt" && -f "$d/server.key" ]] && return
  command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
  mkdir -p "$d"
  # A v3 CA and a leaf with SANs and the key usages rustls/webpki insist on.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
    -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=diffkeeper-e2e-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null || die "openssl: CA"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=kube-apiserver" 2>/dev/null || die "openssl: key"
  cat >"$d/server.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -sha256 \
    -days 3650 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null || die "openssl: server cert"
  chmod 600 "$d"/*.key
}

gen_tokens() { # DIR
  local f="$1/tokens.csv"
  [[ -f "$f" ]] && return
  tok() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  {
    echo "$(tok),admin,uid-admin,\"system:masters\""
    echo "$(tok),alice,uid-alice"
    echo "$(tok),bob,uid-bob"
    echo "$(tok),system:serviceaccount:diffkeeper:agent,uid-agent,\"system:serviceaccounts,system:serviceaccounts:diffkeeper\""
  } >"$f"
  chmod 600 "$f"
}

token_of() { grep -m1 ",$2," "$1/tokens.csv" | cut -d, -f1; }

write_kubeconfig() { # FILE SERVER CA TOKEN USER
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dk-e2e
  cluster:
    server: $2
    certificate-authority-data: $(base64 -w0 <"$3")
users:
- name: $5
  user:
    token: $4
contexts:
- name: dk-e2e
  context:
    cluster: dk-e2e
    user: $5
    namespace: default
current-context: dk-e2e
EOF
  chmod 600 "$1"
}

start_failed() { # DIR MESSAGE
  local dir="$1"
  echo "e2e-apiserver: error: $2" >&2
  for f in apiserver etcd; do
    if [[ -s "$dir/$f.log" ]]; then
      echo "---- last lines of $dir/$f.log ----" >&2
      tail -n 30 "$dir/$f.log" >&2
    fi
  done
  stop_one "$dir/apiserver.pid" dk-apiserver
  stop_one "$dir/etcd.pid" etcd
  exit 1
}

cmd_start() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || die "usage: $0 start DIR"
  [[ "$dir" != *[[:space:]]* ]] || die "DIR must not contain white space"
  for b in dk-apiserver etcd kubectl; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run '$0 install' first"
  done
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if alive "$dir/apiserver.pid" dk-apiserver || alive "$dir/etcd.pid" etcd; then
    die "already running in $dir: stop it first"
  fi
  rm -f "$dir/env" # stale from an earlier run
  gen_pki "$dir"
  gen_tokens "$dir"

  local etcd_port peer_port api_port t0=$SECONDS
  for attempt in 1 2 3; do
    etcd_port="$(free_port)"; peer_port="$(free_port)"
    "$BIN/etcd" --name dk-e2e --data-dir "$dir/etcd" \
      --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "dk-e2e=http://127.0.0.1:$peer_port" \
      --experimental-watch-progress-notify-interval 5s --unsafe-no-fsync --log-level warn \
      </dev/null >"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    local up= pid=$!
    for _ in $(seq 1 100); do
      running "$pid" || break
      if (exec 3<>"/dev/tcp/127.0.0.1/$etcd_port") 2>/dev/null; then up=1; break; fi
      sleep 0.1
    done
    [[ -n "$up" ]] && break
    stop_one "$dir/etcd.pid" etcd
    grep -q "address already in use" "$dir/etcd.log" || start_failed "$dir" "etcd did not start"
  done
  [[ -n "$up" ]] || start_failed "$dir" "etcd did not start (ports in use?)"

  local server ready=
  for attempt in 1 2 3; do
    api_port="$(free_port)"
    server="https://127.0.0.1:$api_port"
    "$BIN/dk-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 \
      --secure-port "$api_port" --tls-cert-file "$dir/pki/server.crt" --tls-private-key-file "$dir/pki/server.key" \
      --token-auth-file "$dir/tokens.csv" </dev/null >"$dir/apiserver.log" 2>&1 &
    echo $! >"$dir/apiserver.pid"
    local api_pid=$!
    write_kubeconfig "$dir/kubeconfig" "$server" "$dir/pki/ca.crt" "$(token_of "$dir" admin)" admin
    for _ in $(seq 1 600); do
      running "$api_pid" || break
      if [[ "$("$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz 2>/dev/null)" == ok ]]; then
        ready=1; break
      fi
      sleep 0.1
    done
    [[ -n "$ready" ]] && break
    grep -q "address already in use" "$dir/apiserver.log" || break
    stop_one "$dir/apiserver.pid" dk-apiserver
  done
  [[ -n "$ready" ]] || start_failed "$dir" "the API server did not become ready"

  for u in alice bob; do
    write_kubeconfig "$dir/kubeconfig-$u" "$server" "$dir/pki/ca.crt" "$(token_of "$dir" "$u")" "$u"
  done
  write_kubeconfig "$dir/kubeconfig-agent" "$server" "$dir/pki/ca.crt" \
    "$(token_of "$dir" system:serviceaccount:diffkeeper:agent)" agent
  cat >"$dir/env" <<EOF
# written by scripts/e2e-apiserver.sh start; KEY=value lines (no quoting needed)
KUBECONFIG=$dir/kubeconfig
DK_E2E_SERVER=$server
DK_E2E_CA=$dir/pki/ca.crt
DK_E2E_ETCD=http://127.0.0.1:$etcd_port
DK_E2E_APISERVER_PID=$(cat "$dir/apiserver.pid")
DK_E2E_ETCD_PID=$(cat "$dir/etcd.pid")
DK_E2E_BIN=$BIN
DK_E2E_KUBECTL=$BIN/kubectl
# bearer tokens (also in $dir/tokens.csv, kube's --token-auth-file format):
# admin: group system:masters, may do anything (it is the user of KUBECONFIG)
DK_E2E_ADMIN_TOKEN=$(token_of "$dir" admin)
# alice, bob: plain users with no rights beyond discovery until RBAC grants them some
DK_E2E_ALICE_TOKEN=$(token_of "$dir" alice)
DK_E2E_BOB_TOKEN=$(token_of "$dir" bob)
# system:serviceaccount:diffkeeper:agent, groups system:serviceaccounts{,:diffkeeper}
DK_E2E_AGENT_TOKEN=$(token_of "$dir" system:serviceaccount:diffkeeper:agent)
# kubeconfigs for each of them
DK_E2E_KUBECONFIG_ALICE=$dir/kubeconfig-alice
DK_E2E_KUBECONFIG_BOB=$dir/kubeconfig-bob
DK_E2E_KUBECONFIG_AGENT=$dir/kubeconfig-agent
EOF
  log "ready in $((SECONDS - t0))s at $server; source or read $dir/env"
}

cmd_stop() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || die "usage: $0 stop DIR"
  [[ -d "$dir" ]] || { log "nothing to stop in $dir"; return 0; }
  # both at once: each takes a second or two to shut down cleanly
  if alive "$dir/apiserver.pid" dk-apiserver; then kill -TERM "$(cat "$dir/apiserver.pid")" 2>/dev/null || true; fi
  if alive "$dir/etcd.pid" etcd; then kill -TERM "$(cat "$dir/etcd.pid")" 2>/dev/null || true; fi
  stop_one "$dir/apiserver.pid" dk-apiserver sent
  stop_one "$dir/etcd.pid" etcd sent
}

cmd_status() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || die "usage: $0 status DIR"
  alive "$dir/apiserver.pid" dk-apiserver && alive "$dir/etcd.pid" etcd
}

main() {
  case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) echo "usage: $0 install | start DIR | stop DIR | status DIR" >&2; exit 2 ;;
  esac
}
# (on one line: bash has read it all before running, so editing this file meanwhile is harmless)
main "$@"; exit
