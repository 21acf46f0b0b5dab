"""Boundary ODS/OIS/AP as MATLAB SEISM computes them.

Against SEISM's own output (``../shared/fixtures/seism``: the exact copy the papers used, run under
GNU Octave) and against independent references: skimage's ``thin`` (= ``bwmorph thin``), a direct
float64 triangle convolution, SEISM's orientation formula written out in float64, scipy's
bipartite matching. Worked counts, padding, PNGs, workers, the ``edges`` verb and its errors.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import io as sio
from scipy import ndimage
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching

from pamm.metrics import boundary
from pamm.metrics.edge import EdgeInputError, EdgeMeter, evaluate_edge_folder, image_set, save_edge_pngs

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "seism"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"SEISM calibration set {FIXTURES} is absent")

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


def ridge_image(angle: float, size: int = 96, sigma: float = 1.5) -> np.ndarray:
    """8-bit straight ridge through the centre along ``angle`` (x right, y down), as SEISM reads it."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    distance = -x * np.sin(angle) + y * np.cos(angle)
    return (np.exp(-distance**2 / (2 * sigma**2)) * 255).astype(np.uint8)


def orientation_reference(edges: np.ndarray, swap: bool = False) -> np.ndarray:
    """SEISM's ``mod(atan(Oyy .* sign(-Oxy) ./ (Oxx + 1e-5)), pi)`` in float64, MATLAB's x-first gradients.

    ``swap``: the Oxy/Oyy mix-up that reading numpy's y-first gradient as MATLAB's causes.
    """
    kernel = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], dtype=np.float64) / 25.0
    padded = np.pad(edges.astype(np.float64), 4, mode="symmetric")
    smooth = ndimage.convolve1d(ndimage.convolve1d(padded, kernel, axis=0), kernel, axis=1)[4:-4, 4:-4]
    ox, oy = np.gradient(smooth, axis=1), np.gradient(smooth, axis=0)
    oxx, oxy, oyy = np.gradient(ox, axis=1), np.gradient(oy, axis=1), np.gradient(oy, axis=0)
    if swap:
        oxy, oyy = oyy, oxy
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def angle_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    gap = np.abs(a - b) % np.pi
    return np.minimum(gap, np.pi - gap)


# --------------------------------------------------------------------------- against SEISM's output
SEISM_DATASETS = {"nyud": ("nyud/edge", ".png"), "pascal": ("pascal/trainval", ".mat")}


def _fixture_ids(dataset: str) -> list[str]:
    return (FIXTURES / dataset / "ids.txt").read_text().split()


@pytest.fixture(scope="module")
def seism_runs():
    """Our counts for every fixture image and SEISM's reference, per dataset."""
    from pamm.metrics.edge import _score_files

    runs = {}
    for dataset, (gt_folder, suffix) in SEISM_DATASETS.items():
        reference = json.loads((FIXTURES / f"seism_{dataset}.json").read_text())
        ids = _fixture_ids(dataset)
        counts = {image_id: _score_files(str(FIXTURES / dataset / "pred" / f"{image_id}.png"),
                                         str(FIXTURES / gt_folder / f"{image_id}{suffix}"), dataset,
                                         boundary.MAX_DIST[dataset], "maxflow")
                  for image_id in ids}
        runs[dataset] = (reference, counts)
    return runs


@needs_fixtures
def test_thresholds_and_tolerances_are_seisms():
    for dataset in SEISM_DATASETS:
        reference = json.loads((FIXTURES / f"seism_{dataset}.json").read_text())
        assert list(boundary.HED_THRESHOLD_STRINGS) == reference["thresholds"]
        assert boundary.MAX_DIST[dataset] == reference["max_dist"]
    assert boundary.HED_THRESHOLDS.size == 101 and boundary.HED_THRESHOLDS[[0, 1, -2, -1]].tolist() == [
        0.001, 0.01, 0.99, 0.999]


