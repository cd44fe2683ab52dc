"""Process-group setup for torchrun: one process per device, DDP wrapping, teardown.

Run `torchrun --nproc_per_node=N -m train ...`: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. Backend nccl on
CUDA, gloo on CPU. Without those variables everything here is a no-op and the run is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one; on CUDA each rank takes the GPU of its local rank."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP-wrap the model when there is more than one process."""
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if flag is true on any rank (so every rank stops together; a collective: call it on all ranks)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_true(flag: torch.Tensor, info: DistInfo) -> bool:
    """True if the boolean tensor flag is true on every rank (a collective for several processes; one host sync)."""
    flag = flag.float().reshape(1)
    if info.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (a collective: call it on all ranks); itself for one process."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.AVG if value.device.type == "cuda" else dist.ReduceOp.SUM)
    return value if value.device.type == "cuda" else value / info.world_size  # gloo has no AVG


def total(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of a tensor over ranks (a collective: call it on all ranks); itself for one process."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def teardown() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()
