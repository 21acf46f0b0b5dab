"""Triton kernels of the selective scan (Mamba-1) and of its fused multi-direction form.

Imported only by :mod:`pamm.ops.triton_scan`, and only once ``triton`` imports; whether the kernels
run compiled (CUDA) or under the interpreter (``TRITON_INTERPRET=1``, CPU tensors) is fixed when this
module is first imported, because ``triton.jit`` reads that variable at decoration time.

Tensor layouts (all contiguous; ``(K)`` present only when the tensor differs per scan direction):

============  ==========================  ===============================================
tensor        layout                      note
============  ==========================  ===============================================
u, delta      ``[b, (K), d, L]``          any float dtype; math in fp32
A             ``[(K), d, n]``             fp32
B, C          ``[b, (K), G, n, L]``       channel ``c`` uses group ``c // (d // G)``
D, bias       ``[(K), d]``                fp32
z, out, dout  ``[b, d, L]``               row-major token order
perm          ``[K, L]`` int32            scan step ``t`` of direction ``k`` visits token ``perm[k, t]``
ckpt          ``[b, K, n_chunks, d, n]``  fp32 state *before* each chunk, for the backward
seg_*         ``[b, K, n_seg, d, (n)]``   fp32 carries between segments (long-l regime)
partials      ``[b, K, n_seg, d, (n)]``   fp32 per-program dA / dD / dbias, summed by the caller
============  ==========================  ===============================================

A program owns ``BLOCK_D`` channels of one group (so it reads one B/C row per token), one batch
element, one direction and one *segment* of the sequence; it walks its segment in chunks of ``CHUNK``
tokens. Inside a chunk the linear recurrence ``h_t = a_t h_{t-1} + b_t`` is an associative scan over a
``(BLOCK_D, BLOCK_N, CHUNK)`` register tile; across chunks the state is carried in registers. With one
segment per sequence this is the many-channels regime; with several, a first pass scans each segment
from a zero state, :func:`segment_carry_kernel` chains the segment ends, and a second pass rescans each
segment from its true initial state (the few-channels, long-l regime).

The backward walks chunks in reverse. The adjoint ``g_t = dy_t C_t + a_{t+1} g_{t+1}`` is a forward
associative scan over tiles *loaded* in reverse token order (``associative_scan(reverse=True)`` is
avoided on purpose: its compiled semantics for non-commutative combines have had bugs), then
``tl.flip`` puts it back in token order, next to the states recomputed from the chunk's checkpoint.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _affine_combine(a_first, b_first, a_then, b_then):
    """Compose x -> a_first*x + b_first with the map that follows it, x -> a_then*x + b_then."""
    return a_first * a_then, b_first * a_then + b_then


@triton.jit
def _softplus(x):
    """log(1 + e^x) as mamba-ssm computes it (identity above 20), accurate for very negative x."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    # log1p(e) = log(w) * e / (w - 1) is exact to rounding (Goldberg); w == 1 means log1p(e) == e.
    denom = tl.where(w == 1.0, 1.0, w - 1.0)
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * (e / denom))
    return tl.where(x > 20.0, x, log1p_e)


@triton.jit
def _sigmoid(x):
    """Overflow-free logistic function (exp of a non-positive argument only)."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _slot(pid_b, k, n_dir, PER_DIR: tl.constexpr):
    """Index of the (batch, direction) slice of a tensor that may or may not have a direction axis."""
    if PER_DIR:
        return pid_b * n_dir + k
    else:
        return pid_b


@triton.jit
def _positions(perm_ptr, k, t, mask, seq_len, HAS_PERM: tl.constexpr):
    """Token index read at scan steps ``t``: through the direction's permutation when there is one."""
    if HAS_PERM:
        return tl.load(perm_ptr + k * seq_len + t, mask=mask, other=0)
    else:
        return t


