"""Measure how often segbench's verdict rule declares a winner between two identical architectures (A/A).

Each A/A comparison pits one architecture against itself trained under *different* seeds: run ``i`` of the pool is
one complete cross-validation run (every fold) of ``--model`` with seed ``SEED0 + i`` on a small synthetic dataset
and budget, all runs sharing one splits file. Comparison ``c`` with ``R`` repeats takes runs ``2cR … 2cR + R - 1`` as
the repeats of "A" and the next ``R`` runs as the repeats of "B" (disjoint runs, so comparisons are independent).
Their metrics go through :func:`segbench.report.compare_models` — the function the report uses — and the script
counts the comparisons that end in "A beats B" or "B beats A". With no true difference every such verdict is a
false positive; the rate and its Clopper–Pearson 95 % interval go into ``docs/validity.md``.

``R = 1`` is judged by the one-repeat rule (Holm-corrected case-level Wilcoxon test only, as segbench's reports did
before repeats existed); ``R ≥ 2`` both by the case test alone (on each case's mean over repeats) and by the shipped
rule (that case test AND the job-level test over the independently trained (fold, repeat) networks). The R = 1 rate
uses every disjoint pair of runs of the pool.

Run (compute-heavy; trainings are resumable, a second call only analyses)::

    nice -n 10 python benchmarks/calibrate_verdicts.py --runs /tmp/calibration --comparisons 50 --repeats 2 3

On two cores, train two shards side by side, then analyse::

    for k in 0 1; do python benchmarks/calibrate_verdicts.py --runs /tmp/calibration --shard $k/2 & done; wait
    python benchmarks/calibrate_verdicts.py --runs /tmp/calibration --analyse-only

Not a pytest module: it trains hundreds of tiny models (about 2 s each on one CPU core).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pandas as pd
import torch
from scipy import stats as scipy_stats

SEED0 = 1000
MODEL = "fcn"
CASES, SHAPE, PATCH, FOLDS, ITERATIONS = 12, (24, 24, 16), (16, 16, 16), 3, 40


def dataset_and_splits(root: Path) -> tuple[Path, Path]:
    """The pool's synthetic dataset and the one splits file every run uses (created on first call)."""
    from segbench.data.synth import make_synthetic_task
    from segbench.splits import make_splits, save_splits

    data = root / "data"
    if not (data / "dataset.json").is_file():
        make_synthetic_task(data, cases=CASES, test_cases=1, seed=11, shape=SHAPE)
    splits = root / "splits_final.json"
    if not splits.is_file():
        ids = sorted(p.name.removesuffix(".nii.gz") for p in (data / "labelsTr").glob("*.nii.gz"))
        save_splits(splits, make_splits(ids, folds=FOLDS, method="kfold", seed=0))
    return data, splits


def train_pool(root: Path, runs: int, model: str, *, seed0: int = SEED0, shard: tuple[int, int] = (0, 1)) -> None:
    """Train runs ``0 … runs-1`` (run ``i`` with seed ``seed0 + i``), skipping those already complete.

    ``shard = (k, n)`` trains only the runs with ``i % n == k``, so ``n`` one-thread processes can share a pool.
    """
    from segbench.config import RunConfig, TrainConfig
    from segbench.results import load_manifest
    from segbench.runner import run_comparison

    data, splits = dataset_and_splits(root)
    train = TrainConfig(iterations=ITERATIONS, patch_size=PATCH, batch_size=2, num_workers=0,
                        checkpoint_every=ITERATIONS, log_every=ITERATIONS)  # fmt: skip
    k, n = shard
    for i in range(k, runs, n):
        run_dir = root / f"run_{i:04d}"
        if (run_dir / "metrics.csv").is_file():
            seed = load_manifest(run_dir)["config"]["seed"]
            if seed != seed0 + i:  # a pool must not mix two seed ranges silently
                raise SystemExit(f"{run_dir} was trained with seed {seed}, not {seed0 + i}: pass that pool's own "
                                 "--seed0, or a fresh --runs folder")  # fmt: skip
            continue
        config = RunConfig(data=str(data), models=(model,), folds=FOLDS, splits=str(splits), seed=seed0 + i,
                           device="cpu", train=train)  # fmt: skip
        run_comparison(config, run_dir=run_dir, progress=False, report=False, cache_dir=root / "cache")
        print(f"trained run {i + 1}/{runs}", flush=True)


