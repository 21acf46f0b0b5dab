"""Compile the Triton scan kernels for a GPU architecture on a machine without a GPU, and report what
each autotuning candidate costs in registers, spills, shared memory, occupancy and compile time.

Why: GPU time is scarce here (minutes per lease, some sessions none), and the Triton interpreter that
checks the kernels' numbers on CPU never compiles them. Triton's compiler and ptxas run on any x86 CPU,
so this script builds the exact kernels the backend would launch at the benchmark shapes (S1-S4 and P8 of
bench_triton_scan.py, single and fused multi-direction calls, forward and backward, every backward
kind), with the exact constexprs and the autotuner's candidate configs after its own pruning, for
``--arch`` (default sm_90, the H100/H200), without a device:

  * a kernel that does not compile, or a config that spills registers to local memory (``spill_bytes``:
    ptxas's spill stores, from the log of the compile itself), shows here before a GPU session is spent on it;
  * ``warps_per_sm`` is the occupancy the registers and shared memory allow (Hopper limits: 64K
    registers, 64 warps, 32 blocks and 227 KB of shared memory per SM), an estimate, not a timing;
  * ``compile_s`` summed over a launch's candidates is what autotuning that launch costs in compiles
    on one core, before any benchmarking (the GPU box's autotuner compiles them one after another);
  * ``sass_instr`` and ``sass_loops`` (the machine code's size, and of each loop body, outer loops
    including inner ones) are a static proxy for the work per token of the sequential kernels: their
    loops run once per token or tile, so instructions added to a loop body are paid l times.

How: the calls run on ``meta`` tensors (no memory, no arithmetic) with the backend's kernel table
swapped for recorders, so the shapes, plans and arguments are the backend's own; each recorded launch
is then compiled with Triton's ``warmup`` against a stand-in driver that names the target, and the
cubin's resource usage is read with the ``cuobjdump`` that ships with Triton. Register counts come
from this machine's Triton, which may differ from the GPU box's.

    python benchmarks/triton_compile_report.py                      # S1-S4 and P8, all kernels, sm_90
    python benchmarks/triton_compile_report.py --shapes S4 --bwd token --csv s4.csv
    python benchmarks/triton_compile_report.py --preset smoke       # tiny shapes, one config each (tests)
    python benchmarks/triton_compile_report.py --prewarm --jobs 16  # on the GPU box, before autotuning

``--prewarm`` fills Triton's own on-disk cache instead of a throw-away one: the autotuner on the GPU box
compiles its candidates one after another (minutes of a short lease), while the cache lookup it makes
first is keyed only by the kernel source, its specialisation, the target and the compile options, all
of which the recorded launches reproduce. Compiled in ``--jobs`` processes beforehand, the autotuner
then only loads them.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pamm.ops.settings import TRITON_BWD_KINDS as BWD_KINDS  # noqa: E402  (imports no kernel)

FIELDS = ["call", "shape", "bwd_kind", "kernel", "pass", "block_d", "num_warps", "prefetch", "split", "sub",
          "chunk", "block_n", "maxnreg", "regs", "spill_bytes", "stack_bytes", "shared_bytes", "warps_per_sm",
          "sass_instr", "sass_loops", "compile_s", "status"]
# Per-SM limits of the architectures this report knows: registers, warps, blocks, shared bytes per block.
SM_LIMITS = {80: (65536, 64, 32, 166912), 86: (65536, 48, 16, 101376), 89: (65536, 48, 24, 101376),
             90: (65536, 64, 32, 232448)}
SMOKE_SHAPES = {
    "T1": dict(b=1, d=8, l=300, n=16, dtype=torch.float32, grid=None),
    "T2": dict(b=4, d=16, l=64, n=4, dtype=torch.bfloat16, grid=(8, 8)),
    "T3": dict(b=2, d=16, l=64, n=4, dtype=torch.float32, grid=(8, 8), groups=2, multi_only=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SM_LIMITS),
                        help="compute capability to compile for (90 = H100/H200)")
    parser.add_argument("--sm-count", type=int, default=132, help="multiprocessors the plan assumes (H100/H200: 132)")
    parser.add_argument("--shapes", nargs="+", help="benchmark shapes (default: all of bench_triton_scan.py's)")
    parser.add_argument("--calls", nargs="+", default=["single", "multi"], choices=["single", "multi"],
                        help="the plain scan, and the fused multi-direction call (shapes with a grid)")
    parser.add_argument("--bwd", nargs="+", default=list(BWD_KINDS), choices=BWD_KINDS,
                        help="backward kernels to build (token: scan_bwd_kernel; tile: triton_bwd: tile)")
    parser.add_argument("--bc-orders", nargs="+", default=["scan", "token"], choices=["scan", "token"],
                        help="the fused call's B/C layouts to build (triton_bc_order; tscan times both)")
    parser.add_argument("--configs", default="pruned", choices=["pruned", "all", "one"],
                        help="per launch: the autotuner's candidates after its pruning, every config, or the "
                             "single config it keeps with autotuning off")
    parser.add_argument("--preset", choices=["smoke"], help="smoke: two tiny shapes, one config per launch")
    parser.add_argument("--csv", metavar="PATH", help="write the table as CSV")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use Triton's normal cache (default: a fresh one, so compile_s is a real compile)")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes (each compile is one core)")
    parser.add_argument("--prewarm", action="store_true",
                        help="fill Triton's normal cache for the autotuner (implies --keep-cache; no ptxas log, so "
                             "spill_bytes, sass_instr and sass_loops stay empty)")
    args = parser.parse_args(argv)
    if args.preset == "smoke":
        args.configs = "one"
    if args.prewarm:
        args.keep_cache = True
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


# ---------------------------------------------------------------------------------------------
# A driver without a device
# ---------------------------------------------------------------------------------------------
class OfflineCudaDriver:
    """Enough of Triton's CUDA driver for compiling: a fixed target, device 0, stream 0."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target


