"""The authors' released InvPT and TaskPrompter checkpoints (``prismformore/Multi-Task-Transformer``) → our models.

Both maps are a pure renaming: every released tensor lands, unchanged in value and shape, on one key of ours
(``docs/fidelity.md`` gives the evidence). Sizes are never assumed: each tensor must fit the target model's own
entry, so the model must be built (``--set``) at the checkpoint's sizes, and the error names the key that does not.

Released entries without a counterpart are dropped only where the release's forward never reads them:

* InvPT: ``multi_task_decoder.scale_embed.2`` (runs, output unread), ``…invpt.redu_chan.0`` (skipped for stage 0),
  ``…invpt_stages.0.blocks.0.attn.fuse_attn`` (stage 0 receives no message) and ``…invpt.norm_mt`` (never called);
* TaskPrompter: the last block's ``attn.token_trans1`` (the prompts that block returns are never read).

Any other released entry without a target, and any target entry left unfilled, is a ``ConversionError``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from pamm.checkpoints.registry import ConversionError, Converted, register_converter

Rule = tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]

_T = r"(?P<t>[^.]+)"  # a task name
_P = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"  # a parameter or BN buffer


def _rule(pattern: str, template: str | Callable[["re.Match[str]"], str]) -> Rule:
    """``pattern`` (full match over a released key) → our key, by ``str.format(**groups)`` or a callable."""
    build = template if callable(template) else (lambda m, t=template: t.format(**m.groupdict()))
    return re.compile(pattern), build


def _minus_one(group: str, template: str) -> Callable[["re.Match[str]"], str]:
    """A template whose ``{group}`` is the released index less one (decoder stages 1, 2 → our 0, 1)."""
    return lambda m: template.format(**{**m.groupdict(), group: int(m.group(group)) - 1})


_UP_EMBED_LAYERS = {"1": "0", "2": "1", "4": "3", "5": "4"}  # the release's proj Sequential → our convs

_MTD = r"multi_task_decoder\."
_INVPT = _MTD + r"invpt\."
_STAGE = _INVPT + r"invpt_stages\.(?P<s>\d+)\.blocks\.0\."  # each decoder stage holds one block

INVPT_RULES: list[Rule] = [
    _rule(r"backbone\.(?P<rest>.+)", "backbone.model.{rest}"),
    _rule(rf"{_MTD}preliminary_decoder\.{_T}\.(?P<k>\d+)\.conv\.weight", "preliminary_decoders.{t}.{k}.0.weight"),
    _rule(rf"{_MTD}preliminary_decoder\.{_T}\.(?P<k>\d+)\.bn1\.{_P}", "preliminary_decoders.{t}.{k}.1.{p}"),
    _rule(rf"{_MTD}intermediate_head\.{_T}\.{_P}", "intermediate_heads.{t}.{p}"),
    _rule(rf"{_MTD}scale_embed\.0\.{_P}", "skip_stage2.{p}"),
    _rule(rf"{_MTD}scale_embed\.1\.{_P}", "skip_stage1.{p}"),
    _rule(rf"{_INVPT}mix_proj\.{_T}\.0\.{_P}", "mix_proj.{t}.{p}"),
    _rule(
        rf"{_INVPT}invpt_stages\.(?P<s>[12])\.patch_embed\.(?P<i>\d+)\.proj\.(?P<k>[1245])\.{_P}",
        lambda m: f"up_embeds.{int(m['s']) - 1}.{m['i']}.convs.{_UP_EMBED_LAYERS[m['k']]}.{m['p']}",
    ),
    _rule(rf"{_STAGE}(?P<n>norm1|norm2)\.{_P}", "stages.{s}.{n}.{p}"),
    _rule(rf"{_STAGE}mlp\.fc1\.{_P}", "stages.{s}.mlp.0.{p}"),
    _rule(rf"{_STAGE}mlp\.fc2\.{_P}", "stages.{s}.mlp.2.{p}"),
    _rule(rf"{_STAGE}attn\.conv_proj_q\.(?P<i>\d+)\.conv\.{_P}", "stages.{s}.attn.query_convs.{i}.0.{p}"),
    _rule(rf"{_STAGE}attn\.conv_proj_q\.(?P<i>\d+)\.bn\.{_P}", "stages.{s}.attn.query_convs.{i}.1.{p}"),
    _rule(rf"{_STAGE}attn\.(?P<n>proj_q|proj_k|proj_v|proj)\.{_P}", "stages.{s}.attn.{n}.{p}"),
    _rule(rf"{_STAGE}attn\.fuse_attn\.{_P}", "stages.{s}.attn.fuse_scores.{p}"),
    _rule(rf"{_INVPT}norm_mts\.(?P<s>\d+)\.{_P}", "stage_norms.{s}.{p}"),
    _rule(rf"{_INVPT}redu_chan\.(?P<s>[12])\.(?P<i>\d+)\.{_P}", _minus_one("s", "reduce_channels.{s}.{i}.{p}")),
    _rule(rf"{_INVPT}mt_proj\.{_T}\.(?P<k>[01])\.{_P}", "task_convs.{t}.{k}.{p}"),
    _rule(rf"heads\.{_T}\.linear_pred\.{_P}", "heads.{t}.{p}"),
]

# The four modules the release builds and its forward never reads (transformer_decoder.py:66, invpt.py:116,
# 484-485 (skipped at 535), 488).
INVPT_UNUSED = (
    "multi_task_decoder.scale_embed.2.",
    "multi_task_decoder.invpt.redu_chan.0.",
    "multi_task_decoder.invpt.invpt_stages.0.blocks.0.attn.fuse_attn.",
    "multi_task_decoder.invpt.norm_mt.",
)

_BLOCK = r"backbone\.blocks\.(?P<b>\d+)\."

TASKPROMPTER_RULES: list[Rule] = [
    _rule(r"backbone\.(?P<rest>patch_embed\..+|pos_embed|norm\..+)", "backbone.{rest}"),
    _rule(rf"{_BLOCK}(?P<n>norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.{_P}", "backbone.blocks.{b}.{n}.{p}"),
    _rule(rf"{_BLOCK}attn\.token_trans\.{_P}", "prompt_updates.{b}.to_pixels.{p}"),
    _rule(rf"{_BLOCK}attn\.token_trans1\.{_P}", "prompt_updates.{b}.to_channels.{p}"),
    _rule(r"backbone\.task_prompts", "prompts"),
    _rule(rf"backbone\.fea_decode_spa\.(?P<l>\d+)\.{_T}\.0\.{_P}", "task_features.{l}.{t}.decode_spatial.{p}"),
    _rule(rf"backbone\.fea_decode_chan\.(?P<l>\d+)\.{_T}\.0\.{_P}", "task_features.{l}.{t}.decode_channel.{p}"),
    _rule(rf"backbone\.fea_fuse\.(?P<l>\d+)\.{_T}\.(?P<k>[0124])\.{_P}", "task_features.{l}.{t}.fuse.{k}.{p}"),
    _rule(rf"backbone\.ctr_attn_conv\.(?P<l>\d+)\.{_T}\.(?P<k>[02])\.{_P}",
          "cross_task.{l}.{t}.weights_from_scores.{k}.{p}"),
    _rule(rf"heads\.{_T}\.mt_proj\.(?P<k>[01])\.{_P}", "heads.{t}.body.{k}.{p}"),
    _rule(rf"heads\.{_T}\.linear_pred\.{_P}", "heads.{t}.out.{p}"),
]


def _released_tasks(released: dict[str, torch.Tensor]) -> list[str]:
    """The release's task order, read from its ``heads.{t}.…`` entries (a ModuleDict keeps insertion order)."""
    tasks: list[str] = []
    for key in released:
        match = re.match(r"heads\.([^.]+)\.", key)
        if match and match.group(1) not in tasks:
            tasks.append(match.group(1))
    return tasks


