"""Triton selective-scan backend against an independent float64 sequential scan.

Without a GPU the kernels run on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``,
set below before the kernels are first built). The interpreter evaluates ``tl.associative_scan``
and tuple reductions one element at a time in Python; :func:`_fast_interpreter_folds` swaps in the
same left-to-right fold done one slice at a time (identical results, ~100× faster), and
:func:`test_fast_folds_match_stock_interpreter` checks that claim on the stock interpreter.

Every case covers several features at once (tiny shapes: the interpreter is slow). Checkpoint
intervals (``chunk``), forward tiles and segments are forced small through ``_force_plan`` so that
ragged last intervals and tiles, several of them per segment, and several segments per sequence (the
long-l regime) all occur.
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

from pamm.ops.triton_scan import (  # noqa: E402
    _force_plan,
    multi_direction_scan_triton,
    selective_scan_triton,
    triton_available,
)

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
FP32_RTOL = 1e-4


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
    from pamm.ops import triton_scan

    return triton_scan._Problem(
        batch=b, n_dir=1, n_channels=d, n_groups=1, n_state=n, seq_len=L, u_per_dir=False,
        delta_per_dir=False, A_per_dir=False, B_per_dir=False, C_per_dir=False, db_per_dir=False,
        has_D=True, has_z=False, has_bias=True, softplus=True, has_perm=False, out_scale=1.0)


def _check_against_reference(ins, softplus, plan, rtol):
    names = [k for k, v in ins.items() if v is not None]
    with _force_plan(**plan):
        out = selective_scan_triton(**ins, delta_softplus=softplus)
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
    # id: (b, d, L, n, groups, D, z, bias, softplus, plan)
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
    b, d, L, n, groups, D, z, bias, softplus, plan = SINGLE_CASES[case]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, plan, FP32_RTOL)


# scan_bwd_kernel's (PREFETCH, BATCH_IO), or SPLIT; the interpreter's default plan runs (True, True)
BACKWARD_VARIANTS = {
    "plain": dict(bwd_prefetch=False, bwd_batch_io=False),
    "prefetch": dict(bwd_prefetch=True, bwd_batch_io=False),
    "batched-writes": dict(bwd_prefetch=False, bwd_batch_io=True),
    "split": dict(bwd_split=True),
}


TILE_BACKWARD_CASES = ["grouped-all-features-three-tiles", "grouped-all-features-three-segments",
                       "n1-length-one", "n64-softplus-no-bias-segments", "gate-only-segments-ragged"]


@pytest.mark.parametrize("case", TILE_BACKWARD_CASES)
def test_tile_backward_matches_float64_reference(case):
    """``$PAMM_TRITON_BWD=tile``: the tile-parallel backward (reversed-order adjoint scan, checkpoint
    interval = tile) gives every gradient, across tiles, ragged last tiles and segments."""
    b, d, L, n, groups, D, z, bias, softplus, plan = SINGLE_CASES[case]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**plan, "bwd_kind": "tile"}, FP32_RTOL)


@pytest.mark.parametrize("variant", list(BACKWARD_VARIANTS))
def test_every_backward_variant_matches_float64_reference(variant):
    """The autotuner may pick any backward variant: each gives the same gradients (segments, ragged
    intervals, gate, D, bias, grouped B/C)."""
    b, d, L, n, groups, D, z, bias, softplus, plan = SINGLE_CASES["grouped-all-features-three-segments"]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**plan, **BACKWARD_VARIANTS[variant]}, FP32_RTOL)


@pytest.mark.parametrize("slots", [1, 2, 50])
@pytest.mark.parametrize("split", [False, True])
def test_token_backward_hands_scratch_slots_on(slots, split):
    """The token backward's scratch slots: one slot handed through every program, two taken in turns
    (unequal counts), or more slots than programs; the same gradients each time."""
    b, d, L, n, groups, D, z, bias, softplus, plan = SINGLE_CASES["grouped-all-features-three-segments"]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**plan, "bwd_slots": slots, "bwd_split": split}, FP32_RTOL)


@pytest.mark.parametrize("case", [c for c in SINGLE_CASES if c != "grouped-all-features-three-segments"])
def test_split_backward_matches_float64_reference(case):
    """The split backward (the adjoint chain alone, then every gradient of a sub-block at once; with
    segments, also the local pass's adjoint loop) on every single-direction case: ragged intervals and
    sub-blocks, l = 1, n = 1 and 64, segments, gate, D, bias."""
    b, d, L, n, groups, D, z, bias, softplus, plan = SINGLE_CASES[case]
    ins = _make_inputs(b, d, L, n, groups, D=D, z=z, bias=bias)
    _check_against_reference(ins, softplus, {**plan, "bwd_split": True}, FP32_RTOL)


def test_split_backward_sub_blocks_shorter_than_an_interval():
    """Several sub-blocks per interval, the last one ragged (chunk 16; the interpreter's one warp and an
    8-channel block give 4-token sub-blocks; 37 tokens = two full intervals and a 5-token one), across
    two segments."""
    from pamm.ops import triton_scan

    assert triton_scan._split_sub(4 * 16 / 32, 16) == 8 and triton_scan._split_sub(8 * 16 / 32, 16) == 4
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

    from pamm.ops import triton_scan

    props = types.SimpleNamespace(multi_processor_count=132, regs_per_multiprocessor=65536)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    resident_values = 132 * 65536 // triton_scan._REGS_PER_STATE_VALUE
    for shape, capped in (((16, 1536, 1008, 16), False), ((128, 1536, 1008, 16), True),
                          ((20, 2048, 1024, 64), True)):
        b, d, L, n = shape
        plan = triton_scan._Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4)
        rows = 32 + 8 + 2  # an interval's states, the one before it, a sub-block's 8 + 1 adjoint rows
        assert triton_scan._slot_rows(plan) == rows
        values = triton_scan._token_bwd_scratch(_cuda_problem(b, d, L, n), plan, torch.device("cuda"))
        every_program = b * d * rows * n  # d a multiple of every block, n a power of two: no padding
        assert values == (resident_values * rows if capped else every_program), shape
        for block_d in triton_scan._BWD_BLOCK_DS:
            for split, slot_rows in ((True, rows), (False, 32)):
                slots = triton_scan._scratch_slots(values, plan, n, block_d, split=split)
                assert slots == values // (slot_rows * block_d * n), (shape, block_d)
                assert slots >= (resident_values // (block_d * n) if capped else b * d // block_d), (shape, block_d)
    for fields in ({}, {"bwd_split": True}, {"bwd_split": True, "bwd_prefetch": True}, {"bwd_split": False},
                   {"bwd_batch_io": True}):  # rows for the split backward wherever _variant_mask lets it run
        plan = triton_scan._Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4, **fields)
        split_allowed = bool(triton_scan._variant_mask(plan) & triton_scan._variant_bit(False, False, split=True))
        assert triton_scan._slot_rows(plan) == (42 if split_allowed else 32), fields
    forced = triton_scan._Plan(chunk=32, seg_len=1024, block_d=8, num_warps=4, bwd_slots=10, bwd_split=False)
    values = triton_scan._token_bwd_scratch(_cuda_problem(16, 1536, 1008, 16), forced, torch.device("cuda"))
    assert (values, triton_scan._scratch_slots(values, forced, 16, 8)) == (10 * 8 * 32 * 16, 10)


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
    # id: (b, d, L, n, K, G, per_dir, merge, plan, dtype, rtol)
    "shared-inputs-sum-one-segment": (2, 4, 13, 16, 4, 2, set(), "sum", dict(chunk=4, tile=8), torch.float32,
                                      FP32_RTOL),
    "per-direction-inputs-mean-segments": (1, 4, 18, 8, 3, 1, {"u", "delta", "A", "B", "C", "Dbias"}, "mean",
                                           dict(chunk=4, seg_chunks=2), torch.float32, FP32_RTOL),
    "mixed-layouts-bf16": (2, 4, 10, 4, 2, 2, {"u", "B", "Dbias"}, "sum", dict(chunk=4, seg_chunks=1),
                           torch.bfloat16, 3e-2),
}


def _check_multi_against_reference(case: str, **backward) -> None:
    """The fused multi-direction entry (plan of MULTI_CASES[case], plus ``backward`` plan fields) against
    gather → float64 reference → inverse gather → merge: output and every gradient."""
    b, d, L, n, K, G, per_dir, merge, plan, dtype, rtol = MULTI_CASES[case]
    ins, perm, inverse = _multi_inputs(b, d, L, n, K, G, per_dir, dtype)
    names = list(ins)
    with _force_plan(**plan, **backward):
        out = multi_direction_scan_triton(**ins, delta_softplus=True, perm=perm, inverse=inverse, merge=merge)
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
                         + [("plain", "shared-inputs-sum-one-segment", "token"),
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
    call hands the kernels that layout (BC_SCAN_ORDER) by default, and the rows as given with ``token``."""
    import pamm.ops.triton_scan as triton_scan

    b, K, G, n, L = 2, 3, 2, 4, 7
    perm = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(k)) for k in range(K)])
    shared, per_dir = torch.randn(b, G, n, L), torch.randn(b, K, G, n, L)
    got_shared = triton_scan._in_scan_order(shared, perm, per_dir=False)
    got_per_dir = triton_scan._in_scan_order(per_dir, perm, per_dir=True)
    for k in range(K):
        for t in range(L):
            assert torch.equal(got_shared[:, k, ..., t], shared[..., perm[k, t]])
            assert torch.equal(got_per_dir[:, k, ..., t], per_dir[:, k, ..., perm[k, t]])

    seen = []
    monkeypatch.setattr(triton_scan._TritonScanFn, "apply",
                        lambda u, delta, A, B, C, *rest: seen.append((rest[-2].bc_scan_order, tuple(B.shape))) or u)
    ins, perm, inverse = _multi_inputs(1, 4, 6, 2, 2, 1, set(), torch.float32)
    for order in ("scan", "token"):
        with _force_plan(bc_order=order):
            multi_direction_scan_triton(**ins, perm=perm, inverse=inverse)
    assert seen == [(True, (1, 2, 1, 2, 6)), (False, (1, 1, 2, 6))]
    monkeypatch.setenv(triton_scan.BC_ORDER_ENV_VAR, "rows")
    with pytest.raises(ValueError, match="PAMM_TRITON_BC_ORDER"):
        multi_direction_scan_triton(**ins, perm=perm, inverse=inverse)


