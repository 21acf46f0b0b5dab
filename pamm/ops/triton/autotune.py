"""The Triton kernels' autotuning: candidate configs, how they are pruned per call, the one heuristic
config used when autotuning is off, and the autotuned wrappers.

Candidates that no GPU measurement has timed yet are listed in :data:`UNTIMED_CANDIDATES`: the
autotuner tries them beside the measured ones and keeps one only where it is the fastest. Autotuning
results are kept in Triton's cache directory where the installed triton can (keyed by GPU target,
kernel source, problem key and dtypes, and the candidate configs), so each shape is tuned once per
machine rather than once per process.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from pamm.ops.triton.plan import (
    BWD_BLOCK_DS,
    SPLIT_SUBS,
    next_pow2,
    split_sub,
    variant_bit,
)

__all__ = ["UNTIMED_CANDIDATES", "fwd_configs", "bwd_configs", "bwd_tile_configs", "prune_fwd", "prune_bwd",
           "prune_bwd_tile", "heuristic_config", "autotuned", "AUTOTUNE_KEY", "BWD_CAPPED_REGS"]

# Register cap of the capped twins: the token backward is stall-bound and its uncapped configs holding
# 4 state values per thread take up to 234 registers (8-9 warps per SM on sm_90); capped at 168 they fit
# 12 warps per SM with 0-116 bytes of spill stores (benchmarks/triton_compile_report.py). At 8 values per
# thread the cap spills 200-360 bytes and at 2 or fewer the kernel needs under 168 anyway.
BWD_CAPPED_REGS = 168
BWD_CAPPED_VALUES_PER_THREAD = 4

# The candidates no GPU round has timed, by name.
UNTIMED_CANDIDATES = {
    "split backward": "the split token backward (SPLIT): per sub-block the adjoint chain alone, then every "
                      "gradient from (BLOCK_D, SUB, BLOCK_N) tiles at once",
    "register-capped twins": f"twins of the token backward's configs holding {BWD_CAPPED_VALUES_PER_THREAD} state "
                             f"values per thread, capped at {BWD_CAPPED_REGS} registers (maxnreg)",
}

AUTOTUNE_KEY = ["n_channels", "chans_per_group", "n_state", "seq_len", "n_seg", "LOCAL_PASS", "HAS_PERM",
                "BC_SCAN_ORDER", "CHUNK"]


def _config(kwargs: dict, num_warps: int, maxnreg: int | None = None):
    import triton

    if maxnreg is None:
        return triton.Config(kwargs, num_warps=num_warps)
    return triton.Config(kwargs, num_warps=num_warps, maxnreg=maxnreg)


def fwd_configs() -> list:
    return [_config({"BLOCK_D": bd}, nw) for bd in (1, 2, 4) for nw in (2, 4, 8)]


def bwd_tile_configs() -> list:
    return [_config({"BLOCK_D": bd}, nw) for bd in (1, 2, 4, 8) for nw in (2, 4, 8)]


def bwd_configs() -> list:
    """The token backward's candidates: every channel block and warp count of its per-token loop with and
    without prefetching, then the untimed ones (:data:`UNTIMED_CANDIDATES`): register-capped twins of those
    configs and the split backward at every sub-block length (:func:`prune_bwd` narrows them per call)."""
    loop = [_config({"BLOCK_D": bd, "PREFETCH": pf, "SPLIT": False, "SUB": 1}, nw)
            for bd in BWD_BLOCK_DS for nw in (1, 2, 4) for pf in (False, True)]
    capped = [_config(dict(c.kwargs), c.num_warps, BWD_CAPPED_REGS) for c in loop]
    split = [_config({"BLOCK_D": bd, "PREFETCH": False, "SPLIT": True, "SUB": sub}, nw)
             for bd in BWD_BLOCK_DS for nw in (1, 2, 4) for sub in SPLIT_SUBS]
    return loop + capped + split


def _config_bit(c) -> int:
    return variant_bit(c.kwargs.get("PREFETCH", False), c.kwargs.get("SPLIT", False))


def _pruned(configs: list, args: dict, per_thread: Callable, lo: float, hi: float, best: float, widest_min: int,
            autotune: bool) -> list:
    """Configs whose channel block fits a group and whose tile gives ``lo..hi`` values per thread;
    only the one nearest ``best`` values per thread when not autotuning."""
    widest = max(widest_min, next_pow2(int(args["chans_per_group"])))
    fitting = [c for c in configs if c.kwargs["BLOCK_D"] <= widest] or configs
    kept = [c for c in fitting if lo <= per_thread(c) <= hi]
    if kept and autotune:
        return kept
    return [min(kept or fitting, key=lambda c: (abs(per_thread(c) - best), c.kwargs["BLOCK_D"]))]


def prune_fwd(configs: list, args: dict, autotune: bool = True) -> list:
    """The forward holds (BLOCK_D, CHUNK) token tiles: 4-16 values per thread."""
    return _pruned(configs, args, lambda c: c.kwargs["BLOCK_D"] * int(args["CHUNK"]) / (32 * c.num_warps),
                   4, 16, 8, 1, autotune)


def prune_bwd_tile(configs: list, args: dict, autotune: bool = True) -> list:
    """The tile backward holds a dozen (BLOCK_D, CHUNK) token tiles: 2-8 values per thread of each."""
    return _pruned(configs, args, lambda c: c.kwargs["BLOCK_D"] * int(args["CHUNK"]) / (32 * c.num_warps),
                   2, 8, 4, 1, autotune)


def prune_bwd(configs: list, args: dict, autotune: bool = True) -> list:
    """The token backward holds (BLOCK_D, n) state tiles, 1-8 values per thread, and in its main pass an
    interval's (n, CHUNK) dB/dC rows and (BLOCK_D, CHUNK) du/dΔ/dz rows: at most 64 values per thread.
    Only the variants the launch allows (``variants``); the capped twins only at 4 state values per thread
    and only when autotuning; the split backward only at its sub-block length (:func:`split_sub`). Not
    autotuning: one uncapped config of the last allowed variant (prefetching, where allowed), the split
    backward only when nothing else is."""
    mask = int(args.get("variants", 0b111))
    n, chunk = int(args["BLOCK_N"]), int(args["CHUNK"])
    local = bool(args.get("LOCAL_PASS", False))
    values_per_thread = lambda c: c.kwargs["BLOCK_D"] * n / (32 * c.num_warps)  # noqa: E731
    allowed = [c for c in configs if mask & _config_bit(c)]
    allowed = [c for c in allowed if getattr(c, "maxnreg", None) is None
               or (autotune and values_per_thread(c) == BWD_CAPPED_VALUES_PER_THREAD)]
    allowed = [c for c in allowed
               if not c.kwargs.get("SPLIT") or c.kwargs["SUB"] == split_sub(values_per_thread(c), chunk, local)]

    def rows_fit(c) -> bool:
        rows = (2 * n + 3 * c.kwargs["BLOCK_D"]) * chunk / (32 * c.num_warps)
        return local or c.kwargs.get("SPLIT", False) or rows <= 64

    allowed = [c for c in allowed if rows_fit(c)] or allowed
    if not autotune:
        measured = [c for c in allowed if not c.kwargs.get("SPLIT")] or allowed
        last = max(measured, key=_config_bit)
        allowed = [c for c in measured if _config_bit(c) == _config_bit(last)]
    return _pruned(allowed, args, values_per_thread, 1, 8, 2, 2, autotune)


CANDIDATES = {"fwd": (fwd_configs, prune_fwd), "bwd": (bwd_configs, prune_bwd),
              "bwd_tile": (bwd_tile_configs, prune_bwd_tile)}


def heuristic_config(kind: str, args: dict):
    """The one config a launch of ``kind`` ("fwd", "bwd", "bwd_tile") runs with autotuning off."""
    configs, prune = CANDIDATES[kind]
    (config,) = prune(configs(), args, autotune=False)
    return config


_RESET = {"fwd": ["out_ptr"], "bwd": ["du_ptr", "ddelta_ptr", "dB_ptr", "dC_ptr", "slot_turn_ptr"],
          "bwd_tile": ["du_ptr", "ddelta_ptr", "dB_ptr", "dC_ptr"]}


def autotuned(kind: str, kernel: Any) -> Any:
    """``kernel`` wrapped in Triton's autotuner with its candidates and pruning (the token backward keyed
    also by the variants a launch allows)."""
    import triton

    configs, prune = CANDIDATES[kind]
    disk_cache = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    key = AUTOTUNE_KEY + (["variants"] if kind == "bwd" else [])

    def early_prune(candidates, named_args, **kwargs):
        return prune(candidates, {**named_args, **kwargs})

    return triton.autotune(configs=configs(), key=key, prune_configs_by={"early_config_prune": early_prune},
                           reset_to_zero=_RESET[kind], **disk_cache)(kernel)
