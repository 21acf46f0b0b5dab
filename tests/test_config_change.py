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
