"""Boundary (edge) evaluation core: per-image SEISM-style counts, no torch, no meters.

What MATLAB SEISM does with the released models' edge PNGs (prismformore's
``read_one_cont_png`` + SEISM ``eval_cont`` → Piotr's ``edgesEvalImg(..., 'thin', 0)``):

1. read the PNG as ``single(png) / 255`` (so the prediction is 8-bit: ``uint8(sigmoid * 255)``,
   truncated, as the released code writes it);
2. orientation ``O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi)`` from the gradients of
   ``convTri(E, 4)``, then Piotr's ``edgesNmsMex(E, O, r=1, s=5, m=1.01)``;
3. for every threshold ``t``: ``B = E >= max(eps, t)`` (no thinning), and a one-to-one
   correspondence between ``B`` and the ground-truth boundary map within
   ``max_dist * image diagonal`` pixels (BSDS ``correspondPixels``);
4. per threshold the counts cntR (matched GT pixels), sumR (GT pixels), cntP (matched predicted
   pixels), sumP (predicted pixels); ``ods_ois_ap`` turns the counts of a split into ODS/OIS/AP.

Two matchers. ``"maxflow"`` (default) is an exact, deterministic maximum-cardinality matching
between the predicted and GT pixels that lie within the tolerance (unit-capacity max-flow).
``"bsds"`` calls the BSDS C++ matcher that ``pyEdgeEval`` compiles (the same code as SEISM's
``correspondPixels``; its sparse outlier graph is seeded from the clock, so counts can change by
a pixel between runs, and it is ~100x slower). BSDS minimises a cost in which an unmatched pixel
costs 100x the tolerance, so it also maximises the number of matches, up to its approximation:
on 448x576 synthetic maps the two differed by at most 4 matched pixels out of ~4800.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow
from scipy.spatial import cKDTree

# Tolerance (fraction of the image diagonal) of SEISM's eval_method.m per dataset.
MAX_DIST: dict[str, float] = {"nyud": 0.011, "pascal": 0.0075}

# Column order of the per-image count arrays.
COUNT_COLUMNS = ("cnt_recall", "sum_recall", "cnt_precision", "sum_precision")

MATCHERS = ("maxflow", "bsds")
GT_TRANSFORMS = ("none", "seg2bmap")


def default_thresholds(count: int = 99) -> np.ndarray:
    """``count`` evenly spaced thresholds strictly inside (0, 1): k/(count+1), as Piotr's edgesEval."""
    if count < 1:
        raise ValueError(f"need at least one threshold, got {count}")
    return np.arange(1, count + 1, dtype=np.float64) / (count + 1)


def probabilities_to_uint8(probabilities: np.ndarray) -> np.ndarray:
    """``uint8(p * 255)`` truncated, exactly what the released code writes into edge PNGs."""
    scaled = np.clip(np.asarray(probabilities, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
    return scaled.astype(np.uint8)


def triangle_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Piotr's ``convTri`` for integer radius >= 2: separable triangle filter, symmetric padding."""
    if radius < 2:
        raise ValueError("only integer radii >= 2 are needed here")
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]).astype(image.dtype)
    kernel /= kernel.sum()
    # scipy's "reflect" (d c b a | a b c d) is MATLAB's padarray 'symmetric'.
    blurred = ndimage.convolve1d(image, kernel, axis=0, mode="reflect")
    return ndimage.convolve1d(blurred, kernel, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray) -> np.ndarray:
    """Boundary normal angle in [0, pi) as computed in SEISM's ``read_one_cont_png``."""
    smooth = triangle_blur(edges, 4)
    grad_y, grad_x = np.gradient(smooth)  # Piotr's gradient2: central inside, one-sided at borders
    grad_xy, grad_yy = np.gradient(grad_y)
    _, grad_xx = np.gradient(grad_x)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = grad_yy * np.sign(-grad_xy) / (grad_xx + np.float32(1e-5))
    return np.mod(np.arctan(ratio), np.pi)


