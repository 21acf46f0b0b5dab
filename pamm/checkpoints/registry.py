"""Converters from the authors' released checkpoints into pamm-bench models, by source name.

A converter maps a released state dict (its ``module.`` prefix already stripped) onto the freshly built
target model and returns the target's complete state dict. It is registered with
``@register_converter(source, model_name)`` in the module that knows both layouts; this module imports
nothing of ``pamm.models``, ``pamm.engine`` or ``baselines``, so any of them may register here. As with models,
a converter module registers itself when it is imported: ``import pamm.checkpoints`` registers the PAMM
converter and ``import baselines`` the baselines' converters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn


class ConversionError(ValueError):
    """A released checkpoint that cannot be mapped; the message names the key and the fix."""


@dataclass
class Converted:
    """A converter's result: the target model's full state dict and notes for the run directory."""

    state_dict: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)


ConvertFn = Callable[[dict[str, torch.Tensor], nn.Module, dict[str, Any], "dict[str, torch.Tensor] | None"], Converted]


@dataclass(frozen=True)
class ConverterEntry:
    source: str
    model_name: str
    convert: ConvertFn
    cfg_defaults: dict[str, Any]


_CONVERTERS: dict[str, ConverterEntry] = {}

def register_converter(
    source: str, model_name: str, cfg_defaults: dict[str, Any] | None = None
) -> Callable[[ConvertFn], ConvertFn]:
    """Register ``convert`` for ``--from source``; it converts into registry model ``model_name``.

    ``cfg_defaults`` is merged under the user's ``--set`` overrides, for settings a release needs that
    are not the model's defaults."""

    def decorate(convert: ConvertFn) -> ConvertFn:
        existing = _CONVERTERS.get(source)
        if existing is not None and existing.convert is not convert:
            raise ValueError(f"checkpoint source {source!r} is registered twice")
        _CONVERTERS[source] = ConverterEntry(source, model_name, convert, dict(cfg_defaults or {}))
        return convert

    return decorate


def list_sources() -> list[str]:
    """The registered ``--from`` sources (those of the converter modules imported so far)."""
    return sorted(_CONVERTERS)


def get_converter(source: str) -> ConverterEntry:
    if source not in _CONVERTERS:
        raise ConversionError(
            f"no converter for released checkpoints of {source!r}; valid --from values: {sorted(_CONVERTERS)} "
            "(`import pamm.checkpoints, baselines` registers the built-in converters)"
        )
    return _CONVERTERS[source]


def reject_unused(released: dict[str, torch.Tensor], used: set[str], source: str, ignored: set[str] = frozenset()) -> None:
    """Refuse a released checkpoint holding keys the converter did not map (``ignored``: mapped on purpose to nothing)."""
    left = sorted(set(released) - used - set(ignored))
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise ConversionError(
            f"released {source} checkpoint key {left[0]!r}{more} has no counterpart in the pamm-bench model: "
            f"is this a {source} checkpoint for this dataset and config? (check --from, --dataset and --set)"
        )


def check_against_model(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Every target key filled, no extra key, every shape equal: one line naming the first offender."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    if missing:
        raise ConversionError(f"the {source} converter left model key {missing[0]!r} unfilled ({len(missing)} in all)")
    extra = sorted(set(state) - set(target))
    if extra:
        raise ConversionError(f"the {source} converter produced key {extra[0]!r}, which the model does not have")
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise ConversionError(
                f"{source}: model key {key!r} expects shape {tuple(target[key].shape)}, the checkpoint gives "
                f"{tuple(value.shape)}: the checkpoint was made with other sizes (check --dataset and --set)"
            )