def test_single_direction_through_identity_perm_equals_plain_scan():
    """K = 1 with the identity order is the plain scan (non-atomic write path with a permutation)."""
    ins, _, _ = _multi_inputs(1, 4, 9, 4, 1, 2, set())
    perm = torch.arange(9, device=DEVICE)[None]
    with _force_plan(chunk=4):
        fused = multi_direction_scan_triton(**ins, perm=perm, inverse=perm, merge="mean")
        plain = selective_scan_triton(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"],
                                      delta_bias=ins["delta_bias"])
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(ON_GPU, reason="checks the test-only interpreter speed-up")
def test_fast_folds_match_stock_interpreter():
    """The vectorised folds above change speed only: same results on the stock interpreter."""
    from triton.runtime import interpreter

    ins = _make_inputs(1, 2, 6, 2, None, D=True, z=True, bias=True)
    with _force_plan(chunk=4, seg_chunks=1):
        fast = selective_scan_triton(**ins, delta_softplus=True)
        fast_grads = torch.autograd.grad(fast.sum(), list(ins.values()))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(interpreter.ScanOps, "generic_scan", _STOCK_SCAN)
            patch.setattr(interpreter.ReduceOps, "generic_reduce", _STOCK_REDUCE)
            stock = selective_scan_triton(**ins, delta_softplus=True)
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
    with _force_plan(chunk=8):
        out = selective_scan_triton(**ins)
    saved = out.grad_fn.saved_tensors
    largest = max(t.numel() for t in saved if t is not None)
    assert largest < b * d * n * L
    assert any(t is not None and tuple(t.shape) == (b, 1, L // 8, d, n) for t in saved)


def test_plan_splits_long_sequences_only_when_channels_are_few(monkeypatch):
    """The two regimes: S1-like shapes get several segments per sequence, PAMM-like shapes one."""
    import types

    from pamm.ops import triton_scan

    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(multi_processor_count=132))

    def plan(b, d, L, n):
        return triton_scan._auto_plan.__wrapped__(_cuda_problem(b, d, L, n), torch.device("cuda"))

    s1 = plan(2, 384, 4800, 16)
    assert s1.n_seg(4800) > 1 and s1.seg_len % s1.chunk == 0 and s1.seg_len >= 4 * s1.chunk
    # the forward's programs are single channels: 768 of them need no split; its tiles carry the state
    s1_fwd = s1.forward(4800)
    assert s1_fwd.n_seg(4800) == 1 and s1_fwd.tile == 1024 and s1_fwd.carries(4800)
    narrow = plan(1, 8, 4800, 16).forward(4800)
    assert narrow.n_seg(4800) > 1 and narrow.seg_len % narrow.chunk == 0
    for shape in ((16, 1536, 1008, 16), (128, 1536, 1008, 16), (20, 2048, 1024, 64)):
        full = plan(*shape)
        assert full.n_seg(shape[2]) == 1 and full.forward(shape[2]).n_seg(shape[2]) == 1, shape
        assert not full.forward(shape[2]).carries(shape[2]), shape  # one tile: no state carried


def test_forcing_the_backward_keeps_the_long_sequence_split(monkeypatch):
    """The benchmark's per-variant rows force only the backward: S1 must stay in its multi-segment regime,
    while a forced checkpoint interval re-cuts the segments (one, unless seg_chunks says otherwise)."""
    from pamm.ops import triton_scan

    monkeypatch.setattr(triton_scan, "_sm_count", lambda device: 132)
    triton_scan._auto_plan.cache_clear()
    problem = _cuda_problem(2, 384, 4800, 16)
    try:
        auto = triton_scan._plan_for(problem, torch.device("cuda"))
        assert auto.n_seg(4800) > 1
        for fields in ({"bwd_prefetch": True, "bwd_batch_io": False}, {"block_d": 8}):
            with _force_plan(**fields):
                forced = triton_scan._plan_for(problem, torch.device("cuda"))
            assert (forced.seg_len, forced.fwd_seg_len, forced.chunk) == (auto.seg_len, auto.fwd_seg_len, auto.chunk)
        with _force_plan(bwd_kind="tile"):
            tile = triton_scan._plan_for(problem, torch.device("cuda"))
        assert tile.bwd_kind == "tile" and tile.n_seg(4800) > 1
        with _force_plan(chunk=16):
            assert triton_scan._plan_for(problem, torch.device("cuda")).n_seg(4800) == 1
        with _force_plan(chunk=16, seg_chunks=10):
            assert triton_scan._plan_for(problem, torch.device("cuda")).seg_len == 160
    finally:
        triton_scan._auto_plan.cache_clear()


def test_tile_backward_is_chosen_by_env_and_plans_256_token_intervals(monkeypatch):
    import types

    from pamm.ops import triton_scan

    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(multi_processor_count=132))
    problem = _cuda_problem(20, 2048, 1024, 64)
    monkeypatch.delenv(triton_scan.BWD_KIND_ENV_VAR, raising=False)
    token = triton_scan._plan_for(problem, torch.device("cuda"))
    monkeypatch.setenv(triton_scan.BWD_KIND_ENV_VAR, "tile")
    tile = triton_scan._plan_for(problem, torch.device("cuda"))
    assert (token.bwd_kind, token.chunk) == ("token", 32)
    assert (tile.bwd_kind, tile.chunk, tile.n_seg(1024)) == ("tile", 256, 1)
    monkeypatch.setenv(triton_scan.BWD_KIND_ENV_VAR, "sideways")
    with pytest.raises(ValueError, match="PAMM_TRITON_BWD"):
        triton_scan._plan_for(problem, torch.device("cuda"))


