"""Time one training step of PAMM (and its backbone alone) at a paper config.

Why: the released PAMM takes 2.07 s per NYUD training step at batch 8 in bf16 on an H100, 12.6x its
own ViT-L backbone (docs/performance.md): the decoder, not the backbone, is the cost. This script
times the same step here: forward under autocast, the multi-task loss, backward, gradient
clipping and the optimizer step, on a batch produced by the real data pipeline (synthetic data
in the real on-disk format at the paper resolution, written to a temporary folder).

Each case is ``model[:variant][,key=value...]``: a plain key is a model option (``scan_call``,
``fidelity``...), a dotted key a config key as ``--set`` takes it (``train.scan.backend``, the scan
backend); the special model ``backbone`` times the first case's backbone alone (forward, mean-square
loss, backward, step). Examples:

    python benchmarks/bench_train_step.py                      # the default cases below
    python benchmarks/bench_train_step.py --cases pamm:as_released,train.scan.backend=triton backbone

Reported per case: median and p90 step time (CUDA events around the whole step), peak memory
(``torch.cuda.max_memory_allocated`` after a reset), parameters, and the ratio to the backbone
alone. With ``--trace DIR`` it also writes a torch.profiler table of the top CUDA kernels of one
step per case. On CPU it runs too (slowly; use ``--scale tiny``).
"""
from __future__ import annotations

import argparse
import csv
import gc
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CASES = [
    "backbone",
    "pamm:as_released,train.scan.backend=cuda",                               # the released math, our structure
    "pamm:as_released,train.scan.backend=cuda,scan_call=per_task_direction",  # ... one scan call per task x direction
    "pamm:as_released,train.scan.backend=triton",
    "pamm,train.scan.backend=cuda",                                           # as described (3x3 experts)
    "pamm,train.scan.backend=triton",
]
FIELDS = ["case", "model", "variant", "overrides", "dataset", "batch", "amp", "img_h", "img_w", "params_m",
          "step_ms", "step_p90_ms", "peak_mem_gib", "vs_backbone", "scan_backend", "cudnn_benchmark", "device",
          "status"]


def parse_case(text: str) -> tuple[str, str, dict[str, Any]]:
    """``model[:variant][,key=value...]`` -> (model, variant, config overrides); a plain key is under ``model``."""
    from pamm.config import deep_merge, parse_override
    from pamm.errors import ConfigError

    head, *pairs = text.split(",")
    model, _, variant = head.partition(":")
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"case {text!r}: {pair!r} is not key=value")
        key = key.strip() if "." in key else f"model.{key.strip()}"
        try:
            overrides = deep_merge(overrides, parse_override(f"{key}={value}"))
        except ConfigError as err:
            raise SystemExit(f"case {text!r}: {err}") from None
    return model, variant or "default", overrides


def make_batch(dataset: str, size: tuple[int, int], batch: int, device: torch.device, workdir: Path) -> dict:
    """One training batch from the real loader over synthetic data written at ``size``."""
    from pamm.data import build_dataset
    from pamm.engine.build import move_batch
    from pamm.engine.train import iterate_batches
    from pamm.tasks import dataset_tasks

    root = workdir / dataset
    if not root.exists():
        subprocess.run([sys.executable, "-m", "pamm.cli", "make-synthetic", "--dataset", dataset, "--out", str(root),
                        "--n-train", str(batch), "--n-val", "1", "--height", str(size[0]), "--width", str(size[1]),
                        "--seed", "0", "--no-progress"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    tasks = list(dataset_tasks(dataset))
    data = build_dataset(dataset, str(root), "train", tasks=tasks, train=True, size=size, seed=0)
    return move_batch(next(iterate_batches(data, batch, 0, 0, 0)), device)


def case_config(model_name: str, variant: str, overrides: dict, dataset: str, scale: str) -> dict:
    """The resolved run config of a case; a bad case stops with the config's one-line error."""
    from pamm.config import resolve_config
    from pamm.errors import ConfigError

    try:
        return resolve_config(scale, dataset, model_name, variant, 0, overrides=overrides or None)
    except ConfigError as err:
        raise SystemExit(f"case {model_name}:{variant}: {err}") from None


def build_case(model_name: str, variant: str, overrides: dict, dataset: str, scale: str):
    from pamm.engine.build import build_model_for

    cfg = case_config(model_name, variant, overrides, dataset, scale)
    torch.manual_seed(0)
    return cfg, build_model_for(cfg)


def step_function(model: torch.nn.Module, cfg: dict, batch: dict, amp: torch.dtype | None, backbone_only: bool):
    """A closure doing one full training step, as pamm.engine.train does it."""
    from pamm.engine.build import build_criterion, build_optimizer
    from pamm.tasks import dataset_tasks

    train_cfg = cfg["train"]
    tasks = list(dataset_tasks(cfg["run"]["dataset"]))
    criterion = build_criterion(cfg, tasks)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg["optimizer"])
    clip = train_cfg.get("grad_clip")
    device_type = batch["image"].device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=amp, enabled=amp is not None):
            outputs = model(batch["image"])
        if backbone_only:
            features = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            loss = sum(f.float().square().mean() for f in features)
        else:
            loss, _ = criterion(outputs, {t: batch[t] for t in tasks})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        optimizer.step()

    return step


