"""Parity run (issue 24): nnU-Net's own trainer against ``segbench run --recipe nnunet``, same data, plan and split.

Steps, all kept under OUT:
  1. ``segbench data synth`` writes a small MSD task; nnU-Net's ``nnUNetv2_convert_MSD_dataset`` turns it into
     ``Dataset901_Parity`` and ``nnUNetv2_plan_and_preprocess`` plans it (3d_fullres).
  2. A seeded 2-fold ``splits_final.json`` is written into nnU-Net's preprocessed folder; both sides use it.
  3. nnU-Net: ``nnUNetv2_train 901 3d_fullres FOLD -tr nnUNetTrainer_5epochs -device cpu`` for every fold, SEEDS
     times (nnU-Net takes no seed: each run draws its own initialisation, sampling and augmentation).
  4. segbench: ``segbench run --recipe nnunet --models nnunet_plain --epochs 5 --plans <nnU-Net's plans>
     --splits <the same file> --repeats SEEDS`` (the repeats are the training seeds).
  5. The table: validation Dice per seed and fold (nnU-Net's ``validation/summary.json`` foreground mean; segbench's
     per-case Dice of the same cases, averaged), mean and sample SD over seeds, and the training loss per epoch
     (nnU-Net's logged ``train_losses``; segbench's ``training_log.csv`` averaged over each epoch's 250 iterations).

Usage (a few hours of CPU; the machine's other load only changes the wall time, not the numbers)::

    python benchmarks/nnunet_parity.py OUT [--seeds 3] [--epochs 5] [--nnunet-python .nnunet-venv/bin/python]

Writes OUT/parity.md (the tables) and OUT/parity.json; ``docs/nnunet-parity.md`` quotes a run of it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 901
DATASET = f"Dataset{DATASET_ID}_Parity"
ITERATIONS_PER_EPOCH = 250


def _run(command: list[str], *, env: dict[str, str] | None = None, log: Path) -> None:
    """Run ``command``; its output goes to ``log``; a failure stops the script with the log's tail."""
    started = time.monotonic()
    with log.open("w") as handle:
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    print(f"  {Path(command[0]).name} {' '.join(command[1:4])} ... {time.monotonic() - started:.0f} s", flush=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")


def _nnunet_env(out: Path, nnunet_python: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(out / "nnunet_raw"), nnUNet_preprocessed=str(out / "nnunet_preprocessed"),
               nnUNet_results=str(out / "nnunet_results"), nnUNet_n_proc_DA="1",
               PATH=f"{nnunet_python.parent}:{env.get('PATH', '')}")  # fmt: skip
    return env


def prepare(out: Path, *, nnunet_python: Path, cases: int, shape: list[int], seed: int) -> tuple[Path, Path, Path]:
    """Synthetic task → nnU-Net raw dataset → nnU-Net's plan and preprocessing → a seeded 2-fold split.

    Returns (raw dataset folder, plans file, splits file).
    """
    env = _nnunet_env(out, nnunet_python)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    msd = out / "Task09_Parity"
    raw = Path(env["nnUNet_raw"]) / DATASET
    if not raw.is_dir():
        segbench = Path(sys.executable).parent / "segbench"
        _run([str(segbench), "data", "synth", str(msd), "--cases", str(cases), "--test-cases", "0",
              "--shape", *map(str, shape), "--force"], log=out / "synth.log")  # fmt: skip
        _run(["nnUNetv2_convert_MSD_dataset", "-i", str(msd), "-overwrite_id", str(DATASET_ID)], env=env,
             log=out / "convert.log")  # fmt: skip
        # nnU-Net names the dataset after the task ("Dataset901_Parity" from "Task09_Parity")
        assert raw.is_dir(), f"nnU-Net did not write {raw}"
    preprocessed = Path(env["nnUNet_preprocessed"]) / DATASET
    plans = preprocessed / "nnUNetPlans.json"
    if not plans.is_file():
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2"], env=env,
             log=out / "plan.log")  # fmt: skip
    splits = preprocessed / "splits_final.json"
    if not splits.is_file():
        ids = sorted(p.name.removesuffix("_0000.nii.gz") for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
        random.Random(seed).shuffle(ids)
        halves = [sorted(ids[0::2]), sorted(ids[1::2])]
        folds = [{"train": halves[1 - k], "val": halves[k]} for k in range(2)]
        splits.write_text(json.dumps(folds, indent=1))
    return raw, plans, splits


_TRAIN = """
import multiprocessing, os, sys
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs
dataset, trainer_name, fold = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = join(os.environ["nnUNet_preprocessed"], dataset)
# as nnUNetv2_train does on the CPU; PARITY_THREADS=1 lets two seeds train side by side on a small machine
torch.set_num_threads(int(os.environ.get("PARITY_THREADS", multiprocessing.cpu_count())))
plans = load_json(join(base, "nnUNetPlans.json"))
plans["continue_training"] = False  # as get_trainer_from_args sets it
trainer = getattr(nnUNetTrainer_Xepochs, trainer_name)(plans=plans, configuration="3d_fullres", fold=fold,
    dataset_json=load_json(join(base, "dataset.json")), device=torch.device("cpu"))
trainer.run_training()
trainer.perform_actual_validation(False)
"""


def run_nnunet(out: Path, *, nnunet_python: Path, seeds: int, epochs: int,
               folds: tuple[int, ...] = (0, 1), train: bool = True,
               only_seed: int | None = None) -> dict[tuple[int, int], dict]:  # fmt: skip
    """nnU-Net's trainer for every (seed, fold), or only ``only_seed``'s.

    Returns {(seed, fold): {"dice": float, "train_losses": [...]}} of the finished ones.
    """
    trainer = "nnUNetTrainer_1epoch" if epochs == 1 else f"nnUNetTrainer_{epochs}epochs"
    results = {}
    for seed in range(seeds):
        # a results folder per seed, so that two seeds can train side by side (--nnunet-seed)
        env = _nnunet_env(out, nnunet_python) | {"nnUNet_results": str(out / "nnunet_results" / f"seed{seed}")}
        produced = Path(env["nnUNet_results"]) / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"
        for fold in folds:
            kept = out / "nnunet_runs" / f"seed{seed}" / f"fold_{fold}"
            if not (kept / "validation" / "summary.json").is_file():
                if not train or (only_seed is not None and seed != only_seed):
                    continue
                shutil.rmtree(produced / f"fold_{fold}", ignore_errors=True)
                # nnUNetv2_train's trainer lookup imports every trainer module, Primus's too, which needs timm ->
                # torchvision (absent beside the CPU torch): the trainer is built here as nnUNetv2_train builds it.
                _run([str(nnunet_python), "-c", _TRAIN, DATASET, trainer, str(fold)], env=env,
                     log=out / f"nnunet_seed{seed}_fold{fold}.log")  # fmt: skip
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(kept, ignore_errors=True)
                shutil.move(str(produced / f"fold_{fold}"), kept)
            summary = json.loads((kept / "validation" / "summary.json").read_text())
            results[(seed, fold)] = {"dice": summary["foreground_mean"]["Dice"],
                                     "train_losses": _nnunet_train_losses(kept, nnunet_python)}  # fmt: skip
    return results


def _nnunet_train_losses(fold_dir: Path, nnunet_python: Path) -> list[float]:
    # The per-epoch mean training loss nnU-Net logged, from its final checkpoint (read in nnU-Net's interpreter).
    script = ("import json, sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False); "
              "print(json.dumps([float(x) for x in c['logging']['train_losses']]))")  # fmt: skip
    proc = subprocess.run([str(nnunet_python), "-c", script, str(fold_dir / "checkpoint_final.pth")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout)


def run_segbench(out: Path, *, raw: Path, plans: Path, splits: Path, seeds: int, epochs: int,
                 extra: list[str], train: bool = True) -> dict[tuple[int, int], dict]:  # fmt: skip
    """One ``segbench run`` with ``--repeats seeds``; returns {(repeat, fold): {"dice", "train_losses"}} of its finished
    jobs. ``train=False`` reads what the run directory holds (e.g. a run stopped after fold 0's jobs)."""
    run_dir = out / "segbench_run"
    segbench = Path(sys.executable).parent / "segbench"
    command = [str(segbench), "run", "--data", str(raw), "--recipe", "nnunet", "--models", "nnunet_plain",
               "--epochs", str(epochs), "--plans", str(plans), "--splits", str(splits), "--folds", "2",
               "--repeats", str(seeds), "--out", str(run_dir), "--no-report", *extra]  # fmt: skip
    if (run_dir / "manifest.json").is_file():
        command.append("--resume")
    env = dict(os.environ, SEGBENCH_CACHE=str(out / "segbench_cache"))
    if train:
        _run(command, env=env, log=out / "segbench.log")
    sys.path.insert(0, str(REPO))
    from segbench.results import rebuild_tables

    rebuild_tables(run_dir)  # the finished jobs' metrics, also of a run stopped before its end
    metrics = pd.read_csv(run_dir / "metrics.csv", dtype={"case_id": str})
    results = {}
    for (repeat, fold), rows in metrics.groupby(["repeat", "fold"]):
        curve = pd.read_csv(_job_dir(run_dir, int(fold), int(repeat), seeds) / "training_log.csv")
        epoch = (curve["iteration"] - 1) // ITERATIONS_PER_EPOCH
        results[(int(repeat), int(fold))] = {"dice": float(rows["dice"].mean()),
                                             "train_losses": curve.groupby(epoch)["loss"].mean().tolist()}  # fmt: skip
    return results


def _job_dir(run_dir: Path, fold: int, repeat: int, repeats: int) -> Path:
    sys.path.insert(0, str(REPO))
    from segbench import rundir

    return rundir.job_dir(run_dir, rundir.JobKey("nnunet_plain", fold, repeat, repeats))


def table(nnunet: dict, segbench: dict, *, epochs: int) -> str:
    """Markdown: Dice per (seed, fold) and side, the mean and SD over seeds of each fold both sides ran, and the loss
    per epoch (fold 0)."""
    folds = sorted({f for _, f in nnunet} & {f for _, f in segbench})
    lines = ["| side | seed | " + " | ".join(f"fold {f} Dice" for f in folds) + " |", "|---|---|" + "---|" * len(folds)]
    summary = {}
    for side, results in (("nnU-Net 2.8.1", nnunet), ("segbench", segbench)):
        per_fold = {f: [] for f in folds}
        for seed in sorted({s for s, _ in results}):
            for f in folds:
                per_fold[f].append(results[(seed, f)]["dice"])
            dice = " | ".join(f"{results[(seed, f)]['dice']:.4f}" for f in folds)
            lines.append(f"| {side} | {seed} | {dice} |")
        summary[side] = {f: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan)
                         for f, v in per_fold.items()}  # fmt: skip
        cells = " | ".join(f"**{m:.4f} ± {sd:.4f}**" for m, sd in summary[side].values())
        lines.append(f"| {side} | mean ± SD | {cells} |")
    lines.append("")
    for f in folds:
        (a, sa), (b, sb) = summary["nnU-Net 2.8.1"][f], summary["segbench"][f]
        lines.append(f"Fold {f}: segbench − nnU-Net = {b - a:+.4f} Dice; seed SD nnU-Net {sa:.4f}, segbench {sb:.4f}.")
    lines += ["", "Training loss per epoch, fold 0, mean over seeds (CE − soft Dice, deep supervision):", "",
              "| epoch | nnU-Net 2.8.1 | segbench |", "|---|---|---|"]  # fmt: skip
    for epoch in range(epochs):
        cells = [statistics.mean(r["train_losses"][epoch] for (_, f), r in results.items()
                                 if f == folds[0] and len(r["train_losses"]) > epoch)
                 for results in (nnunet, segbench)]  # fmt: skip
        lines.append(f"| {epoch + 1} | {cells[0]:.4f} | {cells[1]:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, choices=(1, 5, 10))  # nnU-Net's shipped short trainers
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 32, 32])
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--nnunet-python", type=Path, default=REPO / ".nnunet-venv" / "bin" / "python")
    parser.add_argument("--segbench-arg", action="append", default=[], help="extra flag for segbench run")
    parser.add_argument("--nnunet-folds", default="0,1", help="folds nnU-Net trains (segbench trains both)")
    parser.add_argument(
        "--nnunet-seed",
        type=int,
        default=None,
        help="train only this nnU-Net seed (two processes can then train two seeds side by side)",
    )
    parser.add_argument("--sides", choices=("both", "nnunet", "segbench", "table"), default="both",
                        help="table: no training, the table of what both sides hold")  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"loadavg at the start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    raw, plans, splits = prepare(args.out, nnunet_python=args.nnunet_python, cases=args.cases, shape=args.shape,
                                 seed=args.split_seed)  # fmt: skip
    folds = tuple(int(f) for f in args.nnunet_folds.split(","))
    segbench, nnunet = {}, {}
    if args.sides in ("both", "segbench", "table"):
        segbench = run_segbench(args.out, raw=raw, plans=plans, splits=splits, seeds=args.seeds, epochs=args.epochs,
                                extra=args.segbench_arg, train=args.sides != "table")  # fmt: skip
    if args.sides in ("both", "nnunet", "table"):
        nnunet = run_nnunet(args.out, nnunet_python=args.nnunet_python, seeds=args.seeds, epochs=args.epochs,
                            folds=folds, train=args.sides != "table", only_seed=args.nnunet_seed)  # fmt: skip
    if args.sides not in ("both", "table"):
        return
    text = table(nnunet, segbench, epochs=args.epochs)
    (args.out / "parity.md").write_text(text)
    (args.out / "parity.json").write_text(
        json.dumps(
            {"nnunet": {str(k): v for k, v in nnunet.items()}, "segbench": {str(k): v for k, v in segbench.items()}},
            indent=1,
        )
    )
    print(text)
    print(f"loadavg at the end: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
