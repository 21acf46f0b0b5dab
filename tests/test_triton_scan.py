"""Triton selective-scan backend against an independent float64 sequential scan.

Without a GPU the kernels run on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``,
set below before the kernels are first built). The interpreter evaluates ``tl.associative_scan``
and tuple reductions one element at a time in Python; :func:`_fast_interpreter_folds` swaps in the
same left-to-right fold done one slice at a time (identical results, ~100× faster), and
:func:`test_fast_folds_match_stock_interpreter` checks that claim on the stock interpreter.

Every case covers several features at once (tiny shapes: the interpreter is slow). Checkpoint
intervals (``chunk``), forward tiles and segments are forced small through ``PlanOverrides`` so that
ragged last intervals and tiles, several of them per segment, and several segments per sequence (the
long-l regime) all occur. The backward kind and the fused call's B/C order come from ``ScanSettings``.
"""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first kernel build

triton = pytest.importorskip("triton", reason="triton is not installed: the triton scan backend is optional")

from pamm.ops import ScanSettings  # noqa: E402
from pamm.ops.triton import (  # noqa: E402
    PlanOverrides,
    autotune,
    multi_direction_scan_triton,
    plan,
    selective_scan_triton,
    triton_available,
)

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
FP32_RTOL = 1e-4


def options(bwd_kind: str = "token", bc_order: str = "scan", **overrides) -> dict:
    """``settings`` and ``plan`` keyword arguments of the entry points: the backward kind and B/C order, one
    heuristic config per kernel (no autotuning), and the plan fields ``overrides`` fixes."""
    settings = ScanSettings(triton_bwd=bwd_kind, triton_bc_order=bc_order, triton_autotune=False)
    return {"settings": settings, "plan": PlanOverrides(**overrides)}


# ---------------------------------------------------------------------------------------------
# Interpreter speed-up (tests only)
# ---------------------------------------------------------------------------------------------
def _fold(op, inputs, axis):
    """Left fold of ``op.combine_fn`` along ``axis``, one slice per step; yields each running value."""
    import numpy as np

    datas = [arg.handle.data for arg in inputs]
    acc = None
    for i in range(datas[0].shape[axis]):
        cur = tuple(op.to_tensor(np.take(x, i, axis=axis), arg.dtype) for x, arg in zip(datas, inputs))
        if acc is None:
            acc = cur
        else:
            ret = op.combine_fn.fn(*acc, *cur)
            acc = ret if isinstance(ret, tuple) else (ret,)
        yield i, acc


def _fast_generic_scan(self, inputs):
    import numpy as np

    outs = [np.empty_like(arg.handle.data) for arg in inputs]
    for i, acc in _fold(self, inputs, self.axis):
        for out, value in zip(outs, acc):
            index = [slice(None)] * out.ndim
            index[self.axis] = i
            out[tuple(index)] = np.asarray(value.handle.data).reshape(out[tuple(index)].shape)
    return [self.to_tensor(out, arg.dtype) for out, arg in zip(outs, inputs)]


def _fast_generic_reduce(self, inputs):
    import numpy as np

    original_axis = self.axis
    inputs, axis = self.unravel(inputs, self.axis)
    shape = inputs[0].handle.data.shape
    out_shape = shape[:axis] + shape[axis + 1:]
    acc = None
    for _, acc in _fold(self, inputs, axis):
        pass
    ret = []
    for value, arg in zip(acc, inputs):
        data = np.asarray(value.handle.data).reshape(out_shape)
        if self.keep_dims:
            if original_axis is not None:
                data = np.expand_dims(data, axis)
            else:
                for _ in range(len(shape)):
                    data = np.expand_dims(data, 0)
        elif original_axis is None:
            data = data.item()
        ret.append(self.to_tensor(data, arg.dtype))
    return ret


@pytest.fixture(scope="module", autouse=True)
def _fast_interpreter_folds():
    """Vectorise the interpreter's generic scan/reduce for this module (no-op when compiled)."""
    if ON_GPU:
        yield
        return
    from triton.runtime import interpreter

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interpreter.ScanOps, "generic_scan", _fast_generic_scan)
        patch.setattr(interpreter.ReduceOps, "generic_reduce", _fast_generic_reduce)
        yield


