"""PAMM (Parameter Aware Mamba Model, arXiv 2511.14503), as described and as released.

ViT backbone -> one PAME module per tap (no sharing across taps) -> per-task cross-stage fusion ->
bilinear x4 -> ConvHead per task -> bilinear to the input size. Blocks: ``pamm.models.pamm_blocks``;
the B/C parameter experts: ``pamm.models.experts``. The ``fidelity`` option switches between the
paper's description (``as_described``) and the released code's behaviour (``as_released``);
``docs/fidelity.md#pamm`` lists every difference.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pamm.models.backbones import create_backbone
from pamm.models.heads import ConvHead, resize_to
from pamm.models.pamm_blocks import CrossStageFusion, PAMEStage, PAMMOptions, ScanOrderSource
from pamm.models.registry import register_model

SSM_CONSTANT_NAMES = ("A_log", "D", "prior_B", "prior_C")  # plain dicts (unregistered) in the release
_log = logging.getLogger(__name__)


class PAMM(nn.Module):
    """Multi-task dense prediction with parameter-aware Mamba decoders; ``forward(image) -> {task: map}``."""

    def __init__(
        self,
        tasks: dict[str, int],
        img_size: Sequence[int],
        backbone: dict[str, Any],
        **options: Any,
    ) -> None:
        super().__init__()
        self.options = opts = PAMMOptions.from_config(options)
        self.tasks = dict(tasks)
        self.task_names = list(self.tasks)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.backbone = create_backbone(backbone, self.img_size)
        channels, strides = self.backbone.channels, self.backbone.strides
        if opts.backbone_dim is not None and any(c != opts.backbone_dim for c in channels):
            raise ValueError(
                f"backbone_dim={opts.backbone_dim} but backbone {backbone.get('name')!r} gives {channels} channels "
                "(the released NYUD config's 768 beside ViT-L fails the same way): set backbone_dim to the "
                "backbone's width or to null"
            )
        if len(channels) != 4:
            raise ValueError(f"PAMM fuses 4 backbone taps; backbone gives {len(channels)}")
        self.token_grids = [(self.img_size[0] // s, self.img_size[1] // s) for s in strides]
        self.scan_orders = ScanOrderSource(opts.scan_order, opts.scan_directions)
        num_tasks = len(self.tasks)
        self.stages = nn.ModuleList(
            PAMEStage(c, num_tasks, opts, self.scan_orders, token_grid=grid if opts.released else None)
            for c, grid in zip(channels, self.token_grids)
        )
        self.fusion = CrossStageFusion(num_tasks, opts.embed_dim, len(self.stages))
        self.heads = nn.ModuleDict(
            {name: ConvHead(opts.embed_dim, out, conv_bias=opts.released) for name, out in self.tasks.items()}
        )
        if opts.released:
            self.apply_released_init()
            self.draw_released_priors()

    @torch.no_grad()
    def apply_released_init(self) -> None:
        """The release's initialisation where it differs from ours: every decoder ``nn.Linear`` (the Δ
        projections, the routers' spatial linears) TN(0, 0.02) with zero bias, so Δ's bias starts at 0; each
        pool expert's up-projection drawn as its own conv; the heads' 3x3 conv TN(0, 0.02) (bias kept at
        the conv default) and their 1x1 bias N(0, 0.02). The ViT keeps timm's init, which is the release's."""
        for stage in self.stages:
            stage.apply_released_init()
        for head in self.heads.values():
            nn.init.trunc_normal_(head.body[0].weight, std=0.02)
            nn.init.normal_(head.out.bias, std=0.02)

    def released_priors(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        """The as-released task prompts drawn from ``seed`` (default ``released_prior_seed``), by state-dict
        name (``stages.{i}.prior_B`` ...), without touching the model."""
        seed = int(self.options.released_prior_seed if seed is None else seed)
        generator = torch.Generator().manual_seed(seed)
        return {
            f"stages.{index}.{name}": value
            for index, stage in enumerate(self.stages)
            for name, value in stage.released_priors(generator).items()
        }

    @torch.no_grad()
    def draw_released_priors(self) -> None:
        """Re-draw the untrained as-released task prompts from ``released_prior_seed`` (reproducible runs)."""
        seed = int(self.options.released_prior_seed)
        _log.info("PAMM as_released: untrained task prompts drawn with released_prior_seed=%d", seed)
        generator = torch.Generator().manual_seed(seed)
        for stage in self.stages:
            stage.draw_released_priors(generator)

    def named_ssm_constants(self) -> Iterator[tuple[str, torch.Tensor]]:
        """A_log, D and the task priors of every stage: parameters as described, buffers as released."""
        for index, stage in enumerate(self.stages):
            for name in SSM_CONSTANT_NAMES:
                tensor = getattr(stage, name, None)
                if tensor is not None:
                    yield f"stages.{index}.{name}", tensor

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(image)
        if self.options.released:  # fail before the decoder does any work
            for stage, feat in zip(self.stages, feats):
                stage.check_grid(tuple(feat.shape[-2:]))
        maps = [stage(feat) for stage, feat in zip(self.stages, feats)]
        maps = [resize_to(m, maps[0].shape[-2:]) for m in maps]  # a no-op for a ViT (all taps at 1/16)
        fused = self.fusion(maps)
        fused = F.interpolate(fused, scale_factor=4, mode="bilinear", align_corners=False)
        d = self.options.embed_dim
        return {
            name: resize_to(self.heads[name](fused[:, i * d : (i + 1) * d]), image.shape[-2:])
            for i, name in enumerate(self.task_names)
        }


@register_model("pamm")
def build_pamm(tasks: dict[str, int], **cfg: Any) -> PAMM:
    return PAMM(tasks, **cfg)
