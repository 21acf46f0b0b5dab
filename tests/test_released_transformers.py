"""Released InvPT / TaskPrompter checkpoints → our models, against the golden fixtures of the released code.

Fixtures: ``../shared/fixtures/released/transformers/<model>/<dataset>/`` (``released_checkpoint.pth`` as the
release's training loop saves it, ``case.pt`` with the release's float64 outputs, ``case.json`` with the
tolerance and the ``--set`` overrides that build the same model here). Every case is converted, loaded and run in
float64; negative controls (swapped tasks, one perturbed weight, a dropped prompt update) must miss the reference.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from pamm.checkpoints.registry import ConversionError, get_converter
from pamm.config import deep_merge, parse_override, resolve_config
from pamm.engine.train import build_model_for

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """``../shared/fixtures/released/transformers`` beside the checkout (beside the main one for a git worktree)."""
    roots = [REPO_ROOT]
    git = REPO_ROOT / ".git"
    if git.is_file():  # a worktree: its .git file points at <main>/.git/worktrees/<name>
        roots.append(Path(git.read_text().split(":", 1)[1].strip()).parents[2])
    candidates = [root.parent / "shared" / "fixtures" / "released" / "transformers" for root in roots]
    return next((c for c in candidates if c.is_dir()), candidates[0])


FIXTURES = fixtures_dir()
CASES = sorted(p.parent for p in FIXTURES.glob("*/*/case.json")) if FIXTURES.is_dir() else []
needs_fixtures = pytest.mark.skipif(not CASES, reason=f"no released-checkpoint fixtures under {FIXTURES}")
case_params = pytest.mark.parametrize(
    "folder", CASES or [None], ids=[str(c.relative_to(FIXTURES)) for c in CASES] or ["absent"]
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op threads only spin on a shared 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def case_json(folder: Path) -> dict:
    return json.loads((folder / "case.json").read_text())


def case_config(folder: Path) -> dict:
    """The ``paper`` profile with the case's ``project.set`` overrides, as the import command resolves it."""
    project = case_json(folder)["project"]
    overrides: dict = {}
    for item in project["set"]:
        overrides = deep_merge(overrides, parse_override(item))
    return resolve_config("paper", project["dataset"], project["model"], overrides=overrides)


def released_entries(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's ``model`` with the DDP ``module.`` prefix stripped (as the release's inference.py does)."""
    checkpoint = torch.load(folder / "released_checkpoint.pth", weights_only=True)
    return {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}


def convert(folder: Path, released: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the case's model, convert ``released`` into it, strict-load; float64, eval."""
    cfg = case_config(folder)
    model = build_model_for(cfg)
    converted = get_converter(cfg["run"]["model"]).convert(released, model, cfg, None)
    model.load_state_dict(converted.state_dict, strict=True)
    return model.double().eval()


def relative_errors(model: torch.nn.Module, reference: dict) -> dict[str, float]:
    with torch.no_grad():
        out = model(reference["input"])
    errors = {}
    for task, ref in reference["outputs"].items():
        assert out[task].shape == ref.shape, task
        errors[task] = ((out[task] - ref).abs().max() / ref.abs().max()).item()
    return errors


def load_case(folder: Path, name: str = "case.pt") -> dict:
    return torch.load(folder / name, weights_only=True)


@needs_fixtures
@case_params
def test_released_checkpoint_reproduces_the_released_outputs(folder: Path) -> None:
    tolerance = case_json(folder)["tolerance"]["rel"]
    errors = relative_errors(convert(folder, released_entries(folder)), load_case(folder))
    assert max(errors.values()) <= tolerance, errors


@needs_fixtures
@case_params
def test_swapped_tasks_miss_the_release(folder: Path) -> None:
    """The first two tasks' per-task weights swapped (wherever their shapes agree): still loads, must not match."""
    info = case_json(folder)
    a, b = info["task_order"][:2]
    released = released_entries(folder)
    swapped = dict(released)
    for key in released:
        if f".{a}." in key:
            twin = key.replace(f".{a}.", f".{b}.")
            if released[twin].shape == released[key].shape:
                swapped[key], swapped[twin] = released[twin], released[key]
    errors = relative_errors(convert(folder, swapped), load_case(folder))
    tolerance = info["tolerance"]["rel"]
    assert errors[a] > 100 * tolerance and errors[b] > 100 * tolerance, errors


