"""Boundary detection: ODS F, OIS F and AP as MATLAB SEISM computes them, in Python (``boundary.py``).

The published numbers of InvPT / TaskPrompter / MTMamba / PAMM come from MATLAB SEISM on 8-bit
edge PNGs (sigmoid * 255). ``EdgeMeter`` scores the same 8-bit maps, cropped to each image's
original size (padding never counts), with SEISM's protocol (``protocol="seism"``): its NMS and
orientation, the 101 HED thresholds with a strict ``>``, thinning of every thresholded map, its
ground truth, its tolerance and its ODS / OIS / AP; the exact matcher finds a few more pairs than
BSDS's randomised one (+0.02 to +0.05 odsF). On real PASCAL-Context val data the headline
numbers cover the ``test_new`` images that the published evaluation scores, and the numbers over
every val image stand beside them as ``edge_*_fullval``.

``evaluate_edge_folder`` scores a folder of anyone's edge PNGs the same way (``pamm-bench
edges``). The per-image work is the expensive part; ``num_workers`` / ``threads`` > 1 spread
images over worker processes.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.special import expit

from pamm.io import atomic_path
from pamm.metrics import boundary
from pamm.metrics._common import percent, prediction_and_target, resolve_meta, to_numpy
from pamm.tasks import IGNORE_INDEX

PAD_POSITIONS = ("top_left", "center")
PARALLEL_KINDS = ("process", "thread")
PROTOCOLS = ("seism",)
# The image list of the published PASCAL-Context number (SEISM gt_set 'test_new', 2,498 of the
# 5,105 val images); NYUD's test_new is its whole 654-image val split, so it needs none.
PUBLISHED_SETS: dict[str, str] = {"pascal": "PASCALContext_test_new"}
IMAGE_SET_DIR = Path(__file__).resolve().parent / "image_sets"


class EdgeInputError(ValueError):
    """A prediction or ground-truth file that cannot be scored; the message names it and the fix."""


@lru_cache(maxsize=None)
def image_set(name: str) -> frozenset[str]:
    """The ids of a shipped image list (``image_sets/<name>.txt``)."""
    path = IMAGE_SET_DIR / f"{name}.txt"
    return frozenset(path.read_text().split())


def published_ids(dataset: str | None, ids: Sequence[str]) -> tuple[str, list[str]] | None:
    """(list name, the ids of ``ids`` on it) when ``dataset`` publishes a subset of its val split.

    None when there is no such list or none of ``ids`` is on it (synthetic data, NYUD).
    """
    name = PUBLISHED_SETS.get(dataset or "")
    if name is None:
        return None
    listed = image_set(name)
    chosen = [image_id for image_id in ids if image_id in listed]
    return (name, chosen) if chosen else None


def protocol_label(protocol: str, matcher: str, gt_from_target: bool) -> str:
    """What ``summary.csv`` records as ``edge_protocol``: the protocol and any departure from it."""
    label = protocol
    if matcher != "maxflow":
        label += f"+{matcher}-matcher"
    if gt_from_target:
        label += "+target-gt"
    return label


def score_image(edges_uint8: np.ndarray, segmentation: np.ndarray, *, max_dist: float, matcher: str = "maxflow"
                ) -> np.ndarray:
    """SEISM's (101, 4) counts of one image: ``segmentation`` is SEISM's G (``seism_ground_truth``)."""
    ground_truth = boundary.seism_ground_truth(segmentation)
    return boundary.image_boundary_counts(edges_uint8, ground_truth, max_dist=max_dist, matcher=matcher)


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
    """ODS/OIS/AP over a split as SEISM computes them; columns edge_odsf, edge_oisf, edge_ap (percent).

    ``dataset`` ("nyud" / "pascal") sets the tolerance (unless ``max_dist`` is given) and the
    published image list.
    ``gt_source(id)`` returns what SEISM reads as ground truth for an image at its original size:
    NYUD's ``edge/<id>.png``, PASCAL-Context's ``LabelMap``. Without it the loader's edge target
    stands in; that is SEISM's G for NYUD (0/1 instead of 0/255: the same outline) but only an
    approximation for PASCAL-Context, whose target is already a thinned edge map, and
    ``protocol_label`` says so. ``matcher``: ``"maxflow"`` (exact, default) or ``"bsds"``
    (pyEdgeEval's build of the BSDS matcher, randomised as in SEISM, far slower).
    ``pad_position``: where ``orig_sizes`` places the image in the padded tensor; without
    ``orig_sizes`` the crop is the bounding box of non-255 target pixels.
    """

    def __init__(
        self,
        max_dist: float | None = None,
        *,
        dataset: str | None = None,
        protocol: str = "seism",
        matcher: str = "maxflow",
        gt_source: Callable[[str], np.ndarray] | None = None,
        num_workers: int = 0,
        parallel: str = "process",
        save_dir: str | os.PathLike | None = None,
        pad_position: str = "top_left",
        ignore_index: int = IGNORE_INDEX,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if dataset is not None and dataset not in boundary.MAX_DIST:
            raise ValueError(f"dataset must be one of {sorted(boundary.MAX_DIST)}, got {dataset!r}")
        if matcher not in boundary.MATCHERS:
            raise ValueError(f"matcher must be one of {boundary.MATCHERS}, got {matcher!r}")
        if matcher == "bsds" and not boundary.bsds_matcher_available():
            raise ImportError("matcher='bsds' needs pyEdgeEval (pip install --no-deps pyedgeeval==0.2.8; builds C++)")
        if parallel not in PARALLEL_KINDS:
            raise ValueError(f"parallel must be one of {PARALLEL_KINDS}, got {parallel!r}")
        if pad_position not in PAD_POSITIONS:
            raise ValueError(f"pad_position must be one of {PAD_POSITIONS}, got {pad_position!r}")
        if max_dist is None:
            if dataset is None:
                raise ValueError("give the dataset (its SEISM tolerance) or max_dist")
            max_dist = boundary.MAX_DIST[dataset]
        if not 0 < max_dist < 1:
            raise ValueError(f"max_dist is a fraction of the image diagonal, got {max_dist}")
        self.thresholds = boundary.HED_THRESHOLDS.copy()
        self.max_dist = float(max_dist)
        self.dataset = dataset
        self.protocol = protocol
        self.matcher = matcher
        self.gt_source = gt_source
        self.num_workers = int(num_workers)
        self.parallel = parallel
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.pad_position = pad_position
        self.ignore_index = ignore_index
        gt_from_target = dataset == "pascal" and gt_source is None
        self.protocol_label = protocol_label(protocol, matcher, gt_from_target=gt_from_target)
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
                # spawn: workers import only numpy/scipy/skimage (no torch, no forked CUDA/OpenMP state).
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(max_workers=self.num_workers, mp_context=context)
            else:
                self._executor = ThreadPoolExecutor(max_workers=self.num_workers)
        return self._executor

    def _evaluate(self, edges_uint8: np.ndarray, segmentation: np.ndarray) -> None:
        options = dict(max_dist=self.max_dist, matcher=self.matcher)
        if self.num_workers <= 1:
            self._results.append(score_image(edges_uint8, segmentation, **options))
            return
        # Bound the queue so a fast model cannot pile up every image of the split in memory.
        while len(self._unfinished) >= 4 * self.num_workers:
            self._unfinished.popleft().result()
        future = self._pool().submit(score_image, edges_uint8, segmentation, **options)
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
        when ``save_dir`` or ``gt_source`` is set. Both default to the loader's ``meta``.
        """
        orig_sizes, ids = resolve_meta(meta, orig_sizes, ids)
        logits, targets = prediction_and_target(pred, target, "edge", 1)
        logits = logits[:, 0]
        batch = logits.shape[0]
        if ids is not None and len(ids) != batch:
            raise ValueError(f"edge: {len(ids)} ids for a batch of {batch}")
        if (self.save_dir is not None or self.gt_source is not None) and ids is None:
            raise ValueError("edge: save_dir or gt_source is set, so update() needs the image ids")
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
            if self.gt_source is not None:
                segmentation = np.asarray(self.gt_source(image_id))
                if segmentation.shape != edges_uint8.shape:
                    raise ValueError(f"edge: the ground truth of {image_id!r} is {segmentation.shape} but the "
                                     f"image's original size is {edges_uint8.shape}")
            else:
                segmentation = (gt > 0.5).astype(np.uint8)
            self.image_ids.append(image_id)
            self._evaluate(edges_uint8, segmentation)

    def per_image_counts(self) -> np.ndarray:
        """(N_images, 101, 4) counts [cntR, sumR, cntP, sumP] in update order (waits for workers)."""
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
        """edge_odsf / edge_oisf / edge_ap over the published image list where the data has one
        (real PASCAL-Context: test_new), else over every image; ``edge_*_fullval`` over every
        image beside them when a list applied."""
        counts = self.per_image_counts()
        if counts.shape[0] == 0:
            raise RuntimeError("edge: no image has been evaluated")
        subset = published_ids(self.dataset, [i for i in self.image_ids if i is not None])
        scores = _percent_scores(counts)
        if subset is None:
            return scores
        listed = set(subset[1])
        chosen = np.array([image_id in listed for image_id in self.image_ids])
        result = _percent_scores(counts[chosen])
        result.update({f"{key}_fullval": value for key, value in scores.items()})
        return result


def _percent_scores(counts: np.ndarray) -> dict[str, float]:
    scores = boundary.ods_ois_ap(counts)
    return {"edge_odsf": percent(scores["odsf"]), "edge_oisf": percent(scores["oisf"]),
            "edge_ap": percent(scores["ap"])}


# --------------------------------------------------------------------------- folders of PNGs
def read_prediction_png(path: Path) -> np.ndarray:
    """An 8-bit single-channel edge PNG (uint8 of 255 * sigmoid), or a one-line EdgeInputError."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.array(image)
    except FileNotFoundError:
        raise EdgeInputError(f"{path} is missing") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise EdgeInputError(f"cannot read {path} ({err}): is it a PNG?") from None
    if mode != "L" or array.dtype != np.uint8 or array.ndim != 2:
        raise EdgeInputError(f"{path} is a {mode} image of {array.dtype} {array.shape}, expected an 8-bit "
                             "grayscale PNG (mode L, uint8 of 255 * sigmoid, as the released codes save edges)")
    return array


def read_ground_truth(path: Path, dataset: str) -> np.ndarray:
    """What SEISM's ``db_gt`` reads: NYUD ``<id>.png`` (edge map), PASCAL-Context ``<id>.mat`` (LabelMap)."""
    if dataset == "nyud":
        from PIL import Image

        try:
            with Image.open(path) as image:
                array = np.array(image)
        except FileNotFoundError:
            raise EdgeInputError(f"{path} is missing") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise EdgeInputError(f"cannot read {path} ({err}): is it a PNG?") from None
        if array.ndim != 2:
            raise EdgeInputError(f"{path} has shape {array.shape}, expected a single-channel 0/255 edge PNG")
        return array
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except FileNotFoundError:
        raise EdgeInputError(f"{path} is missing") from None
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, zlib errors...
        raise EdgeInputError(f"cannot read {path} ({type(err).__name__}: {err}): is it a .mat file?") from None
    if "LabelMap" not in mat:
        raise EdgeInputError(f"{path} has no 'LabelMap' variable: give PASCAL-Context's pascal-context/trainval folder")
    return np.asarray(mat["LabelMap"])


def _score_files(pred_path: str, gt_path: str, dataset: str, max_dist: float, matcher: str) -> np.ndarray:
    edges = read_prediction_png(Path(pred_path))
    segmentation = read_ground_truth(Path(gt_path), dataset)
    if edges.shape != segmentation.shape:
        raise EdgeInputError(f"{pred_path} is {edges.shape[0]}x{edges.shape[1]} but its ground truth {gt_path} is "
                             f"{segmentation.shape[0]}x{segmentation.shape[1]}: save predictions at the original "
                             "image size (crop the padding away)")
    return score_image(edges, segmentation, max_dist=max_dist, matcher=matcher)


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids, one per line (blank lines ignored)."""
    try:
        ids = Path(path).read_text().split()
    except FileNotFoundError:
        raise EdgeInputError(f"the id list {path} is missing") from None
    if not ids:
        raise EdgeInputError(f"the id list {path} is empty")
    return ids


def evaluate_edge_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    dataset: str,
    *,
    ids: Sequence[str] | None = None,
    threads: int = 1,
    matcher: str = "maxflow",
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``pred_dir/<id>.png`` against ``gt_dir`` with SEISM's protocol.

    ``ids``: the images to score; by default every PNG in ``pred_dir``, narrowed to the published
    list where the dataset has one (PASCAL-Context: test_new) and some predictions are on it.
    Returns odsF / oisF / AP in percent and ``per_image`` {id: {best_f (percent), best_threshold}}.
    """
    from tqdm import tqdm

    if dataset not in boundary.MAX_DIST:
        raise EdgeInputError(f"dataset must be one of {sorted(boundary.MAX_DIST)}, got {dataset!r}")
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise EdgeInputError(f"the {what} folder {folder} does not exist")
    image_set_name = "given ids"
    if ids is None:
        ids = sorted(path.stem for path in pred_dir.glob("*.png"))
        if not ids:
            raise EdgeInputError(f"{pred_dir} holds no <id>.png predictions")
        image_set_name = "every prediction"
        published = published_ids(dataset, ids)
        if published is not None:
            image_set_name, ids = published
    ids = [_check_image_id(image_id) for image_id in ids]
    if len(set(ids)) != len(ids):
        raise EdgeInputError("the id list names an image twice")
    gt_suffix = ".png" if dataset == "nyud" else ".mat"
    jobs = []
    for image_id in ids:
        pred_path, gt_path = pred_dir / f"{image_id}.png", gt_dir / f"{image_id}{gt_suffix}"
        for path, what in ((pred_path, "prediction"), (gt_path, "ground truth")):
            if not path.is_file():
                raise EdgeInputError(f"image {image_id!r}: its {what} {path} is missing")
        jobs.append((str(pred_path), str(gt_path), dataset, boundary.MAX_DIST[dataset], matcher))
    counts: list[np.ndarray | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=f"edges {dataset}", unit="img", disable=not progress, mininterval=1.0)
    try:
        if threads <= 1:
            for index, job in enumerate(jobs):
                counts[index] = _score_files(*job)
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=threads, mp_context=context) as pool:
                futures = {pool.submit(_score_files, *job): index for index, job in enumerate(jobs)}
                try:
                    for future in as_completed(futures):
                        counts[futures[future]] = future.result()
                        bar.update()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    stacked = np.stack(counts)
    scores = boundary.ods_ois_ap(stacked)
    best_f, best_index = boundary.best_per_image(stacked)
    thresholds = boundary.HED_THRESHOLDS
    return {
        "odsF": percent(scores["odsf"]),
        "oisF": percent(scores["oisf"]),
        "AP": percent(scores["ap"]),
        "protocol": protocol_label("seism", matcher, gt_from_target=False),
        "dataset": dataset,
        "max_dist": boundary.MAX_DIST[dataset],
        "image_set": image_set_name,
        "n_images": len(ids),
        "per_image": {
            image_id: {"best_f": percent(f), "best_threshold": float(thresholds[k])}
            for image_id, f, k in zip(ids, best_f, best_index)
        },
    }
