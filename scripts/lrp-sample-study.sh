#!/usr/bin/env bash
# LRP compression against the number of calibration samples (issue 4): one attribution of the
# largest count split in 8 shards (run them in parallel, or as jobs of a scheduler), merged as
# prefixes (the first 1/8, 2/8, 4/8, 8/8 of the same sample list), each pruned 50% per row and
# evaluated on WikiText-2. Prints "samples ppl_before ppl_after".
# Usage: SPARC3=target/release/sparc3 DEVICE=cpu|cuda N=1024 TARGET=next-token-logprob AGG=token-sq PAR=8 scripts/lrp-sample-study.sh
# (PAR=1 runs the shards one after another: the right choice on a small CPU machine; UPTO=4
# attributes only the first 4 shards, i.e. the 1/8, 2/8 and 4/8 points; a later run with the same
# WORK folder adds the rest).
set -euo pipefail
S=${SHARED:-$(cd "$(dirname "$0")/../../shared" && pwd)}
BIN=${SPARC3:-target/release/sparc3}
DEV=${DEVICE:-cpu}
N=${N:-1024}
M=${MODEL:-$S/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf}
TARGET=${TARGET:-next-token-logprob}
AGG=${AGG:-token-sq}
PAR=${PAR:-8}
UPTO=${UPTO:-8}
W=${WORK:-$(mktemp -d)}
for ((i = 0; i < UPTO; i++)); do
  # A finished shard is kept, so an interrupted study resumes where it stopped.
  [ -f "$W/s$i.safetensors" ] && continue
  "$BIN" attribute --device "$DEV" ${THREADS:+--threads "$THREADS"} --model "$M" --data "$S/data/c4/c4_en_first1000.jsonl" \
    --samples "$N" --seq-len 512 --seed 0 --target "$TARGET" --aggregation "$AGG" --shard "$i/8" \
    --out "$W/s$i.safetensors" > /dev/null &
  if (( (i + 1) % PAR == 0 )); then wait; fi
done
wait
cp "$W/s0.safetensors" "$W/m1.safetensors"
for k in 2 4 8; do
  if ((k <= UPTO)); then
    "$BIN" merge $(for ((i = 0; i < k; i++)); do echo "$W/s$i.safetensors"; done) --out "$W/m$k.safetensors" --force > /dev/null
  fi
done
for k in 1 2 4 8; do
  ((k <= UPTO)) || continue
  if [ ! -f "$W/c$k/sparc3-report.json" ]; then
    "$BIN" compress --device "$DEV" --model "$M" --method lrp --ratio 0.5 --scores "$W/m$k.safetensors" \
      --eval "$S/data/wikitext-2-raw/wiki.test.joined.txt" --eval-windows 64 --eval-seq-len 512 \
      --out "$W/c$k" --force > /dev/null
  fi
  python3 -c "import json; d=json.load(open('$W/c$k/sparc3-report.json')); print($N*$k//8, d['ppl_before'], d['ppl_after'])"
done
