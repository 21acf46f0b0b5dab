"""Checkpoints: a run's model (``load_run_model``) and the authors' released checkpoints (``import_checkpoint``).

Importing this package registers the PAMM converter; ``import baselines`` registers the baselines' converters.
"""
from pamm.checkpoints import released_pamm  # noqa: F401  (its import registers the converter)
from pamm.checkpoints.importer import import_checkpoint
from pamm.checkpoints.registry import ConversionError, Converted, get_converter, list_sources, register_converter
from pamm.checkpoints.run_model import RunModelError, build_run_model, load_run_model, read_run_checkpoint

__all__ = [
    "ConversionError", "Converted", "RunModelError", "build_run_model", "get_converter", "import_checkpoint", "list_sources",
    "load_run_model", "read_run_checkpoint", "register_converter",
]
