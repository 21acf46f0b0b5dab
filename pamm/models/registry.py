"""Model registry in timm's style: ``@register_model("name")`` and ``create_model(name, **cfg)``.

A model is a name plus a plain config dict. Every builder takes ``tasks`` (task name -> output
channels, see ``pamm.tasks``) and keyword options, and returns a model that meets
``pamm.models.interface.MultiTaskModel`` (``backbone``, ``tasks``, ``forward(image) -> {task: map}``);
``create_model`` checks it.

This module imports no model: a model module registers itself when it is imported. ``import pamm.models``
imports every module of ``pamm/models`` and ``import baselines`` every module of ``baselines/``
(:func:`import_package_modules`), so a new ``baselines/<name>.py`` registers with no list to edit; the entry
points (the CLI, the engine's builders, the config check) import both.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterable

import torch.nn as nn

from pamm.models.interface import check_model

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

#: Options no model takes because they belong to the run, by name -> where they are set instead.
RUN_OPTIONS = {
    "scan_backend": "the run config's train.scan.backend (pamm.ops.ScanSettings; a built model gets its settings "
                    "from pamm.ops.set_scan_settings)",
}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model name {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def import_package_modules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module of ``package`` found on ``path`` (the package's ``__path__``), in name order, so that
    each registers what it defines; names starting with ``_`` are left out. Returns the names imported."""
    names = sorted(info.name for info in pkgutil.iter_modules(list(path)) if not info.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


def list_models() -> list[str]:
    """The registered model names (those of the model modules imported so far)."""
    return sorted(_BUILDERS)


def create_model(name: str, tasks: dict[str, int], **cfg: Any) -> nn.Module:
    """Build model ``name`` for ``tasks`` with options ``cfg``."""
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown model {name!r}; registered models: {sorted(_BUILDERS)} (a model registers when its module is "
            "imported: `import pamm.models, baselines` registers the built-in ones)"
        )
    run_options = sorted(set(cfg) & set(RUN_OPTIONS))
    if run_options:
        option = run_options[0]
        raise ValueError(f"model {name!r}: {option} is not a model option; set {RUN_OPTIONS[option]}")
    try:
        model = _BUILDERS[name](tasks=dict(tasks), **cfg)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"model {name!r}: {err}; check the model: section of its config (pamm/configs/models/{name}.yaml)") from err
    check_model(model, name, tasks)
    model.model_name = name
    return model
