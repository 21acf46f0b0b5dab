"""Profiling: parameter split, unregistered tensors, FLOP counters that agree and count the scan."""
import pytest
import torch
import torch.nn as nn

from pamm.config import resolve_config
from pamm.engine.profile import (
    UnregisteredTensorError,
    count_flops_fvcore,
    count_flops_ptflops,
    count_parameters,
    find_unregistered_tensors,
    profile_config,
)


class _ScanModel(nn.Module):
    """A linear layer feeding one selective scan: its MACs are known by hand."""

    def __init__(self, d=8, n=4):
        super().__init__()
        self.backbone = nn.Linear(d, d, bias=False)
        self.A = nn.Parameter(-torch.rand(d, n))
        self.D = nn.Parameter(torch.ones(d))
        self.proj = nn.Linear(d, 2 * n, bias=False)

    def forward(self, image):  # image: (b, 1, l, d) so both counters accept it
        from pamm.ops import selective_scan

        x = self.backbone(image[:, 0])  # (b, l, d)
        bc = self.proj(x)
        n = bc.shape[-1] // 2
        B, C = bc[..., :n].transpose(1, 2), bc[..., n:].transpose(1, 2)
        u = x.transpose(1, 2)
        return {"y": selective_scan(u, u.sigmoid(), self.A, B, C, D=self.D)}


