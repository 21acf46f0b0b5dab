"""Benchmark the Triton selective scan against mamba-ssm's CUDA kernel and the pure-PyTorch backend.

Why: the Triton backend is meant to replace a compiled extension, so its cost next to that kernel is
the number that matters, at the shapes PAMM actually runs:

  S1 (b, d, l, n) = (2, 384, 4800, 16)    few channels, long l (the chunked, multi-segment regime)
  S2              = (16, 1536, 1008, 16)  PAMM NYUD stage, batch 1, 4 tasks x 4 directions
  S3              = (128, 1536, 1008, 16) the same at batch 8, bf16 inputs
  S4              = (20, 2048, 1024, 64)  PAMM PASCAL stage, batch 1, 5 tasks x 4 directions
  P8              = (8, 6144, 1008, 16)   PAMM's own call in its NYUD training step: batch 8, the 4 tasks'
                                          1536 channels side by side (B, C grouped per task), bf16;
                                          the multi-direction call only

For each shape and backend: forward and forward+backward time (median of CUDA-event timings; the
backward takes the gradients of u, Δ, A, B, C, D), peak memory above the inputs, the largest output
and gradient error against the CUDA kernel, and the triton / cuda time ratio. For S2 and S4 it also
times the whole multi-direction call: gather → scan → merge with the CUDA kernel against the fused
Triton entry (orders read and written inside the kernel), with the batch split into tasks x 4
directions over the 28x36 (S2) or 32x32 (S4) token grid, and against the Triton scan behind the
gather → scan → merge path (``triton@multi=gather``: what ``pamm.ops.multi_direction_scan`` runs with
``triton_multi: gather``, the default).

Where the time goes: ``--kernel-tables DIR`` writes, per row, torch.profiler's table of one forward+backward
(kernels, copies, fills, by self CUDA time); ``--no-single --scan-kind identity`` times the fused call with
every direction in token order (``raster``: two in token order, forward and reversed, two column-major),
so its cost splits into the kernel's own and what its permuted reads and atomic adds add.

GPU only: on a machine without CUDA it says so and exits 0. This is a script, not a test.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

SHAPES = {
    "S1": dict(b=2, d=384, l=4800, n=16, dtype=torch.float32, grid=None),
    "S2": dict(b=16, d=1536, l=1008, n=16, dtype=torch.float32, grid=(28, 36)),
    "S3": dict(b=128, d=1536, l=1008, n=16, dtype=torch.bfloat16, grid=None),
    "S4": dict(b=20, d=2048, l=1024, n=64, dtype=torch.float32, grid=(32, 32)),
    "P8": dict(b=8, d=6144, l=1008, n=16, dtype=torch.bfloat16, grid=(28, 36), groups=4, multi_only=True),
}
BACKENDS = ("cuda", "triton", "torch")
DIRECTIONS = 4

FIELDS = ["call", "shape", "b", "d", "l", "n", "dtype", "backend", "fwd_ms", "fwd_bwd_ms", "peak_mib",
          "out_max_abs_err_vs_cuda", "grad_max_rel_err_vs_cuda", "fwd_ratio_vs_cuda", "fwd_bwd_ratio_vs_cuda",
          "status"]


@dataclass
class Row:
    call: str
    shape: str
    spec: dict
    backend: str
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_mib: float | None = None
    out_err: float | None = None
    grad_err: float | None = None
    status: str = "ok"
    outputs: tuple = field(default=(), repr=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="shapes to run")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS),
                        help="single-scan backends to time (cuda is the reference for errors and ratios)")
    parser.add_argument("--no-multi", action="store_true", help="skip the multi-direction comparison (S2, S4)")
    parser.add_argument("--no-single", action="store_true", help="time only the multi-direction call")
    parser.add_argument("--scan-kind", default="hilbert",
                        help="scan order kind for the multi-direction call (pamm.ops.SCAN_KINDS), or 'identity': "
                             "four directions in token order, a diagnostic")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing (autotuning included)")
    parser.add_argument("--iters", type=int, default=10, help="timed runs; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV ('-' for stdout)")
    parser.add_argument("--kernel-tables", metavar="DIR", type=Path,
                        help="write torch.profiler's kernel table of one forward+backward per row into DIR")
    parser.add_argument("--triton-chunks", type=int, nargs="*", default=[],
                        help="also time the triton backend with CHUNK forced to each value (backend 'triton@C'); "
                             "single-segment plans only, so use with S2-S4")
    parser.add_argument("--triton-bwd-variants", nargs="*", default=[], choices=list(BWD_VARIANTS),
                        help="also time the triton backend with its backward held to one variant (backend "
                             "'triton@bwd=V'): the token kernel's loop without or with prefetching, its split "
                             "form, the autotuned choice without the split form ('nosplit'; plain 'triton' lets "
                             "the autotuner choose among all three) or the tile kernel (triton_bwd: tile)")
    parser.add_argument("--triton-bc-orders", nargs="*", default=[], choices=["scan", "token"],
                        help="also time the fused multi-direction call with B and C handed over in each "
                             "direction's scan order (the default) or read through the permutation (backend "
                             "'triton@bc=O', triton_bc_order)")
    return parser.parse_args(argv)


# the backward, by name: scan_bwd_kernel's loop without or with PREFETCH, its SPLIT form, the autotuned
# choice without SPLIT (plan fields), or the tile kernel (a setting)
BWD_VARIANTS = {
    "loop": dict(bwd_prefetch=False),
    "prefetch": dict(bwd_prefetch=True),
    "split": dict(bwd_split=True),
    "nosplit": dict(bwd_split=False),
    "tile": dict(triton_bwd="tile"),
}


def triton_options(spec: str = "") -> dict:
    """``settings`` (the defaults with the environment's overrides) and ``plan`` for a triton call, parts of
    them fixed by ``spec``, comma-separated: a CHUNK ('32'), 'bwd=<variant>', 'bc=<order>' (the fused call's
    B/C layout) or 'multi=<path>' (pamm.ops.multi_direction_scan's path)."""
    from pamm.ops import ScanSettings
    from pamm.ops.triton import PlanOverrides

    settings, fields = ScanSettings.from_config(None), {}
    for part in filter(None, spec.split(",")):
        name, _, value = part.rpartition("=")
        if name == "bwd":
            variant = dict(BWD_VARIANTS[value])
            if "triton_bwd" in variant:
                settings = settings.forced(triton_bwd=variant.pop("triton_bwd"))
            fields.update(variant)
        elif name in ("bc", "multi"):
            settings = settings.forced(**{"triton_bc_order" if name == "bc" else "triton_multi": value})
        else:
            fields["chunk"] = int(value)
    return {"settings": settings, "plan": PlanOverrides(**fields)}


# ---------------------------------------------------------------------------------------------
# Inputs and callables
# ---------------------------------------------------------------------------------------------
def make_inputs(spec: dict, seed: int, device: torch.device) -> dict:
    """PAMM-like scan inputs: Δ before softplus with a dt_proj-style bias, A = -exp(A_log); B, C (b, n, L),
    or (b, G, n, L) for a spec with ``groups``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    b, d, l, n, dtype = spec["b"], spec["d"], spec["l"], spec["n"], spec["dtype"]
    bc_shape = (b, spec["groups"], n, l) if spec.get("groups") else (b, n, l)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, device=device) * scale

    return dict(
        u=randn(b, d, l).to(dtype),
        delta=randn(b, d, l, scale=0.5).to(dtype),
        A=-torch.exp(randn(d, n, scale=0.5)),
        B=randn(*bc_shape).to(dtype),
        C=randn(*bc_shape).to(dtype),
        D=randn(d),
        delta_bias=randn(d, scale=0.5) - 4.0,
    )


GRAD_NAMES = ("u", "delta", "A", "B", "C", "D")


def single_call(backend: str) -> Callable[[dict], torch.Tensor]:
    """cuda / torch through pamm.ops.selective_scan; triton called directly (no dispatch in the way)."""
    import pamm.ops as ops

    if backend == "triton" or backend.startswith("triton@"):
        from pamm.ops.triton import selective_scan_triton

        options = triton_options(backend.partition("@")[2])

        def run_triton(x: dict) -> torch.Tensor:
            return selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"],
                                         True, **options)

        return run_triton

    def run(x: dict) -> torch.Tensor:
        return ops.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"],
                                  True, backend=backend)

    return run


def multi_inputs(spec: dict, seed: int, device: torch.device, kind: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Shared u/Δ/A/D/bias, B/C shared by the directions: the b = tasks × directions sequences of a
    single-scan shape as tasks-as-batch (b / 4, d) with G = 1, or a ``groups`` spec as it is (PAMM's call:
    the tasks' channels side by side, G = tasks)."""
    if spec.get("groups"):
        return make_inputs(spec, seed, device), *scan_perm(spec["grid"], device, kind)
    tasks = spec["b"] // DIRECTIONS
    x = make_inputs({**spec, "b": tasks}, seed, device)
    x["B"], x["C"] = x["B"].unsqueeze(1), x["C"].unsqueeze(1)  # (b, G=1, n, L)
    return x, *scan_perm(spec["grid"], device, kind)


def scan_perm(grid: tuple[int, int], device: torch.device, kind: str = "hilbert") -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "identity":
        perm = torch.arange(grid[0] * grid[1]).repeat(DIRECTIONS, 1)
        return perm.to(device), perm.clone().to(device)
    try:
        from pamm.ops import scan_orders

        perm, inverse = scan_orders(kind, grid[0], grid[1], DIRECTIONS)
    except Exception as exc:  # noqa: BLE001  (fall back so the timing still runs)
        print(f"[bench] scan_orders({kind!r}) unavailable ({exc}); using random orders", file=sys.stderr)
        gen = torch.Generator().manual_seed(0)
        perm = torch.stack([torch.randperm(grid[0] * grid[1], generator=gen) for _ in range(DIRECTIONS)])
        inverse = torch.argsort(perm, dim=1)
    return perm.to(device), inverse.to(device)


def multi_call(backend: str, perm: torch.Tensor, inverse: torch.Tensor) -> Callable[[dict], torch.Tensor]:
    """cuda: pamm.ops.multi_direction_scan (gather → scan → merge), or that pipeline spelled out."""
    import pamm.ops as ops

    library = getattr(ops, "multi_direction_scan", None)

    def via_library(scan_backend: str, settings=None) -> Callable[[dict], torch.Tensor]:
        def call(x: dict) -> torch.Tensor:
            return library(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True,
                           perm=perm, inverse=inverse, merge="sum", backend=scan_backend, settings=settings)

        return call

    if backend.startswith("triton@multi="):  # pamm.ops.multi_direction_scan on the triton backend, one path set
        return via_library("triton", triton_options(backend.partition("@")[2])["settings"])
    if backend == "triton" or backend.startswith("triton@"):
        from pamm.ops.triton import multi_direction_scan_triton

        options = triton_options(backend.partition("@")[2])

        def fused(x: dict) -> torch.Tensor:
            return multi_direction_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"],
                                               True, perm=perm, inverse=inverse, merge="sum", **options)

        return fused
    if library is not None:
        return via_library(backend)

    def spelled_out(x: dict) -> torch.Tensor:
        b, d, L = x["u"].shape
        K = perm.shape[0]
        u = x["u"][:, :, perm].transpose(1, 2).reshape(b * K, d, L)
        delta = x["delta"][:, :, perm].transpose(1, 2).reshape(b * K, d, L)
        B = x["B"][:, 0][:, :, perm].transpose(1, 2).reshape(b * K, -1, L)
        C = x["C"][:, 0][:, :, perm].transpose(1, 2).reshape(b * K, -1, L)
        y = ops.selective_scan(u, delta, x["A"], B, C, x["D"], None, x["delta_bias"], True, backend=backend)
        y = y.reshape(b, K, d, L)
        return torch.stack([y[:, k][..., inverse[k]] for k in range(K)]).sum(0)

    return spelled_out


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
def median_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median CUDA-event time (the suite's one timing loop, pamm.engine.profile.timed_runs)."""
    from pamm.engine.profile import timed_runs

    return statistics.median(timed_runs(fn, torch.device("cuda", torch.cuda.current_device()), warmup, iters))


def measure(call: Callable[[dict], torch.Tensor], inputs: dict, warmup: int, iters: int,
            kernel_table: tuple[Path, str] | None = None) -> Row:
    row = Row(call="", shape="", spec={}, backend="")
    leaves = {k: v.detach().requires_grad_(k in GRAD_NAMES) for k, v in inputs.items()}
    with torch.no_grad():
        out = call(leaves)
    # the same output gradient for every backend (errors against cuda compare like with like)
    grad_out = torch.randn(out.shape, generator=torch.Generator(out.device).manual_seed(1234), device=out.device,
                           dtype=out.dtype)

    def forward():
        with torch.no_grad():
            call(leaves)

    def forward_backward():
        y = call(leaves)
        return torch.autograd.grad(y, [leaves[k] for k in GRAD_NAMES], grad_out)

    row.fwd_ms = median_ms(forward, warmup, iters)
    row.fwd_bwd_ms = median_ms(forward_backward, warmup, iters)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    grads = forward_backward()
    torch.cuda.synchronize()
    row.peak_mib = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    row.outputs = (out.float(), tuple(g.float() for g in grads))
    if kernel_table is not None:  # (directory, name)
        from pamm.engine.profile import write_kernel_table

        try:
            write_kernel_table(*kernel_table, forward_backward, out.device)
        except Exception as exc:  # noqa: BLE001  (the row's timings are measured: keep them)
            print(f"[bench] no kernel table for {kernel_table[1]}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return row


def compare(row: Row, reference: Row | None) -> None:
    if reference is None or not row.outputs or not reference.outputs or row is reference:
        return
    out, grads = row.outputs
    ref_out, ref_grads = reference.outputs
    row.out_err = (out - ref_out).abs().max().item()
    row.grad_err = max(((g - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
                       for g, r in zip(grads, ref_grads))


def run_case(call_name: str, shape: str, spec: dict, backends: list[str], make_call, inputs: dict,
             args: argparse.Namespace) -> list[Row]:
    rows = []
    for backend in backends:
        table = None if args.kernel_tables is None else (args.kernel_tables, f"{call_name}_{shape}_{backend}")
        try:
            row = measure(make_call(backend), inputs, args.warmup, args.iters, table)
        except torch.cuda.OutOfMemoryError:
            row = Row(call="", shape="", spec={}, backend="", status="out of memory")
        except Exception as exc:  # noqa: BLE001  (a missing backend is a row, not a crash)
            row = Row(call="", shape="", spec={}, backend="", status=f"failed: {type(exc).__name__}: {exc}"[:200])
        row.call, row.shape, row.spec, row.backend = call_name, shape, spec, backend
        rows.append(row)
        torch.cuda.empty_cache()
    reference = next((r for r in rows if r.backend == "cuda" and r.status == "ok"), None)
    for row in rows:
        compare(row, reference)
    for row in rows:  # only now: the reference's outputs are needed by every comparison above
        row.outputs = ()
    return rows


def as_record(row: Row, rows: list[Row]) -> dict:
    cuda = next((r for r in rows if r.call == row.call and r.shape == row.shape and r.backend == "cuda"
                 and r.status == "ok"), None)

    def ratio(mine, theirs):
        return None if mine is None or not theirs else mine / theirs

    spec = row.spec
    return {
        "call": row.call, "shape": row.shape, "b": spec["b"], "d": spec["d"], "l": spec["l"], "n": spec["n"],
        "dtype": str(spec["dtype"]).replace("torch.", ""), "backend": row.backend,
        "fwd_ms": row.fwd_ms, "fwd_bwd_ms": row.fwd_bwd_ms, "peak_mib": row.peak_mib,
        "out_max_abs_err_vs_cuda": row.out_err, "grad_max_rel_err_vs_cuda": row.grad_err,
        "fwd_ratio_vs_cuda": ratio(row.fwd_ms, cuda and cuda.fwd_ms),
        "fwd_bwd_ratio_vs_cuda": ratio(row.fwd_bwd_ms, cuda and cuda.fwd_bwd_ms),
        "status": row.status,
    }


def print_table(records: list[dict]) -> None:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}".rstrip("0").rstrip(".")
        return str(v)

    cols = ["call", "shape", "dtype", "backend", "fwd_ms", "fwd_bwd_ms", "peak_mib", "out_max_abs_err_vs_cuda",
            "grad_max_rel_err_vs_cuda", "fwd_ratio_vs_cuda", "fwd_bwd_ratio_vs_cuda", "status"]
    table = [cols] + [[fmt(r[c]) for c in cols] for r in records]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))


def print_autotuned_configs() -> None:
    """What the autotuner chose per problem key (block, warps and, for the backward, the variant)."""
    from pamm.ops.triton.launch import kernel_table

    table = kernel_table()
    for kind, tuned in table.tuned.items():
        for key, config in sorted(getattr(tuned, "cache", {}).items(), key=str):
            print(f"autotuned {kind}: key={key} -> {config}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton_scan: needs a CUDA GPU (none found); nothing measured.")
        return 0
    from pamm.ops.triton import triton_available

    ok, why = triton_available()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {why}")
    device = torch.device("cuda")
    rows: list[Row] = []
    for shape in args.shapes:
        spec = SHAPES[shape]
        chunked = [f"triton@{c}" for c in args.triton_chunks] + [f"triton@bwd={v}" for v in args.triton_bwd_variants]
        if not spec.get("multi_only") and not args.no_single:
            inputs = make_inputs(spec, args.seed, device)
            rows += run_case("single", shape, spec, list(args.backends) + chunked, single_call, inputs, args)
            del inputs
        if spec["grid"] is not None and not args.no_multi:
            x, perm, inverse = multi_inputs(spec, args.seed, device, args.scan_kind)
            bc_orders = [f"triton@bc={o}" for o in args.triton_bc_orders]
            rows += run_case("multi_direction", shape, spec, ["cuda", "triton", "triton@multi=gather", *chunked,
                                                              *bc_orders],
                             lambda backend: multi_call(backend, perm, inverse), x, args)
            del x
        torch.cuda.empty_cache()
    records = [as_record(r, rows) for r in rows]
    print_table(records)
    print_autotuned_configs()
    if args.csv:
        handle = sys.stdout if args.csv == "-" else open(args.csv, "w", newline="")
        try:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(records)
        finally:
            if handle is not sys.stdout:
                handle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
