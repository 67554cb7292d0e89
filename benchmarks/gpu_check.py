"""GPU check of the training path (issues 16 and 27); run through ``benchmarks/gpu_check.sh`` on a CUDA machine.

Settles what could not be checked without a GPU, each with printed figures:

1. Numerics: compute capability, what ``auto`` resolves to (bf16 only where the GPU has it natively, else fp16 with
   a GradScaler; channels-last-3d), and the TF32 switches inside a job (both off: fp32 is IEEE fp32).
2. Dtype flow: every op of fcn's and unet's forward pass has the same output dtype under real CUDA autocast as under
   segbench's CPU emulation of CUDA's op lists (:mod:`segbench.cuda_autocast`), in bf16 and fp16.
3. Memory: ``benchmarks/gpu_memory_check.py --precision bf16``: the FakeTensor estimate within 2 % of the tracked
   CUDA step, fcn, unet and two family members.
4. Speed with segbench's own loop (:func:`segbench.training.train`, pinned CPU batches copied per step as a job
   does): fcn and unet for ``--steps`` steps at batch 2 × 128×128×64 in bf16 and fp32, channels-last-3d and
   contiguous; median step time, FLOP/s and its share of a matmul peak in the *same* precision (TF32 off for both),
   and the training peak (``max_memory_allocated``; the preloaded batches stay on the host).
5. Synchronisations per step: the step time when the loss is read before backward (the old loop), after backward
   (the loop now) and never (CUDA events, one synchronisation at the end), each followed or not by a synchronize.
6. ``cudnn.benchmark`` off (torch's default, segbench's) against on.
7. Data wait: a real ``segbench`` run (fcn, 128×128×64 patches of 160×160×96 volumes) with ``num_workers=1`` and with
   more workers: the ``data_wait_share`` of jobs.csv (goal: under 10 % with one worker).
8. Threads per job: the CPUs the machine has, those allotted to this process (``os.sched_getaffinity``), torch's
   threads, what a local run gives each job process, and the Slurm variables when under Slurm.
9. cuDNN bf16 weight gradients of a four-level U-Net whose bottleneck is smaller than its kernel (oneDNN's CPU
   defect): per-layer norm ratios bf16 / fp32.
10. Driver contexts: during a ``segbench run --executor local`` on CUDA, does the driver process hold GPU memory
    (a CUDA context)? From ``nvidia-smi --query-compute-apps``.
11. Resume: a real ``segbench run`` job on CUDA in fp32 with deterministic algorithms is SIGKILLed right after its
    second checkpoint and resumed; its learning curve must match an uninterrupted run up to the kill (1e-4) and after.

``gpu_check.sh`` first runs the CUDA-only tests (they skip without CUDA).

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
import threading
import time
from pathlib import Path

import torch

SHAPE = (128, 128, 64)
BATCH = 2
WARMUP_STEPS = 10
# Up to the kill both runs compute the same deterministic steps; after it, too, if the resume restores everything.
CURVE_RTOL = 1e-4
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def numerics_check() -> bool:
    """Print what ``auto`` resolves to on this GPU and the TF32 switches in a job; True when both are right."""
    from segbench import precision as numerics
    from segbench.job_scope import ieee_fp32, tf32_flags

    capability = torch.cuda.get_device_capability()
    auto = numerics.resolve_precision("auto", "cuda"), numerics.resolve_memory_format("auto", "cuda")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    with ieee_fp32():
        in_job = tf32_flags()
    print(f"compute capability {capability[0]}.{capability[1]}, native bf16: {native}; auto resolves to "
          f"{auto[0]} / {auto[1]}; torch's TF32 defaults here {tf32_flags()}, inside a job {in_job}")  # fmt: skip
    ok = auto[0] == ("bf16" if native else "fp16") and not any(in_job.values())
    print(f"auto precision follows native bf16 and jobs run IEEE fp32: {'yes' if ok else 'NO'}")
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


def _host_batches(count: int = 4) -> list[dict]:
    """Random pinned host batches at BATCH × SHAPE with uint8 labels, as a job's loader delivers them."""
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn((BATCH, 1, *SHAPE), generator=generator).pin_memory(),
             "label": (torch.rand((BATCH, *SHAPE), generator=generator) > 0.8).to(torch.uint8).pin_memory()}
            for _ in range(count)]  # fmt: skip


