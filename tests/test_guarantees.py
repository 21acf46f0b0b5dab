"""docs/guarantees.md, case by case: every bad input gives a correct result or one clear line (exit code 2,
no traceback), never a silently wrong one.

The CLI runs in this process (``pamm.cli.main``) on tiny synthetic data; each test breaks one thing.
Interruptions (SIGKILL, Ctrl-C, a full disk) are in test_train_resume.py, the workflow's cases in
test_pipeline.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pamm.cli import main
from pamm.config import ConfigError, config_hash, parse_override, resolve_config
from pamm.data import DatasetError, build_dataset, check_dataset, make_synthetic

H, W = 48, 64
TRAIN = ["train", "--dataset", "nyud", "--model", "mtl", "--seed", "1", "--threads", "1", "--no-progress",
         "--set", "data.size=[48, 64]", "--set", "train.iterations=2", "--set", "train.batch_size=2",
         "--set", "train.ckpt_every=1", "--set", "eval.batch_size=2"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(capsys, *argv, code=2):
    """Run the CLI expecting a failure: exit ``code`` and exactly one line on stderr (no traceback)."""
    got, _, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def nyud_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarantees") / "NYUDv2"
    make_synthetic(root, "nyud", 4, 2, H, W, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def pascal_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarantees") / "PASCALContext"
    make_synthetic(root, "pascal", 9, 3, H, W, seed=0, progress=False)
    return root


@pytest.fixture
def nyud(nyud_master, tmp_path):
    shutil.copytree(nyud_master, tmp_path / "NYUDv2")
    return tmp_path / "NYUDv2"


@pytest.fixture
def pascal(pascal_master, tmp_path):
    shutil.copytree(pascal_master, tmp_path / "PASCALContext")
    return tmp_path / "PASCALContext"


@pytest.fixture(scope="module")
def trained(nyud_master, tmp_path_factory):
    """A finished 2-iteration run (and its data), trained once; tests copy it before changing anything."""
    base = tmp_path_factory.mktemp("trained")
    data = base / "NYUDv2"
    shutil.copytree(nyud_master, data)
    assert main([*TRAIN, "--data-root", str(data), "--out", str(base / "run")]) == 0
    return base


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run whose config points at a copy of its data."""
    shutil.copytree(trained / "NYUDv2", tmp_path / "run_data")
    shutil.copytree(trained / "run", tmp_path / "run")
    cfg_path = tmp_path / "run" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["data"]["root"] = str(tmp_path / "run_data")
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path / "run"


