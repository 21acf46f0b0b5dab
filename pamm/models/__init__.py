"""Models: registry, backbones, heads, the multi-task baselines and PAMM.

Importing this package registers pamm's own models (``mtl``, ``pamm``); ``import baselines`` registers the rest.
"""
from pamm.models import mtl, pamm_model  # noqa: F401  (their import registers the models)
from pamm.models.interface import MultiTaskModel, check_model
from pamm.models.registry import create_model, list_models, register_model

__all__ = ["MultiTaskModel", "check_model", "create_model", "list_models", "register_model"]
