"""The plain multi-task baseline (shared backbone, a light head per task) and its single-task twin.

The single-task baselines that Δm needs are the same network with one task, so both names build
``MultiTaskBaseline``; ``stl`` only insists on exactly one task.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from pamm.models.backbones import create_backbone
from pamm.models.heads import ConvHead, resize_to
from pamm.models.registry import register_model


class MultiScaleNeck(nn.Module):
    """Project every backbone map to ``width`` channels, resize to the finest map and sum."""

    def __init__(self, in_channels: Sequence[int], width: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)) for c in in_channels
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        return sum(resize_to(p(f), size) for p, f in zip(self.proj, feats))


class MultiTaskBaseline(nn.Module):
    def __init__(self, tasks: dict[str, int], backbone: dict[str, Any], img_size: Sequence[int], width: int = 64) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.backbone = create_backbone(backbone, img_size)
        self.neck = MultiScaleNeck(self.backbone.channels, width)
        self.heads = nn.ModuleDict({t: ConvHead(width, c) for t, c in self.tasks.items()})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.neck(self.backbone(image))
        return {t: resize_to(head(shared), image.shape[-2:]) for t, head in self.heads.items()}


@register_model("mtl")
def build_mtl(tasks: dict[str, int], **cfg: Any) -> MultiTaskBaseline:
    return MultiTaskBaseline(tasks, **cfg)


@register_model("stl")
def build_stl(tasks: dict[str, int], **cfg: Any) -> MultiTaskBaseline:
    if len(tasks) != 1:
        raise ValueError(f"the single-task baseline takes exactly one task, got {list(tasks)}: use a stl_<task> variant")
    return MultiTaskBaseline(tasks, **cfg)
