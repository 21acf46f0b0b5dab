"""PAMM at tiny sizes: every variant runs, both fidelity modes behave as documented, ablations remove
exactly what they claim, and the batched scan equals the released per-task/per-direction structure."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import pamm.ops
from pamm.config import list_variants, resolve_config
from pamm.models import create_model
from pamm.models.experts import ParameterExpert, expert_reference, noisy_top_k, run_parameter_experts
from pamm.tasks import dataset_tasks

PAMM_VARIANTS = list_variants("pamm")
EXPECTED_VARIANTS = {
    "default", "as_released", "no_interaction_expert", "no_parameter_experts", "no_task_prior", "dir1", "dir2",
    "merge_mean", "scan_raster", "scan_snake", "scan_zorder", "scan_hilbert_cropped", "scan_hilbert",
}
BATCH = 1  # BatchNorm still sees 8x10 positions per channel; keeps the sweep fast on 2 shared cores


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def build(variant: str = "default", dataset: str = "nyud", seed: int = 0, **model_overrides):
    cfg = resolve_config("tiny", dataset, "pamm", variant, overrides={"model": model_overrides} if model_overrides else None)
    torch.manual_seed(seed)
    model = create_model("pamm", dataset_tasks(dataset), img_size=cfg["data"]["size"], **cfg["model"])
    return model, cfg


def image_for(cfg, batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *cfg["data"]["size"], generator=generator)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_pamm_variants_are_present():
    assert EXPECTED_VARIANTS <= set(PAMM_VARIANTS)


@pytest.mark.parametrize("dataset", ["nyud", "pascal"])
@pytest.mark.parametrize("variant", PAMM_VARIANTS)
def test_forward_backward_every_variant(variant: str, dataset: str):
    model, cfg = build(variant, dataset)
    model.train()
    image = image_for(cfg)
    out = model(image)
    tasks = dataset_tasks(dataset)
    assert set(out) == set(tasks)
    for task, channels in tasks.items():
        assert out[task].shape == (BATCH, channels, *cfg["data"]["size"]), task
        assert torch.isfinite(out[task]).all(), task
    sum(o.square().mean() for o in out.values()).backward()
    missing = {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}
    if model.options.released:
        # The released dead MoE-'L' branch is exactly the set of parameters without a gradient (docs/fidelity.md#pamm).
        dead = {name for name, _ in model.named_parameters() if ".dead_branch." in name}
        assert dead and missing == dead
    else:
        assert not missing, f"parameters without a gradient: {sorted(missing)[:5]}"


@pytest.mark.parametrize("variant", ["default", "as_released"])
def test_checkpoint_round_trip_reproduces_outputs(variant: str):
    model, cfg = build(variant, seed=0)
    image = image_for(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(o.mean() for o in model(image).values()).backward()
    optimizer.step()  # trained weights and non-trivial BatchNorm statistics
    model.eval()
    with torch.no_grad():
        expected = model(image)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    # A fresh model with another init seed (and, as released, another prompt seed) must be overwritten.
    fresh, _ = build(variant, seed=123, **({"released_prior_seed": 7} if variant == "as_released" else {}))
    assert not torch.equal(fresh.stages[0].prior_B, model.stages[0].prior_B)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    fresh.eval()
    for (name, a), (_, b) in zip(model.named_ssm_constants(), fresh.named_ssm_constants()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        got = fresh(image)
    for task in expected:
        assert torch.equal(expected[task], got[task]), task


def test_as_released_constants_are_seeded_buffers_and_as_described_trains_them():
    released, _ = build("as_released")
    described, _ = build("default")
    names = {n for n, _ in released.named_ssm_constants()}
    assert names and names.isdisjoint(n for n, _ in released.named_parameters())
    assert names <= set(released.state_dict())
    assert names <= {n for n, _ in described.named_parameters()}
    again, _ = build("as_released", seed=99)  # same released_prior_seed, other global seed -> same prompts
    other, _ = build("as_released", released_prior_seed=1)
    for (name, a), (_, b), (_, c) in zip(released.named_ssm_constants(), again.named_ssm_constants(), other.named_ssm_constants()):
        assert torch.equal(a, b), name
        if "prior" in name:
            assert not torch.equal(a, c), name
    stage = released.stages[0]
    n = stage.opts.d_state
    torch.testing.assert_close(torch.exp(stage.A_log), torch.arange(1, n + 1, dtype=torch.float32).expand_as(stage.A_log))
    assert torch.equal(stage.D, torch.ones_like(stage.D))


def test_as_released_config_quirks():
    nyud = resolve_config("tiny", "nyud", "pamm", "as_released")
    pascal = resolve_config("tiny", "pascal", "pamm", "as_released")
    assert nyud["train"]["loss"]["edge_pos_weight"] == 0.88
    assert pascal["train"]["loss"]["edge_pos_weight"] == 0.95
    model, cfg = build("as_released")
    kernel = cfg["model"]["expert_kernel"]
    assert model.stages[0].B_expert.pool_down.kernel_size == (kernel, kernel)
    assert model.stages[0].B_expert.top_k == cfg["model"]["top_k"] == 9  # the released routing: top 9 of 15
    assert model.stages[0].B_expert.num_experts == 15
    assert model.options.scan_order == "hilbert_cropped"
    assert model.backbone.model.cls_token is None  # the released ViT has no class token
    assert model.backbone.model.pos_embed.shape[1] == math.prod(model.token_grids[0])
    paper = resolve_config("paper", "nyud", "pamm", "as_released")["model"]
    assert paper["top_k"] == 9 and paper["expert_kernel"] == 9
    assert paper["backbone"]["class_token"] is False and paper["backbone"]["pos_embed_resample"] == "bicubic"


def test_as_released_routes_top_9_whatever_the_expert_kernel():
    """The release's `topk` reaches the B/C experts only as their kernel; their routing always keeps 9."""
    for kernel in (3, 5):
        model, cfg = build("as_released", expert_kernel=kernel)
        expert = model.stages[0].B_expert
        assert expert.pool_down.kernel_size == (kernel, kernel) and expert.top_k == 9
        assert model.stages[0].dead_branch.top_k == kernel  # the release passes its `topk` to the 'L' branch
        routes = torch.randn(2, len(model.task_names), expert.router.logits.weight.shape[1])
        weights = expert.eval().routing_weights(routes)
        assert ((weights > 0).sum(-1) == 9).all()
    with pytest.raises(ValueError, match="top_k=16 must be in 1..num_experts=15"):
        build("as_released", top_k=16)
    with pytest.raises(ValueError, match="expert_kernel=None"):
        build("as_released", expert_kernel=None)


