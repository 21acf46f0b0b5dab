"""Baseline models (MTMamba, MTMamba++, InvPT, TaskPrompter), built from ``pamm`` blocks.

Importing this package imports each of its modules, and each registers itself: its models in
``pamm.models.registry``, the converters of released checkpoints in ``pamm.checkpoints.registry``. A new
``baselines/<name>.py`` is found the same way; no list names the modules.
"""
from pamm.models.registry import import_package_modules

import_package_modules(__name__, __path__)
