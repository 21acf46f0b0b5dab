"""Train one run: config in, ``checkpoint.pt`` + ``train_log.csv`` + ``provenance.json`` out.

Resumable: ``last.pt`` holds model, optimizer, scheduler, iteration and every RNG state, and the
data order and augmentations are functions of (seed, epoch, index) alone, so a run killed at any
point and started again ends with exactly the weights of an uninterrupted run (on CPU).
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from pamm import io as pio
from pamm.config import config_hash
from pamm.engine import distributed
from pamm.engine.provenance import dataset_fingerprint, environment, git_state
from pamm.losses import MultiTaskLoss
from pamm.models import create_model
from pamm.tasks import dataset_tasks

# Test-only fault injection: SIGKILL this process right after saving the checkpoint of this iteration.
FAULT_KILL_ENV = "PAMM_FAULT_KILL_AFTER_ITER"


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class TrainingDiverged(TrainingError):
    pass


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
    released PAMM, MTMamba and InvPT trainers do (reference §1.8): training runs at one crop size, so
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
    """The run's scan settings (``pamm.ops.ScanSettings``): ``train.scan`` with its backend defaulting to
    ``train.scan_backend``, a model's named ``scan_backend`` winning (it is what the model's scan calls
    name), and the documented environment overrides."""
    from pamm import ops

    section = {"backend": cfg["train"].get("scan_backend", "auto"), **(cfg["train"].get("scan") or {})}
    settings = ops.ScanSettings.from_config(section, where="train.scan")
    model_backend = cfg["model"].get("scan_backend", "auto")
    return settings if model_backend == "auto" else settings.forced(backend=model_backend)


def build_model_for(cfg: dict[str, Any]) -> torch.nn.Module:
    from pamm import ops
    from pamm.models.heads import attach_output_offsets

    run = cfg["run"]
    tasks = dataset_tasks(run["dataset"], cfg["data"].get("tasks"))
    model = create_model(run["model"], tasks, img_size=tuple(cfg["data"]["size"]), **cfg["model"])
    attach_output_offsets(model, [t for t in cfg["train"].get("output_offsets") or [] if t in tasks])
    ops.set_scan_settings(model, scan_settings_for(cfg))
    return model


def _init_offsets_from_train_split(model: torch.nn.Module, cfg: dict[str, Any], tasks: list[str]) -> None:
    """Start each output offset at the train split's mean target (un-augmented pass over the split)."""
    from pamm.engine.evaluate import split_loader, train_statistics
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
    tensor; same update up to rounding): the foreach version took 20 ms of PAMM's 504 ms NYUD step."""
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


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation that depends on (seed, epoch) only; last partial batch dropped."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_items, generator=generator).tolist()
    usable = max(batch_size, (n_items // batch_size) * batch_size) if n_items >= batch_size else n_items
    order = order[:usable]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iterate_batches(
    dataset, batch_size: int, seed: int, start_iteration: int, num_workers: int,
    dist_info: distributed.DistInfo = distributed.DistInfo(),
) -> Iterator[dict]:
    """Endless stream of batches starting at ``start_iteration``, identical whether resumed or not.

    ``batch_size`` is the global batch; under DDP each rank yields its slice of it.
    """
    n_items = len(dataset)
    if n_items == 0:
        raise TrainingError("the training split is empty: check the dataset's split file")
    per_epoch = len(epoch_batches(n_items, batch_size, seed, 0))
    epoch, skip = divmod(start_iteration, per_epoch)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        batches = [distributed.rank_slice(b, dist_info) for b in epoch_batches(n_items, batch_size, seed, epoch)[skip:]]
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed + epoch),  # keeps the global RNG untouched
            persistent_workers=False,
        )
        yield from loader
        epoch, skip = epoch + 1, 0


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_LOG_FIELDS = ["iteration", "loss", "lr", "seconds"]


def _write_log(path: Path, rows: list[dict[str, Any]], tasks: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_LOG_FIELDS + [f"loss_{t}" for t in tasks])
    writer.writeheader()
    writer.writerows(rows)
    pio.write_text(path, buffer.getvalue())


