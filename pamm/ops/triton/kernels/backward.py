"""The token backward kernel: one token per loop step with the (BLOCK_D, n) state in registers, per
checkpoint interval a recompute into scratch rows and a reverse loop."""
from __future__ import annotations

import triton
import triton.language as tl

from pamm.ops.triton.kernels.backward_split import adjoint_steps, recompute_steps, split_gradients
from pamm.ops.triton.kernels.backward_steps import recompute_inputs, reverse_inputs
from pamm.ops.triton.kernels.common import (
    bc_index,
    delta_at,
    positions,
    program_channels,
    sigmoid,
    skip_and_bias,
    slot,
    store_backward_partials,
    token,
    write_grad,
)


@triton.jit
def slot_rows(CHUNK: tl.constexpr, SUB: tl.constexpr, SPLIT: tl.constexpr):
    """(BLOCK_D, BLOCK_N) rows in one token-backward scratch slot: the interval's states, and with
    ``SPLIT`` the state before it (row 0) and the adjoint rows of one sub-block (``SUB`` + 1)."""
    if SPLIT:
        return CHUNK + SUB + 2
    else:
        return CHUNK


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
    PREFETCH: tl.constexpr, SPLIT: tl.constexpr, SUB: tl.constexpr,
):
    """Backward scan of one program, a token per step, checkpoint intervals (CHUNK tokens) in reverse.

    For each interval a forward loop recomputes the states from its checkpoint into the program's
    ``scratch`` rows ``[CHUNK, BLOCK_D, BLOCK_N]`` (cache-resident: written and read back by the same
    program), then a reverse loop carries ``a_t·G_t`` (``G_t`` the adjoint of ``h_t``) and produces du,
    dΔ, dz (written directly, or atomically when a shared input feeds several directions), dB and dC
    (atomic adds, summed over the block's channels), and per-program partial sums of dA, dD and dbias.
    ``LOCAL_PASS``: only the adjoint from a zero carry; write the adjoint at the segment start and ΣΔ
    of the following tokens (first pass of the long-l regime).

    The reverse loop collects each interval's dB, dC rows (n, CHUNK) and du, dΔ, dz rows (BLOCK_D, CHUNK)
    in registers and writes them once per interval, token-contiguous (coalesced atomics and stores).
    Variants, chosen by the autotuner (``variants``, unused in the body, keys the autotuning cache by
    which of them the launch allows):
    ``PREFETCH``: both loops load step t±1's inputs before computing step t, so a load's latency is
    spent on a step of arithmetic instead of stalling the next one.
    ``SPLIT`` (a different structure; ``PREFETCH`` is off): both loops walk sub-blocks of ``SUB`` tokens
    (:func:`recompute_steps`, :func:`adjoint_steps`), and each sub-block's gradients come from its
    tiles at once (:func:`split_gradients`); the slot also holds the state before the interval and
    the sub-block's adjoints (:func:`slot_rows`).

    The scratch has rows for the programs that can run at once, not for all of them (``scratch_values``
    fp32 values: S = scratch_values // (rows·BLOCK_D·BLOCK_N) slots). A program takes a ticket when it
    starts (``slot_turn[0]``, so tickets follow start order) and uses slot ticket mod S once the slot's
    previous holders, tickets ticket - S, ticket - 2S, …, are done (``slot_turn[1 + slot]`` counts them).
    The holder it waits for started earlier, so it is running or done: no program waits on one that
    cannot run. With S at least the programs resident at once, nobody waits in practice.
    """
    n_slots = scratch_values // (slot_rows(CHUNK, SUB, SPLIT) * BLOCK_D * BLOCK_N)
    if not LOCAL_PASS:  # a scratch slot (see above); the first thing, so that little is live while waiting
        ticket = tl.atomic_add(slot_turn_ptr, 1)
        done = tl.atomic_add(slot_turn_ptr + 1 + ticket % n_slots, 0, sem="acquire")
        while done < ticket // n_slots:
            done = tl.atomic_add(slot_turn_ptr + 1 + ticket % n_slots, 0, sem="acquire")
    pid_b, k, seg, grp, ch, ch_mask = program_channels(chans_per_group, n_seg, BLOCK_D)
    nn = tl.arange(0, BLOCK_N)
    n_mask = nn < n_state
    dn_mask = ch_mask[:, None] & n_mask[None, :]
    cols = tl.arange(0, CHUNK)

    plane = n_channels * seq_len
    u_off = slot(pid_b, k, n_dir, U_PER_DIR) * plane + ch * seq_len
    delta_off = slot(pid_b, k, n_dir, DT_PER_DIR) * plane + ch * seq_len
    B_off = (slot(pid_b, k, n_dir, B_PER_DIR) * n_groups + grp) * n_state * seq_len + nn * seq_len
    C_off = (slot(pid_b, k, n_dir, C_PER_DIR) * n_groups + grp) * n_state * seq_len + nn * seq_len
    row = pid_b * plane + ch * seq_len  # z, dz, dout: (b, d, L) in row-major token order
    A = tl.load(A_ptr + slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch[:, None] * n_state + nn[None, :],
                mask=dn_mask, other=0.0)
    db_base = slot(0, k, 1, DB_PER_DIR) * n_channels
    D, bias = skip_and_bias(D_ptr, bias_ptr, db_base, ch, ch_mask, HAS_D, HAS_BIAS, BLOCK_D)

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
        slot_values = slot_rows(CHUNK, SUB, SPLIT) * scratch_stride
        scratch_rows = scratch_ptr + (ticket % n_slots).to(tl.int64) * slot_values + block_tile
    adj_rows = scratch_rows + (CHUNK + 1) * scratch_stride  # SPLIT: one sub-block's adjoint rows

    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, seq_len)
    # a_{t+1} G_{t+1} entering the segment's last token: from the carried adjoint of the next segment.
    carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dt_next_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    if MULTI_SEG:
        has_next = seg_end < seq_len
        pos_next = token(perm_ptr, k, tl.minimum(seg_end, seq_len - 1), seq_len, HAS_PERM)
        dt_after, _raw_after = delta_at(delta_ptr + delta_off, pos_next, ch_mask, bias, HAS_BIAS, SOFTPLUS)
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
                    h = recompute_steps(h, sb_lo, tl.minimum(sb_lo + SUB, c_end), c_start, scratch_rows,
                                         scratch_stride, dn_mask, A, perm_ptr, k, seq_len, delta_ptr + delta_off,
                                         u_ptr + u_off, B_ptr + B_off, ch_mask, n_mask, bias, HAS_PERM,
                                         BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, SUB)
            else:
                if PREFETCH:
                    dt, u, Bt = recompute_inputs(perm_ptr, k, c_start, c_start, c_end, seq_len,
                                                  delta_ptr + delta_off, u_ptr + u_off, B_ptr + B_off, ch_mask,
                                                  n_mask, bias, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS)
                for t in range(c_start, c_end):
                    if PREFETCH:
                        dt_n, u_n, Bt_n = recompute_inputs(perm_ptr, k, t + 1, c_start, c_end, seq_len,
                                                            delta_ptr + delta_off, u_ptr + u_off, B_ptr + B_off,
                                                            ch_mask, n_mask, bias, HAS_PERM, BC_SCAN_ORDER,
                                                            HAS_BIAS, SOFTPLUS)
                    else:
                        dt, u, Bt = recompute_inputs(perm_ptr, k, t, c_start, c_end, seq_len, delta_ptr + delta_off,
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
                carry, G, dt_next_sum = adjoint_steps(
                    carry, dt_next_sum, sb_lo, sb_hi, seg_start, adj_rows, scratch_stride, dn_mask, A, perm_ptr, k,
                    seq_len, delta_ptr + delta_off, dout_ptr + row, z_ptr + row, C_ptr + C_off, ch_mask, n_mask,
                    bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z, LOCAL_PASS, SUB)
                if not LOCAL_PASS:
                    tl.debug_barrier()  # the adjoint rows are visible to every thread of the program
                    dA_acc, dD_acc, dbias_acc = split_gradients(
                        sb_lo, sb_hi, c_start, scratch_rows, adj_rows, scratch_stride, A, D, bias, out_scale,
                        dA_acc, dD_acc, dbias_acc, perm_ptr, k, seq_len, delta_ptr + delta_off, u_ptr + u_off,
                        dout_ptr + row, z_ptr + row, B_ptr + B_off, C_ptr + C_off, dB_ptr + B_off, dC_ptr + C_off,
                        du_ptr + u_off, ddelta_ptr + delta_off, dz_ptr + row, ch_mask, n_mask, dn_mask, HAS_PERM,
                        BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z, HAS_D, DU_ATOMIC, DDELTA_ATOMIC, SUB)
                    tl.debug_barrier()  # ... and read by all of them before the next sub-block overwrites them
        else:
            dB_rows = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)  # the interval's gradients, written at its end
            dC_rows = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
            du_rows = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
            ddt_rows = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
            dz_rows = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
            if PREFETCH:
                pos, dt, dt_raw, dout, zt, Ct, u, Bt, h_prev = reverse_inputs(
                    perm_ptr, k, c_end - 1, c_start, c_end, seq_len, delta_ptr + delta_off, u_ptr + u_off,
                    B_ptr + B_off, C_ptr + C_off, dout_ptr + row, z_ptr + row, scratch_rows, scratch_stride, h0,
                    ch_mask, n_mask, dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z,
                    LOCAL_PASS)
            for j in range(0, n_tok):
                t = c_end - 1 - j
                if PREFETCH:
                    pos_n, dt_n, dt_raw_n, dout_n, zt_n, Ct_n, u_n, Bt_n, h_prev_n = reverse_inputs(
                        perm_ptr, k, t - 1, c_start, c_end, seq_len, delta_ptr + delta_off, u_ptr + u_off,
                        B_ptr + B_off, C_ptr + C_off, dout_ptr + row, z_ptr + row, scratch_rows, scratch_stride, h0,
                        ch_mask, n_mask, dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z,
                        LOCAL_PASS)
                else:
                    pos, dt, dt_raw, dout, zt, Ct, u, Bt, h_prev = reverse_inputs(
                        perm_ptr, k, t, c_start, c_end, seq_len, delta_ptr + delta_off, u_ptr + u_off, B_ptr + B_off,
                        C_ptr + C_off, dout_ptr + row, z_ptr + row, scratch_rows, scratch_stride, h0, ch_mask, n_mask,
                        dn_mask, bias, out_scale, HAS_PERM, BC_SCAN_ORDER, HAS_BIAS, SOFTPLUS, HAS_Z, LOCAL_PASS)
                a = tl.exp(dt[:, None] * A)
                if HAS_Z:
                    sig_z = sigmoid(zt)
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
                        ddt = ddt * sigmoid(dt_raw)
                    ddt = tl.where(ch_mask, ddt, 0.0)
                    dbias_acc += ddt
                    at_t = cols[None, :] == t - c_start
                    dC_rows = tl.where(at_t, dC_t[:, None], dC_rows)
                    dB_rows = tl.where(at_t, dB_t[:, None], dB_rows)
                    du_rows = tl.where(at_t, du[:, None], du_rows)
                    ddt_rows = tl.where(at_t, ddt[:, None], ddt_rows)
                    if HAS_Z:
                        dz_rows = tl.where(at_t, dz[:, None], dz_rows)
                    h_t = h_prev
                if PREFETCH:
                    dt, dt_raw, dout, zt, Ct = dt_n, dt_raw_n, dout_n, zt_n, Ct_n
                    u, Bt, h_prev = u_n, Bt_n, h_prev_n
            if not LOCAL_PASS:  # the interval's gradients, token-contiguous
                in_chunk = cols < n_tok
                tok = positions(perm_ptr, k, c_start + cols, in_chunk, seq_len, HAS_PERM)
                bc_cols = bc_index(c_start + cols, tok, BC_SCAN_ORDER)
                nt_mask = n_mask[:, None] & in_chunk[None, :]
                tl.atomic_add(dC_ptr + C_off[:, None] + bc_cols[None, :], dC_rows, mask=nt_mask)
                tl.atomic_add(dB_ptr + B_off[:, None] + bc_cols[None, :], dB_rows, mask=nt_mask)
                dt_mask = ch_mask[:, None] & in_chunk[None, :]
                if HAS_Z:
                    write_grad(dz_ptr + row[:, None] + tok[None, :], dz_rows, dt_mask, False)
                write_grad(du_ptr + u_off[:, None] + tok[None, :], du_rows, dt_mask, DU_ATOMIC)
                write_grad(ddelta_ptr + delta_off[:, None] + tok[None, :], ddt_rows, dt_mask, DDELTA_ATOMIC)

    if not LOCAL_PASS:
        tl.debug_barrier()  # every thread is done with the slot's rows: hand it to its next ticket
        tl.atomic_xchg(slot_turn_ptr + 1 + ticket % n_slots, ticket // n_slots + 1, sem="release")
    store_backward_partials(seg_gstart_ptr, seg_dtsum_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, seg_off, n_state,
                             state_tile, ch, dn_mask, ch_mask, G, dt_next_sum, dA_acc, dD_acc, dbias_acc,
                             LOCAL_PASS, HAS_D, HAS_BIAS)
