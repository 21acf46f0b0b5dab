"""A run directory's model, ready to use: the one public way to get it in Python."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from pamm.config import config_hash, load_run_config


class RunModelError(RuntimeError):
    """A run directory whose model cannot be loaded; the message names the file and the fix."""


def read_run_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, checkpoint)`` of a run directory, the checkpoint matched against the config's hash."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise RunModelError(
            f"{path} does not exist: train the run first (pamm-bench train --out {run_dir}) "
            f"or import a released checkpoint (pamm-bench import-checkpoint --out {run_dir})"
        )
    from pamm.engine.build import load_checkpoint

    state = load_checkpoint(path, f"delete it and rerun pamm-bench train --out {run_dir} (it resumes from last.pt), or "
                                  f"import the authors' checkpoint again (pamm-bench import-checkpoint)")
    if state.get("config_hash") != config_hash(cfg):
        raise RunModelError(f"{path} does not match {run_dir / 'config.yaml'} (config hash differs): retrain the run")
    return cfg, state


def build_run_model(cfg: dict[str, Any], checkpoint: dict[str, Any]) -> nn.Module:
    """The model of a run's config with the checkpoint's weights, on CPU, in eval mode."""
    from pamm.engine.build import build_model_for

    model = build_model_for(cfg)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def load_run_model(run_dir: str | Path) -> nn.Module:
    """The model of ``run_dir`` (``config.yaml`` + ``checkpoint.pt``) with its weights, on CPU, in eval mode."""
    return build_run_model(*read_run_checkpoint(run_dir))
