#!/usr/bin/env bash
# LRP compression against the number of calibration samples (issue 4): one attribution of the
# largest count split in 8 shards (run them in parallel, or as jobs of a scheduler), merged as
# prefixes (the first 1/8, 2/8, 4/8, 8/8 of the same sample list), each pruned 50% per row and
# evaluated on WikiText-2. Prints "samples ppl_before ppl_after".
# Usage: SPARC3=target/release/sparc3 DEVICE=cpu|cuda N=1024 scripts/lrp-sample-study.sh
set -euo pipefail
S=${SHARED:-$(cd "$(dirname "$0")/../../shared" && pwd)}
BIN=${SPARC3:-target/release/sparc3}
DEV=${DEVICE:-cpu}
N=${N:-1024}
M=${MODEL:-$S/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf}
W=${WORK:-$(mktemp -d)}
for i in 0 1 2 3 4 5 6 7; do
  "$BIN" attribute --device "$DEV" --threads "${THREADS:-2}" --model "$M" --data "$S/data/c4/c4_en_first1000.jsonl" \
    --samples "$N" --seq-len 512 --seed 0 --target next-token --shard "$i/8" --out "$W/s$i.safetensors" --force > /dev/null &
done
wait
cp "$W/s0.safetensors" "$W/m1.safetensors"
"$BIN" merge "$W"/s[0-1].safetensors --out "$W/m2.safetensors" --force > /dev/null
"$BIN" merge "$W"/s[0-3].safetensors --out "$W/m4.safetensors" --force > /dev/null
"$BIN" merge "$W"/s[0-7].safetensors --out "$W/m8.safetensors" --force > /dev/null
for k in 1 2 4 8; do
  "$BIN" compress --device "$DEV" --model "$M" --method lrp --ratio 0.5 --scores "$W/m$k.safetensors" \
    --eval "$S/data/wikitext-2-raw/wiki.test.joined.txt" --eval-windows 64 --eval-seq-len 512 \
    --out "$W/c$k" --force --json |
    python3 -c "import json,sys; d=json.load(sys.stdin); print($N*$k//8, d['ppl_before'], d['ppl_after'])"
done
