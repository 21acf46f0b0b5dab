"""Launching the Triton scan kernels: the kernel table, and the forward and backward passes of one call
(buffers, arguments, the long-l regime's two passes around the state carry).

Memory: the forward saves only the inputs plus the state before every ``chunk``-th token,
``b·K·d·n·ceil(l/chunk)`` fp32 values. The token backward recomputes the states one interval at a time
into scratch rows of ``d_block·n·rows`` values per program (``chunk`` ≈ sqrt(l); rows = chunk, or about
chunk + 10 where the split backward may run), with rows only for the programs that can run at once,
handed from program to program. The tile backward works on 256-token intervals with a scratch of
``b·K·d·chunk`` values. Gradients of B and C are accumulated with fp32 atomics, so they (and merged
outputs) are not bitwise deterministic, as with mamba-ssm's kernel.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from pamm.ops.triton.autotune import autotuned, heuristic_config
from pamm.ops.triton.availability import interpreting, triton_available
from pamm.ops.triton.plan import (
    BWD_BLOCK_DS,
    Plan,
    Problem,
    block_n,
    scratch_slots,
    split_sub,
    token_bwd_scratch,
    variant_mask,
)

__all__ = ["KernelTable", "kernel_table", "scan_forward", "scan_backward"]


@dataclass(frozen=True)
class KernelTable:
    """The jitted kernels by stage ("fwd", "bwd", "bwd_tile", "carry") and, when compiled, the autotuned
    wrappers of the first three (none under the interpreter)."""

    interpreted: bool
    raw: dict[str, Any]
    tuned: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def kernel_table() -> KernelTable:
    """Import the kernels once (triton must import) and wrap them with autotuning when compiled."""
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(f"the triton selective-scan backend is unavailable: {why}")
    from pamm.ops.triton.kernels import backward, backward_tile, forward, state_carry

    raw = {"fwd": forward.scan_fwd_kernel, "bwd": backward.scan_bwd_kernel,
           "bwd_tile": backward_tile.scan_bwd_tile_kernel, "carry": state_carry.segment_carry_kernel}
    interpreted = interpreting()
    tuned = {} if interpreted else {kind: autotuned(kind, raw[kind]) for kind in ("fwd", "bwd", "bwd_tile")}
    return KernelTable(interpreted=interpreted, raw=raw, tuned=tuned)


def _common_args(problem: Problem, plan: Plan) -> dict:
    return dict(
        n_channels=problem.n_channels, chans_per_group=problem.chans_per_group, n_groups=problem.n_groups,
        n_state=problem.n_state, seq_len=problem.seq_len, n_dir=problem.n_dir,
        n_seg=plan.n_seg(problem.seq_len), seg_len=plan.seg_len, n_chunks=plan.n_chunks(problem.seq_len),
        out_scale=problem.out_scale,
        U_PER_DIR=problem.u_per_dir, DT_PER_DIR=problem.delta_per_dir, A_PER_DIR=problem.A_per_dir,
        B_PER_DIR=problem.B_per_dir, C_PER_DIR=problem.C_per_dir, DB_PER_DIR=problem.db_per_dir,
        HAS_D=problem.has_D, HAS_Z=problem.has_z, HAS_BIAS=problem.has_bias, SOFTPLUS=problem.softplus,
        HAS_PERM=problem.has_perm, BC_SCAN_ORDER=problem.bc_scan_order, BLOCK_N=block_n(problem.n_state),
        CHUNK=plan.chunk,
    )


def _launch(kind: str, problem: Problem, plan: Plan, args: dict, autotune: bool) -> None:
    """Run the forward or a backward kernel: autotuned, or its heuristic config, or the plan's fixed block
    (the interpreter's, or a caller's) with the plan's backward variant."""
    table = kernel_table()
    n_seg = plan.n_seg(problem.seq_len)
    blocks = lambda block_d: problem.n_groups * -(-problem.chans_per_group // block_d)  # noqa: E731
    if not table.interpreted and plan.block_d is None:
        if autotune:
            grid = lambda meta: (blocks(meta["BLOCK_D"]), problem.batch, problem.n_dir * n_seg)  # noqa: E731
            table.tuned[kind][grid](**args)
        else:
            config = heuristic_config(kind, args)
            table.raw[kind][(blocks(config.kwargs["BLOCK_D"]), problem.batch, problem.n_dir * n_seg)](
                **args, **config.kwargs, num_warps=config.num_warps)
        return
    block_d = plan.block_d or 4
    variant = {}
    if kind == "bwd" and plan.bwd_split:
        per_thread = block_d * args["BLOCK_N"] / (32 * plan.num_warps)
        variant = dict(PREFETCH=False, SPLIT=True, SUB=split_sub(per_thread, plan.chunk, args["LOCAL_PASS"]))
    elif kind == "bwd":
        variant = dict(PREFETCH=True if plan.bwd_prefetch is None else plan.bwd_prefetch, SPLIT=False, SUB=1)
    table.raw[kind][(blocks(block_d), problem.batch, problem.n_dir * n_seg)](
        **args, **variant, BLOCK_D=block_d, num_warps=plan.num_warps)


def _launch_carry(problem: Problem, A: torch.Tensor, local: torch.Tensor, dt_sum: torch.Tensor,
                  carry: torch.Tensor, reverse: bool) -> None:
    table = kernel_table()
    block_d = 8
    grid = (-(-problem.n_channels // block_d), problem.batch, problem.n_dir)
    table.raw["carry"][grid](
        A, local, dt_sum, carry, problem.n_channels, problem.n_state, problem.n_dir, local.shape[2],
        A_PER_DIR=problem.A_per_dir, REVERSE=reverse, BLOCK_D=block_d, BLOCK_N=block_n(problem.n_state),
        num_warps=1 if table.interpreted else 4,
    )


def scan_forward(problem: Problem, plan: Plan, u, delta, A, B, C, D, z, bias, perm, store_ckpt: bool,
                 autotune: bool = True):
    """Output (b, d, L) in u's dtype, and the checkpoints when a backward will follow."""
    device = u.device
    b, d, n, L, K = problem.batch, problem.n_channels, problem.n_state, problem.seq_len, problem.n_dir
    plan = plan.forward(L)
    n_seg, n_chunks = plan.n_seg(L), plan.n_chunks(L)
    f32 = dict(device=device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    atomic_out = K > 1
    out = torch.zeros(b, d, L, **f32) if atomic_out else torch.empty(b, d, L, device=device, dtype=u.dtype)
    ckpt = torch.empty(b, K, n_chunks, d, n, **f32) if store_ckpt else dummy
    args = dict(u_ptr=u, delta_ptr=delta, A_ptr=A, B_ptr=B, C_ptr=C,
                D_ptr=D if D is not None else dummy, z_ptr=z if z is not None else dummy,
                bias_ptr=bias if bias is not None else dummy, perm_ptr=perm if perm is not None else dummy,
                out_ptr=out, ckpt_ptr=ckpt, **_common_args(problem, plan),
                ATOMIC_OUT=atomic_out, MULTI_SEG=n_seg > 1, STORE_CKPT=store_ckpt, CARRY=plan.carries(L))
    args.update(CHUNK=plan.tile, CKPT=plan.chunk)  # the forward walks tiles and drops checkpoints
    if n_seg > 1:
        seg_state = torch.empty(b, K, n_seg, d, n, **f32)
        seg_dtsum = torch.empty(b, K, n_seg, d, **f32)
        seg_init = torch.empty(b, K, n_seg, d, n, **f32)
        seg_args = dict(seg_state_ptr=seg_state, seg_dtsum_ptr=seg_dtsum, seg_init_ptr=seg_init)
        _launch("fwd", problem, plan, {**args, **seg_args, "LOCAL_PASS": True}, autotune)
        _launch_carry(problem, A, seg_state, seg_dtsum, seg_init, reverse=False)
    else:
        seg_args = dict(seg_state_ptr=dummy, seg_dtsum_ptr=dummy, seg_init_ptr=dummy)
    _launch("fwd", problem, plan, {**args, **seg_args, "LOCAL_PASS": False}, autotune)
    if out.dtype != u.dtype:
        out = out.to(u.dtype)
    return out, ckpt


def scan_backward(problem: Problem, plan: Plan, dout, ckpt, u, delta, A, B, C, D, z, bias, perm,
                  autotune: bool = True):
    """Gradients (du, dΔ, dA, dB, dC, dD, dz, dbias) in the canonical layouts, fp32 where reduced."""
    device = u.device
    b, d, n, L, K = problem.batch, problem.n_channels, problem.n_state, problem.seq_len, problem.n_dir
    n_seg = plan.n_seg(L)
    f32 = dict(device=device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    du_atomic = K > 1 and not problem.u_per_dir
    ddelta_atomic = K > 1 and not problem.delta_per_dir
    du = torch.zeros(u.shape, **f32) if du_atomic else torch.empty_like(u)
    ddelta = torch.zeros(delta.shape, **f32) if ddelta_atomic else torch.empty_like(delta)
    dB = torch.zeros(B.shape, **f32)
    dC = torch.zeros(C.shape, **f32)
    dz = torch.empty_like(z) if z is not None else None
    dA_part = torch.empty(b, K, n_seg, d, n, **f32)
    dD_part = torch.empty(b, K, n_seg, d, **f32) if D is not None else None
    dbias_part = torch.empty(b, K, n_seg, d, **f32) if bias is not None else None
    args = dict(u_ptr=u, delta_ptr=delta, A_ptr=A, B_ptr=B, C_ptr=C,
                D_ptr=D if D is not None else dummy, z_ptr=z if z is not None else dummy,
                bias_ptr=bias if bias is not None else dummy, perm_ptr=perm if perm is not None else dummy,
                dout_ptr=dout, ckpt_ptr=ckpt, du_ptr=du, ddelta_ptr=ddelta, dB_ptr=dB, dC_ptr=dC,
                dz_ptr=dz if dz is not None else dummy, dA_part_ptr=dA_part,
                dD_part_ptr=dD_part if dD_part is not None else dummy,
                dbias_part_ptr=dbias_part if dbias_part is not None else dummy,
                **_common_args(problem, plan), DU_ATOMIC=du_atomic, DDELTA_ATOMIC=ddelta_atomic,
                MULTI_SEG=n_seg > 1)
    if plan.bwd_kind == "tile":  # one (channel, token) row per channel: the reversed adjoint's way back
        kind = "bwd_tile"
        args["scratch_ptr"] = torch.empty(b * K * n_seg, d, plan.chunk, **f32)
    else:  # the states of one checkpoint interval, in slots handed from program to program
        kind = "bwd"
        scratch_values = token_bwd_scratch(problem, plan, device)
        narrowest = plan.block_d or min(BWD_BLOCK_DS)
        args["scratch_ptr"] = torch.empty(scratch_values, **f32)
        args["scratch_values"] = scratch_values
        args["slot_turn_ptr"] = torch.zeros(1 + scratch_slots(scratch_values, plan, n, narrowest), device=device,
                                            dtype=torch.int32)
        args["variants"] = variant_mask(plan)
    if n_seg > 1:
        seg_gstart = torch.empty(b, K, n_seg, d, n, **f32)
        seg_dtsum = torch.empty(b, K, n_seg, d, **f32)
        seg_gcarry = torch.empty(b, K, n_seg, d, n, **f32)
        seg_args = dict(seg_gstart_ptr=seg_gstart, seg_dtsum_ptr=seg_dtsum, seg_gcarry_ptr=seg_gcarry)
        _launch(kind, problem, plan, {**args, **seg_args, "LOCAL_PASS": True}, autotune)
        _launch_carry(problem, A, seg_gstart, seg_dtsum, seg_gcarry, reverse=True)
    else:
        seg_args = dict(seg_gstart_ptr=dummy, seg_dtsum_ptr=dummy, seg_gcarry_ptr=dummy)
    _launch(kind, problem, plan, {**args, **seg_args, "LOCAL_PASS": False}, autotune)

    def reduce_partials(part: torch.Tensor, per_dir: bool) -> torch.Tensor:
        # [b, K, n_seg, ...] -> [K, ...] per direction, or [...] when shared
        summed = part.sum(dim=(0, 2))
        return summed if per_dir else summed.sum(0)

    dA = reduce_partials(dA_part, problem.A_per_dir)
    dD = reduce_partials(dD_part, problem.db_per_dir) if dD_part is not None else None
    dbias = reduce_partials(dbias_part, problem.db_per_dir) if dbias_part is not None else None
    return du.to(u.dtype), ddelta.to(delta.dtype), dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias
