#!/usr/bin/env bash
# Is the before-run estimate within 1.5x of the actual job times (issue 29)? Two runs, each compared by
# benchmarks/estimate_check.py (exit 1 when a model's mean job time is outside 1.5x of its estimate):
#   1. the default run, `segbench run --folds 5`;
#   2. a real-size run on 2 cores: 20 synthetic cases of Task02's size (320x320x110 voxels at the default spacing),
#      `segbench run --data REAL $REAL_ARGS` pinned to CPUs 0-1 (taskset), default recipe (patch 32x32x24, 120
#      iterations), so prediction (thousands of windows per case) dominates, as it does for a small-machine user.
# Run it on an otherwise idle machine; /proc/loadavg is printed before and after each run.
#
#   benchmarks/estimate_accuracy.sh [OUT_DIR]          (default: a new temporary folder; everything is kept there)
#   REAL_ARGS="--folds 5 --models fcn,unet" (default) chooses the real-size run's flags.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d -t segbench-estimate-XXXX)}"
mkdir -p "$out"
export SEGBENCH_CACHE="$out/cache"
real_args=${REAL_ARGS:---folds 5 --models fcn,unet}
pin=()
if command -v taskset > /dev/null && [ "$(nproc)" -gt 2 ]; then pin=(taskset -c 0,1); fi

echo "loadavg before the default run: $(cat /proc/loadavg)"
segbench run --folds 5 --out "$out/default" > "$out/default.log" 2>&1 || echo "default run: not every job done"
echo "loadavg after: $(cat /proc/loadavg)"

if [ ! -d "$out/real" ]; then
    segbench data synth "$out/real" --cases 20 --test-cases 0 --shape 320 320 110 > /dev/null
fi
echo "loadavg before the real-size run: $(cat /proc/loadavg)"
# shellcheck disable=SC2086
"${pin[@]}" segbench run --data "$out/real" $real_args --out "$out/real-run" > "$out/real-run.log" 2>&1 \
    || echo "real-size run: not every job done"
echo "loadavg after: $(cat /proc/loadavg)"
echo
grep -A12 "^Estimate before the first job" "$out/real-run.log" | grep "^ " || true
echo
python benchmarks/estimate_check.py "$out/default" "$out/real-run"
