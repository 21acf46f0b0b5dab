"""``auto`` picks mamba-ssm's kernel, then Triton, then torch on CUDA tensors; torch on CPU (choices faked)."""
import dataclasses

import pytest
import torch

import pamm.ops.backends as backends


@pytest.mark.parametrize(
    "cuda_reason, triton_reason, expected",
    [(None, None, "cuda"), ("mamba-ssm not importable", None, "triton"), ("no mamba", "no triton", "torch")],
)
def test_auto_on_cuda_prefers_kernel_then_triton_then_torch(monkeypatch, cuda_reason, triton_reason, expected):
    monkeypatch.setattr(backends, "_cuda_supports", lambda *a: cuda_reason)
    monkeypatch.setattr(backends, "_triton_supports", lambda *a: triton_reason)
    monkeypatch.setattr(backends, "_default_backend", None)
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    assert backends.resolve_backend("auto", torch.device("cuda")) == expected


def test_auto_on_cpu_is_torch_and_forced_default_wins(monkeypatch):
    monkeypatch.setattr(backends, "_cuda_supports", lambda *a: None)
    monkeypatch.setattr(backends, "_triton_supports", lambda *a: None)
    monkeypatch.setattr(backends, "_default_backend", None)
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    assert backends.resolve_backend("auto", "cpu") == "torch"
    backends.set_default_backend("ref")
    try:
        assert backends.resolve_backend("auto", "cpu") == "ref"
    finally:
        backends.set_default_backend(None)


def test_forcing_a_backend_that_cannot_run_says_why(monkeypatch):
    unavailable = dataclasses.replace(backends.get_backend("triton"), supports=lambda *a: "triton not importable (test)")
    monkeypatch.setitem(backends._BACKENDS, "triton", unavailable)
    with pytest.raises(RuntimeError, match="'triton' cannot run here: triton not importable"):
        backends.resolve_backend("triton", "cpu")
