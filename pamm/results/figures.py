"""Figures from the summaries, the runs' files, the resolution sweep and the scan orders (Agg, PNG + PDF).

Every figure function takes its inputs as frames / paths and an output path (``.png``; a ``.pdf``
is written beside it). :func:`make_figures` draws all of them, skipping (with a printed note)
those whose input files are missing; a figure whose inputs exist but hold nothing to draw is
written as a small note figure saying so, so that a declared workflow output always exists.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from pamm.config import VARIANT_JOIN
from pamm.results import plotting_style as style
from pamm.tasks import DATASET_TASKS, TASK_INFO

HEADLINE = [(info.metric, info.lower_is_better) for info in TASK_INFO.values()] + [("delta_m_pct", False)]
UNITS = {"semseg_miou": "%", "parts_miou": "%", "sal_maxf": "%", "edge_odsf": "%", "depth_rmse": "m",
         "normals_merr": "deg", "delta_m_pct": "%"}
FIGURE_NAMES = ("metrics_by_model", "training_curves", "pareto", "ablation", "resolution_sweep", "scan_orders",
                "qualitative")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pyplot():
    return style.pyplot()


def _label(model: str, variant: str) -> str:
    return style.model_name(model, variant)


# ============================================================================================ metrics by model


def metrics_by_model(summary: pd.DataFrame, out: Path) -> None:
    """Headline metric of every task per model / variant (bars: mean over seeds, error bars: sd), a row per dataset."""
    plt, sns = _pyplot()
    from pamm.results.tables import metric_columns

    frame = summary.copy()
    frame["label"] = [_label(m, v) for m, v in zip(frame["model"], frame["variant"])]
    datasets = sorted(frame["dataset"].unique())
    panels = {d: [c for c in metric_columns(d) if c in frame and frame[frame["dataset"] == d][c].notna().any()]
              for d in datasets}
    n_cols = max((len(p) for p in panels.values()), default=0)
    if not n_cols:
        style.note_figure(out, "Metrics by model", "no task metric in the summary")
        return
    n_labels = max(frame[frame["dataset"] == d]["label"].nunique() for d in datasets)
    fig, axes = plt.subplots(len(datasets), n_cols, figsize=(1.9 * n_cols + 1.4, (0.17 * n_labels + 1.0) * len(datasets)),
                             squeeze=False)
    for row, dataset in enumerate(datasets):
        part = frame[frame["dataset"] == dataset]
        order = sorted(part["label"].unique(), key=lambda s: (s.startswith("Single"), s))
        palette = {lab: style.model_color(m) for lab, m in zip(part["label"], part["model"])}
        for col in range(n_cols):
            ax = axes[row][col]
            if col >= len(panels[dataset]):
                ax.set_axis_off()
                continue
            column = panels[dataset][col]
            data = part[part[column].notna()]
            sns.barplot(data=data, y="label", x=column, ax=ax, errorbar="sd", order=order, hue="label",
                        palette=palette, legend=False, err_kws={"linewidth": 0.8})
            ax.set_title(style.metric_label(column, with_unit=False), fontsize=8)
            ax.set_xlabel(style.metric_label(column, with_arrow=False))
            ax.set_ylabel(style.dataset_name(dataset) if col == 0 else "", fontsize=9, fontweight="bold")
            if col:
                ax.set_yticklabels([])
    fig.tight_layout()
    style.save_figure(fig, out)
    plt.close(fig)


# ============================================================================================ training curves


def _run_dir(runs_root: Path, run: pd.Series) -> Path:
    return runs_root / str(run["dataset"]) / str(run["model"]) / str(run["variant"]) / f"seed{int(run['seed'])}"


def training_curves(summary: pd.DataFrame, runs_root: Path, out: Path) -> None:
    """Total training loss per run (mean over seeds, band = sd), one panel per dataset."""
    plt, sns = _pyplot()
    rows = []
    for _, run in summary.iterrows():
        log = _run_dir(runs_root, run) / "train_log.csv"
        if log.is_file():
            frame = pd.read_csv(log)
            frame["label"] = (f"single-task: {str(run['variant']).removeprefix('stl_')}" if run["model"] == "stl"
                              else _label(run["model"], run["variant"]))
            frame["model"] = run["model"]
            frame["dataset"] = run["dataset"]
            frame["seed"] = run["seed"]
            rows.append(frame)
    if not rows:
        style.note_figure(out, "Training curves", f"no train_log.csv under {runs_root}")
        return
    logs = pd.concat(rows, ignore_index=True)
    datasets = sorted(logs["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), 1, figsize=(style.TEXT_WIDTH, 3.0 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        part = logs[logs["dataset"] == dataset]
        labels = sorted(part["label"].unique(), key=lambda s: (s.startswith("single"), s))
        palette = dict(zip(labels, sns.color_palette("tab20", len(labels)) if len(labels) > 10
                           else [style.model_color(part[part["label"] == lab]["model"].iloc[0]) for lab in labels]))
        if len(set(palette.values())) < len(labels):  # several variants of one model: distinct colours
            palette = dict(zip(labels, sns.color_palette("tab20" if len(labels) > 10 else "tab10", len(labels))))
        seeds = part.groupby("label")["seed"].nunique().max()
        sns.lineplot(data=part, x="iteration", y="loss", hue="label", hue_order=labels, palette=palette, ax=ax,
                     errorbar="sd" if seeds > 1 else None, linewidth=1.1)
        # symlog: schemes such as MTMamba's sum of log-losses go negative
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{style.dataset_name(dataset)}: training loss")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training objective\n(each model's loss scheme; symlog)")
        title = "model / variant" + (" (mean ± sd over seeds)" if seeds > 1 else "")
        ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  ncol=2 if len(labels) > 14 else 1)
    fig.tight_layout()
    style.save_figure(fig, out)
    plt.close(fig)


# ============================================================================================ label placement


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], colors: Sequence[str] | None = None,
                 fontsize: float = 6.5, obstacles: Sequence[tuple[float, float]] = (), avoid: Sequence[Any] = ()) -> list:
    """Annotate points so that no two labels overlap each other, a marker or the axes border.

    ``obstacles`` are further points (data coordinates) and ``avoid`` artists (e.g. an inset) that
    labels must not cover. Greedy: each label tries offsets around its point (nearest first, then further out with a leader
    line) and keeps the first whose box is free; if none is, the least-overlapping one.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points = ax.transData.transform(np.column_stack([xs, ys])) if len(xs) else np.zeros((0, 2))
    keep_out = 6.0 * fig.dpi / 72.0  # a marker's radius plus a margin, in pixels
    others = ax.transData.transform(np.asarray(obstacles, dtype=float).reshape(-1, 2)) if len(obstacles) else np.zeros((0, 2))
    marker_boxes = [(px - keep_out, py - keep_out, px + keep_out, py + keep_out) for px, py in np.vstack([points, others])]
    for artist in avoid:  # e.g. an inset: labels must not hide under it
        box = artist.get_window_extent(renderer)
        marker_boxes.append((box.x0 - 2, box.y0 - 2, box.x1 + 2, box.y1 + 2))
    axes_box = ax.get_window_extent(renderer)
    placed: list[tuple[float, float, float, float]] = []
    near = [(5, 4), (5, -10), (-5, 4), (-5, -10), (0, 8), (0, -14), (9, -3), (-9, -3)]
    far = [(dx * k, dy * k) for k in (2.2, 3.5, 5.0, 7.0) for dx, dy in
           [(6, 6), (6, -8), (-6, 6), (-6, -8), (0, 8), (0, -9), (9, 0), (-9, 0)]]
    annotations = []
    order = np.argsort([-len(t) for t in texts])  # long labels first: they have the fewest free places
    for index in order:
        best = None
        for dx, dy in near + far:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy >= 0 else "top"
            leader = math.hypot(dx, dy) > 15
            ann = ax.annotate(texts[index], (xs[index], ys[index]), xytext=(dx, dy), textcoords="offset points",
                              ha=ha, va=va, fontsize=fontsize, color=colors[index] if colors else "black",
                              arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 3}
                              if leader else None, zorder=5)
            box = ann.get_window_extent(renderer)
            rect = (box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
            overlap = sum(_overlap(rect, other) for other in placed + marker_boxes)
            outside = _outside(rect, (axes_box.x0, axes_box.y0, axes_box.x1, axes_box.y1))
            # A label nearer to another point than to its own reads as that point's label.
            centre = np.array([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2])
            distances = np.hypot(*(points - centre).T)
            ambiguous = not leader and len(points) > 1 and distances.argmin() != index
            overlap += 1000.0 * ambiguous
            cost = overlap + 50 * outside + (0.5 if leader else 0)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, rect)
            else:
                ann.remove()
            if overlap == 0 and outside == 0:
                break
        placed.append(best[2])
        annotations.append(best[1])
    return annotations