def _mount(args, path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", *args, str(path)], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------------------------- labels


def test_nyud_label_beyond_40_classes_is_caught_by_check_train_and_evaluate(nyud, run, capsys):
    bad = np.array(Image.open(nyud / "segmentation" / "syn_tr00001.png"))
    bad[3, 3] = 41
    Image.fromarray(bad).save(nyud / "segmentation" / "syn_tr00001.png")
    with pytest.raises(DatasetError, match=r"segmentation/syn_tr00001.png holds label 41 but NYUD-v2 segmentation "
                                           r"\(raw, 0 = void\) labels are 0..40"):
        check_dataset("nyud", nyud)
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", nyud.parent / "out")
    assert "syn_tr00001.png holds label 41" in line
    # evaluation of a finished run on a val file gone bad
    root = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    val = os.path.join(root, "segmentation", "syn_va00000.png")
    labels = np.array(Image.open(val))
    labels[0, 0] = 255  # raw 255 would become class 254 after the void shift
    Image.fromarray(labels).save(val)
    line = one_line(capsys, "evaluate", "--run", run, "--no-progress")
    assert "syn_va00000.png holds label 255" in line


def test_pascal_semseg_label_beyond_20_classes(pascal):
    path = pascal / "semseg" / "pascal-context" / "syn_va00001.png"
    labels = np.array(Image.open(path))
    labels[5, 5] = 30
    Image.fromarray(labels).save(path)
    with pytest.raises(DatasetError, match=r"syn_va00001.png holds label 30 but PASCAL-Context semseg labels are "
                                           r"0..20 or 255 \(ignore\)"):
        check_dataset("pascal", pascal)
    with pytest.raises(DatasetError, match="holds label 30"):
        build_dataset("pascal", pascal, "val", tasks=["semseg"], size=(H, W))[1]


def test_part_label_beyond_the_6_parts_names_the_annotation(pascal):
    """Parts are built from Pascal-Part masks; whatever builds them, a target beyond 0..6 (255) is refused."""
    dataset = build_dataset("pascal", pascal, "train", tasks=["human_parts"], size=(H, W))
    sample = {"image": np.zeros((H, W, 3), np.float32), "human_parts": np.full((H, W), 7, np.uint8)}
    with pytest.raises(DatasetError, match=r"human_parts/syn_tr00000.mat holds label 7 but pascal human_parts "
                                           r"labels are 0..6 or 255"):
        dataset.check_labels(0, sample)
    sample["human_parts"][:] = 6
    dataset.check_labels(0, sample)  # the largest part label passes


# ---------------------------------------------------------------------------------------------- normals, depth


def test_one_channel_normals_are_refused(nyud, capsys):
    path = nyud / "normals" / "syn_tr00002.png"
    Image.open(path).convert("L").save(path)
    with pytest.raises(DatasetError, match=r"normals/syn_tr00002.png has 1 channel\(s\) \(PIL mode L\); surface "
                                           r"normals must be 3-channel RGB"):
        check_dataset("nyud", nyud)
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", nyud.parent / "out")
    assert "syn_tr00002.png has 1 channel(s)" in line


@pytest.mark.parametrize("kind", ["int16 millimetres", "float millimetres", "+Inf", "NaN"])
def test_depth_units_and_non_finite_values_are_named(nyud, capsys, kind):
    path = nyud / "depth" / "syn_tr00003.npy"
    depth = np.load(path)
    if kind == "int16 millimetres":
        depth = (depth * 1000).astype(np.int16)
        expected = r"holds int16 values \(max \d+\), which looks like millimetres"
    elif kind == "float millimetres":
        depth, expected = depth * 1000, r"holds depths up to [\d.]+, which looks like millimetres"
    else:
        depth[4, 4] = np.inf if kind == "+Inf" else np.nan
        expected = rf"holds 1 non-finite depth value\(s\) \({re_escape(kind)}\)"
    np.save(path, depth)
    with pytest.raises(DatasetError, match=r"depth/syn_tr00003.npy " + expected):
        check_dataset("nyud", nyud)
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", nyud.parent / "out")
    assert "syn_tr00003.npy" in line and "learning rate" not in line and "lr" not in line.split(":")[-1]


def re_escape(text):
    import re

    return re.escape(text)


def test_check_dataset_reads_every_file_unless_sampled(pascal, capsys):
    """A broken Pascal-Part file in the middle of a split: the full check finds it; --sample reads only a few
    ids' content and says so in its summary."""
    path = pascal / "human_parts" / "syn_tr00004.mat"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"cannot read .*human_parts/syn_tr00004.mat"):
        check_dataset("pascal", pascal)
    line = one_line(capsys, "check-dataset", pascal, "--no-progress")
    assert "syn_tr00004.mat" in line
    code, out, _ = cli(capsys, "check-dataset", pascal, "--no-progress", "--sample", "2")
    assert code == 0 and "content of 2 ids per split" in out


def test_wrong_structure_parts_annotation(pascal, capsys):
    from scipy.io import savemat

    savemat(pascal / "human_parts" / "syn_va00002.mat", {"anno": np.zeros((1, 1))})
    line = one_line(capsys, "check-dataset", pascal, "--no-progress")
    assert "human_parts/syn_va00002.mat has an 'anno' variable of the wrong structure" in line
    assert "re-extract human_parts/" in line


# ---------------------------------------------------------------------------------------------- splits


def test_repeated_ids_and_train_val_leak(nyud, capsys):
    split = nyud / "gt_sets" / "train.txt"
    original = split.read_text()
    split.write_text(original + original.splitlines()[0] + "\n")
    with pytest.raises(DatasetError, match=r"train.txt lists 1 id\(s\) more than once \(first: 'syn_tr00000'\)"):
        check_dataset("nyud", nyud)
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", nyud.parent / "out")
    assert "more than once" in line
    val = (nyud / "gt_sets" / "val.txt").read_text().splitlines()
    split.write_text(original + val[0] + "\n")
    with pytest.raises(DatasetError, match=r"1 id\(s\) are in both .*train.txt and .*val.txt \(first: 'syn_va00000'\)"):
        check_dataset("nyud", nyud)
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", nyud.parent / "out")
    assert "are in both" in line


@pytest.mark.parametrize("split", ["train", "val"])
def test_empty_split_is_one_line(nyud, run, capsys, split):
    (nyud / "gt_sets" / f"{split}.txt").write_text("\n")
    if split == "train":
        line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", nyud.parent / "out")
    else:
        root = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
        (run.parent / "run_data" / "gt_sets" / "val.txt").write_text("")
        assert root == str(run.parent / "run_data")
        line = one_line(capsys, "evaluate", "--run", run, "--no-progress")
    assert f"{split}.txt lists no ids, so the {split} split is empty" in line


