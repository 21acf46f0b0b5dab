"""Baseline models (MTMamba, MTMamba++, InvPT, TaskPrompter), built from ``pamm`` blocks.

Importing this package registers every baseline in ``pamm.models.registry``.
"""
from baselines import invpt, mtmamba, mtmamba_pp, taskprompter  # noqa: F401
