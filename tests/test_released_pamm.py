"""PAMM as released: the authors' checkpoints load through the public command and reproduce the released
outputs (golden fixtures from CQC-gogopro/PAMM a879302, ``../shared/fixtures/released/pamm``); the converter
refuses what it cannot map; the backbone's pretrained loader fits standard ViT weights to the class-token-free
ViT and refuses weights that do not fit."""
from __future__ import annotations

import logging
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from released_cases import Case, case_outputs, model_outputs, relative_errors, released_cases, run_case

from pamm.checkpoints import get_converter, load_run_model
from pamm.cli import main
from pamm.config import ConfigError, resolve_config
from pamm.engine.build import build_model_for
from pamm.models.backbones import Backbone, PretrainedWeightsError, _timm

CASES = released_cases("pamm")
needs_fixtures = pytest.mark.skipif(not CASES, reason="no PAMM fixtures under ../shared/fixtures/released/pamm")
STAGE = "backbone.stage_MTLoRA_mamba"


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def case_ids(cases):
    return [c.name for c in cases]


# ----------------------------------------------------------------------------------------------------------
# The fixtures, through `pamm-bench import-checkpoint` and `load_run_model`
# ----------------------------------------------------------------------------------------------------------

@needs_fixtures
@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_released_case_matches_through_the_public_command(case: Case, tmp_path):
    errors = run_case(case, tmp_path / "run")
    assert set(errors) == set(case.info["case"]["task_order"])
    worst = max(errors.values())
    assert worst <= case.tolerance, errors
    provenance = (tmp_path / "run" / "provenance.json").read_text()
    assert "--unregistered" in provenance and case.info["checkpoint"]["sha256"] in provenance


def _without(case: Case, drop: list[str]) -> list[str]:
    """The case's command with the ``--set`` entries in ``drop`` left out."""
    words, kept, i = shlex.split(case.info["project"]["command"]), [], 0
    while i < len(words):
        if words[i] == "--set" and words[i + 1] in drop:
            i += 2
            continue
        kept.append(words[i])
        i += 1
    return kept


@needs_fixtures
@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_as_released_drops_the_class_token_by_itself(case: Case, tmp_path):
    """The class-token `--set`s the fixtures carry are redundant now: without them the case still passes."""
    drop = case.info["project"]["set_until_as_released_drops_the_class_token"]
    words = _without(case, drop)
    assert not any(d in words for d in drop) and len(words) == len(shlex.split(case.info["project"]["command"])) - 2 * len(drop)
    patched = Case(case.folder, {**case.info, "project": {**case.info["project"], "command": shlex.join(words)}})
    errors = run_case(patched, tmp_path / "run")
    assert max(errors.values()) <= case.tolerance, errors


def _import(case: Case, run_dir: Path, checkpoint: Path | None = None, unregistered: Path | None | bool = True,
            extra: list[str] = ()) -> int:
    """Run the case's command with another checkpoint / unregistered file (False: none)."""
    args = case.command(run_dir)
    if checkpoint is not None:
        args[args.index("--checkpoint") + 1] = str(checkpoint)
    if unregistered is False:
        at = args.index("--unregistered")
        del args[at : at + 2]
    elif isinstance(unregistered, Path):
        args[args.index("--unregistered") + 1] = str(unregistered)
    return main(args + list(extra))


def _released(case: Case) -> dict:
    return torch.load(case.folder / "released_checkpoint.pth", map_location="cpu", weights_only=True)


def _worst(case: Case, run_dir: Path) -> float:
    data = case_outputs(case)
    return max(relative_errors(model_outputs(run_dir, data["input"]), data["outputs"]).values())


