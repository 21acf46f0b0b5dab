"""PAMM's released checkpoints (github.com/CQC-gogopro/PAMM, a879302) into the ``pamm`` model, as released.

The release keeps one module per task (``ModuleDict``s keyed by task name) and one conv per expert; the
``pamm`` model stacks tasks on a leading axis or as conv groups, and experts as one wide conv. Each model
key is therefore built from the released keys of every task (or expert), concatenated in our task (or
expert) order; released ``nn.Linear`` weights become our 1x1 convs and 1x1 convs our per-task linears by
a reshape. ``docs/fidelity.md#pamm`` has the name table.

The release keeps A_log, D and the task prompts in plain dicts, outside ``state_dict``, so no released
checkpoint holds them. ``--unregistered FILE`` supplies them (keys
``backbone.stage_MTLoRA_mamba.{stage}.{A_log0|D0|task_prompt_B|task_prompt_C}.{task}``); without it A_log
and D take the release's build values (untrained there, so exact) and the prompts are drawn from the
config's ``released_prior_seed`` (the release re-draws them at every build from an unlogged seed), and the
run's notes say so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from pamm.checkpoints.registry import ConversionError, Converted, register_converter, reject_unused
from pamm.models.experts import ParameterExpert
from pamm.models.pamm_model import PAMM

SOURCE = "pamm"
STAGE = "backbone.stage_MTLoRA_mamba"
UNREGISTERED = {"A_log0": "A_log", "D0": "D", "task_prompt_B": "prior_B", "task_prompt_C": "prior_C"}
# Router parts: ours (TaskRouter attribute) <- the release's (SpatialAtt inside router.{task}.0, logits in .1).
_ROUTER = {
    "channel_proj": "0.conv1", "channel_norm": "0.ln", "channel_out": "0.conv3",
    "spatial_norm": "0.ln_sp", "spatial_out": "0.conv2", "logits": "1",
}


@dataclass
class _Rule:
    """How one model tensor is made: the released keys it reads, the shape each must have, and how they combine."""

    sources: list[str]
    part: tuple[int, ...]
    combine: Callable[[list[torch.Tensor]], torch.Tensor]


def _cat(shape: Sequence[int], dim: int = 0) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """Parts laid end to end along ``dim`` (task or expert order), then shaped like the model tensor."""
    shape = tuple(shape)
    if dim == 0:
        return lambda parts: torch.cat([p.reshape(-1) for p in parts]).reshape(shape)
    return lambda parts: torch.cat(parts, dim=dim).reshape(shape)


class _Plan:
    """The rules for every model key, built from the model's own shapes and the released names."""

    def __init__(self, target: dict[str, torch.Tensor]) -> None:
        self.target = target
        self.rules: dict[str, _Rule] = {}

    def copy(self, key: str, source: str) -> None:
        shape = tuple(self.target[key].shape)
        self.rules[key] = _Rule([source], shape, lambda parts: parts[0])

    def stack(self, key: str, sources: list[str], part: Sequence[int], dim: int = 0) -> None:
        """``key`` from one released tensor of shape ``part`` per task/expert, in order, joined along ``dim``."""
        self.rules[key] = _Rule(list(sources), tuple(int(s) for s in part), _cat(self.target[key].shape, dim))

    def counter(self, key: str, sources: list[str]) -> None:
        """A BatchNorm's ``num_batches_tracked`` from the per-task ones (equal in a real run): the largest."""
        self.rules[key] = _Rule(list(sources), (), lambda parts: torch.stack(parts).max())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.target[key].shape)


def _per_task(prefix: str, tasks: Sequence[str], suffix: str) -> list[str]:
    return [f"{prefix}.{task}.{suffix}" for task in tasks]


