"""Selective-scan ops and 2-D scan orders shared by every Mamba decoder in the suite.

* :func:`selective_scan` — mamba-ssm's ``selective_scan_fn`` semantics as one torch custom op
  (``pamm::selective_scan``) with backends "cuda" (mamba-ssm kernel), "triton" (our Triton kernels),
  "torch" (pure PyTorch) and "ref" (sequential loop).
* :class:`ScanSettings` — which backend ``auto`` means and how the Triton and torch backends run,
  built from a config section (environment variables override it, recorded); every scan entry point
  takes it as ``settings=``, and :func:`resolve` says which backend runs with it.
* :func:`scan_orders` — raster / snake / zorder / hilbert / hilbert_cropped orders, 1, 2 or 4
  directions, as (perm, inverse) index tensors.
* :func:`multi_direction_scan` — all directions (and tasks) in one scan call.
* :func:`selective_scan_flops` and counter hooks; :func:`backend_report` for the doctor.

Importing this package needs only torch and numpy, and changes nothing outside it; mamba-ssm, triton,
fvcore and ptflops are imported lazily, where used.
"""
from __future__ import annotations

from pamm.ops.backends import register_backend, registered_backends, resolve, resolve_backend
from pamm.ops.doctor import backend_report, format_backend_report
from pamm.ops.flops import (
    flop_counter_formulas,
    fvcore_op_handles,
    fvcore_selective_scan_handle,
    ptflops_aten_hooks,
    register_flop_counter_formulas,
    selective_scan_flops,
    selective_scan_macs,
)
from pamm.ops.modules import set_scan_settings
from pamm.ops.multi_direction import multi_direction_scan, permute_tokens
from pamm.ops.scan_orders import SCAN_DIRECTIONS, SCAN_KINDS, count_jumps, scan_orders
from pamm.ops.scan_ref import selective_scan_ref
from pamm.ops.selective_scan import selective_scan
from pamm.ops.settings import ScanSettings

__all__ = [
    "SCAN_DIRECTIONS",
    "SCAN_KINDS",
    "ScanSettings",
    "backend_report",
    "count_jumps",
    "flop_counter_formulas",
    "format_backend_report",
    "fvcore_op_handles",
    "fvcore_selective_scan_handle",
    "multi_direction_scan",
    "permute_tokens",
    "ptflops_aten_hooks",
    "register_backend",
    "register_flop_counter_formulas",
    "registered_backends",
    "resolve",
    "resolve_backend",
    "scan_orders",
    "selective_scan",
    "selective_scan_flops",
    "selective_scan_macs",
    "selective_scan_ref",
    "set_scan_settings",
]
