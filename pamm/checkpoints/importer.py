"""Import an authors' released checkpoint into a pamm-bench run directory that ``evaluate`` accepts."""
from __future__ import annotations

import hashlib
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from pamm.checkpoints.registry import ConversionError, check_against_model, get_converter
from pamm.io import weights_file_format

DDP_PREFIX = "module."
# Where the authors' training loops keep the weights inside the saved dict, in the order tried.
_STATE_KEYS = ("model", "state_dict")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(path: Path, what: str, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if weights_file_format(path) != "torch":
        raise ConversionError(f"{path}: not a torch checkpoint (a file written by torch.save); is it the right file?")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise ConversionError(
            f"{path}: holds Python objects beyond tensors and plain containers, which a weights-only load refuses "
            f"({str(err).splitlines()[0]}); if you trust the file, add --trust-pickle"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0]}); is it truncated?") from err


def released_state_dict(saved: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights inside an authors' checkpoint (``{'model': ...}``, ``{'state_dict': ...}`` or bare), without
    the DistributedDataParallel ``module.`` prefix, and the file's other scalar entries (epoch, iter_count)."""
    if not isinstance(saved, dict):
        raise ConversionError(f"{path}: expected a dict of tensors (or one under 'model'), got {type(saved).__name__}")
    state, meta = saved, {}
    for key in _STATE_KEYS:
        if isinstance(saved.get(key), dict):
            state = saved[key]
            meta = {k: v for k, v in saved.items() if isinstance(v, (int, float, str))}
            break
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise ConversionError(f"{path}: no tensors found (top-level keys {sorted(saved)[:8]}); expected the authors' "
                              f"checkpoint with its weights under 'model'")
    others = sorted(set(state) - set(tensors))
    if others:
        raise ConversionError(f"{path}: entry {others[0]!r} of the weights is not a tensor")
    if all(k.startswith(DDP_PREFIX) for k in tensors):
        tensors = {k[len(DDP_PREFIX):]: v for k, v in tensors.items()}
    return tensors, meta


def import_checkpoint(
    source: str,
    checkpoint: str | Path,
    dataset: str,
    out: str | Path,
    variant: str = "default",
    scale: str = "paper",
    overrides: dict[str, Any] | None = None,
    unregistered: str | Path | None = None,
    seed: int = 0,
    data_root: str | Path | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Convert ``checkpoint`` (the authors' format for ``source``) and write run directory ``out``.

    ``out`` holds ``config.yaml``, ``checkpoint.pt`` and ``provenance.json`` (source file, its sha256, the
    converter's notes); it is written whole or not at all. Returns the provenance record."""
    from pamm import io as pio
    from pamm.config import config_hash, deep_merge, resolve_config
    from pamm.engine.build import build_model_for
    from pamm.engine.provenance import git_state

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"{out} already exists and is not empty: choose a new --out, or delete it first")
    entry = get_converter(source)
    checkpoint = Path(checkpoint)
    released, meta = released_state_dict(_load(checkpoint, "checkpoint", trust_pickle), checkpoint)
    extra = None
    if unregistered is not None:
        unregistered = Path(unregistered)
        extra, _ = released_state_dict(_load(unregistered, "--unregistered file", trust_pickle), unregistered)

    cfg_overrides = deep_merge(entry.cfg_defaults, overrides or {})
    if data_root is not None:
        cfg_overrides = deep_merge(cfg_overrides, {"data": {"root": str(Path(data_root).resolve())}})
    cfg = resolve_config(scale, dataset, entry.model_name, variant, seed, cfg_overrides)
    torch.manual_seed(seed)
    model = build_model_for(cfg)
    converted = entry.convert(released, model, cfg, extra)
    check_against_model(converted.state_dict, model, source)
    model.load_state_dict(converted.state_dict, strict=True)

    chash = config_hash(cfg)
    provenance = {
        "run": cfg["run"], "config_hash": chash, "origin": "released_checkpoint", "source": source,
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint),
                       **{k: meta[k] for k in ("epoch", "iter_count") if k in meta}},
        "unregistered": {"path": str(unregistered.resolve()), "sha256": file_sha256(unregistered)} if extra else None,
        "notes": list(converted.notes), **git_state(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        pio.write_yaml(staging / "config.yaml", cfg)
        pio.torch_save({"model": model.state_dict(), "iteration": int(meta.get("iter_count", 0) or 0),
                        "config_hash": chash, "model_name": entry.model_name, "origin": "released_checkpoint"},
                       staging / "checkpoint.pt")
        pio.write_json(staging / "provenance.json", provenance)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return provenance
