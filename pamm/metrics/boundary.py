"""Boundary (edge) evaluation core: SEISM's per-image counts in numpy/scipy, no torch, no meters.

What MATLAB SEISM does with an edge PNG, as used through prismformore's
Boundary-Detection-Evaluation-Tools for every published NYUD-v2 / PASCAL-Context odsF
(``read_one_cont_png`` → ``edgesEvalImg`` → BSDS ``correspondPixels``), and what this module
reproduces:

1. ``E = single(png) / 255``: the prediction is 8-bit, ``uint8(sigmoid * 255)`` truncated;
2. orientation ``O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi)`` from Piotr's
   ``gradient2`` of ``convTri(E, 4)`` (MATLAB order: x derivative first), then Piotr's
   ``edgesNmsMex(E, O, r=1, s=5, m=1.01)``. Both are emulated in single precision operation by
   operation (``conv_tri`` follows convConst's running sums), so the surviving pixels are SEISM's;
3. at each of the 101 thresholds of ``parameters/HED.txt`` (``HED_THRESHOLDS``):
   ``B = E > t`` (strict, in single precision), then ``bwmorph(B, 'thin', Inf)`` (``thin``);
4. ground truth ``thin(seg2bmap(G))``: G is the NYUD edge PNG read as a segmentation, or the
   PASCAL-Context LabelMap (``seism_ground_truth``);
5. a one-to-one matching of B and the ground truth within ``max_dist`` x the image diagonal
   (0.011 NYUD, 0.0075 PASCAL-Context) gives per threshold [cntR, sumR, cntP, sumP];
   ``ods_ois_ap`` turns the counts of a split into ODS / OIS / AP as SEISM's scripts do.

The one deliberate difference is the matcher. ``"maxflow"`` (default) finds an exact maximum
matching (unit-capacity max-flow, deterministic). BSDS ``correspondPixels`` samples its outlier
edges at random and finds 0-9 fewer pairs per image and threshold, never more, so exact counts sit
slightly above SEISM's (on its calibration output: +0.02 to +0.06 odsF, up to +0.09 AP; see
docs/boundary_seism.md). ``"bsds"`` runs the BSDS C++ matcher compiled by
``pyEdgeEval`` instead (randomised as in SEISM, far slower). sumR and sumP are SEISM's exactly.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow
from scipy.spatial import cKDTree

# Tolerance (fraction of the image diagonal) of SEISM's eval_method.m per dataset.
MAX_DIST: dict[str, float] = {"nyud": 0.011, "pascal": 0.0075}

# SEISM parameters/HED.txt: the thresholds the published evaluation scores (101 values).
HED_THRESHOLD_STRINGS: tuple[str, ...] = ("0.001",) + tuple(f"{k / 100:.2f}" for k in range(1, 100)) + ("0.999",)
HED_THRESHOLDS = np.array([float(text) for text in HED_THRESHOLD_STRINGS])

# Column order of the per-image count arrays.
COUNT_COLUMNS = ("cnt_recall", "sum_recall", "cnt_precision", "sum_precision")

MATCHERS = ("maxflow", "bsds")

_F32 = np.float32


def probabilities_to_uint8(probabilities: np.ndarray) -> np.ndarray:
    """``uint8(p * 255)`` truncated, exactly what the released code writes into edge PNGs."""
    scaled = np.clip(np.asarray(probabilities, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
    return scaled.astype(np.uint8)


# --------------------------------------------------------------------------- orientation + NMS
def _triangle_running_sums(image: np.ndarray, radius: int, normalise: bool) -> np.ndarray:
    """One pass of convConst's ``convTri`` along axis 0 of ``image`` (float32), rounding as its C.

    The filter [1 .. r+1 .. 1] is applied as two running sums with symmetric borders: ``t``
    accumulates (I[j-r-1] + I[j+r]) - 2 I[j-1] and ``u`` accumulates ``t``; the first pass also
    scales by 1 / (r+1)^4. numpy's cumsum adds in order, so every float32 rounding is the C code's.
    """
    length = image.shape[0]
    span = radius + 1
    first_t = image[0].copy()
    first_u = image[0].copy()
    for index in range(1, span):
        first_t = first_t + image[index]
        first_u = first_u + first_t
    steps = np.arange(1, length)
    left = np.where(steps <= span, span - steps, steps - 1 - span)
    right = np.where(steps > length - span, 2 * length - span - steps, steps - 1 + span)
    if normalise:  # convTri: columns, SSE loop: T += (Il + Ir) + (-2 Im); U += nrm T
        norm = _F32(1.0) / _F32(span**4)
        start = norm * (_F32(2.0) * first_u - first_t)
        delta = (image[left] + image[right]) + _F32(-2.0) * image[steps - 1]
        running = np.cumsum(delta, axis=0, dtype=np.float32)
        return np.cumsum(np.concatenate([start[None], norm * running]), axis=0, dtype=np.float32)
    # convTriY: rows, scalar loop: t += (I[a] + I[b]) - 2 I[j-1]; u += t
    start = _F32(2.0) * first_u - first_t
    delta = (image[left] + image[right]) - _F32(2.0) * image[steps - 1]
    running = np.cumsum(delta, axis=0, dtype=np.float32)
    return np.cumsum(np.concatenate([start[None], running]), axis=0, dtype=np.float32)


def conv_tri(image: np.ndarray, radius: int = 4) -> np.ndarray:
    """Piotr's ``convTri(I, r)`` for integer r >= 2 in float32, as its MEX computes it.

    Images too small for the MEX (``min(h, w) < 4`` or ``2r + 1 >= min(h, w)``) take
    ``convTri.m``'s own fallback: symmetric padding and a direct convolution.
    """
    if radius < 2:
        raise ValueError("only integer radii >= 2 are needed here")
    image = np.asarray(image, dtype=np.float32)
    if min(image.shape) < 4 or 2 * radius + 1 >= min(image.shape):
        kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]) / float((radius + 1) ** 2)
        padded = np.pad(image.astype(np.float64), radius, mode="symmetric")
        blurred = ndimage.convolve1d(ndimage.convolve1d(padded, kernel, axis=1), kernel, axis=0)
        return blurred[radius:-radius, radius:-radius].astype(np.float32)
    # MATLAB is column-major: the normalised pass runs across columns, convTriY down each column.
    across_columns = _triangle_running_sums(np.ascontiguousarray(image.T), radius, normalise=True).T
    return _triangle_running_sums(np.ascontiguousarray(across_columns), radius, normalise=False)


def edge_orientation(edges: np.ndarray) -> np.ndarray:
    """Boundary orientation in [0, pi) as SEISM's ``read_one_cont_png`` computes it (float32).

    ``[Ox, Oy] = gradient2(convTri(E, 4)); [Oxx, ~] = gradient2(Ox); [Oxy, Oyy] = gradient2(Oy)``
    with MATLAB's order (x = columns first), then ``mod(atan(Oyy .* sign(-Oxy) ./ (Oxx + 1e-5)), pi)``.
    numpy's ``gradient`` returns the row (y) derivative first, hence the explicit axes.
    """
    edges = np.asarray(edges, dtype=np.float32)
    if min(edges.shape) < 2:
        raise ValueError(f"an edge map needs at least 2x2 pixels, got {edges.shape}")
    smooth = conv_tri(edges, 4)
    grad_x = np.gradient(smooth, axis=1)  # gradient2: central differences * 0.5f, one-sided at borders
    grad_y = np.gradient(smooth, axis=0)
    grad_xx = np.gradient(grad_x, axis=1)
    grad_xy = np.gradient(grad_y, axis=1)
    grad_yy = np.gradient(grad_y, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (grad_yy * np.sign(-grad_xy)) / (grad_xx + _F32(1e-5))
    # atan in double rounded to single: the correctly rounded atanf that Octave's std::atan gives.
    angle = np.arctan(ratio.astype(np.float64)).astype(np.float32)
    # 0/0 (Oxx exactly -1e-5 where Oyy * sign(-Oxy) is 0) would make the MEX read out of bounds; 0 here.
    return np.nan_to_num(np.mod(angle, _F32(np.pi)), nan=0.0).astype(np.float32)


def _bilinear_clamped(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """edgesNmsMex's ``interp`` in float32: clamp to [0, size - 1.001], then bilinear."""
    height, width = image.shape
    x = np.where(x < 0, _F32(0.0), np.where(x.astype(np.float64) > width - 1.001, _F32(width - 1.001), x))
    y = np.where(y < 0, _F32(0.0), np.where(y.astype(np.float64) > height - 1.001, _F32(height - 1.001), y))
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx0 = x - x0.astype(np.float32)
    dy0 = y - y0.astype(np.float32)
    dx1 = _F32(1.0) - dx0
    dy1 = _F32(1.0) - dy0
    return (image[y0, x0] * dx1 * dy1 + image[y0, x0 + 1] * dx0 * dy1
            + image[y0 + 1, x0] * dx1 * dy0 + image[y0 + 1, x0 + 1] * dx0 * dy0)


