"""Every model on a CUDA device, in bf16 autocast, with every usable scan backend (skipped without a GPU).

Why: CI has no GPU, so device mistakes (a tensor made on the CPU inside ``forward``, a dtype that
autocast does not reach, a kernel that rejects mixed B/C dtypes, as the released PAMM does) can only
show on a GPU machine. Run there with ``pytest tests/test_gpu_models.py``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[1]


def matrix_cases() -> list[tuple[str, str]]:
    """Every (model, variant) of the default workflow matrix on NYUD: a model added to the matrix is checked."""
    from pamm.config import workflow_matrix

    config = yaml.safe_load((REPO / "workflow" / "config.yaml").read_text())
    return sorted({(model, variant) for dataset, model, variant, _ in workflow_matrix(config) if dataset == "nyud"})


CASES = matrix_cases()


def scans(model: torch.nn.Module) -> bool:
    """Whether the model runs a selective scan (a module declares ``scan_settings``)."""
    return any(hasattr(module, "scan_settings") for module in model.modules())


def usable_backends() -> list[str]:
    """The scan backends that can run fp32, n=16 scans on this GPU (each backend's own check)."""
    from pamm.ops.backends import get_backend

    device = torch.device("cuda")
    return [name for name in ("torch", "triton", "cuda") if get_backend(name).supports(device, torch.float32, 16) is None]


def tiny_model(name: str, variant: str, backend: str):
    from pamm.config import resolve_config
    from pamm.engine.build import build_model_for

    cfg = resolve_config("tiny", "nyud", name, variant, 0, overrides={"train": {"scan": {"backend": backend}}})
    torch.manual_seed(0)
    return cfg, build_model_for(cfg).cuda()


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_bf16_forward_backward_on_cuda_with_every_backend(name: str, variant: str) -> None:
    losses = {}
    for backend in usable_backends():
        cfg, model = tiny_model(name, variant, backend)
        if backend != "torch" and not scans(model):
            continue  # no scan: the backend changes nothing
        height, width = cfg["data"]["size"]
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1)).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs = model(images)
        loss = sum(v.float().square().mean() for k, v in outputs.items() if k != "aux")
        loss.backward()
        for task, out in outputs.items():
            if task != "aux":
                assert out.shape[0] == 2 and out.shape[-2:] == (height, width), (task, out.shape)
                assert torch.isfinite(out.float()).all(), (backend, task)
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), backend
        losses[backend] = loss.item()
    reference = losses.get("torch")
    for backend, value in losses.items():
        # bf16 inputs to the scan: backends agree to bf16 rounding, not bit for bit.
        assert value == pytest.approx(reference, rel=2e-2), losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_backends_match_the_torch_backend_output_and_gradients(dtype: torch.dtype) -> None:
    """mamba-ssm's kernel and the Triton kernels against pamm's torch scan, on the GPU, with D, z and bias."""
    from pamm import ops

    backends = [b for b in usable_backends() if b != "torch"]
    if not backends:
        pytest.skip("neither mamba-ssm nor triton is usable here")
    gen = torch.Generator().manual_seed(3)
    b, d, l, n = 2, 96, 333, 16

    def inputs():
        raw = dict(u=torch.randn(b, d, l, generator=gen), delta=torch.randn(b, d, l, generator=gen) * 0.5,
                   A=-torch.rand(d, n, generator=gen) - 0.2, B=torch.randn(b, n, l, generator=gen),
                   C=torch.randn(b, n, l, generator=gen), D=torch.randn(d, generator=gen),
                   z=torch.randn(b, d, l, generator=gen), delta_bias=torch.randn(d, generator=gen) * 0.1)
        low = {"u", "delta", "B", "C", "z"}
        return {k: v.cuda().to(dtype if k in low else torch.float32).requires_grad_() for k, v in raw.items()}

    base = inputs()
    results = {}
    for backend in ["torch", *backends]:
        x = {k: v.detach().clone().requires_grad_() for k, v in base.items()}
        out = ops.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                 delta_bias=x["delta_bias"], delta_softplus=True, backend=backend)
        out.float().square().sum().backward()
        results[backend] = (out.float(), {k: v.grad.float() for k, v in x.items()})
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    ref_out, ref_grads = results["torch"]
    for backend in backends:
        out, grads = results[backend]
        assert (out - ref_out).norm() / ref_out.norm() < tol, backend
        for name, grad in grads.items():
            err = (grad - ref_grads[name]).norm() / ref_grads[name].norm()
            assert err < tol * (10 if dtype == torch.bfloat16 else 1), (backend, name, err.item())


def test_adam_on_cuda_parameters_is_fused_and_matches_foreach() -> None:
    from pamm.engine.build import build_optimizer

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 32, generator=gen), torch.randn(32, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in start] for _ in range(3)]
    finals = []
    for make in (lambda ps: build_optimizer(ps, {"name": "adamw", "lr": 1e-2, "weight_decay": 0.01}),
                 lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, foreach=True)):
        params = [t.clone().cuda().requires_grad_() for t in start]
        optimizer = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.cuda()
            optimizer.step()
        finals.append((optimizer, [p.detach() for p in params]))
    assert finals[0][0].defaults["fused"] and not finals[1][0].defaults.get("fused")
    for fused, foreach in zip(finals[0][1], finals[1][1]):
        torch.testing.assert_close(fused, foreach, rtol=1e-5, atol=1e-6)
