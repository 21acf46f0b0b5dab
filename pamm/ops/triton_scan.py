"""Triton backend of the selective scan: no extension to build, forward and backward kernels.

Why it exists: mamba-ssm's CUDA kernel needs a compiled extension matching the local torch/CUDA
(a ~3 minute build at best, often a failed one), and PAMM's four scan orders cost more in the
gather / scatter-add around the scan than in the scan itself (reference §1.11). This module gives

* :func:`selective_scan_triton`: mamba-ssm semantics and layouts, fp32/bf16/fp16 inputs, fp32 state;
* :func:`multi_direction_scan_triton`: K scan orders read and written *through* their permutations
  inside the kernel, the K outputs merged (sum or mean) in row-major order, forward and backward,
  with no gathered copies of u, Δ or the output (B and C, n ≪ d rows, are copied into each
  direction's scan order first, so that the kernels read them in contiguous rows: ``_bc_order``);
* :func:`triton_available`: whether the backend can be used, and why not.

Kernels live in :mod:`pamm.ops.triton_kernels` (imported lazily, so importing this module never
needs triton). They run compiled on CUDA tensors, or on CPU tensors under the Triton interpreter when
``TRITON_INTERPRET=1`` was set before the kernels were first used (that is how the tests run).

Memory: the forward saves only the inputs plus the state before every ``chunk``-th token,
``b·K·d·n·ceil(l/chunk)`` fp32 values. The default (token) backward recomputes the states one interval
at a time into scratch rows of ``d_block·n·rows`` values per program (``chunk`` ≈ sqrt(l): 32 at PAMM's
l ≈ 1000; rows = chunk, or chunk + 10 where the split backward may run), with rows only for the programs
that can run at once, handed from program to program (at most ``b·K·d·n·rows`` values; 91 MB on an H200
at S3 and S4 instead of 528 and 440 MB);
the tile backward (``$PAMM_TRITON_BWD=tile``) works on 256-token intervals with a scratch of
``b·K·d·chunk`` values (at PAMM's PASCAL shape S4: 84 MB of checkpoints and scratch instead of 670).
Gradients of B and C are accumulated with fp32 atomics, so they (and merged outputs) are not bitwise
deterministic, as with the mamba-ssm kernel.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from dataclasses import dataclass, replace
from typing import Iterator

import torch

__all__ = ["triton_available", "selective_scan_triton", "multi_direction_scan_triton"]

try:  # guarded: the rest of pamm must import without triton
    import triton  # noqa: F401

    _TRITON_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install raising anything else
    triton = None
    _TRITON_ERROR = f"triton cannot be imported ({type(exc).__name__}: {exc})"


def triton_available() -> tuple[bool, str]:
    """``(True, "triton <version>")`` when the backend can be used, else ``(False, reason)``."""
    if triton is None:
        return False, _TRITON_ERROR or "triton is not installed"
    return True, f"triton {triton.__version__}"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# Autotuning results are kept in Triton's cache directory (keyed by GPU target, kernel source, problem
# key and dtypes, and the candidate configs), so each shape is tuned once per machine, not per process.
# Older tritons have no cache_results: they tune once per process.
_DISK_CACHE = ({"cache_results": True}
               if triton is not None and "cache_results" in inspect.signature(triton.autotune).parameters else {})


_BWD_BLOCK_DS = (2, 4, 8, 16, 32)  # the token backward's autotuned channel blocks


@functools.lru_cache(maxsize=1)
def _kernels():
    """Import the kernels once and wrap them with autotuning (a fixed config under the interpreter)."""
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(f"the triton selective-scan backend is unavailable: {why}")
    from pamm.ops import triton_kernels as tk

    interpreted = _interpreting()
    if interpreted:
        fwd = bwd = bwd_tile = None
    else:
        key = ["n_channels", "chans_per_group", "n_state", "seq_len", "n_seg", "LOCAL_PASS", "HAS_PERM",
               "BC_SCAN_ORDER", "CHUNK"]
        fwd = triton.autotune(
            configs=[triton.Config({"BLOCK_D": bd}, num_warps=nw) for bd in (1, 2, 4) for nw in (2, 4, 8)],
            key=key, prune_configs_by={"early_config_prune": _prune_fwd_configs}, reset_to_zero=["out_ptr"],
            **_DISK_CACHE,
        )(tk.scan_fwd_kernel)
        bwd = triton.autotune(
            configs=_bwd_configs(),
            key=key + ["variants"], prune_configs_by={"early_config_prune": _prune_bwd_configs},
            reset_to_zero=["du_ptr", "ddelta_ptr", "dB_ptr", "dC_ptr", "slot_turn_ptr"], **_DISK_CACHE,
        )(tk.scan_bwd_kernel)
        bwd_tile = triton.autotune(
            configs=[triton.Config({"BLOCK_D": bd}, num_warps=nw) for bd in (1, 2, 4, 8) for nw in (2, 4, 8)],
            key=key, prune_configs_by={"early_config_prune": _prune_bwd_tile_configs},
            reset_to_zero=["du_ptr", "ddelta_ptr", "dB_ptr", "dC_ptr"], **_DISK_CACHE,
        )(tk.scan_bwd_tile_kernel)
    return {"module": tk, "interpreted": interpreted, "fwd_tuned": fwd, "bwd_tuned": bwd, "bwd_tile_tuned": bwd_tile}


def _autotuning() -> bool:
    """``PAMM_TRITON_AUTOTUNE=0`` keeps one heuristic config per kernel: no tuning runs, fast first calls
    (the GPU tests use it; timings should not)."""
    return os.environ.get("PAMM_TRITON_AUTOTUNE", "1").lower() not in ("0", "false", "no", "off")


def _pruned(configs, args: dict, per_thread, lo: float, hi: float, best: float, widest_min: int):
    """Configs whose channel block fits a group and whose tile gives ``lo..hi`` values per thread;
    only the one nearest ``best`` values per thread when autotuning is off."""
    widest = max(widest_min, triton.next_power_of_2(int(args["chans_per_group"])))
    fitting = [c for c in configs if c.kwargs["BLOCK_D"] <= widest] or configs
    kept = [c for c in fitting if lo <= per_thread(c) <= hi]
    if kept and _autotuning():
        return kept
    return [min(kept or fitting, key=lambda c: (abs(per_thread(c) - best), c.kwargs["BLOCK_D"]))]


def _prune_fwd_configs(configs, named_args, **kwargs):
    """The forward holds (BLOCK_D, CHUNK) token tiles: 4–16 values per thread."""
    args = {**named_args, **kwargs}
    return _pruned(configs, args, lambda c: c.kwargs["BLOCK_D"] * int(args["CHUNK"]) / (32 * c.num_warps),
                   4, 16, 8, 1)


def _prune_bwd_tile_configs(configs, named_args, **kwargs):
    """The tile backward holds a dozen (BLOCK_D, CHUNK) token tiles: 2–8 values per thread of each."""
    args = {**named_args, **kwargs}
    return _pruned(configs, args, lambda c: c.kwargs["BLOCK_D"] * int(args["CHUNK"]) / (32 * c.num_warps),
                   2, 8, 4, 1)


def _variant_bit(prefetch: bool, batch_io: bool, split: bool = False) -> int:
    """Bit of one backward variant in the kernel's ``variants`` mask (``split`` takes neither of the others)."""
    return 1 << 4 if split else 1 << (2 * int(prefetch) + int(batch_io))


