#!/usr/bin/env bash
# Renders the Helm chart charts/diffkeeper into plain manifests, as
# `helm template diffkeeper charts/diffkeeper --namespace diffkeeper --include-crds` would, with
# a small stand-in for helm built from Debian's packages of the libraries helm itself renders
# with (text/template + sprig + sigs.k8s.io/yaml + gojsonschema): see e2e/chart-render/main.go.
# helm itself is not packaged in Debian, and nothing else may be downloaded here.
#
#   scripts/render-chart.sh render [--set k=v]... [-f values.yaml]...   the stream, on stdout
#   scripts/render-chart.sh deploy [DIR]      rewrite DIR (default deploy/): diffkeeper.yaml (the
#                                             chart with default values) and namespace.yaml
#
# The Go toolchain comes from scripts/e2e-apiserver.sh install (Debian unstable's golang-1.26-go,
# unpacked under its cache); the renderer's libraries are unpacked next to it, through the same
# private apt configuration, into $DK_E2E_CACHE/chart-render; the binary lands in
# $DK_E2E_CACHE/bin/chart-render and is rebuilt only when its sources or packages change.
# DK_E2E_REFRESH=1 fetches the renderer's packages again.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$REPO/e2e/chart-render"
CHART="$REPO/charts/diffkeeper"
CACHE="${DK_E2E_CACHE:-/var/cache/diffkeeper-e2e}"
BIN="$CACHE/bin"
HERE="$CACHE/chart-render"   # this script's part of the cache
ROOT="$HERE/root"            # the unpacked .debs of the renderer's libraries
BUILD="$HERE/build"          # GOPATH for the renderer's own package
PKG="diffkeeper.dev/chart-render"
# helm template's arguments that deploy/ is rendered with
RELEASE=diffkeeper
NAMESPACE=diffkeeper

# The renderer's libraries; their dependency closure (Go sources only) is added.
PACKAGES=(golang-github-masterminds-sprig-dev golang-github-xeipuuv-gojsonschema-dev golang-k8s-sigs-yaml-dev)

die() { echo "render-chart: error: $*" >&2; exit 1; }
log() { echo "render-chart: $*" >&2; }

# the newest Go toolchain scripts/e2e-apiserver.sh unpacked, if any
goroot() {
  local d
  d="$(printf '%s\n' "$CACHE"/root/usr/lib/go-1.*/bin/go | sort -V | tail -1)"
  [[ -x "$d" ]] && echo "${d%/bin/go}"
}

