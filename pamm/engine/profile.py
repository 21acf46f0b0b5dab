"""Efficiency of a model: parameters, FLOPs (fvcore and ptflops, the scan counted), latency, peak memory.

FLOP convention (stated in every profile.json): counters report multiply-accumulates (MACs) for
convolutions, linear layers, matmuls and attention; elementwise ops, norms' arithmetic and
activations are not counted (as in fvcore and ptflops). The selective scan, which both counters
see as one opaque op, is counted with the analytic formula of ``pamm.ops.selective_scan_flops``
(9·b·l·d·n, + b·d·l for D, + b·d·l for z; mamba issue #110) and enters MACs as FLOPs/2.
``gflops`` = 2 × GMACs.
"""
from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from pamm.models.interface import BACKBONE_ATTRIBUTE

FLOP_CONVENTION = (
    "gflops = 2 x GMACs of conv/linear/matmul/attention (elementwise ops not counted); "
    "selective scan = 9*b*l*d*n (+b*d*l for D, +b*d*l for z) FLOPs, entered as FLOPs/2 MACs"
)
# fvcore also counts these by default; ptflops' aten backend does not. Both counters must follow one
# convention (matmul-like work only), so fvcore's handles for them are switched off.
_FVCORE_NON_MATMUL = (
    "aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
    "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d", "aten::grid_sampler",
)
_SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)


class UnregisteredTensorError(RuntimeError):
    """A module keeps tensors outside parameters/buffers: they would escape optimizers, checkpoints and counts."""


# ---------------------------------------------------------------------------------------------- parameters


def find_unregistered_tensors(model: nn.Module) -> list[str]:
    """Attributes of any submodule that hold tensors (directly or in a list/tuple/dict) but are not registered."""
    found = []
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_"):
                continue
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, torch.Tensor) for v in values):
                found.append(f"{name or '<root>'}.{attr}")
    return found


def count_parameters(model: nn.Module, backbone_prefix: str = f"{BACKBONE_ATTRIBUTE}.") -> dict[str, float]:
    """Parameters in millions: total, trainable, backbone (under ``model.backbone``, the declared interface of
    ``pamm.models.interface``) and decoder (everything else)."""
    unregistered = find_unregistered_tensors(model)
    if unregistered:
        raise UnregisteredTensorError(
            f"tensors not registered as parameters or buffers: {unregistered[:5]} "
            f"(use nn.Parameter / register_buffer so they are trained, saved and counted)"
        )
    total = trainable = backbone = 0
    for name, param in model.named_parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
        backbone += param.numel() if name.startswith(backbone_prefix) else 0
    buffers = sum(b.numel() for b in model.buffers())
    return {"params_m": total / 1e6, "params_trainable_m": trainable / 1e6, "params_backbone_m": backbone / 1e6,
            "params_decoder_m": (total - backbone) / 1e6, "params_buffers_m": buffers / 1e6}


# ---------------------------------------------------------------------------------------------- FLOPs


def _sdpa_macs(q_shape, k_shape, v_shape) -> int:
    *batch, lq, dq = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return int(math.prod(batch) * lq * lk * (dq + dv))