def _bilinear_clamped(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup with the coordinate clamping of Piotr's edgesNmsMex ``interp``."""
    height, width = image.shape
    x = np.clip(x, 0.0, width - 1.001)
    y = np.clip(y, 0.0, height - 1.001)
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx, dy = x - x0, y - y0
    return (
        image[y0, x0] * (1 - dx) * (1 - dy)
        + image[y0, x0 + 1] * dx * (1 - dy)
        + image[y0 + 1, x0] * (1 - dx) * dy
        + image[y0 + 1, x0 + 1] * dx * dy
    )


def non_maximum_suppression(
    edges: np.ndarray, orientation: np.ndarray, radius: int = 1, border: int = 5, multiplier: float = 1.01
) -> np.ndarray:
    """Piotr's ``edgesNmsMex``: zero pixels weaker than a neighbour along the normal, fade borders.

    A pixel survives when ``multiplier * E`` is not below the bilinear value at each of the
    ``2 * radius`` points along the normal; then values within ``border`` pixels of the image
    edge are scaled by (distance / border), as in the MEX file.
    """
    edges64 = edges.astype(np.float64)
    out = edges64.copy()
    ys, xs = np.nonzero(edges64)
    if ys.size:
        strength = edges64[ys, xs] * multiplier
        cos_o = np.cos(orientation[ys, xs].astype(np.float64))
        sin_o = np.sin(orientation[ys, xs].astype(np.float64))
        suppressed = np.zeros(ys.size, dtype=bool)
        for step in range(-radius, radius + 1):
            if step == 0:
                continue
            neighbour = _bilinear_clamped(edges64, xs + step * cos_o, ys + step * sin_o)
            suppressed |= strength < neighbour
        out[ys[suppressed], xs[suppressed]] = 0.0
    height, width = out.shape
    border = min(border, width // 2, height // 2)
    for offset in range(border):
        scale = offset / border
        out[:, offset] *= scale
        out[:, width - 1 - offset] *= scale
    for offset in range(border):
        scale = offset / border
        out[offset, :] *= scale
        out[height - 1 - offset, :] *= scale
    return out


def seg2bmap(labels: np.ndarray) -> np.ndarray:
    """BSDS ``seg2bmap``: pixels whose label differs from the right, lower or lower-right neighbour.

    SEISM applies it to every ground truth; for NYUD the "segmentation" it receives is the
    0/255 edge PNG itself, so the boundary map it evaluates against is the outline of the
    annotated edge bands, not the bands.
    """
    labels = np.asarray(labels)
    right = np.zeros_like(labels)
    below = np.zeros_like(labels)
    below_right = np.zeros_like(labels)
    right[:, :-1] = labels[:, 1:]
    below[:-1, :] = labels[1:, :]
    below_right[:-1, :-1] = labels[1:, 1:]
    boundary = (labels != right) | (labels != below) | (labels != below_right)
    boundary[-1, :] = labels[-1, :] != right[-1, :]
    boundary[:, -1] = labels[:, -1] != below[:, -1]
    boundary[-1, -1] = False
    return boundary


def bsds_matcher_available() -> bool:
    try:
        from pyEdgeEval._lib.correspond_pixels import correspond_pixels  # noqa: F401
    except ImportError:
        return False
    return True


def _match_counts_bsds(predicted: np.ndarray, ground_truth: np.ndarray, max_dist: float) -> tuple[int, int]:
    from pyEdgeEval._lib.correspond_pixels import correspond_pixels

    matched_pred, matched_gt, _, _ = correspond_pixels(
        predicted.astype(np.float64), ground_truth.astype(np.float64), max_dist=max_dist, outlier_cost=100.0
    )
    return int(np.count_nonzero(matched_gt)), int(np.count_nonzero(matched_pred))


class _NestedMatcher:
    """Maximum-cardinality matching between the predicted pixels above a cutoff and the GT pixels.

    Pairs within the tolerance are found once per image (KD-trees) for the lowest cutoff. The
    predicted pixels are ordered by decreasing value, so the pixels kept at any cutoff are a
    prefix of the rows of one biadjacency matrix. Each matching is solved as a unit-capacity
    max-flow (Dinic, scipy), which on bipartite graphs is the Hopcroft-Karp bound O(E sqrt(V)).
    scipy's ``maximum_bipartite_matching`` is not used: its DFS does not mark dead ends and
    takes exponential time on the chain-like graphs that boundary pixels make (scipy#26147).
    """

    def __init__(self, edges: np.ndarray, lowest_cutoff: float, ground_truth: np.ndarray, max_dist: float):
        height, width = ground_truth.shape
        radius = max_dist * float(np.hypot(height, width))  # as correspondPixels: fraction of the diagonal
        candidate_yx = np.argwhere(edges >= lowest_cutoff)
        gt_yx = np.argwhere(ground_truth)
        self.num_gt = gt_yx.shape[0]
        self.row_values = np.zeros(0)
        self.biadjacency = csr_array((0, max(self.num_gt, 1)), dtype=np.int32)
        if candidate_yx.shape[0] == 0 or self.num_gt == 0:
            return
        pairs = cKDTree(candidate_yx).sparse_distance_matrix(cKDTree(gt_yx), radius, output_type="ndarray")
        if pairs.size == 0:
            return
        values = edges[candidate_yx[:, 0], candidate_yx[:, 1]]
        # Rows: candidates that have at least one GT pixel in reach, by decreasing value.
        paired, pair_rows = np.unique(pairs["i"], return_inverse=True)
        by_value = np.argsort(-values[paired], kind="stable")
        rank = np.empty_like(by_value)
        rank[by_value] = np.arange(by_value.size)
        self.row_values = values[paired][by_value]
        self.biadjacency = csr_array(
            (np.ones(pairs.size, dtype=np.int32), (rank[pair_rows], pairs["j"].astype(np.int64))),
            shape=(paired.size, self.num_gt),
        )
        self.biadjacency.sum_duplicates()

    def matched(self, cutoff: float) -> int:
        """Size of a maximum matching that uses only predicted pixels with value >= ``cutoff``."""
        kept = int(np.count_nonzero(self.row_values >= cutoff))  # row_values is sorted: a prefix
        if kept == 0:
            return 0
        adjacency = self.biadjacency
        num_edges = int(adjacency.indptr[kept])
        num_gt = self.num_gt
        # Nodes: 0 source, 1..G ground truth, G+1..G+kept predictions, G+kept+1 sink.
        sink = num_gt + kept + 1
        indices = np.concatenate([
            np.arange(num_gt + 1, num_gt + kept + 1),  # source -> each prediction
            np.full(num_gt, sink),  # each GT pixel -> sink
            adjacency.indices[:num_edges] + 1,  # prediction -> GT pixels in reach
        ]).astype(np.int32)
        indptr = np.concatenate([
            [0, kept],
            kept + np.arange(1, num_gt + 1),
            kept + num_gt + adjacency.indptr[1 : kept + 1],
            [kept + num_gt + num_edges],
        ]).astype(np.int32)
        network = csr_array((np.ones(indices.size, dtype=np.int32), indices, indptr), shape=(sink + 1, sink + 1))
        return int(maximum_flow(network, 0, sink, method="dinic").flow_value)


def image_boundary_counts(
    edges_uint8: np.ndarray,
    ground_truth: np.ndarray,
    *,
    max_dist: float,
    thresholds: Sequence[float] | np.ndarray,
    matcher: str = "maxflow",
    nms: bool = True,
    gt_transform: str = "none",
) -> np.ndarray:
    """(K, 4) int64 counts [cntR, sumR, cntP, sumP] of one image at each of the K thresholds.

    ``edges_uint8``: the 8-bit prediction (H, W) of one image, already cropped to its original
    size; ``ground_truth``: (H, W) boolean/0-1 boundary map of the same size. Predicted pixels at
    threshold t are ``E >= max(eps, t)`` after NMS (no thinning, as SEISM with NMS input).
    """
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    if gt_transform not in GT_TRANSFORMS:
        raise ValueError(f"gt_transform must be one of {GT_TRANSFORMS}, got {gt_transform!r}")
    edges_uint8 = np.asarray(edges_uint8)
    ground_truth = np.asarray(ground_truth)
    if edges_uint8.shape != ground_truth.shape or edges_uint8.ndim != 2:
        raise ValueError(f"prediction {edges_uint8.shape} and ground truth {ground_truth.shape} must be equal 2-D")
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()

    edges = edges_uint8.astype(np.float32) / np.float32(255.0)  # MATLAB im2single
    if nms:
        edges = non_maximum_suppression(edges, edge_orientation(edges))
    gt_map = seg2bmap(ground_truth.astype(np.uint8)) if gt_transform == "seg2bmap" else ground_truth.astype(bool)
    sum_recall = int(np.count_nonzero(gt_map))

    cutoffs = np.maximum(np.finfo(np.float64).eps, thresholds)
    order = np.argsort(cutoffs, kind="stable")  # ascending: predicted sets shrink along ``order``
    sorted_cutoffs = cutoffs[order]
    candidates = edges >= sorted_cutoffs[0]
    candidate_values = edges[candidates]
    sorted_values = np.sort(candidate_values)
    sum_precision = sorted_values.size - np.searchsorted(sorted_values, sorted_cutoffs, side="left")

    matched = np.zeros((order.size, 2), dtype=np.int64)  # [cntR, cntP] per sorted cutoff
    if sum_recall and candidate_values.size:
        if matcher == "maxflow":
            pair_matcher = _NestedMatcher(edges, sorted_cutoffs[0], gt_map, max_dist)
            sizes = _monotone_matching_sizes(pair_matcher, sorted_cutoffs, sum_precision, sum_recall)
            matched[:] = sizes[:, None]  # one-to-one: as many GT pixels as predicted pixels matched
        else:
            matched = _bsds_matching_sizes(edges, gt_map, max_dist, sorted_cutoffs, sum_precision)

    counts = np.zeros((order.size, 4), dtype=np.int64)
    counts[order, 0] = matched[:, 0]
    counts[order, 1] = sum_recall
    counts[order, 2] = matched[:, 1]
    counts[order, 3] = sum_precision
    return counts


def _monotone_matching_sizes(
    pair_matcher: _NestedMatcher,
    sorted_cutoffs: np.ndarray,
    sum_precision: np.ndarray,
    sum_recall: int,
) -> np.ndarray:
    """Maximum matching size at each ascending cutoff, solving as few matchings as possible.

    The predicted sets are nested, so the exact maximum matching size M is non-increasing along
    the cutoffs and never above min(#predicted, #GT). Between two solved cutoffs ``low < high``,
    M(k) lies in [M(high), min(M(low), #predicted(k))]; where that range is one value it is
    filled in without solving; otherwise the interval is bisected.
    """
    count = sorted_cutoffs.size
    upper = np.minimum(sum_precision, sum_recall).astype(np.int64)
    sizes = np.where(upper == 0, 0, -1).astype(np.int64)

    def solve(index: int) -> int:
        if sizes[index] < 0:
            sizes[index] = pair_matcher.matched(float(sorted_cutoffs[index]))
        return int(sizes[index])

    def fill(low: int, high: int) -> None:
        size_low, size_high = solve(low), solve(high)
        if high - low <= 1:
            return
        inner = slice(low + 1, high)
        bound = np.minimum(upper[inner], size_low)
        if np.all(bound == size_high):
            sizes[inner] = size_high
            return
        middle = (low + high) // 2
        fill(low, middle)
        fill(middle, high)

    fill(0, count - 1)
    return sizes


def _bsds_matching_sizes(
    edges: np.ndarray, gt_map: np.ndarray, max_dist: float, sorted_cutoffs: np.ndarray, sum_precision: np.ndarray
) -> np.ndarray:
    """(K, 2) [cntR, cntP] from the BSDS matcher at every cutoff (it is approximate: no shortcuts
    beyond reusing the result of an identical predicted map)."""
    counts = np.zeros((sorted_cutoffs.size, 2), dtype=np.int64)
    for index, cutoff in enumerate(sorted_cutoffs):
        if sum_precision[index] == 0:
            continue
        if index and sum_precision[index] == sum_precision[index - 1]:
            counts[index] = counts[index - 1]  # nested sets with equal size are the same set
            continue
        counts[index] = _match_counts_bsds(edges >= cutoff, gt_map, max_dist)
    return counts


def precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall from [..., 4] counts with SEISM's conventions for empty sets.

    No GT and no prediction matched: recall 1, precision 0; no prediction: recall 0, precision
    1; otherwise the plain ratios (0/0 cases left at 0, as ``gather_measure.m``).
    """
    counts = np.asarray(counts, dtype=np.float64)
    cnt_r, sum_r, cnt_p, sum_p = (counts[..., i] for i in range(4))
    recall = np.zeros_like(cnt_r)
    precision = np.zeros_like(cnt_r)
    no_gt = (sum_r == 0) & (cnt_p == 0)
    recall[no_gt], precision[no_gt] = 1.0, 0.0
    no_pred = (sum_p == 0) & (cnt_r == 0)
    recall[no_pred], precision[no_pred] = 0.0, 1.0
    regular = (sum_p != 0) & (sum_r != 0)
    recall[regular] = cnt_r[regular] / sum_r[regular]
    precision[regular] = cnt_p[regular] / sum_p[regular]
    return precision, recall


def f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    total = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1.0), 0.0)


def ods_ois_ap(per_image_counts: np.ndarray) -> dict[str, float]:
    """ODS F, OIS F and AP (fractions in [0, 1]) from (N_images, K, 4) counts, as SEISM.

    ODS: counts pooled over images at each threshold, F at the best single threshold.
    OIS: each image's best threshold by its own F (first on ties), counts pooled at those.
    AP: SEISM ``general_ap``: precision linearly interpolated at recall 0, 0.01, ..., 1 within
    the recall range of the dataset PR curve (one point per distinct recall), summed / 100.
    """
    per_image_counts = np.asarray(per_image_counts, dtype=np.float64)
    if per_image_counts.ndim != 3 or per_image_counts.shape[-1] != 4 or per_image_counts.shape[0] == 0:
        raise ValueError(f"expected (N_images > 0, K, 4) counts, got shape {per_image_counts.shape}")
    pooled = per_image_counts.sum(axis=0)
    precision, recall = precision_recall(pooled)
    f_per_threshold = f_measure(precision, recall)
    ods = float(f_per_threshold.max())

    image_precision, image_recall = precision_recall(per_image_counts)
    best = f_measure(image_precision, image_recall).argmax(axis=1)
    at_best = per_image_counts[np.arange(per_image_counts.shape[0]), best].sum(axis=0)
    ois = float(f_measure(*precision_recall(at_best)))

    unique_recall, first_index = np.unique(recall, return_index=True)
    ap = 0.0
    if unique_recall.size > 1:
        grid = np.linspace(0.0, 1.0, 101)
        inside = (grid >= unique_recall[0]) & (grid <= unique_recall[-1])
        ap = float(np.interp(grid[inside], unique_recall, precision[first_index]).sum() / 100.0)
    return {"odsf": ods, "oisf": ois, "ap": ap}