@triton.jit
def _load_delta(delta_base, ch, pos, mask2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                seq_len):
    """Δ after bias and softplus (fp32), zero where masked so masked steps are the identity map; also
    returns the pre-softplus value for the backward."""
    raw = tl.load(delta_base + ch[:, None] * seq_len + pos[None, :], mask=mask2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return tl.where(mask2, dt, 0.0), raw


@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, perm_ptr,
    out_ptr, ckpt_ptr, seg_state_ptr, seg_dtsum_ptr, seg_init_ptr,
    n_channels, chans_per_group, n_groups, n_state, seq_len, n_dir, n_seg, seg_len, n_chunks,
    out_scale,
    U_PER_DIR: tl.constexpr, DT_PER_DIR: tl.constexpr, A_PER_DIR: tl.constexpr,
    B_PER_DIR: tl.constexpr, C_PER_DIR: tl.constexpr, DB_PER_DIR: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PERM: tl.constexpr, ATOMIC_OUT: tl.constexpr, LOCAL_PASS: tl.constexpr,
    MULTI_SEG: tl.constexpr, STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Forward scan of one (channel block, batch, direction × segment) program.

    ``LOCAL_PASS``: scan the segment from a zero state and write only its end state and ΣΔ (first pass
    of the long-l regime). Otherwise start from the segment's initial state (zero, or ``seg_init``
    when ``MULTI_SEG``), write the output (atomically, scaled, when directions are merged) and, if
    ``STORE_CKPT``, the state before every chunk.
    """
    pid_blk = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_ks = tl.program_id(2)
    k = pid_ks // n_seg
    seg = pid_ks % n_seg

    blocks_per_group = tl.cdiv(chans_per_group, BLOCK_D)
    grp = pid_blk // blocks_per_group
    ch_local = (pid_blk % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    ch_mask = ch_local < chans_per_group
    ch = grp * chans_per_group + ch_local
    nn = tl.arange(0, BLOCK_N)
    n_mask = nn < n_state
    dn_mask = ch_mask[:, None] & n_mask[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    u_base = u_ptr + _slot(pid_b, k, n_dir, U_PER_DIR) * plane
    delta_base = delta_ptr + _slot(pid_b, k, n_dir, DT_PER_DIR) * plane
    B_base = B_ptr + (_slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    C_base = C_ptr + (_slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    A_base = A_ptr + _slot(0, k, 1, A_PER_DIR) * n_channels * n_state
    A = tl.load(A_base + ch[:, None] * n_state + nn[None, :], mask=dn_mask, other=0.0)
    db_base = _slot(0, k, 1, DB_PER_DIR) * n_channels
    if HAS_D:
        D = tl.load(D_ptr + db_base + ch, mask=ch_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + db_base + ch, mask=ch_mask, other=0.0)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)

    dir_slot = pid_b * n_dir + k
    seg_off = (dir_slot * n_seg + seg) * n_channels
    state_tile = ch[:, None] * n_state + nn[None, :]

    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if MULTI_SEG:
        if not LOCAL_PASS:
            h = tl.load(seg_init_ptr + seg_off * n_state + state_tile, mask=dn_mask, other=0.0)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)

    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, seq_len)
    for c_start in range(seg_start, seg_end, CHUNK):
        t = c_start + cols
        t_mask = t < seg_end
        pos = _positions(perm_ptr, k, t, t_mask, seq_len, HAS_PERM)
        m2 = ch_mask[:, None] & t_mask[None, :]
        nt_mask = n_mask[:, None] & t_mask[None, :]

        dt, _raw = _load_delta(delta_base, ch, pos, m2, bias, HAS_BIAS, SOFTPLUS, seq_len)
        u = tl.load(u_base + ch[:, None] * seq_len + pos[None, :], mask=m2, other=0.0).to(tl.float32)
        Bt = tl.load(B_base + nn[:, None] * seq_len + pos[None, :], mask=nt_mask, other=0.0).to(tl.float32)

        a = tl.exp(dt[:, None, :] * A[:, :, None])
        bu = (dt * u)[:, None, :] * Bt[None, :, :]
        prefix_a, local_h = tl.associative_scan((a, bu), axis=2, combine_fn=_affine_combine)
        hs = prefix_a * h[:, :, None] + local_h

        if LOCAL_PASS:
            dt_sum += tl.sum(dt, axis=1)
        else:
            if STORE_CKPT:
                ckpt_off = (dir_slot * n_chunks + c_start // CHUNK) * n_channels * n_state
                tl.store(ckpt_ptr + ckpt_off + state_tile, h, mask=dn_mask)
            Ct = tl.load(C_base + nn[:, None] * seq_len + pos[None, :], mask=nt_mask, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += D[:, None] * u
            if HAS_Z:
                zt = tl.load(z_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :], mask=m2,
                             other=0.0).to(tl.float32)
                y = y * zt * _sigmoid(zt)
            out_ptrs = out_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :]
            if ATOMIC_OUT:
                tl.atomic_add(out_ptrs, y * out_scale, mask=m2)
            else:
                tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=m2)

        # Masked steps are identity maps, so the last column holds the state after the last real token.
        h = tl.sum(tl.where(cols[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)

    if LOCAL_PASS:
        tl.store(seg_state_ptr + seg_off * n_state + state_tile, h, mask=dn_mask)
        tl.store(seg_dtsum_ptr + seg_off + ch, dt_sum, mask=ch_mask)


@triton.jit
def segment_carry_kernel(
    A_ptr, seg_local_ptr, seg_dtsum_ptr, seg_carry_ptr,
    n_channels, n_state, n_dir, n_seg,
    A_PER_DIR: tl.constexpr, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Chain per-segment results into each segment's incoming carry (sequential over segments).

    Forward: ``carry_{s+1} = exp(A ΣΔ_s) carry_s + end_state_s``. Backward (``REVERSE``): the same
    recurrence run from the last segment, with the segment's ΣΔ of the *next* tokens and its local
    adjoint at the segment start.
    """
    pid_blk = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    k = tl.program_id(2)
    ch = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    ch_mask = ch < n_channels
    nn = tl.arange(0, BLOCK_N)
    dn_mask = ch_mask[:, None] & (nn < n_state)[None, :]
    A = tl.load(A_ptr + _slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch[:, None] * n_state + nn[None, :],
                mask=dn_mask, other=0.0)
    state_tile = ch[:, None] * n_state + nn[None, :]
    carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for i in range(0, n_seg):
        if REVERSE:
            s = n_seg - 1 - i
        else:
            s = i
        seg_off = ((pid_b * n_dir + k) * n_seg + s) * n_channels
        tl.store(seg_carry_ptr + seg_off * n_state + state_tile, carry, mask=dn_mask)
        dt_sum = tl.load(seg_dtsum_ptr + seg_off + ch, mask=ch_mask, other=0.0)
        local = tl.load(seg_local_ptr + seg_off * n_state + state_tile, mask=dn_mask, other=0.0)
        carry = tl.exp(A * dt_sum[:, None]) * carry + local