def _norm(plan: _Plan, ours: str, released: str, tasks: Sequence[str], batch_norm: bool) -> None:
    """A stacked per-task norm (GroupNorm or BatchNorm over T*C channels) from one released norm per task."""
    per = plan.shape(f"{ours}.weight")[0] // len(tasks)
    names = ("weight", "bias", "running_mean", "running_var") if batch_norm else ("weight", "bias")
    for name in names:
        plan.stack(f"{ours}.{name}", _per_task(released, tasks, name), (per,))
    if batch_norm:
        plan.counter(f"{ours}.num_batches_tracked", _per_task(released, tasks, "num_batches_tracked"))


def _grouped_conv(plan: _Plan, ours: str, released: str, tasks: Sequence[str], linear: bool = False) -> None:
    """A grouped conv (groups = tasks) from one conv, or ``linear`` nn.Linear, per task."""
    weight = plan.shape(f"{ours}.weight")
    per = weight[0] // len(tasks)
    part = (per, weight[1]) if linear else (per, *weight[1:])
    plan.stack(f"{ours}.weight", _per_task(released, tasks, "weight"), part)
    if f"{ours}.bias" in plan.target:
        plan.stack(f"{ours}.bias", _per_task(released, tasks, "bias"), (per,))


def _task_linear(plan: _Plan, ours: str, released: str, tasks: Sequence[str]) -> None:
    """Our TaskLinear (T, out, in) from the release's per-task 1x1 convs (out, in, 1, 1)."""
    _, out, inp = plan.shape(f"{ours}.weight")
    plan.stack(f"{ours}.weight", _per_task(released, tasks, "weight"), (out, inp, 1, 1))
    plan.stack(f"{ours}.bias", _per_task(released, tasks, "bias"), (out,))


def _expert(plan: _Plan, ours: str, released: str, expert: ParameterExpert, tasks: Sequence[str]) -> None:
    """One B/C parameter expert (or the discarded 'L' branch): router, pool, task expert, general, norms."""
    router = f"{released}.router"
    for name, part in _ROUTER.items():
        if name == "channel_proj":  # Conv1d(T*C, T*h, 1, groups=T) <- Conv2d(C, h, 1) per task
            t_h, c, _ = plan.shape(f"{ours}.router.channel_proj.weight")
            h = t_h // len(tasks)
            plan.stack(f"{ours}.router.channel_proj.weight", _per_task(router, tasks, f"{part}.weight"), (h, c, 1, 1))
            plan.stack(f"{ours}.router.channel_proj.bias", _per_task(router, tasks, f"{part}.bias"), (h,))
        elif name in ("channel_norm", "spatial_norm"):
            width = plan.shape(f"{ours}.router.{name}.weight")[1]
            for p in ("weight", "bias"):
                plan.stack(f"{ours}.router.{name}.{p}", _per_task(router, tasks, f"{part}.{p}"), (width,))
        else:
            _task_linear(plan, f"{ours}.router.{name}", f"{router}", [f"{t}.{part}" for t in tasks])
    tokens = plan.shape(f"{ours}.router.spatial_weight")[1]
    plan.stack(f"{ours}.router.spatial_weight", _per_task(router, tasks, "0.convsp.weight"), (1, tokens))
    plan.stack(f"{ours}.router.spatial_bias", _per_task(router, tasks, "0.convsp.bias"), (1,))

    e, r = expert.num_experts, expert.rank
    if expert.interaction:
        experts = [f"{released}.MoE.{i}" for i in range(e)]
        down = plan.shape(f"{ours}.pool_down.weight")
        plan.stack(f"{ours}.pool_down.weight", [f"{x}.W.weight" for x in experts], (r, *down[1:]))
        plan.stack(f"{ours}.pool_down.bias", [f"{x}.W.bias" for x in experts], (r,))
        out = plan.shape(f"{ours}.pool_up.weight")[0]
        plan.stack(f"{ours}.pool_up.weight", [f"{x}.M.weight" for x in experts], (out, r, 1, 1), dim=1)
        plan.stack(f"{ours}.pool_up_bias", [f"{x}.M.bias" for x in experts], (out,))
        _norm(plan, f"{ours}.pool_norm", f"{released}.Bn_all", tasks, batch_norm=True)
    _grouped_conv(plan, f"{ours}.task_down", f"{released}.proj_task", [f"{t}.W" for t in tasks])
    _grouped_conv(plan, f"{ours}.task_up", f"{released}.proj_task", [f"{t}.M" for t in tasks])
    plan.copy(f"{ours}.general.weight", f"{released}.proj_gerneral.weight")
    plan.copy(f"{ours}.general.bias", f"{released}.proj_gerneral.bias")
    _norm(plan, f"{ours}.norm", f"{released}.Bn", tasks, batch_norm=True)


