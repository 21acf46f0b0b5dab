"""Paper-style tables (Markdown and LaTeX) from the summaries and the published reference numbers.

Per dataset:

* ``main_<dataset>.{md,tex}``: model, backbone, every task's headline metric (arrow in the header),
  Δm, params, GFLOPs. Published rows (``results/reference/published.csv``; approximate values carry
  a dagger and every source is a numbered footnote) above the rows measured here (mean ± std over
  seeds from ``summary_by_config.csv``, with the number of seeds).
* ``ablation_<dataset>.{md,tex}``: every PAMM variant against full PAMM (variant ``default``):
  each metric (mean ± std), its difference to full PAMM (± the std of the seed-paired differences).
* ``released_<dataset>.{md,tex}``, only where an authors' checkpoint was imported and evaluated
  (``origin`` = released_checkpoint): each metric as published beside the value reproduced here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from pamm import io as pio
from pamm.config import variant_parts
from pamm.results import plotting_style as style
from pamm.results.aggregate import RELEASED, TRAINED
from pamm.tasks import DATASET_TASKS, PAPER_SIZE, TASK_INFO

# Variants that appear in the main table (the rest are ablations).
MAIN_VARIANTS: dict[str, tuple[str, ...]] = {"pamm": ("default", "as_released")}
SETTING_KEYS = ["backbone", "scale", "img_h", "img_w", "iterations"]
EFFICIENCY_COLUMNS = ["params_m", "gflops"]
MISSING = {"md": "–", "tex": "--"}
APPROX_NOTE = ("† approximate: recalled, derived or taken from a third-party restatement, not read from the "
               "source itself (see the numbered source notes).")


# ============================================================================================ formatting


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def decimals(column: str, value: float) -> int:
    """Digits after the point: fixed per metric, by magnitude for params / GFLOPs / latency / memory."""
    if column in style.DECIMALS:
        return style.DECIMALS[column]
    magnitude = abs(value)
    return 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3


def format_number(column: str, value: float, signed: bool = False) -> str:
    digits = decimals(column, value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def tex_escape(text: str) -> str:
    """Plain text → LaTeX (special characters escaped, the symbols we use as math)."""
    out = []
    for char in str(text):
        out.append({
            "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
            "~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}",
            "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "±": r"$\pm$", "†": r"$^\dagger$",
            "°": r"$^\circ$", "×": r"$\times$", "–": "--", "≈": r"$\approx$", "·": r"$\cdot$",
        }.get(char, char))
    return "".join(out)


def format_cell(column: str, mean: Any, std: Any = None, *, n: int | None = None, approx: bool = False,
                bold: bool = False, signed: bool = False, style_: str = "md") -> str:
    """``55.90``, ``55.90 ± 0.31``, ``55.90†``, bold; ``–`` when missing. ``style_`` is ``md`` or ``tex``."""
    if not _finite(mean):
        return MISSING[style_]
    text = format_number(column, float(mean), signed)
    if style_ == "md":
        if bold:
            text = f"**{text}**"
        if _finite(std) and (n is None or n > 1):
            text += f" ± {format_number(column, float(std))}"
        if approx:
            text += "†"
        return text
    if text[0] in "+-":
        text = f"${text[0]}${text[1:]}"  # a real minus sign, not a hyphen
    if bold:
        text = rf"\textbf{{{text}}}"
    if _finite(std) and (n is None or n > 1):
        text += rf" $\pm$ {format_number(column, float(std))}"
    if approx:
        text += r"$^\dagger$"
    return text


@dataclass
class Table:
    """One table, kept as numbers-with-formatting so it can be rendered as Markdown or LaTeX."""

    title: str
    columns: list[str]  # display headers (unicode; converted for LaTeX)
    rows: list[dict[str, Any]]  # column header -> plain text, or a dict of format_cell kwargs
    groups: list[tuple[int, str]] = field(default_factory=list)  # (first row index, group caption)
    footnotes: list[str] = field(default_factory=list)
    label: str = ""

    def cells(self, style_: str) -> pd.DataFrame:
        records = []
        for row in self.rows:
            record = []
            for column in self.columns:
                value = row.get(column, "")
                if isinstance(value, dict):
                    record.append(format_cell(style_=style_, **value))
                elif style_ == "tex":
                    record.append(tex_escape(value) if value != "" else "")
                else:
                    record.append(str(value) if value != "" else "")
            records.append(record)
        headers = self.columns if style_ == "md" else [tex_escape(c) for c in self.columns]
        return pd.DataFrame(records, columns=headers)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        frame = self.cells("md")
        if frame.empty:
            lines.append("_(no rows)_")
        else:
            blocks = self.groups or [(0, "")]
            bounds = [start for start, _ in blocks] + [len(frame)]
            for (start, caption), stop in zip(blocks, bounds[1:]):
                if caption:
                    lines += [f"**{caption}**", ""]
                part = frame.iloc[start:stop]
                lines += [part.to_markdown(index=False, disable_numparse=True, colalign=["left"] * len(frame.columns)), ""]
        lines += [f"{note}  " for note in self.footnotes]
        return "\n".join(lines).rstrip() + "\n"

    def to_latex(self) -> str:
        frame = self.cells("tex")
        if frame.empty:
            return f"% {self.title}: no rows\n"
        numeric = [any(isinstance(row.get(c), dict) for row in self.rows) for c in self.columns]
        column_format = "".join("r" if is_number else "l" for is_number in numeric)
        body = frame.to_latex(index=False, escape=False, column_format=column_format,
                              caption=tex_escape(self.title), label=self.label or None, position="t")
        lines = body.splitlines()
        # Group captions as full-width rows (a \midrule between groups).
        if self.groups:
            first_row = next(i for i, line in enumerate(lines) if line.strip() == r"\midrule") + 1
            for offset, (start, caption) in enumerate(sorted(self.groups, reverse=True)):
                insert_at = first_row + start
                caption_row = rf"\multicolumn{{{len(self.columns)}}}{{l}}{{\textit{{{tex_escape(caption)}}}}} \\"
                extra = [caption_row] if start == 0 else [r"\midrule", caption_row]
                lines[insert_at:insert_at] = extra
        if self.footnotes:
            end = max(i for i, line in enumerate(lines) if line.strip() == r"\end{table}")
            notes = [r"\par\smallskip\footnotesize"] + [tex_escape(note) + r"\par" for note in self.footnotes]
            lines[end:end] = notes
        text = "% needs \\usepackage{booktabs} and \\usepackage{graphicx}\n" + "\n".join(lines) + "\n"
        # Wide tables: let LaTeX shrink them to the text width.
        return text.replace(r"\begin{tabular}", r"\resizebox{\linewidth}{!}{\begin{tabular}").replace(
            r"\end{tabular}", r"\end{tabular}}")


# ============================================================================================ inputs


def load_published(path: str | Path | None) -> pd.DataFrame:
    """``published.csv`` with a boolean ``approximate`` column; an empty frame when there is no file."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame(columns=["dataset", "model", "backbone", "approximate", "source", "note"])
    frame = pd.read_csv(path)
    frame["approximate"] = frame["approximate"].map(
        lambda v: str(v).strip().lower() in ("true", "1", "yes") if not pd.isna(v) else False
    )
    return frame


