"""Process-group setup for torchrun: one process per device, DDP or FSDP2, full-state checkpoints, teardown.

Run `torchrun --nproc_per_node=N -m train ...`: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. Backend nccl on
CUDA, gloo on CPU. Without those variables everything here is a no-op and the run is a single process.

trainer.parallel=ddp replicates the model (DistributedDataParallel); trainer.parallel=fsdp shards parameters,
gradients and optimizer state with FSDP2's fully_shard, one unit per transformer block plus the root. Checkpoints
are always written as the full, unsharded state by rank 0 (gathered with torch.distributed.checkpoint's state-dict
API), in the same files a single process writes: a checkpoint loads for sampling in one CPU process and resumes
on any number of ranks, with DDP, FSDP or neither. Sharded (per-rank) checkpoints would save faster for models
too large for one host's memory; nanoloom's scale does not need them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        # a SLURM job of hydra/launcher=slurm, one task per device: torchrun's variables from SLURM's
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if device.type == "cuda":
        # modulo: under per-task GPU binding (SLURM --gpus-per-task) each rank sees one GPU whatever its local rank
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # a rank that waits longer than this in a collective (a peer died outside torchrun) raises instead of hanging
        timeout = timedelta(seconds=float(os.environ.get("NANOLOOM_DIST_TIMEOUT", "600")))
        # device_id binds the NCCL communicator to this rank's GPU (no guessing, no extra context on GPU 0)
        bound = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout, **bound)
    return info, device


def shared(value: Any, info: DistInfo) -> Any:
    """Rank 0's value of a picklable object on every rank (e.g. the run directory, which Hydra resolves per process
    from the time when run_name is not given, so ranks started a second apart would disagree)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(model: nn.Module, dtype: torch.dtype) -> None:
    """FSDP2 in place: fully_shard every transformer block (GPT's and both T5 stacks'), then the root module.

    dtype is the training precision: parameters are all-gathered in it for compute, gradients are reduce-scattered
    in fp32, and the sharded master weights stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32)
    for blocks in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in blocks:
            fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unsharded model and optimizer state of an FSDP model, on rank 0's CPU; empty dicts on the other ranks
    (a collective: call it on every rank).

    The optimizer state comes back in torch.optim's own layout (parameters numbered in param-group order), the
    layout a single process saves, so every checkpoint looks the same.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:  # cpu_offload gathers onto rank 0 only; the others get empty dicts
        return weights, {}
    names = _param_names(model, optimizer)
    index = {name: i for i, name in enumerate(names)}
    numbered = {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]],
    }
    return weights, numbered


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Any], optim_state: dict[str, Any] | None
) -> None:
    """Load an unsharded state into an FSDP model and its optimizer from rank 0, broadcast tensor by tensor: the
    other ranks pass {} for both and keep their shards of what arrives (no rank but 0 holds the whole state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, weights, options=options)
    if optim_state == {}:  # a rank other than 0
        set_optimizer_state_dict(model, optimizer, {}, options=options)
    elif optim_state is not None:
        names = _param_names(model, optimizer)
        by_name = {
            "state": {names[i]: value for i, value in optim_state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim_state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=options)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameters' names in the optimizer's order (the numbering of torch.optim's state_dict)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP-wrap the model when there is more than one process (an FSDP model is already distributed)."""
    if not info.enabled or is_sharded(model):
        return model
    # broadcast_buffers=False: the only buffers are RoPE tables every rank computes alike; broadcasting them would
    # cost a collective per forward
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Backward passes inside reduce gradients across ranks only if enabled: DDP's no_sync, FSDP2's
    set_requires_gradient_sync; gradient accumulation reduces once, on its last micro-step."""
    raw = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if enabled or not (hasattr(raw, "no_sync") or hasattr(raw, "set_requires_gradient_sync")):
        yield
    elif hasattr(raw, "no_sync"):
        with raw.no_sync():
            yield
    else:
        raw.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            raw.set_requires_gradient_sync(True)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if flag is true on any rank (so every rank stops together; a collective: call it on all ranks)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def every_rank(flag: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The boolean tensor flag and-ed over ranks, on the device: a collective for several processes, no host sync."""
    if not info.enabled:
        return flag.reshape(())
    flag = flag.float().reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.reshape(()) > 0


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


def wait_for_main(info: DistInfo, what: str) -> None:
    """Every rank waits here until rank 0 has done `what` (e.g. prepared the data), saying so on stderr.

    A barrier of the training group would fail after NANOLOOM_DIST_TIMEOUT (600 s), sized for a training
    collective, while rank 0 may spend longer tokenizing a new corpus: this one runs on a gloo group of its own whose
    timeout is NANOLOOM_PREPARE_TIMEOUT seconds (default 86,400).
    """
    if not info.enabled:
        return
    if not info.is_main:
        print(f"rank {info.rank}: waiting for rank 0 to {what}", file=sys.stderr, flush=True)
    timeout = timedelta(seconds=float(os.environ.get("NANOLOOM_PREPARE_TIMEOUT", "86400")))
    group = dist.new_group(backend="gloo", timeout=timeout)
    dist.barrier(group=group)
    dist.destroy_process_group(group)


def teardown() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()