def test_autotune_configs_are_pruned_to_moderate_tiles(monkeypatch):
    from pamm.ops import triton_scan

    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "1")

    configs = [triton.Config({"BLOCK_D": bd}, num_warps=nw) for bd in (1, 2, 4, 8, 16, 32) for nw in (1, 2, 4, 8)]
    fwd = triton_scan._prune_fwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=1024)
    assert len(fwd) > 1 and all(4 <= c.kwargs["BLOCK_D"] * 1024 / (32 * c.num_warps) <= 16 for c in fwd)
    bwd = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=32)
    assert len(bwd) > 1 and all(1 <= c.kwargs["BLOCK_D"] * 16 / (32 * c.num_warps) <= 8 for c in bwd)
    narrow = triton_scan._prune_fwd_configs(configs, {}, chans_per_group=1, BLOCK_N=64, CHUNK=32)
    assert narrow and all(c.kwargs["BLOCK_D"] == 1 for c in narrow)
    tile = triton_scan._prune_bwd_tile_configs(configs, {}, chans_per_group=2048, BLOCK_N=64, CHUNK=256)
    assert len(tile) > 1 and all(2 <= c.kwargs["BLOCK_D"] * 256 / (32 * c.num_warps) <= 8 for c in tile)
    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "0")  # one heuristic config, no tuning runs
    assert len(triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=32)) == 1


