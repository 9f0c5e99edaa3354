#!/usr/bin/env bash
# Every test DiffKeeper has, as CI runs it: formatting, lints, then the whole workspace's tests.
# They load the real eBPF programs into the running kernel, run real containers through
# containerd, and talk to a real Kubernetes API server (so: as root). This script installs what
# they need, starts the test API server for them, and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/e2e-apiserver.sh install
bash scripts/e2e-runtime.sh install
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end node test runs the built binaries (the agent, the operator, the snapshot image's
# diffkeeper, the kubectl plugin) as a cluster would.
cargo build --workspace --bins

log=$(mktemp)
cluster=$(mktemp -d /tmp/diffkeeper-test-cluster.XXXXXX)
cleanup() {
  bash scripts/e2e-apiserver.sh stop "$cluster" || true
  rm -rf "$log" "$cluster"
}
trap cleanup EXIT
# The cluster tests use whatever KUBECONFIG names; here, the test API server (see
# e2e/apiserver/README.md). Point KUBECONFIG at kind or k3s instead to run them there.
bash scripts/e2e-apiserver.sh start "$cluster"
set -a
# shellcheck disable=SC1091
source "$cluster/env"
set +a

set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo prints one result line per test binary, the last often an empty doc-test run: sum them
# so the closing line tells what ran.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
