"""Surface normals: angular error in degrees, pooled over the valid pixels of the split.

As the released ``eval_normals.py`` + ``get_output``: the raw 3-channel prediction is
L2-normalised, mapped to [0, 255] by (n + 1) * 255 / 2, mapped back by 2 v / 255 - 1 and
re-normalised; the ground truth is normalised; the angle is 2 atan2(|p - g|, |p + g|) (stable
near 0 and 180 degrees) on pixels where no GT channel is 255. In the released code the [0, 255]
values stay float32 (``get_output`` feeds the meter directly; nothing casts to uint8), so the
round trip changes nothing but float rounding: that is ``prediction_precision="float"``, the
default. ``"uint8"`` truncates the [0, 255] values to integers first, as a prediction saved to
and read back from an 8-bit PNG would be.

Columns: normals_merr (mean), normals_median, and the % of pixels with error < 11.25, < 22.5
and < 30 degrees. The median comes from a 0.001-degree histogram of all angles (exact to
+-0.0005 degrees) so that memory does not grow with the split. mErr is the plain pooled mean.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pamm.metrics._common import percent, prediction_and_target
from pamm.tasks import IGNORE_INDEX

PREDICTION_PRECISIONS = ("float", "uint8")
HISTOGRAM_BIN_DEGREES = 1e-3
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


def normalize_vectors(vectors: np.ndarray, axis: int = 1) -> np.ndarray:
    """Unit vectors along ``axis``; zero vectors stay zero (as ``F.normalize``/``normalize_tensor``)."""
    norm = np.sqrt(np.sum(vectors * vectors, axis=axis, keepdims=True))
    return vectors / np.maximum(norm, 1e-12)


def requantize_prediction(raw: np.ndarray, precision: str = "float") -> np.ndarray:
    """The prediction after the released [0, 255] round trip, re-normalised, (B, 3, H, W)."""
    if precision not in PREDICTION_PRECISIONS:
        raise ValueError(f"prediction_precision must be one of {PREDICTION_PRECISIONS}, got {precision!r}")
    unit = normalize_vectors(raw.astype(np.float32))
    encoded = (unit + np.float32(1.0)) * np.float32(255.0) / np.float32(2.0)
    if precision == "uint8":
        encoded = encoded.astype(np.uint8).astype(np.float32)
    decoded = np.float32(2.0) * encoded / np.float32(255.0) - np.float32(1.0)
    return normalize_vectors(decoded.astype(np.float64))


def angular_error_degrees(pred_unit: np.ndarray, gt_unit: np.ndarray, axis: int = 1) -> np.ndarray:
    """2 atan2(|p - g|, |p + g|) in degrees, per pixel."""
    difference = np.sqrt(np.sum((pred_unit - gt_unit) ** 2, axis=axis))
    total = np.sqrt(np.sum((pred_unit + gt_unit) ** 2, axis=axis))
    return np.degrees(2.0 * np.arctan2(difference, total))


class NormalsMeter:
    """Pooled angular error statistics; see the module docstring for the conventions."""

    def __init__(self, prediction_precision: str = "float", ignore_index: int = IGNORE_INDEX):
        if prediction_precision not in PREDICTION_PRECISIONS:
            raise ValueError(
                f"prediction_precision must be one of {PREDICTION_PRECISIONS}, got {prediction_precision!r}"
            )
        self.prediction_precision = prediction_precision
        self.ignore_index = ignore_index
        self.num_bins = int(round(180.0 / HISTOGRAM_BIN_DEGREES)) + 1
        self.reset()

    def reset(self) -> None:
        self.num_valid = 0.0
        self.sum_error = 0.0
        self.num_below = np.zeros(len(ANGLE_THRESHOLDS), dtype=np.float64)
        self.histogram = np.zeros(self.num_bins, dtype=np.float64)

    def update(
        self,
        pred: Any,
        target: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        orig_sizes: Any | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """``pred``: raw (B, 3, H, W) output; ``target``: (B, 3, H, W) unit normals, 255 = invalid."""
        raw, gt = prediction_and_target(pred, target, "normals", 3, 3)
        gt = gt.astype(np.float64)
        valid = np.all(gt != self.ignore_index, axis=1)
        prediction = requantize_prediction(raw, self.prediction_precision)
        errors = angular_error_degrees(prediction, normalize_vectors(gt))[valid]
        self.num_valid += float(errors.size)
        self.sum_error += float(errors.sum())
        for index, threshold in enumerate(ANGLE_THRESHOLDS):
            self.num_below[index] += float(np.count_nonzero(errors < threshold))
        bins = np.minimum((errors / HISTOGRAM_BIN_DEGREES).astype(np.int64), self.num_bins - 1)
        self.histogram += np.bincount(bins, minlength=self.num_bins)

    def median(self) -> float:
        """Median angle from the histogram (bin centres; the two middle values averaged when even)."""
        cumulative = np.cumsum(self.histogram)
        total = int(round(cumulative[-1]))
        lower_rank, upper_rank = (total - 1) // 2, total // 2  # 0-based ranks of the middle value(s)
        lower = int(np.searchsorted(cumulative, lower_rank + 1, side="left"))
        upper = int(np.searchsorted(cumulative, upper_rank + 1, side="left"))
        return (lower + upper + 1) / 2 * HISTOGRAM_BIN_DEGREES

    def result(self) -> dict[str, float]:
        if self.num_valid == 0:
            raise RuntimeError("normals: no valid normal pixel has been seen")
        n = self.num_valid
        return {
            "normals_merr": self.sum_error / n,
            "normals_median": self.median(),
            "normals_11": percent(self.num_below[0] / n),
            "normals_22": percent(self.num_below[1] / n),
            "normals_30": percent(self.num_below[2] / n),
        }