def _overlap(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def _outside(box, frame) -> float:
    return max(0.0, frame[0] - box[0]) + max(0.0, box[2] - frame[2]) + max(0.0, frame[1] - box[1]) + max(0.0, box[3] - frame[3])


# ============================================================================================ Pareto


def pareto_points(dataset: str, by_config: pd.DataFrame | None, published: pd.DataFrame | None) -> pd.DataFrame:
    """Main-table rows with params / GFLOPs: measured (mean over seeds) and published."""
    from pamm.results.tables import MAIN_VARIANTS

    rows = []
    if by_config is not None and not by_config.empty:
        part = by_config[(by_config["dataset"] == dataset) & (by_config["model"] != "stl")]
        for _, entry in part.iterrows():
            if entry["variant"] not in MAIN_VARIANTS.get(entry["model"], ("default",)):
                continue
            rows.append({"source": "measured", "model": entry["model"], "label": _label(entry["model"], entry["variant"]),
                         **{c: entry.get(f"{c}_mean", np.nan) for c in ("delta_m_pct", "semseg_miou", "params_m", "gflops")}})
    if published is not None and not published.empty:
        part = published[published["dataset"] == dataset]
        for _, entry in part.iterrows():
            rows.append({"source": "published", "model": entry["model"], "label": style.model_name(entry["model"]),
                         **{c: entry.get(c, np.nan) for c in ("delta_m_pct", "semseg_miou", "params_m", "gflops")}})
    frame = pd.DataFrame(rows, columns=["source", "model", "label", "delta_m_pct", "semseg_miou", "params_m", "gflops"])
    for column in ("delta_m_pct", "semseg_miou", "params_m", "gflops"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower or equal x and higher or equal y, one strictly)."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for index in order:
        if y[index] > best:
            front.append(index)
            best = y[index]
    return np.array(front, dtype=int)


def pareto(dataset: str, by_config: pd.DataFrame | None, published: pd.DataFrame | None, out: Path) -> None:
    """Accuracy (Δm; semseg mIoU too, or only, when Δm is missing) against GFLOPs and against params."""
    plt, _ = _pyplot()
    from matplotlib.lines import Line2D

    points = pareto_points(dataset, by_config, published)
    y_columns = [c for c in ("delta_m_pct", "semseg_miou")
                 if not points.empty and points[(points["source"] == "measured")][c].notna().any()]
    if "delta_m_pct" in y_columns and "semseg_miou" in y_columns:
        y_columns = ["delta_m_pct", "semseg_miou"]
    if not y_columns:
        y_columns = [c for c in ("delta_m_pct", "semseg_miou") if not points.empty and points[c].notna().any()][:1]
    x_columns = ["gflops", "params_m"]
    usable = [(y, x) for y in y_columns for x in x_columns
              if not points.empty and (points[y].notna() & points[x].notna()).any()]
    if not usable:
        style.note_figure(out, f"{style.dataset_name(dataset)}: accuracy vs cost",
                          "no run (or published row) with both an accuracy metric and params / GFLOPs")
        return
    fig, axes = plt.subplots(len(y_columns), 2, figsize=(style.TEXT_WIDTH, 2.9 * len(y_columns) + 0.7), squeeze=False)
    label_jobs = []
    for r, y_col in enumerate(y_columns):
        for c, x_col in enumerate(x_columns):
            ax = axes[r][c]
            data = points[points[y_col].notna() & points[x_col].notna()].reset_index(drop=True)
            if data.empty:
                ax.text(0.5, 0.5, "no points with both values", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            label_jobs += _pareto_panel(ax, data, x_col, y_col)
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="0.3", markeredgecolor="0.3", label="measured here"),
               Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="0.3", label="published"),
               Line2D([], [], color="0.55", linestyle="--", label="Pareto front of the measured points")]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{style.dataset_name(dataset)}: accuracy against cost\n"
                 "(filled: this repository's runs at their own setting; hollow: published paper-scale models)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    for ax, frame, x_col, y_col, obstacles, size, avoid in label_jobs:  # after the layout: label boxes are final
        place_labels(ax, frame[x_col].to_list(), frame[y_col].to_list(), frame["label"].to_list(),
                     colors=[style.model_color(m) for m in frame["model"]], obstacles=obstacles, fontsize=size,
                     avoid=avoid)
    style.save_figure(fig, out)
    plt.close(fig)


