"""Released MTMamba / MTMamba++ checkpoints (EnVision-Research/MTMamba) converted into our models.

The authors save ``{"model": model.state_dict()}`` of the DDP-wrapped network. Their layout, and ours:

* **Backbone**: mmseg's ``SwinTransformer`` names (``stages.i.blocks.j.attn.w_msa.qkv``, ``ffn.layers.0.0``,
  ``stages.i.downsample`` = the merge *after* stage i) become timm's (``layers.i.blocks.j.attn.qkv``,
  ``mlp.fc1``, ``layers.{i+1}.downsample``). mmseg's PatchMerging flattens each 2x2 neighbourhood as
  ``nn.Unfold`` does, channel ``c*4 + kh*2 + kw``; timm concatenates the four sub-patches,
  ``(kw*2 + kh)*C + c``: the reduction's columns and the merge LayerNorm are permuted.
  ``relative_position_index`` is derived from the window: it must equal the model's, and is dropped.
  ``norm0..3`` (mmseg's LayerNorm on each output map) become ``feature_norms.0..3``.
* **Decoder**: one module per task and stage (``block_1.{task}_{stage}``, ``block_3.{stage}.op.{task}``, ...)
  is stacked on the leading task axis of our task-batched parameters, in the model's task order.
  SS2D's ``A_logs`` / ``Ds`` are flat ``(4*d_inner, ...)`` in the release and ``(4, d_inner, ...)`` here;
  both scan the directions in the same order (``baselines.ss2d.MTMAMBA_DIRECTION_ORDER``).
* **MTMamba++ head**: the tasks' Conv3x3 + BN are one grouped conv + BN here (task blocks of ``hidden``
  channels). The release's per-task ``num_batches_tracked`` counters collapse into our one counter (their
  maximum; with BN momentum 0.1 the counter is not read).

The model must run mmseg's Swin semantics (``model.backbone.swin_semantics: mmseg``, the models' default):
every released checkpoint was trained with them. Any released key without a counterpart, any model key left
unfilled and any shape mismatch is refused by name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from pamm.checkpoints.registry import ConversionError, Converted, register_converter

SOURCES = {"mtmamba": "MTMamba", "mtmamba_pp": "MTMamba++"}


def mmseg_merge_order(channels: int) -> torch.Tensor:
    """Indices ``p`` with ``timm_features[..., t] = mmseg_features[..., p[t]]`` for a 2x2 PatchMerging of ``channels``.

    timm's merged channel ``t = (kw*2 + kh)*C + c``; mmseg's (``nn.Unfold``) is ``c*4 + kh*2 + kw``.
    """
    t = torch.arange(4 * channels)
    group, c = t // channels, t % channels
    kw, kh = group // 2, group % 2
    return c * 4 + kh * 2 + kw


# The released SS2D / CSS2D parameters (models/utils.py, CTM.py, MTMamba_plus.py) -> ours (baselines/ss2d.py).
_SS2D_NAMES = {
    "in_proj.weight": "in_proj.weight",
    "in_proj_cross.weight": "in_proj_cross.weight",
    "conv2d.weight": "conv_weight",
    "conv2d.bias": "conv_bias",
    "x_proj_weight": "x_proj_weight",
    "dt_projs_weight": "dt_proj_weight",
    "dt_projs_bias": "dt_proj_bias",
    "A_logs": "A_logs",
    "Ds": "Ds",
    "out_norm.weight": "out_norm.weight",
    "out_norm.bias": "out_norm.bias",
    "out_proj.weight": "out_proj.weight",
}

Shape = tuple[int, ...]


def _same(part: Shape) -> Shape:
    return part


def _ss2d_released_shape(name: str) -> Callable[[Shape], Shape]:
    """The released shape of one task's SS2D parameter whose shape here is ``part``."""
    if name in ("A_logs", "Ds"):  # (K, d_inner, N) / (K, d_inner) here, direction-major flat in the release
        return lambda part: (part[0] * part[1], *part[2:])
    if name == "conv2d.weight":  # depthwise: (d_inner, k, k) here, (d_inner, 1, k, k) in the release
        return lambda part: (part[0], 1, *part[1:])
    return _same


