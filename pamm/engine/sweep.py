"""Efficiency against input resolution: ``results/efficiency/resolution_sweep.csv``.

Profiles each model at each size with random weights (no runs or data needed), through
``pamm.engine.profile.profile_config`` with the fvcore counter.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pamm import io as pio

SWEEP_COLUMNS = ["model", "variant", "dataset", "profile", "img_h", "img_w", "tokens", "params_m", "gflops",
                 "latency_ms", "peak_mem_mib", "peak_mem_method", "device", "scan_backend", "repeats"]


def _sweep_point(job: dict[str, Any]) -> dict[str, Any]:
    """Profile one (model, size) with random weights; runs in a fresh process when isolated."""
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    from pamm.config import resolve_config
    from pamm.engine.profile import profile_config

    size = [int(job["size"][0]), int(job["size"][1])]
    cfg = resolve_config(job["profile"], job["dataset"], job["model"], job["variant"], 0,
                         overrides={"data": {"size": size}})
    result = profile_config(cfg, device=job.get("device"), counters=("fvcore",), latency_repeats=int(job["repeats"]))
    backbone = cfg.get("model", {}).get("backbone", {}) or {}
    found = re.search(r"patch(\d+)", str(backbone.get("name", "")))
    patch = backbone.get("patch_size") or (int(found.group(1)) if found else 16)
    return {
        "model": job["model"], "variant": job["variant"], "dataset": job["dataset"], "profile": job["profile"],
        "img_h": size[0], "img_w": size[1], "tokens": (size[0] // int(patch)) * (size[1] // int(patch)),
        "params_m": result.get("params_m"), "gflops": result.get("gflops"), "latency_ms": result.get("latency_ms"),
        "peak_mem_mib": result.get("peak_mem_mib"), "peak_mem_method": result.get("peak_mem_method"),
        "device": result.get("gpu") or result.get("device"), "scan_backend": result.get("scan_backend"),
        "repeats": int(job["repeats"]),
    }


def resolution_sweep(models: Sequence[str], dataset: str, profile: str, sizes: Sequence[Sequence[int] | int],
                     out: str | Path, variant: str = "default", repeats: int = 3, device: str | None = None,
                     threads: int | None = None, isolate: bool = True, progress: bool = True) -> pd.DataFrame:
    """Params, GFLOPs (fvcore), median latency and peak memory of each model at each square/rect size.

    ``tokens`` is the backbone's patch-token count (H/p · W/p). With ``isolate`` every point runs in
    a fresh process: on CPU the peak memory is the process's peak RSS, which never goes down, so a
    shared process would carry the largest earlier point into every later one.
    """
    jobs = []
    for model in models:
        for size in sizes:
            hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))
            jobs.append({"model": model, "variant": variant, "dataset": dataset, "profile": profile, "size": hw,
                         "repeats": repeats, "device": device, "threads": threads})
    rows = []
    if isolate:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        for job in jobs:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                rows.append(pool.submit(_sweep_point, job).result())
            if progress:
                _print_point(rows[-1])
    else:
        for job in jobs:
            rows.append(_sweep_point(job))
            if progress:
                _print_point(rows[-1])
    frame = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    with pio.atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def _print_point(row: dict[str, Any]) -> None:
    print(f"{row['model']} {row['img_h']}x{row['img_w']}: {row['gflops']:.3g} GFLOPs, {row['latency_ms']:.3g} ms, "
          f"{row['peak_mem_mib']:.4g} MiB", flush=True)
