"""TaskPrompter (Ye & Xu, ICLR'23) around timm's own ViT blocks.

What it is (the release:
prismformore/Multi-Task-Transformer@4e4daffed9cf592487c96a46a3983e23021887b2:TaskPrompter/models/transformers/taskprompter.py;
checked against it and its golden fixtures, ``docs/fidelity.md#taskprompter``):

* One learnable prompt token per task (``prompt_len: 1``, initialised ≈ 1 ± 1) is prepended to the patch tokens
  and runs through every ViT block with them (no position embedding on prompts, no class token: as released).
* Every block also updates the prompts on their own (the release's ``token_trans`` / ``token_trans1``): the
  block's ``norm1``-ed prompts are mapped to one value per patch (``Linear(dim, H·W)``, ``to_pixels``) and back
  (``Linear(H·W, dim)``, ``to_channels``), and that is added to the prompts' attention output before the residual:
  ``P ← P + Attn([P; X])[P] + to_channels(to_pixels(LN1(P)))``, then the shared MLP residual.
* At each tap block (6/12/18/24 for ViT-L) the prompts' attention turns into task features:
  - *spatial*: each prompt's pre-softmax q·k scores over the patch tokens, one map per head, scale that head's
    channel slice of the block output (plus the output itself) → 1×1 conv;
  - *channel*: the block's ``to_pixels`` prompts (one value per patch) query the patch tokens' channels inside
    ``chan_nheads`` spatial windows; the scores scale each channel per window (plus the output) → 1×1 conv;
  - both → ``fea_fuse`` (1×1, 3×3, BN, GELU, 1×1) → one map per task and tap; optional cross-task reweighting
    (``use_ctr``) mixes the task maps with weights read from the prompt→prompt scores.
* Task maps are summed over the taps, upsampled ×4 and go through a conv head (3×3 conv with bias, BN, GELU,
  1×1); bilinear to the input size. The last tap uses the final LayerNorm-ed tokens.

Differences from the release, deliberate and without effect on the computed function:

* The ViT is timm's ``VisionTransformer`` (from ``create_backbone``); each block's own ``norm1``, ``attn``,
  ``norm2`` and ``mlp`` run on ``[prompts; patches]`` (``_run_block``) instead of a rewritten block class.
* Prompt attention is recomputed at the taps from the block's ``norm1`` and ``attn.qkv`` weights for the prompt
  queries only (``prompt_attention_logits``), instead of being returned by a modified attention; the release's
  channel-attention output (softmax · values), which nothing reads, is not computed.
* The last tap block has no ``to_channels`` (the release's ``token_trans1`` of its last block): the prompts that
  block returns are never read, so it can change no output and get no gradient (the converter drops it).

Kept as released: the spatial and channel scores that scale the features are the raw, unscaled, pre-softmax q·k;
drop path draws separate masks for prompts and patches; the head's 3×3 conv has a bias.

``to_pixels`` fixes the token grid at build time (as in the release): the model runs at ``img_size`` only (test
images are padded to it).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pamm.models.backbones import create_backbone
from pamm.models.heads import ConvHead, resize_to
from pamm.models.registry import register_model


def prompt_attention_logits(attn: nn.Module, normed_tokens: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """Pre-softmax, unscaled q·k of the first ``num_prompts`` tokens against all tokens: (B, heads, P, N).

    Recomputed from a timm ``Attention``'s ``qkv`` weights (rows ordered q, k, v) and its q/k norms, so the prompts'
    attention inside the block is ``softmax(logits * attn.scale)``; only the P query rows are computed.
    """
    batch, length, _ = normed_tokens.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    w_q, w_k, _ = attn.qkv.weight.chunk(3, dim=0)
    b_q, b_k = (None, None) if attn.qkv.bias is None else attn.qkv.bias.chunk(3)[:2]
    q = F.linear(normed_tokens[:, :num_prompts], w_q, b_q).view(batch, num_prompts, heads, head_dim).transpose(1, 2)
    k = F.linear(normed_tokens, w_k, b_k).view(batch, length, heads, head_dim).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return torch.matmul(q, k.transpose(-2, -1))


class PromptUpdate(nn.Module):
    """One block's prompt path (release ``token_trans`` / ``token_trans1``): dim → H·W → dim.

    ``to_pixels`` gives each prompt one value per patch; at a tap block these are also the channel attention's
    queries. ``to_channels`` maps them back; the result is added to the prompts' attention output. The last tap
    block has no ``to_channels``: the prompts it returns are never read.
    """

    def __init__(self, dim: int, pixels: int, maps_back: bool = True) -> None:
        super().__init__()
        self.to_pixels = nn.Linear(dim, pixels)
        self.to_channels = nn.Linear(pixels, dim) if maps_back else None
        for linear in (self.to_pixels, self.to_channels):  # the release's ViT init for every Linear
            if linear is not None:
                nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)


class PromptChannelAttention(nn.Module):
    """Task prompts (one value per patch) as queries over the patch tokens' channels, one head per spatial window.

    Returns pre-softmax scores (B, T, C, windows_h, windows_w): how much each task prompt picks each channel,
    per window. Has no weights: the queries come from the block's ``PromptUpdate.to_pixels``.
    """

    def __init__(self, grid: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        side = math.isqrt(num_heads)
        if side * side != num_heads:
            raise ValueError(f"chan_nheads={num_heads} must be a square (heads tile the token grid side × side)")
        if grid[0] % side or grid[1] % side:
            raise ValueError(
                f"token grid {grid} is not divisible into {side}×{side} windows (chan_nheads={num_heads})"
            )
        self.grid = grid
        self.side = side

    def _windows(self, per_pixel: torch.Tensor) -> torch.Tensor:
        """(B, R, H·W) -> (B, side, side, R, window pixels)."""
        batch, rows, _ = per_pixel.shape
        s, (h, w) = self.side, self.grid
        x = per_pixel.view(batch, rows, s, h // s, s, w // s)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, s, s, rows, (h // s) * (w // s))

    def forward(self, prompt_pixels: torch.Tensor, normed_patches: torch.Tensor) -> torch.Tensor:
        """``prompt_pixels`` (B, T, H·W); ``normed_patches`` (B, H·W, C)."""
        queries = self._windows(prompt_pixels)  # (B, s, s, T, win)
        keys = self._windows(normed_patches.transpose(1, 2))  # (B, s, s, C, win)
        scores = torch.matmul(queries, keys.transpose(-2, -1))  # (B, s, s, T, C)
        return scores.permute(0, 3, 4, 1, 2)


class TaskFeatureFromPrompts(nn.Module):
    """One tap: spatial and channel prompt attention -> one (B, final_dim, H, W) map for one task."""

    def __init__(self, vit_dim: int, decode_dim: int, final_dim: int) -> None:
        super().__init__()
        self.decode_spatial = nn.Conv2d(vit_dim, decode_dim, 1)
        self.decode_channel = nn.Conv2d(vit_dim, decode_dim, 1)
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * decode_dim, final_dim, 1),
            nn.Conv2d(final_dim, final_dim, 3, padding=1),
            nn.BatchNorm2d(final_dim),
            nn.GELU(),
            nn.Conv2d(final_dim, final_dim, 1),
        )

    def forward(self, feature: torch.Tensor, spatial_maps: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
        """``feature`` (B, C, H, W); ``spatial_maps`` (B, heads, H, W), one per C/heads channels;
        ``channel_scores`` (B, C, s, s), one per channel and window."""
        batch, channels, h, w = feature.shape
        groups = spatial_maps.shape[1]
        spatial = (feature.view(batch, groups, channels // groups, h, w) * spatial_maps.unsqueeze(2)).view_as(feature)
        side = channel_scores.shape[-1]
        channel = channel_scores.repeat_interleave(h // side, dim=2).repeat_interleave(w // side, dim=3) * feature
        decoded = [self.decode_spatial(spatial + feature), self.decode_channel(channel + feature)]
        return self.fuse(torch.cat(decoded, dim=1))


class CrossTaskReweighting(nn.Module):
    """``use_ctr``: each task's map becomes a mix of all task maps, weighted from its prompt→prompt scores."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.weights_from_scores = nn.Sequential(
            nn.Conv2d(num_heads, num_heads, 1), nn.GELU(), nn.Conv2d(num_heads, 1, 1)
        )

    def forward(self, prompt_scores: torch.Tensor, task_maps: list[torch.Tensor]) -> torch.Tensor:
        """``prompt_scores`` (B, heads, 1, T) for this task -> sum_j w_j · map_j."""
        weights = self.weights_from_scores(prompt_scores)  # (B, 1, 1, T)
        return sum(weights[:, :, :, j : j + 1] * m for j, m in enumerate(task_maps))


