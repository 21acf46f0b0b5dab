"""Saliency maxF: hand-worked pooled counts, legacy double sigmoid vs corrected, ignore 255."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pamm.metrics.saliency import SaliencyMeter


def two_channel_logits(probabilities) -> np.ndarray:
    """(1, 2, 1, N) logits whose softmax channel 1 equals ``probabilities``."""
    p = np.asarray(probabilities, dtype=np.float64)
    salient_logit = np.log(p / (1 - p))
    return np.stack([np.zeros_like(salient_logit), salient_logit])[None, :, None, :]


def f_beta(precision: float, recall: float, beta_squared: float = 0.3) -> float:
    return (1 + beta_squared) * precision * recall / (beta_squared * precision + recall)


def test_corrected_separates_what_the_legacy_double_sigmoid_cannot():
    # probabilities 0.97, 0.93, 0.88, 0.20 with labels 1, 1, 0, 0 (+ one ignored pixel)
    logits = two_channel_logits([0.97, 0.93, 0.88, 0.20, 0.99])
    target = np.array([[[1, 1, 0, 0, 255]]])
    meter = SaliencyMeter()
    meter.update(torch.from_numpy(logits).float(), torch.from_numpy(target))
    result = meter.result()
    # corrected: threshold 0.90 keeps exactly the two salient pixels -> P = R = 1.
    assert result["sal_maxf_corrected"] == pytest.approx(100.0)
    # legacy: sigmoid(p) = 0.725, 0.717, 0.707, 0.550; threshold 0.70 keeps the top three
    # (P = 2/3, R = 1), 0.75 keeps none, <= 0.50 keeps all four (P = 1/2, R = 1).
    assert [1 / (1 + math.exp(-p)) for p in (0.97, 0.93, 0.88)] == pytest.approx([0.725, 0.717, 0.707], abs=1e-3)
    assert result["sal_maxf"] == pytest.approx(100 * f_beta(2 / 3, 1.0))


def test_counts_are_pooled_over_images_before_f():
    meter = SaliencyMeter()
    meter.update(two_channel_logits([0.92, 0.12]), np.array([[[1, 0]]]))
    meter.update(two_channel_logits([0.62, 0.32]), np.array([[[0, 1]]]))
    # pooled corrected curve: t <= 0.10 -> P 1/2 R 1; 0.15-0.30 -> P 2/3 R 1; 0.35-0.60 -> P 1/2 R 1/2;
    # 0.65-0.90 -> P 1 R 1/2; 0.95 -> nothing predicted (F = 0)
    expected = max(f_beta(1 / 2, 1), f_beta(2 / 3, 1), f_beta(1 / 2, 1 / 2), f_beta(1, 1 / 2))
    assert expected == pytest.approx(f_beta(1, 1 / 2))
    assert meter.result()["sal_maxf_corrected"] == pytest.approx(100 * expected)
    np.testing.assert_allclose(meter.true_positive[1, :2], [2, 2])
    np.testing.assert_allclose(meter.predicted_positive[1, :2], [4, 4])


def test_wrong_channel_count_and_empty_meter_raise():
    meter = SaliencyMeter()
    with pytest.raises(ValueError, match="2"):
        meter.update(np.zeros((1, 1, 2, 2)), np.zeros((1, 2, 2)))
    with pytest.raises(RuntimeError):
        meter.result()
