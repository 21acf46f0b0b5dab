"""Released InvPT / TaskPrompter checkpoints → our models, against the golden fixtures of the released code.

Fixtures: ``../shared/fixtures/released/transformers/<model>/<dataset>/`` (``released_checkpoint.pth`` as the
release's training loop saves it, ``case.pt`` with the release's float64 outputs, ``case.json`` with the
tolerance and the public import command). Every case goes through ``pamm-bench import-checkpoint`` and
``load_run_model`` in float64; negative controls (swapped tasks, one perturbed weight, a dropped prompt update)
go through the same command and must miss the reference; malformed checkpoints are refused by name.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from released_cases import Case, case_outputs, import_case, model_outputs, relative_errors, released_cases, run_case

from pamm.checkpoints import import_checkpoint, load_run_model
from pamm.cli import main as cli_main
from pamm.config import resolve_config
from pamm.engine.build import build_model_for

CASES = released_cases("transformers")
case_params = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def model_of(case: Case) -> str:
    return case.info["project"]["model"]


def released_entries(case: Case) -> dict[str, torch.Tensor]:
    """The checkpoint's ``model`` with the DDP ``module.`` prefix stripped (as the release's inference.py does)."""
    checkpoint = torch.load(case.folder / "released_checkpoint.pth", weights_only=True)
    return {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}


def import_entries(case: Case, released: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    """Save ``released`` the way the release's training loop does, then run the case's public import command on it."""
    path = tmp_path / "edited_checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in released.items()}, "epoch": 0, "iter_count": 0}, path)
    original = str(case.folder / "released_checkpoint.pth")
    args = [str(path) if word == original else word for word in case.command(tmp_path / "run")]
    assert str(path) in args
    assert cli_main(args) == 0
    return tmp_path / "run"


def errors_of(run_dir: Path, reference: dict) -> dict[str, float]:
    return relative_errors(model_outputs(run_dir, reference["input"]), reference["outputs"])


def taskprompter_cases() -> list[Case]:
    return [c for c in CASES if model_of(c) == "taskprompter"]


@case_params
def test_released_checkpoint_reproduces_the_released_outputs(case: Case, tmp_path: Path) -> None:
    errors = run_case(case, tmp_path / "run")
    assert max(errors.values()) <= case.tolerance, errors
    model = load_run_model(tmp_path / "run")
    assert not model.training and model.model_name == model_of(case)


@case_params
def test_swapped_tasks_miss_the_release(case: Case, tmp_path: Path) -> None:
    """The first two tasks' per-task weights swapped (wherever their shapes agree): still loads, must not match."""
    a, b = case.info["task_order"][:2]
    released = released_entries(case)
    swapped = dict(released)
    for key in released:
        if f".{a}." in key:
            twin = key.replace(f".{a}.", f".{b}.")
            if released[twin].shape == released[key].shape:
                swapped[key], swapped[twin] = released[twin], released[key]
    errors = errors_of(import_entries(case, swapped, tmp_path), case_outputs(case))
    assert errors[a] > 100 * case.tolerance and errors[b] > 100 * case.tolerance, errors


@case_params
def test_one_perturbed_decoder_weight_misses_the_release(case: Case, tmp_path: Path) -> None:
    """1e-3 on one weight of the last decoder stage moves that task's output past the tolerance."""
    task = case.info["task_order"][0]
    key = {
        "invpt": f"multi_task_decoder.invpt.mt_proj.{task}.0.weight",
        "taskprompter": f"heads.{task}.mt_proj.0.weight",
    }[model_of(case)]
    released = released_entries(case)
    released[key] = released[key].clone()
    released[key][0, 0, 1, 1] += 1e-3
    errors = errors_of(import_entries(case, released, tmp_path), case_outputs(case))
    assert errors[task] > case.tolerance, errors


@pytest.mark.parametrize("case", taskprompter_cases(), ids=[c.name for c in taskprompter_cases()])
def test_taskprompter_prompt_update_is_loaded_and_used(case: Case, tmp_path: Path) -> None:
    """With every ``token_trans1`` zeroed we reproduce the release's update-zeroed run; the update changes outputs."""
    zeroed_reference = torch.load(case.folder / "case_update_zeroed.pt", weights_only=True)
    released = {
        k: torch.zeros_like(v) if ".attn.token_trans1." in k else v for k, v in released_entries(case).items()
    }
    assert max(errors_of(import_entries(case, released, tmp_path), zeroed_reference).values()) <= case.tolerance

    import_case(case, tmp_path / "full")
    assert min(errors_of(tmp_path / "full", zeroed_reference).values()) > 100 * case.tolerance


# --- refusals: one line naming the entry that cannot be mapped ---------------------------------------------------


def first_case(model_name: str) -> Case:
    case = next((c for c in CASES if model_of(c) == model_name), None)
    if case is None:
        pytest.skip(f"no {model_name} fixture")
    return case


def refusal(case: Case, released: dict[str, torch.Tensor], tmp_path: Path, capsys) -> str:
    """Run the public import on an edited checkpoint that must be refused; the one-line error it prints."""
    capsys.readouterr()
    with pytest.raises(AssertionError):
        import_entries(case, released, tmp_path)
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and not (tmp_path / "run").exists()
    return message