def _config_bit(c) -> int:
    """:func:`_variant_bit` of an autotuning config."""
    return _variant_bit(c.kwargs.get("PREFETCH", False), c.kwargs.get("BATCH_IO", False), c.kwargs.get("SPLIT", False))


def _variant_mask(plan: "_Plan", local_pass: bool = False) -> int:
    """The backward variants a launch lets the autotuner try: what the plan forces, else those that can
    win. On an H200 (2026-12-04, ``results/gpu/2026-12-04_h200``) the batched writes won at every shape
    and the per-token writes (plain, prefetch alone) never, so only the batched ones are tuned, with and
    without prefetching; the long-l regime's local pass writes no gradients, so there batching is moot
    and only the per-token loops are tried. Half the candidates: half the autotuning. The split backward
    (not yet timed; in the local pass its unrolled adjoint loop alone) is tried beside them; forcing it
    (``bwd_split=True``) allows nothing else, forcing another variant leaves it out."""
    if plan.bwd_split:
        return _variant_bit(False, False, split=True)
    prefetch = (plan.bwd_prefetch,) if plan.bwd_prefetch is not None else (False, True)
    batch_io = (plan.bwd_batch_io,) if plan.bwd_batch_io is not None else (not local_pass,)
    mask = sum(_variant_bit(p, b) for p in prefetch for b in batch_io)
    forced_other = plan.bwd_split is False or plan.bwd_prefetch is not None or plan.bwd_batch_io is not None
    if not forced_other:
        mask |= _variant_bit(False, False, split=True)
    return mask


# Register-capped twins of the batched-writes backward configs. The kernel is stall-bound (results/gpu/
# 2026-12-04_h200/README.md: ~30 % of the issue rate) and its tuned configs ran at 8 warps per SM. Compiled
# for sm_90 (triton 3.6 and 3.9; S2–S4 and PAMM's P8), the configs holding 4 state values per thread take
# up to 234 registers (8–9 warps/SM); capped at 168 they fit 12 warps/SM with 0–116 bytes of spill stores
# (P8's (32 channels, 4 warps, prefetch): 199–201 registers uncapped, 168 and no spill capped). At 8 values
# per thread the cap spills 200–360 bytes, and at 2 or fewer the kernel needs under 168 anyway, so only
# the 4-value twins are tried; the autotuner keeps whichever runs faster.
_BWD_CAPPED_REGS = 168
_BWD_CAPPED_VALUES_PER_THREAD = 4


# The split backward's sub-blocks: SUB tokens' (BLOCK_D, SUB, BLOCK_N) tiles, _SPLIT_TILE_VALUES values per
# thread each (h_{t-1}, h_t, two adjoint rows, G and products: about six live at once), 2..8 tokens (each
# token more is a scratch row more per slot).
_SPLIT_TILE_VALUES = 16
_SPLIT_SUBS = (2, 4, 8)


def _split_sub(values_per_thread: float, chunk: int, local_pass: bool = False) -> int:
    """Sub-block length of the split backward for a config holding ``values_per_thread`` state values. The
    local pass (the long-l regime's first, adjoint alone) builds no tiles: the longest, for the most loads
    in flight."""
    if local_pass:
        sub = max(_SPLIT_SUBS)
    else:
        sub = int(min(max(_SPLIT_TILE_VALUES / max(values_per_thread, 1e-9), min(_SPLIT_SUBS)), max(_SPLIT_SUBS)))
    return min(_next_pow2(sub), _next_pow2(chunk))


def _bwd_configs() -> list:
    """The token backward's autotuning candidates: every channel block, warp count and variant, the
    batched-writes ones again capped at ``_BWD_CAPPED_REGS``, and the split backward at every sub-block
    length (``_prune_bwd_configs`` narrows them per call)."""
    configs = [triton.Config({"BLOCK_D": bd, "PREFETCH": pf, "BATCH_IO": bio, "SPLIT": False, "SUB": 1},
                             num_warps=nw)
               for bd in _BWD_BLOCK_DS for nw in (1, 2, 4) for pf in (False, True) for bio in (False, True)]
    capped = [triton.Config(dict(c.kwargs), num_warps=c.num_warps, maxnreg=_BWD_CAPPED_REGS)
              for c in configs if c.kwargs["BATCH_IO"]]
    split = [triton.Config({"BLOCK_D": bd, "PREFETCH": False, "BATCH_IO": False, "SPLIT": True, "SUB": sub},
                           num_warps=nw)
             for bd in _BWD_BLOCK_DS for nw in (1, 2, 4) for sub in _SPLIT_SUBS]
    return configs + capped + split


