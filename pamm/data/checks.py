"""Fail-fast dataset checks: every problem is one ``DatasetError`` naming the file or folder and the fix.

Why: a wrong or incomplete dataset otherwise fails hours into training (the 480x640 NYUD copy breaks
padding; a missing file crashes a DataLoader worker at some random step) or, worse, trains on wrong
targets without a word (depth in millimetres, one-channel normals, labels beyond the classes). By
default every file is decoded whole with the loaders' own readers, so the content rules of
``pamm.data.validate`` hold for the whole dataset; ``sample=N`` reads only file headers (PIL without
decoding, ``np.load(mmap_mode='r')``, ``scipy.io.whosmat``) plus N ids' content per split, for a
seconds-long look at PASCAL-Context's 10k images.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pamm.data import layout
from pamm.data.layout import DatasetError, dataset_title, require_folders, require_root, require_split_file


def detect_dataset(root: str | os.PathLike) -> str:
    """"nyud" or "pascal" from a dataset folder's layout (or its marker / folder name)."""
    root = Path(root)
    marker = layout.read_synthetic_marker(root)
    if marker is not None and marker.get("dataset") in layout.DEFAULT_FOLDERS:
        return str(marker["dataset"])
    if (root / "gt_sets").is_dir():
        return "nyud"
    if (root / "ImageSets" / "Context").is_dir() or (root / "JPEGImages").is_dir():
        return "pascal"
    for name, folder in layout.DEFAULT_FOLDERS.items():
        if root.name.lower() == folder.lower():
            return name
    require_root("dataset", root)
    raise DatasetError(
        f"cannot tell which dataset {root} holds: it has neither gt_sets/ (NYUD-v2) nor ImageSets/Context/ "
        "(PASCAL-Context); pass the dataset folder itself (e.g. data/NYUDv2) or name the dataset explicitly"
    )


# ------------------------------------------------------------------------------------------
# header readers: (H, W) of a file without decoding it


def _unreadable(path: Path, err: BaseException) -> DatasetError:
    return DatasetError(
        f"cannot read {path} ({type(err).__name__}: {err}); the file is corrupt or truncated: re-extract it from "
        "the archive or regenerate the synthetic data"
    )


def header_size(path: Path, kind: str) -> tuple[int, int]:
    """(H, W) of an image, .npy or .mat (LabelMap) file from its header."""
    try:
        if kind == "image":
            from PIL import Image

            with Image.open(path) as image:
                width, height = image.size
            return height, width
        if kind == "npy":
            array = np.load(path, mmap_mode="r")
            if not np.issubdtype(array.dtype, np.floating):
                raise DatasetError(f"{path} holds {array.dtype} values; depth must be float metres: re-extract it")
            shape = tuple(s for s in array.shape if s != 1) if array.ndim == 3 else array.shape
            if len(shape) != 2:
                raise DatasetError(f"{path} has shape {array.shape}; depth must be (H, W): re-extract it")
            return int(shape[0]), int(shape[1])
        if kind == "mat":
            from scipy.io import whosmat

            for name, shape, _ in whosmat(path):
                if name == "LabelMap":
                    return int(shape[0]), int(shape[1])
            raise DatasetError(f"{path} has no 'LabelMap' variable; re-extract pascal-context/trainval")
    except DatasetError:
        raise
    except Exception as err:  # PIL, numpy and scipy each raise their own kinds on corrupt files
        raise _unreadable(path, err) from None
    raise ValueError(f"no header reader for {kind!r}")


def _check_parts_file(path: Path, shape: tuple[int, int]) -> None:
    """Fully read one Pascal-Part annotation and check its masks' size."""
    from pamm.data.pascal import read_part_objects

    try:
        objects = read_part_objects(path)
    except DatasetError:
        raise
    except Exception as err:
        raise _unreadable(path, err) from None
    for _, mask, parts in objects:
        for array in [mask] + [m for _, m in parts]:
            if array.shape[:2] != shape:
                raise DatasetError(
                    f"{path} has a mask of {array.shape[0]}x{array.shape[1]} but the image is {shape[0]}x{shape[1]}: "
                    "re-extract human_parts/ or regenerate the synthetic data"
                )


