"""Collect every run directory into ``results/summary.csv`` (one row per run) and mean ± std over seeds.

Reads only the files a run wrote (config.yaml, metrics.json, provenance.json, profile.json).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pamm import io as pio
from pamm.tasks import TASK_INFO

SUMMARY_COLUMNS = [
    "run_id", "dataset", "model", "variant", "seed", "backbone", "scale", "img_h", "img_w", "iterations",
    "train_seconds", "semseg_miou", "parts_miou", "sal_maxf", "depth_rmse", "normals_merr", "edge_odsf",
    "delta_m_pct", "params_m", "gflops", "latency_ms", "peak_mem_mib", "device", "scan_backend", "git_sha",
    "config_hash", "origin", "scan_settings",
]
# Columns that identify a configuration (everything but the seed) for the over-seeds table.
CONFIG_KEYS = ["dataset", "model", "variant", "backbone", "scale", "img_h", "img_w", "iterations", "origin"]
# ``origin`` of a run: trained here, or an authors' checkpoint imported with ``pamm-bench import-checkpoint``.
TRAINED, RELEASED = "trained", "released_checkpoint"
PROFILE_COLUMNS = {"params_m": "params_m", "gflops": "gflops", "latency_ms": "latency_ms", "peak_mem_mib": "peak_mem_mib"}


def find_runs(runs_root: str | Path) -> list[Path]:
    """Run directories under ``runs_root`` that have been evaluated."""
    return sorted(p.parent for p in Path(runs_root).glob("**/metrics.json"))


def run_row(run_dir: Path) -> dict[str, Any]:
    from pamm.config import load_run_config

    cfg = load_run_config(run_dir / "config.yaml")
    metrics = pio.read_json(run_dir / "metrics.json")
    provenance = pio.read_json(run_dir / "provenance.json") if (run_dir / "provenance.json").is_file() else {}
    profile = pio.read_json(run_dir / "profile.json") if (run_dir / "profile.json").is_file() else {}
    run = cfg["run"]
    origin = provenance.get("origin", TRAINED)
    row: dict[str, Any] = {
        "run_id": f"{run['dataset']}/{run['model']}/{run['variant']}/" + (f"seed{run['seed']}" if origin == TRAINED else origin),
        "dataset": run["dataset"], "model": run["model"], "variant": run["variant"], "seed": run["seed"],
        "backbone": cfg["model"].get("backbone", {}).get("name"), "scale": _run_scale(run),
        "img_h": cfg["data"]["size"][0], "img_w": cfg["data"]["size"][1],
        "iterations": cfg["train"]["iterations"], "train_seconds": provenance.get("train_seconds"),
        "device": provenance.get("device"), "scan_backend": provenance.get("scan_backend"),
        "git_sha": provenance.get("git_sha"), "config_hash": metrics.get("config_hash"),
        "tasks": ",".join(_run_tasks(cfg)), "origin": origin, "scan_settings": scan_settings_text(provenance.get("scan")),
    }
    row.update(metrics["metrics"])
    if "edge_odsf" in metrics["metrics"]:
        # Which boundary protocol made edge_*; runs evaluated before it was recorded predate SEISM's.
        row["edge_protocol"] = metrics.get("protocols", {}).get("edge", "pre-seism")
    row.update({f"trivial_{k}": v for k, v in metrics.get("trivial", {}).items()})
    for key in PROFILE_COLUMNS:
        if key in profile:
            row[key] = profile[key]
    row["notes"] = profile.get("notes", "")
    row.update({k: v for k, v in profile.items() if k.startswith(("gflops_", "gmacs_", "latency_", "params_", "peak_mem_"))})
    return row


def _run_scale(run: dict[str, Any]) -> str | None:
    """A run's recipe scale; run directories written before the key was named ``scale`` call it ``profile``."""
    return run.get("scale", run.get("profile"))


def scan_settings_text(record: dict[str, Any] | None) -> str | None:
    """A run's scan settings (``provenance.json`` ``scan``) in one cell: ``backend=auto triton_bwd=token ...``,
    then ``env:`` and the settings an environment variable set (None for runs that predate the record)."""
    if not record:
        return None
    settings = " ".join(f"{k}={v}" for k, v in record.items() if k != "env_overrides")
    overrides = record.get("env_overrides") or {}
    return settings + ("".join(f" env:{k}=${v}" for k, v in sorted(overrides.items())) if overrides else "")


