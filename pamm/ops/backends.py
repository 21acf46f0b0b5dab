"""Selective-scan backends: a small registry and the resolution of ``auto``.

A backend is a name plus a forward function ``(u, delta, A, B4, C4, D, z, delta_bias, softplus, settings)
-> (out, states)`` and optionally a hand-written backward. Backends without one get their gradients by
re-running their (differentiable) forward under autograd in the backward pass. Adding a backend = one
:func:`register_backend` call plus, if ``auto`` should pick it, a line in :func:`resolve_backend`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from pamm.ops import scan_torch
from pamm.ops.scan_ref import compute_dtype, selective_scan_ref
from pamm.ops.settings import ScanSettings
from pamm.ops.triton import availability as triton_availability

__all__ = [
    "ScanBackend",
    "register_backend",
    "registered_backends",
    "get_backend",
    "resolve_backend",
    "resolve",
    "mamba_ssm_status",
]

MAMBA_SSM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAMBA_SSM_MAX_STATE = 256


@dataclass(frozen=True)
class ScanBackend:
    """One way of computing the selective scan.

    ``forward`` returns ``(out, states)`` where ``states[:, :, -1]`` is the final state (b, d, n);
    ``backward`` (optional) has the signature of :func:`pamm.ops.scan_torch.scan_backward` with the
    settings last. ``supports(device, dtype, d_state)`` returns None when usable, else the reason it is
    not. ``state_slots(b, d, l, n, device_type, settings)`` gives the size of the states' third axis.
    ``own_autograd``: see the field.
    """

    name: str
    forward: Callable
    backward: Optional[Callable] = None
    supports: Callable[[torch.device, torch.dtype, int], Optional[str]] = field(default=lambda *_: None)
    state_slots: Callable[..., int] = field(default=lambda *_: 1)
    description: str = ""
    # The forward is an autograd.Function whose backward keeps what it needs (the kernel's chunk states,
    # the Triton checkpoints): eager training calls it directly, since the op's backward would re-run it.
    own_autograd: bool = False


_BACKENDS: dict[str, ScanBackend] = {}


def register_backend(backend: ScanBackend) -> None:
    """Make ``backend.name`` usable as ``selective_scan(..., backend=name)``."""
    _BACKENDS[backend.name] = backend


def registered_backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(name: str) -> ScanBackend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown selective-scan backend {name!r}; known: {('auto',) + registered_backends()}") from None


# ---------------------------------------------------------------------------------------------
# mamba-ssm, imported lazily and at most once
# ---------------------------------------------------------------------------------------------
_MAMBA_STATUS: dict | None = None


def mamba_ssm_status() -> dict:
    """Try ``from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`` once.

    Returns {"available": bool, "fn": callable | None, "version": str | None, "error": str | None}.
    Any exception counts as unavailable (a CPU-only install raises ModuleNotFoundError for
    ``selective_scan_cuda`` or triton; a torch/CUDA ABI mismatch raises ImportError/OSError).
    """
    global _MAMBA_STATUS
    if _MAMBA_STATUS is None:
        status: dict = {"available": False, "fn": None, "version": None, "error": None}
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            status.update(available=True, fn=selective_scan_fn)
        except Exception as err:  # noqa: BLE001 - any failure means "not usable", keep why
            status["error"] = f"{type(err).__name__}: {err}"
        try:
            from importlib.metadata import version

            status["version"] = version("mamba-ssm")
        except Exception:  # noqa: BLE001
            pass
        _MAMBA_STATUS = status
    return _MAMBA_STATUS


def _cuda_supports(device: torch.device, dtype: torch.dtype, d_state: int) -> Optional[str]:
    if device.type != "cuda":
        return f"inputs are on {device.type}, the mamba-ssm kernel needs CUDA tensors"
    if dtype not in MAMBA_SSM_DTYPES:
        return f"mamba-ssm's kernel does not support {dtype}"
    if d_state > MAMBA_SSM_MAX_STATE:
        return f"mamba-ssm's kernel supports d_state <= {MAMBA_SSM_MAX_STATE}"
    status = mamba_ssm_status()
    if not status["available"]:
        return f"mamba-ssm not importable ({status['error']})"
    return None


def _cuda_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, settings: ScanSettings):
    """mamba-ssm's selective_scan_fn, with the dtypes its kernel insists on.

    Δ, B, C and z are cast to u's dtype (the kernel rejects fp32 B/C beside bf16 u); A, D and
    delta_bias to fp32. Differentiable, so the backward can recompute through it.
    """
    fn = mamba_ssm_status()["fn"]
    dtype = u.dtype
    out, last_state = fn(
        u,
        delta.to(dtype),
        A.float(),
        B.to(dtype),
        C.to(dtype),
        None if D is None else D.float(),
        None if z is None else z.to(dtype),
        None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
        return_last_state=True,
    )
    return out, last_state.to(compute_dtype(u, delta, A, B, C)).unsqueeze(2)


def _ref_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, settings: ScanSettings):
    out, last_state = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)
    return out, last_state.unsqueeze(2)


def _torch_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, settings: ScanSettings):
    return scan_torch.scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   block_elements=settings.torch_block_elements)


def _torch_backward(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, needs, settings: ScanSettings):
    return scan_torch.scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, needs,
                                    block_elements=settings.torch_block_elements)


def _torch_slots(batch: int, channels: int, length: int, d_state: int, device_type: str,
                 settings: ScanSettings) -> int:
    return scan_torch.num_state_slots(length, batch, channels, d_state, device_type, settings.torch_block_elements)


register_backend(
    ScanBackend(
        name="torch",
        forward=_torch_forward,
        backward=_torch_backward,
        state_slots=_torch_slots,
        description="pure PyTorch, blocked two-level scan, hand-written reverse-scan backward",
    )
)
register_backend(
    ScanBackend(
        name="ref",
        forward=_ref_forward,
        description="sequential Python loop (test oracle), autograd backward",
    )
)
register_backend(
    ScanBackend(
        name="cuda",
        forward=_cuda_forward,
        supports=_cuda_supports,
        own_autograd=True,
        description="mamba-ssm selective_scan_fn (CUDA kernel); in eager training its own autograd "
                    "Function (chunk states kept), under the op (tracing, compile) a recomputing backward",
    )
)


def _triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, settings: ScanSettings):
    """The Triton kernels; differentiable, so the op's backward recomputes through their own backward
    kernels. They keep no final state: ``states`` is empty."""
    from pamm.ops.triton import selective_scan_triton

    out = selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, settings=settings)
    return out, u.new_empty(u.shape[0], u.shape[1], 0, A.shape[1], dtype=compute_dtype(u, delta, A, B, C))


register_backend(
    ScanBackend(
        name="triton",
        forward=_triton_forward,
        supports=triton_availability.supports,
        own_autograd=True,
        state_slots=lambda *_: 0,
        description="Triton kernels (no compilation step); fused scan orders in multi_direction_scan",
    )
)


def resolve_backend(requested: str, device: torch.device | str, dtype: torch.dtype = torch.float32,
                    d_state: int = 16) -> str:
    """Turn a backend name into a concrete registered one.

    ``auto``, on CUDA tensors: the mamba-ssm kernel when it imports (and supports the dtype), else the
    Triton kernels when triton imports, else ``torch``; on CPU: ``torch``. A named backend that cannot
    run here raises.
    """
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda":
            if _cuda_supports(device, dtype, d_state) is None:
                return "cuda"
            if triton_availability.supports(device, dtype, d_state) is None:
                return "triton"
        return "torch"
    backend = get_backend(requested)
    reason = backend.supports(device, dtype, d_state)
    if reason is not None:
        raise RuntimeError(f"selective-scan backend {requested!r} cannot run here: {reason}")
    return requested


def resolve(settings: ScanSettings, device: torch.device | str, dtype: torch.dtype = torch.float32,
            d_state: int = 16) -> str:
    """The backend that runs with ``settings`` for tensors of ``device`` and ``dtype`` (what a run records
    as its ``scan_backend``). An unknown or unusable backend raises; one set by the environment says so."""
    var = dict(settings.env_overrides).get("backend")
    try:
        return resolve_backend(settings.backend, device, dtype, d_state)
    except (ValueError, RuntimeError) as err:
        if var is None:
            raise
        raise type(err)(f"${var}={settings.backend!r}: {err}") from None