@needs_fixtures
@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_negative_controls_swapped_task_and_perturbed_weight_fail(case: Case, tmp_path):
    tasks = case.info["case"]["task_order"]
    saved = _released(case)
    # A swapped task: two tasks' stage-0 task convolutions trade places (same shapes, so the import succeeds).
    a, b = tasks[0], tasks[1]
    swapped = dict(saved["model"])
    ka, kb = f"module.{STAGE}.0.task_conv.{a}.weight", f"module.{STAGE}.0.task_conv.{b}.weight"
    swapped[ka], swapped[kb] = saved["model"][kb], saved["model"][ka]
    torch.save({**saved, "model": swapped}, tmp_path / "swapped.pth")
    assert _import(case, tmp_path / "swapped", tmp_path / "swapped.pth") == 0
    assert _worst(case, tmp_path / "swapped") > 1e3 * case.tolerance
    # A perturbed weight: the least observable tensor of the fixtures (a Δ down-projection), moved by 10 %.
    perturbed = dict(saved["model"])
    key = f"module.{STAGE}.0.x2dt_proj0.{tasks[0]}.weight"
    generator = torch.Generator().manual_seed(0)
    weight = perturbed[key]
    perturbed[key] = weight + 0.1 * weight.square().mean().sqrt() * torch.randn(weight.shape, generator=generator)
    torch.save({**saved, "model": perturbed}, tmp_path / "perturbed.pth")
    assert _import(case, tmp_path / "perturbed", tmp_path / "perturbed.pth") == 0
    assert _worst(case, tmp_path / "perturbed") > 1e3 * case.tolerance


@needs_fixtures
@pytest.mark.parametrize("case", CASES[:1], ids=case_ids(CASES[:1]))
def test_without_unregistered_a_d_take_build_values_and_prompts_the_logged_seed(case: Case, tmp_path):
    run = tmp_path / "run"
    assert _import(case, run, unregistered=False, extra=["--set", "model.released_prior_seed=5"]) == 0
    provenance = (run / "provenance.json").read_text()
    assert "released_prior_seed=5" in provenance
    model = load_run_model(run)
    drawn = model.released_priors(5)
    state = model.state_dict()
    for index, stage in enumerate(model.stages):
        n = stage.A_log.shape[1]
        assert torch.equal(stage.A_log, torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand_as(stage.A_log))
        assert torch.equal(stage.D, torch.ones_like(stage.D))
        for name in ("prior_B", "prior_C"):
            assert torch.equal(state[f"stages.{index}.{name}"], drawn[f"stages.{index}.{name}"])
    # The fixtures randomise A/D/prompts, so without them the outputs must differ (the file is needed).
    assert _worst(case, run) > 1e3 * case.tolerance


@needs_fixtures
def test_converter_refuses_unmapped_missing_and_misshaped_keys(tmp_path, capsys):
    case = CASES[0]
    saved = _released(case)
    tasks = case.info["case"]["task_order"]

    def refused(model_dict, name: str, unregistered=True) -> str:
        path = tmp_path / f"{name}.pth"
        torch.save({**saved, "model": model_dict}, path)
        assert _import(case, tmp_path / name, path, unregistered) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert not (tmp_path / name).exists()
        return err

    extra = {**saved["model"], "module.backbone.extra_head.weight": torch.zeros(3)}
    assert "'backbone.extra_head.weight'" in refused(extra, "extra")
    missing = {k: v for k, v in saved["model"].items() if not k.endswith("C_proj0.MoE.14.W.weight")}
    assert "lacks key 'backbone.stage_MTLoRA_mamba.0.C_proj0.MoE.14.W.weight'" in refused(missing, "missing")
    misshaped = dict(saved["model"])
    key = f"module.{STAGE}.1.proj_z0.{tasks[1]}.weight"
    misshaped[key] = misshaped[key][:, :-1]
    err = refused(misshaped, "misshaped")
    assert f"'{key[len('module.'):]}'" in err and "'stages.1.gate_proj.weight'" in err
    # unregistered files that do not belong: a model checkpoint, and the right file with one key too many
    assert _import(case, tmp_path / "other", unregistered=tmp_path / "extra.pth") == 2
    assert "the --unregistered file lacks key 'backbone.stage_MTLoRA_mamba.0.A_log0." in capsys.readouterr().err
    unregistered = torch.load(case.folder / "released_unregistered.pt", map_location="cpu", weights_only=True)
    torch.save({**unregistered, f"{STAGE}.0.A_log1.{tasks[0]}": torch.zeros(2)}, tmp_path / "unreg.pt")
    assert _import(case, tmp_path / "other", unregistered=tmp_path / "unreg.pt") == 2
    assert f"key '{STAGE}.0.A_log1.{tasks[0]}' has no counterpart" in capsys.readouterr().err


@needs_fixtures
def test_converter_needs_the_as_released_variant(tmp_path, capsys):
    case = CASES[0]
    args = case.command(tmp_path / "run")
    args[args.index("--variant") + 1] = "default"
    assert main(args) == 2
    assert "--variant as_released" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Other sizes and seeds: an independent writer of the release's layout, read back by the converter
