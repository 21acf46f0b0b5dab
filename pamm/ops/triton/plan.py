"""How a Triton scan call is cut into programs: the problem, its plan, the backward variants a plan
allows and the token backward's scratch.

A program owns ``BLOCK_D`` channels of one group, one batch element, one direction and one segment of
the sequence. Many channels: one segment per sequence. Few channels and a long sequence: segments, so
that there are about four programs per multiprocessor; the segments are scanned from a zero state,
chained by the state-carry kernel, and rescanned from their true initial states.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, replace

import torch

__all__ = ["Problem", "Plan", "PlanOverrides", "plan_for", "auto_plan", "variant_mask", "variant_bit", "SPLIT_BIT",
           "split_sub", "slot_rows", "scratch_slots", "token_bwd_scratch", "next_pow2", "block_n",
           "BWD_BLOCK_DS", "SPLIT_SUBS", "REGS_PER_STATE_VALUE"]

MAX_TILE = 1024  # the forward's longest token tile
MAX_BWD_TILE = 256  # the tile backward's checkpoint interval
BWD_BLOCK_DS = (2, 4, 8, 16, 32)  # the token backward's channel blocks
# The split backward's sub-blocks: SUB tokens' (BLOCK_D, SUB, BLOCK_N) tiles of SPLIT_TILE_VALUES values
# per thread each (h_{t-1}, h_t, two adjoint rows, G and products: about six live at once), 2..8 tokens
# (each token more is one scratch row more per slot).
SPLIT_TILE_VALUES = 16
SPLIT_SUBS = (2, 4, 8)
# Every compiled config of the token backward's main pass holds at least 16 registers per state value a
# thread owns (tests/test_triton_compile.py checks it for the installed triton). So the programs resident
# on one SM own at most regs_per_SM / 16 state values, and scratch rows for that many per SM serve every
# program that can run at once.
REGS_PER_STATE_VALUE = 16
INTERPRETED_BWD_SLOTS = 3  # fewer slots than programs: the interpreter tests hand slots on


@dataclass(frozen=True)
class Problem:
    """Shapes and flags of one call, in the kernels' canonical layouts."""

    batch: int
    n_dir: int
    n_channels: int
    n_groups: int
    n_state: int
    seq_len: int
    u_per_dir: bool
    delta_per_dir: bool
    A_per_dir: bool
    B_per_dir: bool
    C_per_dir: bool
    db_per_dir: bool
    has_D: bool
    has_z: bool
    has_bias: bool
    softplus: bool
    has_perm: bool
    out_scale: float
    bc_scan_order: bool = False  # B, C given per direction in scan order (the fused call's default)

    @property
    def chans_per_group(self) -> int:
        return self.n_channels // self.n_groups


