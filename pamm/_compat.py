"""Fixes for the pinned CPU stack, applied by the code that imports timm or torchvision, never at import."""
from __future__ import annotations

import os
import sys

_TORCHVISION_SCHEMA_LIB = None  # keeps the torch.library registration alive


def ensure_torchvision_importable() -> str:
    """Make ``import torchvision`` (and so ``import timm``) work on CPU torch.

    PyPI's torchvision 0.28.0 is a CUDA build. With the CPU torch 2.13.0 its ``_C.so``
    fails to load silently, and then torchvision's fake-tensor registrations raise
    ``RuntimeError: operator torchvision::nms does not exist``. We define the two op
    schemas it expects, only when exactly that error happens (a no-op on a machine where
    torchvision loads natively). torchvision's C++ ops stay unavailable; we never call them.
    Also sets ``HF_HUB_OFFLINE=1`` unless the environment says otherwise: huggingface_hub reads it when
    timm first imports it, and without it a missing local weights file turns into a minute of network
    retries instead of a clear error. Returns "native" or "shimmed".
    """
    global _TORCHVISION_SCHEMA_LIB
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torchvision  # noqa: F401

        return "native"
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SCHEMA_LIB = lib
    import torchvision  # noqa: F401,F811

    return "shimmed"
