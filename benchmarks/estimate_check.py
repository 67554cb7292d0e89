"""Compare a finished run's before-run cost estimate with what its jobs measured (issue 29).

    python benchmarks/estimate_check.py RUN_DIR [RUN_DIR ...]

Prints, per run, the report's comparison (segbench.report.estimate.comparison_frame: estimated, measured, ratio =
measured / estimated) and the sum of the job times against the estimated total. Exit status 1 when a model's mean job
time is outside 1.5x of its estimate (the issue's target), 0 otherwise. Run on an idle machine: figures taken under
load compare the estimate with other processes' load, not with segbench.
"""

from __future__ import annotations

import sys

import pandas as pd

from segbench import results
from segbench.report.estimate import TOLERANCE, comparison_frame


def check(run_dir: str) -> bool:
    manifest = results.load_manifest(run_dir)
    estimate = manifest.get("estimate")
    if not estimate:
        print(f"{run_dir}: no estimate in manifest.json (a run made before issue 29, or a Slurm run)")
        return False
    jobs = results.load_jobs(run_dir)
    frame = comparison_frame(estimate, jobs)
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(f"{run_dir} ({manifest.get('command')}):")
        print(frame.to_string(index=False))
    done = jobs[jobs["status"] == "done"]
    print(f"sum of job times {done['job_seconds'].sum():.1f} s over {len(done)} done job(s); estimated "
          f"{estimate.get('total_s')} s for {estimate.get('jobs')} job(s)")  # fmt: skip
    job_rows = frame[frame["measure"] == "job time (s)"]
    ok = bool(len(job_rows)) and bool(job_rows["within"].all())
    print(f"job times within {TOLERANCE}x for every model: {'yes' if ok else 'NO'}\n")
    return ok


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    outcomes = [check(path) for path in sys.argv[1:]]
    sys.exit(0 if all(outcomes) else 1)
