"""Prediction heads shared by every model."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvHead(nn.Module):
    """3x3 conv + BN + GELU, then a 1x1 conv to the task's channels (PAMM's and TaskPrompter's head).

    ``conv_bias``: the 3x3 conv carries a bias, as the released PAMM/TaskPrompter heads do (a bias before
    BatchNorm only shifts its running mean, but folding it there is exact only in float64).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None, conv_bias: bool = False) -> None:
        super().__init__()
        hidden = hidden or in_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
        )
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize to ``size`` (H, W); a no-op when already there."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def attach_output_offsets(model: nn.Module, tasks: list[str]) -> None:
    """Give ``model`` a learnable constant per listed task, added to that task's output (and aux).

    Regression targets far from zero (depth in metres) otherwise spend most of a short training
    run moving the output's mean at Adam's fixed step size; starting the offset at the train mean
    (``init_output_offsets``) removes that. A registered parameter named ``output_offset_<task>``,
    so it is trained, saved and counted like any other.
    """
    if not tasks:
        return
    for task in tasks:
        model.register_parameter(f"output_offset_{task}", nn.Parameter(torch.zeros(())))

    def add_offsets(module: nn.Module, inputs, outputs):
        shifted = dict(outputs)
        for task in tasks:
            offset = getattr(module, f"output_offset_{task}")
            shifted[task] = outputs[task] + offset
            if "aux" in outputs and task in outputs["aux"]:
                shifted["aux"] = {**shifted["aux"], task: outputs["aux"][task] + offset}
        return shifted

    model.register_forward_hook(add_offsets)


def init_output_offsets(model: nn.Module, means: dict[str, float]) -> None:
    """Set the offsets attached by ``attach_output_offsets`` (e.g. to the train split's mean depth)."""
    with torch.no_grad():
        for task, value in means.items():
            getattr(model, f"output_offset_{task}").fill_(float(value))
