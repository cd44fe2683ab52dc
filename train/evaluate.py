"""Evaluation: mean cross-entropy and perplexity over fixed batches; exact match and ROUGE-L of generated targets.

The training loop's val metrics come from here, so there is one implementation of "val loss". The command line
`python -m train.evaluate checkpoint=<dir> (data=<prepared dataset> | file=<text>)` scores a checkpoint on a whole
split or file: mean cross-entropy (nats/token), perplexity and bits per byte, which compares models across tokenizers.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from data.loader import IGNORE_INDEX


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    loader: Any,
    num_batches: int | None,
    ctx: contextlib.AbstractContextManager | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stride: int | None = None,
) -> dict[str, float]:
    """Mean loss (nats/token) and perplexity over batches 0..num_batches-1 of loader (the same ones every call);
    num_batches=None: over every token of a causal loader's split (score_tokens: strided windows of its block_size).

    reduce: sums a tensor over processes (each rank scores its slice of every global batch or of the windows).
    """
    if num_batches is None:
        if not hasattr(loader, "block_size"):
            raise ValueError(f"{type(loader).__name__} has no token stream to score whole: give a number of batches")
        return score_tokens(model, loader.data, loader.block_size, stride, loader.batch_size, ctx,
                            loader.rank, loader.world_size, reduce)  # fmt: skip
    was_training = model.training
    model.eval()
    losses = torch.zeros(num_batches, device=next(model.parameters()).device)
    for i in range(num_batches):
        batch = loader.batch_at(i)
        with ctx or contextlib.nullcontext():
            _, loss = model(**batch, **loss_only(model))
        losses[i] = loss.float()
    model.train(was_training)
    world = getattr(loader, "world_size", 1)
    mean_loss = losses.mean()
    mean = (reduce(mean_loss) / world if reduce is not None else mean_loss).item()  # one host-device sync per eval
    return {"loss": mean, "ppl": math.exp(min(mean, 80.0))}  # exp capped: a diverged run prints inf-free numbers


def strided_windows(num_tokens: int, length: int, stride: int | None = None) -> list[tuple[int, int]]:
    """(start, first scored position) of the windows that score a stream of num_tokens tokens, each target once.

    A window feeds tokens[start : start + length] and predicts tokens[start + 1 : start + length + 1]; it scores
    the predictions from its first scored position on, the ones no earlier window scored. Windows start every
    `stride` tokens (None: length, so they do not overlap); the last one is moved back to end at the last token, so
    every window has the same length. A smaller stride gives every scored token more context, as in transformers'
    perplexity guide: with stride s < length, each token after the first window sees at least length - s tokens.
    """
    if num_tokens < 2:
        raise ValueError(f"{num_tokens} token(s) hold no prediction to score: at least 2 are needed")
    length = min(length, num_tokens - 1)
    stride = length if stride is None else stride
    if not 0 < stride <= length:
        raise ValueError(f"stride={stride} must be in [1, block_size={length}]")
    windows, scored_to = [], 0  # predictions [0, scored_to) are scored (prediction j is of token j + 1)
    for start in range(0, num_tokens - 1, stride):
        start = min(start, num_tokens - 1 - length)
        windows.append((start, scored_to - start))
        scored_to = start + length
        if scored_to >= num_tokens - 1:
            break
    return windows


@torch.no_grad()
def score_tokens(
    model: nn.Module,
    tokens: Any,
    length: int,
    stride: int | None = None,
    batch_size: int = 8,
    ctx: contextlib.AbstractContextManager | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Cross-entropy of a causal model over every prediction of a token stream (1-D array or tensor).

    The stream is cut into strided_windows(len(tokens), length, stride), batch_size windows per forward; window i
    belongs to rank i % world_size and reduce sums over ranks. Every rank runs the same number of batches (the
    last ones padded with windows that score nothing), so DDP-wrapped and compiled models see one batch shape.
    Returns {"loss" (nats/token), "ppl", "tokens" (predictions scored)}.
    """
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    windows = strided_windows(len(tokens), length, stride)
    length = min(length, len(tokens) - 1)
    per_step = batch_size * world_size
    windows += [(0, length)] * (-len(windows) % per_step)  # padding: nothing scored
    device = next(model.parameters()).device
    span = torch.arange(length + 1)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for first in range(0, len(windows), per_step):
        mine = windows[first + rank : first + per_step : world_size]
        rows = tokens[torch.tensor([s for s, _ in mine])[:, None] + span]  # (B, length + 1)
        targets = rows[:, 1:].clone()
        targets[span[:-1][None, :] < torch.tensor([o for _, o in mine])[:, None]] = IGNORE_INDEX  # scored before
        batch = {"idx": rows[:, :-1].to(device), "targets": targets.to(device)}
        with ctx or contextlib.nullcontext():
            _, loss = model(**batch, **loss_only(model))
        n = (batch["targets"] != IGNORE_INDEX).sum()
        total += torch.where(n > 0, loss.double() * n, 0.0)  # a batch of padding has a nan mean and adds nothing
        count += n
    model.train(was_training)
    if reduce is not None:
        total, count = reduce(total), reduce(count)
    mean = (total / count).item()  # one host-device sync per evaluation
    return {"loss": mean, "ppl": math.exp(min(mean, 80.0)), "tokens": int(count.item())}


