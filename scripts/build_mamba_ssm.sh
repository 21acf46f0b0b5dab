#!/usr/bin/env bash
# Build mamba-ssm from its PyPI sdist for THIS machine's GPU architecture only.
#
# Why: mamba-ssm ships no wheels for most torch/CUDA combinations, and its setup.py compiles the
# selective-scan kernels for ~10 GPU architectures (75 … 121), which takes a long time and lots
# of memory. Compiling for the local architecture only takes a few minutes (docs/performance.md has
# a measured build time). We only need the `selective_scan_cuda` extension (pamm.ops' "cuda" backend);
# causal-conv1d is not used by this project and is not built.
#
# What it does:
#   1. finds the sdist (--sdist FILE, or DEST/mamba_ssm-VERSION.tar.gz, else `pip download`s it);
#   2. detects the GPU's compute capability with torch.cuda.get_device_capability() (or --arch);
#   3. unpacks the sdist and rewrites setup.py's `-gencode arch=compute_XX,code=sm_XX` list to
#      that one architecture (the patch fails loudly if setup.py does not look as expected);
#   4. MAMBA_FORCE_BUILD=TRUE MAX_JOBS=N pip install --no-build-isolation --no-deps . with the
#      python whose CUDA torch the extension must match;
#   5. checks that `selective_scan_cuda` imports and that pamm.ops' "cuda" backend agrees with
#      the pure-PyTorch backend on a small input (skip with --no-check).
#
# Usage:
#   scripts/build_mamba_ssm.sh [--python PY] [--jobs N] [--arch 90] [--sdist FILE] [--dest DIR]
#                              [--workdir DIR] [--keep] [--runtime-deps] [--no-check]
#   scripts/build_mamba_ssm.sh --download-only [--dest DIR]     # fetch the sdist (needs internet)
#
# Offline GPU box: run `--download-only` on a machine with internet (it needs a python with
# torch, any build, because pip runs mamba-ssm's setup.py to read its metadata), copy
# DEST/mamba_ssm-2.3.2.post1.tar.gz over, then `scripts/build_mamba_ssm.sh --sdist that.tar.gz`.
#
# Requirements for the build: a CUDA build of torch in PY, nvcc (CUDA_HOME or on PATH) of the same
# major version as torch.version.cuda, a C++ compiler, ninja (faster; optional), setuptools, wheel,
# packaging. `--no-deps` means mamba-ssm's runtime imports (einops, transformers, triton) must
# already be installed for `import mamba_ssm` to work; --runtime-deps installs einops and
# transformers (triton comes with CUDA torch wheels). pamm-bench doctor shows the import error.
set -euo pipefail

VERSION="2.3.2.post1"
PYTHON_BIN="${PYTHON:-python}"
JOBS=""
ARCH=""
SDIST=""
DEST="${DEST:-downloads}"
WORKDIR=""
KEEP=0
DOWNLOAD_ONLY=0
RUNTIME_DEPS=0
CHECK=1
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "build_mamba_ssm: error: $*" >&2; exit 1; }
log() { echo "build_mamba_ssm: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PYTHON_BIN="$2"; shift 2 ;;
        --jobs) JOBS="$2"; shift 2 ;;
        --arch) ARCH="$2"; shift 2 ;;
        --sdist) SDIST="$2"; shift 2 ;;
        --dest) DEST="$2"; shift 2 ;;
        --workdir) WORKDIR="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --download-only) DOWNLOAD_ONLY=1; shift ;;
        --runtime-deps) RUNTIME_DEPS=1; shift ;;
        --no-check) CHECK=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "python not found: $PYTHON_BIN (use --python)"
SDIST_NAME="mamba_ssm-${VERSION}.tar.gz"

download_sdist() {
    # pip is the ordinary client; it runs setup.py for metadata, which imports torch and would
    # try to guess a prebuilt wheel URL: the two variables below make that a no-op.
    mkdir -p "$DEST"
    log "downloading mamba-ssm==${VERSION} sdist into ${DEST}"
    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
        "$PYTHON_BIN" -m pip download --no-deps --no-binary :all: --no-build-isolation \
        "mamba-ssm==${VERSION}" -d "$DEST" >&2
    [[ -f "${DEST}/${SDIST_NAME}" ]] || die "pip did not produce ${DEST}/${SDIST_NAME}"
    log "sha256: $(sha256sum "${DEST}/${SDIST_NAME}" | cut -d' ' -f1)"
}