def count_flops_fvcore(model: nn.Module, image: torch.Tensor) -> dict[str, float]:
    """fvcore MACs with handles for the scan op and attention; split into backbone / rest."""
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

    from pamm.ops import fvcore_selective_scan_handle

    scan_flops = []
    scan_flops_of = fvcore_selective_scan_handle(unit="flops")

    def scan_handle(inputs, outputs) -> int:
        """The scan's MACs (as pamm.ops counts them), remembering its FLOPs for ``gflops_scan``."""
        flops = scan_flops_of(inputs, outputs)
        scan_flops.append(flops)
        return (flops + 1) // 2

    def sdpa_handle(inputs, outputs) -> int:
        return _sdpa_macs(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(inputs[2]))

    def matmul_handle(inputs, outputs) -> int:
        """Output elements x inner size. fvcore's own handle multiplies the *first* input's elements by the
        last dimension, which undercounts when the second input broadcasts over more batch dimensions
        (a lead of 1 against a stack of task weights: MTMamba's task-batched linear layers)."""
        return int(math.prod(get_shape(outputs[0]))) * int(get_shape(inputs[0])[-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, image)
        analysis.set_op_handle("pamm::selective_scan", scan_handle)
        analysis.set_op_handle("aten::matmul", matmul_handle)
        for op in _SDPA_OPS:
            analysis.set_op_handle(op, sdpa_handle)
        for op in _FVCORE_NON_MATMUL:
            analysis.set_op_handle(op, lambda inputs, outputs: 0)  # fvcore keeps its handle when given None
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = analysis.total()
        by_module = analysis.by_module()
    backbone = by_module.get(BACKBONE_ATTRIBUTE, 0)
    return {"gmacs_fvcore": total / 1e9, "gmacs_fvcore_backbone": backbone / 1e9,
            "gmacs_fvcore_decoder": (total - backbone) / 1e9, "gflops_scan": sum(scan_flops) / 1e9}


def count_flops_ptflops(model: nn.Module, image: torch.Tensor) -> dict[str, float]:
    """ptflops (aten backend) MACs with hooks for the scan op and attention; backbone counted separately."""
    from pamm._compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # ptflops imports torchvision, which needs the CPU shim
    from ptflops import get_model_complexity_info

    from pamm.ops import ptflops_aten_hooks

    def sdpa_hook(inputs, outputs) -> int:
        return _sdpa_macs(tuple(inputs[0].shape), tuple(inputs[1].shape), tuple(inputs[2].shape))

    # ptflops' aten backend looks hooks up by op overload packet.
    hooks: dict[Any, Callable] = dict(ptflops_aten_hooks())
    for op in _SDPA_OPS:
        namespace, name = op.split("::")
        packet = getattr(getattr(torch.ops, namespace), name, None)
        if packet is not None:
            hooks[packet] = sdpa_hook

    def macs_of(module: nn.Module) -> float:
        import io

        shape = tuple(image.shape[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = get_model_complexity_info(
                module, shape, input_constructor=lambda _: image, as_strings=False, backend="aten",
                print_per_layer_stat=False, verbose=False, custom_modules_hooks=hooks, ost=io.StringIO(),
            )
        return float(macs or 0.0)

    total = macs_of(model)
    backbone = macs_of(getattr(model, BACKBONE_ATTRIBUTE)) if hasattr(model, BACKBONE_ATTRIBUTE) else 0.0
    return {"gmacs_ptflops": total / 1e9, "gmacs_ptflops_backbone": backbone / 1e9,
            "gmacs_ptflops_decoder": (total - backbone) / 1e9}


# ---------------------------------------------------------------------------------------------- time and memory


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Sorted wall times in ms of ``repeats`` calls after ``warmup``: CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            tic = time.perf_counter()
            fn()
            times.append((time.perf_counter() - tic) * 1e3)
    return sorted(times)


def kernel_table(fn: Callable[[], Any], device: torch.device, top: int = 25) -> str:
    """torch.profiler's table of one call of ``fn``, the ``top`` rows by self time on the device (CUDA
    kernels, copies, fills) or, on CPU, by self CPU time: where a benchmark's milliseconds go."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=top)


def write_kernel_table(directory: str | os.PathLike, name: str, fn: Callable[[], Any], device: torch.device,
                       top: int = 25) -> Path:
    """:func:`kernel_table` of one call of ``fn``, written atomically to ``directory/<name>.txt`` (characters
    other than letters, digits, ``-_.`` in ``name`` become ``_``); returns the path."""
    from pamm import io as pio

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(directory) / f"{safe}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    pio.write_text(path, kernel_table(fn, device, top))
    return path


def measure_latency(
    model: nn.Module, image: torch.Tensor, warmup: int = 5, repeats: int = 20, dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Forward latency in ms (median and p90) after warm-up; CUDA events on GPU, perf_counter on CPU."""
    autocast = torch.autocast(image.device.type, dtype=dtype) if dtype is not None else nullcontext()
    with torch.no_grad(), autocast:
        times = timed_runs(lambda: model(image), image.device, warmup, repeats)
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(math.ceil(0.9 * len(times))) - 1)]}


def _rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**2 if sys.platform == "darwin" else 1024)


