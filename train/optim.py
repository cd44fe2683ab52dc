"""Optimizer and learning-rate schedules.

AdamW with two parameter groups (nanoGPT): matrices and embeddings decay, biases and norm gains do not;
optim=muon adds torch.optim.Muon for the hidden matrices (modded-nanogpt's split).
Schedules are pure functions of the step: linear warmup, then cosine, constant, or warmup-stable-decay
(Hu et al. 2024, MiniCPM).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from train.config import OptimConfig, ScheduleConfig


class Optimizers:
    """Several optimizers stepped as one (Muon + AdamW): the loop's step, zero_grad, param_groups (set_lr) and
    state_dict/load_state_dict see them together."""

    def __init__(self, **optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(
                f"the checkpoint's optimizer state holds {sorted(state)}, this run uses {sorted(self.optimizers)}: "
                "optim.name changed; resume with the same optimizer"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def muon_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden weight matrices for Muon, everything else): embeddings and the output head stay with AdamW."""
    embedding_like = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        embedding_like.add(id(head.weight))
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = [p for p in params if p.dim() == 2 and id(p) not in embedding_like]
    return hidden, [p for p in params if id(p) not in {id(h) for h in hidden}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer | Optimizers:
    """AdamW over decay (dim >= 2) and no-decay (dim < 2) groups; fused on CUDA unless cfg.fused says otherwise.

    optim.name=muon: torch.optim.Muon for the hidden weight matrices, its update scaled to AdamW's RMS
    (adjust_lr_fn="match_rms_adamw", Liu et al. 2025) so both share the lr schedule and weight decay, and AdamW
    as above for embeddings, the output head, norm gains and biases.
    """
    if cfg.name == "muon":
        hidden, rest = muon_params(model)
        muon = torch.optim.Muon(
            hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, adjust_lr_fn="match_rms_adamw"
        )
        return Optimizers(muon=muon, adamw=_adamw(rest, cfg, device_type))
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields tied weights once
    return _adamw(params, cfg, device_type)


def _adamw(params: list[nn.Parameter], cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused,
        foreach=None if fused else True,  # foreach: one kernel per group instead of one per tensor
    )


def get_lr(step: int, base_lr: float, max_steps: int, cfg: ScheduleConfig) -> float:
    """The learning rate for optimizer step `step` (0-based) of a `max_steps` run."""
    min_lr = base_lr * cfg.min_lr_ratio
    warmup = min(cfg.warmup_steps, max_steps)
    if step < warmup:
        return base_lr * (step + 1) / (warmup + 1)  # never exactly 0: the first step still moves
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "wsd":
        decay_start = max(warmup, int(max_steps * (1.0 - cfg.decay_fraction)))
        if step < decay_start:
            return base_lr
        frac = (step - decay_start) / max(1, max_steps - decay_start)
        return base_lr - (base_lr - min_lr) * min(frac, 1.0)
    # cosine from base_lr at the end of warmup down to min_lr at max_steps
    frac = min((step - warmup) / max(1, max_steps - warmup), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (base_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write lr into every param group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class UpdateRatio:
    """The update/weight ratio of one optimizer step, ||w_after - w_before|| / ||w_before|| over all parameters
    (a health metric: it follows the learning-rate schedule, e.g. about 1e-2 at the demo's peak lr and 1e-3 late in
    its decay; a jump by orders of magnitude at a steady lr means trouble). update_ratio_max is the largest ratio of
    any one weight matrix (biases and norm gains left out: they start at zero or one and their ratios say little).

    Costs a copy of the weights, so the loop takes it on log steps only. reduce sums per-tensor squares over ranks
    when the weights are sharded (FSDP); replicas (DDP) need none.
    """

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.before = [_local(p).detach().clone() for p in params]

    def read(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """{"update_ratio", "update_ratio_max", "param_norm"} as device tensors (no host sync here)."""
        with torch.no_grad():
            sq = torch.stack(
                [
                    torch.stack([(_local(p).float() - b.float()).square().sum(), b.float().square().sum()])
                    for p, b in zip(self.params, self.before)
                ]
            )  # (tensors, 2): squared update and squared weight norm per tensor
        if reduce is not None:
            sq = reduce(sq)
        delta, weight = sq.sum(0).sqrt()
        matrices = torch.tensor([p.ndim >= 2 for p in self.params], device=sq.device)
        per_tensor = torch.where(matrices, (sq[:, 0] / sq[:, 1].clamp_min(1e-30)).sqrt(), 0.0)
        return {
            "update_ratio": delta / weight.clamp_min(1e-30),
            "update_ratio_max": per_tensor.max(),
            "param_norm": weight,
        }


class DeviceSkips:
    """Non-finite steps skipped on the device, with no host sync per step.

    A fused AdamW (the default on CUDA) takes a found_inf tensor, as GradScaler hands it, and skips its update when
    it is nonzero: weights, moments and step count stay as they were, decided inside its kernel. The loop arms it at
    every step with that step's finiteness, a device tensor; the skips are counted on the device and read at log
    and save steps, which sync anyway. Other optimizers (Muon, foreach AdamW: the CPU default) are checked on the
    host before their step. A skipped step still counts as a step (its batch and its lr are used up), as with fp16's
    grad scaler.
    """

    def __init__(self, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.first = torch.full((), -1, dtype=torch.long, device=device)  # the first skipped step since the last read

    @staticmethod
    def supported(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> bool:
        """Whether optimizer skips on found_inf itself (fp16's grad scaler has its own skipping)."""
        return scaler is None and bool(getattr(optimizer, "_step_supports_amp_scaling", False))

    def arm(self, optimizer: torch.optim.Optimizer, ok: torch.Tensor, step: int) -> None:
        """The next optimizer.step() updates nothing unless ok (a device bool) is true."""
        bad = ~ok
        optimizer.found_inf = bad.float()  # read by fused Adam/AdamW's step (torch.optim.adam)
        self.count += bad.long()
        self.first = torch.where(bad & (self.first < 0), step, self.first)

    def read(self) -> tuple[int, int]:
        """(steps skipped since the last read, the first of them or -1), with one host sync; then start over."""
        count, first = torch.stack([self.count, self.first]).tolist()
        self.count.zero_()
        self.first.fill_(-1)
        return count, first


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP); the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t
