"""Train one run: config in, ``checkpoint.pt`` + ``train_log.csv`` + ``provenance.json`` out.

Resumable: ``last.pt`` holds model, optimizer, scheduler, iteration and every RNG state, and the
data order and augmentations are functions of (seed, epoch, index) alone, so a run killed at any
point and started again ends with exactly the weights of an uninterrupted run (on CPU).

``last.pt`` only ever holds a good state: finite weights and optimizer state, reached with a finite
loss at every iteration. A non-finite loss or state stops the run and names the iteration that
``last.pt`` keeps; Ctrl-C and write errors (full disk, read-only folder) stop it with one line too.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import errno
import io
import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from pamm import io as pio
from pamm.config import config_hash
from pamm.engine import distributed
from pamm.engine.build import (
    TrainingError,
    autocast_dtype,
    build_criterion,
    build_model_for,
    build_optimizer,
    build_scheduler,
    configure_cudnn,
    init_offsets_from_train_split,
    load_checkpoint,
    move_batch,
    scan_settings_for,
    seed_everything,
)
from pamm.engine.provenance import dataset_fingerprint, environment, git_state
from pamm.tasks import dataset_tasks


class TrainingDiverged(TrainingError):
    pass


class TrainingInterrupted(TrainingError):
    """Ctrl-C (SIGINT) during training; the message says which iteration a rerun resumes from."""


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it as usual (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and previous is not signal.SIG_IGN:
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signal.SIGINT, None)
        else:
            raise KeyboardInterrupt


def state_is_finite(*states: Any) -> bool:
    """Whether every floating-point tensor in (nested) state dicts is finite."""
    for state in states:
        if torch.is_tensor(state):
            if state.is_floating_point() and not bool(torch.isfinite(state).all()):
                return False
        elif isinstance(state, dict):
            if not state_is_finite(*state.values()):
                return False
        elif isinstance(state, (list, tuple)):
            if not state_is_finite(*state):
                return False
    return True


def _non_finite_items(batch: dict[str, Any], tasks: list[str]) -> list[str]:
    """Ids of the batch items whose image or targets hold NaN/Inf (bad data, not a bad learning rate)."""
    ids = list(batch.get("meta", {}).get("id", []))
    bad = set()
    for key in ["image", *tasks]:
        value = batch.get(key)
        if torch.is_tensor(value) and value.is_floating_point():
            rows = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
            bad.update(int(i) for i in torch.nonzero(rows).flatten().tolist())
    return [ids[i] if i < len(ids) else f"#{i}" for i in sorted(bad)]


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
    on_config_change: str = "refuse",
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the run described by ``cfg`` in ``run_dir``. A ``last.pt`` of
    another config stops the run (``on_config_change="refuse"``) or is set aside so that it starts over
    (``"restart"``, see ``set_aside_stale_state``)."""
    from tqdm import tqdm

    if on_config_change not in ("refuse", "restart"):
        raise ValueError(f"on_config_change is {on_config_change!r}; expected 'refuse' or 'restart'")
    run_dir = Path(run_dir)
    cfg = copy.deepcopy(cfg)
    if cfg["data"].get("root") is not None:
        cfg["data"]["root"] = os.path.abspath(cfg["data"]["root"])  # evaluate may run from another folder
    chash = config_hash(cfg)
    final_path, last_path = run_dir / "checkpoint.pt", run_dir / "last.pt"
    run = cfg["run"]
    train_cfg = cfg["train"]
    tasks = list(dataset_tasks(run["dataset"], cfg["data"].get("tasks")))
    iterations = int(train_cfg["iterations"])

    if final_path.is_file():
        saved = load_checkpoint(final_path, f"delete it and rerun: training resumes from {last_path.name} if it "
                                            "is there, else starts over")
        if saved.get("config_hash") == chash:
            return {"status": "already trained", "iteration": saved["iteration"]}
        raise TrainingError(
            f"{final_path} was trained with another config (hash {saved.get('config_hash')} != {chash}): "
            f"delete {run_dir} or write this run elsewhere"
        )
    if cfg["data"].get("root") is None:
        raise TrainingError("data.root is not set: pass --data-root DIR (a NYUDv2 or PASCALContext folder)")
    _refuse_foreign_config(run_dir / "config.yaml", chash)
    from pamm.data.checks import preflight

    preflight(run["dataset"], cfg["data"]["root"], need=("train",))

    dist_info = distributed.setup()
    dev = distributed.device_for(dist_info, device)
    if on_config_change == "restart":  # one rank renames, the others wait, so that no rank reads the old state
        moved = set_aside_stale_state(run_dir, cfg) if dist_info.is_main else None
        distributed.barrier(dist_info)
        if moved is not None:
            print(f"{run_dir}: the config changed; the old resume state is now {moved.name}, training starts over")
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
        init_offsets_from_train_split(model, cfg, tasks)
    net = distributed.wrap(model, dist_info, dev)
    model = net.module if dist_info.enabled else net  # SyncBatchNorm conversion returns a new module
    criterion = build_criterion(cfg, tasks)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg["optimizer"])
    scheduler = build_scheduler(optimizer, train_cfg.get("scheduler", {}), iterations)
    amp_dtype = autocast_dtype(str(train_cfg.get("amp", "auto")), dev)

    start, log_rows, elapsed = 0, [], 0.0
    last_good: int | None = None  # iteration that last.pt holds (a good state), None before the first save
    if last_path.is_file():
        state = load_checkpoint(last_path, "delete it to start the run over (or restore it from a backup)")
        if state.get("config_hash") != chash:
            raise TrainingError(
                f"{last_path} belongs to another config (hash {state.get('config_hash')} != {chash}, model "
                f"{state.get('model_name')!r}): delete it to start over, or restore the config it was trained with"
            )
        if not state_is_finite(state["model"], state["optimizer"]):
            raise TrainingError(f"{last_path} holds non-finite weights or optimizer state (iteration "
                                f"{state['iteration']}): delete it to start the run over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        start, log_rows, elapsed = int(state["iteration"]), list(state["log_rows"]), float(state["train_seconds"])
        last_good = start
    log_every, ckpt_every = int(train_cfg.get("log_every", 10)), int(train_cfg.get("ckpt_every", 500))

    def resume_note() -> str:
        if last_good is None:
            first = min(ckpt_every, iterations)
            return f"no good state was saved yet (the first checkpoint comes at iteration {first}): a rerun starts over"
        return (f"{last_path} keeps the last good state, iteration {last_good} (finite weights, optimizer state and "
                "loss): a rerun resumes from there")

    def write_failed(path: Path, err: OSError, iteration: int) -> TrainingError:
        fix = "free disk space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else \
            f"make {run_dir} writable"
        return TrainingError(f"cannot write {path} at iteration {iteration} ({err.strerror or err}): {fix} and "
                             f"rerun; {resume_note()}")

    try:  # nothing is written before the config resolved, the data passed its preflight and the model built
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainingError(f"cannot create the run directory {run_dir} ({err.strerror}): choose another --out") \
            from None
    if dist_info.is_main:
        try:
            pio.write_yaml(run_dir / "config.yaml", cfg)
        except OSError as err:
            raise write_failed(run_dir / "config.yaml", err, start) from None

    def save_last(iteration: int) -> None:
        with _sigint_deferred():  # Ctrl-C during a save lands after it, with last_good telling the truth
            _save_last(iteration)

    def _save_last(iteration: int) -> None:
        nonlocal last_good
        if not state_is_finite(model.state_dict(), optimizer.state_dict()):
            raise TrainingDiverged(
                f"the weights or optimizer state became non-finite by iteration {iteration} (the loss was finite "
                f"until then); stopped without saving them. {resume_note()}. Lower train.optimizer.lr or enable "
                "train.grad_clip"
            )
        if dist_info.is_main:
            try:
                pio.torch_save(
                    {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "iteration": iteration, "rng": _rng_state(),
                        "config_hash": chash, "model_name": run["model"], "log_rows": log_rows,
                        "train_seconds": elapsed,
                    },
                    last_path,
                )
            except OSError as err:
                raise write_failed(last_path, err, iteration) from None
            last_good = iteration
            try:
                _write_log(run_dir / "train_log.csv", log_rows, tasks)
            except OSError as err:
                raise write_failed(run_dir / "train_log.csv", err, iteration) from None
        else:
            last_good = iteration

    model.train()
    batches = iterate_batches(dataset, int(train_cfg["batch_size"]), int(run["seed"]), start,
                              int(cfg["data"].get("num_workers", 0)), dist_info)
    clip = train_cfg.get("grad_clip")
    bar = tqdm(total=iterations, initial=start, disable=not progress or not dist_info.is_main, desc=f"train {run['model']}/{run['variant']}",
               dynamic_ncols=True, mininterval=2.0)
    tic = time.perf_counter()
    completed = start
    try:
        for iteration in range(start, iterations):
            batch = move_batch(next(batches), dev)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = net(batch["image"])
            loss, task_losses = criterion(outputs, {t: batch[t] for t in tasks})
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                bad_items = _non_finite_items(batch, tasks)
                if bad_items:
                    raise TrainingError(
                        f"loss became {loss_value} at iteration {iteration + 1} because items {bad_items[:5]} of the "
                        f"batch hold non-finite image or target values: the data is at fault, not the learning rate; "
                        f"run pamm-bench check-dataset {cfg['data']['root']} to find every such file"
                    )
                raise TrainingDiverged(
                    f"loss became {loss_value} at iteration {iteration + 1} (task losses {task_losses}); stopped. "
                    f"{resume_note()}. Lower train.optimizer.lr or enable train.grad_clip"
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
            completed = done
            if done % ckpt_every == 0 or done == iterations:
                elapsed += time.perf_counter() - tic
                tic = time.perf_counter()
                save_last(done)
    except KeyboardInterrupt:
        bar.close()
        raise TrainingInterrupted(f"interrupted after iteration {completed}; {resume_note()}") from None
    bar.close()
    distributed.barrier(dist_info)
    if not dist_info.is_main:
        distributed.teardown(dist_info)
        return {"status": "trained", "iteration": iterations, "train_seconds": elapsed}

    # the batch that ran: the configured one, or the whole split when the split is smaller (epoch_batches)
    global_batch = len(epoch_batches(len(dataset), int(train_cfg["batch_size"]), int(run["seed"]), 0)[0])
    try:  # provenance first: checkpoint.pt (the job's output) is written last
        pio.write_json(
            run_dir / "provenance.json",
            {
                "run": run, "config_hash": chash, **git_state(), "environment": environment(),
                "dataset": dataset_fingerprint(cfg["data"]["root"]), "device": str(dev),
                "scan_backend": _resolved_scan_backend(scan, dev), "scan": scan.record(), "train_seconds": elapsed,
                "iterations": iterations,
                "world_size": dist_info.world_size, "global_batch": global_batch,
                "configured_batch": int(train_cfg["batch_size"]),
                "per_rank_batch": global_batch // dist_info.world_size,
            },
        )
    except OSError as err:
        raise write_failed(run_dir / "provenance.json", err, iterations) from None
    try:
        pio.torch_save(
            {"model": model.state_dict(), "iteration": iterations, "config_hash": chash, "model_name": run["model"],
             "train_seconds": elapsed},
            final_path,
        )
    except OSError as err:
        raise write_failed(final_path, err, iterations) from None
    distributed.teardown(dist_info)
    return {"status": "trained", "iteration": iterations, "train_seconds": elapsed}


def set_aside_stale_state(run_dir: str | os.PathLike, cfg: dict[str, Any]) -> Path | None:
    """Rename a ``last.pt`` that belongs to another config than ``cfg`` to ``last.<its hash>.pt`` (nothing is
    deleted), so that the run starts over instead of stopping on the hash guard; the workflow asks for this
    because it reruns a train job exactly when the run's config hash changed. Returns the new name, if any."""
    last_path = Path(run_dir) / "last.pt"
    if not last_path.is_file():
        return None
    state = load_checkpoint(last_path, "delete it to start the run over (or restore it from a backup)")
    old = state.get("config_hash")
    if old == config_hash(cfg):
        return None
    target = last_path.with_name(f"last.{old or 'unknown'}.pt")
    last_path.replace(target)
    return target


def _refuse_foreign_config(path: Path, chash: str) -> None:
    """A ``config.yaml`` already in the run directory must be this run's (same hash); any other file of that
    name (a config the user keeps there, another run's) is never overwritten."""
    if not path.is_file():
        return
    from pamm.config import load_yaml_text

    try:
        other = load_yaml_text(path.read_text())
        other_hash = config_hash(other) if isinstance(other, dict) and isinstance(other.get("run"), dict) else None
    except Exception:  # noqa: BLE001 - unreadable means "not ours" here
        other_hash = None
    if other_hash != chash:
        what = f"another run's config (hash {other_hash} != {chash})" if other_hash else "not a pamm-bench run config"
        raise TrainingError(f"{path} exists and is {what}; it is never overwritten: write this run to another --out "
                            "(a run directory holds one run), or move that file away")


def _resolved_scan_backend(scan, device: torch.device) -> str:
    """The scan backend the run's settings resolve to on ``device`` (what actually ran)."""
    from pamm import ops

    return ops.resolve(scan, device)
