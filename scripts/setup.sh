#!/usr/bin/env bash
# Create .venv with torch and duetrl (editable, with the extras the tests and the demo use). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch first, pinned: on a machine without CUDA this takes the CPU build; a bare "torch" could pull a
# multi-GB CUDA build. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch" on a CUDA machine).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-dev,plot,video,wandb,ray,mujoco,export,docs,atari,minatar}]"