def _scatter_points(ax, data: pd.DataFrame, x_col: str, y_col: str, scale: float = 1.0) -> None:
    for _, p in data.iterrows():
        measured = p["source"] == "measured"
        color = style.model_color(p["model"])
        marker = "*" if measured and p["label"].endswith("as_released") else style.model_marker(p["model"])
        ax.scatter(p[x_col], p[y_col], s=(34 if measured else 30) * scale * (1.8 if marker == "*" else 1.0),
                   marker=marker, facecolor=color if measured else "white", edgecolor=color, linewidth=1.2, zorder=4)
    mine = data[data["source"] == "measured"]
    if len(mine) >= 2:
        front = pareto_front(mine[x_col].to_numpy(float), mine[y_col].to_numpy(float))
        fx, fy = mine[x_col].to_numpy(float)[front], mine[y_col].to_numpy(float)[front]
        ax.step(fx, fy, where="post", color="0.55", linestyle="--", linewidth=0.9, zorder=2)


def _pareto_panel(ax, data: pd.DataFrame, x_col: str, y_col: str) -> list:
    """Draw one accuracy-vs-cost panel; return the label jobs (placed once the layout is final).

    When published (paper-scale) and measured (e.g. tiny-scale) points differ by more than 30x
    in cost, the x axis is logarithmic and the measured cluster is repeated, zoomed and labelled, in
    an inset put in the emptiest corner.
    """
    x_label = {"gflops": "GFLOPs (batch 1)", "params_m": "parameters (M)"}[x_col]
    span = data[x_col].max() / max(data[x_col].min(), 1e-12)
    mine = data[data["source"] == "measured"].reset_index(drop=True)
    theirs = data[data["source"] == "published"].reset_index(drop=True)
    _scatter_points(ax, data, x_col, y_col)
    _pad_limits(ax, data[x_col].to_numpy(float), data[y_col].to_numpy(float), log_x=span > 30)
    if span > 30:
        ax.set_xscale("log")
        _pad_limits(ax, data[x_col].to_numpy(float), data[y_col].to_numpy(float), log_x=True)
        x_label = x_label[:-1] + ", log scale)"
    ax.set_xlabel(x_label)
    ax.set_ylabel(style.metric_label(y_col))
    zoom = span > 30 and len(mine) >= 2 and not theirs.empty
    if not zoom:
        return [(ax, data, x_col, y_col, [], 6.5, [])]
    corner = _emptiest_corner(ax, data[x_col].to_numpy(float), data[y_col].to_numpy(float), size=0.5)
    inset = ax.inset_axes([*corner, 0.5, 0.5])
    _scatter_points(inset, mine, x_col, y_col, scale=0.8)
    _pad_limits(inset, mine[x_col].to_numpy(float), mine[y_col].to_numpy(float), log_x=False, frac=0.25)
    inset.tick_params(labelsize=6, pad=1)
    inset.set_title("measured here (zoom)", fontsize=6.5, fontweight="normal", pad=2)
    inset.set_facecolor("white")
    ax.indicate_inset_zoom(inset, edgecolor="0.45", linewidth=0.6)
    obstacles = list(zip(mine[x_col], mine[y_col]))
    return [(inset, mine, x_col, y_col, [], 6.0, []), (ax, theirs, x_col, y_col, obstacles, 6.5, [inset])]


