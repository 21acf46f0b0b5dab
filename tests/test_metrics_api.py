"""build_meters / summarise: the meters of each dataset, summary columns, options, torch inputs."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pamm.metrics import METER_OPTIONS, build_meters, summarise
from pamm.tasks import DATASET_TASKS, TASK_INFO


def random_batch(task: str, channels: int, rng: np.random.Generator, size=(2, 24, 32)):
    b, h, w = size
    pred = torch.from_numpy(rng.normal(size=(b, channels, h, w)).astype(np.float32))
    if task in ("semseg", "human_parts"):
        target = torch.from_numpy(rng.integers(0, channels, size=(b, h, w)))
    elif task == "sal":
        target = torch.from_numpy(rng.integers(0, 2, size=(b, h, w)))
    elif task == "depth":
        target = torch.from_numpy(rng.uniform(0.5, 5, size=(b, 1, h, w)).astype(np.float32))
        pred = pred.abs() + 1
    elif task == "normals":
        target = torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1)
    else:
        edges = np.zeros((b, 1, h, w), dtype=np.float32)
        edges[:, :, h // 2, 6:-6] = 1
        target = torch.from_numpy(edges)
    return pred, target


@pytest.mark.parametrize("dataset", sorted(DATASET_TASKS))
def test_every_task_meter_reports_its_headline_column(dataset):
    rng = np.random.default_rng(0)
    meters = build_meters(dataset)
    assert list(meters) == list(DATASET_TASKS[dataset])
    meta = {"id": ["a", "b"], "orig_size": torch.tensor([[24, 32], [24, 32]])}
    for task, meter in meters.items():
        pred, target = random_batch(task, DATASET_TASKS[dataset][task], rng)
        meter.update(pred.to(torch.bfloat16) if task == "depth" else pred, target, meta=meta)
    summary = summarise(meters)
    for task in meters:
        assert TASK_INFO[task].metric in summary
    assert all(isinstance(v, float) and np.isfinite(v) for v in summary.values())
    if dataset == "pascal":
        assert {"parts_miou", "sal_maxf", "sal_maxf_corrected"} <= set(summary)


def test_options_are_checked_and_package_does_not_import_torch():
    with pytest.raises(TypeError, match="unknown metric options"):
        build_meters("nyud", depth_valid="range", edge_matcher_typo="bsds")
    with pytest.raises(ValueError, match="not tasks of"):
        build_meters("nyud", ["sal"])
    meters = build_meters("nyud", ["depth"], depth_valid="nonzero")
    assert meters["depth"].valid == "nonzero"
    assert METER_OPTIONS["edge_max_dist"] is None
    import subprocess

    code = "import sys, pamm.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