@needs_fixtures
@pytest.mark.parametrize("dataset", sorted(SEISM_DATASETS))
def test_ground_truth_and_nms_survivors_are_seisms_pixel_for_pixel(dataset):
    from pamm.metrics.edge import read_ground_truth, read_prediction_png

    gt_folder, suffix = SEISM_DATASETS[dataset]
    for image_id in _fixture_ids(dataset):
        segmentation = read_ground_truth(FIXTURES / gt_folder / f"{image_id}{suffix}", dataset)
        ours = boundary.seism_ground_truth(segmentation)
        theirs = np.array(Image.open(FIXTURES / "seism_intermediates" / dataset / "gt" / f"{image_id}.png"))
        np.testing.assert_array_equal(ours, theirs.astype(bool), err_msg=f"{dataset} {image_id} ground truth")
        edges = read_prediction_png(FIXTURES / dataset / "pred" / f"{image_id}.png")
        survivors = boundary.seism_nms(edges) > 0
        theirs = np.array(Image.open(FIXTURES / "seism_intermediates" / dataset / "nms_mask" / f"{image_id}.png"))
        np.testing.assert_array_equal(survivors, theirs.astype(bool), err_msg=f"{dataset} {image_id} NMS")


@needs_fixtures
@pytest.mark.parametrize("dataset", sorted(SEISM_DATASETS))
def test_counts_match_seism(dataset, seism_runs):
    """sumR and sumP equal SEISM's at every threshold; the exact matcher finds as many pairs or a few more."""
    reference, counts = seism_runs[dataset]
    for image_id, ours in counts.items():
        theirs = np.array([reference["per_image"][image_id]["counts"][t] for t in reference["thresholds"]])
        np.testing.assert_array_equal(ours[:, [1, 3]], theirs[:, [1, 3]], err_msg=f"{dataset} {image_id}")
        extra = ours[:, [0, 2]] - theirs[:, [0, 2]]
        assert extra.min() >= 0 and extra.max() <= 12, (image_id, extra.min(), extra.max())


@needs_fixtures
@pytest.mark.parametrize("dataset", sorted(SEISM_DATASETS))
def test_scores_within_a_tenth_of_a_point_of_seism(dataset, seism_runs):
    reference, counts = seism_runs[dataset]
    ids = list(counts)
    stacked = np.stack([counts[i] for i in ids])
    scores = boundary.ods_ois_ap(stacked)
    for ours, key in ((scores["odsf"], "odsF"), (scores["oisf"], "oisF"), (scores["ap"], "AP")):
        assert abs(100 * ours - 100 * reference[key]) < 0.1, (dataset, key, 100 * ours, 100 * reference[key])
    best_f, _ = boundary.best_per_image(stacked)
    for image_id, f in zip(ids, best_f):
        assert abs(100 * f - 100 * reference["per_image"][image_id]["f"]) < 0.2, (dataset, image_id)
    # Negative control: SEISM's own counts through our aggregation give SEISM's numbers, not ours.
    theirs = np.stack([[reference["per_image"][i]["counts"][t] for t in reference["thresholds"]] for i in ids])
    exact = boundary.ods_ois_ap(theirs)
    assert exact["odsf"] == pytest.approx(reference["odsF"], abs=1e-12)
    assert exact["oisf"] == pytest.approx(reference["oisF"], abs=1e-12)
    assert exact["ap"] == pytest.approx(reference["AP"], abs=1e-12)


@needs_fixtures
def test_edges_folder_scores_the_fixture_like_seism(tmp_path):
    reference = json.loads((FIXTURES / "seism_pascal.json").read_text())
    result = evaluate_edge_folder(FIXTURES / "pascal" / "pred", FIXTURES / "pascal" / "trainval", "pascal",
                                  threads=2, progress=False)
    assert result["n_images"] == 6 and result["image_set"] == "every prediction"  # synthetic ids: no test_new
    for key in ("odsF", "oisF", "AP"):
        assert abs(result[key] - 100 * reference[key]) < 0.1
    for image_id, entry in result["per_image"].items():
        assert abs(entry["best_f"] - 100 * reference["per_image"][image_id]["f"]) < 0.2
        assert entry["best_threshold"] in boundary.HED_THRESHOLDS