def run_case(text: str, args, device: torch.device, workdir: Path, backbone_source: dict) -> dict:
    from pamm import ops
    from pamm.engine.build import scan_settings_for
    from pamm.engine.profile import timed_runs, write_kernel_table

    model_name, variant, overrides = parse_case(text)
    record = {"case": text, "model": model_name, "variant": variant, "batch": args.batch, "amp": args.amp,
              "dataset": args.dataset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "overrides": ";".join(text.split(",")[1:]), "status": "ok",
              "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None}
    backbone_only = model_name == "backbone"
    if backbone_only:
        model_name, variant, overrides = backbone_source["model"], backbone_source["variant"], backbone_source["overrides"]
    cfg, model = build_case(model_name, variant, overrides, args.dataset, args.scale)
    if backbone_only:
        model = model.backbone
    model = model.to(device).train()
    size = tuple(cfg["data"]["size"])
    record.update(img_h=size[0], img_w=size[1], params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                  scan_backend="-" if backbone_only else ops.resolve(scan_settings_for(cfg), device))
    batch = make_batch(args.dataset, size, args.batch, device, workdir)
    amp = {"bf16": torch.bfloat16, "fp32": None}[args.amp]
    step = step_function(model, cfg, batch, amp, backbone_only)
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times = timed_runs(step, device, args.warmup, args.iters)
        record["step_ms"] = statistics.median(times)
        record["step_p90_ms"] = times[min(len(times) - 1, int(0.9 * len(times)))]
        if device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if args.trace:
            write_kernel_table(args.trace, f"trace_{text}", step, device)
    except torch.cuda.OutOfMemoryError:
        record["status"] = "out of memory"
    except Exception as error:  # noqa: BLE001 - one failing case must not lose the others' numbers
        record["status"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    del model, step, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="cases to time (see above)")
    parser.add_argument("--dataset", default="nyud", choices=["nyud", "pascal"])
    parser.add_argument("--scale", default="paper", choices=["tiny", "paper"], help="recipe scale")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel autotuning included)")
    parser.add_argument("--iters", type=int, default=10, help="timed steps; median and p90 reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--trace", type=Path, default=None, help="write a torch.profiler kernel table per case here")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    parser.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                        help="leave cudnn.benchmark off (the trainer turns it on, as the released code does)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from pamm.engine.build import configure_cudnn

    configure_cudnn(device, args.cudnn_benchmark)
    for text in args.cases:  # every case's config resolves before any is timed
        if not text.startswith("backbone"):
            case_config(*parse_case(text), args.dataset, args.scale)
    first_model = next((parse_case(c) for c in args.cases if not c.startswith("backbone")), ("pamm", "default", {}))
    backbone_source = dict(zip(("model", "variant", "overrides"), first_model))
    records = []
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        for text in args.cases:
            records.append(run_case(text, args, device, Path(tmp), backbone_source))
            r = records[-1]
            print(f"{text}: {r.get('step_ms', float('nan')):.1f} ms (p90 {r.get('step_p90_ms', float('nan')):.1f}), "
                  f"peak {r.get('peak_mem_gib', float('nan')):.1f} GiB, {r['params_m']:.1f}M params, "
                  f"scan {r['scan_backend']}, {r['status']}", flush=True)
    base = next((r.get("step_ms") for r in records if r["model"] == "backbone" and r.get("step_ms")), None)
    for r in records:
        r["vs_backbone"] = r["step_ms"] / base if base and r.get("step_ms") else None
    print(f"\n{'case':70s} {'step ms':>9s} {'p90':>8s} {'GiB':>6s} {'x bb':>6s}")
    for r in records:
        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "-"
        print(f"{r['case']:70s} {fmt(r.get('step_ms'), '9.1f')} {fmt(r.get('step_p90_ms'), '8.1f')} "
              f"{fmt(r.get('peak_mem_gib'), '6.1f')} {fmt(r.get('vs_backbone'), '6.2f')}  {r['status']}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
