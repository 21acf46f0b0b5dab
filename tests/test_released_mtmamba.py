"""Released MTMamba / MTMamba++ checkpoints (baselines/released_mtmamba.py) and mmseg's Swin semantics
(pamm/models/swin_mmseg.py), against the golden fixtures made from the authors' code (float64, 1e-10).

Every checkpoint goes through the public command, ``pamm-bench import-checkpoint`` (in-process), and the run is
read back with ``pamm.checkpoints.load_run_model``."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from released_cases import Case, case_outputs, model_outputs, relative_errors, released_cases, run_case

import baselines.released_mtmamba as released_mtmamba
from pamm.checkpoints import list_sources, load_run_model
from pamm.checkpoints.registry import get_converter
from pamm.cli import main
from pamm.config import deep_merge, parse_override, resolve_config
from pamm.engine.build import build_model_for
from pamm.models import create_model
from pamm.models.backbones import Backbone
from pamm.models.swin_mmseg import shifted_window_attention
from pamm.tasks import dataset_tasks

CASES = released_cases("mtmamba")
needs_fixtures = pytest.mark.skipif(not CASES, reason="the released MTMamba fixtures (../shared/fixtures/released/"
                                                      "mtmamba) are absent")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def case_id(case: Case) -> str:
    return case.name


def released_state(case: Case) -> dict[str, torch.Tensor]:
    """The case's released state dict without DDP's ``module.``."""
    saved = torch.load(case.folder / "released_checkpoint.pth", map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in saved["model"].items()}


def import_released(case: Case, released: dict[str, torch.Tensor], tmp_path: Path, extra: list[str] = ()) -> tuple[int, Path]:
    """The case's import command on ``released`` (saved as the authors do: DDP prefix, under "model")."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    checkpoint = tmp_path / "released_checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in released.items()}}, checkpoint)
    run_dir = tmp_path / "run"
    command = case.command(run_dir)
    command[command.index("--checkpoint") + 1] = str(checkpoint)
    return main(command + list(extra)), run_dir


def worst(errors: dict[str, float]) -> float:
    return max(errors.values())


def imported_errors(case: Case, released: dict[str, torch.Tensor], tmp_path: Path) -> float:
    rc, run_dir = import_released(case, released, tmp_path)
    assert rc == 0
    data = case_outputs(case)
    return worst(relative_errors(model_outputs(run_dir, data["input"]), data["outputs"]))


# --------------------------------------------------------------------------------------------------------------
# The golden cases and their negative controls
# --------------------------------------------------------------------------------------------------------------
def test_both_sources_are_registered() -> None:
    assert {"mtmamba", "mtmamba_pp"} <= set(list_sources())
    assert get_converter("mtmamba").model_name == "mtmamba"
    assert get_converter("mtmamba_pp").model_name == "mtmamba_pp"


@needs_fixtures
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_released_checkpoint_reproduces_the_released_outputs(case: Case, tmp_path: Path) -> None:
    assert worst(run_case(case, tmp_path / "run")) <= case.tolerance
    # Same parameters as the release: its float tensors less BN running statistics (buffers).
    released = released_state(case)
    released_parameters = sum(v.numel() for k, v in released.items() if v.is_floating_point() and "running_" not in k)
    assert sum(p.numel() for p in load_run_model(tmp_path / "run").parameters()) == released_parameters


def _task_swapped(released: dict[str, torch.Tensor], plus_plus: bool, tasks: list[str]) -> dict[str, torch.Tensor]:
    """The first STM block of stage 0 of the first two tasks swapped (a wrong task slice in the stacking)."""
    first, second = tasks[:2]
    pattern = "block_stm.{}_0.0." if plus_plus else "block_1.{}_0."
    a, b = pattern.format(first), pattern.format(second)
    swapped = dict(released)
    for key in released:
        if key.startswith(a):
            other = b + key[len(a):]
            swapped[key], swapped[other] = released[other], released[key]
    return swapped