# --------------------------------------------------------------------------- the pieces, against references
def test_thinning_equals_skimage_thin():
    from skimage.morphology import thin as skimage_thin

    rng = np.random.default_rng(5)
    for index, (height, width) in enumerate([(31, 47), (64, 64), (90, 40), (7, 9)]):
        for sigma in (0.7, 1.5, 3.0):
            mask = ndimage.gaussian_filter(rng.random((height, width)), sigma) > 0.5 + 0.02 * index
            np.testing.assert_array_equal(boundary.thin(mask), skimage_thin(mask))
    bar = np.zeros((20, 30), dtype=bool)
    bar[8:11, 3:27] = True  # 3 pixels wide: thinning must leave one line
    thinned = boundary.thin(bar)
    assert thinned.sum(axis=0)[5:25].max() == 1 and thinned.sum() < bar.sum() / 2
    assert not boundary.thin(np.zeros((5, 5), dtype=bool)).any()


def test_conv_tri_is_the_triangle_filter():
    rng = np.random.default_rng(6)
    kernel = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], dtype=np.float64) / 25.0
    for shape in ((37, 53), (64, 80), (12, 11), (6, 30)):  # the last two take convTri.m's small-image path
        image = rng.random(shape).astype(np.float32)
        padded = np.pad(image.astype(np.float64), 4, mode="symmetric")
        expected = ndimage.convolve1d(ndimage.convolve1d(padded, kernel, axis=0), kernel, axis=1)[4:-4, 4:-4]
        np.testing.assert_allclose(boundary.conv_tri(image, 4), expected, atol=2e-6)


@pytest.mark.parametrize("degrees", [15, 30, 60, 105, 155, 165])
def test_orientation_of_straight_ridges_is_seisms_formula(degrees):
    angle = np.deg2rad(degrees)
    edges = ridge_image(angle)
    ours = boundary.edge_orientation(edges.astype(np.float32) / np.float32(255))
    image = edges.astype(np.float64) / 255
    on_ridge = np.zeros(edges.shape, dtype=bool)
    on_ridge[12:-12, 12:-12] = edges[12:-12, 12:-12] > 200
    assert on_ridge.sum() > 40
    reference = orientation_reference(image)
    assert angle_gap(ours, reference)[on_ridge].max() < 2e-3
    # The closed form on a ridge (E = g(-x sin a + y cos a), g'' < 0): atan(-sign(sin 2a) cot^2 a) mod pi.
    closed = np.mod(np.arctan(-np.sign(np.sin(2 * angle)) / np.tan(angle) ** 2), np.pi)
    assert np.median(angle_gap(ours[on_ridge], closed)) < 0.05
    # Negative control: swapping Oxy and Oyy gives atan(-cot a), the geometric normal, which SEISM's
    # formula is not (away from 45 and 135 degrees, where the two agree).
    assert np.median(angle_gap(orientation_reference(image, swap=True)[on_ridge], reference[on_ridge])) > 0.1


def _reference_matching_size(kept: np.ndarray, gt: np.ndarray, radius: float) -> int:
    pred_yx = np.argwhere(kept)
    gt_yx = np.argwhere(gt)
    if pred_yx.size == 0 or gt_yx.size == 0:
        return 0
    close = ((pred_yx[:, None, :] - gt_yx[None, :, :]) ** 2).sum(-1) <= radius**2
    matching = maximum_bipartite_matching(csr_array(close.astype(np.int8)), perm_type="column")
    return int(np.count_nonzero(matching >= 0))


