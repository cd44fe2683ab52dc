"""Evaluation: mean cross-entropy and perplexity of a model over fixed batches of a split.

The training loop's val metrics come from here, so there is one implementation of "val loss".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    loader: Any,
    num_batches: int,
    ctx: contextlib.AbstractContextManager | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean loss (nats/token) and perplexity over batches 0..num_batches-1 of loader (the same ones every call).

    reduce: averages a scalar over processes (each rank scores its slice of every global batch).
    """
    was_training = model.training
    model.eval()
    losses = torch.zeros(num_batches, device=next(model.parameters()).device)
    for i in range(num_batches):
        batch = loader.batch_at(i)
        with ctx or contextlib.nullcontext():
            _, loss = model(**batch)
        losses[i] = loss.float()
    model.train(was_training)
    mean_loss = losses.mean()
    mean = (reduce(mean_loss) if reduce is not None else mean_loss).item()  # one host-device sync per eval
    return {"loss": mean, "ppl": math.exp(min(mean, 80.0))}  # exp capped: a diverged run prints inf-free numbers