def _conv1x1_shape(part: Shape) -> Shape:
    return (*part, 1, 1)


@dataclass(frozen=True)
class _Rule:
    """Where one released tensor goes: ``target`` key, the task slot (None: the whole key) and its released shape."""

    target: str
    task: str | None = None
    layout: str = "whole"  # "whole", "stack" (dim 0 is the task axis), "block" (dim 0 holds the tasks' blocks)
    released_shape: Callable[[Shape], Shape] = _same


class _Assembler:
    """Fills the target state dict from released tensors, checking names, shapes and coverage."""

    def __init__(self, source: str, model: nn.Module, tasks: list[str]) -> None:
        self.source, self.tasks = source, tasks
        self.target = model.state_dict()
        self.out: dict[str, torch.Tensor] = {}
        self.filled: dict[str, set[int]] = {}
        self.slots: dict[str, int] = {}

    def _slot(self, rule: _Rule) -> tuple[int, int]:
        """(slot, slots of the key): a task's slot, or the one slot of a whole key or a shared (task-less) stack."""
        if rule.layout == "whole" or rule.task is None:
            return 0, 1
        return self.tasks.index(rule.task), len(self.tasks)

    def _mark(self, key: str, target_key: str, slot: int, slots: int) -> None:
        if self.slots.setdefault(target_key, slots) != slots:
            raise ConversionError(f"{self.source}: model key {target_key!r} is filled both whole and per task")
        if slot in self.filled.setdefault(target_key, set()):
            raise ConversionError(f"{self.source}: released key {key!r} fills model key {target_key!r} a second time")
        self.filled[target_key].add(slot)

    def put(self, key: str, rule: _Rule, value: torch.Tensor) -> None:
        """Place released ``key`` (``value``) where ``rule`` says, after checking the shape it must have."""
        if rule.target not in self.target:
            raise ConversionError(
                f"{self.source}: released key {key!r} maps to model key {rule.target!r}, which the model does not "
                f"have: the checkpoint was made with another architecture (check --dataset and --set)"
            )
        target = self.target[rule.target]
        slot, slots = self._slot(rule)
        if rule.layout == "whole":
            part_shape = tuple(target.shape)
        elif rule.layout == "stack":
            part_shape = tuple(target.shape[1:]) if target.shape[0] == slots else None
        else:
            part_shape = (target.shape[0] // slots, *target.shape[1:]) if target.shape[0] % slots == 0 else None
        expected = rule.released_shape(part_shape) if part_shape is not None else None
        if expected is None or tuple(value.shape) != tuple(expected):
            raise ConversionError(
                f"{self.source}: released key {key!r} has shape {tuple(value.shape)}, but model key {rule.target!r} "
                f"{tuple(target.shape)} needs {expected} from it: the checkpoint was made with other sizes "
                f"(pass the --set keys of the model it was trained with)"
            )
        self._mark(key, rule.target, slot, slots)
        value = value.reshape(part_shape).to(target.dtype)
        if rule.layout == "whole":
            self.out[rule.target] = value.clone()
        elif rule.layout == "stack":
            self.out.setdefault(rule.target, torch.empty_like(target))[slot] = value
        else:
            rows = part_shape[0]
            self.out.setdefault(rule.target, torch.empty_like(target))[slot * rows : (slot + 1) * rows] = value

    def fill(self, target_key: str, value: torch.Tensor) -> None:
        """Set a whole model key the release holds no tensor for (a collapsed counter, a zero offset)."""
        self._mark(target_key, target_key, 0, 1)
        self.out[target_key] = value.to(self.target[target_key].dtype).reshape(self.target[target_key].shape)

    def finish(self) -> dict[str, torch.Tensor]:
        """The filled state dict; refuses any model key (or task slot of one) that no released key filled."""
        for key in self.target:
            filled, slots = self.filled.get(key, set()), self.slots.get(key, 1)
            if len(filled) < slots or key not in self.out:
                missing = [t for i, t in enumerate(self.tasks) if i not in filled] if slots > 1 else []
                which = f" for task {missing[0]!r}" if missing else ""
                raise ConversionError(
                    f"{self.source}: model key {key!r} is not filled{which}: the released checkpoint lacks that "
                    f"module (is it a {SOURCES[self.source]} checkpoint of this dataset's tasks? check --from and --dataset)"
                )
        return self.out


def _backbone_prefix(model: nn.Module, source: str) -> str:
    """The state-dict prefix of the model's timm Swin (``backbone.model.model.``)."""
    anchors = [k for k in model.state_dict() if k.startswith("backbone.") and k.endswith("patch_embed.proj.weight")]
    if len(anchors) != 1:
        raise ConversionError(f"{source}: the model's backbone is not a timm Swin (no patch_embed.proj); "
                              f"keep model.backbone.name a swin_* backbone")
    return anchors[0][: -len("patch_embed.proj.weight")]


_BACKBONE_BLOCK = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attn.w_msa.qkv.weight": "attn.qkv.weight", "attn.w_msa.qkv.bias": "attn.qkv.bias",
    "attn.w_msa.proj.weight": "attn.proj.weight", "attn.w_msa.proj.bias": "attn.proj.bias",
    "attn.w_msa.relative_position_bias_table": "attn.relative_position_bias_table",
    "ffn.layers.0.0.weight": "mlp.fc1.weight", "ffn.layers.0.0.bias": "mlp.fc1.bias",
    "ffn.layers.1.weight": "mlp.fc2.weight", "ffn.layers.1.bias": "mlp.fc2.bias",
}


