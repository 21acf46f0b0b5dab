"""mIoU / pixel accuracy: hand-worked counts, an independent confusion matrix, pooling, absent classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pamm.metrics.semseg import SegmentationMeter, confusion_matrix, mean_iou


def one_hot_logits(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(B, H, W) labels -> (B, K, H, W) logits whose argmax is the label."""
    return 5.0 * np.moveaxis(np.eye(num_classes)[labels], -1, 1)


def test_hand_worked_miou_and_pixel_accuracy():
    target = np.array([[[0, 0, 1], [1, 2, 255]]])
    pred = np.array([[[0, 1, 1], [1, 2, 0]]])  # the last pixel is ignored whatever it predicts
    meter = SegmentationMeter(3)
    meter.update(one_hot_logits(pred, 3), target)
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: 1/1.
    expected_miou = (1 / 2 + 2 / 3 + 1) / 3 * 100
    result = meter.result()
    assert result["semseg_miou"] == pytest.approx(expected_miou)
    assert result["semseg_pixacc"] == pytest.approx(4 / 5 * 100)
    np.testing.assert_allclose(meter.per_class_iou(), [50.0, 200 / 3, 100.0])


def test_class_absent_from_split_counts_as_zero_like_released_code():
    target = np.array([[[0, 0, 1], [1, 2, 255]]])
    pred = np.array([[[0, 1, 1], [1, 2, 0]]])
    released = SegmentationMeter(4, absent_classes="zero")  # class 3 never occurs
    present_only = SegmentationMeter(4, absent_classes="ignore")
    for meter in (released, present_only):
        meter.update(one_hot_logits(pred, 4), target)
    assert released.result()["semseg_miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 + 0) / 4 * 100)
    assert present_only.result()["semseg_miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3 * 100)


def test_confusion_matches_a_plain_loop_and_pooling_is_over_the_split():
    rng = np.random.default_rng(3)
    num_classes = 7
    target = rng.integers(0, num_classes, size=(4, 9, 11))
    target[rng.random(target.shape) < 0.2] = 255
    logits = rng.normal(size=(4, num_classes, 9, 11))
    labels = logits.argmax(axis=1)

    loop = np.zeros((num_classes, num_classes))
    for t, p in zip(target.ravel(), labels.ravel()):
        if t != 255:
            loop[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(labels, target, num_classes), loop)

    whole = SegmentationMeter(num_classes, "parts")
    whole.update(logits, target)
    in_batches = SegmentationMeter(num_classes, "parts")
    in_batches.update(torch.from_numpy(logits[:1]), torch.from_numpy(target[:1]))
    in_batches.update(torch.from_numpy(logits[1:]), torch.from_numpy(target[1:]).unsqueeze(1))
    assert in_batches.result() == pytest.approx(whole.result())
    tp = np.diag(loop)
    iou = tp / (loop.sum(0) + loop.sum(1) - tp)
    assert whole.result()["parts_miou"] == pytest.approx(100 * iou.mean())
    # a per-image mean of mIoU would be a different number
    per_image = [mean_iou(confusion_matrix(labels[i], target[i], num_classes)) for i in range(4)]
    assert whole.result()["parts_miou"] != pytest.approx(100 * np.mean(per_image))


def test_all_ignored_images_do_not_count_and_bad_labels_raise():
    meter = SegmentationMeter(3, "parts")
    meter.update(one_hot_logits(np.zeros((1, 2, 2), int), 3), np.full((1, 2, 2), 255))
    with pytest.raises(RuntimeError):
        meter.result()
    with pytest.raises(ValueError, match="outside"):
        meter.update(one_hot_logits(np.zeros((1, 2, 2), int), 3), np.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="shape"):
        meter.update(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2), int))
