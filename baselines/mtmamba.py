"""MTMamba (ECCV'24) rebuilt on our task-batched SS2D blocks.

The release: EnVision-Research/MTMamba@bbef1d2f4a715a5597b5c3663e86987e8bba727d:models/MTMamba.py
(blocks in EnVision-Research/MTMamba@52df545f6419bcdc823b4f72f7bcdeaaa5440da8:models/CTM.py).

Swin backbone (4 scales, strides 4..32) -> 3 decoder stages 1/32 -> 1/16 -> 1/8 -> 1/4. Per stage
and task: PatchExpand (x2), concat with the backbone skip + Linear, 2 STM blocks; then one
cross-task block shared by the tasks (F-CTM here, S-CTM in MTMamba++). DropPath rises linearly
from 0 to ``drop_path_rate`` (0.2) from the last block back to the first, no FFN anywhere.
Head: FinalPatchExpand_X4 (Linear C -> 16C, pixel-shuffle x4, LN) -> 1x1 conv -> bilinear to the image.

Tasks run stacked (see ``baselines.ss2d``); only the final 1x1 projections, whose output widths
differ per task, loop over tasks.

Backbone: timm's Swin modules (``features_only``) run with mmseg's shifted-window semantics
(``backbone.swin_semantics: mmseg``, the default in the model configs; ``pamm.models.swin_mmseg``), as
the release. mmseg's Swin layer-norms each output map (``norm0..norm3``); ``feature_norm: true`` adds
the same four LayerNorms here. Released checkpoints convert with ``baselines.released_mtmamba``.

Differences from the released code, all deliberate:
* timm's weight names and PatchMerging channel order inside the backbone (the converter permutes).
* No ``mamba_ssm``: the scan is ``pamm.ops.multi_direction_scan`` (one call per SS2D for all tasks
  and directions) on the backend that the run's scan settings (``train.scan``) choose.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.ss2d import (
    FCTMBlock,
    SCTMBlock,
    STMBlock,
    TaskPatchExpand,
    pixel_shuffle_channels_last,
)
from pamm.models.backbones import create_backbone
from pamm.models.heads import resize_to
from pamm.models.registry import register_model
from pamm.models.task_layers import TaskLayerNorm, TaskLinear

BLOCKS_PER_STAGE = 3  # 2 STM + 1 cross-task block: the DropPath schedule counts these

CROSS_TASK_BLOCKS: dict[str, type[nn.Module]] = {"fctm": FCTMBlock, "sctm": SCTMBlock}


class DecoderStage(nn.Module):
    """One x2 upsampling stage: PatchExpand, skip fusion, 2 STM blocks per task, 1 cross-task block."""

    def __init__(
        self,
        num_tasks: int,
        in_channels: int,
        skip_channels: int,
        drop_paths: Sequence[float],
        cross_task_block: type[nn.Module],
        ss2d_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        if in_channels != 2 * skip_channels:
            raise ValueError(
                f"MTMamba's decoder needs each backbone scale to have half the channels of the next "
                f"(PatchExpand gives C/2 to concatenate with the skip); got {skip_channels} -> {in_channels}"
            )
        self.num_tasks = num_tasks
        self.expand = TaskPatchExpand(num_tasks, in_channels)
        # MTMamba: Linear(2C', C'); MTMamba++: Conv2d(2C', C', 1). Same map and parameters (weight + bias).
        self.fuse = TaskLinear(num_tasks, 2 * skip_channels, skip_channels, bias=True)
        self.stm1 = STMBlock(num_tasks, skip_channels, drop_path=drop_paths[0], **ss2d_kwargs)
        self.stm2 = STMBlock(num_tasks, skip_channels, drop_path=drop_paths[1], **ss2d_kwargs)
        self.cross_task = cross_task_block(num_tasks, skip_channels, drop_path=drop_paths[2], **ss2d_kwargs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x``: ``(T or 1, B, h, w, C)``; ``skip``: ``(B, H, W, C/2)`` channels-last -> ``(T, B, H, W, C/2)``."""
        upsampled = self.expand(x, out_size=skip.shape[1:3])
        skip = skip.unsqueeze(0).expand(self.num_tasks, *skip.shape)
        y = self.fuse(torch.cat([upsampled, skip], dim=-1))
        return self.cross_task(self.stm2(self.stm1(y)))


