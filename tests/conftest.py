"""Shared test set-up: offline hub, few threads, fixtures several modules use."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Run a module of tiny models on one intra-op thread, then restore the setting: their ops are small, and on
    a shared, oversubscribed 2-core box two OpenMP threads spin at every barrier (measured under load: a tiny
    step took 2-14 s instead of 0.3-0.5 s; test_baselines_mamba 80 s instead of 11 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def load_script(monkeypatch):
    """Import one of the repository's scripts (``"benchmarks/bench_experts.py"``) as a module, for tests that
    call its functions. It is registered in ``sys.modules`` while the test runs (its dataclasses look their
    module up there), and whatever it adds to ``sys.path`` is undone afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))

    def load(relative_path: str):
        path = REPO_ROOT / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load


# What the workflow and the package read from the checkout: a copy lets a test edit model YAMLs and overlays, or
# drop in a new model's files, without touching this checkout.
CHECKOUT_PARTS = ("Snakefile", "environment.yml", "workflow", "pamm", "baselines", "ablations", "results/reference")


@pytest.fixture(scope="module")
def copy_checkout(tmp_path_factory):
    """A function that copies ``CHECKOUT_PARTS`` of this checkout (no bytecode) into a fresh folder and returns
    it; ``PYTHONPATH=<copy>`` then runs the copy's pamm and baselines."""
    import shutil

    def copy() -> Path:
        target_root = tmp_path_factory.mktemp("checkout")
        for part in CHECKOUT_PARTS:
            source, target = REPO_ROOT / part, target_root / part
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        return target_root

    return copy


def pytest_collection_modifyitems(config, items):
    """The SLURM test (minutes, mostly waiting on its cluster) first: under pytest-xdist the rest of the suite
    then runs beside it instead of after it."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)