def _emptiest_corner(ax, x: np.ndarray, y: np.ndarray, size: float) -> tuple[float, float]:
    """Lower-left corner (axes fraction) of the corner square of side ``size`` holding the fewest points."""
    display = ax.transData.transform(np.column_stack([x, y]))
    frac = ax.transAxes.inverted().transform(display)
    inner = 0.04
    corners = [(1 - size - inner, inner + 0.02), (inner + 0.06, 1 - size - inner), (1 - size - inner, 1 - size - inner),
               (inner + 0.06, inner + 0.02)]
    margin = 0.08

    def count(corner):
        x0, y0 = corner
        inside = ((frac[:, 0] > x0 - margin) & (frac[:, 0] < x0 + size + margin)
                  & (frac[:, 1] > y0 - margin) & (frac[:, 1] < y0 + size + margin))
        return int(inside.sum())

    return min(corners, key=count)


def _pad_limits(ax, x: np.ndarray, y: np.ndarray, log_x: bool, frac: float = 0.15) -> None:
    """Room around the points for their labels (``frac`` of the data range on each side)."""
    if log_x:
        lo, hi = np.log10(x.min()), np.log10(x.max())
        pad = max(0.35, 0.15 * (hi - lo))
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
    else:
        lo, hi = x.min(), x.max()
        pad = max(frac * (hi - lo), 0.08 * abs(hi) or 0.1)
        ax.set_xlim(lo - pad, hi + pad)
    lo, hi = y.min(), y.max()
    pad = max(frac * (hi - lo), 0.05 * abs(hi) or 0.5)
    ax.set_ylim(lo - pad, hi + pad)


# ============================================================================================ ablation bars


def ablation_bars(dataset: str, by_config: pd.DataFrame | None, summary: pd.DataFrame | None, out: Path) -> None:
    """Difference of each PAMM variant to full PAMM per metric (bars), error bars = sd of paired differences."""
    plt, _ = _pyplot()
    from matplotlib.patches import Patch

    from pamm.results.tables import ablation_frame, metric_columns

    long = ablation_frame(dataset, by_config, summary) if by_config is not None else pd.DataFrame()
    long = long[long["variant"] != "default"] if not long.empty else long
    metrics = [c for c in metric_columns(dataset) if not long.empty and long[long["metric"] == c]["diff"].notna().any()]
    if not metrics:
        style.note_figure(out, f"{style.dataset_name(dataset)}: PAMM ablations",
                          "no PAMM variant runs beside full PAMM (variant default) in the summary")
        return
    settings = list(dict.fromkeys(long["setting"]))
    setting = settings[0]
    long = long[long["setting"] == setting]
    variants = sorted(long["variant"].unique())
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(style.TEXT_WIDTH, (0.19 * len(variants) + 0.9) * nrows + 0.4),
                             squeeze=False)
    for index, column in enumerate(metrics):
        ax = axes[index // ncols][index % ncols]
        part = long[long["metric"] == column].set_index("variant").reindex(variants)
        diffs = part["diff"].to_numpy(float)
        errors = part["diff_std"].to_numpy(float)
        colors = [style.BETTER_COLOR if b is True else style.WORSE_COLOR if b is False else "0.6" for b in part["better"]]
        y = np.arange(len(variants))
        ax.barh(y, np.nan_to_num(diffs), color=colors, height=0.7, zorder=3)
        has_err = np.isfinite(errors)
        if has_err.any():
            ax.errorbar(np.nan_to_num(diffs)[has_err], y[has_err], xerr=errors[has_err], fmt="none", ecolor="0.15",
                        elinewidth=0.8, capsize=2, zorder=4)
        ax.axvline(0, color="0.2", linewidth=0.8, zorder=2)
        ax.set_yticks(y)
        ax.set_yticklabels(variants if index % ncols == 0 else [])
        ax.invert_yaxis()
        ax.set_ylim(len(variants) - 0.5, -0.5)
        name, unit = style.METRIC_LABELS[column]
        title = f"{name} {style.arrow(column)}"
        if part["reference_mean"].notna().any():
            reference = part["reference_mean"].dropna().iloc[0]
            title += f"\n(full PAMM: {_plain_number(column, reference)}{' ' + unit if unit else ''})"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"Δ vs full PAMM ({unit})" if unit else "Δ vs full PAMM")
        limit = np.nanmax(np.abs(np.concatenate([diffs + np.nan_to_num(errors), diffs - np.nan_to_num(errors)])))
        limit = limit if np.isfinite(limit) and limit > 0 else 1.0
        ax.set_xlim(-1.15 * limit, 1.15 * limit)
    for index in range(len(metrics), nrows * ncols):
        axes[index // ncols][index % ncols].set_axis_off()
    n_seeds = int(long["n"].max()) if long["n"].notna().any() else 1
    handles = [Patch(color=style.BETTER_COLOR, label="better than full PAMM"),
               Patch(color=style.WORSE_COLOR, label="worse than full PAMM")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, -0.005))
    note = "error bars: sd of seed-paired differences" if n_seeds > 1 else "one seed: no error bars"
    fig.suptitle(f"{style.dataset_name(dataset)}: PAMM ablations ({setting}; {note})")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    style.save_figure(fig, out)
    plt.close(fig)


