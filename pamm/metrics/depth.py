"""Depth: RMSE and friends pooled over every valid pixel of the split, in metres.

As the released ``eval_depth.py``: the prediction is clamped at 0 and then values <= 0 become
1e-9 (so the log is finite); RMSE = sqrt(sum of squared errors / number of valid pixels of the
whole split), not a mean of per-image RMSEs. The valid set is ``0 < gt < 80`` (PAMM/TaskPrompter,
``valid="range"``) or ``gt != 0`` (InvPT/MTMamba, which map depth 0 to their ignore value,
``valid="nonzero"``); padding is 0, so it is never valid. Extra columns: log-RMSE (natural log),
absolute and squared relative error, and delta1 = % of pixels with max(gt/pred, pred/gt) < 1.25.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pamm.metrics._common import percent, prediction_and_target

VALID_MODES = ("range", "nonzero")


def valid_depth_mask(gt: np.ndarray, valid: str = "range", min_depth: float = 0.0, max_depth: float = 80.0) -> np.ndarray:
    if valid == "range":
        return (gt > min_depth) & (gt < max_depth)
    if valid == "nonzero":
        return gt != 0
    raise ValueError(f"valid must be one of {VALID_MODES}, got {valid!r}")


class DepthMeter:
    """Pooled sums over valid pixels; columns depth_rmse (m), depth_log_rmse, depth_abs_rel,
    depth_sq_rel (m) and depth_delta1 (%)."""

    def __init__(self, valid: str = "range", min_depth: float = 0.0, max_depth: float = 80.0):
        if valid not in VALID_MODES:
            raise ValueError(f"valid must be one of {VALID_MODES}, got {valid!r}")
        self.valid = valid
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.reset()

    def reset(self) -> None:
        self.num_valid = 0.0
        self.sum_squared_error = 0.0
        self.sum_squared_log_error = 0.0
        self.sum_abs_rel = 0.0
        self.sum_sq_rel = 0.0
        self.num_delta1 = 0.0

    def update(
        self,
        pred: Any,
        target: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        orig_sizes: Any | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """``pred``: (B, 1, H, W) depth in metres (raw network output); ``target``: (B, 1, H, W), 0 = invalid."""
        prediction, gt = prediction_and_target(pred, target, "depth", 1)
        prediction, gt = prediction[:, 0].astype(np.float64), gt.astype(np.float64)
        mask = valid_depth_mask(gt, self.valid, self.min_depth, self.max_depth)
        prediction = np.maximum(prediction, 0.0)
        prediction[prediction <= 0] = 1e-9
        gt = gt[mask]
        prediction = prediction[mask]
        gt[gt <= 0] = 1e-9  # only reachable with valid="nonzero" and negative depths
        error = gt - prediction
        self.num_valid += float(gt.size)
        self.sum_squared_error += float(np.sum(error**2))
        self.sum_squared_log_error += float(np.sum((np.log(gt) - np.log(prediction)) ** 2))
        self.sum_abs_rel += float(np.sum(np.abs(error) / gt))
        self.sum_sq_rel += float(np.sum(error**2 / gt))
        self.num_delta1 += float(np.count_nonzero(np.maximum(gt / prediction, prediction / gt) < 1.25))

    def result(self) -> dict[str, float]:
        if self.num_valid == 0:
            raise RuntimeError("depth: no valid depth pixel has been seen")
        n = self.num_valid
        return {
            "depth_rmse": float(np.sqrt(self.sum_squared_error / n)),
            "depth_log_rmse": float(np.sqrt(self.sum_squared_log_error / n)),
            "depth_abs_rel": self.sum_abs_rel / n,
            "depth_sq_rel": self.sum_sq_rel / n,
            "depth_delta1": percent(self.num_delta1 / n),
        }
