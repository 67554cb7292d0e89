#!/usr/bin/env bash
# GPU check of segbench's CUDA paths (issues 16 and 27), about 8 minutes on one GPU. Settles on a real GPU:
#   1. the CUDA-only tests (they skip on a CPU machine): pinned uint8 label batches, CUDA inference vs CPU fp32,
#      real vs emulated autocast dtypes, memory estimate vs tracked step, the fp16 GradScaler, auto precision on this
#      GPU, CUDA jobs started afresh (never forked from the zygote) and finishing;
#   2. benchmarks/gpu_check.py: auto numerics, op-by-op dtype flow, memory estimate within 2 % of the tracked step,
#      fcn and unet for 300 steps at 2 x 128x128x64 in bf16 / fp32 / bf16 contiguous (step time, FLOP/s against a
#      measured bf16 matmul peak, max_memory_allocated), then a killed-and-resumed CUDA job whose loss curve must match
#      an uninterrupted one.
# Fails at once, with one sentence, on a machine without CUDA; exits non-zero when any check fails.
#
#   benchmarks/gpu_check.sh [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
status=0
timeout 240 python -m pytest -q -rs -p no:cacheprovider -k cuda \
    tests/test_cuda_autocast.py tests/test_inference.py tests/test_precision.py tests/test_profiling.py \
    tests/test_sampling.py tests/test_zygote.py || status=1
timeout 480 python benchmarks/gpu_check.py "$@" || status=1
echo "gpu_check.sh: $(( $(date +%s) - start )) s, $([ "$status" = 0 ] && echo 'every check passed' || echo 'a check FAILED')"
exit "$status"