def loss_only(model: nn.Module) -> dict[str, Any]:
    """Forward keywords that make the model return its loss without materialising the (B, T, V) logits (GPT's
    chunked linear cross-entropy); none for a model without that option. Sees through DDP and torch.compile."""
    raw = getattr(model, "module", model)
    raw = getattr(raw, "_orig_mod", raw)
    return {"return_logits": False} if getattr(getattr(raw, "config", None), "kind", None) == "gpt" else {}


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal after stripping surrounding whitespace, else 0.0."""
    return float(prediction.strip() == reference.strip())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens (Lin 2004): longest common subsequence, precision and recall."""
    pred, ref = prediction.split(), reference.split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = [0] * (len(ref) + 1)  # one row of the LCS table, updated in place
    for p in pred:
        diag = 0
        for j, r in enumerate(ref, start=1):
            diag, lcs[j] = lcs[j], diag + 1 if p == r else max(lcs[j], lcs[j - 1])
    if lcs[-1] == 0:
        return 0.0
    precision, recall = lcs[-1] / len(pred), lcs[-1] / len(ref)
    return 2 * precision * recall / (precision + recall)


def seq2seq_scores(
    model: nn.Module, tokenizer: Any, loader: Any, samples: Any, task: Any
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Generate the targets of the first samples.eval_pairs val pairs with the task's decoding settings.

    Returns ({"exact_match", "rouge_l"} averaged over the pairs, the first samples.shown_pairs as
    {"prompt", "completion", "reference"} records).
    """
    from sample.generate import generate  # train may use sample; imported here to keep this module light

    eot = tokenizer.eot_id
    scores: dict[str, list[float]] = {"exact_match": [], "rouge_l": []}
    shown = []
    pairs = list(loader.pairs(limit=samples.eval_pairs))  # both sides end with eot in the data
    sources = [tokenizer.decode([t for t in source_ids if t != eot]) for source_ids, _ in pairs]
    with warnings.catch_warnings():  # the loader already reported over-long pairs once; no warning per pair here
        warnings.simplefilter("ignore", UserWarning)
        config = task.generation(tokenizer, num_return_sequences=1)
        outputs = generate(model, tokenizer, sources, config, seed=samples.seed) if sources else []
        predictions = [c[0].text for c in outputs]
    for source, (_, target_ids), prediction in zip(sources, pairs, predictions):
        reference = tokenizer.decode([t for t in target_ids if t != eot])
        scores["exact_match"].append(exact_match(prediction, reference))
        scores["rouge_l"].append(rouge_l(prediction, reference))
        if len(shown) < samples.shown_pairs:
            shown.append({"prompt": source, "completion": prediction, "reference": reference})
    return {k: sum(v) / max(len(v), 1) for k, v in scores.items()}, shown