def load_run(root: Path, i: int, name: str, repeat: int) -> pd.DataFrame:
    """metrics.csv of run ``i``, relabelled as model ``name``, repeat ``repeat``."""
    from segbench.results import load_metrics

    frame = load_metrics(root / f"run_{i:04d}")
    return frame.assign(model=name, repeat=repeat)


def comparison(root: Path, a_runs: list[int], b_runs: list[int]):
    """The report's Dice comparison (:func:`segbench.report.compare_models`) of A = ``a_runs`` against B."""
    from segbench.report import compare_models, tables

    frames = [load_run(root, i, "A", r) for r, i in enumerate(a_runs)]
    frames += [load_run(root, i, "B", r) for r, i in enumerate(b_runs)]
    per_case = tables.per_case_table(pd.concat(frames, ignore_index=True))
    return next(c for c in compare_models(per_case, "A", ["A", "B"]) if c.metric == "Dice")


def case_test_only(c) -> bool:
    """The one-repeat rule (Holm-corrected case-level test alone), applied to any comparison."""
    return c.n_tested > 0 and c.p_holm < 0.05


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval of ``k`` successes in ``n`` trials."""
    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(scipy_stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(scipy_stats.beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def rate_row(rule: str, repeats: int, declared: list[bool]) -> dict:
    n, k = len(declared), sum(declared)
    low, high = clopper_pearson(k, n)
    return {"rule": rule, "repeats R": repeats, "A/A comparisons": n, "winners declared": k, "rate": k / n,
            "95% CI (Clopper-Pearson)": f"{low:.3f}–{high:.3f}"}  # fmt: skip


def analyse(root: Path, comparisons: int, repeats_list: list[int]) -> pd.DataFrame:
    """False-positive rates: R = 1 over every disjoint pair of runs, R ≥ 2 over up to ``comparisons`` each."""
    pool = sorted(int(p.name.removeprefix("run_")) for p in root.glob("run_*") if (p / "metrics.csv").is_file())
    one = [comparison(root, [pool[2 * c]], [pool[2 * c + 1]]) for c in range(len(pool) // 2)]
    rows = [rate_row("case test (shipped rule for R = 1)", 1, [c.verdict == "beats" for c in one])]
    for repeats in repeats_list:
        count = min(comparisons, len(pool) // (2 * repeats))
        found = []
        for c in range(count):
            start = 2 * c * repeats
            found.append(comparison(root, pool[start : start + repeats], pool[start + repeats : start + 2 * repeats]))
        rows.append(rate_row("case test only (on means over repeats)", repeats, [case_test_only(c) for c in found]))
        rows.append(rate_row("case test AND job-level test (shipped)", repeats, [c.verdict == "beats" for c in found]))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder holding the pool of runs (resumable)")
    parser.add_argument("--comparisons", type=int, default=50, help="A/A comparisons at the largest R")
    parser.add_argument("--repeats", type=int, nargs="+", default=[2, 3], help="R values of the shipped rule")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--seed0", type=int, default=SEED0, help="run i trains with seed SEED0 + i; a fresh pool "
                        "needs seeds no earlier pool used")  # fmt: skip
    parser.add_argument("--shard", default="0/1", help="K/N: train only runs i with i %% N == K (parallel processes)")
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("SEGBENCH_CACHE", str(args.runs / "cache"))
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.analyse_only:
        k, n = (int(x) for x in args.shard.split("/"))
        if not 0 <= k < n:
            parser.error(f"--shard K/N needs 0 <= K < N (got {args.shard})")
        train_pool(args.runs, 2 * args.comparisons * max(args.repeats), args.model, seed0=args.seed0, shard=(k, n))
        if n > 1:
            return  # one shard of the pool: analyse once every shard has finished
    table = analyse(args.runs, args.comparisons, args.repeats)
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
