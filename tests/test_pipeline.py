"""The Snakemake spine end to end on a tiny matrix: DAG, full run, and a second run that does nothing.

The results folder has a space and a non-ASCII character in its name, so every rule's command line is run
with such paths (they must be quoted)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed in this environment")

TINY = {
    "scale": "tiny",
    "results_dir": "rés ults",
    "threads_per_job": 1,
    "seeds": [0],
    "datasets": {"nyud": {"root": None, "synthetic": {"n_train": 6, "n_val": 3, "height": 48, "width": 64, "seed": 0}}},
    "models": {"mtl": ["default"], "stl": ["stl_depth", "stl_sal"]},
    "resolution_sweep": {"models": []},
    "overrides": {"train": {"iterations": 4, "ckpt_every": 2, "log_every": 2, "batch_size": 2},
                  "data": {"size": [48, 64]}, "eval": {"batch_size": 3}},
}


def _snakemake(workdir, *args, checkout=REPO):
    """Snakemake on the workflow of ``checkout`` (whose pamm the jobs import), in ``workdir``."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if checkout != REPO:
        env["PYTHONPATH"] = str(checkout)
    cmd = [str(SNAKEMAKE), "-s", str(checkout / "Snakefile"), "-d", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def checkout(copy_checkout):
    """A copy of the checkout (conftest's ``copy_checkout``), whose model YAMLs and overlays a test may edit."""
    return copy_checkout()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    (work / "workflow").mkdir()
    (work / "workflow" / "config.yaml").write_text(yaml.safe_dump(TINY))
    return work


def test_dry_run_lists_the_dag(workdir):
    result = _snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.stderr + result.stdout
    for rule in ("make_synthetic", "check_dataset", "train", "evaluate", "aggregate", "figures"):
        assert rule in result.stdout
    # stl_sal does not apply to NYUD: one mtl + one stl run.
    assert "stl_sal" not in result.stdout


def _train_jobs(dry_run_output):
    """The run directories of the train jobs a dry run lists."""
    jobs, rule = [], None
    for line in dry_run_output.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif rule == "train" and line.strip().startswith("output:"):
            jobs.append(line.split("output:", 1)[1].split(",")[0].strip().rsplit("/", 1)[0])
    return jobs


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{path} no longer holds {old!r}: update the test's edit"
    path.write_text(text.replace(old, new))


def test_full_run_then_nothing_to_do_then_edits_rerun_their_runs(workdir, checkout):
    """The whole tiny DAG runs; a second dry run has nothing to do; editing a model YAML, then an overlay,
    lists exactly the train jobs of the runs it changes, and the rerun of such a job starts the run over."""
    from pamm.config import config_hash, load_run_config, resolve_workflow_runs, workflow_matrix

    result = _snakemake(workdir, "--cores", "2", "all", checkout=checkout)
    assert result.returncode == 0, result.stderr[-5000:]
    results = workdir / TINY["results_dir"]
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary["run_id"]) == ["nyud/mtl/default/seed0", "nyud/stl/stl_depth/seed0"]
    mtl = summary[summary["model"] == "mtl"].iloc[0]
    for column in ("semseg_miou", "depth_rmse", "normals_merr", "edge_odsf", "delta_m_pct"):
        assert column in summary.columns
    assert 0.0 <= mtl["semseg_miou"] <= 100.0 and mtl["depth_rmse"] > 0
    assert (results / "summary_by_config.csv").is_file()
    assert (results / "figures" / "metrics_by_model.png").stat().st_size > 0
    again = _snakemake(workdir, "-n", "all", checkout=checkout)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    # The DAG's hash of each run (the train rule's param) is the hash of the config the run trained with.
    runs = results / "runs" / "nyud"
    hashes = resolve_workflow_runs(TINY, workflow_matrix(TINY))
    assert hashes[("nyud", "mtl", "default", 0)] == config_hash(load_run_config(runs / "mtl/default/seed0/config.yaml"))
    assert hashes[("nyud", "stl", "stl_depth", 0)] == config_hash(
        load_run_config(runs / "stl/stl_depth/seed0/config.yaml"))

    mtl_run, stl_run = f"{TINY['results_dir']}/runs/nyud/mtl/default/seed0", f"{TINY['results_dir']}/runs/nyud/stl/stl_depth/seed0"
    model_yaml, overlay = checkout / "pamm/configs/models/mtl.yaml", checkout / "ablations/stl_depth.yaml"
    _edit(model_yaml, "      width: 48", "      width: 40")
    edited = _snakemake(workdir, "-n", "all", checkout=checkout)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert _train_jobs(edited.stdout) == [mtl_run], edited.stdout[-3000:]
    assert "evaluate" in edited.stdout and "aggregate" in edited.stdout

    # The rerun starts over: the finished run's resume state (another config now) is set aside, not resumed.
    old_hash = hashes[("nyud", "mtl", "default", 0)]
    rerun = _snakemake(workdir, "--cores", "1", f"{mtl_run}/checkpoint.pt", checkout=checkout)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    new_cfg = load_run_config(runs / "mtl/default/seed0/config.yaml")
    assert new_cfg["model"]["width"] == 40 and config_hash(new_cfg) != old_hash
    assert (runs / f"mtl/default/seed0/last.{old_hash}.pt").is_file()

    _edit(overlay, "data: {tasks: [depth]}", "data: {tasks: [depth]}\neval: {save_examples: 2}")
    edited = _snakemake(workdir, "-n", "all", checkout=checkout)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert _train_jobs(edited.stdout) == [stl_run], edited.stdout[-3000:]
    _edit(overlay, "\neval: {save_examples: 2}", "")
    untouched = _snakemake(workdir, "-n", "all", checkout=checkout)
    assert _train_jobs(untouched.stdout) == [], untouched.stdout[-3000:]  # the edited mtl run is the one trained


