"""A run killed with SIGKILL and started again ends exactly where an uninterrupted run ends (CPU)."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from pamm.config import resolve_config
from pamm.data import make_synthetic
from pamm.engine.evaluate import evaluate_run
from pamm.engine.train import FAULT_KILL_ENV, TrainingError, configure_cudnn, train_run

OVERRIDES = {
    "data": {"size": [48, 64]},
    "train": {"iterations": 6, "ckpt_every": 2, "log_every": 1, "batch_size": 2},
    "eval": {"batch_size": 2},
}


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "nyud"
    make_synthetic(root, "nyud", n_train=6, n_val=3, height=48, width=64, seed=0, progress=False)
    return root


def _cfg(root, seed=0):
    overrides = {**OVERRIDES, "data": {**OVERRIDES["data"], "root": str(root)}}
    return resolve_config("tiny", "nyud", "mtl", seed=seed, overrides=overrides)


def _train_cli(root, out, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    args = [sys.executable, "-m", "pamm.cli", "train", "--dataset", "nyud", "--model", "mtl", "--seed", "3",
            "--data-root", str(root), "--out", str(out), "--threads", "1", "--no-progress",
            "--set", "data.size=[48, 64]", "--set", "train.iterations=6", "--set", "train.ckpt_every=2",
            "--set", "train.log_every=1", "--set", "train.batch_size=2", "--set", "eval.batch_size=2"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_matches_uninterrupted(nyud_root, tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(nyud_root, seed=3)
    straight = tmp_path / "straight"
    train_run(cfg, straight, device="cpu", progress=False)

    resumed = tmp_path / "resumed"
    killed = _train_cli(nyud_root, resumed, {FAULT_KILL_ENV: "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (resumed / "checkpoint.pt").exists()
    assert torch.load(resumed / "last.pt", weights_only=False)["iteration"] == 4
    finished = _train_cli(nyud_root, resumed)
    assert finished.returncode == 0, finished.stderr

    a = torch.load(straight / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(resumed / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    metrics_a = evaluate_run(straight, device="cpu", progress=False)["metrics"]
    metrics_b = evaluate_run(resumed, device="cpu", progress=False)["metrics"]
    assert metrics_a == metrics_b
    # The log covers every iteration exactly once across the interruption.
    log = (resumed / "train_log.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in log[1:]] == list(range(1, 7))


def test_finished_run_is_skipped_and_other_config_refused(nyud_root, tmp_path):
    cfg = _cfg(nyud_root)
    cfg["train"]["iterations"] = 2
    out = tmp_path / "run"
    assert train_run(cfg, out, device="cpu", progress=False)["status"] == "trained"
    assert train_run(cfg, out, device="cpu", progress=False)["status"] == "already trained"
    other = _cfg(nyud_root, seed=5)
    with pytest.raises(TrainingError, match="trained with another config"):
        train_run(other, out, device="cpu", progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(nyud_root, tmp_path):
    cfg = _cfg(nyud_root)
    cfg["train"]["optimizer"]["lr"] = 1e30  # diverges within a few steps
    cfg["train"]["grad_clip"] = None
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at iteration \d+"):
        train_run(cfg, out, device="cpu", progress=False)
    assert not (out / "checkpoint.pt").exists()


def test_torchrun_world_size_one_matches_plain_run(nyud_root, tmp_path):
    """DDP (gloo on CPU) through torchrun with one process trains exactly like the plain run."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not installed beside this python")
    plain, ddp = tmp_path / "plain", tmp_path / "ddp"
    args = ["--dataset", "nyud", "--model", "mtl", "--seed", "3", "--data-root", str(nyud_root), "--threads", "1",
            "--no-progress", "--set", "data.size=[48, 64]", "--set", "train.iterations=4", "--set", "train.batch_size=2"]
    first = subprocess.run([sys.executable, "-m", "pamm.cli", "train", "--out", str(plain), *args],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([torchrun, "--standalone", "--nproc_per_node=1", "-m", "pamm.cli", "train", "--out", str(ddp), *args],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    a = torch.load(plain / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(ddp / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    import json

    provenance = json.loads((ddp / "provenance.json").read_text())
    assert (provenance["world_size"], provenance["global_batch"], provenance["per_rank_batch"]) == (1, 2, 2)


def test_cudnn_search_is_on_for_cuda_training_and_untouched_on_cpu() -> None:
    """The released trainers set cudnn.benchmark; ours does on CUDA (the flag is settable without a GPU)."""
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        configure_cudnn(torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        configure_cudnn(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
        configure_cudnn(torch.device("cuda"), benchmark=False)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before
