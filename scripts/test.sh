#!/usr/bin/env bash
# Every test DiffKeeper has, as CI runs it: formatting, lints, then the whole workspace's tests,
# which load the real eBPF programs into the running kernel (so: as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo prints one result line per test binary, the last often an empty doc-test run: sum them
# so the closing line tells what ran.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
