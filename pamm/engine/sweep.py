"""Efficiency against input resolution: ``results/efficiency/resolution_sweep.csv``.

Profiles each model at each size with random weights (no runs or data needed), through
``pamm.engine.profile.profile_config`` with one FLOP counter (fvcore unless told otherwise).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pamm import io as pio

SWEEP_COLUMNS = ["model", "variant", "dataset", "scale", "img_h", "img_w", "tokens", "params_m", "gflops",
                 "flops_counter", "latency_ms", "dtype", "peak_mem_mib", "peak_mem_method", "device", "scan_backend",
                 "repeats", "status"]


def _sweep_point(job: dict[str, Any]) -> dict[str, Any]:
    """Profile one (model, size) with random weights; runs in a fresh process when isolated."""
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    from pamm.config import resolve_config
    from pamm.engine.profile import profile_config

    size = [int(job["size"][0]), int(job["size"][1])]
    cfg = resolve_config(job["scale"], job["dataset"], job["model"], job["variant"], 0,
                         overrides={"data": {"size": size}})
    result = profile_config(cfg, device=job.get("device"), counters=tuple(job.get("counters") or ("fvcore",)),
                            dtypes=(job.get("dtype") or "fp32",), latency_repeats=int(job["repeats"]))
    backbone = cfg.get("model", {}).get("backbone", {}) or {}
    found = re.search(r"patch(\d+)", str(backbone.get("name", "")))
    patch = backbone.get("patch_size") or (int(found.group(1)) if found else 16)
    return {
        "model": job["model"], "variant": job["variant"], "dataset": job["dataset"], "scale": job["scale"],
        "img_h": size[0], "img_w": size[1], "tokens": (size[0] // int(patch)) * (size[1] // int(patch)),
        "params_m": result.get("params_m"), "gflops": result.get("gflops"),
        "flops_counter": (job.get("counters") or ("fvcore",))[0], "latency_ms": result.get("latency_ms"),
        "dtype": job.get("dtype") or "fp32",
        "peak_mem_mib": result.get("peak_mem_mib"), "peak_mem_method": result.get("peak_mem_method"),
        "device": result.get("gpu") or result.get("device"), "scan_backend": result.get("scan_backend"),
        "repeats": int(job["repeats"]), "status": "ok",
    }


def resolution_sweep(models: Sequence[str], dataset: str, scale: str, sizes: Sequence[Sequence[int] | int],
                     out: str | Path, variant: str = "default", repeats: int = 3, device: str | None = None,
                     threads: int | None = None, isolate: bool = True, progress: bool = True,
                     counter: str = "fvcore", dtype: str = "fp32") -> pd.DataFrame:
    """Params, GFLOPs (``counter``), median latency (``dtype``) and peak memory of each model at each size.

    ``tokens`` is the backbone's patch-token count (H/p · W/p). With ``isolate`` every point runs in
    a fresh process: on CPU the peak memory is the process's peak RSS, which never goes down, so a
    shared process would carry the largest earlier point into every later one.
    """
    from pamm.config import resolve_config

    for model in dict.fromkeys(models):  # an unknown model or variant stops here, before any point runs
        resolve_config(scale, dataset, model, variant, 0)
    jobs = []
    for model in models:
        for size in sizes:
            hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))
            jobs.append({"model": model, "variant": variant, "dataset": dataset, "scale": scale, "size": hw,
                         "repeats": repeats, "device": device, "threads": threads, "counters": (counter,),
                         "dtype": dtype})
    rows = []
    if isolate:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")

        def run(job: dict[str, Any]) -> dict[str, Any]:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                return pool.submit(_sweep_point, job).result()
    else:
        run = _sweep_point
    for job in jobs:
        try:
            rows.append(run(job))
        except Exception as error:  # noqa: BLE001 - one size a model cannot take must not lose the others
            rows.append(_failed_point(job, error))
        if progress:
            _print_point(rows[-1])
    frame = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    with pio.atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def _failed_point(job: dict[str, Any], error: Exception) -> dict[str, Any]:
    """A row that says why a point is missing (e.g. out of memory, or a size the backbone cannot take)."""
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    return {"model": job["model"], "variant": job["variant"], "dataset": job["dataset"], "scale": job["scale"],
            "img_h": job["size"][0], "img_w": job["size"][1], "repeats": int(job["repeats"]),
            "status": f"failed: {type(error).__name__}: {first_line}"}


def _print_point(row: dict[str, Any]) -> None:
    if row.get("status", "ok") != "ok":
        print(f"{row['model']} {row['img_h']}x{row['img_w']}: {row['status']}", flush=True)
        return
    print(f"{row['model']} {row['img_h']}x{row['img_w']}: {row['gflops']:.3g} GFLOPs, {row['latency_ms']:.3g} ms, "
          f"{row['peak_mem_mib']:.4g} MiB", flush=True)
