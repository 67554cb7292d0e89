"""GPU check of the training path (issues 16 and 27); run through ``benchmarks/gpu_check.sh`` on a CUDA machine.

Settles what could not be checked without a GPU:

1. Numerics: the GPU's compute capability, what ``auto`` resolves to (bf16 only where the GPU has it natively, else
   fp16 with a GradScaler; channels-last-3d), and whether cuDNN runs "fp32" convolutions in TF32.
2. Dtype flow: every op of fcn's and unet's forward pass has the same output dtype under real CUDA autocast as under
   segbench's CPU emulation of CUDA's op lists (:mod:`segbench.cuda_autocast`), in bf16 and fp16.
3. Memory: ``benchmarks/gpu_memory_check.py --precision bf16``: the FakeTensor estimate for a GPU within 2 % of the
   tracked CUDA step (and its distance to ``torch.cuda.max_memory_allocated``), fcn, unet and two family members.
4. Speed: trains ``fcn`` and ``unet`` with segbench's own loop (:func:`segbench.training.train`) for ``--steps``
   steps at batch 2 × 128×128×64 in bf16 and fp32 (channels-last-3d) and bf16 contiguous (is ``auto``'s
   channels-last the faster layout on this GPU?); per run: median step time (first 10 steps excluded), achieved
   FLOP/s (``torch.utils.flop_counter`` FLOPs of one step / median step time), its share of a bf16 matmul peak
   measured on this GPU, and ``torch.cuda.max_memory_allocated``.
5. Resume: kills a real ``segbench run`` job on CUDA (SIGKILL right after its second checkpoint), resumes it, and
   compares its learning curve with an uninterrupted run of the same config.

``gpu_check.sh`` first runs the CUDA-only tests (they skip without CUDA): pinned uint8 label batches, CUDA inference vs
CPU fp32 (fp32/fp16/bf16, mirrored, channels-last), real vs emulated autocast dtypes, estimate vs tracked step memory,
the fp16 GradScaler, CUDA jobs started afresh (never forked from the zygote) and finishing.

Exit status 0 when every check passed; 1 when one failed; 2 without CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPE = (128, 128, 64)
BATCH = 2
WARMUP_STEPS = 10
# cuDNN picks its kernels per run (benchmark mode, atomics in some backward kernels): curves agree to rounding only.
CURVE_RTOL = 1e-2


def _peak_bf16() -> float:
    from segbench.profiling import matmul_peak_flops

    return matmul_peak_flops("cuda", size=8192, repeats=10, dtype=torch.bfloat16)


def numerics_check() -> bool:
    """Print what ``auto`` resolves to on this GPU; True when it follows the GPU's native bf16 support."""
    from segbench import precision as numerics

    capability = torch.cuda.get_device_capability()
    auto = numerics.resolve_precision("auto", "cuda"), numerics.resolve_memory_format("auto", "cuda")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    print(f"compute capability {capability[0]}.{capability[1]}, native bf16: {native}; auto resolves to "
          f"{auto[0]} / {auto[1]}; cuDNN TF32 for fp32 convolutions: {torch.backends.cudnn.allow_tf32}, "
          f"matmul TF32: {torch.backends.cuda.matmul.allow_tf32}")  # fmt: skip
    ok = auto[0] == ("bf16" if native else "fp16")
    print(f"auto precision follows native bf16: {'yes' if ok else 'NO'}")
    return ok


def dtype_flow_check() -> bool:
    """Real CUDA autocast vs the CPU emulation, op by op, for fcn and unet in bf16 (if native) and fp16."""
    from segbench.cuda_autocast import op_dtypes
    from segbench.registry import build_model

    ok = True
    dtypes = [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported(including_emulation=False) else [])
    for name, dtype in itertools.product(("fcn", "unet"), dtypes):
        torch.manual_seed(0)
        model, x = build_model(name, in_channels=1, out_channels=1).train(), torch.randn(2, 1, 32, 32, 32)
        emulated = op_dtypes(lambda: model(x), rules="cuda", dtype=dtype)  # noqa: B023 - called at once
        model, x = model.cuda(), x.cuda()
        real = op_dtypes(lambda: model(x), rules="cuda", dtype=dtype, device="cuda")  # noqa: B023 - called at once
        differ = [(i, e, r) for i, (e, r) in enumerate(zip(emulated, real, strict=False)) if e != r]
        same = not differ and len(real) == len(emulated)
        ok &= same
        verdict = "equal the real ones" if same else f"DIFFER: {differ[:5]} (lengths {len(emulated)}, {len(real)})"
        print(f"{name} {dtype}: {len(real)} ops, emulated CUDA autocast dtypes {verdict}")
    return ok


