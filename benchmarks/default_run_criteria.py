"""Check the default run's lesson on a finished run directory (issue 16, item 3); exit 1 if a criterion fails.

Criteria: U-Net mean Dice ≥ 0.90; U-Net better than FCN on mean Dice and on median HD95 (misses count as the image
diagonal, as in the leaderboard); paired Wilcoxon signed-rank test on per-case Dice p < 0.001 (segbench's own
:func:`segbench.report.stats.paired_comparison`).

Usage::

    python benchmarks/default_run_criteria.py RUN_DIR
"""

from __future__ import annotations

import sys

from segbench import results
from segbench.report import stats, tables


def check(run_dir: str) -> list[tuple[str, bool]]:
    """[(criterion with its figures, passed)] for the run in ``run_dir``."""
    metrics = results.load_metrics(run_dir)
    board = tables.leaderboard(tables.per_case_table(metrics), results.load_jobs(run_dir), models=[]).set_index("model")
    unet, fcn = board.loc["unet"], board.loc["fcn"]
    dice = metrics.pivot_table(index="case_id", columns="model", values="dice")
    comparison = stats.paired_comparison(dice["unet"], dice["fcn"], metric="Dice", reference_name="unet",
                                         other_name="fcn", higher_is_better=True)  # fmt: skip
    return [
        (f"U-Net mean Dice {unet['dice_mean']:.3f} >= 0.90", unet["dice_mean"] >= 0.90),
        (f"mean Dice U-Net {unet['dice_mean']:.3f} > FCN {fcn['dice_mean']:.3f}", unet["dice_mean"] > fcn["dice_mean"]),
        (f"median HD95 U-Net {unet['hd95_median']:.1f} < FCN {fcn['hd95_median']:.1f} mm",
         unet["hd95_median"] < fcn["hd95_median"]),
        (f"Wilcoxon p on Dice {comparison.p_value:.2g} < 0.001 ({comparison.n_cases} cases)",
         comparison.p_value < 1e-3),
    ]  # fmt: skip


def main(argv: list[str]) -> int:
    outcome = check(argv[1])
    for text, ok in outcome:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in outcome) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