def test_scan_counted_by_both_counters_with_the_formula():
    b, l, d, n = 2, 16, 8, 4
    model = _ScanModel(d, n).eval()
    image = torch.randn(b, 1, l, d)
    scan_flops = 9 * b * l * d * n + b * d * l  # + D term
    matmul_macs = b * l * d * d + b * l * d * 2 * n
    fv = count_flops_fvcore(model, image)
    pt = count_flops_ptflops(model, image)
    assert fv["gflops_scan"] * 1e9 == pytest.approx(scan_flops)
    assert fv["gmacs_fvcore"] * 1e9 == pytest.approx(matmul_macs + scan_flops // 2)
    assert pt["gmacs_ptflops"] * 1e9 == pytest.approx(matmul_macs + scan_flops // 2)
    assert fv["gmacs_fvcore_backbone"] * 1e9 == pytest.approx(b * l * d * d)


def test_parameter_split_and_unregistered_tensors():
    model = _ScanModel()
    counts = count_parameters(model)
    assert counts["params_backbone_m"] * 1e6 == 64
    assert counts["params_m"] * 1e6 == 64 + 8 * 4 + 8 + 8 * 8
    model.A_per_task = {"semseg": torch.zeros(3)}  # the released PAMM's defect
    assert find_unregistered_tensors(model) == ["<root>.A_per_task"]
    with pytest.raises(UnregisteredTensorError, match="A_per_task"):
        count_parameters(model)


def test_counters_agree_on_a_real_model():
    cfg = resolve_config("tiny", "nyud", "mtl")
    result = profile_config(cfg, device="cpu", latency_repeats=1)
    assert result["flops_counter_rel_diff"] < 0.02
    assert result["gflops"] == pytest.approx(2 * result["gmacs_fvcore"])
    assert result["latency_ms"] > 0 and result["peak_mem_mib"] > 0
    assert result["params_backbone_m"] + result["params_decoder_m"] == pytest.approx(result["params_m"])


def test_cuda_out_of_memory_is_recorded_not_fatal(monkeypatch):
    import pamm.engine.profile as profile

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(profile, "measure_latency", out_of_memory)
    monkeypatch.setattr(profile, "measure_train_step_memory", out_of_memory)
    cfg = resolve_config("tiny", "nyud", "mtl")
    result = profile.profile_config(cfg, device="cpu", counters=("fvcore",), batch_sizes=(1, 8))
    assert result["notes"] == (
        "latency batch 1 fp32: CUDA out of memory; latency batch 8 fp32: CUDA out of memory; "
        "training step at batch 1: CUDA out of memory"
    )
    assert result["gflops"] > 0  # what could be measured still is
    assert result["latency_ms"] != result["latency_ms"]  # NaN


def test_missing_pretrained_weights_file_is_a_clear_error(tmp_path):
    from pamm.models import create_model

    missing = tmp_path / "vit.safetensors"
    with pytest.raises(FileNotFoundError, match=f"pretrained weights file {missing} does not exist"):
        create_model("mtl", {"depth": 1}, img_size=(64, 80),
                     backbone={"name": "resnet18", "pretrained_file": str(missing)})


def test_no_timing_counts_without_running_latency_or_memory(monkeypatch):
    import pamm.engine.profile as profile

    def must_not_run(*args, **kwargs):
        raise AssertionError("timing=False must not time or measure memory")

    monkeypatch.setattr(profile, "measure_latency", must_not_run)
    monkeypatch.setattr(profile, "measure_train_step_memory", must_not_run)
    result = profile.profile_config(resolve_config("tiny", "nyud", "mtl"), device="cpu", timing=False)
    assert result["gmacs_fvcore"] > 0 and result["gmacs_ptflops"] > 0 and result["params_m"] > 0
    assert "latency_ms" not in result and "peak_mem_mib" not in result


def test_paper_flops_table_matrix_keeps_single_task_runs_of_the_dataset_only(load_script):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = load_script("scripts/paper_flops_table.py")
    nyud = table.matrix(root / "workflow/config_paper.yaml", ["nyud"], None)
    stl = sorted(v for _, m, v in nyud if m == "stl")
    assert stl == ["stl_depth", "stl_edge", "stl_normals", "stl_semseg"]
    pascal = table.matrix(root / "workflow/config_paper.yaml", ["pascal"], ["stl", "pamm"])
    assert {m for _, m, _ in pascal} == {"stl", "pamm"} and ("pascal", "stl", "stl_depth") not in pascal
    assert ("pascal", "stl", "stl_sal") in pascal


def test_counters_agree_on_pamm_as_released_whose_discarded_branch_tracing_would_drop():
    """fvcore counts a trace, and tracing drops ops whose results are unused (the released discarded branch)."""
    result = profile_config(resolve_config("tiny", "nyud", "pamm", "as_released"), device="cpu", timing=False)
    assert result["flops_counter_rel_diff"] < 0.02


class _BroadcastMatmul(nn.Module):
    """A lead of 1 against a stack of per-task weights: fvcore's stock matmul handle counts it once, not per task."""

    def __init__(self, tasks=5, d=8, e=6):
        super().__init__()
        self.backbone = nn.Identity()
        self.weight = nn.Parameter(torch.randn(tasks, d, e))

    def forward(self, image):  # image (b, 1, l, d) -> (b, tasks, l, e)
        return {"y": torch.matmul(image, self.weight)}


def test_broadcast_matmul_counted_per_output_by_both_counters():
    model, image = _BroadcastMatmul(), torch.randn(1, 1, 7, 8)
    expected = 5 * 7 * 8 * 6  # output elements x inner size
    assert count_flops_fvcore(model, image)["gmacs_fvcore"] * 1e9 == pytest.approx(expected)
    assert count_flops_ptflops(model, image)["gmacs_ptflops"] * 1e9 == pytest.approx(expected)


def test_kernel_table_names_the_ops_of_one_call(tmp_path):
    from pamm.engine.profile import kernel_table, write_kernel_table

    a, b = torch.randn(64, 64), torch.randn(64, 64)
    table = kernel_table(lambda: torch.mm(a, b).relu_(), torch.device("cpu"), top=10)
    assert "aten::mm" in table and "aten::relu_" in table
    assert "aten::conv2d" not in table  # only what the call ran
    path = write_kernel_table(tmp_path / "tables", "pamm:as_released,scan=triton", lambda: torch.mm(a, b),
                              torch.device("cpu"))
    assert path == tmp_path / "tables" / "pamm_as_released_scan_triton.txt"
    assert "aten::mm" in path.read_text() and list(path.parent.iterdir()) == [path]  # no temporary left


def test_bench_triton_scan_identity_orders_are_token_order_in_every_direction(load_script):
    bench = load_script("benchmarks/bench_triton_scan.py")
    perm, inverse = bench.scan_perm((3, 5), torch.device("cpu"), "identity")
    assert perm.shape == (bench.DIRECTIONS, 15)
    assert torch.equal(perm, torch.arange(15).repeat(bench.DIRECTIONS, 1)) and torch.equal(inverse, perm)
    hilbert, hilbert_inverse = bench.scan_perm((3, 5), torch.device("cpu"), "hilbert")
    assert not torch.equal(hilbert, perm)
    assert torch.equal(torch.gather(hilbert, 1, hilbert_inverse), perm)