class PatchExpandX4Head(nn.Module):
    """MTMamba's head: FinalPatchExpand_X4 (Linear C -> 16C, pixel-shuffle x4, LN) -> 1x1 conv per task."""

    def __init__(self, tasks: dict[str, int], channels: int) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        num_tasks = len(self.tasks)
        self.expand = TaskLinear(num_tasks, channels, 16 * channels, bias=False)
        self.norm = TaskLayerNorm(num_tasks, channels)
        self.project = nn.ModuleDict({t: nn.Conv2d(channels, c, 1) for t, c in self.tasks.items()})

    def forward(self, x: torch.Tensor, image_size: Sequence[int]) -> dict[str, torch.Tensor]:
        y = self.norm(pixel_shuffle_channels_last(self.expand(x), 4))  # (T, B, 4h, 4w, C)
        out = {}
        for index, (task, conv) in enumerate(self.project.items()):
            # The 1x1 conv as a channels-last linear: no transpose of the full-resolution C-channel map.
            logits = F.linear(y[index], conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)
            out[task] = resize_to(logits, image_size)
        return out


class MTMambaNet(nn.Module):
    """Backbone + the MTMamba decoder; the cross-task block and the head are what MTMamba++ changes."""

    def __init__(
        self,
        tasks: dict[str, int],
        img_size: Sequence[int],
        backbone: dict[str, Any],
        cross_task_block: str = "fctm",
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        drop_path_rate: float = 0.2,
        feature_norm: bool = True,
        head: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MTMamba needs at least one task")
        if cross_task_block not in CROSS_TASK_BLOCKS:
            raise ValueError(f"unknown cross_task_block {cross_task_block!r}; valid: {sorted(CROSS_TASK_BLOCKS)}")
        self.tasks = dict(tasks)
        self.img_size = tuple(img_size)
        num_tasks = len(self.tasks)
        self.backbone = create_backbone(backbone, img_size)
        channels = list(self.backbone.channels)
        if len(channels) != 4:
            raise ValueError(f"MTMamba's decoder expects 4 backbone scales (strides 4..32), got channels {channels}")
        # mmseg's Swin (the released backbone) layer-norms every output map; timm's features do not.
        self.feature_norms = nn.ModuleList(nn.LayerNorm(c) for c in channels) if feature_norm else None
        num_stages = len(channels) - 1
        num_blocks = num_stages * BLOCKS_PER_STAGE
        # torch.linspace(rate, 0, n) in plain Python, so the model also builds on the meta device.
        drop_paths = [drop_path_rate * (1.0 - i / (num_blocks - 1)) for i in range(num_blocks)]
        ss2d_kwargs = {"d_state": d_state, "ssm_ratio": ssm_ratio, "dt_rank": dt_rank}
        block = CROSS_TASK_BLOCKS[cross_task_block]
        self.stages = nn.ModuleList(
            DecoderStage(
                num_tasks,
                channels[-1 - stage],
                channels[-2 - stage],
                drop_paths[stage * BLOCKS_PER_STAGE : (stage + 1) * BLOCKS_PER_STAGE],
                block,
                ss2d_kwargs,
            )
            for stage in range(num_stages)
        )
        self.head = self.build_head(self.tasks, channels[0], **(head or {}))

    def build_head(self, tasks: dict[str, int], channels: int, **head_kwargs: Any) -> nn.Module:
        return PatchExpandX4Head(tasks, channels, **head_kwargs)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = [f.permute(0, 2, 3, 1) for f in self.backbone(image)]  # channels-last, as the decoder works
        if self.feature_norms is not None:
            maps = [norm(m) for norm, m in zip(self.feature_norms, maps)]
        x = maps[-1].unsqueeze(0)  # (1, B, h, w, C): one map shared by every task
        for stage_index, stage in enumerate(self.stages):
            x = stage(x, maps[-2 - stage_index])
        return self.head(x, image.shape[-2:])


@register_model("mtmamba")
def build_mtmamba(tasks: dict[str, int], **cfg: Any) -> MTMambaNet:
    cfg.setdefault("cross_task_block", "fctm")
    return MTMambaNet(tasks, **cfg)
