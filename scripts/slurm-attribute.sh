#!/usr/bin/env bash
# Sharded attribution on a Slurm cluster: one array task per shard, then one merge job.
#
#   sbatch --array=0-7 scripts/slurm-attribute.sh          # 8 shards
#   sbatch --dependency=afterok:<jobid> --wrap "sparc3 merge out/part-*.safetensors --out out/relevance.safetensors"
#
# Every shard draws the same sample list (same --seed) and attributes its slice of it, so the
# merged file equals a single run over all samples.
#SBATCH --job-name=sparc3-attr
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=04:00:00
set -euo pipefail

MODEL=${MODEL:-HuggingFaceTB/SmolLM2-135M}
DATA=${DATA:-c4_en_first1000.jsonl}
SAMPLES=${SAMPLES:-1024}
SEQ_LEN=${SEQ_LEN:-512}
OUT=${OUT:-out}
N=${SLURM_ARRAY_TASK_COUNT:?run as a job array, e.g. --array=0-7}
I=${SLURM_ARRAY_TASK_ID:?}

mkdir -p "$OUT"
sparc3 attribute --model "$MODEL" --data "$DATA" --samples "$SAMPLES" --seq-len "$SEQ_LEN" \
  --seed 0 --threads "${SLURM_CPUS_PER_TASK:-1}" --shard "$I/$N" \
  --out "$OUT/part-$(printf %04d "$I").safetensors" --force
