"""Tables and figures from fabricated summaries, published numbers and run directories (no training)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pamm.engine.sweep import SWEEP_COLUMNS, resolution_sweep
from pamm.results import figures, tables
from pamm.results.aggregate import summarise_over_seeds
from pamm.tasks import DATASET_TASKS, IGNORE_INDEX

PAMM_VARIANTS = ["default", "no_task_prior", "scan_raster", "dir1"]
MAIN_MODELS = ["mtl", "invpt", "mtmamba", "pamm"]
SEEDS = [0, 1]
H, W = 24, 32


def _metrics(dataset: str, model: str, variant: str, seed: int, rng: np.random.Generator) -> dict[str, float]:
    """Plausible numbers; PAMM default is the best and each ablation loses a known amount."""
    base = {"semseg_miou": 30.0, "parts_miou": 40.0, "sal_maxf": 70.0, "depth_rmse": 0.80, "normals_merr": 30.0,
            "edge_odsf": 50.0}
    quality = {"stl": 0.0, "mtl": -1.0, "invpt": 1.0, "mtmamba": 1.5, "pamm": 3.0}[model]
    if model == "pamm" and variant != "default":
        quality -= {"no_task_prior": 1.0, "scan_raster": 0.5, "dir1": 2.0}[variant]
    noise = 0.1 * (seed - 0.5)
    out = {}
    for column, value in base.items():
        lower = column in ("depth_rmse", "normals_merr")
        out[column] = value * (1 - 0.01 * quality) + noise * 0.01 if lower else value + quality + noise
    return out


def fabricate(root: Path, datasets=("nyud", "pascal")) -> dict[str, Path]:
    """summary.csv, summary_by_config.csv, published.csv and run dirs with train_log.csv + examples.pt."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset in datasets:
        tasks = DATASET_TASKS[dataset]
        configs = [("stl", f"stl_{t}") for t in tasks] + [(m, "default") for m in MAIN_MODELS]
        configs += [("pamm", v) for v in PAMM_VARIANTS if v != "default"]
        for model, variant in configs:
            for seed in SEEDS:
                metrics = _metrics(dataset, model, variant, seed, rng)
                row = {"run_id": f"{dataset}/{model}/{variant}/seed{seed}", "dataset": dataset, "model": model,
                       "variant": variant, "seed": seed, "backbone": "vit_tiny_patch16_224", "scale": "tiny",
                       "img_h": H, "img_w": W, "iterations": 10,
                       "params_m": {"stl": 0.9, "mtl": 1.0, "invpt": 1.2, "mtmamba": 1.4, "pamm": 1.1}[model],
                       "gflops": {"stl": 0.2, "mtl": 0.25, "invpt": 0.29, "mtmamba": 0.15, "pamm": 0.26}[model]}
                if model == "stl":
                    task = variant.removeprefix("stl_")
                    column = {"semseg": "semseg_miou", "human_parts": "parts_miou", "sal": "sal_maxf",
                              "depth": "depth_rmse", "normals": "normals_merr", "edge": "edge_odsf"}[task]
                    row[column] = metrics[column]
                    row["delta_m_pct"] = math.nan
                else:
                    row.update({k: v for k, v in metrics.items() if k in _columns(dataset)})
                    row["delta_m_pct"] = {"mtl": -1.5, "invpt": 1.0, "mtmamba": 1.8, "pamm": 3.0}[model] - (
                        0 if variant == "default" else PAMM_VARIANTS.index(variant) * 0.7) + 0.1 * seed
                rows.append(row)
                run = root / "runs" / dataset / model / variant / f"seed{seed}"
                run.mkdir(parents=True, exist_ok=True)
                its = np.arange(2, 12, 2)
                pd.DataFrame({"iteration": its, "loss": 5.0 / its + 0.1 * seed, "lr": 1e-3, "seconds": its * 0.1}).to_csv(
                    run / "train_log.csv", index=False)
                run_tasks = [variant.removeprefix("stl_")] if model == "stl" else list(tasks)
                torch.save(_examples(dataset, run_tasks, seed=SEEDS.index(seed)), run / "examples.pt")
    summary = pd.DataFrame(rows)
    paths = {"summary": root / "summary.csv", "by_config": root / "summary_by_config.csv",
             "published": root / "published.csv", "runs": root / "runs"}
    summary.to_csv(paths["summary"], index=False)
    summarise_over_seeds(summary).to_csv(paths["by_config"], index=False)
    pd.DataFrame([
        {"dataset": "nyud", "model": "invpt", "backbone": "vit_large_patch16_384", "semseg_miou": 53.56,
         "depth_rmse": 0.5183, "normals_merr": 19.04, "edge_odsf": 78.10, "approximate": "false",
         "source": "InvPT README", "note": ""},
        {"dataset": "nyud", "model": "mtmamba_pp", "backbone": "swin_large_patch4_window12_384", "semseg_miou": 57.01,
         "depth_rmse": 0.4818, "normals_merr": 18.27, "edge_odsf": 79.40, "delta_m_pct": 4.82, "params_m": 315,
         "gflops": 524, "approximate": "true", "source": "third-party restatement", "note": "recalled"},
        {"dataset": "nyud", "model": "pamm", "backbone": "vit_large_patch16_384", "approximate": "",
         "source": "PAMM paper", "note": "not transcribed"},
        {"dataset": "pascal", "model": "mlore", "backbone": "vit_large_patch16_384", "semseg_miou": 81.41,
         "parts_miou": 70.52, "sal_maxf": 84.90, "normals_merr": 13.51, "edge_odsf": 75.42, "params_m": 407,
         "gflops": 571, "approximate": "false", "source": "MLoRE README", "note": ""},
    ]).to_csv(paths["published"], index=False)
    return paths