def memory_check() -> bool:
    """``gpu_memory_check.py --precision bf16``: the estimate for a GPU within 2 % of the tracked CUDA step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_memory_check

    return gpu_memory_check.main(["--precision", "bf16"]) == 0


def train_speed(name: str, precision: str, steps: int, peak: float, memory_format: str = "auto") -> dict:
    """Train ``name`` for ``steps`` steps on fixed random batches; step-time, FLOP/s and memory figures."""
    from segbench.config import TrainConfig
    from segbench.profiling import count_flops
    from segbench.registry import build_model
    from segbench.training import make_optimizer, train

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, out_channels=1).to(device)
    config = dataclasses.replace(TrainConfig(), iterations=steps, batch_size=BATCH, patch_size=SHAPE,
                                 precision=precision, memory_format=memory_format)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn((BATCH, 1, *SHAPE), generator=generator).to(device),
                "label": (torch.rand((BATCH, *SHAPE), generator=generator) > 0.8).to(torch.uint8).to(device)}
               for _ in range(4)]  # fmt: skip
    with torch.device("meta"):  # counted without computing anything
        flops = count_flops(build_model(name, in_channels=1, out_channels=1), (BATCH, 1, *SHAPE), train_step=True)
    step_times: list[float] = []
    last = {"t": None}

    def clock(state) -> None:  # the loop synchronises CUDA before each callback
        now = time.perf_counter()
        if last["t"] is not None and not state.finished:
            step_times.append(now - last["t"])
        last["t"] = now

    torch.cuda.reset_peak_memory_stats(device)
    state = train(model=model, optimizer=make_optimizer(model, config), batches=itertools.cycle(batches),
                  config=config, device=device, out_channels=1, callbacks=[clock])  # fmt: skip
    median = statistics.median(step_times[WARMUP_STEPS:])
    return {
        "model": name,
        "precision": state.precision,
        "memory_format": state.memory_format,
        "steps": state.iteration,
        "step_ms": round(median * 1e3, 2),
        "tflop_per_s": round(flops / median / 1e12, 2),
        "share_of_bf16_peak": round(flops / median / peak, 4),
        "max_memory_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
        "final_loss": round(state.loss, 4),
    }


KILLED_RUN = """
import os, signal, sys
from segbench import job
from segbench.config import RunConfig, TrainConfig
from segbench.runner import run_comparison
calls = {{"n": 0}}
real_save = job.save_checkpoint
def save_then_die(folder, payload):
    calls["n"] += 1
    real_save(folder, payload)
    if {kill} and calls["n"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
job.save_checkpoint = save_then_die
train = TrainConfig(iterations=60, patch_size=(32, 32, 32), num_workers=0, checkpoint_every=20, log_every=5)
config = RunConfig(data={data!r}, models=("unet",), folds=2, device={device!r}, train=train)
run_comparison(config, run_dir={run_dir!r}, progress=False, report=False, resume={resume})
"""


def resume_check(root: Path, device: str = "cuda") -> tuple[bool, str]:
    """Uninterrupted run vs killed-after-2nd-checkpoint run + resume: (curves match, description)."""
    import pandas as pd

    from segbench import rundir
    from segbench.data.synth import make_synthetic_task
    from segbench.rundir import JobKey

    data = make_synthetic_task(root / "task", cases=6, test_cases=0, seed=3, shape=(48, 48, 32))
    env = {**os.environ, "SEGBENCH_CACHE": str(root / "cache")}

    def script(run_dir: Path, *, kill: bool, resume: bool = False) -> subprocess.CompletedProcess:
        body = KILLED_RUN.format(kill=kill, resume=resume, data=str(data), run_dir=str(run_dir), device=device)
        return subprocess.run([sys.executable, "-c", body], env=env, capture_output=True, text=True, timeout=300)

    reference = script(root / "reference", kill=False)
    if reference.returncode != 0:
        return False, f"the uninterrupted run failed: {reference.stderr[-2000:]}"
    killed = script(root / "killed", kill=True)
    if killed.returncode != -signal.SIGKILL:
        return False, f"the job was not killed as planned (exit {killed.returncode}): {killed.stderr[-2000:]}"
    resumed = script(root / "killed", kill=False, resume=True)
    if resumed.returncode != 0:
        return False, f"the resumed run failed: {resumed.stderr[-2000:]}"
    curves = [pd.read_csv(rundir.job_dir(root / name, JobKey("unet", 0)) / rundir.LEARNING_CURVE_FILE)
              for name in ("reference", "killed")]  # fmt: skip
    if curves[0]["iteration"].tolist() != curves[1]["iteration"].tolist():
        return False, f"iterations differ: {curves[1]['iteration'].tolist()}"
    relative = ((curves[0]["loss"] - curves[1]["loss"]).abs() / curves[0]["loss"].abs()).max()
    return bool(relative <= CURVE_RTOL), f"max relative loss difference {relative:.2e} over {len(curves[0])} rows"


def speed_check(steps: int) -> bool:
    """Training speed per (model, precision, memory format); True when every run finished."""
    peak = _peak_bf16()
    print(f"bf16 matmul peak (8192², best of 10): {peak / 1e12:.1f} TFLOP/s")
    ok = True
    for name in ("fcn", "unet"):
        step_ms = {}
        for precision, memory_format in (("bf16", "auto"), ("fp32", "auto"), ("bf16", "contiguous")):
            try:
                row = train_speed(name, precision, steps, peak, memory_format)
                step_ms[(precision, row["memory_format"])] = row["step_ms"]
                print(row, flush=True)
            except Exception as exc:  # report every combination, then fail
                ok = False
                print(f"{name} {precision} {memory_format}: FAILED {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.empty_cache()
        if ("bf16", "channels_last") in step_ms and ("bf16", "contiguous") in step_ms:
            ratio = step_ms[("bf16", "contiguous")] / step_ms[("bf16", "channels_last")]
            print(f"{name} bf16: channels-last is {ratio:.2f}x the speed of contiguous (auto picks channels-last)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per (model, precision)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)  # fmt: skip
        return 2
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  CUDA {torch.version.cuda}")
    checks = {"numerics": numerics_check(), "dtype flow": dtype_flow_check(), "memory": memory_check(),
              "speed": speed_check(args.steps)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="segbench-gpu-check-") as tmp:
        matched, description = resume_check(Path(tmp))
    print(f"killed-and-resumed CUDA job reproduces its loss curve: {'yes' if matched else 'NO'} ({description})")
    checks["resume"] = matched
    print("gpu_check: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
