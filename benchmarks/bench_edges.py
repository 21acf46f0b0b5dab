#!/usr/bin/env python
"""CPU time of SEISM's boundary protocol per image (pamm.metrics.boundary), one thread.

For each image: the whole per-image score (ground truth, NMS, thinning at the 101 HED thresholds,
matching) as process CPU seconds, split into its stages (ground truth thin(seg2bmap), orientation
+ NMS, thresholding + thinning, matching). Images: synthetic 448x576 scenes (random regions, their
outline blurred and noised into an 8-bit prediction, NYUD tolerance) and, when the SEISM
calibration set is there, its NYUD images. MATLAB SEISM takes about 50 CPU-seconds per such image.

Timings on a shared machine are noisy: read the median.

Examples:
  python benchmarks/bench_edges.py                       # 4 synthetic images + the fixture ones
  python benchmarks/bench_edges.py --images 8 --size 480x640 --no-fixtures
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # one thread, before numpy loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pamm.metrics import boundary  # noqa: E402

FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "seism"


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit prediction, NYUD-style 0/255 edge map) of random regions: a blurred, noisy outline."""
    seeds = rng.integers(0, 12, size=(height // 32 + 1, width // 32 + 1))
    labels = ndimage.zoom(seeds, (height / seeds.shape[0], width / seeds.shape[1]), order=0)[:height, :width]
    labels = ndimage.median_filter(labels, size=9)
    edges = boundary.seg2bmap(labels)
    blurred = ndimage.gaussian_filter(edges.astype(np.float64), 1.2) * 2.5
    noisy = np.clip(blurred + rng.gamma(1.0, 0.02, size=blurred.shape), 0.0, 1.0)
    return boundary.probabilities_to_uint8(noisy), (edges * 255).astype(np.uint8)


def images(count: int, size: tuple[int, int], seed: int, fixtures: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for index in range(count):
        yield (f"synthetic{index}", *synthetic_image(rng, *size))
    if fixtures and FIXTURES.is_dir():
        from PIL import Image

        for image_id in (FIXTURES / "nyud" / "ids.txt").read_text().split():
            pred = np.array(Image.open(FIXTURES / "nyud" / "pred" / f"{image_id}.png"))
            gt = np.array(Image.open(FIXTURES / "nyud" / "edge" / f"{image_id}.png"))
            yield f"seism-nyud-{image_id}", pred, gt


def time_image(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> dict[str, float]:
    """CPU seconds of each stage and of the whole score (which repeats the stages it needs)."""
    tic = time.process_time()
    ground_truth = boundary.seism_ground_truth(gt)
    t_gt = time.process_time() - tic
    tic = time.process_time()
    nms = boundary.seism_nms(pred)
    t_nms = time.process_time() - tic
    tic = time.process_time()
    kept = boundary.thresholded_maps(nms, boundary.HED_THRESHOLDS)
    t_thin = time.process_time() - tic
    tic = time.process_time()
    counts = boundary.image_boundary_counts(pred, ground_truth, max_dist=max_dist)
    t_counts = time.process_time() - tic
    assert counts.shape == (boundary.HED_THRESHOLDS.size, 4) and len(kept) == counts.shape[0]
    return {"total_s": t_gt + t_counts, "gt_s": t_gt, "nms_s": t_nms, "thin_s": t_thin,
            "match_s": max(t_counts - t_nms - t_thin, 0.0), "gt_pixels": float(counts[0, 1]),
            "pred_pixels_at_0.5": float(counts[50, 3])}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="synthetic images to time")
    parser.add_argument("--size", default="448x576", help="synthetic image size HxW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-dist", type=float, default=boundary.MAX_DIST["nyud"])
    parser.add_argument("--no-fixtures", action="store_true", help="skip the SEISM calibration images")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    print(f"SEISM boundary protocol, {boundary.HED_THRESHOLDS.size} thresholds, one thread, CPU seconds per image")
    header = f"{'image':>20} {'HxW':>9} {'total':>7} {'gt':>6} {'nms':>6} {'thin':>6} {'match':>6}"
    print(header)
    totals = []
    for name, pred, gt in images(args.images, (height, width), args.seed, not args.no_fixtures):
        row = time_image(pred, gt, args.max_dist)
        totals.append(row["total_s"])
        print(f"{name:>20} {pred.shape[0]:>4}x{pred.shape[1]:<4} {row['total_s']:7.3f} {row['gt_s']:6.3f} "
              f"{row['nms_s']:6.3f} {row['thin_s']:6.3f} {row['match_s']:6.3f}")
    if totals:
        print(f"median {statistics.median(totals):.3f} s per image over {len(totals)} images "
              f"(min {min(totals):.3f}, max {max(totals):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