def test_reordered_tasks_are_refused() -> None:
    """Per-task modules are also indexed by task position: a checkpoint listing its tasks in another order fails."""
    folder = first_case("taskprompter")
    released = released_entries(folder)
    first = case_json(folder)["task_order"][0]
    reordered = {k: v for k, v in released.items() if not k.startswith(f"heads.{first}.")}
    reordered.update({k: v for k, v in released.items() if k.startswith(f"heads.{first}.")})
    with pytest.raises(ConversionError, match="in this order"):
        convert(folder, reordered)


@needs_fixtures
@case_params
def test_one_perturbed_decoder_weight_misses_the_release(folder: Path) -> None:
    """1e-3 on one weight of the last decoder stage moves that task's output past the tolerance."""
    info = case_json(folder)
    task = info["task_order"][0]
    key = {
        "invpt": f"multi_task_decoder.invpt.mt_proj.{task}.0.weight",
        "taskprompter": f"heads.{task}.mt_proj.0.weight",
    }[info["project"]["model"]]
    released = released_entries(folder)
    released[key] = released[key].clone()
    released[key][0, 0, 1, 1] += 1e-3
    errors = relative_errors(convert(folder, released), load_case(folder))
    assert errors[task] > info["tolerance"]["rel"], errors


TASKPROMPTER_CASES = [c for c in CASES if c.parent.name == "taskprompter"]


@pytest.mark.skipif(not TASKPROMPTER_CASES, reason=f"no TaskPrompter fixtures under {FIXTURES}")
@pytest.mark.parametrize(
    "folder", TASKPROMPTER_CASES or [None], ids=[c.name for c in TASKPROMPTER_CASES] or ["absent"]
)
def test_taskprompter_prompt_update_is_loaded_and_used(folder: Path) -> None:
    """With every ``token_trans1`` zeroed we reproduce the release's update-zeroed run; the update changes outputs."""
    tolerance = case_json(folder)["tolerance"]["rel"]
    zeroed_reference = load_case(folder, "case_update_zeroed.pt")
    released = released_entries(folder)
    for key in released:
        if ".attn.token_trans1." in key:
            released[key] = torch.zeros_like(released[key])
    assert max(relative_errors(convert(folder, released), zeroed_reference).values()) <= tolerance

    full = convert(folder, released_entries(folder))
    assert min(relative_errors(full, zeroed_reference).values()) > 100 * tolerance


# --- refusals: the converter names the entry it cannot map -------------------------------------------------------


def first_case(model_name: str) -> Path:
    folder = next((c for c in CASES if c.parent.name == model_name), None)
    if folder is None:
        pytest.skip(f"no {model_name} fixture under {FIXTURES}")
    return folder


