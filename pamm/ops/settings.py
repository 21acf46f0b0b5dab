"""Scan settings: which selective-scan backend runs, and how the Triton and torch backends run.

One frozen :class:`ScanSettings` holds every choice that changes which kernels run. It is built from a
plain dict (a run config's ``train.scan`` section) with :meth:`ScanSettings.from_config`; the
environment variables below are read here and nowhere else, as overrides of that dict, and the object
records which of its values came from them. The scan entry points take it as ``settings=``.

=======================  ==========================  ==============================================
field                    environment override        values (default first)
=======================  ==========================  ==============================================
backend                  ``PAMM_SCAN_BACKEND``       auto, cuda, triton, torch, ref
triton_bwd               ``PAMM_TRITON_BWD``         token, tile
triton_bc_order          ``PAMM_TRITON_BC_ORDER``    scan, token
triton_multi             ``PAMM_TRITON_MULTI``       gather, fused
triton_autotune          ``PAMM_TRITON_AUTOTUNE``    true, false (also 1/0, yes/no, on/off)
torch_block_elements     ``PAMM_SCAN_BLOCK_ELEMENTS``  null (per device), or a positive integer
=======================  ==========================  ==============================================
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ScanSettings", "from_environment", "ENV_VARS", "TRITON_BWD_KINDS", "TRITON_BC_ORDERS", "TRITON_MULTI_PATHS"]

TRITON_BWD_KINDS = ("token", "tile")
TRITON_BC_ORDERS = ("scan", "token")
TRITON_MULTI_PATHS = ("gather", "fused")

# field -> the environment variable that overrides it
ENV_VARS = {
    "backend": "PAMM_SCAN_BACKEND",
    "triton_bwd": "PAMM_TRITON_BWD",
    "triton_bc_order": "PAMM_TRITON_BC_ORDER",
    "triton_multi": "PAMM_TRITON_MULTI",
    "triton_autotune": "PAMM_TRITON_AUTOTUNE",
    "torch_block_elements": "PAMM_SCAN_BLOCK_ELEMENTS",
}
_CHOICES = {"triton_bwd": TRITON_BWD_KINDS, "triton_bc_order": TRITON_BC_ORDERS, "triton_multi": TRITON_MULTI_PATHS}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class ScanSettings:
    """What the scan ops run. Fields:

    * ``backend``: ``auto`` (on CUDA tensors mamba-ssm's kernel when it imports, else the Triton kernels
      when triton imports, else ``torch``; on CPU ``torch``) or a registered backend's name.
    * ``triton_bwd``: the Triton backward, ``token`` (one token per loop step, the faster) or ``tile``
      (tile-parallel, the leaner in memory).
    * ``triton_bc_order``: how the fused multi-direction call hands B and C to its kernels: ``scan``
      (copied into each direction's scan order first, read in contiguous rows) or ``token`` (read
      through the permutation).
    * ``triton_multi``: how :func:`pamm.ops.multi_direction_scan` runs K orders on the Triton backend:
      ``gather`` (gather, one plain scan, merge: the other backends' path) or ``fused`` (the kernels
      read and write through the orders).
    * ``triton_autotune``: autotune the Triton kernels' blocks and backward variants per problem, or
      launch one heuristic config per kernel (no tuning runs; for tests, never for timings).
    * ``torch_block_elements``: the torch backend's block budget, elements of one (b, d, block, n)
      buffer; None keeps its per-device default and its 32-position floor.
    * ``env_overrides``: the fields an environment variable set, as (field, variable) pairs.
    """

    backend: str = "auto"
    triton_bwd: str = "token"
    triton_bc_order: str = "scan"
    triton_multi: str = "gather"
    triton_autotune: bool = True
    torch_block_elements: int | None = None
    env_overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"scan setting {name}={value!r} is not one of {list(choices)}")
        if not isinstance(self.backend, str) or not self.backend.isidentifier():
            raise ValueError(f"scan setting backend={self.backend!r} must be a backend name or 'auto'")
        if not isinstance(self.triton_autotune, bool):
            raise ValueError(f"scan setting triton_autotune={self.triton_autotune!r} must be true or false")
        block = self.torch_block_elements
        if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
            raise ValueError(f"scan setting torch_block_elements={block!r} must be null or a positive integer")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The settings' names, as in a config section (``env_overrides`` is a record, not a setting)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "env_overrides")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
                    where: str = "scan") -> "ScanSettings":
        """Settings from a config section (missing keys: the defaults), then the environment's overrides
        (``environ``, default ``os.environ``; a blank variable counts as unset). ``where`` names the
        section in error messages."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.fields()))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(cls.fields())}")
        values = {name: _parse(name, value, f"{where}.{name}") for name, value in section.items()}
        environ = os.environ if environ is None else environ
        overridden = []
        for name, var in ENV_VARS.items():
            raw = (environ.get(var) or "").strip()
            if raw:
                values[name] = _parse(name, raw, f"${var}", from_text=True)
                overridden.append((name, var))
        return cls(**values, env_overrides=tuple(overridden))

    def forced(self, **values: Any) -> "ScanSettings":
        """These settings with ``values`` set by the caller (their environment record dropped)."""
        kept = tuple(pair for pair in self.env_overrides if pair[0] not in values)
        return dataclasses.replace(self, **values, env_overrides=kept)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a config section: ``from_config(s.to_dict(), environ={})`` equals ``s`` less its
        environment record."""
        return {name: getattr(self, name) for name in self.fields()}

    def record(self) -> dict[str, Any]:
        """What a run writes into its provenance: the settings, and which variable set which of them."""
        return {**self.to_dict(), "env_overrides": {name: var for name, var in self.env_overrides}}

    def source(self, name: str) -> str:
        """Where a setting's value came from: ``$VARIABLE``, or ``config`` (a section or the default)."""
        var = dict(self.env_overrides).get(name)
        return f"${var}" if var else "config"

    def key(self) -> str:
        """A compact string of the settings (no environment record), for the custom op's schema."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_key(key: str) -> "ScanSettings":
        """The settings :meth:`key` wrote ("" gives the defaults with the environment's overrides)."""
        return _from_key(key) if key else from_environment()


@functools.lru_cache(maxsize=64)
def _from_key(key: str) -> ScanSettings:
    return ScanSettings(**json.loads(key))


def from_environment(environ: Mapping[str, str] | None = None) -> ScanSettings:
    """The defaults with the environment's overrides: what a scan call given no ``settings`` runs with."""
    environ = os.environ if environ is None else environ
    return _from_env_values(tuple((environ.get(var) or "").strip() for var in ENV_VARS.values()))


@functools.lru_cache(maxsize=16)
def _from_env_values(values: tuple[str, ...]) -> ScanSettings:
    return ScanSettings.from_config(None, environ=dict(zip(ENV_VARS.values(), values)))


def _parse(name: str, value: Any, where: str, from_text: bool = False) -> Any:
    """One setting's value, checked; text (an environment variable) converted to the field's type."""
    if name in _CHOICES or name == "backend":
        if not isinstance(value, str):
            raise ValueError(f"{where}={value!r} must be a string")
        value = value.strip().lower()
        if name == "backend" and not value.isidentifier():
            raise ValueError(f"{where}={value!r} is not a backend name (auto, cuda, triton, torch or ref)")
        choices = _CHOICES.get(name)
        if choices is not None and value not in choices:
            raise ValueError(f"{where}={value!r} is not one of {list(choices)}")
        return value
    if name == "triton_autotune":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if from_text and (text in _TRUE or text in _FALSE):
            return text in _TRUE
        raise ValueError(f"{where}={value!r} must be true or false" + (" (1/0, yes/no, on/off)" if from_text else ""))
    if name == "torch_block_elements":
        if value is None:
            return None
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if number is None and from_text and str(value).strip().isdigit():
            number = int(str(value).strip())
        if number is None or number < 1:
            raise ValueError(f"{where}={value!r} must be a positive integer (elements of one scan block) or null")
        return number
    raise ValueError(f"{where}: unknown scan setting {name!r}")  # pragma: no cover - fields() guards it