def test_backward_variants_are_autotuned_within_what_the_plan_allows(monkeypatch):
    from pamm.ops import triton_scan

    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "1")
    configs = triton_scan._bwd_configs()

    def variants(kept):
        return {"split" if c.kwargs["SPLIT"] else (c.kwargs["PREFETCH"], c.kwargs["BATCH_IO"]) for c in kept}

    free = triton_scan._Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4)
    every = triton_scan._variant_mask(free)
    kept = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=64, CHUNK=32, variants=every)
    # unforced, the batched writes are tuned (they won everywhere on the H200), with and without prefetch,
    # and the split backward (untimed), each config at the sub-block that gives it 16-value tiles
    assert variants(kept) == {(False, True), (True, True), "split"}
    split = [c for c in kept if c.kwargs["SPLIT"]]
    assert all(c.kwargs["SUB"] == max(2, min(8, 16 * 32 * c.num_warps // (c.kwargs["BLOCK_D"] * 64))) for c in split)
    assert len({(c.kwargs["BLOCK_D"], c.num_warps) for c in split}) == len(split)
    # batched writes hold (n, CHUNK) rows: at n = 64 one warp would need 128 registers a thread for them
    assert all(c.num_warps > 1 for c in kept if c.kwargs["BATCH_IO"])
    local = triton_scan._variant_mask(free, local_pass=True)  # writes no gradients: batching is moot there
    kept = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=384, BLOCK_N=16, CHUNK=64, variants=local)
    assert variants(kept) == {(False, False), (True, False), "split"} and any(c.num_warps == 1 for c in kept)
    kept = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=384, BLOCK_N=16, CHUNK=64, variants=local,
                                          LOCAL_PASS=True)  # no gradient tiles there: the longest sub-block
    assert {c.kwargs["SUB"] for c in kept if c.kwargs["SPLIT"]} == {8}
    forced = triton_scan._variant_mask(triton_scan._Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4,
                                                         bwd_prefetch=True, bwd_batch_io=False))
    kept = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=forced)
    assert kept and variants(kept) == {(True, False)}
    only_split = triton_scan._variant_mask(replace(free, bwd_split=True))
    kept = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=only_split)
    assert kept and variants(kept) == {"split"}
    # forced, the local pass runs it too (its unrolled adjoint loop alone)
    assert triton_scan._variant_mask(replace(free, bwd_split=True), local_pass=True) == only_split
    no_split = triton_scan._variant_mask(replace(free, bwd_split=False))
    assert variants(triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=32,
                                                   variants=no_split)) == {(False, True), (True, True)}
    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "0")  # untuned: the measured default, split only when forced
    (one,) = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=32, variants=every)
    assert (one.kwargs["PREFETCH"], one.kwargs["BATCH_IO"], one.kwargs["SPLIT"]) == (True, True, False)
    assert one.maxnreg is None
    (one,) = triton_scan._prune_bwd_configs(configs, {}, chans_per_group=1536, BLOCK_N=16, CHUNK=32,
                                            variants=only_split)
    per_thread = one.kwargs["BLOCK_D"] * 16 / (32 * one.num_warps)
    assert one.kwargs["SPLIT"] and one.kwargs["SUB"] == triton_scan._split_sub(per_thread, 32)