def _config_rows(by_config: pd.DataFrame, dataset: str, origin: str = TRAINED) -> pd.DataFrame:
    """``dataset``'s configurations of one origin (trained here, or imported from a released checkpoint)."""
    if by_config is None or by_config.empty:
        return pd.DataFrame()
    origins = by_config["origin"].fillna(TRAINED) if "origin" in by_config else pd.Series(TRAINED, index=by_config.index)
    return by_config[(by_config["dataset"] == dataset) & (origins == origin)]


def _setting_text(row: pd.Series) -> str:
    parts = []
    if isinstance(row.get("scale"), str):
        parts.append(row["scale"])
    if _finite(row.get("img_h")) and _finite(row.get("img_w")):
        parts.append(f"{int(row['img_h'])}×{int(row['img_w'])}")
    if _finite(row.get("iterations")):
        parts.append(f"{int(row['iterations'])} it.")
    return ", ".join(parts)


def _value(row: pd.Series, column: str, suffix: str) -> float:
    key = f"{column}_{suffix}"
    return float(row[key]) if key in row and _finite(row[key]) else float("nan")


# ============================================================================================ main table


def metric_columns(dataset: str) -> list[str]:
    return [TASK_INFO[task].metric for task in DATASET_TASKS[dataset]] + ["delta_m_pct"]