def _convert_backbone(key: str, value: torch.Tensor, model: nn.Module, prefix: str, source: str,
                      put: Callable[[str, _Rule, torch.Tensor], None]) -> bool:
    """Map one released ``backbone.*`` key (mmseg's Swin); False when it is not a backbone key."""
    if not key.startswith("backbone."):
        return False
    name = key[len("backbone."):]
    if m := re.fullmatch(r"patch_embed\.projection\.(weight|bias)", name):
        put(key, _Rule(f"{prefix}patch_embed.proj.{m[1]}"), value)
    elif m := re.fullmatch(r"patch_embed\.norm\.(weight|bias)", name):
        put(key, _Rule(f"{prefix}patch_embed.norm.{m[1]}"), value)
    elif m := re.fullmatch(r"norm(\d+)\.(weight|bias)", name):
        if not any(k.startswith("feature_norms.") for k in model.state_dict()):
            raise ConversionError(f"{source}: released key {key!r} is mmseg's output LayerNorm, which the model only has "
                                  f"with model.feature_norm=true (drop that --set)")
        put(key, _Rule(f"feature_norms.{m[1]}.{m[2]}"), value)
    elif m := re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.relative_position_index", name):
        path = f"{prefix}layers.{m[1]}.blocks.{m[2]}.attn"
        try:
            ours = model.get_submodule(path).relative_position_index
        except AttributeError as err:
            raise ConversionError(f"{source}: released key {key!r} has no counterpart ({path} does not exist): the "
                                  f"checkpoint was made with other depths (check --set model.backbone.depths)") from err
        if tuple(ours.shape) != tuple(value.shape) or not torch.equal(ours.cpu(), value.to(ours.dtype).cpu()):
            raise ConversionError(
                f"{source}: released key {key!r} {tuple(value.shape)} is not the relative-position index of the "
                f"model's window ({tuple(ours.shape)}): the checkpoint was made with another window "
                f"(check --set model.backbone.window_size)"
            )
    elif m := re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", name):
        if m[3] not in _BACKBONE_BLOCK:
            raise ConversionError(f"{source}: released key {key!r} has no counterpart in the model's Swin block")
        put(key, _Rule(f"{prefix}layers.{m[1]}.blocks.{m[2]}.{_BACKBONE_BLOCK[m[3]]}"), value)
    elif m := re.fullmatch(r"stages\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)", name):
        # mmseg merges at the end of stage i, timm at the start of stage i+1; channel order permuted (module doc).
        channels = value.shape[-1] // 4
        if value.shape[-1] % 4:
            raise ConversionError(f"{source}: released key {key!r} {tuple(value.shape)} is not a 2x2 patch merging")
        put(key, _Rule(f"{prefix}layers.{int(m[1]) + 1}.downsample.{m[2]}"), value[..., mmseg_merge_order(channels)])
    else:
        raise ConversionError(f"{source}: released key {key!r} has no counterpart in the model's Swin backbone")
    return True


