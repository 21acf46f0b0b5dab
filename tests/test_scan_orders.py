"""Scan orders: permutations, inverses, continuity, the released hilbert_cropped construction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pamm.ops import SCAN_KINDS, count_jumps, scan_orders
from pamm.ops.scan_orders import hilbert_distance

SIZES = [(28, 36), (30, 40), (32, 32), (7, 5), (1, 9), (17, 23)]
DIRECTIONS = (1, 2, 4)


def _unit_steps(order: torch.Tensor, width: int) -> bool:
    return count_jumps(order, width) == 0


@pytest.mark.parametrize("kind", SCAN_KINDS)
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_every_order_is_a_permutation_with_inverse(kind, directions):
    for height, width in SIZES:
        perm, inverse = scan_orders(kind, height, width, directions)
        tokens = height * width
        assert perm.shape == inverse.shape == (directions, tokens)
        assert perm.dtype == inverse.dtype == torch.long
        expected = torch.arange(tokens)
        for k in range(directions):
            assert torch.equal(perm[k].sort().values, expected), (kind, height, width, k)
            assert torch.equal(perm[k][inverse[k]], expected)
        x = torch.randn(2, 3, tokens)
        gathered = x[..., perm]  # (2, 3, K, L)
        restored = torch.stack([gathered[..., k, :][..., inverse[k]] for k in range(directions)], dim=-2)
        assert torch.equal(restored, x.unsqueeze(-2).expand_as(restored))


@pytest.mark.parametrize("kind", ["snake", "hilbert"])
def test_snake_and_hilbert_take_unit_steps_only(kind):
    for height, width in SIZES:
        perm, _ = scan_orders(kind, height, width, 4)
        for k in range(4):
            assert _unit_steps(perm[k], width), (kind, height, width, k)


def test_hilbert_unit_steps_on_every_small_rectangle():
    # Including odd × even, where plain gilbert2d needs one diagonal step (see _hilbert).
    for height in range(1, 21):
        for width in range(1, 21):
            perm, _ = scan_orders("hilbert", height, width, 1)
            assert _unit_steps(perm[0], width), (height, width)
            assert perm[0, 0] == 0  # starts at the top-left corner


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5])
def test_hilbert_is_the_classic_curve_on_power_of_two_squares(bits):
    hilbertcurve = pytest.importorskip("hilbertcurve.hilbertcurve")
    side = 1 << bits
    curve = hilbertcurve.HilbertCurve(bits, 2)
    points = curve.points_from_distances(list(range(side * side)))
    # Documented symmetry: the identity, with hilbertcurve's point read as (x=column, y=row).
    expected = torch.tensor([y * side + x for x, y in points])
    perm, _ = scan_orders("hilbert", side, side, 1)
    assert torch.equal(perm[0], expected)


@pytest.mark.parametrize("bits", [1, 2, 3, 6])
def test_hilbert_distance_matches_hilbertcurve(bits):
    hilbertcurve = pytest.importorskip("hilbertcurve.hilbertcurve")
    side = 1 << bits
    xs, ys = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    expected = np.array(hilbertcurve.HilbertCurve(bits, 2).distances_from_points(points.tolist()))
    assert np.array_equal(hilbert_distance(bits, points[:, 0], points[:, 1]), expected)


def test_hilbert_cropped_reproduces_released_28x36():
    perm, _ = scan_orders("hilbert_cropped", 28, 36, 4)
    assert [count_jumps(perm[k], 36) for k in range(4)] == [3, 6, 4, 4]
    starts = [divmod(int(perm[k, 0]), 36) for k in range(4)]
    assert starts == [(0, 0), (24, 35), (3, 35), (27, 32)]


def test_hilbert_cropped_on_32x32_is_four_corner_hilbert_curves():
    perm, _ = scan_orders("hilbert_cropped", 32, 32, 4)
    assert [count_jumps(perm[k], 32) for k in range(4)] == [0, 0, 0, 0]
    starts = {divmod(int(perm[k, 0]), 32) for k in range(4)}
    assert starts == {(0, 0), (0, 31), (31, 0), (31, 31)}
    assert torch.equal(perm[0], scan_orders("hilbert", 32, 32, 1)[0][0])


@pytest.mark.parametrize("height,width", [(28, 36), (7, 5), (17, 23)])
def test_hilbert_cropped_matches_construction_with_hilbertcurve(height, width):
    """Independent rebuild: the hilbertcurve package's distances, transposed, rot90, crop, argsort."""
    hilbertcurve = pytest.importorskip("hilbertcurve.hilbertcurve")
    bits = math.ceil(math.log2(max(height, width)))
    side = 1 << bits
    curve = hilbertcurve.HilbertCurve(bits, 2)
    cells = [[col, row] for row in range(side) for col in range(side)]  # grid[row, col] = d(x=col, y=row)
    grid = torch.tensor(curve.distances_from_points(cells)).view(side, side)
    perm, _ = scan_orders("hilbert_cropped", height, width, 4)
    for k in range(4):
        cropped = torch.rot90(grid, k, dims=(0, 1))[:height, :width].reshape(-1)
        assert torch.equal(perm[k], torch.argsort(cropped)), k