def test_as_released_initialisation_is_the_releases():
    """Decoder linears TN(0, 0.02) with zero bias (Δ bias 0), per-expert up-projection fan-in, biased head convs;
    as described keeps Mamba's Δ init and bias-free head convs."""
    released, _ = build("as_released", seed=3)
    described, _ = build("default", seed=3)
    for stage in released.stages:
        assert torch.equal(stage.delta_bias, torch.zeros_like(stage.delta_bias))
        for weight in (stage.dt_down.weight, stage.dt_up.weight, stage.B_expert.router.spatial_weight):
            assert weight.abs().max() < 0.02 * 6 and 0.01 < weight.std() < 0.03
        assert torch.equal(stage.C_expert.router.spatial_bias, torch.zeros_like(stage.C_expert.router.spatial_bias))
        r = stage.B_expert.rank
        assert stage.B_expert.pool_up.weight.abs().max() <= 1 / math.sqrt(r)
        assert stage.B_expert.pool_up.weight.abs().max() > 1 / math.sqrt(r * stage.B_expert.num_experts)
    for head in released.heads.values():
        assert head.body[0].bias is not None and head.body[0].weight.std() < 0.03
    assert all(head.body[0].bias is None for head in described.heads.values())
    assert (described.stages[0].delta_bias < -2).all()  # inverse softplus of dt in [1e-3, 1e-1]


