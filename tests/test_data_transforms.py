"""The ATRC transforms, on hand-made samples where the right answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from pamm.data import transforms as T


def _sample(h: int = 20, w: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[0, 0] = 0.0  # an invalid normal
    return {
        "image": rng.uniform(0, 255, (h, w, 3)).astype(np.float32),
        "semseg": rng.integers(0, 5, (h, w)).astype(np.uint8),
        "depth": rng.uniform(0.5, 5, (h, w)).astype(np.float32),
        "normals": normals,
        "edge": rng.integers(0, 2, (h, w)).astype(np.uint8),
        "human_parts": rng.integers(0, 7, (h, w)).astype(np.uint8),
    }


def test_flip_mirrors_everything_and_negates_normal_x():
    sample = _sample()
    flipped = T.horizontal_flip(sample)
    for key in ("image", "semseg", "depth", "edge", "human_parts"):
        np.testing.assert_array_equal(flipped[key], sample[key][:, ::-1])
    np.testing.assert_array_equal(flipped["normals"][..., 0], -sample["normals"][:, ::-1, 0])
    np.testing.assert_array_equal(flipped["normals"][..., 1:], sample["normals"][:, ::-1, 1:])
    assert np.all(flipped["normals"][0, -1] == 0)  # invalid stays invalid
    assert sample["normals"][0, 1, 0] == -flipped["normals"][0, -2, 0]  # input untouched


def test_random_scaling_resizes_and_divides_depth():
    sample = _sample()
    rng = np.random.default_rng(3)
    scale = np.random.default_rng(3).uniform(0.5, 2.0)
    out = T.random_scaling(sample, rng)
    new_h, new_w = int(20 * scale + 0.5), int(30 * scale + 0.5)
    for key in sample:
        assert out[key].shape[:2] == (new_h, new_w)
        assert out[key].dtype == sample[key].dtype
    assert set(np.unique(out["semseg"])) <= set(np.unique(sample["semseg"]))  # nearest: no new labels
    nearest = T.resize_nearest(sample["depth"], new_h, new_w)
    np.testing.assert_allclose(out["depth"], nearest / scale, rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_fused_scale_and_crop_equals_scaling_then_cropping(seed):
    sample = _sample(24, 36, seed)
    separate = T.random_crop(T.random_scaling(sample, np.random.default_rng(seed)), np.random.default_rng(99), (20, 28))
    rng = np.random.default_rng(seed)
    fused_rng = _ChainedRng(rng, np.random.default_rng(99))
    fused = T.random_scale_and_crop(sample, fused_rng, (20, 28))
    for key in sample:
        np.testing.assert_array_equal(fused[key], separate[key])


class _ChainedRng:
    """The first ``uniform`` draw from one generator, everything after from another (to line up the
    fused transform's draws with two separate calls)."""

    def __init__(self, first: np.random.Generator, rest: np.random.Generator):
        self.first, self.rest = first, rest

    def uniform(self, *args):
        return self.first.uniform(*args)

    def integers(self, *args):
        return self.rest.integers(*args)


def test_resize_bilinear_matches_half_pixel_formula():
    image = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    up = T.resize_bilinear(image, 6, 8)
    assert up.shape == (6, 8, 1)
    assert up[0, 0, 0] == 0.0 and up[-1, -1, 0] == 11.0
    np.testing.assert_allclose(T.resize_bilinear(image, 3, 4), image)
    np.testing.assert_allclose(up[0, 1, 0], 0.25)  # x = (1 + 0.5) / 2 - 0.5 = 0.25


def test_random_crop_prefers_crops_without_a_dominant_class():
    semseg = np.zeros((40, 200), dtype=np.uint8)
    semseg[:, 100:] = 1  # only crops across the middle hold two classes

    def balanced(ratio: float, seed: int) -> bool:
        crop = T.random_crop({"image": np.zeros((40, 200, 3), np.float32), "semseg": semseg},
                             np.random.default_rng(seed), (40, 40), cat_max_ratio=ratio)
        assert crop["semseg"].shape == (40, 40)
        counts = np.bincount(crop["semseg"].ravel(), minlength=2)
        return counts.max() / counts.sum() < 0.75

    with_check = sum(balanced(0.75, s) for s in range(40))
    without = sum(balanced(1.0, s) for s in range(40))
    assert with_check > without + 10


def test_crop_of_small_image_keeps_it_whole_and_pad_fills_ignore_values():
    sample = T.normalize(_sample(10, 12))
    cropped = T.random_crop(sample, np.random.default_rng(0), (16, 20))
    assert cropped["image"].shape == (10, 12, 3)
    out = T.add_ignore_regions(T.pad(cropped, (16, 20)))
    assert out["image"].shape == (16, 20, 3)
    assert np.all(out["image"][10:] == 0) and np.all(out["image"][:, 12:] == 0)
    for key in ("semseg", "edge", "human_parts"):
        assert np.all(out[key][10:] == 255) and np.all(out[key][:, 12:] == 255)
        np.testing.assert_array_equal(out[key][:10, :12], sample[key])
    assert np.all(out["depth"][10:] == 0)
    assert np.all(out["normals"][10:] == 255) and np.all(out["normals"][0, 0] == 255)
    assert np.all(np.abs(out["normals"][:10, :12][1:]) <= 1)


def test_pad_refuses_images_larger_than_the_size():
    with pytest.raises(ValueError, match="larger than the padding size"):
        T.pad(_sample(20, 30), (16, 40))


def test_add_ignore_regions_blanks_parts_map_without_parts():
    sample = {"human_parts": np.zeros((4, 5), np.uint8)}
    assert np.all(T.add_ignore_regions(sample)["human_parts"] == 255)
    sample = {"human_parts": np.array([[0, 3], [0, 0]], np.uint8)}
    np.testing.assert_array_equal(T.add_ignore_regions(sample)["human_parts"], sample["human_parts"])


def test_hsv_roundtrip_and_photometric_distortion_stays_in_range():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(T.hsv_to_rgb(T.rgb_to_hsv(image)), image, atol=1e-3)
    for seed in range(10):
        out = T.photometric_distortion(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
    same = [T.photometric_distortion(image, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(*same)


def test_train_transform_is_a_function_of_the_generator_seed():
    transform = T.TrainTransform((16, 24))
    outs = [transform(_sample(), np.random.default_rng(s)) for s in (1, 1, 2)]
    for key in outs[0]:
        assert outs[0][key].shape[:2] == (16, 24)
        np.testing.assert_array_equal(outs[0][key], outs[1][key])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])


def test_to_tensors_uses_task_conventions():
    out = T.to_tensors(T.add_ignore_regions(T.normalize(_sample(4, 6))))
    assert out["image"].shape == (3, 4, 6) and str(out["image"].dtype) == "torch.float32"
    assert out["semseg"].shape == (4, 6) and str(out["semseg"].dtype) == "torch.int64"
    assert out["human_parts"].dtype == out["semseg"].dtype
    assert out["depth"].shape == (1, 4, 6) and out["edge"].shape == (1, 4, 6)
    assert out["normals"].shape == (3, 4, 6)