def test_480x640_nyud_is_refused_by_train_without_a_check(nyud, capsys):
    (nyud / "pamm_synthetic.json").unlink()  # a real archive
    for path in (nyud / "images").iterdir():
        Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(path)
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", nyud.parent / "out")
    assert "is 480x640 (HxW)" in line and "ATRC 448x576" in line


def test_image_larger_than_the_pad_size_names_the_file(nyud):
    dataset = build_dataset("nyud", nyud, "val", size=(32, 32))
    with pytest.raises(DatasetError, match=r"images/syn_va00000.png: image of 48x64 is larger than the padding size"):
        dataset[0]


# ---------------------------------------------------------------------------------------------- config


def test_unknown_model_keys_tasks_and_sizes_are_one_line(nyud, capsys):
    out = nyud.parent / "out"
    cases = {
        "model.widht=3": "config key model.widht: not taken by model 'mtl' (MultiTaskBaseline.__init__() got an "
                         "unexpected keyword argument 'widht')",
        "model.backbone.patch_sise=8": "config key model.backbone.patch_sise: not taken by model 'mtl' "
                                       "(VisionTransformer.__init__() got an unexpected keyword argument 'patch_sise')",
        "data.tasks=[depth, sal]": "config key data.tasks: ['sal'] are not tasks of 'nyud'",
        "data.size=[17, 23]": "config key data.size: [17, 23] is not a multiple of the ViT backbone's patch size 8",
    }
    for override, expected in cases.items():
        line = one_line(capsys, *TRAIN, "--set", override, "--data-root", nyud, "--out", out)
        assert expected in line, line
    # a model builder's own check of its options, as one line
    line = one_line(capsys, *TRAIN, "--model", "taskprompter", "--set", "data.size=[24, 24]", "--data-root", nyud,
                    "--out", out)
    assert "model 'taskprompter' (default): token grid (3, 3) is not divisible" in line
    assert not out.exists()


def test_size_not_a_multiple_of_the_patch_suggests_the_padded_size():
    with pytest.raises(ConfigError, match=r"use \[24, 24\]"):
        resolve_config("tiny", "nyud", "pamm", overrides={"data": {"size": [17, 23]}})
    resolve_config("tiny", "nyud", "mtmamba", overrides={"data": {"size": [17, 23]}})  # Swin pads: accepted


@pytest.mark.parametrize("threads", ["0", "-1", "two"])
def test_threads_must_be_positive(capsys, threads):
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--run", "x", "--threads", threads])
    assert stopped.value.code == 2
    assert "argument --threads: expected a whole number >= 1" in capsys.readouterr().err


def test_exponent_without_a_dot_is_a_number():
    assert parse_override("train.optimizer.lr=1e-3") == {"train": {"optimizer": {"lr": 0.001}}}
    assert parse_override("x=[1E+2, abc]") == {"x": [100.0, "abc"]}
    cfg = resolve_config("tiny", "nyud", "mtl", overrides=parse_override("train.optimizer.lr=1e-3"))
    assert cfg["train"]["optimizer"]["lr"] == 0.001


def test_weights_path_is_not_in_the_hash_but_their_use_is(tmp_path):
    base = resolve_config("tiny", "nyud", "mtl")
    a, b = json.loads(json.dumps(base)), json.loads(json.dumps(base))
    a["model"]["backbone"]["pretrained_file"] = "/old/place/w.pth"
    b["model"]["backbone"]["pretrained_file"] = "/new/place/w.pth"
    assert config_hash(a) == config_hash(b) != config_hash(base)


def test_text_file_as_weights_is_one_line(nyud, capsys, tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("these are not weights\n")
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", tmp_path / "out",
                    "--pretrained", f"vit_tiny_patch16_224={text}")
    assert f"config key model.backbone.pretrained_file: {text} is not a weights file" in line
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", tmp_path / "out",
                    "--set", f"model.backbone.pretrained_file={tmp_path / 'missing.pth'}")
    assert "missing.pth does not exist" in line