def _plain_number(column: str, value: float) -> str:
    from pamm.results.tables import format_number

    return format_number(column, float(value))


# ============================================================================================ resolution sweep


def resolution_sweep(sweep: pd.DataFrame, out: Path) -> None:
    """GFLOPs, latency and peak memory against input resolution, one line per model."""
    plt, _ = _pyplot()
    if sweep.empty:
        style.note_figure(out, "Efficiency against resolution", "the sweep CSV has no rows")
        return
    if "status" in sweep:  # points a model could not take (out of memory, an unsupported size) are left out
        sweep = sweep[sweep["status"].fillna("ok") == "ok"]
    sweep = sweep.copy()
    sweep["pixels"] = sweep["img_h"] * sweep["img_w"]
    panels = [c for c in ("gflops", "latency_ms", "peak_mem_mib") if c in sweep and sweep[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(style.TEXT_WIDTH, 2.5), squeeze=False)
    sizes = sweep.drop_duplicates("pixels").sort_values("pixels")
    for ax, column in zip(axes[0], panels):
        for model, part in sweep.groupby("model", sort=False):
            part = part.sort_values("pixels")
            label = _label(model, part["variant"].iloc[0] if "variant" in part else "default")
            ax.plot(part["pixels"] / 1e3, part[column], marker=style.model_marker(model), color=style.model_color(model),
                    label=label, markersize=4)
        ax.set_xticks(sizes["pixels"] / 1e3)
        ax.set_xticklabels([f"{int(h)}×{int(w)}" for h, w in zip(sizes["img_h"], sizes["img_w"])], rotation=0)
        ax.set_xlabel("input size H×W (pixels)")
        name, unit = style.METRIC_LABELS[column]
        ax.set_ylabel(f"{name} ({unit})" if unit else name)
        if column != "peak_mem_mib":  # CPU memory is the whole process: its floor would hide the differences
            ax.set_ylim(bottom=0)
        ax.set_title({"gflops": "FLOPs, batch 1", "latency_ms": "median latency, batch 1",
                      "peak_mem_mib": "peak memory, train step"}[column], fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, -0.02))
    devices = ", ".join(str(d) for d in sweep["device"].dropna().unique()) if "device" in sweep else "?"
    known = sweep["peak_mem_method"].dropna() if "peak_mem_method" in sweep else pd.Series(dtype=object)
    method = known.iloc[0] if len(known) else ""
    scale = ", ".join(str(p) for p in sweep["scale"].dropna().unique()) if "scale" in sweep else ""
    methods = {"process_peak_rss": "peak RSS of a fresh process per point",
               "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated"}
    subtitle = ((f"{scale} scale, " if scale else "") + f"random weights, {devices}"
                + (f"; memory: {methods.get(method, method)}" if method else ""))
    fig.suptitle(f"Efficiency against input resolution\n({subtitle})", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    style.save_figure(fig, out)
    plt.close(fig)


# ============================================================================================ scan orders

SCAN_TITLES = {"raster": "raster", "snake": "snake", "zorder": "z-order", "hilbert_cropped": "cropped Hilbert\n(released)",
               "hilbert": "generalized\nHilbert"}
DIRECTION_TITLES = {
    "hilbert_cropped": ["rotation 0°", "rotation 90°", "rotation 180°", "rotation 270°"],
    "default": ["forward", "reversed", "transposed", "transposed, reversed"],
}


def scan_orders_figure(out: Path, height: int = 28, width: int = 36, directions: int = 4,
                       kinds: Sequence[str] = ("raster", "snake", "zorder", "hilbert_cropped", "hilbert")) -> None:
    """Every scan kind (rows) and direction (columns) as a path over the H×W token grid; jumps in red."""
    plt, _ = _pyplot()
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    from pamm.ops.scan_orders import count_jumps, scan_orders

    cmap = plt.get_cmap("viridis")
    panel_w = (style.TEXT_WIDTH - 0.6) / directions
    fig, axes = plt.subplots(len(kinds), directions, figsize=(style.TEXT_WIDTH, len(kinds) * panel_w * height / width + 1.2),
                             squeeze=False)
    for r, kind in enumerate(kinds):
        perm, _ = scan_orders(kind, height, width, directions)
        titles = DIRECTION_TITLES.get(kind, DIRECTION_TITLES["default"])
        for d in range(directions):
            ax = axes[r][d]
            order = perm[d].numpy()
            rows, cols = np.divmod(order, width)
            segments = np.stack([np.column_stack([cols[:-1], rows[:-1]]), np.column_stack([cols[1:], rows[1:]])], axis=1)
            step = np.abs(np.diff(rows)) + np.abs(np.diff(cols))
            unit = step == 1
            progress = np.linspace(0, 1, len(order) - 1)
            ax.add_collection(LineCollection(segments[unit], colors=cmap(progress[unit]), linewidths=0.9, zorder=2))
            n_jumps = int((~unit).sum())
            if 0 < n_jumps <= 20:  # few jumps (the cropped Hilbert): thick, with both ends marked
                ax.add_collection(LineCollection(segments[~unit], colors="#D62728", linewidths=1.8, zorder=4))
                ends = segments[~unit].reshape(-1, 2)
                ax.plot(ends[:, 0], ends[:, 1], linestyle="", marker="o", markersize=2.6, color="#D62728", zorder=4)
            elif n_jumps:  # many jumps (raster row ends, z-order): thin, so the unit steps stay visible
                ax.add_collection(LineCollection(segments[~unit], colors="#D62728", linewidths=0.4, alpha=0.45, zorder=3))
            ax.plot(cols[0], rows[0], marker="o", markersize=4.5, markerfacecolor="white", markeredgecolor="black",
                    markeredgewidth=1.0, zorder=5)
            ax.plot(cols[-1], rows[-1], marker="s", markersize=3.5, color="black", zorder=5)
            ax.set_xlim(-0.8, width - 0.2)
            ax.set_ylim(height - 0.2, -0.8)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_linewidth(0.5)
                spine.set_color("0.6")
            jumps = count_jumps(order, width)
            ax.set_title(f"{titles[d]}: {jumps} jump{'s' if jumps != 1 else ''}", fontsize=7, fontweight="normal")
            if d == 0:
                ax.set_ylabel(SCAN_TITLES.get(kind, kind), fontsize=8.5, fontweight="bold")
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black", label="start"),
               Line2D([], [], marker="s", linestyle="", color="black", markersize=4, label="end"),
               Line2D([], [], color="#D62728", label="jump (step to a non-neighbour)")]
    fig.legend(handles=handles, loc="lower left", ncol=3, frameon=False, bbox_to_anchor=(0.02, 0.0))
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.suptitle(f"Scan orders on a {height}×{width} token grid ({directions} directions each)")
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    cax = fig.add_axes([0.62, 0.018, 0.3, 0.012])
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=cax, orientation="horizontal")
    bar.set_label("position along the scan (start → end)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    style.save_figure(fig, out)
    plt.close(fig)


# ============================================================================================ qualitative


def palette(n: int) -> np.ndarray:
    """The usual label colour map (bits of the class index spread over R, G, B), as floats in [0, 1]."""
    colors = np.zeros((max(n, 1), 3), dtype=np.float64)
    for index in range(max(n, 1)):
        value, r, g, b = index, 0, 0, 0
        for shift in range(8):
            r |= ((value >> 0) & 1) << (7 - shift)
            g |= ((value >> 1) & 1) << (7 - shift)
            b |= ((value >> 2) & 1) << (7 - shift)
            value >>= 3
        colors[index] = (r / 255, g / 255, b / 255)
    return colors


def _denormalise(image) -> np.ndarray:
    array = image.float().numpy().transpose(1, 2, 0)
    return np.clip(array * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN), 0, 1)


