#!/bin/bash
# A SLURM job array over one job: task K of N translates shard K/N of the input into its own
# part, and resubmitting the array resumes every part. Merge the parts when all tasks ended:
#
#   sbatch --array=1-8 docs/examples/slurm-array.sh
#   cat parts/part-*-of-8.jsonl | agents-write --append translations.jsonl   # every ID once
#
# (-of-8.jsonl: the glob must not take the parts' sidecars, part-K-of-8.jsonl.agents-job.jsonl.)
#
# At the time limit SLURM sends SIGTERM (then SIGKILL after its KillWait, 30 s by default):
# agents-map stops sending, keeps the answers of the requests in flight (--grace 20 gives
# them 20 s), and agents-write keeps all it was given, so nothing paid for is lost and the
# resubmitted array pays for none of it again. The key comes from the environment sbatch
# passes on (export OPENAI_API_KEY before sbatch, or in ~/.bashrc with mode 0600), never a
# command line. Tasks on many nodes share one rate limit through Redis (AGENTS_RATE_GROUP,
# e.g. redis://10.0.0.5:6379/openai-key-1; its password, if any, in AGENTS_REDIS_PASSWORD).
#
#SBATCH --job-name=agents
#SBATCH --time=04:00:00
#SBATCH --output=parts/slurm-%A_%a.log
set -euo pipefail

input=${AGENTS_INPUT:-docs/examples/words.csv}
job=${AGENTS_JOB:-docs/examples/translation.yaml}
parts=${AGENTS_PARTS:-parts}

# Shards are numbered 1..N whatever the array's numbering (--array=0-7 or --array=1-8).
task=$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN + 1))
count=$SLURM_ARRAY_TASK_COUNT
part=$parts/part-$task-of-$count.jsonl
mkdir -p "$parts"

agents-read "$input" --shard "$task/$count" \
    | agents-map --config "$job" --resume "$part" --grace 20 \
        ${AGENTS_RATE_GROUP:+--rate-group "$AGENTS_RATE_GROUP"} \
    | agents-write --append "$part"