def test_as_released_refuses_another_resolution_with_a_clear_error():
    model, cfg = build("as_released")
    h, w = cfg["data"]["size"]
    stride = model.backbone.strides[0]
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, h + 2 * stride, w))
    message = str(err.value)
    assert f"{h // stride}x{w // stride}" in message and f"{h // stride + 2}x{w // stride}" in message
    assert "as_described" in message


def test_as_described_runs_at_any_resolution():
    model, cfg = build("default")
    model.eval()
    h, w = cfg["data"]["size"]
    with torch.no_grad():
        out = model(torch.randn(1, 3, h + 16, w - 16))
    assert out["semseg"].shape[-2:] == (h + 16, w - 16)


def _expert_count(t: int, di: int, n: int, e: int, r: int, k: int, interaction: bool = True) -> int:
    """Analytic parameter count of one as-described ParameterExpert (router, pool, task, general, norms)."""
    h = di // 4
    outputs = (2 * e if interaction else 0) + 1
    router = t * (di * h + h) + 2 * t * h + t * (h * h + h)  # channel branch
    router += t * di + t + 2 * t * di + t * (di * h + h)  # spatial attention pool branch
    router += t * (2 * h * outputs + outputs)  # logits
    pool = (di * k * k * e * r + e * r) + e * r * n + e * n + 2 * t * n if interaction else 0
    task = t * (di * k * k * r + r) + t * (r * n + n)
    general = di * n * k * k + n
    return router + pool + task + general + 2 * t * n


def test_ablations_remove_exactly_their_part():
    base, cfg = build("default")
    m = cfg["model"]
    t, s = len(dataset_tasks("nyud")), 4
    di, n, e, r, k = m["expand"] * m["embed_dim"], m["d_state"], m["num_experts"], m["expert_rank"], m["expert_kernel"]
    expert = _expert_count(t, di, n, e, r, k)
    assert n_params(base.stages[0].B_expert) == expert  # the analytic formula matches the module
    no_pool = _expert_count(t, di, n, e, r, k, interaction=False)
    plain = t * (di * n + n)
    assert n_params(base) - n_params(build("no_interaction_expert")[0]) == s * 2 * (expert - no_pool)
    assert n_params(base) - n_params(build("no_parameter_experts")[0]) == s * 2 * (expert - plain)
    assert n_params(base) - n_params(build("no_task_prior")[0]) == s * 2 * t * n
    # The pool removed really is the routed shared pool: E*(di*k*k*r + r + r*n + n) + BN + 2E router rows.
    h = di // 4
    assert expert - no_pool == e * (di * k * k * r + r + r * n + n) + 2 * t * n + t * 2 * e * (2 * h + 1)


def _record_scan_calls(monkeypatch):
    calls = []
    real = pamm.ops.multi_direction_scan

    def recording(*args, **kwargs):
        calls.append({"perm": kwargs["perm"].clone(), "merge": kwargs["merge"], "u": args[0].shape, "B": args[3].shape})
        return real(*args, **kwargs)

    monkeypatch.setattr(pamm.ops, "multi_direction_scan", recording)
    return calls


@pytest.mark.parametrize("variant,directions", [("dir1", 1), ("dir2", 2), ("default", 4)])
def test_scan_directions_reach_the_scan(monkeypatch, variant: str, directions: int):
    calls = _record_scan_calls(monkeypatch)
    model, cfg = build(variant, scan_order="raster")  # raster: 4 distinct orders on any grid
    model.eval()
    with torch.no_grad():
        model(image_for(cfg, batch=1))
    t = len(model.tasks)
    di, n = model.options.d_inner, model.options.d_state
    grid = model.token_grids[0]
    assert len(calls) == 4  # one call per stage: all tasks x directions together
    for call in calls:
        assert call["perm"].shape[0] == directions
        assert torch.equal(call["perm"], pamm.ops.scan_orders("raster", grid[0], grid[1], directions)[0])
        assert len({tuple(p.tolist()) for p in call["perm"]}) == directions  # distinct orders, not one order K times
        assert call["u"][1] == t * di and call["B"][1:3] == (t, n)


