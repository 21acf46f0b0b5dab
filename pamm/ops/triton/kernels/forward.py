"""The forward scan kernel: (BLOCK_D, CHUNK) token tiles, parallel over the tokens, one state column at a
time; it also drops the state before every CKPT-th token for the backward."""
from __future__ import annotations

import triton
import triton.language as tl

from pamm.ops.triton.kernels.common import (
    affine_combine,
    bc_index,
    column,
    last_column,
    load_delta,
    positions,
    program_channels,
    sigmoid,
    skip_and_bias,
    slot,
    with_column,
)


@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, perm_ptr,
    out_ptr, ckpt_ptr, seg_state_ptr, seg_dtsum_ptr, seg_init_ptr,
    n_channels, chans_per_group, n_groups, n_state, seq_len, n_dir, n_seg, seg_len, n_chunks,
    out_scale,
    U_PER_DIR: tl.constexpr, DT_PER_DIR: tl.constexpr, A_PER_DIR: tl.constexpr,
    B_PER_DIR: tl.constexpr, C_PER_DIR: tl.constexpr, DB_PER_DIR: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, ATOMIC_OUT: tl.constexpr, LOCAL_PASS: tl.constexpr,
    MULTI_SEG: tl.constexpr, STORE_CKPT: tl.constexpr, CARRY: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, CKPT: tl.constexpr,
):
    """Forward scan of one (channel block, batch, direction × segment) program, CHUNK tokens a tile.

    ``LOCAL_PASS``: scan the segment from a zero state and write only its end state and ΣΔ (first pass
    of the long-l regime). Otherwise start from the segment's initial state (zero, or ``seg_init``
    when ``MULTI_SEG``), write the output (atomically, scaled, when directions are merged) and, if
    ``STORE_CKPT``, the state before every ``CKPT``-th token. ``CARRY`` (a segment spans several tiles,
    or starts from a carried state): keep the (BLOCK_D, n) state across tiles; without it each tile
    starts from zero.
    """
    pid_b, k, seg, grp, ch, ch_mask = program_channels(chans_per_group, n_seg, BLOCK_D)
    nn = tl.arange(0, BLOCK_N)
    dn_mask = ch_mask[:, None] & (nn < n_state)[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    u_base = u_ptr + slot(pid_b, k, n_dir, U_PER_DIR) * plane
    delta_base = delta_ptr + slot(pid_b, k, n_dir, DT_PER_DIR) * plane
    B_base = B_ptr + (slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    C_base = C_ptr + (slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    A_rows = A_ptr + slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch * n_state
    db_base = slot(0, k, 1, DB_PER_DIR) * n_channels
    D, bias = skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D, HAS_BIAS, BLOCK_D)

    dir_slot = pid_b * n_dir + k
    seg_off = (dir_slot * n_seg + seg) * n_channels
    state_tile = ch[:, None] * n_state + nn[None, :]

    h_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if MULTI_SEG:
        if not LOCAL_PASS:
            h_carry = tl.load(seg_init_ptr + seg_off * n_state + state_tile, mask=dn_mask, other=0.0)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)

    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, seq_len)
    ckpt_base = ckpt_ptr + dir_slot * n_chunks * n_channels * n_state
    if STORE_CKPT:
        if not LOCAL_PASS:  # the state before the segment's first token (seg_len is a multiple of CKPT)
            tl.store(ckpt_base + (seg_start // CKPT) * n_channels * n_state + state_tile, h_carry, mask=dn_mask)
    for c_start in range(seg_start, seg_end, CHUNK):
        t = c_start + cols
        t_mask = t < seg_end
        pos = positions(perm_ptr, k, t, t_mask, seq_len, HAS_PERM)
        bc = bc_index(t, pos, BC_SCAN_ORDER)
        m2 = ch_mask[:, None] & t_mask[None, :]
        # after token t comes the checkpoint of token t + 1 when that starts a CKPT interval
        ckpt_mask = ch_mask[:, None] & ((((t + 1) % CKPT) == 0) & (t + 1 < seg_end))[None, :]
        ckpt_ptrs = ckpt_base + ((t[None, :] + 1) // CKPT) * n_channels * n_state + ch[:, None] * n_state
        dt, _raw = load_delta(delta_base, ch, pos, m2, bias, HAS_BIAS, SOFTPLUS, seq_len)
        u = tl.load(u_base + ch[:, None] * seq_len + pos[None, :], mask=m2, other=0.0).to(tl.float32)
        dtu = dt * u
        if LOCAL_PASS:
            dt_sum += tl.sum(dt, axis=1)
        else:
            if HAS_D:
                y = D[:, None] * u
            else:
                y = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        for n in range(0, n_state):
            A_n = tl.load(A_rows + n, mask=ch_mask, other=0.0)
            B_n = tl.load(B_base + n * seq_len + bc, mask=t_mask, other=0.0).to(tl.float32)
            a = tl.exp(dt * A_n[:, None])
            prefix_a, h = tl.associative_scan((a, dtu * B_n[None, :]), axis=1, combine_fn=affine_combine)
            if CARRY:
                h += prefix_a * column(h_carry, nn, n)[:, None]
                # masked steps are identity maps: the last column is the state after the last token
                h_carry = with_column(h_carry, nn, n, last_column(h, cols, CHUNK))
            if not LOCAL_PASS:
                C_n = tl.load(C_base + n * seq_len + bc, mask=t_mask, other=0.0).to(tl.float32)
                y += h * C_n[None, :]
                if STORE_CKPT:
                    tl.store(ckpt_ptrs + n, h, mask=ckpt_mask)
        if not LOCAL_PASS:
            if HAS_Z:
                zt = tl.load(z_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :], mask=m2,
                             other=0.0).to(tl.float32)
                y = y * zt * sigmoid(zt)
            out_ptrs = out_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :]
            if ATOMIC_OUT:
                tl.atomic_add(out_ptrs, y * out_scale, mask=m2)
            else:
                tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=m2)

    if LOCAL_PASS:
        tl.store(seg_state_ptr + seg_off * n_state + state_tile, h_carry, mask=dn_mask)
        tl.store(seg_dtsum_ptr + seg_off + ch, dt_sum, mask=ch_mask)
