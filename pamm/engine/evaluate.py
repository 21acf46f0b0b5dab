"""Evaluate the final checkpoint of a run on the val split (never used for selection).

Writes ``metrics.json``: the model's metrics, and the same metrics of trivial predictors (majority
class, train-mean depth, train-mean normal) so a reader can see the model learned something.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from pamm import io as pio
from pamm.checkpoints.run_model import build_run_model, read_run_checkpoint
from pamm.config import config_hash
from pamm.engine.build import TrainingError, move_batch, pick_device, split_loader, train_statistics
from pamm.tasks import TASK_INFO, dataset_tasks


def trivial_prediction(task: str, channels: int, stats: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """A constant prediction of the train statistics, shaped like a model output for ``like``'s batch."""
    b, _, h, w = like.shape
    if TASK_INFO[task].kind == "classification":
        logits = torch.full((b, channels, h, w), -10.0)
        logits[:, int(stats.argmax())] = 10.0
        return logits
    if task == "depth":
        return torch.full((b, 1, h, w), float(stats[0] / stats[1].clamp_min(1)))
    if task == "normals":
        mean = torch.nn.functional.normalize(stats.float(), dim=0)
        return mean.view(1, 3, 1, 1).expand(b, 3, h, w).clone()
    return None  # no meaningful constant for edges


def edge_ground_truth_source(dataset: Any) -> Callable[[str], Any]:
    """What SEISM reads as an image's boundary ground truth: NYUD's edge PNG, PASCAL-Context's LabelMap."""
    if dataset.dataset_name == "pascal":
        return dataset.load_labelmap

    def edge_png(image_id: str) -> Any:
        from pamm.data.readers import read_image_array

        raw = read_image_array(dataset.file("edge", image_id))
        return raw[..., 0] if raw.ndim == 3 else raw

    return edge_png


def evaluate_run(
    run_dir: str | Path, device: str | None = None, progress: bool = True, edge_workers: int = 0
) -> dict[str, Any]:
    """Evaluate ``run_dir/checkpoint.pt`` and write ``run_dir/metrics.json``.

    ``edge_workers`` > 1 scores boundaries (the costly metric) in that many worker processes.
    """
    from tqdm import tqdm

    from pamm.metrics import build_meters, summarise

    run_dir = Path(run_dir)
    cfg, state = read_run_checkpoint(run_dir)
    if cfg["data"].get("root") is None:
        raise TrainingError(f"{run_dir / 'config.yaml'} names no dataset (data.root is null): import the checkpoint "
                            f"again with --data-root DIR")
    dev = pick_device(device)
    run = cfg["run"]
    tasks = dataset_tasks(run["dataset"], cfg["data"].get("tasks"))
    from pamm.data.checks import preflight

    preflight(run["dataset"], cfg["data"]["root"], need=("val", "train"))  # val scored, train for the trivial baselines
    model = build_run_model(cfg, state).to(dev)

    val = split_loader(cfg, "val", list(tasks))
    edge_options = {}
    if "edge" in tasks:
        edge_options = {"edge_save_dir": run_dir / "edge_pred",
                        "edge_num_workers": edge_workers if edge_workers > 1 else 0,
                        "edge_gt_source": edge_ground_truth_source(val.dataset)}
    meters = build_meters(run["dataset"], list(tasks), **edge_options)
    baseline_meters = build_meters(run["dataset"], list(tasks))
    stats = train_statistics(split_loader(cfg, "train", list(tasks)), tasks)
    n_examples = int(cfg["eval"].get("save_examples", 4))
    examples: dict[str, list[torch.Tensor]] = {}
    tic = time.perf_counter()
    n_images = 0
    with torch.no_grad():
        for batch in tqdm(val, desc=f"eval {run['model']}/{run['variant']}", disable=not progress, mininterval=2.0):
            n_images += batch["image"].shape[0]
            outputs = model(move_batch(batch, dev)["image"])
            _collect_examples(examples, batch, outputs, tasks, n_examples)
            for task in tasks:
                pred = outputs[task].float().cpu()
                meters[task].update(pred, batch[task], meta=batch["meta"])
                constant = trivial_prediction(task, tasks[task], stats[task], pred) if task in stats else None
                if constant is not None:
                    baseline_meters[task].update(constant, batch[task], meta=batch["meta"])
    seconds = time.perf_counter() - tic
    result = {
        "run": run,
        "config_hash": config_hash(cfg),
        "metrics": summarise(meters),
        "protocols": {"edge": meters["edge"].protocol_label} if "edge" in meters else {},
        "trivial": summarise({t: m for t, m in baseline_meters.items() if t in stats and t != "edge"}),
        "n_images": n_images,
        "eval_seconds": seconds,
        "iteration": int(state["iteration"]),
    }
    with pio.atomic_path(run_dir / "examples.pt") as tmp:  # always written (empty with save_examples: 0): a declared output
        torch.save({k: torch.cat(v)[:n_examples] if torch.is_tensor(v[0]) else sum(v, [])[:n_examples]
                    for k, v in examples.items()}, tmp)
    pio.write_json(run_dir / "metrics.json", result)
    return result


def _collect_examples(store: dict[str, list], batch: dict, outputs: dict, tasks: dict[str, int], limit: int) -> None:
    """Keep the first ``limit`` val images with their targets and predictions (for qualitative figures)."""
    have = sum(len(x) for x in store.get("id", []))
    if have >= limit:
        return
    take = limit - have
    store.setdefault("id", []).append(list(batch["meta"]["id"][:take]))
    store.setdefault("image", []).append(batch["image"][:take].cpu())
    for task in tasks:
        store.setdefault(f"target_{task}", []).append(batch[task][:take].cpu())
        store.setdefault(f"pred_{task}", []).append(outputs[task][:take].float().cpu())
