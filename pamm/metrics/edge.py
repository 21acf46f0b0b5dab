"""Boundary detection: ODS F, OIS F and AP computed in Python, SEISM-style (see ``boundary.py``).

The published numbers of InvPT/TaskPrompter/MTMamba/PAMM come from MATLAB SEISM on 8-bit edge
PNGs (sigmoid * 255). This meter evaluates the same 8-bit maps, cropped to each image's original
size (padding never counts), with SEISM's NMS, tolerance (``max_dist`` x image diagonal: 0.011
NYUD, 0.0075 PASCAL-Context) and ODS/OIS/AP definitions. It has not been calibrated against
SEISM runs on released checkpoints, so its numbers are not directly comparable with published
odsF; ``save_edge_pngs`` writes the PNGs SEISM reads, for users who can run MATLAB.

The per-image work (NMS + one matching per threshold) is the expensive part of evaluation;
``num_workers > 1`` spreads images over a process (or thread) pool while the model keeps
predicting, and ``result()`` waits for the stragglers.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import expit

from pamm.io import atomic_path
from pamm.metrics import boundary
from pamm.metrics._common import batch_prediction, batch_target, check_same_layout, percent, resolve_meta, to_numpy
from pamm.tasks import IGNORE_INDEX

PAD_POSITIONS = ("top_left", "center")
PARALLEL_KINDS = ("process", "thread")


def crop_box(
    height: int, width: int, orig_size: Sequence[int], pad_position: str = "top_left"
) -> tuple[slice, slice]:
    """Where an original (h, w) image sits in the padded (height, width) tensor."""
    if pad_position not in PAD_POSITIONS:
        raise ValueError(f"pad_position must be one of {PAD_POSITIONS}, got {pad_position!r}")
    orig_height, orig_width = (int(v) for v in orig_size)
    if not (0 < orig_height <= height and 0 < orig_width <= width):
        raise ValueError(f"original size {(orig_height, orig_width)} does not fit in the tensor {(height, width)}")
    top, left = 0, 0
    if pad_position == "center":  # ATRC PadImage puts the image at (delta // 2, delta // 2)
        top, left = (height - orig_height) // 2, (width - orig_width) // 2
    return slice(top, top + orig_height), slice(left, left + orig_width)


def valid_box(target: np.ndarray, ignore_index: int = IGNORE_INDEX) -> tuple[slice, slice] | None:
    """Bounding box of the non-padding pixels of one (H, W) edge target, None when all are padding."""
    rows = np.flatnonzero(np.any(target != ignore_index, axis=1))
    cols = np.flatnonzero(np.any(target != ignore_index, axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _check_image_id(image_id: str) -> str:
    image_id = str(image_id)
    if not image_id or os.sep in image_id or (os.altsep and os.altsep in image_id) or image_id in {".", ".."}:
        raise ValueError(f"image id {image_id!r} cannot be a file name")
    return image_id


def write_edge_png(edges_uint8: np.ndarray, path: str | os.PathLike) -> Path:
    """One 8-bit grayscale PNG, written atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(edges_uint8, dtype=np.uint8)).save(tmp, format="PNG")  # 2-D uint8: mode L
    return path


def save_edge_pngs(
    probs: Any,
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    orig_sizes: Any | None = None,
    pad_position: str = "top_left",
) -> list[Path]:
    """Write ``<out_dir>/<id>.png`` = uint8(sigmoid * 255) per image, the layout SEISM reads.

    ``probs``: edge probabilities (already sigmoid) as (B, 1, H, W) / (B, H, W) tensor or array, or
    a list of (H, W) arrays. Values are truncated like the released code's ``astype(np.uint8)`` and
    never min-max normalised (that would change what a dataset-wide ODS threshold means).
    ``orig_sizes`` (B, 2) crops each map to its original size first.
    """
    if isinstance(probs, (list, tuple)):
        maps = [to_numpy(p).squeeze() for p in probs]
    else:
        array = to_numpy(probs)
        if array.ndim == 4 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 3:
            raise ValueError(f"expected probabilities of shape (B, 1, H, W) or (B, H, W), got {array.shape}")
        maps = list(array)
    if len(maps) != len(ids):
        raise ValueError(f"{len(maps)} maps but {len(ids)} ids")
    sizes = None if orig_sizes is None else to_numpy(orig_sizes).reshape(len(maps), 2)
    out_dir = Path(out_dir)
    written = []
    for index, (edge_map, image_id) in enumerate(zip(maps, ids)):
        if edge_map.ndim != 2:
            raise ValueError(f"map {index} has shape {edge_map.shape}, expected (H, W)")
        if sizes is not None:
            edge_map = edge_map[crop_box(*edge_map.shape, sizes[index], pad_position)]
        path = out_dir / f"{_check_image_id(image_id)}.png"
        written.append(write_edge_png(boundary.probabilities_to_uint8(edge_map), path))
    return written