fetch_and_unpack() {
  export APT_CONFIG="$CACHE/apt/apt.conf"
  [[ -f "$APT_CONFIG" ]] || die "$APT_CONFIG is missing: run 'bash scripts/e2e-apiserver.sh install'"
  local closure want=() p
  resolve() {
    closure="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "${PACKAGES[@]}" 2>/dev/null | grep -v '^[ <]' | sort -u)"
  }
  # The private lists are as fresh as e2e-apiserver.sh's last fetch; refresh them only when they
  # lack something or their packages have left the archive (unstable moves daily).
  if ! resolve || [[ -z "$closure" ]]; then closure=; fi
  mkdir -p "$HERE/debs"
  local attempt uris missing
  for attempt in 1 2; do
    want=()
    for p in $closure; do
      case "$p" in golang-1.*) ;; golang-*-dev) want+=("$p") ;; esac   # Go sources only
    done
    missing=()
    # (from an empty directory: apt-get download does not print what is already in its directory)
    if ((${#want[@]})) &&
        uris="$(cd "$HERE/debs" && rm -rf empty && mkdir empty && cd empty &&
                apt-get download --print-uris "${want[@]}" 2>/dev/null)"; then
      while read -r _uri file _rest; do
        [[ -f "$HERE/debs/$file" ]] || missing+=("${file%%_*}")
      done <<<"$uris"
      if ((${#missing[@]} == 0)) ||
          (cd "$HERE/debs" && apt-get -q download "${missing[@]}" >"$HERE/apt-download.log" 2>&1); then
        break
      fi
    fi
    ((attempt == 1)) || { tail -20 "$HERE/apt-download.log" >&2 2>/dev/null; die "could not download ${PACKAGES[*]} and their dependencies from Debian unstable"; }
    log "updating the private package lists for Debian unstable"
    apt-get -q update >"$HERE/apt-update.log" 2>&1 || { tail -20 "$HERE/apt-update.log" >&2; die "apt-get update (private config $APT_CONFIG) failed"; }
    resolve || die "apt-cache depends ${PACKAGES[*]} failed"
  done
  for p in "${PACKAGES[@]}"; do
    grep -qxF "$p" <<<"$(printf '%s\n' "${want[@]}")" || die "package $p is not in Debian unstable any more"
  done
  local files=()
  while read -r _uri file _rest; do files+=("$file"); done <<<"$uris"
  log "unpacking ${#files[@]} packages"
  rm -rf "$ROOT.new"
  mkdir -p "$ROOT.new"
  for f in "${files[@]}"; do dpkg -x "$HERE/debs/$f" "$ROOT.new" || die "dpkg -x $f failed"; done
  printf '%s\n' "${files[@]}" | sort >"$ROOT.new/.debs"
  echo "${PACKAGES[*]}" >"$ROOT.new/.packages"
  rm -rf "$ROOT"
  mv "$ROOT.new" "$ROOT"
  (cd "$HERE/debs" && for f in *.deb; do grep -qx "$f" "$ROOT/.debs" || rm -f "$f"; done)
}

source_hash() { # GOROOT
  { cat "$SRC"/*.go; cat "$ROOT/.debs"; echo "$1"; head -1 "$1/VERSION"; sed -n '/^build()/,/^}/p' "${BASH_SOURCE[0]}"; } |
    sha256sum | cut -d' ' -f1
}

build() { # GOROOT
  export PATH="$1/bin:$PATH" GOROOT="$1" GO111MODULE=off GOPATH="$BUILD:$ROOT/usr/share/gocode" \
    GOCACHE="$CACHE/gocache" GOTOOLCHAIN=local GOPROXY=off GOFLAGS='' CGO_ENABLED=0
  local out="$BUILD/src/$PKG"
  rm -rf "$out"
  mkdir -p "$out" "$BIN"
  cp "$SRC"/*.go "$out/"
  # GO111MODULE=off, yet a go.mod lets "github.com/Masterminds/semver/v3" resolve to Debian's
  # .../semver (Go's minimal module compatibility applies to importers with a go.mod).
  printf 'module %s\n\ngo 1.21\n' "$PKG" >"$out/go.mod"
  log "building chart-render"
  (cd "$out" && go build -trimpath -ldflags "-s -w" -o "$BIN/chart-render.new" .) >"$HERE/build.log" 2>&1 ||
    { cat "$HERE/build.log" >&2; die "building chart-render failed (sources: $SRC, build tree: $out)"; }
  mv "$BIN/chart-render.new" "$BIN/chart-render"
}

# Make $BIN/chart-render current. Under a lock: cargo runs tests (each calling this) in parallel.
ensure_renderer() {
  mkdir -p "$HERE" || die "cannot create $HERE (set DK_E2E_CACHE, or run as root)"
  exec 9>"$HERE/lock"
  flock 9
  local t0=$SECONDS go_root hash
  go_root="$(goroot)" || true
  if [[ -z "$go_root" ]]; then
    log "no Go toolchain yet: running scripts/e2e-apiserver.sh install (the first time takes minutes)"
    bash "$REPO/scripts/e2e-apiserver.sh" install >&2 || die "scripts/e2e-apiserver.sh install failed"
    go_root="$(goroot)" || die "scripts/e2e-apiserver.sh install left no Go toolchain under $CACHE/root"
  fi
  if [[ -n "${DK_E2E_REFRESH:-}" || ! -f "$ROOT/.debs" || "$(cat "$ROOT/.packages" 2>/dev/null)" != "${PACKAGES[*]}" ]]; then
    fetch_and_unpack
  fi
  hash="$(source_hash "$go_root")"
  if [[ ! -x "$BIN/chart-render" || "$(cat "$BIN/.chart-render.hash" 2>/dev/null)" != "$hash" ]]; then
    build "$go_root"
    echo "$hash" >"$BIN/.chart-render.hash"
    log "chart-render ready in $((SECONDS - t0))s"
  fi
  exec 9>&-
}

render() { # [--set k=v | -f FILE]...
  local args=() a
  while (($#)); do
    a="$1"; shift
    case "$a" in
      --set|--values|-f)
        (($#)) || die "$a needs an argument"
        if [[ "$a" == --set ]]; then args+=(--set "$1"); else args+=(-f "$(realpath "$1")"); fi
        shift ;;
      --set=*) args+=(--set "${a#--set=}") ;;
      --values=*|-f=*) args+=(-f "$(realpath "${a#*=}")") ;;
      *) die "render: unknown argument '$a' (accepted: --set key=value, -f values.yaml)" ;;
    esac
  done
  # Relative paths as helm prints them (# Source: diffkeeper/templates/...) need only the chart.
  "$BIN/chart-render" --namespace "$NAMESPACE" --include-crds "${args[@]}" "$RELEASE" "$CHART"
}

deploy() { # [DIR]
  local dir="${1:-$REPO/deploy}" stream
  mkdir -p "$dir"
  stream="$(render)" || die "rendering the chart failed"
  {
    echo "# Generated by \`bash scripts/render-chart.sh deploy\` from charts/diffkeeper with its default"
    echo "# values: release $RELEASE, namespace $NAMESPACE, CRDs included (helm template ... --include-crds)."
    echo "# Do not edit: change the chart and run that again. Apply deploy/namespace.yaml first."
    printf '%s\n' "$stream"
  } >"$dir/diffkeeper.yaml.new"
  mv "$dir/diffkeeper.yaml.new" "$dir/diffkeeper.yaml"
  cat >"$dir/namespace.yaml.new" <<EOF
# Generated by \`bash scripts/render-chart.sh deploy\`; do not edit.
# The namespace deploy/diffkeeper.yaml installs into: a chart's templates never create it (helm's
# --create-namespace does, with the same "name" label). The agent's pods use the host's PID and
# network namespaces, hostPath volumes and added capabilities, so Pod Security admission must
# allow privileged pods here.
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    name: $NAMESPACE
    pod-security.kubernetes.io/enforce: privileged
EOF
  mv "$dir/namespace.yaml.new" "$dir/namespace.yaml"
  log "wrote $dir/diffkeeper.yaml and $dir/namespace.yaml"
}

case "${1:-}" in
  render) shift; ensure_renderer; render "$@" ;;
  deploy) shift; ensure_renderer; deploy "$@" ;;
  *) echo "usage: $0 render [--set key=value]... [-f values.yaml]... | deploy [DIR]" >&2; exit 2 ;;
esac