def _columns(dataset: str) -> list[str]:
    return tables.metric_columns(dataset)[:-1]


def _examples(dataset: str, tasks: list[str], seed: int, n: int = 3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    channels = DATASET_TASKS[dataset]
    out: dict = {"id": [f"img{i:03d}" for i in range(n)], "image": torch.randn(n, 3, H, W, generator=gen)}
    for task in tasks:
        c = channels[task]
        if task in ("semseg", "human_parts", "sal"):
            target = torch.randint(0, c, (n, H, W), generator=gen)
            target[:, :2] = IGNORE_INDEX
            pred = torch.randn(n, c, H, W, generator=gen)
        elif task == "depth":
            target = torch.rand(n, 1, H, W, generator=gen) * 5
            target[:, :, :2] = 0
            pred = torch.rand(n, 1, H, W, generator=gen) * 5
        elif task == "normals":
            target = torch.nn.functional.normalize(torch.randn(n, 3, H, W, generator=gen), dim=1)
            target[:, :, :2] = IGNORE_INDEX
            pred = torch.randn(n, 3, H, W, generator=gen) * 3
        else:
            target = (torch.rand(n, 1, H, W, generator=gen) > 0.9).float()
            pred = torch.randn(n, 1, H, W, generator=gen)
        out[f"target_{task}"], out[f"pred_{task}"] = target, pred
    return out


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    return fabricate(tmp_path_factory.mktemp("results"))


# ---------------------------------------------------------------------------------------------- tables


def test_main_table_has_published_and_measured_rows_with_arrows(fab, tmp_path):
    written = tables.make_tables(fab["summary"], fab["by_config"], fab["published"], tmp_path)
    assert sorted(p.name for p in written) == sorted(
        f"{kind}_{d}.{ext}" for kind in ("main", "ablation") for d in ("nyud", "pascal") for ext in ("md", "tex"))
    md = (tmp_path / "main_nyud.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    for expected in ("Semseg mIoU (%) ↑", "Depth RMSE (m) ↓", "Normals mErr (°) ↓", "Edge odsF (%) ↑", "Δm (%) ↑",
                     "Params (M) ↓", "GFLOPs ↓"):
        assert expected in header
    assert "Parts mIoU" not in header  # not a NYUD task
    # Published rows (approximate ones with a dagger and the footnote) come before measured rows.
    assert "| InvPT" in md and "53.56" in md and "57.01†" in md and "† approximate" in md
    assert md.index("published [1]") < md.index("| measured")
    # The PAMM paper row has no numbers yet: not shown, but said so.
    assert "Not shown (no numbers in published.csv yet): PAMM (PAMM paper)" in md
    # Measured rows: mean ± std over the two seeds, n = 2, and the single-task row merges the stl runs.
    by_config = pd.read_csv(fab["by_config"])
    pamm = by_config[(by_config.dataset == "nyud") & (by_config.model == "pamm") & (by_config.variant == "default")].iloc[0]
    assert f"{pamm.semseg_miou_mean:.2f}** ± {pamm.semseg_miou_std:.2f}" in md  # best measured → bold
    pamm_line = next(line for line in md.splitlines() if line.startswith("| PAMM "))
    assert pamm_line.rstrip().endswith("| 2 |") or "| 2" in pamm_line
    assert "Single-task baselines (4 models)" in md
    assert "PAMM / no_task_prior" not in md  # ablations live in the ablation table
    tex = (tmp_path / "main_nyud.tex").read_text()
    assert r"$\uparrow$" in tex and r"$\downarrow$" in tex and r"$^\dagger$" in tex and r"\toprule" in tex
    assert r"\textit{Measured here" in tex and r"\pm" in tex


def test_ablation_table_differences_are_seed_paired(fab, tmp_path):
    tables.make_tables(fab["summary"], fab["by_config"], fab["published"], tmp_path, datasets=["nyud"])
    long = tables.ablation_frame("nyud", pd.read_csv(fab["by_config"]), pd.read_csv(fab["summary"]))
    dir1 = long[(long.variant == "dir1") & (long.metric == "semseg_miou")].iloc[0]
    assert dir1["diff"] == pytest.approx(-2.0) and dir1["better"] is False and dir1["n_paired"] == 2
    assert dir1["diff_std"] == pytest.approx(0.0, abs=1e-9)
    rmse = long[(long.variant == "dir1") & (long.metric == "depth_rmse")].iloc[0]
    assert rmse["diff"] > 0 and rmse["better"] is False  # higher RMSE is worse
    md = (tmp_path / "ablation_nyud.md").read_text()
    lines = md.splitlines()
    assert any(line.startswith("| full PAMM (default)") for line in lines)
    dir1_line = next(line for line in lines if line.startswith("| dir1"))
    assert "-2.00 ± 0.00" in dir1_line
    assert "Δ Semseg mIoU" in md and "Depth RMSE (m) ↓" in md
    assert "dir1: PAMM with one scan direction" in md  # the overlay's description as a footnote
    assert (tmp_path / "ablation_nyud.tex").read_text().count(r"\midrule") >= 1


def test_tables_without_measured_ablations_say_so(tmp_path):
    by_config = pd.DataFrame([{"dataset": "nyud", "model": "mtl", "variant": "default", "backbone": "b", "scale": "tiny",
                               "img_h": 8, "img_w": 8, "iterations": 1, "n_seeds": 1, "semseg_miou_mean": 10.0,
                               "semseg_miou_std": float("nan")}])
    by_config.to_csv(tmp_path / "bc.csv", index=False)
    tables.make_tables(None, tmp_path / "bc.csv", tmp_path / "missing.csv", tmp_path / "out", datasets=["nyud"])
    assert "No PAMM ablation runs of nyud" in (tmp_path / "out" / "ablation_nyud.md").read_text()
    main = (tmp_path / "out" / "main_nyud.md").read_text()
    assert "10.00" in main and "published [" not in main


# ---------------------------------------------------------------------------------------------- figures


def test_all_figures_are_written(fab, tmp_path):
    sweep = pd.DataFrame([{"model": m, "variant": "default", "dataset": "nyud", "scale": "tiny", "img_h": s,
                           "img_w": s, "tokens": (s // 8) ** 2, "params_m": 1.0, "gflops": 0.01 * s, "latency_ms": s * k,
                           "peak_mem_mib": 500 + s, "peak_mem_method": "process_peak_rss", "device": "cpu",
                           "scan_backend": "torch", "repeats": 3}
                          for m, k in (("pamm", 1.0), ("mtmamba", 2.0), ("invpt", 0.5)) for s in (64, 96, 128)])
    sweep.to_csv(tmp_path / "sweep.csv", index=False)
    out = tmp_path / "fig"
    written = figures.make_figures(fab["summary"], fab["runs"], out, by_config_csv=fab["by_config"],
                                   published_csv=fab["published"], sweep_csv=tmp_path / "sweep.csv", scan_grid=(12, 16),
                                   datasets=["pascal"], n_examples=1)
    names = {p.name for p in written}
    expected = {"metrics_by_model.png", "training_curves.png", "resolution_sweep.png", "scan_orders.png"}
    expected |= {f"{kind}_pascal.png" for kind in ("pareto", "ablation", "qualitative")}
    assert names == expected
    for name in expected:
        assert (out / name).stat().st_size > 5000
        assert (out / name).with_suffix(".pdf").stat().st_size > 1000


def test_missing_inputs_are_skipped_with_a_note(fab, tmp_path, capsys):
    written = figures.make_figures(fab["summary"], fab["runs"], tmp_path, sweep_csv=tmp_path / "nope.csv",
                                   only=["resolution_sweep", "training_curves"])
    assert [p.name for p in written] == ["training_curves.png"]
    assert "resolution sweep" in capsys.readouterr().out
    written = figures.make_figures(tmp_path / "no_summary.csv", tmp_path / "runs", tmp_path / "x", only=["ablation"],
                                   datasets=["nyud"])
    assert written == []


def test_pareto_front_and_label_placement():
    x = np.array([1.0, 2.0, 3.0, 1.5])
    y = np.array([1.0, 3.0, 2.0, 0.5])
    assert sorted(figures.pareto_front(x, y).tolist()) == [0, 1]
    plt, _ = figures._pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    xs, ys = [1.0, 1.02, 1.04, 1.06], [1.0, 1.0, 1.0, 1.0]
    ax.scatter(xs, ys)
    ax.set_xlim(0.5, 1.5)
    ax.set_ylim(0.5, 1.5)
    labels = figures.place_labels(ax, xs, ys, ["alpha", "beta", "gamma", "delta"])
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in labels]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j])
    plt.close(fig)


