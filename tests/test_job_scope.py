"""What a job sets in torch's process-wide state (current CUDA device, TF32 switches) and restores; the CUDA peaks
and out-of-memory reasons it records."""

from __future__ import annotations

import pytest
import torch

from segbench import job, job_scope, results
from segbench.config import RunConfig, TrainConfig
from segbench.runner import run_comparison


@pytest.fixture
def tf32_on():
    """torch's CUDA defaults of some versions: TF32 allowed; restored after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_ieee_fp32_turns_both_tf32_switches_off_and_restores_them(tf32_on):
    with job_scope.ieee_fp32():
        assert job_scope.tf32_flags() == {"tf32_matmul": False, "tf32_cudnn": False}
    assert job_scope.tf32_flags() == {"tf32_matmul": True, "tf32_cudnn": True}


class FakeCuda:
    """torch.cuda's current device, as the two calls job_scope.cuda_device makes see it (no GPU here)."""

    def __init__(self, current: int) -> None:
        self.current = current
        self.calls: list[int] = []

    def set_device(self, index: int) -> None:
        self.calls.append(index)
        self.current = index


@pytest.mark.parametrize(("device", "during", "calls"), [
    ("cuda:2", 2, [2, 0]), ("cuda:0", 0, [0, 0]), ("cuda", 0, []), ("cpu", 0, []),
])  # fmt: skip
def test_a_job_on_cuda_n_makes_gpu_n_current_and_restores_the_previous_one(monkeypatch, device, during, calls):
    # Without set_device, the pin-memory thread pins through the current device: a CUDA context on GPU 0.
    fake = FakeCuda(current=0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: fake.current)
    monkeypatch.setattr(torch.cuda, "set_device", fake.set_device)
    with job_scope.job_scope(device):
        assert fake.current == during
    assert fake.calls == calls and fake.current == 0
    with pytest.raises(RuntimeError), job_scope.job_scope(device):
        raise RuntimeError("a failing job")
    assert fake.current == 0  # restored on the way out of a failing job too


def test_in_process_jobs_run_in_their_scope_record_the_tf32_switches_and_leave_them(tiny_task, tmp_path, monkeypatch,
                                                                                     tf32_on):  # fmt: skip
    entered: list[str] = []
    real = job_scope.cuda_device

    def spy(device):
        entered.append(str(device))
        return real(device)

    monkeypatch.setattr(job_scope, "cuda_device", spy)
    train = TrainConfig(iterations=1, patch_size=(16, 16, 16), num_workers=0, log_every=1, checkpoint_every=1)
    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2, device="cpu", train=train)
    outcome = run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False)  # in-process executor
    assert outcome.all_done
    assert entered == ["cpu", "cpu"]  # one scope per job, on the job's device
    jobs = results.load_jobs(tmp_path / "run")
    assert jobs["tf32_matmul"].tolist() == [False, False] and jobs["tf32_cudnn"].tolist() == [False, False]
    assert jobs["peak_gpu_mem_allocated_mb"].isna().all() and jobs["predict_gpu_mem_allocated_mb"].isna().all()
    assert job_scope.tf32_flags() == {"tf32_matmul": True, "tf32_cudnn": True}  # the caller's switches are back


def test_out_of_memory_reasons_give_mib_on_cuda_and_no_peak_on_cpu(monkeypatch):
    record = {"phase": "training", "batch_size": 2, "patch_size": "64x64x48"}
    reason = job._out_of_memory(MemoryError(), torch.device("cpu"), record)
    assert reason == "out of host memory during training at batch size 2 and patch 64x64x48"  # no "None MB"
    monkeypatch.setattr(job, "cuda_peak_mb", lambda device: (40213.4, 40960.0))
    record = {"phase": "prediction", "batch_size": 2, "patch_size": "64x64x48"}
    reason = job._out_of_memory(torch.OutOfMemoryError(), torch.device("cuda"), record)
    assert reason.endswith("(peak allocated 40213 MiB, reserved 40960 MiB)") and " MB" not in reason
    assert record["predict_gpu_mem_allocated_mb"] == 40213.4 and "peak_gpu_mem_allocated_mb" not in record


