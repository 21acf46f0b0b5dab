"""MTMamba / MTMamba++ on our blocks (baselines/ss2d.py, mtmamba.py, mtmamba_pp.py), at tiny sizes on CPU."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from baselines.ss2d import SS2D
from pamm.config import resolve_config
from pamm.models import create_model
from pamm.tasks import dataset_tasks

MODELS = ("mtmamba", "mtmamba_pp")
DATASETS = ("nyud", "pascal")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def build(name: str, dataset: str, seed: int = 0, **model_overrides) -> tuple[torch.nn.Module, dict]:
    cfg = resolve_config("tiny", dataset, name)
    cfg["model"].update(model_overrides)
    torch.manual_seed(seed)
    model = create_model(name, dataset_tasks(dataset), img_size=cfg["data"]["size"], **cfg["model"])
    return model, cfg


def tiny_images(cfg: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *cfg["data"]["size"], generator=generator)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_shapes_and_every_parameter_gets_a_gradient(name: str, dataset: str) -> None:
    # Stochastic depth may drop a whole branch for every sample of a tiny batch; switch it off here.
    model, cfg = build(name, dataset, drop_path_rate=0.0)
    model.train()
    images = tiny_images(cfg, batch=1)  # one image keeps this CPU test short; batching is checked below
    outputs = model(images)
    height, width = cfg["data"]["size"]
    assert set(outputs) == set(dataset_tasks(dataset))
    for task, channels in dataset_tasks(dataset).items():
        assert outputs[task].shape == (1, channels, height, width), task
        assert torch.isfinite(outputs[task]).all(), task
    loss = sum(out.square().mean() for out in outputs.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    broken = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradients: {broken}"
    zero = [n for n, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradients: {zero}"


@pytest.mark.parametrize(("name", "dataset"), [("mtmamba", "nyud"), ("mtmamba_pp", "pascal")])
def test_checkpoint_round_trip_reproduces_eval_outputs_and_samples_stay_independent(name: str, dataset: str) -> None:
    model, cfg = build(name, dataset, seed=0)
    model.eval()
    state = copy.deepcopy(model.state_dict())
    fresh, _ = build(name, dataset, seed=123)  # different random init, overwritten below
    fresh.load_state_dict(state)
    fresh.eval()
    images = tiny_images(cfg)
    with torch.no_grad():
        expected, got, first_alone = model(images), fresh(images), fresh(images[:1])
    for task in expected:
        assert torch.equal(expected[task], got[task]), task
        # Tasks, directions and samples share tensors: a sample must not see its batch neighbour.
        torch.testing.assert_close(first_alone[task], expected[task][:1], rtol=1e-4, atol=1e-5)


def naive_selective_scan(u, delta, A, B, C, D):
    """h_l = exp(delta_l A) h_{l-1} + delta_l B_l u_l; y_l = C_l . h_l + D u_l. u, delta (d, L); A (d, n); B, C (n, L)."""
    state = torch.zeros_like(A)
    outputs = []
    for step in range(u.shape[1]):
        state = torch.exp(delta[:, step, None] * A) * state + (delta[:, step] * u[:, step])[:, None] * B[None, :, step]
        outputs.append(state @ C[:, step] + D * u[:, step])
    return torch.stack(outputs, dim=1)


def mtmamba_direction(x: torch.Tensor, k: int) -> torch.Tensor:
    """MTMamba's k-th sequence of a (d, H, W) map: row-major, column-major, row reversed, column reversed."""
    seq = x.flatten(1) if k % 2 == 0 else x.transpose(1, 2).flatten(1)
    return seq.flip(-1) if k >= 2 else seq


def mtmamba_undo_direction(y: torch.Tensor, k: int, height: int, width: int) -> torch.Tensor:
    y = y.flip(-1) if k >= 2 else y
    return y.reshape(-1, height, width) if k % 2 == 0 else y.reshape(-1, width, height).transpose(1, 2)


def test_ss2d_one_call_for_all_tasks_and_directions_matches_explicit_per_direction_scans() -> None:
    torch.manual_seed(0)
    tasks, d_model, d_state, height, width, batch = 2, 8, 4, 3, 5, 2
    ss2d = SS2D(tasks, d_model, d_state=d_state)
    with torch.no_grad():  # make every direction and task different, so a mix-up cannot cancel out
        ss2d.A_logs.add_(0.3 * torch.randn_like(ss2d.A_logs))
        ss2d.Ds.add_(torch.randn_like(ss2d.Ds))
        ss2d.dt_proj_bias.add_(torch.randn_like(ss2d.dt_proj_bias))
    d_inner, rank = ss2d.d_inner, ss2d.dt_rank
    u = torch.randn(batch, tasks * d_inner, height * width)
    source = torch.randn(batch, tasks, d_inner, height * width)
    with torch.no_grad():
        merged = ss2d.scan(u, source, height, width).reshape(batch, tasks, d_inner, height, width)

    for b in range(batch):
        for t in range(tasks):
            u_map = u[b, t * d_inner : (t + 1) * d_inner].reshape(d_inner, height, width)
            src_map = source[b, t].reshape(d_inner, height, width)
            expected = torch.zeros(d_inner, height, width)
            for k in range(4):
                u_seq, src_seq = mtmamba_direction(u_map, k), mtmamba_direction(src_map, k)
                dt_low, b_seq, c_seq = (ss2d.x_proj_weight[t, k] @ src_seq).split([rank, d_state, d_state])
                delta = F.softplus(ss2d.dt_proj_weight[t, k] @ dt_low + ss2d.dt_proj_bias[t, k][:, None])
                y_seq = naive_selective_scan(
                    u_seq, delta, -torch.exp(ss2d.A_logs[t, k]), b_seq, c_seq, ss2d.Ds[t, k]
                )
                expected += mtmamba_undo_direction(y_seq, k, height, width)
            torch.testing.assert_close(merged[b, t], expected.detach(), rtol=1e-4, atol=1e-5)


def test_css2d_takes_its_selection_from_the_cross_input() -> None:
    torch.manual_seed(0)
    css2d = SS2D(2, 8, d_state=4, cross=True).eval()
    x = torch.randn(2, 1, 3, 4, 8)
    shared_a, shared_b = torch.randn(1, 1, 3, 4, 8), torch.randn(1, 1, 3, 4, 8)
    with torch.no_grad():
        out_a, out_b = css2d(x, cross_input=shared_a), css2d(x, cross_input=shared_b)
    assert out_a.shape == (2, 1, 3, 4, 8)
    assert not torch.allclose(out_a, out_b)


@pytest.mark.parametrize("name", MODELS)
def test_paper_config_shapes_and_decoder_parameters_match_the_released_layers(name: str, load_script) -> None:
    """Swin-L at 448x576 on the meta device (no memory): output shapes, and the decoder's parameter
    count equals the released code's layer shapes (counted independently in the param-count script)."""
    script = load_script("scripts/baseline_param_count_mamba.py")
    cfg = resolve_config("paper", "nyud", name)
    tasks = dataset_tasks("nyud")
    with torch.device("meta"):
        model = create_model(name, tasks, img_size=cfg["data"]["size"], **cfg["model"])
        outputs = model(torch.empty(1, 3, *cfg["data"]["size"]))
    assert {t: tuple(o.shape) for t, o in outputs.items()} == {t: (1, c, 448, 576) for t, c in tasks.items()}
    decoder = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("backbone.", "feature_norms.")))
    released = script.released_decoder(list(model.backbone.channels), tasks, 16, plus_plus=(name == "mtmamba_pp"))
    assert decoder == released
