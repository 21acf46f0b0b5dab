"""Where each dataset keeps its splits and modalities on disk (docs/datasets.md), in one place.

The loaders, the checks and the synthetic writer all read these tables, so the three can never
disagree about a folder name or a file extension. The presence checks (``require_root``,
``require_split_file``, ``require_folders``) live here too: the readers call them and the full dataset
check builds on them, and this module imports nothing of ``pamm``, so neither side imports the other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS: tuple[str, ...] = ("train", "val")

#: Default folder name of each dataset under a data root (``configs/mypath.py`` in the ATRC repos).
DEFAULT_FOLDERS: dict[str, str] = {"nyud": "NYUDv2", "pascal": "PASCALContext"}

#: Marker file the synthetic generator writes at a dataset root; real archives never have it.
SYNTHETIC_MARKER = "pamm_synthetic.json"

#: Image counts of the real ATRC archives (docs/datasets.md); reported, never required.
REAL_SPLIT_COUNTS: dict[str, dict[str, int]] = {
    "nyud": {"train": 795, "val": 654},
    "pascal": {"train": 4998, "val": 5105},
}

#: The only image size (H, W) the ATRC NYUD-v2 archive has; the 480x640 Google-Drive copy breaks padding.
NYUD_REAL_SIZE: tuple[int, int] = (448, 576)
NYUD_WRONG_VERSION_SIZE: tuple[int, int] = (480, 640)
#: PASCAL-Context images are at most 500x500 (padded to 512x512 by the loaders).
PASCAL_MAX_SIDE = 500


class DatasetError(ValueError):
    """A dataset folder is missing something or holds the wrong thing; the message names the file and the fix."""


@dataclass(frozen=True)
class Modality:
    """One per-image folder: ``<root>/<folder>/<id><ext>``."""

    name: str
    folder: str
    ext: str
    kind: str  # "image" (PIL-readable), "npy", "mat"


NYUD_MODALITIES: dict[str, Modality] = {
    "image": Modality("image", "images", ".png", "image"),
    "semseg": Modality("semseg", "segmentation", ".png", "image"),
    "depth": Modality("depth", "depth", ".npy", "npy"),
    "normals": Modality("normals", "normals", ".png", "image"),
    "edge": Modality("edge", "edge", ".png", "image"),
}

PASCAL_MODALITIES: dict[str, Modality] = {
    "image": Modality("image", "JPEGImages", ".jpg", "image"),
    # semseg/VOC12 is preferred when present (see pascal_semseg_modality)
    "semseg": Modality("semseg", "semseg/pascal-context", ".png", "image"),
    "human_parts": Modality("human_parts", "human_parts", ".mat", "mat"),
    "sal": Modality("sal", "sal_distill", ".png", "image"),
    "normals": Modality("normals", "normals_distill", ".png", "image"),
    "labelmap": Modality("labelmap", "pascal-context/trainval", ".mat", "mat"),
}
PASCAL_SEMSEG_VOC12 = Modality("semseg", "semseg/VOC12", ".png", "image")

#: Which modalities each task reads (besides the image).
TASK_MODALITIES: dict[str, dict[str, tuple[str, ...]]] = {
    "nyud": {"semseg": ("semseg",), "depth": ("depth",), "normals": ("normals",), "edge": ("edge",)},
    "pascal": {
        "semseg": ("semseg",),
        "human_parts": ("human_parts",),
        "sal": ("sal",),
        "normals": ("normals", "labelmap"),  # distilled normals masked by the LabelMap classes
        "edge": ("labelmap",),  # edge GT is derived from the LabelMap
    },
}


def split_file(dataset: str, root: Path, split: str) -> Path:
    """Path of the id list of ``split``."""
    if dataset == "nyud":
        return root / "gt_sets" / f"{split}.txt"
    if dataset == "pascal":
        return root / "ImageSets" / "Context" / f"{split}.txt"
    raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(DEFAULT_FOLDERS)}")


def parts_cache_file(root: Path, split: str) -> Path:
    """PASCAL's JSON cache of per-image object classes (written on first use by the ATRC loaders)."""
    return root / "ImageSets" / "Parts" / f"{split}.txt"


