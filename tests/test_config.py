"""Config layering, overrides and clear errors."""
import pytest

from pamm.config import (
    ConfigError,
    config_hash,
    deep_merge,
    list_variants,
    parse_override,
    resolve_config,
    strip_replace_markers,
)


def test_deep_merge_merges_dicts_and_replaces_leaves():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base["a"]["c"] == [1, 2]  # input untouched


def test_layers_scale_and_dataset_sections():
    tiny_nyud = resolve_config("tiny", "nyud", "mtl")
    tiny_pascal = resolve_config("tiny", "pascal", "mtl")
    paper_nyud = resolve_config("paper", "nyud", "mtl")
    assert tiny_nyud["data"]["size"] == [64, 80]
    assert tiny_pascal["data"]["size"] == [64, 64]
    assert paper_nyud["data"]["size"] == [448, 576]
    assert paper_nyud["model"]["backbone"]["name"] == "vit_large_patch16_384"
    assert tiny_nyud["run"] == {"scale": "tiny", "dataset": "nyud", "model": "mtl", "variant": "default", "seed": 0}


def test_variant_overlay_and_overrides():
    cfg = resolve_config("tiny", "nyud", "stl", "stl_depth", overrides=parse_override("train.iterations=7"))
    assert cfg["data"]["tasks"] == ["depth"]
    assert cfg["train"]["iterations"] == 7
    assert "stl_depth" in list_variants("stl")


def test_replace_marker_swaps_a_mapping_whole_and_is_stripped():
    base = {"backbone": {"name": "vit", "depth": 4, "patch_size": 8}}
    merged = deep_merge(base, {"backbone": {"_replace": True, "name": "swin", "depths": [1, 1]}})
    assert merged["backbone"] == {"_replace": True, "name": "swin", "depths": [1, 1]}
    # a later, unmarked layer merges into the swapped mapping
    assert deep_merge(merged, {"backbone": {"drop_path_rate": 0.1}})["backbone"]["depths"] == [1, 1]
    assert strip_replace_markers({"a": [{"_replace": True, "b": 1}], "_replace": False}) == {"a": [{"b": 1}]}


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_composed_variant_applies_each_overlay_in_order(scale):
    """stl_semseg+swin: the single-task semseg baseline on MTMamba's Swin, none of the ViT's settings left."""
    single = resolve_config(scale, "nyud", "stl", "stl_semseg+swin")
    mtmamba = resolve_config(scale, "nyud", "mtmamba")
    assert single["data"]["tasks"] == ["semseg"]
    same_backbone = {k: v for k, v in mtmamba["model"]["backbone"].items() if k != "drop_path_rate"}
    assert {k: v for k, v in single["model"]["backbone"].items() if k != "drop_path_rate"} == same_backbone
    assert "_replace" not in str(single) and "patch_size" not in single["model"]["backbone"]
    assert single["run"]["variant"] == "stl_semseg+swin"
    if scale == "tiny":  # MTMamba's longer tiny schedule, which its small Swin needs
        assert single["train"]["iterations"] == mtmamba["train"]["iterations"]


def test_composed_variant_errors_name_the_bad_part():
    with pytest.raises(ConfigError, match="unknown variant 'nope'.*joined by '\\+'"):
        resolve_config("tiny", "nyud", "stl", "stl_semseg+nope")
    with pytest.raises(ConfigError, match="variant 'swin' applies to"):
        resolve_config("tiny", "nyud", "pamm", "scan_raster+swin")


