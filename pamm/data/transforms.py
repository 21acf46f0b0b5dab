"""The ATRC train and test transforms (docs/datasets.md), written for this suite.

A sample is a dict of numpy arrays in HWC layout, before tensor conversion:

=============  =============================  ==============================================
key            array                          invalid / padding
=============  =============================  ==============================================
image          float32 (H, W, 3), 0..255      padded with 0 after normalisation
semseg         uint8 (H, W)                   255
human_parts    uint8 (H, W)                   255
sal            uint8 (H, W)                   255
edge           uint8 (H, W) {0, 1}            255
depth          float32 (H, W) metres          0
normals        float32 (H, W, 3)              all-zero vector (-> 255 in AddIgnoreRegions)
=============  =============================  ==============================================

Every random choice draws from the ``numpy.random.Generator`` passed in, so an item's
augmentation is a pure function of the generator's seed (see ``MultiTaskDataset``).
Deviations from the original (cv2/mmseg) code: resizing and HSV conversion are numpy
re-implementations of the same formulas (cv2's half-pixel bilinear and floor-nearest; hue shift
of +-18 on OpenCV's 0..180 hue scale, i.e. +-36 degrees).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from pamm.data.layout import DatasetError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IGNORE = 255
LABEL_KEYS = ("semseg", "human_parts", "sal", "edge")
INT_TARGETS = ("semseg", "human_parts", "sal")

Sample = dict[str, Any]


# ------------------------------------------------------------------------------------------
# resizing


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize with cv2's INTER_NEAREST rule (source index = floor(dst * src / dst))."""
    rows, cols = _nearest_index(height, array.shape[0]), _nearest_index(width, array.shape[1])
    return array[rows[:, None], cols[None, :]]


def _linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    x0 = np.floor(x).astype(np.int64)
    x1 = np.minimum(x0 + 1, n_in - 1)
    return x0, x1, (x - x0).astype(np.float32)


