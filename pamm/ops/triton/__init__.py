"""Triton backend of the selective scan: forward and backward kernels with no extension to build.

Split by stage, as state-spaces/mamba splits its ``mamba_ssm/ops/triton/`` (one module per kernel stage
beside the function that chains them):

* :mod:`.availability`: whether triton imports and which tensors the kernels take;
* :mod:`.plan`: how a call is cut into programs, segments and checkpoint intervals, the backward
  variants a plan allows and the token backward's scratch;
* :mod:`.autotune`: candidate configs and their pruning (the untimed ones named in one place);
* :mod:`.launch`: the kernel table and the forward and backward passes of one call;
* :mod:`.scan`: the entry points and their autograd function;
* :mod:`.kernels`: the jitted kernels (forward, state carry, token backward and its split form, tile
  backward), imported only once triton imports.

Importing this package does not import triton.
"""
from __future__ import annotations

from pamm.ops.triton.availability import triton_available
from pamm.ops.triton.plan import PlanOverrides
from pamm.ops.triton.scan import multi_direction_scan_triton, selective_scan_triton

__all__ = ["triton_available", "PlanOverrides", "selective_scan_triton", "multi_direction_scan_triton"]
