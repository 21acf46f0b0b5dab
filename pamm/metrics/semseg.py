"""Semantic segmentation and human-part parsing: mIoU from confusion counts pooled over a split.

As the released evaluation (``eval_semseg.py``/``eval_human_parts.py`` of InvPT/TaskPrompter/
MTMamba/PAMM): prediction = argmax over the class logits; pixels whose target is 255 are
ignored; per-class IoU = TP / max(TP + FP + FN, 1e-8) from counts summed over the whole split
(not averaged per image); mIoU = mean over *all* classes, in percent. A class absent from both
the ground truth and the predictions of the whole split therefore counts as IoU 0 (released
behaviour, ``absent_classes="zero"``); ``absent_classes="ignore"`` averages over the classes
that occur instead. Images without any person part have an all-255 parts target, so they do
not contribute.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pamm.metrics._common import percent, prediction_and_target
from pamm.tasks import IGNORE_INDEX

ABSENT_CLASS_POLICIES = ("zero", "ignore")


def confusion_matrix(
    pred_labels: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(K, K) float64 counts, rows = ground-truth class, columns = predicted class; ignores ``ignore_index``."""
    pred_labels = np.asarray(pred_labels).ravel()
    target = np.asarray(target).ravel()
    valid = target != ignore_index
    target = target[valid].astype(np.int64)
    pred_labels = pred_labels[valid].astype(np.int64)
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        bad = np.unique(target[(target < 0) | (target >= num_classes)])
        raise ValueError(f"target labels {bad.tolist()} are outside 0..{num_classes - 1} (and not {ignore_index})")
    if pred_labels.size and (pred_labels.min() < 0 or pred_labels.max() >= num_classes):
        raise ValueError(f"predicted labels must lie in 0..{num_classes - 1}")
    counts = np.bincount(target * num_classes + pred_labels, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.float64)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """TP / max(TP + FP + FN, 1e-8) per class (0 for a class that never occurs, as released)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    false_positive = confusion.sum(axis=0) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    return true_positive / np.maximum(true_positive + false_positive + false_negative, 1e-8)


def mean_iou(confusion: np.ndarray, absent_classes: str = "zero") -> float:
    """mIoU as a fraction; ``absent_classes`` says what a class absent from GT and prediction counts as."""
    if absent_classes not in ABSENT_CLASS_POLICIES:
        raise ValueError(f"absent_classes must be one of {ABSENT_CLASS_POLICIES}, got {absent_classes!r}")
    confusion = np.asarray(confusion, dtype=np.float64)
    iou = iou_per_class(confusion)
    if absent_classes == "ignore":
        present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
        return float(iou[present].mean()) if present.any() else float("nan")
    return float(iou.mean())


def pixel_accuracy(confusion: np.ndarray) -> float:
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total > 0 else float("nan")


class SegmentationMeter:
    """Pooled confusion counts for a K-class labelling task; columns ``<prefix>_miou``, ``<prefix>_pixacc``."""

    def __init__(
        self,
        num_classes: int,
        column_prefix: str = "semseg",
        ignore_index: int = IGNORE_INDEX,
        absent_classes: str = "zero",
    ):
        if absent_classes not in ABSENT_CLASS_POLICIES:
            raise ValueError(f"absent_classes must be one of {ABSENT_CLASS_POLICIES}, got {absent_classes!r}")
        self.num_classes = num_classes
        self.column_prefix = column_prefix
        self.ignore_index = ignore_index
        self.absent_classes = absent_classes
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.float64)

    def update(
        self,
        pred: Any,
        target: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        orig_sizes: Any | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """``pred``: logits (B, K, H, W); ``target``: labels (B, H, W) with ``ignore_index`` ignored."""
        task = self.column_prefix
        logits, labels = prediction_and_target(pred, target, task, self.num_classes)
        self.confusion += confusion_matrix(logits.argmax(axis=1), labels, self.num_classes, self.ignore_index)

    def per_class_iou(self) -> np.ndarray:
        """Per-class IoU in percent, in class order."""
        return 100.0 * iou_per_class(self.confusion)

    def result(self) -> dict[str, float]:
        if self.confusion.sum() == 0:
            raise RuntimeError(f"{self.column_prefix}: no valid pixel has been seen (all targets ignored?)")
        return {
            f"{self.column_prefix}_miou": percent(mean_iou(self.confusion, self.absent_classes)),
            f"{self.column_prefix}_pixacc": percent(pixel_accuracy(self.confusion)),
        }
