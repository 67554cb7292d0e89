#!/usr/bin/env bash
# GPU check of segbench's training path (issue 16, item 4), at most ~8 minutes on one GPU:
# fcn and unet for 300 steps at 2 x 128x128x64 in bf16 and fp32 (step time, FLOP/s against a measured bf16 matmul
# peak, max_memory_allocated), then a killed-and-resumed CUDA job whose loss curve must match an uninterrupted one.
# Fails at once, with one sentence, on a machine without CUDA.
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
timeout 480 python benchmarks/gpu_check.py "$@"
echo "gpu_check.sh: $(( $(date +%s) - start )) s"