def _perturbed(released: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    key = "backbone.stages.0.blocks.1.attn.w_msa.qkv.weight"
    return {**released, key: released[key] * 1.01}


@needs_fixtures
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_negative_controls_fail(case: Case, tmp_path: Path, monkeypatch) -> None:
    """A swapped task block, a 1 % perturbed backbone weight and PatchMerging left in mmseg's order are caught."""
    released = released_state(case)
    limit = 1e3 * case.tolerance
    plus_plus = case.info["project"]["model"] == "mtmamba_pp"
    assert imported_errors(case, released, tmp_path / "own") <= case.tolerance  # the same path, unbroken
    assert imported_errors(case, _task_swapped(released, plus_plus, case.info["task_order"]), tmp_path / "swap") > limit
    assert imported_errors(case, _perturbed(released), tmp_path / "perturbed") > limit
    monkeypatch.setattr(released_mtmamba, "mmseg_merge_order", lambda channels: torch.arange(4 * channels))
    assert imported_errors(case, released, tmp_path / "merge_order") > limit


@needs_fixtures
def test_timm_semantics_is_refused_and_would_not_reproduce(tmp_path: Path, capsys) -> None:
    """With timm's roll-then-pad windows the same weights miss the release; the import refuses that model."""
    case = CASES[0]
    released = released_state(case)
    rc, _ = import_released(case, released, tmp_path / "timm", ["--set", "model.backbone.swin_semantics=timm"])
    assert rc == 2 and "swin_semantics=mmseg" in capsys.readouterr().err
    rc, run_dir = import_released(case, released, tmp_path / "mmseg")
    model = load_run_model(run_dir).double()
    model.backbone.swin_semantics = "timm"  # the converted weights, run with timm's forward
    data = case_outputs(case)
    with torch.no_grad():
        assert worst(relative_errors(model(data["input"]), data["outputs"])) > 1e3 * case.tolerance


def _case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


@needs_fixtures
def test_unmapped_misshaped_missing_and_foreign_keys_are_refused_by_name(tmp_path: Path, capsys) -> None:
    case = _case("mtmamba/mtmamba/nyud")
    released = released_state(case)
    index = "backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"
    broken_cases = [
        ({**released, "backbone.extra.weight": torch.zeros(1)}, r"'backbone\.extra\.weight'"),
        ({**released, "decoder_extra.weight": torch.zeros(1)}, r"'decoder_extra\.weight'"),
        ({**released, "block_1.semseg_0.op.A_logs": released["block_1.semseg_0.op.A_logs"][:-1]},
         r"'block_1\.semseg_0\.op\.A_logs' has shape .*'stages\.0\.stm1\.op\.A_logs'"),
        ({k: v for k, v in released.items() if k != "block_3.1.op.edge.Ds"},
         r"'stages\.1\.cross_task\.op\.Ds' is not filled for task 'edge'"),
        ({k: v for k, v in released.items() if k != "backbone.norm2.bias"}, r"'feature_norms\.2\.bias' is not filled"),
        ({**released, index: released[index].flip(0)}, r"relative_position_index' .* not the relative-position index"),
        ({k.replace("semseg", "sal"): v for k, v in released.items()}, r"task 'sal', which the model does not have"),
    ]
    for number, (broken, message) in enumerate(broken_cases):
        rc, _ = import_released(case, broken, tmp_path / str(number))
        err = capsys.readouterr().err
        assert rc == 2 and re.search(message, err), err


@needs_fixtures
def test_a_checkpoint_of_the_other_model_is_refused(tmp_path: Path, capsys) -> None:
    case = _case("mtmamba/mtmamba_pp/nyud")
    command = case.command(tmp_path / "run")
    command[command.index("--from") + 1] = "mtmamba"
    assert main(command) == 2
    assert "released key 'concat_layers" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Other sizes: our model written out in the release's layout (the inverse mapping, written independently here)
# --------------------------------------------------------------------------------------------------------------
def _mmseg_from_timm_merge(channels: int) -> torch.Tensor:
    """mmseg column m = c*4 + kh*2 + kw holds timm column (kw*2 + kh)*C + c."""
    m = torch.arange(4 * channels)
    c, kh, kw = m // 4, (m // 2) % 2, m % 2
    return (kw * 2 + kh) * channels + c


def released_layout(model: torch.nn.Module, plus_plus: bool, release_order: list[str]) -> dict[str, torch.Tensor]:
    """Our model's weights under the release's names and shapes (without the DDP prefix), as a release whose tasks
    come in ``release_order`` (its modules registered, and its task features concatenated, in that order)."""
    state = model.state_dict()
    tasks = list(model.tasks)
    out: dict[str, torch.Tensor] = {}
    swin = model.backbone.model.model
    bb = "backbone.model.model."
    out["backbone.patch_embed.projection.weight"] = state[bb + "patch_embed.proj.weight"]
    out["backbone.patch_embed.projection.bias"] = state[bb + "patch_embed.proj.bias"]
    for p in ("weight", "bias"):
        out[f"backbone.patch_embed.norm.{p}"] = state[bb + f"patch_embed.norm.{p}"]
    names = {"norm1": "norm1", "norm2": "norm2", "attn.w_msa.qkv": "attn.qkv", "attn.w_msa.proj": "attn.proj",
             "ffn.layers.0.0": "mlp.fc1", "ffn.layers.1": "mlp.fc2"}
    for i, stage in enumerate(swin.layers):
        for j, block in enumerate(stage.blocks):
            for theirs, ours in names.items():
                for p in ("weight", "bias"):
                    out[f"backbone.stages.{i}.blocks.{j}.{theirs}.{p}"] = state[bb + f"layers.{i}.blocks.{j}.{ours}.{p}"]
            table = f"layers.{i}.blocks.{j}.attn.relative_position_bias_table"
            out[f"backbone.stages.{i}.blocks.{j}.attn.w_msa.relative_position_bias_table"] = state[bb + table]
            out[f"backbone.stages.{i}.blocks.{j}.attn.w_msa.relative_position_index"] = block.attn.relative_position_index
        if i > 0:
            order = _mmseg_from_timm_merge(state[bb + f"layers.{i}.downsample.reduction.weight"].shape[1] // 4)
            for p in ("norm.weight", "norm.bias", "reduction.weight"):
                out[f"backbone.stages.{i - 1}.downsample.{p}"] = state[bb + f"layers.{i}.downsample.{p}"][..., order]
    for i in range(len(swin.layers)):
        for p in ("weight", "bias"):
            out[f"backbone.norm{i}.{p}"] = state[f"feature_norms.{i}.{p}"]

    def ss2d(prefix_out: str, prefix_in: str, t: int) -> None:
        for name, ours in released_mtmamba._SS2D_NAMES.items():
            if f"{prefix_in}.{ours}" not in state:
                continue
            value = state[f"{prefix_in}.{ours}"][t]
            if name in ("A_logs", "Ds"):
                value = value.reshape(-1, *value.shape[2:])
            elif name == "conv2d.weight":
                value = value[:, None]
            out[f"{prefix_out}.{name}"] = value

    hidden = model.head.hidden if plus_plus else 0
    for task in release_order:
        t = tasks.index(task)
        for s in range(len(model.stages)):
            st = f"stages.{s}"
            out[f"expand_layers.{task}_{s}.expand.weight"] = state[f"{st}.expand.expand.weight"][t]
            for p in ("weight", "bias"):
                out[f"expand_layers.{task}_{s}.norm.{p}"] = state[f"{st}.expand.norm.{p}"][t]
            fuse = state[f"{st}.fuse.weight"][t]
            out[f"concat_layers.{task}_{s}.weight"] = fuse[..., None, None] if plus_plus else fuse
            out[f"concat_layers.{task}_{s}.bias"] = state[f"{st}.fuse.bias"][t]
            for k in (1, 2):
                name = f"block_stm.{task}_{s}.{k - 1}" if plus_plus else f"block_{k}.{task}_{s}"
                for p in ("weight", "bias"):
                    out[f"{name}.norm.{p}"] = state[f"{st}.stm{k}.norm.{p}"][t]
                ss2d(f"{name}.op", f"{st}.stm{k}.op", t)
            ctm = f"block_ctm.{s}.0" if plus_plus else f"block_3.{s}"
            for p in ("weight", "bias"):
                out[f"{ctm}.norm.{task}.{p}"] = state[f"{st}.cross_task.norm.{p}"][t]
            ss2d(f"{ctm}.op.{task}", f"{st}.cross_task.op", t)
            if not plus_plus:
                out[f"{ctm}.in_proj.{task}.weight"] = state[f"{st}.cross_task.gate_proj.weight"][t]
                out[f"{ctm}.out_proj.{task}.weight"] = state[f"{st}.cross_task.out_proj.weight"][t]
        for p in ("weight", "bias"):
            out[f"final_project.{task}.{p}"] = state[f"head.project.{task}.{p}"]
        if plus_plus:
            rows = slice(t * hidden, (t + 1) * hidden)
            for p in ("weight", "bias"):
                out[f"final_expand.{task}.0.{p}"] = state[f"head.body.0.{p}"][rows]
            for p in ("weight", "bias", "running_mean", "running_var"):
                out[f"final_expand.{task}.1.{p}"] = state[f"head.body.1.{p}"][rows]
            out[f"final_expand.{task}.1.num_batches_tracked"] = state["head.body.1.num_batches_tracked"]
        else:
            out[f"final_expand.{task}.expand.weight"] = state["head.expand.weight"][t]
            for p in ("weight", "bias"):
                out[f"final_expand.{task}.norm.{p}"] = state[f"head.norm.{p}"][t]
    for s in range(len(model.stages)):
        st, ctm = f"stages.{s}.cross_task", (f"block_ctm.{s}.0" if plus_plus else f"block_3.{s}")
        width = state[f"{st}.norm_share.weight"].shape[0] // len(tasks)
        concat = torch.cat([torch.arange(width) + tasks.index(task) * width for task in release_order])
        for p in ("weight", "bias"):
            out[f"{ctm}.norm_share.{p}"] = state[f"{st}.norm_share.{p}"][concat]
            if plus_plus:
                out[f"{ctm}.conv_share.0.{p}"] = state[f"{st}.share_reduce.{p}"]
                out[f"{ctm}.conv_share.1.{p}"] = state[f"{st}.share_mix.{p}"]
        if plus_plus:
            out[f"{ctm}.conv_share.0.weight"] = out[f"{ctm}.conv_share.0.weight"][:, concat]
        else:
            ss2d(f"{ctm}.op_share", f"{st}.op_share", 0)
            out[f"{ctm}.op_share.in_proj.weight"] = out[f"{ctm}.op_share.in_proj.weight"][:, concat]
    return out


@pytest.mark.parametrize(("name", "dataset", "sizes"), [
    ("mtmamba", "pascal", ["model.backbone.embed_dim=8", "model.backbone.depths=[1,2,3,1]", "model.backbone.window_size=5"]),
    ("mtmamba_pp", "nyud", ["model.backbone.embed_dim=6", "model.backbone.depths=[2,1,2,2]", "model.head.hidden=7",
                            "model.d_state=4", "data.tasks=[edge,semseg,normals]"]),
])
@pytest.mark.parametrize("same_order", [True, False])
def test_conversion_is_exact_at_other_sizes_and_task_sets(name: str, dataset: str, sizes: list[str], same_order: bool,
                                                          tmp_path: Path) -> None:
    """A model of other widths, depths, window, heads and tasks, written in the release's layout and imported with
    the public command, gives back exactly its own weights and outputs: nothing in the converter is tied to the
    fixtures' sizes. A release whose tasks come in another order than the model's converts exactly too."""
    sets = ["data.size=[40,56]", "model.backbone.num_heads=[1,2,2,4]", *sizes]
    overrides: dict = {}
    for text in sets:
        overrides = deep_merge(overrides, parse_override(text))
    torch.manual_seed(3)
    source = build_model_for(resolve_config("paper", dataset, name, overrides=overrides)).eval()
    with torch.no_grad():
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor))
    tasks = list(source.tasks)
    released = released_layout(source, name == "mtmamba_pp", tasks if same_order else tasks[::-1])
    checkpoint = tmp_path / "released.pth"
    torch.save({"model": {f"module.{k}": v for k, v in released.items()}}, checkpoint)
    command = ["import-checkpoint", "--from", name, "--checkpoint", str(checkpoint), "--dataset", dataset,
               "--out", str(tmp_path / "run")]
    assert main(command + [word for text in sets for word in ("--set", text)]) == 0
    target = load_run_model(tmp_path / "run")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0, msg=key)
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected, got = source(image), target(image)
    for task in expected:
        torch.testing.assert_close(got[task], expected[task], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# mmseg's Swin semantics
# --------------------------------------------------------------------------------------------------------------
def naive_mmseg_window_attention(x: torch.Tensor, attn, window: int, shift: int) -> torch.Tensor:
    """mmseg's ShiftWindowMSA spelled out window by window: pad, roll, explicit relative positions and regions."""
    batch, height, width, channels = x.shape
    hp, wp = math.ceil(height / window) * window, math.ceil(width / window) * window
    padded = x.new_zeros(batch, hp, wp, channels)
    padded[:, :height, :width] = x
    if shift:
        padded = torch.roll(padded, (-shift, -shift), (1, 2))

    def region(i: int, size: int) -> int:
        return 0 if not shift or i < size - window else (1 if i < size - shift else 2)

    heads = attn.num_heads
    head_dim = channels // heads
    table = attn.relative_position_bias_table
    out = torch.zeros_like(padded)
    for b in range(batch):
        for wi in range(hp // window):
            for wj in range(wp // window):
                cells = [(wi * window + a, wj * window + c) for a in range(window) for c in range(window)]
                tokens = torch.stack([padded[b, r, c] for r, c in cells])
                q, k, v = attn.qkv(tokens).view(len(cells), 3, heads, head_dim).unbind(1)
                logits = torch.einsum("nhd,mhd->hnm", q, k) * head_dim**-0.5
                for n, (rn, cn) in enumerate(cells):
                    for m, (rm, cm) in enumerate(cells):
                        index = (rn - rm + window - 1) * (2 * window - 1) + (cn - cm + window - 1)
                        logits[:, n, m] += table[index]
                        if (region(rn, hp), region(cn, wp)) != (region(rm, hp), region(cm, wp)):
                            logits[:, n, m] -= 100.0
                mixed = torch.einsum("hnm,mhd->nhd", logits.softmax(-1), v).reshape(len(cells), channels)
                for n, (r, c) in enumerate(cells):
                    out[b, r, c] = attn.proj(mixed[n])
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    return out[:, :height, :width]


def small_swin(semantics: str, window: int, **kwargs) -> Backbone:
    torch.manual_seed(0)
    return Backbone("swin_tiny_patch4_window7_224", (64, 64), swin_semantics=semantics, window_size=window,
                    embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], **kwargs).double().eval()


@pytest.mark.parametrize(("height", "width"), [(5, 7), (3, 3), (8, 8), (10, 4)])
def test_shifted_window_attention_equals_mmseg_spelled_out(height: int, width: int) -> None:
    """Pad then roll, regions on the padded map, window and shift kept on maps smaller than the window."""
    attn = small_swin("mmseg", 4).model.model.layers[0].blocks[1].attn
    with torch.no_grad():
        torch.manual_seed(1)
        attn.relative_position_bias_table.normal_()
        x = torch.randn(2, height, width, 8, dtype=torch.float64)
        for shift in (0, 2):
            expected = naive_mmseg_window_attention(x, attn, 4, shift)
            got = shifted_window_attention(x, attn, (4, 4), (shift, shift))
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_mmseg_swin_equals_timm_where_the_semantics_agree_and_differs_where_they_do_not() -> None:
    """Maps that are multiples of the window: mmseg's and timm's (always_partition) Swin agree exactly. Pad then roll
    and roll then pad group the tokens differently where a side's padding is not the shift (paper sizes: 112 -> 120
    pads 8 with shift 6), so there they differ."""
    mmseg = small_swin("mmseg", 4)
    timm_swin = small_swin("timm", 4, always_partition=True, strict_img_size=False)
    torch.manual_seed(2)
    with torch.no_grad():
        for table in (m.relative_position_bias_table for m in mmseg.modules() if hasattr(m, "relative_position_bias_table")):
            table.normal_()
        timm_swin.load_state_dict(mmseg.state_dict())
        aligned = torch.randn(1, 3, 128, 128, dtype=torch.float64)  # maps 32, 16, 8, 4: multiples of the window
        for ours, theirs in zip(mmseg(aligned), timm_swin(aligned)):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        ragged = torch.randn(1, 3, 36, 44, dtype=torch.float64)  # maps 9x11, 5x6, 3x3, 2x2: padded by 3/1, 3/2, 1/1
        differences = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(mmseg(ragged), timm_swin(ragged))]
    assert min(differences) > 1e-3


def test_window_and_shift_are_kept_on_small_maps() -> None:
    """At 32x32 every map side (8, 4, 2, 1) is <= the window 12: mmseg keeps window 12 and shift 6 (full tables)."""
    swin = Backbone("swin_tiny_patch4_window7_224", (32, 32), swin_semantics="mmseg", window_size=12, embed_dim=4,
                    depths=[2, 2, 2, 2], num_heads=[1, 1, 1, 1])
    for stage in swin.model.model.layers:
        for index, block in enumerate(stage.blocks):
            assert tuple(block.window_size) == (12, 12)
            assert tuple(block.shift_size) == ((6, 6) if index % 2 else (0, 0))
            assert block.attn.relative_position_bias_table.shape[0] == 23 * 23
    maps = swin(torch.randn(1, 3, 32, 30))  # 30: the image is padded to the patch, as mmseg does
    assert [tuple(m.shape[-2:]) for m in maps] == [(8, 8), (4, 4), (2, 2), (1, 1)]


def test_a_standard_swin_checkpoint_loads_under_mmseg_semantics(tmp_path: Path) -> None:
    """``pretrained_file`` in the original Swin layout (merges at the end of a stage, ``head.weight``, index buffers:
    the file the authors convert with swin2mmseg.py) loads through timm exactly as with timm's semantics."""
    from pamm._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import timm

    sizes = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4)
    torch.manual_seed(0)
    source = timm.create_model("swin_tiny_patch4_window7_224", img_size=(64, 64), always_partition=True, **sizes)
    original = {}
    for key, value in source.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        original[key.replace("head.fc.", "head.")] = value
    original["layers.0.blocks.0.attn.relative_position_index"] = source.layers[0].blocks[0].attn.relative_position_index
    torch.save({"model": original}, tmp_path / "swin.pth")
    backbone = Backbone("swin_tiny_patch4_window7_224", (96, 80), pretrained_file=str(tmp_path / "swin.pth"),
                        swin_semantics="mmseg", **sizes)
    expected = source.state_dict()
    for key, value in backbone.model.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_swin_semantics_option_is_checked() -> None:
    with pytest.raises(ValueError, match="swin_semantics must be one of"):
        Backbone("swin_tiny_patch4_window7_224", (64, 64), swin_semantics="mmcv")
    with pytest.raises(ValueError, match="needs a Swin"):
        Backbone("vit_tiny_patch16_224", (64, 64), swin_semantics="mmseg")
    with pytest.raises(ValueError, match="always_partition=false contradicts"):
        Backbone("swin_tiny_patch4_window7_224", (64, 64), swin_semantics="mmseg", always_partition=False)


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_mtmamba_and_its_single_task_reference_run_mmseg_semantics(scale: str) -> None:
    """The released semantics are the default (no key needed to import), also for the Δm reference (stl_*+swin)."""
    for name in ("mtmamba", "mtmamba_pp"):
        assert resolve_config(scale, "nyud", name)["model"]["backbone"]["swin_semantics"] == "mmseg"
    for task in ("semseg", "depth"):
        assert resolve_config(scale, "nyud", "stl", f"stl_{task}+swin")["model"]["backbone"]["swin_semantics"] == "mmseg"