def _task_image(task: str, tensor, is_target: bool, channels: int, depth_range: tuple[float, float] | None = None):
    """(H, W[, 3]) array to show and its imshow kwargs."""
    import torch

    from pamm.tasks import IGNORE_INDEX

    t = tensor.float()
    if task in ("semseg", "human_parts"):
        labels = t.long() if is_target else t.argmax(0)
        colors = palette(channels)
        rgb = colors[labels.clamp(0, channels - 1).numpy()]
        rgb[(labels == IGNORE_INDEX).numpy()] = (1.0, 1.0, 1.0)
        return rgb, {}
    if task == "sal":
        if is_target:
            value = t.clone()
            shown = np.ma.masked_where((value == IGNORE_INDEX).numpy(), value.numpy())
        else:
            shown = torch.softmax(t, 0)[1].numpy() if t.shape[0] == 2 else torch.sigmoid(t[0]).numpy()
        return shown, {"cmap": "gray", "vmin": 0, "vmax": 1}
    if task == "depth":
        value = t[0] if t.dim() == 3 else t
        mask = (value <= 0).numpy() if is_target else np.zeros(value.shape, bool)
        vmin, vmax = depth_range or (float(value.min()), float(value.max()))
        return np.ma.masked_where(mask, value.numpy()), {"cmap": "magma_r", "vmin": vmin, "vmax": vmax}
    if task == "normals":
        invalid = (t == IGNORE_INDEX).all(0) if is_target else torch.zeros(t.shape[1:], dtype=torch.bool)
        unit = torch.nn.functional.normalize(t, dim=0)
        rgb = ((unit + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy().copy()
        rgb[invalid.numpy()] = (1.0, 1.0, 1.0)
        return rgb, {}
    if task == "edge":
        value = t[0] if t.dim() == 3 else t
        if is_target:
            shown = np.where((value == IGNORE_INDEX).numpy(), 0.0, value.numpy())
        else:
            shown = torch.sigmoid(value).numpy()
        return shown, {"cmap": "gray_r", "vmin": 0, "vmax": 1}
    raise ValueError(f"unknown task {task!r}")


def load_examples(dataset: str, summary: pd.DataFrame, runs_root: Path) -> dict[str, dict[str, Any]]:
    """``label -> examples`` for the main-table models of ``dataset`` (lowest seed); single-task runs
    are merged into one "single-task" entry holding each task's prediction."""
    import torch

    from pamm.results.tables import MAIN_VARIANTS

    found: dict[str, dict[str, Any]] = {}
    rank = {m: i for i, m in enumerate(style.measured_models())}
    part = summary[summary["dataset"] == dataset]
    part = part.loc[sorted(part.index, key=lambda i: (rank.get(part.at[i, "model"], len(rank)), str(part.at[i, "model"]),
                                                      str(part.at[i, "variant"]), int(part.at[i, "seed"])))]
    single: dict[str, Any] = {}
    for (model, variant), runs in part.groupby(["model", "variant"], sort=False):
        if model != "stl" and variant not in MAIN_VARIANTS.get(model, ("default",)):
            continue
        path = _run_dir(runs_root, runs.iloc[0]) / "examples.pt"
        if not path.is_file():
            continue
        examples = torch.load(path, map_location="cpu", weights_only=False)
        if not examples:  # the run kept no examples (eval.save_examples: 0)
            continue
        if model == "stl":
            if VARIANT_JOIN in str(variant):  # the single-task runs on another backbone (stl_<task>+swin)
                continue
            if not single:
                single.update(examples)
            elif list(examples["id"]) == list(single["id"]):
                single.update({k: v for k, v in examples.items() if k.startswith(("pred_", "target_"))})
        else:
            found[_label(model, variant)] = examples
    if single:
        found = {style.model_name("stl"): single, **found}
    return found


def _wrap(text: str, width: int = 12) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False)) or text


