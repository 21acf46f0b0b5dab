"""Which selective-scan backend will run, and why: input for ``pamm-bench doctor``.

The commonest support question in the Mamba ecosystem is "why is my scan slow / why does
mamba-ssm not import" (reference §7.1: torch/CUDA ABI mismatches). The report answers it with
the actual import error instead of a silent fallback.
"""
from __future__ import annotations

import platform
from importlib import metadata

import torch

from pamm.ops.backends import BACKEND_ENV_VAR, get_default_backend, mamba_ssm_status, registered_backends

__all__ = ["backend_report", "format_backend_report"]


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a broken install is reported as unknown
        return None


def _env_setting(read, var: str, choices: tuple[str, ...]) -> tuple[str, str]:
    """(value or "invalid: ...", where it came from and the choices) of a Triton setting read from ``$var``."""
    import os

    source = f"${var}" if os.environ.get(var) else "default"
    try:
        value = read()
    except ValueError as err:
        return f"invalid: {err}", ""
    return value, f"({source}; choices {', '.join(choices)})"


def _triton_backward() -> str:
    """Which Triton backward runs ($PAMM_TRITON_BWD) and whether its blocks are autotuned."""
    from pamm.ops import triton_scan

    kind, origin = _env_setting(triton_scan._bwd_kind, triton_scan.BWD_KIND_ENV_VAR, triton_scan.BWD_KINDS)
    if not origin:
        return kind
    if not triton_scan._autotuning():
        tuned = "one heuristic config ($PAMM_TRITON_AUTOTUNE=0)"
    elif kind == "token":
        tuned = "autotuned among its batched-writes and split forms"
    else:
        tuned = "autotuned"
    return f"{kind} kernel {origin}, {tuned}"


def _triton_bc_order() -> str:
    """How the fused multi-direction call hands B and C to the Triton kernels ($PAMM_TRITON_BC_ORDER)."""
    from pamm.ops import triton_scan

    order, origin = _env_setting(triton_scan._bc_order, triton_scan.BC_ORDER_ENV_VAR, triton_scan.BC_ORDERS)
    return f"{order} order {origin}" if origin else order


def _triton_multi_path() -> str:
    """Which path pamm.ops.multi_direction_scan takes on the Triton backend ($PAMM_TRITON_MULTI)."""
    from pamm.ops import triton_scan

    path, origin = _env_setting(triton_scan._multi_path, triton_scan.MULTI_PATH_ENV_VAR, triton_scan.MULTI_PATHS)
    return f"{path} {origin}" if origin else path


def backend_report() -> dict:
    """Facts about the scan backends on this machine, as a JSON-serialisable dict.

    Keys: torch_version, torch_cuda_version, cuda_available, gpu (name or "no GPU"),
    gpu_capability, python, mamba_ssm {installed_version, importable, error}, triton_version,
    triton_backward (which Triton backward kernel runs, and whether it is autotuned), triton_bc_order
    (B and C in scan order or read through the permutation, in the fused multi-direction call),
    triton_multi_path (fused call, gather path, or the faster of the two per problem),
    forced_default (set_default_backend / $PAMM_SCAN_BACKEND, or None), registered_backends,
    auto_on_cuda / auto_on_cuda_reason, auto_on_cpu / auto_on_cpu_reason.
    Importing mamba-ssm is attempted (once per process) to get the real error text.
    """
    cuda_available = torch.cuda.is_available()
    gpu, capability = "no GPU", None
    if cuda_available:
        try:
            gpu = torch.cuda.get_device_name(0)
            capability = "sm_%d%d" % torch.cuda.get_device_capability(0)
        except Exception as err:  # noqa: BLE001
            gpu = f"CUDA reported available but unusable: {type(err).__name__}: {err}"
    mamba = mamba_ssm_status()
    forced = get_default_backend()
    forced = None if forced == "auto" else forced

    if forced is not None:
        auto_cuda, cuda_reason = forced, f"forced by set_default_backend()/${BACKEND_ENV_VAR}"
        auto_cpu, cpu_reason = forced, cuda_reason
        if forced == "cuda":
            auto_cpu, cpu_reason = "error", "forced 'cuda' cannot run on CPU tensors"
    else:
        from pamm.ops.triton_scan import triton_available

        triton_ok, triton_reason = triton_available()
        if mamba["available"]:
            auto_cuda = "cuda"
            cuda_reason = "mamba-ssm selective_scan_fn imports (fp32/fp16/bf16, d_state <= 256; fp64 falls back to torch)"
        elif triton_ok:
            auto_cuda = "triton"
            cuda_reason = f"mamba-ssm not importable ({mamba['error']}); {triton_reason} imports"
        else:
            auto_cuda = "torch"
            cuda_reason = f"mamba-ssm not importable ({mamba['error']}); triton not importable ({triton_reason})"
        if not cuda_available:
            cuda_reason += " (no GPU here: what CUDA tensors would get)"
        auto_cpu, cpu_reason = "torch", "mamba-ssm's kernel is CUDA-only; pure-PyTorch scan"

    return {
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_available": cuda_available,
        "gpu": gpu,
        "gpu_capability": capability,
        "mamba_ssm": {
            "installed_version": mamba["version"] or _package_version("mamba-ssm"),
            "importable": bool(mamba["available"]),
            "error": mamba["error"],
        },
        "triton_version": _package_version("triton"),
        "triton_backward": _triton_backward(),
        "triton_bc_order": _triton_bc_order(),
        "triton_multi_path": _triton_multi_path(),
        "forced_default": forced,
        "registered_backends": list(registered_backends()),
        "auto_on_cuda": auto_cuda,
        "auto_on_cuda_reason": cuda_reason,
        "auto_on_cpu": auto_cpu,
        "auto_on_cpu_reason": cpu_reason,
    }


def format_backend_report(report: dict) -> str:
    """One screen of text for the doctor command."""
    mamba = report["mamba_ssm"]
    lines = [
        "Selective-scan backends",
        f"  python {report['python']}, torch {report['torch_version']} (CUDA {report['torch_cuda_version'] or 'none'})",
        f"  GPU: {report['gpu']}" + (f" [{report['gpu_capability']}]" if report.get("gpu_capability") else ""),
        f"  mamba-ssm: {'importable' if mamba['importable'] else 'NOT importable'}"
        + (f", version {mamba['installed_version']}" if mamba["installed_version"] else ", not installed"),
    ]
    if mamba["error"]:
        lines.append(f"    import error: {mamba['error']}")
    lines += [
        f"  triton: {report['triton_version'] or 'not installed'}"
        + (f"; backward: {report['triton_backward']}; multi-direction: {report['triton_multi_path']}"
           f"; fused multi-direction B/C: {report['triton_bc_order']}" if report["triton_version"] else ""),
        f"  registered backends: {', '.join(report['registered_backends'])}",
        f"  forced default: {report['forced_default'] or 'none (auto)'}",
        f"  auto on CUDA tensors -> {report['auto_on_cuda']}: {report['auto_on_cuda_reason']}",
        f"  auto on CPU tensors  -> {report['auto_on_cpu']}: {report['auto_on_cpu_reason']}",
    ]
    if not mamba["importable"] and report["cuda_available"]:
        lines.append("  hint: scripts/build_mamba_ssm.sh builds mamba-ssm for this GPU from the PyPI sdist")
    return "\n".join(lines)