def _bilinear_gather(image: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    """Separable bilinear sampling: blend the two source rows, then the two source columns."""
    r0, r1, fr = rows
    c0, c1, fc = cols
    fr = fr[:, None, None]
    blended_rows = image[r0] * (1 - fr) + image[r1] * fr
    fc = fc[None, :, None]
    return (blended_rows[:, c0] * (1 - fc) + blended_rows[:, c1] * fc).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (H, W, C) float image with half-pixel centres (cv2's INTER_LINEAR)."""
    return _bilinear_gather(image, _linear_taps(height, image.shape[0]), _linear_taps(width, image.shape[1]))


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    return np.minimum((np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


# ------------------------------------------------------------------------------------------
# the train-time steps


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def random_scaling(sample: Sample, rng: np.random.Generator, scale_range: tuple[float, float] = (0.5, 2.0)) -> Sample:
    """Rescale by s ~ U[scale_range]: image bilinear, labels nearest, depth values divided by s
    (a scaled-up image looks like a closer scene)."""
    scale = float(rng.uniform(*scale_range))
    new_h, new_w = _scaled_size(*sample["image"].shape[:2], scale)
    out = dict(sample)
    for key, value in sample.items():
        if key == "image":
            out[key] = resize_bilinear(value, new_h, new_w)
        elif isinstance(value, np.ndarray):
            out[key] = resize_nearest(value, new_h, new_w)
    if "depth" in out:
        out["depth"] = (out["depth"] / scale).astype(np.float32)
    return out


def _choose_crop(rng: np.random.Generator, height: int, width: int, size: tuple[int, int],
                 semseg_in: Callable[[slice, slice], np.ndarray] | None, cat_max_ratio: float,
                 retries: int) -> tuple[slice, slice]:
    """mmseg's RandomCrop box: redraw (up to ``retries`` times) while one semseg class covers
    >= cat_max_ratio of the crop's labelled pixels; the last draw is kept unchecked."""
    crop_h, crop_w = size

    def draw() -> tuple[slice, slice]:
        top = int(rng.integers(0, max(height - crop_h, 0) + 1))
        left = int(rng.integers(0, max(width - crop_w, 0) + 1))
        return slice(top, min(top + crop_h, height)), slice(left, min(left + crop_w, width))

    box = draw()
    if semseg_in is not None and cat_max_ratio < 1.0:
        for _ in range(retries):
            counts = np.bincount(semseg_in(*box).ravel(), minlength=256)[:IGNORE]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    return box


def random_crop(sample: Sample, rng: np.random.Generator, size: tuple[int, int], cat_max_ratio: float = 0.75,
                retries: int = 10) -> Sample:
    """Crop to at most ``size``, avoiding crops dominated by one semseg class (see ``_choose_crop``)."""
    height, width = sample["image"].shape[:2]
    semseg_in = (lambda rows, cols: sample["semseg"][rows, cols]) if "semseg" in sample else None
    box = _choose_crop(rng, height, width, size, semseg_in, cat_max_ratio, retries)
    return {key: (value[box] if isinstance(value, np.ndarray) else value) for key, value in sample.items()}


def random_scale_and_crop(sample: Sample, rng: np.random.Generator, size: tuple[int, int],
                          scale_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                          retries: int = 10) -> Sample:
    """``random_scaling`` then ``random_crop``, with the same random draws and the same result,
    but resampling only the pixels inside the crop (a 2x upscale of 448x576 is 4x the work)."""
    height, width = sample["image"].shape[:2]
    scale = float(rng.uniform(*scale_range))
    new_h, new_w = _scaled_size(height, width, scale)
    rows, cols = _nearest_index(new_h, height), _nearest_index(new_w, width)
    semseg_in = None
    if "semseg" in sample:
        semseg_in = lambda r, c: sample["semseg"][rows[r][:, None], cols[c][None, :]]  # noqa: E731
    box_r, box_c = _choose_crop(rng, new_h, new_w, size, semseg_in, cat_max_ratio, retries)
    out = dict(sample)
    for key, value in sample.items():
        if not isinstance(value, np.ndarray):
            continue
        if key == "image":
            row_taps = tuple(t[box_r] for t in _linear_taps(new_h, height))
            col_taps = tuple(t[box_c] for t in _linear_taps(new_w, width))
            out[key] = _bilinear_gather(value, row_taps, col_taps)
        else:
            out[key] = value[rows[box_r][:, None], cols[box_c][None, :]]
    if "depth" in out:
        out["depth"] = (out["depth"] / scale).astype(np.float32)
    return out


def horizontal_flip(sample: Sample) -> Sample:
    """Mirror left-right; the normals' x component changes sign with the mirror."""
    out = {key: (np.ascontiguousarray(value[:, ::-1]) if isinstance(value, np.ndarray) else value)
           for key, value in sample.items()}
    if "normals" in out:
        normals = out["normals"].copy()
        normals[..., 0] *= -1
        out["normals"] = normals
    return out


def random_horizontal_flip(sample: Sample, rng: np.random.Generator, p: float = 0.5) -> Sample:
    return horizontal_flip(sample) if rng.random() < p else sample


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 255] -> HSV with hue in degrees [0, 360), saturation in [0, 1], value in [0, 255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    safe_c = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = np.where(c > 0, (h * 60.0) % 360.0, 0.0)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv``."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hp = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - np.abs(hp % 2 - 1))
    zero = np.zeros_like(c)
    sector = np.floor(hp).astype(np.int64) % 6
    r = np.choose(sector, [c, x, zero, zero, x, c])
    g = np.choose(sector, [x, c, c, x, zero, zero])
    b = np.choose(sector, [zero, zero, x, c, c, x])
    m = v - c
    return np.stack([r + m, g + m, b + m], axis=-1).astype(np.float32)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: float = 32.0,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg's PhotoMetricDistortion: each step with probability 1/2, contrast before or after the
    HSV steps (1/2 each); values clipped and truncated to integers after each step."""

    def convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.floor(np.clip(img * alpha + beta, 0, 255)).astype(np.float32)

    img = image.astype(np.float32)
    if rng.integers(2):
        img = convert(img, beta=float(rng.uniform(-brightness_delta, brightness_delta)))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = convert(img, alpha=float(rng.uniform(*contrast_range)))
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = np.clip(hsv[..., 1] * float(rng.uniform(*saturation_range)), 0, 1)
        img = convert(hsv_to_rgb(hsv))
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0] + 2.0 * int(rng.integers(-hue_delta, hue_delta + 1))) % 360.0
        img = convert(hsv_to_rgb(hsv))
    if not contrast_first and rng.integers(2):
        img = convert(img, alpha=float(rng.uniform(*contrast_range)))
    return img


# ------------------------------------------------------------------------------------------
# steps shared by train and test


def normalize(sample: Sample) -> Sample:
    """ImageNet mean/std normalisation of the 0..255 image."""
    out = dict(sample)
    out["image"] = ((sample["image"] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    return out


def pad(sample: Sample, size: tuple[int, int]) -> Sample:
    """Pad at the bottom and right to ``size`` (so predictions crop back with [:H, :W]):
    image 0, labels 255, depth 0, normals zero vector (turned into 255 by ``add_ignore_regions``)."""
    height, width = sample["image"].shape[:2]
    target_h, target_w = size
    if height > target_h or width > target_w:
        raise DatasetError(
            f"image of {height}x{width} is larger than the padding size {target_h}x{target_w}; "
            "set data.size at least as large as the biggest image (no resizing happens at test time)"
        )
    if (height, width) == (target_h, target_w):
        return dict(sample)
    out = dict(sample)
    for key, value in sample.items():
        if not isinstance(value, np.ndarray):
            continue
        fill = IGNORE if key in LABEL_KEYS else 0
        padded = np.full((target_h, target_w) + value.shape[2:], fill, dtype=value.dtype)
        padded[:height, :width] = value
        out[key] = padded
    return out


def add_ignore_regions(sample: Sample) -> Sample:
    """Mark what the losses must skip: zero normals -> 255 in all channels; a parts map with no
    part and no ignore pixel (all background) -> all 255, as ATRC's AddIgnoreRegions does."""
    out = dict(sample)
    if "normals" in sample:
        normals = sample["normals"].copy()
        normals[~np.any(normals != 0, axis=-1)] = IGNORE
        out["normals"] = normals
    if "human_parts" in sample and np.all(sample["human_parts"] == 0):
        out["human_parts"] = np.full_like(sample["human_parts"], IGNORE)
    return out


def to_tensors(sample: Sample) -> dict[str, torch.Tensor]:
    """HWC numpy -> CHW torch with the dtypes of ``pamm/tasks.py``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sample.items():
        if not isinstance(value, np.ndarray):
            continue
        if key == "image" or key == "normals":
            out[key] = torch.from_numpy(np.ascontiguousarray(value.transpose(2, 0, 1), dtype=np.float32))
        elif key in INT_TARGETS:
            out[key] = torch.from_numpy(value.astype(np.int64))
        else:  # depth, edge: (1, H, W) float
            out[key] = torch.from_numpy(np.ascontiguousarray(value[None], dtype=np.float32))
    return out


class TrainTransform:
    """RandomScaling -> RandomCrop (cat_max_ratio) -> HFlip -> PhotoMetricDistortion -> Normalize
    -> Pad -> AddIgnoreRegions, the recipe of every released code compared here (docs/datasets.md)."""

    def __init__(self, size: tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, flip_p: float = 0.5):
        self.size = (int(size[0]), int(size[1]))
        self.scale_range = scale_range
        self.cat_max_ratio = cat_max_ratio
        self.flip_p = flip_p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sample = random_scale_and_crop(sample, rng, self.size, self.scale_range, self.cat_max_ratio)
        sample = random_horizontal_flip(sample, rng, self.flip_p)
        sample = dict(sample, image=photometric_distortion(sample["image"], rng))
        return add_ignore_regions(pad(normalize(sample), self.size))


class EvalTransform:
    """Normalize -> Pad -> AddIgnoreRegions: no resize, no flip."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return add_ignore_regions(pad(normalize(sample), self.size))
