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

from data.loader import IGNORE_INDEX, Seq2SeqLoader
from data.loader import _decoder_inputs as decoder_inputs  # the teacher-forcing input the loaders build
from data.prepare import SPLITS, is_complete, layout, load_meta
from data.span_corruption import (
    MEAN_SPAN_LENGTH,
    NOISE_DENSITY,
    corrupt,
    noise_counts,
    random_spans_noise_mask,
    span_corruption_lengths,
)
from model.checkpoint import is_hf_source, load_model, read_model_json, resolve_checkpoint
from nanoloom.device import autocast, resolve_device, resolve_dtype
from nanoloom.files import write_text_atomic


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


# ----------------------------------------------------------------------------------------------------------------
# whole texts: bits per byte, T5 pairs and span corruption


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
    (cut as the loader cuts them). None for span corruption, whose targets are not text of their own."""
    if isinstance(loader, Seq2SeqLoader):
        targets = [t for _, t in cut_pairs(loader, tokenizer.eot_id)]
        tokens, num_bytes = sum(len(t) for t in targets), sum(text_bytes(tokenizer, t) for t in targets)
    elif hasattr(loader, "block_size"):
        tokens, num_bytes = len(loader.data), text_bytes(tokenizer, loader.data)
    else:
        return None
    return num_bytes / tokens if tokens and num_bytes else None


def cut_pairs(loader: Seq2SeqLoader, eot_id: int) -> list[tuple[list[int], list[int]]]:
    """Every pair of the loader's split, cut as its batches cut them (fit_pair to its input and target lengths)."""
    return [fit_pair(i, t, loader.input_length, loader.target_length, eot_id) for i, t in loader.pairs()]


def fit_pair(
    input_ids: list[int], target_ids: list[int], input_length: int, target_length: int, eot_id: int
) -> tuple[list[int], list[int]]:
    """A pair cut as Seq2SeqLoader cuts it: the input to its first input_length tokens, a target to its first
    target_length - 1 tokens and eot."""
    if len(target_ids) > target_length:
        target_ids = target_ids[: target_length - 1] + [eot_id]
    return input_ids[:input_length], target_ids


@torch.no_grad()
def score_pairs(
    model: nn.Module,
    pairs: list[tuple[list[int], list[int]]],
    eot_id: int,
    start_id: int,
    batch_size: int = 8,
    ctx: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Teacher-forced cross-entropy of a T5 over every target token of the (input ids, target ids) pairs, once each.

    Pairs go batch_size at a time in their order, padded like Seq2SeqLoader's batches (inputs with eot_id under
    enc_mask, targets with IGNORE_INDEX); cut them first with fit_pair. Returns {"loss", "ppl", "tokens"}.
    """
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    for first in range(0, len(pairs), batch_size):
        rows = pairs[first : first + batch_size]
        S, T = max(len(i) for i, _ in rows), max(len(t) for _, t in rows)
        enc_idx = np.full((len(rows), S), eot_id, dtype=np.int64)
        targets = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)
        for r, (input_ids, target_ids) in enumerate(rows):
            enc_idx[r, : len(input_ids)] = input_ids
            targets[r, : len(target_ids)] = target_ids
        batch = {
            "enc_idx": torch.from_numpy(enc_idx),
            "enc_mask": torch.from_numpy(np.arange(S) < np.array([len(i) for i, _ in rows])[:, None]),  # (B, S)
            "dec_idx": torch.from_numpy(decoder_inputs(targets, start_id)),
            "targets": torch.from_numpy(targets),
        }
        with ctx or contextlib.nullcontext():
            _, loss = model(**{k: v.to(device) for k, v in batch.items()})
        n = int((targets != IGNORE_INDEX).sum())
        total += loss.double() * n  # the mean over this batch's target tokens, back to a sum
        count += n
    model.train(was_training)
    mean = (total / count).item()  # one host-device sync per evaluation
    return {"loss": mean, "ppl": math.exp(min(mean, 80.0)), "tokens": count}


@torch.no_grad()
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
) -> dict[str, float]:
    """T5's span-corruption loss over a whole token stream, the same on every call.

    The stream is cut into consecutive windows of raw_length tokens (those that corrupt into inputs of input_length,
    as in training; the last window is moved back to end at the last token), and window i is corrupted with the mask
    of default_rng([seed, i]). What it measures: the mean cross-entropy of the targets (each masked span after its
    sentinel, then eot) given the corrupted windows, i.e. T5's pre-training objective on about noise_density of
    the tokens. It compares T5 checkpoints with one tokenizer; it is not a loss over every token, so it has no bits
    per byte and does not compare with a GPT's loss. Returns {"loss", "ppl", "tokens" (targets scored), "windows"}.
    """
    raw_length, _ = span_corruption_lengths(input_length, noise_density, mean_span_length)
    if len(tokens) < raw_length:
        raise ValueError(
            f"the text has {len(tokens)} tokens, fewer than the {raw_length} of one span-corruption window "
            f"(block_size={input_length}); give more text"
        )
    num_spans = noise_counts(raw_length, noise_density, mean_span_length)[1]
    if getattr(tokenizer, "num_sentinels", 0) < num_spans:
        raise ValueError(
            f"span corruption of block_size={input_length} windows needs {num_spans} sentinels, but the checkpoint's "
            f"tokenizer has {getattr(tokenizer, 'num_sentinels', 0)}; score this t5 checkpoint on pairs (data=)"
        )
    sentinel_ids = np.array([tokenizer.sentinel_id(i) for i in range(num_spans)], dtype=np.int64)
    starts = list(range(0, len(tokens) - raw_length + 1, raw_length))
    if starts[-1] + raw_length < len(tokens):
        starts.append(len(tokens) - raw_length)  # the tail, in a window moved back
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    for first in range(0, len(starts), batch_size):
        index = range(first, min(first + batch_size, len(starts)))
        windows = np.stack([np.asarray(tokens[starts[i] : starts[i] + raw_length], dtype=np.int64) for i in index])
        masks = np.stack(
            [
                random_spans_noise_mask(raw_length, noise_density, mean_span_length, np.random.default_rng([seed, i]))
                for i in index
            ]
        )  # (B, raw_length)
        inputs, targets = corrupt(windows, masks, sentinel_ids, tokenizer.eot_id)  # (B, S), (B, T)
        batch = {"enc_idx": inputs, "dec_idx": decoder_inputs(targets, start_id), "targets": targets}
        with ctx or contextlib.nullcontext():
            _, loss = model(**{k: torch.from_numpy(v).to(device) for k, v in batch.items()})
        total += loss.double() * targets.size  # every target position is scored
        count += targets.size
    model.train(was_training)
    mean = (total / count).item()  # one host-device sync per evaluation
    return {"loss": mean, "ppl": math.exp(min(mean, 80.0)), "tokens": count, "windows": len(starts)}


# ----------------------------------------------------------------------------------------------------------------
# python -m train.evaluate

USAGE = """\
usage: python -m train.evaluate checkpoint=<run or checkpoint dir> (data=<prepared dataset dir> | file=<text file>)
           [split=val] [stride=N] [batch_size=8] [device=auto] [dtype=auto] [out=<result.json>]