def test_warm_started_matching_is_a_maximum_matching():
    rng = np.random.default_rng(7)
    shape = (40, 50)
    gt = np.zeros(shape, dtype=bool)
    gt[10, 5:45] = gt[5:35, 25] = gt[30, 8:30] = True
    universe = ndimage.binary_dilation(gt, iterations=3) & (rng.random(shape) < 0.35)
    universe |= rng.random(shape) < 0.03
    max_dist = 2.5 / np.hypot(*shape)
    matcher = boundary._WarmMatcher(np.flatnonzero(universe), gt, max_dist)
    sizes = []
    for step in range(25):  # subsets that shrink, grow and jump, as thinned maps do across thresholds
        kept = universe & (rng.random(shape) < rng.uniform(0.2, 1.0))
        expected = _reference_matching_size(kept, gt, max_dist * np.hypot(*shape))
        assert matcher.matched(np.flatnonzero(kept)) == expected, step
        sizes.append(expected)
    assert len(set(sizes)) > 5  # the sequence really changes


def test_relabelling_into_connected_regions_never_changes_seg2bmap():
    """SEISM relabels PASCAL-Context's LabelMap into 4-connected regions before seg2bmap; that is a no-op."""
    from skimage.measure import label

    rng = np.random.default_rng(10)
    for size in ((6, 6), (30, 40), (17, 9)):
        for levels in (2, 3, 5):
            labels = ndimage.zoom(rng.integers(0, levels, (4, 4)), (size[0] / 4, size[1] / 4), order=0)
            labels = np.where(rng.random(labels.shape) < 0.05, levels, labels)  # specks, diagonal contacts
            regions = label(labels + 1, background=0, connectivity=1)
            assert regions.max() > len(np.unique(labels)) or size == (6, 6)
            np.testing.assert_array_equal(boundary.seg2bmap(regions), boundary.seg2bmap(labels))
    checker = np.indices((6, 6)).sum(axis=0) % 2  # every pixel touches its equals only diagonally
    np.testing.assert_array_equal(boundary.seg2bmap(label(checker + 1, background=0, connectivity=1)),
                                  boundary.seg2bmap(checker))


def test_seg2bmap_marks_the_outline():
    labels = np.zeros((4, 5), dtype=np.uint8)
    labels[1, 1:4] = 1  # a horizontal 1-px band
    expected = np.zeros((4, 5), dtype=bool)
    expected[0, 0:4] = True  # above the band (differs from below / below-right)
    expected[1, 0:4] = True  # the band itself (differs from below), and its left neighbour
    np.testing.assert_array_equal(boundary.seg2bmap(labels), expected)


# --------------------------------------------------------------------------- the meter
def test_perfect_shifted_and_empty_predictions():
    gt = boundary_map()
    seism_gt = boundary.seism_ground_truth(gt)  # the outline of each annotated line, thinned to one
    assert 0 < np.count_nonzero(seism_gt & ~gt) and np.count_nonzero(seism_gt) < np.count_nonzero(gt)
    perfect = evaluate(seism_gt, gt)
    assert perfect["edge_odsf"] == pytest.approx(100.0) and perfect["edge_oisf"] == pytest.approx(100.0)
    # Recall 0 (nothing above 0.999) and 1: SEISM sums 101 interpolated precisions of 1 and divides by 100.
    assert perfect["edge_ap"] == pytest.approx(101.0)
    for axis in (0, 1):
        for shift in (1, -1):
            shifted = evaluate(np.roll(seism_gt, shift, axis=axis), gt)  # 1 px < 1.1 px tolerance
            assert shifted["edge_odsf"] == pytest.approx(100.0)
    far = np.roll(np.roll(seism_gt, 3, axis=0), 3, axis=1)  # 3 px away: only line crossings still meet
    assert evaluate(far, gt)["edge_odsf"] < 10.0
    empty = evaluate(np.zeros_like(gt), gt)
    assert empty == {"edge_odsf": 0.0, "edge_oisf": 0.0, "edge_ap": 0.0}


