"""Patch sampling: purity per (seed, index), foreground oversampling, padding, augmentation, resumable loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from msd_factory import prepared_case

from segbench.data.sampling import PatchDataset, class_table, crop_with_padding, make_loader
from segbench.errors import ConfigError


@pytest.fixture
def cases(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for k, shape in enumerate([(24, 24, 16), (20, 24, 16), (24, 16, 24)]):
        label = np.zeros(shape, np.uint8)
        label[5:9, 6:10, 4:8] = 1
        image = (rng.standard_normal(shape) + 3 * label).astype(np.float32)
        out.append(prepared_case(tmp_path, image, label, f"c{k}"))
    return out


@pytest.fixture
def sparse_case(tmp_path):
    # One 2³ foreground cube in a 48³ volume: an 8³ patch placed uniformly hits it with p ≈ 0.4 %,
    # so the share of patches with foreground measures the oversampling rate.
    label = np.zeros((48, 48, 48), np.uint8)
    label[40:42, 3:5, 30:32] = 1
    image = np.random.default_rng(1).standard_normal(label.shape).astype(np.float32)
    return prepared_case(tmp_path, image, label, "sparse")


def test_sample_is_a_pure_function_of_seed_and_index(cases):
    a = PatchDataset(cases, patch_size=(16, 16, 8), length=20, seed=5)
    b = PatchDataset(cases, patch_size=(16, 16, 8), length=20, seed=5)
    for index in (0, 7, 19):
        x, y = a[index], b[index]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        assert x["case_id"] == y["case_id"]
    # Order of access does not matter, and another seed gives other samples.
    assert torch.equal(a[3]["image"], PatchDataset(cases, patch_size=(16, 16, 8), length=20, seed=5)[3]["image"])
    other = PatchDataset(cases, patch_size=(16, 16, 8), length=20, seed=6)
    assert not all(torch.equal(a[i]["image"], other[i]["image"]) for i in range(5))


def test_shapes_and_dtypes(cases):
    dataset = PatchDataset(cases, patch_size=(16, 16, 8), length=10, seed=0)
    sample = dataset[0]
    assert sample["image"].shape == (1, 16, 16, 8) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (16, 16, 8) and sample["label"].dtype == torch.uint8  # class indices
    assert sample["case_id"] in {"c0", "c1", "c2"}
    assert len(dataset) == 10
    with pytest.raises(IndexError):
        dataset[10]


def test_foreground_is_forced_in_about_a_third_of_samples(sparse_case):
    dataset = PatchDataset([sparse_case], patch_size=(8, 8, 8), length=600, seed=0, augment=False)
    share = np.mean([dataset[i]["label"].any().item() for i in range(600)])
    assert share == pytest.approx(1 / 3, abs=0.07)
    always = PatchDataset([sparse_case], patch_size=(8, 8, 8), length=50, seed=0, fg_fraction=1.0, augment=False)
    assert all(always[i]["label"].any() for i in range(50))
    never = PatchDataset([sparse_case], patch_size=(8, 8, 8), length=100, seed=0, fg_fraction=0.0, augment=False)
    assert np.mean([never[i]["label"].any().item() for i in range(100)]) < 0.1


def test_volumes_smaller_than_the_patch_are_padded_with_zero(tmp_path):
    label = np.ones((6, 5, 4), np.uint8)
    image = np.random.default_rng(2).standard_normal((6, 5, 4)).astype(np.float32)
    small = prepared_case(tmp_path, image, label, "small")
    dataset = PatchDataset([small], patch_size=(8, 8, 8), length=5, seed=0, augment=False)
    for i in range(5):
        sample = dataset[i]
        assert sample["label"].sum() == 6 * 5 * 4  # the whole volume is inside the patch
        assert (sample["image"][0][sample["label"] == 0] == 0).all()  # padding is 0 in the image


def test_crop_with_padding_places_the_overlap():
    array = np.arange(4 * 4 * 4).reshape(4, 4, 4)
    out = crop_with_padding(array, (-1, 2, 0), (3, 3, 4), fill=-1)
    assert out.shape == (3, 3, 4)
    assert (out[0] == -1).all() and (out[:, 2:] == -1).all()
    np.testing.assert_array_equal(out[1:, :2], array[:2, 2:4])


def test_augmentation_flips_image_and_label_together(cases):
    plain = PatchDataset(cases, patch_size=(16, 16, 8), length=30, seed=3, fg_fraction=1.0, augment=False)
    augmented = PatchDataset(cases, patch_size=(16, 16, 8), length=30, seed=3, fg_fraction=1.0, augment=True)
    changed = 0
    for i in range(30):
        p, a = plain[i], augmented[i]
        # Same location (drawn before augmentation): the label is a flip of the plain one.
        candidates = [p["label"].flip(dims) for dims in _all_flips()]
        assert any(torch.equal(a["label"], c) for c in candidates)
        changed += not torch.equal(a["image"], p["image"])
        # The image stays aligned with its label: foreground is still the brighter part.
        if a["label"].any() and (a["label"] == 0).any():
            assert a["image"][0][a["label"] == 1].mean() > a["image"][0][a["label"] == 0].mean()
    assert changed == 30


def _all_flips():
    return [tuple(d for d, bit in zip((0, 1, 2), bits, strict=True) if bit) for bits in np.ndindex(2, 2, 2)]


def test_resumed_loader_yields_the_same_batches(cases):
    dataset = PatchDataset(cases, patch_size=(8, 8, 8), length=12, seed=1)
    full = [batch["image"] for batch in make_loader(dataset, batch_size=2, num_workers=0)]
    resumed = [batch["image"] for batch in make_loader(dataset, batch_size=2, start_iteration=4, num_workers=1)]
    assert len(full) == 6 and len(resumed) == 2
    assert all(torch.equal(x, y) for x, y in zip(full[4:], resumed, strict=True))
    with pytest.raises(ConfigError, match="iteration 7"):
        make_loader(dataset, batch_size=2, start_iteration=7)


def test_invalid_arguments_are_config_errors(cases, tmp_path):
    with pytest.raises(ConfigError, match="no training cases"):
        PatchDataset([], patch_size=(8, 8, 8), length=1, seed=0)
    with pytest.raises(ConfigError, match="foreground fraction"):
        PatchDataset(cases, patch_size=(8, 8, 8), length=1, seed=0, fg_fraction=1.5)
    with pytest.raises(ConfigError, match="--batch-size"):
        make_loader(PatchDataset(cases, patch_size=(8, 8, 8), length=1, seed=0), batch_size=0)


PREEMPT_SCRIPT = """
import os, signal, sys, time
import torch
from segbench.data.sampling import make_loader

