"""2-D scan orders: which token a Mamba decoder visits at each step of its 1-D scan.

Every function works on an ``height × width`` token grid whose tokens are stored in row-major
order (flat index ``i * width + j`` for row ``i``, column ``j``). An *order* is a permutation of
those flat indices listing the tokens in visit order.

:func:`scan_orders` is the public entry point; it returns ``(perm, inverse)`` for a *set* of
``directions`` orders, ready for :func:`pamm.ops.multi_direction_scan`.
"""
from __future__ import annotations

import functools
import math
import sys
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "SCAN_KINDS",
    "SCAN_DIRECTIONS",
    "scan_orders",
    "base_order",
    "hilbert_distance",
    "count_jumps",
]

SCAN_KINDS = ("raster", "snake", "zorder", "hilbert", "hilbert_cropped")
SCAN_DIRECTIONS = (1, 2, 4)


# --------------------------------------------------------------------------------------------
# Single orders (numpy, row-major flat indices)
# --------------------------------------------------------------------------------------------
def _raster(height: int, width: int) -> np.ndarray:
    return np.arange(height * width, dtype=np.int64)


def _snake(height: int, width: int) -> np.ndarray:
    """Boustrophedon: even rows left→right, odd rows right→left (unit steps only)."""
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    grid[1::2] = grid[1::2, ::-1]
    return grid.reshape(-1)


def _interleave_bits(row: np.ndarray, col: np.ndarray, bits: int) -> np.ndarray:
    """Morton code with the column bit below the row bit, so each 2×2 block is visited as a 'Z'."""
    code = np.zeros_like(row)
    for bit in range(bits):
        code |= ((col >> bit) & 1) << (2 * bit)
        code |= ((row >> bit) & 1) << (2 * bit + 1)
    return code


def _zorder(height: int, width: int) -> np.ndarray:
    """Morton order of the grid embedded in its power-of-two square, cells outside dropped."""
    bits = max(1, math.ceil(math.log2(max(height, width, 1))))
    row, col = np.divmod(np.arange(height * width, dtype=np.int64), width)
    return np.argsort(_interleave_bits(row, col, bits), kind="stable").astype(np.int64)


