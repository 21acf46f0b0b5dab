"""Benchmark PAMM's B and C parameter experts run fused against one convolution at a time.

Why: in PAMM's NYUD training step (batch 8, bf16, H100) convolutions are 46 % of the GPU time,
mostly the B/C experts' 9x9 convolutions (results/gpu/2026-11-23_h100), which are narrow: 16 output
channels (general projection), 60 (the pool's down-projections), 4 per task (task expert). Both
experts read the same input, so :func:`pamm.models.experts.run_parameter_experts` runs their
same-input convolutions as one wide convolution (and one grouped convolution). This script times
that against :func:`pamm.models.experts.expert_reference` (each convolution on its own), forward and
forward+backward, at the paper's stage shapes, with the largest output difference and the relative
norm of the difference of all gradients (input and parameters, concatenated).

Presets (one decoder stage, all tasks at once):
  nyud_released   4 tasks, d_inner 1536, 9x9 experts, 28x36 tokens (448x576 / 16), batch 8
  nyud_described  the same with 3x3 experts
  pascal_released 5 tasks, d_inner 1536, 9x9 experts, 32x32 tokens (512x512 / 16), batch 8
  cpu             a CPU-sized stand-in: 4 tasks, d_inner 192, 9x9, 28x36, batch 1
  smoke           a few channels, to check that the script runs (the test suite does)

    python benchmarks/bench_experts.py --device cuda --dtype bf16 --out experts.csv
    python benchmarks/bench_experts.py --presets cpu --threads 2

Times are medians (CUDA events on GPU, perf_counter on CPU); this is a script, not a test.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pamm.engine.build import configure_cudnn  # noqa: E402
from pamm.engine.profile import timed_runs  # noqa: E402
from pamm.models.experts import ParameterExpert, expert_reference, run_parameter_experts  # noqa: E402

PRESETS = {
    "nyud_released": dict(tasks=4, channels=1536, kernel=9, grid=(28, 36), batch=8),
    "nyud_described": dict(tasks=4, channels=1536, kernel=3, grid=(28, 36), batch=8),
    "pascal_released": dict(tasks=5, channels=1536, kernel=9, grid=(32, 32), batch=8),
    "cpu": dict(tasks=4, channels=192, kernel=9, grid=(28, 36), batch=1),
    "smoke": dict(tasks=2, channels=8, kernel=3, grid=(6, 8), batch=1),  # for tests/test_bench_experts.py
}
FIELDS = ["preset", "device", "dtype", "batch", "tasks", "channels", "kernel", "grid", "cudnn_benchmark", "path",
          "fwd_ms", "fwd_bwd_ms", "peak_mib", "speedup_fwd_bwd", "out_max_abs_diff", "grad_rel_norm_diff"]


def build_experts(preset: dict, device: torch.device) -> list[ParameterExpert]:
    """PAMM's B and C experts at the paper's options: d_state 16, 15 experts of rank 4, top-9 routing."""
    torch.manual_seed(0)
    return [ParameterExpert(preset["tasks"], preset["channels"], 16, preset["kernel"], 15, 4, top_k=9,
                            router_noise=False).to(device).train() for _ in range(2)]


def run_case(name: str, preset: dict, device: torch.device, dtype: torch.dtype | None, warmup: int,
             repeats: int) -> list[dict]:
    experts = build_experts(preset, device)
    h, w = preset["grid"]
    x = torch.randn(preset["batch"], preset["tasks"] * preset["channels"], h, w, device=device, requires_grad=True)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    paths = {
        "fused": lambda: run_parameter_experts(experts, x),
        "one_conv_at_a_time": lambda: [expert_reference(e, x) for e in experts],
    }
    grad_seed = torch.Generator(device=device).manual_seed(1)
    out_grads = [torch.randn(preset["batch"], preset["tasks"] * 16, h, w, device=device, generator=grad_seed)
                 for _ in experts]
    results, rows = {}, []
    for path, forward in paths.items():
        def fwd():
            with torch.no_grad(), autocast:
                return forward()

        def fwd_bwd():
            for p in [x, *(q for e in experts for q in e.parameters())]:
                p.grad = None
            with autocast:
                outputs = forward()
            torch.autograd.backward([y.float() for y in outputs], out_grads)
            return outputs

        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        fwd_ms = statistics.median(timed_runs(fwd, device, warmup, repeats))
        bwd_ms = statistics.median(timed_runs(fwd_bwd, device, warmup, repeats))
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
        outputs = fwd_bwd()
        grads = [x.grad.clone()] + [p.grad.clone() for e in experts for p in e.parameters()]
        results[path] = ([y.detach().float() for y in outputs], grads)
        rows.append(dict(preset=name, device=device.type, dtype=str(dtype or torch.float32).replace("torch.", ""),
                         batch=preset["batch"], tasks=preset["tasks"], channels=preset["channels"],
                         kernel=preset["kernel"], grid=f"{h}x{w}", path=path, fwd_ms=round(fwd_ms, 3),
                         fwd_bwd_ms=round(bwd_ms, 3), peak_mib=round(peak, 1)))
    (out_f, grads_f), (out_r, grads_r) = results["fused"], results["one_conv_at_a_time"]
    out_diff = max((a - b).abs().max().item() for a, b in zip(out_f, out_r))
    # all gradients together: the biases ahead of a train-mode BatchNorm have ~0 gradient (rounding noise)
    flat_f, flat_r = torch.cat([g.flatten().float() for g in grads_f]), torch.cat([g.flatten().float() for g in grads_r])
    grad_diff = ((flat_f - flat_r).norm() / flat_r.norm()).item()
    for row in rows:
        row.update(speedup_fwd_bwd=round(rows[1]["fwd_bwd_ms"] / row["fwd_bwd_ms"], 3),
                   out_max_abs_diff=f"{out_diff:.2e}", grad_rel_norm_diff=f"{grad_diff:.2e}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=None,
                        help="stage shapes (default: the three paper presets on CUDA, 'cpu' otherwise)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="autocast dtype (default: bf16 on CUDA, as the paper trains; fp32 on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="write the rows to this CSV too")
    parser.add_argument("--cudnn-benchmark", choices=["on", "off", "both"], default="both",
                        help="cuDNN's algorithm search (the trainer turns it on): time each path with it, without "
                             "it, or both (CUDA only; speedups compare the two paths at the same setting)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    presets = args.presets or (["nyud_released", "nyud_described", "pascal_released"] if device.type == "cuda" else ["cpu"])
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else None
    settings = {"on": [True], "off": [False], "both": [False, True]}[args.cudnn_benchmark]
    if device.type != "cuda":
        settings = [None]
    rows = []
    for benchmark in settings:
        if benchmark is not None:
            configure_cudnn(device, benchmark)
        for name in presets:
            new = run_case(name, PRESETS[name], device, dtype, args.warmup, args.repeats)
            for row in new:
                row["cudnn_benchmark"] = "" if benchmark is None else benchmark
                print(", ".join(f"{k}={row[k]}" for k in ("preset", "cudnn_benchmark", "path", "fwd_ms", "fwd_bwd_ms",
                                                            "peak_mib", "speedup_fwd_bwd", "out_max_abs_diff",
                                                            "grad_rel_norm_diff")), flush=True)
            rows += new
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
