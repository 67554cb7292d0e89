#!/usr/bin/env bash
# The reference nnU-Net (nnunetv2==2.8.1) in a virtual environment of its own, for the parity tests
# (tests/nnunet_ref.py finds it at .nnunet-venv/bin/python, or at $SEGBENCH_NNUNET_PYTHON).
#
# Kept apart from segbench's environment on purpose: nnunetv2 pulls heavy dependencies, and timm -> torchvision
# would replace the CPU build of torch with a multi-GB CUDA build. So: the CPU torch first, nnunetv2 constrained to
# that torch, then torchvision removed again (PyPI's torchvision does not import beside the CPU torch, and nothing
# the parity tests import from nnunetv2 needs it).
#
# Usage: .ci/nnunet-venv.sh [VENV_DIR]     (default: .nnunet-venv in the repository root; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.nnunet-venv}"
if "$VENV/bin/python" -c "import nnunetv2, torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null; then
    echo "nnunetv2 reference environment ready at $VENV"
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
CONSTRAINTS="$(mktemp)"
echo "torch==2.13.0" > "$CONSTRAINTS"
"$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" nnunetv2==2.8.1
rm -f "$CONSTRAINTS"
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision || true
"$VENV/bin/python" -c "import nnunetv2, torch; print('nnunetv2 reference environment ready:', torch.__version__)"