def test_moved_weights_do_not_block_resume(nyud, tmp_path, monkeypatch):
    """Train from local weights, stop at iteration 1, move the weights, resume from the new place."""
    from pamm import io as pio
    from pamm.engine.build import build_model_for
    from pamm.engine.train import TrainingInterrupted, train_run

    overrides = {"data": {"root": str(nyud), "size": [H, W]},
                 "train": {"iterations": 2, "batch_size": 2, "ckpt_every": 1}}
    cfg = resolve_config("tiny", "nyud", "mtl", overrides=overrides)
    weights = tmp_path / "old" / "vit.pth"
    weights.parent.mkdir()
    torch.save(build_model_for(cfg).backbone.model.state_dict(), weights)
    cfg["model"]["backbone"]["pretrained_file"] = str(weights)
    real_save = pio.torch_save

    def stop_after_first(obj, path):
        real_save(obj, path)
        if obj.get("iteration") == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(pio, "torch_save", stop_after_first)
    with pytest.raises(TrainingInterrupted, match="interrupted after iteration 1"):
        train_run(cfg, tmp_path / "run", device="cpu", progress=False)
    monkeypatch.setattr(pio, "torch_save", real_save)
    moved = tmp_path / "new" / "vit.pth"
    moved.parent.mkdir()
    weights.rename(moved)
    cfg["model"]["backbone"]["pretrained_file"] = str(moved)
    assert train_run(cfg, tmp_path / "run", device="cpu", progress=False)["status"] == "trained"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["backbone"]["pretrained_file"] == str(moved)


