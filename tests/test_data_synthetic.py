"""The synthetic generator: deterministic, in the real layouts, geometrically exact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from pamm.data import DatasetError, build_dataset, make_synthetic
from pamm.data import pascal_classes as pc
from pamm.data.scenes import NYUD_LABELS, PASCAL_LABELS
from pamm.data.synthetic import GENERATOR_VERSION, render_sample

H, W = 48, 64


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "NYUDv2"
    make_synthetic(root, "nyud", 6, 3, H, W, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "PASCALContext"
    make_synthetic(root, "pascal", 6, 3, H, W, seed=0, progress=False)
    return root


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dataset", ["nyud", "pascal"])
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, dataset):
    make_synthetic(tmp_path / "a", dataset, 2, 1, H, W, seed=5, progress=False)
    make_synthetic(tmp_path / "b", dataset, 2, 1, H, W, seed=5, progress=False)
    make_synthetic(tmp_path / "c", dataset, 2, 1, H, W, seed=6, progress=False)
    a, b, c = (_all_files(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert a == b
    image_key = next(k for k in a if k.startswith(("images/", "JPEGImages/")))
    assert a[image_key] != c[image_key]


def test_image_does_not_depend_on_split_sizes(tmp_path):
    make_synthetic(tmp_path / "a", "nyud", 1, 1, H, W, seed=1, progress=False)
    make_synthetic(tmp_path / "b", "nyud", 3, 2, H, W, seed=1, progress=False)
    for rel in ["images/syn_tr00000.png", "images/syn_va00000.png"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_nyud_layout_dtypes_and_ranges(nyud_root):
    marker = json.loads((nyud_root / "pamm_synthetic.json").read_text())
    assert GENERATOR_VERSION == 2  # 2: PASCAL people stand closer and are more frequent
    assert marker == {"generator": "pamm.data.synthetic", "version": GENERATOR_VERSION, "seed": 0, "height": H, "width": W,
                      "n_train": 6, "n_val": 3, "dataset": "nyud"}
    ids = [i for split in ("train", "val") for i in (nyud_root / "gt_sets" / f"{split}.txt").read_text().split()]
    assert len(ids) == 9 and len(set(ids)) == 9
    used = set(NYUD_LABELS.values())
    n_invalid = 0
    for image_id in ids:
        image = Image.open(nyud_root / "images" / f"{image_id}.png")
        assert image.mode == "RGB" and image.size == (W, H)
        depth = np.load(nyud_root / "depth" / f"{image_id}.npy")
        assert depth.dtype == np.float32 and depth.shape == (H, W)
        assert depth.min() >= 0 and depth.max() < 12
        normals = np.array(Image.open(nyud_root / "normals" / f"{image_id}.png"))
        assert normals.dtype == np.uint8 and normals.shape == (H, W, 3)
        invalid = np.all(normals == 0, axis=-1)
        np.testing.assert_array_equal(invalid, depth == 0)  # holes are shared by both sensors' outputs
        n_invalid += int(invalid.sum())
        seg = np.array(Image.open(nyud_root / "segmentation" / f"{image_id}.png"))
        assert seg.dtype == np.uint8 and seg.shape == (H, W)
        assert set(np.unique(seg)) <= used | {0}
        edge = np.array(Image.open(nyud_root / "edge" / f"{image_id}.png"))
        assert set(np.unique(edge)) <= {0, 255} and 0 < (edge == 255).mean() < 0.5
    assert n_invalid > 0  # some depth holes somewhere


@pytest.mark.parametrize("seed", range(4))
def test_geometry_is_exact_and_consistent(seed):
    rng = np.random.default_rng(seed)
    sample = render_sample("nyud", rng, 60, 80)
    n = sample.normals
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    floor = sample.label == NYUD_LABELS["floor"]
    ceiling = sample.label == NYUD_LABELS["ceiling"]
    assert floor.any()
    assert np.all(n[floor][:, 1] > 0.8)  # upward in the camera frame (y up)
    assert np.all(n[ceiling][:, 1] < -0.8)
    camera = sample.scene.camera
    f = camera.focal(80)
    ys, xs = np.mgrid[0:60, 0:80]
    rays = np.stack([(xs + 0.5 - 40) / f, -(ys + 0.5 - 30) / f, -np.ones((60, 80))], axis=-1)
    assert np.all(np.einsum("hwc,hwc->hw", n, rays) < 1e-6)  # every visible normal faces the camera
    # back-project depth: floor pixels lie on the world plane y = 0
    rows, cols = np.nonzero(floor)
    x_cam = (cols + 0.5 - 40) / f * sample.depth[rows, cols]
    y_cam = -(rows + 0.5 - 30) / f * sample.depth[rows, cols]
    cam = np.stack([x_cam, y_cam, -sample.depth[rows, cols]], axis=1)
    world = cam @ camera.rotation.T + camera.position
    np.testing.assert_allclose(world[:, 1], 0.0, atol=1e-4)
    assert sample.depth.min() > 0


def test_pascal_layout_and_file_internals(pascal_root):
    ids = (pascal_root / "ImageSets/Context/train.txt").read_text().split()
    ids += (pascal_root / "ImageSets/Context/val.txt").read_text().split()
    lut = pc.context_to_voc_lut()
    persons = 0
    for image_id in ids:
        image = Image.open(pascal_root / "JPEGImages" / f"{image_id}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (W, H)
        labelmap = loadmat(pascal_root / "pascal-context/trainval" / f"{image_id}.mat")["LabelMap"]
        assert labelmap.shape == (H, W) and set(np.unique(labelmap)) <= set(PASCAL_LABELS.values())
        semseg = np.array(Image.open(pascal_root / "semseg/pascal-context" / f"{image_id}.png"))
        assert semseg.dtype == np.uint8 and set(np.unique(semseg)) <= set(range(21)) | {255}
        labelled = semseg != 255
        np.testing.assert_array_equal(semseg[labelled], lut[labelmap][labelled])
        sal = Image.open(pascal_root / "sal_distill" / f"{image_id}.png")
        assert sal.mode == "L" and sal.size == (W, H)
        assert Image.open(pascal_root / "normals_distill" / f"{image_id}.png").mode == "RGB"
        anno = loadmat(pascal_root / "human_parts" / f"{image_id}.mat")["anno"][0][0]
        assert str(anno[0][0]) == image_id
        for obj in anno[1][0]:
            class_index = int(obj[1][0][0])
            assert str(obj[0][0]) == pc.VOC_CLASSES[class_index]
            mask = obj[2]
            assert mask.shape == (H, W) and mask.any()
            assert np.all(labelmap[mask > 0] == pc.VOC_CONTEXT_IDS[class_index])
            parts = obj[3][0]
            if class_index == pc.PERSON_CLASS_INDEX:
                persons += 1
                names = [str(part[0][0]) for part in parts]
                assert names and set(names) <= set(pc.PERSON_PART_GROUPS)
                for part in parts:
                    assert part[1].shape == (H, W) and np.all(mask[part[1] > 0] > 0)
            else:
                assert len(parts) == 0
    assert persons > 0


def test_pascal_people_are_frequent_and_large_enough_to_learn_parts_at_64px(tmp_path):
    """The human_parts task at the tiny scale's 64x64: most images have a person, persons are ~1/5 of the
    labelled parts pixels (generator version 1: about 60 % and 12 %, and the tiny stl_human_parts run lost to
    the majority class), and every part group is present."""
    make_synthetic(tmp_path, "pascal", 32, 0, 64, 64, seed=0, progress=False)
    ds = build_dataset("pascal", tmp_path, "train", tasks=["human_parts"], train=False, size=(64, 64))
    targets = [ds[i]["human_parts"].numpy() for i in range(len(ds))]
    with_person = [t for t in targets if (t != 255).any()]
    assert len(with_person) >= 0.7 * len(targets)
    labelled = np.concatenate([t[t != 255] for t in with_person])
    assert (labelled > 0).mean() >= 0.15
    shares = np.bincount(labelled, minlength=7) / labelled.size
    assert shares[1:].min() >= 0.005  # head, torso, upper/lower arms, upper/lower legs all learnable


def test_pascal_uses_context_ids_consistent_with_voc_and_normals_tables():
    for name, context_id in PASCAL_LABELS.items():
        if name in ("chair", "table", "sofa", "television", "bottle", "pottedplant", "person"):
            assert context_id in pc.VOC_CONTEXT_IDS
        assert (context_id in pc.NORMALS_CONTEXT_IDS) == (name != "pottedplant")


def test_refuses_to_overwrite_a_folder_without_marker(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "something.txt").write_text("x")
    with pytest.raises(DatasetError, match="refusing"):
        make_synthetic(tmp_path / "real", "nyud", 1, 1, H, W, progress=False)


def test_large_size_renders(tmp_path):
    sample = render_sample("pascal", np.random.default_rng(0), 448, 576)
    assert sample.rgb.shape == (448, 576, 3) and sample.depth.shape == (448, 576)