def _plan(model: PAMM, target: dict[str, torch.Tensor]) -> _Plan:
    """Rules for every model key the released ``model`` dict holds (all but A_log, D, prompts, offsets)."""
    plan = _Plan(target)
    tasks = model.task_names
    for key in target:
        if key.startswith("backbone.model.") and key not in ("backbone.model.pos_embed", "backbone.model.cls_token"):
            plan.copy(key, "backbone." + key[len("backbone.model."):])
    if "backbone.model.pos_embed" in target:  # the release's row 0 belongs to a class token it never uses
        rows, width = plan.shape("backbone.model.pos_embed")[1:]
        plan.rules["backbone.model.pos_embed"] = _Rule(["backbone.pos_embed"], (1, rows + 1, width), lambda p: p[0][:, 1:])

    for index, stage in enumerate(model.stages):
        ours, released = f"stages.{index}", f"{STAGE}.{index}"
        for p in ("weight", "bias"):
            plan.copy(f"{ours}.first_decode.0.{p}", f"{released}.first_decode.{p}")
            plan.copy(f"{ours}.first_decode.1.{p}", f"{released}.input_norm.{p}")
        _grouped_conv(plan, f"{ours}.task_conv", f"{released}.task_conv", tasks)
        _norm(plan, f"{ours}.task_norm", f"{released}.task_input_norm0", tasks, batch_norm=False)
        _grouped_conv(plan, f"{ours}.gate_proj", f"{released}.proj_z0", tasks)
        _grouped_conv(plan, f"{ours}.in_proj", f"{released}.dim_expand_proj_x0", tasks)
        _grouped_conv(plan, f"{ours}.dt_down", f"{released}.x2dt_proj0", tasks, linear=True)
        _grouped_conv(plan, f"{ours}.dt_up", f"{released}.dt_proj0", tasks, linear=True)
        di = model.options.d_inner
        plan.stack(f"{ours}.delta_bias", _per_task(f"{released}.dt_proj0", tasks, "bias"), (di,))
        _grouped_conv(plan, f"{ours}.out_proj", f"{released}.dim_decrease_proj0", tasks)
        for mine, theirs in (("B_expert", "B_proj0"), ("C_expert", "C_proj0"), ("dead_branch", "conv2d0")):
            module = getattr(stage, mine, None)
            if isinstance(module, ParameterExpert):
                _expert(plan, f"{ours}.{mine}", f"{released}.{theirs}", module, tasks)
            elif module is not None:  # no_parameter_experts: the release's MoE_B/C False (a 1x1 conv per task)
                _grouped_conv(plan, f"{ours}.{mine}.proj", f"{released}.{theirs}", tasks)

    for layer in (0, 3):
        _grouped_conv(plan, f"fusion.stage_logits.{layer}", "backbone.task_mask", [f"{t}.{layer}" for t in tasks])
    _norm(plan, "fusion.stage_logits.1", "backbone.task_mask", [f"{t}.1" for t in tasks], batch_norm=True)
    for task in tasks:
        for ours, theirs in (("body.0", "mt_proj.0"), ("out", "linear_pred")):
            for p in ("weight", "bias"):
                if f"heads.{task}.{ours}.{p}" in target:
                    plan.copy(f"heads.{task}.{ours}.{p}", f"heads.{task}.{theirs}.{p}")
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            plan.copy(f"heads.{task}.body.1.{p}", f"heads.{task}.mt_proj.1.{p}")
    return plan


