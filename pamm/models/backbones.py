"""timm backbones behind one interface: ``forward(image) -> list of NCHW feature maps``.

* ViT-like models (no pyramid): taps after evenly spaced blocks (6, 12, 18, 24 for ViT-L),
  read with timm's ``forward_intermediates``; the last tap gets the final norm (as PAMM/InvPT).
  Built with ``dynamic_img_size`` so any input size works.
* Hierarchical models (Swin, ResNet, ...): timm's ``features_only`` with the getter feature
  class, which gives NCHW maps (Swin's default feature maps are NHWC).

Pretrained weights are only ever read from a local file (``pretrained_file``); nothing is downloaded.
:func:`load_pretrained` reads it (torch or safetensors state dict), strips known wrappers, adapts a ViT's
class token and position embedding to the built model, and refuses weights that do not fit unless the
config opts in (``pretrained_partial``).
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pamm._compat import ensure_torchvision_importable
from pamm.errors import ConfigError
from pamm.io import weights_file_format
from pamm.models.swin_mmseg import mmseg_swin_features, swin_semantics_kwargs

_log = logging.getLogger(__name__)
POS_EMBED_RESAMPLE = ("bicubic_antialias", "bicubic")  # timm's default | the released PAMM's (plain bicubic)
WRAPPER_KEYS = ("state_dict", "model")  # {"model": state_dict, "optimizer": ...} and the like
WRAPPER_PREFIXES = ("module.", "backbone.")  # DDP; a whole model whose backbone is the part we want
PREFIX_TOKEN_KEYS = ("cls_token", "dist_token", "reg_token")


class PretrainedWeightsError(ConfigError):
    """A pretrained weights file that cannot be loaded into the backbone; the message names the file and the fix."""


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
        pos_embed_resample: str = "bicubic_antialias",
        pretrained_partial: bool = False,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        timm = _timm()
        self.name = name
        # "mmseg": a Swin run with mmseg's shifted windows (pamm.models.swin_mmseg), as MTMamba's release.
        timm_kwargs = swin_semantics_kwargs(name, swin_semantics, timm_kwargs)
        self.swin_semantics = swin_semantics
        if pos_embed_resample not in POS_EMBED_RESAMPLE:
            raise ConfigError(
                f"model.backbone.pos_embed_resample={pos_embed_resample!r} is not one of {list(POS_EMBED_RESAMPLE)}"
            )
        if pretrained_file and not Path(pretrained_file).is_file():
            raise FileNotFoundError(
                f"pretrained weights file {pretrained_file} does not exist: give a local .pth/.safetensors path "
                f"for backbone {name!r} (nothing is downloaded), or set backbone.pretrained_file to null"
            )
        if not timm.is_model(name):
            raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models() for valid names")
        is_vit = name.startswith(("vit_", "deit_", "eva", "beit"))
        self.is_vit = is_vit
        if is_vit:
            self.model = timm.create_model(
                name, img_size=tuple(img_size), dynamic_img_size=True, num_classes=0, pretrained=False, **timm_kwargs
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
            self.model = timm.create_model(name, features_only=True, feature_cls="getter", pretrained=False, **kwargs)
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
        if pretrained_file:
            full_kwargs = dict(timm_kwargs, img_size=tuple(img_size)) if is_vit or name.startswith("swin") else dict(timm_kwargs)
            load_pretrained(
                self.timm_model, pretrained_file, name, full_kwargs,
                pos_embed_resample=pos_embed_resample, partial=pretrained_partial,
            )

    @property
    def timm_model(self) -> nn.Module:
        """The timm network that holds the weights (a ``features_only`` wrapper keeps it as ``.model``)."""
        return getattr(self.model, "model", self.model) if not self.is_vit else self.model

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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch (``.pth``/``.pt``/``.bin``) or ``.safetensors`` file, with known wrappers
    removed: ``{"state_dict": ...}`` / ``{"model": ...}`` containers and ``module.`` / ``backbone.`` key
    prefixes. Raises :class:`PretrainedWeightsError` (one line) for anything that is not a state dict."""
    path = Path(path)
    fix = "give a .pth/.pt/.bin/.safetensors file holding a state dict, or set model.backbone.pretrained_file to null"
    if path.suffix == ".npz":
        raise PretrainedWeightsError(
            f"pretrained weights file {path}: .npz (JAX) weights are not read here; convert them once with timm "
            "(timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...)), then torch.save its "
            "state_dict()) and give the .pth"
        )
    kind = weights_file_format(path)
    if kind is None:
        with path.open("rb") as handle:
            head = handle.read(64)
        looks = "a text file" if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "no known format"
        raise PretrainedWeightsError(f"pretrained weights file {path} is not a weights file ({looks}): {fix}")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle, zip, safetensors header: all mean "not a weights file")
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise PretrainedWeightsError(
            f"pretrained weights file {path} could not be read as {kind} weights ({type(err).__name__}: {first}): {fix}"
        ) from err
    while isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or (obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"pretrained weights file {path} holds no state dict (found {type(obj).__name__}): {fix}")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _prefix_rows(state: dict[str, torch.Tensor], rows: int) -> int:
    """How many leading position-embedding rows of a checkpoint belong to prefix tokens (class, distillation,
    register): the count its prefix-token tensors imply when the rest is a square grid, else 0 or 1."""
    implied = sum(int(state[k].shape[1]) if k == "reg_token" else 1 for k in PREFIX_TOKEN_KEYS if k in state)
    for candidate in dict.fromkeys((implied, 1, 0)):
        side = math.isqrt(max(rows - candidate, 0))
        if candidate <= rows and side * side == rows - candidate and side > 0:
            return candidate
    raise ValueError(f"its pos_embed has {rows} rows, not prefix tokens plus a square grid")


