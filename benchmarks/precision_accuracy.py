"""Does bf16 training lose accuracy? Two runs of the same recipe, one per precision, compared with segbench's rule.

Issue 16's criterion: with the same budget, bf16's mean Dice is within 0.02 of fp32's, and segbench's own verdict
rule (case-level and job-level Wilcoxon over folds × repeats, see docs/validity.md) finds no significant difference
over at least 3 repeats. Both runs use the same dataset, splits, seeds and initial weights (common random numbers),
so each (case, fold, repeat) is paired across the two precisions.

Usage::

    segbench run --precision fp32 --repeats 3 --out RUN_FP32 [other flags]
    segbench run --precision bf16 --repeats 3 --out RUN_BF16 [same flags]
    python benchmarks/precision_accuracy.py RUN_FP32 RUN_BF16

Exit status 1 when a criterion fails.
"""

from __future__ import annotations

import sys

import pandas as pd

from segbench import results
from segbench.report import stats

MAX_DICE_GAP = 0.02


def compare(fp32_dir: str, bf16_dir: str) -> list[tuple[str, bool]]:
    """[(criterion with its figures, passed)] per model present in both runs."""
    keys = ["model", "case_id", "fold", "repeat"]
    fp32 = results.load_metrics(fp32_dir)[[*keys, "dice"]].rename(columns={"dice": "ref"})
    bf16 = results.load_metrics(bf16_dir)[[*keys, "dice"]].rename(columns={"dice": "other"})
    both = pd.merge(fp32, bf16, on=keys, how="outer")
    groups = list(both.groupby("model"))
    comparisons = [
        stats.repeated_comparison(
            group, metric="Dice", reference_name=f"{model} fp32", other_name=f"{model} bf16", higher_is_better=True
        )
        for model, group in groups
    ]
    checks = []
    for (model, group), c in zip(groups, stats.with_holm(comparisons), strict=True):
        gap = float(group["other"].mean() - group["ref"].mean())
        checks.append((f"{model}: mean Dice fp32 {group['ref'].mean():.3f}, bf16 {group['other'].mean():.3f} "
                       f"(bf16 - fp32 = {gap:+.3f}; within {MAX_DICE_GAP})", abs(gap) <= MAX_DICE_GAP))  # fmt: skip
        checks.append((f"{model}: verdict over {c.repeats} repeats, {c.job_units} networks each: '{c.verdict}' "
                       f"(case {stats.format_p(c.p_holm)}, job {stats.format_p(c.job_p_holm)})",
                       c.verdict != "beats" and c.repeats >= 3))  # fmt: skip
    return checks


def main(argv: list[str]) -> int:
    checks = compare(argv[0], argv[1])
    for text, passed in checks:
        print(("PASS  " if passed else "FAIL  ") + text)
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