def test_task_images_follow_target_conventions():
    target = torch.tensor([[0, 1], [IGNORE_INDEX, 2]])
    rgb, _ = figures._task_image("semseg", target, True, 3)
    assert rgb.shape == (2, 2, 3) and tuple(rgb[1, 0]) == (1.0, 1.0, 1.0)
    prob, kwargs = figures._task_image("sal", torch.tensor([[[0.0]], [[100.0]]]), False, 2)
    assert prob[0, 0] == pytest.approx(1.0) and kwargs["vmax"] == 1
    normals, _ = figures._task_image("normals", torch.tensor([[[0.0]], [[0.0]], [[5.0]]]), False, 3)
    assert normals[0, 0].tolist() == pytest.approx([0.5, 0.5, 1.0])
    depth, kwargs = figures._task_image("depth", torch.tensor([[[0.0, 2.0]]]), True, 1, (1.0, 3.0))
    assert depth.mask[0, 0] and (kwargs["vmin"], kwargs["vmax"]) == (1.0, 3.0)
    assert len(set(map(tuple, figures.palette(21)))) == 21


# ---------------------------------------------------------------------------------------------- verbs


def test_tables_and_figures_verbs(fab, tmp_path, capsys):
    from pamm.cli import main

    assert main(["tables", "--summary", str(fab["summary"]), "--by-config", str(fab["by_config"]), "--published",
                 str(fab["published"]), "--out-dir", str(tmp_path / "t"), "--datasets", "pascal"]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "ablation_pascal.md", "ablation_pascal.tex", "main_pascal.md", "main_pascal.tex"]
    main_md = (tmp_path / "t" / "main_pascal.md").read_text()
    assert "Parts mIoU (%) ↑" in main_md and "Sal maxF (%) ↑" in main_md and "MLoRE" in main_md
    assert main(["figures", "--summary", str(tmp_path / "missing.csv"), "--out-dir", str(tmp_path / "f"),
                 "--sweep", str(tmp_path / "missing_sweep.csv"), "--only", "resolution_sweep"]) == 0
    assert "resolution_sweep skipped" in capsys.readouterr().out
    assert not (tmp_path / "f" / "resolution_sweep.png").exists()


