"""Multi-direction scans: K scan orders (and T tasks) in ONE selective-scan call.

Every Mamba decoder in the suite (PAMM: 4 Hilbert rotations per task; MTMamba: SS2D's 4
directions) scans the same token map in several orders and merges the results. Instead of a
Python loop of scans, the K orders are gathered into a (b, K·d, L) tensor (directions stacked on
the channel axis, B/C as K·G groups), scanned once, gathered back with the inverse permutation
and merged. Gathers use an autograd function whose backward is another gather (with the inverse
permutation): a permutation needs no scatter-add, where the released PAMM's gather/scatter round trip
costs a large share of its step (docs/performance.md). On the triton backend,
``ScanSettings.triton_multi`` chooses this path (``gather``) or a fused entry that reads and writes
through the orders inside its kernels (``fused``).
"""
from __future__ import annotations

import torch

from pamm.ops.backends import resolve
from pamm.ops.selective_scan import selective_scan
from pamm.ops.settings import ScanSettings, from_environment
from pamm.ops.shapes import MultiShape, check_multi
from pamm.ops.triton import multi_direction_scan_triton

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


def _stack_selection(x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """B or C (checked): (b, n, L), (b, G, n, L) or per direction (b, K, G, n, L) → (b, K·G, n, L)."""
    directions = index.shape[0]
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 4:
        batch, groups, d_state, length = x.shape
        gathered = permute_tokens(x.reshape(batch, groups * d_state, length), index, inverse, shared=True)
    else:
        batch, _, groups, d_state, length = x.shape
        gathered = permute_tokens(x.reshape(batch, directions, groups * d_state, length), index, inverse, shared=False)
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
    settings: ScanSettings | None = None,
) -> torch.Tensor:
    """Scan a row-major token sequence in K orders with one selective scan and merge the results.

    Shapes (K = perm.shape[0] directions, L tokens in row-major order):
      u, delta: (b, d, L) shared by all directions, or (b, K, d, L) per direction;
      A: (d, n) or (K, d, n); D, delta_bias: (d,) or (K, d);
      B, C: (b, n, L) (one group), (b, G, n, L) (G groups of d/G channels, G | d), or
            (b, K, G, n, L) per direction.
    perm, inverse: (K, L) from :func:`pamm.ops.scan_orders` (on u's device).
    merge: "sum" (as released by PAMM and MTMamba) or "mean".
    backend, settings: as in :func:`pamm.ops.selective_scan`; on the triton backend
    ``settings.triton_multi`` picks the gather path or the fused kernels.
    Returns (b, d, L) in row-major token order, u's dtype.

    Callers stack tasks on the channel axis (d = T·d_task with G = T groups, B/C per task) so that
    all tasks × directions are a single scan call.
    """
    shape = check_multi(u, delta, A, B, C, D, delta_bias, perm, inverse, merge)
    if inverse is None:
        raise ValueError("inverse must be given: the inverse permutations of perm, as scan_orders returns them")
    perm = perm.to(u.device)
    inverse = inverse.to(u.device)
    settings = settings or from_environment()
    if backend not in ("auto", settings.backend):
        settings = settings.forced(backend=backend)
    if resolve(settings, u.device, u.dtype, shape.d_state) == "triton" and settings.triton_multi == "fused":
        return multi_direction_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus, perm=perm,
                                           inverse=inverse, merge=merge, settings=settings)
    return _gather_scan_merge(shape, u, delta, A, B, C, D, delta_bias, delta_softplus, perm, inverse, merge, settings)


def _gather_scan_merge(shape: MultiShape, u, delta, A, B, C, D, delta_bias, delta_softplus: bool, perm: torch.Tensor,
                       inverse: torch.Tensor, merge: str, settings: ScanSettings) -> torch.Tensor:
    """The K orders gathered into one (b, K·d, L) scan, scanned, gathered back and merged."""
    directions, length = perm.shape
    batch, channels = shape.batch, shape.channels

    u_s = _stack_tokens(u, perm, inverse, shape.u_per_dir)
    delta_s = _stack_tokens(delta, perm, inverse, shape.delta_per_dir)
    A_s = _stack_params(A, directions, shape.A_per_dir)
    D_s = _stack_params(D, directions, shape.D_per_dir)
    bias_s = _stack_params(delta_bias, directions, shape.bias_per_dir)
    B_s = _stack_selection(B, perm, inverse)
    C_s = _stack_selection(C, perm, inverse)

    y = selective_scan(u_s, delta_s, A_s, B_s, C_s, D=D_s, delta_bias=bias_s, delta_softplus=delta_softplus,
                       settings=settings)
    y = permute_tokens(y.view(batch, directions, channels, length), inverse, perm, shared=False)
    return y.sum(dim=1) if merge == "sum" else y.mean(dim=1)
