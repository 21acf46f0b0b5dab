"""FLOP/MAC accounting for the selective scan, and hooks for the three counters we use.

Convention (state it next to every number you publish):
  * **FLOPs** of the scan = 9·b·l·d·n, + b·d·l for the D skip, + b·d·l for the z gate
    (state-spaces/mamba#110; VMamba's ``flops_selective_scan_fn``). Softplus, the delta bias and the
    exp are not counted, as in that formula.
  * For matmuls/convs **FLOPs = 2·MACs**. fvcore and ptflops report **MACs** (fvcore labels them
    "flops"); ``torch.utils.flop_counter.FlopCounterMode`` reports FLOPs.
  * So the scan is handed to fvcore/ptflops as MACs = FLOPs / 2 (rounded up), and to
    FlopCounterMode as FLOPs; totals in each tool then stay in that tool's unit.
  * The backward op (``pamm::selective_scan_backward``) is counted by FlopCounterMode as
    2× the forward formula, the same ratio FlopCounterMode uses for matmuls (an estimate; the
    real backward recomputes the forward and runs a reverse scan).

None of fvcore, ptflops, torch.utils.flop_counter is imported here; the hooks only read shapes.
``FlopCounterMode`` learns the formula explicitly: ``FlopCounterMode(custom_mapping=flop_counter_formulas())``
or, for every counter of the process, :func:`register_flop_counter_formulas`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

import pamm.ops.selective_scan  # noqa: F401  (defines torch.ops.pamm.selective_scan and its backward)

__all__ = [
    "selective_scan_flops",
    "selective_scan_macs",
    "fvcore_selective_scan_handle",
    "fvcore_op_handles",
    "ptflops_aten_hooks",
    "flop_counter_formulas",
    "register_flop_counter_formulas",
]

OP_NAME = "pamm::selective_scan"
BACKWARD_OP_NAME = "pamm::selective_scan_backward"


def selective_scan_flops(
    batch: int,
    length: int,
    channels: int,
    d_state: int,
    with_D: bool = True,
    with_z: bool = False,
    groups: int = 1,
) -> int:
    """FLOPs of one selective scan: 9·b·l·d·n (+ b·d·l with D, + b·d·l with z).

    ``groups`` (grouped B/C) does not change the count: B and C are only broadcast over the
    channels of their group, the per-(channel, state) work is the same. It is accepted so callers
    can pass the full shape.
    """
    if groups < 1 or channels % groups:
        raise ValueError(f"{groups} groups do not divide {channels} channels")
    flops = 9 * batch * length * channels * d_state
    if with_D:
        flops += batch * channels * length
    if with_z:
        flops += batch * channels * length
    return int(flops)


def selective_scan_macs(
    batch: int,
    length: int,
    channels: int,
    d_state: int,
    with_D: bool = True,
    with_z: bool = False,
    groups: int = 1,
) -> int:
    """The same work in MACs (FLOPs / 2, rounded up), for adding to fvcore/ptflops totals."""
    return (selective_scan_flops(batch, length, channels, d_state, with_D, with_z, groups) + 1) // 2


def _flops_from_shapes(u_shape: Sequence[int], A_shape: Sequence[int], has_D: bool, has_z: bool) -> int:
    batch, channels, length = u_shape
    return selective_scan_flops(batch, length, channels, A_shape[1], with_D=has_D, with_z=has_z)


# --------------------------------------------------------------------------------------------
# fvcore (JIT-traced graph: inputs are torch._C.Value)
# --------------------------------------------------------------------------------------------
def _value_is_none(value: Any) -> bool:
    return value.type().kind() == "NoneType"


def _value_shape(value: Any) -> list[int]:
    sizes = value.type().sizes()
    if sizes is None:
        raise ValueError("fvcore handle: input without a static shape")
    return list(sizes)


def fvcore_selective_scan_handle(unit: str = "macs") -> Callable[[list, list], int]:
    """Handle for ``FlopCountAnalysis(...).set_op_handle("pamm::selective_scan", handle)``.

    Returns MACs by default (fvcore's unit); ``unit="flops"`` returns FLOPs instead.
    """
    if unit not in ("macs", "flops"):
        raise ValueError("unit must be 'macs' or 'flops'")

    def handle(inputs: list, outputs: list) -> int:
        # Schema: u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend
        flops = _flops_from_shapes(
            _value_shape(inputs[0]), _value_shape(inputs[2]), not _value_is_none(inputs[5]), not _value_is_none(inputs[6])
        )
        return flops if unit == "flops" else (flops + 1) // 2

    return handle


def fvcore_op_handles(unit: str = "macs") -> dict[str, Callable]:
    """``{op name: handle}`` to splat into ``FlopCountAnalysis.set_op_handle(**handles)``."""
    return {OP_NAME: fvcore_selective_scan_handle(unit)}


# --------------------------------------------------------------------------------------------
# ptflops (backend="aten": hooks get the real args of each dispatched op)
# --------------------------------------------------------------------------------------------
def _ptflops_hook(args: tuple, outputs: tuple) -> int:
    u, _, A, _, _, D, z = args[:7]
    return (_flops_from_shapes(tuple(u.shape), tuple(A.shape), D is not None, z is not None) + 1) // 2


def ptflops_aten_hooks() -> dict:
    """``custom_modules_hooks`` for ``ptflops.get_model_complexity_info(..., backend="aten")`` (MACs)."""
    return {torch.ops.pamm.selective_scan: _ptflops_hook}


# --------------------------------------------------------------------------------------------
# torch.utils.flop_counter (FLOPs, forward and backward)
# --------------------------------------------------------------------------------------------
def _forward_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args, out_shape=None,
                     **kwargs) -> int:
    return _flops_from_shapes(u_shape, A_shape, D_shape is not None, z_shape is not None)


def _backward_formula(dout_shape, u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args,
                      out_shape=None, **kwargs) -> int:
    return 2 * _flops_from_shapes(u_shape, A_shape, D_shape is not None, z_shape is not None)


def flop_counter_formulas() -> dict:
    """``{op: formula}`` for ``torch.utils.flop_counter.FlopCounterMode(custom_mapping=...)``: the forward
    op's FLOPs and the backward op's (2× the forward)."""
    return {torch.ops.pamm.selective_scan: _forward_formula, torch.ops.pamm.selective_scan_backward: _backward_formula}


def register_flop_counter_formulas() -> bool:
    """Add :func:`flop_counter_formulas` to FlopCounterMode's global registry, for counters created
    afterwards anywhere in the process. Idempotent; False if this torch has no ``register_flop_formula``."""
    try:
        from torch.utils.flop_counter import flop_registry, register_flop_formula
    except ImportError:
        return False
    for op, formula in flop_counter_formulas().items():
        if op not in flop_registry:
            register_flop_formula(op)(formula)
    return True
