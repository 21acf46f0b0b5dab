"""The Snakemake spine end to end on a tiny matrix: DAG, full run, and a second run that does nothing."""
import os
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
    "profile": "tiny",
    "results_dir": "results",
    "threads_per_job": 1,
    "seeds": [0],
    "datasets": {"nyud": {"root": None, "synthetic": {"n_train": 6, "n_val": 3, "height": 48, "width": 64, "seed": 0}}},
    "models": {"mtl": ["default"], "stl": ["stl_depth", "stl_sal"]},
    "resolution_sweep": {"models": []},
    "overrides": {"train": {"iterations": 4, "ckpt_every": 2, "log_every": 2, "batch_size": 2},
                  "data": {"size": [48, 64]}, "eval": {"batch_size": 3}},
}


def _snakemake(workdir, *args):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


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


def test_full_run_then_nothing_to_do(workdir):
    result = _snakemake(workdir, "--cores", "2", "all")
    assert result.returncode == 0, result.stderr[-5000:]
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    assert sorted(summary["run_id"]) == ["nyud/mtl/default/seed0", "nyud/stl/stl_depth/seed0"]
    mtl = summary[summary["model"] == "mtl"].iloc[0]
    for column in ("semseg_miou", "depth_rmse", "normals_merr", "edge_odsf", "delta_m_pct"):
        assert column in summary.columns
    assert 0.0 <= mtl["semseg_miou"] <= 100.0 and mtl["depth_rmse"] > 0
    assert (workdir / "results" / "summary_by_config.csv").is_file()
    assert (workdir / "results" / "figures" / "metrics_by_model.png").stat().st_size > 0
    again = _snakemake(workdir, "-n", "all")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_schema_rejects_unknown_key(workdir, tmp_path):
    bad = tmp_path / "bad"
    (bad / "workflow").mkdir(parents=True)
    (bad / "workflow" / "config.yaml").write_text(yaml.safe_dump({**TINY, "seeeds": [0]}))
    result = _snakemake(bad, "-n", "all")
    assert result.returncode != 0
    assert "seeeds" in result.stdout + result.stderr
