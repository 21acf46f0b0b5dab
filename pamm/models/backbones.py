"""timm backbones behind one interface: ``forward(image) -> list of NCHW feature maps``.

* ViT-like models (no pyramid): taps after evenly spaced blocks (6, 12, 18, 24 for ViT-L),
  read with timm's ``forward_intermediates``; the last tap gets the final norm (as PAMM/InvPT).
  Built with ``dynamic_img_size`` so any input size works.
* Hierarchical models (Swin, ResNet, ...): timm's ``features_only`` with the getter feature
  class, which gives NCHW maps (Swin's default feature maps are NHWC).

Pretrained weights are only ever read from a local file (``pretrained_file``); nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from pamm._compat import ensure_torchvision_importable
from pamm.models.swin_mmseg import mmseg_swin_features, swin_semantics_kwargs


def _timm():
    ensure_torchvision_importable()
    import timm

    return timm


def vit_tap_indices(depth: int, n_taps: int = 4) -> list[int]:
    """Block indices (0-based) after which a ViT of ``depth`` blocks is tapped: evenly spaced quarters."""
    if depth < n_taps:
        raise ValueError(f"a ViT with {depth} blocks cannot give {n_taps} taps")
    return [depth * (k + 1) // n_taps - 1 for k in range(n_taps)]


class Backbone(nn.Module):
    """A timm model that returns a list of NCHW maps; ``channels`` and ``strides`` describe them."""

    channels: list[int]
    strides: list[int]

    def __init__(
        self,
        name: str,
        img_size: Sequence[int],
        pretrained_file: str | None = None,
        taps: Sequence[int] | None = None,
        out_indices: Sequence[int] | None = None,
        swin_semantics: str = "timm",
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        timm = _timm()
        self.name = name
        # "mmseg": a Swin run with mmseg's shifted windows (pamm.models.swin_mmseg), as MTMamba's release.
        timm_kwargs = swin_semantics_kwargs(name, swin_semantics, timm_kwargs)
        self.swin_semantics = swin_semantics
        pretrained_kwargs: dict[str, Any] = {"pretrained": False}
        if pretrained_file:
            path = Path(pretrained_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"pretrained weights file {path} does not exist: give a local .pth/.safetensors path "
                    f"for backbone {name!r} (nothing is downloaded), or set backbone.pretrained_file to null"
                )
            pretrained_kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
        if not timm.is_model(name):
            raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models() for valid names")
        is_vit = name.startswith(("vit_", "deit_", "eva", "beit"))
        self.is_vit = is_vit
        if is_vit:
            self.model = timm.create_model(
                name, img_size=tuple(img_size), dynamic_img_size=True, num_classes=0, **pretrained_kwargs, **timm_kwargs
            )
            depth = len(self.model.blocks)
            self.taps = list(taps) if taps is not None else vit_tap_indices(depth)
            width = self.model.embed_dim
            patch = self.model.patch_embed.patch_size
            self.channels = [width] * len(self.taps)
            self.strides = [patch[0]] * len(self.taps)
        else:
            kwargs = dict(timm_kwargs)
            if name.startswith("swin"):
                kwargs.setdefault("img_size", tuple(img_size))
            if out_indices is not None:
                kwargs["out_indices"] = tuple(out_indices)
            self.model = timm.create_model(name, features_only=True, feature_cls="getter", **pretrained_kwargs, **kwargs)
            info = self.model.feature_info
            self.channels = list(info.channels())
            self.strides = list(info.reduction())
            if out_indices is None and len(self.channels) > 4:
                # ResNet-style models also expose the stride-2 stem: keep the last four (4..32).
                self.keep = list(range(len(self.channels) - 4, len(self.channels)))
                self.channels = [self.channels[i] for i in self.keep]
                self.strides = [self.strides[i] for i in self.keep]
            else:
                self.keep = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.is_vit:
            maps = self.model.forward_intermediates(x, indices=self.taps, intermediates_only=True, norm=False)
            last = maps[-1]
            # Final LayerNorm on the last tap only (PAMM/InvPT/TaskPrompter feed the normed output).
            maps[-1] = self.model.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return list(maps)
        feats = mmseg_swin_features(self.model, x) if self.swin_semantics == "mmseg" else self.model(x)
        if self.keep is not None:
            feats = [feats[i] for i in self.keep]
        return list(feats)


def create_backbone(cfg: dict[str, Any], img_size: Sequence[int]) -> Backbone:
    """Build a backbone from a config dict ``{name, pretrained_file?, taps?, out_indices?, swin_semantics?, **timm_kwargs}``."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    return Backbone(name, img_size, **cfg)
