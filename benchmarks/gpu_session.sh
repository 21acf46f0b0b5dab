#!/usr/bin/env bash
# Every GPU measurement of the suite, in stages, for a GPU box that may be offline and short-lived.
#
# Why: GPU time is scarce (a lease of minutes), so one script does the set-up, the mamba-ssm build,
# the GPU tests and the benchmarks in a fixed order, keeps going when one stage fails, and bundles
# everything it wrote into one archive after each stage (nothing is lost if the lease ends mid-way).
#
# Usage: benchmarks/gpu_session.sh STAGE [STAGE ...]
# Before, on a machine with PyPI: bash benchmarks/fetch_gpu_wheels.sh (fills .whl/; carry it).
#   setup        install carried wheels (.whl/*.whl -> /tmp/site), print the machine
#   build        start the mamba-ssm build in the background (setsid) unless selective_scan_cuda imports;
#                uses .whl/mamba_ssm-*.tar.gz, or unpacks a carried build from .mamba_build/ (the parts
#                that `wait` left in $OUT, copied there: the device tool returns files of <= 16 MiB)
#   prewarm      compile every Triton kernel config that tscan's autotuner will try, in parallel, into the
#                cache that autotuner reads (benchmarks/triton_compile_report.py --prewarm); run it beside the build
#   wait         wait for that build (up to BUILD_WAIT_S, default 420 s); pack the built extension
#                (PACK_MAMBA_BUILD=0: don't, when no later lease in this session will carry it back)
#   tests        pytest: Triton kernels and the scan ops on the GPU, every model in bf16 on CUDA
#   gpumodels    tests/test_gpu_models.py alone (after the build, to include the cuda backend)
#   scan         benchmarks/bench_scan.py (cuda/torch/ref...) and benchmarks/bench_triton_scan.py
#   tscan        bench_triton_scan.py against cuda only (with each row's kernel table, kernels/)
#   tdiag        the fused multi-direction call alone with every direction in token order, then raster
#                orders (kernels_identity/, kernels_raster/): what the permuted accesses cost it
#   step         benchmarks/bench_train_step.py: PAMM's NYUD training step, batch 8, bf16
#   experts      benchmarks/bench_experts.py: the fused B/C expert convolutions against one at a time
#   steptile     the PAMM step with the triton backend and its tile backward ($PAMM_TRITON_BWD=tile)
#   stepfused    the PAMM step with the triton backend's fused multi-direction call ($PAMM_TRITON_MULTI=fused;
#                the default, gather, is in step)
#   eff:DATASETS scripts/efficiency_table.py for DATASETS (comma list, e.g. eff:nyud,pascal)
#   sweep        pamm-bench sweep at the paper config, 224..1024 px, PAMM / MTMamba / InvPT
# Output: $OUT (or results/.tmp/gpu) holds gpu_session.tgz (every log, CSV and trace) and the last log.
# A 15-minute lease (start included) fits one call of at most ~590 s, then a short one on the warm machine
# (it is released after ~30 s idle: issue it at once; setup/prewarm/build are not repeated there):
#   PACK_MAMBA_BUILD=0 bash benchmarks/gpu_session.sh setup build prewarm tests wait tscan step experts
#   bash benchmarks/gpu_session.sh tdiag
# tscan first: it times the backward variants against issue 11's targets (its split rows are new, untimed);
# the last stages are the ones a short lease loses.
# (the build runs beside the prewarm and the tests; the timings wait for it, so no compile competes with
# them). Measured on an H200, 2026-12-04 (results/gpu/2026-12-04_h200): setup ~30 s, prewarm 37 s (371
# kernel configs, 438 s of compiles on 16 cores), tests 65 s, the build 176 s in all, tscan 257 s (115
# of them compiles that prewarm now covers), step ~110 s for five cases. The Triton cache is
# $TRITON_CACHE_DIR (default /tmp/triton_cache); tscan and step log how many kernels they still compiled.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DEST="${OUT:-$REPO/results/.tmp/gpu}"
WORK="${GPU_WORK:-/tmp/gpu_session}"
mkdir -p "$DEST" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton_cache}"  # outside $WORK: pack must not archive it
PY="${PYTHON:-python3}"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
pack() { tar -C "$WORK" -czf "$DEST/gpu_session.tgz.tmp" . && mv "$DEST/gpu_session.tgz.tmp" "$DEST/gpu_session.tgz"; }
run() {  # run NAME CMD...: log to $WORK/NAME.log, never stop the session
    local name="$1"; shift
    stamp "start $name"
    local t0=$SECONDS
    "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    stamp "end $name rc=$rc in $((SECONDS - t0)) s"
    tail -n 25 "$WORK/$name.log"
    pack
    return 0
}