def main_table(dataset: str, by_config: pd.DataFrame, published: pd.DataFrame) -> Table:
    """Published rows, then the rows measured here, shaped like the papers' main tables."""
    metrics = metric_columns(dataset)
    value_columns = metrics + EFFICIENCY_COLUMNS
    headers = ["Model", "Backbone", "Source", "Setting"] + [style.metric_label(c) for c in value_columns] + ["Seeds"]
    header_of = dict(zip(value_columns, headers[4:-1]))
    rows: list[dict[str, Any]] = []
    footnotes: list[str] = []
    groups: list[tuple[int, str]] = []

    # ---- published
    pub = published[published["dataset"] == dataset] if not published.empty else published
    sources: list[str] = []
    dropped: list[str] = []
    any_approx = False
    for _, entry in pub.iterrows():
        present = [c for c in value_columns if c in entry and _finite(entry[c])]
        label = style.model_name(str(entry["model"]))
        if not present:
            dropped.append(f"{label} ({entry.get('source', '?')})")
            continue
        source = str(entry.get("source", "")).strip()
        note = str(entry.get("note", "")).strip() if isinstance(entry.get("note"), str) else ""
        text = f"{source}: {note}" if note else source
        if text not in sources:
            sources.append(text)
        approx = bool(entry.get("approximate", False))
        any_approx |= approx
        row: dict[str, Any] = {
            "Model": label, "Backbone": style.backbone_name(entry.get("backbone")),
            "Source": f"published [{sources.index(text) + 1}]",
            "Setting": "paper, " + "×".join(str(s) for s in PAPER_SIZE.get(dataset, ())),
            "Seeds": "",
        }
        for column in value_columns:
            row[header_of[column]] = {"column": column, "mean": entry.get(column), "approx": approx}
        rows.append(row)
    if rows:
        groups.append((0, "Published (paper-scale models and data)"))

    # ---- measured here
    measured = _measured_rows(dataset, by_config)
    if measured:
        groups.append((len(rows), "Measured here (mean ± std over seeds)"))
        best = _best_values(measured, metrics)
        for entry in measured:
            row = {"Model": entry["label"], "Backbone": style.backbone_name(entry["backbone"]), "Source": "measured",
                   "Setting": entry["setting"], "Seeds": str(entry["n"]) if entry["n"] else ""}
            for column in value_columns:
                mean, std = entry["values"].get(column, (float("nan"), float("nan")))
                if column in EFFICIENCY_COLUMNS:
                    std = float("nan")  # the same architecture for every seed
                bold = entry["model"] != "stl" and column in best and _finite(mean) and float(mean) == best[column]
                row[header_of[column]] = {"column": column, "mean": mean, "std": std, "n": entry["n"], "bold": bold}
            rows.append(row)

    # ---- notes
    if any_approx:
        footnotes.append(APPROX_NOTE)
    footnotes += [f"[{i}] {text}" for i, text in enumerate(sources, start=1)]
    if dropped:
        footnotes.append("Not shown (no numbers in published.csv yet): " + "; ".join(dropped) + ".")
    if measured:
        footnotes.append(
            "Measured rows: mean ± std (ddof 1) over seeds from summary_by_config.csv; std omitted for one seed; "
            "bold = best measured multi-task value. They come from this repository's runs at the stated setting "
            "and are not comparable in absolute terms with paper-scale published numbers."
        )
        if any(e["model"] == "stl" for e in measured):
            footnotes.append("Single-task baselines: each task from its own single-task model (the Δm reference, "
                             "so Δm = 0); params and GFLOPs summed over the task models.")
    else:
        footnotes.append(f"No measured runs of {dataset} in summary_by_config.csv.")
    footnotes.append("Δm: mean relative improvement over the single-task baselines (higher is better); for measured "
                     "rows empty where no single-task runs share the row's backbone, size, recipe scale and seed. "
                     "GFLOPs at batch 1, selective scan included.")
    title = f"{style.dataset_name(dataset)}: main results"
    return Table(title=title, columns=headers, rows=rows, groups=groups, footnotes=footnotes,
                 label=f"tab:main_{dataset}")