def test_padding_is_cropped_away():
    gt = boundary_map()
    reference = evaluate(gt, gt)["edge_odsf"]
    padded_gt = np.full((HEIGHT + 8, WIDTH + 16), 255.0)
    padded_gt[:HEIGHT, :WIDTH] = gt  # the loaders pad at the bottom and right
    padded_pred = np.full(padded_gt.shape, 10.0)  # "edges" everywhere in the padding
    padded_pred[:HEIGHT, :WIDTH] = logits_of(gt)
    meta = {"id": ["img0"], "orig_size": torch.tensor([[HEIGHT, WIDTH]])}
    for kwargs in ({"meta": meta}, {"orig_sizes": [[HEIGHT, WIDTH]]}, {}):  # {}: box of non-255 pixels
        meter = EdgeMeter(max_dist=0.011)
        meter.update(batch(padded_pred), batch(padded_gt), **kwargs)
        assert meter.result()["edge_odsf"] == pytest.approx(reference)
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
    best_f, best_index = boundary.best_per_image(counts)
    np.testing.assert_allclose(best_f, [0.8, f(1, 0.4)])
    assert best_index.tolist() == [0, 1]
    # AP: PR points (R, P) = (0, 1), (0.5, 1), (1, 0.5); precision interpolated at R = 0..1 step 0.01
    curve = np.array([[[0, 10, 0, 0], [5, 10, 5, 5], [10, 10, 10, 20]]])
    expected_ap = (51 * 1.0 + sum(1 - (k / 100 - 0.5) for k in range(51, 101))) / 100
    assert boundary.ods_ois_ap(curve)["ap"] == pytest.approx(expected_ap)
    assert expected_ap == pytest.approx(0.8825)


def test_graded_prediction_gives_a_real_pr_curve():
    gt = boundary_map()
    rng = np.random.default_rng(0)
    logits = np.where(gt, 3.0, -3.0) + rng.normal(0, 1.5, gt.shape)
    meter = EdgeMeter(dataset="nyud")
    meter.update(batch(logits), batch(gt))
    result = meter.result()
    assert 0 < result["edge_ap"] <= 100 and 0 < result["edge_odsf"] <= result["edge_oisf"] + 1e-9
    curve = meter.pr_curve()
    assert curve["threshold"].size == 101
    assert curve["recall"][0] > curve["recall"][-1] and curve["precision"][50] > curve["precision"][0]


def test_strict_threshold_in_single_precision():
    """A pixel whose value equals a threshold in float32 is dropped at that threshold (``>``, not ``>=``)."""
    edges = np.zeros((40, 40), dtype=np.uint8)
    edges[20, 8:32] = 51  # 51/255 = 0.2 exactly in float32 terms
    nms = boundary.seism_nms(edges)
    assert np.float32(51) / np.float32(255) == np.float32(0.2)
    kept = boundary.thresholded_maps(nms, [0.19, 0.2, 0.21])
    assert kept[0].size > 0 and kept[1].size == 0 and kept[2].size == 0


def test_gt_source_and_published_pascal_list():
    gt = boundary_map()
    labels = np.zeros(gt.shape, dtype=np.int64)
    labels[16:46, 11:70] = 7  # seg2bmap of this region is the rectangle
    listed = sorted(image_set("PASCALContext_test_new"))[:2]
    ids = [listed[0], "2099_000001", listed[1]]  # two published images and one that is not
    sources = {image_id: labels for image_id in ids}
    meter = EdgeMeter(dataset="pascal", gt_source=sources.__getitem__)
    assert meter.max_dist == 0.0075 and meter.protocol_label == "seism"
    for image_id in ids:
        meter.update(batch(logits_of(gt)), batch(gt), ids=[image_id])
    result = meter.result()
    assert set(result) == {"edge_odsf", "edge_oisf", "edge_ap", "edge_odsf_fullval", "edge_oisf_fullval",
                           "edge_ap_fullval"}
    assert result["edge_odsf"] > 80  # the inner stroke is a false positive
    assert EdgeMeter(dataset="pascal").protocol_label == "seism+target-gt"
    synthetic = EdgeMeter(dataset="pascal", gt_source=sources.__getitem__)
    synthetic.update(batch(logits_of(gt)), batch(gt), ids=["2099_000001"])
    assert set(synthetic.result()) == {"edge_odsf", "edge_oisf", "edge_ap"}  # no list applies
    wrong = EdgeMeter(dataset="pascal", gt_source=lambda image_id: labels[:-1])
    with pytest.raises(ValueError, match="original size"):
        wrong.update(batch(logits_of(gt)), batch(gt), ids=["x"])
    with pytest.raises(ValueError, match="protocol"):
        EdgeMeter(dataset="nyud", protocol="legacy")


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


