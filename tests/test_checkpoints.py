"""The checkpoint framework: released-format reading, run directories, load_run_model, clear refusals."""
from __future__ import annotations

import pytest
import torch

from pamm.checkpoints import ConversionError, Converted, import_checkpoint, load_run_model, registry
from pamm.checkpoints.importer import released_state_dict
from pamm.config import resolve_config
from pamm.engine.build import build_model_for

TINY = {"data": {"size": [32, 32]}}


def _source_model():
    torch.manual_seed(3)
    return build_model_for(resolve_config("tiny", "nyud", "mtl", overrides=TINY))


@pytest.fixture
def identity_source(monkeypatch):
    """A converter for a pamm-bench-layout file saved the way the authors' DDP loops save theirs."""

    def convert(released, model, cfg, unregistered):
        registry.reject_unused(released, set(model.state_dict()), "test")
        return Converted({k: v for k, v in released.items() if k in model.state_dict()}, ["identity mapping"])

    monkeypatch.setitem(registry._CONVERTERS, "test", registry.ConverterEntry("test", "mtl", convert, TINY))
    return "test"


def _save_ddp(path, model, **extra):
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3, "iter_count": 41,
                **extra}, path)


def test_import_writes_a_run_that_loads_to_the_same_outputs(tmp_path, identity_source):
    source = _source_model().eval()
    _save_ddp(tmp_path / "ckpt.pth", source)
    record = import_checkpoint(identity_source, tmp_path / "ckpt.pth", "nyud", tmp_path / "run", scale="tiny")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "config.yaml", "provenance.json"]
    assert record["origin"] == "released_checkpoint" and record["notes"] == ["identity mapping"]
    assert record["checkpoint"]["iter_count"] == 41 and len(record["checkpoint"]["sha256"]) == 64
    model = load_run_model(tmp_path / "run")
    assert not model.training
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model(image), source(image)
    for task in theirs:
        assert torch.equal(ours[task], theirs[task])


def test_unmapped_key_is_refused_by_name(tmp_path, identity_source):
    source = _source_model()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.extra_head.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    with pytest.raises(ConversionError, match="extra_head.weight"):
        import_checkpoint(identity_source, tmp_path / "ckpt.pth", "nyud", tmp_path / "run", scale="tiny")
    assert not (tmp_path / "run").exists()


def test_missing_and_misshaped_keys_are_refused(tmp_path, identity_source):
    model = _source_model()
    state = model.state_dict()
    first = next(iter(state))
    with pytest.raises(ConversionError, match="unfilled"):
        registry.check_against_model({k: v for k, v in state.items() if k != first}, model, "test")
    bad = dict(state)
    bad[first] = torch.zeros(7, 7)
    with pytest.raises(ConversionError, match="expects shape"):
        registry.check_against_model(bad, model, "test")


def test_unreadable_files_and_occupied_out_dir(tmp_path, identity_source):
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    with pytest.raises(ConversionError, match="not a torch checkpoint"):
        import_checkpoint(identity_source, tmp_path / "text.pth", "nyud", tmp_path / "run", scale="tiny")
    _save_ddp(tmp_path / "ckpt.pth", _source_model())
    data = (tmp_path / "ckpt.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        import_checkpoint(identity_source, tmp_path / "cut.pth", "nyud", tmp_path / "run", scale="tiny")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        import_checkpoint(identity_source, tmp_path / "ckpt.pth", "nyud", tmp_path / "busy", scale="tiny")


def test_state_dict_forms():
    weights = {"a": torch.zeros(1)}
    for saved in ({"model": {"module.a": weights["a"]}}, {"state_dict": weights}, weights):
        state, _ = released_state_dict(saved, "f")
        assert list(state) == ["a"]
    with pytest.raises(ConversionError, match="no tensors"):
        released_state_dict({"epoch": 1}, "f")


def test_unknown_source_names_the_valid_ones():
    with pytest.raises(ConversionError, match="valid --from values"):
        registry.get_converter("nope")


def test_evaluate_refuses_a_run_without_dataset(tmp_path, identity_source):
    from pamm.cli import main

    _save_ddp(tmp_path / "ckpt.pth", _source_model())
    import_checkpoint(identity_source, tmp_path / "ckpt.pth", "nyud", tmp_path / "run", scale="tiny")
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--no-progress"]) == 2


def test_imported_run_evaluates_on_a_dataset(tmp_path, identity_source):
    from pamm.cli import main
    from pamm.data import make_synthetic

    make_synthetic(tmp_path / "data", "nyud", n_train=2, n_val=2, height=32, width=32, seed=0, progress=False)
    _save_ddp(tmp_path / "ckpt.pth", _source_model())
    import_checkpoint(identity_source, tmp_path / "ckpt.pth", "nyud", tmp_path / "run", scale="tiny",
                      data_root=tmp_path / "data")
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()
