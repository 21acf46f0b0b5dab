"""Task losses against hand-computed values, and that invalid pixels never count."""
import math

import pytest
import torch

from pamm.losses import BalancedEdgeLoss, MultiTaskLoss, depth_l1_loss, normals_l1_loss


def test_depth_l1_ignores_invalid():
    pred = torch.tensor([[[[1.0, 5.0], [2.0, 9.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [2.5, 0.0]]]])
    assert depth_l1_loss(pred, target).item() == pytest.approx((1.0 + 0.5) / 2)


def test_normals_loss_normalises_prediction_and_ignores_255():
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, :, 0, 0] = torch.tensor([0.0, 0.0, 5.0])  # normalises to (0,0,1)
    pred[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    target = torch.zeros(1, 3, 1, 2)
    target[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    target[0, :, 0, 1] = 255.0
    assert normals_l1_loss(pred, target).item() == pytest.approx(0.0)


def test_balanced_edge_loss_weights():
    w = 0.9
    loss = BalancedEdgeLoss(w)
    logits = torch.tensor([0.0, 0.0, 3.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, 255.0]).view(1, 1, 1, 3)
    expected = (w * math.log(2) + (1 - w) * math.log(2)) / 2
    assert loss(logits, target).item() == pytest.approx(expected)


def test_multitask_weighting_and_log_scheme():
    outputs = {"depth": torch.full((1, 1, 2, 2), 2.0), "semseg": torch.zeros(1, 40, 2, 2)}
    targets = {"depth": torch.ones(1, 1, 2, 2), "semseg": torch.zeros(1, 2, 2, dtype=torch.long)}
    weighted = MultiTaskLoss(["semseg", "depth"], "nyud", weights={"semseg": 1.0, "depth": 3.0})
    total, parts = weighted(outputs, targets)
    assert parts["depth"] == pytest.approx(1.0)
    assert parts["semseg"] == pytest.approx(math.log(40))
    assert total.item() == pytest.approx(math.log(40) + 3.0)
    logged, _ = MultiTaskLoss(["semseg", "depth"], "nyud", scheme="log")(outputs, targets)
    assert logged.item() == pytest.approx(math.log(math.log(40)) + 0.0)


def test_aux_predictions_are_resized_and_added():
    outputs = {"depth": torch.full((1, 1, 4, 4), 2.0), "aux": {"depth": torch.full((1, 1, 2, 2), 3.0)}}
    targets = {"depth": torch.ones(1, 1, 4, 4)}
    total, parts = MultiTaskLoss(["depth"], "nyud")(outputs, targets)
    assert parts["depth"] == pytest.approx(1.0 + 2.0)


def test_all_ignored_gives_zero_not_nan():
    pred = torch.randn(1, 1, 2, 2, requires_grad=True)
    assert depth_l1_loss(pred, torch.zeros(1, 1, 2, 2)).item() == 0.0


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown loss scheme"):
        MultiTaskLoss(["depth"], "nyud", scheme="uncertainty")