def test_reference_jump_counts_of_snake_and_zorder():
    for kind, height, width, jumps in [("snake", 28, 36, 0), ("zorder", 28, 36, 503), ("zorder", 32, 32, 511)]:
        perm, _ = scan_orders(kind, height, width, 1)
        assert count_jumps(perm[0], width) == jumps, (kind, height, width)


def test_kinds_give_different_permutations():
    orders = {kind: scan_orders(kind, 28, 36, 1)[0][0] for kind in SCAN_KINDS}
    kinds = list(orders)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            assert not torch.equal(orders[a], orders[b]), (a, b)


def test_direction_sets_are_nested_and_as_documented():
    for kind in SCAN_KINDS:
        four, _ = scan_orders(kind, 7, 5, 4)
        assert torch.equal(scan_orders(kind, 7, 5, 2)[0], four[:2])
        assert torch.equal(scan_orders(kind, 7, 5, 1)[0], four[:1])
        if kind != "hilbert_cropped":
            assert torch.equal(four[1], four[0].flip(0))
            assert torch.equal(four[3], four[2].flip(0))
    raster, _ = scan_orders("raster", 3, 4, 4)
    column_major = torch.arange(12).view(3, 4).t().reshape(-1)
    assert torch.equal(raster[0], torch.arange(12))
    assert torch.equal(raster[2], column_major)
    assert torch.equal(raster[3], column_major.flip(0))
    snake, _ = scan_orders("snake", 2, 3, 1)
    assert snake[0].tolist() == [0, 1, 2, 5, 4, 3]
    morton, _ = scan_orders("zorder", 2, 2, 1)
    assert morton[0].tolist() == [0, 1, 2, 3]


def test_orders_are_cached_per_device():
    first = scan_orders("hilbert", 28, 36, 4)
    assert scan_orders("hilbert", 28, 36, 4)[0] is first[0]
    on_cpu = scan_orders("hilbert", 28, 36, 4, device="cpu")
    assert scan_orders("hilbert", 28, 36, 4, device=torch.device("cpu"))[0] is on_cpu[0]
    assert torch.equal(on_cpu[0], first[0])


def test_reordered_directions_are_the_same_orders_restacked():
    """SS2D stacks the raster set as [row, column, row reversed, column reversed]: ``reorder`` returns the
    directions in that order, each with its own inverse, from the same cache."""
    perm, inverse = scan_orders("raster", 3, 5, 4)
    mixed, mixed_inverse = scan_orders("raster", 3, 5, 4, reorder=(0, 2, 1, 3))
    assert torch.equal(mixed, perm[[0, 2, 1, 3]]) and torch.equal(mixed_inverse, inverse[[0, 2, 1, 3]])
    assert scan_orders("raster", 3, 5, 4, reorder=[0, 2, 1, 3])[0] is mixed
    assert scan_orders("raster", 3, 5, 4, device="cpu", reorder=(0, 2, 1, 3))[0].is_contiguous()
    with pytest.raises(ValueError, match="permutation of range"):
        scan_orders("raster", 3, 5, 4, reorder=(0, 1, 1, 3))


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        scan_orders("spiral", 4, 4, 1)
    with pytest.raises(ValueError):
        scan_orders("raster", 4, 4, 3)
    with pytest.raises(ValueError):
        scan_orders("raster", 0, 4, 1)


@pytest.mark.parametrize("height, width", [(28, 36), (30, 40), (32, 32), (7, 5), (17, 23), (2, 3)])
def test_hilbert_four_directions_are_distinct_and_start_at_the_four_corners(height, width):
    perm, _ = scan_orders("hilbert", height, width, 4)
    assert len({tuple(p.tolist()) for p in perm}) == 4
    starts = {divmod(int(p[0]), width) for p in perm}
    assert starts == {(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1)}
