#!/usr/bin/env bash
# Scale table, side by side on one machine: sparc3 (`cargo bench --bench scale`) and LXT 2.1
# (scripts/bench_lxt_scale.py: efficient AttnLRP, f32, no gradient checkpointing, an f32 |R| sum
# per weight as sparc3 keeps) on the same checkpoints and the same token ids.
#   scripts/bench-scale.sh [PYTHON]   (a venv with torch 2.6, transformers 4.52.4, lxt 2.1;
#   default /tmp/venv/bin/python). Checkpoints: one directory per shape under SPARC3_SCALE_DIR
#   (default /tmp/sparc3-scale), made by `cargo run --release --example make_checkpoint`.
# LXT runs one (shape, length) per process under /usr/bin/time -v; exit 137 is the OOM killer.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${1:-/tmp/venv/bin/python}
dir=${SPARC3_SCALE_DIR:-/tmp/sparc3-scale}
grep -m1 "model name" /proc/cpuinfo
grep -m1 "cpu family" /proc/cpuinfo
grep -q avx512f /proc/cpuinfo && echo "CPU has AVX-512" || echo "AVX2-only CPU"
SPARC3_SCALE_DIR=$dir cargo bench --bench scale 2>/dev/null
echo
echo "| shape | tokens | LXT attribution s | LXT peak GiB (time -v) | status |"
echo "|---|---|---|---|---|"
shapes=${SPARC3_SCALE_SHAPES:-$(ls "$dir")}
for shape in ${shapes//,/ }; do
  m="$dir/$shape"
  [ -f "$m/config.json" ] || continue
  for t in ${SPARC3_SCALE_LENGTHS:-512 2048}; do
    ids="$dir/ids-$t.jsonl"
    [ -f "$ids" ] || continue
    log=$(mktemp)
    /usr/bin/time -v "$py" scripts/bench_lxt_scale.py --model "$m" --seq-len "$t" \
      --target next-token --ids "$ids" --accumulate abs --threads 2 --json >"$log.out" 2>"$log"
    rc=$?
    peak=$(awk '/Maximum resident/ {printf "%.2f", $6/1048576}' "$log")
    secs=$("$py" -c "import json,sys; v=[json.loads(l) for l in open('$log.out') if l.startswith('{')]; print(v[-1].get('median_seconds') or v[-1].get('status') if v else '-')" 2>/dev/null)
    status=ok; [ $rc -eq 137 ] && status="killed (OOM)"; [ $rc -ne 0 ] && [ $rc -ne 137 ] && status="exit $rc"
    grep -q '"oom"' "$log.out" 2>/dev/null && status="out of memory"
    echo "| $shape | $t | ${secs:--} | $peak | $status |"
    rm -f "$log" "$log.out"
  done
done