def resample_pos_embed(grid: torch.Tensor, new_size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize a ``(1, h*w, C)`` square position-embedding grid to ``new_size``: bicubic, align_corners
    False, antialiased (``bicubic_antialias``, timm) or not (``bicubic``, the released PAMM's resize)."""
    side = math.isqrt(grid.shape[1])
    new_size = (int(new_size[0]), int(new_size[1]))
    if (side, side) == new_size:
        return grid
    dtype = grid.dtype
    image = grid.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=new_size, mode="bicubic", align_corners=False, antialias=mode == "bicubic_antialias")
    return image.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], -1).to(dtype)


def _adapt_vit(state: dict[str, torch.Tensor], model: nn.Module, mode: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fit a standard ViT checkpoint's prefix tokens and position grid to ``model``: a model without class
    token drops ``cls_token`` and ``pos_embed[:, 0]``; the grid is resized with ``mode``."""
    state, dropped = dict(state), []
    if "pos_embed" not in state or getattr(model, "pos_embed", None) is None:
        return state, dropped
    posemb = state.pop("pos_embed")
    wanted = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    same_grid = posemb.shape == model.pos_embed.shape  # saved from a model like this one (any grid shape)
    if same_grid:
        prefix = wanted
    else:
        prefix = _prefix_rows(state, posemb.shape[1])
    if not wanted and getattr(model, "cls_token", None) is None:
        for key in PREFIX_TOKEN_KEYS:
            if key in state and getattr(model, key, None) is None:
                dropped.append(key)
                state.pop(key)
    if prefix and not wanted:
        dropped.insert(0, "pos_embed[:, :%d]" % prefix)
        head = posemb[:, :0]
    elif prefix == wanted:
        head = posemb[:, :prefix]
    else:
        raise ValueError(f"the checkpoint has {prefix} prefix token(s) in pos_embed, the model {wanted}")
    grid = posemb[:, prefix:] if same_grid else resample_pos_embed(posemb[:, prefix:], model.patch_embed.grid_size, mode)
    state["pos_embed"] = torch.cat([head, grid], dim=1)
    return state, dropped


def _timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The model family's own timm checkpoint filter (old layouts, patch-embed and window resizes), if any.
    The position embedding is ours to resize, so it is kept out of the filter."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    posemb = state.pop("pos_embed", None)
    state = dict(filter_fn(state, model))
    if posemb is not None:
        state["pos_embed"] = posemb
    return state


def _names(keys: Sequence[str], limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


@torch.no_grad()
def load_pretrained(
    model: nn.Module,
    path: str | Path,
    name: str,
    timm_kwargs: dict[str, Any] | None = None,
    pos_embed_resample: str = "bicubic_antialias",
    partial: bool = False,
) -> dict[str, int]:
    """Load the weights file ``path`` into the timm network ``model`` (of timm architecture ``name``).

    Keys of the full timm model that ours leaves out (a classifier head, a pruned final norm) are ignored.
    Any other missing, unexpected or mis-shaped key refuses the file with one line (counts and a few
    names), unless ``partial`` (config ``model.backbone.pretrained_partial: true``): then the matching
    tensors load and the rest is logged. Returns the counts ``{matched, missing, unexpected, mismatched}``.
    """
    state = read_state_dict(path)
    dropped: list[str] = []
    try:
        if hasattr(model, "patch_embed") and hasattr(model, "pos_embed"):
            state, dropped = _adapt_vit(state, model, pos_embed_resample)
        state = _timm_filter(state, model)
    except (ValueError, KeyError, RuntimeError, AttributeError) as err:
        raise PretrainedWeightsError(
            f"pretrained weights file {path} does not fit backbone {name!r} ({err}): give weights of this "
            "architecture"
        ) from err
    target = model.state_dict()
    kwargs = {k: v for k, v in (timm_kwargs or {}).items() if k not in ("features_only", "out_indices", "feature_cls")}
    with torch.device("meta"):
        full = set(_timm().create_model(name, pretrained=False, **kwargs).state_dict())
    ignored = sorted(k for k in state if k not in target and k in full)
    unexpected = sorted(k for k in state if k not in target and k not in full)
    missing = sorted(k for k in target if k not in state)
    mismatched = sorted(k for k in state if k in target and state[k].shape != target[k].shape)
    matched = [k for k in state if k in target and k not in mismatched]
    counts = {"matched": len(matched), "missing": len(missing), "unexpected": len(unexpected), "mismatched": len(mismatched)}
    if missing or unexpected or mismatched:
        detail = f"{len(matched)} of {len(target)} keys matched, {len(missing)} missing"
        detail += f" ({_names(missing)})" if missing else ""
        detail += f", {len(unexpected)} unexpected" + (f" ({_names(unexpected)})" if unexpected else "")
        if mismatched:
            k = mismatched[0]
            detail += f", {len(mismatched)} of another shape ({k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)})"
        if not partial:
            raise PretrainedWeightsError(
                f"pretrained weights file {path} does not fit backbone {name!r}: {detail}. Give weights of this "
                "architecture, or set model.backbone.pretrained_partial: true to load only the matching ones"
            )
        _log.warning("backbone %s: loading only the matching part of %s (pretrained_partial): %s", name, path, detail)
    model.load_state_dict({k: state[k] for k in matched}, strict=False)
    resized = f"position grid {pos_embed_resample}; " if "pos_embed" in matched else ""
    _log.info("backbone %s: %d tensors from %s (%sleft out: %s)", name, len(matched), path, resized,
              ", ".join(dropped + ignored) or "nothing")
    return counts