def qualitative(dataset: str, summary: pd.DataFrame, runs_root: Path, out: Path, n_images: int = 2) -> None:
    """Input, ground truth and every model's prediction per task, on the same val images.

    Rows: image × task. Columns: input (first row of each image), task name, ground truth, one
    column per model (main-table models; the single-task runs merged into one column), and a
    colour bar for depth (one shared range per image: 2nd–98th percentile of its ground truth).
    """
    plt, _ = _pyplot()
    from matplotlib.gridspec import GridSpec

    examples = load_examples(dataset, summary, runs_root)
    if not examples:
        style.note_figure(out, f"{style.dataset_name(dataset)}: qualitative results",
                          f"no examples.pt under {runs_root}/{dataset}")
        return
    # Images shown: ids every model saved, in the order of the model with the most tasks (it gives the targets).
    first = max(examples.values(), key=lambda e: sum(k.startswith("target_") for k in e))
    common = [i for i in first["id"] if all(i in e["id"] for e in examples.values())][:n_images]
    if not common:
        style.note_figure(out, f"{style.dataset_name(dataset)}: qualitative results",
                          "the runs saved different val images (no id in common)")
        return
    tasks = [t for t in DATASET_TASKS[dataset] if f"target_{t}" in first]
    models = list(examples)
    columns = ["input", "", "ground truth"] + models + ["bar"]
    ratios = [1.0, 0.62, 1.0] + [1.0] * len(models) + [0.07]
    n_rows = len(common) * len(tasks)
    ref = first["image"][0]
    aspect = ref.shape[-2] / ref.shape[-1]
    cell = min(1.15, (style.TEXT_WIDTH - 0.3) / sum(ratios))
    fig = plt.figure(figsize=(cell * sum(ratios) + 0.3, cell * aspect * n_rows * 1.06 + 0.15 * len(common) + 0.95))
    title_lines = 2 + (len(columns) < 7)
    grid = GridSpec(n_rows, len(columns), figure=fig, width_ratios=ratios, wspace=0.05, hspace=0.07,
                    left=0.01, right=0.93, top=1 - (0.55 + 0.15 * title_lines) / fig.get_figheight(), bottom=0.01)
    channels = DATASET_TASKS[dataset]
    for b, image_id in enumerate(common):
        index0 = first["id"].index(image_id)
        depth_range = None
        if "depth" in tasks:
            target = first["target_depth"][index0].float()
            valid = target[target > 0]
            depth_range = (float(valid.quantile(0.02)), float(valid.quantile(0.98))) if valid.numel() else (0.0, 1.0)
        for t, task in enumerate(tasks):
            r = b * len(tasks) + t
            if t == 0:
                ax = fig.add_subplot(grid[r, 0])
                ax.imshow(_denormalise(first["image"][index0]))
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel(f"val id {image_id}", fontsize=6, labelpad=1)
                if b == 0:
                    ax.set_title("input", fontsize=7.5, fontweight="bold")
            label_ax = fig.add_subplot(grid[r, 1])
            label_ax.set_axis_off()
            label_ax.text(0.97, 0.5, _wrap(style.TASK_TITLES.get(task, task), 9), ha="right", va="center", fontsize=6.5,
                          transform=label_ax.transAxes)
            image = None
            for c, column in enumerate(columns[2:-1], start=2):
                ax = fig.add_subplot(grid[r, c])
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if r == 0:
                    ax.set_title(_wrap(column, 9), fontsize=5.5, fontweight="bold")
                source = first if column == "ground truth" else examples[column]
                key = f"target_{task}" if column == "ground truth" else f"pred_{task}"
                if key not in source:
                    ax.set_facecolor("0.95")
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, color="0.5", transform=ax.transAxes)
                    continue
                idx = source["id"].index(image_id)
                shown, kwargs = _task_image(task, source[key][idx], column == "ground truth", channels[task], depth_range)
                image = ax.imshow(shown, interpolation="nearest", **kwargs)
            if task == "depth" and image is not None:
                cax = fig.add_subplot(grid[r, -1])
                bar = fig.colorbar(image, cax=cax)
                bar.set_label("depth (m)", fontsize=6, labelpad=1)
                bar.ax.tick_params(labelsize=5.5, length=2, pad=1)
    import textwrap

    legend = ("class colours for segmentation / parts (white: ignored); depth colour bar per image; normals as "
              "RGB = (n+1)/2; saliency P(salient); edges sigmoid")
    width_chars = max(60, int(fig.get_figwidth() * 17))
    fig.suptitle(f"{style.dataset_name(dataset)}: val predictions of the first seed of each model\n"
                 + "\n".join(textwrap.wrap(legend, width_chars)), fontsize=7)
    style.save_figure(fig, out)
    plt.close(fig)


