"""Handing scan settings to a model's scanning modules.

A module that calls the scan ops declares ``self.scan_settings = None`` and passes
``settings=self.scan_settings`` to them; :func:`set_scan_settings` sets it on every such module of a
model, so that a run's settings reach every scan call without a process-wide default.
"""
from __future__ import annotations

import torch

from pamm.ops.settings import ScanSettings

__all__ = ["set_scan_settings"]


def set_scan_settings(model: torch.nn.Module, settings: ScanSettings | None) -> int:
    """Set ``scan_settings`` on every submodule of ``model`` (itself included) that declares it; returns how
    many. None hands the modules back to the defaults with the environment's overrides."""
    if settings is not None and not isinstance(settings, ScanSettings):
        raise TypeError(f"settings must be a ScanSettings or None, got {type(settings).__name__}")
    count = 0
    for module in model.modules():
        if hasattr(module, "scan_settings"):
            module.scan_settings = settings
            count += 1
    return count
