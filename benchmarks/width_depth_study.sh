#!/usr/bin/env bash
# The committed width/depth study (reports/width-depth/): is a deeper U-Net better at the same compute?
#
# On the embedded synthetic Task02-like dataset, U-Nets of depth 3 and 4 are scaled to the tutorial U-Net's training
# FLOPs per voxel (`--match flops --match-to unet`; depth 2 at that cost *is* the tutorial U-Net), and compared with
# the tutorial U-Net and FCN on 5 folds with 3 training seeds per fold (--repeats, where this segbench has it).
# The patch is 32x32x32 because depth 4 needs sizes divisible by 16.
#
# Cost: 31 min with 3 repeats on a 2-core AMD EPYC (AVX-512 BF16, bf16 training; 2026-11-30); study.txt records it.
#
# Usage (from anywhere):
#   benchmarks/width_depth_study.sh                     # writes reports/width-depth/
# Settings come from the environment, e.g. a quick check that the script works:
#   FOLDS=2 REPEATS=1 ITERATIONS=2 PATCH="16 16 16" DATA=/tmp/task REPORT_DIR=/tmp/wd benchmarks/width_depth_study.sh
# Extra arguments are passed to `segbench run` (e.g. --device cuda).
set -euo pipefail

cd "$(dirname "$0")/.."
command -v segbench >/dev/null || { echo "segbench is not on PATH: activate the environment it is installed in" >&2; exit 2; }
MODELS=${MODELS:-fcn,unet,unet_w20_d3,unet_w20_d4}
MATCH=${MATCH:-flops}
MATCH_TO=${MATCH_TO:-unet}
FOLDS=${FOLDS:-5}
REPEATS=${REPEATS:-3}
PATCH=${PATCH:-32 32 32}
ITERATIONS=${ITERATIONS:-}            # empty: segbench's default budget
DATA=${DATA:-}                        # empty: the embedded synthetic dataset
REPORT_DIR=${REPORT_DIR:-reports/width-depth}
RUN_DIR=${RUN_DIR:-segbench-runs/width-depth-$(date +%Y%m%d-%H%M%S)}

args=(run --models "$MODELS" --match "$MATCH" --match-to "$MATCH_TO" --folds "$FOLDS" --out "$RUN_DIR")
read -r -a patch <<<"$PATCH"
args+=(--patch "${patch[@]}")
[[ -n "$DATA" ]] && args+=(--data "$DATA")
[[ -n "$ITERATIONS" ]] && args+=(--iterations "$ITERATIONS")
if segbench run --help | grep -- "--repeats" >/dev/null; then  # no -q: an early exit would fail the pipe
    args+=(--repeats "$REPEATS")
elif [[ "$REPEATS" != 1 ]]; then
    echo "note: this segbench has no --repeats; running one training seed per fold" >&2
    REPEATS=1
fi
args+=("$@")

echo "segbench ${args[*]}" >&2
load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
# The code that runs is the code at the start: edits made while it runs must not be credited to it.
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[[ -n "$(git status --porcelain --untracked-files=no -- segbench 2>/dev/null)" ]] && commit+=" (with uncommitted changes in segbench/)"
start=$(date +%s)
status=0
segbench "${args[@]}" --no-report || status=$?
wall=$(($(date +%s) - start))

# The report of the run goes to REPORT_DIR, with the run's tables and manifest, so the folder stands on its own.
mkdir -p "$REPORT_DIR"
segbench report "$RUN_DIR" --out "$REPORT_DIR"
cp "$RUN_DIR/manifest.json" "$RUN_DIR/jobs.csv" "$RUN_DIR/metrics.csv" "$REPORT_DIR/"
cpu=$(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo "?")
cat >"$REPORT_DIR/study.txt" <<EOF
command: segbench ${args[*]}
segbench commit: ${commit}
machine: ${cpu} x $(nproc --all) cores; load average before: ${load_before}, after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
repeats: ${REPEATS}
wall time of segbench run: ${wall} s ($((wall / 60)) min $((wall % 60)) s)
exit status of segbench run: ${status}
EOF
cat "$REPORT_DIR/study.txt"
exit "$status"
