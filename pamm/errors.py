"""Errors every layer may raise; this module imports nothing, so models and the config loader both use it."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be resolved; the message names the file/key and the fix."""
