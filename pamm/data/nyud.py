"""NYUD-v2 in the ATRC layout (reference.md §4.1): semseg (40 classes), depth, normals, edge."""
from __future__ import annotations

import numpy as np

from pamm.data.common import MultiTaskDataset, read_image_array
from pamm.data.layout import DatasetError


def decode_normals(encoded: np.ndarray) -> np.ndarray:
    """uint8 RGB v -> n = 2 v / 255 - 1; the all-zero colour (invalid) -> the zero vector."""
    normals = encoded[..., :3].astype(np.float32) * (2.0 / 255.0) - 1.0
    normals[~np.any(encoded[..., :3] != 0, axis=-1)] = 0.0
    return normals


class NYUDv2(MultiTaskDataset):
    """NYUD-v2 (ATRC): ``gt_sets/<split>.txt``, ``images``, ``segmentation``, ``depth``, ``normals``, ``edge``."""

    dataset_name = "nyud"

    def load_sample(self, index: int) -> dict[str, np.ndarray]:
        image_id = self.ids[index]
        sample = {"image": read_image_array(self.file("image", image_id), "RGB").astype(np.float32)}
        if "semseg" in self.tasks:
            raw = read_image_array(self.file("semseg", image_id))
            raw = raw[..., 0] if raw.ndim == 3 else raw
            shifted = raw.astype(np.int16) - 1  # 1..40 -> 0..39; void 0 -> -1 -> ignore
            shifted[shifted < 0] = 255
            sample["semseg"] = shifted.astype(np.uint8)
        if "depth" in self.tasks:
            path = self.file("depth", image_id)
            try:
                depth = np.load(path)
            except (OSError, ValueError) as err:
                raise DatasetError(f"cannot read {path} ({err}): re-extract it or regenerate the data") from None
            depth = np.asarray(depth, dtype=np.float32)
            sample["depth"] = np.squeeze(depth) if depth.ndim == 3 else depth  # tolerate (1, H, W) / (H, W, 1)
        if "normals" in self.tasks:
            sample["normals"] = decode_normals(read_image_array(self.file("normals", image_id), "RGB"))
        if "edge" in self.tasks:
            raw = read_image_array(self.file("edge", image_id))
            raw = raw[..., 0] if raw.ndim == 3 else raw
            sample["edge"] = (raw.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
        return sample
