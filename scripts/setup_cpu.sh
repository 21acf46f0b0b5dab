#!/usr/bin/env bash
# One-shot CPU set-up: a .venv with torch==2.13.0 (CPU) pinned first, the pinned stack, and pamm-bench
# installed in editable mode (so `pamm-bench`, ablations/ and the workflow all come from this checkout).
#   bash scripts/setup_cpu.sh          # what the main job needs
#   bash scripts/setup_cpu.sh --test   # + triton, so the Triton kernels are tested on CPU (interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch is pinned inside the requirements file, in the same command as everything that needs it.
.venv/bin/pip install --disable-pip-version-check -q -r requirements-cpu.txt
.venv/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
if [ "${1:-}" = "--test" ]; then
    # --no-deps: triton's wheel must not pull another torch.
    .venv/bin/pip install --disable-pip-version-check -q --no-deps triton==3.9.0
fi
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, '| setup ok')"
