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
B, C          ``[b, (K), G, n, L]``       channel ``c`` uses group ``c // (d // G)``; token order, or
                                          scan order per direction (``BC_SCAN_ORDER``)
D, bias       ``[(K), d]``                fp32
z, out, dout  ``[b, d, L]``               row-major token order
perm          ``[K, L]`` int32            scan step ``t`` of direction ``k`` visits token ``perm[k, t]``
ckpt          ``[b, K, n_ckpt, d, n]``    fp32 state *before* every CKPT-th token, for the backward
scratch       ``[S, R, BLOCK_D, BN]``     fp32 states of one checkpoint interval in each of S slots, one
                                          per running token-backward program (``BN`` = ``BLOCK_N``; R =
                                          CKPT rows, or with ``SPLIT`` CKPT + 1 states and SUB + 1 adjoints)
seg_*         ``[b, K, n_seg, d, (n)]``   fp32 carries between segments (long-l regime)
partials      ``[b, K, n_seg, d, (n)]``   fp32 per-program dA / dD / dbias, summed by the caller
============  ==========================  ===============================================

A program owns ``BLOCK_D`` channels of one group, one batch element, one direction and one *segment*
of the sequence. With one segment per sequence this is the many-channels regime; with several (few
channels, long l), a first pass scans each segment from a zero state, :func:`segment_carry_kernel`
chains the segment ends, and a second pass rescans each segment from its true initial state.

Two structures, each the faster one measured on an H100 (2026-11-23, ``results/gpu/2026-11-23_h100_s3``):

* forward (:func:`scan_fwd_kernel`): a ``(BLOCK_D, CHUNK)`` token tile in registers, parallel over l,
  one state column ``n`` at a time (one-dimensional associative scans, coalesced token rows), as the
  CUDA kernel is organised; it also drops the state before every ``CKPT``-th token for the backward.
  (Tried and not kept, 2026-12-04: for the fused call, read and write token rows in token order and
  reorder inside the tile with ``tl.gather``; compiled for sm_90, every candidate at S2 and P8 spilled
  3.7–10 KB per thread under triton 3.6 and 3.9, against 0–32 bytes for the permuted reads.)