class EdgeMeter:
    """ODS/OIS/AP over a split; columns edge_odsf, edge_oisf, edge_ap (percent).

    ``thresholds``: a count K (thresholds k/(K+1), default 99: 0.01..0.99) or explicit values.
    ``matcher``: ``"maxflow"`` (exact maximum matching, deterministic, default) or ``"bsds"``
    (the BSDS C++ correspondPixels via pyEdgeEval; ~100x slower). ``gt_transform``: ``"none"``
    (match against the loader's edge map) or ``"seg2bmap"`` (what SEISM does to the NYUD edge
    PNG). ``pad_position``: where ``orig_sizes`` places the image in the padded tensor; without
    ``orig_sizes`` the crop is the bounding box of non-255 target pixels.
    """

    def __init__(
        self,
        max_dist: float,
        thresholds: int | Sequence[float] = 99,
        matcher: str = "maxflow",
        nms: bool = True,
        gt_transform: str = "none",
        num_workers: int = 0,
        parallel: str = "process",
        save_dir: str | os.PathLike | None = None,
        pad_position: str = "top_left",
        ignore_index: int = IGNORE_INDEX,
    ):
        if matcher not in boundary.MATCHERS:
            raise ValueError(f"matcher must be one of {boundary.MATCHERS}, got {matcher!r}")
        if matcher == "bsds" and not boundary.bsds_matcher_available():
            raise ImportError("matcher='bsds' needs pyEdgeEval (pip install --no-deps pyedgeeval==0.2.8; builds C++)")
        if gt_transform not in boundary.GT_TRANSFORMS:
            raise ValueError(f"gt_transform must be one of {boundary.GT_TRANSFORMS}, got {gt_transform!r}")
        if parallel not in PARALLEL_KINDS:
            raise ValueError(f"parallel must be one of {PARALLEL_KINDS}, got {parallel!r}")
        if pad_position not in PAD_POSITIONS:
            raise ValueError(f"pad_position must be one of {PAD_POSITIONS}, got {pad_position!r}")
        if not 0 < max_dist < 1:
            raise ValueError(f"max_dist is a fraction of the image diagonal, got {max_dist}")
        if isinstance(thresholds, (int, np.integer)):
            self.thresholds = boundary.default_thresholds(int(thresholds))
        else:
            self.thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
            if self.thresholds.size == 0 or np.any((self.thresholds <= 0) | (self.thresholds >= 1)):
                raise ValueError("explicit thresholds must be non-empty and inside (0, 1)")
        self.max_dist = float(max_dist)
        self.matcher = matcher
        self.nms = nms
        self.gt_transform = gt_transform
        self.num_workers = int(num_workers)
        self.parallel = parallel
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.pad_position = pad_position
        self.ignore_index = ignore_index
        self._executor: Executor | None = None
        self.reset()

    # ----------------------------------------------------------------- bookkeeping
    def reset(self) -> None:
        for item in getattr(self, "_results", []):
            if isinstance(item, Future):
                item.cancel()
        self._results: list[Future | np.ndarray] = []
        self._unfinished: deque[Future] = deque()
        self.image_ids: list[str | None] = []

    def close(self) -> None:
        """Shut the worker pool down (it is otherwise kept for the next evaluation)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            try:
                executor.shutdown(wait=False, cancel_futures=True)
            except Exception:  # interpreter shutdown: nothing useful left to do
                pass

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.parallel == "process":
                # spawn: workers import only numpy/scipy (no torch, no forked CUDA/OpenMP state).
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(max_workers=self.num_workers, mp_context=context)
            else:
                self._executor = ThreadPoolExecutor(max_workers=self.num_workers)
        return self._executor

    def _evaluate(self, edges_uint8: np.ndarray, gt: np.ndarray) -> None:
        options = dict(
            max_dist=self.max_dist,
            thresholds=self.thresholds,
            matcher=self.matcher,
            nms=self.nms,
            gt_transform=self.gt_transform,
        )
        if self.num_workers <= 1:
            self._results.append(boundary.image_boundary_counts(edges_uint8, gt, **options))
            return
        # Bound the queue so a fast model cannot pile up every image of the split in memory.
        while len(self._unfinished) >= 4 * self.num_workers:
            self._unfinished.popleft().result()
        future = self._pool().submit(boundary.image_boundary_counts, edges_uint8, gt, **options)
        self._results.append(future)
        self._unfinished.append(future)
        while self._unfinished and self._unfinished[0].done():
            self._unfinished.popleft()

    # ----------------------------------------------------------------- meter API
    def update(
        self,
        pred: Any,
        target: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        orig_sizes: Any | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """``pred``: logits (B, 1, H, W); ``target``: (B, 1, H, W) in {0, 1}, 255 = padding.

        ``orig_sizes`` (B, 2): each image's (h, w) before padding; ``ids``: image ids, needed
        when ``save_dir`` is set (one PNG per image). Both default to the loader's ``meta``.
        """
        orig_sizes, ids = resolve_meta(meta, orig_sizes, ids)
        logits = batch_prediction(pred, 1, "edge")[:, 0]
        targets = batch_target(target, 1, "edge")
        check_same_layout(logits, targets, "edge")
        batch = logits.shape[0]
        if ids is not None and len(ids) != batch:
            raise ValueError(f"edge: {len(ids)} ids for a batch of {batch}")
        if self.save_dir is not None and ids is None:
            raise ValueError("edge: save_dir is set, so update() needs the image ids")
        sizes = None if orig_sizes is None else to_numpy(orig_sizes).reshape(batch, 2)
        probabilities = expit(logits.astype(np.float32))
        for index in range(batch):
            if sizes is not None:
                box = crop_box(*targets[index].shape, sizes[index], self.pad_position)
            else:
                box = valid_box(targets[index], self.ignore_index)
                if box is None:
                    continue  # nothing but padding: nothing to evaluate
            gt = targets[index][box]
            if np.any(gt == self.ignore_index):
                raise ValueError(
                    "edge: padding (255) inside the original-size crop; is pad_position "
                    f"{self.pad_position!r} what the loader does?"
                )
            edges_uint8 = boundary.probabilities_to_uint8(probabilities[index][box])
            image_id = None if ids is None else _check_image_id(ids[index])
            if self.save_dir is not None:
                write_edge_png(edges_uint8, self.save_dir / f"{image_id}.png")
            self.image_ids.append(image_id)
            self._evaluate(edges_uint8, gt > 0.5)

    def per_image_counts(self) -> np.ndarray:
        """(N_images, K, 4) counts [cntR, sumR, cntP, sumP] in update order (waits for workers)."""
        if not self._results:
            return np.zeros((0, self.thresholds.size, 4), dtype=np.int64)
        self._results = [item.result() if isinstance(item, Future) else item for item in self._results]
        self._unfinished.clear()
        return np.stack(self._results)

    def pr_curve(self) -> dict[str, np.ndarray]:
        """Dataset precision and recall per threshold (pooled counts), for plots."""
        precision, recall = boundary.precision_recall(self.per_image_counts().sum(axis=0))
        return {"threshold": self.thresholds.copy(), "precision": precision, "recall": recall}

    def result(self) -> dict[str, float]:
        counts = self.per_image_counts()
        if counts.shape[0] == 0:
            raise RuntimeError("edge: no image has been evaluated")
        scores = boundary.ods_ois_ap(counts)
        return {
            "edge_odsf": percent(scores["odsf"]),
            "edge_oisf": percent(scores["oisf"]),
            "edge_ap": percent(scores["ap"]),
        }
