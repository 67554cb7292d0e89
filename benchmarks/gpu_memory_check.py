"""Does the FakeTensor memory estimate predict real GPU memory? (run on a machine with a CUDA GPU)

For fcn, unet and two family members at two patch sizes, compares three figures of one steady-state training step
(Adam, batch 2, one input and one output channel):

* ``estimate``: :func:`segbench.memory.training_step_memory` under FakeTensorMode for a CUDA device (what
  ``segbench models --memory`` prints; computed on the CPU with CUDA autocast's op lists emulated, nothing allocated);
* ``tracked``: the same tracker on the real CUDA step (exact live tensors on the GPU);
* ``allocated``: ``torch.cuda.max_memory_allocated`` over that step (reset right before it; includes the caching
  allocator's rounding and cuDNN workspaces), and ``reserved``: ``torch.cuda.max_memory_reserved``.

The goals: ``estimate / tracked`` within 2 % of 1 (the emulated CUDA autocast lists and FakeTensor describe the real
step; exit status 1 otherwise) and ``estimate / allocated`` within 15 % of 1 (reported). Usage::

    python benchmarks/gpu_memory_check.py [--precision fp32|bf16|fp16] [--out results.json]

Without CUDA it says so and exits 0 (nothing to check).
"""

from __future__ import annotations

import argparse
import json
import sys

MODELS = ("fcn", "unet", "unet_w32_d4", "fcn_w20_d3")
PATCHES = ((64, 64, 48), (128, 128, 64))
BATCH = 2


def free_cuda_cache() -> None:
    """Free what earlier measurements left: collect unreachable tensors first (a model or autograd graph kept alive by a
    reference cycle holds its memory until a collection), then return the cached blocks to the driver."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def real_step_mb(name: str, patch: tuple[int, int, int], precision: str) -> tuple[float, float]:
    """(max allocated, max reserved) in MiB over one steady-state CUDA training step of ``name``."""
    import torch

    from segbench.precision import autocast, to_memory_format
    from segbench.registry import build_model
    from segbench.training import segmentation_loss

    device = torch.device("cuda")
    free_cuda_cache()
    model = to_memory_format(build_model(name, in_channels=1, out_channels=1).to(device), "channels_last")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    image = to_memory_format(torch.randn((BATCH, 1, *patch), device=device), "channels_last")
    label = torch.randint(0, 2, (BATCH, *patch), device=device, dtype=torch.uint8)  # class indices, as loaded

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            logits = model(image)
        segmentation_loss(logits, label, kind="dice_bce").backward()
        optimizer.step()

    step()  # the optimiser state exists from now on, as in every later training step
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.max_memory_reserved(device) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)

    import torch

    from segbench.memory import training_step_memory

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check (run this on a GPU machine)")
        return 0
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.precision}, batch {BATCH}, Adam")
    print(
        f"{'model':<12} {'patch':<11} {'estimate':>9} {'tracked':>9} {'allocated':>10} {'reserved':>9} {'est/alloc':>9}"
    )
    for name in MODELS:
        for patch in PATCHES:
            common = dict(in_channels=1, out_channels=1, patch_size=patch, batch_size=BATCH, precision=args.precision,
                          memory_format="channels_last")  # fmt: skip
            estimate = training_step_memory(name, **common, fake=True, device="cuda").peak_mb
            tracked = training_step_memory(name, **common, device="cuda").peak_mb
            allocated, reserved = real_step_mb(name, patch, args.precision)
            free_cuda_cache()  # the step's tensors and cached blocks must not count for the next model
            ratio = estimate / allocated
            rows.append({"model": name, "patch": "x".join(map(str, patch)), "precision": args.precision,
                         "estimate_mb": estimate, "tracked_mb": tracked, "allocated_mb": allocated,
                         "reserved_mb": reserved, "estimate_over_allocated": ratio})  # fmt: skip
            values = (estimate, tracked, allocated, reserved)
            print(f"{name:<12} {rows[-1]['patch']:<11} " + " ".join(f"{v:10.1f}" for v in values) + f" {ratio:10.3f}")
    worst = max(abs(1 - row["estimate_over_allocated"]) for row in rows)
    print(f"largest deviation of estimate from max_memory_allocated: {worst:.1%} (goal: within 15 %)")
    exact = max(abs(1 - row["estimate_mb"] / row["tracked_mb"]) for row in rows)
    print(f"largest deviation of estimate from the tracked CUDA step: {exact:.1%} (goal: within 2 %)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(
                {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, handle, indent=1
            )
    return 0 if exact <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
