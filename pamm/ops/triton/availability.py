"""Whether the Triton backend can run here, and on which tensors.

Importing this module does not import triton; :func:`triton_available` tries once, when first asked.
The kernels run compiled on CUDA tensors, or on CPU tensors under Triton's interpreter when
``TRITON_INTERPRET=1`` (Triton's own variable) is set before they are first built.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

__all__ = ["triton_available", "interpreting", "supports", "check_device", "sm_count", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def triton_available() -> tuple[bool, str]:
    """``(True, "triton <version>")`` when the backend can be used, else ``(False, reason)``."""
    try:
        import triton
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising anything else
        return False, f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return True, f"triton {triton.__version__}"


def interpreting() -> bool:
    """Whether Triton runs its kernels in the interpreter (``TRITON_INTERPRET``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def supports(device: torch.device, dtype: torch.dtype, d_state: int) -> Optional[str]:
    """None when the backend can scan these inputs, else why not."""
    available, reason = triton_available()
    if not available:
        return f"triton not importable ({reason})"
    if device.type != "cuda" and not interpreting():
        return f"inputs are on {device.type}; Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for tests)"
    if dtype not in SUPPORTED_DTYPES:
        return f"the Triton kernels do not support {dtype}"
    return None


def check_device(interpreted: bool, *tensors: torch.Tensor) -> None:
    """All tensors on one device the kernels can run on (CUDA, or the CPU when ``interpreted``)."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"all inputs must be on one device, got {device} and {t.device}")
    if device.type == "cpu" and not interpreted:
        raise RuntimeError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before its "
                           "first use, to run the kernels on CPU under the Triton interpreter)")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"the triton backend does not run on {device.type} tensors")


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 0 elsewhere (the interpreter needs no programs per SM)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0
