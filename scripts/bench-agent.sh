#!/usr/bin/env bash
# The node agent's footprint (issue 14): RSS and CPU of the agent alone, then while it records
# 50 idle-ish and 6 busy real containers (containerd through the node simulator, a real API
# server). Run as root; takes a few minutes after the build. Figures: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/e2e-apiserver.sh install
bash scripts/e2e-runtime.sh install
# Release binaries: the agent is measured as it ships.
cargo build --release --workspace --bins
cluster=$(mktemp -d /tmp/diffkeeper-bench-cluster.XXXXXX)
trap 'bash scripts/e2e-apiserver.sh stop "$cluster" || true; rm -rf "$cluster"' EXIT
bash scripts/e2e-apiserver.sh start "$cluster"
set -a
# shellcheck disable=SC1091
source "$cluster/env"
set +a
cargo test --release -p diffkeeper-node-sim --test recording -- --ignored --nocapture \
  agent_footprint_with_many_containers