# ---------------------------------------------------------------------------------------------
# Recording the backend's launches
# ---------------------------------------------------------------------------------------------
@dataclass
class Launch:
    """One kernel launch as the backend would make it: the kernel, its arguments, its candidates."""

    kernel: str
    fn: Any  # the triton.JITFunction
    args: dict
    configs: list  # [(constexpr dict, num_warps, num_stages, maxnreg or None)]
    bwd_kind: str = ""  # the backward kind of the call that made it


class _Recorder:
    """Stands where a kernel (or its autotuner) stands in the backend's table; ``rec[grid](...)`` records."""

    def __init__(self, name: str, fn, sink: list, candidates=None) -> None:
        self.name, self.fn, self.sink, self.candidates = name, fn, sink, candidates

    def __getitem__(self, grid):
        def launch(*positional, **named):
            args = dict(zip(self.fn.arg_names, positional), **named)
            num_warps = args.pop("num_warps", 4)
            num_stages = args.pop("num_stages", 3)
            configs = self.candidates(args) if self.candidates else [({}, num_warps, num_stages, None)]
            self.sink.append(Launch(self.name, self.fn, args, configs))

        return launch


def _candidates(kind: str, mode: str):
    """The autotuner's configs for a launch's arguments: pruned as it prunes them, all, or the one it keeps
    with autotuning off."""
    from pamm.ops.triton import autotune

    configs, prune = autotune.CANDIDATES[kind]

    def pick(args: dict) -> list:
        kept = configs() if mode == "all" else prune(configs(), args, autotune=mode != "one")
        return [(dict(c.kwargs), c.num_warps, c.num_stages, getattr(c, "maxnreg", None)) for c in kept]

    return pick


