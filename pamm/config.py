"""Run configuration: layered YAML resolved into one plain dict per run.

A run is (scale, dataset, model, variant, seed). Its config is built from, later wins:
``pamm/configs/base.yaml`` < ``pamm/configs/models/<model>.yaml`` < ``ablations/<variant>.yaml``
< explicit overrides. Each layer may hold ``scales: {<scale>: {...}}`` and
``datasets: {<dataset>: {...}}`` sections that apply only to that recipe scale (``tiny`` or ``paper``) /
dataset. "Scale" names the recipe size; "profile" means efficiency profiling (``pamm-bench profile``).
The resolved dict is written to the run directory and hashed (``config_hash``).

A model YAML also holds a top-level ``display:`` section (name, colour, marker, table order) that says how
tables and figures show the model (:func:`model_display`); it is no part of the run's config or hash.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from pamm.errors import ConfigError

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
REPO_ROOT = Path(__file__).resolve().parent.parent
# The overlays' one source is the checkout's ablations/; a built wheel carries a copy of it as the package data
# pamm/ablations (setup.py adds it at build time; the checkout has no such folder), so an installed pamm
# resolves every variant too.
PACKAGED_ABLATIONS = Path(__file__).resolve().parent / "ablations"
ABLATIONS_DIR = PACKAGED_ABLATIONS if PACKAGED_ABLATIONS.is_dir() else REPO_ROOT / "ablations"
SCALES = ("tiny", "paper")  # recipe scales: a CPU smoke size and the published recipes
DEFAULT_VARIANT = "default"
_LAYER_KEYS = {"data", "model", "train", "eval"}
_META_KEYS = {"description", "applies_to"}


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


# YAML 1.2 floats: PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as the string "1e-3"; a
# learning rate written that way would then fail the schema as "not a number".
_FLOAT_12 = re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats such as ``1e-3``."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml_text(text: str) -> Any:
    """Parse YAML as the configs are parsed (safe, with YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = load_yaml_text(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())}): fix the file, or delete it and "
                          "write it again") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def _flatten_layer(doc: dict[str, Any], scale: str, dataset: str, source: str) -> dict[str, Any]:
    """Apply a layer's own ``datasets`` and ``scales`` sections, in that order."""
    if "profiles" in doc:
        raise ConfigError(f"{source}: the top-level key 'profiles' is now 'scales' (the recipe scale, tiny or paper): "
                          "rename it")
    unknown = set(doc) - _LAYER_KEYS - _META_KEYS - {"datasets", "scales"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; "
            f"valid: {sorted(_LAYER_KEYS | {'datasets', 'scales'})}"
        )
    out = {k: v for k, v in doc.items() if k in _LAYER_KEYS}
    per_dataset = (doc.get("datasets") or {}).get(dataset)
    if per_dataset:
        out = deep_merge(out, _flatten_layer(per_dataset, scale, dataset, f"{source}:datasets.{dataset}"))
    per_scale = (doc.get("scales") or {}).get(scale)
    if per_scale:
        out = deep_merge(out, _flatten_layer(per_scale, scale, dataset, f"{source}:scales.{scale}"))
    return out


def model_config_path(model: str) -> Path:
    return PACKAGE_CONFIGS / "models" / f"{model}.yaml"


