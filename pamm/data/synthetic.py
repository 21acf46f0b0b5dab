"""Synthetic NYUD-v2 and PASCAL-Context datasets, written in the real ATRC on-disk formats.

Why: the suite must train, evaluate and be tested end to end without the (large, sometimes
unavailable) archives. The same loaders then read the synthetic data and the real archives, so
a format bug shows up on the synthetic data first. Scenes come from ``pamm.data.scenes``
(rendered by ``pamm.data.render``); every image is a pure function of (seed, dataset, split, index).

Camera-frame normals convention: x right, y up, z towards the viewer (floor normals have y > 0).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from pamm.data import layout
from pamm.data import pascal_classes as pc
from pamm.data.render import RayHits, cast
from pamm.data.scenes import PASCAL_VOC_OBJECTS, Material, Scene, label_lut, sample_scene
from pamm.io import atomic_path, write_json, write_text

GENERATOR_NAME = "pamm.data.synthetic"
GENERATOR_VERSION = 2  # 2: PASCAL people stand closer and are more frequent (scenes.sample_scene)
_DATASET_CODES = {"nyud": 0, "pascal": 1}
_SPLIT_CODES = {"train": 0, "val": 1}
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by pamm.data.synthetic"


# ------------------------------------------------------------------------------------------
# shading


class _ValueNoise:
    """Smooth 2-D value noise in [0, 1] from a seeded lattice (two octaves)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.perm = rng.permutation(256)
        self.values = rng.random(256)

    def lattice(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self.values[self.perm[(self.perm[i & 255] + j) & 255]]

    def octave(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        iu, iv = np.floor(u), np.floor(v)
        fu, fv = u - iu, v - iv
        iu, iv = iu.astype(np.int64), iv.astype(np.int64)
        fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
        a, b = self.lattice(iu, iv), self.lattice(iu + 1, iv)
        c, d = self.lattice(iu, iv + 1), self.lattice(iu + 1, iv + 1)
        return a + (b - a) * fu + (c - a) * fv + (a - b - c + d) * fu * fv

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return 0.65 * self.octave(u, v) + 0.35 * self.octave(2.03 * u + 17.1, 2.03 * v + 31.7)


def _texture(material: Material, u: np.ndarray, v: np.ndarray, noise: _ValueNoise) -> np.ndarray:
    """Albedo (N, 3) of ``material`` at surface coordinates (u, v) in metres."""
    s, p, strength = material.scale, material.phase, material.strength
    base = noise(u * s + p, v * s - p)
    mix = np.zeros_like(u)
    mod = 1.0 + 2.0 * strength * (base - 0.5)
    pattern = material.pattern
    if pattern == "planks":
        plank = np.floor(u * s).astype(np.int64)
        jitter = noise.lattice(plank + int(p), np.zeros_like(plank))
        grain = noise(u * s * 6 + p, v * 1.5)
        mod = 0.85 + 0.3 * jitter + strength * (grain - 0.5)
        mod = np.where((u * s) % 1.0 < 0.05, mod * 0.6, mod)
    elif pattern == "grain":
        mod = 1.0 + strength * np.sin(2 * np.pi * (u * s + 3.0 * noise(u * 2 + p, v * 2)))
    elif pattern == "stripes":
        mix = (np.sin(2 * np.pi * u * s + p) > 0).astype(np.float64)
    elif pattern == "checker":
        mix = ((np.floor(u * s) + np.floor(v * s)) % 2).astype(np.float64)
    elif pattern == "dots":
        mix = (((u * s) % 1 - 0.5) ** 2 + ((v * s) % 1 - 0.5) ** 2 < 0.08).astype(np.float64)
    elif pattern == "blotches":
        mix = (base > 0.5).astype(np.float64)
    elif pattern == "clouds":
        mix = np.clip((base - 0.45) * 3.0, 0, 1)
    elif pattern == "fabric":
        mod = mod + 0.08 * np.sin(4 * np.pi * u * s) * np.sin(4 * np.pi * v * s)
    elif pattern == "panels":
        border = ((u * s + p) % 1 < 0.07) | ((v * s * 0.5) % 1 < 0.05)
        mod = np.where(border, 0.75, 1.0) * mod
    elif pattern == "folds":
        mod = 0.75 + 0.25 * np.sin(2 * np.pi * u * s + p)
    elif pattern == "screen":
        mod = 1.0 + 3.0 * np.clip(base - 0.6, 0, 1)
    elif pattern == "tape":
        mix = (np.abs((u * 2.5 + p) % 1 - 0.5) < 0.06).astype(np.float64)
    color = material.color[None, :] * (1 - mix[:, None]) + material.color2[None, :] * mix[:, None]
    return color * mod[:, None]


def shade(scene: Scene, hits: RayHits, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 image: textured albedo x (ambient + Lambert point light), vignetting and sensor noise."""
    height, width = hits.surface.shape
    flat_surface = hits.surface.ravel()
    points = hits.points.reshape(-1, 3)
    normals = hits.normals_world.reshape(-1, 3)
    albedo = np.zeros((height * width, 3))
    emissive = np.zeros(height * width, dtype=bool)
    noise = _ValueNoise(scene.noise_seed)
    order = np.argsort(flat_surface, kind="stable")
    ids, starts = np.unique(flat_surface[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for sid, start, end in zip(ids, starts, ends):
        if sid < 0:
            continue
        idx = order[start:end]
        material = scene.surfaces[sid].material
        n, pts = normals[idx], points[idx]
        dominant = np.argmax(np.abs(n), axis=1)
        u = np.where(dominant == 0, pts[:, 2], pts[:, 0])
        v = np.where(dominant == 1, pts[:, 2], pts[:, 1])
        albedo[idx] = _texture(material, u, v, noise)
        emissive[idx] = material.emissive
    light = scene.light
    to_light = light.position - points
    dist = np.linalg.norm(to_light, axis=1)
    lambert = np.clip(np.einsum("nc,nc->n", normals, to_light) / np.maximum(dist, 1e-6), 0, 1)
    intensity = light.ambient + 1.4 * light.diffuse * lambert / (1 + (dist / light.falloff) ** 2)
    intensity = np.where(emissive, 1.0, intensity)
    image = albedo * intensity[:, None] * light.tint[None, :]
    ys, xs = np.mgrid[0:height, 0:width]
    r2 = ((ys - height / 2) / (height / 2)) ** 2 + ((xs - width / 2) / (width / 2)) ** 2
    image = image.reshape(height, width, 3) * (1 - 0.12 * r2)[..., None]
    image = image + rng.normal(0.0, 0.01, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# one rendered sample and its ground truth


@dataclass
class RenderedSample:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres (exact, before sensor holes)
    normals: np.ndarray  # (H, W, 3) float32 unit, camera frame
    label: np.ndarray  # (H, W) int32 on-disk class ids (NYU-40 or PASCAL-Context)
    instance: np.ndarray  # (H, W) int32
    surface: np.ndarray  # (H, W) int32
    glass: np.ndarray  # (H, W) bool
    scene: Scene


def render_sample(dataset: str, rng: np.random.Generator, height: int, width: int) -> RenderedSample:
    """Sample a scene for ``dataset`` and render image, depth, normals, classes and instances."""
    scene = sample_scene(rng, dataset)
    hits = cast(scene.camera, scene.primitives, scene.decals, height, width)
    surface = hits.surface
    labels = label_lut(scene, dataset)
    instances = np.array([s.instance for s in scene.surfaces], dtype=np.int32)
    glass = np.array([s.glass for s in scene.surfaces], dtype=bool)
    return RenderedSample(
        rgb=shade(scene, hits, rng),
        depth=hits.depth.astype(np.float32),
        normals=hits.normals_cam.astype(np.float32),
        label=labels[surface],
        instance=instances[surface],
        surface=surface,
        glass=glass[surface],
        scene=scene,
    )


def label_boundaries(label: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label (1-pixel lines)."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    return edge


def geometric_boundaries(depth: np.ndarray, normals: np.ndarray, rel_jump: float = 0.04,
                         crease_deg: float = 25.0) -> np.ndarray:
    """Depth discontinuities (relative jump) and normal creases, as 1-pixel lines."""
    edge = np.zeros(depth.shape, dtype=bool)
    cos_crease = np.cos(np.deg2rad(crease_deg))
    for a, b, target in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None)), (slice(None, -1), slice(None))),
    ):
        da, db = depth[a], depth[b]
        jump = np.abs(da - db) > rel_jump * np.minimum(da, db)
        crease = np.einsum("hwc,hwc->hw", normals[a], normals[b]) < cos_crease
        edge[target] |= jump | crease
    return edge


def encode_normals(normals: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Unit normals -> uint8 RGB v = (n + 1) / 2 * 255; invalid pixels all zero."""
    encoded = np.clip(np.round((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)
    encoded[~valid] = 0
    return encoded


def nyud_ground_truth(sample: RenderedSample, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """NYUD files of one sample: depth with sensor holes, normals PNG, segmentation with void, edges."""
    height, width = sample.depth.shape
    invalid = sample.glass.copy()  # depth sensors see through glass
    if rng.random() < 0.7:  # Kinect-style shadow band right of near-to-far depth steps
        step = np.zeros_like(invalid)
        step[:, 1:] = sample.depth[:, 1:] - sample.depth[:, :-1] > 0.15
        band = max(1, width // 64)
        shadow = step.copy()
        for shift in range(1, band + 1):
            shadow[:, shift:] |= step[:, :-shift]
        invalid |= shadow
    invalid |= sample.depth > 10.0
    depth = np.where(invalid, 0.0, sample.depth).astype(np.float32)
    segmentation = sample.label.astype(np.uint8)
    if rng.random() < 0.5:  # unlabelled pixels along object boundaries, as in the real annotations
        segmentation[label_boundaries(sample.instance)] = 0
    edges = label_boundaries(sample.instance) | geometric_boundaries(sample.depth, sample.normals)
    return {
        "image": sample.rgb,
        "depth": depth,
        "normals": encode_normals(sample.normals, ~invalid),
        "semseg": segmentation,
        "edge": (edges * 255).astype(np.uint8),
    }


def _pascal_part_anno(image_id: str, sample: RenderedSample) -> np.ndarray:
    """The Pascal-Part ``anno`` struct: (imname, objects); objects are (class, class_ind, mask, parts)."""
    scene = sample.scene
    objects = []
    for inst, name in enumerate(scene.instance_names):
        if name not in PASCAL_VOC_OBJECTS:
            continue
        mask = sample.instance == inst
        if not mask.any():
            continue
        parts = []
        if name == "person":
            part_names: list[str] = []
            for sid, surf in enumerate(scene.surfaces):
                if surf.instance == inst and surf.part is not None and surf.part not in part_names:
                    part_names.append(surf.part)
            for part in part_names:
                part_sids = [sid for sid, s in enumerate(scene.surfaces) if s.instance == inst and s.part == part]
                part_mask = np.isin(sample.surface, part_sids)
                if part_mask.any():
                    parts.append((part, part_mask.astype(np.uint8)))
        voc_index = PASCAL_VOC_OBJECTS[name]
        objects.append((pc.VOC_CLASSES[voc_index], voc_index, mask.astype(np.uint8), parts))
    part_dtype = [("part_name", "O"), ("mask", "O")]
    object_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    object_array = np.zeros((1, len(objects)), dtype=object_dtype)
    for k, (cls_name, voc_index, mask, parts) in enumerate(objects):
        part_array = np.zeros((1, len(parts)), dtype=part_dtype)
        for j, (part, part_mask) in enumerate(parts):
            part_array[0, j] = (part, part_mask)
        object_array[0, k] = (cls_name, np.array([[float(voc_index)]]), mask, part_array)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (image_id, object_array)
    return anno


def pascal_ground_truth(image_id: str, sample: RenderedSample) -> dict[str, Any]:
    """PASCAL files of one sample: LabelMap, VOC semseg, parts anno, saliency and normals PNGs."""
    height, width = sample.label.shape
    labelmap = sample.label.astype(np.uint16)
    voc = pc.context_to_voc_lut()[sample.label]
    is_object = voc > 0
    semseg = voc.astype(np.uint8)
    # a thin void band where VOC objects meet anything else (VOC-style 'difficult' outline)
    outline = label_boundaries(sample.instance)
    outline[1:, :] |= outline[:-1, :]
    outline[:, 1:] |= outline[:, :-1]
    semseg[outline & is_object] = 255
    sigma = max(1.0, width / 160)
    saliency = ndimage.gaussian_filter(is_object.astype(np.float32), sigma)
    saliency = np.clip(saliency * 255 + 0.5, 0, 255).astype(np.uint8)
    return {
        "image": sample.rgb,
        "labelmap": labelmap,
        "semseg": semseg,
        "human_parts": _pascal_part_anno(image_id, sample),
        "sal": saliency,
        "normals": encode_normals(sample.normals, np.ones((height, width), dtype=bool)),
    }


# ------------------------------------------------------------------------------------------
# writing


def _write_bytes(path: Path, writer: Callable[[io.BufferedWriter], None]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            writer(handle)


def save_png(path: Path, array: np.ndarray) -> None:
    _write_bytes(path, lambda f: Image.fromarray(array).save(f, format="PNG", compress_level=1))


def save_jpeg(path: Path, array: np.ndarray) -> None:
    _write_bytes(path, lambda f: Image.fromarray(array).save(f, format="JPEG", quality=92))


def save_npy(path: Path, array: np.ndarray) -> None:
    _write_bytes(path, lambda f: np.save(f, array))


def save_mat(path: Path, variables: dict[str, Any]) -> None:
    """``scipy.io.savemat`` with a fixed header text, so that files are byte-identical per seed."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, variables, do_compression=True)
    data = bytearray(buffer.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")  # the header's free text holds a timestamp
    _write_bytes(path, lambda f: f.write(bytes(data)))


def _write_nyud(root: Path, image_id: str, files: dict[str, np.ndarray]) -> None:
    table = layout.NYUD_MODALITIES
    save_png(root / table["image"].folder / f"{image_id}.png", files["image"])
    save_npy(root / table["depth"].folder / f"{image_id}.npy", files["depth"])
    save_png(root / table["normals"].folder / f"{image_id}.png", files["normals"])
    save_png(root / table["semseg"].folder / f"{image_id}.png", files["semseg"])
    save_png(root / table["edge"].folder / f"{image_id}.png", files["edge"])


def _write_pascal(root: Path, image_id: str, files: dict[str, Any]) -> None:
    table = layout.PASCAL_MODALITIES
    save_jpeg(root / table["image"].folder / f"{image_id}.jpg", files["image"])
    save_png(root / table["semseg"].folder / f"{image_id}.png", files["semseg"])
    save_png(root / table["sal"].folder / f"{image_id}.png", files["sal"])
    save_png(root / table["normals"].folder / f"{image_id}.png", files["normals"])
    save_mat(root / table["human_parts"].folder / f"{image_id}.mat", {"anno": files["human_parts"]})
    save_mat(root / table["labelmap"].folder / f"{image_id}.mat", {"LabelMap": files["labelmap"]})


def synthetic_ids(split: str, count: int) -> list[str]:
    """Image ids of a synthetic split (unique across splits)."""
    prefix = "tr" if split == "train" else "va"
    return [f"syn_{prefix}{i:05d}" for i in range(count)]


def sample_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of how many other images are made."""
    return np.random.default_rng([seed, _DATASET_CODES[dataset], _SPLIT_CODES[split], index])


def make_synthetic(
    root: str | os.PathLike,
    dataset: str,
    n_train: int = 24,
    n_val: int = 8,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate a synthetic ``dataset`` ("nyud" or "pascal") at ``root`` (the dataset folder itself).

    Deterministic in ``seed``. Refuses to write into a non-empty folder that is not synthetic data
    (so a real archive is never overwritten). Returns the marker written to ``pamm_synthetic.json``.
    """
    if dataset not in _DATASET_CODES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(_DATASET_CODES)}")
    if n_train < 0 or n_val < 0 or height < 8 or width < 8:
        raise ValueError(f"need n_train, n_val >= 0 and height, width >= 8; got {n_train}, {n_val}, {height}x{width}")
    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and layout.read_synthetic_marker(root) is None:
        raise layout.DatasetError(
            f"{root} is not empty and has no {layout.SYNTHETIC_MARKER}: refusing to write synthetic data over "
            "what may be a real archive; choose an empty or new folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker_path = root / layout.SYNTHETIC_MARKER
    if marker_path.exists():  # a regeneration: the old marker goes first so a killed run is not taken as complete
        marker_path.unlink()
    jobs = [(split, i, image_id) for split, count in (("train", n_train), ("val", n_val))
            for i, image_id in enumerate(synthetic_ids(split, count))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"synthetic {dataset} {height}x{width}", unit="img")
    for split, index, image_id in jobs:
        rng = sample_rng(seed, dataset, split, index)
        sample = render_sample(dataset, rng, height, width)
        if dataset == "nyud":
            _write_nyud(root, image_id, nyud_ground_truth(sample, rng))
        else:
            _write_pascal(root, image_id, pascal_ground_truth(image_id, sample))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for split, count in (("train", n_train), ("val", n_val)):
        ids = synthetic_ids(split, count)
        write_text(layout.split_file(dataset, root, split), "".join(f"{i}\n" for i in ids))
    for modality in layout.modalities(dataset).values():  # present even for an empty split
        (root / modality.folder).mkdir(parents=True, exist_ok=True)
    marker = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "height": int(height),
        "width": int(width),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "dataset": dataset,
    }
    write_json(marker_path, marker)
    return marker
