"""benchmarks/bench_experts.py runs and its two paths agree (its timings are not asserted)."""
from __future__ import annotations

import csv

import torch


def test_bench_experts_smoke_preset_writes_both_paths_and_they_agree(tmp_path, load_script):
    bench = load_script("benchmarks/bench_experts.py")
    threads = torch.get_num_threads()
    out = tmp_path / "experts.csv"
    try:
        assert bench.main(["--presets", "smoke", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == ["fused", "one_conv_at_a_time"]
    for row in rows:
        assert float(row["fwd_ms"]) > 0 and float(row["fwd_bwd_ms"]) > 0
        assert float(row["out_max_abs_diff"]) < 1e-5 and float(row["grad_rel_norm_diff"]) < 1e-5
