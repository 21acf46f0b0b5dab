"""Saliency: maximal F-beta (beta^2 = 0.3) over thresholds, from counts pooled over the split.

As the released ``eval_sal.py``: thresholds 0.05, 0.10, ..., 0.95; a pixel is salient when its
probability is >= the threshold; TP, predicted positives and actual positives are summed over
all non-ignored pixels (target 255 ignored) of the split; F = (1 + b2) P R / (b2 P + R) with
0/0 cases set to 0; maxF = max over thresholds, in percent.

Two columns, because the released pipeline, the same in InvPT, TaskPrompter, MTMamba and PAMM, has a
quirk (``get_output`` in
prismformore/Multi-Task-Transformer@1f2b615341d3aa982e8ec4e927f060bcf7ebd952:TaskPrompter/utils/utils.py,
the meter in
prismformore/Multi-Task-Transformer@1f2b615341d3aa982e8ec4e927f060bcf7ebd952:TaskPrompter/evaluation/eval_sal.py):
``get_output`` returns softmax(logits)[salient] * 255, and the meter divides by 255 and applies
a sigmoid *again*. sigmoid(p) lies in [0.5, 0.73], so only thresholds 0.55-0.70 separate pixels
and every threshold <= 0.5 marks all pixels salient. ``sal_maxf`` reproduces this (comparable
with published numbers of InvPT/TaskPrompter/MTMamba/PAMM); ``sal_maxf_corrected`` thresholds
the softmax probability itself.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import expit, softmax

from pamm.metrics._common import percent, prediction_and_target
from pamm.tasks import IGNORE_INDEX

DEFAULT_THRESHOLDS = np.arange(1, 20, dtype=np.float64) * 0.05


def f_beta_from_counts(
    true_positive: np.ndarray, predicted_positive: np.ndarray, actual_positive: np.ndarray, beta_squared: float = 0.3
) -> np.ndarray:
    """F-beta per threshold from pooled counts; NaN (0/0) becomes 0 as in the released meter."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = true_positive / predicted_positive
        recall = true_positive / actual_positive
        f_beta = (1.0 + beta_squared) * precision * recall / (beta_squared * precision + recall)
    return np.nan_to_num(f_beta, nan=0.0)


class SaliencyMeter:
    """Pooled threshold counts for the legacy (double sigmoid) and corrected probabilities."""

    def __init__(
        self,
        beta_squared: float = 0.3,
        thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
        ignore_index: int = IGNORE_INDEX,
    ):
        self.beta_squared = beta_squared
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        shape = (2, self.thresholds.size)  # row 0: legacy, row 1: corrected
        self.true_positive = np.zeros(shape, dtype=np.float64)
        self.predicted_positive = np.zeros(shape, dtype=np.float64)
        self.actual_positive = 0.0
        self.num_valid = 0.0

    def update(
        self,
        pred: Any,
        target: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        orig_sizes: Any | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """``pred``: logits (B, 2, H, W), channel 1 = salient; ``target``: (B, H, W) in {0, 1}, 255 ignored."""
        logits, labels = prediction_and_target(pred, target, "sal", 2)
        valid = labels != self.ignore_index
        salient = labels[valid] == 1
        probability = softmax(logits.astype(np.float32), axis=1)[:, 1][valid]
        variants = (expit(probability), probability)  # legacy: sigmoid applied again
        self.actual_positive += float(np.count_nonzero(salient))
        self.num_valid += float(salient.size)
        for row, scores in enumerate(variants):
            for column, threshold in enumerate(self.thresholds):
                positive = scores >= threshold
                self.predicted_positive[row, column] += float(np.count_nonzero(positive))
                self.true_positive[row, column] += float(np.count_nonzero(positive & salient))

    def f_beta(self) -> np.ndarray:
        """(2, T) F-beta per threshold: row 0 legacy, row 1 corrected."""
        return f_beta_from_counts(self.true_positive, self.predicted_positive, self.actual_positive, self.beta_squared)

    def result(self) -> dict[str, float]:
        if self.num_valid == 0:
            raise RuntimeError("sal: no valid saliency pixel has been seen")
        f_beta = self.f_beta()
        return {"sal_maxf": percent(f_beta[0].max()), "sal_maxf_corrected": percent(f_beta[1].max())}