def model_config_paths() -> list[Path]:
    """Every model YAML (``pamm/configs/models/*.yaml``), one per model the suite can run."""
    return sorted((PACKAGE_CONFIGS / "models").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------- display

DISPLAY_KEY = "display"
#: Matplotlib's filled markers: the ones a model may take (an open marker would draw no face in the legend).
DISPLAY_MARKERS = (".", "o", "v", "^", "<", ">", "8", "s", "p", "*", "h", "H", "D", "d", "P", "X")
_HEX_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_DISPLAY_EXAMPLE = "display: {name: MTMamba++, color: '#56B4E9', marker: D, order: 60}"


@dataclass(frozen=True)
class ModelDisplay:
    """How tables and figures show a model: its name, colour (``#RRGGBB``), matplotlib marker, and ``order``,
    its place among the measured rows of a table (ascending; the proposed model last)."""

    name: str
    color: str
    marker: str
    order: int


def _parse_display(doc: dict[str, Any], source: Path) -> ModelDisplay:
    """The ``display`` section of model YAML ``doc``; anything missing or malformed stops with one line."""
    section = doc.get(DISPLAY_KEY)
    where = f"{source}: key {DISPLAY_KEY}"
    if not isinstance(section, dict):
        found = "is missing" if section is None else f"is {type(section).__name__}, not a mapping"
        raise ConfigError(f"{where} {found}: every model YAML says how tables and figures show the model, e.g. "
                          f"{_DISPLAY_EXAMPLE}")
    fields = ("name", "color", "marker", "order")
    unknown, missing = sorted(set(section) - set(fields)), [k for k in fields if k not in section]
    if unknown or missing:
        wrong = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
        raise ConfigError(f"{where}: {wrong}; expected exactly {list(fields)}, e.g. {_DISPLAY_EXAMPLE}")
    name, color, marker, order = (section[k] for k in fields)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: {name!r} is not a name; give the name tables and figures print")
    if not isinstance(color, str) or not _HEX_COLOR.match(color):
        raise ConfigError(f"{where}.color: {color!r} is not a quoted '#RRGGBB' colour (unquoted, YAML reads '#' as "
                          "a comment); e.g. color: '#56B4E9'")
    if marker not in DISPLAY_MARKERS:
        raise ConfigError(f"{where}.marker: {marker!r} is not a filled matplotlib marker; valid: "
                          f"{' '.join(DISPLAY_MARKERS)}")
    if isinstance(order, bool) or not isinstance(order, int):
        raise ConfigError(f"{where}.order: {order!r} is not a whole number; give the model's place in the tables "
                          "(ascending; see the other model YAMLs)")
    return ModelDisplay(name.strip(), color, marker, order)


@functools.lru_cache(maxsize=64)
def _display_cached(path: Path, mtime_ns: int) -> ModelDisplay:
    return _parse_display(_load_yaml(path), path)


def display_section(path: str | Path) -> ModelDisplay:
    """The checked ``display`` section of the model YAML at ``path`` (memoised per file version)."""
    path = Path(path)
    return _display_cached(path, path.stat().st_mtime_ns)


def model_display(model: str) -> ModelDisplay | None:
    """How tables and figures show model ``model`` (its YAML's ``display`` section), or None for a name that is
    no model of the suite (a published-only row)."""
    path = model_config_path(model)
    return display_section(path) if path.is_file() else None


def model_displays() -> dict[str, ModelDisplay]:
    """Every model's display section, in table order (``display.order``, then name)."""
    found = {path.stem: display_section(path) for path in model_config_paths()}
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


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
    scale: str,
    dataset: str,
    model: str,
    variant: str = DEFAULT_VARIANT,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    ablations_dir: Path | None = None,
) -> dict[str, Any]:
    """The full, plain config of one run."""
    from pamm.tasks import DATASET_TASKS

    if scale not in SCALES:
        raise ConfigError(f"unknown recipe scale {scale!r}; valid: {list(SCALES)}")
    if dataset not in DATASET_TASKS:
        raise ConfigError(f"unknown dataset {dataset!r}; valid: {sorted(DATASET_TASKS)}")
    model_path = model_config_path(model)
    if not model_path.is_file():
        valid = [p.stem for p in model_config_paths()]
        raise ConfigError(f"unknown model {model!r} (no {model_path}); valid models: {valid}")

    cfg = _flatten_layer(_load_yaml(PACKAGE_CONFIGS / "base.yaml"), scale, dataset, "base.yaml")
    model_doc = _load_yaml(model_path)
    _parse_display(model_doc, model_path)  # how the model is shown: checked here, no part of the run's config
    del model_doc[DISPLAY_KEY]
    cfg = deep_merge(cfg, _flatten_layer(model_doc, scale, dataset, str(model_path)))
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
        cfg = deep_merge(cfg, _flatten_layer(doc, scale, dataset, str(path)))
    if overrides:
        cfg = deep_merge(cfg, overrides)
    cfg = strip_replace_markers(cfg)
    cfg["run"] = {"scale": scale, "dataset": dataset, "model": model, "variant": variant, "seed": int(seed)}
    validate_run_config(cfg)
    validate_model_section(cfg, ablations_dir)
    return cfg