def _measured_rows(dataset: str, by_config: pd.DataFrame) -> list[dict[str, Any]]:
    frame = _config_rows(by_config, dataset)
    if frame.empty:
        return []
    value_columns = metric_columns(dataset) + EFFICIENCY_COLUMNS
    out: list[dict[str, Any]] = []
    # Single-task baselines: one row per setting, each task from its own model.
    stl = frame[frame["model"] == "stl"]
    for _, part in stl.groupby(SETTING_KEYS, dropna=False, sort=True):
        values: dict[str, tuple[float, float]] = {}
        for task in DATASET_TASKS[dataset]:  # stl_<task>, or composed onto another backbone (stl_<task>+swin)
            match = part[part["variant"].map(lambda v: variant_parts(str(v))[0]) == f"stl_{task}"]
            if not match.empty:
                column = TASK_INFO[task].metric
                values[column] = (_value(match.iloc[0], column, "mean"), _value(match.iloc[0], column, "std"))
        for column in EFFICIENCY_COLUMNS:
            means = [_value(r, column, "mean") for _, r in part.iterrows()]
            values[column] = (sum(means), float("nan")) if means and all(_finite(m) for m in means) else (float("nan"),) * 2
        if all(TASK_INFO[t].metric in values for t in DATASET_TASKS[dataset]):
            values["delta_m_pct"] = (0.0, float("nan"))
        first = part.iloc[0]
        out.append({"model": "stl", "label": style.model_name("stl") + f" ({len(part)} models)", "backbone": first["backbone"],
                    "setting": _setting_text(first), "n": int(part["n_seeds"].min()), "values": values})
    others = frame[frame["model"] != "stl"]
    keep = others.apply(lambda r: r["variant"] in MAIN_VARIANTS.get(r["model"], ("default",)), axis=1) if not others.empty else []
    others = others[keep] if len(others) else others
    rank = {m: i for i, m in enumerate(style.measured_models())}  # the models' display.order
    order = sorted(others.index, key=lambda i: (rank.get(others.at[i, "model"], len(rank)), str(others.at[i, "model"]),
                                                str(others.at[i, "variant"]), _setting_text(others.loc[i])))
    others = others.loc[order]
    for _, entry in others.iterrows():
        values = {c: (_value(entry, c, "mean"), _value(entry, c, "std")) for c in value_columns}
        out.append({"model": entry["model"], "label": style.model_name(entry["model"], entry["variant"]),
                    "backbone": entry["backbone"], "setting": _setting_text(entry), "n": int(entry["n_seeds"]),
                    "values": values})
    return out


