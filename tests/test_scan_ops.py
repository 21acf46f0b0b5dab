"""Selective-scan ops: torch backend vs the sequential reference, the custom op, multi-direction
scans, FLOP accounting, backend selection and the doctor report."""
from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

import pamm.ops as ops
from pamm.ops import multi_direction_scan, scan_orders, selective_scan, selective_scan_flops, selective_scan_ref

FIELDS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, channels, length, d_state, groups=None, *, D=True, z=True, bias=True, dtype=torch.float64, seed=0):
    """Random scan inputs; groups=None gives 3-D B/C."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return {
        "u": rand(batch, channels, length),
        "delta": rand(batch, channels, length, scale=0.5),
        "A": -torch.rand(channels, d_state, generator=gen, dtype=torch.float64).mul(2).add(0.05).to(dtype),
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
        "D": rand(channels) if D else None,
        "z": rand(batch, channels, length) if z else None,
        "delta_bias": rand(channels, scale=0.3) if bias else None,
    }


def run_with_grads(inputs, backend, softplus, grad_out=None, settings=None):
    leaves = {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus, backend=backend, settings=settings)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    present = [k for k in FIELDS if leaves[k] is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in present], grad_out)
    return out, dict(zip(present, grads)), grad_out


def assert_torch_matches_ref(inputs, softplus, atol=1e-10, settings=None):
    """Forward and every gradient within ``atol`` (relative to the largest reference value when > 1)."""
    if not softplus:  # without softplus callers pass a positive step size; a negative one makes dt·A > 0
        inputs = dict(inputs, delta=inputs["delta"].abs())
    ref_out, ref_grads, grad_out = run_with_grads(inputs, "ref", softplus)
    out, grads, _ = run_with_grads(inputs, "torch", softplus, grad_out, settings)
    torch.testing.assert_close(out, ref_out, atol=atol * max(1.0, ref_out.abs().max().item()), rtol=0)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        assert grads[key].shape == inputs[key].shape, key
        scale = max(1.0, ref_grads[key].abs().max().item())
        torch.testing.assert_close(grads[key], ref_grads[key], atol=atol * scale, rtol=0, msg=lambda m: f"d{key}: {m}")


# --------------------------------------------------------------------------------------------
# torch backend == sequential reference (float64)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_D,with_z,with_bias", list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("softplus", [False, True])
def test_torch_matches_ref_with_and_without_each_optional_input(with_D, with_z, with_bias, softplus):
    inputs = make_inputs(2, 6, 19, 3, groups=None, D=with_D, z=with_z, bias=with_bias, seed=int(with_D) + 2 * int(with_z) + 4 * int(with_bias))
    assert_torch_matches_ref(inputs, softplus)


@pytest.mark.parametrize(
    "batch,channels,length,d_state,groups",
    [
        (2, 6, 33, 4, 3),  # grouped B/C
        (1, 4, 1, 2, 2),  # l = 1
        (3, 8, 50, 5, 1),  # 4-D B/C with one group
        (2, 4, 97, 3, 4),  # one channel per group, l prime
    ],
)
def test_torch_matches_ref_on_random_shapes(batch, channels, length, d_state, groups):
    assert_torch_matches_ref(make_inputs(batch, channels, length, d_state, groups), softplus=True)


@pytest.mark.parametrize("block_elements", [1, 40, 200])
def test_torch_matches_ref_across_many_blocks(block_elements):
    """Tiny block budgets force many blocks, ragged last blocks and lengths not a multiple of the chunk."""
    settings = ops.ScanSettings(torch_block_elements=block_elements)
    assert_torch_matches_ref(make_inputs(2, 4, 45, 3, groups=2), softplus=True, settings=settings)


def test_block_budget_reaches_the_torch_backend_from_settings_and_environment(monkeypatch):
    """The saved states have one slot per block plus the final state: 45 positions of 2·4·3 elements are
    one block under the CPU default, 45 blocks at a budget of 24 elements, set by the settings or, for a
    call given none, by $PAMM_SCAN_BLOCK_ELEMENTS."""
    from pamm.ops.backends import get_backend

    inputs = make_inputs(2, 4, 45, 3, groups=2)
    B4, C4 = inputs["B"], inputs["C"]
    args = (inputs["u"], inputs["delta"], inputs["A"], B4, C4, inputs["D"], None, None, True)
    monkeypatch.delenv("PAMM_SCAN_BLOCK_ELEMENTS", raising=False)
    default = torch.ops.pamm.selective_scan(*args, "torch")[1]
    tiny = torch.ops.pamm.selective_scan(*args, "torch", ops.ScanSettings(torch_block_elements=24).key())[1]
    assert (default.shape[2], tiny.shape[2]) == (2, 46)
    monkeypatch.setenv("PAMM_SCAN_BLOCK_ELEMENTS", "24")
    assert torch.ops.pamm.selective_scan(*args, "torch")[1].shape[2] == 46
    assert get_backend("torch").state_slots(2, 4, 45, 3, "cpu", ops.ScanSettings(torch_block_elements=24)) == 46


@pytest.mark.parametrize("d_state,groups", [(1, 2), (64, 4)])
def test_torch_fp32_matches_float64_ref(d_state, groups):
    """In fp32 (the dtype training runs in) forward and every gradient stay within 1e-5 of the
    largest float64 reference value, at both extremes of n and with grouped B/C."""
    inputs = make_inputs(2, 8, 70, d_state, groups, seed=11)
    ref_out, ref_grads, grad_out = run_with_grads(inputs, "ref", True)
    single = {k: (v.float() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    out, grads, _ = run_with_grads(single, "torch", True, grad_out.float())
    assert out.dtype == torch.float32
    for name, got, want in [("out", out, ref_out)] + [(f"d{k}", grads[k], ref_grads[k]) for k in ref_grads]:
        error = (got.double() - want).abs().max().item() / want.abs().max().item()
        assert error < 1e-5, (name, error)


def test_linear_recurrence_forward_and_reverse_match_loops():
    from pamm.ops.scan_torch import linear_recurrence_

    gen = torch.Generator().manual_seed(3)
    for steps in [1, 2, 7, 50, 64, 101]:
        values = torch.randn(steps, 3, 2, generator=gen, dtype=torch.float64)
        coef = torch.rand(steps, 3, 2, generator=gen, dtype=torch.float64)
        init = torch.randn(3, 2, generator=gen, dtype=torch.float64)
        expected_fwd, state = values.clone(), init
        for t in range(steps):
            state = coef[t] * state + values[t]
            expected_fwd[t] = state
        expected_rev, state = values.clone(), init
        for t in reversed(range(steps)):
            state = coef[t] * state + values[t]
            expected_rev[t] = state
        fwd = values.clone()
        last = linear_recurrence_(fwd, coef, init)
        rev = values.clone()
        first = linear_recurrence_(rev, coef, init, reverse=True)
        torch.testing.assert_close(fwd, expected_fwd, atol=1e-12, rtol=0)
        torch.testing.assert_close(rev, expected_rev, atol=1e-12, rtol=0)
        torch.testing.assert_close(last, expected_fwd[-1])
        torch.testing.assert_close(first, expected_rev[0])


def test_extreme_dt_times_A_stays_finite():
    inputs = make_inputs(2, 4, 40, 3, groups=2)
    inputs["delta"] = torch.rand(2, 4, 40, dtype=torch.float64) * 50  # dt up to 50
    inputs["A"] = -torch.rand(4, 3, dtype=torch.float64) * 50  # A down to -50: dt·A down to -2500
    inputs["A"][0, 0] = -1e-4  # and one nearly-undamped state
    for backend in ("torch", "ref"):
        out, grads, _ = run_with_grads(inputs, backend, softplus=True)
        assert torch.isfinite(out).all(), backend
        assert all(torch.isfinite(g).all() for g in grads.values()), backend
    assert_torch_matches_ref(inputs, softplus=True, atol=1e-9)
    # fp32 too: exp(dt·A) underflows to 0 instead of overflowing anywhere.
    inputs32 = {k: None if v is None else v.float() for k, v in inputs.items()}
    out, grads, _ = run_with_grads(inputs32, "torch", softplus=True)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())


def test_gradcheck_custom_op():
    inputs = make_inputs(1, 4, 6, 2, groups=2, seed=5)
    leaves = [inputs[k].detach().clone().requires_grad_(True) for k in FIELDS]

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend="torch")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_opcheck_custom_op():
    inputs = make_inputs(2, 4, 5, 2, groups=2)
    settings = ops.ScanSettings(torch_block_elements=16).key()  # several blocks: the fake op must agree
    args = (*[inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")], True, "torch", settings)
    args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(
        torch.ops.pamm.selective_scan.default,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_return_last_state_and_dtypes():
    inputs = make_inputs(2, 4, 20, 3, groups=2)
    out, last = selective_scan(**inputs, delta_softplus=True, backend="torch", return_last_state=True)
    ref_out, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(last, ref_last, atol=1e-12, rtol=0)
    # fp32 in, fp32 out; bf16 u gives bf16 out computed with an fp32 state.
    inputs32 = {k: None if v is None else v.float() for k, v in inputs.items()}
    out32 = selective_scan(**inputs32, delta_softplus=True)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref_out, atol=1e-4, rtol=1e-4)
    inputs_bf16 = dict(inputs32, u=inputs32["u"].bfloat16())
    out_bf16 = selective_scan(**inputs_bf16, delta_softplus=True)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), selective_scan_ref(**inputs_bf16, delta_softplus=True).float(), atol=0.05, rtol=0.02)


def test_shape_errors():
    inputs = make_inputs(2, 6, 8, 3, groups=None)
    with pytest.raises(ValueError):
        selective_scan(**dict(inputs, B=torch.randn(2, 4, 3, 8, dtype=torch.float64)))  # 4 groups ∤ 6 channels
    with pytest.raises(ValueError):
        selective_scan(**dict(inputs, A=torch.randn(5, 3, dtype=torch.float64)))


# --------------------------------------------------------------------------------------------
# Multi-direction scans == explicit loop over directions with the reference
# --------------------------------------------------------------------------------------------
def loop_reference(u, delta, A, B, C, D, delta_bias, softplus, perm, inverse, merge):
    """gather → ref scan → inverse gather → merge, one direction at a time."""
    directions = perm.shape[0]
    outputs = []
    for k in range(directions):
        pick = lambda x, per_dir_dims: None if x is None else (x[:, k] if x.dim() == per_dir_dims else x)  # noqa: E731
        param = lambda x, per_dir_dims: None if x is None else (x[k] if x.dim() == per_dir_dims else x)  # noqa: E731
        uk, dk = pick(u, 4)[..., perm[k]], pick(delta, 4)[..., perm[k]]
        Bk, Ck = pick(B, 5)[..., perm[k]], pick(C, 5)[..., perm[k]]
        y = selective_scan_ref(uk, dk, param(A, 3), Bk, Ck, D=param(D, 2), delta_bias=param(delta_bias, 2), delta_softplus=softplus)
        outputs.append(y[..., inverse[k]])
    stacked = torch.stack(outputs)
    return stacked.sum(0) if merge == "sum" else stacked.mean(0)


@pytest.mark.parametrize("per_direction", [False, True])
@pytest.mark.parametrize("merge", ["sum", "mean"])
@pytest.mark.parametrize("kind,directions", [("hilbert_cropped", 4), ("raster", 4), ("snake", 2)])
def test_multi_direction_scan_matches_loop(per_direction, merge, kind, directions):
    height, width, batch, channels, d_state, groups = 3, 5, 2, 6, 3, 2
    length = height * width
    perm, inverse = scan_orders(kind, height, width, directions)
    gen = torch.Generator().manual_seed(7)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_(True)

    lead = (batch, directions) if per_direction else (batch,)
    params = (directions,) if per_direction else ()
    u, delta = rand(*lead, channels, length), rand(*lead, channels, length, scale=0.5)
    A = (-torch.rand(*params, channels, d_state, generator=gen, dtype=torch.float64) - 0.1).requires_grad_(True)
    B, C = rand(*lead, groups, d_state, length), rand(*lead, groups, d_state, length)
    D, bias = rand(*params, channels), rand(*params, channels, scale=0.3)
    leaves = [u, delta, A, B, C, D, bias]

    out = multi_direction_scan(u, delta, A, B, C, D, bias, True, perm=perm, inverse=inverse, merge=merge, backend="torch")
    expected = loop_reference(u, delta, A, B, C, D, bias, True, perm, inverse, merge)
    assert out.shape == (batch, channels, length)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out)
    for name, g, e in zip(("u", "delta", "A", "B", "C", "D", "delta_bias"), grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-9, rtol=0, msg=lambda m: f"d{name}: {m}")


def test_multi_direction_scan_accepts_3d_selection_and_calls_one_scan(monkeypatch):
    perm, inverse = scan_orders("hilbert", 4, 4, 4)
    inputs = make_inputs(2, 4, 16, 3, groups=None, z=False)
    calls = []
    original = torch.ops.pamm.selective_scan

    class CountingOps:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return original(*args)

    monkeypatch.setattr(torch.ops.pamm, "selective_scan", CountingOps())
    out = multi_direction_scan(
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["delta_bias"], True,
        perm=perm, inverse=inverse,
    )
    assert calls == [torch.Size([2, 16, 16])]  # one scan over 4 directions × 4 channels
    expected = loop_reference(
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["delta_bias"], True, perm, inverse, "sum"
    )
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_permute_tokens_backward_is_a_gather():
    perm, inverse = scan_orders("zorder", 3, 4, 4)
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.permute_tokens(t, perm, inverse, True), (x,))
    y = torch.randn(2, 4, 3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.permute_tokens(t, perm, inverse, False), (y,))
    with torch.autograd.profiler.profile() as prof:
        ops.permute_tokens(x, perm, inverse, True).sum().backward()
    names = {e.name for e in prof.function_events}
    assert not any("scatter" in n or "index_put" in n or "index_add" in n for n in names), names


# --------------------------------------------------------------------------------------------
# One node for FLOP counters
# --------------------------------------------------------------------------------------------
def test_flop_formula():
    assert selective_scan_flops(2, 10, 8, 4, with_D=False) == 9 * 2 * 10 * 8 * 4
    assert selective_scan_flops(2, 10, 8, 4) == 9 * 2 * 10 * 8 * 4 + 2 * 8 * 10
    assert selective_scan_flops(2, 10, 8, 4, with_z=True) == 9 * 2 * 10 * 8 * 4 + 2 * 2 * 8 * 10
    assert ops.selective_scan_macs(1, 1, 1, 1, with_D=False) == 5  # 9 FLOPs → 4.5 MACs, rounded up
    with pytest.raises(ValueError):
        selective_scan_flops(1, 1, 6, 1, groups=4)


def test_flop_counter_mode_sees_one_scan_node():
    from torch.utils.flop_counter import FlopCounterMode

    inputs = make_inputs(2, 8, 16, 4, groups=2, dtype=torch.float32)
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items()}
    with FlopCounterMode(display=False, custom_mapping=ops.flop_counter_formulas()) as counter:
        out = selective_scan(**leaves, delta_softplus=True, backend="torch")
        out.sum().backward()
    forward = selective_scan_flops(2, 16, 8, 4, with_D=True, with_z=True)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts == {"pamm.selective_scan": forward, "pamm.selective_scan_backward": 2 * forward}


def test_flop_counter_mode_learns_the_formula_only_when_told():
    """Importing pamm.ops registers nothing with torch's counter; register_flop_counter_formulas() does,
    for every counter created afterwards (a fresh process: the registry is process-wide)."""
    code = (
        "import torch, pamm.ops as ops\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "u, delta, B, C = torch.randn(1, 4, 6), torch.rand(1, 4, 6), torch.randn(1, 2, 6), torch.randn(1, 2, 6)\n"
        "A = -torch.rand(4, 2)\n"
        "def count():\n"
        "    with FlopCounterMode(display=False) as counter:\n"
        "        ops.selective_scan(u, delta, A, B, C, backend='torch')\n"
        "    return counter.get_total_flops()\n"
        "assert count() == 0, 'registered at import'\n"
        "assert ops.register_flop_counter_formulas() and ops.register_flop_counter_formulas()\n"
        "assert count() == ops.selective_scan_flops(1, 6, 4, 2, with_D=False), count()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fvcore_handle_sees_pamm_selective_scan():
    fvcore_nn = pytest.importorskip("fvcore.nn")

    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D):
            return selective_scan(u, delta, A, B, C, D=D, delta_softplus=True, backend="torch")

    inputs = make_inputs(2, 8, 16, 4, groups=None, z=False, bias=False, dtype=torch.float32)
    args = tuple(inputs[k] for k in ("u", "delta", "A", "B", "C", "D"))
    analysis = fvcore_nn.FlopCountAnalysis(Scan(), args).set_op_handle(**ops.fvcore_op_handles())
    analysis.unsupported_ops_warnings(False)
    by_operator = dict(analysis.by_operator())  # fvcore drops the "pamm::" namespace here
    assert by_operator == {"selective_scan": ops.selective_scan_macs(2, 16, 8, 4)}
    assert analysis.total() == ops.selective_scan_macs(2, 16, 8, 4)


def test_ptflops_aten_hook():
    from pamm._compat import ensure_torchvision_importable

    try:
        ensure_torchvision_importable()
        aten_engine = pytest.importorskip("ptflops.aten_engine")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"ptflops unusable here: {err}")
    hooks = ops.ptflops_aten_hooks()
    inputs = make_inputs(1, 8, 16, 4, groups=None, z=False, bias=False, dtype=torch.float32)
    counter = aten_engine.FlopCounterMode(output_params={"print_params": {}, "serialize_params": {}}, custom_hooks=hooks)
    with counter:
        selective_scan(**inputs, backend="torch")
    assert counter.complexity == ops.selective_scan_macs(1, 16, 8, 4)


# --------------------------------------------------------------------------------------------
# Backend selection, import cost, doctor
# --------------------------------------------------------------------------------------------
def test_backend_resolution_takes_the_settings_and_a_named_backend(monkeypatch):
    monkeypatch.delenv("PAMM_SCAN_BACKEND", raising=False)
    assert ops.resolve_backend("auto", "cpu") == "torch"
    assert ops.resolve_backend("ref", "cpu") == "ref"
    with pytest.raises(RuntimeError):
        ops.resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError):
        ops.resolve_backend("nope", "cpu")
    assert ops.resolve(ops.ScanSettings(backend="ref"), "cpu") == "ref"
    # a call's named backend wins over the settings; "auto" leaves the choice to them
    inputs = make_inputs(1, 2, 5, 2, groups=None, z=False, bias=False)
    seen = []
    real = torch.ops.pamm.selective_scan
    monkeypatch.setattr(torch.ops.pamm, "selective_scan", lambda *a: seen.append(a[9]) or real(*a))
    selective_scan(**inputs, settings=ops.ScanSettings(backend="ref"))
    selective_scan(**inputs, backend="torch", settings=ops.ScanSettings(backend="ref"))
    monkeypatch.setenv("PAMM_SCAN_BACKEND", "ref")  # a call given no settings: the environment's
    selective_scan(**inputs)
    assert seen == ["ref", "torch", "ref"]


def test_scan_settings_from_config_environment_and_back():
    settings = ops.ScanSettings.from_config(
        {"backend": "triton", "triton_bwd": "tile", "triton_autotune": False, "torch_block_elements": 4096},
        environ={"PAMM_TRITON_BC_ORDER": "token", "PAMM_TRITON_MULTI": " ", "PAMM_TRITON_BWD": "token"})
    assert (settings.backend, settings.triton_bwd, settings.triton_bc_order, settings.triton_multi) == (
        "triton", "token", "token", "gather")  # the environment overrides the section; blank is unset
    assert settings.env_overrides == (("triton_bwd", "PAMM_TRITON_BWD"), ("triton_bc_order", "PAMM_TRITON_BC_ORDER"))
    assert settings.source("triton_bwd") == "$PAMM_TRITON_BWD" and settings.source("backend") == "config"
    record = settings.record()
    assert record["env_overrides"] == {"triton_bwd": "PAMM_TRITON_BWD", "triton_bc_order": "PAMM_TRITON_BC_ORDER"}
    again = ops.ScanSettings.from_config(settings.to_dict(), environ={})
    assert again.to_dict() == settings.to_dict() and again.env_overrides == ()
    assert ops.ScanSettings.from_key(settings.key()).to_dict() == settings.to_dict()
    env = ops.ScanSettings.from_config(None, environ={"PAMM_TRITON_AUTOTUNE": "off", "PAMM_SCAN_BLOCK_ELEMENTS": "64"})
    assert (env.triton_autotune, env.torch_block_elements) == (False, 64)
    assert env.forced(triton_autotune=True).env_overrides == (("torch_block_elements", "PAMM_SCAN_BLOCK_ELEMENTS"),)
    assert ops.ScanSettings.from_config({}, environ={}) == ops.ScanSettings()


@pytest.mark.parametrize("section, environ, message", [
    ({"triton_bwd": "sideways"}, {}, r"train.scan.triton_bwd='sideways' is not one of \['token', 'tile'\]"),
    ({}, {"PAMM_TRITON_MULTI": "auto"}, r"\$PAMM_TRITON_MULTI='auto' is not one of \['gather', 'fused'\]"),
    ({}, {"PAMM_TRITON_AUTOTUNE": "maybe"}, r"\$PAMM_TRITON_AUTOTUNE='maybe' must be true or false"),
    ({"torch_block_elements": 0}, {}, r"train.scan.torch_block_elements=0 must be a positive integer"),
    ({}, {"PAMM_SCAN_BLOCK_ELEMENTS": "1e6"}, r"\$PAMM_SCAN_BLOCK_ELEMENTS='1e6' must be a positive integer"),
    ({"triton_autotune": "yes"}, {}, r"train.scan.triton_autotune='yes' must be true or false"),
    ({"bwd": "tile"}, {}, r"train.scan: unknown key\(s\) \['bwd'\]"),
])
def test_scan_settings_name_the_bad_key_or_variable(section, environ, message):
    with pytest.raises(ValueError, match=message):
        ops.ScanSettings.from_config(section, environ=environ, where="train.scan")


def test_set_scan_settings_reaches_every_scanning_module():
    class Scanner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scan_settings = None

    model = torch.nn.Sequential(Scanner(), torch.nn.Linear(2, 2), torch.nn.Sequential(Scanner()))
    settings = ops.ScanSettings(backend="ref")
    assert ops.set_scan_settings(model, settings) == 2
    assert model[0].scan_settings is settings and model[2][0].scan_settings is settings
    assert not hasattr(model[1], "scan_settings")
    with pytest.raises(TypeError, match="ScanSettings"):
        ops.set_scan_settings(model, {"backend": "ref"})


def test_cuda_backend_plumbing_with_a_stand_in_for_mamba_ssm(monkeypatch):
    """No GPU here: replace mamba-ssm's selective_scan_fn by the reference loop and check the
    "cuda" backend's dtype casts, its recompute backward and what "auto" picks for CUDA tensors."""
    from pamm.ops import backends

    seen = []

    def stand_in(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        seen.append({"u": u.dtype, "delta": delta.dtype, "A": A.dtype, "B": B.dtype, "C": C.dtype, "D": D.dtype})
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    monkeypatch.setattr(backends, "_MAMBA_STATUS", {"available": True, "fn": stand_in, "version": "stand-in", "error": None})
    monkeypatch.delenv("PAMM_SCAN_BACKEND", raising=False)
    assert ops.resolve_backend("auto", "cuda", torch.float32) == "cuda"
    assert ops.resolve_backend("auto", "cuda", torch.bfloat16) == "cuda"
    assert ops.resolve_backend("auto", "cuda", torch.float64) == "torch"  # the kernel has no fp64
    assert ops.resolve_backend("auto", "cpu", torch.float32) == "torch"
    assert ops.backend_report()["auto_on_cuda"] == "cuda"

    inputs = make_inputs(2, 4, 12, 3, groups=2, dtype=torch.float32)
    results = {}
    for backend in ("cuda", "torch"):
        leaves = [inputs[k].detach().clone().requires_grad_(True) for k in FIELDS]
        out, _ = torch.ops.pamm.selective_scan(*leaves, True, backend)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results[backend] = (out, grads)
    torch.testing.assert_close(results["cuda"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    for name, g_cuda, g_torch in zip(FIELDS, results["cuda"][1], results["torch"][1]):
        torch.testing.assert_close(g_cuda, g_torch, atol=1e-4, rtol=1e-4, msg=lambda m: f"d{name}: {m}")
    # bf16 u with fp32 B/C (what autocast produces): B, C, delta are cast to u's dtype, A and D to fp32.
    seen.clear()
    torch.ops.pamm.selective_scan(inputs["u"].bfloat16(), *[inputs[k] for k in FIELDS[1:]], True, "cuda")
    assert seen[0] == {"u": torch.bfloat16, "delta": torch.bfloat16, "A": torch.float32, "B": torch.bfloat16, "C": torch.bfloat16, "D": torch.float32}


def test_import_is_cheap_lazy_and_without_side_effects():
    code = (
        "import sys\n"
        "hooks = list(sys.meta_path)\n"
        "import pamm.ops, pamm.ops.triton\n"
        "heavy = [m for m in ('mamba_ssm', 'fvcore', 'ptflops', 'triton', 'torch.utils.flop_counter') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert sys.meta_path == hooks, sys.meta_path\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_report():
    report = ops.backend_report()
    for key in ("torch_version", "cuda_available", "gpu", "mamba_ssm", "auto_on_cuda", "auto_on_cpu", "auto_on_cuda_reason",
                "scan_settings"):
        assert key in report
    assert report["auto_on_cpu"] == "torch"
    if not report["mamba_ssm"]["importable"]:
        from pamm.ops.triton import triton_available

        expected = "triton" if triton_available()[0] else "torch"
        assert report["auto_on_cuda"] == expected and report["mamba_ssm"]["error"]
    text = ops.format_backend_report(report)
    assert "auto on CPU tensors" in text and report["torch_version"] in text


def test_backend_report_prints_the_settings_and_their_sources(monkeypatch):
    for var in ("PAMM_SCAN_BACKEND", "PAMM_TRITON_BC_ORDER", "PAMM_TRITON_MULTI", "PAMM_SCAN_BLOCK_ELEMENTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PAMM_TRITON_BWD", "tile")
    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "0")
    report = ops.backend_report()
    assert report["scan_settings"]["triton_bwd"] == {"value": "tile", "source": "$PAMM_TRITON_BWD"}
    assert report["scan_settings"]["triton_multi"] == {"value": "gather", "source": "config"}
    assert report["triton_backward"] == "tile kernel, one heuristic config (triton_autotune off)"
    text = ops.format_backend_report(report)
    assert "triton_bwd: tile  ($PAMM_TRITON_BWD)" in text and "triton_autotune: false  ($PAMM_TRITON_AUTOTUNE)" in text
    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "1")
    monkeypatch.setenv("PAMM_TRITON_BWD", "token")
    assert ops.backend_report()["triton_backward"].startswith("token kernel, autotuned, untimed candidates included")
    monkeypatch.setenv("PAMM_TRITON_BWD", "sideways")  # the doctor reports a bad variable instead of failing
    report = ops.backend_report()
    assert report["scan_settings_error"].startswith("$PAMM_TRITON_BWD='sideways'")
    assert "invalid: $PAMM_TRITON_BWD='sideways'" in ops.format_backend_report(report)
    named = ops.backend_report(ops.ScanSettings(backend="cuda"))
    assert named["auto_on_cpu"] == "error" and "cannot run here" in named["auto_on_cpu_reason"]
