"""Models: registry, backbones, heads, the multi-task baselines and PAMM."""
from pamm.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
