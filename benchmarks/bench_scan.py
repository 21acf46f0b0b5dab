#!/usr/bin/env python
"""Benchmark the selective-scan backends: time, peak memory and error against a float64 reference.

Prints one row per (dtype, shape, backend): forward and forward+backward medians (ms), peak
memory, the max error against the float64 sequential reference, and the fwd+bwd speed-up over
the sequential loop ("ref"). fwd+bwd takes the gradients of u, delta, A, B, C and D.

Backends:
  ref        the sequential loop (pamm.ops.selective_scan_ref) with plain autograd
  torch      pamm.ops.selective_scan(backend="torch")
  cuda       pamm.ops.selective_scan(backend="cuda") (mamba-ssm kernel; in training it calls
             selective_scan_fn directly, untraced: see pamm/ops/selective_scan.py)
  mamba      mamba-ssm's selective_scan_fn called directly (to see what the op wrapper costs)
  blelloch   a Blelloch (up-sweep/down-sweep) parallel scan written here, with a reverse-scan backward
  mambapy    mambapy 1.2.0's pscan, if installed (not a project dependency)

Memory: on CUDA, torch.cuda.max_memory_allocated() during fwd+bwd minus what was allocated
before (inputs excluded). On CPU there is no allocator high-water mark, so the column is "n/a"
unless --cpu-memory is given: then every cell is re-run once in a fresh process whose resident
set size is sampled every ~0.5 ms, and the peak growth over the run is reported: an
approximation (sampling can miss short peaks; glibc may keep freed memory mapped).

Errors are measured on a probe (first batch element, at most 256 channels) for sequences no
longer than --ref-max-length: max |out − ref| / max|ref| and the same for the gradients.

Timings on a shared machine are noisy: use --repeats and read medians.

Examples:
  python benchmarks/bench_scan.py                          # CPU defaults, L = 256, 1024, 4096
  python benchmarks/bench_scan.py --device cuda --dtypes fp32,bf16 --csv scan.csv
  python benchmarks/bench_scan.py --shapes 4x64x1024x16 --backends torch,blelloch --repeats 15
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pamm.ops import selective_scan, selective_scan_ref  # noqa: E402
from pamm.ops.backends import mamba_ssm_status  # noqa: E402

CPU_SHAPES = "4x64x256x16,4x64x1024x16,4x64x4096x16"
GPU_SHAPES = "2x384x4800x16,16x1536x1008x16,20x2048x1024x64"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


# ---------------------------------------------------------------------------------------------
# A Blelloch parallel scan, for comparison (O(L) work, 2·log2(L) strided passes)
# ---------------------------------------------------------------------------------------------
def _blelloch_inplace(coef: torch.Tensor, values: torch.Tensor) -> None:
    """Inclusive scan h_t = coef_t·h_{t-1} + values_t over dim 1 of (R, L, M), L a power of two.

    Up-sweep builds block aggregates at positions 2s·k − 1; down-sweep completes the positions in
    between, both in place on strided views (coef is overwritten with partial products).
    """
    length = values.shape[1]
    stride = 1
    while stride < length:  # up-sweep
        v = values.view(values.shape[0], length // (2 * stride), 2 * stride, -1)
        c = coef.view(coef.shape[0], length // (2 * stride), 2 * stride, -1)
        v[:, :, -1].addcmul_(c[:, :, -1], v[:, :, stride - 1])
        c[:, :, -1].mul_(c[:, :, stride - 1])
        stride *= 2
    stride = length // 4
    while stride >= 1:  # down-sweep
        span = length - 2 * stride
        v = values[:, 2 * stride - 1 : length - 1].view(values.shape[0], span // (2 * stride), 2 * stride, -1)
        c = coef[:, 2 * stride - 1 : length - 1].view(coef.shape[0], span // (2 * stride), 2 * stride, -1)
        v[:, :, stride].addcmul_(c[:, :, stride], v[:, :, 0])
        c[:, :, stride].mul_(c[:, :, 0])
        stride //= 2


class _BlellochScan(torch.autograd.Function):
    """h = scan(a, x) with a reverse Blelloch scan as backward: g_t = dh_t + a_{t+1}·g_{t+1}."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rows, length, width = x.shape
        padded = 1 << max(1, math.ceil(math.log2(max(length, 2))))
        coef = a.new_ones(rows, padded, width)
        coef[:, :length] = a
        h = x.new_zeros(rows, padded, width)
        h[:, :length] = x
        _blelloch_inplace(coef, h)
        h = h[:, :length]
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        a, h = ctx.saved_tensors
        rows, length, width = h.shape
        padded = 1 << max(1, math.ceil(math.log2(max(length, 2))))
        # Flipped in time the recurrence reads g'_s = dh'_s + a_{L-s}·g'_{s-1}: coefficients
        # [0, a_{L-1}, ..., a_1], padded with ones.
        coef = torch.cat([a.new_zeros(rows, 1, width), a[:, 1:].flip(1), a.new_ones(rows, padded - length, width)], 1)
        g = grad_h.new_zeros(rows, padded, width)
        g[:, :length] = grad_h.flip(1)
        _blelloch_inplace(coef, g)
        g = g[:, :length].flip(1)
        h_prev = torch.cat([h.new_zeros(rows, 1, width), h[:, :-1]], 1)
        return g * h_prev, g