* backward (:func:`scan_bwd_kernel`): one token per loop step with the ``(BLOCK_D, n)`` state in
  registers; per checkpoint interval a forward loop recomputes the states into the program's
  scratch rows, then a reverse loop carries ``a_t·G_t`` (``G_t`` the adjoint of ``h_t``) and writes
  every gradient. (A tile-structured backward, whose reverse-order adjoint scan needs a ``tl.flip``
  per state column, measured 1.5–1.8× slower; ``associative_scan(reverse=True)`` is avoided because
  its compiled results for non-commutative combines have been wrong, triton-lang/triton#4362.)
  The backward comes in four variants that the autotuner chooses among (prefetching the next step's
  inputs; writing each interval's gradients in one coalesced pass), and a fifth structure, ``SPLIT``
  (written 2026-12-04 without a GPU, not yet timed): both loops run ``SUB`` tokens at a time, unrolled
  (a sub-block's loads are issued ahead of its chain); the reverse one carries the adjoint alone
  (``a_t·G_t`` into scratch rows: no reductions, no barrier), then every gradient of the sub-block
  comes from (BLOCK_D, SUB, BLOCK_N) tiles of states and adjoints at once, so the per-token
  reductions over channels and states leave the sequential loop.
* tile backward (:func:`scan_bwd_tile_kernel`, ``$PAMM_TRITON_BWD=tile``): the forward's structure
  run backwards without a flip: the adjoint scan is a forward scan over the tile *loaded* in reverse
  order, and comes back to token order through memory; 256-token checkpoint intervals, scratch
  without an n axis.

Measured on an H200 (2026-12-04, ``results/gpu/2026-12-04_h200``; ``benchmarks/bench_triton_scan.py
--triton-bwd-variants``): the batched writes make the backward 1.3–1.5× faster than the plain loop at
PAMM's shapes and prefetching alone loses, so the autotuner now tries only the batched writes, with and
without prefetching (``triton_scan._variant_mask``); the tile backward is slower (2.4–4.2× the CUDA
kernel's fwd+bwd) but holds the peak memory to 1.08–1.18× the kernel's.
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
    """:func:`_delta_at` for a (channels, tokens) tile."""
    return _delta_at(delta_base + ch[:, None] * seq_len, pos[None, :], mask2, bias[:, None], HAS_BIAS, SOFTPLUS)


@triton.jit
def _token(perm_ptr, k, t, seq_len, HAS_PERM: tl.constexpr):
    """Row-major token index of scan step ``t`` (a scalar) of direction ``k``."""
    if HAS_PERM:
        return tl.load(perm_ptr + k * seq_len + t)
    else:
        return t


@triton.jit
def _bc_index(t, pos, BC_SCAN_ORDER: tl.constexpr):
    """Where B and C (and dB, dC) are addressed at scan step(s) ``t`` whose token position is ``pos``:
    at ``t`` when the caller laid them out in each direction's scan order (coalesced rows), else at ``pos``."""
    if BC_SCAN_ORDER:
        return t
    else:
        return pos


@triton.jit
def _delta_at(delta_row, pos, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ at ``delta_row + pos`` after bias and softplus (fp32), zero where masked so that masked steps
    are identity maps; also returns the pre-softplus value for the backward."""
    raw = tl.load(delta_row + pos, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _column(tile, nn, n):
    """Column ``n`` of a (BLOCK_D, BLOCK_N) tile."""
    return tl.sum(tl.where(nn[None, :] == n, tile, 0.0), axis=1)


@triton.jit
def _with_column(tile, nn, n, values):
    """The tile with column ``n`` replaced by ``values`` (BLOCK_D,)."""
    return tl.where(nn[None, :] == n, values[:, None], tile)


@triton.jit
def _last_column(x, cols, CHUNK: tl.constexpr):
    return tl.sum(tl.where(cols[None, :] == CHUNK - 1, x, 0.0), axis=1)


@triton.jit
def _write_grad(ptrs, values, mask, ATOMIC: tl.constexpr):
    """Store a gradient in its tensor's dtype, or add it atomically (fp32) where several programs write it."""
    if ATOMIC:
        tl.atomic_add(ptrs, values, mask=mask)
    else:
        tl.store(ptrs, values.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _store_backward_partials(seg_gstart_ptr, seg_dtsum_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, seg_off,
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
def _program_channels(chans_per_group, n_seg, BLOCK_D: tl.constexpr):
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
def _skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
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
    pid_b, k, seg, grp, ch, ch_mask = _program_channels(chans_per_group, n_seg, BLOCK_D)
    nn = tl.arange(0, BLOCK_N)
    dn_mask = ch_mask[:, None] & (nn < n_state)[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    u_base = u_ptr + _slot(pid_b, k, n_dir, U_PER_DIR) * plane
    delta_base = delta_ptr + _slot(pid_b, k, n_dir, DT_PER_DIR) * plane
    B_base = B_ptr + (_slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    C_base = C_ptr + (_slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    A_rows = A_ptr + _slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch * n_state
    db_base = _slot(0, k, 1, DB_PER_DIR) * n_channels
    D, bias = _skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D, HAS_BIAS, BLOCK_D)

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
        pos = _positions(perm_ptr, k, t, t_mask, seq_len, HAS_PERM)
        bc = _bc_index(t, pos, BC_SCAN_ORDER)
        m2 = ch_mask[:, None] & t_mask[None, :]
        # after token t comes the checkpoint of token t + 1 when that starts a CKPT interval
        ckpt_mask = ch_mask[:, None] & ((((t + 1) % CKPT) == 0) & (t + 1 < seg_end))[None, :]
        ckpt_ptrs = ckpt_base + ((t[None, :] + 1) // CKPT) * n_channels * n_state + ch[:, None] * n_state
        dt, _raw = _load_delta(delta_base, ch, pos, m2, bias, HAS_BIAS, SOFTPLUS, seq_len)
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
            prefix_a, h = tl.associative_scan((a, dtu * B_n[None, :]), axis=1, combine_fn=_affine_combine)
            if CARRY:
                h += prefix_a * _column(h_carry, nn, n)[:, None]
                # masked steps are identity maps: the last column is the state after the last token
                h_carry = _with_column(h_carry, nn, n, _last_column(h, cols, CHUNK))
            if not LOCAL_PASS:
                C_n = tl.load(C_base + n * seq_len + bc, mask=t_mask, other=0.0).to(tl.float32)
                y += h * C_n[None, :]
                if STORE_CKPT:
                    tl.store(ckpt_ptrs + n, h, mask=ckpt_mask)
        if not LOCAL_PASS:
            if HAS_Z:
                zt = tl.load(z_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :], mask=m2,
                             other=0.0).to(tl.float32)
                y = y * zt * _sigmoid(zt)
            out_ptrs = out_ptr + pid_b * plane + ch[:, None] * seq_len + pos[None, :]
            if ATOMIC_OUT:
                tl.atomic_add(out_ptrs, y * out_scale, mask=m2)
            else:
                tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=m2)

    if LOCAL_PASS:
        tl.store(seg_state_ptr + seg_off * n_state + state_tile, h_carry, mask=dn_mask)
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
def _step_mask(mask, t, lo, hi):
    """``mask`` where step ``t`` lies in [lo, hi), else all False. Built as a vector comparison: the
    interpreter cannot ``&`` a scalar condition with a vector mask."""
    steps = mask.to(tl.int32) * 0 + t
    return mask & (steps >= lo) & (steps < hi)


@triton.jit
def _recompute_inputs(perm_ptr, k, t, c_start, c_end, seq_len, delta_row, u_row, B_col, ch_mask, n_mask, bias,
                      HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SOFTPLUS: tl.constexpr):
    """What the interval's forward recompute reads at step ``t`` (Δ after bias/softplus, u, B_t); zeros
    when ``t`` is outside [c_start, c_end) (a prefetch past the interval)."""
    step = tl.minimum(t, seq_len - 1)
    pos = _token(perm_ptr, k, step, seq_len, HAS_PERM)
    m_d = _step_mask(ch_mask, t, c_start, c_end)
    dt, _raw = _delta_at(delta_row, pos, m_d, bias, HAS_BIAS, SOFTPLUS)
    u = tl.load(u_row + pos, mask=m_d, other=0.0).to(tl.float32)
    Bt = tl.load(B_col + _bc_index(step, pos, BC_SCAN_ORDER), mask=_step_mask(n_mask, t, c_start, c_end),
                 other=0.0).to(tl.float32)
    return dt, u, Bt


@triton.jit
def _reverse_inputs(perm_ptr, k, t, c_start, c_end, seq_len, delta_row, u_row, B_col, C_col, dout_row, z_row,
                    scratch_rows, scratch_stride, h0, ch_mask, n_mask, dn_mask, bias, out_scale,
                    HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, LOCAL_PASS: tl.constexpr):
    """What the reverse step of token ``t`` reads: its position, Δ (and the pre-softplus value), the
    scaled output gradient, z, C_t and, outside the local pass, u, B_t and h_{t-1} (the scratch row
    before t, or the interval's checkpoint ``h0`` at its first token). Zeros when ``t`` is outside
    [c_start, c_end) (a prefetch past the interval)."""
    step = tl.maximum(tl.minimum(t, seq_len - 1), 0)
    pos = _token(perm_ptr, k, step, seq_len, HAS_PERM)
    bc = _bc_index(step, pos, BC_SCAN_ORDER)
    m_d = _step_mask(ch_mask, t, c_start, c_end)
    m_n = _step_mask(n_mask, t, c_start, c_end)
    dt, dt_raw = _delta_at(delta_row, pos, m_d, bias, HAS_BIAS, SOFTPLUS)
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
                         mask=_step_mask(dn_mask, t, c_start + 1, c_end), other=0.0)
        h_prev = tl.where(t > c_start, h_prev, h0)
    return pos, dt, dt_raw, dout, zt, Ct, u, Bt, h_prev


@triton.jit
def _slot_rows(CHUNK: tl.constexpr, SUB: tl.constexpr, SPLIT: tl.constexpr):
    """(BLOCK_D, BLOCK_N) rows in one token-backward scratch slot: the interval's states, and with
    ``SPLIT`` the state before it (row 0) and the adjoint rows of one sub-block (``SUB`` + 1)."""
    if SPLIT:
        return CHUNK + SUB + 2
    else:
        return CHUNK


@triton.jit
def _recompute_steps(h, sb_lo, sb_hi, c_start, state_rows, scratch_stride, dn_mask, A, perm_ptr, k, seq_len, delta_row,
                     u_row, B_col, ch_mask, n_mask, bias, HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SUB: tl.constexpr):
    """The split backward's state recompute over steps [sb_lo, sb_hi) (at most ``SUB``): h_t into state row
    t - c_start + 1. Unrolled, like :func:`_adjoint_steps`, so that the sub-block's loads are issued ahead of
    the chain; steps past sb_hi are identity maps and store nothing."""
    for jj in tl.static_range(SUB):
        t = sb_lo + jj
        dt, u, Bt = _recompute_inputs(perm_ptr, k, t, sb_lo, sb_hi, seq_len, delta_row, u_row, B_col, ch_mask, n_mask,
                                      bias, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        tl.store(state_rows + (t - c_start + 1) * scratch_stride, h, mask=_step_mask(dn_mask, t, sb_lo, sb_hi))
    return h


@triton.jit
def _adjoint_steps(carry, dt_sum, sb_lo, sb_hi, seg_start, adj_rows, scratch_stride, dn_mask, A, perm_ptr, k,
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
        _pos, dt, _raw, dy, zt, Ct, _u, _Bt, _h = _reverse_inputs(
            perm_ptr, k, t, sb_lo, sb_hi, seq_len, delta_row, delta_row, C_col, C_col, dout_row, z_row, adj_rows,
            scratch_stride, carry, ch_mask, n_mask, dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS,
            SOFTPLUS, HAS_Z, True)
        if HAS_Z:
            dy = dy * zt * _sigmoid(zt)
        G = dy[:, None] * Ct[None, :] + carry
        carry = tl.exp(dt[:, None] * A) * G
        if LOCAL_PASS:
            dt_sum += tl.where(t > seg_start, dt, 0.0)
        else:
            tl.store(adj_rows + (SUB - 1 - jj) * scratch_stride, carry, mask=dn_mask)
    return carry, G, dt_sum


@triton.jit
def _split_gradients(sb_lo, sb_hi, c_start, state_rows, adj_rows, scratch_stride, A, D, bias,
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
    pos = _positions(perm_ptr, k, step, valid, seq_len, HAS_PERM)
    bc = _bc_index(step, pos, BC_SCAN_ORDER)
    m_dt = ch_mask[:, None] & valid[None, :]
    m_tn = valid[:, None] & n_mask[None, :]
    m_dtn = dn_mask[:, None, :] & valid[None, :, None]
    at_t = pos[None, :]  # (BLOCK_D, SUB) token offsets of per-channel rows
    dt, dt_raw = _delta_at(delta_row[:, None], at_t, m_dt, bias[:, None], HAS_BIAS, SOFTPLUS)
    u = tl.load(u_row[:, None] + at_t, mask=m_dt, other=0.0).to(tl.float32)
    dout = tl.load(dout_row[:, None] + at_t, mask=m_dt, other=0.0).to(tl.float32) * out_scale
    if HAS_Z:
        zt = tl.load(z_row[:, None] + at_t, mask=m_dt, other=0.0).to(tl.float32)
        sig_z = _sigmoid(zt)
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
        ddt = ddt * _sigmoid(dt_raw)
    ddt = tl.where(m_dt, ddt, 0.0)
    dbias_acc += tl.sum(ddt, axis=1)
    tl.atomic_add(dC_col[None, :] + bc[:, None], dC, mask=m_tn)
    tl.atomic_add(dB_col[None, :] + bc[:, None], dB, mask=m_tn)
    if HAS_Z:
        y = tl.sum(h_t * Ct[None, :, :], axis=2)
        if HAS_D:
            y += D[:, None] * u
        dz = dout * y * sig_z * (1.0 + zt * (1.0 - sig_z))
        _write_grad(dz_row[:, None] + at_t, dz, m_dt, False)
    _write_grad(du_row[:, None] + at_t, du, m_dt, DU_ATOMIC)
    _write_grad(ddelta_row[:, None] + at_t, ddt, m_dt, DDELTA_ATOMIC)
    return dA_acc, dD_acc, dbias_acc


# ``variants`` only keys the autotuner: unspecialised, so a forced variant (mask 1 would compile as a
# constant) reuses the binaries of the others (and of benchmarks/triton_compile_report.py --prewarm).
@triton.jit(do_not_specialize=["variants"])
def scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, perm_ptr, dout_ptr, ckpt_ptr, scratch_ptr,
    slot_turn_ptr, du_ptr, ddelta_ptr, dB_ptr, dC_ptr, dz_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr,
    seg_gstart_ptr, seg_dtsum_ptr, seg_gcarry_ptr,
    n_channels, chans_per_group, n_groups, n_state, seq_len, n_dir, n_seg, seg_len, n_chunks,
    out_scale, variants, scratch_values,
    U_PER_DIR: tl.constexpr, DT_PER_DIR: tl.constexpr, A_PER_DIR: tl.constexpr,
    B_PER_DIR: tl.constexpr, C_PER_DIR: tl.constexpr, DB_PER_DIR: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PERM: tl.constexpr, BC_SCAN_ORDER: tl.constexpr, DU_ATOMIC: tl.constexpr, DDELTA_ATOMIC: tl.constexpr,
    LOCAL_PASS: tl.constexpr, MULTI_SEG: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    PREFETCH: tl.constexpr, BATCH_IO: tl.constexpr, SPLIT: tl.constexpr, SUB: tl.constexpr,
):
    """Backward scan of one program, a token per step, checkpoint intervals (CHUNK tokens) in reverse.

    For each interval a forward loop recomputes the states from its checkpoint into the program's
    ``scratch`` rows ``[CHUNK, BLOCK_D, BLOCK_N]`` (cache-resident: written and read back by the same
    program), then a reverse loop carries ``a_t·G_t`` (``G_t`` the adjoint of ``h_t``) and produces du,
    dΔ, dz (written directly, or atomically when a shared input feeds several directions), dB and dC
    (atomic adds, summed over the block's channels), and per-program partial sums of dA, dD and dbias.
    ``LOCAL_PASS``: only the adjoint from a zero carry; write the adjoint at the segment start and ΣΔ
    of the following tokens (first pass of the long-l regime).

    Two ways of running the same loops, chosen by the autotuner (``variants``, unused in the body, keys
    the autotuning cache by which of them the caller allows):
    ``PREFETCH``: both loops load step t±1's inputs before computing step t, so a load's latency is
    spent on a step of arithmetic instead of stalling the next one.
    ``BATCH_IO``: the reverse loop collects each interval's dB, dC rows (n, CHUNK) and du, dΔ, dz rows
    (BLOCK_D, CHUNK) in registers and writes them once per interval, token-contiguous (coalesced
    atomics and stores) instead of n scattered atomics and BLOCK_D strided stores per token.
    ``SPLIT`` (a different structure; the two above are off): both loops walk sub-blocks of ``SUB``
    tokens (:func:`_recompute_steps`, :func:`_adjoint_steps`), and each sub-block's gradients come from
    its tiles at once (:func:`_split_gradients`); the slot also holds the state before the interval and
    the sub-block's adjoints (:func:`_slot_rows`).

    The scratch has rows for the programs that can run at once, not for all of them (``scratch_values``
    fp32 values: S = scratch_values // (rows·BLOCK_D·BLOCK_N) slots). A program takes a ticket when it
    starts (``slot_turn[0]``, so tickets follow start order) and uses slot ticket mod S once the slot's
    previous holders, tickets ticket - S, ticket - 2S, …, are done (``slot_turn[1 + slot]`` counts them).
    The holder it waits for started earlier, so it is running or done: no program waits on one that
    cannot run. With S at least the programs resident at once, nobody waits in practice.
    """
    n_slots = scratch_values // (_slot_rows(CHUNK, SUB, SPLIT) * BLOCK_D * BLOCK_N)
    if not LOCAL_PASS:  # a scratch slot (see above); the first thing, so that little is live while waiting
        ticket = tl.atomic_add(slot_turn_ptr, 1)
        done = tl.atomic_add(slot_turn_ptr + 1 + ticket % n_slots, 0, sem="acquire")
        while done < ticket // n_slots:
            done = tl.atomic_add(slot_turn_ptr + 1 + ticket % n_slots, 0, sem="acquire")
    pid_b, k, seg, grp, ch, ch_mask = _program_channels(chans_per_group, n_seg, BLOCK_D)
    nn = tl.arange(0, BLOCK_N)
    n_mask = nn < n_state
    dn_mask = ch_mask[:, None] & n_mask[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    u_off = _slot(pid_b, k, n_dir, U_PER_DIR) * plane + ch * seq_len
    delta_off = _slot(pid_b, k, n_dir, DT_PER_DIR) * plane + ch * seq_len
    B_off = (_slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len + nn * seq_len
    C_off = (_slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len + nn * seq_len
    row = pid_b * plane + ch * seq_len  # z, dz, dout: (b, d, L) in row-major token order
    A = tl.load(A_ptr + _slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch[:, None] * n_state + nn[None, :],
                mask=dn_mask, other=0.0)
    db_base = _slot(0, k, 1, DB_PER_DIR) * n_channels
    D, bias = _skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D, HAS_BIAS, BLOCK_D)

    dir_slot = pid_b * n_dir + k
    seg_off = (dir_slot * n_seg + seg) * n_channels
    state_tile = ch[:, None] * n_state + nn[None, :]
    row_stride = n_channels * n_state
    # this program's scratch rows: step j of a chunk at scratch[slot, j, channel in the block, :]
    scratch_stride = BLOCK_D * BLOCK_N
    block_tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + nn[None, :]
    if LOCAL_PASS:  # no states kept: no slot
        scratch_rows = scratch_ptr + block_tile
    else:
        slot_values = _slot_rows(CHUNK, SUB, SPLIT) * scratch_stride
        scratch_rows = scratch_ptr + (ticket % n_slots).to(tl.int64) * slot_values + block_tile
    adj_rows = scratch_rows + (CHUNK + 1) * scratch_stride  # SPLIT: one sub-block's adjoint rows

    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, seq_len)
    # a_{t+1} G_{t+1} entering the segment's last token: from the carried adjoint of the next segment.
    carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dt_next_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    if MULTI_SEG:
        has_next = seg_end < seq_len
        pos_next = _token(perm_ptr, k, tl.minimum(seg_end, seq_len - 1), seq_len, HAS_PERM)
        dt_after, _raw_after = _delta_at(delta_ptr + delta_off, pos_next, ch_mask, bias, HAS_BIAS, SOFTPLUS)
        dt_after = tl.where(has_next, dt_after, 0.0)
        if LOCAL_PASS:
            dt_next_sum = dt_after
        else:
            g_in = tl.load(seg_gcarry_ptr + seg_off * n_state + state_tile, mask=dn_mask, other=0.0)
            carry = tl.exp(dt_after[:, None] * A) * g_in
    G = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    n_chunks_seg = tl.cdiv(seg_end - seg_start, CHUNK)
    for i in range(0, n_chunks_seg):
        c_start = seg_start + (n_chunks_seg - 1 - i) * CHUNK
        c_end = tl.minimum(c_start + CHUNK, seg_end)
        n_tok = c_end - c_start
        h0 = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        h_t = h0
        if not LOCAL_PASS:
            ckpt_off = (dir_slot * n_chunks + c_start // CHUNK) * row_stride
            h0 = tl.load(ckpt_ptr + ckpt_off + state_tile, mask=dn_mask, other=0.0)
            h = h0
            tl.debug_barrier()  # the previous chunk's reverse loop is done with the scratch rows
            if SPLIT:  # the state before the interval in row 0, then the interval's states a sub-block at a time
                tl.store(scratch_rows, h0, mask=dn_mask)
                for s in range(0, tl.cdiv(n_tok, SUB)):
                    sb_lo = c_start + s * SUB
                    h = _recompute_steps(h, sb_lo, tl.minimum(sb_lo + SUB, c_end), c_start, scratch_rows,
                                         scratch_stride, dn_mask, A, perm_ptr, k, seq_len, delta_ptr + delta_off,
                                         u_ptr + u_off, B_ptr + B_off, ch_mask, n_mask, bias, HAS_PERM,
                                         BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, SUB)
            else:
                if PREFETCH:
                    dt, u, Bt = _recompute_inputs(perm_ptr, k, c_start, c_start, c_end, seq_len,
                                                  delta_ptr + delta_off, u_ptr + u_off, B_ptr + B_off, ch_mask,
                                                  n_mask, bias, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS)
                for t in range(c_start, c_end):
                    if PREFETCH:
                        dt_n, u_n, Bt_n = _recompute_inputs(perm_ptr, k, t + 1, c_start, c_end, seq_len,
                                                            delta_ptr + delta_off, u_ptr + u_off, B_ptr + B_off,
                                                            ch_mask, n_mask, bias, HAS_PERM, BC_SCAN_ORDER,
                                                            HAS_BIAS, SOFTPLUS)
                    else:
                        dt, u, Bt = _recompute_inputs(perm_ptr, k, t, c_start, c_end, seq_len, delta_ptr + delta_off,
                                                      u_ptr + u_off, B_ptr + B_off, ch_mask, n_mask, bias,
                                                      HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS)
                    h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
                    tl.store(scratch_rows + (t - c_start) * scratch_stride, h, mask=dn_mask)
                    if PREFETCH:
                        dt, u, Bt = dt_n, u_n, Bt_n
            tl.debug_barrier()  # the states are visible to every thread of the program
            h_t = h
        if SPLIT:  # sub-blocks in reverse: the adjoint chain, then (main pass) the gradients in parallel
            n_sub = tl.cdiv(n_tok, SUB)
            for s in range(0, n_sub):
                sb_lo = c_start + (n_sub - 1 - s) * SUB
                sb_hi = tl.minimum(sb_lo + SUB, c_end)
                carry, G, dt_next_sum = _adjoint_steps(
                    carry, dt_next_sum, sb_lo, sb_hi, seg_start, adj_rows, scratch_stride, dn_mask, A, perm_ptr, k,
                    seq_len, delta_ptr + delta_off, dout_ptr + row, z_ptr + row, C_ptr + C_off, ch_mask, n_mask,
                    bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z, LOCAL_PASS, SUB)
                if not LOCAL_PASS:
                    tl.debug_barrier()  # the adjoint rows are visible to every thread of the program
                    dA_acc, dD_acc, dbias_acc = _split_gradients(
                        sb_lo, sb_hi, c_start, scratch_rows, adj_rows, scratch_stride, A, D, bias, out_scale,
                        dA_acc, dD_acc, dbias_acc, perm_ptr, k, seq_len, delta_ptr + delta_off, u_ptr + u_off,
                        dout_ptr + row, z_ptr + row, B_ptr + B_off, C_ptr + C_off, dB_ptr + B_off, dC_ptr + C_off,
                        du_ptr + u_off, ddelta_ptr + delta_off, dz_ptr + row, ch_mask, n_mask, dn_mask, HAS_PERM,
                        BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z, HAS_D, DU_ATOMIC, DDELTA_ATOMIC, SUB)
                    tl.debug_barrier()  # ... and read by all of them before the next sub-block overwrites them
        else:
            if BATCH_IO:
                dB_rows = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
                dC_rows = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
                du_rows = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
                ddt_rows = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
                dz_rows = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
            if PREFETCH:
                pos, dt, dt_raw, dout, zt, Ct, u, Bt, h_prev = _reverse_inputs(
                    perm_ptr, k, c_end - 1, c_start, c_end, seq_len, delta_ptr + delta_off, u_ptr + u_off,
                    B_ptr + B_off, C_ptr + C_off, dout_ptr + row, z_ptr + row, scratch_rows, scratch_stride, h0,
                    ch_mask, n_mask, dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z,
                    LOCAL_PASS)
            for j in range(0, n_tok):
                t = c_end - 1 - j
                if PREFETCH:
                    pos_n, dt_n, dt_raw_n, dout_n, zt_n, Ct_n, u_n, Bt_n, h_prev_n = _reverse_inputs(
                        perm_ptr, k, t - 1, c_start, c_end, seq_len, delta_ptr + delta_off, u_ptr + u_off,
                        B_ptr + B_off, C_ptr + C_off, dout_ptr + row, z_ptr + row, scratch_rows, scratch_stride, h0,
                        ch_mask, n_mask, dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z,
                        LOCAL_PASS)
                else:
                    pos, dt, dt_raw, dout, zt, Ct, u, Bt, h_prev = _reverse_inputs(
                        perm_ptr, k, t, c_start, c_end, seq_len, delta_ptr + delta_off, u_ptr + u_off, B_ptr + B_off,
                        C_ptr + C_off, dout_ptr + row, z_ptr + row, scratch_rows, scratch_stride, h0, ch_mask, n_mask,
                        dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z, LOCAL_PASS)
                a = tl.exp(dt[:, None] * A)
                if HAS_Z:
                    sig_z = _sigmoid(zt)
                    dy = dout * zt * sig_z
                else:
                    dy = dout
                G = dy[:, None] * Ct[None, :] + carry
                carry = a * G
                if LOCAL_PASS:
                    dt_next_sum += tl.where(t > seg_start, dt, 0.0)
                else:
                    if HAS_Z:
                        y = tl.sum(h_t * Ct[None, :], axis=1)
                        if HAS_D:
                            y += D * u
                        dz = dout * y * sig_z * (1.0 + zt * (1.0 - sig_z))
                    dC_t = tl.sum(dy[:, None] * h_t, axis=0)
                    dtu = dt * u
                    dB_t = tl.sum(G * dtu[:, None], axis=0)
                    g_dot_B = tl.sum(G * Bt[None, :], axis=1)
                    g_decayed = G * a * h_prev  # G_t a_t h_{t-1}
                    du = dt * g_dot_B
                    if HAS_D:
                        du += D * dy
                        dD_acc += dy * u
                    ddt = u * g_dot_B + tl.sum(g_decayed * A, axis=1)
                    dA_acc += g_decayed * dt[:, None]
                    if SOFTPLUS:
                        ddt = ddt * _sigmoid(dt_raw)
                    ddt = tl.where(ch_mask, ddt, 0.0)
                    dbias_acc += ddt
                    if BATCH_IO:
                        at_t = cols[None, :] == t - c_start
                        dC_rows = tl.where(at_t, dC_t[:, None], dC_rows)
                        dB_rows = tl.where(at_t, dB_t[:, None], dB_rows)
                        du_rows = tl.where(at_t, du[:, None], du_rows)
                        ddt_rows = tl.where(at_t, ddt[:, None], ddt_rows)
                        if HAS_Z:
                            dz_rows = tl.where(at_t, dz[:, None], dz_rows)
                    else:
                        bc = _bc_index(t, pos, BC_SCAN_ORDER)
                        tl.atomic_add(dC_ptr + C_off + bc, dC_t, mask=n_mask)
                        tl.atomic_add(dB_ptr + B_off + bc, dB_t, mask=n_mask)
                        if HAS_Z:
                            _write_grad(dz_ptr + row + pos, dz, ch_mask, False)
                        _write_grad(du_ptr + u_off + pos, du, ch_mask, DU_ATOMIC)
                        _write_grad(ddelta_ptr + delta_off + pos, ddt, ch_mask, DDELTA_ATOMIC)
                    h_t = h_prev
                if PREFETCH:
                    pos, dt, dt_raw, dout, zt, Ct = pos_n, dt_n, dt_raw_n, dout_n, zt_n, Ct_n
                    u, Bt, h_prev = u_n, Bt_n, h_prev_n
            if BATCH_IO:
                if not LOCAL_PASS:  # the interval's gradients, token-contiguous
                    in_chunk = cols < n_tok
                    tok = _positions(perm_ptr, k, c_start + cols, in_chunk, seq_len, HAS_PERM)
                    bc_cols = _bc_index(c_start + cols, tok, BC_SCAN_ORDER)
                    nt_mask = n_mask[:, None] & in_chunk[None, :]
                    tl.atomic_add(dC_ptr + C_off[:, None] + bc_cols[None, :], dC_rows, mask=nt_mask)
                    tl.atomic_add(dB_ptr + B_off[:, None] + bc_cols[None, :], dB_rows, mask=nt_mask)
                    dt_mask = ch_mask[:, None] & in_chunk[None, :]
                    if HAS_Z:
                        _write_grad(dz_ptr + row[:, None] + tok[None, :], dz_rows, dt_mask, False)
                    _write_grad(du_ptr + u_off[:, None] + tok[None, :], du_rows, dt_mask, DU_ATOMIC)
                    _write_grad(ddelta_ptr + delta_off[:, None] + tok[None, :], ddt_rows, dt_mask, DDELTA_ATOMIC)

    if not LOCAL_PASS:
        tl.debug_barrier()  # every thread is done with the slot's rows: hand it to its next ticket
        tl.atomic_xchg(slot_turn_ptr + 1 + ticket % n_slots, ticket // n_slots + 1, sem="release")
    _store_backward_partials(seg_gstart_ptr, seg_dtsum_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, seg_off, n_state,
                             state_tile, ch, dn_mask, ch_mask, G, dt_next_sum, dA_acc, dD_acc, dbias_acc,
                             LOCAL_PASS, HAS_D, HAS_BIAS)


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
    reverse=True)``: triton-lang/triton#4362; ``tl.flip`` measured slow). The reversed adjoint goes
    back to token order through the program's scratch row, the states come from a forward scan that
    starts at the tile's checkpoint (``CHUNK`` is the checkpoint interval), ``a_t·h_{t-1} = h_t - b_t``,
    and every gradient is formed tile-wide: dB, dC rows as coalesced atomics, du, dΔ, dz once per tile.
    ``LOCAL_PASS`` (long-l first pass): only the adjoint from a zero carry, as in :func:`scan_bwd_kernel`.
    """
    pid_b, k, seg, grp, ch, ch_mask = _program_channels(chans_per_group, n_seg, BLOCK_D)
    nn = tl.arange(0, BLOCK_N)
    dn_mask = ch_mask[:, None] & (nn < n_state)[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    delta_base = delta_ptr + _slot(pid_b, k, n_dir, DT_PER_DIR) * plane
    B_base = B_ptr + (_slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    C_base = C_ptr + (_slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    dB_base = dB_ptr + (_slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len
    dC_base = dC_ptr + (_slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len
    u_rows = _slot(pid_b, k, n_dir, U_PER_DIR) * plane + ch[:, None] * seq_len
    delta_rows = _slot(pid_b, k, n_dir, DT_PER_DIR) * plane + ch[:, None] * seq_len
    rows = pid_b * plane + ch[:, None] * seq_len  # z, dz, dout: (b, d, L) in row-major token order
    A_rows = A_ptr + _slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch * n_state
    db_base = _slot(0, k, 1, DB_PER_DIR) * n_channels
    D, bias = _skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D, HAS_BIAS, BLOCK_D)

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
        pos_next = _token(perm_ptr, k, tl.minimum(seg_end, seq_len - 1), seq_len, HAS_PERM)
        dt_after, _raw_after = _delta_at(delta_base + ch * seq_len, pos_next, ch_mask, bias, HAS_BIAS, SOFTPLUS)
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
        pos_f = _positions(perm_ptr, k, t0 + cols, valid, seq_len, HAS_PERM)
        dt_f, raw_f = _load_delta(delta_base, ch, pos_f, m2, bias, HAS_BIAS, SOFTPLUS, seq_len)
        # reversed order: column s is token t0 + n_tok - 1 - s; its a_{t+1} comes from token t + 1 (s >= 1)
        tok_r = t0 + n_tok - 1 - cols
        pos_r = _positions(perm_ptr, k, tl.maximum(tok_r, t0), valid, seq_len, HAS_PERM)
        bc_f = _bc_index(t0 + cols, pos_f, BC_SCAN_ORDER)
        bc_r = _bc_index(tl.maximum(tok_r, t0), pos_r, BC_SCAN_ORDER)
        after = valid & (cols >= 1)
        pos_r1 = _positions(perm_ptr, k, tl.minimum(tok_r + 1, seq_len - 1), after, seq_len, HAS_PERM)
        dt_r1, _raw_r1 = _load_delta(delta_base, ch, pos_r1, ch_mask[:, None] & after[None, :], bias, HAS_BIAS,
                                     SOFTPLUS, seq_len)
        dout_r = tl.load(dout_ptr + rows + pos_r[None, :], mask=m2, other=0.0).to(tl.float32) * out_scale
        if HAS_Z:
            z_r = tl.load(z_ptr + rows + pos_r[None, :], mask=m2, other=0.0).to(tl.float32)
            dy_r = dout_r * z_r * _sigmoid(z_r)
        else:
            dy_r = dout_r
        if not LOCAL_PASS:
            u_f = tl.load(u_ptr + u_rows + pos_f[None, :], mask=m2, other=0.0).to(tl.float32)
            dtu_f = dt_f * u_f
            dout_f = tl.load(dout_ptr + rows + pos_f[None, :], mask=m2, other=0.0).to(tl.float32) * out_scale
            if HAS_Z:
                z_f = tl.load(z_ptr + rows + pos_f[None, :], mask=m2, other=0.0).to(tl.float32)
                sig_f = _sigmoid(z_f)
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
            c_r = dy_r * C_r[None, :] + tl.where(cols[None, :] == 0, _column(carry, nn, n)[:, None], 0.0)
            _prod, G_r = tl.associative_scan((a_r, c_r), axis=1, combine_fn=_affine_combine)
            # the tile's first token is the last valid reversed column
            G_t0 = tl.sum(tl.where(cols[None, :] == n_tok - 1, G_r, 0.0), axis=1)
            a_t0 = tl.exp(tl.sum(tl.where(cols[None, :] == 0, dt_f, 0.0), axis=1) * A_n)
            carry = _with_column(carry, nn, n, a_t0 * G_t0)
            if LOCAL_PASS:
                G_first = _with_column(G_first, nn, n, G_t0)
            else:
                # back to token order through the scratch row
                tl.debug_barrier()  # the previous column's reads of the row are done
                tl.store(scratch_rows + (n_tok - 1 - cols)[None, :], G_r, mask=m2)
                tl.debug_barrier()
                G_f = tl.load(scratch_rows + cols[None, :], mask=m2, other=0.0)
                B_f = tl.load(B_base + n * seq_len + bc_f, mask=valid, other=0.0).to(tl.float32)
                b_f = dtu_f * B_f[None, :]
                prefix_a, h = tl.associative_scan((tl.exp(dt_f * A_n[:, None]), b_f), axis=1,
                                                  combine_fn=_affine_combine)
                h += prefix_a * _column(h_in, nn, n)[:, None]
                g_decayed = G_f * (h - b_f)  # G_t a_t h_{t-1}
                tl.atomic_add(dC_base + n * seq_len + bc_f, tl.sum(dy_f * h, axis=0), mask=valid)
                tl.atomic_add(dB_base + n * seq_len + bc_f, tl.sum(G_f * dtu_f, axis=0), mask=valid)
                g_B = G_f * B_f[None, :]
                du_acc += g_B * dt_f
                ddt_acc += g_B * u_f + g_decayed * A_n[:, None]
                dA_acc = _with_column(dA_acc, nn, n, _column(dA_acc, nn, n) + tl.sum(g_decayed * dt_f, axis=1))
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
                ddt = ddt * _sigmoid(raw_f)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            if HAS_Z:
                y = y_acc
                if HAS_D:
                    y += D[:, None] * u_f
                dz = dout_f * y * sig_f * (1.0 + z_f * (1.0 - sig_f))
                _write_grad(dz_ptr + rows + pos_f[None, :], dz, m2, False)
            _write_grad(du_ptr + u_rows + pos_f[None, :], du, m2, DU_ATOMIC)
            _write_grad(ddelta_ptr + delta_rows + pos_f[None, :], ddt, m2, DDELTA_ATOMIC)

    _store_backward_partials(seg_gstart_ptr, seg_dtsum_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, seg_off, n_state,
                             state_tile, ch, dn_mask, ch_mask, G_first, dt_next_sum, dA_acc, dD_acc, dbias_acc,
                             LOCAL_PASS, HAS_D, HAS_BIAS)
