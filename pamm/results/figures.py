"""Figures from results/summary.csv and the runs' train logs (seaborn, Agg backend, PNG + PDF)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pamm import io as pio
from pamm.tasks import TASK_INFO

HEADLINE = [(info.metric, info.lower_is_better) for info in TASK_INFO.values()] + [("delta_m_pct", False)]
UNITS = {"semseg_miou": "%", "parts_miou": "%", "sal_maxf": "%", "edge_odsf": "%", "depth_rmse": "m",
         "normals_merr": "deg", "delta_m_pct": "%"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
    return plt, sns


def save_figure(fig, path: Path) -> None:
    """Write PNG (and a PDF beside it) atomically."""
    for target in (path, path.with_suffix(".pdf")):
        with pio.atomic_path(target) as tmp:
            fig.savefig(tmp, format=target.suffix[1:], dpi=200, bbox_inches="tight")


def metrics_by_model(summary: pd.DataFrame, out: Path) -> None:
    plt, sns = _pyplot()
    frame = summary.copy()
    frame["label"] = frame["model"] + ("/" + frame["variant"]).where(frame["variant"] != "default", "")
    panels = [(c, low) for c, low in HEADLINE if c in frame and frame[c].notna().any()]
    datasets = sorted(frame["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), len(panels), figsize=(3.2 * len(panels), 0.35 * frame["label"].nunique() * len(datasets) + 2.0), squeeze=False)
    for row, dataset in enumerate(datasets):
        part = frame[frame["dataset"] == dataset]
        for col, (column, lower) in enumerate(panels):
            ax = axes[row][col]
            data = part[part[column].notna()]
            if data.empty:
                ax.set_axis_off()
                continue
            sns.barplot(data=data, y="label", x=column, ax=ax, errorbar="sd", color="#4C72B0")
            arrow = "↓" if lower else "↑"
            ax.set_title(f"{dataset}: {column} {arrow}")
            ax.set_xlabel(f"{column} [{UNITS.get(column, '')}]")
            ax.set_ylabel("" if col else "model / variant")
            if col:
                ax.set_yticklabels([])
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def training_curves(summary: pd.DataFrame, runs_root: Path, out: Path) -> None:
    plt, sns = _pyplot()
    rows = []
    for _, run in summary.iterrows():
        log = runs_root / run["dataset"] / run["model"] / run["variant"] / f"seed{run['seed']}" / "train_log.csv"
        if log.is_file():
            frame = pd.read_csv(log)
            frame["run"] = f"{run['model']}/{run['variant']}/s{run['seed']}"
            frame["dataset"] = run["dataset"]
            rows.append(frame)
    datasets = sorted(summary["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    if rows:
        logs = pd.concat(rows, ignore_index=True)
        for ax, dataset in zip(axes[0], datasets):
            sns.lineplot(data=logs[logs["dataset"] == dataset], x="iteration", y="loss", hue="run", ax=ax)
            ax.set_yscale("symlog")
            ax.set_title(f"{dataset}: training loss")
            ax.set_xlabel("iteration")
            ax.set_ylabel("total weighted loss")
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def make_figures(summary_csv: str | Path, runs_root: str | Path, out_dir: str | Path) -> list[Path]:
    summary = pd.read_csv(summary_csv)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_by_model(summary, out_dir / "metrics_by_model.png")
    training_curves(summary, Path(runs_root), out_dir / "training_curves.png")
    return [out_dir / "metrics_by_model.png", out_dir / "training_curves.png"]