def test_default_scan_order_gives_four_distinct_directions():
    model, _ = build("default")
    grid = model.token_grids[0]
    assert grid[0] != grid[1]  # NYUD-shaped grid, as at 28x36
    perm, _ = pamm.ops.scan_orders(model.options.scan_order, grid[0], grid[1], model.options.scan_directions)
    assert len({tuple(p.tolist()) for p in perm}) == 4


def test_scan_order_and_merge_options_reach_the_scan(monkeypatch):
    calls = _record_scan_calls(monkeypatch)
    perms = {}
    for variant in ("scan_raster", "scan_hilbert", "merge_mean"):
        calls.clear()
        model, cfg = build(variant)
        model.eval()
        with torch.no_grad():
            model(image_for(cfg, batch=1))
        perms[variant] = calls[0]["perm"]
        grid = model.token_grids[0]
        expected = pamm.ops.scan_orders(model.options.scan_order, grid[0], grid[1], model.options.scan_directions)[0]
        assert torch.equal(perms[variant], expected)
        assert calls[0]["merge"] == ("mean" if variant == "merge_mean" else "sum")
    assert not torch.equal(perms["scan_raster"], perms["scan_hilbert"])


@pytest.mark.parametrize("variant", ["default", "as_released", "merge_mean"])
def test_per_task_direction_equals_batched(monkeypatch, variant: str):
    batched, cfg = build(variant)
    looped, _ = build(variant, scan_call="per_task_direction")
    looped.load_state_dict(batched.state_dict())
    batched.eval()
    looped.eval()
    image = image_for(cfg, batch=1)
    with torch.no_grad():
        expected = batched(image)
    scans = []
    real = pamm.ops.selective_scan
    monkeypatch.setattr(pamm.ops, "selective_scan", lambda *a, **k: scans.append(1) or real(*a, **k))
    with torch.no_grad():
        got = looped(image)
    t, k = len(batched.tasks), batched.options.scan_directions
    assert len(scans) == 4 * t * k  # the released structure: one scan per stage, task and direction
    for task in expected:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-5)


def test_top_k_routing_is_vectorised_and_not_renormalised():
    logits = torch.randn(3, 4, 6)
    weights = noisy_top_k(logits, None, top_k=2, add_noise=False)
    probs = logits.softmax(-1)
    for b in range(3):
        for t in range(4):
            keep = probs[b, t].topk(2).indices
            expected = torch.zeros(6)
            expected[keep] = probs[b, t, keep]
            assert torch.equal(weights[b, t], expected)
    assert (weights > 0).sum(-1).eq(2).all() and (weights.sum(-1) < 1).all()