if [[ "$DOWNLOAD_ONLY" == 1 ]]; then
    download_sdist
    echo "${DEST}/${SDIST_NAME}"
    exit 0
fi

# --- 1. torch and the GPU ------------------------------------------------------------------
TORCH_INFO="$("$PYTHON_BIN" - <<'PY'
import torch
print(torch.__version__, torch.version.cuda or "none", torch.cuda.is_available())
PY
)" || die "cannot import torch with $PYTHON_BIN"
read -r TORCH_VERSION TORCH_CUDA CUDA_AVAILABLE <<<"$TORCH_INFO"
[[ "$TORCH_CUDA" != "none" ]] || die "torch ${TORCH_VERSION} is a CPU build; install a CUDA build of torch first"

if [[ -z "$ARCH" ]]; then
    [[ "$CUDA_AVAILABLE" == "True" ]] || die "no GPU visible to torch; pass --arch (e.g. 90 for H100) to build anyway"
    ARCH="$("$PYTHON_BIN" -c 'import torch; major, minor = torch.cuda.get_device_capability(); print(f"{major}{minor}")')"
fi
[[ "$ARCH" =~ ^[0-9]{2,3}$ ]] || die "--arch must look like 80, 90 or 120, got '$ARCH'"
ARCH_DOTTED="${ARCH:0:${#ARCH}-1}.${ARCH: -1}"
log "torch ${TORCH_VERSION} (CUDA ${TORCH_CUDA}); building for sm_${ARCH} only"

# --- 2. nvcc ---------------------------------------------------------------------------------
NVCC=""
if [[ -n "${CUDA_HOME:-}" && -x "${CUDA_HOME}/bin/nvcc" ]]; then
    NVCC="${CUDA_HOME}/bin/nvcc"
elif command -v nvcc >/dev/null 2>&1; then
    NVCC="$(command -v nvcc)"
    export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}"
fi
[[ -n "$NVCC" ]] || die "nvcc not found: set CUDA_HOME or put nvcc on PATH (a CUDA toolkit matching torch ${TORCH_CUDA})"
NVCC_VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"
log "nvcc ${NVCC_VERSION} at ${NVCC}"
if [[ "${NVCC_VERSION%%.*}" != "${TORCH_CUDA%%.*}" ]]; then
    log "WARNING: nvcc ${NVCC_VERSION} and torch's CUDA ${TORCH_CUDA} differ in major version; the build or the import may fail"
fi

# --- 3. sdist, unpack, patch -----------------------------------------------------------------
if [[ -z "$SDIST" ]]; then
    if [[ -f "${DEST}/${SDIST_NAME}" ]]; then
        SDIST="${DEST}/${SDIST_NAME}"
    else
        download_sdist
        SDIST="${DEST}/${SDIST_NAME}"
    fi
fi
[[ -f "$SDIST" ]] || die "sdist not found: $SDIST"
CREATED_WORKDIR=0
if [[ -z "$WORKDIR" ]]; then
    WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/mamba_ssm_build.XXXXXX")"
    CREATED_WORKDIR=1
fi
mkdir -p "$WORKDIR"
cleanup() {  # only ever delete a directory this script created
    if [[ "$KEEP" == 0 && "$CREATED_WORKDIR" == 1 ]]; then rm -rf "$WORKDIR"; else log "build tree left in $WORKDIR"; fi
}
trap cleanup EXIT
tar -xzf "$SDIST" -C "$WORKDIR"
SRC="$(find "$WORKDIR" -maxdepth 2 -name setup.py -printf '%h\n' -quit)"
[[ -n "$SRC" ]] || die "no setup.py inside $SDIST"

"$PYTHON_BIN" - "$SRC/setup.py" "$ARCH" <<'PY'
"""Keep exactly one `-gencode arch=compute_<ARCH>,code=sm_<ARCH>` pair in mamba-ssm's setup.py.

The first `cc_flag.append("-gencode")` / `cc_flag.append("arch=…")` pair becomes ours; every other
pair becomes `pass` (same indentation, so `if` blocks stay valid). Anything unexpected is fatal.
"""
import py_compile
import re
import sys

