"""Model registry in timm's style: ``@register_model("name")`` and ``create_model(name, **cfg)``.

A model is a name plus a plain config dict. Every builder takes ``tasks`` (task name -> output
channels, see ``pamm.tasks``) and keyword options, and returns an ``nn.Module`` whose
``forward(image)`` returns ``{task: (B, C_task, H, W)}`` at the input size. Models with deep
supervision may add ``"aux": {task: tensor}`` while training.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

# Modules whose import registers the built-in models (baselines live outside ``pamm``).
_BUILTIN_MODULES = (
    "pamm.models.mtl",
    "pamm.models.pamm_model",
    "baselines",
)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model name {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            # Only tolerate the module itself being absent (e.g. a partial checkout),
            # never a missing dependency inside it.
            if err.name != module:
                raise


def list_models() -> list[str]:
    _load_builtins()
    return sorted(_BUILDERS)


def create_model(name: str, tasks: dict[str, int], **cfg: Any) -> nn.Module:
    """Build model ``name`` for ``tasks`` with options ``cfg``."""
    _load_builtins()
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models: {sorted(_BUILDERS)}")
    try:
        model = _BUILDERS[name](tasks=dict(tasks), **cfg)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"model {name!r}: {err}; check the model: section of its config (pamm/configs/models/{name}.yaml)") from err
    model.model_name = name
    return model
