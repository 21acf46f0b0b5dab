"""``auto`` picks mamba-ssm's kernel, then Triton, then torch on CUDA tensors; torch on CPU (choices faked)."""
import dataclasses

import pytest
import torch

import pamm.ops.backends as backends
from pamm.ops import ScanSettings


@pytest.mark.parametrize(
    "cuda_reason, triton_reason, expected",
    [(None, None, "cuda"), ("mamba-ssm not importable", None, "triton"), ("no mamba", "no triton", "torch")],
)
def test_auto_on_cuda_prefers_kernel_then_triton_then_torch(monkeypatch, cuda_reason, triton_reason, expected):
    monkeypatch.setattr(backends, "_cuda_supports", lambda *a: cuda_reason)
    monkeypatch.setattr(backends.triton_availability, "supports", lambda *a: triton_reason)
    assert backends.resolve_backend("auto", torch.device("cuda")) == expected
    assert backends.resolve(ScanSettings(), torch.device("cuda")) == expected


def test_auto_on_cpu_is_torch_and_a_named_setting_wins(monkeypatch):
    monkeypatch.setattr(backends, "_cuda_supports", lambda *a: None)
    monkeypatch.setattr(backends.triton_availability, "supports", lambda *a: None)
    assert backends.resolve(ScanSettings(), "cpu") == "torch"
    assert backends.resolve(ScanSettings(backend="ref"), "cpu") == "ref"
    from_env = ScanSettings.from_config({"backend": "torch"}, environ={"PAMM_SCAN_BACKEND": "ref"})
    assert backends.resolve(from_env, "cpu") == "ref"
    unknown = ScanSettings.from_config(None, environ={"PAMM_SCAN_BACKEND": "nope"})
    with pytest.raises(ValueError, match=r"\$PAMM_SCAN_BACKEND='nope': unknown selective-scan backend"):
        backends.resolve(unknown, "cpu")


def test_forcing_a_backend_that_cannot_run_says_why(monkeypatch):
    unavailable = dataclasses.replace(backends.get_backend("triton"), supports=lambda *a: "triton not importable (test)")
    monkeypatch.setitem(backends._BACKENDS, "triton", unavailable)
    with pytest.raises(RuntimeError, match="'triton' cannot run here: triton not importable"):
        backends.resolve_backend("triton", "cpu")


def _fake_kernel(monkeypatch) -> list[str]:
    """Make ``cuda`` runnable on CPU: mamba-ssm's selective_scan_fn faked by the reference loop, each
    call logged with whether autograd recorded it."""
    from pamm.ops.scan_ref import selective_scan_ref

    calls: list[str] = []

    def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False):
        calls.append("with graph" if torch.is_grad_enabled() and u.requires_grad else "no graph")
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    monkeypatch.setattr(backends, "_MAMBA_STATUS", {"available": True, "fn": fake_selective_scan_fn,
                                                    "version": "fake", "error": None})
    cuda = dataclasses.replace(backends.get_backend("cuda"), supports=lambda *a: None)
    monkeypatch.setitem(backends._BACKENDS, "cuda", cuda)
    return calls


def _scan_inputs(requires_grad: bool):
    gen = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 4, 3, 9
    u, delta = torch.randn(b, d, L, generator=gen), torch.randn(b, d, L, generator=gen) * 0.3
    A, B, C = -torch.rand(d, n, generator=gen) - 0.5, torch.randn(b, n, L, generator=gen), torch.randn(b, n, L, generator=gen)
    D = torch.randn(d, generator=gen)
    return [t.requires_grad_(requires_grad) for t in (u, delta, A, B, C, D)]


def test_training_calls_the_kernels_autograd_once_instead_of_recomputing(monkeypatch):
    """In eager training the cuda backend runs mamba-ssm's own autograd Function (which keeps its chunk
    states): one forward call, not a forward plus a recomputing one in the op's backward."""
    import pamm.ops as ops

    calls = _fake_kernel(monkeypatch)
    inputs = _scan_inputs(requires_grad=True)
    out = ops.selective_scan(*inputs[:5], D=inputs[5], delta_softplus=True, backend="cuda")
    grads = torch.autograd.grad(out.square().sum(), inputs)
    assert calls == ["with graph"]
    reference_inputs = _scan_inputs(requires_grad=True)
    reference = ops.selective_scan(*reference_inputs[:5], D=reference_inputs[5], delta_softplus=True, backend="ref")
    for got, expected in zip(grads, torch.autograd.grad(reference.square().sum(), reference_inputs)):
        torch.testing.assert_close(got, expected)