def test_hash_ignores_paths_but_not_content():
    a = resolve_config("tiny", "nyud", "mtl", overrides={"data": {"root": "/x"}})
    b = resolve_config("tiny", "nyud", "mtl", overrides={"data": {"root": "/y"}})
    c = resolve_config("tiny", "nyud", "mtl", seed=1)
    assert config_hash(a) == config_hash(b) != config_hash(c)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale="huge", dataset="nyud", model="mtl"), "unknown recipe scale 'huge'"),
        (dict(scale="tiny", dataset="cityscapes", model="mtl"), "unknown dataset 'cityscapes'"),
        (dict(scale="tiny", dataset="nyud", model="nope"), "unknown model 'nope'"),
        (dict(scale="tiny", dataset="nyud", model="mtl", variant="nope"), "unknown variant 'nope'"),
        (dict(scale="tiny", dataset="nyud", model="mtl", variant="stl_depth"), "applies to ['stl'], not to model 'mtl'"),
    ],
)
def test_bad_names_give_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_config(**kwargs)


def test_a_layer_with_the_old_profiles_section_names_the_file_and_the_new_key(tmp_path):
    (tmp_path / "old.yaml").write_text("applies_to: [mtl]\nprofiles:\n  tiny: {train: {iterations: 3}}\n")
    with pytest.raises(ConfigError) as caught:
        resolve_config("tiny", "nyud", "mtl", "old", ablations_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "old.yaml") in message and "'profiles' is now 'scales'" in message and "\n" not in message
    # the same section under its new name applies to its scale only
    (tmp_path / "new.yaml").write_text("applies_to: [mtl]\nscales:\n  tiny: {train: {iterations: 3}}\n")
    assert resolve_config("tiny", "nyud", "mtl", "new", ablations_dir=tmp_path)["train"]["iterations"] == 3
    assert resolve_config("paper", "nyud", "mtl", "new", ablations_dir=tmp_path)["train"]["iterations"] != 3


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.iterations")


def test_unknown_top_level_key_in_overlay(tmp_path):
    (tmp_path / "bad.yaml").write_text("applies_to: [mtl]\ntrian: {iterations: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['trian'\]"):
        resolve_config("tiny", "nyud", "mtl", "bad", ablations_dir=tmp_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iteratons=5", r"config key train: Additional properties are not allowed \('iteratons' was unexpected\)"),
        ("train.optimizer.name=lamb", r"config key train.optimizer.name: 'lamb' is not one of"),
        ("train.loss.edge_pos_weight=1.5", r"config key train.loss.edge_pos_weight: 1.5 is greater than or equal"),
    ],
)
def test_unknown_or_bad_run_keys_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("tiny", "nyud", "mtl", overrides=parse_override(override))


def test_every_model_and_variant_resolves_for_both_scales():
    import baselines  # noqa: F401  (registers the baseline models)
    from pamm.models import list_models
    from pamm.tasks import DATASET_TASKS

    for model in list_models():
        for variant in list_variants(model):
            for dataset in ("nyud", "pascal"):
                if variant.startswith("stl_") and variant.removeprefix("stl_") not in DATASET_TASKS[dataset]:
                    continue
                for scale in ("tiny", "paper"):
                    resolve_config(scale, dataset, model, variant)


def test_unknown_model_option_is_named():
    from pamm.models import create_model

    with pytest.raises(ValueError, match=r"model 'mtl'.*widht"):
        create_model("mtl", {"depth": 1}, img_size=(64, 80), backbone={"name": "resnet18"}, widht=3)


def test_pamm_tiny_scale_keeps_the_recipe_nyud_to_pascal_lr_ratio():
    lr = {(scale, dataset): resolve_config(scale, dataset, "pamm")["train"]["optimizer"]["lr"]
          for scale in ("tiny", "paper") for dataset in ("nyud", "pascal")}
    assert lr["tiny", "nyud"] / lr["tiny", "pascal"] == pytest.approx(lr["paper", "nyud"] / lr["paper", "pascal"])
    assert lr["tiny", "pascal"] == resolve_config("tiny", "pascal", "mtl")["train"]["optimizer"]["lr"]
    for variant in list_variants("pamm"):  # the ablations share the schedule
        assert resolve_config("tiny", "nyud", "pamm", variant)["train"]["optimizer"]["lr"] == lr["tiny", "nyud"]
