#!/usr/bin/env bash
# The committed suite (reports/suite/): every embedded synthetic task at its default budget with the FCN, the U-Net and
# one width/depth variant, then the leaderboard across the tasks (issue 26).
#
# Each task is one `segbench run --data synth:TASK` (5 folds, the tutorial recipe's default budget); its report, tables
# and manifest go to REPORT_DIR/TASK/, the leaderboard of all of them to REPORT_DIR/leaderboard/, and
# REPORT_DIR/suite.txt records the commands, the commit, the wall time per task and the load average before and after.
#
# Usage (from anywhere, with segbench's environment active):
#   benchmarks/suite.sh                              # writes reports/suite/
# Settings come from the environment, e.g. a quick check that the script works:
#   TASKS="heart thin" FOLDS=2 ITERATIONS=2 REPORT_DIR=/tmp/suite benchmarks/suite.sh
# Extra arguments are passed to every `segbench run` (e.g. --device cuda).
set -euo pipefail

cd "$(dirname "$0")/.."
command -v segbench >/dev/null || { echo "segbench is not on PATH: activate the environment it is installed in" >&2; exit 2; }
TASKS=${TASKS:-heart ct_lesion thin}
MODELS=${MODELS:-fcn,unet,unet_w10_d2}
FOLDS=${FOLDS:-5}
ITERATIONS=${ITERATIONS:-}            # empty: each task's default budget
REPORT_DIR=${REPORT_DIR:-reports/suite}
# The run directories (checkpoints, predictions: not committed) sit beside the committed copies, so the leaderboard
# page, which names each run relative to itself, says ../runs/TASK and not some machine's temporary folder.
RUN_ROOT=${RUN_ROOT:-$REPORT_DIR/runs}

# The code that runs is the code at the start: edits made while it runs must not be credited to it.
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[[ -n "$(git status --porcelain --untracked-files=no -- segbench 2>/dev/null)" ]] && commit+=" (with uncommitted changes in segbench/)"
cpu=$(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo "?")
mkdir -p "$REPORT_DIR"
log="$REPORT_DIR/suite.txt"
{
    echo "segbench suite: tasks $TASKS; models $MODELS; $FOLDS folds"
    echo "commit: $commit"
    echo "machine: $(nproc --all) CPU(s), $cpu; OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
    echo "started: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$log"

suite_start=$(date +%s)
runs=()
for task in $TASKS; do
    run="$RUN_ROOT/$task"
    args=(run --data "synth:$task" --models "$MODELS" --folds "$FOLDS" --out "$run")
    [[ -n "$ITERATIONS" ]] && args+=(--iterations "$ITERATIONS")
    args+=("$@")
    echo "segbench ${args[*]}" >&2
    load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
    start=$(date +%s)
    status=0
    segbench "${args[@]}" --no-report || status=$?
    wall=$(($(date +%s) - start))
    load_after=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
    echo "$task: segbench ${args[*]} -> exit $status, ${wall} s, load average $load_before before, $load_after after" >>"$log"
    runs+=("$run")
done

# The leaderboard first: it records itself in each run, so the run reports written next link to it.
segbench leaderboard "${runs[@]}" --out "$REPORT_DIR/leaderboard"
for task in $TASKS; do
    run="$RUN_ROOT/$task"
    mkdir -p "$REPORT_DIR/$task"
    segbench report "$run" --out "$REPORT_DIR/$task"
    cp "$run/manifest.json" "$run/jobs.csv" "$run/metrics.csv" "$REPORT_DIR/$task/"
done
{
    echo "finished: $(date -u +%Y-%m-%dT%H:%M:%SZ); suite wall time $(($(date +%s) - suite_start)) s"
    echo "run directories (not committed): $RUN_ROOT"
} >>"$log"
cat "$log"
