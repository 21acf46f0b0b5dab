"""What training, evaluation, profiling and checkpoint loading share: the run's model, loss, optimizer,
schedule, device, scan settings and loaders, built from its resolved config.

It sits below ``train``, ``evaluate`` and ``profile`` (and ``pamm.checkpoints``), so none of them imports
another to reach a builder.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import baselines  # noqa: F401  (registers the baseline models and their checkpoint converters)
from pamm.config import check_moved_keys
from pamm.errors import ConfigError
from pamm.losses import MultiTaskLoss
from pamm.models import create_model  # importing pamm.models registers pamm's own models
from pamm.tasks import IGNORE_INDEX, TASK_INFO, dataset_tasks


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


def load_checkpoint(path: Path, fix: str) -> dict[str, Any]:
    """``torch.load`` of a run's ``last.pt`` / ``checkpoint.pt``; a truncated or corrupt file is one
    ``TrainingError`` naming it and ``fix`` (what to delete or rerun)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - zip, pickle and EOF errors all mean the same here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise TrainingError(f"{path} is truncated or corrupt ({type(err).__name__}: {first}): {fix}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise TrainingError(f"{path} is not a pamm-bench checkpoint (no 'model' entry): {fix}")
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_cudnn(device: torch.device, benchmark: bool = True) -> None:
    """Let cuDNN time its convolution algorithms once per input shape (``cudnn.benchmark``), as the
    released PAMM, MTMamba and InvPT trainers do (e.g.
    EnVision-Research/MTMamba@52df545f6419bcdc823b4f72f7bcdeaaa5440da8:main.py): training runs at one crop size, so
    the search happens once, and without it cuDNN's heuristic pick is what runs for every convolution
    (PAMM's wide 9×9 expert convolutions among them). No-op off CUDA."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA for ``auto``; fp32 (no autocast) on CPU unless ``bf16`` is forced."""
    if amp == "fp32":
        return None
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if amp == "auto":
        return None
    raise TrainingError(f"train.amp must be auto, bf16 or fp32, got {amp!r}")


def scan_settings_for(cfg: dict[str, Any]):
    """The run's scan settings (``pamm.ops.ScanSettings``): the config's ``train.scan`` section and the
    documented environment overrides. A config that names the backend under a key of
    ``pamm.config.MOVED_KEYS`` (an older run directory's ``config.yaml``, say) is refused."""
    from pamm import ops

    check_moved_keys(cfg)
    return ops.ScanSettings.from_config(cfg["train"].get("scan") or {}, where="train.scan")


def build_model_for(cfg: dict[str, Any]) -> torch.nn.Module:
    from pamm import ops
    from pamm.models.heads import attach_output_offsets

    run = cfg["run"]
    tasks = dataset_tasks(run["dataset"], cfg["data"].get("tasks"))
    settings = scan_settings_for(cfg)  # first: a moved key is named as such, not as an unknown model option
    try:
        model = create_model(run["model"], tasks, img_size=tuple(cfg["data"]["size"]), **cfg["model"])
    except ValueError as err:  # the builders' own checks of their options (sizes, heads, widths)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"model {run['model']!r} ({run['variant']}): {first}") from None
    attach_output_offsets(model, [t for t in cfg["train"].get("output_offsets") or [] if t in tasks])
    ops.set_scan_settings(model, settings)
    return model


def init_offsets_from_train_split(model: torch.nn.Module, cfg: dict[str, Any], tasks: list[str]) -> None:
    """Start each output offset at the train split's mean target (un-augmented pass over the split)."""
    from pamm.models.heads import init_output_offsets

    wanted = [t for t in cfg["train"].get("output_offsets") or [] if t in tasks]
    if not wanted:
        return
    unsupported = [t for t in wanted if t != "depth"]
    if unsupported:
        raise TrainingError(f"train.output_offsets supports depth only, got {unsupported}")
    stats = train_statistics(split_loader(cfg, "train", wanted), {t: 1 for t in wanted})
    init_output_offsets(model, {"depth": float(stats["depth"][0] / stats["depth"][1].clamp_min(1))})


def build_criterion(cfg: dict[str, Any], tasks: list[str]) -> MultiTaskLoss:
    """The run's multi-task loss (scheme, task weights, edge positive weight from ``train.loss``)."""
    loss_cfg = cfg["train"]["loss"]
    return MultiTaskLoss(tasks, cfg["run"]["dataset"], scheme=loss_cfg["scheme"], weights=loss_cfg.get("weights"),
                         edge_pos_weight=float(loss_cfg["edge_pos_weight"]))


def build_optimizer(params, opt_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The run's optimizer. Adam/AdamW on CUDA parameters use torch's fused kernel (one launch for every
    tensor; same update up to rounding) instead of a launch per group of tensors (docs/performance.md)."""
    params = list(params)
    name = opt_cfg.get("name", "adam").lower()
    kwargs = {"lr": float(opt_cfg["lr"]), "weight_decay": float(opt_cfg.get("weight_decay", 0.0))}
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if name == "adam":
        return torch.optim.Adam(params, **kwargs, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs, **fused)
    if name == "sgd":
        return torch.optim.SGD(params, momentum=float(opt_cfg.get("momentum", 0.9)), **kwargs)
    raise TrainingError(f"train.optimizer.name {name!r} is not one of adam, adamw, sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: dict[str, Any], iterations: int):
    """Poly decay stepped per iteration (the shared recipe), or constant."""
    name = sched_cfg.get("name", "poly")
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    if name != "poly":
        raise TrainingError(f"train.scheduler.name {name!r} is not one of poly, constant")
    power = float(sched_cfg.get("power", 0.9))
    base = float(optimizer.param_groups[0]["lr"])
    floor = float(sched_cfg.get("min_lr", 0.0)) / base if base > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: max(floor, (1.0 - min(it, iterations) / iterations) ** power)
    )


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def split_loader(cfg: dict[str, Any], split: str, tasks: list[str]) -> DataLoader:
    """The un-augmented ``split`` of the run's dataset, in order."""
    from pamm.data import build_dataset

    dataset = build_dataset(
        cfg["run"]["dataset"], cfg["data"]["root"], split, tasks=tasks, train=False, size=tuple(cfg["data"]["size"])
    )
    # An explicit generator keeps the global RNG untouched (the trainer's resume relies on it).
    return DataLoader(dataset, batch_size=int(cfg["eval"]["batch_size"]), shuffle=False, num_workers=0,
                      generator=torch.Generator())


def train_statistics(loader: DataLoader, tasks: dict[str, int]) -> dict[str, torch.Tensor]:
    """What a trivial predictor knows: class frequencies, mean depth, mean normal over the train split."""
    stats: dict[str, torch.Tensor] = {}
    for batch in loader:
        for task, channels in tasks.items():
            target = batch[task]
            if TASK_INFO[task].kind == "classification":
                valid = target[target != IGNORE_INDEX]
                counts = torch.bincount(valid.flatten(), minlength=channels).double()
                stats[task] = stats.get(task, torch.zeros(channels, dtype=torch.float64)) + counts
            elif task == "depth":
                valid = target[target > 0].double()
                prev = stats.get(task, torch.zeros(2, dtype=torch.float64))
                stats[task] = prev + torch.stack([valid.sum(), torch.tensor(float(valid.numel()), dtype=torch.float64)])
            elif task == "normals":
                valid = (target != IGNORE_INDEX).all(dim=1, keepdim=True).expand_as(target)
                summed = (target * valid).double().sum(dim=(0, 2, 3))
                stats[task] = stats.get(task, torch.zeros(3, dtype=torch.float64)) + summed
    return stats