def non_maximum_suppression(
    edges: np.ndarray, orientation: np.ndarray, radius: int = 1, border: int = 5, multiplier: float = 1.01
) -> np.ndarray:
    """Piotr's ``edgesNmsMex`` in float32: zero pixels weaker than a neighbour along O, fade borders.

    A pixel survives when ``multiplier * E`` is not below the bilinear value at each of the
    ``2 * radius`` points ``(x, y) + d (cos O, sin O)``; then values within ``border`` pixels of
    the image edge are scaled by (distance / border). Every operation rounds to single precision
    as the MEX does, so ties (E * 1.01 against a neighbour of 8-bit values) fall the same way.
    """
    edges = np.asarray(edges, dtype=np.float32)
    out = edges.copy()
    ys, xs = np.nonzero(edges)
    if ys.size:
        strength = edges[ys, xs] * _F32(multiplier)
        angle = orientation[ys, xs].astype(np.float64)
        cos_o = np.cos(angle).astype(np.float32)  # cosf/sinf: correctly rounded single results
        sin_o = np.sin(angle).astype(np.float32)
        col, row = xs.astype(np.float32), ys.astype(np.float32)
        suppressed = np.zeros(ys.size, dtype=bool)
        for step in range(-radius, radius + 1):
            if step:
                neighbour = _bilinear_clamped(edges, col + _F32(step) * cos_o, row + _F32(step) * sin_o)
                suppressed |= strength < neighbour
        out[ys[suppressed], xs[suppressed]] = 0.0
    height, width = out.shape
    border = min(border, width // 2, height // 2)
    for offset in range(border):
        scale = _F32(offset) / _F32(border)
        out[:, offset] *= scale
        out[:, width - 1 - offset] *= scale
    for offset in range(border):
        scale = _F32(offset) / _F32(border)
        out[offset, :] *= scale
        out[height - 1 - offset, :] *= scale
    return out


def seism_nms(edges_uint8: np.ndarray) -> np.ndarray:
    """The float32 map SEISM thresholds: ``im2single`` of the PNG, its orientation, NMS."""
    edges = np.asarray(edges_uint8)
    if edges.dtype != np.uint8 or edges.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 edge map, got {edges.dtype} {edges.shape}")
    image = edges.astype(np.float32) / _F32(255.0)
    return non_maximum_suppression(image, edge_orientation(image))


# --------------------------------------------------------------------------- thinning
@lru_cache(maxsize=1)
def _thinning_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of ``bwmorph(..., 'thin')`` (Lam, Lee, Suen 1992).

    Bit k of the code is neighbour x_{k+1}: x1 east, then counter-clockwise (NE, N, NW, W, SW,
    S, SE). A pixel is deleted when G1 (crossing number X_H = 1), G2 (2 <= min(n1, n2) <= 3) and
    G3 (first sub-iteration) or G3' (second) hold.
    """
    codes = np.arange(256)
    x = [None] + [(codes >> bit) & 1 for bit in range(8)] + [codes & 1]  # x[1..8], x[9] = x[1]
    crossing = sum(((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1])) for i in range(1, 5))
    n1 = sum((x[2 * k - 1] | x[2 * k]) for k in range(1, 5))
    n2 = sum((x[2 * k] | x[2 * k + 1]) for k in range(1, 5))
    smaller = np.minimum(n1, n2)
    g12 = (crossing == 1) & (smaller >= 2) & (smaller <= 3)
    g3 = ((x[2] | x[3] | (1 - x[8])) & x[1]) == 0
    g3p = ((x[6] | x[7] | (1 - x[4])) & x[5]) == 0
    return g12 & g3, g12 & g3p


def thin(mask: np.ndarray) -> np.ndarray:
    """``bwmorph(mask, 'thin', Inf)`` (= skimage's ``thin``), touching only foreground pixels.

    Each sub-iteration decides all pixels from the same state, as the parallel algorithm does,
    but evaluates only pixels whose 3x3 neighbourhood changed since that sub-iteration last saw
    them: on edge maps that are already nearly one pixel wide, most work is the first two passes.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    stride = width + 2
    padded = np.zeros((height + 2) * stride, dtype=np.uint8)  # outside the image counts as 0
    padded.reshape(height + 2, stride)[1:-1, 1:-1] = mask
    offsets = np.array([1, 1 - stride, -stride, -1 - stride, -1, stride - 1, stride, stride + 1])
    neighbourhood = np.concatenate([offsets, [0]])
    slot = np.empty(padded.size, dtype=np.int64)  # scratch for de-duplicating pixel lists

    def distinct(pixels: np.ndarray) -> np.ndarray:
        slot[pixels] = np.arange(pixels.size)
        return pixels[slot[pixels] == np.arange(pixels.size)]

    luts = _thinning_luts()
    pending: list[np.ndarray | None] = [None, None]  # None: every foreground pixel
    sub = 0
    while pending[0] is None or pending[1] is None or pending[0].size or pending[1].size:
        candidates = pending[sub]
        candidates = np.flatnonzero(padded) if candidates is None else candidates[padded[candidates] == 1]
        code = np.zeros(candidates.size, dtype=np.uint8)
        for bit, offset in enumerate(offsets):
            code |= padded[candidates + offset] << np.uint8(bit)
        deleted = candidates[luts[sub][code]]
        padded[deleted] = 0
        touched = (deleted[:, None] + neighbourhood).ravel()
        touched = distinct(touched[padded[touched] == 1])
        pending[sub] = touched
        other = pending[1 - sub]
        if other is not None and touched.size:
            pending[1 - sub] = distinct(np.concatenate([other, touched]))
        sub = 1 - sub
    return padded.reshape(height + 2, stride)[1:-1, 1:-1].astype(bool)


# --------------------------------------------------------------------------- ground truth
def seg2bmap(labels: np.ndarray) -> np.ndarray:
    """BSDS ``seg2bmap``: pixels whose label differs from the right, lower or lower-right neighbour."""
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


def seism_ground_truth(segmentation: np.ndarray) -> np.ndarray:
    """The boundary map SEISM matches against: ``thin(seg2bmap(G))``.

    ``segmentation``: what SEISM's ``db_gt`` reads. NYUD: the edge PNG itself (0/255, or the 0/1
    map the loader makes of it: the same outline), read as a segmentation, so seg2bmap outlines
    both sides of every annotated line and thinning leaves one line. PASCAL-Context: the
    LabelMap. SEISM relabels it into 4-connected regions first, which cannot change seg2bmap: a
    lower-right neighbour of equal value but in another region means the right neighbour differs.
    """
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2:
        raise ValueError(f"expected a 2-D ground truth, got shape {segmentation.shape}")
    return thin(seg2bmap(segmentation.astype(np.int64)))


# --------------------------------------------------------------------------- matching
def bsds_matcher_available() -> bool:
    try:
        from pyEdgeEval._lib.correspond_pixels import correspond_pixels  # noqa: F401
    except ImportError:
        return False
    return True


def _match_counts_bsds(predicted: np.ndarray, ground_truth: np.ndarray, max_dist: float) -> int:
    from pyEdgeEval._lib.correspond_pixels import correspond_pixels

    _, matched_gt, _, _ = correspond_pixels(
        predicted.astype(np.float64), ground_truth.astype(np.float64), max_dist=max_dist, outlier_cost=100.0
    )
    return int(np.count_nonzero(matched_gt))


class _WarmMatcher:
    """Exact maximum matchings between changing sets of predicted pixels and a fixed GT map.

    The pairs within the tolerance are found once, for every pixel that any threshold can keep.
    Each new predicted set starts from the previous matching restricted to it; only the missing
    augmenting paths are searched, as a unit-capacity max-flow (Dinic, scipy) on the residual
    network: source -> free predictions, prediction -> GT on unmatched pairs, GT -> its matched
    prediction, free GT -> sink (searched from whichever end has fewer free pixels). A set that
    only lost unmatched pixels keeps its maximum matching without a search. scipy's
    ``maximum_bipartite_matching`` is not used: its DFS does not mark dead ends and takes
    exponential time on the chain-like graphs that boundaries make.
    """

    def __init__(self, candidates: np.ndarray, ground_truth: np.ndarray, max_dist: float):
        height, width = ground_truth.shape
        radius = max_dist * float(np.hypot(height, width))  # as correspondPixels: fraction of the diagonal
        gt_yx = np.argwhere(ground_truth)
        self.num_gt = gt_yx.shape[0]
        self.row_of = np.full(height * width, -1, dtype=np.int64)
        self.pairs = csr_array((0, max(self.num_gt, 1)), dtype=np.int32)
        if self.num_gt == 0 or candidates.size == 0:
            self._reset_state(0)
            return
        # Only candidates within reach of some GT pixel can ever match.
        distance = ndimage.distance_transform_edt(~ground_truth)
        near = candidates[distance.ravel()[candidates] <= radius]
        near_yx = np.column_stack(np.unravel_index(near, (height, width)))
        pairs = cKDTree(near_yx).sparse_distance_matrix(cKDTree(gt_yx), radius, output_type="ndarray")
        rows = np.unique(pairs["i"])
        self.row_of[near[rows]] = np.arange(rows.size)
        remap = np.full(near.size, -1, dtype=np.int64)
        remap[rows] = np.arange(rows.size)
        self.pairs = csr_array(
            (np.ones(pairs.size, dtype=np.int32), (remap[pairs["i"]], pairs["j"].astype(np.int64))),
            shape=(rows.size, self.num_gt),
        )
        self.pairs.sum_duplicates()
        self.pairs.sort_indices()
        self._reset_state(rows.size)

    def _reset_state(self, num_rows: int) -> None:
        self.mate_of_row = np.full(num_rows, -1, dtype=np.int64)
        self.mate_of_gt = np.full(max(self.num_gt, 0), -1, dtype=np.int64)
        self.present = np.zeros(num_rows, dtype=bool)

    def matched(self, kept: np.ndarray) -> int:
        """Size of a maximum matching of the predicted pixels ``kept`` (flat indices)."""
        rows = self.row_of[kept]
        rows = np.sort(rows[rows >= 0])
        present = np.zeros(self.mate_of_row.size, dtype=bool)
        present[rows] = True
        gone = np.flatnonzero(~present & (self.mate_of_row >= 0))
        self.mate_of_gt[self.mate_of_row[gone]] = -1
        self.mate_of_row[gone] = -1
        arrived = bool(np.any(present & ~self.present))
        self.present = present
        size = int(np.count_nonzero(self.mate_of_row >= 0))
        # Still maximum: every kept pixel or every GT pixel is matched, or the kept set only lost
        # unmatched pixels since the last (maximum) matching, so its maximum cannot have grown.
        if rows.size == 0 or size == rows.size or size == self.num_gt or not (gone.size or arrived):
            return size
        self._augment(rows)
        return int(np.count_nonzero(self.mate_of_row >= 0))

    def _augment(self, rows: np.ndarray) -> None:
        num_gt, num_rows = self.num_gt, rows.size
        sub = self.pairs[rows]  # (num_rows, num_gt), sorted indices
        mates = self.mate_of_row[rows]
        free_rows = np.flatnonzero(mates < 0)
        # Nodes: 0 source, 1..G ground truth, G+1..G+R kept predictions, G+R+1 sink.
        sink = num_gt + num_rows + 1
        local = np.full(self.mate_of_row.size, -1, dtype=np.int64)
        local[rows] = np.arange(num_rows)
        gt_mate = self.mate_of_gt
        gt_target = np.where(gt_mate >= 0, num_gt + 1 + local[np.maximum(gt_mate, 0)], sink)
        row_of_edge = np.repeat(np.arange(num_rows), np.diff(sub.indptr))
        keep_edge = sub.indices != mates[row_of_edge]  # the matched pair runs backwards, GT -> prediction
        edge_counts = np.bincount(row_of_edge[keep_edge], minlength=num_rows)
        indices = np.concatenate([
            num_gt + 1 + free_rows,
            gt_target,
            sub.indices[keep_edge] + 1,
        ]).astype(np.int32)
        indptr = np.concatenate([
            [0, free_rows.size],
            free_rows.size + np.arange(1, num_gt + 1),
            free_rows.size + num_gt + np.cumsum(edge_counts),
            [free_rows.size + num_gt + int(edge_counts.sum())],
        ]).astype(np.int32)
        network = csr_array((np.ones(indices.size, dtype=np.int32), indices, indptr), shape=(sink + 1, sink + 1))
        # Search from the side with fewer free pixels (many free predictions at low thresholds, many
        # free GT pixels at high ones): the same flow on the reversed network, sink to source.
        from_gt_side = np.count_nonzero(gt_mate < 0) < free_rows.size
        if from_gt_side:
            network = csr_array(network.T)
            flow = maximum_flow(network, sink, 0, method="dinic")
        else:
            flow = maximum_flow(network, 0, sink, method="dinic")
        if flow.flow_value == 0:
            return
        moved = flow.flow.tocoo()
        used = moved.data > 0
        tail, head = (moved.col[used], moved.row[used]) if from_gt_side else (moved.row[used], moved.col[used])
        # GT -> prediction carrying flow: that pair is undone; prediction -> GT: that pair is made.
        undone = (tail >= 1) & (tail <= num_gt) & (head > num_gt) & (head < sink)
        made = (tail > num_gt) & (tail < sink) & (head >= 1) & (head <= num_gt)
        undone_rows = rows[head[undone] - num_gt - 1]
        self.mate_of_row[undone_rows] = -1
        self.mate_of_gt[tail[undone] - 1] = -1
        made_rows = rows[tail[made] - num_gt - 1]
        self.mate_of_row[made_rows] = head[made] - 1
        self.mate_of_gt[head[made] - 1] = made_rows


# --------------------------------------------------------------------------- per-image counts
def thresholded_maps(nms: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> list[np.ndarray]:
    """Flat indices of ``thin(nms > t)`` at each threshold (strict ``>`` in single precision)."""
    nms = np.asarray(nms, dtype=np.float32)
    out = []
    for threshold in np.asarray(thresholds, dtype=np.float64):
        kept = nms > _F32(threshold)
        out.append(np.flatnonzero(thin(kept)) if kept.any() else np.zeros(0, dtype=np.int64))
    return out


def image_boundary_counts(
    edges_uint8: np.ndarray,
    ground_truth: np.ndarray,
    *,
    max_dist: float,
    thresholds: Sequence[float] | np.ndarray = HED_THRESHOLDS,
    matcher: str = "maxflow",
) -> np.ndarray:
    """(K, 4) int64 counts [cntR, sumR, cntP, sumP] of one image at each of the K thresholds.

    ``edges_uint8``: the 8-bit prediction (H, W) of one image, cropped to its original size;
    ``ground_truth``: the (H, W) boundary map SEISM matches against (``seism_ground_truth``).
    """
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    edges_uint8 = np.asarray(edges_uint8)
    ground_truth = np.asarray(ground_truth).astype(bool)
    if edges_uint8.shape != ground_truth.shape or edges_uint8.ndim != 2:
        raise ValueError(f"prediction {edges_uint8.shape} and ground truth {ground_truth.shape} must be equal 2-D")
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    nms = seism_nms(edges_uint8)
    kept_sets = thresholded_maps(nms, thresholds)
    sum_recall = int(np.count_nonzero(ground_truth))
    counts = np.zeros((thresholds.size, 4), dtype=np.int64)
    counts[:, 1] = sum_recall
    counts[:, 3] = [kept.size for kept in kept_sets]
    if sum_recall == 0:
        return counts
    if matcher == "maxflow":
        union = np.flatnonzero(nms > _F32(thresholds.min()))
        pair_matcher = _WarmMatcher(union, ground_truth, max_dist)
        # From the lowest threshold up: the maps shrink (nearly nested), so a threshold that loses
        # only unmatched pixels needs no search, and the others only a few augmenting paths.
        for index in np.argsort(thresholds, kind="stable"):
            counts[index, [0, 2]] = pair_matcher.matched(kept_sets[index])
    else:
        for index, kept in enumerate(kept_sets):
            if kept.size:
                if index and np.array_equal(kept, kept_sets[index - 1]):
                    counts[index, [0, 2]] = counts[index - 1, 0]
                    continue
                predicted = np.zeros(ground_truth.size, dtype=bool)
                predicted[kept] = True
                counts[index, [0, 2]] = _match_counts_bsds(predicted.reshape(ground_truth.shape), ground_truth,
                                                            max_dist)
    return counts


# --------------------------------------------------------------------------- aggregation
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


def best_per_image(per_image_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's best F over the thresholds and the index of that threshold (first on ties)."""
    scores = f_measure(*precision_recall(np.asarray(per_image_counts, dtype=np.float64)))
    best = scores.argmax(axis=-1)
    return np.take_along_axis(scores, best[..., None], axis=-1)[..., 0], best


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

    _, best = best_per_image(per_image_counts)
    at_best = per_image_counts[np.arange(per_image_counts.shape[0]), best].sum(axis=0)
    ois = float(f_measure(*precision_recall(at_best)))

    unique_recall, first_index = np.unique(recall, return_index=True)
    ap = 0.0
    if unique_recall.size > 1:
        grid = np.linspace(0.0, 1.0, 101)
        inside = (grid >= unique_recall[0]) & (grid <= unique_recall[-1])
        ap = float(np.interp(grid[inside], unique_recall, precision[first_index]).sum() / 100.0)
    return {"odsf": ods, "oisf": ois, "ap": ap}
