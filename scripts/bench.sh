#!/usr/bin/env bash
# What recording costs, measured side by side: DiffKeeper vs. not recording vs. strace, interleaved
# in one run, printed as a table of medians and ratios with each target MET or MISSED.
# Usage: sudo bash scripts/bench.sh [diffkeeper-bench flags, e.g. --quick, --only micro,export]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: run as root (recording loads eBPF programs): sudo bash scripts/bench.sh" >&2
  exit 1
fi
# The comparison tools and workloads, installed only when missing.
missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v strace >/dev/null || missing+=(strace)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
cargo build --release --bin diffkeeper --bin diffkeeper-bench --bin dk-writer
exec ./target/release/diffkeeper-bench --json target/bench-results.json "$@"