def _task_stage(key: str, text: str, tasks: list[str], source: str) -> str:
    """The task of a released ``{task}`` key part, refused when the model has no such task."""
    if text not in tasks:
        raise ConversionError(
            f"{source}: released key {key!r} belongs to task {text!r}, which the model does not have (tasks {tasks}): "
            f"check --dataset (and data.tasks)"
        )
    return text


def _ss2d_rule(key: str, prefix: str, task: str | None, rest: str, source: str) -> _Rule:
    if rest not in _SS2D_NAMES:
        raise ConversionError(f"{source}: released key {key!r} is no SS2D parameter the model has")
    return _Rule(f"{prefix}.{_SS2D_NAMES[rest]}", task, "stack", _ss2d_released_shape(rest))


def _stm_rule(key: str, prefix: str, task: str, rest: str, source: str) -> _Rule:
    """An STM block (LN -> SS2D): ``norm.*`` or ``op.<ss2d parameter>``."""
    if m := re.fullmatch(r"norm\.(weight|bias)", rest):
        return _Rule(f"{prefix}.norm.{m[1]}", task, "stack")
    if rest.startswith("op."):
        return _ss2d_rule(key, f"{prefix}.op", task, rest[3:], source)
    raise ConversionError(f"{source}: released key {key!r} is no STM block parameter the model has")


def _cross_task_rule(key: str, stage: str, rest: str, tasks: list[str], source: str, plus_plus: bool) -> _Rule:
    """F-CTM (``block_3.{stage}.*``) or S-CTM (``block_ctm.{stage}.0.*``) parameters -> ``stages.{stage}.cross_task``."""
    prefix = f"stages.{stage}.cross_task"
    if m := re.fullmatch(r"norm_share\.(weight|bias)", rest):
        return _Rule(f"{prefix}.norm_share.{m[1]}")
    if m := re.fullmatch(r"norm\.([^.]+)\.(weight|bias)", rest):
        return _Rule(f"{prefix}.norm.{m[2]}", _task_stage(key, m[1], tasks, source), "stack")
    if m := re.fullmatch(r"op\.([^.]+)\.(.+)", rest):
        return _ss2d_rule(key, f"{prefix}.op", _task_stage(key, m[1], tasks, source), m[2], source)
    if plus_plus:
        if m := re.fullmatch(r"conv_share\.([01])\.(weight|bias)", rest):
            return _Rule(f"{prefix}.{('share_reduce', 'share_mix')[int(m[1])]}.{m[2]}")
    else:
        if rest.startswith("op_share."):
            return _ss2d_rule(key, f"{prefix}.op_share", None, rest[len("op_share."):], source)
        if m := re.fullmatch(r"(in_proj|out_proj)\.([^.]+)\.weight", rest):
            name = "gate_proj" if m[1] == "in_proj" else "out_proj"  # the release's in_proj is F-CTM's gate
            return _Rule(f"{prefix}.{name}.weight", _task_stage(key, m[2], tasks, source), "stack")
    raise ConversionError(f"{source}: released key {key!r} has no counterpart in the model's cross-task block")


