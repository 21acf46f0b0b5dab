"""Baseline models (MTMamba, MTMamba++, InvPT, TaskPrompter), built from ``pamm`` blocks.

Importing this package registers every baseline in ``pamm.models.registry``.
"""