def test_the_training_peak_keeps_an_earlier_attempts_larger_peak(monkeypatch):
    # A job resumed during prediction trains no further: its training peak is the one saved in the checkpoint.
    monkeypatch.setattr(job, "cuda_peak_mb", lambda device: (100.0, 300.0))
    assert job._training_peak(torch.device("cuda"), [900.0, 1000.0]) == [900.0, 1000.0]
    assert job._training_peak(torch.device("cuda"), [50.0, 400.0]) == [100.0, 400.0]
    assert job._training_peak(torch.device("cuda"), None) == [100.0, 300.0]
    monkeypatch.setattr(job, "cuda_peak_mb", lambda device: (None, None))
    assert job._training_peak(torch.device("cpu"), None) == [None, None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_job_records_training_and_prediction_peaks_and_ieee_fp32(tiny_task, tmp_path):
    train = TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0, log_every=1, checkpoint_every=1,
                        precision="fp32")  # fmt: skip
    config = RunConfig(data=str(tiny_task), models=("unet",), folds=2, device="cuda", train=train)
    assert run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False).all_done
    jobs = results.load_jobs(tmp_path / "run")
    assert (jobs["peak_gpu_mem_allocated_mb"] > 0).all() and (jobs["predict_gpu_mem_allocated_mb"] > 0).all()
    assert not jobs["tf32_cudnn"].any() and not jobs["tf32_matmul"].any()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_in_process_job_on_cuda_1_leaves_gpu_0_alone(tiny_task, tmp_path):
    train = TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=1, log_every=1, checkpoint_every=1)
    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2, device="cuda:1", train=train)
    for index in range(2):
        torch.cuda.reset_peak_memory_stats(index)
    assert run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False).all_done
    assert torch.cuda.max_memory_allocated(1) > 0 and torch.cuda.max_memory_allocated(0) == 0
    assert torch.cuda.current_device() == 0


# --- the cost estimate's CUDA timing never holds a context in the driver ----------------------------------------------


class _Executor:
    def __init__(self, in_process: bool, gpus: tuple[str, ...] | None) -> None:
        self.runs_in_process, self.gpus = in_process, gpus

    def gpu_ids_for(self, device: str) -> tuple[str, ...] | None:
        return self.gpus


@pytest.mark.parametrize(("device", "in_process", "expected"), [
    ("cuda", False, ("child", "3")), ("cuda:1", False, ("child", "3")), ("cuda", True, ("driver", None)),
    ("cpu", False, ("driver", None)),
])  # fmt: skip
def test_cuda_estimates_for_job_processes_are_measured_in_a_child_on_their_first_gpu(
    monkeypatch, device, in_process, expected
):
    from segbench import runner

    where: list[tuple[str, str | None]] = []
    monkeypatch.setattr(runner, "estimate_in_child", lambda gpu, config, **kw: where.append(("child", gpu)))
    monkeypatch.setattr(runner, "estimate_for_run", lambda config, **kw: where.append(("driver", None)))
    runner.measure_estimate(_Executor(in_process, ("3", "5")), RunConfig(), device=device, todo=[])
    assert where == [expected]


@pytest.mark.slow
def test_an_estimate_measured_in_a_spawned_child_matches_the_drivers_in_form(tiny_task, tmp_path, monkeypatch):
    from segbench import estimate, runner

    captured: list[dict] = []
    real = runner.estimate_for_run

    def spy(config, **arguments):
        captured.append({"config": config, **arguments})
        return real(config, **arguments)

    monkeypatch.setattr(runner, "estimate_for_run", spy)
    train = TrainConfig(iterations=1, patch_size=(16, 16, 16), num_workers=0, log_every=1, checkpoint_every=1)
    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2, device="cpu", train=train)
    seen: list = []
    run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False, on_estimate=seen.append)
    assert len(captured) == 1 and len(seen) == 1
    arguments = dict(captured[0])
    in_child = estimate.estimate_in_child(None, arguments.pop("config"), **arguments)  # real spawn and pickling
    assert in_child is not None
    assert [m.model for m in in_child.models] == [m.model for m in seen[0].models]
    assert in_child.as_dict().keys() == seen[0].as_dict().keys()
