"""Baseline models (MTMamba, MTMamba++, InvPT, TaskPrompter), built from ``pamm`` blocks.

Importing this package registers every baseline in ``pamm.models.registry``.
"""
from baselines import invpt  # noqa: F401
from baselines import taskprompter  # noqa: F401
from baselines import mtmamba  # noqa: F401
from baselines import mtmamba_pp  # noqa: F401
