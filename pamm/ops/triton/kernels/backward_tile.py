"""The tile backward kernel: the forward's tile structure run backwards, the adjoint a forward scan over
the tile read in reverse order."""
from __future__ import annotations

import triton
import triton.language as tl

from pamm.ops.triton.kernels.common import (
    affine_combine,
    bc_index,
    column,
    delta_at,
    load_delta,
    positions,
    program_channels,
    sigmoid,
    skip_and_bias,
    slot,
    store_backward_partials,
    token,
    with_column,
    write_grad,
)


@triton.jit
def scan_bwd_tile_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, perm_ptr, dout_ptr, ckpt_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dB_ptr, dC_ptr, dz_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr,
    seg_gstart_ptr, seg_dtsum_ptr, seg_gcarry_ptr,
    n_channels, chans_per_group, n_groups, n_state, seq_len, n_dir, n_seg, seg_len, n_chunks,
    out_scale,
    U_PER_DIR: tl.constexpr, DT_PER_DIR: tl.constexpr, A_PER_DIR: tl.constexpr,
    B_PER_DIR: tl.constexpr, C_PER_DIR: tl.constexpr, DB_PER_DIR: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, DU_ATOMIC: tl.constexpr, DDELTA_ATOMIC: tl.constexpr,
    LOCAL_PASS: tl.constexpr, MULTI_SEG: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Backward scan of one program, a (BLOCK_D, CHUNK) token tile at a time, tiles in reverse order,
    one state column ``n`` at a time (the structure of :func:`scan_fwd_kernel` and of the CUDA kernel).

    Per column: the adjoint ``G_t = dy_t·C_t + a_{t+1}·G_{t+1}`` is a *forward* associative scan over
    the tile read in reverse token order (its inputs loaded through reversed, and for ``a_{t+1}``
    shifted, positions), so no reverse scan and no register flip is needed (``associative_scan(
    reverse=True)``: triton-lang/triton#4362; a ``tl.flip`` per column is slower). The reversed adjoint goes
    back to token order through the program's scratch row, the states come from a forward scan that
    starts at the tile's checkpoint (``CHUNK`` is the checkpoint interval), ``a_t·h_{t-1} = h_t - b_t``,
    and every gradient is formed tile-wide: dB, dC rows as coalesced atomics, du, dΔ, dz once per tile.
    ``LOCAL_PASS`` (long-l first pass): only the adjoint from a zero carry, as in :func:`scan_bwd_kernel`.
    """
    pid_b, k, seg, grp, ch, ch_mask = program_channels(chans_per_group, n_seg, BLOCK_D)
    nn = tl.arange(0, BLOCK_N)
    dn_mask = ch_mask[:, None] & (nn < n_state)[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    delta_base = delta_ptr + slot(pid_b, k, n_dir, DT_PER_DIR) * plane
    B_base = B_ptr + (slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    C_base = C_ptr + (slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    dB_base = dB_ptr + (slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    dC_base = dC_ptr + (slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    u_rows = slot(pid_b, k, n_dir, U_PER_DIR) * plane + ch[:, None] * seq_len
    delta_rows = slot(pid_b, k, n_dir, DT_PER_DIR) * plane + ch[:, None] * seq_len
    rows = pid_b * plane + ch[:, None] * seq_len  # z, dz, dout: (b, d, L) in row-major token order
    A_rows = A_ptr + slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch * n_state
    db_base = slot(0, k, 1, DB_PER_DIR) * n_channels
    D, bias = skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D, HAS_BIAS, BLOCK_D)

    dir_slot = pid_b * n_dir + k
    seg_off = (dir_slot * n_seg + seg) * n_channels
    state_tile = ch[:, None] * n_state + nn[None, :]
    row_stride = n_channels * n_state
    scratch_rows = scratch_ptr + (dir_slot * n_seg + seg) * n_channels * CHUNK + ch[:, None] * CHUNK

    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, seq_len)
    carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # a_{t+1} G_{t+1} entering the tile's last token
    dt_next_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    if MULTI_SEG:
        has_next = seg_end < seq_len
        pos_next = token(perm_ptr, k, tl.minimum(seg_end, seq_len - 1), seq_len, HAS_PERM)
        dt_after, _raw_after = delta_at(delta_base + ch * seq_len, pos_next, ch_mask, bias, HAS_BIAS, SOFTPLUS)
        dt_after = tl.where(has_next, dt_after, 0.0)
        if LOCAL_PASS:
            dt_next_sum = dt_after
        else:
            g_in = tl.load(seg_gcarry_ptr + seg_off * n_state + state_tile, mask=dn_mask, other=0.0)
            A_tile = tl.load(A_rows[:, None] + nn[None, :], mask=dn_mask, other=0.0)
            carry = tl.exp(dt_after[:, None] * A_tile) * g_in
    G_first = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # the adjoint at the segment's first token
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    n_tiles = tl.cdiv(seg_end - seg_start, CHUNK)
    for i in range(0, n_tiles):
        t0 = seg_start + (n_tiles - 1 - i) * CHUNK
        n_tok = tl.minimum(t0 + CHUNK, seg_end) - t0
        valid = cols < n_tok
        m2 = ch_mask[:, None] & valid[None, :]
        # token order: column c is token t0 + c
        pos_f = positions(perm_ptr, k, t0 + cols, valid, seq_len, HAS_PERM)
        dt_f, raw_f = load_delta(delta_base, ch, pos_f, m2, bias, HAS_BIAS, SOFTPLUS, seq_len)
        # reversed order: column s is token t0 + n_tok - 1 - s; its a_{t+1} comes from token t + 1 (s >= 1)
        tok_r = t0 + n_tok - 1 - cols
        pos_r = positions(perm_ptr, k, tl.maximum(tok_r, t0), valid, seq_len, HAS_PERM)
        bc_f = bc_index(t0 + cols, pos_f, BC_SCAN_ORDER)
        bc_r = bc_index(tl.maximum(tok_r, t0), pos_r, BC_SCAN_ORDER)
        after = valid & (cols >= 1)
        pos_r1 = positions(perm_ptr, k, tl.minimum(tok_r + 1, seq_len - 1), after, seq_len, HAS_PERM)
        dt_r1, _raw_r1 = load_delta(delta_base, ch, pos_r1, ch_mask[:, None] & after[None, :], bias, HAS_BIAS,
                                     SOFTPLUS, seq_len)
        dout_r = tl.load(dout_ptr + rows + pos_r[None, :], mask=m2, other=0.0).to(tl.float32) * out_scale
        if HAS_Z:
            z_r = tl.load(z_ptr + rows + pos_r[None, :], mask=m2, other=0.0).to(tl.float32)
            dy_r = dout_r * z_r * sigmoid(z_r)
        else:
            dy_r = dout_r
        if not LOCAL_PASS:
            u_f = tl.load(u_ptr + u_rows + pos_f[None, :], mask=m2, other=0.0).to(tl.float32)
            dtu_f = dt_f * u_f
            dout_f = tl.load(dout_ptr + rows + pos_f[None, :], mask=m2, other=0.0).to(tl.float32) * out_scale
            if HAS_Z:
                z_f = tl.load(z_ptr + rows + pos_f[None, :], mask=m2, other=0.0).to(tl.float32)
                sig_f = sigmoid(z_f)
                dy_f = dout_f * z_f * sig_f
                y_acc = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
            else:
                dy_f = dout_f
            h_in = tl.load(ckpt_ptr + (dir_slot * n_chunks + t0 // CHUNK) * row_stride + state_tile, mask=dn_mask,
                           other=0.0)
            du_acc = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
            ddt_acc = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        for n in range(0, n_state):
            A_n = tl.load(A_rows + n, mask=ch_mask, other=0.0)
            C_r = tl.load(C_base + n * seq_len + bc_r, mask=valid, other=0.0).to(tl.float32)
            a_r = tl.where(after[None, :], tl.exp(dt_r1 * A_n[:, None]), 0.0)
            c_r = dy_r * C_r[None, :] + tl.where(cols[None, :] == 0, column(carry, nn, n)[:, None], 0.0)
            _prod, G_r = tl.associative_scan((a_r, c_r), axis=1, combine_fn=affine_combine)
            # the tile's first token is the last valid reversed column
            G_t0 = tl.sum(tl.where(cols[None, :] == n_tok - 1, G_r, 0.0), axis=1)
            a_t0 = tl.exp(tl.sum(tl.where(cols[None, :] == 0, dt_f, 0.0), axis=1) * A_n)
            carry = with_column(carry, nn, n, a_t0 * G_t0)
            if LOCAL_PASS:
                G_first = with_column(G_first, nn, n, G_t0)
            else:
                # back to token order through the scratch row
                tl.debug_barrier()  # the previous column's reads of the row are done
                tl.store(scratch_rows + (n_tok - 1 - cols)[None, :], G_r, mask=m2)
                tl.debug_barrier()
                G_f = tl.load(scratch_rows + cols[None, :], mask=m2, other=0.0)
                B_f = tl.load(B_base + n * seq_len + bc_f, mask=valid, other=0.0).to(tl.float32)
                b_f = dtu_f * B_f[None, :]
                prefix_a, h = tl.associative_scan((tl.exp(dt_f * A_n[:, None]), b_f), axis=1,
                                                  combine_fn=affine_combine)
                h += prefix_a * column(h_in, nn, n)[:, None]
                g_decayed = G_f * (h - b_f)  # G_t a_t h_{t-1}
                tl.atomic_add(dC_base + n * seq_len + bc_f, tl.sum(dy_f * h, axis=0), mask=valid)
                tl.atomic_add(dB_base + n * seq_len + bc_f, tl.sum(G_f * dtu_f, axis=0), mask=valid)
                g_B = G_f * B_f[None, :]
                du_acc += g_B * dt_f
                ddt_acc += g_B * u_f + g_decayed * A_n[:, None]
                dA_acc = with_column(dA_acc, nn, n, column(dA_acc, nn, n) + tl.sum(g_decayed * dt_f, axis=1))
                if HAS_Z:
                    C_f = tl.load(C_base + n * seq_len + bc_f, mask=valid, other=0.0).to(tl.float32)
                    y_acc += h * C_f[None, :]
        if LOCAL_PASS:
            dt_next_sum += tl.sum(tl.where((t0 + cols > seg_start)[None, :] & m2, dt_f, 0.0), axis=1)
        else:
            du = du_acc
            if HAS_D:
                du += D[:, None] * dy_f
                dD_acc += tl.sum(tl.where(m2, dy_f * u_f, 0.0), axis=1)
            ddt = ddt_acc
            if SOFTPLUS:
                ddt = ddt * sigmoid(raw_f)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            if HAS_Z:
                y = y_acc
                if HAS_D:
                    y += D[:, None] * u_f
                dz = dout_f * y * sig_f * (1.0 + z_f * (1.0 - sig_f))
                write_grad(dz_ptr + rows + pos_f[None, :], dz, m2, False)
            write_grad(du_ptr + u_rows + pos_f[None, :], du, m2, DU_ATOMIC)
            write_grad(ddelta_ptr + delta_rows + pos_f[None, :], ddt, m2, DDELTA_ATOMIC)

    store_backward_partials(seg_gstart_ptr, seg_dtsum_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, seg_off, n_state,
                             state_tile, ch, dn_mask, ch_mask, G_first, dt_next_sum, dA_acc, dD_acc, dbias_acc,
                             LOCAL_PASS, HAS_D, HAS_BIAS)
