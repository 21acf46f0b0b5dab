"""The import graph of pamm/ and baselines/: no cycle, no upward arrow, every module importable on its own.

Layers, bottom up: the shared leaves (``pamm.tasks``, ``pamm.io``, ``pamm.errors``, ``pamm._compat``);
``pamm.ops``; ``pamm.models`` (ops); ``baselines`` (models, ops, and the converter registry
``pamm.checkpoints.registry``, a leaf). ``pamm.data`` and ``pamm.metrics`` use the shared leaves only.
Everything else (engine, checkpoints, config, cli, results) sits above and may import any of them. The graph
counts lazy imports inside functions and ``importlib.import_module("literal")`` calls too.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pamm", "baselines")
SHARED_LEAVES = {"pamm", "pamm.tasks", "pamm.io", "pamm.errors", "pamm._compat"}
LEAF_REGISTRIES = {"pamm.models.registry": {"pamm.models.interface"}, "pamm.models.interface": set(),
                   "pamm.checkpoints.registry": set()}


def layer_of(module: str) -> str | None:
    """The layer a module belongs to, or None for the top (free to import any layer)."""
    if module in SHARED_LEAVES:
        return "shared"
    for prefix, layer in (("pamm.ops", "ops"), ("pamm.models", "models"), ("baselines", "baselines"),
                          ("pamm.data", "data"), ("pamm.metrics", "metrics")):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


ALLOWED = {
    "shared": {"shared"},
    "ops": {"ops"},
    "data": {"shared", "data"},
    "metrics": {"shared", "metrics"},
    "models": {"shared", "ops", "models"},
    "baselines": {"shared", "ops", "models", "baselines"},
}
EXTRA_ALLOWED = {"baselines": {"pamm.checkpoints.registry"}}


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that ``name`` is, or is inside (``pamm.ops.flops.count`` -> ``pamm.ops.flops``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports anywhere in its file. ``from pkg import sub`` is an arrow to
    ``pkg.sub`` only (the package itself is run first, but it is the package's arrows that count there)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
                deps |= subs
                if len(subs) < len(node.names):
                    deps.add(base)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                deps.add(node.args[0].value)
        graph[name] = {r for d in deps if (r := _resolve(d, modules)) and r != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        while stack:
            node, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                path.pop()
                done.add(node)
            elif dep in path:
                return path[path.index(dep):] + [dep]
            elif dep not in done:
                stack.append((dep, iter(sorted(graph[dep]))))
                path.append(dep)
    return None


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    arrows = []
    for module, deps in sorted(graph.items()):
        if module in LEAF_REGISTRIES:
            arrows += [f"{module} -> {d} (a registry is a leaf)" for d in sorted(deps - LEAF_REGISTRIES[module])]
            continue
        layer = layer_of(module)
        if layer is None:
            continue
        for dep in sorted(deps):
            if layer_of(dep) not in ALLOWED[layer] and dep not in EXTRA_ALLOWED.get(layer, set()):
                arrows.append(f"{module} ({layer}) -> {dep} ({layer_of(dep) or 'top'})")
    return arrows


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(find_modules(REPO))


def test_the_import_graph_has_no_cycle(graph):
    assert len(graph) > 80 and "baselines.taskprompter" in graph  # the walk saw both packages, subpackages too
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_above_its_layer(graph):
    assert upward_arrows(graph) == []


def test_the_checker_finds_cycles_lazy_imports_and_upward_arrows(tmp_path):
    """Negative control: a made-up tree with a lazy cycle, an importlib arrow into baselines and a data module
    reaching into models."""
    files = {
        "pamm/__init__.py": "",
        "pamm/models/__init__.py": "",
        "pamm/models/registry.py": "import importlib\n\ndef load():\n    importlib.import_module('baselines')\n",
        "pamm/engine/a.py": "from pamm.engine import b\n",
        "pamm/engine/b.py": "def f():\n    from pamm.engine.a import x\n",
        "pamm/data/reader.py": "def g():\n    from ..models import registry\n",
        "baselines/__init__.py": "from pamm.models.registry import load\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    made_up = import_graph(find_modules(tmp_path))
    assert made_up["pamm.data.reader"] == {"pamm.models.registry"}
    assert find_cycle(made_up) == ["baselines", "pamm.models.registry", "baselines"]
    engine = {name: deps for name, deps in made_up.items() if name.startswith("pamm.engine")}
    assert find_cycle(engine) == ["pamm.engine.a", "pamm.engine.b", "pamm.engine.a"]  # through a lazy import
    engine["pamm.engine.b"] = set()
    assert find_cycle(engine) is None
    assert upward_arrows(made_up) == [
        "pamm.data.reader (data) -> pamm.models.registry (models)",
        "pamm.models.registry -> baselines (a registry is a leaf)",
    ]


_ISOLATED = textwrap.dedent("""
    import importlib, os, sys, traceback
    import numpy, torch  # third-party only: every child starts with none of our modules imported
    assert not any(m == "pamm" or m.startswith(("pamm.", "baselines")) for m in sys.modules)
    failed = []
    for name in sys.argv[1:]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                importlib.import_module(name)
                code = 0
            except BaseException as err:
                os.write(write, (type(err).__name__ + ": " + str(err)).splitlines()[0].encode()[:300])
                code = 1
            os._exit(code)
        os.close(write)
        message = os.read(read, 400).decode()
        os.close(read)
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(name + ": " + (message or "exit status " + str(status)))
    print("\\n".join(failed))
    sys.exit(1 if failed else 0)
