#!/usr/bin/env bash
# Fetch, on a machine with PyPI, what benchmarks/gpu_session.sh needs on an offline GPU box.
#
# Why: the lent GPU machines have torch, timm, triton, pandas and seaborn but no registry; what else
# the suite imports there travels as wheels in the git-ignored .whl/ folder (named in the device
# tool's `carry`), which `gpu_session.sh setup` installs into /tmp/site. Also fetches the mamba-ssm
# sdist that `gpu_session.sh build` compiles there.
#
# Usage: bash benchmarks/fetch_gpu_wheels.sh [--python-version 3.12] [--dest .whl]
# Needs: the CPU venv (.venv, from scripts/setup_cpu.sh) for the sdist download, which imports torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=3.12
DEST=.whl
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python-version) PY_VERSION="$2"; shift 2 ;;
        --dest) DEST="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "fetch_gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
PIP=".venv/bin/python -m pip"
[[ -x .venv/bin/python ]] || { echo "fetch_gpu_wheels.sh: no .venv; run scripts/setup_cpu.sh first" >&2; exit 1; }
mkdir -p "$DEST"  # .whl/ is in .gitignore: it travels only through the device tool's carry

# The suite's imports that the box's image lacks (its package list: /work/.library/device/KINDS.md,
# read 2026-11-17): the config schema, the Hilbert curve, the two FLOP counters, with the needs they
# bring that the image lacks too (scipy, scikit-image, einops, pytest-timeout... are there).
PACKAGES=(
    jsonschema jsonschema-specifications referencing rpds-py
    hilbertcurve
    fvcore yacs iopath termcolor
    ptflops
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do
    PLATFORMS+=(--platform "$p")
done
for package in "${PACKAGES[@]}"; do
    # fvcore and iopath publish sdists only; pure Python, so build their wheels here
    if [[ "$package" == fvcore || "$package" == iopath ]]; then
        $PIP wheel -q --no-deps -w "$DEST" "$package"
    else
        $PIP download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
            "${PLATFORMS[@]}" -d "$DEST" "$package"
    fi
done
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $PIP download -q --no-deps --no-binary :all: \
    --no-build-isolation -d "$DEST" mamba-ssm==2.3.2.post1
du -sh "$DEST"
ls "$DEST"
