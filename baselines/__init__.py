"""Baseline models (MTMamba, MTMamba++, InvPT, TaskPrompter), built from ``pamm`` blocks.

Importing this package registers every baseline in ``pamm.models.registry`` and the converters of their
released checkpoints in ``pamm.checkpoints.registry`` (each module registers itself on import).
"""
from baselines import (  # noqa: F401
    invpt,
    mtmamba,
    mtmamba_pp,
    released_mtmamba,
    released_transformers,
    taskprompter,
)