# ---------------------------------------------------------------------------------------------
# Independent float64 reference
# ---------------------------------------------------------------------------------------------
def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Sequential selective scan in float64, mamba-ssm semantics, differentiable by autograd."""
    u, delta, A = u.double(), delta.double(), A.double()
    b, d, L = u.shape
    B = B.double() if B.dim() == 4 else B.double().unsqueeze(1)
    C = C.double() if C.dim() == 4 else C.double().unsqueeze(1)
    B = B.repeat_interleave(d // B.shape[1], dim=1)  # (b, d, n, L)
    C = C.repeat_interleave(d // C.shape[1], dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y


def reference_multi_direction(u, delta, A, B, C, D, delta_bias, delta_softplus, perm, inverse, merge):
    """Gather each order → float64 reference scan → inverse gather → merge (sum or mean)."""
    K = perm.shape[0]

    def pick(t, k, per_dir_dims):
        if t is None:
            return None
        return t[:, k] if t.dim() == per_dir_dims and per_dir_dims >= 4 else (t[k] if t.dim() == per_dir_dims else t)

    outs = []
    for k in range(K):
        order = perm[k]
        u_k = pick(u, k, 4)[..., order]
        dt_k = pick(delta, k, 4)[..., order]
        B_k = pick(B, k, 5)[..., order]
        C_k = pick(C, k, 5)[..., order]
        y = reference_scan(u_k, dt_k, pick(A, k, 3), B_k, C_k, pick(D, k, 2), None, pick(delta_bias, k, 2),
                           delta_softplus)
        outs.append(y[..., inverse[k]])
    merged = torch.stack(outs).sum(0)
    return merged / K if merge == "mean" else merged


def assert_matches(actual, expected, name, rtol):
    """Elementwise relative error, with a floor of 1 % of the largest reference value for elements
    near zero: |a - e| <= rtol * (|e| + 0.01 * max|e|). The floor is at least 1e-3 (the inputs are
    O(1)): a gradient that is exactly zero in float64 (dA at l = 1) comes out as fp32 rounding
    (~1e-9) from the compiled kernels, which is no error."""
    expected = expected.detach().double()
    actual = actual.detach().double()
    floor = (0.01 * expected.abs().max()).clamp_min(1e-3)
    err = ((actual - expected).abs() / (expected.abs() + floor)).max().item()
    if os.environ.get("PAMM_PRINT_SCAN_ERRORS"):
        print(f"{name}: {err:.1e}")
    assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"


def _leaf(t):
    return None if t is None else t.detach().to(DEVICE).requires_grad_(True)


def _make_inputs(b, d, L, n, groups, *, D, z, bias, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale)

    bc_shape = (b, groups, n, L) if groups else (b, n, L)
    ins = dict(
        u=rand(b, d, L).to(dtype),
        delta=rand(b, d, L, scale=0.5).to(dtype),
        A=-(0.1 + torch.rand(d, n, generator=gen) * 2.0),
        B=rand(*bc_shape).to(dtype),
        C=rand(*bc_shape).to(dtype),
        D=rand(d) if D else None,
        z=rand(b, d, L).to(dtype) if z else None,
        delta_bias=rand(d, scale=0.3) if bias else None,
    )
    return {k: _leaf(v) for k, v in ins.items()}


def _cuda_problem(b: int, d: int, L: int, n: int):
    """A plain single-direction call's problem description (planning tests; no kernel runs)."""
    return plan.Problem(
        batch=b, n_dir=1, n_channels=d, n_groups=1, n_state=n, seq_len=L, u_per_dir=False,
        delta_per_dir=False, A_per_dir=False, B_per_dir=False, C_per_dir=False, db_per_dir=False,
        has_D=True, has_z=False, has_bias=True, softplus=True, has_perm=False, out_scale=1.0)


def _check_against_reference(ins, softplus, fields, rtol):
    names = [k for k, v in ins.items() if v is not None]
    out = selective_scan_triton(**ins, delta_softplus=softplus, **options(**fields))
    assert out.dtype == ins["u"].dtype and out.shape == ins["u"].shape
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE, out.dtype)
    grads = torch.autograd.grad(out, [ins[k] for k in names], grad_out)
    ref_ins = {k: (None if v is None else v.detach().double().requires_grad_(True)) for k, v in ins.items()}
    ref = reference_scan(**ref_ins, delta_softplus=softplus)
    ref_grads = torch.autograd.grad(ref, [ref_ins[k] for k in names], grad_out.double())
    assert_matches(out, ref, "out", rtol)
    for name, grad, ref_grad, leaf in zip(names, grads, ref_grads, (ins[k] for k in names)):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
        assert_matches(grad, ref_grad, f"d{name}", rtol)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_triton_available_reports_version():
    ok, reason = triton_available()
    assert ok and reason.startswith("triton ")


SINGLE_CASES = {
    # id: (b, d, L, n, groups, D, z, bias, softplus, plan fields)
    "grouped-all-features-one-segment": (2, 6, 37, 16, 2, True, True, True, True, dict(chunk=8)),
    "grouped-all-features-three-tiles": (2, 6, 37, 16, 2, True, True, True, True, dict(chunk=8, tile=16)),
    "grouped-all-features-three-segments": (2, 6, 37, 16, 3, True, True, True, True, dict(chunk=8, seg_chunks=2)),
    "backward-segments-forward-whole": (2, 6, 37, 16, 3, True, True, True, True,
                                        dict(chunk=8, seg_chunks=2, fwd_seg_chunks=5, tile=16)),
    "n1-bare-ragged-channels": (2, 5, 11, 1, None, False, False, False, False, dict(chunk=4)),
    "n1-length-one": (1, 3, 1, 1, None, True, True, True, True, {}),
    "n64-softplus-no-bias-segments": (1, 4, 20, 64, 1, True, False, False, True, dict(chunk=8, seg_chunks=1)),
    "gate-only-segments-ragged": (2, 5, 19, 4, None, False, True, False, False, dict(chunk=4, seg_chunks=2)),
    "gate-only-segments-two-tiles": (2, 5, 19, 4, None, False, True, False, False,
                                     dict(chunk=4, seg_chunks=2, tile=4)),
    "forward-segments-backward-whole": (2, 5, 19, 4, None, False, True, False, False,
                                        dict(chunk=4, fwd_seg_chunks=1)),
}


