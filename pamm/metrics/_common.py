"""Shared helpers of the metric meters: array conversion and batch shape checks.

The metrics package imports no torch: meters take torch tensors or numpy arrays alike (a
tensor is detached and copied to the CPU), so evaluation worker processes start quickly.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Meter(Protocol):
    """What every task meter provides.

    ``meta`` is the loader's collated batch meta ({"id": [...], "orig_size": (B, 2)}); it and the
    explicit ``orig_sizes``/``ids`` matter only to the edge meter (the others rely on the targets'
    ignore values, which already cover the padding).
    """

    def update(
        self,
        pred: Any,
        target: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        orig_sizes: Any | None = None,
        ids: Sequence[str] | None = None,
    ) -> None: ...

    def result(self) -> dict[str, float]: ...

    def reset(self) -> None: ...


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view/copy of a torch tensor (any device, bf16/fp16 upcast to fp32) or array-like."""
    if hasattr(array, "detach"):
        tensor = array.detach()
        if tensor.is_floating_point() and tensor.element_size() < 4:
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.cpu().numpy()
    return np.asarray(array)


def batch_prediction(pred: Any, channels: int, task: str) -> np.ndarray:
    """(B, C, H, W) prediction as numpy, with a clear error when the channel count is wrong."""
    pred = to_numpy(pred)
    if pred.ndim != 4 or pred.shape[1] != channels:
        raise ValueError(f"{task}: expected a prediction of shape (B, {channels}, H, W), got {pred.shape}")
    return pred


def batch_target(target: Any, channels: int, task: str) -> np.ndarray:
    """Target as (B, H, W) for one-channel tasks ((B, 1, H, W) accepted) or (B, C, H, W)."""
    target = to_numpy(target)
    if channels == 1:
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != 3:
            raise ValueError(f"{task}: expected a target of shape (B, H, W) or (B, 1, H, W), got {target.shape}")
    elif target.ndim != 4 or target.shape[1] != channels:
        raise ValueError(f"{task}: expected a target of shape (B, {channels}, H, W), got {target.shape}")
    return target


def check_same_layout(pred: np.ndarray, target: np.ndarray, task: str) -> None:
    """Batch size and spatial size must agree (the model predicts at the input size)."""
    if pred.shape[0] != target.shape[0] or pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"{task}: prediction {pred.shape} and target {target.shape} differ in batch or H, W")


def prediction_and_target(
    pred: Any, target: Any, task: str, pred_channels: int, target_channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A meter's batch as numpy: prediction (B, C, H, W), target as :func:`batch_target` gives it, both
    shapes checked and the two checked against each other."""
    prediction = batch_prediction(pred, pred_channels, task)
    labels = batch_target(target, target_channels, task)
    check_same_layout(prediction, labels, task)
    return prediction, labels


def resolve_meta(
    meta: Mapping[str, Any] | None, orig_sizes: Any | None, ids: Sequence[str] | None
) -> tuple[Any | None, Sequence[str] | None]:
    """Explicit ``orig_sizes``/``ids`` win; otherwise take ``meta["orig_size"]``/``meta["id"]``."""
    if meta is not None:
        if orig_sizes is None:
            orig_sizes = meta.get("orig_size")
        if ids is None:
            ids = meta.get("id")
    if isinstance(ids, str):
        ids = [ids]
    return orig_sizes, ids


def percent(fraction: float) -> float:
    return float(100.0 * fraction)