path, arch = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
gencode = re.compile(r"""^(\s*)cc_flag\.append\(\s*["']-gencode["']\s*\)\s*$""")
target = re.compile(r"""^(\s*)cc_flag\.append\(\s*["']arch=compute_\w+,code=\w+["']\s*\)\s*$""")
pairs = [i for i in range(len(lines) - 1) if gencode.match(lines[i]) and target.match(lines[i + 1])]
if not pairs:
    sys.exit("patch: no cc_flag.append('-gencode') / cc_flag.append('arch=...') pairs in setup.py; "
             "the sdist layout changed, update scripts/build_mamba_ssm.sh")
for number, i in enumerate(pairs):
    indent = gencode.match(lines[i]).group(1)
    if number == 0:
        lines[i + 1] = f'{indent}cc_flag.append("arch=compute_{arch},code=sm_{arch}")  # build_mamba_ssm.sh'
    else:
        lines[i] = f"{indent}pass  # build_mamba_ssm.sh: other architecture removed"
        lines[i + 1] = f"{indent}pass"
text = "\n".join(lines)
left = re.findall(r"arch=compute_\w+,code=\w+", text)
if left != [f"arch=compute_{arch},code=sm_{arch}"]:
    sys.exit(f"patch: expected exactly one target after patching, found {left}")
open(path, "w").write(text)
py_compile.compile(path, doraise=True)
print(f"build_mamba_ssm: setup.py now targets sm_{arch} only ({len(pairs)} gencode pairs rewritten)", file=sys.stderr)
PY

# --- 4. build ----------------------------------------------------------------------------------
if [[ -z "$JOBS" ]]; then
    # nvcc with --threads 4 needs ~4-6 GB per job; stay within memory as well as cores.
    CORES="$(nproc)"
    MEM_GB="$(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo)"
    JOBS=$(( CORES < MEM_GB / 6 ? CORES : MEM_GB / 6 ))
    (( JOBS >= 1 )) || JOBS=1
fi
log "building with MAX_JOBS=${JOBS} in ${SRC}"
START=$(date +%s)
(
    cd "$SRC"
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=FALSE MAX_JOBS="$JOBS" TORCH_CUDA_ARCH_LIST="$ARCH_DOTTED" \
        "$PYTHON_BIN" -m pip install --no-build-isolation --no-deps -v . >&2
)
log "built and installed in $(( $(date +%s) - START )) s"

if [[ "$RUNTIME_DEPS" == 1 ]]; then
    log "installing mamba-ssm's runtime imports einops and transformers (not torch, not triton)"
    "$PYTHON_BIN" -m pip install einops transformers >&2
fi

# --- 5. check ----------------------------------------------------------------------------------
if [[ "$CHECK" == 1 ]]; then
    (
        cd "$REPO_ROOT"
        "$PYTHON_BIN" - <<'PY'
import torch
import selective_scan_cuda  # noqa: F401  (the compiled extension itself)
from pamm.ops import backend_report, format_backend_report, selective_scan
from pamm.ops.backends import mamba_ssm_status

status = mamba_ssm_status()
if not status["available"]:
    raise SystemExit(f"selective_scan_cuda builds, but mamba_ssm does not import: {status['error']}\n"
                     "install its runtime imports (einops, transformers, triton) or rerun with --runtime-deps")
gen = torch.Generator().manual_seed(0)
b, d, l, n = 2, 64, 300, 16
u, delta = torch.randn(b, d, l, generator=gen), torch.randn(b, d, l, generator=gen) * 0.5
A = -torch.rand(d, n, generator=gen) - 0.1
B, C = torch.randn(b, n, l, generator=gen), torch.randn(b, n, l, generator=gen)
args = [x.cuda() for x in (u, delta, A, B, C)]
fast = selective_scan(*args, D=torch.ones(d, device="cuda"), delta_softplus=True, backend="cuda")
slow = selective_scan(*args, D=torch.ones(d, device="cuda"), delta_softplus=True, backend="torch")
err = (fast - slow).abs().max().item()
print(format_backend_report(backend_report()))
print(f"cuda vs torch backend, max |difference| = {err:.2e}")
raise SystemExit(0 if err < 1e-3 else f"mismatch {err}")
PY
    )
fi
log "done: pamm.ops backend 'auto' now uses mamba-ssm on CUDA tensors (check with: pamm-bench doctor)"