def test_inference_and_tracing_go_through_the_op(monkeypatch):
    """Without gradients (and under jit tracing, for fvcore) the call stays one pamm::selective_scan node."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import pamm.ops as ops

    class OpLog(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    calls = _fake_kernel(monkeypatch)
    with torch.no_grad(), OpLog() as log:
        ops.selective_scan(*_scan_inputs(requires_grad=False), backend="cuda")
    assert calls == ["no graph"] and "pamm.selective_scan.default" in log.ops
    with OpLog() as log:  # a dispatch-level counter (like FlopCounterMode) during training sees the op too
        inputs = _scan_inputs(requires_grad=True)
        ops.selective_scan(*inputs[:5], backend="cuda").sum().backward()
    assert "pamm.selective_scan.default" in log.ops
    inputs = _scan_inputs(requires_grad=False)
    u = inputs[0].requires_grad_()  # a training input, but traced: the op keeps the graph one node
    graph = torch.jit.trace(lambda x: ops.selective_scan(x, *inputs[1:5], backend="cuda"), u, check_trace=False)
    assert "pamm::selective_scan" in str(graph.graph)


@pytest.mark.parametrize("model_name", ["pamm", "mtmamba"])
def test_a_runs_scan_settings_reach_every_scan_call_and_its_record(monkeypatch, model_name):
    """The engine builds the model with the run's settings, on every scanning module: every scan call of a
    forward runs the backend they name (here ``ref``, forced by ``train.scan.backend``; PAMM only, ``ref`` is
    slow), the settings travel with the call, and what the run records as its backend is that one."""
    from pamm import ops
    from pamm.config import resolve_config
    from pamm.engine.build import build_model_for, scan_settings_for

    for var in ("PAMM_SCAN_BACKEND", "PAMM_SCAN_BLOCK_ELEMENTS"):
        monkeypatch.delenv(var, raising=False)
    default = resolve_config("tiny", "nyud", model_name, "default", 0)
    assert scan_settings_for(default).backend == "auto" and ops.resolve(scan_settings_for(default), "cpu") == "torch"
    cfg = resolve_config("tiny", "nyud", model_name, "default", 0, overrides={"train": {"scan": {"backend": "ref"}}})
    torch.manual_seed(0)
    model = build_model_for(cfg).eval()
    scanning = [m for m in model.modules() if hasattr(m, "scan_settings")]
    assert scanning and all(m.scan_settings == scan_settings_for(cfg) for m in scanning)
    assert ops.resolve(scan_settings_for(cfg), "cpu") == "ref"
    if model_name != "pamm":
        return
    calls = []
    real = torch.ops.pamm.selective_scan
    monkeypatch.setattr(torch.ops.pamm, "selective_scan", lambda *a: calls.append((a[9], a[10])) or real(*a))
    with torch.no_grad():
        model(torch.randn(1, 3, *cfg["data"]["size"], generator=torch.Generator().manual_seed(1)))
    assert calls and {backend for backend, _ in calls} == {"ref"}
    assert {ScanSettings.from_key(key).backend for _, key in calls} == {"ref"}


@pytest.mark.parametrize("key", ["train.scan_backend", "model.scan_backend"])
def test_a_backend_named_outside_train_scan_is_refused_with_where_it_moved(key, tmp_path):
    """``train.scan.backend`` is the one key that picks the backend: the old keys stop a config (``--set``, an
    overlay YAML), a stored run config and a direct ``create_model`` call with one line saying where it moved."""
    import copy

    from pamm.config import parse_override, resolve_config
    from pamm.engine.build import build_model_for, scan_settings_for
    from pamm.errors import ConfigError
    from pamm.models import create_model

    message = (rf"^config key {key}: moved to train\.scan\.backend; set train\.scan\.backend: triton in the YAML "
               rf"\(or --set train\.scan\.backend=triton\) and remove {key}$")
    section, name = key.split(".")
    (tmp_path / "old_backend.yaml").write_text(f"applies_to: [pamm, mtmamba]\n{section}: {{{name}: triton}}\n")
    for model_name in ("pamm", "mtmamba"):
        moved = resolve_config("tiny", "nyud", model_name, overrides=parse_override("train.scan.backend=triton"))
        assert moved["train"]["scan"] == {"backend": "triton"}  # the new key resolves (no triton needed for that)
        with pytest.raises(ConfigError, match=message):
            resolve_config("tiny", "nyud", model_name, overrides=parse_override(f"{key}=triton"))
        with pytest.raises(ConfigError, match=message):
            resolve_config("tiny", "nyud", model_name, "old_backend", ablations_dir=tmp_path)
        fresh = resolve_config("tiny", "nyud", model_name)
        stored = copy.deepcopy(fresh)  # a run directory's config.yaml written before the move
        stored[section][name] = "triton"
        for build in (scan_settings_for, build_model_for):
            with pytest.raises(ConfigError, match=message):
                build(stored)
        with pytest.raises(ValueError, match=rf"^model '{model_name}': scan_backend is not a model option; set the run "
                                             r"config's train\.scan\.backend"):
            create_model(model_name, {"semseg": 40}, img_size=(64, 80), **fresh["model"], scan_backend="triton")


def test_no_model_module_names_a_backend_in_its_scan_calls():
    """Model code passes the run's settings, never ``backend=``, to the scan ops (which keep the keyword for
    direct callers), so that ``train.scan.backend`` is what runs."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "pamm" / "models").glob("*.py")) + sorted((root / "baselines").glob("*.py"))
    scan_calls, named = 0, []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if callee in ("selective_scan", "multi_direction_scan"):
                    scan_calls += 1
                    keywords = {k.arg for k in node.keywords}
                    if "backend" in keywords or "settings" not in keywords:
                        named.append(f"{path.relative_to(root)}:{node.lineno}")
    assert scan_calls >= 3  # PAMM's batched and per-task calls, SS2D's call
    assert named == [], f"scan calls that name a backend or pass no settings: {named}"