def _decoder_rule(key: str, tasks: list[str], source: str, plus_plus: bool) -> _Rule | None:
    """The rule of one released decoder key; None for the MTMamba++ BN counters (collapsed separately)."""
    def task_of(text: str) -> str:
        return _task_stage(key, text, tasks, source)

    if m := re.fullmatch(r"expand_layers\.(.+)_(\d+)\.(expand\.weight|norm\.weight|norm\.bias)", key):
        return _Rule(f"stages.{m[2]}.expand.{m[3]}", task_of(m[1]), "stack")
    if m := re.fullmatch(r"concat_layers\.(.+)_(\d+)\.(weight|bias)", key):
        conv = plus_plus and m[3] == "weight"  # MTMamba++ fuses with a 1x1 conv, MTMamba with a Linear
        return _Rule(f"stages.{m[2]}.fuse.{m[3]}", task_of(m[1]), "stack", _conv1x1_shape if conv else _same)
    if not plus_plus and (m := re.fullmatch(r"block_([12])\.(.+)_(\d+)\.(.+)", key)):
        return _stm_rule(key, f"stages.{m[3]}.stm{m[1]}", task_of(m[2]), m[4], source)
    if plus_plus and (m := re.fullmatch(r"block_stm\.(.+)_(\d+)\.([01])\.(.+)", key)):
        return _stm_rule(key, f"stages.{m[2]}.stm{int(m[3]) + 1}", task_of(m[1]), m[4], source)
    if not plus_plus and (m := re.fullmatch(r"block_3\.(\d+)\.(.+)", key)):
        return _cross_task_rule(key, m[1], m[2], tasks, source, plus_plus)
    if plus_plus and (m := re.fullmatch(r"block_ctm\.(\d+)\.0\.(.+)", key)):
        return _cross_task_rule(key, m[1], m[2], tasks, source, plus_plus)
    if m := re.fullmatch(r"final_project\.([^.]+)\.(weight|bias)", key):
        return _Rule(f"head.project.{task_of(m[1])}.{m[2]}")
    if not plus_plus and (m := re.fullmatch(r"final_expand\.([^.]+)\.(expand\.weight|norm\.weight|norm\.bias)", key)):
        return _Rule(f"head.{m[2]}", task_of(m[1]), "stack")
    if plus_plus and (m := re.fullmatch(r"final_expand\.([^.]+)\.([01])\.(weight|bias|running_mean|running_var)", key)):
        return _Rule(f"head.body.{m[2]}.{m[3]}", task_of(m[1]), "block")
    if plus_plus and (m := re.fullmatch(r"final_expand\.([^.]+)\.1\.num_batches_tracked", key)):
        task_of(m[1])
        return None
    raise ConversionError(
        f"{source}: released key {key!r} has no counterpart in the {SOURCES[source]} model: is this a "
        f"{SOURCES[source]} checkpoint (check --from)?"
    )


def released_task_order(released: dict[str, torch.Tensor]) -> list[str]:
    """The release's task order: its modules are registered task by task, so ``final_project.{task}`` keys come
    in that order; the cross-task blocks concatenate the tasks' features in it."""
    return [m[1] for key in released if (m := re.fullmatch(r"final_project\.([^.]+)\.weight", key))]


# The cross-task blocks' parameters over the tasks' concatenated features (T*C channels), and that axis.
_CONCAT_AXIS = (
    (r"block_3\.\d+\.norm_share\.(weight|bias)", -1),
    (r"block_3\.\d+\.op_share\.in_proj\.weight", -1),
    (r"block_ctm\.\d+\.0\.norm_share\.(weight|bias)", -1),
    (r"block_ctm\.\d+\.0\.conv_share\.0\.weight", 1),
)


def _reorder_concatenated(released: dict[str, torch.Tensor], order: list[str], tasks: list[str]) -> dict[str, torch.Tensor]:
    """Reorder the task blocks of the concatenation-axis parameters from the release's task order to ``tasks``."""
    out = dict(released)
    for key, value in released.items():
        for pattern, axis in _CONCAT_AXIS:
            if re.fullmatch(pattern, key) and value.shape[axis] % len(tasks) == 0:
                width = value.shape[axis] // len(tasks)
                index = torch.cat([torch.arange(width) + order.index(t) * width for t in tasks])
                out[key] = value.index_select(axis % value.dim(), index)
    return out