@pytest.mark.parametrize("case", list(SINGLE_CASES), ids=list(SINGLE_CASES))
def test_selective_scan_fp32_matches_float64_reference(case):
    b, d, L, n, groups, D, z, bias, softplus, fields = SINGLE_CASES[case]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, fields, FP32_RTOL)


# scan_bwd_kernel's per-token loop without and with PREFETCH, or SPLIT; the interpreter's default plan
# runs the loop with prefetching
BACKWARD_VARIANTS = {
    "loop": dict(bwd_prefetch=False),
    "prefetch": dict(bwd_prefetch=True),
    "split": dict(bwd_split=True),
}


TILE_BACKWARD_CASES = ["grouped-all-features-three-tiles", "grouped-all-features-three-segments",
                       "n1-length-one", "n64-softplus-no-bias-segments", "gate-only-segments-ragged"]


@pytest.mark.parametrize("case", TILE_BACKWARD_CASES)
def test_tile_backward_matches_float64_reference(case):
    """``triton_bwd="tile"``: the tile-parallel backward (reversed-order adjoint scan, checkpoint
    interval = tile) gives every gradient, across tiles, ragged last tiles and segments."""
    b, d, L, n, groups, D, z, bias, softplus, fields = SINGLE_CASES[case]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**fields, "bwd_kind": "tile"}, FP32_RTOL)


@pytest.mark.parametrize("variant", list(BACKWARD_VARIANTS))
def test_every_backward_variant_matches_float64_reference(variant):
    """The autotuner may pick any backward variant: each gives the same gradients (segments, ragged
    intervals, gate, D, bias, grouped B/C)."""
    b, d, L, n, groups, D, z, bias, softplus, fields = SINGLE_CASES["grouped-all-features-three-segments"]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**fields, **BACKWARD_VARIANTS[variant]}, FP32_RTOL)


@pytest.mark.parametrize("slots", [1, 2, 50])
@pytest.mark.parametrize("split", [False, True])
def test_token_backward_hands_scratch_slots_on(slots, split):
    """The token backward's scratch slots: one slot handed through every program, two taken in turns
    (unequal counts), or more slots than programs; the same gradients each time."""
    b, d, L, n, groups, D, z, bias, softplus, fields = SINGLE_CASES["grouped-all-features-three-segments"]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**fields, "bwd_slots": slots, "bwd_split": split}, FP32_RTOL)


@pytest.mark.parametrize("case", [c for c in SINGLE_CASES if c != "grouped-all-features-three-segments"])
def test_split_backward_matches_float64_reference(case):
    """The split backward (the adjoint chain alone, then every gradient of a sub-block at once; with
    segments, also the local pass's adjoint loop) on every single-direction case: ragged intervals and
    sub-blocks, l = 1, n = 1 and 64, segments, gate, D, bias."""
    b, d, L, n, groups, D, z, bias, softplus, fields = SINGLE_CASES[case]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**fields, "bwd_split": True}, FP32_RTOL)


def test_split_backward_sub_blocks_shorter_than_an_interval():
    """Several sub-blocks per interval, the last one ragged (chunk 16; the interpreter's one warp and an
    8-channel block give 4-token sub-blocks; 37 tokens = two full intervals and a 5-token one), across
    two segments."""
    assert plan.split_sub(4 * 16 / 32, 16) == 8 and plan.split_sub(8 * 16 / 32, 16) == 4
    ins = _make_inputs(2, 16, 37, 16, 2, D=True, z=True, bias=True)
    _check_against_reference(ins, True, dict(chunk=16, seg_chunks=2, block_d=8, bwd_split=True), FP32_RTOL)


def test_fused_multi_direction_shares_scratch_slots_across_directions():
    _check_multi_against_reference("per-direction-inputs-mean-segments", bwd_slots=2)