def test_sweep_overrides_the_size_and_writes_the_csv(tmp_path, monkeypatch):
    import pamm.engine.profile as profile

    seen = []

    def fake_profile_config(cfg, device=None, **options):
        seen.append((cfg["run"]["model"], tuple(cfg["data"]["size"]), options["counters"]))
        h, w = cfg["data"]["size"]
        return {"params_m": 1.0, "gflops": h * w / 1e4, "latency_ms": 1.0, "peak_mem_mib": 100.0,
                "peak_mem_method": "process_peak_rss", "device": "cpu", "scan_backend": "torch"}

    monkeypatch.setattr(profile, "profile_config", fake_profile_config)
    frame = resolution_sweep(["pamm", "invpt"], "nyud", "tiny", [32, 48], tmp_path / "sweep.csv",
                             isolate=False, progress=False)
    assert seen == [("pamm", (32, 32), ("fvcore",)), ("pamm", (48, 48), ("fvcore",)),
                    ("invpt", (32, 32), ("fvcore",)), ("invpt", (48, 48), ("fvcore",))]
    written = pd.read_csv(tmp_path / "sweep.csv")
    assert list(written.columns) == SWEEP_COLUMNS and len(written) == 4
    assert written.loc[0, "tokens"] == (32 // 8) ** 2  # the tiny backbone's patch size is 8
    assert frame["gflops"].tolist() == pytest.approx([0.1024, 0.2304, 0.1024, 0.2304])


def test_single_task_rows_per_backbone_take_composed_variants():
    """stl_<task>+swin runs (ablations/swin.yaml) form their own single-task row, with every task's metric,
    and give the Swin multi-task models a Δm (matched by backbone)."""
    from pamm.results.aggregate import add_delta_m

    rows = []
    for backbone, suffix, shift in (("vit_tiny_patch16_224", "", 0.0), ("swin_tiny_patch4_window7_224", "+swin", 5.0)):
        for task, column, value in (("semseg", "semseg_miou", 30.0), ("depth", "depth_rmse", 0.8),
                                    ("normals", "normals_merr", 30.0), ("edge", "edge_odsf", 50.0)):
            rows.append({"dataset": "nyud", "model": "stl", "variant": f"stl_{task}{suffix}", "seed": 0, "tasks": task,
                         "backbone": backbone, "scale": "tiny", "img_h": H, "img_w": W, "iterations": 10,
                         column: value + shift})
    rows.append({"dataset": "nyud", "model": "mtmamba", "variant": "default", "seed": 0,
                 "tasks": "semseg,depth,normals,edge", "backbone": "swin_tiny_patch4_window7_224", "scale": "tiny",
                 "img_h": H, "img_w": W, "iterations": 10, "semseg_miou": 35.0 * 1.1, "depth_rmse": 5.8,
                 "normals_merr": 35.0, "edge_odsf": 55.0})
    summary = add_delta_m(pd.DataFrame(rows))
    assert summary.loc[summary["model"] == "mtmamba", "delta_m_pct"].iloc[0] == pytest.approx(2.5)  # (10+0+0+0)/4
    measured = tables._measured_rows("nyud", summarise_over_seeds(summary.drop(columns=["tasks"])))
    single = {row["backbone"]: row["values"] for row in measured if row["model"] == "stl"}
    assert set(single) == {"vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"}
    assert single["swin_tiny_patch4_window7_224"]["semseg_miou"][0] == pytest.approx(35.0)
    assert all(c in single["swin_tiny_patch4_window7_224"] for c in ("depth_rmse", "normals_merr", "edge_odsf"))


def test_released_checkpoints_get_a_published_vs_reproduced_table(fab, tmp_path):
    """A run imported from an authors' checkpoint (origin released_checkpoint) leaves the measured rows of the main
    table and appears beside its published numbers."""
    summary = pd.read_csv(fab["summary"])
    summary["origin"] = "trained"
    released = summary[(summary.dataset == "nyud") & (summary.model == "invpt") & (summary.seed == SEEDS[0])].copy()
    released["origin"] = "released_checkpoint"
    released["semseg_miou"] = 53.12
    frame = pd.concat([summary, released], ignore_index=True)
    by_config = tmp_path / "by_config.csv"
    summarise_over_seeds(frame).to_csv(by_config, index=False)
    written = tables.make_tables(None, by_config, fab["published"], tmp_path / "t", datasets=["nyud"])
    assert sorted(p.name for p in written if p.name.startswith("released_")) == ["released_nyud.md", "released_nyud.tex"]
    md = (tmp_path / "t" / "released_nyud.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert "Semseg mIoU (%) ↑ published" in header and "Semseg mIoU (%) ↑ reproduced" in header
    invpt = next(line for line in md.splitlines() if line.startswith("| InvPT"))
    assert "53.56" in invpt and "53.12" in invpt
    assert "53.12" not in (tmp_path / "t" / "main_nyud.md").read_text()
    # Without released runs there is no such table.
    assert tables.released_table("nyud", summarise_over_seeds(summary), tables.load_published(fab["published"])) is None