#: Keys that moved, by old dotted name -> new dotted name. A config that still sets one stops with a line that
#: says where it went, rather than the schema's "unknown key".
MOVED_KEYS = {
    "train.scan_backend": "train.scan.backend",
    "model.scan_backend": "train.scan.backend",
}


def check_moved_keys(cfg: dict[str, Any]) -> None:
    """Refuse a config that sets a key of ``MOVED_KEYS``, naming the key and where it moved."""
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(cfg.get(section), dict) and key in cfg[section]:
            value = cfg[section][key]
            raise ConfigError(
                f"config key {old}: moved to {new}; set {new}: {value} in the YAML (or --set {new}={value}) "
                f"and remove {old}"
            )


def validate_run_config(cfg: dict[str, Any]) -> None:
    """Check a resolved config against ``configs/run.schema.yaml``; the error names the offending key."""
    import jsonschema

    check_moved_keys(cfg)
    schema = _load_yaml(PACKAGE_CONFIGS / "run.schema.yaml")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "<top level>"
        raise ConfigError(f"config key {where}: {err.message} (see pamm/configs/run.schema.yaml for the valid keys)")


# A weights file's path is where it lies, not what it holds: it is replaced by this marker in the hash, so
# moving the file does not orphan a run; whether a run starts from weights or from scratch still counts.
WEIGHTS_FILE_MARKER = "<local weights file>"


def config_hash(cfg: dict[str, Any]) -> str:
    """Short stable hash of everything that determines a run's result (paths excluded: the data root and
    every ``pretrained_file``)."""
    stripped = copy.deepcopy(cfg)
    stripped.get("data", {}).pop("root", None)
    stripped.get("data", {}).pop("num_workers", None)
    for section, key, _ in _weights_entries(stripped.get("model", {})):
        section[key] = WEIGHTS_FILE_MARKER
    blob = json.dumps(stripped, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _weights_entries(node: Any, where: str = "model") -> Iterator[tuple[dict[str, Any], str, str]]:
    """(mapping, key, dotted name) of every non-null ``pretrained_file`` under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pretrained_file" and value is not None:
                yield node, key, f"{where}.{key}"
            else:
                yield from _weights_entries(value, f"{where}.{key}")


def _number_like(value: Any) -> Any:
    """Strings that read as numbers under YAML 1.2 (``1e-3``) become floats, also inside lists and mappings."""
    if isinstance(value, str) and _FLOAT_12.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_number_like(v) for v in value]
    if isinstance(value, dict):
        return {k: _number_like(v) for k, v in value.items()}
    return value


def parse_override(text: str) -> dict[str, Any]:
    """``train.iterations=50`` -> ``{"train": {"iterations": 50}}`` (value parsed as YAML 1.2, so
    ``train.optimizer.lr=1e-3`` is the number 0.001)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. train.iterations=50)")
    key, value = text.split("=", 1)
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted config key (e.g. train.optimizer.lr=1e-3)")
    try:
        parsed: Any = _number_like(load_yaml_text(value))
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({first}); quote it or fix it") from None
    for part in reversed(key.strip().split(".")):
        parsed = {part: parsed}
    return parsed


# ---------------------------------------------------------------------------------------------- model section

#: Backbone keys that pamm.models.backbones reads itself (the rest are timm keyword arguments).
BACKBONE_OWN_KEYS = frozenset({"name", "pretrained_file", "taps", "out_indices"})
_VIT_PREFIXES = ("vit_", "deit_", "eva", "beit")


