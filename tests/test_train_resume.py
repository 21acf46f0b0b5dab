"""A run stopped by SIGKILL, Ctrl-C or a full disk and started again ends exactly where an uninterrupted
run ends (CPU), and every stop says in one line which iteration a rerun resumes from.

Faults come from outside the trainer: the job runs under a small launcher that wraps ``pamm.io.torch_save``
and, at the save of a chosen iteration, SIGKILLs or SIGINTs its own process after the save, makes the write
itself fail (a file-size limit: the kernel refuses the bytes, as on a full disk), or dies half-way through
writing. Nothing in the trainer knows about it.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from pamm.config import resolve_config
from pamm.data import make_synthetic
from pamm.engine.build import TrainingError, configure_cudnn
from pamm.engine.evaluate import evaluate_run
from pamm.engine.train import state_is_finite, train_run

OVERRIDES = {
    "data": {"size": [48, 64]},
    "train": {"iterations": 6, "ckpt_every": 2, "log_every": 1, "batch_size": 2},
    "eval": {"batch_size": 2},
}

LAUNCHER = textwrap.dedent("""
    import os, resource, signal, sys
    from pathlib import Path

    import pamm.io as pio
    from pamm.cli import main

    mode, at = sys.argv[1], int(sys.argv[2])
    real_save = pio.torch_save

    def torch_save(obj, path):
        hit = Path(path).name == "last.pt" and obj.get("iteration") == at
        if hit and mode == "disk_full":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        if hit and mode == "kill_mid_save":
            with pio.atomic_path(path) as tmp:
                tmp.write_bytes(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, path)
        if hit and mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if hit and mode == "sigint":
            os.kill(os.getpid(), signal.SIGINT)

    pio.torch_save = torch_save
    sys.exit(main(sys.argv[3:]))
""")


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "nyud"
    make_synthetic(root, "nyud", n_train=6, n_val=3, height=48, width=64, seed=0, progress=False)
    return root


def _cfg(root, seed=0):
    overrides = {**OVERRIDES, "data": {**OVERRIDES["data"], "root": str(root)}}
    return resolve_config("tiny", "nyud", "mtl", seed=seed, overrides=overrides)


TRAIN_ARGS = ["--dataset", "nyud", "--model", "mtl", "--seed", "3", "--threads", "1", "--no-progress",
              "--set", "data.size=[48, 64]", "--set", "train.iterations=6", "--set", "train.ckpt_every=2",
              "--set", "train.log_every=1", "--set", "train.batch_size=2", "--set", "eval.batch_size=2"]


def _train_cli(root, out, fault=None, at=0):
    """``pamm-bench train`` in a fresh process, under the fault launcher when ``fault`` is given."""
    args = ["train", "--data-root", str(root), "--out", str(out), *TRAIN_ARGS]
    if fault is None:
        cmd = [sys.executable, "-m", "pamm.cli", *args]
    else:
        cmd = [sys.executable, "-c", LAUNCHER, fault, str(at), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def straight(nyud_root, tmp_path_factory):
    """The uninterrupted run every resumed run must equal."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("straight") / "run"
    train_run(_cfg(nyud_root, seed=3), out, device="cpu", progress=False)
    return out


