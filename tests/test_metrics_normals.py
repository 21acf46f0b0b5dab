"""Normals: hand-worked angles, pooled mean/median/percentages, invalid pixels, 8-bit round trip."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pamm.metrics.normals import NormalsMeter, requantize_prediction


def normals_batch(vectors) -> np.ndarray:
    """A (1, 3, 1, N) batch from N vectors."""
    return np.asarray(vectors, dtype=np.float32).T[None, :, None, :]


def tilted(degrees: float, scale: float = 3.0) -> list[float]:
    """A raw (unnormalised) prediction at ``degrees`` from +z, in the x-z plane."""
    radians = math.radians(degrees)
    return [scale * math.sin(radians), 0.0, scale * math.cos(radians)]


def test_hand_worked_angles_pooled_over_images():
    meter = NormalsMeter()
    gt = normals_batch([[0, 0, 1], [0, 0, 1], [255, 255, 255]])  # third pixel invalid
    meter.update(normals_batch([tilted(0), tilted(10), tilted(170)]), gt)
    meter.update(normals_batch([tilted(25)]), normals_batch([[0, 0, 1]]))
    meter.update(normals_batch([tilted(40)]), normals_batch([[0, 0, 1]]))
    result = meter.result()
    errors = [0.0, 10.0, 25.0, 40.0]  # the 170-degree pixel is ignored
    assert result["normals_merr"] == pytest.approx(sum(errors) / 4, abs=1e-3)
    assert result["normals_median"] == pytest.approx((10.0 + 25.0) / 2, abs=1e-3)
    assert result["normals_11"] == pytest.approx(2 / 4 * 100)
    assert result["normals_22"] == pytest.approx(2 / 4 * 100)
    assert result["normals_30"] == pytest.approx(3 / 4 * 100)


def test_zero_prediction_is_90_degrees_and_opposite_is_180():
    meter = NormalsMeter()
    meter.update(normals_batch([[0, 0, 0], [0, 0, -2]]), normals_batch([[0, 0, 1], [0, 0, 1]]))
    assert meter.result()["normals_merr"] == pytest.approx((90.0 + 180.0) / 2, abs=1e-3)


def test_uint8_round_trip_changes_the_error_float_does_not():
    direction = [0.6, 0.0, 0.8]
    raw = normals_batch([[5 * v for v in direction]])
    gt = normals_batch([direction])
    released, eight_bit = NormalsMeter("float"), NormalsMeter("uint8")
    released.update(raw, gt)
    eight_bit.update(raw, gt)
    # (n + 1) * 127.5 = (204, 127.5, 229.5) -> uint8 (204, 127, 229) -> 2 v / 255 - 1
    decoded = np.array([2 * 204 / 255 - 1, 2 * 127 / 255 - 1, 2 * 229 / 255 - 1])
    expected = math.degrees(math.acos(decoded @ np.array(direction) / np.linalg.norm(decoded)))
    assert expected > 0.2
    assert eight_bit.result()["normals_merr"] == pytest.approx(expected, abs=1e-4)
    assert released.result()["normals_merr"] < 1e-3
    np.testing.assert_allclose(requantize_prediction(raw)[0, :, 0, 0], direction, atol=1e-6)