def test_user_config_yaml_in_out_is_never_overwritten(nyud, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\nlr: 0.1\n")
    line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", out)
    assert f"{out / 'config.yaml'} exists and is not a pamm-bench run config; it is never overwritten" in line
    assert (out / "config.yaml").read_text() == "# my notes\nlr: 0.1\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_relative_data_root_is_stored_absolute_and_provenance_has_the_batch_that_ran(nyud, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.chdir(nyud.parent)
    args = [a if a != "train.batch_size=2" else "train.batch_size=16" for a in TRAIN]
    code, _, err = cli(capsys, *args, "--set", "train.optimizer.lr=1e-3", "--data-root", "NYUDv2", "--out", "run")
    assert code == 0, err
    cfg = yaml.safe_load((nyud.parent / "run" / "config.yaml").read_text())
    assert cfg["data"]["root"] == str(nyud) and cfg["train"]["optimizer"]["lr"] == 0.001
    provenance = json.loads((nyud.parent / "run" / "provenance.json").read_text())
    assert (provenance["configured_batch"], provenance["global_batch"], provenance["per_rank_batch"]) == (16, 4, 4)
    monkeypatch.chdir(tmp_path)  # evaluate from elsewhere finds the data
    code, _, err = cli(capsys, "evaluate", "--run", nyud.parent / "run", "--no-progress")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------- run files


def test_truncated_last_pt_and_checkpoint_pt_name_the_file_and_the_fix(run, capsys):
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    line = one_line(capsys, "evaluate", "--run", run, "--no-progress")
    assert f"{checkpoint} is truncated or corrupt" in line and "delete it and rerun pamm-bench train" in line
    line = one_line(capsys, *TRAIN, "--data-root", data, "--out", run)
    assert f"{checkpoint} is truncated or corrupt" in line and "resumes from last.pt" in line
    checkpoint.unlink()
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    line = one_line(capsys, *TRAIN, "--data-root", data, "--out", run)
    assert f"{last} is truncated or corrupt" in line and "delete it to start the run over" in line


def test_truncated_metrics_json_in_aggregate(run, capsys, tmp_path):
    assert cli(capsys, "evaluate", "--run", run, "--no-progress")[0] == 0
    metrics = run / "metrics.json"
    metrics.write_text(metrics.read_text()[:50])
    line = one_line(capsys, "aggregate", "--runs", run.parent, "--out", tmp_path / "summary.csv", "--quiet")
    assert f"{metrics} is not valid JSON" in line and "truncated or corrupt" in line


def test_read_only_results_folder_is_one_line(nyud, run, capsys, tmp_path):
    ro = tmp_path / "ro"
    if not _mount(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"], ro):
        pytest.skip("cannot mount a read-only tmpfs here (needs root in a mount-capable sandbox)")
    try:
        line = one_line(capsys, *TRAIN, "--data-root", nyud, "--out", ro / "run")
        assert f"cannot create the run directory {ro / 'run'} (Read-only file system)" in line
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    if not _mount(["--bind", str(run)], run) or not _mount(["-o", "remount,ro,bind"], run):
        subprocess.run(["umount", str(run)], check=False)
        pytest.skip("cannot make a read-only bind mount here")
    try:
        line = one_line(capsys, "evaluate", "--run", run, "--no-progress")
        assert "Read-only file system: make the folder writable" in line and str(run) in line
    finally:
        subprocess.run(["umount", str(run)], check=False)


# ---------------------------------------------------------------------------------------------- efficiency


def test_sweep_with_an_unknown_model_writes_nothing(capsys, tmp_path):
    out = tmp_path / "sweep.csv"
    line = one_line(capsys, "sweep", "--models", "pammm", "--sizes", "32", "--out", out, "--no-progress")
    assert "unknown model 'pammm'" in line
    assert not out.exists()


def test_out_of_memory_in_flop_counting_is_recorded_like_latency_and_memory(monkeypatch):
    from pamm.engine import profile

    def no_memory(model, image):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(profile, "count_flops_fvcore", no_memory)
    cfg = resolve_config("tiny", "nyud", "mtl", overrides={"data": {"size": [32, 32]}})
    result = profile.profile_config(cfg, device="cpu", counters=("fvcore", "ptflops"), latency_repeats=1)
    assert result["notes"] == "FLOP count (fvcore): CUDA out of memory"
    assert result["gflops"] == 2 * result["gmacs_ptflops"] > 0  # the other counter still counts
    assert result["latency_ms"] > 0 and result["peak_mem_mib"] > 0
    result = profile.profile_config(cfg, device="cpu", counters=("fvcore",), timing=False)
    assert np.isnan(result["gflops"]) and result["notes"] == "FLOP count (fvcore): CUDA out of memory"


def test_stale_temporaries_are_removed_but_a_live_writers_are_kept(tmp_path):
    from pamm import io as pio

    host = pio._writer_tag().split("~")[0]
    dead = _finished_pid()
    live = tmp_path / f".last.pt.{host}~{os.getppid()}.abc123.tmp"
    gone = tmp_path / f".last.pt.{host}~{dead}.def456.tmp"
    untagged = tmp_path / ".last.pt.xyz789.tmp"
    other_host = tmp_path / f".last.pt.elsewhere~{dead}.ghi012.tmp"
    other_file = tmp_path / f".train_log.csv.{host}~{dead}.jkl345.tmp"
    for path in (live, gone, untagged, other_host, other_file):
        path.write_bytes(b"partial")
    pio.torch_save({"model": {}}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted([live.name, other_host.name, other_file.name])
    os.utime(other_host, (0, 0))  # a day old: removed whoever wrote it
    pio.write_text(tmp_path / "last.pt", "x")
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted([live.name, other_file.name])


def _finished_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_undeclared_options_a_builder_takes_are_accepted():
    """Keys no YAML declares are put to the model's builder: legitimate ones pass (MTMamba's cross_task_block,
    which its YAML leaves to the builder; any timm keyword reaches the backbone), and only the run that uses
    them is changed."""
    cfg = resolve_config("tiny", "nyud", "mtmamba", overrides={"model": {"cross_task_block": "sctm"}})
    assert cfg["model"]["cross_task_block"] == "sctm"
    assert "cross_task_block" not in resolve_config("tiny", "nyud", "mtmamba")["model"]
    cfg = resolve_config("tiny", "nyud", "mtl", overrides={"model": {"backbone": {"qkv_bias": False}}})
    assert cfg["model"]["backbone"]["qkv_bias"] is False
    with pytest.raises(ConfigError, match=r"config key model.backbone.qkv_biass: not taken by model 'mtl'"):
        resolve_config("tiny", "nyud", "mtl", overrides={"model": {"backbone": {"qkv_biass": False}}})


def test_weights_file_format_reads_the_first_bytes(tmp_path):
    """torch.save (zip), a legacy pickle and safetensors are told apart by content, never by the suffix; text,
    an empty file and a safetensors header that claims more bytes than the file holds are no weights file."""
    from safetensors.torch import save_file

    from pamm.io import weights_file_format

    tensors = {"w": torch.zeros(2, 3)}
    torch.save(tensors, tmp_path / "zip.safetensors")
    torch.save(tensors, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    save_file(tensors, str(tmp_path / "st.pth"))
    (tmp_path / "text.pth").write_text("version https://git-lfs.github.com/spec/v1\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.safetensors").write_bytes((10**6).to_bytes(8, "little") + b'{"w": {}}')
    found = {path.name: weights_file_format(path) for path in sorted(tmp_path.iterdir())}
    assert found == {"cut.safetensors": None, "empty.pt": None, "legacy.bin": "torch", "st.pth": "safetensors",
                     "text.pth": None, "zip.safetensors": "torch"}
