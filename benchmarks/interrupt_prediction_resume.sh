#!/usr/bin/env bash
# Interrupt a real-size run while it predicts, resume it, and check that the finished case predictions were kept
# (issue 29, item 4). On 20 synthetic cases of Task02's size (320x320x110), default recipe, one model, 5 folds:
#   1. start `segbench run` with its output in a log file (plain per-case lines: no terminal);
#   2. as soon as the log shows the first job's second predicted case, send SIGTERM (segbench treats it as Ctrl-C);
#   3. check: exit status 130, the first job `killed`, its written predictions listed with inode and mtime;
#   4. `segbench run --resume --out RUN`; check: exit 0, the first job's `predictions_kept` equals the number of files
#      found in 3, those files are the same files (inode, mtime), and the resume predicted only the other cases
#      (its log has one "predicted" line per remaining case of that job and one "kept" line per kept case).
# Prints the per-case times of both attempts. Takes some minutes on 2 cores (training 120 iterations per job plus
# prediction of 4 cases); run it on an otherwise idle machine when the times matter.
#
#   benchmarks/interrupt_prediction_resume.sh [OUT_DIR] [MODEL]     (default: a new temporary folder, fcn)
#   SHAPE="320 320 110" (default) and RUN_ARGS="" (extra `segbench run` flags) size it; e.g. a rehearsal in seconds:
#   SHAPE="48 48 32" RUN_ARGS="--iterations 3 --patch 16 16 16 --overlap 0.75 --mirror" benchmarks/interrupt_...sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d -t segbench-interrupt-XXXX)}"
model="${2:-fcn}"
shape=${SHAPE:-320 320 110}
run_args=${RUN_ARGS:-}
mkdir -p "$out"
export SEGBENCH_CACHE="$out/cache"
if [ ! -d "$out/real" ]; then
    # shellcheck disable=SC2086
    segbench data synth "$out/real" --cases 20 --test-cases 0 --shape $shape > /dev/null
fi
run="$out/run"
rm -rf "$run"
# shellcheck disable=SC2086
segbench run --data "$out/real" --models "$model" --folds 5 $run_args --out "$run" --no-report > "$out/first.log" 2>&1 &
pid=$!
until grep -q "^$model fold 0: case .* (2/[0-9]*) predicted" "$out/first.log"; do
    if ! kill -0 "$pid" 2> /dev/null; then echo "the run ended before predicting 2 cases; see $out/first.log"; exit 1; fi
    sleep 1
done
kill -TERM "$pid"  # what Slurm and `kill` send; segbench treats it like Ctrl-C
status=0
wait "$pid" || status=$?
echo "first attempt: exit status $status (expected 130)"
job="$run/jobs/$model/fold_0"
python - "$job" <<'PY'
import json, sys
from pathlib import Path
job = Path(sys.argv[1])
result = json.loads((job / "result.json").read_text())
print(f"first job after the interrupt: {result['status']} ({result['reason'][:80]})")
PY
before=$(stat -c '%n %i %Y' "$job"/predictions/*.nii.gz | sort)
echo "predictions written before the interrupt:"; echo "$before"
grep "^$model fold 0: case" "$out/first.log"

segbench run --resume --out "$run" --no-report > "$out/resume.log" 2>&1 && echo "resume: exit status 0" \
    || echo "resume: exit status $? (expected 0)"
grep "^$model fold 0: case" "$out/resume.log"
after=$(stat -c '%n %i %Y' $(echo "$before" | cut -d' ' -f1) | sort)
[ "$before" = "$after" ] && echo "kept files unchanged (inode, mtime): yes" || echo "kept files unchanged: NO"
python - "$job" "$(echo "$before" | wc -l)" <<'PY'
import json, sys
from pathlib import Path
record = json.loads((Path(sys.argv[1]) / "result.json").read_text())
kept, expected = record["job"].get("predictions_kept"), int(sys.argv[2])
print(f"resumed job: {record['status']}, predictions_kept {kept} (expected {expected}), "
      f"{record['job'].get('num_val_cases')} validation cases, prediction s/case {record['job'].get('inference_seconds_per_case')}")
sys.exit(0 if record["status"] == "done" and kept == expected else 1)
PY
