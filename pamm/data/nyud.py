"""NYUD-v2 in the ATRC layout (docs/datasets.md): semseg (40 classes), depth, normals, edge."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pamm.data.common import MultiTaskDataset
from pamm.data.layout import DatasetError
from pamm.data.readers import read_image_array, read_normals
from pamm.data.validate import check_depth, check_labels

#: Raw NYUD-v2 segmentation PNG values: 1..40 the classes, 0 void (shifted to 0..39 and 255 on load).
NYUD_RAW_CLASSES = 40


def read_nyud_semseg(path: Path) -> np.ndarray:
    """Raw segmentation labels (0 void, 1..40) of a NYUD-v2 PNG, range-checked."""
    raw = read_image_array(path)
    raw = raw[..., 0] if raw.ndim == 3 else raw
    check_labels(raw, path, "NYUD-v2 segmentation (raw, 0 = void)", 0, NYUD_RAW_CLASSES, None)
    return raw


def read_nyud_depth(path: Path) -> np.ndarray:
    """Depth in metres (H, W) of a ``.npy`` file: float, finite, >= 0, 0 = invalid (millimetres are refused)."""
    try:
        depth = np.load(path)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path} ({err}): re-extract it or regenerate the data") from None
    depth = np.asarray(depth)
    check_depth(depth, path)
    depth = depth.astype(np.float32, copy=False)
    return np.squeeze(depth) if depth.ndim == 3 else depth  # tolerate (1, H, W) / (H, W, 1)


class NYUDv2(MultiTaskDataset):
    """NYUD-v2 (ATRC): ``gt_sets/<split>.txt``, ``images``, ``segmentation``, ``depth``, ``normals``, ``edge``."""

    dataset_name = "nyud"

    def load_sample(self, index: int) -> dict[str, np.ndarray]:
        image_id = self.ids[index]
        sample = {"image": read_image_array(self.file("image", image_id), "RGB").astype(np.float32)}
        if "semseg" in self.tasks:
            raw = read_nyud_semseg(self.file("semseg", image_id))
            shifted = raw.astype(np.int16) - 1  # 1..40 -> 0..39; void 0 -> -1 -> ignore
            shifted[shifted < 0] = 255
            sample["semseg"] = shifted.astype(np.uint8)
        if "depth" in self.tasks:
            sample["depth"] = read_nyud_depth(self.file("depth", image_id))
        if "normals" in self.tasks:
            sample["normals"] = read_normals(self.file("normals", image_id))
        if "edge" in self.tasks:
            raw = read_image_array(self.file("edge", image_id))
            raw = raw[..., 0] if raw.ndim == 3 else raw
            sample["edge"] = (raw.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
        return sample
