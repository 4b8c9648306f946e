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

# Shards are numbered 1..N whatever the array's numbering (--array=0-7 or --array=1-8). To
# redo only some tasks of an array of 8 (--array=3,5), keep the whole array's numbering:
#   AGENTS_SHARDS=8 AGENTS_FIRST_TASK=1 sbatch --array=3,5 docs/examples/slurm-array.sh
first=${AGENTS_FIRST_TASK:-$SLURM_ARRAY_TASK_MIN}
count=${AGENTS_SHARDS:-$SLURM_ARRAY_TASK_COUNT}
task=$((SLURM_ARRAY_TASK_ID - first + 1))
if [ "$task" -lt 1 ] || [ "$task" -gt "$count" ]; then
    echo "slurm-array.sh: task $SLURM_ARRAY_TASK_ID is not one of $count shards from $first;" \
        "set AGENTS_SHARDS and AGENTS_FIRST_TASK to the whole array's" >&2
    exit 2
fi
part=$parts/part-$task-of-$count.jsonl
mkdir -p "$parts"

# At the time limit the pipeline gets SIGTERM and finishes its requests in flight: the script
# waits for it rather than ending first (a batch script that ended may have its leftover
# processes killed before they wrote what was paid for).
agents-read "$input" --shard "$task/$count" \
    | agents-map --config "$job" --resume "$part" --grace 20 \
        ${AGENTS_RATE_GROUP:+--rate-group "$AGENTS_RATE_GROUP"} \
    | agents-write --append "$part" &
trap 'wait' TERM INT
wait $!