def released_head(in_channels: int, out_channels: int) -> ConvHead:
    """The release's TaskPrompter head: ``ConvHead`` with a bias on its 3×3 conv, weights trunc-normal (std 0.02)."""
    head = ConvHead(in_channels, out_channels, conv_bias=True)
    nn.init.trunc_normal_(head.body[0].weight, std=0.02)
    return head


class TaskPrompter(nn.Module):
    """timm ViT with task prompts + prompt-attention decoding; ``forward(image) -> {task: (B, C_t, H, W)}``."""

    # The timm ``Block`` parts ``_run_block`` composes (it adds the prompt update between attention and residual).
    _BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")

    def __init__(
        self,
        tasks: dict[str, int],
        backbone: dict[str, Any],
        img_size: Sequence[int],
        embed_dim: int = 768,
        final_embed_dim: int = 768,
        prompt_len: int = 1,
        chan_nheads: int = 16,
        use_ctr: bool = False,
        upsample: int = 4,
    ) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.task_names = list(self.tasks)
        wrapper = create_backbone(backbone, img_size)
        if not wrapper.is_vit:
            raise ValueError(f"TaskPrompter needs a plain ViT backbone, got {wrapper.name!r}")
        self.backbone = wrapper.model
        self.taps = sorted(wrapper.taps)
        vit_dim = self.backbone.embed_dim
        num_heads = self.backbone.blocks[0].attn.num_heads
        self.grid = tuple(int(g) for g in self.backbone.patch_embed.grid_size)
        for index, block in enumerate(self.backbone.blocks):
            missing = [part for part in self._BLOCK_PARTS if not hasattr(block, part)]
            if missing:
                raise ValueError(
                    f"TaskPrompter needs timm ViT blocks with {self._BLOCK_PARTS}; backbone {wrapper.name!r} block "
                    f"{index} ({type(block).__name__}) lacks {missing}: pick a plain vit_* backbone"
                )
        # As released: no class/register tokens; their position-embedding slot is skipped in forward.
        self.backbone.cls_token = None
        self.backbone.reg_token = None
        self.prompt_len = prompt_len
        self.num_prompts = prompt_len * len(self.tasks)
        if vit_dim % num_heads:
            raise ValueError(f"ViT width {vit_dim} is not divisible by its {num_heads} heads")
        if prompt_len != 1:
            # The release indexes its channel scores by task, which is only right for one prompt per task.
            raise ValueError(f"only prompt_len 1 (the released configs) is implemented, got {prompt_len}")
        self.upsample = upsample

        self.prompts = nn.Parameter(torch.empty(self.num_prompts, vit_dim))
        nn.init.trunc_normal_(self.prompts, mean=1.0, std=1.0, a=-2.0, b=2.0)
        pixels = self.grid[0] * self.grid[1]
        last_tap = self.taps[-1]
        self.prompt_updates = nn.ModuleList(
            PromptUpdate(vit_dim, pixels, maps_back=index < last_tap) for index in range(last_tap + 1)
        )
        self.channel_attention = PromptChannelAttention(self.grid, chan_nheads)
        self.task_features = nn.ModuleList(
            nn.ModuleDict({t: TaskFeatureFromPrompts(vit_dim, embed_dim, final_embed_dim) for t in self.tasks})
            for _ in self.taps
        )
        self.cross_task = (
            nn.ModuleList(nn.ModuleDict({t: CrossTaskReweighting(num_heads) for t in self.tasks}) for _ in self.taps)
            if use_ctr
            else None
        )
        self.heads = nn.ModuleDict({t: released_head(final_embed_dim, c) for t, c in self.tasks.items()})

    def _patch_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position embedding (patch slots only) -> (B, H·W, C)."""
        from timm.layers import resample_abs_pos_embed

        vit = self.backbone
        x = vit.patch_embed(image)
        grid = tuple(x.shape[1:3]) if x.ndim == 4 else self.grid
        if grid != self.grid:
            raise ValueError(
                f"TaskPrompter is built for a {self.grid} token grid (img_size), got {grid}: pad inputs to img_size"
            )
        x = x.flatten(1, 2) if x.ndim == 4 else x
        pos = vit.pos_embed if vit.no_embed_class else vit.pos_embed[:, vit.num_prefix_tokens :]
        if pos.shape[1] != x.shape[1]:
            pos = resample_abs_pos_embed(pos, new_size=grid, old_size=vit.patch_embed.grid_size, num_prefix_tokens=0)
        return vit.norm_pre(vit.pos_drop(x + pos))

    def _drop_path(self, drop_path: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Drop path with separate per-sample masks for the prompt and the patch rows (as released)."""
        if not self.training or isinstance(drop_path, nn.Identity):
            return x
        p = self.num_prompts
        return torch.cat([drop_path(x[:, :p]), drop_path(x[:, p:])], dim=1)

    def _run_block(
        self, block: nn.Module, update: PromptUpdate, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ViT block on ``[prompts; patches]`` with the in-block prompt update.

        Returns the block output, its ``norm1``-ed input (for the tap's prompt attention) and the prompts'
        ``to_pixels`` values (the tap's channel-attention queries).
        """
        p = self.num_prompts
        normed = block.norm1(tokens)
        attended = block.attn(normed)
        prompt_pixels = update.to_pixels(normed[:, :p])
        if update.to_channels is not None:
            attended = torch.cat([attended[:, :p] + update.to_channels(prompt_pixels), attended[:, p:]], dim=1)
        tokens = tokens + self._drop_path(block.drop_path1, block.ls1(attended))
        tokens = tokens + self._drop_path(block.drop_path2, block.ls2(block.mlp(block.norm2(tokens))))
        return tokens, normed, prompt_pixels

    def _tap_features(
        self, tap: int, block: nn.Module, normed: torch.Tensor, prompt_pixels: torch.Tensor, patch_out: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per-task maps of one tap from the block's prompt attention and its (possibly normed) patch output."""
        batch = normed.shape[0]
        h, w = self.grid
        spatial = prompt_attention_logits(block.attn, normed, self.num_prompts)  # (B, heads, P, P + HW)
        channel = self.channel_attention(prompt_pixels, normed[:, self.num_prompts :])
        feature = patch_out.transpose(1, 2).reshape(batch, -1, h, w)
        maps = []
        for i, t in enumerate(self.task_names):
            spatial_maps = spatial[:, :, i, self.num_prompts :].reshape(batch, -1, h, w)  # (B, heads, H, W)
            maps.append(self.task_features[tap][t](feature, spatial_maps, channel[:, i]))
        if self.cross_task is not None:
            maps = [
                self.cross_task[tap][t](spatial[:, :, i : i + 1, : self.num_prompts], maps)
                for i, t in enumerate(self.task_names)
            ]
        return maps

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        patches = self._patch_tokens(image)
        tokens = torch.cat([self.prompts.unsqueeze(0).expand(patches.shape[0], -1, -1), patches], dim=1)
        summed: list[torch.Tensor | float] = [0.0] * len(self.task_names)
        last_tap = self.taps[-1]
        for index, block in enumerate(self.backbone.blocks[: last_tap + 1]):
            tokens, normed, prompt_pixels = self._run_block(block, self.prompt_updates[index], tokens)
            if index in self.taps:
                patch_out = tokens[:, self.num_prompts :]
                if index == last_tap:
                    patch_out = self.backbone.norm(patch_out)
                tap_maps = self._tap_features(self.taps.index(index), block, normed, prompt_pixels, patch_out)
                summed = [s + m for s, m in zip(summed, tap_maps)]
        size = image.shape[-2:]
        out = {}
        for i, t in enumerate(self.task_names):
            feature = F.interpolate(summed[i], scale_factor=self.upsample, mode="bilinear", align_corners=False)
            out[t] = resize_to(self.heads[t](feature), size)
        return out


@register_model("taskprompter")
def build_taskprompter(tasks: dict[str, int], **cfg: Any) -> TaskPrompter:
    return TaskPrompter(tasks, **cfg)
