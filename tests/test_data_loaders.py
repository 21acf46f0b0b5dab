"""NYUD-v2 and PASCAL-Context loaders on generated data: targets, transforms, caches, read-only data."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.io import loadmat
from skimage.morphology import thin

from pamm.data import build_dataset, make_synthetic, seed_worker
from pamm.data import pascal as pascal_module
from pamm.data import pascal_classes as pc

H, W = 48, 64


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders") / "NYUDv2"
    make_synthetic(root, "nyud", 6, 3, H, W, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders") / "PASCALContext"
    make_synthetic(root, "pascal", 8, 3, H, W, seed=0, progress=False)
    return root


@pytest.fixture
def pascal_copy(pascal_root, tmp_path):
    root = tmp_path / "PASCALContext"
    shutil.copytree(pascal_root, root)
    cache = root / "ImageSets" / "Parts"
    if cache.exists():
        shutil.rmtree(cache)
    return root


def _has_person(root, image_id) -> bool:
    objects = loadmat(root / "human_parts" / f"{image_id}.mat")["anno"][0][0][1][0]
    return any(int(obj[1][0][0]) == pc.PERSON_CLASS_INDEX and len(obj[3][0]) for obj in objects)


def test_nyud_eval_items_follow_task_conventions(nyud_root):
    ds = build_dataset("nyud", nyud_root, "val")
    assert len(ds) == 3 and ds.size == (H, W)  # default size: the synthetic data's own
    item = ds[0]
    image_id = ds.ids[0]
    assert item["meta"]["id"] == image_id
    assert item["meta"]["orig_size"].tolist() == [H, W] and item["meta"]["orig_size"].dtype == torch.long
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert -3 < item["image"].min() and item["image"].max() < 3  # ImageNet-normalised
    raw_seg = np.array(Image.open(nyud_root / "segmentation" / f"{image_id}.png")).astype(int)
    expected = np.where(raw_seg == 0, 255, raw_seg - 1)
    assert item["semseg"].dtype == torch.int64
    np.testing.assert_array_equal(item["semseg"].numpy(), expected)
    raw_depth = np.load(nyud_root / "depth" / f"{image_id}.npy")
    np.testing.assert_array_equal(item["depth"].numpy()[0], raw_depth)
    normals = item["normals"].numpy()
    invalid = raw_depth == 0
    assert np.all(normals[:, invalid] == 255)
    np.testing.assert_allclose(np.linalg.norm(normals[:, ~invalid], axis=0), 1.0, atol=0.02)
    assert set(np.unique(item["edge"].numpy())) <= {0.0, 1.0} and item["edge"].shape == (1, H, W)


def test_eval_pads_to_a_larger_size_with_ignore_values(nyud_root):
    ds = build_dataset("nyud", nyud_root, "val", size=(56, 80))
    item = ds[1]
    assert item["image"].shape == (3, 56, 80)
    assert item["meta"]["orig_size"].tolist() == [H, W]
    assert torch.all(item["image"][:, H:] == 0) and torch.all(item["image"][:, :, W:] == 0)
    assert torch.all(item["semseg"][H:] == 255) and torch.all(item["edge"][:, :, W:] == 255)
    assert torch.all(item["depth"][:, H:] == 0) and torch.all(item["normals"][:, :, W:] == 255)
    unpadded = build_dataset("nyud", nyud_root, "val")[1]
    assert torch.equal(item["image"][:, :H, :W], unpadded["image"])


def test_train_items_are_reproducible_per_seed_epoch_index(nyud_root):
    ds = build_dataset("nyud", nyud_root, "train", train=True, size=(40, 56), seed=3)
    first = ds[2]
    assert first["image"].shape == (3, 40, 56) and first["semseg"].shape == (40, 56)
    assert first["depth"].shape == (1, 40, 56) and first["normals"].shape == (3, 40, 56)
    again = build_dataset("nyud", nyud_root, "train", train=True, size=(40, 56), seed=3)[2]
    assert all(torch.equal(first[k], again[k]) for k in ("image", "semseg", "depth", "normals", "edge"))
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["image"], first["image"])
    other_seed = build_dataset("nyud", nyud_root, "train", train=True, size=(40, 56), seed=4)[2]
    assert not torch.equal(other_seed["image"], first["image"])


def test_batches_do_not_depend_on_worker_count(nyud_root):
    ds = build_dataset("nyud", nyud_root, "train", train=True, size=(40, 56), seed=1)

    def batches(workers: int):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers, worker_init_fn=seed_worker)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert [b["meta"]["id"] for b in serial] == [b["meta"]["id"] for b in parallel]
    for a, b in zip(serial, parallel):
        assert a["meta"]["orig_size"].shape == (3, 2)
        for key in ("image", "semseg", "depth", "normals", "edge"):
            assert torch.equal(a[key], b[key])


def test_pascal_items_and_human_parts_from_the_mat(pascal_copy):
    ds = build_dataset("pascal", pascal_copy, "train")
    with_person = [i for i, image_id in enumerate(ds.ids) if _has_person(pascal_copy, image_id)]
    without = [i for i in range(len(ds)) if i not in with_person]
    assert with_person and without, "the fixture seed must give images with and without people"
    item = ds[with_person[0]]
    assert item["semseg"].dtype == torch.int64 and item["human_parts"].dtype == torch.int64
    assert item["sal"].dtype == torch.int64 and set(np.unique(item["sal"].numpy())) <= {0, 1}
    # parts: every part pixel of the .mat lands in its group
    parts = item["human_parts"].numpy()
    objects = loadmat(pascal_copy / "human_parts" / f"{ds.ids[with_person[0]]}.mat")["anno"][0][0][1][0]
    seen = set()
    for obj in objects:
        if int(obj[1][0][0]) != pc.PERSON_CLASS_INDEX:
            continue
        for part in obj[3][0]:
            group = pc.PERSON_PART_GROUPS[str(part[0][0])]
            assert np.all(parts[part[1] > 0] == group)
            seen.add(group)
    assert set(np.unique(parts)) == seen | {0}
    for index in without:
        assert torch.all(ds[index]["human_parts"] == 255)


def test_pascal_normals_masked_by_labelmap_and_edges_from_it(pascal_copy):
    ds = build_dataset("pascal", pascal_copy, "val")
    for index, image_id in enumerate(ds.ids):
        item = ds[index]
        labelmap = loadmat(pascal_copy / "pascal-context/trainval" / f"{image_id}.mat")["LabelMap"].astype(np.int64)
        keep = np.isin(labelmap, pc.NORMALS_CONTEXT_IDS)
        normals = item["normals"].numpy()
        assert np.all(normals[:, ~keep] == 255) and np.all(np.abs(normals[:, keep]) <= 1)
        expected_edge = thin(np.abs(ndimage.laplace(labelmap.astype(float), mode="mirror")) > 0)
        np.testing.assert_array_equal(item["edge"].numpy()[0], expected_edge.astype(np.float32))
    potted = pc.VOC_CONTEXT_IDS[16]
    assert potted not in pc.NORMALS_CONTEXT_IDS


def test_labelmap_edges_on_a_known_map():
    labelmap = np.zeros((6, 6), dtype=np.int64)
    labelmap[:, 3:] = 7
    edge = pascal_module.labelmap_edges(labelmap)
    assert edge.dtype == np.uint8 and edge.sum() > 0
    assert np.all(edge[:, :2] == 0) and np.all(edge[:, 4:] == 0)  # a thin line at the boundary only


def test_semseg_prefers_voc12_folder(pascal_copy):
    image_id = build_dataset("pascal", pascal_copy, "val", tasks=["semseg"]).ids[0]
    (pascal_copy / "semseg" / "VOC12").mkdir()
    for path in (pascal_copy / "semseg" / "pascal-context").iterdir():
        Image.fromarray(np.full((H, W), 3, np.uint8)).save(pascal_copy / "semseg" / "VOC12" / path.name)
    ds = build_dataset("pascal", pascal_copy, "val", tasks=["semseg"])
    assert ds.ids[0] == image_id and torch.all(ds[0]["semseg"] == 3)


def test_parts_cache_is_written_then_read(pascal_copy):
    cache_file = pascal_copy / "ImageSets" / "Parts" / "train.txt"
    ds = build_dataset("pascal", pascal_copy, "train", tasks=["human_parts"])
    cache = json.loads(cache_file.read_text())
    assert set(cache) == set(ds.ids)
    person_id = next(i for i in ds.ids if _has_person(pascal_copy, i))
    assert pc.PERSON_CLASS_INDEX in cache[person_id]
    assert all(isinstance(c, int) for entry in cache.values() for c in entry)
    # the cache is trusted when valid: hide the person and the loader believes it
    cache[person_id] = []
    cache_file.write_text(json.dumps(cache))
    ds = build_dataset("pascal", pascal_copy, "train", tasks=["human_parts"])
    assert torch.all(ds[ds.ids.index(person_id)]["human_parts"] == 255)
    # a cache for other ids is stale: recomputed and rewritten
    cache_file.write_text(json.dumps({"not-an-id": []}))
    ds = build_dataset("pascal", pascal_copy, "train", tasks=["human_parts"])
    assert set(json.loads(cache_file.read_text())) == set(ds.ids)
    assert not torch.all(ds[ds.ids.index(person_id)]["human_parts"] == 255)


def test_read_only_dataset_works_without_writing_the_cache(pascal_copy, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(pascal_module, "write_json", refuse)
    ds = build_dataset("pascal", pascal_copy, "train")
    assert len(ds) == 8 and ds[0]["image"].shape == (3, H, W)
    assert not (pascal_copy / "ImageSets" / "Parts" / "train.txt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_permissions(pascal_copy):
    for path in [pascal_copy, *pascal_copy.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    try:
        ds = build_dataset("pascal", pascal_copy, "train")
        assert ds[0]["human_parts"].shape == (H, W)
    finally:
        for path in [pascal_copy, *pascal_copy.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


def test_pascal_train_transform_shapes(pascal_copy):
    ds = build_dataset("pascal", pascal_copy, "train", train=True, size=(40, 40), seed=0)
    item = ds[0]
    for key, shape in [("image", (3, 40, 40)), ("semseg", (40, 40)), ("human_parts", (40, 40)), ("sal", (40, 40)),
                       ("normals", (3, 40, 40)), ("edge", (1, 40, 40))]:
        assert item[key].shape == shape, key


def test_unknown_task_and_dataset_are_clear(nyud_root):
    with pytest.raises(ValueError, match="not tasks of 'nyud'"):
        build_dataset("nyud", nyud_root, "train", tasks=["sal"])
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("cityscapes", nyud_root, "train")
