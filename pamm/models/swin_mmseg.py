"""Swin with mmsegmentation's shifted-window semantics, run over timm's Swin modules.

MTMamba and MTMamba++ are released on mmseg's ``SwinTransformer``. Its weights are timm's Swin weights
(other names, and another PatchMerging channel order that a checkpoint converter permutes), but it runs
the blocks differently:

* **Pad, then roll.** A shifted block zero-pads the layer-normed map at the bottom/right to multiples of
  the window first, then rolls the *padded* map by ``-shift``, masks attention between the regions
  ``[0, -window)``, ``[-window, -shift)`` and ``[-shift, end)`` of each padded axis with -100, and rolls
  back before cropping. The padded zero tokens are ordinary keys of their region. timm rolls the
  unpadded map and pads afterwards, which differs wherever a side is not a multiple of the window
  (every paper-size map: 112x144 ... 14x18 with window 12).
* **The window never shrinks.** The window and the shift stay as configured on every map, also where a
  side is <= the window; timm shrinks both there unless ``always_partition`` (set here).
* The image is padded at the bottom/right to a multiple of the patch, and PatchMerging pads odd sides
  at the bottom/right (timm's PatchMerging does the same).

Only the forward is mmseg's: the modules, their parameter names and timm's pretrained loading stay
timm's, so a standard Swin checkpoint loads as before. A backbone config selects it with
``swin_semantics: mmseg`` (see ``pamm.models.backbones``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

SWIN_SEMANTICS = ("timm", "mmseg")

# Added to the attention logits of token pairs from different regions of a shifted window (as mmseg, timm).
REGION_MASK_VALUE = -100.0


def swin_semantics_kwargs(name: str, semantics: str, timm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The timm construction kwargs for ``semantics`` (``timm``: unchanged; ``mmseg``: window kept on every map)."""
    if semantics not in SWIN_SEMANTICS:
        raise ValueError(f"model.backbone.swin_semantics must be one of {list(SWIN_SEMANTICS)}, got {semantics!r}")
    if semantics == "timm":
        return dict(timm_kwargs)
    if not name.startswith("swin_"):
        raise ValueError(
            f"model.backbone.swin_semantics=mmseg needs a Swin (v1) backbone, got {name!r}: "
            f"drop the key or pick a swin_* backbone"
        )
    if timm_kwargs.get("always_partition") is False:
        raise ValueError(
            "model.backbone.always_partition=false contradicts swin_semantics=mmseg (mmseg keeps the window "
            "on every map): drop always_partition, or set swin_semantics=timm"
        )
    # always_partition: window and shift as configured on every map (relative-position tables of the full
    # window); strict_img_size=False: any input size, and no attention masks precomputed for img_size.
    return {**timm_kwargs, "always_partition": True, "strict_img_size": False}


def region_mask(
    padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``(windows, N, N)`` additive mask of a rolled padded map: 0 within a region, -100 across regions."""
    axes = []
    for size, win, sh in zip(padded, window, shift):
        cuts = [0, size - win, size - sh, size] if sh else [0, size]
        index = torch.zeros(size, device=device)
        for region, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
            index[start:stop] = region
        axes.append(index)
    labels = axes[0][:, None] * 3 + axes[1][None, :]  # region of each token, one id per (row, column) region
    windows = partition_windows(labels[None, :, :, None], window).squeeze(-1)  # (windows, N)
    differs = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differs.shape, device=device, dtype=dtype).masked_fill(differs, REGION_MASK_VALUE)


def partition_windows(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, C) -> (B * windows, wh * ww, C)``, batch-major then row-major windows (H, W multiples)."""
    batch, height, width, channels = x.shape
    wh, ww = window
    x = x.view(batch, height // wh, wh, width // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, channels)


def merge_windows(windows: torch.Tensor, window: tuple[int, int], batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: ``(B * windows, wh * ww, C) -> (B, H, W, C)``."""
    wh, ww = window
    x = windows.view(batch, height // wh, width // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, -1)


def shifted_window_attention(
    x: torch.Tensor,
    attn: nn.Module,
    window: tuple[int, int],
    shift: tuple[int, int],
    masks: dict[tuple, torch.Tensor] | None = None,
) -> torch.Tensor:
    """mmseg's (shifted) window attention of a layer-normed ``(B, H, W, C)`` map: pad, roll, attend, roll back, crop.

    ``attn`` is timm's ``WindowAttention`` (qkv, relative-position bias, proj) for ``window``; ``masks``
    caches the region masks of one map size across the blocks of a stage.
    """
    batch, height, width, _ = x.shape
    wh, ww = window
    padded = (-(-height // wh) * wh, -(-width // ww) * ww)
    x = F.pad(x, (0, 0, 0, padded[1] - width, 0, padded[0] - height))
    shifted = any(shift)
    mask = None
    if shifted:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        key = (padded, window, shift, x.device, x.dtype)
        if masks is None or key not in masks:
            mask = region_mask(padded, window, shift, x.device, x.dtype)
            if masks is not None:
                masks[key] = mask
        else:
            mask = masks[key]
    out = merge_windows(attn(partition_windows(x, window), mask=mask), window, batch, *padded)
    if shifted:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :height, :width]


def _block_forward(block: nn.Module, x: torch.Tensor, masks: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """One timm ``SwinTransformerBlock`` run as mmseg's ``SwinBlock`` (same residual structure)."""
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    if tuple(block.attn.window_size) != window:
        raise RuntimeError(f"Swin block window {window} differs from its attention's {tuple(block.attn.window_size)}")
    x = x + block.drop_path1(shifted_window_attention(block.norm1(x), block.attn, window, shift, masks))
    return x + block.drop_path2(block.mlp(block.norm2(x)))


def mmseg_swin_features(features: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps (NCHW) of timm's ``features_only`` Swin ``features`` for ``image``, computed as mmseg does.

    ``features`` is the ``FeatureGetterNet`` that ``timm.create_model(..., features_only=True,
    feature_cls="getter")`` returns; its Swin must be built with :func:`swin_semantics_kwargs` ``("mmseg")``.
    The maps are the stage outputs before the next patch merging, without mmseg's ``norm0..3`` (the
    models that need them add them: MTMamba's ``feature_norm``).
    """
    swin = features.model
    embed = swin.patch_embed
    patch_h, patch_w = embed.patch_size
    height, width = image.shape[-2:]
    x = F.pad(image, (0, -width % patch_w, 0, -height % patch_h))
    x = embed.norm(embed.proj(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)
    take = {int(i) for i in features.out_indices}
    maps = []
    for index, stage in enumerate(swin.layers):
        x = stage.downsample(x)  # timm's PatchMerging (identity in stage 0): odd sides padded bottom/right
        masks: dict[tuple, torch.Tensor] = {}
        for block in stage.blocks:
            x = _block_forward(block, x, masks)
        if index in take:
            maps.append(x.permute(0, 3, 1, 2).contiguous())
    return maps


__all__ = [
    "SWIN_SEMANTICS",
    "merge_windows",
    "mmseg_swin_features",
    "partition_windows",
    "region_mask",
    "shifted_window_attention",
    "swin_semantics_kwargs",
]
