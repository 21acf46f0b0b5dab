"""The plain sequential selective scan: the oracle every faster backend is tested against.

A Python loop over the sequence, differentiable by ordinary autograd. Far too slow for training
(thousands of small ops per call); use it in tests and for float64 error measurements.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "compute_dtype"]


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """State and accumulation dtype: float64 if any input is float64, else float32 (also for bf16/fp16)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sequential selective scan with mamba-ssm's layouts (see :func:`pamm.ops.selective_scan`).

    h_t = exp(dt_t·A) ⊙ h_{t-1} + dt_t·u_t·B_t,  y_t = Σ_n C_t h_t + D·u_t,  out = y·silu(z),
    with dt = softplus(delta + delta_bias) when ``delta_softplus``. B, C are (b, n, l) or
    (b, g, n, l) (channel block i·d/g … (i+1)·d/g − 1 uses group i). Output in u's dtype.
    """
    dtype = compute_dtype(u, delta, A, B, C)
    batch, channels, length = u.shape
    u_c = u.to(dtype)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    per_group = channels // B.shape[1]
    B_full = B.to(dtype).repeat_interleave(per_group, dim=1)  # (b, d, n, l)
    C_full = C.to(dtype).repeat_interleave(channels // C.shape[1], dim=1)
    A_c = A.to(dtype)
    state = u_c.new_zeros(batch, channels, A.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * A_c)
        state = decay * state + (dt[:, :, t] * u_c[:, :, t])[:, :, None] * B_full[:, :, :, t]
        outputs.append((state * C_full[:, :, :, t]).sum(-1))
    y = torch.stack(outputs, dim=2) if length > 0 else u_c.new_zeros(batch, channels, 0)
    if D is not None:
        y = y + u_c * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(u.dtype)
    return (out, state) if return_last_state else out