# ----------------------------------------------------------------------------------------------------------

def released_layout(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our as-released model's tensors under the release's names and shapes (the module map of
    MoE_mamba.py / PAME.py: one module per task and per expert), plus its unregistered dict."""
    tasks, d, di = model.task_names, model.options.embed_dim, model.options.d_inner
    rank = model.options.resolved_dt_rank
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out, extra = {}, {}
    for key, value in sd.items():
        if key.startswith("backbone.model."):
            name = key[len("backbone.model."):]
            out[f"backbone.{name}"] = torch.cat([torch.randn(1, 1, value.shape[-1]), value], 1) if name == "pos_embed" else value

    def per(value, j, size):
        return value[j * size : (j + 1) * size]

    def expert(x, prefix):
        e, r, c, h = x.num_experts, x.rank, x.in_channels, x.router.hidden
        o = x.out_channels
        rt = x.router
        for j, t in enumerate(tasks):
            p = f"{prefix}.router.{t}."
            out[p + "0.conv1.weight"] = per(rt.channel_proj.weight, j, h)[..., None]
            out[p + "0.conv1.bias"] = per(rt.channel_proj.bias, j, h)
            out[p + "0.ln.weight"], out[p + "0.ln.bias"] = rt.channel_norm.weight[j], rt.channel_norm.bias[j]
            out[p + "0.conv3.weight"], out[p + "0.conv3.bias"] = rt.channel_out.weight[j][..., None, None], rt.channel_out.bias[j]
            out[p + "0.convsp.weight"], out[p + "0.convsp.bias"] = rt.spatial_weight[j][None], rt.spatial_bias[j : j + 1]
            out[p + "0.ln_sp.weight"], out[p + "0.ln_sp.bias"] = rt.spatial_norm.weight[j], rt.spatial_norm.bias[j]
            out[p + "0.conv2.weight"], out[p + "0.conv2.bias"] = rt.spatial_out.weight[j][..., None, None], rt.spatial_out.bias[j]
            out[p + "1.weight"], out[p + "1.bias"] = rt.logits.weight[j][..., None, None], rt.logits.bias[j]
            for mine, theirs in ((x.norm, "Bn"), (x.pool_norm, "Bn_all")):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{prefix}.{theirs}.{t}.{name}"] = per(getattr(mine, name), j, o)
                out[f"{prefix}.{theirs}.{t}.num_batches_tracked"] = mine.num_batches_tracked.clone()
            out[f"{prefix}.proj_task.{t}.W.weight"] = per(x.task_down.weight, j, r)
            out[f"{prefix}.proj_task.{t}.W.bias"] = per(x.task_down.bias, j, r)
            out[f"{prefix}.proj_task.{t}.M.weight"] = per(x.task_up.weight, j, o)
            out[f"{prefix}.proj_task.{t}.M.bias"] = per(x.task_up.bias, j, o)
        out[f"{prefix}.proj_gerneral.weight"], out[f"{prefix}.proj_gerneral.bias"] = x.general.weight, x.general.bias
        for i in range(e):
            out[f"{prefix}.MoE.{i}.W.weight"] = per(x.pool_down.weight, i, r)
            out[f"{prefix}.MoE.{i}.W.bias"] = per(x.pool_down.bias, i, r)
            out[f"{prefix}.MoE.{i}.M.weight"] = x.pool_up.weight[:, i * r : (i + 1) * r]
            out[f"{prefix}.MoE.{i}.M.bias"] = x.pool_up_bias[i]
        assert c == x.in_channels

    for s, st in enumerate(model.stages):
        p = f"{STAGE}.{s}."
        out[p + "first_decode.weight"], out[p + "first_decode.bias"] = st.first_decode[0].weight, st.first_decode[0].bias
        out[p + "input_norm.weight"], out[p + "input_norm.bias"] = st.first_decode[1].weight, st.first_decode[1].bias
        for j, t in enumerate(tasks):
            for mine, theirs, size in ((st.task_conv, "task_conv", d), (st.gate_proj, "proj_z0", d),
                                       (st.in_proj, "dim_expand_proj_x0", di), (st.out_proj, "dim_decrease_proj0", d)):
                out[f"{p}{theirs}.{t}.weight"] = per(mine.weight, j, size)
                out[f"{p}{theirs}.{t}.bias"] = per(mine.bias, j, size)
            out[f"{p}task_input_norm0.{t}.weight"] = per(st.task_norm.weight, j, d)
            out[f"{p}task_input_norm0.{t}.bias"] = per(st.task_norm.bias, j, d)
            out[f"{p}x2dt_proj0.{t}.weight"] = per(st.dt_down.weight, j, rank)[:, :, 0, 0]
            out[f"{p}dt_proj0.{t}.weight"] = per(st.dt_up.weight, j, di)[:, :, 0, 0]
            out[f"{p}dt_proj0.{t}.bias"] = per(st.delta_bias, j, di)
            extra[f"{p}A_log0.{t}"], extra[f"{p}D0.{t}"] = per(st.A_log, j, di), per(st.D, j, di)
            extra[f"{p}task_prompt_B.{t}"], extra[f"{p}task_prompt_C.{t}"] = st.prior_B[j], st.prior_C[j]
        expert(st.B_expert, p + "B_proj0")
        expert(st.C_expert, p + "C_proj0")
        expert(st.dead_branch, p + "conv2d0")
    fusion = model.fusion.stage_logits
    for j, t in enumerate(tasks):
        p = f"backbone.task_mask.{t}."
        out[p + "0.weight"], out[p + "0.bias"] = per(fusion[0].weight, j, d), per(fusion[0].bias, j, d)
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[p + f"1.{name}"] = per(getattr(fusion[1], name), j, d)
        out[p + "1.num_batches_tracked"] = fusion[1].num_batches_tracked.clone()
        out[p + "3.weight"], out[p + "3.bias"] = per(fusion[3].weight, j, 4), per(fusion[3].bias, j, 4)
        head = model.heads[t]
        h = f"heads.{t}."
        out[h + "mt_proj.0.weight"], out[h + "mt_proj.0.bias"] = head.body[0].weight, head.body[0].bias
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[h + f"mt_proj.1.{name}"] = getattr(head.body[1], name)
        out[h + "linear_pred.weight"], out[h + "linear_pred.bias"] = head.out.weight, head.out.bias
    return ({k: v.detach().clone() for k, v in out.items()}, {k: v.detach().clone() for k, v in extra.items()})


def _randomised(model, seed: int):
    """Every tensor random (variances positive, counters distinct), so no mapping can pass by coincidence."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.fill_(int(torch.randint(1, 100, (), generator=generator)))
                continue
            if name.startswith("output_offset_"):  # pamm-bench's depth offset: the release has none (0)
                continue
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
            if "running_var" in name:
                tensor.abs_().add_(0.5)
    return model


@needs_fixtures
@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_released_layout_writer_matches_the_fixture_checkpoint(case: Case):
    """The test's writer of the release's layout gives exactly the fixture's keys and shapes (so it is the release's)."""
    project = case.info["project"]
    overrides = {}
    from pamm.config import deep_merge, parse_override

    for item in project["set"]:
        overrides = deep_merge(overrides, parse_override(item))
    model = build_model_for(resolve_config("paper", project["dataset"], "pamm", "as_released", overrides=overrides))
    written, extra = released_layout(model)
    saved = _released(case)["model"]
    assert {k: tuple(v.shape) for k, v in written.items()} == {k[len("module."):]: tuple(v.shape) for k, v in saved.items()}
    unregistered = torch.load(case.folder / "released_unregistered.pt", map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in extra.items()} == {k: tuple(v.shape) for k, v in unregistered.items()}


@pytest.mark.parametrize("dataset,seed,overrides", [
    ("nyud", 3, {}),
    ("pascal", 8, {"expert_kernel": 5, "expert_rank": 3, "num_experts": 11, "top_k": 4, "dead_branch_experts": 6}),
])
def test_converter_reads_the_release_layout_at_other_sizes_and_seeds(dataset: str, seed: int, overrides: dict, tmp_path):
    cfg = resolve_config("tiny", dataset, "pamm", "as_released", seed=seed, overrides={"model": overrides})
    torch.manual_seed(seed)
    model = _randomised(build_model_for(cfg), seed).eval()
    written, extra = released_layout(model)
    entry = get_converter("pamm")
    fresh = build_model_for(cfg)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    converted = entry.convert(written, fresh, cfg, extra)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # the target model is not touched
    expected = model.state_dict()
    assert set(converted.state_dict) == set(expected)
    for key, value in expected.items():
        if key.startswith("output_offset_"):
            assert float(converted.state_dict[key]) == 0.0
            continue
        assert torch.equal(converted.state_dict[key], value), key
    assert any("--unregistered" in note for note in converted.notes)
    fresh.load_state_dict(converted.state_dict)
    image = torch.randn(2, 3, *cfg["data"]["size"], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want, got = model.eval()(image), fresh.eval()(image)
    assert all(torch.equal(want[t], got[t]) for t in want)


# ----------------------------------------------------------------------------------------------------------
# The pretrained loader (pamm.models.backbones)
# ----------------------------------------------------------------------------------------------------------

VIT = dict(patch_size=8, depth=4, embed_dim=48, num_heads=3)


def _standard_vit(img_size=(64, 64), seed=0):
    """A standard timm ViT with class token, as ImageNet checkpoints are (its own 8x8 grid)."""
    torch.manual_seed(seed)
    return _timm().create_model("vit_tiny_patch16_224", img_size=img_size, **VIT)


def _class_token_free(path, resample="bicubic", partial=False, size=(56, 72)):
    return Backbone("vit_tiny_patch16_224", size, pretrained_file=str(path), class_token=False, global_pool="",
                    pos_embed_resample=resample, pretrained_partial=partial, **VIT)


def test_standard_vit_weights_load_into_the_class_token_free_vit_with_the_released_resample(tmp_path):
    source = _standard_vit()
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    backbone = _class_token_free(tmp_path / "vit.pth", "bicubic")
    vit = backbone.model
    assert vit.cls_token is None and vit.pos_embed.shape == (1, 7 * 9, 48)
    for name, value in vit.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(value, source.state_dict()[name]), name
    # The release (PAME.py resize_pos_embed): row 0 set aside, the 8x8 grid bicubic-resized, no antialias.
    grid = source.pos_embed[:, 1:].detach().reshape(1, 8, 8, 48).permute(0, 3, 1, 2)
    released = F.interpolate(grid, size=(7, 9), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 63, 48)
    assert torch.equal(vit.pos_embed.detach(), released)
    antialiased = _class_token_free(tmp_path / "vit.pth", "bicubic_antialias").model.pos_embed.detach()
    timm_way = _timm().layers.resample_abs_pos_embed(source.pos_embed.detach(), (7, 9), num_prefix_tokens=1)[:, 1:]
    torch.testing.assert_close(antialiased, timm_way, rtol=0, atol=1e-6)
    assert (antialiased - released).abs().max() > 1e-3  # the two resamples really differ


def test_the_as_released_config_loads_pretrained_weights_the_released_way(tmp_path):
    source = _standard_vit(seed=4)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    cfg = resolve_config("tiny", "nyud", "pamm", "as_released",
                         overrides={"model": {"backbone": {"pretrained_file": str(tmp_path / "vit.pth"), "embed_dim": 48},
                                              "backbone_dim": 48}})
    assert cfg["model"]["backbone"]["pos_embed_resample"] == "bicubic"
    model = build_model_for(cfg)
    gh, gw = model.token_grids[0]
    grid = source.pos_embed[:, 1:].detach().reshape(1, 8, 8, 48).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, 48)
    assert torch.equal(model.backbone.model.pos_embed.detach(), expected)
    assert torch.equal(model.backbone.model.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module.", "backbone.", "model+module.backbone.", "safetensors"])
def test_known_wrappers_are_stripped(tmp_path, wrap: str):
    state = _standard_vit(seed=1).state_dict()
    path = tmp_path / "w.pth"
    if wrap == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        if wrap == "model+module.backbone.":
            state = {"model": {"module.backbone." + k: v for k, v in state.items()}, "epoch": 3, "optimizer": {}}
        elif wrap.endswith("."):
            state = {wrap + k: v for k, v in state.items()}
        else:
            state = {wrap: state}
        torch.save(state, path)
    vit = _class_token_free(path).model
    assert torch.equal(vit.blocks[0].attn.qkv.weight, _standard_vit(seed=1).blocks[0].attn.qkv.weight)


def test_weights_that_do_not_fit_are_refused_with_counts_unless_opted_in(tmp_path, caplog):
    torch.save(_timm().create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PretrainedWeightsError) as err:
        _class_token_free(tmp_path / "r18.pth")
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message
    assert "0 of 53 keys matched, 53 missing (blocks.0.attn.proj.bias" in message and "122 unexpected (bn1.bias" in message
    assert "pretrained_partial: true" in message
    # A prefixed whole model: the backbone part plus a decoder; opted in, the matching part loads.
    state = {f"encoder.{k}": v for k, v in _standard_vit(seed=2).state_dict().items()}
    state.update({k: v for k, v in _standard_vit(seed=2).state_dict().items() if k.startswith("blocks.0.")})
    state["decoder.weight"] = torch.zeros(3)
    state["blocks.0.norm1.weight"] = torch.ones(5)  # another shape
    torch.save(state, tmp_path / "mixed.pth")
    with pytest.raises(PretrainedWeightsError, match=r"of another shape \(blocks.0.norm1.weight: \(5,\) vs \(48,\)\)"):
        _class_token_free(tmp_path / "mixed.pth")
    with caplog.at_level(logging.WARNING, logger="pamm.models.backbones"):
        vit = _class_token_free(tmp_path / "mixed.pth", partial=True).model
    assert "pretrained_partial" in caplog.text
    assert torch.equal(vit.blocks[0].attn.qkv.weight, _standard_vit(seed=2).blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {}),
    ("swin_tiny_patch4_window7_224", dict(window_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])),
])
def test_feature_backbones_load_their_full_timm_weights(tmp_path, name: str, kwargs: dict):
    """A hierarchical backbone (features_only) loads its architecture's full weights; the classifier it drops
    is ignored, a missing tensor is refused."""
    torch.manual_seed(5)
    full = _timm().create_model(name, **({"img_size": (64, 64)} if name.startswith("swin") else {}), **kwargs)
    torch.save({"state_dict": full.state_dict()}, tmp_path / "w.pth")
    backbone = Backbone(name, (64, 64), pretrained_file=str(tmp_path / "w.pth"), **kwargs)
    for key, value in backbone.timm_model.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    first = next(iter(backbone.timm_model.state_dict()))
    torch.save({k: v for k, v in full.state_dict().items() if k != first}, tmp_path / "short.pth")
    with pytest.raises(PretrainedWeightsError, match=f"1 missing \\({first}\\)"):
        Backbone(name, (64, 64), pretrained_file=str(tmp_path / "short.pth"), **kwargs)


