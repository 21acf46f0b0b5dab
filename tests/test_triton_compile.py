"""The Triton scan kernels compile for the H100/H200 (sm_90) on a machine without a GPU.

The interpreter tests (test_triton_scan.py) check the kernels' numbers but never compile them, so a
kernel that the interpreter runs and Triton's compiler or ptxas rejects would only fail on a GPU.
benchmarks/triton_compile_report.py compiles every launch the backend makes (forward, both backward
kinds, the segment carry; plain and fused multi-direction calls) against a stand-in driver; its smoke
preset runs here in a subprocess, since the interpreter tests set TRITON_INTERPRET in this process.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_compile_report.py"
# Found without importing triton: the interpreter tests need triton first imported after they set
# TRITON_INTERPRET, and this module is collected before theirs.
_TRITON = importlib.util.find_spec("triton")
_CUOBJDUMP = Path(_TRITON.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump" if _TRITON else None


@pytest.mark.skipif(_TRITON is None, reason="triton is not installed: the triton scan backend is optional")
@pytest.mark.skipif(_CUOBJDUMP is None or not _CUOBJDUMP.exists(),
                    reason="this triton has no NVIDIA backend (ptxas, cuobjdump)")
def test_every_kernel_compiles_for_sm90_without_a_gpu(tmp_path):
    out = tmp_path / "report.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(SCRIPT), "--preset", "smoke", "--csv", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(out.open()))
    kernels = {(r["call"], r["kernel"], r["pass"]) for r in rows}
    for call in ("single", "multi"):
        for kernel in ("scan_fwd_kernel", "scan_bwd_kernel", "scan_bwd_tile_kernel"):
            assert (call, kernel, "main") in kernels, (call, kernel)
    # T1 (8 channels, 300 tokens) is the long-l regime: first passes and the segment carry are built too
    assert {("single", "scan_bwd_kernel", "local"), ("single", "segment_carry_kernel", "main")} <= kernels
    for row in rows:
        assert row["status"] in ("ok", "spills"), row
        assert 0 < int(row["regs"]) <= 255 and int(row["warps_per_sm"]) >= int(row["num_warps"]), row
        # every scan kernel loops over its tokens (tiles or steps); the machine code is larger than any loop
        bodies = [int(b) for b in row["sass_loops"].split("/") if b]
        assert bodies and max(bodies) < int(row["sass_instr"]), row
    token_bwd = [r for r in rows if r["kernel"] == "scan_bwd_kernel" and r["pass"] == "main"]
    assert all(len(r["sass_loops"].split("/")) >= 3 for r in token_bwd)  # intervals, and in each two step loops
    # the token backward's scratch is sized on this (pamm.ops.triton.plan.REGS_PER_STATE_VALUE): fewer
    # registers per state value would let more programs run at once than the scratch has slots for
    for r in token_bwd:
        state_values_per_thread = int(r["block_d"]) * int(r["block_n"]) / (32 * int(r["num_warps"]))
        assert int(r["regs"]) >= 16 * state_values_per_thread, r


def test_sass_loop_bodies_from_a_disassembly(load_script):
    """Backward branches to earlier labels are loops (the one after EXIT is not); bodies count instructions."""
    report = load_script("benchmarks/triton_compile_report.py")
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
.L_x_0:
        /*0020*/                   FFMA R3, R3, R4, R5 ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
        /*0040*/               @P1 BRA `(.L_x_1) ;
        /*0050*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0060*/                   EXIT ;
.L_x_3:
        /*0070*/                   BRA `(.L_x_3);
"""
    assert report.sass_loops(sass) == (8, [2, 4])
