"""PAMM's dual parameter experts: the routed low-rank mixtures that produce the selective scan's B and C.

Every module here holds *all tasks at once*: per-task weights are stacked on a leading task axis
(or are the groups of a grouped convolution), so one call serves every task of a stage. Tensors
that carry tasks are laid out ``(batch, tasks * channels, h, w)`` with task ``t`` owning the
channel block ``[t * channels, (t + 1) * channels)``.

Released structure (docs/fidelity.md#pamm; PAMM's release takes its router and LoRA experts from MLoRE's
``MOEBlock``, YuqiYang213/MLoRE@084940931556121400d7b33966f717b9adc29f8b:models/transformers/MLoRE.py):
router (channel branch + spatial branch -> logits, noise std, mixing scalar) -> noisy top-k over a
shared pool of low-rank experts (the cross-task "interaction" experts) + a task-specific low-rank
expert scaled by the mixing scalar + a full-rank "general" projection on a detached input ->
per-task BatchNorm.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pamm.models.task_layers import TaskLayerNorm, TaskLinear

ROUTER_SPATIAL_KINDS = ("released_linear", "attention_pool")


class TaskRouter(nn.Module):
    """Per-task router (MLoRE's ``SpatialAtt`` + a 1x1 conv to the routing outputs), all tasks stacked.

    Channel branch: per-pixel 1x1 (C -> C/4), LayerNorm, GELU, 1x1, then mean pooling (pooling before
    the last 1x1 is the same map since both are linear). Spatial branch: pool the C channels over the
    pixels, LayerNorm, GELU, 1x1 (C -> C/4). The two C/4 vectors are concatenated and projected to
    ``num_outputs`` per task.

    ``spatial="released_linear"`` pools with ``nn.Linear(H*W -> 1)`` per task, as released: a fixed
    weight per pixel, so the module only works at the token count it was built for.
    ``spatial="attention_pool"`` (as described) pools with an input-dependent spatial attention map,
    a per-task 1x1 conv (C -> 1) followed by a softmax over pixels: resolution-free.
    """

    def __init__(
        self,
        num_tasks: int,
        in_channels: int,
        num_outputs: int,
        spatial: str = "attention_pool",
        token_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if spatial not in ROUTER_SPATIAL_KINDS:
            raise ValueError(f"router spatial branch {spatial!r} unknown; valid: {list(ROUTER_SPATIAL_KINDS)}")
        hidden = max(1, in_channels // 4)
        self.num_tasks, self.in_channels, self.hidden = num_tasks, in_channels, hidden
        self.spatial = spatial
        # channel branch
        self.channel_proj = nn.Conv1d(num_tasks * in_channels, num_tasks * hidden, 1, groups=num_tasks)
        self.channel_norm = TaskLayerNorm(num_tasks, hidden, task_axis=1)
        self.channel_out = TaskLinear(num_tasks, hidden, hidden, task_axis=1)
        # spatial branch
        if spatial == "released_linear":
            if token_grid is None:
                raise ValueError("the released router needs the token grid it is tied to (token_grid=(h, w))")
            self.token_grid = (int(token_grid[0]), int(token_grid[1]))
            tokens = self.token_grid[0] * self.token_grid[1]
            bound = 1.0 / math.sqrt(tokens)
            self.spatial_weight = nn.Parameter(torch.empty(num_tasks, tokens).uniform_(-bound, bound))
            self.spatial_bias = nn.Parameter(torch.empty(num_tasks).uniform_(-bound, bound))
        else:
            self.token_grid = None
            bound = 1.0 / math.sqrt(in_channels)
            self.spatial_weight = nn.Parameter(torch.empty(num_tasks, in_channels).uniform_(-bound, bound))
            self.spatial_bias = nn.Parameter(torch.zeros(num_tasks))
        self.spatial_norm = TaskLayerNorm(num_tasks, in_channels, task_axis=1)
        self.spatial_out = TaskLinear(num_tasks, in_channels, hidden, task_axis=1)
        self.logits = TaskLinear(num_tasks, 2 * hidden, num_outputs, task_axis=1)

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Raise a clear error when the released, resolution-tied router sees another token grid."""
        if self.token_grid is not None and tuple(grid) != self.token_grid:
            raise ValueError(
                f"PAMM as_released: the router's spatial branch is nn.Linear(H*W -> 1), tied to the token grid "
                f"{self.token_grid[0]}x{self.token_grid[1]} it was built for; got a {grid[0]}x{grid[1]} grid. "
                "The released model cannot run at another resolution: rebuild it at this img_size or use "
                "fidelity: as_described (resolution-free router)."
            )

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``x``: (batch, tasks, channels, pixels) -> routing outputs (batch, tasks, num_outputs)."""
        self.check_grid(grid)
        b, t, c, l = x.shape
        feat = self.channel_proj(x.reshape(b, t * c, l)).view(b, t, self.hidden, l)
        feat = F.gelu(self.channel_norm(feat.transpose(2, 3)))  # (b, t, l, hidden)
        channel = self.channel_out(feat.mean(dim=2))
        if self.spatial == "released_linear":
            pooled = torch.einsum("btcl,tl->btc", x, self.spatial_weight) + self.spatial_bias[None, :, None]
        else:
            attention = torch.einsum("btcl,tc->btl", x, self.spatial_weight) + self.spatial_bias[None, :, None]
            pooled = torch.einsum("btcl,btl->btc", x, attention.softmax(dim=-1))
        spatial = self.spatial_out(F.gelu(self.spatial_norm(pooled)))
        return self.logits(torch.cat([channel, spatial], dim=-1))


def noisy_top_k(
    logits: torch.Tensor, noise_std: torch.Tensor | None, top_k: int, add_noise: bool
) -> torch.Tensor:
    """Released routing: (noise) -> softmax -> zero all but the top-k, *not* renormalised. Vectorised."""
    if add_noise and noise_std is not None:
        logits = logits + torch.randn_like(logits) * noise_std
    probs = logits.softmax(dim=-1)
    if top_k >= probs.shape[-1]:
        return probs
    keep = torch.zeros_like(probs).scatter_(-1, probs.topk(top_k, dim=-1).indices, 1.0)
    return probs * keep


class ParameterExpert(nn.Module):
    """One of PAMM's dual parameter experts (B or C): ``(b, T*C_in, h, w) -> (b, T*C_out, h, w)``.

    * interaction (shared) pool: ``num_experts`` low-rank experts (k x k conv C_in -> r, 1x1 r -> C_out)
      shared by all tasks and routed per task. Batched: the E down-projections are one conv with E*r
      outputs; the routing weight scales each expert's r channels and the concatenated up-projections
      are one dense 1x1 conv (E*r -> C_out), which equals the routing-weighted sum of the E experts'
      outputs (their biases are mixed by the same weights). Followed by a per-task BatchNorm.
    * task expert: a low-rank conv per task (grouped conv), scaled by the router's mixing scalar.
    * general: a full-rank k x k conv shared by all tasks, on a detached input by default (as released).
    * sum -> per-task BatchNorm.
    """

    def __init__(
        self,
        num_tasks: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_experts: int,
        rank: int,
        top_k: int,
        interaction: bool = True,
        detach_general: bool = True,
        router_noise: bool = True,
        router_spatial: str = "attention_pool",
        token_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if interaction and not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}")
        self.num_tasks, self.in_channels, self.out_channels = num_tasks, in_channels, out_channels
        self.num_experts, self.rank, self.top_k = num_experts, rank, top_k
        self.interaction, self.detach_general, self.router_noise = interaction, detach_general, router_noise
        # Router outputs: [E logits][E noise std (if noisy)][1 mixing scalar]; only the mixing scalar
        # remains when the shared pool is removed.
        routing_outputs = (num_experts * (2 if router_noise else 1) if interaction else 0) + 1
        self.router = TaskRouter(num_tasks, in_channels, routing_outputs, router_spatial, token_grid)
        if kernel_size % 2 == 0:
            raise ValueError(f"expert kernel {kernel_size} must be odd (same-size output)")
        pad = kernel_size // 2
        if interaction:
            self.pool_down = nn.Conv2d(in_channels, num_experts * rank, kernel_size, padding=pad)
            self.pool_up = nn.Conv2d(num_experts * rank, out_channels, 1, bias=False)
            self.pool_up_bias = nn.Parameter(torch.zeros(num_experts, out_channels))
            self.pool_norm = nn.BatchNorm2d(num_tasks * out_channels)
        self.task_down = nn.Conv2d(num_tasks * in_channels, num_tasks * rank, kernel_size, padding=pad, groups=num_tasks)
        self.task_up = nn.Conv2d(num_tasks * rank, num_tasks * out_channels, 1, groups=num_tasks)
        self.general = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad)
        self.norm = nn.BatchNorm2d(num_tasks * out_channels)
        self._init_low_rank()

    def _init_low_rank(self) -> None:
        # As MLoRE's LoraBlock.init_weights: default (kaiming-uniform, a=sqrt 5) weights, zero biases.
        convs = [self.task_down, self.task_up] + ([self.pool_down] if self.interaction else [])
        for conv in convs:
            nn.init.zeros_(conv.bias)

    @torch.no_grad()
    def apply_released_init(self) -> None:
        """The release's initialisation where ours differs (PAMM as_released).

        The release's ``init_weights`` re-draws every ``nn.Linear`` with a truncated normal (std 0.02) and a
        zero bias; in the experts that is the router's spatial ``nn.Linear(H*W -> 1)``. Its pool experts are
        separate LoRA convs whose up-projections are drawn with fan-in r each; ours are one E*r-wide conv, so
        each expert's slice is drawn as its own conv would be.
        """
        if self.router.spatial == "released_linear":
            nn.init.trunc_normal_(self.router.spatial_weight, std=0.02)
            nn.init.zeros_(self.router.spatial_bias)
        if self.interaction:
            r = self.rank
            for e in range(self.num_experts):
                nn.init.kaiming_uniform_(self.pool_up.weight[:, e * r : (e + 1) * r], a=math.sqrt(5))

    def routing_weights(self, routes: torch.Tensor) -> torch.Tensor:
        """Per-task expert weights (b, T, E) from the router outputs."""
        e = self.num_experts
        logits = routes[..., :e]
        noise_std = routes[..., e : 2 * e] if self.router_noise else None
        return noisy_top_k(logits, noise_std, self.top_k, add_noise=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_parameter_experts([self], x)[0]


class _ConvDetachedTail(torch.autograd.Function):
    """``conv2d(x, weight, bias)`` whose output channels from ``grad_channels`` on send no gradient to ``x``.

    The same math as concatenating ``conv(x, w[:g])`` and ``conv(x.detach(), w[g:])``, in one
    convolution: the detached general projections share their input with the routed pool's
    down-projections, and one wide convolution runs far better than several narrow ones (cuDNN's
    implicit GEMM with 16 output channels leaves most of a tensor core idle). The weight gets the
    gradient of every output channel, ``x`` only that of the first ``grad_channels``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, grad_channels: int, padding: int):
        device = x.device.type
        if torch.is_autocast_enabled(device):  # cast as autocast would, so the backward sees one dtype
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device, enabled=False):
            out = F.conv2d(x, weight, bias, padding=padding)
        ctx.save_for_backward(x, weight)
        ctx.grad_channels, ctx.padding, ctx.has_bias = grad_channels, padding, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        g, pad = ctx.grad_channels, ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight[:g], grad_out[:, :g], padding=pad)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, padding=pad)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def _conv_detached_tail(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad_channels: int,
                        padding: int) -> torch.Tensor:
    """One convolution; only its first ``grad_channels`` outputs back-propagate into ``x``."""
    if grad_channels == 0:
        return F.conv2d(x.detach(), weight, bias, padding=padding)
    if grad_channels == weight.shape[0] or not (torch.is_grad_enabled() and x.requires_grad):
        return F.conv2d(x, weight, bias, padding=padding)
    return _ConvDetachedTail.apply(x, weight, bias, grad_channels, padding)


