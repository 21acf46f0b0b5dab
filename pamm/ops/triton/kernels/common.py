"""Small jitted helpers shared by the scan kernels: program coordinates, addressing through the
scan orders, Δ after bias and softplus, tile columns and gradient writes."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def affine_combine(a_first, b_first, a_then, b_then):
    """Compose x -> a_first*x + b_first with the map that follows it, x -> a_then*x + b_then."""
    return a_first * a_then, b_first * a_then + b_then


@triton.jit
def softplus(x):
    """log(1 + e^x) as mamba-ssm computes it (identity above 20), accurate for very negative x."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    # log1p(e) = log(w) * e / (w - 1) is exact to rounding (Goldberg); w == 1 means log1p(e) == e.
    denom = tl.where(w == 1.0, 1.0, w - 1.0)
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * (e / denom))
    return tl.where(x > 20.0, x, log1p_e)


@triton.jit
def sigmoid(x):
    """Overflow-free logistic function (exp of a non-positive argument only)."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def slot(pid_b, k, n_dir, PER_DIR: tl.constexpr):
    """Index of the (batch, direction) slice of a tensor that may or may not have a direction axis."""
    if PER_DIR:
        return pid_b * n_dir + k
    else:
        return pid_b


@triton.jit
def positions(perm_ptr, k, t, mask, seq_len, HAS_PERM: tl.constexpr):
    """Token index read at scan steps ``t``: through the direction's permutation when there is one."""
    if HAS_PERM:
        return tl.load(perm_ptr + k * seq_len + t, mask=mask, other=0)
    else:
        return t


@triton.jit
def load_delta(delta_base, ch, pos, mask2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                seq_len):
    """:func:`delta_at` for a (channels, tokens) tile."""
    return delta_at(delta_base + ch[:, None] * seq_len, pos[None, :], mask2, bias[:, None], HAS_BIAS, SOFTPLUS)


@triton.jit
def token(perm_ptr, k, t, seq_len, HAS_PERM: tl.constexpr):
    """Row-major token index of scan step ``t`` (a scalar) of direction ``k``."""
    if HAS_PERM:
        return tl.load(perm_ptr + k * seq_len + t)
    else:
        return t


@triton.jit
def bc_index(t, pos, BC_SCAN_ORDER: tl.constexpr):
    """Where B and C (and dB, dC) are addressed at scan step(s) ``t`` whose token position is ``pos``:
    at ``t`` when the caller laid them out in each direction's scan order (coalesced rows), else at ``pos``."""
    if BC_SCAN_ORDER:
        return t
    else:
        return pos


@triton.jit
def delta_at(delta_row, pos, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ at ``delta_row + pos`` after bias and softplus (fp32), zero where masked so that masked steps
    are identity maps; also returns the pre-softplus value for the backward."""
    raw = tl.load(delta_row + pos, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        dt = softplus(raw)
    else:
        dt = raw
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def column(tile, nn, n):
    """Column ``n`` of a (BLOCK_D, BLOCK_N) tile."""
    return tl.sum(tl.where(nn[None, :] == n, tile, 0.0), axis=1)


@triton.jit
def with_column(tile, nn, n, values):
    """The tile with column ``n`` replaced by ``values`` (BLOCK_D,)."""
    return tl.where(nn[None, :] == n, values[:, None], tile)


@triton.jit
def last_column(x, cols, CHUNK: tl.constexpr):
    return tl.sum(tl.where(cols[None, :] == CHUNK - 1, x, 0.0), axis=1)


@triton.jit
def write_grad(ptrs, values, mask, ATOMIC: tl.constexpr):
    """Store a gradient in its tensor's dtype, or add it atomically (fp32) where several programs write it."""
    if ATOMIC:
        tl.atomic_add(ptrs, values, mask=mask)
    else:
        tl.store(ptrs, values.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def store_backward_partials(seg_gstart_ptr, seg_dtsum_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, seg_off,
                             n_state, state_tile, ch, dn_mask, ch_mask, G_start, dt_next_sum, dA_acc, dD_acc,
                             dbias_acc, LOCAL_PASS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """End of a backward program: the local pass's adjoint at the segment start and ΣΔ, else the
    program's partial sums of dA, dD and dbias (the caller reduces them)."""
    if LOCAL_PASS:
        tl.store(seg_gstart_ptr + seg_off * n_state + state_tile, G_start, mask=dn_mask)
        tl.store(seg_dtsum_ptr + seg_off + ch, dt_next_sum, mask=ch_mask)
    else:
        tl.store(dA_part_ptr + seg_off * n_state + state_tile, dA_acc, mask=dn_mask)
        if HAS_D:
            tl.store(dD_part_ptr + seg_off + ch, dD_acc, mask=ch_mask)
        if HAS_BIAS:
            tl.store(dbias_part_ptr + seg_off + ch, dbias_acc, mask=ch_mask)


@triton.jit
def program_channels(chans_per_group, n_seg, BLOCK_D: tl.constexpr):
    """This scan program's batch element, direction, segment, channel group and ``BLOCK_D`` channels
    (masked past the group's end): grid axes (channel block, batch, direction × segment)."""
    pid_blk = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_ks = tl.program_id(2)
    blocks_per_group = tl.cdiv(chans_per_group, BLOCK_D)
    grp = pid_blk // blocks_per_group
    ch_local = (pid_blk % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    return pid_b, pid_ks // n_seg, pid_ks % n_seg, grp, grp * chans_per_group + ch_local, ch_local < chans_per_group


@triton.jit
def skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """The channels' D and Δ bias (zeros when the call has none)."""
    if HAS_D:
        D = tl.load(D_ptr + db_base + ch, mask=ch_mask, other=0.0)
    else:
        D = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + db_base + ch, mask=ch_mask, other=0.0)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    return D, bias