# ============================================================================================ all


def _read_csv(path: str | Path | None, what: str, notes: list[str]) -> pd.DataFrame | None:
    if path is None:
        return None
    if not Path(path).is_file():
        notes.append(f"{what}: {path} does not exist")
        return None
    return pd.read_csv(path)


def make_figures(summary_csv: str | Path, runs_root: str | Path, out_dir: str | Path, *,
                 by_config_csv: str | Path | None = None, published_csv: str | Path | None = None,
                 sweep_csv: str | Path | None = None, only: Sequence[str] | None = None,
                 datasets: Sequence[str] | None = None, scan_grid: tuple[int, int] = (28, 36),
                 n_examples: int = 2) -> list[Path]:
    """Draw every figure whose inputs exist (``only`` picks a subset by name); return the PNG paths.

    A figure whose input file is missing is skipped with a printed note; by default the
    by-config summary is looked for beside ``summary_csv`` (``summary_by_config.csv``).
    """
    from pamm.results.tables import load_published

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(only or FIGURE_NAMES)
    unknown = wanted - set(FIGURE_NAMES)
    if unknown:
        raise ValueError(f"unknown figure(s) {sorted(unknown)}; valid: {list(FIGURE_NAMES)}")
    notes: list[str] = []
    written: list[Path] = []
    per_dataset = wanted & {"pareto", "ablation", "qualitative"}
    needs_summary = wanted & {"metrics_by_model", "training_curves", "ablation", "qualitative"}
    summary = _read_csv(summary_csv, "summary", notes) if needs_summary or (per_dataset and not datasets) else None
    if by_config_csv is None and summary_csv is not None:
        candidate = Path(summary_csv).with_name("summary_by_config.csv")
        by_config_csv = candidate if candidate.is_file() else None
    by_config = _read_csv(by_config_csv, "by-config summary", notes) if wanted & {"pareto", "ablation"} else None
    published = load_published(published_csv) if published_csv and "pareto" in wanted else None
    if published_csv and "pareto" in wanted and not Path(published_csv).is_file():
        notes.append(f"published numbers: {published_csv} does not exist (Pareto plots show measured points only)")
    if not per_dataset:
        datasets = []
    elif not datasets:
        found = set(summary["dataset"]) if summary is not None else set()
        found |= set(by_config["dataset"]) if by_config is not None else set()
        datasets = sorted(found)

    failures: list[str] = []

    def attempt(name: str, path: Path, draw: Callable[[], None]) -> None:
        """Draw one figure; an error in it is reported and the other figures are still drawn."""
        try:
            draw()
        except Exception as err:  # noqa: BLE001  (re-raised below, after the other figures)
            import traceback

            traceback.print_exc()
            failures.append(f"{path.name}: {type(err).__name__}: {err}")
            return
        written.append(path)

    if "metrics_by_model" in wanted:
        if summary is not None:
            path = out_dir / "metrics_by_model.png"
            attempt("metrics_by_model", path, lambda: metrics_by_model(summary, path))
        else:
            notes.append("metrics_by_model skipped (no summary)")
    if "training_curves" in wanted:
        if summary is not None:
            path = out_dir / "training_curves.png"
            attempt("training_curves", path, lambda: training_curves(summary, Path(runs_root), path))
        else:
            notes.append("training_curves skipped (no summary)")
    for dataset in datasets:
        if "pareto" in wanted:
            if by_config is not None or published is not None:
                path = out_dir / f"pareto_{dataset}.png"
                attempt("pareto", path, lambda: pareto(dataset, by_config, published, path))
            else:
                notes.append(f"pareto_{dataset} skipped (no by-config summary and no published numbers)")
        if "ablation" in wanted:
            if by_config is not None:
                path = out_dir / f"ablation_{dataset}.png"
                attempt("ablation", path, lambda: ablation_bars(dataset, by_config, summary, path))
            else:
                notes.append(f"ablation_{dataset} skipped (no by-config summary)")
        if "qualitative" in wanted:
            if summary is not None:
                path = out_dir / f"qualitative_{dataset}.png"
                attempt("qualitative", path, lambda: qualitative(dataset, summary, Path(runs_root), path, n_examples))
            else:
                notes.append(f"qualitative_{dataset} skipped (no summary)")
    if "resolution_sweep" in wanted:
        sweep = _read_csv(sweep_csv, "resolution sweep", notes) if sweep_csv else None
        if sweep is not None:
            path = out_dir / "resolution_sweep.png"
            attempt("resolution_sweep", path, lambda: resolution_sweep(sweep, path))
        else:
            notes.append("resolution_sweep skipped (no sweep CSV: run `pamm-bench sweep --out CSV` and pass --sweep CSV)")
    if "scan_orders" in wanted:
        path = out_dir / "scan_orders.png"
        attempt("scan_orders", path, lambda: scan_orders_figure(path, *scan_grid))
    for note in notes:
        print(f"note: {note}")
    if failures:
        raise RuntimeError(f"{len(failures)} figure(s) failed (the others were written): " + "; ".join(failures))
    return written
