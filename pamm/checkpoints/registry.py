"""Converter registry: ``@register_converter(source, model_name)`` maps an authors' state dict onto ours.

A leaf module: it imports nothing from ``pamm.models``, ``pamm.engine`` or ``baselines``; the builtin converter
modules are imported on first lookup (like ``pamm.models.registry``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

_BUILTIN_MODULES = (
    "pamm.checkpoints.released_pamm",
    "baselines.released_transformers",
    "baselines.released_mtmamba",
)


class ConversionError(ValueError):
    """A released checkpoint that cannot be mapped; the message names the key and the fix."""


@dataclass
class Converted:
    """A converted state dict (keys and shapes exactly the target model's) and notes for the run directory."""

    state_dict: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)


ConvertFn = Callable[[dict, torch.nn.Module, dict, "dict | None"], Converted]


@dataclass
class ConverterEntry:
    source: str
    model_name: str
    convert: ConvertFn
    cfg_defaults: dict[str, Any] = field(default_factory=dict)


_CONVERTERS: dict[str, ConverterEntry] = {}


def register_converter(
    source: str, model_name: str, cfg_defaults: dict[str, Any] | None = None
) -> Callable[[ConvertFn], ConvertFn]:
    def decorate(convert: ConvertFn) -> ConvertFn:
        known = _CONVERTERS.get(source)
        if known is not None and known.convert is not convert:
            raise ValueError(f"checkpoint source {source!r} is registered twice")
        _CONVERTERS[source] = ConverterEntry(source, model_name, convert, dict(cfg_defaults or {}))
        return convert

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def list_sources() -> list[str]:
    _load_builtins()
    return sorted(_CONVERTERS)


def get_converter(source: str) -> ConverterEntry:
    _load_builtins()
    if source not in _CONVERTERS:
        raise ConversionError(f"unknown checkpoint source {source!r}; valid: {sorted(_CONVERTERS)}")
    return _CONVERTERS[source]
