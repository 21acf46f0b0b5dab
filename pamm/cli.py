"""``pamm-bench``: the verbs the Snakemake rules call, each runnable by hand.

Every verb takes explicit input and output paths. Heavy imports happen inside the verbs so that
``pamm-bench --help`` answers at once.
"""
from __future__ import annotations

import argparse
import errno
import re
import sys
from pathlib import Path
from typing import Any, Sequence

EPILOG = """\
typical flow (what `snakemake --cores 8 all` runs for every run of the matrix):
  pamm-bench make-synthetic --dataset nyud --out data/synthetic/NYUDv2
  pamm-bench check-dataset data/synthetic/NYUDv2 --dataset nyud
  pamm-bench train --dataset nyud --model pamm --variant scan_raster --seed 0 \\
      --data-root data/synthetic/NYUDv2 --out results/runs/nyud/pamm/scan_raster/seed0
  pamm-bench evaluate --run results/runs/nyud/pamm/scan_raster/seed0
  pamm-bench aggregate --runs results/runs --out results/summary.csv
"""


def _positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (--threads: 0 or -1 would mean nothing sensible)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _scale_arg(parser: argparse.ArgumentParser, default: str) -> None:
    """``--scale``: which recipe scale of the layered config a verb resolves (not efficiency profiling)."""
    from pamm.config import SCALES

    parser.add_argument("--scale", default=default, choices=list(SCALES),
                        help=f"recipe scale: tiny (a CPU smoke size) or paper (the published recipes); "
                        f"default {default}")