def test_a_text_file_or_npz_as_weights_is_one_clear_line(tmp_path):
    (tmp_path / "weights.pth").write_text("these are not weights\n")
    with pytest.raises(PretrainedWeightsError, match=r"is not a weights file \(a text file\)"):
        _class_token_free(tmp_path / "weights.pth")
    (tmp_path / "jax.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(PretrainedWeightsError, match="npz"):
        _class_token_free(tmp_path / "jax.npz")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "empty.pth")
    with pytest.raises(PretrainedWeightsError, match="holds no state dict"):
        _class_token_free(tmp_path / "empty.pth")


def test_a_bad_weights_file_stops_train_with_one_line(tmp_path, capsys):
    from pamm.data import make_synthetic

    make_synthetic(tmp_path / "data", "nyud", n_train=2, n_val=1, height=64, width=80, seed=0, progress=False)
    (tmp_path / "weights.pth").write_text("hello")
    rc = main(["train", "--dataset", "nyud", "--model", "pamm", "--scale", "tiny", "--data-root", str(tmp_path / "data"),
               "--set", f"model.backbone.pretrained_file={tmp_path / 'weights.pth'}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "is not a weights file" in err


@pytest.mark.parametrize("dataset,released", [("nyud", 669_124_957), ("pascal", 1_059_687_734)])
def test_paper_parameter_count_is_the_releases_less_its_class_token_row(dataset: str, released: int):
    """The release's sum(p.numel()) at the paper configs (docs/fidelity.md), less only pos_embed's unused row 0."""
    from pamm.models import create_model
    from pamm.tasks import dataset_tasks

    cfg = resolve_config("paper", dataset, "pamm", "as_released")
    with torch.device("meta"):
        model = create_model("pamm", dataset_tasks(dataset), img_size=cfg["data"]["size"], **cfg["model"])
    width = model.backbone.channels[0]
    assert sum(p.numel() for p in model.parameters()) == released - width
