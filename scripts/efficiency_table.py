#!/usr/bin/env python
"""The paper-scale efficiency table: params, GFLOPs, latency at batch 1 and 8, peak training memory.

Why: no released repo measures latency or memory, and PAMM's cost is in its decoder, so the suite
reports them side by side for every model at the paper configs (NYUD 448x576, PASCAL 512x512),
with random weights (no data, no checkpoints). One process profiles every case in turn through
``pamm.engine.profile.profile_config`` and rewrites the CSV atomically after each, so a run cut
short keeps what it measured. The device, GPU name, torch version and scan backend are columns.

    python scripts/efficiency_table.py --datasets nyud --out results/efficiency/gpu_efficiency.csv
"""
from __future__ import annotations

import argparse
import datetime
import gc
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pamm import io as pio  # noqa: E402

PAPER_CONFIG = REPO / "workflow" / "config_paper.yaml"
REFERENCE_MODELS = ("stl", "mtl")  # the Δm references: plain baselines, left out of the cost comparison
COLUMNS = ["dataset", "model", "variant", "img_h", "img_w", "params_m", "gflops", "gflops_scan", "flops_counter",
           "latency_ms_b1_bf16", "latency_p90_ms_b1_bf16", "latency_ms_b8_bf16", "latency_p90_ms_b8_bf16",
           "latency_ms_b1_fp32", "latency_ms_b8_fp32", "peak_mem_mib", "peak_mem_train_batch", "peak_mem_method",
           "scan_backend", "device", "gpu", "torch", "repeats", "notes", "seconds", "date"]


def default_cases(config_path: Path = PAPER_CONFIG) -> list[str]:
    """``model:variant`` of every main-table row of the paper matrix (``workflow/config_paper.yaml``), in its
    order, the reference baselines left out: a model added to the matrix is profiled too."""
    from pamm.config import load_yaml_text
    from pamm.results.tables import MAIN_VARIANTS

    matrix = load_yaml_text(config_path.read_text())["models"]
    return [f"{model}:{variant}" for model, variants in matrix.items() if model not in REFERENCE_MODELS
            for variant in variants if variant in MAIN_VARIANTS.get(model, ("default",))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=None,
                        help="model:variant (default: the main-table rows of workflow/config_paper.yaml but stl, mtl)")
    parser.add_argument("--datasets", nargs="+", default=["nyud", "pascal"], choices=["nyud", "pascal"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the training step whose peak is measured")
    parser.add_argument("--counter", default="ptflops", choices=["fvcore", "ptflops", "none"],
                        help="FLOP counter (none: leave GFLOPs to the CPU table, scripts/paper_flops_table.py)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per latency (after warm-up)")
    parser.add_argument("--scale", default="paper", choices=["paper", "tiny"],
                        help="recipe scale (tiny: a quick check on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "results/efficiency/gpu_efficiency.csv")
    args = parser.parse_args(argv)
    args.cases = args.cases or default_cases()

    from pamm.config import resolve_config
    from pamm.engine.profile import profile_config

    rows = []
    for dataset in args.datasets:
        for case in args.cases:
            model, _, variant = case.partition(":")
            variant = variant or "default"
            tic = time.perf_counter()
            cfg = resolve_config(args.scale, dataset, model, variant, 0)
            result = profile_config(
                cfg, device=args.device, batch_sizes=tuple(args.batch_sizes), dtypes=tuple(args.dtypes),
                counters=() if args.counter == "none" else (args.counter,), latency_repeats=args.repeats,
                train_batch=args.train_batch,
            )
            row = {"dataset": dataset, "model": model, "variant": variant, "flops_counter": args.counter,
                   "torch": torch.__version__, "repeats": args.repeats, "seconds": time.perf_counter() - tic,
                   "date": datetime.date.today().isoformat(), **{k: result.get(k) for k in COLUMNS if k in result}}
            rows.append(row)
            frame = pd.DataFrame(rows, columns=COLUMNS)
            with pio.atomic_path(args.out) as tmp:
                frame.to_csv(tmp, index=False, float_format="%.6g")
            shown = {k: row.get(k) for k in ("params_m", "gflops", "latency_ms_b1_bf16", "latency_ms_b8_bf16",
                                             "peak_mem_mib")}
            print(f"{dataset} {case}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in shown.items())
                  + f" [{row.get('scan_backend')}] {row.get('notes') or ''} ({row['seconds']:.0f} s)", flush=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
