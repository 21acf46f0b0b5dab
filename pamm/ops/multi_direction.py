"""Multi-direction scans: K scan orders (and T tasks) in ONE selective-scan call.

Every Mamba decoder in the suite (PAMM: 4 Hilbert rotations per task; MTMamba: SS2D's 4
directions) scans the same token map in several orders and merges the results. Instead of a
Python loop of scans, the K orders are gathered into a (b, K·d, L) tensor (directions stacked on
the channel axis, B/C as K·G groups), scanned once, gathered back with the inverse permutation
and merged. Gathers use an autograd function whose backward is another gather (with the inverse
permutation): a permutation needs no scatter-add, which was 29 % of the released PAMM's step
(reference §1.11). On the triton backend a fused entry reads and writes through the orders inside its
kernels instead; ``$PAMM_TRITON_MULTI`` chooses it, this path, or (``auto``) the faster of the two per
problem, timed once on first use.
"""
from __future__ import annotations

import statistics
from typing import Callable, Sequence

import torch

from pamm.ops.backends import resolve_backend
from pamm.ops.selective_scan import selective_scan

__all__ = ["multi_direction_scan", "permute_tokens"]


class _PermuteTokens(torch.autograd.Function):
    """out[:, k] = x[:, k][..., index[k]] (x shared over k: x[..., index[k]]), gather-only backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, shared: bool) -> torch.Tensor:
        directions, length = index.shape
        if shared:  # (b, M, L) read K times through a stride-0 view, no copy of x
            batch, middle = x.shape[0], x.shape[1]
            source = x.unsqueeze(1).expand(batch, directions, middle, length)
        else:  # (b, K, M, L)
            batch, middle = x.shape[0], x.shape[2]
            source = x
        ctx.save_for_backward(inverse)
        ctx.shared = shared
        gather_index = index.view(1, directions, 1, length).expand(batch, directions, middle, length)
        return torch.gather(source, -1, gather_index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        directions, length = inverse.shape
        gather_index = inverse.view(1, directions, 1, length).expand(grad.shape[0], directions, grad.shape[2], length)
        grad_x = torch.gather(grad, -1, gather_index)
        if ctx.shared:
            grad_x = grad_x.sum(dim=1)
        return grad_x, None, None, None


def permute_tokens(x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, shared: bool) -> torch.Tensor:
    """Gather the last axis of ``x`` in K orders: (b, M, L) if ``shared`` else (b, K, M, L) → (b, K, M, L).

    ``inverse[k]`` must be the inverse permutation of ``index[k]``; the backward gathers with it.
    """
    return _PermuteTokens.apply(x, index, inverse, shared)


def _per_direction(x: torch.Tensor | None, shared_dims: int, name: str, directions: int) -> bool:
    if x is None:
        return False
    if x.dim() == shared_dims:
        return False
    if x.dim() == shared_dims + 1:
        if x.shape[1 if shared_dims >= 3 else 0] != directions:
            raise ValueError(f"{name}: per-direction axis has {x.shape} but there are {directions} directions")
        return True
    raise ValueError(f"{name} has {x.dim()} dims; expected {shared_dims} (shared) or {shared_dims + 1} (per direction)")


def _stack_params(x: torch.Tensor | None, directions: int, per_direction: bool) -> torch.Tensor | None:
    """(d, ...) shared or (K, d, ...) per direction → (K·d, ...), direction-major like the channels."""
    if x is None:
        return None
    if not per_direction:
        x = x.unsqueeze(0).expand(directions, *x.shape)
    return x.reshape(-1, *x.shape[2:])


def _stack_tokens(x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, per_direction: bool) -> torch.Tensor:
    """(b, d, L) or (b, K, d, L) in row-major token order → (b, K·d, L) in each direction's order."""
    gathered = permute_tokens(x, index, inverse, shared=not per_direction)
    return gathered.flatten(1, 2)


def _stack_selection(x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, name: str) -> torch.Tensor:
    """B or C: (b, n, L), (b, G, n, L) or per direction (b, K, G, n, L) → (b, K·G, n, L)."""
    directions = index.shape[0]
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 4:
        batch, groups, d_state, length = x.shape
        gathered = permute_tokens(x.reshape(batch, groups * d_state, length), index, inverse, shared=True)
    elif x.dim() == 5:
        batch, k, groups, d_state, length = x.shape
        if k != directions:
            raise ValueError(f"{name}: per-direction axis has {k} entries but there are {directions} directions")
        gathered = permute_tokens(x.reshape(batch, k, groups * d_state, length), index, inverse, shared=False)
    else:
        raise ValueError(f"{name} must be (b, n, L), (b, G, n, L) or (b, K, G, n, L); got {tuple(x.shape)}")
    return gathered.reshape(batch, directions * groups, d_state, length)