Scores every token of a prepared split (data=: a directory python -m data.prepare wrote, split=train|val) or of a
UTF-8 text file (file=), prints a summary line, then the result as one JSON line (also written to out=):
  gpt  windows of block_size tokens starting every stride tokens (default block_size: no overlap; a smaller stride
       gives every token more context and costs block_size/stride times the compute)
  t5   pairs (data= of input/target pairs): every target, teacher-forced; documents (data= or file=): span
       corruption over windows covering the text, with fixed masks (T5's pre-training loss; no bits per byte)
loss is the mean cross-entropy in nats/token, ppl = exp(loss), bpb the bits per UTF-8 byte of the scored text
(comparable across tokenizers). device=auto|cpu|cuda|mps  dtype=auto|float32|bfloat16|float16 (autocast)
a user error is one "error: ..." line (exit status 2); NANOLOOM_DEBUG=1 shows its traceback instead
"""
ARGS = ("checkpoint", "data", "file", "split", "stride", "batch_size", "device", "dtype", "out")
DTYPES = ("auto", "float32", "bfloat16", "float16")
NO_BPB_SPAN = "span corruption scores the masked spans of each window, not every token of the text"


def parse_args(argv: list[str]) -> dict[str, Any]:
    """key=value arguments as a dict (stride and batch_size as ints); an unknown, repeated or malformed one is a
    one-line ValueError."""
    args: dict[str, Any] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"cannot parse argument {arg!r}: arguments are key=value (python -m train.evaluate -h)")
        if key not in ARGS:
            hint = difflib.get_close_matches(key, ARGS, n=1)
            fix = f"did you mean {hint[0]}?" if hint else f"valid keys: {', '.join(ARGS)}"
            raise ValueError(f"unknown argument {key!r}; {fix}")
        if key in args:
            raise ValueError(f"argument {key!r} given twice; keep one")
        args[key] = value
    for key in ("stride", "batch_size"):
        if key in args:
            try:
                args[key] = int(args[key])
            except ValueError:
                raise ValueError(f"{key}={args[key]!r} must be a whole number") from None
    return args


def read_text_file(path: str) -> tuple[str, int]:
    """(text, UTF-8 bytes) of file=; missing, not UTF-8 or empty is a one-line error."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "is not a regular file" if p.exists() else "does not exist"
        raise FileNotFoundError(f"file={path!r} {what}; pass a text file to score")  # not a pipe: it would block
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"file={path!r} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    if not text:
        raise ValueError(f"file={path!r} is empty; pass a file with text to score")
    return text, len(raw)


def open_dataset(path: str, split: str) -> dict[str, Any]:
    """meta.json of data=, checked: a complete prepared dataset with that split."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}")
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"data={path!r} is not a directory; pass a prepared dataset directory "
            "(<cache_dir>/<name>-<tokenizer>-<hash>, written by python -m data.prepare)"
        )
    meta = load_meta(path)  # no meta.json: "... is not a prepared dataset; run python -m data.prepare"
    if not is_complete(Path(path)):
        raise ValueError(
            f"data={path!r} is incomplete (a token file is missing or short); prepare it again "
            "with python -m data.prepare"
        )
    return meta


def check_tokenizer(tokenizer: Any, meta: dict[str, Any], data: str) -> None:
    """The dataset must be tokenized by the checkpoint's tokenizer (its T5 sentinels and FIM ids aside)."""

    def base(spec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in spec.items() if k not in ("vocab_size", "sentinels", "fim")}

    if base(tokenizer.spec()) != base(meta["tokenizer"]):
        raise ValueError(
            f"data={data!r} was prepared with another tokenizer ({meta['tokenizer']['name']}) than the checkpoint's "
            f"({tokenizer.name}); prepare the text with data.tokenizer=model, or pass it as file=<text file>"
        )


def check_out(out: str) -> None:
    """Refuse an out= file that cannot be written before scoring rather than after."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"out={out!r} is a directory; pass a file for the result, e.g. out=eval.json")
    parent = next(p for p in path.absolute().parents if p.exists())  # the nearest folder that exists
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"out={out!r} cannot be created in {parent}; choose another path")


def score_text(
    model: nn.Module,
    tokenizer: Any,
    tokens: np.ndarray,
    num_bytes: int,
    stride: int | None,
    batch_size: int,
    ctx: contextlib.AbstractContextManager,
) -> dict[str, Any]:
    """A GPT over every token of a text (file= or a split), with end-of-text in front as the first one's context
    (in training, a document follows one); the separators between documents are scored and count no bytes."""
    tokens = np.concatenate([[tokenizer.eot_id], tokens]).astype(np.int64)
    length = min(model.config.block_size, len(tokens) - 1)
    stride = min(stride or length, length)  # a text shorter than block_size: one window
    scores = score_tokens(model, tokens, length, stride, batch_size, ctx)
    windows = len(strided_windows(len(tokens), length, stride))
    bpb = bits_per_byte(scores["loss"] * scores["tokens"], num_bytes)
    return {"method": "strided windows", **scores, "stride": stride, "windows": windows, "bytes": num_bytes,
            "bpb": bpb, "bpb_note": None}  # fmt: skip


def score_pair_split(
    model: nn.Module, tokenizer: Any, data: str, split: str, batch_size: int, ctx: contextlib.AbstractContextManager
) -> dict[str, Any]:
    """A T5 on every target of a pair split, teacher-forced, pairs cut to block_size as in training."""
    T = model.config.block_size
    loader = Seq2SeqLoader(data, split, batch_size, T, T, tokenizer)  # reads the split's pairs and checks tokenizer
    pairs = cut_pairs(loader, tokenizer.eot_id)
    if not pairs:
        raise ValueError(f"the {split} split of data={data!r} holds no pairs; prepare more pairs")
    scores = score_pairs(model, pairs, tokenizer.eot_id, _start_id(model, tokenizer), batch_size, ctx)
    num_bytes = sum(text_bytes(tokenizer, t) for _, t in pairs)
    return {
        "method": "seq2seq targets, teacher-forced", **scores, "pairs": len(pairs),
        "bytes": num_bytes, "bpb": bits_per_byte(scores["loss"] * scores["tokens"], num_bytes),
        "bpb_note": "bits per byte of the target texts given their inputs",
    }  # fmt: skip


def _start_id(model: nn.Module, tokenizer: Any) -> int:
    """A T5's first decoder input: its decoder_start_id, else end-of-text (as the loaders)."""
    start = model.config.decoder_start_id
    return tokenizer.eot_id if start is None else start


def evaluate_checkpoint(
    checkpoint: str = "",
    data: str | None = None,
    file: str | None = None,
    split: str | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    out: str | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on a prepared split or a text file (USAGE says how); the result as a JSON-ready dict.

    Every input is checked before the model is loaded; a bad one is a ValueError or OSError with a one-line message.
    """
    if not checkpoint:
        raise ValueError("checkpoint= is required: pass checkpoint=<run or checkpoint directory>")
    if (data is None) == (file is None):
        what = "both data= and file= given" if data is not None else "nothing to score"
        raise ValueError(f"{what}: pass either data=<prepared dataset dir> or file=<text file>")
    if file is not None and split is not None:
        raise ValueError("split= selects a split of data=; a file= is scored whole: leave split out")
    split = split or "val"
    text, num_bytes = read_text_file(file) if file is not None else (None, 0)
    meta = open_dataset(data, split) if data is not None else None
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not a dtype; choose one of {', '.join(DTYPES)}")
    if out is not None:
        check_out(out)
    source = checkpoint if is_hf_source(checkpoint) else str(resolve_checkpoint(checkpoint))
    info = read_model_json(source)
    kind, block_size = info["kind"], int(info["config"]["block_size"])
    if kind not in ("gpt", "t5"):
        raise ValueError(f"checkpoint={checkpoint!r} holds a {kind} model; python -m train.evaluate needs gpt or t5")
    if stride is not None and kind != "gpt":
        raise ValueError(f"stride= sets the windows of a gpt checkpoint; {checkpoint!r} is a t5: leave stride out")
    if stride is not None and not 1 <= stride <= block_size:
        raise ValueError(
            f"stride={stride} must be in [1, block_size={block_size}] (the checkpoint's context); "
            "leave it out for windows that do not overlap"
        )
    pairs = meta is not None and layout(meta) == "pairs"
    if pairs and kind == "gpt":
        raise ValueError(
            f"data={data!r} holds input/target pairs, which score a t5 checkpoint; give a gpt a "
            "document dataset or file=<text file>"
        )
    torch_device = resolve_device(device)
    if dtype == "float16" and torch_device.type == "cpu":
        raise ValueError("dtype=float16 is not supported on CPU; use bfloat16 or float32")
    amp = resolve_dtype(dtype, torch_device)

    model, tokenizer = load_model(source, device=torch_device)
    if meta is not None:
        check_tokenizer(tokenizer, meta, data)
    ctx = autocast(torch_device, amp)
    if pairs:
        scores = score_pair_split(model, tokenizer, data, split, batch_size, ctx)
    else:
        if text is not None:
            tokens = np.array(tokenizer.encode(text), dtype=np.int64)
        else:
            tokens = np.memmap(Path(data) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
            num_bytes = text_bytes(tokenizer, tokens)
        if kind == "gpt":
            scores = score_text(model, tokenizer, tokens, num_bytes, stride, batch_size, ctx)
        else:  # documents; a file is one, and ends with eot as a prepared one does
            tokens = np.append(tokens, tokenizer.eot_id) if text is not None else tokens
            start_id = _start_id(model, tokenizer)
            scores = score_span_corruption(model, tokens, tokenizer, block_size, start_id, batch_size, ctx)
            scores.update(method="span corruption", bytes=None, bpb=None, bpb_note=f"null: {NO_BPB_SPAN}")
    result = {
        "checkpoint": source, "kind": kind, "step": info.get("meta", {}).get("step"),
        "data": data, "file": file, "split": split if data is not None else None,
        "method": scores.pop("method"), "loss": scores.pop("loss"), "ppl": scores.pop("ppl"), "bpb": scores.pop("bpb"),
        "bpb_note": scores.pop("bpb_note"), **scores,
        "block_size": block_size, "batch_size": batch_size,
        "device": str(torch_device), "dtype": str(amp).removeprefix("torch."),
    }  # fmt: skip
    if out is not None:
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out, json.dumps(result, indent=2) + "\n")
        except OSError as e:  # disk full ...: the file as it was (written atomically); name it
            raise ValueError(f"cannot write out={out!r}: {e.strerror or e}; the file is unchanged") from e
    return result


def summary(result: dict[str, Any]) -> str:
    """The human-readable line printed before the JSON."""
    what = result["file"] if result["file"] is not None else f"{result['data']} ({result['split']})"
    step = f", step {result['step']}" if result["step"] is not None else ""
    bpb = f"{result['bpb']:.4f} bits/byte" if result["bpb"] is not None else "bits/byte n/a"
    return (
        f"{result['kind']}{step} on {what}: loss {result['loss']:.4f} nats/token | ppl {result['ppl']:.2f} | "
        f"{bpb} | {result['tokens']:,} tokens scored ({result['method']})"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of `python -m train.evaluate`: prints the summary and the JSON line, returns the result dict."""
    from sample.config import config_error_message, debug_enabled  # the one-line errors every CLI shares

    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        sys.stdout.write(USAGE)
        return {}
    try:
        result = evaluate_checkpoint(**parse_args(args))
    except (ValueError, OSError) as e:
        if debug_enabled():
            raise
        print(f"error: {config_error_message(e, {})}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)
    print(summary(result))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
