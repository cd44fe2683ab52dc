"""Evaluation: mean cross-entropy and perplexity over fixed batches; exact match and ROUGE-L of generated targets.

The training loop's val metrics come from here, so there is one implementation of "val loss".
"""

from __future__ import annotations

import contextlib
import math
import warnings
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
            _, loss = model(**batch, **loss_only(model))
        losses[i] = loss.float()
    model.train(was_training)
    mean_loss = losses.mean()
    mean = (reduce(mean_loss) if reduce is not None else mean_loss).item()  # one host-device sync per eval
    return {"loss": mean, "ppl": math.exp(min(mean, 80.0))}  # exp capped: a diverged run prints inf-free numbers


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
