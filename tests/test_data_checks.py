"""check_dataset: a clear error for every way a dataset folder can be wrong."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pamm.data import DatasetError, check_dataset, check_dataset_cli_summary, detect_dataset, make_synthetic

H, W = 48, 64


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks") / "NYUDv2"
    make_synthetic(root, "nyud", 4, 2, H, W, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks") / "PASCALContext"
    make_synthetic(root, "pascal", 4, 2, H, W, seed=0, progress=False)
    return root


@pytest.fixture
def nyud(nyud_root, tmp_path):
    shutil.copytree(nyud_root, tmp_path / "NYUDv2")
    return tmp_path / "NYUDv2"


@pytest.fixture
def pascal(pascal_root, tmp_path):
    shutil.copytree(pascal_root, tmp_path / "PASCALContext")
    return tmp_path / "PASCALContext"


def test_good_datasets_pass_with_a_summary(nyud_root, pascal_root):
    report = check_dataset("nyud", nyud_root)
    assert report["splits"] == {"train": 4, "val": 2} and report["synthetic"]
    assert report["image_size"] == [H, W] and report["tasks"] == ["semseg", "depth", "normals", "edge"]
    assert report["warnings"] == [] and report["files_checked"] == 6 * 5
    text = check_dataset_cli_summary(report)
    assert "NYUD-v2 (synthetic)" in text and "train 4, val 2" in text and "48x64" in text
    report = check_dataset(None, pascal_root)  # detected from the layout
    assert report["dataset"] == "pascal" and report["tasks"][1] == "human_parts"
    assert "semseg/pascal-context" in report["folders"].values()
    assert "PASCAL-Context (synthetic)" in check_dataset_cli_summary(report)


def test_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere does not exist.*make-synthetic --dataset nyud"):
        check_dataset("nyud", tmp_path / "nowhere")


def test_missing_split_file(nyud):
    (nyud / "gt_sets" / "val.txt").unlink()
    with pytest.raises(DatasetError, match=r"split file .*gt_sets/val.txt is missing.*re-extract"):
        check_dataset("nyud", nyud)


def test_missing_modality_folder(pascal):
    shutil.rmtree(pascal / "sal_distill")
    with pytest.raises(DatasetError, match=r"folder .*sal_distill is missing .*needed by sal"):
        check_dataset("pascal", pascal)
    assert check_dataset("pascal", pascal, tasks=["semseg", "edge"])["tasks"] == ["semseg", "edge"]


def test_wrong_480x640_nyud_version(nyud):
    (nyud / "pamm_synthetic.json").unlink()  # a real archive
    for path in (nyud / "images").iterdir():
        Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=r"is 480x640 .*MTL-PyTorch.*ATRC 448x576"):
        check_dataset("nyud", nyud)


def test_real_nyud_of_another_size_is_rejected(nyud):
    (nyud / "pamm_synthetic.json").unlink()
    with pytest.raises(DatasetError, match=r"is 48x64 \(HxW\) but the ATRC NYUD-v2 size is 448x576"):
        check_dataset("nyud", nyud)
    assert check_dataset("nyud", nyud, expected_size=(H, W))["warnings"]  # counts differ from 795/654


def test_ids_without_files(nyud):
    (nyud / "depth" / "syn_tr00002.npy").unlink()
    (nyud / "depth" / "syn_tr00003.npy").unlink()
    with pytest.raises(DatasetError, match=r"2 of 4 ids in .*train.txt have no file in .*depth "
                                           r"\(first missing: .*syn_tr00002.npy\)"):
        check_dataset("nyud", nyud)


def test_unreadable_image(nyud):
    (nyud / "normals" / "syn_va00001.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cannot read .*normals/syn_va00001.png .*corrupt"):
        check_dataset("nyud", nyud)


def test_unreadable_npy_and_mat(nyud, pascal):
    (nyud / "depth" / "syn_tr00000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DatasetError, match=r"cannot read .*depth/syn_tr00000.npy"):
        check_dataset("nyud", nyud)
    (pascal / "pascal-context" / "trainval" / "syn_va00000.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"cannot read .*trainval/syn_va00000.mat"):
        check_dataset("pascal", pascal)


def test_mis_sized_label_file(nyud):
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(nyud / "segmentation" / "syn_tr00001.png")
    with pytest.raises(DatasetError, match=r"segmentation/syn_tr00001.png is 50x64 \(HxW\) but its image .* is 48x64"):
        check_dataset("nyud", nyud)


def test_mis_sized_synthetic_image(nyud):
    Image.fromarray(np.zeros((H, W + 4, 3), np.uint8)).save(nyud / "images" / "syn_va00000.png")
    with pytest.raises(DatasetError, match=r"images/syn_va00000.png is 48x68 .*pamm_synthetic.json is 48x64"):
        check_dataset("nyud", nyud)


def test_mis_sized_parts_annotation(pascal):
    from scipy.io import savemat

    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    objects = np.zeros((1, 1), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    objects[0, 0] = ("person", np.array([[15.0]]), np.ones((5, 5), np.uint8), np.zeros((1, 0), dtype=[("a", "O")]))
    anno[0, 0] = ("syn_tr00000", objects)
    savemat(pascal / "human_parts" / "syn_tr00000.mat", {"anno": anno})
    with pytest.raises(DatasetError, match=r"human_parts/syn_tr00000.mat has a mask of 5x5"):
        check_dataset("pascal", pascal)


def test_detect_dataset(nyud, pascal, tmp_path):
    assert detect_dataset(nyud) == "nyud" and detect_dataset(pascal) == "pascal"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell which dataset"):
        detect_dataset(tmp_path / "empty")