main = os.getpid()
caught = []

def requeue(signum, frame):
    # What submitit's handler does in whichever process runs it: requeue, then exit.
    if os.getpid() != main:
        os._exit(255)
    caught.append(signum)

signal.signal(signal.SIGUSR2, requeue)

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 200
    def __getitem__(self, index):
        time.sleep(0.01)
        return torch.tensor([index])

batches = iter(make_loader(Slow(), batch_size=1, num_workers=1))
first = next(batches)
os.killpg(0, signal.SIGUSR2)  # Slurm: the time-limit signal reaches every process of the job
time.sleep(0.5)
rest = [int(b) for b in batches]
assert caught == [signal.SIGUSR2], caught
assert rest == list(range(1, 200)), rest[:5]
del batches  # shuts the persistent worker down (it ignores SIGTERM, so interpreter exit must not have to)
print("ok")
"""


@pytest.mark.slow
def test_loader_worker_ignores_the_preemption_signal_sent_to_the_whole_process_group():
    """Only the main process may act on Slurm's SIGUSR2: a worker running submitit's handler killed the job (D1)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PREEMPT_SCRIPT], capture_output=True, text=True, timeout=120,
                          start_new_session=True)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


EXIT_SCRIPT = """
import subprocess, time
import psutil, torch
from segbench.data.sampling import make_loader

class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 100
    def __getitem__(self, index):
        return torch.tensor([index])

batches = iter(make_loader(Numbers(), batch_size=1, num_workers=1))
assert int(next(batches)) == 0
(worker,) = psutil.Process().children()
subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # `kill` by someone else: ignored
time.sleep(0.5)
assert worker.is_running() and int(next(batches)) == 1
print("ok", flush=True)
# The loader stays alive to the end: interpreter exit terminates the worker (SIGTERM from its parent) and joins it.
"""