def _size_str(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _wrong_nyud_version(path: Path, root: Path) -> DatasetError:
    return DatasetError(
        f"{path} is 480x640 (HxW): {root} is the MTL-PyTorch (Google-Drive) NYUD-v2, not the ATRC 448x576 "
        "version these models pad to; download the ATRC NYUDv2 archive (HKUST OneDrive mirror in the "
        "InvPT/MTMamba READMEs) and point to it instead"
    )


def _evenly_spaced(ids: list[str], limit: int | None) -> list[str]:
    if limit is None or len(ids) <= limit:
        return ids
    picks = np.unique(np.linspace(0, len(ids) - 1, max(limit, 2)).round().astype(int))
    return [ids[i] for i in picks]


def check_split_ids(dataset: str, root: Path, split_ids: dict[str, list[str]]) -> None:
    """No id twice in a split, and no id in both train and val (a leak that inflates every val metric)."""
    for split, ids in split_ids.items():
        seen: set[str] = set()
        repeated = [i for i in ids if i in seen or seen.add(i)]
        if repeated:
            raise DatasetError(
                f"{layout.split_file(dataset, root, split)} lists {len(repeated)} id(s) more than once (first: "
                f"{repeated[0]!r}); each image must appear once per split: remove the repeated lines"
            )
    if "train" in split_ids and "val" in split_ids:
        val = set(split_ids["val"])
        shared = [i for i in split_ids["train"] if i in val]
        if shared:
            raise DatasetError(
                f"{len(shared)} id(s) are in both {layout.split_file(dataset, root, 'train')} and "
                f"{layout.split_file(dataset, root, 'val')} (first: {shared[0]!r}): evaluating on training images "
                "inflates every val metric; remove them from one of the two splits"
            )


def require_ids(dataset: str, root: Path, split: str, ids: list[str]) -> None:
    if not ids:
        raise DatasetError(
            f"split file {layout.split_file(dataset, root, split)} lists no ids, so the {split} split is empty: "
            "fill it with one image id per line (re-extract the archive), or regenerate the synthetic data"
        )


def preflight(dataset: str, root: str | os.PathLike, need: tuple[str, ...] = ("train",)) -> None:
    """The checks a training or evaluation job runs before it starts (milliseconds, unlike ``check_dataset``):
    the root and split files exist, ``need`` splits are non-empty, no id is repeated or shared between train
    and val, and the first image is not of the 480x640 NYUD-v2 copy."""
    root = Path(root)
    require_root(dataset, root)
    split_ids = {}
    for split in layout.SPLITS:
        path = layout.split_file(dataset, root, split)
        if split in need or path.is_file():
            split_ids[split] = layout.read_split_ids(require_split_file(dataset, root, split))
    for split in need:
        require_ids(dataset, root, split, split_ids[split])
    check_split_ids(dataset, root, split_ids)
    if dataset == "nyud" and layout.read_synthetic_marker(root) is None:
        image = layout.modalities(dataset, root)["image"]
        first = root / image.folder / f"{split_ids[need[0]][0]}{image.ext}"
        if first.is_file() and header_size(first, "image") == layout.NYUD_WRONG_VERSION_SIZE:
            raise _wrong_nyud_version(first, root)


def _content_readers(dataset: str) -> dict[str, Any]:
    """modality name -> function(path) -> (H, W) that decodes the whole file with the loaders' own readers
    (and so their content rules: label ranges, depth units, normals channels, Pascal-Part structure)."""
    from pamm.data.nyud import read_nyud_depth, read_nyud_semseg
    from pamm.data.pascal import _loadmat, read_pascal_semseg
    from pamm.data.readers import read_image_array, read_normals

    def shape(array: np.ndarray) -> tuple[int, int]:
        return int(array.shape[0]), int(array.shape[1])

    def labelmap(path: Path) -> tuple[int, int]:
        mat = _loadmat(path)
        if "LabelMap" not in mat or np.asarray(mat["LabelMap"]).ndim != 2:
            raise DatasetError(f"{path} has no 2-D 'LabelMap' variable; re-extract pascal-context/trainval")
        return shape(np.asarray(mat["LabelMap"]))

    readers = {"image": lambda p: shape(read_image_array(p, "RGB")),
               "normals": lambda p: shape(read_normals(p))}
    if dataset == "nyud":
        readers.update(semseg=lambda p: shape(read_nyud_semseg(p)), depth=lambda p: shape(read_nyud_depth(p)),
                       edge=lambda p: shape(read_image_array(p)))
    else:
        readers.update(semseg=lambda p: shape(read_pascal_semseg(p)), sal=lambda p: shape(read_image_array(p, "L")),
                       labelmap=labelmap)
    return readers


def check_dataset(
    dataset: str | None,
    root: str | os.PathLike,
    expected_size: tuple[int, int] | None = None,
    tasks: list[str] | None = None,
    sample: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Check a dataset folder; return a summary or raise ``DatasetError`` on the first problem.

    ``dataset`` may be None to detect it from the layout. Every file of every id is decoded whole and held
    to the loaders' content rules (label ranges, depth in float metres, RGB normals, Pascal-Part
    structure, sizes); ``sample=N`` instead reads the headers of every file and the content of only N
    evenly spaced ids per split (fast, and it can miss a bad file). Splits must not repeat an id nor share
    one between train and val. Sizes: every file of an id must match its image; images must be
    ``expected_size`` if given, else 448x576 for a real NYUD-v2 (480x640 is recognised as the wrong
    version), the marker's size for synthetic data, and at most 500x500 for a real PASCAL-Context (a
    warning). Split counts differing from the real archives' (795/654, 4998/5105) are reported as
    warnings, never for synthetic data.
    """
    from tqdm import tqdm

    from pamm.tasks import dataset_tasks

    start = time.perf_counter()
    root = Path(root)
    if dataset is None:
        dataset = detect_dataset(root)
    if dataset not in layout.DEFAULT_FOLDERS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(layout.DEFAULT_FOLDERS)}")
    tasks = list(dataset_tasks(dataset, tasks))
    require_root(dataset, root)
    marker = layout.read_synthetic_marker(root)
    synthetic = marker is not None
    split_ids = {split: layout.read_split_ids(require_split_file(dataset, root, split)) for split in layout.SPLITS}
    check_split_ids(dataset, root, split_ids)
    table = layout.modalities(dataset, root)
    names = layout.modalities_for_tasks(dataset, tasks)
    require_folders(dataset, root, ["image"], tasks)

    if expected_size is not None:
        size_rule: tuple[int, int] | None = (int(expected_size[0]), int(expected_size[1]))
        size_reason = "the expected size"
    elif synthetic and "height" in marker and "width" in marker:
        size_rule, size_reason = (int(marker["height"]), int(marker["width"])), f"the size in {layout.SYNTHETIC_MARKER}"
    elif dataset == "nyud":
        size_rule, size_reason = layout.NYUD_REAL_SIZE, "the ATRC NYUD-v2 size"
    else:
        size_rule, size_reason = None, ""

    def check_image_size(path: Path, size: tuple[int, int]) -> None:
        if dataset == "nyud" and not synthetic and size == layout.NYUD_WRONG_VERSION_SIZE and expected_size is None:
            raise _wrong_nyud_version(path, root)
        if size_rule is not None and size != size_rule:
            raise DatasetError(
                f"{path} is {_size_str(size)} (HxW) but {size_reason} is {_size_str(size_rule)}: re-extract the "
                "archive, regenerate the synthetic data, or pass the right expected size"
            )

    # the wrong NYUD version is the most common mistake: catch it before anything else
    first_ids = [ids[0] for ids in split_ids.values() if ids]
    if first_ids:
        first_image = root / table["image"].folder / f"{first_ids[0]}{table['image'].ext}"
        if first_image.is_file():
            check_image_size(first_image, header_size(first_image, "image"))
    require_folders(dataset, root, names, tasks)

    # every id has a file in every modality folder
    listings: dict[str, set[str]] = {}
    for split, ids in split_ids.items():
        for name in names:
            modality = table[name]
            if modality.folder not in listings:
                listings[modality.folder] = set(os.listdir(root / modality.folder))
            missing = [image_id for image_id in ids if f"{image_id}{modality.ext}" not in listings[modality.folder]]
            if missing:
                first = root / modality.folder / f"{missing[0]}{modality.ext}"
                raise DatasetError(
                    f"{len(missing)} of {len(ids)} ids in {layout.split_file(dataset, root, split)} have no file in "
                    f"{root / modality.folder} (first missing: {first}); the archive is incomplete: re-extract it "
                    "or regenerate the synthetic data"
                )

    # content (every file, or a sample) and sizes
    readers = _content_readers(dataset)
    files_checked, contents_read = 0, 0
    min_size, max_size = None, None
    bar = tqdm(total=sum(len(ids) for ids in split_ids.values()), disable=not progress, desc=f"check {dataset}",
               unit="id", mininterval=1.0, dynamic_ncols=True)
    for split, ids in split_ids.items():
        read_whole = set(ids) if sample is None else set(_evenly_spaced(ids, sample))
        for image_id in ids:
            whole = image_id in read_whole
            sizes: dict[str, tuple[int, int]] = {}
            for name in names:
                modality = table[name]
                path = root / modality.folder / f"{image_id}{modality.ext}"
                if name == "human_parts":
                    if whole:  # checked against the image below
                        sizes[name] = None  # type: ignore[assignment]
                    continue
                sizes[name] = readers[name](path) if whole else header_size(path, modality.kind)
                files_checked += 1
                contents_read += whole
            image_path = root / table["image"].folder / f"{image_id}{table['image'].ext}"
            size = sizes["image"]
            check_image_size(image_path, size)
            min_size = size if min_size is None else (min(min_size[0], size[0]), min(min_size[1], size[1]))
            max_size = size if max_size is None else (max(max_size[0], size[0]), max(max_size[1], size[1]))
            for name, other in sizes.items():
                path = root / table[name].folder / f"{image_id}{table[name].ext}"
                if name == "human_parts":
                    _check_parts_file(path, size)
                    files_checked += 1
                    contents_read += 1
                elif other != size:
                    raise DatasetError(
                        f"{path} is {_size_str(other)} (HxW) but its image {image_path} is {_size_str(size)}: "
                        f"re-extract {table[name].folder}/ or regenerate the synthetic data"
                    )
            bar.update(1)
    bar.close()

    warnings: list[str] = []
    counts = {split: len(ids) for split, ids in split_ids.items()}
    expected_counts = None if synthetic else layout.REAL_SPLIT_COUNTS[dataset]
    if expected_counts is not None and counts != expected_counts:
        warnings.append(f"split sizes {counts} differ from the real archive's {expected_counts}")
    if dataset == "pascal" and not synthetic and max_size is not None and max(max_size) > layout.PASCAL_MAX_SIDE:
        warnings.append(f"largest image is {_size_str(max_size)}; real PASCAL-Context images are at most 500x500")
    if any(n == 0 for n in counts.values()):
        warnings.append(f"empty split(s): {[s for s, n in counts.items() if n == 0]}")
    return {
        "dataset": dataset,
        "root": str(root),
        "synthetic": synthetic,
        "marker": marker,
        "splits": counts,
        "expected_counts": expected_counts,
        "image_size": list(min_size) if min_size is not None and min_size == max_size else None,
        "image_size_range": None if min_size is None else {"min": list(min_size), "max": list(max_size)},
        "tasks": tasks,
        "folders": {name: table[name].folder for name in names},
        "files_checked": files_checked,
        "contents_read": contents_read,
        "mode": ("every file read whole" if sample is None
                 else f"headers of every file, content of {sample} ids per split"),
        "seconds": round(time.perf_counter() - start, 3),
        "warnings": warnings,
    }


def check_dataset_cli_summary(report: dict[str, Any]) -> str:
    """Human-readable lines for ``pamm-bench check-dataset``."""
    kind = "synthetic" if report["synthetic"] else "real"
    lines = [f"{dataset_title(report['dataset'])} ({kind}) at {report['root']}: OK"]
    splits = ", ".join(f"{split} {n}" for split, n in report["splits"].items())
    if report.get("expected_counts"):
        expected = "/".join(str(n) for n in report["expected_counts"].values())
        splits += f" (real archive: {expected})"
    lines.append(f"  images: {splits}")
    if report.get("image_size"):
        lines.append(f"  image size: {_size_str(tuple(report['image_size']))} (HxW)")
    elif report.get("image_size_range"):
        rng = report["image_size_range"]
        lines.append(f"  image size: {_size_str(tuple(rng['min']))} .. {_size_str(tuple(rng['max']))} (HxW)")
    lines.append(f"  tasks: {', '.join(report['tasks'])}")
    lines.append(f"  folders: {', '.join(sorted(set(report['folders'].values())))}")
    mode = report.get("mode", "headers")
    lines.append(f"  {report['files_checked']} files checked ({mode}) in {report['seconds']:.2f} s")
    if report.get("marker"):
        m = report["marker"]
        lines.append(f"  generator: {m.get('generator')} v{m.get('version')}, seed {m.get('seed')}")
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
