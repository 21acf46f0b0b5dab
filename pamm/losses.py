"""Per-task losses and the multi-task weighting schemes (docs/datasets.md#losses-and-their-weights).

Every loss ignores the invalid pixels of its target convention (``pamm.tasks``) and averages
over valid pixels only, so padding never contributes.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pamm.tasks import DEFAULT_LOSS_WEIGHTS, IGNORE_INDEX


def cross_entropy_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE with ignore 255, mean over valid pixels (semseg, human parts)."""
    if not (target != IGNORE_INDEX).any():
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX)


def balanced_saliency_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Two-class CE whose class weights come from the batch's positive ratio (ATRC's saliency loss)."""
    valid = target != IGNORE_INDEX
    if not valid.any():
        return pred.sum() * 0.0
    positive_ratio = (target[valid] == 1).float().mean().clamp(1e-4, 1 - 1e-4)
    weights = torch.stack([positive_ratio, 1 - positive_ratio]).to(pred.dtype)
    return F.cross_entropy(pred, target, weight=weights, ignore_index=IGNORE_INDEX)


def depth_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 on pixels with valid (non-zero) depth."""
    valid = target > 0
    if not valid.any():
        return pred.sum() * 0.0
    return (pred[valid] - target[valid]).abs().mean()


def normals_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the L2-normalised prediction and the unit ground truth, where GT is valid."""
    valid = (target != IGNORE_INDEX).all(dim=1, keepdim=True).expand_as(target)
    if not valid.any():
        return pred.sum() * 0.0
    unit = F.normalize(pred, p=2, dim=1)
    return (unit[valid] - target[valid]).abs().mean()


class BalancedEdgeLoss(nn.Module):
    """Balanced BCE: positives weighted ``pos_weight`` (edge_w), negatives ``1 - pos_weight``; 255 ignored."""

    def __init__(self, pos_weight: float = 0.95) -> None:
        super().__init__()
        if not 0.0 < pos_weight < 1.0:
            raise ValueError(f"edge pos_weight must be in (0, 1), got {pos_weight}")
        self.pos_weight = pos_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE_INDEX
        if not valid.any():
            return pred.sum() * 0.0
        logits, labels = pred[valid], target[valid]
        weights = torch.where(labels > 0.5, self.pos_weight, 1.0 - self.pos_weight).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), weight=weights)


def task_loss_functions(edge_pos_weight: float = 0.95) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    return {
        "semseg": cross_entropy_loss,
        "human_parts": cross_entropy_loss,
        "sal": balanced_saliency_loss,
        "depth": depth_l1_loss,
        "normals": normals_l1_loss,
        "edge": BalancedEdgeLoss(edge_pos_weight),
    }


def _match_size(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if pred.shape[-2:] == target.shape[-2:]:
        return pred
    return F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)


class MultiTaskLoss(nn.Module):
    """Combine task losses: ``weighted`` (Σ w_t L_t) or ``log`` (Σ log L_t, MTMamba's scheme).

    Auxiliary (deep-supervision) predictions under ``outputs["aux"]`` are resized to the
    target and weighted like the main ones.
    """

    def __init__(
        self,
        tasks: list[str],
        dataset: str,
        scheme: str = "weighted",
        weights: dict[str, float] | None = None,
        edge_pos_weight: float = 0.95,
    ) -> None:
        super().__init__()
        if scheme not in ("weighted", "log"):
            raise ValueError(f"unknown loss scheme {scheme!r}; valid: ['weighted', 'log']")
        self.tasks = list(tasks)
        self.scheme = scheme
        base = DEFAULT_LOSS_WEIGHTS[dataset] if weights is None else weights
        missing = [t for t in self.tasks if t not in base]
        if missing:
            raise ValueError(f"train.loss.weights has no weight for tasks {missing}")
        self.weights = {t: float(base[t]) for t in self.tasks}
        functions = task_loss_functions(edge_pos_weight)
        self.functions = {t: functions[t] for t in self.tasks}

    def forward(
        self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        per_task: dict[str, torch.Tensor] = {}
        aux = outputs.get("aux", {})
        for task in self.tasks:
            target = targets[task]
            loss = self.functions[task](outputs[task].float(), target)
            if task in aux:
                loss = loss + self.functions[task](_match_size(aux[task].float(), target), target)
            per_task[task] = loss
        if self.scheme == "log":
            total = sum(torch.log(l.clamp_min(1e-12)) for l in per_task.values())
        else:
            total = sum(self.weights[t] * l for t, l in per_task.items())
        return total, {t: float(l.detach()) for t, l in per_task.items()}