def test_batched_expert_pool_equals_separate_low_rank_experts():
    torch.manual_seed(0)
    t, c, n, e, r, k = 2, 8, 4, 3, 2, 3
    expert = ParameterExpert(t, c, n, k, e, r, top_k=2).eval()
    with torch.no_grad():
        expert.pool_up_bias.normal_()
        for bn in (expert.pool_norm, expert.norm):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, t * c, 5, 6)
    with torch.no_grad():
        got = expert(x)
        routes = expert.router(x.reshape(2, t, c, 30), (5, 6))
        weights = expert.routing_weights(routes)
        per_task = x.reshape(2 * t, c, 5, 6)
        pooled = 0
        for i in range(e):  # expert i on its own: its r down-filters, its up-projection columns, its bias
            down_w = expert.pool_down.weight[i * r : (i + 1) * r]
            down_b = expert.pool_down.bias[i * r : (i + 1) * r]
            up_w = expert.pool_up.weight[:, i * r : (i + 1) * r]
            hidden = torch.nn.functional.conv2d(per_task, down_w, down_b, padding=k // 2)
            out = torch.nn.functional.conv2d(hidden, up_w, expert.pool_up_bias[i])
            pooled = pooled + out * weights.reshape(2 * t, e)[:, i, None, None, None]
        mix = routes[..., -1].reshape(2, t, 1, 1, 1)
        task_part = expert.task_up(expert.task_down(x)).reshape(2, t, n, 5, 6) * mix
        total = (
            expert.pool_norm(pooled.reshape(2, t * n, 5, 6))
            + task_part.reshape(2, t * n, 5, 6)
            + expert.general(per_task).reshape(2, t * n, 5, 6)
        )
        expected = expert.norm(total)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("interaction", [True, False])
@pytest.mark.parametrize("detach_general", [True, False])
def test_fused_expert_pair_equals_each_expert_alone(interaction: bool, detach_general: bool):
    """B and C experts run with their same-input convolutions fused give the outputs and every gradient
    (input and parameters, the detached general projection included) of one convolution at a time."""
    torch.manual_seed(0)
    t, c, n, e, r, k = 2, 6, 3, 3, 2, 3
    kwargs = dict(top_k=2, interaction=interaction, detach_general=detach_general, router_noise=False)
    fused = [ParameterExpert(t, c, n, k, e, r, **kwargs).train() for _ in range(2)]
    with torch.no_grad():
        for expert in fused:
            for p in expert.parameters():
                p.add_(0.1 * torch.randn_like(p))  # non-zero biases everywhere
    separate = copy.deepcopy(fused)
    x = torch.randn(2, t * c, 5, 4)
    x_fused, x_sep = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = run_parameter_experts(fused, x_fused)
    expected = [expert_reference(expert, x_sep) for expert in separate]
    weights = [torch.randn_like(y) for y in expected]
    sum((y * wt).sum() for y, wt in zip(got, weights)).backward()
    sum((y * wt).sum() for y, wt in zip(expected, weights)).backward()
    for g, ex in zip(got, expected):
        torch.testing.assert_close(g, ex, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_fused.grad, x_sep.grad, rtol=1e-5, atol=1e-5)
    for mine, ref in zip(fused, separate):
        for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_detached_general_projection_sends_no_gradient_to_the_input():
    """``detach_general`` changes the input gradient (and only by the general projection's share)."""
    torch.manual_seed(0)
    attached = ParameterExpert(2, 4, 3, 3, 2, 2, top_k=1, interaction=False, detach_general=False, router_noise=False)
    detached = copy.deepcopy(attached)
    detached.detach_general = True
    x = torch.randn(2, 8, 4, 4)
    grads = []
    for expert in (attached, detached):
        xi = x.clone().requires_grad_()
        expert(xi).square().sum().backward()
        grads.append(xi.grad)
    assert not torch.allclose(grads[0], grads[1])
    torch.testing.assert_close(attached.general.weight.grad, detached.general.weight.grad)


def test_fused_experts_under_bf16_autocast_keep_fp32_gradients():
    torch.manual_seed(0)
    # eval: BatchNorm on running statistics, so no gradient is cancelled down to rounding noise
    experts = [ParameterExpert(2, 6, 3, 3, 3, 2, top_k=2, router_noise=False).eval() for _ in range(2)]
    reference = copy.deepcopy(experts)
    x = torch.randn(2, 12, 5, 4, requires_grad=True)
    weights = [torch.randn(2, 6, 5, 4) for _ in experts]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = run_parameter_experts(experts, x)
    sum((y.float() * wt).sum() for y, wt in zip(outputs, weights)).backward()
    sum((y * wt).sum() for y, wt in zip(run_parameter_experts(reference, x.detach()), weights)).backward()
    got, expected = [], []
    for mine, ref in zip(experts, reference):
        for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
            assert p.grad is not None and p.grad.dtype == torch.float32, name
            got.append(p.grad.flatten())
            expected.append(q.grad.flatten())
    # bf16 rounding: compare all gradients together (some, like the router's softmax bias, are ~0 in fp32)
    got, expected = torch.cat(got), torch.cat(expected)
    assert (got - expected).norm() < 0.02 * expected.norm()
    assert x.grad.dtype == torch.float32


def test_backbone_dim_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone_dim"):
        build("default", backbone_dim=768)


def test_dt_rank_and_widths_follow_the_paper_rules():
    model, cfg = build("default")
    d = cfg["model"]["embed_dim"]
    assert model.options.d_inner == 2 * d
    assert model.options.resolved_dt_rank == math.ceil(d / 16)