def _assert_same_run(a, b):
    wa = torch.load(a / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(b / "checkpoint.pt", weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    # The log covers every iteration exactly once across the interruptions.
    log_a, log_b = (a / "train_log.csv").read_text(), (b / "train_log.csv").read_text()
    assert [int(line.split(",")[0]) for line in log_b.splitlines()[1:]] == list(range(1, 7))
    assert [line.split(",")[:2] for line in log_a.splitlines()] == [line.split(",")[:2] for line in log_b.splitlines()]


def test_sigkill_then_resume_matches_uninterrupted(nyud_root, straight, tmp_path):
    resumed = tmp_path / "resumed"
    killed = _train_cli(nyud_root, resumed, "kill", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (resumed / "checkpoint.pt").exists()
    assert torch.load(resumed / "last.pt", weights_only=False)["iteration"] == 4
    finished = _train_cli(nyud_root, resumed)
    assert finished.returncode == 0, finished.stderr
    _assert_same_run(straight, resumed)
    metrics_a = evaluate_run(straight, device="cpu", progress=False)["metrics"]
    metrics_b = evaluate_run(resumed, device="cpu", progress=False)["metrics"]
    assert metrics_a == metrics_b


def test_ctrl_c_says_where_a_rerun_resumes_and_the_rerun_matches(nyud_root, straight, tmp_path):
    resumed = tmp_path / "resumed"
    stopped = _train_cli(nyud_root, resumed, "sigint", 2)
    assert stopped.returncode == 130, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    assert lines[0].startswith("pamm-bench train: interrupted after iteration 2;")
    assert "keeps the last good state, iteration 2" in lines[0] and "rerun resumes" in lines[0]
    assert torch.load(resumed / "last.pt", weights_only=False)["iteration"] == 2
    finished = _train_cli(nyud_root, resumed)
    assert finished.returncode == 0, finished.stderr
    _assert_same_run(straight, resumed)


def test_failed_write_keeps_the_last_state_and_the_rerun_matches(nyud_root, straight, tmp_path):
    """The save of iteration 4 fails in the kernel (EFBIG, as a full disk fails with ENOSPC): one line naming
    the file and the resume point, last.pt still holds iteration 2, no temporary is left behind."""
    resumed = tmp_path / "resumed"
    failed = _train_cli(nyud_root, resumed, "disk_full", 4)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert f"cannot write {resumed / 'last.pt'} at iteration 4 (File too large): free disk space" in line
    assert "keeps the last good state, iteration 2" in line
    assert torch.load(resumed / "last.pt", weights_only=False)["iteration"] == 2
    assert not list(resumed.glob(".*.tmp"))
    finished = _train_cli(nyud_root, resumed)
    assert finished.returncode == 0, finished.stderr
    _assert_same_run(straight, resumed)


def test_kill_during_a_save_leaves_a_temporary_that_the_next_save_removes(nyud_root, straight, tmp_path):
    resumed = tmp_path / "resumed"
    killed = _train_cli(nyud_root, resumed, "kill_mid_save", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = list(resumed.glob(".last.pt.*.tmp"))
    assert len(left) == 1 and left[0].read_bytes() == b"half a checkpoint"
    assert torch.load(resumed / "last.pt", weights_only=False)["iteration"] == 2
    finished = _train_cli(nyud_root, resumed)
    assert finished.returncode == 0, finished.stderr
    assert not list(resumed.glob(".*.tmp"))
    _assert_same_run(straight, resumed)


def _mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_full_disk_is_one_line_with_no_state_left_behind(nyud_root, tmp_path):
    """A real full disk (a 4 MiB tmpfs: config.yaml fits, last.pt of ~7 MB does not)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root in a mount-capable sandbox)")
    try:
        full = _train_cli(nyud_root, disk / "run")
        assert full.returncode == 2, full.stderr
        line = full.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert f"cannot write {disk / 'run' / 'last.pt'} at iteration 2 (No space left on device)" in line
        assert "no good state was saved yet" in line
        assert not list((disk / "run").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


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


@pytest.mark.parametrize("lr", [1e3, 1e30])
def test_divergence_never_saves_a_non_finite_state_and_names_the_kept_iteration(nyud_root, tmp_path, lr):
    """With a checkpoint every iteration, the state a diverging step produces is refused (lr 1e3: the weights
    go non-finite while the loss was still finite) or never reached (lr 1e30: the loss goes NaN first); last.pt
    holds finite weights and optimizer state, at the iteration the message names."""
    import re

    cfg = _cfg(nyud_root)
    cfg["train"].update(iterations=12, ckpt_every=1, grad_clip=None)
    cfg["train"]["optimizer"]["lr"] = lr
    out = tmp_path / "diverged"
    with pytest.raises(TrainingError) as caught:
        train_run(cfg, out, device="cpu", progress=False)
    message = str(caught.value)
    kept = int(re.search(r"keeps the last good state, iteration (\d+)", message).group(1))
    failed = int(re.search(r"at iteration (\d+)|by iteration (\d+)", message).group(0).split()[-1])
    assert kept < failed <= 12
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["iteration"] == kept
    assert state_is_finite(state["model"], state["optimizer"])


def test_a_non_finite_last_pt_is_never_resumed(nyud_root, tmp_path):
    cfg = _cfg(nyud_root)
    cfg["train"].update(iterations=2, ckpt_every=1)
    out = tmp_path / "poisoned"
    train_run(cfg, out, device="cpu", progress=False)
    (out / "checkpoint.pt").unlink()
    state = torch.load(out / "last.pt", weights_only=False)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first][...] = float("nan")
    torch.save(state, out / "last.pt")
    with pytest.raises(TrainingError, match=r"last.pt holds non-finite weights or optimizer state \(iteration 2\): "
                                           r"delete it to start the run over"):
        train_run(cfg, out, device="cpu", progress=False)


def test_non_finite_targets_are_blamed_not_the_learning_rate():
    from pamm.engine.train import _non_finite_items

    batch = {"image": torch.zeros(3, 3, 4, 4), "depth": torch.ones(3, 1, 4, 4), "semseg": torch.zeros(3, 4, 4).long(),
             "meta": {"id": ["a", "b", "c"]}}
    assert _non_finite_items(batch, ["depth", "semseg"]) == []
    batch["depth"][2, 0, 1, 1] = float("inf")
    batch["image"][0, 1, 0, 0] = float("nan")
    assert _non_finite_items(batch, ["depth", "semseg"]) == ["a", "c"]


def test_divergence_before_the_first_checkpoint_says_none_was_saved(nyud_root, tmp_path):
    cfg = _cfg(nyud_root)
    cfg["train"].update(iterations=12, ckpt_every=10, grad_clip=None)
    cfg["train"]["optimizer"]["lr"] = 1e30
    out = tmp_path / "early"
    with pytest.raises(TrainingError, match=r"no good state was saved yet \(the first checkpoint comes at "
                                           r"iteration 10\): a rerun starts over"):
        train_run(cfg, out, device="cpu", progress=False)
    assert not (out / "last.pt").exists()


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
