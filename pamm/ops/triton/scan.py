"""The Triton backend's entry points and their autograd function.

* :func:`selective_scan_triton`: mamba-ssm's ``selective_scan_fn`` semantics and layouts, fp32/bf16/fp16
  inputs, fp32 state;
* :func:`multi_direction_scan_triton`: K scan orders read and written *through* their permutations
  inside the kernels, the K outputs merged (sum or mean) in row-major order, forward and backward, with
  no gathered copies of u, Δ or the output (B and C, n ≪ d rows, are copied into each direction's
  scan order first unless ``settings.triton_bc_order`` is ``token``).

Both take the :class:`~pamm.ops.settings.ScanSettings` that choose the backward, the B/C order and
whether to autotune, and optionally :class:`~pamm.ops.triton.plan.PlanOverrides`.
"""
from __future__ import annotations

import contextlib

import torch

from pamm.ops.settings import ScanSettings, from_environment
from pamm.ops.shapes import check_multi, check_scan
from pamm.ops.triton import availability, launch
from pamm.ops.triton.plan import PlanOverrides, Problem, plan_for

__all__ = ["selective_scan_triton", "multi_direction_scan_triton", "in_scan_order"]


class _TritonScanFn(torch.autograd.Function):
    """Autograd wrapper; inputs arrive in canonical layouts (A, D, bias already fp32)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, perm, problem: Problem, settings: ScanSettings,
                overrides: PlanOverrides | None, grad_enabled: bool):
        table = launch.kernel_table()
        plan = plan_for(problem, availability.sm_count(u.device), settings.triton_bwd, overrides, table.interpreted)
        # needs_input_grad ignores no_grad mode, and forward itself runs with grad disabled.
        needs_grad = grad_enabled and any(ctx.needs_input_grad[:8])
        with _device_guard(u.device):
            out, ckpt = launch.scan_forward(problem, plan, u, delta, A, B, C, D, z, bias, perm, store_ckpt=needs_grad,
                                            autotune=settings.triton_autotune)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, bias, perm, ckpt)
            ctx.problem, ctx.plan, ctx.autotune = problem, plan, settings.triton_autotune
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, bias, perm, ckpt = ctx.saved_tensors
        with _device_guard(u.device):
            grads = launch.scan_backward(ctx.problem, ctx.plan, dout.contiguous(), ckpt, u, delta, A, B, C, D, z,
                                         bias, perm, autotune=ctx.autotune)
        return (*grads, None, None, None, None, None)


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _as_f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _check_inputs(floats: dict, others: tuple) -> None:
    """Dtypes the kernels take, and one device they run on."""
    for name, t in floats.items():
        if t is not None and t.dtype not in availability.SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be fp32, bf16 or fp16 for the triton backend, got {t.dtype}")
    tensors = [t for t in (*floats.values(), *others) if t is not None]
    availability.check_device(launch.kernel_table().interpreted, *tensors)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    settings: ScanSettings | None = None,
    plan: PlanOverrides | None = None,
) -> torch.Tensor:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics (no ``return_last_state``).

    Shapes as :func:`pamm.ops.shapes.check_scan` checks them. u/Δ/B/C/z may be fp32, bf16 or fp16 (mixed
    is fine); the state and all sums are fp32. Returns (b, d, l) in u's dtype. ``settings`` None: the
    defaults with the environment's overrides.
    """
    shape = check_scan(u, delta, A, B, C, D, z, delta_bias)
    _check_inputs({"u": u, "delta": delta, "B": B, "C": C, "z": z}, (A, D, delta_bias))
    settings = settings or from_environment()
    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    problem = Problem(
        batch=shape.batch, n_dir=1, n_channels=shape.channels, n_groups=shape.groups, n_state=shape.d_state,
        seq_len=shape.length, u_per_dir=False, delta_per_dir=False, A_per_dir=False, B_per_dir=False,
        C_per_dir=False, db_per_dir=False, has_D=D is not None, has_z=z is not None, has_bias=delta_bias is not None,
        softplus=bool(delta_softplus), has_perm=False, out_scale=1.0,
    )
    return _TritonScanFn.apply(
        u.contiguous(), delta.contiguous(), _as_f32(A), B4.contiguous(), C4.contiguous(), _as_f32(D),
        None if z is None else z.contiguous(), _as_f32(delta_bias), None, problem, settings, plan,
        torch.is_grad_enabled(),
    )


