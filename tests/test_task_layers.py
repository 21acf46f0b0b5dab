"""pamm.models.task_layers: both task-axis layouts against a loop of per-task nn.Linear / nn.LayerNorm (float64),
the lead-1 broadcast, the init draws, and the parameter names the checkpoint converters map onto."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pamm.models.task_layers import TaskLayerNorm, TaskLinear


def per_task_linears(layer: TaskLinear) -> list[nn.Linear]:
    """Independent nn.Linear modules holding each task's slice of the stacked weights."""
    linears = []
    for t in range(layer.num_tasks):
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(layer.weight[t])
            if layer.bias is not None:
                linear.bias.copy_(layer.bias[t])
        linears.append(linear)
    return linears


def per_task_norms(layer: TaskLayerNorm) -> list[nn.LayerNorm]:
    norms = []
    for t in range(layer.num_tasks):
        norm = nn.LayerNorm(layer.channels, eps=layer.eps, dtype=torch.float64)
        with torch.no_grad():
            norm.weight.copy_(layer.weight[t])
            norm.bias.copy_(layer.bias[t])
        norms.append(norm)
    return norms


def randomised_norm(tasks: int, channels: int, task_axis: int) -> TaskLayerNorm:
    norm = TaskLayerNorm(tasks, channels, task_axis=task_axis).double()
    with torch.no_grad():  # ones/zeros would hide a task mix-up
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("task_axis, shape", [(0, (3, 2, 6)), (0, (3, 2, 5, 6)), (0, (3, 2, 3, 4, 6)), (1, (2, 3, 6))])
def test_linear_equals_per_task_linears(task_axis: int, shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    layer = TaskLinear(3, 6, 4, bias=bias, task_axis=task_axis).double()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
        linears = per_task_linears(layer)
        expected = torch.stack([linears[t](x.select(task_axis, t)) for t in range(3)], dim=task_axis)
    assert got.shape == (*shape[:-1], 4)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("task_axis, shape", [(0, (3, 2, 6)), (0, (3, 2, 4, 5, 6)),
                                              (1, (2, 3, 6)), (1, (2, 3, 5, 6)), (1, (2, 3, 4, 5, 6))])
def test_layernorm_equals_per_task_layernorms(task_axis: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(2)
    norm = randomised_norm(3, 6, task_axis=task_axis)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    with torch.no_grad():
        got = norm(x)
        norms = per_task_norms(norm)
        expected = torch.stack([norms[t](x.select(task_axis, t)) for t in range(3)], dim=task_axis)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_a_lead_of_one_is_broadcast_to_every_task() -> None:
    torch.manual_seed(4)
    linear = TaskLinear(3, 5, 7, task_axis=0).double()
    norm = randomised_norm(3, 5, task_axis=0)
    shared = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        out_linear, out_norm = linear(shared), norm(shared)
        linears, norms = per_task_linears(linear), per_task_norms(norm)
    assert out_linear.shape == (3, 2, 4, 7) and out_norm.shape == (3, 2, 4, 5)
    for t in range(3):
        torch.testing.assert_close(out_linear[t], linears[t](shared[0]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_norm[t], norms[t](shared[0]), rtol=1e-12, atol=1e-12)
    # negative control: the tasks' outputs do differ, so a broadcast of one task's weights would fail above
    assert not torch.allclose(out_linear[0], out_linear[1])


def test_both_layouts_compute_the_same_map_on_transposed_inputs() -> None:
    torch.manual_seed(5)
    first, batch = TaskLinear(3, 6, 4, task_axis=0).double(), TaskLinear(3, 6, 4, task_axis=1).double()
    batch.load_state_dict(first.state_dict())
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(batch(x), first(x.transpose(0, 1)).transpose(0, 1), rtol=1e-12, atol=1e-12)
        # negative control: the tasks' weights swapped no longer agree with the per-task reference
        batch.weight.copy_(batch.weight.flip(0))
        assert not torch.allclose(batch(x), first(x.transpose(0, 1)).transpose(0, 1))


def test_init_matches_nn_linear_and_draws_weight_then_bias() -> None:
    torch.manual_seed(6)
    reference = nn.Linear(9, 4)
    torch.manual_seed(6)
    single = TaskLinear(1, 9, 4)
    torch.testing.assert_close(single.weight[0], reference.weight)
    torch.testing.assert_close(single.bias[0], reference.bias)
    # several tasks: one draw for the whole (T, out, in) weight, then one for the (T, out) bias
    for task_axis in (0, 1):
        torch.manual_seed(7)
        layer = TaskLinear(3, 9, 4, task_axis=task_axis)
        torch.manual_seed(7)
        bound = 1.0 / 9**0.5
        weight = torch.empty(3, 4, 9).uniform_(-bound, bound)
        bias = torch.empty(3, 4).uniform_(-bound, bound)
        assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias)
    norm = TaskLayerNorm(3, 4)
    assert torch.equal(norm.weight, torch.ones(3, 4)) and torch.equal(norm.bias, torch.zeros(3, 4))


def test_state_dict_names_and_shapes() -> None:
    for task_axis in (0, 1):
        with_bias = TaskLinear(3, 5, 7, task_axis=task_axis).state_dict()
        assert {k: tuple(v.shape) for k, v in with_bias.items()} == {"weight": (3, 7, 5), "bias": (3, 7)}
        assert list(TaskLinear(3, 5, 7, bias=False, task_axis=task_axis).state_dict()) == ["weight"]
        norm = TaskLayerNorm(3, 5, task_axis=task_axis).state_dict()
        assert {k: tuple(v.shape) for k, v in norm.items()} == {"weight": (3, 5), "bias": (3, 5)}


def test_models_use_the_one_implementation_under_their_released_names() -> None:
    from baselines.ss2d import SS2D
    from pamm.models.experts import TaskRouter

    router = TaskRouter(2, 8, 5)
    assert all(m.task_axis == 1 for m in router.modules() if isinstance(m, (TaskLinear, TaskLayerNorm)))
    assert {"channel_norm.weight", "channel_out.weight", "channel_out.bias", "spatial_norm.bias",
            "spatial_out.weight", "logits.weight", "logits.bias"} <= set(router.state_dict())
    ss2d = SS2D(num_tasks=2, d_model=8)
    assert isinstance(ss2d.in_proj, TaskLinear) and ss2d.in_proj.task_axis == 0
    assert {"in_proj.weight", "out_norm.weight", "out_norm.bias", "out_proj.weight"} <= set(ss2d.state_dict())


@pytest.mark.parametrize("task_axis", [-1, 2, "1"])
def test_an_unknown_task_axis_is_refused(task_axis) -> None:
    with pytest.raises(ValueError, match="task_axis must be 0"):
        TaskLinear(2, 3, 4, task_axis=task_axis)
    with pytest.raises(ValueError, match="task_axis must be 0"):
        TaskLayerNorm(2, 3, task_axis=task_axis)