def test_parallel_workers_give_the_sequential_counts():
    gt = boundary_map()
    rng = np.random.default_rng(3)
    logits = [np.where(gt, 2.0, -2.0) + rng.normal(0, 1.5, gt.shape) for _ in range(3)]
    meters = [
        EdgeMeter(max_dist=0.011),
        EdgeMeter(max_dist=0.011, num_workers=2, parallel="thread"),
        EdgeMeter(max_dist=0.011, num_workers=2, parallel="process"),
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


def test_maxflow_and_bsds_matchers_agree():
    pytest.importorskip("pyEdgeEval._lib.correspond_pixels")
    gt = boundary_map()
    rng = np.random.default_rng(2)
    logits = np.where(np.roll(gt, 1, axis=1), 2.0, -2.0) + rng.normal(0, 1.5, gt.shape)
    edges_uint8 = boundary.probabilities_to_uint8(1 / (1 + np.exp(-logits)))
    ground_truth = boundary.seism_ground_truth(gt)
    exact = boundary.image_boundary_counts(edges_uint8, ground_truth, max_dist=0.011, matcher="maxflow")
    bsds = boundary.image_boundary_counts(edges_uint8, ground_truth, max_dist=0.011, matcher="bsds")
    np.testing.assert_array_equal(exact[:, [1, 3]], bsds[:, [1, 3]])
    assert np.all(exact[:, 0] >= bsds[:, 0]) and np.abs(exact - bsds).max() <= 4


# --------------------------------------------------------------------------- pamm-bench edges
def _write_folder(root: Path, dataset: str, ids: list[str], rng: np.random.Generator, shape=(48, 64)):
    pred_dir, gt_dir = root / "pred", root / "gt"
    pred_dir.mkdir(parents=True)
    gt_dir.mkdir()
    for image_id in ids:
        labels = np.zeros(shape, dtype=np.uint16)
        labels[10:35, 12:50] = 3
        labels[20:30, 30:40] = 9
        edges = boundary.seg2bmap(labels)
        noisy = np.clip(ndimage.gaussian_filter(edges.astype(float), 1.0) * 2 + rng.normal(0, 0.1, shape), 0, 1)
        Image.fromarray((noisy * 255).astype(np.uint8)).save(pred_dir / f"{image_id}.png")
        if dataset == "nyud":
            Image.fromarray((edges * 255).astype(np.uint8)).save(gt_dir / f"{image_id}.png")
        else:
            sio.savemat(gt_dir / f"{image_id}.mat", {"LabelMap": labels})
    return pred_dir, gt_dir


def test_edges_verb_writes_scores_and_per_image_results(tmp_path):
    from pamm.cli import main

    rng = np.random.default_rng(8)
    listed = sorted(image_set("PASCALContext_test_new"))[:2]
    ids = listed + ["2099_000009"]
    pred_dir, gt_dir = _write_folder(tmp_path / "pascal", "pascal", ids, rng)
    out = tmp_path / "scores.json"
    assert main(["edges", "--pred", str(pred_dir), "--gt", str(gt_dir), "--dataset", "pascal", "--out", str(out),
                 "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["image_set"] == "PASCALContext_test_new" and sorted(result["per_image"]) == listed
    assert 0 < result["odsF"] <= 100 and 0 < result["oisF"] <= 100 and 0 <= result["AP"] <= 100
    assert set(result["per_image"][listed[0]]) == {"best_f", "best_threshold"}
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    assert main(["edges", "--pred", str(pred_dir), "--gt", str(gt_dir), "--dataset", "pascal", "--ids",
                 str(ids_file), "--threads", "2", "--out", str(out), "--no-progress"]) == 0
    assert sorted(json.loads(out.read_text())["per_image"]) == sorted(ids)

    nyud_pred, nyud_gt = _write_folder(tmp_path / "nyud", "nyud", ["0001", "0002"], rng)
    assert main(["edges", "--pred", str(nyud_pred), "--gt", str(nyud_gt), "--dataset", "nyud", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads(out.read_text())["n_images"] == 2


def test_edges_verb_errors_name_the_file_and_the_fix(tmp_path, capsys):
    from pamm.cli import main

    rng = np.random.default_rng(9)
    pred_dir, gt_dir = _write_folder(tmp_path, "nyud", ["0001", "0002"], rng)
    out = str(tmp_path / "scores.json")
    args = ["edges", "--pred", str(pred_dir), "--gt", str(gt_dir), "--dataset", "nyud", "--out", out, "--no-progress"]

    def error_of(*extra: str) -> str:
        assert main(args + list(extra)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("0001\n0003\n")
    assert "0003" in error_of("--ids", str(ids_file)) and "missing" in error_of("--ids", str(ids_file))
    Image.fromarray(np.zeros((40, 64), dtype=np.uint8)).save(pred_dir / "0002.png")
    message = error_of()
    assert "0002.png" in message and "40x64" in message and "original image size" in message
    Image.fromarray(np.zeros((48, 64), dtype=np.uint16)).save(pred_dir / "0002.png")
    message = error_of()
    assert "0002.png" in message and "8-bit" in message
    Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(pred_dir / "0002.png")
    assert "8-bit grayscale" in error_of()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeInputError, match="no <id>.png"):
        evaluate_edge_folder(tmp_path / "empty", gt_dir, "nyud", progress=False)


def test_bench_edges_runs(load_script, capsys):
    bench = load_script("benchmarks/bench_edges.py")
    assert bench.main(["--images", "1", "--size", "64x80", "--no-fixtures"]) == 0
    out = capsys.readouterr().out
    assert "101 thresholds" in out and "synthetic0" in out and "median" in out


def test_summary_records_the_edge_protocol(tmp_path):
    import yaml

    from pamm import io as pio
    from pamm.results.aggregate import aggregate

    for name, protocols in (("new", {"edge": "seism"}), ("old", None), ("depth_only", {})):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        tasks = ["depth"] if name == "depth_only" else ["semseg", "depth", "normals", "edge"]
        cfg = {"run": {"dataset": "nyud", "model": "mtl", "variant": name, "seed": 0, "scale": "tiny"},
               "model": {"backbone": {"name": "vit_tiny_patch16_224"}}, "data": {"size": [48, 64], "tasks": tasks},
               "train": {"iterations": 4}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        metrics = {"depth_rmse": 1.0} if name == "depth_only" else {"edge_odsf": 40.0, "edge_oisf": 41.0}
        record = {"metrics": metrics, "trivial": {}}
        if protocols is not None:
            record["protocols"] = protocols
        pio.write_json(run / "metrics.json", record)
    frame = aggregate(tmp_path / "runs", tmp_path / "summary.csv", quiet=True).set_index("variant")
    assert frame.loc["new", "edge_protocol"] == "seism"
    assert frame.loc["old", "edge_protocol"] == "pre-seism"  # evaluated before the protocol was recorded
    assert pd.isna(frame.loc["depth_only", "edge_protocol"])
