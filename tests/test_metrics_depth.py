"""Depth: hand-worked pooled RMSE and extras, valid masks, clamping, pooled vs per-image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pamm.metrics.depth import DepthMeter


def as_batch(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[None, None]


def test_hand_worked_range_mask():
    gt = as_batch([[1.0, 2.0], [0.0, 100.0]])  # 0 invalid, 100 outside (0, 80)
    pred = as_batch([[2.0, 2.0], [5.0, -1.0]])
    meter = DepthMeter("range")
    meter.update(pred, gt)
    result = meter.result()
    assert result["depth_rmse"] == pytest.approx(math.sqrt((1.0 + 0.0) / 2))
    assert result["depth_log_rmse"] == pytest.approx(math.sqrt(math.log(2.0) ** 2 / 2))
    assert result["depth_abs_rel"] == pytest.approx((1 / 1 + 0) / 2)
    assert result["depth_sq_rel"] == pytest.approx((1 / 1 + 0) / 2)
    assert result["depth_delta1"] == pytest.approx(50.0)  # max(1/2, 2/1) = 2 fails, exact one passes


def test_nonzero_mask_and_negative_prediction_becomes_1e_minus_9():
    gt = as_batch([[1.0, 2.0], [0.0, 100.0]])
    pred = as_batch([[2.0, 2.0], [5.0, -1.0]])
    meter = DepthMeter("nonzero")
    meter.update(torch.from_numpy(pred), torch.from_numpy(gt))
    result = meter.result()
    assert result["depth_rmse"] == pytest.approx(math.sqrt((1.0 + 0.0 + (100 - 1e-9) ** 2) / 3))
    log_terms = math.log(2.0) ** 2 + 0.0 + (math.log(100.0) - math.log(1e-9)) ** 2
    assert result["depth_log_rmse"] == pytest.approx(math.sqrt(log_terms / 3))


def test_rmse_is_pooled_over_pixels_not_averaged_over_images():
    image_a = (as_batch([[1.0, 0.0], [0.0, 0.0]]), as_batch([[4.0, 0.0], [0.0, 0.0]]))  # 1 pixel, error 3
    image_b = (as_batch([[1.0, 2.0], [3.0, 0.0]]), as_batch([[2.0, 3.0], [4.0, 0.0]]))  # 3 pixels, error 1
    meter = DepthMeter()
    for gt, pred in (image_a, image_b):
        meter.update(pred, gt)
    pooled = math.sqrt((9.0 + 3 * 1.0) / 4)
    per_image_mean = (3.0 + 1.0) / 2
    assert meter.result()["depth_rmse"] == pytest.approx(pooled)
    assert pooled != pytest.approx(per_image_mean)


def test_no_valid_pixel_raises():
    meter = DepthMeter()
    meter.update(as_batch([[1.0]]), as_batch([[0.0]]))
    with pytest.raises(RuntimeError):
        meter.result()
    with pytest.raises(ValueError):
        DepthMeter("everything")
