#!/usr/bin/env bash
# Every test DiffKeeper has, as CI runs it: formatting, lints, then the whole workspace's tests,
# which load the real eBPF programs into the running kernel (so: as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
