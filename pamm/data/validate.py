"""Content rules of the dataset files, shared by the loaders and ``check_dataset``.

Each rule raises ``DatasetError`` naming the file, what it holds, what was expected and the fix, so a
wrong file gives the same line whether ``check-dataset`` finds it or a training job does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pamm.data.layout import DatasetError

IGNORE_LABEL = 255
#: Largest plausible depth in metres: the metrics count 0 < gt < 80 as valid, NYUD-v2 stays under ~10 m.
MAX_DEPTH_M = 80.0
#: PIL modes of a 3-channel normals PNG (an alpha channel is ignored).
NORMALS_MODES = ("RGB", "RGBA")


def check_labels(labels: np.ndarray, path: Path, what: str, first: int, last: int, ignore: int | None) -> None:
    """Every value of ``labels`` is in ``first..last`` or is ``ignore``; else name the first bad value."""
    values = labels if ignore is None else labels[labels != ignore]
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low >= first and high <= last:
        return
    bad = high if high > last else low
    allowed = f"{first}..{last}" + (f" or {ignore} (ignore)" if ignore is not None else "")
    raise DatasetError(
        f"{path} holds label {bad} but {what} labels are {allowed}: the file belongs to another label set or is "
        "corrupt; re-extract it or fix the labels"
    )


def check_depth(depth: np.ndarray, path: Path) -> None:
    """Depth is float metres, finite, non-negative, 0 = invalid; millimetres are recognised and named."""
    if not np.issubdtype(depth.dtype, np.floating):
        high = int(depth.max()) if depth.size else 0
        looks = "millimetres" if high > MAX_DEPTH_M else "whole metres"
        raise DatasetError(
            f"{path} holds {depth.dtype} values (max {high}), which looks like {looks}; depth must be float metres "
            "with 0 = invalid: convert it (e.g. np.float32(depth) / 1000 for millimetres) and save it again"
        )
    finite = np.isfinite(depth)
    if not finite.all():
        bad = depth[~finite]
        kinds = sorted({"NaN" if np.isnan(v) else ("+Inf" if v > 0 else "-Inf") for v in bad[:1000].tolist()})
        raise DatasetError(
            f"{path} holds {bad.size} non-finite depth value(s) ({', '.join(kinds)}); depth must be finite metres "
            "with 0 = invalid: set those pixels to 0"
        )
    if depth.size and float(depth.min()) < 0:
        raise DatasetError(f"{path} holds negative depth ({float(depth.min()):.4g}); depth must be metres >= 0 "
                           "with 0 = invalid: set those pixels to 0")
    if depth.size and float(depth.max()) > MAX_DEPTH_M:
        raise DatasetError(
            f"{path} holds depths up to {float(depth.max()):.6g}, which looks like millimetres (NYUD-v2 depth is "
            f"metres, under ~10 m, and the metrics ignore anything beyond {MAX_DEPTH_M:g} m): divide by 1000"
        )


def check_normals_mode(mode: str, path: Path) -> None:
    """Normals PNGs are RGB-encoded unit vectors (v = (n + 1) * 255 / 2); one channel cannot hold them."""
    if mode not in NORMALS_MODES:
        bands = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2}.get(mode)
        held = f"{bands} channel(s)" if bands else "no RGB channels"
        raise DatasetError(
            f"{path} has {held} (PIL mode {mode}); surface normals must be 3-channel RGB PNGs "
            "(v = (n + 1) * 255 / 2): re-extract the normals or regenerate the synthetic data"
        )
