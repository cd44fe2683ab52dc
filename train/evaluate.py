"""The evaluate command: `python -m train.evaluate checkpoint=<dir> (data=<prepared dataset> | file=<text>)` scores
a checkpoint on a whole split or file: mean cross-entropy (nats/token), perplexity and bits per byte, which compares
models across tokenizers. It checks every input before loading the model; the scoring itself is train/scoring.py's,
the same functions the training loop's val metrics come from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch.nn as nn

from data.config import DataConfig
from data.loader import Seq2SeqLoader, same_tokenizer, strided_windows
from data.prepare import SPLITS, is_complete, layout, load_meta, prepare
from data.prepare import register_schema as register_data_schema
from model.checkpoint import is_hf_source, load_model, read_model_json, read_tokenizer, resolve_checkpoint
from nanoloom.device import autocast, resolve_device, resolve_dtype
from nanoloom.files import config_dir, write_text_atomic
from train.scoring import bits_per_byte, score_pairs, score_span_corruption, score_tokens, text_bytes

USAGE = """\
usage: nanoloom evaluate checkpoint=<run or checkpoint dir | hf:name> (data=<dataset> | file=<text file>) [key=value]
       (python -m train.evaluate ... is the same command)

data= is a prepared dataset directory (python -m data.prepare wrote it) or the name of a data config
(configs/data/<name>.yaml, as in training: it is prepared with the checkpoint's own tokenizer, data.<key>=... edits
it, paths.cache_dir= says where); file= is a UTF-8 text file, scored whole. The score is printed as a summary line
and one JSON line (also written to out=):
  gpt  windows of block_size tokens starting every stride tokens (default block_size: no overlap; a smaller stride
       gives every token more context and costs block_size/stride times the compute)
  t5   pairs (a dataset of input/target pairs): every target, teacher-forced; documents (data= or file=): span
       corruption over windows covering the text, with fixed masks (T5's pre-training loss; no bits per byte)
loss is the mean cross-entropy in nats/token, ppl = exp(loss), bpb the bits per UTF-8 byte of the scored text
(comparable across tokenizers).
keys: split=val|train  stride=N  batch_size=8  device=auto|cpu|cuda|mps  dtype=auto|float32|bfloat16|float16
      out=<result.json>  (all keys: configs/evaluate.yaml)
options: -m  a sweep, one evaluation per value: checkpoint=runs/a,runs/b stride=64,128 (four results)
         --cfg  print the composed config and exit;  -h, --help  this message
a user error is one "error: ..." line (exit status 2); NANOLOOM_DEBUG=1 shows its traceback instead
"""
DTYPES = ("auto", "float32", "bfloat16", "float16")
NO_BPB_SPAN = "span corruption scores the masked spans of each window, not every token of the text"


@dataclass
class EvaluateConfig:
    """The schema of configs/evaluate.yaml: what to score, where, and how (see USAGE)."""

    checkpoint: str = ""  # a checkpoint or run directory, or hf:<hub name or folder>
    # data=<name>: a data config (configs/data/<name>.yaml, composed here as DataConfig); data=<directory> is read as
    # dataset=<directory>, a prepared dataset
    data: Any = None
    dataset: Optional[str] = None
    file: Optional[str] = None  # a UTF-8 text file, scored whole
    split: Optional[str] = None  # data=: train | val (default val)
    stride: Optional[int] = None  # gpt: windows start every stride tokens (default block_size: no overlap)
    batch_size: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:<n> | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast)
    out: Optional[str] = None  # also write the result here, as JSON
    cache_dir: str = ".cache/nanoloom"  # where data=<config name> is prepared (training's paths.cache_dir)


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

    if not same_tokenizer(tokenizer.spec(), meta["tokenizer"], fim=False):
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
    progress: bool = False,
) -> dict[str, Any]:
    """A GPT over every token of a text (file= or a split), with end-of-text in front as the first one's context
    (in training, a document follows one); the separators between documents are scored and count no bytes."""
    tokens = np.concatenate([[tokenizer.eot_id], tokens]).astype(np.int64)
    length = min(model.config.block_size, len(tokens) - 1)
    stride = min(stride or length, length)  # a text shorter than block_size: one window
    scores = score_tokens(model, tokens, length, stride, batch_size, ctx, progress=progress)
    windows = len(strided_windows(len(tokens), length, stride))
    bpb = bits_per_byte(scores["loss"] * scores["tokens"], num_bytes)
    return {
        "method": "strided windows",
        **scores,
        "stride": stride,
        "windows": windows,
        "bytes": num_bytes,
        "bpb": bpb,
        "bpb_note": None,
    }


def score_pair_split(
    model: nn.Module,
    tokenizer: Any,
    data: str,
    split: str,
    batch_size: int,
    ctx: contextlib.AbstractContextManager,
    progress: bool = False,
) -> dict[str, Any]:
    """A T5 on every target of a pair split, teacher-forced, pairs cut to block_size as in training."""
    T = model.config.block_size
    loader = Seq2SeqLoader(data, split, batch_size, T, T, tokenizer)  # reads the split's pairs and checks tokenizer
    pairs = loader.cut_pairs()
    if not pairs:
        raise ValueError(f"the {split} split of data={data!r} holds no pairs; prepare more pairs")
    start_id = _start_id(model, tokenizer)
    scores = score_pairs(model, pairs, tokenizer.eot_id, start_id, batch_size, ctx, progress=progress)
    num_bytes = sum(text_bytes(tokenizer, t) for _, t in pairs)
    return {
        "method": "seq2seq targets, teacher-forced",
        **scores,
        "pairs": len(pairs),
        "bytes": num_bytes,
        "bpb": bits_per_byte(scores["loss"] * scores["tokens"], num_bytes),
        "bpb_note": "bits per byte of the target texts given their inputs",
    }


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
    cache_dir: str = ".cache/nanoloom",
    dataset: str | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on a prepared split, a data config or a text file (USAGE says how); the result as a
    JSON-ready dict. data: a prepared dataset directory, or a DataConfig (prepared here with the checkpoint's
    tokenizer); dataset: a prepared dataset directory (the command line's data=<directory>).

    Every input is checked before the model is loaded; a bad one is a ValueError or OSError with a one-line message.
    """
    if data is not None and dataset is not None:
        raise ValueError("data= and dataset= both given: pass one dataset")
    if isinstance(data, DataConfig):
        data = str(_prepare_data_config(checkpoint, data, cache_dir))
    data = dataset if dataset is not None else data
    checked = _check_inputs(checkpoint, data, file, split, stride, batch_size, dtype, out)
    source, info, meta, split, text, num_bytes = checked
    torch_device = resolve_device(device)
    if dtype == "float16" and torch_device.type == "cpu":
        raise ValueError("dtype=float16 is not supported on CPU; use bfloat16 or float32")
    amp = resolve_dtype(dtype, torch_device)

    model, tokenizer = load_model(source, device=torch_device)
    if meta is not None:
        check_tokenizer(tokenizer, meta, data)
    ctx = autocast(torch_device, amp)
    if meta is not None and layout(meta) == "pairs":
        scores = score_pair_split(model, tokenizer, data, split, batch_size, ctx, progress=True)
    else:
        if text is not None:
            tokens = np.array(tokenizer.encode(text), dtype=np.int64)
        else:
            tokens = np.memmap(Path(data) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
            num_bytes = text_bytes(tokenizer, tokens)
        from_file = text is not None
        scores = _score_documents(model, tokenizer, tokens, from_file, num_bytes, stride, batch_size, ctx, True)
    result = {
        "checkpoint": source,
        "kind": info["kind"],
        "step": info.get("meta", {}).get("step"),
        "data": data,
        "file": file,
        "split": split if data is not None else None,
        "method": scores.pop("method"),
        "loss": scores.pop("loss"),
        "ppl": scores.pop("ppl"),
        "bpb": scores.pop("bpb"),
        "bpb_note": scores.pop("bpb_note"),
        **scores,
        "block_size": int(info["config"]["block_size"]),
        "batch_size": batch_size,
        "device": str(torch_device),
        "dtype": str(amp).removeprefix("torch."),
    }
    if out is not None:
        _write_out(out, result)
    return result


def is_data_config(data: str) -> bool:
    """Whether data= names a data config (configs/data/<name>.yaml) rather than a directory: a name with no path
    separator that is not an existing path."""
    return "/" not in data and not Path(data).exists() and (config_dir() / "data" / f"{data}.yaml").is_file()


def _prepare_data_config(checkpoint: str, cfg: DataConfig, cache_dir: str) -> Path:
    """The prepared directory of a data config tokenized with the checkpoint's own tokenizer (as training's
    data.tokenizer=model does: a model scores only its own token ids), prepared now when it is not cached yet."""
    if not checkpoint:
        raise ValueError("checkpoint= is required: pass checkpoint=<run or checkpoint directory>")
    source = checkpoint if is_hf_source(checkpoint) else str(resolve_checkpoint(checkpoint))
    tokenizer = load_model(source)[1] if is_hf_source(source) else read_tokenizer(source)
    return prepare(dataclasses.replace(cfg, tokenizer="model", fim_rate=0.0), cache_dir, tokenizer=tokenizer)


def _check_inputs(
    checkpoint: str,
    data: str | None,
    file: str | None,
    split: str | None,
    stride: int | None,
    batch_size: int,
    dtype: str,
    out: str | None,
) -> tuple[str, dict[str, Any], dict[str, Any] | None, str, str | None, int]:
    """Every check that needs no model. Returns (the checkpoint's source, its model.json, data='s meta.json or None,
    the split, file='s text or None, its UTF-8 bytes)."""
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
    if meta is not None and layout(meta) == "conversations":
        raise ValueError(
            f"data={data!r} holds conversations, which python -m train.evaluate does not score yet; a chat model's "
            "val loss and exact match are in its training log (task=instruct)"
        )
    if meta is not None and layout(meta) == "pairs" and kind == "gpt":
        raise ValueError(
            f"data={data!r} holds input/target pairs, which score a t5 checkpoint; give a gpt a "
            "document dataset or file=<text file>"
        )
    return source, info, meta, split, text, num_bytes


def _score_documents(
    model: nn.Module,
    tokenizer: Any,
    tokens: np.ndarray,
    from_file: bool,
    num_bytes: int,
    stride: int | None,
    batch_size: int,
    ctx: contextlib.AbstractContextManager,
    progress: bool = False,
) -> dict[str, Any]:
    """A gpt over every token (score_text); a t5 by span corruption (a file is one document, and ends with eot as
    a prepared one does)."""
    if model.config.kind == "gpt":
        return score_text(model, tokenizer, tokens, num_bytes, stride, batch_size, ctx, progress)
    tokens = np.append(tokens, tokenizer.eot_id) if from_file else tokens
    start_id = _start_id(model, tokenizer)
    T = model.config.block_size
    scores = score_span_corruption(model, tokens, tokenizer, T, start_id, batch_size, ctx, progress=progress)
    return {**scores, "method": "span corruption", "bytes": None, "bpb": None, "bpb_note": f"null: {NO_BPB_SPAN}"}


def _write_out(out: str, result: dict[str, Any]) -> None:
    """The result as JSON in out=, atomically; a failed write is a one-line error and leaves the file as it was."""
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    except OSError as e:  # disk full ...: the file as it was (written atomically); name it
        raise ValueError(f"cannot write out={out!r}: {e.strerror or e}; the file is unchanged") from e


def summary(result: dict[str, Any]) -> str:
    """The human-readable line printed before the JSON."""
    what = result["file"] if result["file"] is not None else f"{result['data']} ({result['split']})"
    step = f", step {result['step']}" if result["step"] is not None else ""
    bpb = f"{result['bpb']:.4f} bits/byte" if result["bpb"] is not None else "bits/byte n/a"
    return (
        f"{result['kind']}{step} on {what}: loss {result['loss']:.4f} nats/token | ppl {result['ppl']:.2f} | "
        f"{bpb} | {result['tokens']:,} tokens scored ({result['method']})"
    )


def _dataset_arg(arg: str) -> str:
    """data=<directory> (or a sweep of directories) as dataset=...: data= itself selects a data config."""
    key, sep, value = arg.partition("=")
    if key == "data" and sep and not all(is_data_config(v) for v in value.split(",")):
        return f"dataset={value}"
    return arg


def main(argv: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Entry point of `nanoloom evaluate` / `python -m train.evaluate`: per evaluation, the summary and the JSON line.
    Returns the result dict (with -m, the list of them)."""
    from nanoloom.cli import run_command  # Hydra: the entry point's business, not the scoring's

    args = [_dataset_arg(a) for a in (sys.argv[1:] if argv is None else argv)]

    def body(cfg: EvaluateConfig) -> dict[str, Any]:
        result = evaluate_checkpoint(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
        print(summary(result))
        print(json.dumps(result), flush=True)
        return result

    results = run_command(
        "evaluate", EvaluateConfig, body, args, USAGE, schemas=SCHEMAS, sweeps=True, register=register_data_schema
    )
    multirun = any(a in ("-m", "--multirun") for a in args)
    return results if multirun else (results[0] if results else {})


SCHEMAS = {"": EvaluateConfig, "data": DataConfig}  # where "did you mean" looks for a mistyped key


if __name__ == "__main__":
    main()