""")


def _import_each(root: Path, names: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", _ISOLATED, *names], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="imports each module in a forked child")
def test_every_module_imports_on_its_own():
    """Each module imported first in a fresh child process (no module of ours loaded before it) imports
    cleanly: a cycle that Python resolves only in one import order fails here in the other orders."""
    done = _import_each(REPO, sorted(find_modules(REPO)))
    assert done.returncode == 0, f"modules that fail to import on their own:\n{done.stdout}{done.stderr[-2000:]}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="imports each module in a forked child")
def test_importing_alone_catches_an_order_dependent_cycle(tmp_path):
    """Negative control: ``cyc.a`` and ``cyc.b`` import names from each other. Importing the package works
    (``a`` first), importing ``cyc.b`` first fails, and the check names it."""
    (tmp_path / "cyc").mkdir()
    (tmp_path / "cyc" / "__init__.py").write_text("")
    (tmp_path / "cyc" / "a.py").write_text("from cyc.b import B\nA = 1\n")
    (tmp_path / "cyc" / "b.py").write_text("from cyc.a import A\nB = 1\n")
    done = _import_each(tmp_path, ["cyc", "cyc.a", "cyc.b"])
    assert done.returncode == 1
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["cyc.a", "cyc.b"]
    assert "ImportError" in done.stdout


_SIDE_EFFECTS = textwrap.dedent("""
    import importlib, os, sys
    environ, meta_path, path_hooks = dict(os.environ), list(sys.meta_path), list(sys.path_hooks)
    for name in sys.argv[1:]:
        importlib.import_module(name)
    changed = sorted(set(os.environ.items()) ^ set(environ.items()))
    print("environ:", changed)
    print("meta_path:", [type(f).__name__ for f in sys.meta_path if f not in meta_path])
    print("path_hooks:", [h for h in sys.path_hooks if h not in path_hooks])
""")


def _import_side_effects(root: Path, names: list[str], env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _SIDE_EFFECTS, *names], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_importing_the_packages_changes_neither_the_environment_nor_the_import_machinery():
    """Importing pamm, its layers, the baselines and the CLI registers models and converters and nothing else:
    no environment variable set, no import hook installed (a fresh interpreter, HF_HUB_OFFLINE unset)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = str(REPO)
    names = ["pamm", "pamm.ops", "pamm.models", "baselines", "pamm.engine.build", "pamm.cli", "pamm.results.tables"]
    assert _import_side_effects(REPO, names, env) == ["environ: []", "meta_path: []", "path_hooks: []"]


def test_the_side_effect_check_sees_an_environment_write_and_an_import_hook(tmp_path):
    """Negative control: a module that sets a variable and installs a finder at import is caught."""
    (tmp_path / "noisy.py").write_text("import os, sys\nos.environ['NOISY'] = '1'\n"
                                       "class Finder:\n    def find_spec(self, *a):\n        return None\n"
                                       "sys.meta_path.append(Finder())\n")
    lines = _import_side_effects(tmp_path, ["noisy"], {**os.environ, "PYTHONPATH": str(tmp_path)})
    assert lines == ["environ: [('NOISY', '1')]", "meta_path: ['Finder']", "path_hooks: []"]
