"""Adding a model takes three files: its builder (``baselines/<name>.py``), its YAML
(``pamm/configs/models/<name>.yaml``, display section included) and a line in the workflow matrix.

The end-to-end test drops a new model's two files into a copy of the checkout, exactly where a maintainer
puts them, and runs the copy: the CLI lists the model, its config resolves and the model builds, tables and
figures show it with its YAML's name, colour, marker and order, and Snakemake trains it into the main table.
The registry-wide tests hold every model of this checkout to the same contract.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import baselines  # noqa: F401  (registers the baseline models)
from pamm.config import (
    DISPLAY_MARKERS,
    ConfigError,
    ModelDisplay,
    display_section,
    model_config_paths,
    model_display,
    resolve_config,
)
from pamm.models import list_models
from pamm.results import plotting_style as style
from pamm.tasks import dataset_tasks

SNAKEMAKE = Path(sys.executable).with_name("snakemake")

BUILDER = '''\
"""A small multi-task model: a timm backbone, then a 3x3 conv and a 1x1 conv per task on its last map."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from pamm.models.backbones import create_backbone
from pamm.models.heads import resize_to
from pamm.models.registry import register_model


class TinyFCN(nn.Module):
    def __init__(self, tasks: dict[str, int], backbone: dict[str, Any], img_size: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.backbone = create_backbone(backbone, img_size)
        width = self.backbone.channels[-1]
        self.heads = nn.ModuleDict({
            task: nn.Sequential(nn.Conv2d(width, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
            for task, channels in self.tasks.items()
        })

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        last = self.backbone(image)[-1]
        return {task: resize_to(head(last), image.shape[-2:]) for task, head in self.heads.items()}


@register_model("tiny_fcn")
def build_tiny_fcn(tasks: dict[str, int], **cfg: Any) -> TinyFCN:
    return TinyFCN(tasks, **cfg)
'''

MODEL_YAML = '''\
# A small multi-task model (its builder: baselines/tiny_fcn.py).
display: {name: Tiny FCN, color: '#117733', marker: h, order: 15}
model:
  backbone: {name: vit_tiny_patch16_224, patch_size: 8, depth: 4, embed_dim: 48, num_heads: 3, drop_path_rate: 0.0}
  hidden: 12
'''

# Run inside the copy: resolve, build and run the new model; read how tables and figures show it; then change
# its display name and check that the run's config hash does not move.
PROBE = textwrap.dedent('''
    import json, os, sys
    import torch
    import pamm.models, baselines
    from pamm.config import config_hash, resolve_config
    from pamm.models import create_model, list_models
    from pamm.results import plotting_style as style
    from pamm.tasks import dataset_tasks

    assert os.path.dirname(os.path.dirname(baselines.__file__)) == sys.argv[1], baselines.__file__  # the copy's
    cfg = resolve_config("tiny", "nyud", "tiny_fcn")
    torch.manual_seed(0)
    model = create_model("tiny_fcn", dataset_tasks("nyud"), img_size=cfg["data"]["size"], **cfg["model"])
    out = model(torch.randn(2, 3, *cfg["data"]["size"]))
    before = config_hash(cfg)
    shown = {"name": style.model_name("tiny_fcn"), "variant": style.model_name("tiny_fcn", "x"),
             "color": style.model_color("tiny_fcn"), "marker": style.model_marker("tiny_fcn"),
             "order": style.measured_models()}
    path = os.path.join(sys.argv[1], "pamm/configs/models/tiny_fcn.yaml")
    text = open(path).read()
    with open(path, "w") as handle:
        handle.write(text.replace("name: Tiny FCN", "name: Tiny FCN v2"))
    os.utime(path, ns=(os.stat(path).st_mtime_ns + 10**9,) * 2)
    renamed, hash_same = style.model_name("tiny_fcn"), config_hash(resolve_config("tiny", "nyud", "tiny_fcn")) == before
    with open(path, "w") as handle:  # back as it was, for the module's other tests
        handle.write(text)
    print(json.dumps({"models": list_models(), "model_keys": sorted(cfg["model"]), "keys": sorted(cfg),
                      "hidden": model.heads["depth"][0].out_channels, "shapes": {t: list(v.shape) for t, v in out.items()},
                      "shown": shown, "renamed": renamed, "hash_same": hash_same}))
''')


def _run(args: list[str], checkout: Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def with_new_model(copy_checkout) -> Path:
    """A copy of the checkout with the new model's builder and YAML dropped in, and nothing else changed."""
    checkout = copy_checkout()
    (checkout / "baselines" / "tiny_fcn.py").write_text(BUILDER)
    (checkout / "pamm" / "configs" / "models" / "tiny_fcn.yaml").write_text(MODEL_YAML)
    return checkout


def test_a_new_model_is_listed_resolved_built_and_shown_from_its_two_files(with_new_model, tmp_path):
    listed = _run([sys.executable, "-m", "pamm.cli", "list"], with_new_model, tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "tiny_fcn: variants default" in listed.stdout.splitlines()

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = _run([sys.executable, str(probe), str(with_new_model)], with_new_model, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert "tiny_fcn" in found["models"] and "display" not in found["keys"]
    assert found["model_keys"] == ["backbone", "hidden"] and found["hidden"] == 12  # the YAML's options reach it
    size = resolve_config("tiny", "nyud", "mtl")["data"]["size"]  # the tiny recipe's NYUD size, for every model
    assert found["shapes"] == {task: [2, channels, *size] for task, channels in dataset_tasks("nyud").items()}
    assert found["shown"] == {"name": "Tiny FCN", "variant": "Tiny FCN / x", "color": "#117733", "marker": "h",
                              "order": ["stl", "tiny_fcn", "mtl", "invpt", "taskprompter", "mtmamba", "mtmamba_pp",
                                        "pamm"]}
    assert found["renamed"] == "Tiny FCN v2" and found["hash_same"]


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed in this environment")
def test_the_workflow_trains_a_new_model_from_the_matrix_into_the_main_table(with_new_model, tmp_path):
    """The matrix line is the third file: Snakemake trains the new model and the main table shows it by its
    display name, in its display order (15: after the single-task rows' 10, before the multi-task baseline's 20)."""
    config = yaml.safe_load((with_new_model / "workflow" / "config.yaml").read_text())  # the default, made small
    config.update({
        "results_dir": "results", "threads_per_job": 1, "seeds": [0], "profile_repeats": 1,
        "datasets": {"nyud": {"root": None, "synthetic": {"n_train": 4, "n_val": 2, "height": 48, "width": 64,
                                                          "seed": 0}}},
        "models": {"mtl": ["default"], "tiny_fcn": ["default"]},
        "resolution_sweep": {"models": []},
        "overrides": {"train": {"iterations": 2, "ckpt_every": 2, "log_every": 1, "batch_size": 2},
                      "data": {"size": [48, 64]}, "eval": {"batch_size": 2}},
    })
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake = [str(SNAKEMAKE), "-s", str(with_new_model / "Snakefile"), "-d", str(tmp_path)]
    table = "results/tables/main_nyud.md"
    dry = _run(snakemake + ["-n", table], with_new_model, tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "results/runs/nyud/tiny_fcn/default/seed0/checkpoint.pt" in dry.stdout
    done = _run(snakemake + ["--cores", "2", table], with_new_model, tmp_path, timeout=900)
    assert done.returncode == 0, (done.stderr + done.stdout)[-5000:]
    rows = [line.split("|")[1].strip() for line in (tmp_path / table).read_text().splitlines()
            if line.startswith("|") and line.split("|")[1].strip() in ("Tiny FCN", "Multi-task baseline")]
    assert rows == ["Tiny FCN", "Multi-task baseline"]


# ---------------------------------------------------------------------------------------- this checkout's models


def test_every_registered_model_has_a_yaml_with_a_display_section_and_every_yaml_a_model():
    yamls = {path.stem: path for path in model_config_paths()}
    assert set(list_models()) == set(yamls), "a registered model without a YAML, or a YAML without a builder"
    shown = {name: model_display(name) for name in yamls}
    assert all(isinstance(d, ModelDisplay) and d.name and d.marker in DISPLAY_MARKERS for d in shown.values())
    for field in ("name", "color", "order"):  # one name, one colour per family, one place in the tables each
        values = [getattr(d, field) for d in shown.values()]
        assert len(set(values)) == len(values), f"two models share a display {field}: {values}"
    assert not set(style.PUBLISHED_COLORS.values()) & {d.color for d in shown.values()}
    assert style.measured_models() == sorted(shown, key=lambda m: shown[m].order)
    assert model_display("mlore") is None and style.model_color("mlore") == style.PUBLISHED_COLORS["mlore"]


def test_published_rows_take_their_family_look():
    """A published-only row that belongs to a family of the suite (``invpt_retrained``) takes that model's
    colour and marker from its YAML; a longer family name wins (``mtmamba_pp_x`` is MTMamba++, not MTMamba)."""
    invpt, mtmamba_pp = model_display("invpt"), model_display("mtmamba_pp")
    assert (style.model_color("invpt_retrained"), style.model_marker("invpt_retrained")) == (invpt.color, invpt.marker)
    assert style.model_family("mtmamba_pp_x") == "mtmamba_pp" and style.model_color("mtmamba_pp_x") == mtmamba_pp.color
    assert style.model_name("invpt_retrained") == "InvPT (re-trained ckpt)"
    assert (style.model_name("nobody"), style.model_color("nobody"), style.model_marker("nobody")) == \
        ("nobody", "#333333", "o")


GOOD = {"name": "Tiny FCN", "color": "#117733", "marker": "h", "order": 15}


@pytest.mark.parametrize("display,message", [
    (None, r"key display is missing: .*e\.g\. display: \{name:"),
    ("Tiny", r"key display is str, not a mapping"),
    ({k: v for k, v in GOOD.items() if k != "order"}, r"missing key\(s\) \['order'\]"),
    ({**GOOD, "colour": "#117733"}, r"unknown key\(s\) \['colour'\]"),
    ({**GOOD, "name": " "}, r"key display\.name: ' ' is not a name"),
    ({**GOOD, "color": None}, r"key display\.color: None is not a quoted '#RRGGBB' colour"),
    ({**GOOD, "color": "green"}, r"key display\.color: 'green' is not"),
    ({**GOOD, "marker": "+"}, r"key display\.marker: '\+' is not a filled matplotlib marker"),
    ({**GOOD, "order": True}, r"key display\.order: True is not a whole number"),
    ({**GOOD, "order": 1.5}, r"key display\.order: 1\.5 is not a whole number"),
])
def test_a_bad_display_section_is_named_in_one_line(tmp_path, display, message):
    path = tmp_path / "tiny_fcn.yaml"
    path.write_text(yaml.safe_dump({"model": {"width": 8}} | ({} if display is None else {"display": display})))
    with pytest.raises(ConfigError, match=message) as err:
        display_section(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_good_display_section_reads_back_and_an_unquoted_colour_is_refused(tmp_path):
    path = tmp_path / "tiny_fcn.yaml"
    path.write_text(MODEL_YAML)
    assert display_section(path) == ModelDisplay("Tiny FCN", "#117733", "h", 15)
    # Unquoted, YAML reads '#' and the rest of the line as a comment: the colour is empty.
    path.write_text("display:\n  name: Tiny FCN\n  color: #117733\n  marker: h\n  order: 15\n")
    with pytest.raises(ConfigError, match="not a quoted '#RRGGBB' colour"):
        display_section(path)


def test_the_display_section_is_no_part_of_the_run_config_and_no_overlay_may_set_it(tmp_path):
    cfg = resolve_config("tiny", "nyud", "mtl")
    assert "display" not in cfg and "display" not in cfg["model"]
    overlay = tmp_path / "shown.yaml"
    overlay.write_text("applies_to: [mtl]\ndisplay: {name: x, color: '#000000', marker: o, order: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['display'\]"):
        resolve_config("tiny", "nyud", "mtl", "shown", ablations_dir=tmp_path)