def test_token_backward_scratch_holds_the_resident_programs_only(monkeypatch):
    """At S2 every program gets its own scratch slot; at S3 and S4 the scratch holds only what an H200's
    registers can keep resident (regs/16 state values per SM: 91 MB instead of 528 and 440 MB), at every
    channel block the autotuner may pick, for the split backward's longer slots (42 rows) as for the others
    (32: one per token of an interval)."""
    import types

    props = types.SimpleNamespace(multi_processor_count=132, regs_per_multiprocessor=65536)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    resident_values = 132 * 65536 // plan.REGS_PER_STATE_VALUE
    for shape, capped in (((16, 1536, 1008, 16), False), ((128, 1536, 1008, 16), True),
                          ((20, 2048, 1024, 64), True)):
        b, d, L, n = shape
        free = plan.Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4)
        rows = 32 + 8 + 2  # an interval's states, the one before it, a sub-block's 8 + 1 adjoint rows
        assert plan.slot_rows(free) == rows
        values = plan.token_bwd_scratch(_cuda_problem(b, d, L, n), free, torch.device("cuda"))
        every_program = b * d * rows * n  # d a multiple of every block, n a power of two: no padding
        assert values == (resident_values * rows if capped else every_program), shape
        for block_d in plan.BWD_BLOCK_DS:
            for split, slot_rows in ((True, rows), (False, 32)):
                slots = plan.scratch_slots(values, free, n, block_d, split=split)
                assert slots == values // (slot_rows * block_d * n), (shape, block_d)
                assert slots >= (resident_values // (block_d * n) if capped else b * d // block_d), (shape, block_d)
    for fields in ({}, {"bwd_split": True}, {"bwd_split": True, "bwd_prefetch": True}, {"bwd_split": False},
                   {"bwd_prefetch": True}):  # rows for the split backward wherever variant_mask lets it run
        fixed = plan.Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4, **fields)
        split_allowed = bool(plan.variant_mask(fixed) & plan.SPLIT_BIT)
        assert split_allowed == (fields in ({}, {"bwd_split": True}, {"bwd_split": True, "bwd_prefetch": True}))
        assert plan.slot_rows(fixed) == (42 if split_allowed else 32), fields
    forced = plan.Plan(chunk=32, seg_len=1024, block_d=8, num_warps=4, bwd_slots=10, bwd_split=False)
    values = plan.token_bwd_scratch(_cuda_problem(16, 1536, 1008, 16), forced, torch.device("cuda"))
    assert (values, plan.scratch_slots(values, forced, 16, 8)) == (10 * 8 * 32 * 16, 10)


@pytest.mark.parametrize("bwd_kind", ["token", "tile"])
def test_selective_scan_bf16_inputs_loose_tolerance(bwd_kind):
    ins = _make_inputs(2, 4, 21, 16, 2, D=True, z=True, bias=True, dtype=torch.bfloat16)
    _check_against_reference(ins, True, dict(chunk=8, seg_chunks=2, bwd_kind=bwd_kind), rtol=3e-2)


