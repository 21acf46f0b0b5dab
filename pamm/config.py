"""Run configuration: layered YAML resolved into one plain dict per run.

A run is (profile, dataset, model, variant, seed). Its config is built from, later wins:
``pamm/configs/base.yaml`` < ``pamm/configs/models/<model>.yaml`` < ``ablations/<variant>.yaml``
< explicit overrides. Each layer may hold ``profiles: {<profile>: {...}}`` and
``datasets: {<dataset>: {...}}`` sections that apply only to that profile / dataset.
The resolved dict is written to the run directory and hashed (``config_hash``).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
REPO_ROOT = Path(__file__).resolve().parent.parent
ABLATIONS_DIR = REPO_ROOT / "ablations"
PROFILES = ("tiny", "paper")
DEFAULT_VARIANT = "default"
_LAYER_KEYS = {"data", "model", "train", "eval"}
_META_KEYS = {"description", "applies_to"}


class ConfigError(ValueError):
    """A config that cannot be resolved; the message names the file/key and the fix."""


REPLACE_MARKER = "_replace"  # a mapping with `_replace: true` replaces what it merges onto, not merges into it


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (dicts merge, everything else replaces).

    A mapping marked ``_replace: true`` replaces the mapping under its key whole (an overlay that swaps
    the backbone must not inherit the old backbone's settings); the marker stays until
    :func:`strip_replace_markers`, so later layers still know the mapping was swapped."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get(REPLACE_MARKER):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def strip_replace_markers(cfg: Any) -> Any:
    """The config without ``_replace`` markers (they only steer :func:`deep_merge`)."""
    if isinstance(cfg, dict):
        return {k: strip_replace_markers(v) for k, v in cfg.items() if k != REPLACE_MARKER}
    if isinstance(cfg, list):
        return [strip_replace_markers(v) for v in cfg]
    return cfg


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def _flatten_layer(doc: dict[str, Any], profile: str, dataset: str, source: str) -> dict[str, Any]:
    """Apply a layer's own ``datasets`` and ``profiles`` sections, in that order."""
    unknown = set(doc) - _LAYER_KEYS - _META_KEYS - {"datasets", "profiles"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; valid: {sorted(_LAYER_KEYS | {'datasets', 'profiles'})}"
        )
    out = {k: v for k, v in doc.items() if k in _LAYER_KEYS}
    per_dataset = (doc.get("datasets") or {}).get(dataset)
    if per_dataset:
        out = deep_merge(out, _flatten_layer(per_dataset, profile, dataset, f"{source}:datasets.{dataset}"))
    per_profile = (doc.get("profiles") or {}).get(profile)
    if per_profile:
        out = deep_merge(out, _flatten_layer(per_profile, profile, dataset, f"{source}:profiles.{profile}"))
    return out


def model_config_path(model: str) -> Path:
    return PACKAGE_CONFIGS / "models" / f"{model}.yaml"


def variant_path(variant: str, ablations_dir: Path | None = None) -> Path:
    return (ablations_dir or ABLATIONS_DIR) / f"{variant}.yaml"


VARIANT_JOIN = "+"  # "stl_semseg+swin": the overlays stl_semseg then swin


def variant_parts(variant: str) -> list[str]:
    """The overlays of a (possibly composed) variant, in the order they apply."""
    return [part.strip() for part in variant.split(VARIANT_JOIN)]


def list_variants(model: str, ablations_dir: Path | None = None) -> list[str]:
    """Variants (ablation overlays) whose ``applies_to`` names ``model``, plus ``default``. Overlays also
    compose: ``a+b`` applies ``a``, then ``b``."""
    names = [DEFAULT_VARIANT]
    for path in sorted((ablations_dir or ABLATIONS_DIR).glob("*.yaml")):
        doc = _load_yaml(path)
        if model in (doc.get("applies_to") or []):
            names.append(path.stem)
    return names


def resolve_config(
    profile: str,
    dataset: str,
    model: str,
    variant: str = DEFAULT_VARIANT,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    ablations_dir: Path | None = None,
) -> dict[str, Any]:
    """The full, plain config of one run."""
    from pamm.tasks import DATASET_TASKS

    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid: {list(PROFILES)}")
    if dataset not in DATASET_TASKS:
        raise ConfigError(f"unknown dataset {dataset!r}; valid: {sorted(DATASET_TASKS)}")
    model_path = model_config_path(model)
    if not model_path.is_file():
        valid = sorted(p.stem for p in (PACKAGE_CONFIGS / "models").glob("*.yaml"))
        raise ConfigError(f"unknown model {model!r} (no {model_path}); valid models: {valid}")

    cfg = _flatten_layer(_load_yaml(PACKAGE_CONFIGS / "base.yaml"), profile, dataset, "base.yaml")
    cfg = deep_merge(cfg, _flatten_layer(_load_yaml(model_path), profile, dataset, str(model_path)))
    for part in variant_parts(variant) if variant != DEFAULT_VARIANT else []:
        path = variant_path(part, ablations_dir)
        if part == DEFAULT_VARIANT or not path.is_file():
            raise ConfigError(
                f"unknown variant {part!r} for model {model!r} (no {path}); valid: {list_variants(model, ablations_dir)}"
                + (f", or several joined by '{VARIANT_JOIN}'" if VARIANT_JOIN in variant else "")
            )
        doc = _load_yaml(path)
        applies = doc.get("applies_to") or []
        if model not in applies:
            raise ConfigError(f"{path}: variant {part!r} applies to {applies}, not to model {model!r}")
        cfg = deep_merge(cfg, _flatten_layer(doc, profile, dataset, str(path)))
    if overrides:
        cfg = deep_merge(cfg, overrides)
    cfg = strip_replace_markers(cfg)
    cfg["run"] = {"profile": profile, "dataset": dataset, "model": model, "variant": variant, "seed": int(seed)}
    validate_run_config(cfg)
    return cfg


def validate_run_config(cfg: dict[str, Any]) -> None:
    """Check a resolved config against ``configs/run.schema.yaml``; the error names the offending key."""
    import jsonschema

    schema = _load_yaml(PACKAGE_CONFIGS / "run.schema.yaml")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "<top level>"
        raise ConfigError(f"config key {where}: {err.message} (see pamm/configs/run.schema.yaml for the valid keys)")


def config_hash(cfg: dict[str, Any]) -> str:
    """Short stable hash of everything that determines a run's result (paths excluded)."""
    stripped = copy.deepcopy(cfg)
    stripped.get("data", {}).pop("root", None)
    stripped.get("data", {}).pop("num_workers", None)
    blob = json.dumps(stripped, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_override(text: str) -> dict[str, Any]:
    """``train.iterations=50`` -> ``{"train": {"iterations": 50}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. train.iterations=50)")
    key, value = text.split("=", 1)
    parsed: Any = yaml.safe_load(value)
    for part in reversed(key.strip().split(".")):
        parsed = {part: parsed}
    return parsed


def load_run_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: train the run first (pamm-bench train ...)")
    return _load_yaml(path)