def convert_released(source: str, released: dict[str, torch.Tensor], model: nn.Module,
                     unregistered: dict[str, torch.Tensor] | None = None) -> Converted:
    """The full state dict of ``model`` (our MTMamba / MTMamba++) from a released checkpoint's state dict."""
    from baselines.mtmamba_pp import ConvBNReLUHead

    plus_plus = source == "mtmamba_pp"
    if unregistered:
        raise ConversionError(f"{source}: --unregistered is not used: {SOURCES[source]} checkpoints hold every weight")
    if isinstance(getattr(model, "head", None), ConvBNReLUHead) != plus_plus:
        raise ConversionError(f"{source}: the target model is not {SOURCES[source]} ({type(model).__name__})")
    semantics = getattr(model.backbone, "swin_semantics", None)
    if semantics != "mmseg":
        raise ConversionError(
            f"{source}: the released checkpoints need mmseg's Swin (model.backbone.swin_semantics=mmseg, the "
            f"default), the model has {semantics!r}: drop the --set that changes it"
        )
    tasks = list(model.tasks)
    notes: list[str] = []
    order = released_task_order(released)
    if order != tasks and sorted(order) == sorted(tasks):
        released = _reorder_concatenated(released, order, tasks)
        notes.append(f"the release's task order {order} differs from the model's {tasks}: the cross-task blocks' "
                     f"parameters over the concatenated task features were reordered")
    prefix = _backbone_prefix(model, source)
    assembler = _Assembler(source, model, tasks)
    counters: dict[str, int] = {}
    for key, value in released.items():
        if _convert_backbone(key, value, model, prefix, source, assembler.put):
            continue
        rule = _decoder_rule(key, tasks, source, plus_plus)
        if rule is not None:
            assembler.put(key, rule, value)
        elif value.numel() != 1 or value.is_floating_point():
            raise ConversionError(f"{source}: released key {key!r} {tuple(value.shape)} is not a BN batch counter")
        else:
            counters[key] = int(value)

    notes[:0] = [
        f"{SOURCES[source]} released checkpoint: mmseg Swin names mapped to timm's, PatchMerging channels "
        f"reordered from mmseg's c*4+kh*2+kw to timm's (kw*2+kh)*C+c, relative_position_index checked against "
        f"the window and dropped, norm0..3 -> feature_norms; per-task decoder modules stacked in task order {tasks}",
    ]
    if plus_plus:
        counter = "head.body.1.num_batches_tracked"
        missing = [t for t in tasks if f"final_expand.{t}.1.num_batches_tracked" not in counters]
        if missing:
            raise ConversionError(f"{source}: model key {counter!r} is not filled: the released checkpoint lacks "
                                  f"'final_expand.{missing[0]}.1.num_batches_tracked'")
        assembler.fill(counter, torch.tensor(max(counters.values())))
        per_task = [counters[f"final_expand.{t}.1.num_batches_tracked"] for t in tasks]
        if len(set(per_task)) > 1:
            notes.append(f"head BN: the tasks' num_batches_tracked {per_task} differ; kept their maximum "
                         f"{max(per_task)} (not read with BN momentum 0.1)")
    for key in assembler.target:
        if key.startswith("output_offset_"):  # train.output_offsets: the release adds no output offset
            assembler.fill(key, torch.zeros(()))
            notes.append(f"{key}: the release has no output offset; set to 0")
    return Converted(state_dict=assembler.finish(), notes=notes)


@register_converter("mtmamba", "mtmamba")
def convert_mtmamba(released: dict[str, torch.Tensor], model: nn.Module, cfg: dict[str, Any],
                    unregistered: dict[str, torch.Tensor] | None = None) -> Converted:
    """``--from mtmamba``: a released MTMamba checkpoint into our ``mtmamba`` model."""
    return convert_released("mtmamba", released, model, unregistered)


@register_converter("mtmamba_pp", "mtmamba_pp")
def convert_mtmamba_pp(released: dict[str, torch.Tensor], model: nn.Module, cfg: dict[str, Any],
                       unregistered: dict[str, torch.Tensor] | None = None) -> Converted:
    """``--from mtmamba_pp``: a released MTMamba++ checkpoint into our ``mtmamba_pp`` model."""
    return convert_released("mtmamba_pp", released, model, unregistered)


__all__ = ["SOURCES", "convert_mtmamba", "convert_mtmamba_pp", "convert_released", "mmseg_merge_order"]
