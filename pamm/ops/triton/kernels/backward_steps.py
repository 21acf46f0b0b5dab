"""What one step of the token backward reads: the inputs of its state recompute and of its reverse step."""
from __future__ import annotations

import triton
import triton.language as tl

from pamm.ops.triton.kernels.common import bc_index, delta_at, token


@triton.jit
def step_mask(mask, t, lo, hi):
    """``mask`` where step ``t`` lies in [lo, hi), else all False. Built as a vector comparison: the
    interpreter cannot ``&`` a scalar condition with a vector mask."""
    steps = mask.to(tl.int32) * 0 + t
    return mask & (steps >= lo) & (steps < hi)


@triton.jit
def recompute_inputs(perm_ptr, k, t, c_start, c_end, seq_len, delta_row, u_row, B_col, ch_mask, n_mask, bias,
                      HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SOFTPLUS: tl.constexpr):
    """What the interval's forward recompute reads at step ``t`` (Δ after bias/softplus, u, B_t); zeros
    when ``t`` is outside [c_start, c_end) (a prefetch past the interval)."""
    step = tl.minimum(t, seq_len - 1)
    pos = token(perm_ptr, k, step, seq_len, HAS_PERM)
    m_d = step_mask(ch_mask, t, c_start, c_end)
    dt, _raw = delta_at(delta_row, pos, m_d, bias, HAS_BIAS, SOFTPLUS)
    u = tl.load(u_row + pos, mask=m_d, other=0.0).to(tl.float32)
    Bt = tl.load(B_col + bc_index(step, pos, BC_SCAN_ORDER), mask=step_mask(n_mask, t, c_start, c_end),
                 other=0.0).to(tl.float32)
    return dt, u, Bt


@triton.jit
def reverse_inputs(perm_ptr, k, t, c_start, c_end, seq_len, delta_row, u_row, B_col, C_col, dout_row, z_row,
                    scratch_rows, scratch_stride, h0, ch_mask, n_mask, dn_mask, bias, out_scale,
                    HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, LOCAL_PASS: tl.constexpr):
    """What the reverse step of token ``t`` reads: its position, Δ (and the pre-softplus value), the
    scaled output gradient, z, C_t and, outside the local pass, u, B_t and h_{t-1} (the scratch row
    before t, or the interval's checkpoint ``h0`` at its first token). Zeros when ``t`` is outside
    [c_start, c_end) (a prefetch past the interval)."""
    step = tl.maximum(tl.minimum(t, seq_len - 1), 0)
    pos = token(perm_ptr, k, step, seq_len, HAS_PERM)
    bc = bc_index(step, pos, BC_SCAN_ORDER)
    m_d = step_mask(ch_mask, t, c_start, c_end)
    m_n = step_mask(n_mask, t, c_start, c_end)
    dt, dt_raw = delta_at(delta_row, pos, m_d, bias, HAS_BIAS, SOFTPLUS)
    dout = tl.load(dout_row + pos, mask=m_d, other=0.0).to(tl.float32) * out_scale
    if HAS_Z:
        zt = tl.load(z_row + pos, mask=m_d, other=0.0).to(tl.float32)
    else:
        zt = tl.zeros_like(dout)
    Ct = tl.load(C_col + bc, mask=m_n, other=0.0).to(tl.float32)
    if LOCAL_PASS:
        u = tl.zeros_like(dout)
        Bt = tl.zeros_like(Ct)
        h_prev = tl.zeros_like(h0)
    else:
        u = tl.load(u_row + pos, mask=m_d, other=0.0).to(tl.float32)
        Bt = tl.load(B_col + bc, mask=m_n, other=0.0).to(tl.float32)
        h_prev = tl.load(scratch_rows + tl.maximum(t - 1 - c_start, 0) * scratch_stride,
                         mask=step_mask(dn_mask, t, c_start + 1, c_end), other=0.0)
        h_prev = tl.where(t > c_start, h_prev, h0)
    return pos, dt, dt_raw, dout, zt, Ct, u, Bt, h_prev