def measure_train_step_memory(model: nn.Module, image: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    """Peak memory of one forward+backward in MiB.

    GPU: ``torch.cuda.max_memory_allocated`` after a reset (tensors only). CPU: the process's peak RSS
    after the step (the whole process: framework, model and activations), a coarser upper bound.
    """
    device = image.device
    model.train()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with autocast:
        outputs = model(image)
    loss = sum(v.float().mean() for k, v in outputs.items() if k != "aux")
    loss.backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    if device.type == "cuda":
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_mib()


def profile_model(
    model: nn.Module,
    image_size: tuple[int, int],
    device: torch.device,
    batch_sizes: tuple[int, ...] = (1,),
    dtypes: tuple[str, ...] = ("fp32",),
    counters: tuple[str, ...] = ("fvcore", "ptflops"),
    latency_repeats: int = 20,
    train_batch: int = 1,
    timing: bool = True,
) -> dict[str, Any]:
    """Every efficiency number of ``model`` at ``image_size`` (random input; no data or weights needed).

    ``timing=False`` stops after parameters and FLOPs (no latency, no memory): counts do not depend on
    the device, so paper-size tables can be made on a CPU without minutes of timed forwards.
    """
    model = model.to(device).eval()
    h, w = image_size
    result: dict[str, Any] = {"img_h": h, "img_w": w, "device": str(device), "flop_convention": FLOP_CONVENTION,
                              "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result.update(count_parameters(model))
    one = torch.randn(1, 3, h, w, device=device)
    notes: list[str] = []
    counting = {"fvcore": count_flops_fvcore, "ptflops": count_flops_ptflops}
    for name in [c for c in counting if c in counters]:
        try:
            with torch.no_grad():  # counting needs shapes, not an autograd graph (paper sizes: GBs saved)
                result.update(counting[name](model, one))
        except (torch.cuda.OutOfMemoryError, MemoryError) as err:  # recorded like the latency and memory OOMs
            kind = "CUDA out of memory" if isinstance(err, torch.cuda.OutOfMemoryError) else "out of memory"
            notes.append(f"FLOP count ({name}): {kind}")
            _release_memory(device)
    primary = "gmacs_fvcore" if "gmacs_fvcore" in result else "gmacs_ptflops" if "gmacs_ptflops" in result else None
    if primary:
        result["gmacs"] = result[primary]
        result["gflops"] = 2 * result[primary]
        result["gflops_backbone"] = 2 * result[f"{primary}_backbone"]
        result["gflops_decoder"] = 2 * result[f"{primary}_decoder"]
    if "gmacs_fvcore" in result and "gmacs_ptflops" in result and result["gmacs_fvcore"] > 0:
        result["flops_counter_rel_diff"] = abs(result["gmacs_fvcore"] - result["gmacs_ptflops"]) / result["gmacs_fvcore"]
    if not primary and notes:
        result["gflops"] = float("nan")
    if not timing:
        if notes:
            result["notes"] = "; ".join(notes)
        return result
    amp = {"fp32": None, "bf16": torch.bfloat16}
    for batch in batch_sizes:
        for name in dtypes:
            try:
                image = torch.randn(batch, 3, h, w, device=device)
                stats = measure_latency(model, image, repeats=latency_repeats, dtype=amp[name])
            except torch.cuda.OutOfMemoryError:
                notes.append(f"latency batch {batch} {name}: CUDA out of memory")
                stats = {"median_ms": float("nan"), "p90_ms": float("nan")}
                _release_memory(device)
            result[f"latency_ms_b{batch}_{name}"] = stats["median_ms"]
            result[f"latency_p90_ms_b{batch}_{name}"] = stats["p90_ms"]
    result["latency_ms"] = result.get(f"latency_ms_b{batch_sizes[0]}_{dtypes[0]}")
    try:
        result["peak_mem_mib"] = measure_train_step_memory(
            model, torch.randn(train_batch, 3, h, w, device=device), dtype=amp[dtypes[-1]]
        )
    except torch.cuda.OutOfMemoryError:
        notes.append(f"training step at batch {train_batch}: CUDA out of memory")
        result["peak_mem_mib"] = float("nan")
        _release_memory(device)
    result["notes"] = "; ".join(notes)
    result["peak_mem_method"] = "cuda_max_memory_allocated" if device.type == "cuda" else "process_peak_rss"
    result["peak_mem_train_batch"] = train_batch
    return result


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def profile_config(
    cfg: dict[str, Any], device: str | None = None, model: torch.nn.Module | None = None, **options: Any
) -> dict[str, Any]:
    """Profile the model of a resolved config at its own resolution (``model``, or one with random weights)."""
    from pamm.engine.build import build_model_for, pick_device, scan_settings_for

    dev = pick_device(device)
    if model is None:
        torch.manual_seed(0)
        model = build_model_for(cfg)
    result = profile_model(model, tuple(cfg["data"]["size"]), dev, **options)
    from pamm import ops

    result["scan_backend"] = ops.resolve(scan_settings_for(cfg), dev)
    result["run"] = cfg["run"]
    return result


def profile_run(run_dir, device: str | None = None, **options: Any) -> dict[str, Any]:
    """Profile a run directory's model (its checkpoint's weights) and write ``profile.json`` beside it."""
    from pathlib import Path

    from pamm import io as pio
    from pamm.checkpoints.run_model import build_run_model, read_run_checkpoint
    from pamm.config import config_hash

    run_dir = Path(run_dir)
    cfg, checkpoint = read_run_checkpoint(run_dir)
    result = profile_config(cfg, device=device, model=build_run_model(cfg, checkpoint), **options)
    result["config_hash"] = config_hash(cfg)
    pio.write_json(run_dir / "profile.json", result)
    return result