@contextlib.contextmanager
def recording(sm_count: int, config_mode: str):
    """Swap the backend's kernel table for recorders (and let it take meta tensors on a device with
    ``sm_count`` multiprocessors); yields the list that collects the launches."""
    from pamm.ops.triton import availability, launch

    real = launch.kernel_table()
    if real.interpreted:
        raise SystemExit("TRITON_INTERPRET is set: unset it, the report compiles the kernels")
    sink: list[Launch] = []
    names = {kind: fn.__name__ if hasattr(fn, "__name__") else fn.fn.__name__ for kind, fn in real.raw.items()}
    table = launch.KernelTable(
        interpreted=False, raw={kind: _Recorder(names[kind], fn, sink) for kind, fn in real.raw.items()},
        tuned={kind: _Recorder(names[kind], real.raw[kind], sink, _candidates(kind, config_mode)) for kind in real.tuned})
    saved = (launch.kernel_table, availability.check_device, availability.sm_count)
    launch.kernel_table = lambda: table
    availability.check_device = lambda *t: None
    availability.sm_count = lambda device: sm_count
    try:
        yield sink
    finally:
        launch.kernel_table, availability.check_device, availability.sm_count = saved


def record_call(call: str, spec: dict, bwd_kind: str, sm_count: int, config_mode: str,
                bc_order: str = "scan") -> list[Launch]:
    """Run one benchmark call forward and backward on meta tensors; return the launches it made."""
    import bench_triton_scan as bench

    parts = ([f"bwd={bwd_kind}"] if bwd_kind == "tile" else []) + ([f"bc={bc_order}"] if call == "multi" else [])
    backend = "triton@" + ",".join(parts) if parts else "triton"
    if call == "single":
        x, fn = _meta_inputs(bench.make_inputs, spec), bench.single_call(backend)
    else:
        x, perm, inverse = _meta_multi(bench, spec)
        fn = bench.multi_call(backend, perm, inverse)
    for name in bench.GRAD_NAMES:
        x[name].requires_grad_(True)
    with recording(sm_count, config_mode) as sink:
        out = fn(x)
        out.backward(torch.ones_like(out))
    for launch in sink:
        launch.bwd_kind = bwd_kind
    return sink


def _meta_inputs(make_inputs, spec: dict) -> dict:
    """The benchmark's inputs for ``spec``, built on CPU at batch 1 (cheap) and re-made on meta at the full batch."""
    small = make_inputs({**spec, "b": 1}, 0, torch.device("cpu"))
    return {k: torch.empty((spec["b"], *v.shape[1:]) if v.dim() == 3 else v.shape, dtype=v.dtype, device="meta")
            for k, v in small.items()}


