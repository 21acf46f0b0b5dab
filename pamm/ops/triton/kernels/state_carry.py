"""The state carry between segments of a long sequence (forward states and backward adjoints)."""
from __future__ import annotations

import triton
import triton.language as tl

from pamm.ops.triton.kernels.common import slot


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
    A = tl.load(A_ptr + slot(0, k, 1, A_PER_DIR) * n_channels * n_state + ch[:, None] * n_state + nn[None, :],
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
