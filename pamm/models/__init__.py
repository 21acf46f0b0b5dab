"""Models: registry, backbones, heads, the multi-task baselines and PAMM.

Importing this package imports each of its modules, which registers pamm's own models (``mtl``, ``stl``,
``pamm``); ``import baselines`` registers the rest.
"""
from pamm.models.interface import MultiTaskModel, check_model
from pamm.models.registry import create_model, import_package_modules, list_models, register_model

import_package_modules(__name__, __path__)

__all__ = ["MultiTaskModel", "check_model", "create_model", "list_models", "register_model"]