def _build(plan: _Plan, released: dict[str, torch.Tensor], what: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Apply every rule to ``released``; refuse a missing or mis-shaped released tensor by name."""
    out, used = {}, set()
    for key, rule in plan.rules.items():
        parts = []
        for source in rule.sources:
            if source not in released:
                raise ConversionError(
                    f"{what} lacks key {source!r} (needed for model key {key!r}): is it a PAMM checkpoint for this "
                    "dataset and config? (check --dataset and --set)"
                )
            tensor = released[source]
            if tuple(tensor.shape) != rule.part:
                raise ConversionError(
                    f"{what} key {source!r} has shape {tuple(tensor.shape)}; model key {key!r} "
                    f"{tuple(plan.target[key].shape)} needs {rule.part} there: the checkpoint was made with other "
                    "sizes (check --dataset and --set, e.g. model.embed_dim, model.d_state, data.size)"
                )
            parts.append(tensor)
            used.add(source)
        out[key] = rule.combine(parts).to(plan.target[key].dtype).clone()
    return out, used


def _unregistered_plan(model: PAMM, target: dict[str, torch.Tensor]) -> _Plan:
    plan = _Plan(target)
    tasks = model.task_names
    for index in range(len(model.stages)):
        for theirs, mine in UNREGISTERED.items():
            key = f"stages.{index}.{mine}"
            if key in target:
                shape = plan.shape(key)
                part = (shape[0] // len(tasks), *shape[1:]) if mine in ("A_log", "D") else shape[1:]
                plan.stack(key, [f"{STAGE}.{index}.{theirs}.{task}" for task in tasks], part)
    return plan


def released_constants(model: PAMM) -> dict[str, torch.Tensor]:
    """A_log and D as the release builds them (A = -[1..N] per channel, D = 1), by model key."""
    out = {}
    for index, stage in enumerate(model.stages):
        rows, n = stage.A_log.shape
        out[f"stages.{index}.A_log"] = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(rows, n).clone()
        out[f"stages.{index}.D"] = torch.ones(stage.D.shape, dtype=torch.float32)
    return out


@register_converter(SOURCE, "pamm")
def convert(
    released: dict[str, torch.Tensor], model: nn.Module, cfg: dict[str, Any], unregistered: dict[str, torch.Tensor] | None
) -> Converted:
    """The released PAMM state dict (``module.`` stripped) as the ``pamm`` model's full state dict."""
    if not isinstance(model, PAMM) or not model.options.released:
        raise ConversionError(
            "the released PAMM is the as_released model (9x9 experts, resolution-tied routers, no class token): "
            "add --variant as_released"
        )
    target = model.state_dict()
    plan = _plan(model, target)
    state, used = _build(plan, released, "the released checkpoint")
    reject_unused(released, used, SOURCE)

    notes = []
    seed = int(model.options.released_prior_seed)
    if unregistered is not None:
        constants, used = _build(_unregistered_plan(model, target), unregistered, "the --unregistered file")
        reject_unused(unregistered, used, f"{SOURCE} --unregistered")
        notes.append("A_log, D and the task prompts come from the --unregistered file")
    else:
        constants = released_constants(model)
        constants.update(model.released_priors(seed))
        notes.append(
            "A_log and D take the release's build values (A = -[1..N], D = 1: untrained in the release, so exact); "
            f"the task prompts are drawn from released_prior_seed={seed}, because the release re-draws them at every "
            "build from an unlogged seed and no released checkpoint holds them (pass --unregistered FILE if you have them)"
        )
    state.update({k: v for k, v in constants.items() if k in target})
    for key in target:
        if key.startswith("output_offset_") and key not in state:  # pamm-bench's depth offset; the release has none
            state[key] = torch.zeros_like(target[key])
            notes.append(f"{key} = 0 (the release adds no output offset)")
    unfilled = sorted(set(target) - set(state))
    if unfilled:
        hint = " (the released ViT has no class token: drop model.backbone.class_token)" if "cls_token" in unfilled[0] else ""
        raise ConversionError(f"model key {unfilled[0]!r} has no counterpart in the released PAMM checkpoint{hint}")
    return Converted(state, notes)
