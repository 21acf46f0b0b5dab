"""MTMamba++ (TPAMI'25): MTMamba's decoder with S-CTM blocks and conv heads.

Changes from MTMamba, as in the release
(EnVision-Research/MTMamba@ff7a7282d1ff301b082b7cd541e127885cac3a96:models/MTMamba_plus.py):
* the cross-task block is S-CTM (each task's CSS2D takes Δ, B, C from a shared 1x1+3x3-conv
  feature of all tasks; the scanned input stays the task's own); there is no F-CTM;
* the skip fusion is a 1x1 conv (the same map and parameters as MTMamba's Linear);
* the head is 3x3 conv C -> 96 + BN + ReLU -> 1x1 conv at 1/4 scale, then bilinear to the image.
  The released code uses SyncBatchNorm (batch 1 per GPU x 8); here it is BatchNorm2d: convert it
  with ``nn.SyncBatchNorm.convert_sync_batchnorm`` under DDP to get the same statistics.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from baselines.mtmamba import MTMambaNet
from pamm.models.heads import resize_to
from pamm.models.registry import register_model


class ConvBNReLUHead(nn.Module):
    """Per task: 3x3 conv C -> hidden + BN + ReLU, then 1x1 conv; the tasks' 3x3 convs run as one grouped conv."""

    def __init__(self, tasks: dict[str, int], channels: int, hidden: int = 96) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.hidden = hidden
        num_tasks = len(self.tasks)
        # A grouped conv + BN over T*hidden channels equals T separate conv + BN pairs (BN is per channel).
        self.body = nn.Sequential(
            nn.Conv2d(num_tasks * channels, num_tasks * hidden, 3, padding=1, groups=num_tasks),
            nn.BatchNorm2d(num_tasks * hidden),
            nn.ReLU(inplace=True),
        )
        nn.init.trunc_normal_(self.body[0].weight, std=0.02)  # as the released head
        self.project = nn.ModuleDict({t: nn.Conv2d(hidden, c, 1) for t, c in self.tasks.items()})

    def forward(self, x: torch.Tensor, image_size: Sequence[int]) -> dict[str, torch.Tensor]:
        num_tasks, batch, height, width, channels = x.shape
        stacked = x.permute(1, 0, 4, 2, 3).reshape(batch, num_tasks * channels, height, width)
        hidden = self.body(stacked).reshape(batch, num_tasks, self.hidden, height, width)
        return {
            task: resize_to(conv(hidden[:, index]), image_size)
            for index, (task, conv) in enumerate(self.project.items())
        }


class MTMambaPlusPlusNet(MTMambaNet):
    """MTMamba's decoder with S-CTM cross-task blocks and ConvBNReLU heads."""

    def build_head(self, tasks: dict[str, int], channels: int, **head_kwargs: Any) -> nn.Module:
        return ConvBNReLUHead(tasks, channels, **head_kwargs)


@register_model("mtmamba_pp")
def build_mtmamba_pp(tasks: dict[str, int], **cfg: Any) -> MTMambaPlusPlusNet:
    cfg.setdefault("cross_task_block", "sctm")
    return MTMambaPlusPlusNet(tasks, **cfg)


__all__ = ["ConvBNReLUHead", "MTMambaPlusPlusNet", "build_mtmamba_pp"]
