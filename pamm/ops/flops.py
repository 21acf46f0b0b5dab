"""FLOP/MAC accounting for the selective scan, and hooks for the three counters we use.

Convention (state it next to every number you publish):
  * **FLOPs** of the scan = 9·b·l·d·n, + b·d·l for the D skip, + b·d·l for the z gate
    (state-spaces/mamba#110; VMamba's ``flops_selective_scan_fn``; reference §6). Softplus, the
    delta bias and the exp are not counted, as in that formula.
  * For matmuls/convs **FLOPs = 2·MACs**. fvcore and ptflops report **MACs** (fvcore labels them
    "flops"); ``torch.utils.flop_counter.FlopCounterMode`` reports FLOPs.
  * So the scan is handed to fvcore/ptflops as MACs = FLOPs / 2 (rounded up), and to
    FlopCounterMode as FLOPs; totals in each tool then stay in that tool's unit.
  * The backward op (``pamm::selective_scan_backward``) is counted by FlopCounterMode as
    2× the forward formula, the same ratio FlopCounterMode uses for matmuls (an estimate; the
    real backward recomputes the forward and runs a reverse scan).

None of fvcore, ptflops is imported here; the hooks only read shapes.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any, Callable, Sequence

import torch

__all__ = [
    "selective_scan_flops",
    "selective_scan_macs",
    "fvcore_selective_scan_handle",
    "fvcore_op_handles",
    "ptflops_aten_hooks",
    "register_flop_counter_formulas",
    "register_flop_counter_formulas_when_imported",
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
    _ensure_op_registered()
    return {torch.ops.pamm.selective_scan: _ptflops_hook}


# --------------------------------------------------------------------------------------------
# torch.utils.flop_counter (FLOPs, forward and backward)
# --------------------------------------------------------------------------------------------
def _ensure_op_registered() -> None:
    import pamm.ops.selective_scan  # noqa: F401  (defines torch.ops.pamm.*)


_FLOP_COUNTER_REGISTERED = False


def register_flop_counter_formulas() -> bool:
    """Teach ``torch.utils.flop_counter.FlopCounterMode`` the scan formula. Idempotent.

    Returns False if this torch has no ``register_flop_formula``.
    """
    global _FLOP_COUNTER_REGISTERED
    if _FLOP_COUNTER_REGISTERED:
        return True
    try:
        from torch.utils.flop_counter import flop_registry, register_flop_formula
    except ImportError:
        return False
    _ensure_op_registered()
    forward_op = torch.ops.pamm.selective_scan
    backward_op = torch.ops.pamm.selective_scan_backward

    def forward_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args, out_shape=None, **kwargs) -> int:
        return _flops_from_shapes(u_shape, A_shape, D_shape is not None, z_shape is not None)

    def backward_formula(dout_shape, u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * _flops_from_shapes(u_shape, A_shape, D_shape is not None, z_shape is not None)

    if forward_op not in flop_registry:
        register_flop_formula(forward_op)(forward_formula)
    if backward_op not in flop_registry:
        register_flop_formula(backward_op)(backward_formula)
    _FLOP_COUNTER_REGISTERED = True
    return True


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """One-shot import hook: run ``callback`` right after ``module_name`` is first imported.

    Importing ``torch.utils.flop_counter`` costs ~0.35 s (it pulls in triton when installed), too
    much for ``import pamm.ops``; registering our formula only when someone imports the counter
    keeps the import cheap and FlopCounterMode correct without an explicit call.
    """

    def __init__(self, module_name: str, callback: Callable[[], Any]):
        self.module_name = module_name
        self.callback = callback
        self.real_loader = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module_name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.real_loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.real_loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.real_loader.exec_module(module)
        try:
            self.callback()
        except Exception:  # noqa: BLE001 - never break the user's import over a FLOP formula
            pass


def register_flop_counter_formulas_when_imported() -> None:
    """Register the FlopCounterMode formulas now if the counter is loaded, else on its first import."""
    if "torch.utils.flop_counter" in sys.modules:
        register_flop_counter_formulas()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("torch.utils.flop_counter", register_flop_counter_formulas))