def in_scan_order(x: torch.Tensor, perm: torch.Tensor, per_dir: bool) -> torch.Tensor:
    """B or C, (b, G, n, L) shared or (b, K, G, n, L) per direction, as (b, K, G, n, L) in each direction's
    scan order: step t of direction k at ``[..., k, :, :, t]``. Differentiable (torch's gather and index
    backward add the K directions' gradients back)."""
    index = perm.long()
    if per_dir:
        return x.gather(-1, index[None, :, None, None, :].expand_as(x)).contiguous()
    return x[..., index].movedim(-2, 1).contiguous()  # (b, G, n, K, L) -> (b, K, G, n, L)


def multi_direction_scan_triton(
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
    inverse: torch.Tensor | None = None,
    merge: str = "sum",
    settings: ScanSettings | None = None,
    plan: PlanOverrides | None = None,
) -> torch.Tensor:
    """K selective scans over K token orders, fused: the kernels read the row-major inputs through
    ``perm`` and add each direction's output back at its row-major position, so no gathered
    ``(K·b, d, L)`` copies and no scatter / index-add pass exist, in the forward or the backward.

    Shapes as :func:`pamm.ops.shapes.check_multi` checks them; ``perm[k, t]`` is the row-major token
    visited at step t of direction k. ``inverse`` (its inverse permutation) is only shape-checked:
    writing through ``perm`` needs no inverse. Returns the merged (b, d, L) output in u's dtype, merge
    ``"sum"`` or ``"mean"`` over directions.
    """
    shape = check_multi(u, delta, A, B, C, D, delta_bias, perm, inverse, merge)
    _check_inputs({"u": u, "delta": delta, "B": B, "C": C}, (A, D, delta_bias, perm))
    settings = settings or from_environment()
    K = shape.directions
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    db_per_dir = shape.D_per_dir or shape.bias_per_dir  # the kernels take both shared or both per direction
    if db_per_dir and D is not None and not shape.D_per_dir:
        D = D.expand(K, -1)
    if db_per_dir and delta_bias is not None and not shape.bias_per_dir:
        delta_bias = delta_bias.expand(K, -1)
    bc_scan_order = settings.triton_bc_order == "scan"
    if bc_scan_order:
        B, C = in_scan_order(B, perm, shape.B_per_dir), in_scan_order(C, perm, shape.C_per_dir)
    problem = Problem(
        batch=shape.batch, n_dir=K, n_channels=shape.channels, n_groups=shape.groups, n_state=shape.d_state,
        seq_len=shape.length, u_per_dir=shape.u_per_dir, delta_per_dir=shape.delta_per_dir,
        A_per_dir=shape.A_per_dir, B_per_dir=shape.B_per_dir or bc_scan_order,
        C_per_dir=shape.C_per_dir or bc_scan_order, db_per_dir=db_per_dir, has_D=D is not None, has_z=False,
        has_bias=delta_bias is not None, softplus=bool(delta_softplus), has_perm=True,
        out_scale=1.0 / K if merge == "mean" else 1.0, bc_scan_order=bc_scan_order,
    )
    return _TritonScanFn.apply(
        u.contiguous(), delta.contiguous(), _as_f32(A), B.contiguous(), C.contiguous(), _as_f32(D), None,
        _as_f32(delta_bias), perm.to(torch.int32).contiguous(), problem, settings, plan, torch.is_grad_enabled(),
    )
