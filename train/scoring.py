"""Scoring a model on fixed batches: one loop (mean_loss) behind the training loop's val loss, the evaluate command
and the benchmarks, and the metrics beside it (bits per byte, exact match, ROUGE-L of generated targets).

mean_loss averages the loss over the target tokens of every batch (or over batches, for training's fixed val
batches), summed on the device in float64 with one host sync at the end; it runs the model in eval mode and gives
back the mode it found even when a batch fails. The batches come from data/loader.py: a loader's batch_at(n) for
training's val batches, and window_batches, pair_batches or span_corruption_batches to score a whole split.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from data.chat import turn_ids
from data.loader import (
    IGNORE_INDEX,
    InstructLoader,
    Seq2SeqLoader,
    pair_batches,
    span_corruption_batches,
    span_corruption_windows,
    strided_windows,
    window_batches,
)
from data.span_corruption import MEAN_SPAN_LENGTH, NOISE_DENSITY, span_corruption_lengths

PPL_CAP = 80.0  # exp(loss) of a loss above this is reported as exp(80): a diverged run prints inf-free numbers
Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over processes


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout) for the body; the mode it was in afterwards, whatever the body raised."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(PPL_CAP)."""
    return math.exp(min(loss, PPL_CAP))


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    ctx: contextlib.AbstractContextManager | None = None,
    reduce: Reduce | None = None,
    per_batch: bool = False,
    progress: int | None = None,
) -> dict[str, float]:
    """The model's mean loss over batches of its forward arguments: {"loss" (nats/token), "ppl", "tokens" (target
    tokens scored)}. Each batch's mean is weighted by its scored targets, so every token counts once; a batch that
    scores nothing (padding) adds nothing. per_batch: every batch counts once instead (training's fixed val batches,
    all of one shape), and "batches" replaces "tokens". reduce sums the totals over ranks, each of which scored its
    own batches. progress: the number of batches, for a progress bar on stderr (drawn only on a terminal).
    """
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss x weight
    weight = torch.zeros((), dtype=torch.float64, device=device)  # sum of weights: tokens, or batches
    one = torch.ones((), dtype=torch.float64, device=device)
    bar = tqdm(batches, total=progress, desc="scoring", unit="batch", leave=False, disable=None if progress else True)
    with evaluating(model):
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            with ctx or contextlib.nullcontext():
                _, loss = model(**batch, **loss_only(model))
            w = one if per_batch else (batch["targets"] != IGNORE_INDEX).sum().double()
            total += torch.where(w > 0, loss.double() * w, 0.0)  # a batch of padding has a nan mean
            weight += w
    if reduce is not None:
        total, weight = reduce(total), reduce(weight)
    mean, count = torch.stack([total / weight, weight]).tolist()  # one host-device sync per evaluation
    return {"loss": mean, "ppl": perplexity(mean), "batches" if per_batch else "tokens": int(count)}


def estimate_loss(
    model: nn.Module,
    loader: Any,
    num_batches: int | None,
    ctx: contextlib.AbstractContextManager | None = None,
    reduce: Reduce | None = None,
    stride: int | None = None,
) -> dict[str, float]:
    """Mean loss (nats/token) and perplexity over batches 0..num_batches-1 of loader (the same ones every call);
    num_batches=None: over every token of a causal loader's split (score_tokens: strided windows of its block_size).
    reduce: sums a tensor over processes (each rank scores its slice of every global batch or of the windows).
    """
    if num_batches is None:
        if not hasattr(loader, "block_size"):
            raise ValueError(f"{type(loader).__name__} has no token stream to score whole: give a number of batches")
        return score_tokens(
            model,
            loader.data,
            loader.block_size,
            stride,
            loader.batch_size,
            ctx,
            loader.rank,
            loader.world_size,
            reduce,
        )
    scores = mean_loss(model, (loader.batch_at(i) for i in range(num_batches)), ctx, reduce, per_batch=True)
    return {"loss": scores["loss"], "ppl": scores["ppl"]}