def _with(**changes):
    """TINY with nested changes: {"datasets.nyud.root": ...} sets one key, a value of DELETE removes it."""
    import copy

    config = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return config


BAD_CONFIGS = {
    "unknown top-level key": ({**TINY, "seeeds": [0]}, r"key <top level>: unknown key\(s\) \['seeeds'\]"),
    "unknown nested key": (_with(datasets__nyud__rot="x"), r"key datasets.nyud: unknown key\(s\) \['rot'\]"),
    "wrong type": (_with(threads_per_job="two"), r"key threads_per_job: 'two' is not of type integer"),
    "root and synthetic null": (_with(datasets__nyud__synthetic=None),
                                r"key datasets.nyud: root and synthetic are both null"),
    "unknown model": (_with(models={"pammm": ["default"]}), r"run nyud/pammm/default: unknown model 'pammm'"),
    "unknown variant": (_with(models={"pamm": ["scan_rastr"]}),
                        r"run nyud/pamm/scan_rastr: unknown variant 'scan_rastr'"),
    "unknown single-task variant": (_with(models={"stl": ["stl_dpeth"]}), r"unknown variant 'stl_dpeth'"),
    "bad override key": (_with(overrides={"train": {"iteratons": 3}}), r"config key train: Additional properties"),
    "bad model override": (_with(overrides={"model": {"widht": 3}}), r"config key model.widht: not taken by model 'mtl'"),
    "the recipe scale under its old name": ({**{k: v for k, v in TINY.items() if k != "scale"}, "profile": "tiny"},
                                           r"key profile: the recipe scale is now the key scale \(scale: tiny"),
}


def _check_workflow_config(config):
    """What common.smk runs before building the DAG: the config's validation, then every run's resolution."""
    from pamm.config import REPO_ROOT, resolve_workflow_runs, validate_workflow_config, workflow_matrix

    validate_workflow_config(config, REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml")
    resolve_workflow_runs(config, workflow_matrix(config))


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_workflow_config_is_one_line_naming_the_key(case):
    from pamm.config import ConfigError

    config, expected = BAD_CONFIGS[case]
    with pytest.raises(ConfigError, match=expected) as caught:
        _check_workflow_config(config)
    assert "\n" not in str(caught.value) and "{'scale'" not in str(caught.value)


def test_good_workflow_configs_pass_the_checks():
    from pamm.config import workflow_matrix

    for path in (REPO / "workflow" / "config.yaml", REPO / "workflow" / "config_paper.yaml"):
        config = yaml.safe_load(path.read_text())
        for dataset in config["datasets"].values():  # the paper config leaves the roots to the user
            if dataset["root"] is None and dataset["synthetic"] is None:
                dataset["root"] = "/data/somewhere"
        _check_workflow_config(config)
    _check_workflow_config(TINY)
    assert {run[:3] for run in workflow_matrix(TINY)} == {("nyud", "mtl", "default"), ("nyud", "stl", "stl_depth")}


@pytest.mark.parametrize("case", ["unknown nested key", "root and synthetic null", "unknown model"])
def test_bad_workflow_config_stops_snakemake_with_one_line(tmp_path, case):
    import re

    config, expected = BAD_CONFIGS[case]
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "config.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake(tmp_path, "-n", "all")
    assert result.returncode != 0
    out = (result.stdout + result.stderr).strip()
    assert out.count("\n") == 0, out  # one line: no traceback, no dump of the config
    assert out.startswith("pamm-bench workflow: error: "), out
    assert re.search(expected, out), out


def test_paths_with_spaces_and_non_ascii_reach_the_commands_intact(tmp_path):
    """A real dataset root "data/NYÜD v2": the check job runs on it, and the train command of the DAG passes it
    (and the results paths) as single arguments."""
    from pamm.data import make_synthetic

    root = "data/NYÜD v2"
    make_synthetic(tmp_path / root, "nyud", n_train=4, n_val=2, height=48, width=64, seed=0, progress=False)
    config = _with(datasets__nyud={"root": root, "synthetic": None})
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "config.yaml").write_text(yaml.safe_dump(config))
    check = f"{TINY['results_dir']}/checks/nyud.json"
    ran = _snakemake(tmp_path, "--cores", "1", check)
    assert ran.returncode == 0, ran.stderr[-3000:]
    import json

    assert json.loads((tmp_path / check).read_text())["root"] == root
    dry = _snakemake(tmp_path, "-n", "-p", "all")
    assert dry.returncode == 0, dry.stderr[-3000:]
    commands = [line.split("Shell command: ", 1)[-1] for line in dry.stdout.splitlines()]
    trains = [shlex.split(line) for line in commands if line.startswith("pamm-bench train ")]
    assert len(trains) == 2
    for argv in trains:
        assert argv[argv.index("--data-root") + 1] == root
        assert argv[argv.index("--out") + 1].startswith(f"{TINY['results_dir']}/runs/nyud/")
