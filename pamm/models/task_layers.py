"""Per-task Linear and LayerNorm with every task's weights stacked on a leading task axis.

Both layers hold ``num_tasks`` independent layers as one parameter each (``weight`` (T, out, in) and
``bias`` (T, out) for the Linear, ``weight``/``bias`` (T, C) for the LayerNorm), so one call serves
every task. Two input layouts exist in the house, chosen by ``task_axis``:

- ``task_axis=0``: a task-first stack ``(T, ..., C)``, the layout of the MTMamba blocks
  (``baselines/ss2d.py``). A leading axis of 1 is broadcast to every task (a shared input). The
  Linear runs one batched matmul over the flattened inner axes.
- ``task_axis=1``: a batch-first ``(batch, T, ..., C)``, the layout of PAMM's routers
  (``pamm.models.experts``). The Linear takes ``(batch, T, in)`` and runs one einsum.

Each layout keeps the kernel its caller was measured with, so outputs do not depend on which file
builds the layer. Parameter names and initialisation (``nn.Linear``'s uniform bound 1/sqrt(in),
weight then bias; LayerNorm ones and zeros) are those of the released checkpoints' converters.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TaskLinear", "TaskLayerNorm", "TASK_AXES"]

TASK_AXES = (0, 1)


def _check_task_axis(task_axis: int) -> int:
    if task_axis not in TASK_AXES:
        raise ValueError(f"task_axis must be 0 (a (T, ..., C) stack) or 1 ((batch, T, ..., C)), got {task_axis!r}")
    return int(task_axis)


class TaskLinear(nn.Module):
    """``num_tasks`` independent ``nn.Linear(in_features, out_features)`` layers applied in one call.

    ``task_axis=0``: input ``(T or 1, ..., in)`` -> ``(T, ..., out)``; ``task_axis=1``: input
    ``(batch, T, in)`` -> ``(batch, T, out)``.
    """

    def __init__(self, num_tasks: int, in_features: int, out_features: int, bias: bool = True,
                 task_axis: int = 0) -> None:
        super().__init__()
        self.num_tasks, self.in_features, self.out_features = num_tasks, in_features, out_features
        self.task_axis = _check_task_axis(task_axis)
        self.weight = nn.Parameter(torch.empty(num_tasks, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_tasks, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init for every task: uniform in ±1/sqrt(in), the weight drawn before the bias."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task_axis == 1:
            out = torch.einsum("bti,toi->bto", x, self.weight)
            return out + self.bias if self.bias is not None else out
        lead, inner = x.shape[0], x.shape[1:-1]
        flat = x.reshape(lead, -1, self.in_features)
        out = torch.matmul(flat, self.weight.transpose(1, 2))  # broadcasts a lead of 1 over tasks
        if self.bias is not None:
            out = out + self.bias[:, None, :]
        return out.reshape(self.num_tasks, *inner, self.out_features)

    def extra_repr(self) -> str:
        return (f"tasks={self.num_tasks}, in={self.in_features}, out={self.out_features}, "
                f"bias={self.bias is not None}, task_axis={self.task_axis}")


class TaskLayerNorm(nn.Module):
    """``num_tasks`` LayerNorms over the last axis, each with its own affine.

    ``task_axis=0``: input ``(T or 1, ..., C)``; ``task_axis=1``: input ``(batch, T, ..., C)``. The
    output has the input's shape, with a lead of 1 broadcast to T on ``task_axis=0``.
    """

    def __init__(self, num_tasks: int, channels: int, eps: float = 1e-5, task_axis: int = 0) -> None:
        super().__init__()
        self.num_tasks, self.channels, self.eps = num_tasks, channels, eps
        self.task_axis = _check_task_axis(task_axis)
        self.weight = nn.Parameter(torch.ones(num_tasks, channels))
        self.bias = nn.Parameter(torch.zeros(num_tasks, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x, (self.channels,), eps=self.eps)
        shape = [1] * x.dim()
        shape[self.task_axis], shape[-1] = self.num_tasks, self.channels
        return normed * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, channels={self.channels}, eps={self.eps}, task_axis={self.task_axis}"
