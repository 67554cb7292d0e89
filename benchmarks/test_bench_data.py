"""Loading a prepared case from the cache vs decoding its .nii.gz (issue #2: cache must be ≥ 10× faster).

Run:  pytest benchmarks/test_bench_data.py --benchmark-only

The volume is Task02-sized (320×320×110 float32, smooth anatomy + noise, like an MRI). Both loads are
measured in the same run, so the ratio does not depend on the machine; it is stored in ``extra_info``.
The cached load copies the memory-mapped array fully (``np.array``), so every byte is really read
(``np.asarray`` of a memmap alone would read nothing).
"""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segbench.data.dataset import Case
from segbench.data.preprocess import PreprocessConfig, load_prepared, prepare_case

TASK02_SHAPE = (320, 320, 110)


@pytest.fixture(scope="session")
def task02_sized_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-data")
    rng = np.random.default_rng(0)
    anatomy = ndimage.zoom(rng.random((40, 40, 14), dtype=np.float32), 8, order=1)[
        tuple(slice(0, s) for s in TASK02_SHAPE)
    ]
    image = (1000 * anatomy + rng.normal(0, 60, TASK02_SHAPE)).astype(np.float32)
    label = (anatomy > 0.8).astype(np.uint8)
    affine = np.diag([1.25, 1.25, 1.37, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(folder / "la_003.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / "la_003_label.nii.gz"))
    case = Case("la_003", (folder / "la_003.nii.gz",), folder / "la_003_label.nii.gz")
    return case, prepare_case(case, config=PreprocessConfig(), cache_dir=folder / "cache")


def _decode_nifti(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _load_cached(prepared) -> np.ndarray:
    image, _ = load_prepared(prepared)
    return np.array(image)  # forces every page to be read


def test_cached_case_loads_10x_faster_than_nifti(benchmark, task02_sized_case):
    case, prepared = task02_sized_case
    # Reference in the same run: best of 3 nibabel decodes (after one warm-up, so both sides are in page cache).
    _decode_nifti(case.images[0])
    reference = min(_timed(_decode_nifti, case.images[0]) for _ in range(3))

    result = benchmark.pedantic(_load_cached, args=(prepared,), rounds=10, iterations=1, warmup_rounds=2)
    assert result.shape == (1, *TASK02_SHAPE)
    if benchmark.disabled:  # smoke mode: the body ran; there is nothing timed to compare
        return
    ratio = reference / benchmark.stats.stats.min
    benchmark.extra_info.update(
        {
            "shape": TASK02_SHAPE,
            "nifti_decode_s": reference,
            "cached_load_s": benchmark.stats.stats.min,
            "speedup": ratio,
        }
    )
    assert ratio >= 10, f"cached load only {ratio:.1f}x faster than decoding the .nii.gz"


def test_nifti_decode_reference(benchmark, task02_sized_case):
    case, _ = task02_sized_case
    result = benchmark.pedantic(_decode_nifti, args=(case.images[0],), rounds=3, iterations=1, warmup_rounds=1)
    assert result.shape == TASK02_SHAPE


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start