@pytest.mark.parametrize("n", [16, 64])
def test_register_capped_backward_twins_are_tuned_at_four_values_per_thread(monkeypatch, n):
    """A twin capped at 168 registers for each batched-writes config holding 4 state values per thread
    (where the cap buys 12 warps per SM for little spilling), beside its uncapped config; no twin elsewhere,
    and none with autotuning off."""
    from pamm.ops import triton_scan

    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "1")
    every = triton_scan._variant_mask(triton_scan._Plan(chunk=32, seg_len=1024, block_d=None, num_warps=4))
    kept = triton_scan._prune_bwd_configs(triton_scan._bwd_configs(), {}, chans_per_group=2048, BLOCK_N=n,
                                          CHUNK=32, variants=every)
    capped = [c for c in kept if c.maxnreg is not None]
    assert capped and all(c.maxnreg == triton_scan._BWD_CAPPED_REGS and c.kwargs["BATCH_IO"] for c in capped)
    assert all(c.kwargs["BLOCK_D"] * n == 4 * 32 * c.num_warps for c in capped)
    uncapped = {(tuple(sorted(c.kwargs.items())), c.num_warps) for c in kept if c.maxnreg is None}
    assert all((tuple(sorted(c.kwargs.items())), c.num_warps) in uncapped for c in capped)
    monkeypatch.setenv("PAMM_TRITON_AUTOTUNE", "0")
    assert all(c.maxnreg is None for c in triton_scan._prune_bwd_configs(
        triton_scan._bwd_configs(), {}, chans_per_group=2048, BLOCK_N=n, CHUNK=32, variants=every))


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