def _selective_scan_with(scan: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """A selective scan (same semantics as pamm.ops.selective_scan, 3-D B/C) around a scan of
    (b, l, d·n) time-major tensors; everything else is plain autograd."""

    def run(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, channels, length = u.shape
        d_state = A.shape[1]
        dt = delta.to(dtype) + (0 if delta_bias is None else delta_bias.to(dtype)[:, None])
        dt = F.softplus(dt) if delta_softplus else dt
        dt_tm = dt.transpose(1, 2)  # (b, l, d)
        decay = torch.exp(dt_tm.unsqueeze(-1) * A.to(dtype))  # (b, l, d, n)
        x = (dt_tm * u.to(dtype).transpose(1, 2)).unsqueeze(-1) * B.to(dtype).transpose(1, 2).unsqueeze(2)
        h = scan(decay.reshape(batch, length, -1), x.reshape(batch, length, -1)).view(batch, length, channels, d_state)
        y = (h @ C.to(dtype).transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        if D is not None:
            y = y + u.to(dtype) * D.to(dtype)[:, None]
        return y.to(u.dtype)

    return run


def _mambapy_scan():
    try:
        from mambapy.pscan import pscan
    except Exception:  # noqa: BLE001
        return None
    return lambda a, x: pscan(a.unsqueeze(-1), x.unsqueeze(-1)).squeeze(-1)


def make_backends(device: str) -> dict[str, Callable | None]:
    mamba = mamba_ssm_status() if device == "cuda" else {"available": False}
    mambapy = _mambapy_scan()
    return {
        "ref": lambda *a, **k: selective_scan_ref(*a, **k),
        "torch": lambda *a, **k: selective_scan(*a, **k, backend="torch"),
        "cuda": (lambda *a, **k: selective_scan(*a, **k, backend="cuda")) if mamba["available"] else None,
        "mamba": (
            (lambda u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True: mamba["fn"](
                u, delta, A, B.to(u.dtype), C.to(u.dtype), D, None, delta_bias, delta_softplus
            ))
            if mamba["available"]
            else None
        ),
        "blelloch": _selective_scan_with(_BlellochScan.apply),
        "mambapy": _selective_scan_with(mambapy) if mambapy is not None else None,
    }


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be BxDxLxN")
    return tuple(parts)  # type: ignore[return-value]


def make_inputs(shape, dtype, device, seed=0):
    """Inputs like a Mamba layer's: u, Δ, B, C in ``dtype``; A, D, delta_bias in fp32 (mamba-ssm's convention)."""
    batch, channels, length, d_state = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=gen) * scale).to(device=device, dtype=dt)

    return {
        "u": rand(batch, channels, length),
        "delta": rand(batch, channels, length, scale=0.5),
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(channels, 1).to(device),  # S4D-real init
        "B": rand(batch, d_state, length),
        "C": rand(batch, d_state, length),
        "D": torch.ones(channels, device=device),
        "delta_bias": rand(channels, scale=0.5, dt=torch.float32),
    }


GRAD_KEYS = ("u", "delta", "A", "B", "C", "D")


def run_once(fn, inputs, backward: bool):
    leaves = {k: v.detach().requires_grad_(k in GRAD_KEYS) for k, v in inputs.items()}
    out = fn(**leaves, delta_softplus=True)
    if backward:
        grads = torch.autograd.grad(out, [leaves[k] for k in GRAD_KEYS], torch.ones_like(out))
        return out, grads
    return out, None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, inputs, backward: bool, repeats: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        run_once(fn, inputs, backward)
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run_once(fn, inputs, backward)
        sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def peak_memory_mb(fn, inputs, device: str) -> str:
    if device != "cuda":
        return "n/a"
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run_once(fn, inputs, True)
    sync(device)
    return f"{(torch.cuda.max_memory_allocated() - before) / 2**20:.0f}"


def probe(inputs, channels_cap=256):
    """First batch element, at most ``channels_cap`` channels: what the float64 reference checks."""
    channels = min(inputs["u"].shape[1], channels_cap)
    out = {}
    for key, value in inputs.items():
        if key in ("u", "delta"):
            out[key] = value[:1, :channels]
        elif key in ("B", "C"):
            out[key] = value[:1]
        else:
            out[key] = value[:channels]
    return out


def relative_errors(fn, inputs, reference) -> tuple[str, str]:
    try:
        out, grads = run_once(fn, inputs, True)
    except Exception as err:  # noqa: BLE001
        return f"error: {type(err).__name__}", ""
    ref_out, ref_grads = reference
    err_out = ((out.double() - ref_out).abs().max() / ref_out.abs().max().clamp_min(1e-30)).item()
    err_grad = max(
        ((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for g, r in zip(grads, ref_grads)
    )
    return f"{err_out:.1e}", f"{err_grad:.1e}"


def cpu_rss_growth_mb(backend: str, shape, dtype_name: str) -> str:
    """Re-run one fwd+bwd in a fresh process; report the growth of its peak RSS."""
    cmd = [sys.executable, __file__, "--_rss-probe", backend, "x".join(map(str, shape)), dtype_name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
        return done.stdout.strip().splitlines()[-1] if done.returncode == 0 else "failed"
    except Exception:  # noqa: BLE001
        return "failed"


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _rss_probe(backend: str, shape_text: str, dtype_name: str) -> None:
    """Run one fwd+bwd; print the peak growth of the resident set over the run, in MiB.

    The current RSS is sampled every ~0.5 ms from /proc/self/statm by a thread (torch ops release
    the GIL) after a tiny warm-up run has paged in the code; ru_maxrss cannot be used because
    import-time transients already set the process's high-water mark above what the run adds.
    """
    import threading

    fn = make_backends("cpu")[backend]
    run_once(fn, make_inputs((1, 8, 32, 4), DTYPES[dtype_name], "cpu"), True)  # page in code, thread pools
    inputs = make_inputs(parse_shape(shape_text), DTYPES[dtype_name], "cpu")
    before = _current_rss_bytes()
    if before is None:
        print("n/a")
        return
    peak = [before]
    running = [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _current_rss_bytes() or 0)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run_once(fn, inputs, True)
    running[0] = False
    sampler.join()
    print(f"{(peak[0] - before) / 2**20:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", help="comma list of ref,torch,cuda,mamba,blelloch,mambapy (default: all usable)")
    parser.add_argument("--shapes", help=f"comma list of BxDxLxN (default CPU {CPU_SHAPES}; CUDA {GPU_SHAPES})")
    parser.add_argument("--dtypes", help="comma list of fp32,bf16,fp16 (default: fp32 on CPU, fp32,bf16 on CUDA)")
    parser.add_argument("--repeats", type=int, help="timed runs per cell, median reported (default 7 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads on CPU (default: torch's choice)")
    parser.add_argument("--ref-max-length", type=int, default=1024, help="time the sequential loop and measure errors only up to this l (default 1024)")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs for the slow sequential loop (default 3)")
    parser.add_argument("--cpu-memory", action="store_true", help="measure CPU peak-RSS growth per cell in a fresh process (slow)")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    parser.add_argument("--_rss-probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._rss_probe:
        _rss_probe(*args._rss_probe)
        return 0

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [parse_shape(s) for s in (args.shapes or (GPU_SHAPES if device == "cuda" else CPU_SHAPES)).split(",")]
    dtype_names = (args.dtypes or ("fp32,bf16" if device == "cuda" else "fp32")).split(",")
    repeats = args.repeats or (20 if device == "cuda" else 7)
    available = make_backends(device)
    wanted = args.backends.split(",") if args.backends else [k for k, v in available.items() if v is not None]
    for name in wanted:
        if name not in available:
            parser.error(f"unknown backend {name!r}")
        if available[name] is None:
            print(f"# skipping {name}: not available on this machine")
    wanted = [name for name in wanted if available[name] is not None]

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"# device {gpu}, torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {repeats} (medians)")
    columns = ["dtype", "shape (b,d,l,n)", "backend", "fwd ms", "fwd+bwd ms", "peak MiB", "err out", "err grad", "x vs ref"]
    rows: list[list[str]] = []
    print(" | ".join(columns))
    for dtype_name in dtype_names:
        dtype = DTYPES[dtype_name]
        for shape in shapes:
            inputs = make_inputs(shape, dtype, device)
            length = shape[2]
            reference = None
            if length <= args.ref_max_length:
                ref_inputs = {k: v.double() for k, v in probe(inputs).items()}
                reference = run_once(selective_scan_ref, ref_inputs, True)
            ref_ms = None
            for name in wanted:
                fn = available[name]
                if name == "ref" and length > args.ref_max_length:
                    row = [dtype_name, "x".join(map(str, shape)), name, "skipped", "skipped", "", "", "", ""]
                    rows.append(row)
                    print(" | ".join(row), flush=True)
                    continue
                reps = args.ref_repeats if name == "ref" else repeats
                warm = min(args.warmup, 1) if name == "ref" else args.warmup
                try:
                    fwd = time_ms(fn, inputs, False, reps, warm, device)
                    both = time_ms(fn, inputs, True, reps, warm, device)
                    memory = peak_memory_mb(fn, inputs, device)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    row = [dtype_name, "x".join(map(str, shape)), name, "OOM", "OOM", "", "", "", ""]
                    rows.append(row)
                    print(" | ".join(row), flush=True)
                    continue
                if device == "cpu" and args.cpu_memory:
                    memory = cpu_rss_growth_mb(name, shape, dtype_name)
                err_out, err_grad = ("", "")
                if reference is not None:
                    err_out, err_grad = relative_errors(fn, probe(inputs), reference)
                if name == "ref":
                    ref_ms = both
                speedup = f"{ref_ms / both:.0f}x" if ref_ms else ""
                row = [dtype_name, "x".join(map(str, shape)), name, f"{fwd:.2f}", f"{both:.2f}", memory, err_out, err_grad, speedup]
                rows.append(row)
                print(" | ".join(row), flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["device"] + columns)
            writer.writerows([gpu] + row for row in rows)
        print(f"# wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