def hilbert_distance(bits: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance along the classic Hilbert curve of the ``2**bits`` square for points ``(x, y)``.

    Same curve and same argument order as ``hilbertcurve.HilbertCurve(bits, 2).distance_from_point([x, y])``
    (checked in the tests); vectorised over numpy arrays. The curve starts at (0, 0), steps to
    (0, 1) and ends at ``(2**bits - 1, 0)``.
    """
    side = 1 << bits
    x = np.asarray(x, dtype=np.int64).copy()
    y = np.asarray(y, dtype=np.int64).copy()
    distance = np.zeros_like(x)
    quadrant_size = side >> 1
    while quadrant_size > 0:
        in_right = ((x & quadrant_size) > 0).astype(np.int64)
        in_upper = ((y & quadrant_size) > 0).astype(np.int64)
        distance += quadrant_size * quadrant_size * ((3 * in_right) ^ in_upper)
        # Rotate the sub-square so the next level sees the canonical orientation.
        mirror = (in_upper == 0) & (in_right == 1)
        x = np.where(mirror, side - 1 - x, x)
        y = np.where(mirror, side - 1 - y, y)
        swap = in_upper == 0
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        quadrant_size >>= 1
    return distance


def _hilbert_cropped(height: int, width: int, rotation: int) -> np.ndarray:
    """The released PAMM construction, one rotation (docs/scan_orders.md).

    The Hilbert distance of every cell of the ``2**p`` square (p = ceil(log2(max(H, W)))) is
    laid out *transposed* (cell (row r, col c) holds the distance of point (x=c, y=r)), the square
    is rotated by ``rotation``·90° counter-clockwise with ``torch.rot90``, cropped to its top-left
    H×W and the cropped distances are argsorted. This transposition convention is the one that
    reproduces the released 28×36 numbers (3, 6, 4, 4 jumps; starts (0,0), (24,35), (3,35), (27,32)).
    """
    bits = max(1, math.ceil(math.log2(max(height, width, 1))))
    side = 1 << bits
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    distance = hilbert_distance(bits, cols.reshape(-1), rows.reshape(-1)).reshape(side, side)
    rotated = torch.rot90(torch.from_numpy(distance), rotation, dims=(0, 1))
    cropped = rotated[:height, :width].reshape(-1)
    return torch.argsort(cropped, stable=True).numpy().astype(np.int64)


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _half_towards_zero(value: int) -> int:
    return _sign(value) * (abs(value) // 2)


def _gilbert_fill(path: list, x: int, y: int, ax: int, ay: int, bx: int, by: int) -> None:
    """Append the cells of the rectangle spanned from corner (x, y) by the major vector (ax, ay)
    and the minor vector (bx, by), as a curve from (x, y) to the corner adjacent along the major axis.

    Generalised-Hilbert ("gilbert") recursion: a long rectangle is cut in two along its major axis,
    otherwise into three (a U: up the minor half, across the full width, back down), with the cut
    moved by one cell when that keeps every part even (an odd part would force a diagonal step).
    """
    major_len = abs(ax + ay)
    minor_len = abs(bx + by)
    step_ax, step_ay, step_bx, step_by = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if minor_len == 1:
        path.extend((x + k * step_ax, y + k * step_ay) for k in range(major_len))
        return
    if major_len == 1:
        path.extend((x + k * step_bx, y + k * step_by) for k in range(minor_len))
        return
    half_ax, half_ay = _half_towards_zero(ax), _half_towards_zero(ay)
    half_bx, half_by = _half_towards_zero(bx), _half_towards_zero(by)
    if 2 * major_len > 3 * minor_len:
        if abs(half_ax + half_ay) % 2 and major_len > 2:
            half_ax, half_ay = half_ax + step_ax, half_ay + step_ay
        _gilbert_fill(path, x, y, half_ax, half_ay, bx, by)
        _gilbert_fill(path, x + half_ax, y + half_ay, ax - half_ax, ay - half_ay, bx, by)
        return
    if abs(half_bx + half_by) % 2 and minor_len > 2:
        half_bx, half_by = half_bx + step_bx, half_by + step_by
    _gilbert_fill(path, x, y, half_bx, half_by, half_ax, half_ay)
    _gilbert_fill(path, x + half_bx, y + half_by, ax, ay, bx - half_bx, by - half_by)
    _gilbert_fill(
        path,
        x + (ax - step_ax) + (half_bx - step_bx),
        y + (ay - step_ay) + (half_by - step_by),
        -half_bx,
        -half_by,
        -(ax - half_ax),
        -(ay - half_ay),
    )


def _hilbert(height: int, width: int) -> np.ndarray:
    """Generalised Hilbert curve over any rectangle, unit steps only.

    Starts at (0, 0). The major axis is the longer side, except when the longer side is odd and
    the shorter even: then no unit-step path joins two adjacent corners along the longer side
    (grid parity), and plain gilbert2d takes one diagonal step; we run the recursion along the
    even side instead, which keeps every step a unit step (tested for all sizes up to 24×24 and
    the named grids). On 2**k squares this is exactly the classic Hilbert curve of
    ``hilbertcurve.HilbertCurve(k, 2)`` with points read as (x=column, y=row).
    """
    path: list[tuple[int, int]] = []
    major_along_width = width >= height
    if max(height, width) % 2 == 1 and min(height, width) % 2 == 0:
        major_along_width = not major_along_width
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 10 * (height + width) + 1000))
    try:
        if major_along_width:
            _gilbert_fill(path, 0, 0, width, 0, 0, height)
        else:
            _gilbert_fill(path, 0, 0, 0, height, width, 0)
    finally:
        sys.setrecursionlimit(old_limit)
    cols = np.fromiter((p[0] for p in path), dtype=np.int64, count=len(path))
    rows = np.fromiter((p[1] for p in path), dtype=np.int64, count=len(path))
    return rows * width + cols


_SINGLE_ORDER = {"raster": _raster, "snake": _snake, "zorder": _zorder, "hilbert": _hilbert}


def base_order(kind: str, height: int, width: int) -> np.ndarray:
    """Direction 0 of ``kind`` as a numpy array of row-major flat indices."""
    if kind == "hilbert_cropped":
        return _hilbert_cropped(height, width, 0)
    return _SINGLE_ORDER[kind](height, width)


def _transposed(kind: str, height: int, width: int) -> np.ndarray:
    """The same kind of order built on the transposed (width × height) grid, mapped back.

    For raster this is column-major; for snake a column boustrophedon; for zorder Morton with the
    row bit lowest; for hilbert the curve mirrored across the main diagonal.
    """
    order_t = _SINGLE_ORDER[kind](width, height)  # flat indices r' * height + c' on the W×H grid
    rows_t, cols_t = np.divmod(order_t, height)
    return cols_t * width + rows_t  # cell (r', c') of the transpose is cell (c', r') here


# --------------------------------------------------------------------------------------------
# Public: sets of directions, cached
# --------------------------------------------------------------------------------------------
def _check(kind: str, height: int, width: int, directions: int) -> None:
    if kind not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}; choose from {SCAN_KINDS}")
    if directions not in SCAN_DIRECTIONS:
        raise ValueError(f"directions must be one of {SCAN_DIRECTIONS}, got {directions}")
    if height < 1 or width < 1:
        raise ValueError(f"grid must be at least 1×1, got {height}×{width}")


def _hilbert_mirrored(height: int, width: int) -> np.ndarray:
    """The generalised Hilbert curve mirrored onto the opposite side of the grid.

    Transposing does not give a new path (the recursion always runs along the same side), so the
    third and fourth directions mirror the curve across the axis parallel to its start→end edge:
    a curve from (0, 0) to (0, W-1) becomes one from (H-1, 0) to (H-1, W-1). With the reversal the
    four directions then start at the four corners, like the released rotations on 2**k squares.
    """
    forward = _hilbert(height, width)
    rows, cols = np.divmod(forward, width)
    if rows[-1] == rows[0]:
        rows = height - 1 - rows
    else:
        cols = width - 1 - cols
    return rows * width + cols


def _build_orders(kind: str, height: int, width: int, directions: int) -> np.ndarray:
    """The ``directions`` orders of ``kind``, stacked: (directions, height * width) row-major indices."""
    if kind == "hilbert_cropped":
        orders = [_hilbert_cropped(height, width, rotation) for rotation in range(directions)]
    else:
        forward = _SINGLE_ORDER[kind](height, width)
        candidates = [forward, forward[::-1]]
        if directions == 4:
            other = _hilbert_mirrored(height, width) if kind == "hilbert" else _transposed(kind, height, width)
            candidates += [other, other[::-1]]
        orders = candidates[:directions]
    return np.stack([np.ascontiguousarray(o) for o in orders]).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _orders(kind: str, height: int, width: int, directions: int, reorder: tuple[int, ...] | None,
            device: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one cache of scan orders: per (kind, grid, directions, reorder) on the CPU (``device`` None),
    and per device as copies of the CPU entry."""
    if device is not None:
        perm, inverse = _orders(kind, height, width, directions, reorder, None)
        return perm.to(device), inverse.to(device)
    perm = torch.from_numpy(_build_orders(kind, height, width, directions))
    if reorder is not None:
        perm = perm[list(reorder)].contiguous()
    return perm, torch.argsort(perm, dim=1)


def scan_orders(
    kind: str,
    height: int,
    width: int,
    directions: int = 4,
    device: torch.device | str | None = None,
    *,
    reorder: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(perm, inverse)``, two LongTensors of shape ``(directions, height * width)``.

    ``perm[k]`` lists the row-major flat indices ``i * width + j`` in the k-th visit order and
    ``inverse[k]`` undoes it: ``x[..., perm[k]][..., inverse[k]] == x``.

    Kinds:
      * ``raster``: row-major.
      * ``snake``: boustrophedon (row 0 left→right, row 1 right→left, ...); unit steps.
      * ``zorder``: Morton order (column bit lowest: each 2×2 block is visited as a "Z").
      * ``hilbert``: generalised Hilbert curve for any rectangle, unit steps only (see ``_hilbert``);
        the classic Hilbert curve on 2**k squares.
      * ``hilbert_cropped``: the released PAMM construction (docs/scan_orders.md): the 2**p square,
        transposed, rotated by 0/90/180/270° CCW with ``torch.rot90``, cropped to the top-left H×W.
        Has jumps and non-corner starts when H, W are not equal powers of two (28×36: 3, 6, 4, 4
        jumps; starts (0,0), (24,35), (3,35), (27,32)).

    Direction sets (each set is a prefix of the 4-set, so 1 ⊂ 2 ⊂ 4):
      * ``hilbert_cropped``: the released rotations in order: 1 = [0°], 2 = [0°, 90°],
        4 = [0°, 90°, 180°, 270°] (the released model uses 4; no flips or reversals).
      * ``hilbert``: 1 = [curve], 2 = [curve, reversed], 4 = [curve, reversed, mirrored curve,
        mirrored reversed], the mirror taken across the axis parallel to the curve's start→end edge
        (transposing would give the same path again); the four start at the four corners.
      * every other kind: 1 = [order], 2 = [order, reversed order],
        4 = [order, reversed, transposed order, transposed reversed], where "transposed order" is
        the same kind built on the transposed grid (column-major for raster). For raster the
        4-set is MTMamba's SS2D set; note SS2D stacks it as [row, column, row reversed, column
        reversed], i.e. our directions [0, 2, 1, 3] when loading its per-direction weights.

    ``reorder`` returns the directions in another order (a permutation of ``range(directions)``), e.g.
    ``(0, 2, 1, 3)`` for SS2D's stacking of the raster set.

    Results are cached per (kind, height, width, directions, reorder, device) in one cache; the returned
    tensors are shared between callers, so never modify them in place.
    """
    height, width, directions = int(height), int(width), int(directions)
    _check(kind, height, width, directions)
    if reorder is not None:
        reorder = tuple(int(k) for k in reorder)
        if sorted(reorder) != list(range(directions)):
            raise ValueError(f"reorder must be a permutation of range({directions}), got {reorder}")
    return _orders(kind, height, width, directions, reorder, None if device is None else str(torch.device(device)))


def count_jumps(order: torch.Tensor | np.ndarray, width: int) -> int:
    """Number of consecutive steps in ``order`` that do not move to a 4-neighbour."""
    order = torch.as_tensor(order)
    rows, cols = order // width, order % width
    step = (rows.diff()).abs() + (cols.diff()).abs()
    return int((step != 1).sum())
