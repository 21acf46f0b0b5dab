"""Evaluation protocol of the field, as pure numpy/scipy code over pooled counts (no model code).

One meter per task: ``update(pred, target, *, orig_sizes=None, ids=None)`` with the model's raw
output for a batch (B, C, H, W) and the target batch as the loaders produce it
(``pamm.tasks`` conventions), and ``result() -> dict[str, float]`` keyed by summary columns.
``build_meters`` makes the meters of a dataset, ``summarise`` merges their results, ``delta_m``
compares multi-task with single-task results. No torch import: tensors are accepted as inputs.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from pamm.metrics._common import Meter
from pamm.metrics.delta_m import delta_m
from pamm.metrics.depth import DepthMeter
from pamm.metrics.edge import EdgeMeter, evaluate_edge_folder, save_edge_pngs
from pamm.metrics.normals import NormalsMeter
from pamm.metrics.saliency import SaliencyMeter
from pamm.metrics.semseg import SegmentationMeter
from pamm.tasks import dataset_tasks

__all__ = [
    "DepthMeter",
    "EdgeMeter",
    "Meter",
    "NormalsMeter",
    "SaliencyMeter",
    "SegmentationMeter",
    "build_meters",
    "delta_m",
    "evaluate_edge_folder",
    "save_edge_pngs",
    "summarise",
    "METER_OPTIONS",
]

# Options of build_meters and their defaults (the protocol of record).
METER_OPTIONS: dict[str, Any] = {
    "absent_classes": "zero",  # semseg/human_parts: class absent from GT and prediction counts as IoU 0
    "depth_valid": "range",  # 0 < gt < depth_max (PAMM/TaskPrompter); "nonzero" = gt != 0
    "depth_min": 0.0,
    "depth_max": 80.0,
    "normals_precision": "float",  # released code; "uint8" = 8-bit PNG round trip
    "sal_beta_squared": 0.3,
    "edge_protocol": "seism",  # MATLAB SEISM's boundary protocol (see pamm.metrics.boundary)
    "edge_max_dist": None,  # None: 0.011 NYUD, 0.0075 PASCAL-Context (fraction of the diagonal)
    "edge_matcher": "maxflow",  # exact maximum matching; "bsds": BSDS's randomised matcher (pyEdgeEval)
    "edge_gt_source": None,  # image id -> what SEISM reads as GT (NYUD edge PNG, PASCAL LabelMap)
    "edge_num_workers": 0,
    "edge_parallel": "process",
    "edge_save_dir": None,
    "edge_pad_position": "top_left",
}


def build_meters(dataset: str, tasks: Sequence[str] | None = None, **options: Any) -> dict[str, Meter]:
    """One fresh meter per task of ``dataset`` (default: all its tasks); options: ``METER_OPTIONS``."""
    unknown = sorted(set(options) - set(METER_OPTIONS))
    if unknown:
        raise TypeError(f"unknown metric options {unknown}; valid: {sorted(METER_OPTIONS)}")
    settings = {**METER_OPTIONS, **options}
    channels = dataset_tasks(dataset, None if tasks is None else list(tasks))
    meters: dict[str, Meter] = {}
    for task, out_channels in channels.items():
        if task == "semseg":
            meters[task] = SegmentationMeter(out_channels, "semseg", absent_classes=settings["absent_classes"])
        elif task == "human_parts":
            meters[task] = SegmentationMeter(out_channels, "parts", absent_classes=settings["absent_classes"])
        elif task == "depth":
            meters[task] = DepthMeter(settings["depth_valid"], settings["depth_min"], settings["depth_max"])
        elif task == "normals":
            meters[task] = NormalsMeter(settings["normals_precision"])
        elif task == "sal":
            meters[task] = SaliencyMeter(settings["sal_beta_squared"])
        elif task == "edge":
            save_dir = settings["edge_save_dir"]
            meters[task] = EdgeMeter(
                max_dist=settings["edge_max_dist"],
                dataset=dataset,
                protocol=settings["edge_protocol"],
                matcher=settings["edge_matcher"],
                gt_source=settings["edge_gt_source"],
                num_workers=settings["edge_num_workers"],
                parallel=settings["edge_parallel"],
                save_dir=None if save_dir is None else os.fspath(save_dir),
                pad_position=settings["edge_pad_position"],
            )
        else:  # a task added to pamm.tasks without a meter here
            raise NotImplementedError(f"no meter for task {task!r}")
    return meters


def summarise(meters: Mapping[str, Meter]) -> dict[str, float]:
    """All meters' results merged into one {summary column: value} dict, in task order."""
    summary: dict[str, float] = {}
    for task, meter in meters.items():
        for column, value in meter.result().items():
            if column in summary:
                raise ValueError(f"column {column!r} is produced twice (second time by {task!r})")
            summary[column] = float(value)
    return summary