def _multi_inputs(b, d, L, n, K, G, per_dir, dtype=torch.float32, seed=1):
    """per_dir: set of names among u, delta, A, B, C, Dbias that get a direction axis."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def maybe_k(name, shape, k_axis):
        full = list(shape)
        if name in per_dir:
            full.insert(k_axis, K)
        return full

    ins = dict(
        u=rand(*maybe_k("u", (b, d, L), 1)).to(dtype),
        delta=rand(*maybe_k("delta", (b, d, L), 1), scale=0.5).to(dtype),
        A=-(0.1 + torch.rand(*maybe_k("A", (d, n), 0), generator=gen) * 2.0),
        B=rand(*maybe_k("B", (b, G, n, L), 1)).to(dtype),
        C=rand(*maybe_k("C", (b, G, n, L), 1)).to(dtype),
        D=rand(*maybe_k("Dbias", (d,), 0)),
        delta_bias=rand(*maybe_k("Dbias", (d,), 0), scale=0.3),
    )
    perm = torch.stack([torch.randperm(L, generator=gen) for _ in range(K)])
    inverse = torch.argsort(perm, dim=1)
    return {k: _leaf(v) for k, v in ins.items()}, perm.to(DEVICE), inverse.to(DEVICE)


MULTI_CASES = {
    # id: (b, d, L, n, K, G, per_dir, merge, plan fields, dtype, rtol)
    "shared-inputs-sum-one-segment": (2, 4, 13, 16, 4, 2, set(), "sum", dict(chunk=4, tile=8), torch.float32,
                                      FP32_RTOL),
    "per-direction-inputs-mean-segments": (1, 4, 18, 8, 3, 1, {"u", "delta", "A", "B", "C", "Dbias"}, "mean",
                                           dict(chunk=4, seg_chunks=2), torch.float32, FP32_RTOL),
    "mixed-layouts-bf16": (2, 4, 10, 4, 2, 2, {"u", "B", "Dbias"}, "sum", dict(chunk=4, seg_chunks=1),
                           torch.bfloat16, 3e-2),
}


def _check_multi_against_reference(case: str, **backward) -> None:
    """The fused multi-direction entry (plan of MULTI_CASES[case], plus ``backward``: plan fields, the
    backward kind, the B/C order) against gather → float64 reference → inverse gather → merge: output and
    every gradient."""
    b, d, L, n, K, G, per_dir, merge, fields, dtype, rtol = MULTI_CASES[case]
    ins, perm, inverse = _multi_inputs(b, d, L, n, K, G, per_dir, dtype)
    names = list(ins)
    out = multi_direction_scan_triton(**ins, delta_softplus=True, perm=perm, inverse=inverse, merge=merge,
                                      **options(**fields, **backward))
    assert out.shape == (b, d, L) and out.dtype == dtype
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, [ins[k] for k in names], grad_out)
    ref_ins = {k: v.detach().double().requires_grad_(True) for k, v in ins.items()}
    ref = reference_multi_direction(**ref_ins, delta_softplus=True, perm=perm, inverse=inverse, merge=merge)
    ref_grads = torch.autograd.grad(ref, [ref_ins[k] for k in names], grad_out.double())
    assert_matches(out, ref, "out", rtol)
    for name, grad, ref_grad in zip(names, grads, ref_grads):
        assert grad.shape == ins[name].shape and grad.dtype == ins[name].dtype, name
        assert_matches(grad, ref_grad, f"d{name}", rtol)


@pytest.mark.parametrize("bc_order", ["scan", "token"])
@pytest.mark.parametrize("case", list(MULTI_CASES), ids=list(MULTI_CASES))
def test_fused_multi_direction_matches_gather_scan_merge(case, bc_order):
    """Both ways of handing B and C to the kernels: put in scan order first (default) or read through perm."""
    _check_multi_against_reference(case, bc_order=bc_order)


@pytest.mark.parametrize("variant,case,bc_order",
                         [(v, "shared-inputs-sum-one-segment", "scan") for v in BACKWARD_VARIANTS]
                         + [("loop", "shared-inputs-sum-one-segment", "token"),
                            ("tile", "shared-inputs-sum-one-segment", "scan"),
                            ("tile", "shared-inputs-sum-one-segment", "token"),
                            ("tile", "per-direction-inputs-mean-segments", "scan"),
                            ("split", "per-direction-inputs-mean-segments", "token"),
                            ("split", "mixed-layouts-bf16", "scan")])
def test_fused_multi_direction_every_backward_variant(variant, case, bc_order):
    """Permuted directions (shared inputs: atomic du/dΔ; per-direction inputs over segments) with every
    backward variant and with the tile backward; the per-token dB/dC atomics and the tile backward's
    also with B and C read through the permutation."""
    backward = {"bwd_kind": "tile"} if variant == "tile" else BACKWARD_VARIANTS[variant]
    _check_multi_against_reference(case, bc_order=bc_order, **backward)


def test_scan_order_copy_of_B_and_C_is_each_directions_gather(monkeypatch):
    """B, C shared or per direction -> (b, K, G, n, L) with step t of direction k at [:, k, ..., t]; the fused
    call hands the kernels that layout (BC_SCAN_ORDER) with ``triton_bc_order="scan"``, and the rows as given
    with ``token``."""
    from pamm.ops.triton import launch
    from pamm.ops.triton.scan import in_scan_order

    b, K, G, n, L = 2, 3, 2, 4, 7
    perm = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(k)) for k in range(K)])
    shared, per_dir = torch.randn(b, G, n, L), torch.randn(b, K, G, n, L)
    got_shared = in_scan_order(shared, perm, per_dir=False)
    got_per_dir = in_scan_order(per_dir, perm, per_dir=True)
    for k in range(K):
        for t in range(L):
            assert torch.equal(got_shared[:, k, ..., t], shared[..., perm[k, t]])
            assert torch.equal(got_per_dir[:, k, ..., t], per_dir[:, k, ..., perm[k, t]])

    seen = []

    def record(problem, plan_, u, delta, A, B, *rest, **kwargs):
        seen.append((problem.bc_scan_order, tuple(B.shape)))
        return torch.zeros_like(u[:, 0] if u.dim() == 4 else u), None

    monkeypatch.setattr(launch, "scan_forward", record)
    ins, perm, inverse = _multi_inputs(1, 4, 6, 2, 2, 1, set(), torch.float32)
    for order in ("scan", "token"):
        with torch.no_grad():
            multi_direction_scan_triton(**ins, perm=perm, inverse=inverse, **options(bc_order=order))
    assert seen == [(True, (1, 2, 1, 2, 6)), (False, (1, 1, 2, 6))]


def test_single_direction_through_identity_perm_equals_plain_scan():
    """K = 1 with the identity order is the plain scan (non-atomic write path with a permutation)."""
    ins, _, _ = _multi_inputs(1, 4, 9, 4, 1, 2, set())
    perm = torch.arange(9, device=DEVICE)[None]
    fused = multi_direction_scan_triton(**ins, perm=perm, inverse=perm, merge="mean", **options(chunk=4))
    plain = selective_scan_triton(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"],
                                  delta_bias=ins["delta_bias"], **options(chunk=4))
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(ON_GPU, reason="checks the test-only interpreter speed-up")
def test_fast_folds_match_stock_interpreter():
    """The vectorised folds above change speed only: same results on the stock interpreter."""
    from triton.runtime import interpreter

    ins = _make_inputs(1, 2, 6, 2, None, D=True, z=True, bias=True)
    call = options(chunk=4, seg_chunks=1)
    fast = selective_scan_triton(**ins, delta_softplus=True, **call)
    fast_grads = torch.autograd.grad(fast.sum(), list(ins.values()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interpreter.ScanOps, "generic_scan", _STOCK_SCAN)
        patch.setattr(interpreter.ReduceOps, "generic_reduce", _STOCK_REDUCE)
        stock = selective_scan_triton(**ins, delta_softplus=True, **call)
        stock_grads = torch.autograd.grad(stock.sum(), list(ins.values()))
    torch.testing.assert_close(fast, stock, rtol=0, atol=0)
    for a, b in zip(fast_grads, stock_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _stock(cls_name, attr):
    if ON_GPU:
        return None
    from triton.runtime import interpreter

    return getattr(interpreter, cls_name).__dict__[attr]


_STOCK_SCAN = _stock("ScanOps", "generic_scan")
_STOCK_REDUCE = _stock("ReduceOps", "generic_reduce")


def test_rejects_bad_shapes_and_dtypes():
    ins = _make_inputs(1, 4, 5, 2, None, D=False, z=False, bias=False)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_triton(ins["u"], ins["delta"], ins["A"][:2], ins["B"], ins["C"])
    with pytest.raises(ValueError, match="group count"):
        B3 = torch.randn(1, 3, 2, 5, device=DEVICE)
        selective_scan_triton(ins["u"], ins["delta"], ins["A"], B3, B3)
    with pytest.raises(TypeError, match="fp32, bf16 or fp16"):
        selective_scan_triton(ins["u"].double(), ins["delta"], ins["A"], ins["B"], ins["C"])
    perm = torch.arange(5, device=DEVICE)[None]
    with pytest.raises(ValueError, match="merge"):
        multi_direction_scan_triton(ins["u"], ins["delta"], ins["A"], ins["B"].unsqueeze(1), ins["C"].unsqueeze(1),
                                    perm=perm, merge="max")


def test_backward_saves_chunk_checkpoints_not_all_states():
    """Saved for backward: the inputs plus one state per chunk, never the (b, d, n, l) states."""
    b, d, L, n = 1, 4, 32, 16
    ins = _make_inputs(b, d, L, n, None, D=True, z=False, bias=False)
    out = selective_scan_triton(**ins, **options(chunk=8))
    saved = out.grad_fn.saved_tensors
    largest = max(t.numel() for t in saved if t is not None)
    assert largest < b * d * n * L
    assert any(t is not None and tuple(t.shape) == (b, 1, L // 8, d, n) for t in saved)


def test_plan_splits_long_sequences_only_when_channels_are_few():
    """The two regimes: S1-like shapes get several segments per sequence, PAMM-like shapes one."""
    def auto(b, d, L, n):
        return plan.auto_plan(_cuda_problem(b, d, L, n), 132)

    s1 = auto(2, 384, 4800, 16)
    assert s1.n_seg(4800) > 1 and s1.seg_len % s1.chunk == 0 and s1.seg_len >= 4 * s1.chunk
    # the forward's programs are single channels: 768 of them need no split; its tiles carry the state
    s1_fwd = s1.forward(4800)
    assert s1_fwd.n_seg(4800) == 1 and s1_fwd.tile == 1024 and s1_fwd.carries(4800)
    narrow = auto(1, 8, 4800, 16).forward(4800)
    assert narrow.n_seg(4800) > 1 and narrow.seg_len % narrow.chunk == 0
    for shape in ((16, 1536, 1008, 16), (128, 1536, 1008, 16), (20, 2048, 1024, 64)):
        full = auto(*shape)
        assert full.n_seg(shape[2]) == 1 and full.forward(shape[2]).n_seg(shape[2]) == 1, shape
        assert not full.forward(shape[2]).carries(shape[2]), shape  # one tile: no state carried
    assert plan.auto_plan(_cuda_problem(2, 384, 4800, 16), 0).n_seg(4800) == 1  # no SMs (CPU): no segments


def test_fixing_the_backward_keeps_the_long_sequence_split():
    """The benchmark's per-variant rows fix only the backward: S1 must stay in its multi-segment regime,
    while a fixed checkpoint interval re-cuts the segments (one, unless seg_chunks says otherwise)."""
    problem = _cuda_problem(2, 384, 4800, 16)
    auto = plan.plan_for(problem, 132, "token")
    assert auto.n_seg(4800) > 1
    for fields in ({"bwd_prefetch": False}, {"block_d": 8}):
        fixed = plan.plan_for(problem, 132, "token", PlanOverrides(**fields))
        assert (fixed.seg_len, fixed.fwd_seg_len, fixed.chunk) == (auto.seg_len, auto.fwd_seg_len, auto.chunk)
    tile = plan.plan_for(problem, 132, "tile")
    assert tile.bwd_kind == "tile" and tile.n_seg(4800) > 1
    assert plan.plan_for(problem, 132, "token", PlanOverrides(chunk=16)).n_seg(4800) == 1
    assert plan.plan_for(problem, 132, "token", PlanOverrides(chunk=16, seg_chunks=10)).seg_len == 160


def test_tile_backward_plans_256_token_intervals():
    problem = _cuda_problem(20, 2048, 1024, 64)
    token, tile = plan.plan_for(problem, 132, "token"), plan.plan_for(problem, 132, "tile")
    assert (token.bwd_kind, token.chunk) == ("token", 32)
    assert (tile.bwd_kind, tile.chunk, tile.n_seg(1024)) == ("tile", 256, 1)


def test_autotune_configs_are_pruned_to_moderate_tiles():
    configs = [triton.Config({"BLOCK_D": bd}, num_warps=nw) for bd in (1, 2, 4, 8, 16, 32) for nw in (1, 2, 4, 8)]
    fwd = autotune.prune_fwd(configs, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=1024))
    assert len(fwd) > 1 and all(4 <= c.kwargs["BLOCK_D"] * 1024 / (32 * c.num_warps) <= 16 for c in fwd)
    loop = [triton.Config({**c.kwargs, "PREFETCH": False, "SPLIT": False, "SUB": 1}, num_warps=c.num_warps)
            for c in configs]
    bwd = autotune.prune_bwd(loop, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32))
    assert len(bwd) > 1 and all(1 <= c.kwargs["BLOCK_D"] * 16 / (32 * c.num_warps) <= 8 for c in bwd)
    narrow = autotune.prune_fwd(configs, dict(chans_per_group=1, BLOCK_N=64, CHUNK=32))
    assert narrow and all(c.kwargs["BLOCK_D"] == 1 for c in narrow)
    tile = autotune.prune_bwd_tile(configs, dict(chans_per_group=2048, BLOCK_N=64, CHUNK=256))
    assert len(tile) > 1 and all(2 <= c.kwargs["BLOCK_D"] * 256 / (32 * c.num_warps) <= 8 for c in tile)
    # not autotuning: one heuristic config, no tuning runs
    assert len(autotune.prune_bwd(loop, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32), autotune=False)) == 1


def test_backward_variants_are_autotuned_within_what_the_plan_allows():
    configs = autotune.bwd_configs()

    def variants(kept):
        return {"split" if c.kwargs["SPLIT"] else c.kwargs["PREFETCH"] for c in kept}

    free = plan.Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4)
    every = plan.variant_mask(free)
    kept = autotune.prune_bwd(configs, dict(chans_per_group=1536, BLOCK_N=64, CHUNK=32, variants=every))
    # unforced: the per-token loop with and without prefetching, and the (untimed) split backward, each of
    # its configs at the sub-block that gives it 16-value tiles
    assert variants(kept) == {False, True, "split"}
    split = [c for c in kept if c.kwargs["SPLIT"]]
    assert all(c.kwargs["SUB"] == max(2, min(8, 16 * 32 * c.num_warps // (c.kwargs["BLOCK_D"] * 64))) for c in split)
    assert len({(c.kwargs["BLOCK_D"], c.num_warps) for c in split}) == len(split)
    # the loop's per-interval gradient rows: at n = 64 one warp would need 128 registers a thread for them
    assert all(c.num_warps > 1 for c in kept if not c.kwargs["SPLIT"])
    # the long-l regime's local pass writes no gradients: no rows to fit, and the split's longest sub-block
    local = autotune.prune_bwd(configs, dict(chans_per_group=384, BLOCK_N=64, CHUNK=64, variants=every,
                                              LOCAL_PASS=True))
    assert variants(local) == {False, True, "split"} and any(c.num_warps == 1 for c in local if not c.kwargs["SPLIT"])
    assert {c.kwargs["SUB"] for c in local if c.kwargs["SPLIT"]} == {8}
    forced = plan.variant_mask(plan.Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4, bwd_prefetch=True))
    kept = autotune.prune_bwd(configs, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=forced))
    assert kept and variants(kept) == {True}
    only_split = plan.variant_mask(replace(free, bwd_split=True))
    kept = autotune.prune_bwd(configs, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=only_split))
    assert kept and variants(kept) == {"split"}
    no_split = plan.variant_mask(replace(free, bwd_split=False))
    assert variants(autotune.prune_bwd(configs, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32,
                                                      variants=no_split))) == {False, True}
    # not autotuning: the prefetching loop, the split backward only when forced
    (one,) = autotune.prune_bwd(configs, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=every),
                                autotune=False)
    assert (one.kwargs["PREFETCH"], one.kwargs["SPLIT"]) == (True, False) and one.maxnreg is None
    (one,) = autotune.prune_bwd(configs, dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=only_split),
                                autotune=False)
    per_thread = one.kwargs["BLOCK_D"] * 16 / (32 * one.num_warps)
    assert one.kwargs["SPLIT"] and one.kwargs["SUB"] == plan.split_sub(per_thread, 32)
    assert autotune.heuristic_config("bwd", dict(chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=every)) \
        .kwargs == {"BLOCK_D": 4, "PREFETCH": True, "SPLIT": False, "SUB": 1}


@pytest.mark.parametrize("n", [16, 64])
def test_register_capped_backward_twins_are_tuned_at_four_values_per_thread(n):
    """A twin capped at 168 registers for each loop config holding 4 state values per thread (where the cap
    buys 12 warps per SM for little spilling), beside its uncapped config; no twin elsewhere, and none
    without autotuning. Both untimed candidates are named in one place."""
    assert set(autotune.UNTIMED_CANDIDATES) == {"split backward", "register-capped twins"}
    every = plan.variant_mask(plan.Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4))
    args = dict(chans_per_group=2048, BLOCK_N=n, CHUNK=32, variants=every)
    kept = autotune.prune_bwd(autotune.bwd_configs(), args)
    capped = [c for c in kept if c.maxnreg is not None]
    assert capped and all(c.maxnreg == autotune.BWD_CAPPED_REGS and not c.kwargs["SPLIT"] for c in capped)
    assert all(c.kwargs["BLOCK_D"] * n == 4 * 32 * c.num_warps for c in capped)
    uncapped = {(tuple(sorted(c.kwargs.items())), c.num_warps) for c in kept if c.maxnreg is None}
    assert all((tuple(sorted(c.kwargs.items())), c.num_warps) in uncapped for c in capped)
    assert all(c.maxnreg is None for c in autotune.prune_bwd(autotune.bwd_configs(), args, autotune=False))


# ---------------------------------------------------------------------------------------------
# Wiring into pamm.ops: backend="triton" and the fused multi-direction path
# ---------------------------------------------------------------------------------------------
def test_pamm_ops_triton_backend_matches_torch_backend():
    import pamm.ops as ops

    torch.manual_seed(3)
    b, d, n, L, g = 2, 4, 4, 11, 2
    u, delta, z = torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(b, d, L)
    A, D, bias = -torch.rand(d, n) - 0.1, torch.randn(d), torch.randn(d)
    B, C = torch.randn(b, g, n, L), torch.randn(b, g, n, L)
    u, delta, z, A, D, bias, B, C = (t.to(DEVICE) for t in (u, delta, z, A, D, bias, B, C))
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    results = {}
    for backend in ("torch", "triton"):
        xs = [t.detach().clone().requires_grad_() for t in leaves]
        out = ops.selective_scan(*xs[:5], D=xs[5], z=xs[6], delta_bias=xs[7], delta_softplus=True, backend=backend)
        grads = torch.autograd.grad(out.square().sum(), xs)
        results[backend] = (out, grads)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=FP32_RTOL, atol=1e-5)
    for got, want in zip(results["triton"][1], results["torch"][1]):
        torch.testing.assert_close(got, want, rtol=FP32_RTOL, atol=1e-4)
    with pytest.raises(NotImplementedError, match="final state"):
        ops.selective_scan(u, delta, A, B, C, backend="triton", return_last_state=True)


def test_multi_direction_path_on_triton_is_the_recorded_setting(monkeypatch):
    """``triton_multi``: ``gather`` (the default) runs the Triton scan behind the gather -> scan -> merge
    path; ``fused`` the fused kernels; nothing is timed to choose. A call given no settings takes
    $PAMM_TRITON_MULTI."""
    import pamm.ops as ops
    import pamm.ops.multi_direction as multi_direction
    import pamm.ops.triton as triton_package

    monkeypatch.delenv("PAMM_TRITON_MULTI", raising=False)
    torch.manual_seed(4)
    b, d, n, H, W = 1, 4, 4, 3, 4
    perm, inverse = (t.to(DEVICE) for t in ops.scan_orders("hilbert", H, W, 4))
    u, delta = torch.randn(b, d, H * W, device=DEVICE), torch.randn(b, d, H * W, device=DEVICE)
    A = -torch.rand(d, n, device=DEVICE) - 0.1
    B, C = torch.randn(b, 2, n, H * W, device=DEVICE), torch.randn(b, 2, n, H * W, device=DEVICE)
    fused_calls, scans = [], []
    fused_entry, plain_entry = multi_direction.multi_direction_scan_triton, triton_package.selective_scan_triton
    monkeypatch.setattr(multi_direction, "multi_direction_scan_triton",
                        lambda *a, **k: fused_calls.append(k["settings"]) or fused_entry(*a, **k))
    monkeypatch.setattr(triton_package, "selective_scan_triton", lambda *a, **k: scans.append(1) or plain_entry(*a, **k))
    call = dict(delta_softplus=True, perm=perm, inverse=inverse)
    expected = ops.multi_direction_scan(u, delta, A, B, C, backend="torch", **call)
    via_gather = ops.multi_direction_scan(u, delta, A, B, C, backend="triton", **call)
    assert (len(fused_calls), scans) == (0, [1])
    fused_settings = ScanSettings(triton_multi="fused", triton_autotune=False)
    fused = ops.multi_direction_scan(u, delta, A, B, C, backend="triton", settings=fused_settings, **call)
    assert fused_calls == [fused_settings.forced(backend="triton")] and scans == [1]
    monkeypatch.setenv("PAMM_TRITON_MULTI", "fused")
    ops.multi_direction_scan(u, delta, A, B, C, backend="triton", **call)
    assert len(fused_calls) == 2 and fused_calls[1].source("triton_multi") == "$PAMM_TRITON_MULTI"
    for got in (via_gather, fused):
        torch.testing.assert_close(got, expected, rtol=FP32_RTOL, atol=1e-5)
    monkeypatch.setenv("PAMM_TRITON_MULTI", "sideways")
    with pytest.raises(ValueError, match="PAMM_TRITON_MULTI"):
        ops.multi_direction_scan(u, delta, A, B, C, backend="triton", **call)
