"""InvPT (Ye & Xu, ECCV'22) on our blocks: a ViT backbone and an inverted-pyramid multi-task transformer decoder.

What it is (the release:
prismformore/Multi-Task-Transformer@7e0f14957361a7a50d992579b2a88dadbe7dc7c1:code/models/transformers/invpt.py
and prismformore/Multi-Task-Transformer@98233d97ebf304088f1f87543d61927f0868bead:code/models/transformers/transformer_decoder.py;
the comparison with it in docs/fidelity.md#invpt):

1. ViT taps after evenly spaced blocks (``create_backbone``), all at stride 16; the last tap is resized ×1/2 (1/32).
2. Per task a preliminary decoder (two 3×3 ConvBlocks) and a 1×1 intermediate head. Its predictions are
   supervised like the final ones: they are returned under ``"aux"`` while training.
3. Task feature ⊕ intermediate prediction → 1×1 conv → three UP-Transformer stages on the *joint* token set of
   all tasks at 1/32 → 1/16 → 1/8 (widths D, D/2, D/4 with D = ``embed_dim + pred_channels``), each stage after the
   first upsampling every task map ×2 (``UpEmbed``) and adding a projection of a backbone tap (``scale_embed``).
   Queries come from a per-task depthwise 3×3 conv (stride 2) + BN, keys/values from per-task average pooling
   (stride 2/4/8, so every stage attends over the same number of key tokens), and each stage's pre-softmax
   attention scores are upsampled and fused (1×1 conv over heads) into the next stage's ("attention message
   passing").
4. Every stage's output (jointly LayerNorm-ed over the channels of all tasks) is projected to width D, resized to
   1/4 and summed per task; then a 3×3 conv + BN + ReLU and a 1×1 head; bilinear to the input size.

Deliberate differences from the release, each without effect on the computed function:

* Modules the release builds but never calls are not built (``scale_embed[2]`` 3×3 conv 1024→576, the stage-0
  ``redu_chan`` 1×1 convs, the stage-0 ``fuse_attn``, the final ``norm_mt``): every parameter here gets a gradient.
  ``scripts/baseline_param_count_transformer.py`` reports how many parameters that leaves out.
* The decoder's drop path is omitted: the release sets 0.15 but draws it with ``linspace(0, 0.15, depth=1)``, i.e. 0.
* Grids need not be even: stage ``i`` runs at ``g0·2^i`` with ``g0 = ceil(tap grid / 2)``, and backbone skips,
  queries and attention messages are resized to the grid they meet (the release assumes even grids).

Kept as released: the attention scale is ``dim ** -0.5`` (full per-task width, not the head width), the q/k/v
linear maps and MLP are shared by all tasks, and only the last tap feeds the preliminary decoders.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pamm.models.backbones import create_backbone
from pamm.models.heads import resize_to
from pamm.models.registry import register_model


class ConvBnRelu(nn.Sequential):
    """3×3 conv (no bias) + BN + ReLU: InvPT's ``ConvBlock``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpEmbed(nn.Module):
    """Upsample a task map to the next stage's grid, then two dilated 3×3 conv + BN + ReLU (changes width)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.convs(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class JointTaskAttention(nn.Module):
    """Multi-head attention over the tokens of all tasks, queries at half resolution, keys/values pooled.

    Scores of the previous stage (the "message", pre-softmax, queries on a grid half this size) are resized to
    this stage's query grid and mixed with the current scores by a 1×1 conv over heads. That mixing is linear, so
    it runs inside ``scaled_dot_product_attention``: head ``h``'s fused current score
    ``Σ_j a_hj·(q_j·k_j)`` equals ``[a_h0·q_0, …, a_hH·q_H] · [k_0, …, k_H]``, and the message term is the
    additive float mask.
    """

    def __init__(
        self,
        num_tasks: int,
        dim: int,
        num_heads: int,
        kv_stride: int,
        q_stride: int = 2,
        receives_message: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"InvPT stage width {dim} is not divisible by num_heads={num_heads}")
        self.num_tasks = num_tasks
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = dim**-0.5  # as released: the per-task width, not the head width
        self.kv_stride = kv_stride
        self.query_convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, 3, stride=q_stride, padding=1, groups=dim, bias=False), nn.BatchNorm2d(dim)
            )
            for _ in range(num_tasks)
        )
        self.proj_q = nn.Linear(dim, dim)
        self.proj_k = nn.Linear(dim, dim)
        self.proj_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        # 1×1 conv over [current heads, message heads] -> heads (the release's ``fuse_attn``).
        self.fuse_scores = nn.Conv2d(2 * num_heads, num_heads, 1) if receives_message else None

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        return tokens.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _resize_message(
        self, message: torch.Tensor, message_grid: tuple[int, int], query_grid: tuple[int, int]
    ) -> torch.Tensor:
        """(B, heads, T·h'·w', K) scores on the previous query grid -> (B, heads, T·h·w, K) on this one."""
        batch, heads, _, keys = message.shape
        prev_h, prev_w = message_grid
        grid = message.view(batch, heads, self.num_tasks, prev_h, prev_w, keys)
        grid = grid.permute(0, 1, 2, 5, 3, 4).reshape(batch * heads * self.num_tasks, keys, prev_h, prev_w)
        grid = F.interpolate(grid, size=query_grid, mode="bilinear", align_corners=False)
        grid = grid.view(batch, heads, self.num_tasks, keys, *query_grid).permute(0, 1, 2, 4, 5, 3)
        return grid.reshape(batch, heads, self.num_tasks * query_grid[0] * query_grid[1], keys)

    def forward(
        self,
        task_maps: list[torch.Tensor],
        message: tuple[torch.Tensor, tuple[int, int]] | None,
        want_message: bool,
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, tuple[int, int]] | None]:
        """``task_maps``: per task (B, C, h, w), already normed. Returns per-task outputs on the query grid."""
        queries = [conv(x) for conv, x in zip(self.query_convs, task_maps)]
        query_grid = tuple(queries[0].shape[-2:])
        pooled = [
            F.avg_pool2d(x, self.kv_stride, self.kv_stride, ceil_mode=True) for x in task_maps
        ]  # keys and values come from the same pooled map, through different linear maps
        q_tokens = torch.cat([q.flatten(2).transpose(1, 2) for q in queries], dim=1)
        kv_tokens = torch.cat([p.flatten(2).transpose(1, 2) for p in pooled], dim=1)
        q = self._heads(self.proj_q(q_tokens))
        k = self._heads(self.proj_k(kv_tokens))
        v = self._heads(self.proj_v(kv_tokens))

        if message is None or self.fuse_scores is None:
            attended = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale if want_message else None
        else:
            prev_scores, message_grid = message
            prev_scores = self._resize_message(prev_scores, message_grid, query_grid)
            if prev_scores.shape[-1] != k.shape[2]:
                raise ValueError(
                    f"InvPT attention message has {prev_scores.shape[-1]} keys but this stage pools to {k.shape[2]}: "
                    "kv_strides must double from stage to stage (release: [2, 4, 8])"
                )
            weight = self.fuse_scores.weight.view(self.num_heads, 2 * self.num_heads)
            mix_current, mix_message = weight[:, : self.num_heads], weight[:, self.num_heads :]
            # q_mixed[b, h, n, j·d:(j+1)·d] = a_hj · q[b, j, n, :]
            q_mixed = torch.einsum("hj,bjnd->bhnjd", mix_current, q).flatten(3)
            k_all = k.transpose(1, 2).flatten(2).unsqueeze(1).expand(-1, self.num_heads, -1, -1)
            bias = torch.einsum("hj,bjnk->bhnk", mix_message, prev_scores) + self.fuse_scores.bias.view(1, -1, 1, 1)
            bias = bias.to(q_mixed.dtype)  # under autocast the fp32 conv bias would promote the mask
            attended = F.scaled_dot_product_attention(q_mixed, k_all, v, attn_mask=bias, scale=self.scale)
            scores = torch.matmul(q_mixed, k_all.transpose(-2, -1)) * self.scale + bias if want_message else None

        out = self.proj(attended.transpose(1, 2).flatten(2))  # (B, T·hq·wq, C)
        per_task = out.split(query_grid[0] * query_grid[1], dim=1)
        maps = [t.transpose(1, 2).reshape(t.shape[0], self.dim, *query_grid) for t in per_task]
        return maps, ((scores, query_grid) if scores is not None else None)


class UpTransformerBlock(nn.Module):
    """Pre-norm transformer block on the joint task tokens; attention output upsampled back to the stage grid."""

    def __init__(
        self, num_tasks: int, dim: int, num_heads: int, kv_stride: int, mlp_ratio: float, receives_message: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = JointTaskAttention(num_tasks, dim, num_heads, kv_stride, receives_message=receives_message)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    @staticmethod
    def _channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(
        self, task_maps: list[torch.Tensor], message: Any, want_message: bool
    ) -> tuple[list[torch.Tensor], Any]:
        size = tuple(task_maps[0].shape[-2:])
        normed = [self._channel_norm(self.norm1, x) for x in task_maps]
        attended, message = self.attn(normed, message, want_message)
        outs = []
        for x, a in zip(task_maps, attended):
            x = x + F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            tokens = x.permute(0, 2, 3, 1)
            x = (tokens + self.mlp(self.norm2(tokens))).permute(0, 3, 1, 2)
            outs.append(x)
        return outs, message


class InvPT(nn.Module):
    """ViT backbone + InvPT decoder; ``forward(image) -> {task: (B, C_t, H, W)}`` (+ ``"aux"`` while training)."""

    def __init__(
        self,
        tasks: dict[str, int],
        backbone: dict[str, Any],
        img_size: Sequence[int],
        embed_dim: int = 512,
        pred_channels: int = 64,
        num_heads: int = 2,
        mlp_ratio: float = 4.0,
        kv_strides: Sequence[int] = (2, 4, 8),
        decoder_downsample: int = 2,
        attn_message_passing: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.task_names = list(self.tasks)
        self.backbone = create_backbone(backbone, img_size)
        if len(self.backbone.channels) != 4:
            raise ValueError(f"InvPT needs 4 backbone taps, got {len(self.backbone.channels)}")
        if len(kv_strides) != 3:
            raise ValueError(f"InvPT has 3 decoder stages: kv_strides needs 3 values, got {list(kv_strides)}")
        num_tasks = len(self.tasks)
        tap_channels = self.backbone.channels
        width = embed_dim + pred_channels
        self.stage_dims = [width, width // 2, width // 4]
        self.decoder_downsample = decoder_downsample
        self.attn_message_passing = attn_message_passing

        last = tap_channels[-1]
        self.preliminary_decoders = nn.ModuleDict(
            {t: nn.Sequential(ConvBnRelu(last, last), ConvBnRelu(last, embed_dim)) for t in self.tasks}
        )
        self.intermediate_heads = nn.ModuleDict({t: nn.Conv2d(embed_dim, c, 1) for t, c in self.tasks.items()})
        self.mix_proj = nn.ModuleDict({t: nn.Conv2d(embed_dim + c, width, 1) for t, c in self.tasks.items()})

        # Backbone skips: tap 1 (1/16) into stage 1, tap 0 upsampled ×2 (1/8) into stage 2.
        self.skip_stage1 = nn.Conv2d(tap_channels[1], self.stage_dims[1], 3, padding=1)
        self.skip_stage2 = nn.ConvTranspose2d(
            tap_channels[0], self.stage_dims[2], 3, stride=2, padding=1, output_padding=1
        )
        self.up_embeds = nn.ModuleList(
            nn.ModuleList(UpEmbed(self.stage_dims[i - 1], self.stage_dims[i]) for _ in range(num_tasks))
            for i in (1, 2)
        )
        self.stages = nn.ModuleList(
            UpTransformerBlock(
                num_tasks, dim, num_heads, stride, mlp_ratio, receives_message=attn_message_passing and i > 0
            )
            for i, (dim, stride) in enumerate(zip(self.stage_dims, kv_strides))
        )
        self.stage_norms = nn.ModuleList(nn.LayerNorm(dim * num_tasks) for dim in self.stage_dims)
        self.reduce_channels = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(dim, width, 1) for _ in range(num_tasks)) for dim in self.stage_dims[1:]
        )
        self.task_convs = nn.ModuleDict(
            {
                t: nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
                for t in self.tasks
            }
        )
        self.heads = nn.ModuleDict({t: nn.Conv2d(width, c, 1) for t, c in self.tasks.items()})
        self._init_decoder_weights()

    def _init_decoder_weights(self) -> None:
        for name, module in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for conv_bn_relu in self.task_convs.values():
            nn.init.trunc_normal_(conv_bn_relu[0].weight, std=0.02)

    def _stage_output_maps(self, stage: int, task_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Joint LayerNorm over the channels of all tasks, then split back per task."""
        joint = torch.cat(task_maps, dim=1).permute(0, 2, 3, 1)
        joint = self.stage_norms[stage](joint).permute(0, 3, 1, 2)
        return list(joint.split(self.stage_dims[stage], dim=1))

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        taps = self.backbone(image)
        tap_h, tap_w = taps[-1].shape[-2:]
        base = (math.ceil(tap_h / self.decoder_downsample), math.ceil(tap_w / self.decoder_downsample))
        grids = [(base[0] * 2**i, base[1] * 2**i) for i in range(3)]
        out_grid = (grids[-1][0] * 2, grids[-1][1] * 2)
        skips = [None, resize_to(self.skip_stage1(taps[1]), grids[1]), resize_to(self.skip_stage2(taps[0]), grids[2])]

        bottom = F.interpolate(taps[-1], size=grids[0], mode="bilinear", align_corners=False)
        intermediate: dict[str, torch.Tensor] = {}
        task_maps = []
        for t in self.task_names:
            feature = self.preliminary_decoders[t](bottom)
            intermediate[t] = self.intermediate_heads[t](feature)
            task_maps.append(self.mix_proj[t](torch.cat([feature, intermediate[t]], dim=1)))

        message = None
        summed: list[torch.Tensor | float] = [0.0] * len(self.task_names)
        for stage, block in enumerate(self.stages):
            if stage > 0:
                task_maps = [up(x, grids[stage]) + skips[stage] for up, x in zip(self.up_embeds[stage - 1], task_maps)]
            want_message = self.attn_message_passing and stage < len(self.stages) - 1
            task_maps, message = block(task_maps, message, want_message)
            for i, x in enumerate(self._stage_output_maps(stage, task_maps)):
                if stage > 0:
                    x = self.reduce_channels[stage - 1][i](x)
                summed[i] = summed[i] + F.interpolate(x, size=out_grid, mode="bilinear", align_corners=False)

        size = image.shape[-2:]
        out: dict[str, Any] = {
            t: resize_to(self.heads[t](self.task_convs[t](summed[i])), size) for i, t in enumerate(self.task_names)
        }
        if self.training:
            out["aux"] = intermediate
        return out


@register_model("invpt")
def build_invpt(tasks: dict[str, int], **cfg: Any) -> InvPT:
    return InvPT(tasks, **cfg)