def test_a_live_loader_does_not_hang_interpreter_exit_yet_its_worker_ignores_other_senders_sigterm():
    """A worker that ignored *every* SIGTERM made any process exiting with a live loader wait forever (CI hung)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=60,
                          start_new_session=True)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.fixture
def two_label_case(tmp_path):
    # Label values 2 and 5 (and a stray 7 that is not a declared foreground label).
    label = np.zeros((16, 16, 16), np.uint8)
    label[2:6, 2:6, 2:6] = 2
    label[9:13, 9:13, 9:13] = 5
    label[0, 0, 0] = 7
    image = np.random.default_rng(2).standard_normal(label.shape).astype(np.float32)
    return prepared_case(tmp_path, image, label, "two")


def test_loader_ships_uint8_class_indices_mapped_in_the_worker(two_label_case):
    # The label -> class mapping happens where batches are built (a loader worker), so the training process gets the
    # loader's (pinned, on CUDA) uint8 tensor as it is: no int64 copy in the main process.
    dataset = PatchDataset([two_label_case], patch_size=(16, 16, 16), length=4, seed=0, foreground_labels=(5, 2),
                           augment=False)  # fmt: skip
    batch = next(iter(make_loader(dataset, batch_size=2, num_workers=1)))
    label = batch["label"]
    assert label.dtype == torch.uint8 and label.shape == (2, 16, 16, 16)
    assert (label[:, 9:13, 9:13, 9:13] == 1).all() and (label[:, 2:6, 2:6, 2:6] == 2).all()  # 5 -> 1, 2 -> 2
    assert set(label.unique().tolist()) == {0, 1, 2}  # the undeclared value 7 is background
    table = class_table((5, 2))
    assert table.dtype == np.uint8 and table.shape == (256,) and table[5] == 1 and table[2] == 2 and table.sum() == 3
    with pytest.raises(ConfigError, match="1..255"):
        class_table((0,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned memory)")
def test_cuda_loader_pins_uint8_labels(cases):
    dataset = PatchDataset(cases, patch_size=(16, 16, 8), length=4, seed=0)
    batch = next(iter(make_loader(dataset, batch_size=2, num_workers=1, pin_memory=True)))
    assert batch["label"].dtype == torch.uint8 and batch["label"].is_pinned() and batch["image"].is_pinned()


def test_auto_workers_follow_the_device_and_the_recipes_augmentation(monkeypatch):
    from segbench import profiling
    from segbench.data.sampling import resolve_num_workers

    monkeypatch.setattr(profiling, "allocated_cpus", lambda: 16)
    assert resolve_num_workers(None, "cpu") == 0 and resolve_num_workers(None, "cpu", pipeline="nnunet") == 0
    assert resolve_num_workers(None, "cuda") == 1
    assert resolve_num_workers(None, "cuda", pipeline="nnunet") == 12  # nnU-Net's default for its augmentation
    monkeypatch.setattr(profiling, "allocated_cpus", lambda: 4)
    assert resolve_num_workers(None, "cuda:0", pipeline="nnunet") == 3  # one core for the job's own process
    assert resolve_num_workers(2, "cuda", pipeline="nnunet") == 2  # --num-workers as given
