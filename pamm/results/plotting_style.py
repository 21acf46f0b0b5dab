"""One look for every table and figure: display names, units, arrows, model colours, matplotlib style.

Tables and figures import their labels from here, so a metric is called the same thing (with the
same unit and the same better-direction arrow) everywhere, and a model has one name, colour and marker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pamm.config import model_display, model_displays
from pamm.tasks import TASK_INFO

# ------------------------------------------------------------------------------------------- names

# The suite's own models take their name, colour, marker and table order from the `display` section of their
# YAML (pamm/configs/models/<model>.yaml, read through pamm.config.model_display). The published-only rows of
# results/reference/published.csv that are no model of the suite are named here.
PUBLISHED_NAMES: dict[str, str] = {
    "invpt_retrained": "InvPT (re-trained ckpt)",
    "taskprompter_paper": "TaskPrompter (paper)",
    "taskprompter_vitb": "TaskPrompter",
    "mlore": "MLoRE",
    "mlore_vitb": "MLoRE",
    "tsp_transformer": "TSP-Transformer",
    "stl_swin_large": "Single-task baselines",
}

BACKBONE_NAMES: dict[str, str] = {
    "vit_large_patch16_384": "ViT-L",
    "vit_base_patch16_384": "ViT-B",
    "vit_small_patch16_384": "ViT-S",
    "swin_large_patch4_window12_384": "Swin-L",
    "swin_base_patch4_window12_384": "Swin-B",
    "swin_small_patch4_window7_224": "Swin-S",
    "swin_tiny_patch4_window7_224": "Swin-T",
    "vit_tiny_patch16_224": "ViT-Ti (tiny)",
}

DATASET_NAMES: dict[str, str] = {"nyud": "NYUD-v2", "pascal": "PASCAL-Context"}

# Headline metric columns: short name, unit (for axes and headers).
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "semseg_miou": ("Semseg mIoU", "%"),
    "parts_miou": ("Parts mIoU", "%"),
    "sal_maxf": ("Sal maxF", "%"),
    "depth_rmse": ("Depth RMSE", "m"),
    "normals_merr": ("Normals mErr", "°"),
    "edge_odsf": ("Edge odsF", "%"),
    "delta_m_pct": ("Δm", "%"),
    "params_m": ("Params", "M"),
    "gflops": ("GFLOPs", ""),
    "latency_ms": ("Latency", "ms"),
    "peak_mem_mib": ("Peak memory", "MiB"),
}
LOWER_IS_BETTER: dict[str, bool] = {info.metric: info.lower_is_better for info in TASK_INFO.values()}
LOWER_IS_BETTER.update({"delta_m_pct": False, "params_m": True, "gflops": True, "latency_ms": True, "peak_mem_mib": True})

# Decimals per column in tables (efficiency columns pick theirs from the magnitude).
DECIMALS: dict[str, int] = {"semseg_miou": 2, "parts_miou": 2, "sal_maxf": 2, "edge_odsf": 2, "normals_merr": 2,
                            "depth_rmse": 4, "delta_m_pct": 2}

TASK_TITLES: dict[str, str] = {"semseg": "semantic seg.", "human_parts": "human parts", "sal": "saliency",
                               "depth": "depth", "normals": "surface normals", "edge": "boundaries"}


def model_name(model: str, variant: str | None = None) -> str:
    """Display name: ``PAMM``, ``PAMM / scan_raster``, ``MTMamba++``, unknown names unchanged."""
    display = model_display(model)
    name = display.name if display else PUBLISHED_NAMES.get(model, model)
    if variant and variant not in ("default",) and not (model == "stl"):
        name = f"{name} / {variant}"
    return name


def backbone_name(backbone: Any) -> str:
    if not isinstance(backbone, str) or not backbone:
        return "–"
    return BACKBONE_NAMES.get(backbone, backbone)


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def arrow(column: str) -> str:
    """↓ when lower is better, ↑ otherwise (empty for columns without a direction)."""
    if column not in LOWER_IS_BETTER:
        return ""
    return "↓" if LOWER_IS_BETTER[column] else "↑"


def metric_label(column: str, with_arrow: bool = True, with_unit: bool = True) -> str:
    """``Depth RMSE (m) ↓`` — the header / axis label of a column."""
    name, unit = METRIC_LABELS.get(column, (column, ""))
    text = name
    if with_unit and unit:
        text += f" ({unit})" if unit != "°" else " (°)"
    if with_arrow and arrow(column):
        text += f" {arrow(column)}"
    return text


# ------------------------------------------------------------------------------------------- colours

# Colour-blind-safe (Okabe–Ito) colours, one per model family, the same in every figure: the suite's models
# from their YAML's display section, the published-only families here.
PUBLISHED_COLORS: dict[str, str] = {"mlore": "#E69F00", "tsp_transformer": "#8C564B"}
PUBLISHED_MARKERS: dict[str, str] = {"mlore": "<", "tsp_transformer": ">"}
BETTER_COLOR, WORSE_COLOR = "#0072B2", "#E69F00"


def measured_models() -> list[str]:
    """The suite's models in table order (their ``display.order``); papers put the proposed model last."""
    return list(model_displays())