@pytest.mark.parametrize("model_name", ["invpt", "taskprompter"])
def test_unknown_missing_and_misshaped_entries_are_refused_by_name(model_name: str, tmp_path: Path, capsys) -> None:
    case = first_case(model_name)
    released = released_entries(case)

    extra = dict(released, **{"multi_task_decoder.something_new.weight": torch.zeros(3)})
    assert "something_new.weight" in refusal(case, extra, tmp_path, capsys)

    head = next(k for k in released if k.startswith("heads.") and k.endswith("linear_pred.bias"))
    missing = {k: v for k, v in released.items() if k != head}
    assert "not in the checkpoint" in refusal(case, missing, tmp_path, capsys)

    weight = next(k for k in released if k.endswith("norm1.weight"))
    misshaped = dict(released, **{weight: torch.zeros(released[weight].numel() + 1)})
    assert weight in refusal(case, misshaped, tmp_path, capsys)


@pytest.mark.parametrize("model_name", ["invpt", "taskprompter"])
def test_a_checkpoint_of_another_dataset_or_depth_is_refused(model_name: str, tmp_path: Path, capsys) -> None:
    case = first_case(model_name)
    other = next((c for c in CASES if model_of(c) == model_name and c != case), None)
    if other is not None:
        assert "tasks" in refusal(case, released_entries(other), tmp_path, capsys)

    released = released_entries(case)
    last = max(int(m.group(1)) for k in released if (m := re.match(r"backbone\.blocks\.(\d+)\.", k)))
    shallower = {k: v for k, v in released.items() if not k.startswith(f"backbone.blocks.{last}.")}
    assert f"depth={last}" in refusal(case, shallower, tmp_path, capsys)


def test_reordered_tasks_are_refused(tmp_path: Path, capsys) -> None:
    """Per-task modules are also indexed by task position: a checkpoint listing its tasks in another order fails."""
    case = first_case("taskprompter")
    released = released_entries(case)
    first = case.info["task_order"][0]
    reordered = {k: v for k, v in released.items() if not k.startswith(f"heads.{first}.")}
    reordered.update({k: v for k, v in released.items() if k.startswith(f"heads.{first}.")})
    assert "in this order" in refusal(case, reordered, tmp_path, capsys)


def test_invpt_drops_only_the_four_unread_modules(tmp_path: Path) -> None:
    case = first_case("invpt")
    import_case(case, tmp_path / "run")
    notes = json.loads((tmp_path / "run" / "provenance.json").read_text())["notes"]
    assert len(notes) == 1
    for module in ("scale_embed.2", "redu_chan.0", "invpt_stages.0.blocks.0.attn.fuse_attn", "invpt.norm_mt"):
        assert module in notes[0]
    released = released_entries(case)
    unread = r"scale_embed\.2\.|redu_chan\.0\.|stages\.0\.blocks\.0\.attn\.fuse_attn\.|invpt\.norm_mt\."
    kept = [k for k in released if not re.search(unread, k)]
    assert len(load_run_model(tmp_path / "run").state_dict()) == len(kept)


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
    (r"backbone\.(.+)", r"backbone.\1"),  # the ViT keeps its release names
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
def test_any_size_round_trips_through_the_release_layout(model_name: str, dataset: str, tmp_path: Path) -> None:
    """A model at sizes no fixture uses (12×8 grid, 4 blocks, other widths), saved under the release's names (plus
    the entries the release holds and we drop) and imported back through ``import_checkpoint``: identical outputs."""
    overrides = {
        "data": {"size": [48, 32]},
        "model": {"backbone": {"patch_size": 4, "embed_dim": 24, "depth": 4, "num_heads": 2}},
    }
    decoder = {"invpt": {"embed_dim": 20, "pred_channels": 4}, "taskprompter": {"embed_dim": 12, "final_embed_dim": 16}}
    overrides["model"].update(decoder[model_name])
    torch.manual_seed(3)
    source = build_model_for(resolve_config("paper", dataset, model_name, overrides=overrides))
    with torch.no_grad():
        for name, tensor in source.state_dict().items():
            if "running_var" in name:
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.3)
    table = INVPT_TO_RELEASE if model_name == "invpt" else TASKPROMPTER_TO_RELEASE
    released = {f"module.{to_release(k, table)}": v for k, v in source.state_dict().items()}
    if model_name == "invpt":
        for unread in ("scale_embed.2", "invpt.redu_chan.0.0", "invpt.invpt_stages.0.blocks.0.attn.fuse_attn",
                       "invpt.norm_mt"):
            released[f"module.multi_task_decoder.{unread}.weight"] = torch.randn(3)
    else:
        released["module.backbone.blocks.3.attn.token_trans1.weight"] = torch.randn(24, 96)
        released["module.backbone.blocks.3.attn.token_trans1.bias"] = torch.randn(24)
    torch.save({"model": released, "epoch": 0, "iter_count": 0}, tmp_path / "released.pth")

    import_checkpoint(model_name, tmp_path / "released.pth", dataset, tmp_path / "run", overrides=overrides, seed=4)
    target = load_run_model(tmp_path / "run").double()
    image = torch.randn(2, 3, 48, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, got = source.double().eval()(image), target(image)
    for task in expected:
        assert torch.equal(got[task], expected[task]), task
