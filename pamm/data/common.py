"""What the NYUD-v2 and PASCAL-Context datasets share: split reading, per-item seeding, transforms.

Reproducibility: a training item's augmentation draws from ``numpy.random.default_rng([seed,
epoch, index])``, so it depends on nothing else (not on the DataLoader's worker count, nor on
which worker loads it, nor on what was loaded before). Call ``set_epoch`` before each epoch; with
``persistent_workers=True`` the workers keep the epoch they were started with, so recreate the
iterator (the default) when the epoch changes.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pamm.data import layout
from pamm.data.layout import DatasetError, require_folders, require_root, require_split_file
from pamm.data.transforms import EvalTransform, TrainTransform, to_tensors
from pamm.data.validate import IGNORE_LABEL, check_labels
from pamm.tasks import PAPER_SIZE, TASK_INFO, dataset_tasks


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python and numpy's global generators from torch's per-worker
    seed, so any library code that uses them is reproducible too (our transforms do not need it)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_size(dataset: str, root: Path) -> tuple[int, int]:
    """The train/eval size when none is given: the synthetic data's own size, else the paper's."""
    marker = layout.read_synthetic_marker(root)
    if marker is not None and "height" in marker and "width" in marker:
        return int(marker["height"]), int(marker["width"])
    return PAPER_SIZE[dataset]


class MultiTaskDataset(torch.utils.data.Dataset):
    """Items are dicts: ``image`` (3, h, w) float32, one target per task, and ``meta`` =
    {"id": str, "orig_size": LongTensor [H, W]} (the size before padding/augmentation)."""

    dataset_name = ""

    def __init__(self, root: str | Path, split: str, tasks: list[str] | None = None, train: bool = False,
                 size: tuple[int, int] | None = None, seed: int = 0):
        self.root = Path(root)
        self.split = split
        self.tasks = list(dataset_tasks(self.dataset_name, tasks))
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        require_root(self.dataset_name, self.root)
        self.ids = layout.read_split_ids(require_split_file(self.dataset_name, self.root, split))
        self.modalities = layout.modalities(self.dataset_name, self.root)
        needed = layout.modalities_for_tasks(self.dataset_name, self.tasks)
        require_folders(self.dataset_name, self.root, needed, self.tasks)
        self.size = tuple(size) if size is not None else default_size(self.dataset_name, self.root)
        self.transform = TrainTransform(self.size) if self.train else EvalTransform(self.size)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (train only); call before building each epoch's iterator."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def file(self, modality: str, image_id: str) -> Path:
        table = self.modalities[modality]
        return self.root / table.folder / f"{image_id}{table.ext}"

    def load_sample(self, index: int) -> dict[str, np.ndarray]:
        """Raw arrays of item ``index`` in the layout of ``pamm.data.transforms`` (before transforms)."""
        raise NotImplementedError

    def item_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load_sample(index)
        height, width = sample["image"].shape[:2]
        for key, value in sample.items():
            if value.shape[:2] != (height, width):
                raise DatasetError(
                    f"{self.dataset_name} item {self.ids[index]!r}: {key} is {value.shape[0]}x{value.shape[1]} but the "
                    f"image is {height}x{width}; run check_dataset on {self.root} to find all such files"
                )
        self.check_labels(index, sample)
        rng = self.item_rng(index) if self.train else None
        try:
            sample = self.transform(sample, rng)
        except DatasetError as err:  # an image larger than the padding size
            raise DatasetError(f"{self.file('image', self.ids[index])}: {err}") from None
        item: dict[str, Any] = to_tensors(sample)
        item["meta"] = {"id": self.ids[index], "orig_size": torch.tensor([height, width], dtype=torch.long)}
        return item

    def check_labels(self, index: int, sample: dict[str, np.ndarray]) -> None:
        """Class labels within the task's classes (or 255): a label beyond them would stop training with an
        index error deep inside the loss, or silently shift a metric."""
        channels = dataset_tasks(self.dataset_name)
        for task in self.tasks:
            if TASK_INFO[task].kind != "classification" or task not in sample:
                continue
            modality = layout.TASK_MODALITIES[self.dataset_name][task][0]
            check_labels(sample[task], self.file(modality, self.ids[index]), f"{self.dataset_name} {task}",
                         0, channels[task] - 1, IGNORE_LABEL)

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"tasks={self.tasks}, {mode}, size={self.size})")
