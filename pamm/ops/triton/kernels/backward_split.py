"""The split form of the token backward: per sub-block of SUB tokens, the unrolled state recompute, the
adjoint chain alone, then every gradient of the sub-block from its tiles at once."""
from __future__ import annotations

import triton
import triton.language as tl

from pamm.ops.triton.kernels.backward_steps import recompute_inputs, reverse_inputs, step_mask
from pamm.ops.triton.kernels.common import bc_index, delta_at, positions, sigmoid, write_grad


@triton.jit
def recompute_steps(h, sb_lo, sb_hi, c_start, state_rows, scratch_stride, dn_mask, A, perm_ptr, k, seq_len, delta_row,
                     u_row, B_col, ch_mask, n_mask, bias, HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SUB: tl.constexpr):
    """The split backward's state recompute over steps [sb_lo, sb_hi) (at most ``SUB``): h_t into state row
    t - c_start + 1. Unrolled, like :func:`adjoint_steps`, so that the sub-block's loads are issued ahead of
    the chain; steps past sb_hi are identity maps and store nothing."""
    for jj in tl.static_range(SUB):
        t = sb_lo + jj
        dt, u, Bt = recompute_inputs(perm_ptr, k, t, sb_lo, sb_hi, seq_len, delta_row, u_row, B_col, ch_mask, n_mask,
                                      bias, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        tl.store(state_rows + (t - c_start + 1) * scratch_stride, h, mask=step_mask(dn_mask, t, sb_lo, sb_hi))
    return h


@triton.jit
def adjoint_steps(carry, dt_sum, sb_lo, sb_hi, seg_start, adj_rows, scratch_stride, dn_mask, A, perm_ptr, k,
                   seq_len, delta_row, dout_row, z_row, C_col, ch_mask, n_mask, bias, out_scale,
                   HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                   SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, LOCAL_PASS: tl.constexpr, SUB: tl.constexpr):
    """The split backward's sequential part over steps [sb_lo, sb_hi) (at most ``SUB``), in reverse:
    only the adjoint, ``carry_t = a_t·G_t`` with ``G_t = dy_t C_t + carry_{t+1}``; no reductions. Writes
    carry_t to ``adj_rows`` row t - sb_lo and the entering carry to row ``SUB`` (steps past sb_hi are
    identity maps, so rows sb_hi - sb_lo .. SUB all hold it); in the ``LOCAL_PASS`` it writes nothing and
    adds to ``dt_sum`` the Δ of the steps after ``seg_start``. Unrolled: every step's loads are
    independent of the carry and can be issued ahead of the chain. Returns the carry, G_{sb_lo}, dt_sum."""
    if not LOCAL_PASS:
        tl.store(adj_rows + SUB * scratch_stride, carry, mask=dn_mask)
    G = carry
    for jj in tl.static_range(SUB):
        t = sb_lo + (SUB - 1 - jj)
        # the reverse step's loader in its adjoint-only form (no u, B_t or h_{t-1}: those arguments unused)
        _pos, dt, _raw, dy, zt, Ct, _u, _Bt, _h = reverse_inputs(
            perm_ptr, k, t, sb_lo, sb_hi, seq_len, delta_row, delta_row, C_col, C_col, dout_row, z_row, adj_rows,
            scratch_stride, carry, ch_mask, n_mask, dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS,
            SOFTPLUS, HAS_Z, True)
        if HAS_Z:
            dy = dy * zt * sigmoid(zt)
        G = dy[:, None] * Ct[None, :] + carry
        carry = tl.exp(dt[:, None] * A) * G
        if LOCAL_PASS:
            dt_sum += tl.where(t > seg_start, dt, 0.0)
        else:
            tl.store(adj_rows + (SUB - 1 - jj) * scratch_stride, carry, mask=dn_mask)
    return carry, G, dt_sum


@triton.jit
def split_gradients(sb_lo, sb_hi, c_start, state_rows, adj_rows, scratch_stride, A, D, bias,
                     out_scale, dA_acc, dD_acc, dbias_acc, perm_ptr, k, seq_len, delta_row, u_row, dout_row, z_row,
                     B_col, C_col, dB_col, dC_col, du_row, ddelta_row, dz_row, ch_mask, n_mask, dn_mask,
                     HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr, DU_ATOMIC: tl.constexpr,
                     DDELTA_ATOMIC: tl.constexpr, SUB: tl.constexpr):
    """The split backward's parallel part: every gradient of steps [sb_lo, sb_hi) at once, from the
    (BLOCK_D, SUB, BLOCK_N) tiles of h_{t-1}, h_t (state rows) and carry_t, carry_{t+1} (adjoint rows),
    ``G_t = dy_t C_t + carry_{t+1}`` and ``a_t G_t h_{t-1} = carry_t h_{t-1}``: the reductions over
    channels (dB, dC) and states (du, dΔ, dz) run for the whole sub-block in one go instead of one token
    after another. Writes du, dΔ, dz, adds dB, dC (token-contiguous rows); returns the dA, dD, dbias sums.
    Channels lead the tiles: compiled for sm_90, (tokens, channels, states) tiles reduced across warps
    more (at S2 with 32 channels and 4 warps: 9.8 barriers and 44 shuffles per token, against 6.8 and 20)."""
    tt = tl.arange(0, SUB)
    t = sb_lo + tt
    valid = t < sb_hi
    step = tl.minimum(t, seq_len - 1)
    pos = positions(perm_ptr, k, step, valid, seq_len, HAS_PERM)
    bc = bc_index(step, pos, BC_SCAN_ORDER)
    m_dt = ch_mask[:, None] & valid[None, :]
    m_tn = valid[:, None] & n_mask[None, :]
    m_dtn = dn_mask[:, None, :] & valid[None, :, None]
    at_t = pos[None, :]  # (BLOCK_D, SUB) token offsets of per-channel rows
    dt, dt_raw = delta_at(delta_row[:, None], at_t, m_dt, bias[:, None], HAS_BIAS, SOFTPLUS)
    u = tl.load(u_row[:, None] + at_t, mask=m_dt, other=0.0).to(tl.float32)
    dout = tl.load(dout_row[:, None] + at_t, mask=m_dt, other=0.0).to(tl.float32) * out_scale
    if HAS_Z:
        zt = tl.load(z_row[:, None] + at_t, mask=m_dt, other=0.0).to(tl.float32)
        sig_z = sigmoid(zt)
        dy = dout * zt * sig_z
    else:
        dy = dout
    Bt = tl.load(B_col[None, :] + bc[:, None], mask=m_tn, other=0.0).to(tl.float32)
    Ct = tl.load(C_col[None, :] + bc[:, None], mask=m_tn, other=0.0).to(tl.float32)

    states = state_rows[:, None, :] + (t - c_start)[None, :, None] * scratch_stride  # row of h_{t-1}
    h_prev = tl.load(states, mask=m_dtn, other=0.0)
    h_t = tl.load(states + scratch_stride, mask=m_dtn, other=0.0)
    adjoints = adj_rows[:, None, :] + tt[None, :, None] * scratch_stride  # row of carry_t
    carry_t = tl.load(adjoints, mask=m_dtn, other=0.0)
    carry_next = tl.load(adjoints + scratch_stride, mask=m_dtn, other=0.0)

    G = dy[:, :, None] * Ct[None, :, :] + carry_next
    g_decayed = carry_t * h_prev  # G_t a_t h_{t-1}
    dtu = dt * u
    dC = tl.sum(dy[:, :, None] * h_t, axis=0)
    dB = tl.sum(G * dtu[:, :, None], axis=0)
    g_dot_B = tl.sum(G * Bt[None, :, :], axis=2)
    du = dt * g_dot_B
    if HAS_D:
        du += D[:, None] * dy
        dD_acc += tl.sum(dy * u, axis=1)
    ddt = u * g_dot_B + tl.sum(g_decayed * A[:, None, :], axis=2)
    dA_acc += tl.sum(g_decayed * dt[:, :, None], axis=1)
    if SOFTPLUS:
        ddt = ddt * sigmoid(dt_raw)
    ddt = tl.where(m_dt, ddt, 0.0)
    dbias_acc += tl.sum(ddt, axis=1)
    tl.atomic_add(dC_col[None, :] + bc[:, None], dC, mask=m_tn)
    tl.atomic_add(dB_col[None, :] + bc[:, None], dB, mask=m_tn)
    if HAS_Z:
        y = tl.sum(h_t * Ct[None, :, :], axis=2)
        if HAS_D:
            y += D[:, None] * u
        dz = dout * y * sig_z * (1.0 + zt * (1.0 - sig_z))
        write_grad(dz_row[:, None] + at_t, dz, m_dt, False)
    write_grad(du_row[:, None] + at_t, du, m_dt, DU_ATOMIC)
    write_grad(ddelta_row[:, None] + at_t, ddt, m_dt, DDELTA_ATOMIC)
    return dA_acc, dD_acc, dbias_acc
