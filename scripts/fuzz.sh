#!/usr/bin/env bash
# Bounded fuzzing of sparc3's own parsers (property tests in tests/it/fuzz.rs), not run in CI.
# Each target runs with many cases under a time limit; failures are shrunk by proptest and
# saved beside them in tests/it/fuzz.regressions (commit it: it is replayed first on every run).
# Usage: scripts/fuzz.sh [cases per target, default 20000] [seconds per target, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-20000}
SECS=${2:-300}
cargo test --release --test it --no-run -q
for t in config_mapping gguf_metadata_mapping safetensors_weights jsonl_and_rtp_records shard_specs relevance_and_mask_files; do
  echo "== $t ($CASES cases, at most ${SECS}s)"
  PROPTEST_CASES=$CASES timeout "$SECS" cargo test --release -q --test it -- --exact "fuzz::${t}_never_panic" \
    || { rc=$?; [ $rc -eq 124 ] && echo "   (time limit reached without a failure)" || exit $rc; }
done