def test_multi_direction_scan_takes_the_fused_triton_path(monkeypatch):
    import pamm.ops as ops
    import pamm.ops.triton_scan as triton_scan

    monkeypatch.delenv(triton_scan.MULTI_PATH_ENV_VAR, raising=False)  # auto: fused where it cannot time
    torch.manual_seed(4)
    b, d, n, H, W = 1, 4, 4, 3, 4
    perm, inverse = (t.to(DEVICE) for t in ops.scan_orders("hilbert", H, W, 4))
    u, delta = torch.randn(b, d, H * W, device=DEVICE), torch.randn(b, d, H * W, device=DEVICE)
    A = -torch.rand(d, n, device=DEVICE) - 0.1
    B, C = torch.randn(b, 2, n, H * W, device=DEVICE), torch.randn(b, 2, n, H * W, device=DEVICE)
    calls = []
    original = triton_scan.multi_direction_scan_triton
    monkeypatch.setattr(triton_scan, "multi_direction_scan_triton", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused = ops.multi_direction_scan(u, delta, A, B, C, delta_softplus=True, perm=perm, inverse=inverse, backend="triton")
    gathered = ops.multi_direction_scan(u, delta, A, B, C, delta_softplus=True, perm=perm, inverse=inverse, backend="torch")
    assert calls == [1]
    torch.testing.assert_close(fused, gathered, rtol=FP32_RTOL, atol=1e-5)
    # $PAMM_TRITON_MULTI=gather: the triton scan behind the gather -> scan -> merge path, no fused call
    monkeypatch.setenv(triton_scan.MULTI_PATH_ENV_VAR, "gather")
    scans = []
    plain = triton_scan.selective_scan_triton
    monkeypatch.setattr(triton_scan, "selective_scan_triton", lambda *a, **k: scans.append(1) or plain(*a, **k))
    via_gather = ops.multi_direction_scan(u, delta, A, B, C, delta_softplus=True, perm=perm, inverse=inverse,
                                          backend="triton")
    assert calls == [1] and scans == [1]
    torch.testing.assert_close(via_gather, gathered, rtol=FP32_RTOL, atol=1e-5)
    monkeypatch.setenv(triton_scan.MULTI_PATH_ENV_VAR, "sideways")
    with pytest.raises(ValueError, match="PAMM_TRITON_MULTI"):
        ops.multi_direction_scan(u, delta, A, B, C, perm=perm, inverse=inverse, backend="triton")


def test_timing_a_multi_direction_path_leaves_the_callers_tensors_alone(monkeypatch):
    """``_time_path`` runs the path (and its backward) on detached copies: an untimed call, then the median
    of the timed ones; the caller's leaves get no gradient and the caller's graph is untouched."""
    from pamm.ops import multi_direction

    elapsed = iter([3.0, 1.0, 2.0])

    class FakeEvent:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            pass

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return next(elapsed)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    cuda = torch.device("cuda")  # only the timing sees it: the tensors stay on the CPU
    u = torch.randn(1, 4, 12, requires_grad=True)
    A = torch.randn(4, 2)  # needs no gradient
    seen = []

    def run(path, args):
        seen.append((path, args[0] is not u, args[0].requires_grad, args[1].requires_grad, torch.is_grad_enabled()))
        return (args[0] * 2).sum(-1) + args[1].sum()

    assert multi_direction._time_path(run, "gather", [u, A], wants_grad=True, device=cuda) == 2.0
    assert seen == [("gather", True, True, False, True)] * 4 and u.grad is None
    seen.clear()
    elapsed = iter([1.0, 1.0, 1.0])
    with torch.no_grad():
        multi_direction._time_path(run, "fused", [u, A], wants_grad=False, device=cuda)
    assert seen == [("fused", True, False, False, False)] * 4


def test_auto_multi_direction_path_times_both_once_per_problem(monkeypatch):
    """``auto`` (where it can time: CUDA) keeps the faster path per problem, timing each problem once; a
    forced path is never timed."""
    from pamm.ops import multi_direction, triton_scan

    monkeypatch.delenv(triton_scan.MULTI_PATH_ENV_VAR, raising=False)
    monkeypatch.setattr(multi_direction, "_TRITON_PATHS", {})
    monkeypatch.setattr(multi_direction, "_can_time", lambda device: True)
    speed = {"fused": 9.0, "gather": 5.0}
    timed = []

    def fake_time(run, path, inputs, wants_grad, device):
        timed.append((path, tuple(inputs[0].shape), wants_grad))
        return speed[path]

    monkeypatch.setattr(multi_direction, "_time_path", fake_time)
    small = [torch.randn(1, 4, 12, requires_grad=True)] + [None] * 6
    assert multi_direction._triton_path(None, small, ("flags",)) == "gather"
    assert multi_direction._triton_path(None, small, ("flags",)) == "gather"
    assert timed == [("fused", (1, 4, 12), True), ("gather", (1, 4, 12), True)]  # once per problem
    speed["fused"] = 1.0
    wide = [torch.randn(2, 4, 12, requires_grad=True)] + [None] * 6
    assert multi_direction._triton_path(None, wide, ("flags",)) == "fused"  # another problem: timed again
    with torch.no_grad():  # inference: a problem of its own, timed forward only
        assert multi_direction._triton_path(None, small, ("flags",)) == "fused"
    assert timed[-1] == ("gather", (1, 4, 12), False) and len(timed) == 6
    monkeypatch.setenv(triton_scan.MULTI_PATH_ENV_VAR, "fused")
    assert multi_direction._triton_path(None, wide, ("other",)) == "fused" and len(timed) == 6
    monkeypatch.setattr(multi_direction, "_can_time", lambda device: False)
    monkeypatch.delenv(triton_scan.MULTI_PATH_ENV_VAR)
    assert multi_direction._triton_path(None, wide, ("other",)) == "fused" and len(timed) == 6
