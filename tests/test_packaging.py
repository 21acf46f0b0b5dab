"""A non-editable install carries the ablation overlays: a wheel built from the checkout, installed into a
bare folder, lists and resolves every variant from outside the checkout."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# What the wheel is built from (pyproject.toml's package sources and setup.py's overlays).
BUILD_PARTS = ("pyproject.toml", "setup.py", "README.md", "pamm", "baselines", "ablations")


def _pip(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A folder that holds only the installed wheel (no checkout around it)."""
    if _pip("--version", cwd=REPO).returncode != 0:
        pytest.skip("pip is not available in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    source.mkdir()
    for part in BUILD_PARTS:
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / part, source / part)
    built = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), ".", cwd=source)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("pamm_bench-*.whl")
    target = tmp / "site"
    done = _pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def _outside(target, code):
    """Run ``code`` with only the installed wheel and the environment's dependencies importable, in a
    folder that is not the checkout."""
    deps = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), deps])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=target.parent, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _checkout_variants():
    """model -> the overlays of the checkout's ablations/ that apply to it (read here, not through pamm)."""
    out = {}
    for path in sorted((REPO / "ablations").glob("*.yaml")):
        for model in yaml.safe_load(path.read_text()).get("applies_to") or []:
            out.setdefault(model, []).append(path.stem)
    return out


def test_an_installed_wheel_lists_and_resolves_every_overlay(installed):
    expected = _checkout_variants()
    assert expected, "the checkout has no overlays"
    found = _outside(installed, f"""
import json, pamm, pamm.config as c

def resolves(model, variant):  # on a dataset that has the variant's tasks (single-task overlays)
    for dataset in ("nyud", "pascal"):
        try:
            return c.resolve_config("tiny", dataset, model, variant)["run"]["variant"]
        except c.ConfigError:
            pass

variants = {{m: c.list_variants(m) for m in {sorted(expected)!r}}}
print(json.dumps({{"file": pamm.__file__, "variants": variants,
                  "resolved": {{m: [resolves(m, v) for v in vs] for m, vs in variants.items()}}}}))
""")
    assert Path(found["file"]).is_relative_to(installed), found["file"]  # the wheel's pamm, not the checkout's
    for model, variants in expected.items():
        assert found["variants"][model] == ["default", *variants]
        assert found["resolved"][model] == ["default", *variants]


def test_the_checkout_keeps_one_source_of_overlays():
    """The packaged copy exists only inside built wheels: the checkout reads its own ablations/."""
    from pamm import config

    assert not (REPO / "pamm" / "ablations").exists()
    assert config.ABLATIONS_DIR == REPO / "ablations"