def run_parameter_experts(experts: Sequence[ParameterExpert], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of several parameter experts that read the same input (PAMM's B and C experts).

    Same math as calling each expert alone, with the same-input k x k convolutions fused: every
    expert's pool down-projection and general projection are one convolution over the per-task
    samples (the general ones on a detached input, through :class:`_ConvDetachedTail`), and every
    expert's task down-projection is one grouped convolution. Why: the k x k expert convolutions are
    narrow (a few channels per expert and task), so run one by one they take much of PAMM's step on a
    GPU (docs/performance.md); fused, they are a few wide convolutions. The routers, the 1x1
    up-projections and the norms stay per expert. Parameters keep their names and shapes, so
    checkpoints and FLOP counts are unchanged.
    """
    first = experts[0]
    for other in experts[1:]:
        same = (other.num_tasks, other.in_channels, other.general.kernel_size)
        if same != (first.num_tasks, first.in_channels, first.general.kernel_size):
            raise ValueError("fused parameter experts must share tasks, input channels and kernel size")
    b, _, h, w = x.shape
    t, c = first.num_tasks, first.in_channels
    pad = first.general.padding[0]
    per_task = x.reshape(b * t, c, h, w)  # every task's input as its own sample: shared weights, one call

    # One convolution over the per-task samples: input-gradient channels first, detached general ones last.
    shared = [(i, "pool_down", e.pool_down) for i, e in enumerate(experts) if e.interaction]
    shared += [(i, "general", e.general) for i, e in enumerate(experts) if not e.detach_general]
    grad_channels = sum(conv.out_channels for _, _, conv in shared)
    shared += [(i, "general", e.general) for i, e in enumerate(experts) if e.detach_general]
    weight = torch.cat([conv.weight for _, _, conv in shared])
    bias = torch.cat([conv.bias for _, _, conv in shared])
    fused = _conv_detached_tail(per_task, weight, bias, grad_channels, pad)
    parts: dict[tuple[int, str], torch.Tensor] = {}
    offset = 0
    for i, name, conv in shared:
        parts[i, name] = fused[:, offset : offset + conv.out_channels]
        offset += conv.out_channels

    # One grouped convolution for every expert's task down-projection (per group: expert 0's r, expert 1's...).
    ranks = [e.task_down.out_channels // t for e in experts]
    down_w = torch.cat([e.task_down.weight.view(t, r, *e.task_down.weight.shape[1:]) for e, r in zip(experts, ranks)], 1)
    down_b = torch.cat([e.task_down.bias.view(t, r) for e, r in zip(experts, ranks)], 1)
    task_down = F.conv2d(x, down_w.flatten(0, 1), down_b.flatten(), padding=pad, groups=t)
    task_down = task_down.view(b, t, sum(ranks), h, w).split(ranks, dim=2)

    outputs = []
    for i, expert in enumerate(experts):
        out = expert.out_channels
        routes = expert.router(x.reshape(b, t, c, h * w), (h, w))
        mix = routes[..., -1]  # (b, T): the task expert's mixing scalar
        task_part = expert.task_up(task_down[i].reshape(b, t * ranks[i], h, w)).view(b, t, out, h, w)
        task_part = task_part * mix[:, :, None, None, None]
        total = task_part.view(b, t * out, h, w) + parts[i, "general"].reshape(b, t * out, h, w)
        if expert.interaction:
            e, r = expert.num_experts, expert.rank
            weights = expert.routing_weights(routes).reshape(b * t, e)
            hidden = parts[i, "pool_down"].reshape(b * t, e, r, h, w) * weights[:, :, None, None, None]
            mixed = expert.pool_up(hidden.view(b * t, e * r, h, w))
            mixed = mixed + (weights @ expert.pool_up_bias)[:, :, None, None]
            total = total + expert.pool_norm(mixed.view(b, t * out, h, w))
        outputs.append(expert.norm(total))
    return outputs


def expert_reference(expert: ParameterExpert, x: torch.Tensor) -> torch.Tensor:
    """One expert with every convolution on its own and the general one on ``x.detach()``: the plain
    reading of the module, kept as the reference that :func:`run_parameter_experts` is tested and
    benchmarked against (as mamba-ssm keeps ``selective_scan_ref`` beside its kernel)."""
    b, _, h, w = x.shape
    t, c, out, pad = expert.num_tasks, expert.in_channels, expert.out_channels, expert.general.padding[0]
    routes = expert.router(x.reshape(b, t, c, h * w), (h, w))
    per_task = x.reshape(b * t, c, h, w)
    down = F.conv2d(x, expert.task_down.weight, expert.task_down.bias, padding=pad, groups=t)
    task_part = F.conv2d(down, expert.task_up.weight, expert.task_up.bias, groups=t).view(b, t, out, h, w)
    task_part = task_part * routes[..., -1][:, :, None, None, None]
    general_in = per_task.detach() if expert.detach_general else per_task
    general = F.conv2d(general_in, expert.general.weight, expert.general.bias, padding=pad)
    total = task_part.reshape(b, t * out, h, w) + general.reshape(b, t * out, h, w)
    if expert.interaction:
        weights = expert.routing_weights(routes).reshape(b * t, expert.num_experts)
        hidden = F.conv2d(per_task, expert.pool_down.weight, expert.pool_down.bias, padding=pad)
        hidden = hidden.view(b * t, expert.num_experts, expert.rank, h, w) * weights[:, :, None, None, None]
        mixed = F.conv2d(hidden.flatten(1, 2), expert.pool_up.weight) + (weights @ expert.pool_up_bias)[:, :, None, None]
        total = total + expert.pool_norm(mixed.view(b, t * out, h, w))
    return expert.norm(total)


class PlainTaskProjection(nn.Module):
    """The ``no_parameter_experts`` ablation: a per-task 1x1 conv C_in -> C_out (released ``MoE_B/C: False``)."""

    def __init__(self, num_tasks: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(num_tasks * in_channels, num_tasks * out_channels, 1, groups=num_tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