def _best_values(measured: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
    best: dict[str, float] = {}
    for column in metrics:
        values = [float(e["values"][column][0]) for e in measured
                  if e["model"] != "stl" and column in e["values"] and _finite(e["values"][column][0])]
        if len(values) >= 2:
            best[column] = min(values) if style.LOWER_IS_BETTER.get(column) else max(values)
    return best


# ============================================================================================ ablations


def ablation_frame(dataset: str, by_config: pd.DataFrame, summary: pd.DataFrame | None = None,
                   model: str = "pamm", reference: str = "default") -> pd.DataFrame:
    """Long table: one row per (setting, variant, metric) with the variant's mean/std, full model's mean,
    the difference (seed-paired when both have the same seeds) and its std, and whether it is better.
    """
    frame = _config_rows(by_config, dataset)
    columns = ["setting", "variant", "metric", "mean", "std", "n", "reference_mean", "diff", "diff_std", "n_paired",
               "better"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame = frame[frame["model"] == model]
    per_seed = summary[(summary["dataset"] == dataset) & (summary["model"] == model)] if summary is not None else None
    records = []
    metrics = metric_columns(dataset) + EFFICIENCY_COLUMNS
    for key, part in frame.groupby(SETTING_KEYS, dropna=False, sort=True):
        ref = part[part["variant"] == reference]
        if ref.empty:
            continue
        ref = ref.iloc[0]
        setting = _setting_text(ref)
        for _, entry in part.iterrows():
            for column in metrics:
                mean = _value(entry, column, "mean")
                ref_mean = _value(ref, column, "mean")
                if not _finite(mean) and not _finite(ref_mean):
                    continue
                diff, diff_std, n_paired = mean - ref_mean, float("nan"), 0
                if per_seed is not None and column in per_seed and entry["variant"] != reference:
                    paired = _paired_differences(per_seed, dict(zip(SETTING_KEYS, key)), entry["variant"], reference, column)
                    n_paired = len(paired)
                    if n_paired:
                        diff = float(paired.mean())
                        diff_std = float(paired.std(ddof=1)) if n_paired > 1 else float("nan")
                better = None
                if _finite(diff) and diff != 0 and column in style.LOWER_IS_BETTER:
                    better = (diff < 0) == style.LOWER_IS_BETTER[column]
                records.append({"setting": setting, "variant": entry["variant"], "metric": column, "mean": mean,
                                "std": _value(entry, column, "std"), "n": int(entry["n_seeds"]),
                                "reference_mean": ref_mean, "diff": diff, "diff_std": diff_std,
                                "n_paired": n_paired, "better": better})
    return pd.DataFrame(records, columns=columns)


def _paired_differences(per_seed: pd.DataFrame, setting: dict[str, Any], variant: str, reference: str,
                        column: str) -> pd.Series:
    rows = per_seed
    for key, value in setting.items():
        if key in rows:
            rows = rows[rows[key].isna()] if pd.isna(value) else rows[rows[key] == value]
    a = rows[rows["variant"] == variant].set_index("seed")[column]
    b = rows[rows["variant"] == reference].set_index("seed")[column]
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    return joined["a"] - joined["b"]


def _diff_header(column: str) -> str:
    name = style.METRIC_LABELS[column][0]
    return "Δ of Δm" if column == "delta_m_pct" else f"Δ {name}"


def variant_descriptions(variants: Iterable[str], ablations_dir: str | Path | None = None) -> dict[str, str]:
    """First sentence of each ablation overlay's ``description`` (empty when the file is missing)."""
    import yaml

    from pamm.config import ABLATIONS_DIR

    folder = Path(ablations_dir) if ablations_dir else ABLATIONS_DIR
    out = {}
    for variant in variants:
        path = folder / f"{variant}.yaml"
        try:
            text = str((yaml.safe_load(path.read_text()) or {}).get("description", "")).strip()
        except (OSError, yaml.YAMLError):
            text = ""
        first = text.split(". ")[0].split(": ")[0].strip().rstrip(".")
        out[variant] = " ".join(first.split())
    return out


def ablation_table(dataset: str, by_config: pd.DataFrame, summary: pd.DataFrame | None = None,
                   ablations_dir: str | Path | None = None) -> Table:
    long = ablation_frame(dataset, by_config, summary)
    present = [c for c in metric_columns(dataset) if c in set(long["metric"])]
    headers = ["Variant"]
    for column in present:
        headers += [style.metric_label(column), _diff_header(column)]
    headers += [style.metric_label(c) for c in EFFICIENCY_COLUMNS] + ["Seeds"]
    rows: list[dict[str, Any]] = []
    groups: list[tuple[int, str]] = []
    settings = list(dict.fromkeys(long["setting"])) if not long.empty else []
    variants_seen: list[str] = []
    for setting in settings:
        part = long[long["setting"] == setting]
        if len(settings) > 1:
            groups.append((len(rows), f"Setting: {setting}"))
        order = ["default"] + sorted(v for v in part["variant"].unique() if v != "default")
        for variant in order:
            entries = part[part["variant"] == variant].set_index("metric")
            if entries.empty:
                continue
            variants_seen.append(variant)
            label = "full PAMM (default)" if variant == "default" else variant
            row: dict[str, Any] = {"Variant": label, "Seeds": str(int(entries["n"].iloc[0]))}
            for column in present:
                if column not in entries.index:
                    continue
                e = entries.loc[column]
                row[style.metric_label(column)] = {"column": column, "mean": e["mean"], "std": e["std"], "n": int(e["n"])}
                if variant == "default":
                    row[_diff_header(column)] = "0 (ref.)"
                else:
                    row[_diff_header(column)] = {"column": column, "mean": e["diff"], "std": e["diff_std"],
                                                                  "n": int(e["n_paired"]) or None, "signed": True}
            for column in EFFICIENCY_COLUMNS:
                if column in entries.index:
                    row[style.metric_label(column)] = {"column": column, "mean": entries.loc[column, "mean"]}
            rows.append(row)
    footnotes = []
    if rows:
        footnotes.append(
            "Values: mean ± std (ddof 1) over seeds. Δ: variant minus full PAMM of the same setting, the mean of "
            "seed-paired differences when both ran the same seeds (± their std for two or more pairs), otherwise "
            "the difference of the means. The arrow in each metric's header says which direction is better."
        )
        descriptions = variant_descriptions([v for v in dict.fromkeys(variants_seen) if v != "default"], ablations_dir)
        footnotes += [f"{v}: {d}." for v, d in descriptions.items() if d]
    else:
        footnotes.append(f"No PAMM ablation runs of {dataset} (model pamm with variant default plus at least one "
                         "other variant) in summary_by_config.csv.")
    return Table(title=f"{style.dataset_name(dataset)}: PAMM ablations against full PAMM", columns=headers, rows=rows,
                 groups=groups, footnotes=footnotes, label=f"tab:ablation_{dataset}")


# ============================================================================================ writing


# ============================================================================================ released


def released_table(dataset: str, by_config: pd.DataFrame, published: pd.DataFrame) -> Table | None:
    """Authors' checkpoints evaluated here: each metric as published beside the value reproduced here.

    ``None`` when no released checkpoint of ``dataset`` was imported and evaluated."""
    frame = _config_rows(by_config, dataset, RELEASED)
    if frame.empty:
        return None
    metrics = [c for c in metric_columns(dataset) if c != "delta_m_pct"]
    headers = ["Model", "Backbone"]
    for column in metrics:
        headers += [f"{style.metric_label(column)} published", f"{style.metric_label(column)} reproduced"]
    pub = published[published["dataset"] == dataset] if not published.empty else published
    rows, missing = [], []
    for _, entry in frame.sort_values(["model", "variant"]).iterrows():
        match = pub[pub["model"] == entry["model"]] if not pub.empty else pub
        if match.empty:
            missing.append(style.model_name(entry["model"]))
        source = match.iloc[0] if not match.empty else {}
        approx = bool(source.get("approximate", False)) if len(match) else False
        row: dict[str, Any] = {"Model": style.model_name(entry["model"], entry["variant"]),
                               "Backbone": style.backbone_name(entry["backbone"])}
        for column, (pub_header, ours_header) in zip(metrics, zip(headers[2::2], headers[3::2])):
            row[pub_header] = {"column": column, "mean": source.get(column, float("nan")), "approx": approx}
            row[ours_header] = {"column": column, "mean": _value(entry, column, "mean")}
        rows.append(row)
    footnotes = ["Published: results/reference/published.csv (the authors' numbers for their checkpoint); reproduced: "
                 "the same checkpoint imported with `pamm-bench import-checkpoint` and evaluated here."]
    if missing:
        footnotes.append("No published row for: " + ", ".join(missing) + ".")
    return Table(title=f"{style.dataset_name(dataset)}: released checkpoints, published vs reproduced", columns=headers,
                 rows=rows, footnotes=footnotes, label=f"tab:released_{dataset}")


def write_table(table: Table, out_dir: str | Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.tex"]
    pio.write_text(paths[0], table.to_markdown())
    pio.write_text(paths[1], table.to_latex())
    return paths


def make_tables(summary_csv: str | Path | None, by_config_csv: str | Path, published_csv: str | Path | None,
                out_dir: str | Path, datasets: Sequence[str] | None = None,
                ablations_dir: str | Path | None = None) -> list[Path]:
    """Write ``main_<dataset>.{md,tex}`` and ``ablation_<dataset>.{md,tex}`` for every dataset, and
    ``released_<dataset>.{md,tex}`` where released checkpoints were evaluated."""
    by_config = pd.read_csv(by_config_csv)
    summary = pd.read_csv(summary_csv) if summary_csv and Path(summary_csv).is_file() else None
    if summary_csv and summary is None:
        print(f"note: {summary_csv} not found: ablation differences are differences of means, without a paired std")
    published = load_published(published_csv)
    if published_csv and published.empty:
        print(f"note: {published_csv} not found or empty: main tables hold measured rows only")
    if not datasets:
        datasets = sorted(set(by_config["dataset"]) | set(published.get("dataset", [])))
    written: list[Path] = []
    for dataset in datasets:
        if dataset not in DATASET_TASKS:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(DATASET_TASKS)}")
        written += write_table(main_table(dataset, by_config, published), out_dir, f"main_{dataset}")
        written += write_table(ablation_table(dataset, by_config, summary, ablations_dir), out_dir, f"ablation_{dataset}")
        released = released_table(dataset, by_config, published)
        if released is not None:
            written += write_table(released, out_dir, f"released_{dataset}")
    return written
