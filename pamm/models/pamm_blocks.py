"""PAMM's decoder blocks: the options, one PAME module per backbone tap, and the cross-stage fusion.

All tasks of a stage travel together, stacked on the channel axis (task ``t`` owns channels
``[t * width, (t + 1) * width)``): per-task convs are grouped convs, per-task norms are norms over
``T * groups`` groups, per-task vectors are stacked tensors. A stage therefore makes one call per
op, and all tasks x directions of its selective scan are one ``pamm.ops.multi_direction_scan``
call (``scan_call="batched"``). ``scan_call="per_task_direction"`` keeps the released structure (one
``selective_scan`` per task and direction, with explicit gathers), for timing and equivalence tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import pamm.ops as scan_ops
from pamm.models.experts import ParameterExpert, PlainTaskProjection, run_parameter_experts

FIDELITY_MODES = ("as_described", "as_released")
SCAN_CALLS = ("batched", "per_task_direction")
SCAN_MERGES = ("sum", "mean")
PRIOR_STD = 0.02  # the released prompts' trunc-normal std


@dataclass
class PAMMOptions:
    """Every decoder option of the ``pamm`` model (the ``model:`` config section minus ``backbone``)."""

    fidelity: str = "as_described"
    embed_dim: int = 768  # d: decoder width ("final_embed_dim")
    backbone_dim: int | None = None  # checked against the backbone's width when given
    d_state: int = 16  # N
    expand: int = 2  # d_inner = expand * d
    dt_rank: int | str = "auto"  # "auto" = ceil(d / 16)
    norm_groups: int = 32  # GroupNorm groups of first_decode and of each task's norm
    num_experts: int = 15  # E: shared (interaction) pool size
    expert_rank: int = 4  # r: rank of the pool experts and of the task expert
    top_k: int = 9  # routing: the B/C experts keep the top_k of num_experts routing weights
    expert_kernel: int = 3  # B/C expert conv kernel; as_released 9 (the release's `topk` sets only this)
    router_noise: bool = True  # noisy top-k in training (learned std), as released
    detach_general: bool = True  # the general projection sees a detached input, as released
    parameter_experts: bool = True  # False: plain per-task 1x1 B/C projections
    interaction_experts: bool = True  # False: drop the shared routed pool only
    task_prior: bool = True  # per-task learnable vectors added to B and C
    scan_order: str = "hilbert"
    scan_directions: int = 4
    scan_merge: str = "sum"
    scan_call: str = "batched"
    released_prior_seed: int = 0  # as_released: seed of the untrained prompts (logged in the config)
    dead_branch_experts: int = 15  # as_released: the discarded 3x3 LoRA-MoE 'L'
    dead_branch_rank: int = 16

    @classmethod
    def from_config(cls, options: dict[str, Any]) -> "PAMMOptions":
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ValueError(f"unknown pamm model option(s) {unknown}; valid: {sorted(valid | {'backbone'})}")
        opts = cls(**options)
        opts.validate()
        return opts

    def validate(self) -> None:
        def one_of(name: str, value: Any, valid: tuple) -> None:
            if value not in valid:
                raise ValueError(f"pamm option {name}={value!r} is not one of {list(valid)}")

        one_of("fidelity", self.fidelity, FIDELITY_MODES)
        one_of("scan_order", self.scan_order, scan_ops.SCAN_KINDS)
        one_of("scan_directions", self.scan_directions, (1, 2, 4))
        one_of("scan_merge", self.scan_merge, SCAN_MERGES)
        one_of("scan_call", self.scan_call, SCAN_CALLS)
        if self.embed_dim % self.norm_groups:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by norm_groups={self.norm_groups}")
        if not isinstance(self.expert_kernel, int) or isinstance(self.expert_kernel, bool):
            raise ValueError(
                f"pamm option expert_kernel={self.expert_kernel!r}: give the B/C expert conv kernel as an odd "
                "integer (3 as described, 9 as released; the routing top-k is the separate option top_k)"
            )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"the B/C expert kernel ({self.kernel_size}) must be odd to keep the token grid")
        if self.parameter_experts and self.interaction_experts and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"pamm option top_k={self.top_k} must be in 1..num_experts={self.num_experts} (routing keeps the "
                "top_k experts; the release keeps 9 of 15)"
            )

    @property
    def released(self) -> bool:
        return self.fidelity == "as_released"

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.embed_dim / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def kernel_size(self) -> int:
        return int(self.expert_kernel)

    @property
    def dead_branch_top_k(self) -> int:
        """Routing top-k of the discarded 'L' branch: the release passes its `topk` (our expert_kernel)."""
        return min(self.kernel_size, self.dead_branch_experts)


class ScanOrderSource:
    """The scan orders of one kind and direction count, for whatever grid and device a forward sees
    (``pamm.ops.scan_orders`` caches them): any resolution, no GPU at build time."""

    def __init__(self, kind: str, directions: int) -> None:
        self.kind, self.directions = kind, directions

    def get(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return scan_ops.scan_orders(self.kind, height, width, self.directions, device=device)


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class PAMEStage(nn.Module):
    """PAMM's decoder module for one backbone tap: ``(b, C_backbone, h, w) -> (b, T*d, h, w)``.

    first_decode (3x3 + GroupNorm, shared) -> Task Convolution (3x3 per task) -> SSM block: per-task
    GroupNorm; gate z = SiLU(1x1); u = 1x1 (d -> d_inner) on SiLU(normed); low-rank Δ; B and C from
    the parameter experts (+ task priors); per-task A, D; multi-direction scan; 1x1 (d_inner -> d);
    times z; plus the shortcut.
    """

    def __init__(
        self,
        in_channels: int,
        num_tasks: int,
        opts: PAMMOptions,
        orders: ScanOrderSource,
        token_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        d, di, n, t = opts.embed_dim, opts.d_inner, opts.d_state, num_tasks
        rank = opts.resolved_dt_rank
        self.opts, self.orders, self.num_tasks = opts, orders, num_tasks
        self.scan_settings = None  # pamm.ops.ScanSettings, set by pamm.ops.set_scan_settings
        self.first_decode = nn.Sequential(nn.Conv2d(in_channels, d, 3, padding=1), nn.GroupNorm(opts.norm_groups, d))
        self.task_conv = nn.Conv2d(d, t * d, 3, padding=1)  # T separate d -> d convs of the shared map
        self.task_norm = nn.GroupNorm(t * opts.norm_groups, t * d)  # = a GroupNorm per task
        self.gate_proj = nn.Conv2d(t * d, t * d, 1, groups=t)
        self.in_proj = nn.Conv2d(t * d, t * di, 1, groups=t)
        self.dt_down = nn.Conv2d(t * di, t * rank, 1, groups=t, bias=False)
        self.dt_up = nn.Conv2d(t * rank, t * di, 1, groups=t, bias=False)
        self.delta_bias = nn.Parameter(torch.empty(t * di))  # dt_proj.bias, applied inside the scan
        router_spatial = "released_linear" if opts.released else "attention_pool"
        if opts.parameter_experts:
            expert_kwargs = dict(
                kernel_size=opts.kernel_size,
                num_experts=opts.num_experts,
                rank=opts.expert_rank,
                top_k=opts.top_k,
                interaction=opts.interaction_experts,
                detach_general=opts.detach_general,
                router_noise=opts.router_noise,
                router_spatial=router_spatial,
                token_grid=token_grid,
            )
            self.B_expert: nn.Module = ParameterExpert(t, di, n, **expert_kwargs)
            self.C_expert: nn.Module = ParameterExpert(t, di, n, **expert_kwargs)
        else:
            self.B_expert = PlainTaskProjection(t, di, n)
            self.C_expert = PlainTaskProjection(t, di, n)
        self.out_proj = nn.Conv2d(t * di, t * d, 1, groups=t)
        # A (S4D-real), D and the task priors: trained parameters as described; untrained buffers drawn
        # from a logged seed as released (saved in state_dict either way, under the same names).
        store = self.register_buffer if opts.released else self._register_parameter
        store("A_log", torch.empty(t * di, n))
        store("D", torch.empty(t * di))
        if opts.task_prior:
            store("prior_B", torch.empty(t, n))
            store("prior_C", torch.empty(t, n))
        if opts.released:
            # The discarded MoE 'L' (3x3 LoRA-MoE on each task's normed feature, output thrown away).
            self.dead_branch = ParameterExpert(
                t, d, d, 3, opts.dead_branch_experts, opts.dead_branch_rank, opts.dead_branch_top_k,
                router_spatial=router_spatial, token_grid=token_grid,
            )
        self.reset_ssm_parameters()

    def _register_parameter(self, name: str, tensor: torch.Tensor) -> None:
        param = nn.Parameter(tensor)
        if name in ("A_log", "D"):
            param._no_weight_decay = True  # Mamba's hint for optimizers that build no-decay groups
        self.register_parameter(name, param)

    @torch.no_grad()
    def reset_ssm_parameters(self, generator: torch.Generator | None = None) -> None:
        """Mamba's inits: S4D-real A, D = 1, Δ bias from dt ~ logU[1e-3, 1e-1], priors ~ TN(0, 0.02)."""
        n, rank = self.opts.d_state, self.opts.resolved_dt_rank
        device = self.A_log.device
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32, device=device)).expand_as(self.A_log))
        self.D.fill_(1.0)
        bound = rank ** -0.5
        nn.init.uniform_(self.dt_up.weight, -bound, bound, generator=generator)
        if device.type == "meta":
            return
        dt = torch.exp(
            torch.rand(self.delta_bias.shape, generator=generator) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)
        ).clamp(min=1e-4)
        self.delta_bias.copy_(_inverse_softplus(dt))
        if self.opts.task_prior:
            for prior in (self.prior_B, self.prior_C):
                prior.copy_(nn.init.trunc_normal_(torch.empty(prior.shape), std=PRIOR_STD, generator=generator))

    @torch.no_grad()
    def apply_released_init(self) -> None:
        """as_released: the release's ``init_weights`` re-draws every decoder ``nn.Linear`` with a truncated
        normal (std 0.02) and a zero bias. Its Δ projections are such linears (ours are 1x1 convs), so Δ's
        bias starts at 0 here, not at Mamba's dt init; the experts' routers have one more (see
        :meth:`ParameterExpert.apply_released_init`)."""
        for weight in (self.dt_down.weight, self.dt_up.weight):
            nn.init.trunc_normal_(weight, std=0.02)
        nn.init.zeros_(self.delta_bias)
        for expert in (self.B_expert, self.C_expert, getattr(self, "dead_branch", None)):
            if isinstance(expert, ParameterExpert):
                expert.apply_released_init()

    def released_priors(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """as_released: the untrained prompts, TN(0, 0.02), drawn from ``generator`` (prior_B, then prior_C)."""
        if not self.opts.task_prior:
            return {}
        return {
            name: nn.init.trunc_normal_(torch.empty(getattr(self, name).shape), std=PRIOR_STD, generator=generator)
            for name in ("prior_B", "prior_C")
        }

    @torch.no_grad()
    def draw_released_priors(self, generator: torch.Generator) -> None:
        """as_released: the prompts are random, never trained; draw them from ``generator`` (seeded, logged)."""
        if self.opts.task_prior and self.prior_B.device.type != "meta":
            for name, value in self.released_priors(generator).items():
                getattr(self, name).copy_(value)

    def check_grid(self, grid: tuple[int, int]) -> None:
        if self.opts.parameter_experts:
            self.B_expert.router.check_grid(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # ViT taps come as permuted (NHWC-strided) views; keep the decoder in NCHW
        b, _, h, w = x.shape
        t, di, n = self.num_tasks, self.opts.d_inner, self.opts.d_state
        shortcut = self.task_conv(self.first_decode(x))  # (b, T*d, h, w)
        normed = self.task_norm(shortcut)
        gate = F.silu(self.gate_proj(normed))
        discarded = self.dead_branch(normed) if self.opts.released else None  # computed and thrown away, as released
        u = self.in_proj(F.silu(normed))  # (b, T*di, h, w)
        delta = self.dt_up(self.dt_down(u))
        if self.opts.parameter_experts:  # both read u: their k x k convolutions run fused
            B, C = run_parameter_experts([self.B_expert, self.C_expert], u)
        else:
            B, C = self.B_expert(u), self.C_expert(u)
        B, C = B.reshape(b, t, n, h * w), C.reshape(b, t, n, h * w)
        if self.opts.task_prior:
            B = B + self.prior_B[None, :, :, None]
            C = C + self.prior_C[None, :, :, None]
        y = self.scan(u.reshape(b, t * di, h * w), delta.reshape(b, t * di, h * w), B, C, (h, w))
        out = self.out_proj(y.reshape(b, t * di, h, w)) * gate + shortcut
        if discarded is not None and torch.jit.is_tracing():
            # Tracing (fvcore's FLOP count) drops ops whose results are unused; tie the discarded branch to
            # the output with a zero term (elementwise: no counted FLOPs) so that the trace keeps the work
            # the release does, as executing counters (ptflops, torch's FlopCounterMode) see it.
            out = out + discarded.sum() * 0.0
        return out

    def scan(self, u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """All tasks x directions. u, delta (b, T*di, L); B, C (b, T, N, L) -> merged (b, T*di, L), row-major."""
        perm, inverse = self.orders.get(grid[0], grid[1], u.device)
        A = -torch.exp(self.A_log.float())
        D, delta_bias = self.D.float(), self.delta_bias.float()
        # Keep Δ, B, C in u's dtype: the CUDA kernel rejects fp32 B/C beside bf16 u (selective_scan_fwd's dtype checks in
        # state-spaces/mamba@6d531f237bf1fdd211036b7ea3f550f230fe43bf:csrc/selective_scan/selective_scan.cpp).
        delta, B, C = delta.to(u.dtype), B.to(u.dtype), C.to(u.dtype)
        if self.opts.scan_call == "batched":
            return scan_ops.multi_direction_scan(
                u, delta, A, B, C, D, delta_bias, delta_softplus=True,
                perm=perm, inverse=inverse, merge=self.opts.scan_merge, settings=self.scan_settings,
            )
        return self._scan_per_task_direction(u, delta, A, B, C, D, delta_bias, perm, inverse)

    def _scan_per_task_direction(
        self, u, delta, A, B, C, D, delta_bias, perm: torch.Tensor, inverse: torch.Tensor
    ) -> torch.Tensor:
        """The released structure: one ``selective_scan`` per task and direction, gather + inverse gather."""
        di = self.opts.d_inner
        outputs = []
        for task in range(self.num_tasks):
            rows = slice(task * di, (task + 1) * di)
            merged = 0
            for order, undo in zip(perm, inverse):
                y = scan_ops.selective_scan(
                    u[:, rows, order], delta[:, rows, order], A[rows], B[:, task][:, :, order], C[:, task][:, :, order],
                    D[rows], delta_bias=delta_bias[rows], delta_softplus=True, settings=self.scan_settings,
                )
                merged = merged + y[:, :, undo]
            outputs.append(merged / perm.shape[0] if self.opts.scan_merge == "mean" else merged)
        return torch.cat(outputs, dim=1)


class CrossStageFusion(nn.Module):
    """Per task: concat the stage maps -> 1x1 + BN + GELU + 3x3 -> softmax stage weights -> weighted sum."""

    def __init__(self, num_tasks: int, width: int, num_stages: int = 4) -> None:
        super().__init__()
        t, s = num_tasks, num_stages
        self.num_tasks, self.width, self.num_stages = t, width, s
        self.stage_logits = nn.Sequential(
            nn.Conv2d(t * s * width, t * width, 1, groups=t),
            nn.BatchNorm2d(t * width),
            nn.GELU(),
            nn.Conv2d(t * width, t * s, 3, padding=1, groups=t),
        )

    def forward(self, stage_maps: list[torch.Tensor]) -> torch.Tensor:
        b, _, h, w = stage_maps[0].shape
        t, s, d = self.num_tasks, self.num_stages, self.width
        stacked = torch.stack([m.view(b, t, d, h, w) for m in stage_maps], dim=2)  # (b, T, S, d, h, w)
        weights = self.stage_logits(stacked.view(b, t * s * d, h, w)).view(b, t, s, 1, h, w).softmax(dim=2)
        return (stacked * weights).sum(dim=2).view(b, t * d, h, w)