def _model_sections(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every ``model:`` mapping of a config layer, its ``datasets`` and ``scales`` sections included."""
    if isinstance(doc.get("model"), dict):
        yield doc["model"]
    for group in ("datasets", "scales"):
        for sub in (doc.get(group) or {}).values():
            if isinstance(sub, dict):
                yield from _model_sections(sub)


def _overlays(ablations_dir: Path | None) -> list[dict[str, Any]]:
    paths = sorted((ablations_dir or ABLATIONS_DIR).glob("*.yaml"))
    return [_load_yaml_cached(path, path.stat().st_mtime_ns) for path in paths]


@functools.lru_cache(maxsize=512)
def _load_yaml_cached(path: Path, mtime_ns: int) -> dict[str, Any]:
    """``_load_yaml`` memoised per file version (resolving a workflow's matrix reads each file many times)."""
    return _load_yaml(path)


def _load_cached(path: Path) -> dict[str, Any]:
    return copy.deepcopy(_load_yaml_cached(path, path.stat().st_mtime_ns))


def declared_model_keys(model: str, ablations_dir: Path | None = None) -> set[str]:
    """The options model ``model`` takes: every key its YAML or an overlay that applies to it sets in ``model:``."""
    docs = [_load_cached(model_config_path(model))]
    docs += [doc for doc in _overlays(ablations_dir) if model in (doc.get("applies_to") or [])]
    return {key for doc in docs for section in _model_sections(doc) for key in section} - {REPLACE_MARKER}


def declared_backbone_keys(ablations_dir: Path | None = None) -> set[str]:
    """Backbone keys in use: those the backbone wrapper reads, plus every timm keyword that a model YAML or an
    overlay sets (a new timm keyword is declared by the overlay that uses it)."""
    docs = [_load_cached(path) for path in model_config_paths()]
    docs += _overlays(ablations_dir)
    keys = set(BACKBONE_OWN_KEYS)
    for doc in docs:
        for section in _model_sections(doc):
            if isinstance(section.get("backbone"), dict):
                keys |= set(section["backbone"])
    return keys - {REPLACE_MARKER}


def backbone_patch(backbone: dict[str, Any]) -> int | None:
    """The patch size of a plain ViT backbone (which does not pad its input), else None."""
    name = str(backbone.get("name", ""))
    if not name.startswith(_VIT_PREFIXES):
        return None
    if backbone.get("patch_size"):
        return int(backbone["patch_size"])
    found = re.search(r"patch(\d+)", name)
    return int(found.group(1)) if found else None


def validate_model_section(cfg: dict[str, Any], ablations_dir: Path | None = None) -> None:
    """The ``model:`` section (which the run schema leaves open), the tasks and the input size: unknown model
    options or backbone keys, unknown tasks, and a ViT input size that is not a multiple of its patch each stop
    here with one line naming the key.

    Keys that a model YAML or an overlay declares pass at once (nothing is imported). Any other key is put to
    the model's builder: the model is built once on the meta device (no memory, no weights read; the verdict is
    cached), and a key the builder or the backbone does not take is reported by name."""
    from pamm.tasks import DATASET_TASKS

    run = cfg["run"]
    backbone = cfg["model"].get("backbone")
    if backbone is not None and (not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str)):
        raise ConfigError("config key model.backbone: expected a mapping with a timm model name, e.g. "
                          "{name: vit_large_patch16_384, pretrained_file: null}")
    undeclared = [f"model.{k}" for k in sorted(set(cfg["model"]) - declared_model_keys(run["model"], ablations_dir))]
    if isinstance(backbone, dict):
        undeclared += [f"model.backbone.{k}" for k in sorted(set(backbone) - declared_backbone_keys(ablations_dir))]
    if undeclared:
        verdict = _builder_verdict(run["model"], run["dataset"], json.dumps(cfg["data"].get("tasks")),
                                   json.dumps(cfg["model"], sort_keys=True, default=str),
                                   tuple(int(v) for v in cfg["data"]["size"]))
        if verdict is not None:
            named = [key for key in undeclared if repr(key.rsplit(".", 1)[-1]) in verdict] or undeclared
            raise ConfigError(
                f"config key {named[0]}: not taken by model {run['model']!r} ({verdict}); fix or remove it (the "
                f"options in use are declared in {model_config_path(run['model'])} and ablations/*.yaml)"
            )
    tasks = cfg["data"].get("tasks")
    valid_tasks = list(DATASET_TASKS[run["dataset"]])
    if tasks is not None:
        bad = [t for t in tasks if t not in valid_tasks]
        if bad or not tasks:
            raise ConfigError(f"config key data.tasks: {bad or tasks} {'are not tasks of' if bad else 'is empty for'} "
                              f"{run['dataset']!r}; valid: {valid_tasks} (or null for all)")
    patch = backbone_patch(backbone) if isinstance(backbone, dict) else None
    size = [int(v) for v in cfg["data"]["size"]]
    if patch and any(v % patch for v in size):
        fit = [int(math.ceil(v / patch)) * patch for v in size]
        raise ConfigError(
            f"config key data.size: {size} is not a multiple of the ViT backbone's patch size {patch} "
            f"({backbone['name']}), which does not pad its input: use {fit} (images smaller than data.size are "
            "padded to it)"
        )


@functools.lru_cache(maxsize=64)
def _builder_verdict(model: str, dataset: str, tasks_json: str, model_json: str, size: tuple[int, int]) -> str | None:
    """None if model ``model`` builds with these options, else the first line of why not (built on the meta
    device, weights files left out)."""
    import torch

    import baselines  # noqa: F401  (registers the baseline models)
    from pamm.models import create_model
    from pamm.tasks import dataset_tasks

    options = json.loads(model_json)
    for section, key, _ in _weights_entries(options):
        section[key] = None
    try:
        with torch.device("meta"):
            create_model(model, dataset_tasks(dataset, json.loads(tasks_json)), img_size=size, **options)
    except Exception as err:  # noqa: BLE001 - whatever the builder refuses, it refuses for these options
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        first = first.removeprefix(f"model {model!r}: ")
        return first.split("; check the model: section")[0]
    return None


def resolve_weights_files(cfg: dict[str, Any]) -> None:
    """Every ``pretrained_file`` of the model section exists and holds weights (a safetensors file, or a torch /
    numpy checkpoint: zip or pickle); a text file or a missing path stops here with one line. The paths are
    stored absolute, so the run's config.yaml works from any working directory."""
    for section, key, where in _weights_entries(cfg.get("model", {})):
        path = Path(str(section[key])).expanduser().absolute()
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"config key {where}: {path} {what}: give a local .safetensors/.pth file (nothing is "
                              "downloaded), or set it to null to start from random weights")
        with open(path, "rb") as handle:
            head = handle.read(16)
        size = path.stat().st_size
        zipped, pickled = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80"
        safetensors = len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size
        if not (zipped or pickled or safetensors):
            raise ConfigError(
                f"config key {where}: {path} is not a weights file (it starts with {head[:12]!r}; expected a "
                ".safetensors file or a torch .pth/.pt/.bin checkpoint): point it at the weights themselves"
            )
        section[key] = str(path)


