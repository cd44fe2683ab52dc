"""Optimizer and learning-rate schedules.

AdamW with two parameter groups (nanoGPT): matrices and embeddings decay, biases and norm gains do not.
Schedules are pure functions of the step: linear warmup, then cosine, constant, or warmup-stable-decay
(Hu et al. 2024, MiniCPM).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from train.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW over decay (dim >= 2) and no-decay (dim < 2) groups; fused on CUDA unless cfg.fused says otherwise."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields tied weights once
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
