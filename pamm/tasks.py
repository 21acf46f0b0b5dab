"""Tasks and datasets: the one place that says which tasks a dataset has and how big their outputs are.

Target conventions (what loaders produce, losses and metrics consume), per sample:

=============  ==========================  ===========================================
task           target tensor               invalid / ignored pixels
=============  ==========================  ===========================================
semseg         int64 (H, W), 0..K-1        255
human_parts    int64 (H, W), 0..6          255 (whole image when it has no person part)
sal            int64 (H, W), {0, 1}        255
depth          float32 (1, H, W), metres   0 (and padding)
normals        float32 (3, H, W), unit     255 in all three channels
edge           float32 (1, H, W), {0, 1}   255 (padding)
=============  ==========================  ===========================================

Model outputs are logits/values of shape (B, out_channels, H, W) at the input size.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # "classification" (CE over channels), "regression", "binary"
    lower_is_better: bool  # of its headline metric
    metric: str  # headline summary column


TASK_INFO: dict[str, TaskInfo] = {
    "semseg": TaskInfo("semseg", "classification", False, "semseg_miou"),
    "human_parts": TaskInfo("human_parts", "classification", False, "parts_miou"),
    "sal": TaskInfo("sal", "classification", False, "sal_maxf"),
    "depth": TaskInfo("depth", "regression", True, "depth_rmse"),
    "normals": TaskInfo("normals", "regression", True, "normals_merr"),
    "edge": TaskInfo("edge", "binary", False, "edge_odsf"),
}

# Output channels per task and dataset (docs/datasets.md).
DATASET_TASKS: dict[str, dict[str, int]] = {
    "nyud": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
    "pascal": {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1},
}

# Loss weights of the shared recipe (docs/datasets.md#losses-and-their-weights); models may override.
DEFAULT_LOSS_WEIGHTS: dict[str, dict[str, float]] = {
    "nyud": {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0},
    "pascal": {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "edge": 50.0, "normals": 10.0},
}

# Paper train/eval resolution (H, W) per dataset.
PAPER_SIZE: dict[str, tuple[int, int]] = {"nyud": (448, 576), "pascal": (512, 512)}


def dataset_tasks(dataset: str, tasks: list[str] | None = None) -> dict[str, int]:
    """Output channels of ``tasks`` (default: all) on ``dataset``, with clear errors on bad names."""
    if dataset not in DATASET_TASKS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(DATASET_TASKS)}")
    available = DATASET_TASKS[dataset]
    if tasks is None:
        return dict(available)
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise ValueError(f"tasks {unknown} are not tasks of {dataset!r}; valid: {list(available)}")
    return {t: available[t] for t in tasks}