def score_tokens(
    model: nn.Module,
    tokens: Any,
    length: int,
    stride: int | None = None,
    batch_size: int = 8,
    ctx: contextlib.AbstractContextManager | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce: Reduce | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Cross-entropy of a causal model over every prediction of a token stream (1-D array or tensor), in the
    window_batches of its strided windows (window i on rank i % world_size; reduce sums over ranks).
    Returns {"loss" (nats/token), "ppl", "tokens" (predictions scored)}."""
    batches = window_batches(tokens, length, stride, batch_size, rank, world_size)
    total = -(-len(strided_windows(len(tokens), length, stride)) // (batch_size * world_size)) if progress else None
    return mean_loss(model, batches, ctx, reduce, progress=total)


def score_pairs(
    model: nn.Module,
    pairs: list[tuple[list[int], list[int]]],
    eot_id: int,
    start_id: int,
    batch_size: int = 8,
    ctx: contextlib.AbstractContextManager | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Teacher-forced cross-entropy of a T5 over every target token of the (input ids, target ids) pairs, once each,
    batch_size pairs at a time in their order (cut them first: data.loader.cut_pair). Returns {"loss", "ppl",
    "tokens"}."""
    total = -(-len(pairs) // batch_size) if progress else None
    return mean_loss(model, pair_batches(pairs, batch_size, eot_id, start_id), ctx, progress=total)


def score_span_corruption(
    model: nn.Module,
    tokens: Any,
    tokenizer: Any,
    input_length: int,
    start_id: int,
    batch_size: int = 8,
    ctx: contextlib.AbstractContextManager | None = None,
    seed: int = 0,
    noise_density: float = NOISE_DENSITY,
    mean_span_length: float = MEAN_SPAN_LENGTH,
    progress: bool = False,
) -> dict[str, float]:
    """T5's span-corruption loss over a whole token stream, the same on every call (data.loader's
    span_corruption_batches: consecutive windows, window i corrupted with the mask of default_rng([seed, i])).

    What it measures: the mean cross-entropy of the targets (each masked span after its sentinel, then eot) given
    the corrupted windows, i.e. T5's pre-training objective on about noise_density of the tokens. It compares T5
    checkpoints with one tokenizer; it is not a loss over every token, so it has no bits per byte and does not
    compare with a GPT's loss. Returns {"loss", "ppl", "tokens" (targets scored), "windows"}.
    """
    batches = span_corruption_batches(
        tokens, tokenizer, input_length, start_id, batch_size, seed, noise_density, mean_span_length
    )
    raw_length, _ = span_corruption_lengths(input_length, noise_density, mean_span_length)
    windows = len(span_corruption_windows(len(tokens), raw_length)) if len(tokens) >= raw_length else 0
    scores = mean_loss(model, batches, ctx, progress=-(-windows // batch_size) if progress else None)
    return {**scores, "windows": windows}


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DDP's and torch.compile's wrappers (FSDP2 shards the module in place: itself)."""
    raw = getattr(model, "module", model)
    return getattr(raw, "_orig_mod", raw)


def loss_only(model: nn.Module) -> dict[str, Any]:
    """Forward keywords that make the model return its loss without materialising the (B, T, V) logits (GPT's
    chunked linear cross-entropy); none for a model without that option. Sees through DDP and torch.compile."""
    kind = getattr(getattr(unwrapped(model), "config", None), "kind", None)
    return {"return_logits": False} if kind == "gpt" else {}


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

    An InstructLoader's conversations are answered by a GPT as a chat: the turns before the last reply are the
    prompt, the reply is generated after <|assistant|> up to <|end|> and compared with the last reply (the prompt
    shown is the last user turn). Returns ({"exact_match", "rouge_l"} averaged over the pairs, the first
    samples.shown_pairs as {"prompt", "completion", "reference"} records).
    """
    from sample.generate import generate  # train may use sample; imported here to keep this module light

    eot = tokenizer.eot_id
    text = lambda ids: tokenizer.decode([t for t in ids if t != eot])  # noqa: E731 (the data ends each side with eot)
    scores: dict[str, list[float]] = {"exact_match": [], "rouge_l": []}
    shown = []
    config = task.generation(tokenizer, num_return_sequences=1)
    ids = None
    if isinstance(loader, InstructLoader):  # a GPT answering as a chat
        exchanges = list(loader.exchanges(limit=samples.eval_pairs))
        sources = [text(next((c for role, c in reversed(turns) if role == "user"), [])) for turns, _ in exchanges]
        references = [text(reply) for _, reply in exchanges]
        ids = [turn_ids(tokenizer, turns, add_generation_prompt=True)[0] for turns, _ in exchanges]
        config = config.replace(eos_token_id=[tokenizer.chat_ids[-1], eot])  # a reply ends its turn
    else:
        pairs = list(loader.pairs(limit=samples.eval_pairs))
        sources, references = [text(i) for i, _ in pairs], [text(t) for _, t in pairs]
    with warnings.catch_warnings():  # the loader already reported over-long pairs once; no warning per pair here
        warnings.simplefilter("ignore", UserWarning)
        outputs = generate(model, tokenizer, sources, config, seed=samples.seed, input_ids=ids) if sources else []
        predictions = [c[0].text for c in outputs]
    for source, reference, prediction in zip(sources, references, predictions):
        scores["exact_match"].append(exact_match(prediction, reference))
        scores["rouge_l"].append(rouge_l(prediction, reference))
        if len(shown) < samples.shown_pairs:
            shown.append({"prompt": source, "completion": prediction, "reference": reference})
    return {k: sum(v) / max(len(v), 1) for k, v in scores.items()}, shown


# ----------------------------------------------------------------------------------------------------------------
# bits per byte: a loss per token made comparable across tokenizers


def bits_per_byte(total_nats: float, num_bytes: int) -> float | None:
    """Bits per UTF-8 byte: total nats / ln 2 / bytes; None without bytes. Unlike loss per token, this compares
    models with different tokenizers (a tokenizer with longer tokens has a higher loss per token)."""
    return total_nats / math.log(2) / num_bytes if num_bytes > 0 else None


def text_bytes(tokenizer: Any, tokens: Any, chunk: int = 1 << 20) -> int:
    """UTF-8 bytes of the text a token stream spells, end-of-text separators left out (they stand for no text).

    Decoded chunk by chunk; exact for tokenizers whose tokens are byte strings (gpt2, byte, char).
    """
    n = 0
    for i in range(0, len(tokens), chunk):
        part = np.asarray(tokens[i : i + chunk])
        n += len(tokenizer.decode_bytes(part[part != tokenizer.eot_id]))
    return n


def bytes_per_token(tokenizer: Any, loader: Any) -> float | None:
    """UTF-8 bytes per scored token of a val split, which turns a loss per token into bits per byte (val/bpb in
    training): a causal split's text bytes over its tokens; a pair split's target bytes over its target tokens
    (cut as the loader cuts them); a chat split's replies' bytes over their tokens and <|end|> ids. None for span
    corruption, whose targets are not text of their own."""
    if isinstance(loader, InstructLoader):
        turns = (loader.turns(i) for i in range(loader.num_conversations))
        replies = [ids for chat in turns for role, ids in chat if role == "assistant"]
        tokens = sum(len(r) + 1 for r in replies)  # + 1: the reply's <|end|>, learned too
        num_bytes = sum(text_bytes(tokenizer, r) for r in replies)
    elif isinstance(loader, Seq2SeqLoader):
        targets = [t for _, t in loader.cut_pairs()]
        tokens, num_bytes = sum(len(t) for t in targets), sum(text_bytes(tokenizer, t) for t in targets)
    elif hasattr(loader, "block_size"):
        tokens, num_bytes = len(loader.data), text_bytes(tokenizer, loader.data)
    else:
        return None
    return num_bytes / tokens if tokens and num_bytes else None