@triton.jit
def scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, perm_ptr, dout_ptr, ckpt_ptr,
    du_ptr, ddelta_ptr, dB_ptr, dC_ptr, dz_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr,
    seg_gstart_ptr, seg_dtsum_ptr, seg_gcarry_ptr,
    n_channels, chans_per_group, n_groups, n_state, seq_len, n_dir, n_seg, seg_len, n_chunks,
    out_scale,
    U_PER_DIR: tl.constexpr, DT_PER_DIR: tl.constexpr, A_PER_DIR: tl.constexpr,
    B_PER_DIR: tl.constexpr, C_PER_DIR: tl.constexpr, DB_PER_DIR: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PERM: tl.constexpr, DU_ATOMIC: tl.constexpr, DDELTA_ATOMIC: tl.constexpr,
    LOCAL_PASS: tl.constexpr, MULTI_SEG: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Backward scan of one program, chunks in reverse, states recomputed from the chunk checkpoints.

    ``LOCAL_PASS``: only the adjoint scan from a zero carry; write the adjoint at the segment start and
    ΣΔ of the following tokens (first pass of the long-l regime). Otherwise start from the segment's
    carried adjoint and write every gradient: du, dΔ, dz directly (or atomically when a shared input
    feeds several directions), dB and dC atomically (summed over the group's channels), and per-program
    partial sums of dA, dD and dbias.
    """
    pid_blk = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_ks = tl.program_id(2)
    k = pid_ks // n_seg
    seg = pid_ks % n_seg

    blocks_per_group = tl.cdiv(chans_per_group, BLOCK_D)
    grp = pid_blk // blocks_per_group
    ch_local = (pid_blk % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    ch_mask = ch_local < chans_per_group
    ch = grp * chans_per_group + ch_local
    nn = tl.arange(0, BLOCK_N)
    n_mask = nn < n_state
    dn_mask = ch_mask[:, None] & n_mask[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    u_off = _slot(pid_b, k, n_dir, U_PER_DIR) * plane
    delta_off = _slot(pid_b, k, n_dir, DT_PER_DIR) * plane
    B_off = (_slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    C_off = (_slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    A_base = A_ptr + _slot(0, k, 1, A_PER_DIR) * n_channels * n_state
    A = tl.load(A_base + ch[:, None] * n_state + nn[None, :], mask=dn_mask, other=0.0)
    db_base = _slot(0, k, 1, DB_PER_DIR) * n_channels
    if HAS_D:
        D = tl.load(D_ptr + db_base + ch, mask=ch_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + db_base + ch, mask=ch_mask, other=0.0)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)

    dir_slot = pid_b * n_dir + k
    seg_off = (dir_slot * n_seg + seg) * n_channels
    state_tile = ch[:, None] * n_state + nn[None, :]

    g = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if MULTI_SEG:
        if not LOCAL_PASS:
            g = tl.load(seg_gcarry_ptr + seg_off * n_state + state_tile, mask=dn_mask, other=0.0)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dt_next_sum = tl.zeros([BLOCK_D], dtype=tl.float32)

    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, seq_len)
    n_chunks_seg = tl.cdiv(seg_end - seg_start, CHUNK)
    for i in range(0, n_chunks_seg):
        c_start = seg_start + (n_chunks_seg - 1 - i) * CHUNK

        # ---- adjoint scan on a tile loaded in reverse token order: column j is step c_start+CHUNK-1-j.
        t_rev = c_start + (CHUNK - 1) - cols
        rev_mask = t_rev < seg_end
        pos_rev = _positions(perm_ptr, k, t_rev, rev_mask, seq_len, HAS_PERM)
        t_next = t_rev + 1  # a_{t+1} multiplies g_{t+1}; the next step may lie in the next segment
        next_mask = t_next < seq_len
        pos_next = _positions(perm_ptr, k, t_next, next_mask, seq_len, HAS_PERM)
        m2_rev = ch_mask[:, None] & rev_mask[None, :]
        dt_next, _raw_next = _load_delta(delta_ptr + delta_off, ch, pos_next, ch_mask[:, None] & next_mask[None, :],
                                         bias, HAS_BIAS, SOFTPLUS, seq_len)
        alpha = tl.exp(dt_next[:, None, :] * A[:, :, None])
        dy_rev = tl.load(dout_ptr + pid_b * plane + ch[:, None] * seq_len + pos_rev[None, :], mask=m2_rev,
                         other=0.0).to(tl.float32) * out_scale
        if HAS_Z:
            z_rev = tl.load(z_ptr + pid_b * plane + ch[:, None] * seq_len + pos_rev[None, :], mask=m2_rev,
                            other=0.0).to(tl.float32)
            dy_rev = dy_rev * z_rev * _sigmoid(z_rev)
        C_rev = tl.load(C_ptr + C_off + nn[:, None] * seq_len + pos_rev[None, :],
                        mask=n_mask[:, None] & rev_mask[None, :], other=0.0).to(tl.float32)
        beta = dy_rev[:, None, :] * C_rev[None, :, :]
        prefix_alpha, local_g = tl.associative_scan((alpha, beta), axis=2, combine_fn=_affine_combine)
        g_rev = prefix_alpha * g[:, :, None] + local_g
        g = tl.sum(tl.where(cols[None, None, :] == CHUNK - 1, g_rev, 0.0), axis=2)  # adjoint at c_start

        if LOCAL_PASS:
            dt_next_sum += tl.sum(tl.where(rev_mask[None, :], dt_next, 0.0), axis=1)
        else:
            gf = tl.flip(g_rev, 2)  # back to token order: column j is step c_start + j

            # ---- states of this chunk, recomputed from its checkpoint, in token order.
            t = c_start + cols
            t_mask = t < seg_end
            pos = _positions(perm_ptr, k, t, t_mask, seq_len, HAS_PERM)
            m2 = ch_mask[:, None] & t_mask[None, :]
            nt_mask = n_mask[:, None] & t_mask[None, :]
            dt, dt_raw = _load_delta(delta_ptr + delta_off, ch, pos, m2, bias, HAS_BIAS, SOFTPLUS, seq_len)
            u = tl.load(u_ptr + u_off + ch[:, None] * seq_len + pos[None, :], mask=m2, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + B_off + nn[:, None] * seq_len + pos[None, :], mask=nt_mask, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + C_off + nn[:, None] * seq_len + pos[None, :], mask=nt_mask, other=0.0).to(tl.float32)
            dout = tl.load(dout_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :], mask=m2,
                           other=0.0).to(tl.float32) * out_scale

            a = tl.exp(dt[:, None, :] * A[:, :, None])
            dtu = dt * u
            bu = dtu[:, None, :] * Bt[None, :, :]
            prefix_a, local_h = tl.associative_scan((a, bu), axis=2, combine_fn=_affine_combine)
            ckpt_off = (dir_slot * n_chunks + c_start // CHUNK) * n_channels * n_state
            h0 = tl.load(ckpt_ptr + ckpt_off + state_tile, mask=dn_mask, other=0.0)
            hs = prefix_a * h0[:, :, None] + local_h
            decayed_prev = hs - bu  # a_t * h_{t-1}, as the CUDA kernel forms it

            if HAS_Z:
                zt = tl.load(z_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :], mask=m2,
                             other=0.0).to(tl.float32)
                sig_z = _sigmoid(zt)
                y = tl.sum(hs * Ct[None, :, :], axis=1)
                if HAS_D:
                    y += D[:, None] * u
                dz = dout * y * sig_z * (1.0 + zt * (1.0 - sig_z))
                tl.store(dz_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :],
                         dz.to(dz_ptr.dtype.element_ty), mask=m2)
                dy = dout * zt * sig_z
            else:
                dy = dout

            dC_t = tl.sum(dy[:, None, :] * hs, axis=0)
            tl.atomic_add(dC_ptr + C_off + nn[:, None] * seq_len + pos[None, :], dC_t, mask=nt_mask)
            dB_t = tl.sum(gf * dtu[:, None, :], axis=0)
            tl.atomic_add(dB_ptr + B_off + nn[:, None] * seq_len + pos[None, :], dB_t, mask=nt_mask)

            g_dot_B = tl.sum(gf * Bt[None, :, :], axis=1)
            g_decayed = gf * decayed_prev
            du = dt * g_dot_B
            if HAS_D:
                du += D[:, None] * dy
                dD_acc += tl.sum(dy * u, axis=1)
            ddt = u * g_dot_B + tl.sum(g_decayed * A[:, :, None], axis=1)
            dA_acc += tl.sum(g_decayed * dt[:, None, :], axis=2)
            if SOFTPLUS:
                ddt = ddt * _sigmoid(dt_raw)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)

            du_ptrs = du_ptr + u_off + ch[:, None] * seq_len + pos[None, :]
            if DU_ATOMIC:
                tl.atomic_add(du_ptrs, du, mask=m2)
            else:
                tl.store(du_ptrs, du.to(du_ptr.dtype.element_ty), mask=m2)
            ddelta_ptrs = ddelta_ptr + delta_off + ch[:, None] * seq_len + pos[None, :]
            if DDELTA_ATOMIC:
                tl.atomic_add(ddelta_ptrs, ddt, mask=m2)
            else:
                tl.store(ddelta_ptrs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)

    if LOCAL_PASS:
        tl.store(seg_gstart_ptr + seg_off * n_state + state_tile, g, mask=dn_mask)
        tl.store(seg_dtsum_ptr + seg_off + ch, dt_next_sum, mask=ch_mask)
    else:
        tl.store(dA_part_ptr + seg_off * n_state + state_tile, dA_acc, mask=dn_mask)
        if HAS_D:
            tl.store(dD_part_ptr + seg_off + ch, dD_acc, mask=ch_mask)
        if HAS_BIAS:
            tl.store(dbias_part_ptr + seg_off + ch, dbias_acc, mask=ch_mask)
