#!/usr/bin/env python
"""Parameters and FLOPs of every model and ablation at the paper configs, fvcore beside ptflops.

Why: FLOP counts do not depend on the device, so this table is made on a CPU (no GPU, no dataset,
no weights: random weights at the paper configs, batch 1, NYUD 448x576 / PASCAL 512x512). Each
(dataset, model, variant) of ``workflow/config_paper.yaml``'s matrix is counted in its own
``pamm-bench profile --no-timing`` process (a paper-size forward needs several GB; a fresh process
returns them). Finished points are kept as JSON under ``--work`` and skipped on a re-run, so an
interrupted table resumes. The CSV is written atomically at the end.

    python scripts/paper_flops_table.py --out results/efficiency/paper_flops_cpu.csv
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pamm import io as pio  # noqa: E402
from pamm.tasks import DATASET_TASKS  # noqa: E402

COLUMNS = ["dataset", "model", "variant", "img_h", "img_w", "params_m", "params_backbone_m", "params_decoder_m",
           "gmacs_fvcore", "gmacs_ptflops", "flops_counter_rel_diff", "gflops", "gflops_backbone", "gflops_decoder",
           "gflops_scan", "seconds", "torch_threads", "device", "date", "status"]


def matrix(config_path: Path, datasets: list[str], models: list[str] | None) -> list[tuple[str, str, str]]:
    """(dataset, model, variant) of the paper matrix, single-task variants only where the dataset has the task."""
    spec = yaml.safe_load(config_path.read_text())
    points = []
    for dataset in datasets:
        for model, variants in spec["models"].items():
            if models and model not in models:
                continue
            for variant in variants:
                if model == "stl" and variant.removeprefix("stl_") not in DATASET_TASKS[dataset]:
                    continue
                points.append((dataset, model, variant))
    return points


def count_point(dataset: str, model: str, variant: str, work: Path, threads: int, cached_only: bool = False) -> dict:
    """One ``pamm-bench profile --no-timing`` process; its JSON is the cache."""
    out = work / f"{dataset}__{model}__{variant}.json"
    if not out.exists() and cached_only:
        return {"dataset": dataset, "model": model, "variant": variant, "status": "not counted"}
    if not out.exists():
        command = [sys.executable, "-m", "pamm.cli", "profile", "--model", model, "--dataset", dataset,
                   "--variant", variant, "--scale", "paper", "--device", "cpu", "--threads", str(threads),
                   "--no-timing", "--no-progress", "--out", str(out)]
        tic = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            why = (f"killed by signal {-done.returncode} (out of memory?)" if done.returncode < 0
                   else (done.stderr.strip().splitlines() or ["no message"])[-1][:300])
            print(f"{' '.join(command)} failed: {why}", file=sys.stderr)
            return {"dataset": dataset, "model": model, "variant": variant, "status": f"failed: {why}"}
        result = json.loads(out.read_text())
        result["seconds"] = time.perf_counter() - tic
        pio.write_json(out, result)
    result = json.loads(out.read_text())
    return {"dataset": dataset, "model": model, "variant": variant, "status": "ok", "date": datetime.date.fromtimestamp(
        out.stat().st_mtime).isoformat(), **{k: result.get(k) for k in COLUMNS if k in result}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "workflow/config_paper.yaml",
                        help="workflow config whose `models:` matrix is counted")
    parser.add_argument("--datasets", nargs="+", default=["nyud", "pascal"], choices=sorted(DATASET_TASKS))
    parser.add_argument("--models", nargs="+", default=None, help="only these models (default: all in the matrix)")
    parser.add_argument("--out", type=Path, default=REPO / "results/efficiency/paper_flops_cpu.csv")
    parser.add_argument("--work", type=Path, default=REPO / "results/.tmp/paper_flops",
                        help="per-point JSON cache (resume)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)), help="torch threads per point")
    parser.add_argument("--cached-only", action="store_true",
                        help="count nothing: write the table from the points already under --work")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    points = matrix(args.config, args.datasets, args.models)
    rows = []
    for index, (dataset, model, variant) in enumerate(points, 1):
        row = count_point(dataset, model, variant, args.work, args.threads, args.cached_only)
        rows.append(row)
        if row["status"] != "ok":
            continue
        print(f"[{index}/{len(points)}] {dataset} {model}/{variant}: {row.get('params_m', float('nan')):.1f}M params, "
              f"fvcore {row.get('gmacs_fvcore', float('nan')):.1f} / ptflops {row.get('gmacs_ptflops', float('nan')):.1f} "
              f"GMACs (diff {100 * (row.get('flops_counter_rel_diff') or 0):.2f} %), scan "
              f"{row.get('gflops_scan', float('nan')):.2f} GFLOPs, {row.get('seconds', 0):.0f} s", flush=True)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    with pio.atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    worst = frame["flops_counter_rel_diff"].max()
    failed = int((frame["status"] != "ok").sum())
    print(f"wrote {args.out}: {len(frame)} configs ({failed} without counts), largest fvcore/ptflops difference "
          f"{100 * worst:.2f} %")
    return 0 if worst <= 0.02 and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