# ---------------------------------------------------------------------------------------------- workflow config


def _schema_error_line(err: Any) -> str:
    """One line for a jsonschema error: the key, then what is wrong, without dumping the whole value."""
    where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        if allowed or not isinstance(err.schema.get("additionalProperties"), dict):
            return f"key {where}: unknown key(s) {extra}; valid: {sorted(allowed)}"
    if err.validator == "required":
        return f"key {where}: {err.message}"
    value = repr(err.instance)
    value = value if len(value) <= 60 else value[:57] + "..."
    if err.validator == "type":
        return f"key {where}: {value} is not of type {err.validator_value}"
    if err.validator == "enum":
        return f"key {where}: {value} is not one of {err.validator_value}"
    if err.validator in ("oneOf", "anyOf") and err.context:
        return _schema_error_line(min(err.context, key=lambda e: len(list(e.absolute_path)) * -1))
    message = err.message if len(err.message) <= 160 else err.message[:157] + "..."
    return f"key {where}: {message}"


def validate_workflow_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Check the workflow config against its schema, and that each dataset has a root or synthetic settings;
    the first problem is one ``ConfigError`` line that names the key (never a dump of the config)."""
    import jsonschema

    if "profile" in config:
        raise ConfigError(f"workflow config key profile: the recipe scale is now the key scale (scale: "
                          f"{config['profile']}, or --config scale={config['profile']}); rename it")
    schema = _load_yaml(Path(schema_path))
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"workflow config {_schema_error_line(best)} (see {schema_path})")
    for name, dataset in config["datasets"].items():
        if dataset.get("root") is None and dataset.get("synthetic") is None:
            raise ConfigError(
                f"workflow config key datasets.{name}: root and synthetic are both null: set root to the dataset "
                "folder, or synthetic to the generator's settings (as in workflow/config.yaml)"
            )


def workflow_matrix(config: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """(dataset, model, variant, seed) of every run of a validated workflow config: each dataset's own
    ``models`` matrix when it has one, else the top-level one. Single-task variants (``stl_<task>``, composed
    ``stl_<task>+swin``) run only on datasets that have the task; a ``stl_<name>`` whose name is no task of any
    dataset stays in, so that resolving it reports it as unknown."""
    from pamm.tasks import DATASET_TASKS

    def applies(dataset: str, model: str, variant: str) -> bool:
        if model != "stl":
            return True
        task = variant_parts(variant)[0].removeprefix("stl_")
        return task in DATASET_TASKS[dataset] or not any(task in tasks for tasks in DATASET_TASKS.values())

    return [
        (dataset, model, variant, int(seed))
        for dataset in config["datasets"]
        for model, variants in (config["datasets"][dataset].get("models") or config["models"]).items()
        for variant in variants
        if applies(dataset, model, variant)
        for seed in config["seeds"]
    ]


def apply_pretrained(cfg: dict[str, Any], weights: dict[str, str]) -> None:
    """Local weights per backbone name (``{name: path}``): a run whose backbone is ``name`` and names no
    ``pretrained_file`` of its own gets ``path``; other runs are untouched."""
    backbone = cfg["model"].get("backbone", {})
    if backbone.get("name") in weights and not backbone.get("pretrained_file"):
        backbone["pretrained_file"] = weights[backbone["name"]]


def resolve_workflow_runs(
    config: dict[str, Any], runs: list[tuple[str, str, str, Any]]
) -> dict[tuple[str, str, str, int], str]:
    """Resolve the config of every (dataset, model, variant, seed) of the workflow's matrix, as its train job
    will, and return each run's ``config_hash``: an unknown model or variant, or a bad ``overrides`` key, stops
    the DAG with one line naming the run; the hash is the train rule's param, so a changed model YAML or
    overlay reruns exactly the runs it changes."""
    overrides = _number_like(config.get("overrides") or {})
    weights = {str(name): str(path) for name, path in (config.get("pretrained") or {}).items()}
    resolved: dict[tuple[str, str, str], dict[str, Any]] = {}
    hashes: dict[tuple[str, str, str, int], str] = {}
    for dataset, model, variant, seed in runs:
        if (dataset, model, variant) not in resolved:
            try:
                cfg = resolve_config(config["scale"], dataset, model, variant, 0, overrides)
            except ConfigError as err:
                raise ConfigError(f"workflow run {dataset}/{model}/{variant}: {err}") from None
            apply_pretrained(cfg, weights)
            resolved[(dataset, model, variant)] = cfg
        cfg = resolved[(dataset, model, variant)]
        cfg["run"]["seed"] = int(seed)  # the seed enters the resolved config only here
        hashes[(dataset, model, variant, int(seed))] = config_hash(cfg)
    return hashes


def load_run_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: train the run first (pamm-bench train ...)")
    return _load_yaml(path)