def train_run(
    cfg: dict[str, Any],
    run_dir: str | Path,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the run described by ``cfg`` in ``run_dir``."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    final_path, last_path = run_dir / "checkpoint.pt", run_dir / "last.pt"
    run = cfg["run"]
    train_cfg = cfg["train"]
    tasks = list(dataset_tasks(run["dataset"], cfg["data"].get("tasks")))
    iterations = int(train_cfg["iterations"])

    if final_path.is_file():
        saved = torch.load(final_path, map_location="cpu", weights_only=False)
        if saved.get("config_hash") == chash:
            return {"status": "already trained", "iteration": saved["iteration"]}
        raise TrainingError(
            f"{final_path} was trained with another config (hash {saved.get('config_hash')} != {chash}): "
            f"delete {run_dir} or write this run elsewhere"
        )
    if cfg["data"].get("root") is None:
        raise TrainingError("data.root is not set: pass --data-root DIR (a NYUDv2 or PASCALContext folder)")

    dist_info = distributed.setup()
    dev = distributed.device_for(dist_info, device)
    scan = scan_settings_for(cfg)
    configure_cudnn(dev)
    seed_everything(int(run["seed"]) + dist_info.rank)
    from pamm.data import build_dataset

    dataset = build_dataset(
        run["dataset"], cfg["data"]["root"], "train", tasks=tasks, train=True,
        size=tuple(cfg["data"]["size"]), seed=int(run["seed"]),
    )
    model = build_model_for(cfg).to(dev)
    if not last_path.is_file():
        _init_offsets_from_train_split(model, cfg, tasks)
    net = distributed.wrap(model, dist_info, dev)
    model = net.module if dist_info.enabled else net  # SyncBatchNorm conversion returns a new module
    criterion = build_criterion(cfg, tasks)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg["optimizer"])
    scheduler = build_scheduler(optimizer, train_cfg.get("scheduler", {}), iterations)
    amp_dtype = autocast_dtype(str(train_cfg.get("amp", "auto")), dev)

    start, log_rows, elapsed = 0, [], 0.0
    if last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        if state.get("config_hash") != chash:
            raise TrainingError(
                f"{last_path} belongs to another config (hash {state.get('config_hash')} != {chash}, model "
                f"{state.get('model_name')!r}): delete it to start over, or restore the config it was trained with"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        start, log_rows, elapsed = int(state["iteration"]), list(state["log_rows"]), float(state["train_seconds"])
    pio.write_yaml(run_dir / "config.yaml", cfg)

    last_saved = start

    def save_last(iteration: int) -> None:
        nonlocal last_saved
        last_saved = iteration
        if not dist_info.is_main:
            return
        pio.torch_save(
            {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "iteration": iteration, "rng": _rng_state(), "config_hash": chash, "model_name": run["model"],
                "log_rows": log_rows, "train_seconds": elapsed,
            },
            last_path,
        )
        _write_log(run_dir / "train_log.csv", log_rows, tasks)

    kill_after = int(os.environ.get(FAULT_KILL_ENV, "-1"))
    model.train()
    batches = iterate_batches(dataset, int(train_cfg["batch_size"]), int(run["seed"]), start,
                              int(cfg["data"].get("num_workers", 0)), dist_info)
    clip = train_cfg.get("grad_clip")
    log_every, ckpt_every = int(train_cfg.get("log_every", 10)), int(train_cfg.get("ckpt_every", 500))
    bar = tqdm(total=iterations, initial=start, disable=not progress or not dist_info.is_main, desc=f"train {run['model']}/{run['variant']}",
               dynamic_ncols=True, mininterval=2.0)
    tic = time.perf_counter()
    for iteration in range(start, iterations):
        batch = move_batch(next(batches), dev)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = net(batch["image"])
        loss, task_losses = criterion(outputs, {t: batch[t] for t in tasks})
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"loss became {loss_value} at iteration {iteration} (task losses {task_losses}); stopped. "
                f"{last_path.name} keeps the last good state (iteration {last_saved}); "
                f"lower train.optimizer.lr or enable train.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        optimizer.step()
        scheduler.step()
        done = iteration + 1
        if done % log_every == 0 or done == iterations:
            now = time.perf_counter()
            elapsed += now - tic
            tic = now
            log_rows.append({"iteration": done, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                             "seconds": round(elapsed, 3), **{f"loss_{t}": v for t, v in task_losses.items()}})
            bar.set_postfix(loss=f"{loss_value:.3f}")
        bar.update(1)
        if done % ckpt_every == 0 or done == iterations:
            elapsed += time.perf_counter() - tic
            tic = time.perf_counter()
            save_last(done)
            if done == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    distributed.barrier(dist_info)
    if not dist_info.is_main:
        distributed.teardown(dist_info)
        return {"status": "trained", "iteration": iterations, "train_seconds": elapsed}

    pio.torch_save(
        {"model": model.state_dict(), "iteration": iterations, "config_hash": chash, "model_name": run["model"],
         "train_seconds": elapsed},
        final_path,
    )
    pio.write_json(
        run_dir / "provenance.json",
        {
            "run": run, "config_hash": chash, **git_state(), "environment": environment(),
            "dataset": dataset_fingerprint(cfg["data"]["root"]), "device": str(dev),
            "scan_backend": _resolved_scan_backend(scan, dev), "scan": scan.record(), "train_seconds": elapsed,
            "iterations": iterations,
            "world_size": dist_info.world_size, "global_batch": int(train_cfg["batch_size"]),
            "per_rank_batch": int(train_cfg["batch_size"]) // dist_info.world_size,
        },
    )
    distributed.teardown(dist_info)
    return {"status": "trained", "iteration": iterations, "train_seconds": elapsed}


def _resolved_scan_backend(scan, device: torch.device) -> str:
    """The scan backend the run's settings resolve to on ``device`` (what actually ran)."""
    from pamm import ops

    return ops.resolve(scan, device)
