"""PASCAL-Context in the ATRC layout (docs/datasets.md): semseg (21), human parts (7), saliency,
distilled normals and edges (both via the 459-class LabelMap)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pamm.data import layout
from pamm.data import pascal_classes as pc
from pamm.data.common import MultiTaskDataset
from pamm.data.layout import DatasetError
from pamm.data.readers import read_image_array, read_normals
from pamm.data.validate import IGNORE_LABEL, check_labels
from pamm.io import write_json

log = logging.getLogger(__name__)

PartObject = tuple[int, np.ndarray, list[tuple[str, np.ndarray]]]  # (class index, mask, [(part name, mask)])


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: re-extract the dataset archive or regenerate the synthetic data") \
            from None
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, zlib errors...
        raise DatasetError(f"cannot read {path} ({type(err).__name__}: {err}); the file is corrupt: "
                           "re-extract it or regenerate the data") from None


def _first_scalar(value: Any) -> Any:
    return np.asarray(value).ravel()[0]


def read_part_objects(path: Path) -> list[PartObject]:
    """Objects of a Pascal-Part annotation: ``loadmat(f)['anno'][0][0]`` field 1 is the object
    array; each object is (class name, class index, instance mask, parts array of (name, mask))."""
    mat = _loadmat(path)
    if "anno" not in mat:
        raise DatasetError(f"{path} has no 'anno' variable: it is not a Pascal-Part annotation; re-extract it")
    try:
        return _part_objects(mat["anno"])
    except (IndexError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetError(
            f"{path} has an 'anno' variable of the wrong structure ({type(err).__name__}: {err}); a Pascal-Part "
            "annotation holds anno[0][0][1] = objects of (class, class_ind, mask, parts of (name, mask)): "
            "re-extract human_parts/ or regenerate the synthetic data"
        ) from None


def _part_objects(anno: Any) -> list[PartObject]:
    raw_objects = np.asarray(anno[0][0][1])
    objects: list[PartObject] = []
    for obj in raw_objects.ravel() if raw_objects.size else []:
        class_index = int(_first_scalar(obj[1]))
        mask = np.asarray(obj[2])
        if mask.ndim != 2:
            raise ValueError(f"an object mask has shape {mask.shape}, not (H, W)")
        raw_parts = np.asarray(obj[3])
        parts = []
        if raw_parts.size and raw_parts.dtype.names is not None:
            for part in raw_parts.ravel():
                part_mask = np.asarray(part[1])
                if part_mask.ndim != 2:
                    raise ValueError(f"a part mask has shape {part_mask.shape}, not (H, W)")
                parts.append((str(_first_scalar(part[0])), part_mask))
        objects.append((class_index, mask, parts))
    return objects


def object_classes(path: Path, area_thres: int = 0) -> list[int]:
    """Cache entry of one image: each object's class index, or -1 where its mask area <= area_thres.
    A missing annotation file means no objects."""
    if not path.is_file():
        return []
    return [cls if int(mask.sum()) > area_thres else -1 for cls, mask, _ in read_part_objects(path)]


def load_parts_cache(root: Path, split: str, ids: list[str], mat_folder: Path,
                     area_thres: int = 0) -> dict[str, list[int]]:
    """``ImageSets/Parts/<split>.txt``: read when valid (its keys are the split's ids), else computed
    from the annotations and written atomically if the folder is writable (never fails read-only)."""
    path = layout.parts_cache_file(root, split)
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = None
        if isinstance(cache, dict) and set(cache) == set(ids):
            return {key: [int(c) for c in value] for key, value in cache.items()}
    cache = {image_id: object_classes(mat_folder / f"{image_id}.mat", area_thres) for image_id in ids}
    try:
        write_json(path, cache)
    except OSError as err:
        log.info("parts cache %s not written (%s); it is recomputed on each load", path, err)
    return cache


def human_parts_target(objects: list[PartObject], shape: tuple[int, int]) -> np.ndarray:
    """Parsing target: 0 background, 1..6 part groups of every person with parts; all 255 when
    the image has no person part pixel."""
    target = np.zeros(shape, dtype=np.uint8)
    found = False
    for class_index, _, parts in objects:
        if class_index != pc.PERSON_CLASS_INDEX:
            continue
        for name, mask in parts:
            group = pc.PERSON_PART_GROUPS.get(name)
            if group is None:
                continue
            if mask.shape != shape:
                raise DatasetError(f"a part mask is {mask.shape} but the image is {shape}")
            hit = mask > 0
            if hit.any():
                target[hit] = group
                found = True
    if not found:
        target[:] = 255
    return target


def labelmap_edges(labelmap: np.ndarray) -> np.ndarray:
    """Edge GT from the 459-class LabelMap: thin(|Laplacian| > 0) with the 4-neighbour kernel and
    cv2's default border (reflect-101 = scipy's 'mirror')."""
    from skimage.morphology import thin

    laplacian = ndimage.laplace(labelmap.astype(np.float64), mode="mirror")
    return thin(np.abs(laplacian) > 0).astype(np.uint8)


def read_pascal_semseg(path: Path) -> np.ndarray:
    """VOC labels (0..20, 255 ignore) of a PASCAL-Context semseg PNG, range-checked."""
    raw = read_image_array(path)
    raw = raw[..., 0] if raw.ndim == 3 else raw
    check_labels(raw, path, "PASCAL-Context semseg", 0, len(pc.VOC_CLASSES) - 1, IGNORE_LABEL)
    return raw.astype(np.uint8)


class PASCALContext(MultiTaskDataset):
    """PASCAL-Context (ATRC): ``ImageSets/Context/<split>.txt``, ``JPEGImages``, ``semseg``,
    ``human_parts``, ``sal_distill``, ``normals_distill``, ``pascal-context/trainval``."""

    dataset_name = "pascal"
    area_thres = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._normals_lut = pc.normals_valid_lut()
        self.parts_cache: dict[str, list[int]] | None = None
        if "human_parts" in self.tasks:
            self.parts_cache = load_parts_cache(self.root, self.split, self.ids,
                                                self.root / self.modalities["human_parts"].folder, self.area_thres)

    def has_person(self, image_id: str) -> bool:
        return self.parts_cache is not None and pc.PERSON_CLASS_INDEX in self.parts_cache.get(image_id, [])

    def load_labelmap(self, image_id: str) -> np.ndarray:
        path = self.file("labelmap", image_id)
        mat = _loadmat(path)
        if "LabelMap" not in mat:
            raise DatasetError(f"{path} has no 'LabelMap' variable; re-extract pascal-context/trainval")
        return np.asarray(mat["LabelMap"]).astype(np.int64)

    def load_sample(self, index: int) -> dict[str, np.ndarray]:
        image_id = self.ids[index]
        image = read_image_array(self.file("image", image_id), "RGB").astype(np.float32)
        shape = image.shape[:2]
        sample = {"image": image}
        if "semseg" in self.tasks:
            sample["semseg"] = read_pascal_semseg(self.file("semseg", image_id))
        if "human_parts" in self.tasks:
            if self.has_person(image_id):
                objects = read_part_objects(self.file("human_parts", image_id))
                sample["human_parts"] = human_parts_target(objects, shape)
            else:
                sample["human_parts"] = np.full(shape, 255, dtype=np.uint8)
        if "sal" in self.tasks:
            raw = read_image_array(self.file("sal", image_id), "L")
            sample["sal"] = (raw.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
        labelmap = None
        if "normals" in self.tasks or "edge" in self.tasks:
            labelmap = self.load_labelmap(image_id)
            if labelmap.shape != shape:
                raise DatasetError(f"{self.file('labelmap', image_id)} is {labelmap.shape[0]}x{labelmap.shape[1]} but "
                                   f"the image is {shape[0]}x{shape[1]}; run check_dataset on {self.root}")
        if "normals" in self.tasks:
            normals = read_normals(self.file("normals", image_id))
            if normals.shape[:2] == shape:
                keep = self._normals_lut[np.clip(labelmap, 0, len(self._normals_lut) - 1)]
                normals[~keep] = 0.0
            sample["normals"] = normals
        if "edge" in self.tasks:
            sample["edge"] = labelmap_edges(labelmap)
        return sample
