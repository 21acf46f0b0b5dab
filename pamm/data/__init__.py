"""Datasets: synthetic scenes in the real on-disk formats, NYUD-v2 and PASCAL-Context readers,
the ATRC transforms and fail-fast dataset checks.

    make_synthetic(root, "nyud", n_train, n_val, height, width, seed)   # writes the ATRC layout
    check_dataset("nyud", root)                                        # dict summary or DatasetError
    ds = build_dataset("nyud", root, "train", train=True, size=(96, 128), seed=0)
    DataLoader(ds, ..., worker_init_fn=seed_worker); ds.set_epoch(epoch) before each epoch
"""
from __future__ import annotations

import os
from pathlib import Path

from pamm.data.checks import check_dataset, check_dataset_cli_summary, detect_dataset
from pamm.data.common import MultiTaskDataset, seed_worker
from pamm.data.layout import DEFAULT_FOLDERS, DatasetError
from pamm.data.nyud import NYUDv2
from pamm.data.pascal import PASCALContext
from pamm.data.synthetic import make_synthetic

#: dataset name -> default folder name under a data root (e.g. data/NYUDv2)
DATASET_FOLDERS = DEFAULT_FOLDERS

_DATASET_CLASSES: dict[str, type[MultiTaskDataset]] = {"nyud": NYUDv2, "pascal": PASCALContext}


def build_dataset(
    dataset: str,
    root: str | os.PathLike,
    split: str,
    tasks: list[str] | None = None,
    train: bool = False,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> MultiTaskDataset:
    """The ``split`` of ``dataset`` at ``root`` (the dataset folder itself), for ``tasks`` (default all).

    ``train`` turns on the ATRC augmentation, seeded per item by (seed, epoch, index); otherwise
    images are only normalised and padded. ``size`` (H, W) is the crop/pad size; by default the
    synthetic data's own size, else the paper's (448x576 NYUD, 512x512 PASCAL).
    """
    if dataset not in _DATASET_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(_DATASET_CLASSES)}")
    return _DATASET_CLASSES[dataset](Path(root), split, tasks=tasks, train=train, size=size, seed=seed)


__all__ = [
    "DATASET_FOLDERS",
    "DEFAULT_FOLDERS",
    "DatasetError",
    "MultiTaskDataset",
    "NYUDv2",
    "PASCALContext",
    "build_dataset",
    "check_dataset",
    "check_dataset_cli_summary",
    "detect_dataset",
    "make_synthetic",
    "seed_worker",
]