@dataclass(frozen=True)
class Plan:
    """How the sequence is cut: ``seg_len`` tokens per program, a checkpoint (and a backward scratch
    interval) every ``chunk`` tokens. The forward may cut segments of its own (``fwd_seg_len``: its
    programs are single channels, so it needs fewer) and walks them in tiles of ``tile`` tokens."""

    chunk: int
    seg_len: int
    block_d: int | None  # None: autotuned (or the heuristic config)
    num_warps: int
    tile: int = 0  # 0: the forward segment, up to MAX_TILE tokens
    fwd_seg_len: int = 0  # 0: seg_len
    bwd_kind: str = "token"  # "token": scan_bwd_kernel; "tile": scan_bwd_tile_kernel (chunk = its tile)
    bwd_prefetch: bool | None = None  # the token backward's PREFETCH; None: autotuned
    bwd_split: bool | None = None  # the split backward (SPLIT); True: only it, False: never, None: autotuned
    bwd_slots: int | None = None  # token backward's scratch slots (at the widest block); None: the resident programs'

    def n_chunks(self, seq_len: int) -> int:
        return -(-seq_len // self.chunk)

    def n_seg(self, seq_len: int) -> int:
        return -(-seq_len // self.seg_len)

    def forward(self, seq_len: int) -> "Plan":
        """The plan the forward kernel runs with (its segments and tile)."""
        seg_len = self.fwd_seg_len or self.seg_len
        tile = self.tile or min(MAX_TILE, max(2, next_pow2(min(seg_len, seq_len))))
        return replace(self, seg_len=seg_len, tile=tile, fwd_seg_len=seg_len)

    def carries(self, seq_len: int) -> bool:
        """Whether the forward carries a state between tiles (several tiles or segments)."""
        return self.seg_len > self.tile or self.n_seg(seq_len) > 1


@dataclass(frozen=True)
class PlanOverrides:
    """Parts of the automatic plan a caller fixes (tests reach ragged intervals, several segments and every
    backward variant with them; benchmarks time one variant): ``chunk`` (checkpoint interval),
    ``seg_chunks`` / ``fwd_seg_chunks`` (intervals per segment, for both passes / the forward alone),
    ``tile``, ``block_d``, ``num_warps``, the token backward's ``bwd_prefetch`` and ``bwd_split`` and its
    scratch slots ``bwd_slots``. None keeps the automatic value."""

    chunk: int | None = None
    seg_chunks: int | None = None
    fwd_seg_chunks: int | None = None
    tile: int | None = None
    block_d: int | None = None
    num_warps: int | None = None
    bwd_prefetch: bool | None = None
    bwd_split: bool | None = None
    bwd_slots: int | None = None


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def block_n(n_state: int) -> int:
    """The state axis as the kernels hold it: a power of two, at least 2."""
    return max(2, next_pow2(n_state))


def _segment_chunks(n_chunks: int, programs: int, target: int) -> int:
    """Checkpoint intervals per segment: the whole sequence, unless there are fewer than ``target``
    programs; then enough segments for about ``target`` programs, each at least four intervals long."""
    if programs >= target or n_chunks < 8:
        return n_chunks
    wanted = max(1, min(-(-target // programs), n_chunks // 4))
    return -(-n_chunks // wanted)


@functools.lru_cache(maxsize=256)
def auto_plan(problem: Problem, sms: int, bwd_kind: str = "token", interpreted: bool = False) -> Plan:
    """The automatic plan on a device with ``sms`` multiprocessors (0: no segments). Few channels and a
    long sequence: segments for about four programs per SM (the backward's programs hold ~8 channels,
    the forward's one).

    ``chunk`` is the checkpoint interval. With the token backward, checkpoints take b·d·n·l/chunk fp32
    values and its scratch b·d·n·chunk, so about sqrt(l) tokens keep both small (32 at l ≈ 1000). The
    tile backward works a checkpoint interval at a time and its scratch is b·d·chunk values (no n):
    chunk = up to 256 tokens. Under the interpreter: 4-channel blocks, one warp, three scratch slots."""
    target = 4 * sms
    sequences = problem.batch * problem.n_dir
    if bwd_kind == "tile":
        chunk = min(MAX_BWD_TILE, max(2, next_pow2(problem.seq_len)))
        channels_per_program = 4
    else:
        chunk = min(64, max(8, next_pow2(int(math.sqrt(problem.seq_len)))))
        chunk = min(chunk, max(2, next_pow2(problem.seq_len)))
        channels_per_program = 8
    n_chunks = -(-problem.seq_len // chunk)
    bwd_programs = sequences * problem.n_groups * -(-problem.chans_per_group // channels_per_program)
    seg_chunks = _segment_chunks(n_chunks, bwd_programs, target)
    fwd_seg_chunks = _segment_chunks(n_chunks, sequences * problem.n_channels, target)
    return Plan(chunk=chunk, seg_len=seg_chunks * chunk, block_d=4 if interpreted else None,
                num_warps=1 if interpreted else 4, fwd_seg_len=fwd_seg_chunks * chunk, bwd_kind=bwd_kind,
                bwd_slots=INTERPRETED_BWD_SLOTS if interpreted else None)


def plan_for(problem: Problem, sms: int, bwd_kind: str, overrides: PlanOverrides | None = None,
             interpreted: bool = False) -> Plan:
    """The automatic plan with what ``overrides`` fixes. Segments are counted in checkpoint intervals, so a
    fixed ``chunk`` or segment count re-cuts them (one segment unless ``seg_chunks`` is given); fixing only
    the backward or the block keeps the automatic segments (the long-l regime stays split)."""
    plan = auto_plan(problem, sms, bwd_kind, interpreted)
    if overrides is None:
        return plan
    fields = {f.name: getattr(overrides, f.name) for f in dataclasses.fields(overrides)
              if getattr(overrides, f.name) is not None}
    if {"chunk", "seg_chunks", "fwd_seg_chunks"} & fields.keys():
        chunk = fields.pop("chunk", plan.chunk)
        seg_chunks = fields.pop("seg_chunks", None) or -(-problem.seq_len // chunk)
        fwd_seg_chunks = fields.pop("fwd_seg_chunks", None)
        fields.update(chunk=chunk, seg_len=chunk * seg_chunks,
                      fwd_seg_len=chunk * fwd_seg_chunks if fwd_seg_chunks else 0)
    return replace(plan, **fields)


# ---------------------------------------------------------------------------------------------
# The token backward's variants: its per-token loop with or without prefetching, or the split form.
# The kernel's ``variants`` argument (a mask of these bits) keys the autotuner by what a launch allows.
# ---------------------------------------------------------------------------------------------
SPLIT_BIT = 1 << 2


def variant_bit(prefetch: bool, split: bool = False) -> int:
    """Bit of one backward variant in the kernel's ``variants`` mask."""
    return SPLIT_BIT if split else 1 << int(prefetch)


def variant_mask(plan: Plan) -> int:
    """The backward variants a launch lets the autotuner try: what the plan forces, else every one.
    Forcing the split backward allows nothing else; forcing the prefetch either way leaves it out."""
    if plan.bwd_split:
        return SPLIT_BIT
    prefetch = (plan.bwd_prefetch,) if plan.bwd_prefetch is not None else (False, True)
    mask = sum(variant_bit(p) for p in prefetch)
    if plan.bwd_split is None and plan.bwd_prefetch is None:
        mask |= SPLIT_BIT
    return mask


def split_sub(values_per_thread: float, chunk: int, local_pass: bool = False) -> int:
    """Sub-block length of the split backward for a config holding ``values_per_thread`` state values. The
    local pass (the long-l regime's first, adjoint alone) builds no tiles: the longest, for the most loads
    in flight."""
    if local_pass:
        sub = max(SPLIT_SUBS)
    else:
        sub = int(min(max(SPLIT_TILE_VALUES / max(values_per_thread, 1e-9), min(SPLIT_SUBS)), max(SPLIT_SUBS)))
    return min(next_pow2(sub), next_pow2(chunk))


# ---------------------------------------------------------------------------------------------
# The token backward's scratch: an interval's states per running program, in slots handed on
# ---------------------------------------------------------------------------------------------
def slot_rows(plan: Plan, split: bool | None = None) -> int:
    """(channel, state) rows of one scratch slot, as the kernel's ``slot_rows`` counts them: an interval's
    states, and for the split backward also the state before it and a sub-block's adjoint (at most
    max(SPLIT_SUBS) + 1 rows). ``split`` None: the longest the plan allows."""
    if split is None:
        split = bool(variant_mask(plan) & SPLIT_BIT)
    return plan.chunk + min(max(SPLIT_SUBS), next_pow2(plan.chunk)) + 2 if split else plan.chunk


def scratch_slots(scratch_values: int, plan: Plan, n_state: int, block_d: int, split: bool = False) -> int:
    """Slots of a ``scratch_values`` scratch for programs of ``block_d`` channels (as the kernel counts them;
    ``split``: for the split backward at its longest sub-block)."""
    return scratch_values // (slot_rows(plan, split) * block_d * block_n(n_state))


def token_bwd_scratch(problem: Problem, plan: Plan, device: torch.device) -> int:
    """fp32 values of the token backward's scratch: rows for every program (one per channel block, batch
    element, direction and segment), unless more than the programs resident at once can use
    (``REGS_PER_STATE_VALUE``) or than ``plan.bwd_slots`` programs of the widest block hold. Sized for
    the longest slot a backward variant the plan allows may use (:func:`slot_rows`)."""
    per_channel = slot_rows(plan) * block_n(problem.n_state)  # one channel's rows for one interval
    block_ds = (plan.block_d,) if plan.block_d else BWD_BLOCK_DS
    sequences = problem.batch * problem.n_dir * plan.n_seg(problem.seq_len)
    blocks = lambda bd: problem.n_groups * -(-problem.chans_per_group // bd)  # noqa: E731
    every_program = max(blocks(bd) * bd for bd in block_ds) * sequences * per_channel
    one_program = max(block_ds) * per_channel
    if plan.bwd_slots:
        cap = plan.bwd_slots * one_program
    elif device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        regs = getattr(props, "regs_per_multiprocessor", None) or 65536
        cap = props.multi_processor_count * (regs // REGS_PER_STATE_VALUE) * slot_rows(plan)
    else:
        cap = every_program
    return max(one_program, min(every_program, cap))
