"""Checkpoints: converters from the authors' released checkpoints (``pamm.checkpoints.registry``)."""