def _meta_multi(bench, spec: dict):
    """The benchmark's multi-direction inputs (its ``multi_inputs``, built on CPU for one batch element) on
    meta at the full batch."""
    batch = spec["b"] if spec.get("groups") else spec["b"] // bench.DIRECTIONS
    small, perm, inverse = bench.multi_inputs({**spec, "b": spec["b"] // batch}, 0, torch.device("cpu"), "raster")
    x = {k: torch.empty((batch, *v.shape[1:]) if v.dim() >= 3 else v.shape, dtype=v.dtype, device="meta")
         for k, v in small.items()}
    return x, perm.to("meta"), inverse.to("meta")


# ---------------------------------------------------------------------------------------------
# Compiling
# ---------------------------------------------------------------------------------------------
def _mock_args(launch: Launch) -> dict:
    from triton.runtime.jit import MockTensor

    return {k: MockTensor(v.dtype) if isinstance(v, torch.Tensor) else v for k, v in launch.args.items()}


_SPILLS = re.compile(r"(\d+) bytes spill stores")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers per thread, stack + local bytes per thread, static shared bytes) of a cubin's kernel, from
    cuobjdump. Spills live in the stack frame, beside call frames of a few bytes."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        text = subprocess.run([str(tool), "-res-usage", fh.name], capture_output=True, text=True, check=True).stdout
    match = _RESOURCES.search(text)
    if match is None:
        raise RuntimeError(f"no resource line in cuobjdump's output:\n{text}")
    regs, stack, shared, local = (int(g) for g in match.groups())
    return regs, stack + local, shared


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_SASS_BRANCH = re.compile(r"\bBRA\b.*?(\.L_x_\d+)")


def sass_loops(sass: str) -> tuple[int, list[int]]:
    """(instructions, loop body sizes) of ``nvdisasm -c`` output: a loop is a branch back to an earlier
    label; its body counts the instructions from that label to the branch (outer loops include inner ones).
    The one-instruction self-branch after EXIT is not a loop."""
    label_at: dict[str, int] = {}
    pending: list[str] = []
    count, bodies = 0, []
    for line in sass.splitlines():
        text = line.strip()
        if text.startswith(".L_x_") and text.endswith(":"):
            pending.append(text[:-1])
            continue
        match = _SASS_LINE.search(text)
        if match is None:
            continue
        address, instruction = int(match.group(1), 16), match.group(2)
        count += 1
        for name in pending:
            label_at[name] = address
        pending = []
        branch = _SASS_BRANCH.search(instruction)
        if branch and branch.group(1) in label_at and label_at[branch.group(1)] < address:
            bodies.append((address - label_at[branch.group(1)]) // 16 + 1)
    return count, sorted(bodies)


def _disassemble(cubin: bytes) -> str:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        return subprocess.run([str(tool), "-c", fh.name], capture_output=True, text=True, check=True).stdout


def warps_per_sm(arch: int, regs: int, shared: int, num_warps: int) -> int:
    """Resident warps per SM that registers (allocated per warp in 256-register units), shared memory and
    the warp and block limits allow."""
    reg_file, max_warps, max_blocks, max_shared = SM_LIMITS[arch]
    regs_per_warp = -(-regs * 32 // 256) * 256
    blocks = min(max_blocks, max_warps // num_warps, reg_file // max(1, regs_per_warp * num_warps))
    if shared:
        blocks = min(blocks, max_shared // shared)
    return blocks * num_warps


def compile_config(launch: Launch, config: tuple, arch: int, labels: dict) -> dict:
    """Compile one candidate config of one launch; its row."""
    constexprs, num_warps, num_stages, maxnreg = config
    row = {**labels, "kernel": launch.kernel, "pass": "local" if launch.args.get("LOCAL_PASS") else "main",
           "block_d": constexprs.get("BLOCK_D", launch.args.get("BLOCK_D")), "num_warps": num_warps,
           "prefetch": constexprs.get("PREFETCH", launch.args.get("PREFETCH", "")),
           "split": constexprs.get("SPLIT", launch.args.get("SPLIT", "")),
           "sub": constexprs.get("SUB", launch.args.get("SUB", "")),
           "chunk": launch.args.get("CHUNK"), "block_n": launch.args.get("BLOCK_N"), "maxnreg": maxnreg or ""}
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # $TRITON_DUMP_PTXAS_LOG: Triton prints ptxas's -v report
            compiled = launch.fn.warmup(**_mock_args(launch), **constexprs, num_warps=num_warps,
                                        num_stages=num_stages, maxnreg=maxnreg, grid=(1,))
        row["compile_s"] = round(time.perf_counter() - start, 2)
        regs, stack, shared = resource_usage(compiled.asm["cubin"])
        shared = max(shared, int(getattr(compiled.metadata, "shared", 0) or 0))
        spills = _SPILLS.search(log.getvalue())
        spill = int(spills.group(1)) if spills else None
        row.update(regs=regs, spill_bytes="" if spill is None else spill, stack_bytes=stack, shared_bytes=shared,
                   warps_per_sm=warps_per_sm(arch, regs, shared, num_warps), status="spills" if spill else "ok")
        if _WITH_SASS:
            try:
                instructions, bodies = sass_loops(_disassemble(compiled.asm["cubin"]))
                row.update(sass_instr=instructions, sass_loops="/".join(str(b) for b in bodies))
            except (OSError, subprocess.CalledProcessError) as exc:  # the kernel compiled: keep its row
                print(f"no disassembly of {launch.kernel}: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001  (a failing config is a row, the report goes on)
        row["compile_s"] = round(time.perf_counter() - start, 2)
        row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return row


# The launches to compile, set before the worker processes fork (they inherit it instead of unpickling kernels).
_PENDING: list[tuple[dict, Launch]] = []
_WITH_SASS = True  # disassemble each cubin (off for --prewarm: only the cache matters there)


def _compile_task(task: tuple[int, int, int]) -> dict:
    index, config_index, arch = task
    labels, launch = _PENDING[index]
    return compile_config(launch, launch.configs[config_index], arch, labels)


def compile_all(pending: list[tuple[dict, Launch]], arch: int, jobs: int):
    """Compile every candidate of every launch, in ``jobs`` forked processes; yields (labels, launch, rows)
    per launch, in order, as each completes."""
    import multiprocessing

    _PENDING[:] = pending
    tasks = [(i, c, arch) for i, (_, launch) in enumerate(pending) for c in range(len(launch.configs))]
    pool = multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 else None
    try:
        results = pool.imap(_compile_task, tasks) if pool else map(_compile_task, tasks)
        for labels, launch in pending:
            yield labels, launch, [next(results) for _ in launch.configs]
    finally:
        if pool:
            pool.close()
            pool.join()


def _dedupe(launches: list[Launch]) -> list[Launch]:
    """Launches whose kernel and constexpr arguments match compile to the same binary: keep the first."""
    seen, kept = set(), []
    for launch in launches:
        key = (launch.kernel, tuple(sorted((k, v) for k, v in launch.args.items()
                                           if isinstance(v, (bool, int)) and k.isupper())))
        if key not in seen:
            seen.add(key)
            kept.append(launch)
    return kept


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.keep_cache:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="pamm_triton_report_")
    os.environ.pop("TRITON_INTERPRET", None)
    if not args.prewarm:  # the autotuner's cache keys must not depend on it
        os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    global _WITH_SASS
    _WITH_SASS = not args.prewarm
    import bench_triton_scan as bench
    from triton.runtime.driver import driver

    driver.set_active(OfflineCudaDriver(args.arch))
    shapes = SMOKE_SHAPES if args.preset == "smoke" else bench.SHAPES
    names = args.shapes or list(shapes)
    unknown = sorted(set(names) - set(shapes))
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; known: {sorted(shapes)}")
    pending: list[tuple[dict, Launch]] = []
    for name in names:
        spec = shapes[name]
        for call in args.calls:
            if (call == "multi" and not spec.get("grid")) or (call == "single" and spec.get("multi_only")):
                continue
            orders = args.bc_orders if call == "multi" else ["scan"]  # single calls have no B/C order
            launches = [launch for kind in args.bwd for order in orders
                        for launch in record_call(call, spec, kind, args.sm_count, args.configs, order)]
            pending += [({"call": call, "shape": name, "bwd_kind": launch.bwd_kind}, launch)
                        for launch in _dedupe(launches)]
    rows: list[dict] = []
    wall = time.perf_counter()
    for labels, launch, new in compile_all(pending, args.arch, args.jobs):
        rows += new
        worst = max((r.get("spill_bytes") or 0 for r in new), default=0)
        print(f"[{labels['shape']} {labels['call']}] {launch.kernel:22s} pass={new[0]['pass']:5s}"
              f" chunk={launch.args.get('CHUNK')} configs={len(new)} compile={sum(r['compile_s'] for r in new):.1f}s"
              f" regs={sorted({r.get('regs') for r in new if r.get('regs')})} spill_max={worst}B"
              f" failed={sum(r['status'].startswith('failed') for r in new)}", flush=True)
    wall = time.perf_counter() - wall
    if args.csv:
        path = Path(args.csv)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows({k: row.get(k, "") for k in FIELDS} for row in rows)
        tmp.replace(path)
    failed = [r for r in rows if r["status"].startswith("failed")]
    for row in failed:
        print(f"FAILED {row['shape']} {row['call']} {row['kernel']} BLOCK_D={row['block_d']} warps={row['num_warps']}:"
              f" {row['status']}", file=sys.stderr)
    print(f"{len(rows)} configs compiled for sm_{args.arch}: {len(failed)} failed, "
          f"{sum(r['status'] == 'spills' for r in rows)} spill, {sum(r['compile_s'] for r in rows):.0f} s of compiling "
          f"in {wall:.0f} s on {args.jobs} process(es)" + (f"; cache {os.environ.get('TRITON_CACHE_DIR', '~/.triton/cache')}"
                                                           if args.keep_cache else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