def _prune_bwd_configs(configs, named_args, **kwargs):
    """The backward holds (BLOCK_D, n) state tiles: 1–8 values per thread; with ``BATCH_IO`` also an
    interval's (n, CHUNK) dB/dC rows and (BLOCK_D, CHUNK) du/dΔ/dz rows: at most 64 values per thread.
    Only the variants the caller allows; the register-capped twins (``_BWD_CAPPED_REGS``) only at 4 state
    values per thread and only when autotuning; the split backward only at its sub-block length
    (``_split_sub``). With autotuning off, one uncapped config of the last allowed variant (prefetch and
    batched writes, when allowed), the split backward only when nothing else is."""
    args = {**named_args, **kwargs}
    mask = int(args.get("variants", 0b1111))
    allowed = [c for c in configs if mask & _config_bit(c)]
    n, chunk = int(args["BLOCK_N"]), int(args["CHUNK"])
    values_per_thread = lambda c: c.kwargs["BLOCK_D"] * n / (32 * c.num_warps)  # noqa: E731
    allowed = [c for c in allowed if getattr(c, "maxnreg", None) is None
               or (_autotuning() and values_per_thread(c) == _BWD_CAPPED_VALUES_PER_THREAD)]
    local = bool(args.get("LOCAL_PASS", False))
    allowed = [c for c in allowed
               if not c.kwargs.get("SPLIT") or c.kwargs["SUB"] == _split_sub(values_per_thread(c), chunk, local)]

    def rows_fit(c) -> bool:
        rows = (2 * n + 3 * c.kwargs["BLOCK_D"]) * chunk / (32 * c.num_warps)
        return not c.kwargs.get("BATCH_IO", False) or rows <= 64

    allowed = [c for c in allowed if rows_fit(c)] or allowed
    if not _autotuning():
        measured = [c for c in allowed if not c.kwargs.get("SPLIT")] or allowed
        last = max(measured, key=_config_bit)
        allowed = [c for c in measured if _config_bit(c) == _config_bit(last)]
    return _pruned(allowed, args, values_per_thread, 1, 8, 2, 2)