def _set_threads(threads: int | None) -> None:
    """Follow the Snakemake rule's ``threads`` so parallel jobs do not oversubscribe the cores."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    from pamm.config import deep_merge, parse_override

    merged: dict[str, Any] = {}
    for item in items:
        merged = deep_merge(merged, parse_override(item))
    return merged


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from pamm.data import make_synthetic

    make_synthetic(args.out, args.dataset, n_train=args.n_train, n_val=args.n_val, height=args.height,
                   width=args.width, seed=args.seed, progress=not args.no_progress)
    print(f"wrote synthetic {args.dataset} data to {args.out}")
    return 0


def cmd_check_dataset(args: argparse.Namespace) -> int:
    from pamm.data import check_dataset, check_dataset_cli_summary

    expected = tuple(args.expected_size) if args.expected_size else None
    report = check_dataset(args.dataset, args.root, expected_size=expected, sample=args.sample,
                           progress=not args.no_progress)
    text = check_dataset_cli_summary(report)
    print(text)
    if args.report:
        from pamm import io as pio

        pio.write_json(args.report, report)
    return 0


def apply_pretrained_map(cfg: dict[str, Any], items: Sequence[str]) -> None:
    """``--pretrained NAME=PATH``: local weights for whichever runs use backbone NAME (others untouched)."""
    from pamm.config import apply_pretrained

    mapping = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"pamm-bench train: --pretrained expects BACKBONE=PATH, got {item!r}")
        name, path = item.split("=", 1)
        mapping[name] = path
    apply_pretrained(cfg, mapping)


def cmd_train(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from pamm.config import resolve_config, resolve_weights_files
    from pamm.engine.train import train_run

    overrides = _overrides(args.set)
    if args.data_root:
        overrides.setdefault("data", {})["root"] = str(args.data_root.absolute())
    if args.scan_backend:
        overrides.setdefault("train", {}).setdefault("scan", {})["backend"] = args.scan_backend
    cfg = resolve_config(args.scale, args.dataset, args.model, args.variant, args.seed, overrides)
    apply_pretrained_map(cfg, args.pretrained)
    resolve_weights_files(cfg)
    result = train_run(cfg, args.out, device=args.device, progress=not args.no_progress,
                       on_config_change=args.on_config_change)
    print(f"{args.out}: {result['status']} ({result['iteration']} iterations)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from pamm.engine.evaluate import evaluate_run

    result = evaluate_run(args.run, device=args.device, progress=not args.no_progress, edge_workers=args.threads or 0)
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items())
    print(f"{args.run}: {metrics}")
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from pamm.checkpoints import import_checkpoint

    record = import_checkpoint(
        args.source, args.checkpoint, args.dataset, args.out, variant=args.variant, scale=args.scale,
        overrides=_overrides(args.set), unregistered=args.unregistered, seed=args.seed, data_root=args.data_root,
        trust_pickle=args.trust_pickle,
    )
    print(f"{args.out}: {record['run']['model']} from {args.checkpoint} (sha256 {record['checkpoint']['sha256'][:12]})")
    for note in record["notes"]:
        print(f"  note: {note}")
    return 0


def _profile_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"batch_sizes": tuple(args.batch_sizes), "dtypes": tuple(args.dtypes), "counters": tuple(args.counters),
            "latency_repeats": args.repeats, "train_batch": args.train_batch, "timing": not args.no_timing}


def cmd_profile(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from pamm import io as pio
    from pamm.engine.profile import profile_config, profile_run

    options = _profile_options(args)
    if args.run:
        result = profile_run(args.run, device=args.device, **options)
    else:
        if not (args.model and args.dataset and args.out):
            raise SystemExit("pamm-bench profile: give --run RUN_DIR, or --model, --dataset and --out")
        from pamm.config import resolve_config, resolve_weights_files

        cfg = resolve_config(args.scale, args.dataset, args.model, args.variant, 0, _overrides(args.set))
        resolve_weights_files(cfg)
        result = profile_config(cfg, device=args.device, **options)
        pio.write_json(args.out, result)
    keys = ("params_m", "gflops", "gflops_scan", "flops_counter_rel_diff", "latency_ms", "peak_mem_mib")
    print(", ".join(f"{k}={result[k]:.4g}" for k in keys if isinstance(result.get(k), (int, float))))
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from pamm.results.aggregate import aggregate

    aggregate(args.runs, args.out, by_config_out=args.by_config, quiet=args.quiet)
    return 0


def cmd_edges(args: argparse.Namespace) -> int:
    """Score a folder of edge PNGs with SEISM's boundary protocol (no MATLAB)."""
    from pamm import io as pio
    from pamm.metrics.edge import EdgeInputError, evaluate_edge_folder, read_id_list

    try:
        ids = read_id_list(args.ids) if args.ids else None
        result = evaluate_edge_folder(args.pred, args.gt, args.dataset, ids=ids, threads=args.threads,
                                      progress=not args.no_progress)
    except EdgeInputError as err:
        print(f"pamm-bench edges: error: {err}", file=sys.stderr)
        return 2
    pio.write_json(args.out, result)
    print(f"{args.dataset} ({result['n_images']} images, {result['image_set']}): odsF {result['odsF']:.2f}  "
          f"oisF {result['oisF']:.2f}  AP {result['AP']:.2f}  -> {args.out}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from pamm.results.figures import make_figures

    for path in make_figures(args.summary, args.runs, args.out_dir, by_config_csv=args.by_config,
                             published_csv=args.published, sweep_csv=args.sweep, only=args.only,
                             datasets=args.datasets, n_examples=args.n_examples):
        print(f"wrote {path}")
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from pamm.results.tables import make_tables

    for path in make_tables(args.summary, args.by_config, args.published, args.out_dir, datasets=args.datasets):
        print(f"wrote {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pamm.engine.sweep import resolution_sweep

    frame = resolution_sweep(args.models, args.dataset, args.scale, args.sizes, args.out, variant=args.variant,
                             repeats=args.repeats, device=args.device, threads=args.threads,
                             isolate=not args.no_isolate, progress=not args.no_progress, counter=args.counter,
                             dtype=args.dtype)
    print(f"wrote {args.out} ({len(frame)} points)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pamm.ops import backend_report, format_backend_report

    print(format_backend_report(backend_report()))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import baselines  # noqa: F401  (registers the baseline models)
    from pamm.config import list_variants
    from pamm.models import list_models

    for name in list_models():
        print(f"{name}: variants {', '.join(list_variants(name))}")
    return 0


class _ConverterSources:
    """The ``--from`` values: the sources of ``pamm.checkpoints.registry``, asked for when argparse checks a value
    or prints the help (importing the converters takes seconds, which ``pamm-bench --help`` does not pay)."""

    def _names(self) -> list[str]:
        import baselines  # noqa: F401  (its modules register the baselines' converters)
        from pamm.checkpoints import list_sources

        return list_sources()

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self):
        return iter(self._names())


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads, >= 1 (Snakemake passes the rule's threads)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pamm-bench",
        description="Train, evaluate, profile and tabulate multi-task dense-prediction models "
        "(PAMM, MTMamba, MTMamba++, InvPT, TaskPrompter, baselines) on NYUD-v2 and PASCAL-Context.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")

    p = sub.add_parser("make-synthetic", help="write procedural 3-D scenes in the real NYUD-v2 / PASCAL-Context layout",
                       description="Render deterministic synthetic scenes (exact depth, normals, classes, edges) and "
                       "write them in the ATRC on-disk format that the real-data loaders read.")
    p.add_argument("--dataset", choices=["nyud", "pascal"], required=True)
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create (e.g. data/synthetic/NYUDv2)")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("check-dataset", help="validate a dataset folder; fails with one message naming the file and the fix",
                       description="Check that ROOT holds a NYUD-v2 or PASCAL-Context dataset in the ATRC layout: split "
                       "files (no repeated id, no id in both train and val), modality folders, id counts, and every "
                       "file decoded whole: the right size, labels within the classes, depth in float metres, "
                       "3-channel normals, well-formed Pascal-Part annotations.")
    p.add_argument("root", type=Path)
    p.add_argument("--dataset", choices=["nyud", "pascal"], default=None, help="default: detected from the layout")
    p.add_argument("--expected-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="required image size (default: 448 576 for real NYUD; synthetic data carries its own)")
    p.add_argument("--report", type=Path, default=None, help="also write the summary as JSON here")
    p.add_argument("--sample", type=_positive_int, default=None, metavar="N",
                   help="fast look: read every file's header but only N evenly spaced ids' content per split "
                   "(default: every file is decoded whole, which finds every bad file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_check_dataset)

    p = sub.add_parser("train", help="train one run (resumes from last.pt; skips a finished run)",
                       description="Resolve the run's config (base < model < variant overlay < --set) and train it. "
                       "Writes config.yaml, last.pt (resume state), checkpoint.pt (final), train_log.csv, provenance.json.")
    _scale_arg(p, "tiny")
    p.add_argument("--dataset", required=True, choices=["nyud", "pascal"])
    p.add_argument("--model", required=True, help="registered model name (pamm-bench list)")
    p.add_argument("--variant", default="default",
                   help="ablation overlay in ablations/<variant>.yaml, or 'default'; overlays compose with '+' "
                        "(stl_semseg+swin: the single-task baseline on a Swin backbone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=None, help="the dataset folder")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--scan-backend", default=None, choices=["auto", "torch", "cuda", "ref", "triton"],
                   help="force the selective-scan backend (sets train.scan.backend)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.iterations=50 (repeatable)")
    p.add_argument("--pretrained", action="append", default=[], metavar="BACKBONE=PATH",
                   help="local weights file for runs whose backbone is BACKBONE, e.g. "
                   "vit_large_patch16_384=/weights/vit_l.safetensors (repeatable; nothing is downloaded)")
    p.add_argument("--on-config-change", default="refuse", choices=["refuse", "restart"],
                   help="a last.pt of another config in --out: refuse (stop, the default) or restart (rename it "
                   "to last.<hash>.pt and train from scratch; the workflow's choice)")
    _common_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's final checkpoint on the val split -> metrics.json")
    p.add_argument("--run", type=Path, required=True, help="run directory holding config.yaml and checkpoint.pt")
    _common_run_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "import-checkpoint", help="convert an authors' released checkpoint into a run directory (then evaluate it)",
        description="Read a checkpoint saved by the authors' code (PAMM, MTMamba, MTMamba++, InvPT, TaskPrompter: "
        "their key names, the DDP 'module.' prefix, mmseg Swin names, per-task modules), map it onto the pamm-bench "
        "model built from --scale/--variant/--set, refuse any unmapped or mis-shaped key, and write RUN_DIR "
        "(config.yaml, checkpoint.pt, provenance.json with the file's sha256) for `pamm-bench evaluate --run RUN_DIR`.",
        epilog="example:\n  pamm-bench import-checkpoint --from invpt --checkpoint InvPT_nyud.pth --dataset nyud \\\n"
        "      --data-root data/NYUDv2 --out results/runs/nyud/invpt/released/seed0\n"
        "  pamm-bench evaluate --run results/runs/nyud/invpt/released/seed0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, choices=_ConverterSources(), metavar="SOURCE",
                   help="whose release the checkpoint comes from: %(choices)s (the registered converters)")
    p.add_argument("--checkpoint", type=Path, required=True, help="the authors' checkpoint file (.pth)")
    p.add_argument("--dataset", required=True, choices=["nyud", "pascal"])
    p.add_argument("--variant", default="default", help="overlay, e.g. as_released for PAMM")
    _scale_arg(p, "paper")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--unregistered", type=Path, default=None,
                   help="PAMM only: the tensors the release keeps outside state_dict (A_log0, D0, task prompts)")
    p.add_argument("--seed", type=int, default=0, help="seed for what the checkpoint does not hold (logged)")
    p.add_argument("--data-root", type=Path, default=None, help="the dataset folder `evaluate` will read")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a checkpoint that holds arbitrary Python objects (only for files you trust)")
    p.add_argument("--out", type=Path, required=True, help="run directory to create (must not exist or be empty)")
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser("profile", help="parameters, FLOPs (fvcore + ptflops, scan counted), latency, peak memory",
                       description="Profile a run's model (--run RUN_DIR -> RUN_DIR/profile.json) or any model at a "
                       "recipe scale's config with random weights (--model/--dataset/--variant/--scale -> --out JSON). "
                       "No dataset or trained weights are needed. Here 'profile' means measuring a model's cost; "
                       "--scale (tiny or paper) picks the recipe whose model is measured.")
    p.add_argument("--run", type=Path, default=None, help="run directory (writes profile.json there)")
    p.add_argument("--model", default=None)
    p.add_argument("--dataset", default=None, choices=["nyud", "pascal"])
    p.add_argument("--variant", default="default")
    _scale_arg(p, "paper")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (with --model)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="latency batch sizes")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="latency precisions")
    p.add_argument("--counters", nargs="+", default=["fvcore", "ptflops"], choices=["fvcore", "ptflops"])
    p.add_argument("--repeats", type=int, default=20, help="timed latency runs (after warm-up)")
    p.add_argument("--train-batch", type=int, default=1, help="batch of the training step whose peak memory is measured")
    p.add_argument("--no-timing", action="store_true",
                   help="parameters and FLOPs only (no latency or memory): device-independent counts, fast on CPU")
    _common_run_args(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("aggregate", help="collect every run's files into results/summary.csv",
                       description="Read metrics.json / profile.json / provenance.json of every run under --runs and "
                       "write one row per run (atomically), plus mean/std over seeds.")
    p.add_argument("--runs", type=Path, default=Path("results/runs"))
    p.add_argument("--out", type=Path, default=Path("results/summary.csv"))
    p.add_argument("--by-config", type=Path, default=None, help="also write mean ± std over seeds here")
    p.add_argument("--quiet", action="store_true", help="do not print the trivial-predictor comparison")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("edges", help="boundary odsF / oisF / AP of a folder of edge PNGs, as MATLAB SEISM does",
                       description="Score <id>.png predictions (uint8 of 255*sigmoid, original image size, as the "
                       "released InvPT/TaskPrompter/MTMamba/PAMM codes save them) with the published SEISM protocol: "
                       "NMS, 101 HED thresholds, thinning, SEISM's ground truth, maxDist 0.011 NYUD / 0.0075 "
                       "PASCAL-Context. Without --ids every PNG is scored, narrowed on PASCAL-Context to the "
                       "2,498 test_new images that the papers report.")
    p.add_argument("--pred", required=True, help="folder of <id>.png edge predictions")
    p.add_argument("--gt", required=True, help="NYUD: the edge/ folder (<id>.png); PASCAL-Context: "
                   "pascal-context/trainval (<id>.mat with LabelMap)")
    p.add_argument("--dataset", required=True, choices=["nyud", "pascal"])
    p.add_argument("--ids", default=None, help="file with the image ids to score, one per line")
    p.add_argument("--threads", type=int, default=1, help="worker processes (images are scored in parallel)")
    p.add_argument("--out", required=True, help="JSON: odsF, oisF, AP (percent) and per_image best F / threshold")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_edges)

    p = sub.add_parser("figures", help="draw every figure (PNG + PDF) whose inputs exist",
                       description="Metrics by model, training curves, accuracy-vs-cost (Pareto), PAMM ablation bars, "
                       "qualitative grids (from the runs' examples.pt), efficiency against resolution (--sweep CSV) "
                       "and the scan orders. A figure whose input is missing is skipped with a note.")
    p.add_argument("--summary", type=Path, default=Path("results/summary.csv"))
    p.add_argument("--runs", type=Path, default=Path("results/runs"))
    p.add_argument("--out-dir", type=Path, default=Path("results/figures"))
    p.add_argument("--by-config", type=Path, default=None, help="default: summary_by_config.csv beside --summary")
    p.add_argument("--published", type=Path, default=Path("results/reference/published.csv"))
    p.add_argument("--sweep", type=Path, default=Path("results/efficiency/resolution_sweep.csv"),
                   help="CSV written by `pamm-bench sweep`")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="metrics_by_model training_curves pareto ablation resolution_sweep scan_orders qualitative")
    p.add_argument("--datasets", nargs="+", default=None, help="per-dataset figures for these (default: all found)")
    p.add_argument("--n-examples", type=int, default=2, help="val images in the qualitative grids")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("tables", help="paper-style main and ablation tables (Markdown + LaTeX) per dataset",
                       description="main_<dataset>.{md,tex}: published rows (approximate ones marked with a dagger) "
                       "and measured rows (mean ± std over seeds); ablation_<dataset>.{md,tex}: every PAMM variant "
                       "against full PAMM (differences and their std over seed pairs).")
    p.add_argument("--summary", type=Path, default=Path("results/summary.csv"), help="per-run rows (seed pairing)")
    p.add_argument("--by-config", type=Path, default=Path("results/summary_by_config.csv"))
    p.add_argument("--published", type=Path, default=Path("results/reference/published.csv"))
    p.add_argument("--out-dir", type=Path, default=Path("results/tables"))
    p.add_argument("--datasets", nargs="+", default=None, help="default: every dataset in the inputs")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("sweep", help="params, GFLOPs, latency and peak memory against input resolution -> CSV",
                       description="Profile each model (random weights, the recipe scale's config with data.size "
                       "overridden) at each size; one FLOP counter, few latency repeats. Each point runs in a fresh "
                       "process so that CPU peak memory (peak RSS) is per point.")
    p.add_argument("--models", nargs="+", default=["pamm", "mtmamba", "invpt"])
    p.add_argument("--variant", default="default")
    p.add_argument("--dataset", default="nyud", choices=["nyud", "pascal"])
    _scale_arg(p, "tiny")
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 96, 128], help="square input sizes (pixels)")
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes per point (after warm-up)")
    p.add_argument("--out", type=Path, default=Path("results/efficiency/resolution_sweep.csv"))
    p.add_argument("--no-isolate", action="store_true", help="run every point in this process (faster; CPU memory "
                   "then carries over between points; on GPU the peak is reset per point anyway)")
    p.add_argument("--counter", default="fvcore", choices=["fvcore", "ptflops"],
                   help="FLOP counter (ptflops is faster on large inputs: no TorchScript trace)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="latency precision (bf16: autocast)")
    _common_run_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("doctor", help="which selective-scan backend will run, and why")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("list", help="registered models and their variants")
    p.set_defaults(func=cmd_list)
    return parser


def _one_line(err: BaseException) -> str:
    """The message of a known error on one line; an error re-raised from a DataLoader worker keeps only its
    own message (the worker's traceback is not the user's business)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        head, sep, rest = last.partition(": ")
        text = rest if sep and " " not in head else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_-]+~\d+\.[^.]+\.tmp$")


def _os_error_line(err: OSError) -> str:
    """A failed read or write as one line: the file (the target, not its temporary), why, and the fix."""
    if err.filename is None or not err.strerror:
        return _one_line(err)
    path = Path(str(err.filename))
    found = _TMP_NAME.match(path.name)
    if found:
        path = path.with_name(found.group("name"))
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free disk space and rerun (finished files are kept; a half-written one never replaces its old version)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable (or choose another output path) and rerun"
    else:
        fix = "check the path and rerun"
    return f"cannot access {path}: {err.strerror}: {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pamm.config import ConfigError
    from pamm.io import UnreadableFileError

    known: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, UnreadableFileError)
    interrupted: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
    try:
        from pamm.checkpoints import ConversionError, RunModelError
        from pamm.data import DatasetError
        from pamm.engine.build import TrainingError
        from pamm.engine.train import TrainingInterrupted

        known = known + (ConversionError, DatasetError, RunModelError, TrainingError)
        interrupted = interrupted + (TrainingInterrupted,)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except interrupted as err:  # Ctrl-C: the training loop names the iteration a rerun resumes from
        line = _one_line(err) if str(err) else "interrupted; rerun the same command to do it again"
        print(f"pamm-bench {args.command}: {line}", file=sys.stderr)
        return 130
    except known as err:
        line = _os_error_line(err) if isinstance(err, OSError) and err.filename is not None else _one_line(err)
        print(f"pamm-bench {args.command}: error: {line}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only folder, a full disk: not a bug, one line
        print(f"pamm-bench {args.command}: error: {_os_error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