stage_setup() {
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || stamp "wheel install failed"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$WORK/gpu.txt"
    "$PY" - <<'PY' | tee -a "$WORK/gpu.txt"
import torch, triton, timm
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "timm", timm.__version__)
print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, "SMs")
PY
    "$PY" -m pamm.cli doctor | tee -a "$WORK/gpu.txt"
}

mamba_ok() { "$PY" -c "import torch, selective_scan_cuda" > /dev/null 2>&1; }

stage_build() {
    if mamba_ok; then stamp "selective_scan_cuda already imports"; return; fi
    if compgen -G ".mamba_build/mamba_build.tar.xz*" > /dev/null; then
        mkdir -p /tmp/site && cat .mamba_build/mamba_build.tar.xz* | tar -C /tmp/site -xJf - && mamba_ok \
            && { stamp "unpacked the carried mamba-ssm build"; return; }
    fi
    local sdist; sdist="$(ls .whl/mamba_ssm-*.tar.gz 2>/dev/null | head -1)"
    [[ -n "$sdist" ]] || { stamp "no mamba-ssm sdist under .whl/: the cuda backend stays off"; return; }
    stamp "building mamba-ssm from $sdist in the background"
    setsid bash -c "bash scripts/build_mamba_ssm.sh --python $PY --sdist $sdist --jobs ${MAMBA_JOBS:-16} --no-check \
        > $WORK/mamba_build.log 2>&1; echo \$? > $WORK/mamba_build.rc" < /dev/null > /dev/null 2>&1 &
}

stage_wait() {
    local limit="${BUILD_WAIT_S:-420}" t0=$SECONDS
    while ! mamba_ok && [[ ! -f "$WORK/mamba_build.rc" ]] && (( SECONDS - t0 < limit )); do sleep 5; done
    if mamba_ok; then
        stamp "selective_scan_cuda imports (waited $((SECONDS - t0)) s)"
        "$PY" - <<'PY' > "$WORK/mamba_files.txt"
import os, mamba_ssm, selective_scan_cuda
print(selective_scan_cuda.__file__); print(os.path.dirname(mamba_ssm.__file__))
PY
        if [[ "${PACK_MAMBA_BUILD:-1}" == 0 ]]; then pack; return; fi  # no later lease to carry it to: skip the xz
        local so pkg; so="$(sed -n 1p "$WORK/mamba_files.txt")"; pkg="$(sed -n 2p "$WORK/mamba_files.txt")"
        tar -C "$(dirname "$so")" -cJf - "$(basename "$so")" -C "$(dirname "$pkg")" "$(basename "$pkg")" \
            | split -b 15M - "$DEST/mamba_build.tar.xz.part-" && ls -la "$DEST"/mamba_build.tar.xz.part-*
    else
        stamp "mamba-ssm not available after $((SECONDS - t0)) s"; tail -n 30 "$WORK/mamba_build.log" 2>/dev/null
    fi
    pack
}

cache_entries() { find "$TRITON_CACHE_DIR" -name '*.cubin' 2>/dev/null | wc -l; }
cached_run() {  # run NAME CMD..., and log how many kernels it compiled that the cache did not hold
    local before; before="$(cache_entries)"
    run "$@"
    stamp "$1: $(( $(cache_entries) - before )) kernels compiled (not in the Triton cache)" | tee -a "$WORK/cache.txt"
}

