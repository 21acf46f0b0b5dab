"""Task-batched SS2D and the blocks MTMamba / MTMamba++ are made of.

The release's SS2D and F-CTM block:
EnVision-Research/MTMamba@52df545f6419bcdc823b4f72f7bcdeaaa5440da8:models/CTM.py; its STM blocks and decoder:
EnVision-Research/MTMamba@bbef1d2f4a715a5597b5c3663e86987e8bba727d:models/MTMamba.py.

MTMamba keeps one module per task and loops over tasks. Here the T tasks' features are one
tensor ``(T, B, H, W, C)`` (channels-last, like MTMamba) and every per-task weight carries a
leading task axis, so all tasks run as one batched matmul, one grouped depthwise conv and
**one** selective-scan call for all tasks and all 4 directions: tasks are stacked on the scan's
channel axis and each task's B/C is one group of the grouped-B/C scan. The parameters are the
same ones MTMamba has (same shapes once the task axis is split off), so parameter counts match.
A module built with ``num_tasks=1`` is an ordinary single SS2D (F-CTM's shared branch).

PAMM does not use these blocks.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import pamm.ops as scan_ops
from pamm.models.task_layers import TaskLayerNorm, TaskLinear

SCAN_DIRECTIONS = 4  # row-major, column-major, and both reversed (VMamba's SS2D set)
# ``scan_orders("raster", h, w, 4)`` lists [row, row reversed, column, column reversed]; SS2D stacks
# [row, column, row reversed, column reversed]. Reordering keeps our direction k = MTMamba's
# direction k, so per-direction weights (x_proj, dt_proj, A_logs, Ds) of a released checkpoint map 1:1.
MTMAMBA_DIRECTION_ORDER = (0, 2, 1, 3)


def raster_orders(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SS2D's 4 scan orders of an ``height x width`` map in MTMamba's direction order (pamm.ops' cache)."""
    return scan_ops.scan_orders("raster", height, width, SCAN_DIRECTIONS, device=device,
                                reorder=MTMAMBA_DIRECTION_ORDER)


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """Mamba's ``dt_rank="auto"`` = ceil(d_model / 16)."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


def _uniform_(tensor: torch.Tensor, bound: float) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound)


class TaskDropPath(nn.Module):
    """Stochastic depth drawn per (task, sample), as MTMamba's independent per-task DropPath modules."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty(x.shape[:2] + (1,) * (x.dim() - 2)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def pixel_shuffle_channels_last(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``(..., H, W, s*s*c) -> (..., s*H, s*W, c)`` with channels split as (row, col, c), MTMamba's order."""
    *lead, height, width, channels = x.shape
    out_channels = channels // (scale * scale)
    x = x.reshape(*lead, height, width, scale, scale, out_channels)
    n = len(lead)
    x = x.permute(*range(n), n, n + 2, n + 1, n + 3, n + 4)  # (..., H, s, W, s, c)
    return x.reshape(*lead, height * scale, width * scale, out_channels)


class SS2D(nn.Module):
    """VMamba's 2-D selective scan for ``num_tasks`` tasks at once (MTMamba's ``SS2D`` / ``CSS2D``).

    in_proj (to x, and z when ``gated``) -> depthwise conv + SiLU -> 4-direction selective scan with
    per-direction x_proj / dt_proj / A / D -> sum over directions -> LayerNorm -> ``* SiLU(z)`` when
    gated -> out_proj when ``project_out``.

    Args:
        d_model: the block width C; sets d_inner = ssm_ratio * C and dt_rank.
        in_channels: input width (F-CTM's shared SS2D reads the T*C concatenation); default C.
        gated: MTMamba's STM/CSS2D have the z gate; the SS2Ds inside F-CTM do not.
        project_out: F-CTM's SS2Ds return the d_inner features (no out_proj).
        cross: MTMamba++'s CSS2D: Δ, B, C come from a second input (x_share) through
            ``in_proj_cross`` (no conv), while the scanned u is the task's own feature.
    """

    def __init__(
        self,
        num_tasks: int,
        d_model: int,
        in_channels: int | None = None,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        gated: bool = True,
        project_out: bool = True,
        cross: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.d_model = d_model
        self.d_inner = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = resolve_dt_rank(dt_rank, d_model)
        self.d_conv = d_conv
        self.gated, self.project_out, self.cross = gated, project_out, cross
        self.scan_settings = None  # pamm.ops.ScanSettings, set by pamm.ops.set_scan_settings
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        T, K, di, N, R = num_tasks, SCAN_DIRECTIONS, self.d_inner, d_state, self.dt_rank

        self.in_proj = TaskLinear(T, in_channels or d_model, di * (2 if gated else 1), bias=False)
        self.in_proj_cross = TaskLinear(T, d_model, di, bias=False) if cross else None
        self.conv_weight = nn.Parameter(torch.empty(T, di, d_conv, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(T, di))
        self.x_proj_weight = nn.Parameter(torch.empty(T, K, R + 2 * N, di))
        self.dt_proj_weight = nn.Parameter(torch.empty(T, K, di, R))
        self.dt_proj_bias = nn.Parameter(torch.empty(T, K, di))
        self.A_logs = nn.Parameter(torch.empty(T, K, di, N))
        self.Ds = nn.Parameter(torch.empty(T, K, di))
        self.A_logs._no_weight_decay = True  # as in Mamba/VMamba (an optimizer may honour it)
        self.Ds._no_weight_decay = True
        self.out_norm = TaskLayerNorm(T, di)
        self.out_proj = TaskLinear(T, di, d_model, bias=False) if project_out else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation: nn.Conv2d/nn.Linear defaults, dt so softplus(bias) is in [dt_min, dt_max], S4D-real A."""
        dt_min, dt_max, floor = self._dt_range
        conv_bound = 1.0 / math.sqrt(self.d_conv * self.d_conv)
        _uniform_(self.conv_weight, conv_bound)
        _uniform_(self.conv_bias, conv_bound)
        _uniform_(self.x_proj_weight, 1.0 / math.sqrt(self.d_inner))
        _uniform_(self.dt_proj_weight, self.dt_rank**-0.5)
        with torch.no_grad():
            log_dt = torch.rand_like(self.dt_proj_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp(min=floor)
            self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            states = torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype, device=self.A_logs.device)
            self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
            self.Ds.fill_(1.0)

    def scan(self, u: torch.Tensor, selection_source: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The 4-direction selective scan of every task in ONE ``multi_direction_scan`` call.

        Args:
            u: ``(B, T*d_inner, H*W)``, row-major tokens, tasks stacked on channels.
            selection_source: ``(B, T, d_inner, H*W)`` that Δ, B, C are projected from (u itself,
                or x_share for CSS2D). x_proj is pointwise, so projecting in row-major order and
                letting the scan permute per direction equals projecting each permuted sequence.
        Returns:
            ``(B, T*d_inner, H*W)``, the 4 directions mapped back to row-major order and summed.
        """
        if not hasattr(scan_ops, "multi_direction_scan"):
            raise ImportError("pamm.ops.multi_direction_scan is missing: the scan ops package is not installed yet")
        T, K, di, N, R = self.num_tasks, SCAN_DIRECTIONS, self.d_inner, self.d_state, self.dt_rank
        batch, length = u.shape[0], u.shape[-1]
        # float32 as released (also under bf16 autocast); a float64 model scans in float64, as the release's math.
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        projected = torch.einsum("btdl,tkcd->bktcl", selection_source, self.x_proj_weight)
        dt_low, b_ssm, c_ssm = projected.split([R, N, N], dim=3)  # B, C: (B, K, G=T, N, L)
        delta = torch.einsum("bktrl,tkdr->bktdl", dt_low, self.dt_proj_weight).reshape(batch, K, T * di, length)
        a_matrix = -torch.exp(self.A_logs.to(dtype)).transpose(0, 1).reshape(K, T * di, N)
        d_skip = self.Ds.to(dtype).transpose(0, 1).reshape(K, T * di)
        delta_bias = self.dt_proj_bias.to(dtype).transpose(0, 1).reshape(K, T * di)
        perm, inverse = raster_orders(height, width, u.device)
        return scan_ops.multi_direction_scan(
            u.to(dtype),
            delta.to(dtype),
            a_matrix,
            b_ssm.to(dtype).contiguous(),
            c_ssm.to(dtype).contiguous(),
            d_skip,
            delta_bias,
            delta_softplus=True,
            perm=perm,
            inverse=inverse,
            merge="sum",
            settings=self.scan_settings,
        )

    def forward(self, x: torch.Tensor, cross_input: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(T or 1, B, H, W, C_in)``; ``cross_input`` (CSS2D only): ``(T or 1, B, H, W, C)``.

        Returns ``(T, B, H, W, C)``, or ``(T, B, H, W, d_inner)`` without out_proj.
        """
        T, di = self.num_tasks, self.d_inner
        projected = self.in_proj(x)
        x_branch, gate = projected.split(di, dim=-1) if self.gated else (projected, None)
        _, batch, height, width, _ = x_branch.shape
        length = height * width
        u = x_branch.permute(1, 0, 4, 2, 3).reshape(batch, T * di, height, width)
        u = F.conv2d(
            u,
            self.conv_weight.reshape(T * di, 1, self.d_conv, self.d_conv),
            self.conv_bias.reshape(T * di),
            padding=(self.d_conv - 1) // 2,
            groups=T * di,
        )
        u = F.silu(u).reshape(batch, T * di, length)
        if self.cross:
            if cross_input is None:
                raise ValueError("a cross SS2D (CSS2D) needs cross_input, the shared x_share feature")
            source = self.in_proj_cross(cross_input).permute(1, 0, 4, 2, 3).reshape(batch, T, di, length)
        else:
            source = u.reshape(batch, T, di, length)
        y = self.scan(u, source, height, width)
        y = y.reshape(batch, T, di, height, width).permute(1, 0, 3, 4, 2)  # (T, B, H, W, di)
        y = self.out_norm(y.to(projected.dtype))  # the scan runs in fp32 (fp64); come back to the block's dtype
        if gate is not None:
            y = y * F.silu(gate)
        return self.out_proj(y) if self.out_proj is not None else y


class STMBlock(nn.Module):
    """Self-task Mamba block: LN -> SS2D -> residual (``mlp_ratio=0`` in MTMamba, so no FFN)."""

    def __init__(self, num_tasks: int, channels: int, drop_path: float = 0.0, **ss2d_kwargs) -> None:
        super().__init__()
        self.norm = TaskLayerNorm(num_tasks, channels)
        self.op = SS2D(num_tasks, channels, **ss2d_kwargs)
        self.drop_path = TaskDropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


def concat_tasks(x: torch.Tensor) -> torch.Tensor:
    """``(T, B, H, W, C) -> (1, B, H, W, T*C)``, task-major like ``torch.cat([x[t] for t], -1)``."""
    tasks, batch, height, width, channels = x.shape
    return x.permute(1, 2, 3, 0, 4).reshape(1, batch, height, width, tasks * channels)


class FCTMBlock(nn.Module):
    """MTMamba's cross-task block (F-CTM): a shared SS2D over all tasks, mixed into each task by a learned gate.

    shared = SS2D_share(LN(concat_t x_t)); per task: z = LN_t(x_t), g = σ(W_t z),
    x_t + DropPath(out_proj_t(g * shared + (1 - g) * SS2D_t(z))). Neither SS2D has the z gate or out_proj.
    """

    def __init__(self, num_tasks: int, channels: int, drop_path: float = 0.0, **ss2d_kwargs) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.norm_share = nn.LayerNorm(num_tasks * channels)
        self.op_share = SS2D(1, channels, in_channels=num_tasks * channels, gated=False, project_out=False, **ss2d_kwargs)
        self.norm = TaskLayerNorm(num_tasks, channels)
        self.op = SS2D(num_tasks, channels, gated=False, project_out=False, **ss2d_kwargs)
        d_inner = self.op.d_inner
        self.gate_proj = TaskLinear(num_tasks, channels, d_inner, bias=False)
        self.out_proj = TaskLinear(num_tasks, d_inner, channels, bias=False)
        self.drop_path = TaskDropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.op_share(self.norm_share(concat_tasks(x)))  # (1, B, H, W, d_inner)
        normed = self.norm(x)
        own = self.op(normed)
        gate = torch.sigmoid(self.gate_proj(normed))
        mixed = gate * shared + (1.0 - gate) * own
        return x + self.drop_path(self.out_proj(mixed))


class SCTMBlock(nn.Module):
    """MTMamba++'s cross-task block (S-CTM): each task's scan takes its Δ, B, C from a shared feature.

    x_share = Conv3x3(Conv1x1(LN(concat_t x_t))) (T*C -> C); per task: x_t + DropPath(CSS2D_t(LN_t(x_t), x_share)).
    """

    def __init__(self, num_tasks: int, channels: int, drop_path: float = 0.0, **ss2d_kwargs) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.norm_share = nn.LayerNorm(num_tasks * channels)
        self.share_reduce = nn.Conv2d(num_tasks * channels, channels, 1)
        self.share_mix = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = TaskLayerNorm(num_tasks, channels)
        self.op = SS2D(num_tasks, channels, cross=True, **ss2d_kwargs)
        self.drop_path = TaskDropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.norm_share(concat_tasks(x))[0].permute(0, 3, 1, 2)  # (B, T*C, H, W)
        shared = self.share_mix(self.share_reduce(shared)).permute(0, 2, 3, 1)[None]  # (1, B, H, W, C)
        return x + self.drop_path(self.op(self.norm(x), cross_input=shared))


class TaskPatchExpand(nn.Module):
    """Swin-Unet's PatchExpand per task: Linear C -> 2C, pixel-shuffle x2 -> C/2, LN."""

    def __init__(self, num_tasks: int, channels: int) -> None:
        super().__init__()
        self.expand = TaskLinear(num_tasks, channels, 2 * channels, bias=False)
        self.norm = TaskLayerNorm(num_tasks, channels // 2)

    def forward(self, x: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(T or 1, B, h, w, C) -> (T, B, 2h, 2w, C/2)``, cropped to ``out_size`` when given.

        The crop undoes the bottom/right padding of Swin's patch merging on odd-sized maps
        (e.g. 80 px wide: 20 -> 10 -> 5 -> 3 tokens); at the paper sizes nothing is cropped.
        """
        y = pixel_shuffle_channels_last(self.expand(x), 2)
        if out_size is not None:
            height, width = out_size
            if y.shape[2] < height or y.shape[3] < width:
                raise ValueError(f"upsampled map {tuple(y.shape[2:4])} is smaller than its skip {tuple(out_size)}")
            y = y[:, :, :height, :width]
        return self.norm(y)