def _run_tasks(cfg: dict[str, Any]) -> list[str]:
    from pamm.tasks import dataset_tasks

    return list(dataset_tasks(cfg["run"]["dataset"], cfg["data"].get("tasks")))


def add_delta_m(frame: pd.DataFrame) -> pd.DataFrame:
    """Δm of every multi-task run against single-task runs of the same dataset, backbone, size, recipe scale and
    seed."""
    from pamm.metrics import delta_m

    frame = frame.copy()
    frame["delta_m_pct"] = float("nan")
    single = frame[frame["tasks"].str.count(",") == 0]
    match_keys = ["dataset", "backbone", "scale", "img_h", "img_w", "seed"]
    for index, row in frame.iterrows():
        tasks = row["tasks"].split(",")
        if len(tasks) < 2:
            continue
        peers = single
        for key in match_keys:
            peers = peers[peers[key] == row[key]]
        reference: dict[str, float] = {}
        for task in tasks:
            column = TASK_INFO[task].metric
            found = peers[peers["tasks"] == task]
            if found.empty or column not in found or pd.isna(found.iloc[0][column]):
                break
            reference[column] = float(found.iloc[0][column])
        else:
            mt = {TASK_INFO[t].metric: float(row[TASK_INFO[t].metric]) for t in tasks}
            frame.at[index, "delta_m_pct"] = delta_m(mt, reference, row["dataset"])
    return frame


def summarise_over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n over seeds for every numeric column of each configuration."""
    if "origin" not in frame:  # a summary written before runs recorded their origin: all trained here
        frame = frame.assign(origin=TRAINED)
    numeric = [c for c in frame.columns if c not in CONFIG_KEYS + ["seed"] and pd.api.types.is_numeric_dtype(frame[c])]
    grouped = frame.groupby(CONFIG_KEYS, dropna=False)[numeric]
    mean, std = grouped.mean().add_suffix("_mean"), grouped.std(ddof=1).add_suffix("_std")
    count = grouped.size().rename("n_seeds")
    out = pd.concat([count, mean, std], axis=1).reset_index()
    ordered = CONFIG_KEYS + ["n_seeds"] + [f"{c}_{s}" for c in numeric for s in ("mean", "std")]
    return out[ordered]


def trivial_report(frame: pd.DataFrame) -> str:
    """Does every run beat the trivial predictors on val? One line per run and metric."""
    lines = ["run vs trivial predictor (val split):"]
    checks = [("semseg_miou", "higher"), ("parts_miou", "higher"), ("sal_maxf", "higher"),
              ("depth_rmse", "lower"), ("normals_merr", "lower")]
    failures = 0
    for _, row in frame.iterrows():
        parts = []
        for column, better in checks:
            trivial = row.get(f"trivial_{column}")
            value = row.get(column)
            if trivial is None or value is None or _missing(trivial) or _missing(value):
                continue
            ok = value > trivial if better == "higher" else value < trivial
            failures += not ok
            parts.append(f"{column} {value:.4g} vs {trivial:.4g} {'ok' if ok else 'WORSE'}")
        if parts:
            lines.append(f"  {row['run_id']}: " + "; ".join(parts))
    lines.append(f"{failures} comparison(s) where a run does not beat the trivial predictor")
    return "\n".join(lines)


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def aggregate(runs_root: str | Path, out: str | Path, by_config_out: str | Path | None = None, quiet: bool = False) -> pd.DataFrame:
    runs = find_runs(runs_root)
    if not runs:
        raise FileNotFoundError(f"no evaluated runs (metrics.json) under {runs_root}: run the train and evaluate steps first")
    frame = pd.DataFrame([run_row(r) for r in runs])
    frame = add_delta_m(frame)
    for column in SUMMARY_COLUMNS:
        if column not in frame:
            frame[column] = float("nan")
    extra = sorted(c for c in frame.columns if c not in SUMMARY_COLUMNS)
    frame = frame[SUMMARY_COLUMNS + extra].sort_values(["dataset", "model", "variant", "seed"]).reset_index(drop=True)
    with pio.atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    if by_config_out:
        with pio.atomic_path(by_config_out) as tmp:
            summarise_over_seeds(frame).to_csv(tmp, index=False)
    if not quiet:
        print(trivial_report(frame))
        print(f"wrote {out} ({len(frame)} runs)")
    return frame