@pytest.mark.parametrize("model_name", ["invpt", "taskprompter"])
def test_unknown_missing_and_misshaped_entries_are_refused_by_name(model_name: str) -> None:
    folder = first_case(model_name)
    released = released_entries(folder)

    extra = dict(released, **{"multi_task_decoder.something_new.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"something_new\.weight"):
        convert(folder, extra)

    head = next(k for k in released if k.startswith("heads.") and k.endswith("linear_pred.bias"))
    missing = {k: v for k, v in released.items() if k != head}
    with pytest.raises(ConversionError, match="not in the checkpoint"):
        convert(folder, missing)

    weight = next(k for k in released if k.endswith("norm1.weight"))
    misshaped = dict(released, **{weight: torch.zeros(released[weight].numel() + 1)})
    with pytest.raises(ConversionError, match=re.escape(weight)):
        convert(folder, misshaped)


@pytest.mark.parametrize("model_name", ["invpt", "taskprompter"])
def test_a_checkpoint_of_another_dataset_or_depth_is_refused(model_name: str) -> None:
    folder = first_case(model_name)
    other = next((c for c in CASES if c.parent.name == model_name and c != folder), None)
    if other is not None:
        with pytest.raises(ConversionError, match="tasks"):
            convert(folder, released_entries(other))

    released = released_entries(folder)
    last = max(int(m.group(1)) for k in released if (m := re.match(r"backbone\.blocks\.(\d+)\.", k)))
    shallower = {k: v for k, v in released.items() if not k.startswith(f"backbone.blocks.{last}.")}
    with pytest.raises(ConversionError, match=f"depth={last}"):
        convert(folder, shallower)


def test_invpt_drops_only_the_four_unread_modules() -> None:
    folder = first_case("invpt")
    released = released_entries(folder)
    cfg = case_config(folder)
    converted = get_converter("invpt").convert(released, build_model_for(cfg), cfg, None)
    assert len(converted.notes) == 1
    for module in ("scale_embed.2", "redu_chan.0", "invpt_stages.0.blocks.0.attn.fuse_attn", "invpt.norm_mt"):
        assert module in converted.notes[0]
    unread = r"scale_embed\.2\.|redu_chan\.0\.|stages\.0\.blocks\.0\.attn\.fuse_attn\.|invpt\.norm_mt\."
    kept = {k for k in released if not re.search(unread, k)}
    assert len(converted.state_dict) == len(kept)


# --- other sizes: a release-format dict written from the README's name map, not from the converter ------------

# our key -> the release's, per the fixture README's tables (an independent statement of the map)
INVPT_TO_RELEASE = [
    (r"backbone\.model\.(.+)", r"backbone.\1"),
    (r"preliminary_decoders\.(\w+)\.(\d)\.0\.(.+)", r"multi_task_decoder.preliminary_decoder.\1.\2.conv.\3"),
    (r"preliminary_decoders\.(\w+)\.(\d)\.1\.(.+)", r"multi_task_decoder.preliminary_decoder.\1.\2.bn1.\3"),
    (r"intermediate_heads\.(.+)", r"multi_task_decoder.intermediate_head.\1"),
    (r"skip_stage2\.(.+)", r"multi_task_decoder.scale_embed.0.\1"),
    (r"skip_stage1\.(.+)", r"multi_task_decoder.scale_embed.1.\1"),
    (r"mix_proj\.(\w+)\.(.+)", r"multi_task_decoder.invpt.mix_proj.\1.0.\2"),
    (r"up_embeds\.(\d)\.(\d+)\.convs\.(\d)\.(.+)", None),  # stage + 1, layer 0/1/3/4 -> 1/2/4/5: below
    (r"stages\.(\d)\.(norm1|norm2)\.(.+)", r"multi_task_decoder.invpt.invpt_stages.\1.blocks.0.\2.\3"),
    (r"stages\.(\d)\.mlp\.0\.(.+)", r"multi_task_decoder.invpt.invpt_stages.\1.blocks.0.mlp.fc1.\2"),
    (r"stages\.(\d)\.mlp\.2\.(.+)", r"multi_task_decoder.invpt.invpt_stages.\1.blocks.0.mlp.fc2.\2"),
    (r"stages\.(\d)\.attn\.query_convs\.(\d+)\.0\.(.+)",
     r"multi_task_decoder.invpt.invpt_stages.\1.blocks.0.attn.conv_proj_q.\2.conv.\3"),
    (r"stages\.(\d)\.attn\.query_convs\.(\d+)\.1\.(.+)",
     r"multi_task_decoder.invpt.invpt_stages.\1.blocks.0.attn.conv_proj_q.\2.bn.\3"),
    (r"stages\.(\d)\.attn\.fuse_scores\.(.+)", r"multi_task_decoder.invpt.invpt_stages.\1.blocks.0.attn.fuse_attn.\2"),
    (r"stages\.(\d)\.attn\.(\w+)\.(.+)", r"multi_task_decoder.invpt.invpt_stages.\1.blocks.0.attn.\2.\3"),
    (r"stage_norms\.(.+)", r"multi_task_decoder.invpt.norm_mts.\1"),
    (r"reduce_channels\.(\d)\.(.+)", None),  # stage + 1: below
    (r"task_convs\.(.+)", r"multi_task_decoder.invpt.mt_proj.\1"),
    (r"heads\.(\w+)\.(weight|bias)", r"heads.\1.linear_pred.\2"),
]
TASKPROMPTER_TO_RELEASE = [
    (r"vit\.(.+)", r"backbone.\1"),
    (r"prompts", r"backbone.task_prompts"),
    (r"prompt_updates\.(\d+)\.to_pixels\.(.+)", r"backbone.blocks.\1.attn.token_trans.\2"),
    (r"prompt_updates\.(\d+)\.to_channels\.(.+)", r"backbone.blocks.\1.attn.token_trans1.\2"),
    (r"task_features\.(\d)\.(\w+)\.decode_spatial\.(.+)", r"backbone.fea_decode_spa.\1.\2.0.\3"),
    (r"task_features\.(\d)\.(\w+)\.decode_channel\.(.+)", r"backbone.fea_decode_chan.\1.\2.0.\3"),
    (r"task_features\.(\d)\.(\w+)\.fuse\.(.+)", r"backbone.fea_fuse.\1.\2.\3"),
    (r"cross_task\.(\d)\.(\w+)\.weights_from_scores\.(.+)", r"backbone.ctr_attn_conv.\1.\2.\3"),
    (r"heads\.(\w+)\.body\.(.+)", r"heads.\1.mt_proj.\2"),
    (r"heads\.(\w+)\.out\.(.+)", r"heads.\1.linear_pred.\2"),
]


def to_release(key: str, table) -> str:
    for pattern, template in table:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if pattern.startswith("up_embeds"):
            stage, task, layer, rest = match.groups()
            layer = {"0": "1", "1": "2", "3": "4", "4": "5"}[layer]
            return f"multi_task_decoder.invpt.invpt_stages.{int(stage) + 1}.patch_embed.{task}.proj.{layer}.{rest}"
        if pattern.startswith("reduce_channels"):
            return f"multi_task_decoder.invpt.redu_chan.{int(match.group(1)) + 1}.{match.group(2)}"
        return match.expand(template)
    raise AssertionError(f"no release name for {key}")


@pytest.mark.parametrize("dataset", ["nyud", "pascal"])
@pytest.mark.parametrize("model_name", ["invpt", "taskprompter"])
def test_any_size_round_trips_through_the_release_layout(model_name: str, dataset: str) -> None:
    """A model at sizes no fixture uses (12×8 grid, 4 blocks, other widths), written out under the release's names
    (plus the entries the release holds and we drop), converts back into a fresh model with identical outputs."""
    overrides = {
        "data": {"size": [48, 32]},
        "model": {"backbone": {"patch_size": 4, "embed_dim": 24, "depth": 4, "num_heads": 2}},
    }
    decoder = {"invpt": {"embed_dim": 20, "pred_channels": 4}, "taskprompter": {"embed_dim": 12, "final_embed_dim": 16}}
    overrides["model"].update(decoder[model_name])
    cfg = resolve_config("paper", dataset, model_name, overrides=overrides)
    torch.manual_seed(3)
    source = build_model_for(cfg)
    with torch.no_grad():
        for name, tensor in source.state_dict().items():
            if "running_var" in name:
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.3)
    table = INVPT_TO_RELEASE if model_name == "invpt" else TASKPROMPTER_TO_RELEASE
    released = {to_release(k, table): v.clone() for k, v in source.state_dict().items()}
    if model_name == "invpt":
        released.update({
            "multi_task_decoder.scale_embed.2.weight": torch.randn(3),
            "multi_task_decoder.invpt.redu_chan.0.0.weight": torch.randn(3),
            "multi_task_decoder.invpt.invpt_stages.0.blocks.0.attn.fuse_attn.weight": torch.randn(3),
            "multi_task_decoder.invpt.norm_mt.weight": torch.randn(3),
        })
    else:
        released["backbone.blocks.3.attn.token_trans1.weight"] = torch.randn(24, 96)
        released["backbone.blocks.3.attn.token_trans1.bias"] = torch.randn(24)

    torch.manual_seed(4)
    target = build_model_for(cfg)
    target.load_state_dict(get_converter(model_name).convert(released, target, cfg, None).state_dict, strict=True)
    image = torch.randn(2, 3, 48, 32, dtype=torch.float64)
    source, target = source.double().eval(), target.double().eval()
    with torch.no_grad():
        expected, got = source(image), target(image)
    for task in expected:
        assert torch.equal(got[task], expected[task]), task
