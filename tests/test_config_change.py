"""A changed config restarts a run only when asked (the workflow asks): the old ``last.pt`` is renamed, never
deleted, and a ``last.pt`` of this config or a missing one is left alone."""
import torch

from pamm.config import config_hash, resolve_config
from pamm.engine.train import set_aside_stale_state


def _state(run_dir, chash):
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "config_hash": chash, "iteration": 3}, run_dir / "last.pt")


def test_a_last_pt_of_another_config_is_renamed_and_kept(tmp_path):
    cfg = resolve_config("tiny", "nyud", "mtl", seed=1)
    other = resolve_config("tiny", "nyud", "mtl", seed=2)
    assert config_hash(other) != config_hash(cfg)
    _state(tmp_path / "run", config_hash(other))
    moved = set_aside_stale_state(tmp_path / "run", cfg)
    assert moved == tmp_path / "run" / f"last.{config_hash(other)}.pt"
    assert not (tmp_path / "run" / "last.pt").exists()
    assert torch.load(moved, weights_only=False)["iteration"] == 3


def test_a_last_pt_of_this_config_or_none_is_left_alone(tmp_path):
    cfg = resolve_config("tiny", "nyud", "stl", "stl_depth", seed=0)
    assert set_aside_stale_state(tmp_path / "empty", cfg) is None
    _state(tmp_path / "run", config_hash(cfg))
    assert set_aside_stale_state(tmp_path / "run", cfg) is None
    assert (tmp_path / "run" / "last.pt").is_file()


def test_the_train_verb_refuses_by_default(tmp_path):
    from pamm.cli import build_parser

    args = build_parser().parse_args(["train", "--dataset", "nyud", "--model", "mtl", "--out", str(tmp_path)])
    assert args.on_config_change == "refuse"


def test_train_run_restarts_on_a_changed_config_only_when_asked(tmp_path):
    """A finished run leaves last.pt; the same run under another config stops by default, and with
    ``on_config_change="restart"`` sets that last.pt aside and trains the new config from scratch."""
    import pytest

    from pamm.data import make_synthetic
    from pamm.engine.train import TrainingError, train_run

    root = tmp_path / "data"
    make_synthetic(root, "nyud", n_train=4, n_val=2, height=32, width=32, seed=0, progress=False)
    small = {"train": {"iterations": 2, "ckpt_every": 2, "log_every": 1, "batch_size": 2},
             "data": {"size": [32, 32], "root": str(root)}}
    first = resolve_config("tiny", "nyud", "mtl", overrides=small)
    run = tmp_path / "run"
    assert train_run(first, run, device="cpu", progress=False)["status"] == "trained"
    changed = resolve_config("tiny", "nyud", "mtl", overrides={**small, "model": {"width": 40}})
    (run / "checkpoint.pt").unlink()  # what Snakemake does to a rerun job's outputs
    (run / "config.yaml").unlink()
    with pytest.raises(TrainingError, match="belongs to another config"):
        train_run(changed, run, device="cpu", progress=False)
    assert train_run(changed, run, device="cpu", progress=False, on_config_change="restart")["status"] == "trained"
    assert (run / f"last.{config_hash(first)}.pt").is_file()
    assert torch.load(run / "checkpoint.pt", weights_only=False)["config_hash"] == config_hash(changed)
    assert torch.load(run / "last.pt", weights_only=False)["iteration"] == 2