def _released_depth(released: dict[str, torch.Tensor]) -> int:
    blocks = {int(m.group(1)) for key in released if (m := re.match(r"backbone\.blocks\.(\d+)\.", key))}
    return max(blocks) + 1 if blocks else 0


def _check_layout(source: str, released: dict[str, torch.Tensor], task_names: list[str], depth: int) -> None:
    """Tasks (names and order: per-task modules are also indexed) and ViT depth must be the checkpoint's."""
    tasks = _released_tasks(released)
    if tasks != list(task_names):
        raise ConversionError(
            f"--from {source}: the checkpoint holds tasks {tasks} (in this order), the model {list(task_names)}: "
            "import it with the --dataset it was trained on and without data.tasks"
        )
    released_depth = _released_depth(released)
    if released_depth != depth:
        raise ConversionError(
            f"--from {source}: the checkpoint's ViT has {released_depth} blocks, the model's {depth}: "
            f"--set model.backbone.depth={released_depth}"
        )


def _map_state(
    source: str,
    released: dict[str, torch.Tensor],
    model: nn.Module,
    rules: Iterable[Rule],
    unread: tuple[str, ...],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename every released entry onto ``model``'s state dict; refuse the first that does not fit, by name.

    Entries under the ``unread`` module prefixes are dropped; returns the state dict and the prefixes that matched.
    """
    target = model.state_dict()
    rules = list(rules)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    skipped: list[str] = []
    for key, value in released.items():
        module = next((p.rstrip(".") for p in unread if key.startswith(p)), None)
        if module is not None:
            if module not in skipped:
                skipped.append(module)
            continue
        name = next((build(m) for pattern, build in rules if (m := pattern.fullmatch(key))), None)
        if name is None:
            raise ConversionError(
                f"--from {source}: released key {key!r} has no counterpart in model {type(model).__name__}: "
                "this is not a checkpoint of the released code this converter maps"
            )
        if name not in target:
            raise ConversionError(
                f"--from {source}: released key {key!r} maps to {name!r}, which the model lacks: build the model "
                "with the checkpoint's configuration (--set ...)"
            )
        if name in out:
            raise ConversionError(f"--from {source}: released keys {origin[name]!r} and {key!r} both map to {name!r}")
        if tuple(value.shape) != tuple(target[name].shape):
            raise ConversionError(
                f"--from {source}: released key {key!r} has shape {tuple(value.shape)}, model key {name!r} "
                f"{tuple(target[name].shape)}: build the model at the checkpoint's sizes ({_size_hint(key)})"
            )
        out[name] = value.detach().to(dtype=target[name].dtype, copy=True)
        origin[name] = key
    unfilled = [name for name in target if name not in out]
    if unfilled:
        raise ConversionError(
            f"--from {source}: model key {unfilled[0]!r} ({len(unfilled)} in all) is not in the checkpoint: "
            "build the model with the checkpoint's configuration (--set ...)"
        )
    return out, skipped


def _size_hint(key: str) -> str:
    """Which setting most likely sets this entry's size."""
    if re.search(r"pos_embed|token_trans", key):
        return "--set data.size=[H,W]: the training crop fixes the token grid"
    if key.startswith("backbone."):
        return "--set model.backbone.embed_dim=... / patch_size=... / num_heads=..."
    return "--set model.embed_dim=... and the model's other widths"


def _refuse_unregistered(source: str, unregistered: dict[str, torch.Tensor] | None) -> None:
    if unregistered:
        raise ConversionError(
            f"--from {source}: --unregistered is not used here (the released checkpoint holds every entry): drop it"
        )


def _dropped_note(modules: list[str], why: str) -> list[str]:
    return [f"dropped the released {', '.join(modules)}: {why}"] if modules else []


@register_converter("invpt", "invpt")
def convert_invpt(
    released: dict[str, torch.Tensor],
    model: nn.Module,
    cfg: dict[str, Any],
    unregistered: dict[str, torch.Tensor] | None = None,
) -> Converted:
    """The release's InvPT (``InvPTWrapper``: backbone, multi_task_decoder, heads) → ``baselines.invpt.InvPT``."""
    _refuse_unregistered("invpt", unregistered)
    _check_layout("invpt", released, model.task_names, len(model.backbone.model.blocks))
    state, skipped = _map_state("invpt", released, model, INVPT_RULES, INVPT_UNUSED)
    return Converted(state, _dropped_note(skipped, "modules the release builds but its forward never reads"))


@register_converter("taskprompter", "taskprompter")
def convert_taskprompter(
    released: dict[str, torch.Tensor],
    model: nn.Module,
    cfg: dict[str, Any],
    unregistered: dict[str, torch.Tensor] | None = None,
) -> Converted:
    """The release's TaskPrompter (``TaskPrompterWrapper``: backbone, heads) → ``baselines.taskprompter``."""
    _refuse_unregistered("taskprompter", unregistered)
    depth = len(model.backbone.blocks)
    _check_layout("taskprompter", released, model.task_names, depth)
    if model.taps[-1] != depth - 1:
        raise ConversionError(
            f"--from taskprompter: the release taps the last ViT block ({depth - 1}), the model's last tap is "
            f"block {model.taps[-1]}: leave model.backbone.taps unset"
        )
    unread = (f"backbone.blocks.{depth - 1}.attn.token_trans1.",)
    state, skipped = _map_state("taskprompter", released, model, TASKPROMPTER_RULES, unread)
    return Converted(state, _dropped_note(skipped, "the prompts the last block returns are never read"))