def model_family(model: str) -> str:
    """``invpt_retrained`` → ``invpt``; ``stl_swin_large`` → ``stl``: published rows share their family's colour."""
    for family in sorted({*model_displays(), *PUBLISHED_COLORS}, key=len, reverse=True):
        if model == family or model.startswith(family + "_"):
            return family
    return model


def model_color(model: str) -> str:
    family = model_family(model)
    display = model_display(family)
    return display.color if display else PUBLISHED_COLORS.get(family, "#333333")


def model_marker(model: str) -> str:
    family = model_family(model)
    display = model_display(family)
    return display.marker if display else PUBLISHED_MARKERS.get(family, "o")


# ------------------------------------------------------------------------------------------- matplotlib

# Single-column and double-column widths of a two-column paper (inches).
COLUMN_WIDTH = 3.4
TEXT_WIDTH = 7.0


def pyplot():
    """matplotlib with the Agg backend and the project style applied; returns ``(plt, sns)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.0)
    plt.rcParams.update({
        "font.family": "DejaVu Sans",
        "axes.titlesize": 9,
        "axes.labelsize": 8.5,
        "xtick.labelsize": 7.5,
        "ytick.labelsize": 7.5,
        "legend.fontsize": 7.5,
        "legend.title_fontsize": 8,
        "figure.titlesize": 10,
        "axes.titleweight": "bold",
        "grid.linewidth": 0.5,
        "grid.alpha": 0.6,
        "lines.linewidth": 1.3,
        "savefig.dpi": 200,
        "pdf.fonttype": 42,  # TrueType in PDFs (editable text, accepted by publishers)
        "ps.fonttype": 42,
    })
    return plt, sns


def save_figure(fig, path: str | Path, dpi: int = 200) -> list[Path]:
    """Write ``path`` (PNG) and a PDF beside it, atomically; return both paths."""
    from pamm import io as pio

    path = Path(path)
    written = []
    for target in (path.with_suffix(".png"), path.with_suffix(".pdf")):
        with pio.atomic_path(target) as tmp:
            fig.savefig(tmp, format=target.suffix[1:], dpi=dpi, bbox_inches="tight", pad_inches=0.03)
        written.append(target)
    return written


def note_figure(path: str | Path, title: str, message: str) -> list[Path]:
    """A small figure that says why there is nothing to draw (keeps a declared workflow output honest)."""
    plt, _ = pyplot()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.4, 1.4))
    ax.set_axis_off()
    ax.text(0.5, 0.62, title, ha="center", va="center", fontsize=9, fontweight="bold", transform=ax.transAxes)
    ax.text(0.5, 0.3, message, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)
    written = save_figure(fig, path)
    plt.close(fig)
    return written