# --------------------------------------------------------------------------------------------------------------
# Parameter counts at the paper configs (meta device), beside the release's
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "dataset", "millions"), [
    ("mtmamba", "nyud", 308.0), ("mtmamba", "pascal", 335.9), ("mtmamba_pp", "nyud", 315.0), ("mtmamba_pp", "pascal", 343.2),
])
def test_paper_parameter_counts_match_the_release(name: str, dataset: str, millions: float) -> None:
    cfg = resolve_config("paper", dataset, name)
    with torch.device("meta"):
        model = create_model(name, dataset_tasks(dataset), img_size=tuple(cfg["data"]["size"]), **cfg["model"])
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


def test_the_scan_follows_a_float64_model_and_stays_float32_otherwise(monkeypatch) -> None:
    """A float64 SS2D scans in float64 (the release's math); float32 and bf16 ones scan in float32 as released."""
    import baselines.ss2d as ss2d

    seen: list[torch.dtype] = []
    original = ss2d.scan_ops.multi_direction_scan

    def spy(u, delta, A, B, C, D=None, delta_bias=None, *args, **kwargs):
        seen.append({t.dtype for t in (u, delta, A, B, C, D, delta_bias)})
        return original(u, delta, A, B, C, D, delta_bias, *args, **kwargs)

    monkeypatch.setattr(ss2d.scan_ops, "multi_direction_scan", spy)
    torch.manual_seed(0)
    block = ss2d.SS2D(2, 8, d_state=4)
    x = torch.randn(2, 1, 5, 6, 8)
    with torch.no_grad():
        assert block.double()(x.double()).dtype == torch.float64
        assert block.float()(x).dtype == torch.float32
        assert block.bfloat16()(x.bfloat16()).dtype == torch.bfloat16
    assert seen == [{torch.float64}, {torch.float32}, {torch.float32}]