def _median_after_warmup(times: list[float]) -> float:
    """Median of the step times without the first WARMUP_STEPS (fewer when the run is short: at least half remain)."""
    if not times:
        raise ValueError("--steps must be at least 2 to time a step")
    return statistics.median(times[min(WARMUP_STEPS, len(times) // 2) :])


def train_speed(name: str, precision: str, steps: int, peaks: dict[str, float], memory_format: str = "auto") -> dict:
    """Train ``name`` for ``steps`` steps with segbench's loop, in a job's scope; step time, FLOP/s and memory."""
    from segbench.config import TrainConfig
    from segbench.job_scope import job_scope
    from segbench.profiling import count_flops
    from segbench.registry import build_model
    from segbench.training import make_optimizer, train

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, out_channels=1).to(device)
    config = dataclasses.replace(TrainConfig(), iterations=steps, batch_size=BATCH, patch_size=SHAPE,
                                 precision=precision, memory_format=memory_format)  # fmt: skip
    with torch.device("meta"):  # counted without computing anything
        flops = count_flops(build_model(name, in_channels=1, out_channels=1), (BATCH, 1, *SHAPE), train_step=True)
    step_times: list[float] = []
    last = {"t": None}

    def clock(state) -> None:  # the loop synchronises CUDA before each callback
        now = time.perf_counter()
        if last["t"] is not None and not state.finished:
            step_times.append(now - last["t"])
        last["t"] = now

    torch.cuda.reset_peak_memory_stats(device)  # the batches stay on the host: the peak is the training's
    with job_scope(device):
        state = train(model=model, optimizer=make_optimizer(model, config), batches=itertools.cycle(_host_batches()),
                      config=config, device=device, out_channels=1, callbacks=[clock])  # fmt: skip
    median = _median_after_warmup(step_times)
    return {
        "model": name,
        "precision": state.precision,
        "memory_format": state.memory_format,
        "steps": state.iteration,
        "step_ms": round(median * 1e3, 2),
        "tflop_per_s": round(flops / median / 1e12, 2),
        f"share_of_{precision}_matmul_peak": round(flops / median / peaks[precision], 4),
        "max_memory_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
        "final_loss": round(state.loss, 4),
    }


def speed_check(steps: int) -> bool:
    """Training speed per (model, precision, memory format); True when every run finished."""
    from segbench.job_scope import ieee_fp32
    from segbench.profiling import matmul_peak_flops

    with ieee_fp32():  # the fp32 peak as a job computes fp32: IEEE, not TF32
        peaks = {p: matmul_peak_flops("cuda", size=8192, repeats=10, dtype=_DTYPES[p]) for p in ("bf16", "fp32")}
    print("matmul peaks (8192², best of 10, TF32 off): " + ", ".join(f"{p} {v / 1e12:.1f} TFLOP/s"
                                                                     for p, v in peaks.items()))  # fmt: skip
    ok = True
    for name in ("fcn", "unet"):
        step_ms = {}
        for precision, memory_format in itertools.product(("bf16", "fp32"), ("channels_last", "contiguous")):
            try:
                row = train_speed(name, precision, steps, peaks, memory_format)
                step_ms[(precision, memory_format)] = row["step_ms"]
                print(row, flush=True)
            except Exception as exc:  # report every combination, then fail
                ok = False
                print(f"{name} {precision} {memory_format}: FAILED {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.empty_cache()
        for precision in ("bf16", "fp32"):
            if (precision, "channels_last") in step_ms and (precision, "contiguous") in step_ms:
                ratio = step_ms[(precision, "contiguous")] / step_ms[(precision, "channels_last")]
                print(f"{name} {precision}: channels-last runs {ratio:.2f}x the speed of contiguous "
                      f"(auto picks channels-last{'' if ratio >= 1 else ': NOT the faster one here'})")  # fmt: skip
    return ok


def bare_steps(
    name: str, steps: int, *, read: str = "after", sync: bool = True, cudnn_benchmark: bool = False
) -> float:
    """Milliseconds per bf16 channels-last training step of ``name`` over ``steps`` steps (after WARMUP_STEPS),
    timed with CUDA events around the whole sequence.

    Args:
        read: when the loss is read into a Python float (a synchronisation): ``"before"`` backward (the old loop),
            ``"after"`` backward (the loop now) or ``"never"``.
        sync: ``torch.cuda.synchronize()`` after each step (the loop does, to time its steps on the host).
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` during the run (restored after).
    """
    from segbench import precision as numerics
    from segbench.registry import build_model
    from segbench.training import segmentation_loss

    torch.manual_seed(0)
    model = numerics.to_memory_format(build_model(name, in_channels=1, out_channels=1).cuda(), "channels_last")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = _host_batches(1)[0]
    image = numerics.to_memory_format(batch["image"].cuda(), "channels_last")
    label = batch["label"].cuda()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with numerics.autocast("bf16", "cuda"):
            logits = model(image)
        loss = segmentation_loss(logits, label, kind="dice_bce")
        if read == "before":
            float(loss.detach())
        loss.backward()
        if read == "after":
            float(loss.detach())
        optimizer.step()
        if sync:
            torch.cuda.synchronize()

    saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, cudnn_benchmark
    try:
        for _ in range(WARMUP_STEPS):
            step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
    finally:
        torch.backends.cudnn.benchmark = saved
    return start.elapsed_time(end) / steps


def sync_and_cudnn_check(steps: int) -> bool:
    """Step times by where the loss is read and whether each step synchronises; cudnn.benchmark off vs on."""
    for name in ("fcn", "unet"):
        modes = {"loss before backward + sync": bare_steps(name, steps, read="before"),
                 "loss after backward + sync (the loop now)": bare_steps(name, steps, read="after"),
                 "loss after backward, no sync": bare_steps(name, steps, read="after", sync=False),
                 "no read, no sync (CUDA events only)": bare_steps(name, steps, read="never", sync=False)}  # fmt: skip
        base = modes["no read, no sync (CUDA events only)"]
        print(f"{name} bf16 step (ms): " + "; ".join(f"{k} {v:.2f} ({v / base:.2f}x)" for k, v in modes.items()))
        off, on = bare_steps(name, steps), bare_steps(name, steps, cudnn_benchmark=True)
        print(f"{name} bf16 cudnn.benchmark: off {off:.2f} ms, on {on:.2f} ms per step ({off / on:.2f}x with it on)")
        torch.cuda.empty_cache()
    return True


def threads_check() -> bool:
    """Print the CPUs and threads a job gets; True (a finding, not a pass/fail)."""
    from segbench.executors.worker import worker_env
    from segbench.profiling import allocated_cpus

    gpus = torch.cuda.device_count()
    print(f"CPUs: machine {os.cpu_count()}, allotted to this process {allocated_cpus()} (sched_getaffinity); torch "
          f"threads {torch.get_num_threads()}; a local run with {gpus} GPU job(s) at once gives each job process "
          f"OMP_NUM_THREADS={worker_env('0', slots=max(2, gpus)).get('OMP_NUM_THREADS')} (slots >= 2)")  # fmt: skip
    slurm = {k: v for k, v in os.environ.items() if k in ("SLURM_CPUS_PER_TASK", "SRUN_CPUS_PER_TASK", "SLURM_JOB_ID")}
    print(f"Slurm: {slurm or 'not under Slurm'}")
    return True


def gradient_check() -> bool:
    """cuDNN bf16 weight gradients of a four-level U-Net (bottleneck smaller than the kernel) against fp32."""
    from segbench import precision as numerics

    if not numerics.cuda_has_native_bf16("cuda"):
        print("cuDNN bf16 weight gradients: this GPU has no native bf16; skipped")
        return True
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_precision import unet_d4_gradient_ratios

    ratios = [v for repeat in unet_d4_gradient_ratios("cuda", repeats=4) for v in repeat.values()]
    ok = all(0.02 < v < 50 for v in ratios)
    print(f"cuDNN bf16 weight gradients, unet_w8_d4 at 32x16x16 (bottleneck depth 2 < kernel 3), 4 repeats: per-layer "
          f"norm bf16/fp32 from {min(ratios):.3g} to {max(ratios):.3g} "
          f"({'healthy' if ok else 'DEFECT: outside (0.02, 50)'})")  # fmt: skip
    return ok


KILLED_RUN = """
import os, signal, sys
import torch
torch.use_deterministic_algorithms(True, warn_only=True)  # the same kernels and sums in every run
torch.backends.cudnn.benchmark = False
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
train = TrainConfig(iterations=60, patch_size=(32, 32, 32), num_workers=0, checkpoint_every=20, log_every=5,
                    precision="fp32")
config = RunConfig(data={data!r}, models=("unet",), folds=2, device={device!r}, train=train)
run_comparison(config, run_dir={run_dir!r}, progress=False, report=False, resume={resume})
"""
KILL_ITERATION = 40  # the second checkpoint


def resume_check(root: Path, data: Path, device: str = "cuda") -> tuple[bool, str]:
    """Uninterrupted run vs killed-after-2nd-checkpoint run + resume, both deterministic fp32: (curves match, text)."""
    import pandas as pd

    from segbench import rundir
    from segbench.rundir import JobKey

    env = {**os.environ, "SEGBENCH_CACHE": str(root / "cache"), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

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
    relative = (curves[0]["loss"] - curves[1]["loss"]).abs() / curves[0]["loss"].abs()
    before = relative[curves[0]["iteration"] <= KILL_ITERATION].max()
    after = relative[curves[0]["iteration"] > KILL_ITERATION].max()
    ok = bool(before <= CURVE_RTOL and after <= CURVE_RTOL)
    return ok, (f"max relative loss difference {before:.2e} up to the kill at iteration {KILL_ITERATION}, {after:.2e} "
                f"after the resume (goal {CURVE_RTOL:g}; deterministic fp32, {len(curves[0])} rows)")  # fmt: skip


def data_wait_check(root: Path, data: Path) -> bool:
    """Data-wait share of real fcn jobs with one loader worker and with more; True when one worker stays under 10 %."""
    from segbench import results
    from segbench.config import RunConfig, TrainConfig
    from segbench.profiling import allocated_cpus
    from segbench.runner import run_comparison

    shares = {}
    for workers in sorted({1, max(2, min(8, allocated_cpus() - 1))}):
        train = TrainConfig(iterations=80, batch_size=BATCH, patch_size=SHAPE, num_workers=workers, log_every=50,
                            checkpoint_every=1000)  # fmt: skip
        config = RunConfig(data=str(data), models=("fcn",), folds=2, device="cuda", train=train)
        run_dir = root / f"workers{workers}"
        run_comparison(config, run_dir=run_dir, progress=False, report=False, cache_dir=root / "cache")
        jobs = results.load_jobs(run_dir)
        shares[workers] = float(jobs["data_wait_share"].mean())
        print(f"fcn {jobs['precision'].iloc[0]} at {BATCH} x {'x'.join(map(str, SHAPE))}, num_workers={workers}: "
              f"data wait {shares[workers]:.1%} of training, {jobs['train_iters_per_s'].mean():.1f} it/s "
              f"(statuses {sorted(set(jobs['status']))})", flush=True)  # fmt: skip
    ok = shares[1] < 0.10
    verdict = "yes" if ok else "NO: derive the default num_workers from the CPUs allotted"
    print(f"one loader worker keeps the GPU fed (data wait < 10 %): {verdict}")
    return ok


def _gpu_processes() -> dict[int, float]:
    """{pid: MiB} of the processes holding GPU memory, as nvidia-smi lists them ({} when it lists none)."""
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    return {int(pid): float(mib) for pid, mib in rows if pid.strip().isdigit()}


def driver_context_check(root: Path, data: Path) -> bool:
    """Whether the driver of ``segbench run --executor local --device cuda`` holds GPU memory while its jobs run."""
    gpus = ",".join(str(i) for i in range(torch.cuda.device_count()))
    command = [sys.executable, "-m", "segbench", "run", "--data", str(data), "--models", "fcn", "--folds", "2",
               "--iterations", "40", "--patch", "32", "32", "32", "--device", "cuda", "--executor", "local",
               "--gpus", gpus, "--out", str(root / "driver-run"), "--quiet"]  # fmt: skip
    env = {**os.environ, "SEGBENCH_CACHE": str(root / "cache")}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}
    family = {driver.pid}  # the driver and every process it started (jobs, the estimate's child)
    stop = threading.Event()

    def poll() -> None:
        import psutil

        while not stop.wait(0.5):
            try:
                family.update(child.pid for child in psutil.Process(driver.pid).children(recursive=True))
            except psutil.Error:
                pass
            for pid, mib in _gpu_processes().items():
                seen[pid] = max(seen.get(pid, 0.0), mib)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, stderr = driver.communicate(timeout=300)
    stop.set()
    poller.join()
    if driver.returncode != 0:
        print(f"driver contexts: the local run failed (exit {driver.returncode}): {stderr[-1500:]}")
        return False
    if not family & set(seen):
        print(f"driver contexts: nvidia-smi listed {len(seen)} GPU process(es), none of them the run's (another PID "
              "namespace?): undetermined")  # fmt: skip
        return True
    held = seen.get(driver.pid)
    others = {pid: mib for pid, mib in seen.items() if pid in family and pid != driver.pid}
    holding = "no GPU memory" if held is None else f"{held:.0f} MiB"
    print(f"driver contexts: the driver (pid {driver.pid}) held {holding}"
          f" during a local run on GPU(s) {gpus}; job processes seen: {len(others)} (max "
          f"{max(others.values(), default=0):.0f} MiB)")  # fmt: skip
    return held is None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per timed run (at least 2)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)  # fmt: skip
        return 2
    from segbench.data.synth import make_synthetic_task

    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  CUDA {torch.version.cuda}")
    checks = {"numerics": numerics_check, "dtype flow": dtype_flow_check, "memory": memory_check,
              "speed": lambda: speed_check(args.steps), "syncs and cudnn.benchmark": lambda: sync_and_cudnn_check(
                  min(args.steps, 100)), "threads": threads_check, "bf16 gradients": gradient_check}  # fmt: skip
    passed = {}
    for name, check in checks.items():
        started = time.perf_counter()
        passed[name] = _safely(name, check)
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", flush=True)
    with tempfile.TemporaryDirectory(prefix="segbench-gpu-check-") as tmp:
        root = Path(tmp)
        small = make_synthetic_task(root / "small", cases=6, test_cases=0, seed=3, shape=(48, 48, 32))
        large = make_synthetic_task(root / "large", cases=4, test_cases=0, seed=3, shape=(160, 160, 96))
        passed["data wait"] = _safely("data wait", lambda: data_wait_check(root, large))
        passed["driver contexts"] = _safely("driver contexts", lambda: driver_context_check(root, small))
        matched, description = resume_check(root, small)
    print(f"killed-and-resumed CUDA job reproduces its loss curve: {'yes' if matched else 'NO'} ({description})")
    passed["resume"] = matched
    print("gpu_check: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in passed.items()))
    return 0 if all(passed.values()) else 1


def _safely(name: str, check) -> bool:
    """Run one check; an exception fails that check, not the script (every later check still runs)."""
    try:
        return bool(check())
    except Exception as exc:  # noqa: BLE001 - report it and go on
        print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:500]}", flush=True)
        return False


if __name__ == "__main__":
    raise SystemExit(main())
