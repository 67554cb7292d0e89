"""The README's step-time table: one training step of fcn and unet in fp32/bf16 × contiguous/channels-last.

The recipe of :mod:`segbench.training` (Dice + BCE in fp32, Adam, gradient clipping at 12) at the default run's batch
2 × 32×32×24 on the CPU (or 2 × 128×128×64 with ``--cuda``). The eight (model, precision, format) variants take their
steps in turns, ``--steps`` rounds after two warm-up steps each, so a change in machine load hits all of them alike:
the ratios stay meaningful on a shared machine even when the absolute times do not (the load average is printed).
``benchmarks/test_bench_models.py`` measures the same steps one variant after the other, with FLOP/s.

The process's allocator is set up as a job process's is (:func:`segbench.allocator.keep_freed_memory`), so that
"the step alone" and the step inside a job (``jobs.csv`` ``train_iters_per_s``) are measured alike; ``--precisions
fp32`` skips bf16, which is very slow on CPUs without native bf16 (AVX2 only).

Usage::

    python benchmarks/step_table.py [--steps 12] [--cuda] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segbench import precision as numerics
from segbench.allocator import keep_freed_memory
from segbench.registry import build_model
from segbench.training import segmentation_loss

VARIANTS = [("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "contiguous"), ("bf16", "channels_last")]


def _setup(name: str, precision: str, memory_format: str, shape: tuple[int, ...], device: torch.device):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, out_channels=1).to(device)
    numerics.prepare_model(model, precision=precision, memory_format=memory_format, device=device)  # as train() does
    image = numerics.to_memory_format(torch.randn(shape, device=device), memory_format)
    label = (torch.rand((shape[0], *shape[2:]), device=device) > 0.7).long()
    return model, torch.optim.Adam(model.parameters(), lr=3e-3), image, label


def _step(model, optimizer, image, label, precision: str, device: torch.device) -> float:
    tic = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with numerics.autocast(precision, device):
        logits = model(image)
    segmentation_loss(logits, label, kind="dice_bce").backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant (median reported)")
    parser.add_argument("--cuda", action="store_true", help="measure on the GPU at 2 × 128×128×64")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    args = parser.parse_args()
    variants = [(p, f) for p, f in VARIANTS if p in args.precisions.split(",")]
    malloc = "as in a job" if keep_freed_memory() else "default (not glibc)"
    device = torch.device("cuda" if args.cuda else "cpu")
    shape = (2, 1, 128, 128, 64) if args.cuda else (2, 1, 32, 32, 24)
    print(f"{numerics.hardware_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {shape[0]} × {'×'.join(map(str, shape[2:]))}, median of {args.steps}, malloc {malloc}")  # fmt: skip
    print(f"loadavg before: {open('/proc/loadavg').read().strip()}")
    setups = {(n, p, f): _setup(n, p, f, shape, device) for n in ("unet", "fcn") for p, f in variants}
    times: dict[tuple, list[float]] = {key: [] for key in setups}
    for rounds, record in ((2, False), (args.steps, True)):
        for _ in range(rounds):
            for (name, precision, memory_format), (model, optimizer, image, label) in setups.items():
                seconds = _step(model, optimizer, image, label, precision, device)
                if record:
                    times[(name, precision, memory_format)].append(seconds)
    print(f"loadavg after:  {open('/proc/loadavg').read().strip()}")
    print("| model | " + " | ".join(f"{p}, {f}" for p, f in variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for name in ("unet", "fcn"):
        base = statistics.median(times[(name, *variants[0])])
        cells = []
        for precision, memory_format in variants:
            median = statistics.median(times[(name, precision, memory_format)])
            cells.append(f"{median * 1e3:.0f} ms ({base / median:.2f}×)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
