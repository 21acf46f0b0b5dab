"""The pure-PyTorch selective scan: blocked over the sequence, two-level scan inside each block,
hand-written backward as a reverse scan.

Why this design:
  * **Stable.** The recurrence h_t = a_t·h_{t-1} + x_t is evaluated as such, with a_t = exp(dt_t·A)
    ≤ 1 for A ≤ 0; nothing ever exponentiates a (positive) cumulative sum, so no dt·A overflows.
  * **Bounded memory.** The (b, d, l, n) state is never materialised for the whole sequence: the
    sequence is cut into blocks whose state fits a fixed element budget; the forward keeps only the
    state at block boundaries (b, d, blocks + 1, n), the backward recomputes one block at a time.
  * **Fast without compiling.** Inside a block a work-efficient two-level scan (sequential over
    ~√(2T) positions, vectorised over all chunks) keeps the number of Python-level ops small and
    the total work O(T) (a Blelloch scan does O(T) work too but with ~2·log T strided passes).
  * **Cheap backward.** The gradient of the recurrence is the reverse scan
    g_t = dh_t + a_{t+1}·g_{t+1}; every parameter gradient is then elementwise work and reductions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pamm.ops.scan_ref import compute_dtype

__all__ = ["scan_forward", "scan_backward", "block_length", "num_state_slots", "linear_recurrence_"]

# Elements of one (b, d, block, n) buffer. Small enough to stay in a CPU's L2/L3 cache, large
# enough on GPU that kernel launches do not dominate. ScanSettings.torch_block_elements overrides it.
_DEFAULT_BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 26}
_SOFTPLUS_THRESHOLD = 20.0  # same as torch.nn.functional.softplus and the mamba-ssm kernel
# Decays are exp2(dt·A·log2 e): torch's CPU exp is ~1.7x slower than exp2 and ~8x slower when
# results underflow (a scalar fallback), which long decays (dt·A < -87) hit.
_LOG2_E = math.log2(math.e)


# Fewest positions per block under the default budget. Very wide scans (PASCAL PAMM: 4 directions x 5
# tasks x 2048 channels x 64 states per position) would otherwise get 1-position blocks: a Python step per
# token and a saved state per token (10.7 GB of saved states at 512x512).
_MIN_BLOCK = 32


def block_length(length: int, elements_per_step: int, device_type: str, block_elements: int | None = None) -> int:
    """Sequence positions per block so that one (b, d, block, n) buffer stays within the budget:
    ``block_elements``, else the device's default (then at least ``_MIN_BLOCK`` positions)."""
    budget = block_elements or _DEFAULT_BLOCK_ELEMENTS.get(device_type, 1 << 24)
    floor = 1 if block_elements else _MIN_BLOCK
    return max(1, min(max(length, 1), max(floor, budget // max(1, elements_per_step))))


def num_state_slots(length: int, batch: int, channels: int, d_state: int, device_type: str,
                    block_elements: int | None = None) -> int:
    """Size of the saved-state axis: one slot before each block plus the final state."""
    block = block_length(length, batch * channels * d_state, device_type, block_elements)
    return math.ceil(length / block) + 1 if length > 0 else 1


def linear_recurrence_(
    values: torch.Tensor, coef: torch.Tensor, init: torch.Tensor | None, reverse: bool = False
) -> torch.Tensor:
    """In place, over axis 0 of time-major (T, R, N) tensors (views allowed):

    forward: values[t] ← coef[t] · values[t-1] + values[t], with values[-1] = init;
    reverse: values[t] ← coef[t] · values[t+1] + values[t], with values[T] = init.

    Two-level "reduce then scan": per-chunk aggregates (sequential over the chunk length,
    vectorised over chunks), a short sequential pass over chunks for their incoming states, then
    the in-chunk scan seeded with those states: about 2·√(2T) small ops instead of T, O(T) work.
    Returns the final state (the state at t = 0 if reverse), a view into ``values`` or ``init``.
    """
    steps, rows, width = values.shape
    carry = values.new_zeros(rows, width) if init is None else init
    if steps == 0:
        return carry
    chunk = max(1, int(round(math.sqrt(2 * steps))))
    n_chunks = steps // chunk
    aligned = n_chunks * chunk
    if reverse:
        for t in range(steps - 1, aligned - 1, -1):  # ragged tail first
            values[t].addcmul_(coef[t], carry)
            carry = values[t]
    if n_chunks > 0:
        main = values[:aligned].unflatten(0, (n_chunks, chunk))
        main_coef = coef[:aligned].unflatten(0, (n_chunks, chunk))
        value_steps = main.unbind(1)
        coef_steps = main_coef.unbind(1)
        order = range(chunk - 1, -1, -1) if reverse else range(chunk)
        # 1. Aggregate of each chunk started from zero: its end value and its total decay.
        first, *rest = order
        chunk_sum = value_steps[first].clone()
        for i in rest:
            chunk_sum = torch.addcmul(value_steps[i], coef_steps[i], chunk_sum)
        chunk_decay = main_coef.prod(dim=1)
        # 2. State entering each chunk, sequential over chunks.
        incoming = torch.empty_like(chunk_sum)
        for j in range(n_chunks - 1, -1, -1) if reverse else range(n_chunks):
            incoming[j] = carry
            carry = torch.addcmul(chunk_sum[j], chunk_decay[j], carry)
        # 3. The scan inside every chunk at once, seeded with its incoming state.
        previous = incoming
        for i in order:
            value_steps[i].addcmul_(coef_steps[i], previous)
            previous = value_steps[i]
        carry = values[0] if reverse else values[aligned - 1]
    if not reverse:
        for t in range(aligned, steps):
            values[t].addcmul_(coef[t], carry)
            carry = values[t]
    return carry


def _softplus_grad(raw: torch.Tensor) -> torch.Tensor:
    """d softplus / dx with torch's threshold (identity above 20)."""
    return torch.where(raw > _SOFTPLUS_THRESHOLD, torch.ones_like(raw), torch.sigmoid(raw))


def _time_major(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, c, l) → contiguous (l, b, c): every block and every step becomes one contiguous slab."""
    return x.to(dtype).permute(2, 0, 1).contiguous()


def _time_major_groups(mat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, g, n, l) → contiguous (l, b, g, n)."""
    return mat.to(dtype).permute(3, 0, 1, 2).contiguous()


def _dt_time_major(delta, delta_bias, delta_softplus, dtype):
    """(raw, dt) in time-major (l, b, d); raw = delta + bias is kept for the softplus gradient."""
    raw = _time_major(delta, dtype)
    if delta_bias is not None:
        raw = raw + delta_bias.to(dtype)  # not in place: raw may share memory with delta
    dt = F.softplus(raw) if delta_softplus else raw
    return raw, dt


class _Plan:
    """Shapes shared by forward and backward, and the state layout.

    States live as (steps, b, g, n, e): group, state index, then the group's e = d / g channels
    innermost. Every broadcast then runs along a contiguous channel axis (a stride-0 n innermost,
    as in (b, d, n), makes CPU elementwise kernels 3-6x slower), and every contraction (over n for
    y, over a group's channels for dB and dC) is a multiply plus a sum over one axis.
    """

    def __init__(self, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, block_elements: int | None = None):
        self.batch, self.channels, self.length = u.shape
        self.d_state = A.shape[1]
        self.groups = B.shape[1]
        self.per_group = self.channels // self.groups
        self.block = block_length(self.length, self.batch * self.channels * self.d_state, u.device.type,
                                  block_elements)
        self.n_blocks = math.ceil(self.length / self.block) if self.length > 0 else 0
        self.width = min(self.block, max(self.length, 1))

    def blocks(self, reverse: bool = False):
        order = range(self.n_blocks - 1, -1, -1) if reverse else range(self.n_blocks)
        for k in order:
            start = k * self.block
            yield k, start, min(self.length, start + self.block)

    def state_shape(self, steps: int) -> tuple[int, ...]:
        return (steps, self.batch, self.groups, self.d_state, self.per_group)

    def per_channel(self, x: torch.Tensor) -> torch.Tensor:
        """A (steps, b, d) slab as (steps, b, g, 1, e): broadcast over the state index."""
        return x.view(x.shape[0], self.batch, self.groups, 1, self.per_group)

    def grouped_A(self, A: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(d, n) → contiguous (g, n, e), the state layout without its leading axes."""
        return A.to(dtype).view(self.groups, self.per_group, self.d_state).transpose(1, 2).contiguous()

    def states_out(self, states: torch.Tensor) -> torch.Tensor:
        """(slots, b, g, n, e) → the backends' (b, d, slots, n) layout."""
        slots = states.shape[0]
        return states.permute(1, 2, 4, 0, 3).reshape(self.batch, self.channels, slots, self.d_state)

    def states_in(self, states: torch.Tensor) -> torch.Tensor:
        """(b, d, slots, n) → (slots, b, g, n, e), a view where possible."""
        b, _, slots, n = states.shape
        return states.reshape(b, self.groups, self.per_group, slots, n).permute(3, 0, 1, 4, 2)

    def block_states(
        self, dt: torch.Tensor, dtu: torch.Tensor, B: torch.Tensor, A_log2: torch.Tensor, init: torch.Tensor,
        decay: torch.Tensor, state: torch.Tensor,
    ) -> torch.Tensor:
        """One block's decays a_t = exp2(dt_t·A·log2 e) into ``decay`` and states h_t into ``state``
        (both (steps, b, g, n, e) buffers), h_{-1} = ``init``; returns the block's final state (a view).

        The forward runs it once per block, the backward again to recompute what the forward did not keep.
        """
        steps = decay.shape[0]
        torch.mul(self.per_channel(dt), A_log2, out=decay).exp2_()
        torch.mul(self.per_channel(dtu), B, out=state)
        return linear_recurrence_(state.view(steps, 1, -1), decay.view(steps, 1, -1), init.reshape(1, -1))


def scan_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    block_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass. B, C must be 4-D (b, g, n, l). Returns (out in u's dtype, block states).

    The states tensor is (b, d, blocks + 1, n) in the compute dtype: slot k is the state entering
    block k, the last slot the final state. Internally everything is time-major (see ``_Plan``).
    ``block_elements``: the block budget (see :func:`block_length`).
    """
    dtype = compute_dtype(u, delta, A, B, C)
    plan = _Plan(u, A, B, block_elements)
    b, d = plan.batch, plan.channels
    device = u.device
    A_log2 = plan.grouped_A(A, dtype) * _LOG2_E
    B_tm = _time_major_groups(B, dtype)[..., None]  # (l, b, g, n, 1)
    C_tm = _time_major_groups(C, dtype)[..., None]
    u_tm = _time_major(u, dtype)
    _, dt_tm = _dt_time_major(delta, delta_bias, delta_softplus, dtype)
    dtu_tm = dt_tm * u_tm
    y_tm = torch.empty(plan.length, b, d, dtype=dtype, device=device)
    states = torch.empty(plan.state_shape(plan.n_blocks + 1), dtype=dtype, device=device)
    states[0].zero_()
    decay_buf = torch.empty(plan.state_shape(plan.width), dtype=dtype, device=device)
    state_buf = torch.empty_like(decay_buf)
    for k, start, stop in plan.blocks():
        steps = stop - start
        decay, state = decay_buf[:steps], state_buf[:steps]
        last = plan.block_states(dt_tm[start:stop], dtu_tm[start:stop], B_tm[start:stop], A_log2, states[k],
                                 decay, state)
        states[k + 1] = last.view(states[k].shape)
        # y_t = Σ_n C_t·h_t, the products built in the (spent) decay buffer.
        torch.sum(torch.mul(state, C_tm[start:stop], out=decay), dim=3, out=plan.per_channel(y_tm[start:stop])[:, :, :, 0])
    out = y_tm.permute(1, 2, 0)
    if D is not None:
        out = out + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        out = out * F.silu(z.to(dtype))
    return out.to(u.dtype).contiguous(), plan.states_out(states)


def scan_backward(
    dout: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    states: torch.Tensor,
    needs: tuple[bool, ...] | list[bool] = (True,) * 8,
    block_elements: int | None = None,
) -> list[torch.Tensor | None]:
    """Gradients [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias], each in its input's dtype
    (None where the input is None or ``needs`` says it is not wanted).

    Walks the blocks from last to first: recompute the block's decays and states from the saved
    entering state, run the reverse scan g_t = dh_t + a_{t+1}·g_{t+1}, then
    q_t = g_t·a_t·h_{t-1} gives dA and the decay part of d(dt); the rest is elementwise work.
    """
    need_u, need_delta, need_A, need_B, need_C, need_D, need_z, need_bias = (bool(x) for x in needs)
    need_D = need_D and D is not None
    need_z = need_z and z is not None
    need_bias = need_bias and delta_bias is not None
    want_dt = need_delta or need_bias
    dtype = compute_dtype(u, delta, A, B, C)
    plan = _Plan(u, A, B, block_elements)
    b, d, length = plan.batch, plan.channels, plan.length
    device = u.device
    A_grouped = plan.grouped_A(A, dtype)
    A_log2 = A_grouped * _LOG2_E
    B_tm = _time_major_groups(B, dtype)[..., None]  # (l, b, g, n, 1)
    C_tm = _time_major_groups(C, dtype)[..., None]
    u_tm = _time_major(u, dtype)
    raw_tm, dt_tm = _dt_time_major(delta, delta_bias, delta_softplus, dtype)
    dtu_tm = dt_tm * u_tm
    dout_tm = _time_major(dout, dtype)
    D_c = D.to(dtype) if D is not None else None
    if z is not None:
        z_tm = _time_major(z, dtype)
        z_sig = torch.sigmoid(z_tm)
        dy_tm = dout_tm * z_tm * z_sig  # gradient reaching y = scan + D·u
    else:
        dy_tm = dout_tm
    saved = plan.states_in(states.to(dtype))  # (slots, b, g, n, e)

    def new(*shape):
        return torch.empty(*shape, dtype=dtype, device=device)

    du_tm = new(length, b, d) if need_u else None
    ddt_tm = new(length, b, d) if want_dt else None
    dz_tm = new(length, b, d) if need_z else None
    dA = torch.zeros_like(A_grouped) if need_A else None  # (g, n, e)
    dB_tm = new(B_tm.shape[:-1]) if need_B else None  # (l, b, g, n)
    dC_tm = new(C_tm.shape[:-1]) if need_C else None
    # Three block-sized buffers: each product that is summed away is built in whichever buffer is spent
    # at that point (the adjoint's before the reverse scan, the states' once q_t has used them).
    decay_buf = new(plan.state_shape(plan.width + 1))
    state_buf = new(plan.state_shape(plan.width + 1))
    grad_buf = new(plan.state_shape(plan.width))
    carry = torch.zeros(1, decay_buf[0].numel(), dtype=dtype, device=device)  # a_{t+1}·g_{t+1} past the block
    for k, start, stop in plan.blocks(reverse=True):
        steps = stop - start
        dt = plan.per_channel(dt_tm[start:stop])
        dtu = plan.per_channel(dtu_tm[start:stop])
        dy = dy_tm[start:stop]
        grad = grad_buf[:steps]
        # Decays a_t, with slot `steps` = 1 so the reverse scan can read a_{t+1} as decay_buf[1:];
        # states h_t in slots 1..steps, h_{-1} (entering the block) in slot 0.
        decay, state = decay_buf[:steps], state_buf[1 : steps + 1]
        decay_buf[steps].fill_(1.0)
        state_buf[0] = saved[k]
        plan.block_states(dt_tm[start:stop], dtu_tm[start:stop], B_tm[start:stop], A_log2, state_buf[0], decay, state)
        # What needs the states h_t, with the adjoint's buffer as the product buffer (not yet written).
        if need_z:
            y = torch.sum(torch.mul(state, C_tm[start:stop], out=grad), dim=3).view(steps, b, d)
            if D_c is not None:
                y.addcmul_(u_tm[start:stop], D_c)
            zb, sb = z_tm[start:stop], z_sig[start:stop]
            dz_tm[start:stop] = dout_tm[start:stop] * y * sb * (1 + zb * (1 - sb))
        if need_C:  # Σ over the group's channels of dy_t·h_t
            torch.sum(torch.mul(state, plan.per_channel(dy), out=grad), dim=4, out=dC_tm[start:stop])
        # Reverse scan: g_t = dy_t·C_t + a_{t+1}·g_{t+1}.
        torch.mul(plan.per_channel(dy), C_tm[start:stop], out=grad)
        linear_recurrence_(grad.view(steps, 1, -1), decay_buf[1 : steps + 1].view(steps, 1, -1), carry, reverse=True)
        carry = (decay[0] * grad[0]).view(1, -1)
        q = None
        if want_dt or need_A:
            # q_t = g_t·a_t·h_{t-1} = ∂L/∂(dt_t·A), built in the decay buffer: the last use of the states.
            q = decay.mul_(grad).mul_(state_buf[:steps])
        work = state_buf[:steps]  # spent: the product buffer from here on
        g_dot_B = torch.sum(torch.mul(grad, B_tm[start:stop], out=work), dim=3).view(steps, b, d)
        if need_u:
            du = dt_tm[start:stop] * g_dot_B
            if D_c is not None:
                du.addcmul_(dy, D_c)
            du_tm[start:stop] = du
        if need_B:  # Σ over the group's channels of g_t·dt_t·u_t
            torch.sum(torch.mul(grad, dtu, out=work), dim=4, out=dB_tm[start:stop])
        if q is not None:
            if want_dt:
                ddt = torch.sum(torch.mul(q, A_grouped, out=work), dim=3).view(steps, b, d)
                ddt.addcmul_(u_tm[start:stop], g_dot_B)
                ddt_tm[start:stop] = ddt
            if need_A:
                dA += q.mul_(dt).sum(dim=(0, 1))
    if want_dt and delta_softplus:
        ddt_tm.mul_(_softplus_grad(raw_tm))
    dD = (dy_tm * u_tm).sum(dim=(0, 1)) if need_D else None
    d_bias = ddt_tm.sum(dim=(0, 1)) if need_bias else None

    def back(grad_tm: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
        """Time-major (l, ...) back to the input's layout (..., l) and dtype."""
        if grad_tm is None or like is None:
            return None
        if grad_tm.dim() == 3:
            return grad_tm.permute(1, 2, 0).to(like.dtype).contiguous()
        return grad_tm.permute(1, 2, 3, 0).to(like.dtype).contiguous()

    return [
        back(du_tm, u),
        back(ddt_tm, delta) if need_delta else None,
        None if dA is None else dA.transpose(1, 2).reshape(A.shape).to(A.dtype),
        back(dB_tm, B),
        back(dC_tm, C),
        None if dD is None else dD.to(D.dtype),
        back(dz_tm, z),
        None if d_bias is None else d_bias.to(delta_bias.dtype),
    ]
