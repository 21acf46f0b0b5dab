"""``pamm.ops.selective_scan``: mamba-ssm's ``selective_scan_fn`` as one torch custom op.

Being a registered op (``pamm::selective_scan``) rather than Python code means FLOP counters
(fvcore, ptflops' aten backend, torch.utils.flop_counter), torch.compile and profilers see a
single node per scan, whatever backend runs underneath. The backend name and the scan settings
(:meth:`ScanSettings.key`) travel as plain string arguments of the op.
"""
from __future__ import annotations

from typing import Optional

import torch

from pamm.ops.backends import get_backend, resolve
from pamm.ops.scan_ref import compute_dtype
from pamm.ops.settings import ScanSettings, from_environment
from pamm.ops.shapes import check_scan

try:  # private but long-standing; without it every eager call is assumed unobserved
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # pragma: no cover
    _get_current_dispatch_mode = None

__all__ = ["selective_scan"]

_EMPTY_GRAD_SHAPE = (0,)


@torch.library.custom_op("pamm::selective_scan", mutates_args=())
def _selective_scan_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    backend: str,
    settings: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, states); states[:, :, -1] is the final state. B, C are 4-D here. ``settings``: a
    :meth:`ScanSettings.key` ("" for the defaults with the environment's overrides)."""
    return get_backend(backend).forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                        ScanSettings.from_key(settings))


@_selective_scan_op.register_fake
def _selective_scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, settings=""):
    batch, channels, length = u.shape
    d_state = A.shape[1]
    slots = get_backend(backend).state_slots(batch, channels, length, d_state, u.device.type,
                                             ScanSettings.from_key(settings))
    states = u.new_empty(batch, channels, slots, d_state, dtype=compute_dtype(u, delta, A, B, C))
    return torch.empty_like(u), states


@torch.library.custom_op("pamm::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(
    dout: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    states: torch.Tensor,
    delta_softplus: bool,
    backend: str,
    needs_grad: list[bool],
    settings: str = "",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hand-written backward of a backend that has one. Unwanted gradients come back empty (0,)."""
    grads = get_backend(backend).backward(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, needs_grad,
                                          ScanSettings.from_key(settings))
    return tuple(g if g is not None else dout.new_empty(_EMPTY_GRAD_SHAPE) for g in grads)


@_selective_scan_backward_op.register_fake
def _selective_scan_backward_fake(dout, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, backend, needs_grad,
                                  settings=""):
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(
        torch.empty_like(x) if (x is not None and need) else dout.new_empty(_EMPTY_GRAD_SHAPE)
        for x, need in zip(inputs, needs_grad)
    )


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, settings = inputs
    _, states = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend
    ctx.settings = settings


def _recompute_backward(ctx, dout, inputs, needs):
    """Backward for backends without their own: re-run their differentiable forward under autograd.

    Costs one extra forward; correct for any backend whose forward autograd can differentiate
    (the reference loop, mamba-ssm's autograd.Function).
    """
    leaves = [
        None if x is None else x.detach().requires_grad_(bool(need) and x.is_floating_point())
        for x, need in zip(inputs, needs)
    ]
    wanted = [i for i, leaf in enumerate(leaves) if leaf is not None and leaf.requires_grad]
    grads: list[torch.Tensor | None] = [None] * len(inputs)
    if not wanted:
        return grads
    with torch.enable_grad():
        out, _ = get_backend(ctx.backend).forward(*leaves, ctx.delta_softplus, ScanSettings.from_key(ctx.settings))
        found = torch.autograd.grad(out, [leaves[i] for i in wanted], dout, allow_unused=True)
    for i, g in zip(wanted, found):
        grads[i] = torch.zeros_like(inputs[i]) if g is None else g
    return grads


def _backward(ctx, dout, dstates):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    needs = [bool(n) and x is not None for n, x in zip(ctx.needs_input_grad[:8], inputs)]
    if dout is None:
        dout = torch.zeros_like(u)
    if get_backend(ctx.backend).backward is None:
        grads = _recompute_backward(ctx, dout, inputs, needs)
    else:
        raw = torch.ops.pamm.selective_scan_backward(
            dout.contiguous(), u, delta, A, B, C, D, z, delta_bias, states, ctx.delta_softplus, ctx.backend, needs,
            ctx.settings,
        )
        grads = [g if need else None for g, need in zip(raw, needs)]
    return (*grads, None, None, None)


torch.library.register_autograd("pamm::selective_scan", _backward, setup_context=_setup_context)


def _trains(*tensors: torch.Tensor | None) -> bool:
    """An eager call whose result will be differentiated, seen by no tracer, compiler or dispatch-level
    counter (fvcore's trace, torch.compile and FlopCounterMode must see the op)."""
    if not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if _get_current_dispatch_mode is not None and _get_current_dispatch_mode() is not None:
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
    *,
    settings: ScanSettings | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (Mamba S6), a drop-in for mamba-ssm's ``selective_scan_fn``.

    Shapes (mamba-ssm's): u, delta (b, d, l); A (d, n) real; B, C (b, n, l) or grouped
    (b, g, n, l) with g dividing d, channel block i·d/g … (i+1)·d/g − 1 using group i;
    D, delta_bias (d,); z (b, d, l), gating the output as y·silu(z).
    dt = softplus(delta + delta_bias) if ``delta_softplus`` else delta + delta_bias;
    h_t = exp(dt_t·A)·h_{t-1} + dt_t·u_t·B_t; out_t = Σ_n C_t·h_t + D·u_t (then ·silu(z_t)).
    Output (b, d, l) in u's dtype; state and accumulation in fp32 (fp64 for fp64 inputs).

    backend: "cuda", "triton", "torch" or "ref" runs that backend; "auto" leaves the choice to
    ``settings.backend`` (see :class:`~pamm.ops.settings.ScanSettings`).
    settings (keyword): the scan settings; None: the defaults with the environment's overrides.
    return_last_state (keyword): also return the final state (b, d, n) in fp32/fp64; like
    mamba-ssm, no gradient flows through it.
    """
    if not isinstance(backend, str):  # mamba-ssm's 10th positional argument is return_last_state
        raise TypeError(f"backend must be a string, got {backend!r}; pass return_last_state=... by keyword")
    if not torch.jit.is_tracing():  # under jit tracing shape comparisons only emit TracerWarnings
        check_scan(u, delta, A, B, C, D, z, delta_bias)
    settings = settings or from_environment()
    if backend not in ("auto", settings.backend):
        settings = settings.forced(backend=backend)
    name = resolve(settings, u.device, u.dtype, A.shape[1])
    if return_last_state and name == "triton":
        raise NotImplementedError("the triton backend keeps no final state: use backend='torch' or 'cuda' for return_last_state")
    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    backend_impl = get_backend(name)
    if backend_impl.own_autograd and _trains(u, delta, A, B, C, D, z, delta_bias):
        # mamba-ssm's autograd.Function keeps the kernel's chunk states for its backward (the Triton one its
        # checkpoints). Through the op, which saves only its inputs, the backward would re-run the forward
        # first (docs/performance.md gives what that costs).
        out, states = backend_impl.forward(u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus), settings)
    else:
        out, states = torch.ops.pamm.selective_scan(u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus), name,
                                                    settings.key())
    if return_last_state:
        return out, states[:, :, -1]
    return out