stage_prewarm() {
    cached_run prewarm "$PY" benchmarks/triton_compile_report.py --prewarm --jobs "${PREWARM_JOBS:-16}" \
        --csv "$WORK/prewarm_compile.csv"
}

stage_tests() {
    run tests env PAMM_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -n 4 -p no:cacheprovider --timeout 600 tests/test_triton_scan.py tests/test_scan_ops.py \
        tests/test_scan_dispatch.py tests/test_gpu_models.py
}

stage_gpumodels() {  # again after the build: now with the cuda backend in the comparison
    run tests_gpu_models "$PY" -m pytest -q -p no:cacheprovider --timeout 600 tests/test_gpu_models.py
}

stage_scan() {
    run bench_scan "$PY" benchmarks/bench_scan.py --device cuda --backends torch,cuda,mamba --repeats 10 \
        --csv "$WORK/bench_scan.csv"
    run bench_triton_scan "$PY" benchmarks/bench_triton_scan.py --csv "$WORK/bench_triton_scan.csv"
}

stage_tscan() {  # the Triton kernels against the CUDA kernel only (no slow torch rows)
    cached_run tscan "$PY" benchmarks/bench_triton_scan.py --backends cuda triton --csv "$WORK/bench_triton_scan.csv" \
        --triton-bwd-variants loop prefetch split nosplit --triton-bc-orders token --kernel-tables "$WORK/kernels"
}

stage_tdiag() {  # S2, S4, P8 fused calls without (identity) and with some (raster) permuted accesses
    local kind
    for kind in identity raster; do
        cached_run "tdiag_$kind" "$PY" benchmarks/bench_triton_scan.py --backends cuda triton --shapes S2 S4 P8 \
            --no-single --scan-kind "$kind" --csv "$WORK/bench_triton_scan_$kind.csv" --kernel-tables "$WORK/kernels_$kind"
    done
}

stage_step() {
    cached_run train_step "$PY" benchmarks/bench_train_step.py --csv "$WORK/train_step.csv" --trace "$WORK/traces"
}

stage_steptile() {
    run train_step_tile env PAMM_TRITON_BWD=tile "$PY" benchmarks/bench_train_step.py --csv "$WORK/train_step_tile.csv" \
        --cases "pamm:as_released,train.scan.backend=triton" "pamm,train.scan.backend=triton"
}

stage_stepfused() {
    cached_run train_step_fused env PAMM_TRITON_MULTI=fused "$PY" benchmarks/bench_train_step.py \
        --csv "$WORK/train_step_fused.csv" --cases "pamm:as_released,train.scan.backend=triton" "pamm,train.scan.backend=triton"
}

stage_experts() {
    run bench_experts "$PY" benchmarks/bench_experts.py --device cuda --out "$WORK/bench_experts.csv"
}

stage_eff() {
    local datasets="${1//,/ }"
    run "efficiency_${1//,/_}" "$PY" scripts/efficiency_table.py --datasets $datasets \
        --out "$WORK/gpu_efficiency_${1//,/_}.csv"
}

stage_sweep() {
    run sweep "$PY" -m pamm.cli sweep --scale paper --models pamm mtmamba invpt --sizes 224 384 512 768 1024 \
        --device cuda --counter ptflops --dtype bf16 --repeats 10 --no-isolate \
        --out "$WORK/resolution_sweep_gpu.csv"
}

for stage in "$@"; do
    case "$stage" in
        setup) stage_setup ;;
        build) stage_build ;;
        wait) stage_wait ;;
        prewarm) stage_prewarm ;;
        tests) stage_tests ;;
        gpumodels) stage_gpumodels ;;
        scan) stage_scan ;;
        tscan) stage_tscan ;;
        tdiag) stage_tdiag ;;
        step) stage_step ;;
        experts) stage_experts ;;
        steptile) stage_steptile ;;
        stepfused) stage_stepfused ;;
        eff:*) stage_eff "${stage#eff:}" ;;
        sweep) stage_sweep ;;
        *) echo "gpu_session.sh: unknown stage '$stage' (see the header)" >&2; exit 2 ;;
    esac
done
pack
stamp "done: $DEST/gpu_session.tgz"