def pascal_semseg_modality(root: Path) -> Modality:
    """``semseg/VOC12`` when the archive has it, else ``semseg/pascal-context`` (as the ATRC loader does)."""
    if (root / PASCAL_SEMSEG_VOC12.folder).is_dir():
        return PASCAL_SEMSEG_VOC12
    return PASCAL_MODALITIES["semseg"]


def modalities(dataset: str, root: Path | None = None) -> dict[str, Modality]:
    """The modality table of ``dataset`` (PASCAL's semseg folder resolved against ``root``)."""
    if dataset == "nyud":
        return dict(NYUD_MODALITIES)
    if dataset == "pascal":
        table = dict(PASCAL_MODALITIES)
        if root is not None:
            table["semseg"] = pascal_semseg_modality(root)
        return table
    raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(DEFAULT_FOLDERS)}")


def modalities_for_tasks(dataset: str, tasks: list[str]) -> list[str]:
    """Modality names needed by ``tasks`` (the image first), without duplicates."""
    names = ["image"]
    for task in tasks:
        for name in TASK_MODALITIES[dataset][task]:
            if name not in names:
                names.append(name)
    return names


def read_split_ids(path: Path) -> list[str]:
    """Ids of a split file: one per line, blank lines and surrounding spaces ignored."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_synthetic_marker(root: Path) -> dict[str, Any] | None:
    """The generator's marker at ``root``, or None for a real archive (or an unreadable marker)."""
    path = root / SYNTHETIC_MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or "generator" not in marker:
        return None
    return marker


# ------------------------------------------------------------------------------------------
# presence checks: the readers call these before opening a file, so they live beside the layout


def _fix_data(dataset: str, root: Path) -> str:
    name = dataset if dataset in DEFAULT_FOLDERS else "nyud|pascal"
    return ("download the ATRC archive (the HKUST OneDrive mirrors in the InvPT/MTMamba READMEs), or generate "
            f"synthetic data with `pamm-bench make-synthetic --dataset {name} --out {root}`")


def dataset_title(dataset: str) -> str:
    return {"nyud": "NYUD-v2", "pascal": "PASCAL-Context"}.get(dataset, dataset)


def _expected_layout(dataset: str) -> str:
    if dataset == "nyud":
        return "gt_sets/, images/, segmentation/, depth/, normals/, edge/"
    return ("ImageSets/Context/, JPEGImages/, semseg/, human_parts/, sal_distill/, normals_distill/, "
            "pascal-context/trainval/")


def require_root(dataset: str, root: Path) -> None:
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        holding = _expected_layout(dataset) if dataset in DEFAULT_FOLDERS else "the split lists"
        raise DatasetError(
            f"dataset root {root} {what}: pass the {dataset_title(dataset)} folder itself (the one holding "
            f"{holding}), or {_fix_data(dataset, root)}"
        )


def require_split_file(dataset: str, root: Path, split: str) -> Path:
    path = split_file(dataset, root, split)
    if not path.is_file():
        raise DatasetError(
            f"split file {path} is missing, so {root} is not a complete {dataset_title(dataset)} dataset "
            f"(expected {_expected_layout(dataset)}); re-extract the archive into {root} or regenerate the "
            f"synthetic data (split must be one of {list(SPLITS)})"
        )
    return path


def require_folders(dataset: str, root: Path, modality_names: list[str], tasks: list[str]) -> None:
    table = modalities(dataset, root)
    for name in modality_names:
        folder = root / table[name].folder
        if not folder.is_dir():
            users = [t for t in tasks if name in TASK_MODALITIES[dataset][t]] or ["every task"]
            raise DatasetError(
                f"folder {folder} is missing ({name} files, needed by {', '.join(users)}): re-extract the "
                f"{dataset_title(dataset)} archive into {root}, regenerate the synthetic data, or leave "
                f"{', '.join(users)} out of the tasks"
            )