def test_equal_config_hashes_mean_equal_scan_settings_and_the_summary_records_them(monkeypatch):
    """Every setting that picks kernels is in the config (so in ``config_hash``); an environment override is the
    one way around it, and the run's record (and summary.csv's ``scan_settings`` column) names it."""
    from pamm.config import config_hash, resolve_config
    from pamm.engine.train import scan_settings_for
    from pamm.results.aggregate import scan_settings_text

    for var in ("PAMM_SCAN_BACKEND", "PAMM_TRITON_BWD", "PAMM_TRITON_BC_ORDER", "PAMM_TRITON_MULTI",
                "PAMM_TRITON_AUTOTUNE", "PAMM_SCAN_BLOCK_ELEMENTS"):
        monkeypatch.delenv(var, raising=False)
    section = {"train": {"scan": {"backend": "torch", "triton_bwd": "tile", "torch_block_elements": 4096}}}
    first, second = (resolve_config("tiny", "nyud", "pamm", overrides=section) for _ in range(2))
    assert config_hash(first) == config_hash(second)
    assert scan_settings_for(first) == scan_settings_for(second)
    other = resolve_config("tiny", "nyud", "pamm", overrides={"train": {"scan": {"triton_bwd": "token"}}})
    assert config_hash(other) != config_hash(first) and scan_settings_for(other) != scan_settings_for(first)
    text = scan_settings_text(scan_settings_for(first).record())
    assert "backend=torch" in text and "triton_bwd=tile" in text and "torch_block_elements=4096" in text
    assert "env:" not in text
    monkeypatch.setenv("PAMM_SCAN_BACKEND", "ref")
    forced = scan_settings_for(first)
    assert forced.backend == "ref"
    assert scan_settings_text(forced.record()).endswith("env:backend=$PAMM_SCAN_BACKEND")
    assert scan_settings_text(None) is None
