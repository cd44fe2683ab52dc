"""Evaluation: mean cross-entropy and perplexity of a model over fixed batches of a split.

The training loop's val metrics come from here, so there is one implementation of "val loss".
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn as nn


@torch.no_grad()
def estimate_loss(
    model: nn.Module, loader: Any, num_batches: int, ctx: contextlib.AbstractContextManager | None = None
) -> dict[str, float]:
    """Mean loss (nats/token) and perplexity over batches 0..num_batches-1 of loader (the same ones every call)."""
    was_training = model.training
    model.eval()
    losses = torch.zeros(num_batches)
    for i in range(num_batches):
        batch = loader.batch_at(i)
        with ctx or contextlib.nullcontext():
            _, loss = model(**batch)
        losses[i] = loss.float()  # a host-device sync per batch: eval is rare
    model.train(was_training)
    mean = losses.mean().item()
    return {"loss": mean, "ppl": math.exp(min(mean, 80.0))}  # exp capped: a diverged run prints inf-free numbers