def multi_direction_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    perm: torch.Tensor,
    inverse: torch.Tensor,
    merge: str = "sum",
    backend: str = "auto",
) -> torch.Tensor:
    """Scan a row-major token sequence in K orders with one selective scan and merge the results.

    Shapes (K = perm.shape[0] directions, L tokens in row-major order):
      u, delta: (b, d, L) shared by all directions, or (b, K, d, L) per direction;
      A: (d, n) or (K, d, n); D, delta_bias: (d,) or (K, d);
      B, C: (b, n, L) (one group), (b, G, n, L) (G groups of d/G channels, G | d), or
            (b, K, G, n, L) per direction.
    perm, inverse: (K, L) from :func:`pamm.ops.scan_orders` (on u's device).
    merge: "sum" (as released by PAMM and MTMamba) or "mean".
    Returns (b, d, L) in row-major token order, u's dtype.

    Callers stack tasks on the channel axis (d = T·d_task with G = T groups, B/C per task) so that
    all tasks × directions are a single scan call.
    """
    if merge not in ("sum", "mean"):
        raise ValueError(f"merge must be 'sum' or 'mean', got {merge!r}")
    if perm.dim() != 2 or perm.shape != inverse.shape:
        raise ValueError(f"perm and inverse must both be (K, L); got {tuple(perm.shape)} and {tuple(inverse.shape)}")
    directions, length = perm.shape
    if u.shape[-1] != length:
        raise ValueError(f"u has {u.shape[-1]} tokens but the orders have {length}")
    perm = perm.to(u.device)
    inverse = inverse.to(u.device)
    if resolve_backend(backend, u.device, u.dtype, A.shape[-1]) != "triton":
        return _gather_scan_merge(u, delta, A, B, C, D, delta_bias, delta_softplus, perm, inverse, merge, backend)
    from pamm.ops.triton_scan import multi_direction_scan_triton

    def run(path: str, args: Sequence[torch.Tensor | None]) -> torch.Tensor:
        if path == "fused":  # reads through the orders and merges inside the kernel: no gathers
            return multi_direction_scan_triton(*args, delta_softplus, perm=perm, inverse=inverse, merge=merge)
        return _gather_scan_merge(*args, delta_softplus, perm, inverse, merge, "triton")

    inputs = (u, delta, A, B, C, D, delta_bias)
    return run(_triton_path(run, inputs, (delta_softplus, merge, tuple(perm.shape))), inputs)


# Per process: the faster triton path of each problem that ``auto`` has timed.
_TRITON_PATHS: dict[tuple, str] = {}


def _triton_path(run: Callable[[str, Sequence[torch.Tensor | None]], torch.Tensor],
                 inputs: Sequence[torch.Tensor | None], flags: tuple) -> str:
    """``fused`` or ``gather`` for this call (``$PAMM_TRITON_MULTI``, see ``triton_scan._multi_path``). ``auto``
    on CUDA times both paths once per problem (shapes, dtypes, which inputs need gradients, ``flags``) on
    detached copies, forward and, when gradients are wanted, backward, and keeps the faster."""
    from pamm.ops.triton_scan import _multi_path

    path = _multi_path()
    if path != "auto":
        return path
    if not _can_time(inputs[0].device):
        return "fused"
    wants_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    key = (inputs[0].device, wants_grad, flags,
           tuple(None if x is None else (tuple(x.shape), x.dtype, x.requires_grad) for x in inputs))
    if key not in _TRITON_PATHS:
        times = {p: _time_path(run, p, inputs, wants_grad, inputs[0].device) for p in ("fused", "gather")}
        _TRITON_PATHS[key] = min(times, key=times.get)
    return _TRITON_PATHS[key]


def _can_time(device: torch.device) -> bool:
    """Whether ``auto`` may time the two paths here: on a CUDA device, outside CUDA-graph capture."""
    return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def _time_path(run: Callable[[str, Sequence[torch.Tensor | None]], torch.Tensor], path: str,
               inputs: Sequence[torch.Tensor | None], wants_grad: bool, device: torch.device,
               repeats: int = 3) -> float:
    """Median milliseconds of ``run(path, …)`` (with its backward when ``wants_grad``) on detached copies,
    after one untimed call that compiles and autotunes its kernels (the suite's timing loop,
    :func:`pamm.engine.profile.timed_runs`)."""
    from pamm.engine.profile import timed_runs

    leaves = [None if x is None else x.detach().requires_grad_(wants_grad and x.requires_grad) for x in inputs]
    needing = [x for x in leaves if x is not None and x.requires_grad]

    def once() -> None:
        with torch.enable_grad() if wants_grad else torch.no_grad():
            out = run(path, leaves)
            if needing:
                torch.autograd.grad(out, needing, torch.ones_like(out))

    return statistics.median(timed_runs(once, device, warmup=1, repeats=repeats))


def _gather_scan_merge(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, perm: torch.Tensor,
                       inverse: torch.Tensor, merge: str, backend: str) -> torch.Tensor:
    """The K orders gathered into one (b, K·d, L) scan, scanned, gathered back and merged."""
    directions, length = perm.shape
    u_per_dir = _per_direction(u, 3, "u", directions)
    delta_per_dir = _per_direction(delta, 3, "delta", directions)
    batch, channels = u.shape[0], u.shape[-2]

    u_s = _stack_tokens(u, perm, inverse, u_per_dir)
    delta_s = _stack_tokens(delta, perm, inverse, delta_per_dir)
    A_s = _stack_params(A, directions, _per_direction(A, 2, "A", directions))
    D_s = _stack_params(D, directions, _per_direction(D, 1, "D", directions))
    bias_s = _stack_params(delta_bias, directions, _per_direction(delta_bias, 1, "delta_bias", directions))
    B_s = _stack_selection(B, perm, inverse, "B")
    C_s = _stack_selection(C, perm, inverse, "C")

    y = selective_scan(u_s, delta_s, A_s, B_s, C_s, D=D_s, delta_bias=bias_s, delta_softplus=delta_softplus, backend=backend)
    y = permute_tokens(y.view(batch, directions, channels, length), inverse, perm, shared=False)
    return y.sum(dim=1) if merge == "sum" else y.mean(dim=1)
