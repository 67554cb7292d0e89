"""Speed and agreement of segbench's sliding-window inference against MONAI's ``sliding_window_inference``.

Scenario: a 1-channel 96×96×64 image, a small two-layer Conv3d model (1→8→2 channels, 3×3×3 kernels),
48³ windows, overlap 0.5, Gaussian blending (sigma_scale 0.125), 4 windows per batch, CPU with one thread.
That is 3×3×2 = 18 windows for both libraries.

Checks:

* ``test_agrees_with_monai``: the blended logits are allclose (same window positions for this shape and the
  same Gaussian up to a constant factor, which cancels in the blend).
* ``test_inference_speed_vs_monai``: segbench is timed by pytest-benchmark; MONAI is timed in the
  ``setup`` hook of every round, so each round times the two back to back under the same machine load. The
  median over rounds of the per-round ratio segbench / MONAI goes to ``extra_info`` and must not exceed
  ``MAX_RATIO`` (at least as fast, with a margin for timer noise).

MONAI is optional (``pip install segbench[bench]``); the tests are skipped without it. Run::

    pytest benchmarks/test_bench_inference.py --benchmark-only --benchmark-autosave
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

from segbench.inference import sliding_window_predict

monai_inferers = pytest.importorskip("monai.inferers")

SHAPE = (96, 96, 64)
PATCH = (48, 48, 48)
OVERLAP = 0.5
SIGMA_SCALE = 0.125
BATCH = 4
ROUNDS = 9
WARMUP_ROUNDS = 1
MAX_RATIO = 1.05


@pytest.fixture(scope="module")
def case() -> tuple[nn.Module, torch.Tensor]:
    torch.set_num_threads(1)  # the benchmark machine is shared; one thread also makes timings steadier
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 3, padding=1)).eval()
    image = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(1))
    return model, image


def run_segbench(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    return sliding_window_predict(
        model, image, patch_size=PATCH, overlap=OVERLAP, batch_size=BATCH, sigma_scale=SIGMA_SCALE
    )


def run_monai(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = monai_inferers.sliding_window_inference(
            image[None], PATCH, BATCH, model, overlap=OVERLAP, mode="gaussian", sigma_scale=SIGMA_SCALE
        )
    return torch.as_tensor(out)[0]


def test_agrees_with_monai(case):
    model, image = case
    ours, theirs = run_segbench(model, image), run_monai(model, image)
    assert ours.shape == theirs.shape == (2, *SHAPE)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-4)


def test_inference_speed_vs_monai(benchmark, case):
    model, image = case
    monai_seconds: list[float] = []

    def time_monai() -> None:
        # Runs before each round (warm-up included): interleaves the reference with the timed segbench call.
        start = time.perf_counter()
        run_monai(model, image)
        monai_seconds.append(time.perf_counter() - start)

    benchmark.pedantic(
        run_segbench, args=(model, image), setup=time_monai, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1
    )
    if benchmark.disabled:  # smoke mode: the body ran; there is nothing timed to compare
        return
    monai_timed = monai_seconds[WARMUP_ROUNDS:]
    ours_timed = benchmark.stats.stats.data
    assert len(ours_timed) == len(monai_timed) == ROUNDS
    # Each round's two calls ran back to back under the same machine load, so their ratio is the steadiest
    # figure on a shared machine; the median over rounds discards rounds where the load changed in between.
    ratio = statistics.median(o / m for o, m in zip(ours_timed, monai_timed, strict=True))
    benchmark.extra_info.update(
        {
            "shape": SHAPE,
            "patch": PATCH,
            "overlap": OVERLAP,
            "batch": BATCH,
            "threads": torch.get_num_threads(),
            "monai_median_s": statistics.median(monai_timed),
            "monai_min_s": min(monai_timed),
            "ratio_segbench_over_monai": ratio,
            "ratio_of_minima": min(ours_timed) / min(monai_timed),
        }
    )
    assert ratio <= MAX_RATIO, f"segbench takes {ratio:.2f}x MONAI's time (median of {ROUNDS} paired rounds)"