# ---------------------------------------------------------------------------------------------
# Problem description and plan
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Problem:
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
class _Plan:
    """How the sequence is cut: ``seg_len`` tokens per program, a checkpoint (and a backward scratch
    interval) every ``chunk`` tokens. The forward may cut segments of its own (``fwd_seg_len``: its
    programs are single channels, so it needs fewer) and walks them in tiles of ``tile`` tokens."""

    chunk: int
    seg_len: int
    block_d: int | None  # None: autotuned
    num_warps: int
    tile: int = 0  # 0: the forward segment, up to _MAX_TILE tokens
    fwd_seg_len: int = 0  # 0: seg_len
    bwd_kind: str = "token"  # "token": scan_bwd_kernel; "tile": scan_bwd_tile_kernel (chunk = its tile)
    bwd_prefetch: bool | None = None  # backward variant (scan_bwd_kernel's PREFETCH); None: autotuned
    bwd_batch_io: bool | None = None  # backward variant (BATCH_IO); None: autotuned
    bwd_split: bool | None = None  # the split backward (SPLIT); True: only it, False: never, None: autotuned
    bwd_slots: int | None = None  # token backward's scratch slots (at the widest block); None: the resident programs'

    def n_chunks(self, seq_len: int) -> int:
        return -(-seq_len // self.chunk)

    def n_seg(self, seq_len: int) -> int:
        return -(-seq_len // self.seg_len)

    def forward(self, seq_len: int) -> "_Plan":
        """The plan the forward kernel runs with (its segments and tile)."""
        seg_len = self.fwd_seg_len or self.seg_len
        tile = self.tile or min(_MAX_TILE, max(2, _next_pow2(min(seg_len, seq_len))))
        return replace(self, seg_len=seg_len, tile=tile, fwd_seg_len=seg_len)

    def carries(self, seq_len: int) -> bool:
        """Whether the forward carries a state between tiles (several tiles or segments)."""
        return self.seg_len > self.tile or self.n_seg(seq_len) > 1


_PLAN_OVERRIDE: dict | None = None


@contextlib.contextmanager
def _force_plan(**fields) -> Iterator[None]:
    """Testing (and benchmarking) hook: fix ``chunk``, ``seg_chunks`` (chunks per segment),
    ``fwd_seg_chunks`` (the same for the forward alone), ``tile``, ``block_d``, ``num_warps``, the
    backward, ``bwd_kind`` ("token" or "tile") and its variant, ``bwd_prefetch`` / ``bwd_batch_io`` /
    ``bwd_split``, the token backward's scratch slots ``bwd_slots``, the multi-direction path ``multi_path``
    (see :func:`_multi_path`), and the fused call's ``bc_order`` ("scan" or "token", see :func:`_bc_order`)."""
    global _PLAN_OVERRIDE
    previous, _PLAN_OVERRIDE = _PLAN_OVERRIDE, dict(fields)
    try:
        yield
    finally:
        _PLAN_OVERRIDE = previous


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _block_n(n_state: int) -> int:
    return max(2, _next_pow2(n_state))


_MAX_TILE = 1024


def _segment_chunks(n_chunks: int, programs: int, target: int) -> int:
    """Checkpoint intervals per segment: the whole sequence, unless there are fewer than ``target``
    programs; then enough segments for about ``target`` programs, each at least four intervals long."""
    if programs >= target or n_chunks < 8:
        return n_chunks
    wanted = max(1, min(-(-target // programs), n_chunks // 4))
    return -(-n_chunks // wanted)


BWD_KIND_ENV_VAR = "PAMM_TRITON_BWD"
BWD_KINDS = ("token", "tile")
_MAX_BWD_TILE = 256


def _env_choice(var: str, choices: tuple[str, ...], forced: str | None = None) -> str:
    """``forced`` (a ``_force_plan`` field), else ``$var`` (blank: the first choice); one of ``choices``."""
    value = forced or os.environ.get(var, "").strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"${var}={value!r} is not one of {list(choices)}")
    return value


def _bwd_kind() -> str:
    """``$PAMM_TRITON_BWD``: ``token`` (default, the faster) or ``tile`` (the leaner in memory; both measured
    on an H200, ``results/gpu/2026-12-04_h200``)."""
    return _env_choice(BWD_KIND_ENV_VAR, BWD_KINDS)


BC_ORDER_ENV_VAR = "PAMM_TRITON_BC_ORDER"
BC_ORDERS = ("scan", "token")


def _bc_order() -> str:
    """How the fused multi-direction call hands B and C to the kernels (``$PAMM_TRITON_BC_ORDER``, or
    ``_force_plan(bc_order=...)``): ``scan`` (default) gathers them into each direction's scan order
    first, so that every kernel reads them, and adds their gradients, in contiguous rows; ``token`` reads
    them through the permutation inside the kernels. B and C are (b, G, n, L) with n ≪ d, so the K
    ordered copies are small (PAMM NYUD, batch 8: 2 M values each), unlike gathered (K·b, d, L) copies
    of u and Δ; in the forward tile kernel B and C are 2n of the 2n + 2 token rows a program reads."""
    return _env_choice(BC_ORDER_ENV_VAR, BC_ORDERS, (_PLAN_OVERRIDE or {}).get("bc_order"))


MULTI_PATH_ENV_VAR = "PAMM_TRITON_MULTI"
MULTI_PATHS = ("auto", "fused", "gather")


def _multi_path() -> str:
    """How :func:`pamm.ops.multi_direction_scan` runs K scan orders on this backend (``$PAMM_TRITON_MULTI``):
    ``fused`` (:func:`multi_direction_scan_triton`), ``gather`` (gather → this backend's plain scan →
    merge, the other backends' path), or ``auto`` (default): on CUDA, time both once per problem and keep
    the faster (on an H200 the fused call measured 2.5–2.7× the gather path's time with the mamba-ssm
    kernel, whose scan is itself 1.3–1.8× faster than this backend's: results/gpu/2026-12-04_h200);
    elsewhere ``fused``. ``_force_plan(multi_path=...)`` overrides the variable."""
    return _env_choice(MULTI_PATH_ENV_VAR, MULTI_PATHS, (_PLAN_OVERRIDE or {}).get("multi_path"))


def _in_scan_order(x: torch.Tensor, perm: torch.Tensor, per_dir: bool) -> torch.Tensor:
    """B or C, (b, G, n, L) shared or (b, K, G, n, L) per direction, as (b, K, G, n, L) in each direction's
    scan order: step t of direction k at ``[..., k, :, :, t]``. Differentiable (torch's gather and index
    backward add the K directions' gradients back)."""
    index = perm.long()
    if per_dir:
        return x.gather(-1, index[None, :, None, None, :].expand_as(x)).contiguous()
    return x[..., index].movedim(-2, 1).contiguous()  # (b, G, n, K, L) -> (b, K, G, n, L)


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 0 elsewhere (the interpreter needs no programs per SM)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


@functools.lru_cache(maxsize=256)
def _auto_plan(problem: _Problem, device: torch.device, bwd_kind: str = "token") -> _Plan:
    """Many channels: one segment per sequence. Few channels and long l: split l so that there are
    about four programs per SM (the backward's programs hold ~8 channels, the forward's one).

    ``chunk`` is the checkpoint interval. With the token backward, checkpoints take b·d·n·l/chunk fp32
    values and its scratch b·d·n·chunk, so about sqrt(l) tokens keep both small (32 at l ≈ 1000). The
    tile backward works a checkpoint interval at a time and its scratch is b·d·chunk values (no n):
    chunk = up to 256 tokens."""
    target = 4 * _sm_count(device)
    sequences = problem.batch * problem.n_dir
    if bwd_kind == "tile":
        chunk = min(_MAX_BWD_TILE, max(2, _next_pow2(problem.seq_len)))
        channels_per_program = 4
    else:
        chunk = min(64, max(8, _next_pow2(int(math.sqrt(problem.seq_len)))))
        chunk = min(chunk, max(2, _next_pow2(problem.seq_len)))
        channels_per_program = 8
    n_chunks = -(-problem.seq_len // chunk)
    bwd_programs = sequences * problem.n_groups * -(-problem.chans_per_group // channels_per_program)
    seg_chunks = _segment_chunks(n_chunks, bwd_programs, target)
    fwd_seg_chunks = _segment_chunks(n_chunks, sequences * problem.n_channels, target)
    interpreted = _kernels()["interpreted"]
    return _Plan(chunk=chunk, seg_len=seg_chunks * chunk, block_d=4 if interpreted else None,
                 num_warps=1 if interpreted else 4, fwd_seg_len=fwd_seg_chunks * chunk, bwd_kind=bwd_kind,
                 bwd_slots=_INTERPRETED_BWD_SLOTS if interpreted else None)


def _plan_for(problem: _Problem, device: torch.device) -> _Plan:
    """The automatic plan, with what ``_force_plan`` fixes. Segments are counted in checkpoint intervals, so
    a forced ``chunk`` or segment count re-cuts them (one segment unless ``seg_chunks`` is given); forcing
    only the backward or the block keeps the automatic segments (the long-l regime stays split)."""
    kind = (_PLAN_OVERRIDE or {}).get("bwd_kind") or _bwd_kind()
    plan = _auto_plan(problem, device, kind)
    if not _PLAN_OVERRIDE:
        return plan
    fields = dict(_PLAN_OVERRIDE)
    fields.pop("bwd_kind", None)
    fields.pop("bc_order", None)  # not part of the plan: the fused entry reads it (_bc_order)
    fields.pop("multi_path", None)  # nor this: pamm.ops.multi_direction_scan reads it (_multi_path)
    if {"chunk", "seg_chunks", "fwd_seg_chunks"} & fields.keys():
        chunk = fields.pop("chunk", plan.chunk)
        seg_chunks = fields.pop("seg_chunks", None) or -(-problem.seq_len // chunk)
        fwd_seg_chunks = fields.pop("fwd_seg_chunks", None)
        fields.update(chunk=chunk, seg_len=chunk * seg_chunks,
                      fwd_seg_len=chunk * fwd_seg_chunks if fwd_seg_chunks else 0)
    return replace(plan, **fields)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _check_device(*tensors: torch.Tensor) -> None:
    kernels = _kernels()
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"all inputs must be on one device, got {device} and {t.device}")
    if device.type == "cpu" and not kernels["interpreted"]:
        raise RuntimeError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before its "
                           "first use, to run the kernels on CPU under the Triton interpreter)")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"the triton backend does not run on {device.type} tensors")


def _common_args(problem: _Problem, plan: _Plan) -> dict:
    return dict(
        n_channels=problem.n_channels, chans_per_group=problem.chans_per_group, n_groups=problem.n_groups,
        n_state=problem.n_state, seq_len=problem.seq_len, n_dir=problem.n_dir,
        n_seg=plan.n_seg(problem.seq_len), seg_len=plan.seg_len, n_chunks=plan.n_chunks(problem.seq_len),
        out_scale=problem.out_scale,
        U_PER_DIR=problem.u_per_dir, DT_PER_DIR=problem.delta_per_dir, A_PER_DIR=problem.A_per_dir,
        B_PER_DIR=problem.B_per_dir, C_PER_DIR=problem.C_per_dir, DB_PER_DIR=problem.db_per_dir,
        HAS_D=problem.has_D, HAS_Z=problem.has_z, HAS_BIAS=problem.has_bias, SOFTPLUS=problem.softplus,
        HAS_PERM=problem.has_perm, BC_SCAN_ORDER=problem.bc_scan_order, BLOCK_N=_block_n(problem.n_state),
        CHUNK=plan.chunk,
    )


def _launch(kind: str, problem: _Problem, plan: _Plan, args: dict) -> None:
    """Run the forward or backward kernel: autotuned when compiled, the plan's block otherwise."""
    kernels = _kernels()
    n_seg = plan.n_seg(problem.seq_len)
    blocks = lambda block_d: problem.n_groups * -(-problem.chans_per_group // block_d)  # noqa: E731
    tuned = kernels[f"{kind}_tuned"]
    if tuned is not None and plan.block_d is None:
        grid = lambda meta: (blocks(meta["BLOCK_D"]), problem.batch, problem.n_dir * n_seg)  # noqa: E731
        tuned[grid](**args)
    else:
        block_d = plan.block_d or 4
        raw = getattr(kernels["module"], f"scan_{kind}_kernel")
        variant = {}
        if kind == "bwd" and plan.bwd_split:  # untuned: the forced variant
            per_thread = block_d * args["BLOCK_N"] / (32 * plan.num_warps)
            sub = _split_sub(per_thread, plan.chunk, args["LOCAL_PASS"])
            variant = dict(PREFETCH=False, BATCH_IO=False, SPLIT=True, SUB=sub)
        elif kind == "bwd":  # else prefetch and batched writes
            variant = dict(PREFETCH=True if plan.bwd_prefetch is None else plan.bwd_prefetch,
                           BATCH_IO=True if plan.bwd_batch_io is None else plan.bwd_batch_io, SPLIT=False, SUB=1)
        raw[(blocks(block_d), problem.batch, problem.n_dir * n_seg)](**args, **variant, BLOCK_D=block_d,
                                                                    num_warps=plan.num_warps)


# Every compiled config of scan_bwd_kernel's main pass holds at least 16 registers per state value a
# thread owns (results/gpu/2026-12-04_h200/prewarm_compile.csv, triton 3.6, S1–S4 single and fused:
# 16–168; tests/test_triton_compile.py checks it for the installed triton). So the programs resident on
# one SM own at most regs_per_SM / 16 state values, and scratch rows for that many per SM serve every
# program that can run at once.
_REGS_PER_STATE_VALUE = 16
_INTERPRETED_BWD_SLOTS = 3  # fewer slots than programs: the interpreter tests hand slots on


def _token_bwd_scratch(problem: _Problem, plan: _Plan, device: torch.device) -> int:
    """fp32 values of the token backward's scratch: rows for every program (one per channel block, batch
    element, direction and segment), unless more than the programs resident at once can use
    (``_REGS_PER_STATE_VALUE``) or than ``plan.bwd_slots`` programs of the widest block hold. Sized for
    the longest slot a backward variant the plan allows may use (:func:`_slot_rows`)."""
    per_channel = _slot_rows(plan) * _block_n(problem.n_state)  # one channel's rows for one interval
    block_ds = (plan.block_d,) if plan.block_d else _BWD_BLOCK_DS
    sequences = problem.batch * problem.n_dir * plan.n_seg(problem.seq_len)
    blocks = lambda bd: problem.n_groups * -(-problem.chans_per_group // bd)  # noqa: E731
    every_program = max(blocks(bd) * bd for bd in block_ds) * sequences * per_channel
    one_program = max(block_ds) * per_channel
    if plan.bwd_slots:
        cap = plan.bwd_slots * one_program
    elif device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        regs = getattr(props, "regs_per_multiprocessor", None) or 65536
        cap = props.multi_processor_count * (regs // _REGS_PER_STATE_VALUE) * _slot_rows(plan)
    else:
        cap = every_program
    return max(one_program, min(every_program, cap))


def _slot_rows(plan: _Plan, split: bool | None = None) -> int:
    """(channel, state) rows of one scratch slot, as the kernel's ``_slot_rows`` counts them: an interval's
    states, and for the split backward also the state before it and a sub-block's adjoint (at most
    max(_SPLIT_SUBS) + 1 rows). ``split`` None: the longest the plan allows (the split backward unless it
    is ruled out)."""
    if split is None:
        split = bool(_variant_mask(plan) & _variant_bit(False, False, split=True))
    return plan.chunk + min(max(_SPLIT_SUBS), _next_pow2(plan.chunk)) + 2 if split else plan.chunk


def _scratch_slots(scratch_values: int, plan: _Plan, n_state: int, block_d: int, split: bool = False) -> int:
    """Slots of a ``scratch_values`` scratch for programs of ``block_d`` channels (as the kernel counts them;
    ``split``: for the split backward at its longest sub-block)."""
    return scratch_values // (_slot_rows(plan, split) * block_d * _block_n(n_state))


def _launch_carry(problem: _Problem, A: torch.Tensor, local: torch.Tensor, dt_sum: torch.Tensor,
                  carry: torch.Tensor, reverse: bool) -> None:
    kernels = _kernels()
    block_d = 8
    grid = (-(-problem.n_channels // block_d), problem.batch, problem.n_dir)
    kernels["module"].segment_carry_kernel[grid](
        A, local, dt_sum, carry, problem.n_channels, problem.n_state, problem.n_dir, local.shape[2],
        A_PER_DIR=problem.A_per_dir, REVERSE=reverse, BLOCK_D=block_d, BLOCK_N=_block_n(problem.n_state),
        num_warps=1 if kernels["interpreted"] else 4,
    )


def _scan_forward(problem: _Problem, plan: _Plan, u, delta, A, B, C, D, z, bias, perm, store_ckpt: bool):
    """Output (b, d, L) in u's dtype, and the checkpoints when a backward will follow."""
    device = u.device
    b, d, n, L, K = problem.batch, problem.n_channels, problem.n_state, problem.seq_len, problem.n_dir
    plan = plan.forward(L)
    n_seg, n_chunks = plan.n_seg(L), plan.n_chunks(L)
    f32 = dict(device=device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    atomic_out = K > 1
    out = torch.zeros(b, d, L, **f32) if atomic_out else torch.empty(b, d, L, device=device, dtype=u.dtype)
    ckpt = torch.empty(b, K, n_chunks, d, n, **f32) if store_ckpt else dummy
    args = dict(u_ptr=u, delta_ptr=delta, A_ptr=A, B_ptr=B, C_ptr=C,
                D_ptr=D if D is not None else dummy, z_ptr=z if z is not None else dummy,
                bias_ptr=bias if bias is not None else dummy, perm_ptr=perm if perm is not None else dummy,
                out_ptr=out, ckpt_ptr=ckpt, **_common_args(problem, plan),
                ATOMIC_OUT=atomic_out, MULTI_SEG=n_seg > 1, STORE_CKPT=store_ckpt, CARRY=plan.carries(L))
    args.update(CHUNK=plan.tile, CKPT=plan.chunk)  # the forward walks tiles and drops checkpoints
    if n_seg > 1:
        seg_state = torch.empty(b, K, n_seg, d, n, **f32)
        seg_dtsum = torch.empty(b, K, n_seg, d, **f32)
        seg_init = torch.empty(b, K, n_seg, d, n, **f32)
        seg_args = dict(seg_state_ptr=seg_state, seg_dtsum_ptr=seg_dtsum, seg_init_ptr=seg_init)
        _launch("fwd", problem, plan, {**args, **seg_args, "LOCAL_PASS": True})
        _launch_carry(problem, A, seg_state, seg_dtsum, seg_init, reverse=False)
    else:
        seg_args = dict(seg_state_ptr=dummy, seg_dtsum_ptr=dummy, seg_init_ptr=dummy)
    _launch("fwd", problem, plan, {**args, **seg_args, "LOCAL_PASS": False})
    if out.dtype != u.dtype:
        out = out.to(u.dtype)
    return out, ckpt


def _scan_backward(problem: _Problem, plan: _Plan, dout, ckpt, u, delta, A, B, C, D, z, bias, perm):
    """Gradients (du, dΔ, dA, dB, dC, dD, dz, dbias) in the canonical layouts, fp32 where reduced."""
    device = u.device
    b, d, n, L, K = problem.batch, problem.n_channels, problem.n_state, problem.seq_len, problem.n_dir
    n_seg = plan.n_seg(L)
    f32 = dict(device=device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    du_atomic = K > 1 and not problem.u_per_dir
    ddelta_atomic = K > 1 and not problem.delta_per_dir
    du = torch.zeros(u.shape, **f32) if du_atomic else torch.empty_like(u)
    ddelta = torch.zeros(delta.shape, **f32) if ddelta_atomic else torch.empty_like(delta)
    dB = torch.zeros(B.shape, **f32)
    dC = torch.zeros(C.shape, **f32)
    dz = torch.empty_like(z) if z is not None else None
    dA_part = torch.empty(b, K, n_seg, d, n, **f32)
    dD_part = torch.empty(b, K, n_seg, d, **f32) if D is not None else None
    dbias_part = torch.empty(b, K, n_seg, d, **f32) if bias is not None else None
    args = dict(u_ptr=u, delta_ptr=delta, A_ptr=A, B_ptr=B, C_ptr=C,
                D_ptr=D if D is not None else dummy, z_ptr=z if z is not None else dummy,
                bias_ptr=bias if bias is not None else dummy, perm_ptr=perm if perm is not None else dummy,
                dout_ptr=dout, ckpt_ptr=ckpt, du_ptr=du, ddelta_ptr=ddelta, dB_ptr=dB, dC_ptr=dC,
                dz_ptr=dz if dz is not None else dummy, dA_part_ptr=dA_part,
                dD_part_ptr=dD_part if dD_part is not None else dummy,
                dbias_part_ptr=dbias_part if dbias_part is not None else dummy,
                **_common_args(problem, plan), DU_ATOMIC=du_atomic, DDELTA_ATOMIC=ddelta_atomic,
                MULTI_SEG=n_seg > 1)
    if plan.bwd_kind == "tile":  # one (channel, token) row per channel: the reversed adjoint's way back
        kind = "bwd_tile"
        args["scratch_ptr"] = torch.empty(b * K * n_seg, d, plan.chunk, **f32)
        local_args = {}
    else:  # the states of one checkpoint interval, in slots handed from program to program
        kind = "bwd"
        scratch_values = _token_bwd_scratch(problem, plan, device)
        narrowest = plan.block_d or min(_BWD_BLOCK_DS)
        args["scratch_ptr"] = torch.empty(scratch_values, **f32)
        args["scratch_values"] = scratch_values
        args["slot_turn_ptr"] = torch.zeros(1 + _scratch_slots(scratch_values, plan, n, narrowest), device=device,
                                            dtype=torch.int32)
        args["variants"] = _variant_mask(plan)
        local_args = {"variants": _variant_mask(plan, local_pass=True)}
    if n_seg > 1:
        seg_gstart = torch.empty(b, K, n_seg, d, n, **f32)
        seg_dtsum = torch.empty(b, K, n_seg, d, **f32)
        seg_gcarry = torch.empty(b, K, n_seg, d, n, **f32)
        seg_args = dict(seg_gstart_ptr=seg_gstart, seg_dtsum_ptr=seg_dtsum, seg_gcarry_ptr=seg_gcarry)
        _launch(kind, problem, plan, {**args, **seg_args, **local_args, "LOCAL_PASS": True})
        _launch_carry(problem, A, seg_gstart, seg_dtsum, seg_gcarry, reverse=True)
    else:
        seg_args = dict(seg_gstart_ptr=dummy, seg_dtsum_ptr=dummy, seg_gcarry_ptr=dummy)
    _launch(kind, problem, plan, {**args, **seg_args, "LOCAL_PASS": False})

    def reduce_partials(part: torch.Tensor, per_dir: bool) -> torch.Tensor:
        # [b, K, n_seg, ...] -> [K, ...] per direction, or [...] when shared
        summed = part.sum(dim=(0, 2))
        return summed if per_dir else summed.sum(0)

    dA = reduce_partials(dA_part, problem.A_per_dir)
    dD = reduce_partials(dD_part, problem.db_per_dir) if dD_part is not None else None
    dbias = reduce_partials(dbias_part, problem.db_per_dir) if dbias_part is not None else None
    return du.to(u.dtype), ddelta.to(delta.dtype), dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias


class _TritonScanFn(torch.autograd.Function):
    """Autograd wrapper; inputs arrive in canonical layouts (A, D, bias already fp32)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, perm, problem: _Problem, grad_enabled: bool):
        plan = _plan_for(problem, u.device)
        # needs_input_grad ignores no_grad mode, and forward itself runs with grad disabled.
        needs_grad = grad_enabled and any(ctx.needs_input_grad[:8])
        with _device_guard(u.device):
            out, ckpt = _scan_forward(problem, plan, u, delta, A, B, C, D, z, bias, perm, store_ckpt=needs_grad)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, bias, perm, ckpt)
            ctx.problem, ctx.plan = problem, plan
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, bias, perm, ckpt = ctx.saved_tensors
        with _device_guard(u.device):
            grads = _scan_backward(ctx.problem, ctx.plan, dout.contiguous(), ckpt, u, delta, A, B, C, D, z,
                                   bias, perm)
        return (*grads, None, None, None)


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def _as_f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _check_float(name: str, t: torch.Tensor | None) -> None:
    if t is not None and t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be fp32, bf16 or fp16, got {t.dtype}")


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics (no ``return_last_state``).

    u, delta: (b, d, l); A: (d, n) real; B, C: (b, n, l) or grouped (b, g, n, l) with g | d;
    D, delta_bias: (d,); z: (b, d, l), gating ``out = y * silu(z)``. u/Δ/B/C/z may be fp32, bf16
    or fp16 (mixed is fine); the state and all sums are fp32. Returns (b, d, l) in u's dtype.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (b, d, l), got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, L = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d, n) = ({d}, n), got {tuple(A.shape)}")
    if A.is_complex():
        raise TypeError("complex A is not supported by the triton backend")
    n = A.shape[1]
    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    for name, t in (("B", B4), ("C", C4)):
        if t.dim() != 4 or t.shape[0] != b or t.shape[2:] != (n, L):
            raise ValueError(f"{name} must be (b, n, l) or (b, g, n, l) = ({b}, g, {n}, {L}), got {tuple(t.shape)}")
    G = B4.shape[1]
    if C4.shape[1] != G or d % G:
        raise ValueError(f"B and C must have the same group count g dividing d={d}, got {B4.shape[1]}, {C4.shape[1]}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must be (b, d, l) like u, got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must be ({d},), got {tuple(t.shape)}")
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        _check_float(name, t)
    _check_device(*(t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None))

    problem = _Problem(
        batch=b, n_dir=1, n_channels=d, n_groups=G, n_state=n, seq_len=L,
        u_per_dir=False, delta_per_dir=False, A_per_dir=False, B_per_dir=False, C_per_dir=False,
        db_per_dir=False, has_D=D is not None, has_z=z is not None, has_bias=delta_bias is not None,
        softplus=bool(delta_softplus), has_perm=False, out_scale=1.0,
    )
    return _TritonScanFn.apply(
        u.contiguous(), delta.contiguous(), _as_f32(A), B4.contiguous(), C4.contiguous(), _as_f32(D),
        None if z is None else z.contiguous(), _as_f32(delta_bias), None, problem, torch.is_grad_enabled(),
    )


def multi_direction_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    perm: torch.Tensor,
    inverse: torch.Tensor | None = None,
    merge: str = "sum",
) -> torch.Tensor:
    """K selective scans over K token orders, fused: the kernel reads the row-major inputs through
    ``perm`` and adds each direction's output back at its row-major position, so no gathered
    ``(K·b, d, L)`` copies and no scatter / index-add pass exist, in the forward or the backward.
    (B and C, n ≪ d rows, are put in scan order beforehand unless ``$PAMM_TRITON_BC_ORDER=token``.)

    u, delta: (b, d, L) shared or (b, K, d, L) per direction; A: (d, n) or (K, d, n); D, delta_bias:
    (d,) or (K, d); B, C: (b, G, n, L) or (b, K, G, n, L); perm: (K, L), ``perm[k, t]`` the row-major
    token visited at step t of direction k. ``inverse`` (its inverse permutation) is accepted for
    signature parity and only shape-checked: writing through ``perm`` needs no inverse. Returns the
    merged (b, d, L) output in u's dtype, merge ``"sum"`` or ``"mean"`` over directions.
    """
    if merge not in ("sum", "mean"):
        raise ValueError(f"merge must be 'sum' or 'mean', got {merge!r}")
    if perm.dim() != 2:
        raise ValueError(f"perm must be (K, L), got {tuple(perm.shape)}")
    K, L = perm.shape
    if inverse is not None and inverse.shape != perm.shape:
        raise ValueError(f"inverse must be (K, L) like perm, got {tuple(inverse.shape)}")
    if u.dim() not in (3, 4):
        raise ValueError(f"u must be (b, d, L) or (b, K, d, L), got {tuple(u.shape)}")
    u_per_dir = u.dim() == 4
    b, d = u.shape[0], u.shape[-2]
    expected_u = (b, K, d, L) if u_per_dir else (b, d, L)
    if tuple(u.shape) != expected_u:
        raise ValueError(f"u must be {expected_u}, got {tuple(u.shape)}")
    if tuple(delta.shape) not in ((b, d, L), (b, K, d, L)):
        raise ValueError(f"delta must be ({b}, {d}, {L}) or ({b}, {K}, {d}, {L}), got {tuple(delta.shape)}")
    delta_per_dir = delta.dim() == 4
    A_per_dir = A.dim() == 3
    if A.shape[-2] != d or (A_per_dir and A.shape[0] != K) or A.dim() not in (2, 3):
        raise ValueError(f"A must be (d, n) or (K, d, n) with d={d}, K={K}, got {tuple(A.shape)}")
    if A.is_complex():
        raise TypeError("complex A is not supported by the triton backend")
    n = A.shape[-1]
    B_per_dir, C_per_dir = B.dim() == 5, C.dim() == 5
    G = B.shape[-3]
    for name, t, per_dir in (("B", B, B_per_dir), ("C", C, C_per_dir)):
        expected = (b, K, G, n, L) if per_dir else (b, G, n, L)
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must be (b, G, n, L) or (b, K, G, n, L) = {expected}, got {tuple(t.shape)}")
    if d % G:
        raise ValueError(f"the group count G={G} must divide d={d}")
    db_dims = {t.dim() for t in (D, delta_bias) if t is not None}
    if len(db_dims) > 1:
        raise ValueError("D and delta_bias must both be (d,) or both be (K, d)")
    db_per_dir = db_dims == {2}
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != ((K, d) if db_per_dir else (d,)):
            raise ValueError(f"{name} must be ({d},) or ({K}, {d}), got {tuple(t.shape)}")
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C)):
        _check_float(name, t)
    _check_device(*(t for t in (u, delta, A, B, C, D, delta_bias, perm) if t is not None))

    bc_scan_order = _bc_order() == "scan"
    if bc_scan_order:
        B, C = _in_scan_order(B, perm, B_per_dir), _in_scan_order(C, perm, C_per_dir)
    problem = _Problem(
        batch=b, n_dir=K, n_channels=d, n_groups=G, n_state=n, seq_len=L,
        u_per_dir=u_per_dir, delta_per_dir=delta_per_dir, A_per_dir=A_per_dir,
        B_per_dir=B_per_dir or bc_scan_order, C_per_dir=C_per_dir or bc_scan_order, db_per_dir=db_per_dir,
        has_D=D is not None, has_z=False, has_bias=delta_bias is not None, softplus=bool(delta_softplus),
        has_perm=True, out_scale=1.0 / K if merge == "mean" else 1.0, bc_scan_order=bc_scan_order,
    )
    return _TritonScanFn.apply(
        u.contiguous(), delta.contiguous(), _as_f32(A), B.contiguous(), C.contiguous(), _as_f32(D), None,
        _as_f32(delta_bias), perm.to(torch.int32).contiguous(), problem, torch.is_grad_enabled(),
    )
