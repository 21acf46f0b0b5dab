"""Data-parallel training through ``torchrun`` (DDP): one process per GPU, the global batch split evenly.

``train.batch_size`` is always the *global* batch (the config of record), so a run means the same
thing on 1 or 8 GPUs; each rank trains on its slice of every global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup() -> DistInfo:
    """Join the process group when started by torchrun (NCCL on GPUs, Gloo on CPU); else a single process."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def device_for(info: DistInfo, requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def rank_slice(batch: list[int], info: DistInfo) -> list[int]:
    """This rank's share of a global batch of indices."""
    if len(batch) % info.world_size:
        raise ValueError(
            f"train.batch_size {len(batch)} (global) is not divisible by the world size {info.world_size}"
        )
    per_rank = len(batch) // info.world_size
    return batch[info.rank * per_rank : (info.rank + 1) * per_rank]


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DDP with SyncBatchNorm on GPUs (the recipes' SyncBN); the model itself when not distributed."""
    if not info.enabled:
        return model
    if device.type == "cuda" and info.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled:
        dist.destroy_process_group()
