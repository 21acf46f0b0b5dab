"""The multi-task model interface every registered model meets, and its check.

A model is an ``nn.Module`` with
- ``tasks``: task name -> output channels, the ones it was built for;
- ``backbone``: the image encoder as a submodule under that attribute name. Profiling counts every parameter
  and FLOP under ``model.backbone`` as backbone and the rest as decoder (``BACKBONE_ATTRIBUTE``);
- ``forward(image)`` -> ``{task: (B, C_task, H, W)}`` at the input size (models with deep supervision may add
  ``"aux": {task: tensor}`` while training).

``create_model`` checks the first two on every model it builds, so a model that hides its encoder under
another name fails there, not with a silent zero in the FLOP table.
"""
from __future__ import annotations

from typing import Mapping, Protocol, runtime_checkable

import torch
import torch.nn as nn

#: The attribute that holds a model's image encoder; profiling splits backbone from decoder by it.
BACKBONE_ATTRIBUTE = "backbone"


@runtime_checkable
class MultiTaskModel(Protocol):
    """What ``create_model`` returns: a backbone, the tasks it predicts, one map per task."""

    tasks: dict[str, int]
    backbone: nn.Module

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]: ...


def check_model(model: object, name: str, tasks: Mapping[str, int]) -> None:
    """Refuse a built model that does not meet ``MultiTaskModel``; one line naming the model and the missing part."""
    where = f"model {name!r} ({type(model).__name__})"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: its builder returned no nn.Module; register a builder that returns the model")
    backbone = getattr(model, BACKBONE_ATTRIBUTE, None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(
            f"{where} has no `{BACKBONE_ATTRIBUTE}` submodule: keep the image encoder as `self.{BACKBONE_ATTRIBUTE}` "
            "(profiling splits backbone from decoder parameters and FLOPs by that attribute)"
        )
    declared = getattr(model, "tasks", None)
    if not isinstance(declared, Mapping) or dict(declared) != dict(tasks):
        raise TypeError(
            f"{where}: `tasks` is {declared!r}, expected the task -> channels mapping it was built for "
            f"({dict(tasks)}); set `self.tasks = dict(tasks)` in the model"
        )
