#!/usr/bin/env bash
# GPU check of segbench's CUDA paths (issues 16 and 27), at most 8 minutes on one GPU (150 s of tests, 330 s of
# checks; each part is cut off at its limit and then counts as failed). Settles on a real GPU, with printed figures:
#   1. the CUDA-only tests (they skip on a CPU machine): pinned uint8 label batches, CUDA inference vs CPU fp32, real
#      vs emulated autocast dtypes, memory estimate vs tracked step, the fp16 GradScaler, auto precision on this GPU,
#      CUDA jobs never forked from the zygote, jobs' training/prediction peaks and TF32 off, cuda:1 leaving GPU 0 alone
#      (two GPUs), the four-level U-Net's bf16 weight gradients under cuDNN;
#   2. benchmarks/gpu_check.py (see its docstring): auto numerics and TF32 in a job, op-by-op dtype flow, memory
#      estimate within 2 %, fcn/unet step times in bf16/fp32 x channels-last/contiguous with the share of the matmul
#      peak in the same precision, synchronisations per step (loss read before/after backward, CUDA events),
#      cudnn.benchmark off/on, the data wait with one loader worker vs more, threads per job (sched_getaffinity),
#      cuDNN bf16 weight gradients, whether the driver of a local run holds a CUDA context, and a killed-and-resumed
#      deterministic job matching its uninterrupted twin.
# Fails at once, with one sentence, on a machine without CUDA; exits non-zero when any check fails.
#
#   benchmarks/gpu_check.sh [--steps N]     (N >= 2 timed training steps per run, default 150)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c 'import torch' 2>/dev/null; then
    echo "gpu_check.sh: $(command -v python || echo python) cannot import torch; activate the venv segbench is installed in" >&2
    exit 2
fi
if ! python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
status=0
timeout 150 python -m pytest -q -rs -p no:cacheprovider -k cuda \
    tests/test_cuda_autocast.py tests/test_inference.py tests/test_precision.py tests/test_profiling.py \
    tests/test_sampling.py tests/test_zygote.py tests/test_job_scope.py || status=1
timeout 330 python benchmarks/gpu_check.py "$@" || status=1
echo "gpu_check.sh: $(( $(date +%s) - start )) s, $([ "$status" = 0 ] && echo 'every check passed' || echo 'a check FAILED')"
exit "$status"
