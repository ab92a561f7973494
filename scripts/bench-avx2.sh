#!/usr/bin/env bash
# Side-by-side rounds on one machine, everything held to AVX2: sparc3 with
# SPARC3_GEMM=avx2 (matrix tile and elementwise loops), PyTorch and LXT with
# ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2. Each round runs the reference and
# sparc3 back to back (the 2-core machines are noisy: compare within a round).
#   scripts/bench-avx2.sh [ROUNDS] [PYTHON]   (PYTHON: a venv with torch 2.6, transformers
#   4.52.4 and lxt 2.1; default /tmp/venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
py=${2:-/tmp/venv/bin/python}
grep -m1 "model name" /proc/cpuinfo
grep -m1 "cpu family" /proc/cpuinfo
grep -q avx512f /proc/cpuinfo && echo "CPU has AVX-512 (held to AVX2 below)" || echo "AVX2-only CPU"
cargo bench --bench forward --no-run 2>/dev/null
cargo bench --bench attribution --no-run 2>/dev/null
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
fwd=$(bin forward)
attr=$(bin attribution)
ref=(env ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=2)
for r in $(seq "$rounds"); do
  echo "== round $r"
  "${ref[@]}" "$py" scripts/bench_pytorch_forward.py 2>/dev/null | grep median
  SPARC3_GEMM=avx2 "$fwd" | grep -E "backend|median"
  "${ref[@]}" "$py" scripts/bench_lxt.py --lengths 128 512 --targets last next-token --reps 3 \
    2>/dev/null | grep -E "median|peak"
  SPARC3_GEMM=avx2 SPARC3_BENCH_REPS=3 "$attr" | grep -Ev "logprob"
done
