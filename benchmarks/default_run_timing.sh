#!/usr/bin/env bash
# Wall time of the default run, `segbench run --folds 5` (issue 16, item 3): once on first use (empty cache: the
# synthetic dataset is generated and preprocessed) and 3 times with the dataset cached, each with /proc/loadavg
# before and after; then the median and the tutorial's criteria on the last run (benchmarks/default_run_criteria.py).
# Run it on an otherwise idle machine; figures taken under load say nothing about segbench.
#
#   benchmarks/default_run_timing.sh [OUT_DIR]      (default: a new temporary folder; run folders are kept there)
#
# Targets: <= 120 s on first use, median <= 75 s cached, on an idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d -t segbench-default-timing-XXXX)}"
mkdir -p "$out"
export SEGBENCH_CACHE="$out/cache"   # a private cache: the first run really is a first use
echo "segbench $(python -c 'import segbench; print(segbench.__version__, segbench.__file__)')"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

timed_run() {  # $1 = label, $2 = run folder
    local before after start end
    before=$(cut -d' ' -f1-3 /proc/loadavg)
    start=$(date +%s.%N)
    segbench run --folds 5 --out "$2" > "$2.log" 2>&1 || { echo "$1: segbench run failed, see $2.log" >&2; exit 1; }
    end=$(date +%s.%N)
    after=$(cut -d' ' -f1-3 /proc/loadavg)
    printf '%s: %.1f s   (loadavg before %s, after %s)\n' "$1" "$(echo "$end - $start" | bc)" "$before" "$after"
}

timed_run "first use" "$out/run-first-use"
walls=()
for i in 1 2 3; do
    line=$(timed_run "cached run $i" "$out/run-cached-$i")
    echo "$line"
    walls+=("$(echo "$line" | awk '{print $4}')")
done
median=$(printf '%s\n' "${walls[@]}" | sort -n | sed -n 2p)
echo "median of the cached runs: $median s   (target <= 75 s on an idle machine)"
echo "loadavg now: $(cat /proc/loadavg)"
echo
python benchmarks/default_run_criteria.py "$out/run-cached-3"
echo
sed -n '/Leaderboard/,/^$/p' "$out/run-cached-3.log"
echo "runs and logs: $out   (regenerate reports/example from $out/run-cached-3/report)"
