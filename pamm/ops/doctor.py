"""Which selective-scan backend will run, and why, with the scan settings: input for ``pamm-bench doctor``.

The commonest support question in the Mamba ecosystem is "why is my scan slow / why does mamba-ssm not
import" (torch/CUDA ABI mismatches, most often). The report answers it with the actual import error
instead of a silent fallback.
"""
from __future__ import annotations

import platform
from importlib import metadata

import torch

from pamm.ops.backends import mamba_ssm_status, registered_backends, resolve
from pamm.ops.settings import ScanSettings
from pamm.ops.triton import triton_available
from pamm.ops.triton.autotune import UNTIMED_CANDIDATES

__all__ = ["backend_report", "format_backend_report"]


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a broken install is reported as unknown
        return None


def _triton_backward(settings: ScanSettings) -> str:
    """Which Triton backward runs and whether its configs are autotuned."""
    if not settings.triton_autotune:
        tuned = "one heuristic config (triton_autotune off)"
    elif settings.triton_bwd == "token":
        tuned = f"autotuned, untimed candidates included ({', '.join(UNTIMED_CANDIDATES)})"
    else:
        tuned = "autotuned"
    return f"{settings.triton_bwd} kernel, {tuned}"


def backend_report(settings: ScanSettings | None = None) -> dict:
    """Facts about the scan backends on this machine and what ``settings`` (None: the defaults with the
    environment's overrides) run, as a JSON-serialisable dict.

    Keys: python, torch_version, torch_cuda_version, cuda_available, gpu (name or "no GPU"),
    gpu_capability, mamba_ssm {installed_version, importable, error}, triton_version, scan_settings
    (the settings with each value's source, or the error that stopped them), triton_backward,
    registered_backends, auto_on_cuda / auto_on_cuda_reason, auto_on_cpu / auto_on_cpu_reason (what the
    settings' backend resolves to for CUDA and CPU tensors, and why). Importing mamba-ssm is attempted
    (once per process) to get the real error text.
    """
    settings_error = None
    if settings is None:
        try:
            settings = ScanSettings.from_config(None)
        except ValueError as err:
            settings_error, settings = str(err), ScanSettings()
    cuda_available = torch.cuda.is_available()
    gpu, capability = "no GPU", None
    if cuda_available:
        try:
            gpu = torch.cuda.get_device_name(0)
            capability = "sm_%d%d" % torch.cuda.get_device_capability(0)
        except Exception as err:  # noqa: BLE001
            gpu = f"CUDA reported available but unusable: {type(err).__name__}: {err}"
    mamba = mamba_ssm_status()
    triton_ok, triton_reason = triton_available()

    if settings.backend != "auto":
        source = settings.source("backend")
        auto_cuda = auto_cpu = settings.backend
        cuda_reason = cpu_reason = f"scan setting backend={settings.backend} ({source})"
        try:
            resolve(settings, "cpu")
        except (RuntimeError, ValueError) as err:
            auto_cpu, cpu_reason = "error", str(err)
    else:
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
        "scan_settings": {name: {"value": getattr(settings, name), "source": settings.source(name)}
                          for name in settings.fields()},
        "scan_settings_error": settings_error,
        "triton_backward": _triton_backward(settings),
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
        + (f"; backward: {report['triton_backward']}" if report["triton_version"] else ""),
        f"  registered backends: {', '.join(report['registered_backends'])}",
        "Scan settings (defaults, with the environment's overrides)",
    ]
    if report.get("scan_settings_error"):
        lines.append(f"  invalid: {report['scan_settings_error']} (the defaults are shown)")
    for name, entry in report["scan_settings"].items():
        value = entry["value"]
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        lines.append(f"  {name}: {shown}" + (f"  ({entry['source']})" if entry["source"] != "config" else ""))
    lines += [
        f"  auto on CUDA tensors -> {report['auto_on_cuda']}: {report['auto_on_cuda_reason']}",
        f"  auto on CPU tensors  -> {report['auto_on_cpu']}: {report['auto_on_cpu_reason']}",
    ]
    if not mamba["importable"] and report["cuda_available"]:
        lines.append("  hint: scripts/build_mamba_ssm.sh builds mamba-ssm for this GPU from the PyPI sdist")
    return "\n".join(lines)
