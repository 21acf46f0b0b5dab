"""Boundary ODS/OIS/AP: worked counts, perfect / shifted / empty maps, padding, PNGs, backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pamm.metrics import boundary
from pamm.metrics.edge import EdgeMeter, save_edge_pngs

HEIGHT, WIDTH = 60, 80  # diagonal 100 px: max_dist 0.011 -> 1.1 px tolerance


def boundary_map() -> np.ndarray:
    """A rectangle outline and a vertical stroke, away from the 5-px NMS border fade."""
    edges = np.zeros((HEIGHT, WIDTH), dtype=bool)
    edges[15, 10:70] = edges[45, 10:70] = True
    edges[15:46, 10] = edges[15:46, 69] = True
    edges[20:40, 40] = True
    return edges


def logits_of(edges: np.ndarray) -> np.ndarray:
    return np.where(edges, 10.0, -10.0).astype(np.float32)


def batch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def evaluate(pred_edges: np.ndarray, gt_edges: np.ndarray, **options) -> dict[str, float]:
    meter = EdgeMeter(max_dist=0.011, **options)
    meter.update(batch(logits_of(pred_edges)), batch(gt_edges))
    return meter.result()


def test_perfect_shifted_and_empty_predictions():
    gt = boundary_map()
    perfect = evaluate(gt, gt)
    assert perfect["edge_odsf"] == pytest.approx(100.0)
    assert perfect["edge_oisf"] == pytest.approx(100.0)
    assert perfect["edge_ap"] == 0.0  # one PR point only: SEISM's general_ap returns 0
    for axis in (0, 1):
        shifted = evaluate(np.roll(gt, 1, axis=axis), gt)  # 1 px < 1.1 px tolerance
        assert shifted["edge_odsf"] == pytest.approx(100.0)
    far = np.roll(np.roll(gt, 3, axis=0), 3, axis=1)  # 3 px away: only line crossings still meet
    assert evaluate(far, gt)["edge_odsf"] < 10.0
    empty = evaluate(np.zeros_like(gt), gt)
    assert empty == {"edge_odsf": 0.0, "edge_oisf": 0.0, "edge_ap": 0.0}


def test_padding_is_cropped_away():
    gt = boundary_map()
    padded_gt = np.full((HEIGHT + 8, WIDTH + 16), 255.0)
    padded_gt[:HEIGHT, :WIDTH] = gt  # the loaders pad at the bottom and right
    padded_pred = np.full(padded_gt.shape, 10.0)  # "edges" everywhere in the padding
    padded_pred[:HEIGHT, :WIDTH] = logits_of(gt)
    meta = {"id": ["img0"], "orig_size": torch.tensor([[HEIGHT, WIDTH]])}
    for kwargs in ({"meta": meta}, {"orig_sizes": [[HEIGHT, WIDTH]]}, {}):  # {}: box of non-255 pixels
        meter = EdgeMeter(max_dist=0.011)
        meter.update(batch(padded_pred), batch(padded_gt), **kwargs)
        assert meter.result()["edge_odsf"] == pytest.approx(100.0)
    centred = EdgeMeter(max_dist=0.011, pad_position="center")
    with pytest.raises(ValueError, match="pad_position"):
        centred.update(batch(padded_pred), batch(padded_gt), meta=meta)


def test_ods_ois_ap_from_hand_worked_counts():
    # [cntR, sumR, cntP, sumP] for 2 images x 2 thresholds
    counts = np.array([
        [[8, 10, 8, 10], [5, 10, 5, 5]],  # image 1: F 0.8 at t1, 0.667 at t2 -> best t1
        [[6, 10, 6, 20], [4, 10, 4, 4]],  # image 2: F 0.4 at t1, 0.571 at t2 -> best t2
    ])

    def f(p, r):
        return 2 * p * r / (p + r)

    ods = max(f(14 / 30, 14 / 20), f(9 / 9, 9 / 20))
    ois = f(12 / 14, 12 / 20)  # pooled at each image's own best threshold
    scores = boundary.ods_ois_ap(counts)
    assert scores["odsf"] == pytest.approx(ods) and ods == pytest.approx(f(1, 0.45))
    assert scores["oisf"] == pytest.approx(ois)
    # AP: PR points (R, P) = (0, 1), (0.5, 1), (1, 0.5); precision interpolated at R = 0..1 step 0.01
    curve = np.array([[[0, 10, 0, 0], [5, 10, 5, 5], [10, 10, 10, 20]]])
    expected_ap = (51 * 1.0 + sum(1 - (k / 100 - 0.5) for k in range(51, 101))) / 100
    assert boundary.ods_ois_ap(curve)["ap"] == pytest.approx(expected_ap)
    assert expected_ap == pytest.approx(0.8825)


def test_graded_prediction_gives_a_real_pr_curve():
    gt = boundary_map()
    rng = np.random.default_rng(0)
    logits = np.where(gt, 3.0, -3.0) + rng.normal(0, 1.5, gt.shape)
    meter = EdgeMeter(max_dist=0.011, thresholds=19)
    meter.update(batch(logits), batch(gt))
    result = meter.result()
    assert 0 < result["edge_ap"] <= 100 and 0 < result["edge_odsf"] <= result["edge_oisf"] + 1e-9
    curve = meter.pr_curve()
    assert np.all(np.diff(curve["recall"]) <= 1e-12)  # recall never rises with the threshold


def test_saved_pngs_are_truncated_sigmoid_times_255_never_normalised(tmp_path):
    probs = np.array([[0.0, 0.25, 0.5], [0.999, 1.0, 0.1]], dtype=np.float32)
    paths = save_edge_pngs(torch.from_numpy(probs)[None, None], ["2008_000001"], tmp_path)
    written = np.array(Image.open(paths[0]))
    assert paths[0].name == "2008_000001.png" and written.dtype == np.uint8
    np.testing.assert_array_equal(written, (probs * 255).astype(np.uint8))
    assert written.max() == 255 and written[0, 2] == 127
    cropped = save_edge_pngs([probs], ["a"], tmp_path, orig_sizes=[[1, 2]])
    assert np.array(Image.open(cropped[0])).shape == (1, 2)

    meter = EdgeMeter(max_dist=0.011, save_dir=tmp_path / "edge")
    gt = boundary_map()
    meter.update(batch(logits_of(gt)), batch(gt), meta={"id": ["x1"], "orig_size": torch.tensor([[HEIGHT, WIDTH]])})
    assert (tmp_path / "edge" / "x1.png").is_file()
    with pytest.raises(ValueError, match="ids"):
        meter.update(batch(logits_of(gt)), batch(gt))


def test_nms_matches_piotr_mex_and_seg2bmap_marks_the_outline():
    rng = np.random.default_rng(1)
    from scipy import ndimage

    edges = ndimage.gaussian_filter(rng.random((40, 50)), 2).astype(np.float32)
    edges = (edges - edges.min()) / (edges.max() - edges.min())
    orientation = boundary.edge_orientation(edges)
    ours = boundary.non_maximum_suppression(edges, orientation)
    assert 0 < np.count_nonzero(ours) < edges.size // 3
    labels = np.zeros((4, 5), dtype=np.uint8)
    labels[1, 1:4] = 1  # a horizontal 1-px band
    expected = np.zeros((4, 5), dtype=bool)
    expected[0, 0:4] = True  # above the band (differs from below / below-right)
    expected[1, 0:4] = True  # the band itself (differs from below), and its left neighbour
    np.testing.assert_array_equal(boundary.seg2bmap(labels), expected)
    pyedgeeval = pytest.importorskip("pyEdgeEval._lib.nms")
    reference = pyedgeeval.nms(edges.astype(np.float64), orientation.astype(np.float64), 1, 5, 1.01)
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_maxflow_and_bsds_matchers_agree():
    pytest.importorskip("pyEdgeEval._lib.correspond_pixels")
    gt = boundary_map()
    rng = np.random.default_rng(2)
    logits = np.where(np.roll(gt, 1, axis=1), 2.0, -2.0) + rng.normal(0, 1.5, gt.shape)
    edges_uint8 = boundary.probabilities_to_uint8(1 / (1 + np.exp(-logits)))
    options = dict(max_dist=0.011, thresholds=boundary.default_thresholds(9))
    exact = boundary.image_boundary_counts(edges_uint8, gt, matcher="maxflow", **options)
    bsds = boundary.image_boundary_counts(edges_uint8, gt, matcher="bsds", **options)
    np.testing.assert_array_equal(exact[:, [1, 3]], bsds[:, [1, 3]])
    assert np.abs(exact - bsds).max() <= 2


def test_parallel_workers_give_the_sequential_counts():
    gt = boundary_map()
    rng = np.random.default_rng(3)
    logits = [np.where(gt, 2.0, -2.0) + rng.normal(0, 1.5, gt.shape) for _ in range(3)]
    meters = [
        EdgeMeter(max_dist=0.011, thresholds=9),
        EdgeMeter(max_dist=0.011, thresholds=9, num_workers=2, parallel="thread"),
        EdgeMeter(max_dist=0.011, thresholds=9, num_workers=2, parallel="process"),
    ]
    try:
        for meter in meters:
            for image_logits in logits:
                meter.update(batch(image_logits), batch(gt))
        sequential = meters[0].per_image_counts()
        for meter in meters[1:]:
            np.testing.assert_array_equal(meter.per_image_counts(), sequential)
    finally:
        for meter in meters:
            meter.close()
