"""Text -> tokenized shards: `<cache_dir>/<name>-<tokenizer>-<hash12>/` with train.bin, val.bin and meta.json.

A .bin file is a flat array of token ids (uint16, or uint32 when the vocabulary needs it) in which every document is
followed by eot_id, memory-mapped by the loader as in nanoGPT. Pair corpora (meta.json "layout": "pairs") write
<split>_pairs.bin instead, each input and each target followed by eot_id, plus <split>_pairs.idx: a uint64 (N, 4)
array of (input start, input length, target start, target length) in tokens, lengths counting the eot. A pair
corpus with a conversation (a .jsonl line's `messages`; "layout": "conversations") writes <split>_turns.bin, each
turn's content followed by eot_id, <split>_turns.idx, a uint64 (M, 3) array of (start, length, role) per turn, and
<split>_chats.idx, a uint64 (N, 2) array of (first turn, number of turns) per conversation; its pairs are
conversations of a user turn and the assistant's reply.
With data.fim_rate > 0, that share of the train documents is rearranged to fill-in-the-middle order (data/fim.py) and
the tokenizer gets its FIM ids (tokenizer.with_fim(), recorded in meta.json); val is never rearranged.
The hash covers the bytes of every source file, the tokenizer and the split parameters: re-running with nothing
changed returns at once, and any change gives a new directory. Writes are atomic (temp dir + os.replace), so a
crash never leaves a dataset that looks complete; the temp dir a killed preparation leaves (.tmp-<dataset>@<host>-
<pid>-<random>) is deleted by the next preparation into the same cache_dir once its process is gone.
CLI: `python -m data.prepare data=<shakespeare|python-code|tinystories|text|demo|pairs|python-docstrings|
instructions|chat> [...]`; a user error is one `error: ...` line (exit status 2), and NANOLOOM_DEBUG=1 (or
HYDRA_FULL_ERROR=1) shows its traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from data.config import DataConfig
from data.corpora import CORPORA_VERSION, Conversation, Document, Pair, load_documents, load_pairs, source_hashes
from data.fim import fim_arrays, fim_plan
from data.tokenizer import BPE_VERSION, BPETokenizer, CharTokenizer, Tokenizer, get_tokenizer
from data.tokenizer.base import CHAT_ROLES
from nanoloom.files import config_dir, host_name, pid_alive

logger = logging.getLogger(__name__)

FORMAT = "nanoloom-data"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
META = "meta.json"
# The DataConfig fields that change the prepared tokens (num_workers only changes the speed).
CONTENT_FIELDS = (
    "corpora", "tokenizer", "paths", "extensions", "jsonl_field", "include_tests",
    "hub_dataset", "hub_files", "max_documents", "val_fraction", "split_seed",
)  # fmt: skip
# ... and, for pair corpora only (so the keys of document datasets prepared before them stay the same):
PAIR_FIELDS = ("input_field", "target_field", "prefix", "pairs_direction")
# ... and fim_rate only when > 0 (so datasets without fill-in-the-middle keep their keys).
FIM_FIELDS = ("fim_rate",)
# ... and these only where they apply: the bpe vocabulary's size, corpus weights. (data.source needs no entry: the
# source hashes name the files, shipped or the hub's.)
BPE_FIELDS = ("vocab_size",)
WEIGHT_FIELDS = ("weights",)
WEIGHT_STREAM = 3  # tags the corpus weights' seed apart from the split shuffle's and fim_rate's
FIM_STREAM = 2  # tags the fill-in-the-middle plan's seed apart from the split shuffle's (split_seed alone)
PAIRS_INDEX_COLUMNS = ("input_start", "input_length", "target_start", "target_length")
TURNS_INDEX_COLUMNS = ("start", "length", "role")  # role: its index in CHAT_ROLES
CHATS_INDEX_COLUMNS = ("first_turn", "turns")
CHUNK_CHARS = 1 << 22  # characters tokenized per batch: bounds memory, paces the progress bar
# a preparation's temp dir in cache_dir: .tmp-<dataset>@<host>-<pid>-<8 hex> (without @<host>: from before hosts)
_TEMP_DIR = re.compile(r"\.tmp-[^@/]+(?:@(?P<host>[^@/]+))?-(?P<pid>\d+)-[0-9a-f]{8}")

CONFIG_DIR = config_dir()  # for the CLI


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: uint16 up to 65536 ids, else uint32."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token files")


def content_config(cfg: DataConfig) -> dict[str, Any]:
    """The DataConfig fields that decide the prepared tokens, by name."""
    fields = CONTENT_FIELDS + (PAIR_FIELDS if cfg.is_pairs else ()) + (FIM_FIELDS if cfg.fim_rate > 0 else ())
    fields += BPE_FIELDS if cfg.tokenizer == "bpe" else ()
    fields += WEIGHT_FIELDS if cfg.weights else ()
    return {f: getattr(cfg, f) for f in fields}


def fingerprint(cfg: DataConfig, hashes: dict[str, str], tokenizer: Tokenizer | None = None) -> str:
    """sha256 naming a prepared dataset: source contents, parsing and file format versions, content fields (and
    the given tokenizer's spec for data.tokenizer=model, the bpe trainer's version for data.tokenizer=bpe)."""
    key = {
        "format_version": FORMAT_VERSION,
        "corpora_version": CORPORA_VERSION,
        "sources": hashes,
        "config": content_config(cfg),
    }
    if tokenizer is not None:
        key["tokenizer"] = tokenizer.spec()
    if cfg.tokenizer == "bpe":  # how the vocabulary is trained decides the tokens too
        key["bpe_version"] = BPE_VERSION
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def dataset_name(cfg: DataConfig, key: str) -> str:
    """Directory name of a prepared dataset: <name>-<tokenizer>-<hash12>."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.name) or "data"
    return f"{name}-{cfg.tokenizer}-{key[:12]}"


# ----------------------------------------------------------------------------------------------------------------
# train/val split


def split_tail(text: str, val_fraction: float) -> tuple[str, str]:
    """(head, tail) of one text: the tail is its last val_fraction of characters, cut at the nearest line start."""
    if len(text) < 2:
        raise ValueError(f"the corpus is one document of {len(text)} character(s): too short for a train/val split")
    target = len(text) - max(1, math.ceil(len(text) * val_fraction))  # where the tail would start
    # A line start c (0 < c < len, text[c-1] == "\n") closest to target; without one, cut mid-line.
    after = text.find("\n", target - 1, len(text) - 1)
    before = text.rfind("\n", 0, target - 1)
    starts = [i + 1 for i in (after, before) if i >= 0]
    cut = min(starts, key=lambda c: abs(c - target)) if starts else target
    return text[:cut], text[cut:]


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Train and val documents, both non-empty and each in corpus order.

    Documents whose corpus fixes their split (tinystories' train/valid files) keep it. The others are split in
    units: a document's group (a module's functions) or the document alone, and each document when all share one
    group. The units are shuffled with `seed` and the first round(n * val_fraction) of them (at least one, at most
    n - 1) go to val. When there is only one document, its tail (the last val_fraction of its characters, cut at a
    line boundary when there is one) becomes the val document and its head the train document.
    """
    train = [d for d in docs if d.split == "train"]
    val = [d for d in docs if d.split == "val"]
    free = [i for i, d in enumerate(docs) if d.split is None]
    unit_of: dict[int, str | int] = {i: docs[i].group or i for i in free}  # a group's name, or the document's index
    if len(set(unit_of.values())) < 2:
        unit_of = {i: i for i in free}  # all in one group: its documents are the units
    units = list(dict.fromkeys(unit_of.values()))  # in order of first appearance
    if len(free) == 1:
        doc = docs[free[0]]
        head, tail = split_tail(doc.text, val_fraction)
        train.append(Document(head, f"{doc.source}[:{len(head)}]", "train", doc.corpus))
        val.append(Document(tail, f"{doc.source}[{len(head)}:]", "val", doc.corpus))
    elif free:
        n_val = min(len(units) - 1, max(1, round(len(units) * val_fraction)))
        val_units = {units[k] for k in np.random.default_rng(seed).permutation(len(units))[:n_val].tolist()}
        train = [d for i, d in enumerate(docs) if d.split == "train" or (i in unit_of and unit_of[i] not in val_units)]
        val = [d for i, d in enumerate(docs) if d.split == "val" or (i in unit_of and unit_of[i] in val_units)]
    for split, split_docs in (("train", train), ("val", val)):
        if not split_docs:
            raise ValueError(f"the {split} split has no documents; give more text (or a validation file)")
    return train, val


def weigh_documents(docs: list[Document], corpora: list[str], weights: list[float], seed: int) -> list[Document]:
    """Train documents with each corpus weighted: weight w gives every document of that corpus floor(w) copies and
    a seeded share frac(w) of them one more (so 0.25 keeps a quarter, 2.5 writes each twice and half of them
    thrice). The result is in corpus order; the copies of a document follow it."""
    if not weights:
        return docs
    rng = np.random.default_rng((seed, WEIGHT_STREAM))
    out: list[Document] = []
    for corpus, weight in zip(corpora, weights):
        mine = [d for d in docs if d.corpus == corpus]
        whole, frac = int(weight), weight - int(weight)
        extra = np.zeros(len(mine), dtype=bool)
        extra[rng.permutation(len(mine))[: round(frac * len(mine))]] = True
        for d, more in zip(mine, extra):
            out += [d] * (whole + int(more))
    if not out:
        raise ValueError(f"data.weights={list(weights)} leave the train split without documents; raise them")
    return out


def split_pairs(pairs: list[P], val_fraction: float, seed: int) -> tuple[list[P], list[P]]:
    """Train and val pairs (or conversations), both non-empty and each in corpus order; the unit of the split is a
    pair's group.

    The groups (a jsonl line, a stdlib module) are shuffled with `seed` and the first round(n * val_fraction) of
    them (at least one, at most n - 1) go to val, so val pairs come from groups train never sees. A pair whose
    corpus fixed its split (p.split: the instructions' held-out items) stays there.
    """
    free = [p for p in pairs if p.split is None]
    groups = list(dict.fromkeys(p.group for p in free))  # in order of first appearance
    val_groups: set[str] = set()
    if len(groups) < 2 and len(free) == len(pairs):
        unit = "pair" if len(groups) == len(pairs) else "group (module)"
        raise ValueError(
            f"the pairs corpus has {len(groups)} {unit}(s); a train/val split needs at least 2: give more pairs"
        )
    if len(groups) >= 2:
        n_val = min(len(groups) - 1, max(1, round(len(groups) * val_fraction)))
        val_groups = {groups[i] for i in np.random.default_rng(seed).permutation(len(groups))[:n_val].tolist()}
    is_val = [p.split == "val" or (p.split is None and p.group in val_groups) for p in pairs]
    return [p for p, v in zip(pairs, is_val) if not v], [p for p, v in zip(pairs, is_val) if v]


# ----------------------------------------------------------------------------------------------------------------
# tokenize and write

T = TypeVar("T")
P = TypeVar("P", Pair, Conversation)


def _chunks(items: list[T], sizes: list[int], max_chars: int) -> list[list[T]]:
    """items in consecutive chunks of about max_chars characters (sizes[i]: characters of items[i])."""
    chunks: list[list[T]] = [[]]
    size = 0
    for item, n in zip(items, sizes):
        if chunks[-1] and size + n > max_chars:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += n
    return chunks


def write_tokens(
    path: Path,
    docs: list[Document],
    tokenizer: Tokenizer,
    num_workers: int,
    progress: bool,
    desc: str,
    fim_cuts: np.ndarray | None = None,
) -> int:
    """Tokenize docs into path (each followed by eot_id) and return the number of tokens written.

    fim_cuts: fim_plan()'s (N, 2) rows; document i with a row (lo, hi) is written in fill-in-the-middle order.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    total = 0
    chars = sum(len(d.text) for d in docs)
    # disable=None: tqdm shows the bar only on a terminal.
    bar = tqdm(total=chars, unit="char", unit_scale=True, desc=desc, disable=None if progress else True)
    start = 0  # index of the chunk's first document
    with open(path, "wb") as f, bar:
        for chunk in _chunks(docs, [len(d.text) for d in docs], CHUNK_CHARS):
            texts = [d.text for d in chunk]
            # gpt2: tiktoken threads on num_workers cores; byte/char: vectorised numpy, faster than any process pool.
            if fim_cuts is None:
                arrays = tokenizer.encode_arrays(texts, num_threads=num_workers)
            else:
                arrays = fim_arrays(tokenizer, texts, fim_cuts[start : start + len(chunk)], num_threads=num_workers)
            start += len(chunk)
            tokens = np.concatenate([part for a in arrays for part in (a.astype(dtype), eot)])
            f.write(tokens.tobytes())
            total += len(tokens)
            bar.update(sum(len(d.text) for d in chunk))
        f.flush()
        os.fsync(f.fileno())
    return total


def write_pairs(
    bin_path: Path, idx_path: Path, pairs: list[Pair], tokenizer: Tokenizer, num_workers: int, progress: bool, desc: str
) -> dict[str, int]:
    """Tokenize pairs into bin_path (input, eot, target, eot per pair) and their (N, 4) index into idx_path.

    Returns the counts meta.json records: tokens, pairs, and the longest input and target (eot included).
    """
    dtype = token_dtype(tokenizer.vocab_size)
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    sizes = [len(p.input) + len(p.target) for p in pairs]
    counts = {"tokens": 0, "pairs": len(pairs), "input_tokens_max": 0, "target_tokens_max": 0}
    bar = tqdm(total=sum(sizes), unit="char", unit_scale=True, desc=desc, disable=None if progress else True)
    with open(bin_path, "wb") as fb, open(idx_path, "wb") as fi, bar:
        for chunk in _chunks(pairs, sizes, CHUNK_CHARS):
            inputs = tokenizer.encode_arrays([p.input for p in chunk], num_threads=num_workers)
            targets = tokenizer.encode_arrays([p.target for p in chunk], num_threads=num_workers)
            in_len = np.array([len(a) + 1 for a in inputs], dtype=np.uint64)  # + 1: the eot after each side
            tgt_len = np.array([len(a) + 1 for a in targets], dtype=np.uint64)
            # Pair i occupies [in_start, in_start + in_len) then [tgt_start, tgt_start + tgt_len).
            ends = counts["tokens"] + np.cumsum(in_len + tgt_len, dtype=np.uint64)
            in_start = ends - tgt_len - in_len
            index = np.stack([in_start, in_len, in_start + in_len, tgt_len], axis=1)  # (N, 4) uint64
            tokens = np.concatenate(
                [part for a, b in zip(inputs, targets) for part in (a.astype(dtype), eot, b.astype(dtype), eot)]
            )
            fb.write(tokens.tobytes())
            fi.write(index.tobytes())
            counts["tokens"] += len(tokens)
            counts["input_tokens_max"] = max(counts["input_tokens_max"], int(in_len.max()))
            counts["target_tokens_max"] = max(counts["target_tokens_max"], int(tgt_len.max()))
            bar.update(sum(len(p.input) + len(p.target) for p in chunk))
        for f in (fb, fi):
            f.flush()
            os.fsync(f.fileno())
    return counts


def write_conversations(
    bin_path: Path,
    turns_path: Path,
    chats_path: Path,
    chats: list[Conversation],
    tokenizer: Tokenizer,
    num_workers: int,
    progress: bool,
    desc: str,
) -> dict[str, int]:
    """Tokenize conversations into bin_path (each turn's content, then eot), their turns' (M, 3) index (start,
    length, role) into turns_path and the (N, 2) index of each conversation's turns into chats_path.

    Returns the counts meta.json records: tokens, conversations, turns and the longest conversation (eots included).
    """
    dtype = token_dtype(tokenizer.vocab_size)
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    sizes = [sum(len(c) for _, c in chat.turns) for chat in chats]
    counts = {"tokens": 0, "conversations": len(chats), "turns": 0, "conversation_tokens_max": 0}
    bar = tqdm(total=sum(sizes), unit="char", unit_scale=True, desc=desc, disable=None if progress else True)
    with open(bin_path, "wb") as fb, open(turns_path, "wb") as ft, open(chats_path, "wb") as fc, bar:
        for chunk in _chunks(chats, sizes, CHUNK_CHARS):
            turns = [turn for chat in chunk for turn in chat.turns]
            arrays = tokenizer.encode_arrays([content for _, content in turns], num_threads=num_workers)
            lengths = np.array([len(a) + 1 for a in arrays], dtype=np.uint64)  # + 1: the eot after each turn
            starts = counts["tokens"] + np.cumsum(lengths, dtype=np.uint64) - lengths
            roles = np.array([CHAT_ROLES.index(role) for role, _ in turns], dtype=np.uint64)
            num_turns = np.array([len(chat.turns) for chat in chunk], dtype=np.uint64)
            first = counts["turns"] + np.cumsum(num_turns, dtype=np.uint64) - num_turns
            fb.write(np.concatenate([part for a in arrays for part in (a.astype(dtype), eot)]).tobytes())
            ft.write(np.stack([starts, lengths, roles], axis=1).tobytes())  # (M, 3) uint64
            fc.write(np.stack([first, num_turns], axis=1).tobytes())  # (N, 2) uint64
            per_chat = np.add.reduceat(lengths, (first - counts["turns"]).astype(np.int64))
            counts["tokens"] += int(lengths.sum())
            counts["turns"] += len(turns)
            counts["conversation_tokens_max"] = max(counts["conversation_tokens_max"], int(per_chat.max()))
            bar.update(sum(len(c) for _, c in turns))
        for f in (fb, ft, fc):
            f.flush()
            os.fsync(f.fileno())
    return counts


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------------------------
# the prepared dataset


def load_meta(data_dir: str | Path) -> dict[str, Any]:
    """meta.json of a prepared dataset (tokenizer spec, dtype, vocab_size, per-split counts, sources, config)."""
    path = Path(data_dir) / META
    if not path.is_file():
        raise FileNotFoundError(
            f"{data_dir} is not a prepared dataset (no {META}); run python -m data.prepare data=<name>"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} v{FORMAT_VERSION} file (found {meta.get('format')} "
            f"v{meta.get('format_version')}); prepare the data again with this nanoloom version"
        )
    return meta


def layout(meta: dict[str, Any]) -> str:
    """The kind of a prepared dataset: documents, pairs or conversations (no layout entry, from before pairs
    existed: documents)."""
    return meta.get("layout", "documents")


def is_complete(data_dir: Path, key: str | None = None) -> bool:
    """True when data_dir holds a whole dataset (with fingerprint key, if given): meta.json and full-size files."""
    try:
        meta = load_meta(data_dir)
    except (OSError, ValueError):
        return False
    if key is not None and meta.get("fingerprint") != key:
        return False
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        sizes = {}
        for split in SPLITS:
            info = meta["splits"][split]
            sizes[info["file"]] = info["tokens"] * itemsize
            index_bytes = np.dtype(np.uint64).itemsize
            if layout(meta) == "pairs":
                sizes[info["index"]] = info["pairs"] * len(PAIRS_INDEX_COLUMNS) * index_bytes
            elif layout(meta) == "conversations":
                sizes[info["index"]] = info["turns"] * len(TURNS_INDEX_COLUMNS) * index_bytes
                sizes[info["chats"]] = info["conversations"] * len(CHATS_INDEX_COLUMNS) * index_bytes
    except (KeyError, TypeError):
        return False
    return all((data_dir / name).is_file() and (data_dir / name).stat().st_size == size for name, size in sizes.items())


def _publish(tmp: Path, final: Path, key: str) -> None:
    """Move a finished temp dir to its final name (atomic); tolerate a concurrent preparer that got there first."""
    if final.exists() and not is_complete(final, key):
        shutil.rmtree(final)  # a damaged dataset (files edited or truncated by hand): rebuild it
    try:
        os.replace(tmp, final)
    except OSError:
        if not is_complete(final, key):  # anything but "another process just published the same dataset"
            raise


def _tokenizer_for(
    cfg: DataConfig, texts: list[str], train_texts: list[str], progress: bool, given: Tokenizer | None = None
) -> tuple[Tokenizer, float | None]:
    """cfg's tokenizer (without sentinels), and the seconds it took to train (None: nothing was trained).

    char: the vocabulary is every character of texts, so no split has unknown characters. bpe: trained on the train
    split alone (as weighted by data.weights: the mixture the model trains on), so val stays held out.
    data.tokenizer=model: the tokenizer of the model being fine-tuned, given by the trainer.
    """
    if cfg.tokenizer == "model":
        return given, None
    if cfg.tokenizer == "char":
        return CharTokenizer.from_texts(texts), None
    if cfg.tokenizer != "bpe":
        return get_tokenizer(cfg.tokenizer), None
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(train_texts, cfg.vocab_size, progress=progress)
    seconds = time.perf_counter() - start
    if tokenizer.vocab_size < cfg.vocab_size:
        logger.warning(
            "warning: the train split has too few distinct byte pairs for data.vocab_size=%d: the bpe vocabulary "
            "stops at %d ids (give more text or a smaller data.vocab_size)",
            cfg.vocab_size,
            tokenizer.vocab_size,
        )
    return tokenizer, seconds


def _write_documents(
    cfg: DataConfig, tmp: Path, progress: bool, desc: str, given: Tokenizer | None = None
) -> tuple[Tokenizer, dict[str, Any], float | None]:
    """train.bin and val.bin of a document dataset into tmp; returns the tokenizer, the per-split counts and the
    seconds the tokenizer took to train (None when none was trained).

    With cfg.fim_rate > 0 the tokenizer has FIM ids and train document i is rearranged as fim_plan() decides from
    (split_seed, FIM_STREAM) and i; val documents never are.
    """
    docs = load_documents(cfg)
    train_docs, val_docs = split_documents(docs, cfg.val_fraction, cfg.split_seed)
    train_docs = weigh_documents(train_docs, cfg.corpora, cfg.weights, cfg.split_seed)
    texts = [d.text for d in docs]
    tokenizer, seconds = _tokenizer_for(cfg, texts, [d.text for d in train_docs], progress, given)
    if cfg.fim_rate > 0:
        tokenizer = tokenizer.with_fim()
    splits = {}
    for split, split_docs in zip(SPLITS, (train_docs, val_docs)):
        cuts = None
        if split == "train" and cfg.fim_rate > 0:
            cuts = fim_plan([len(d.text) for d in split_docs], cfg.fim_rate, (cfg.split_seed, FIM_STREAM))
        args = (tokenizer, cfg.num_workers, progress, f"{desc} {split}", cuts)
        tokens = write_tokens(tmp / f"{split}.bin", split_docs, *args)
        splits[split] = {"file": f"{split}.bin", "tokens": tokens, "documents": len(split_docs)}
        if cuts is not None:
            splits[split]["fim_documents"] = int((cuts[:, 0] >= 0).sum())
    return tokenizer, splits, seconds


def _write_pairs(
    cfg: DataConfig, tmp: Path, progress: bool, desc: str, given: Tokenizer | None = None
) -> tuple[Tokenizer, dict[str, Any], float | None]:
    """<split>_pairs.bin/.idx of a pair dataset into tmp; returns what _write_documents returns. A corpus with a
    conversation (a .jsonl line's `messages`) is written as conversations instead (_write_conversations)."""
    pairs = load_pairs(cfg)
    if any(isinstance(p, Conversation) for p in pairs):
        chats = [p if isinstance(p, Conversation) else Conversation.of(p) for p in pairs]
        return _write_conversations(cfg, tmp, progress, desc, given, chats)
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.split_seed)
    texts = [t for p in pairs for t in (p.input, p.target)]
    train_texts = [t for p in train_pairs for t in (p.input, p.target)]
    tokenizer, seconds = _tokenizer_for(cfg, texts, train_texts, progress, given)
    splits = {}
    for split, split_pairs_ in zip(SPLITS, (train_pairs, val_pairs)):
        files = {"file": f"{split}_pairs.bin", "index": f"{split}_pairs.idx"}
        args = (tokenizer, cfg.num_workers, progress, f"{desc} {split}")
        counts = write_pairs(tmp / files["file"], tmp / files["index"], split_pairs_, *args)
        splits[split] = {**files, **counts, "groups": len({p.group for p in split_pairs_})}
    return tokenizer, splits, seconds


def _write_conversations(
    cfg: DataConfig, tmp: Path, progress: bool, desc: str, given: Tokenizer | None, chats: list[Conversation]
) -> tuple[Tokenizer, dict[str, Any], float | None]:
    """<split>_turns.bin, <split>_turns.idx and <split>_chats.idx of a conversation dataset into tmp (split as pairs
    are); returns what _write_documents returns."""
    train, val = split_pairs(chats, cfg.val_fraction, cfg.split_seed)
    texts = [content for chat in chats for _, content in chat.turns]
    train_texts = [content for chat in train for _, content in chat.turns]
    tokenizer, seconds = _tokenizer_for(cfg, texts, train_texts, progress, given)
    splits = {}
    for split, part in zip(SPLITS, (train, val)):
        files = {"file": f"{split}_turns.bin", "index": f"{split}_turns.idx", "chats": f"{split}_chats.idx"}
        args = (tokenizer, cfg.num_workers, progress, f"{desc} {split}")
        counts = write_conversations(*(tmp / name for name in files.values()), part, *args)
        splits[split] = {**files, **counts, "groups": len({c.group for c in part})}
    return tokenizer, splits, seconds


def prepare(cfg: DataConfig, cache_dir: str | Path, progress: bool = True, tokenizer: Tokenizer | None = None) -> Path:
    """Tokenize cfg's corpora into <cache_dir>/<name>-<tokenizer>-<hash12>/ (reused when it exists) and return it.

    Documents: train.bin and val.bin (every document followed by eot_id; split by split_documents). Pairs:
    <split>_pairs.bin and <split>_pairs.idx (split by split_pairs). Both: meta.json. A char tokenizer's vocabulary
    is built from all the text, so val holds no unknown characters. The tokenizer never has sentinels: a T5 loader
    adds them (tokenizer.with_sentinels), they never occur in prepared text. data.fim_rate > 0: see _write_documents.
    """
    if cfg.tokenizer == "model" and tokenizer is None:
        raise ValueError(
            "data.tokenizer=model means the tokenizer of the model being fine-tuned: train with init_from=<model>, "
            "or choose data.tokenizer=gpt2|char|byte"
        )
    if cfg.tokenizer == "model" and cfg.fim_rate > 0 and tokenizer.fim_ids is None:
        raise ValueError(
            f"data.fim_rate={cfg.fim_rate} needs fill-in-the-middle ids, which the {tokenizer.name} tokenizer of the "
            "model being fine-tuned lacks (its vocabulary is fixed): set data.fim_rate=0"
        )
    tokenizer = tokenizer if cfg.tokenizer == "model" else None
    cache_dir = Path(cache_dir).expanduser()
    remove_stale_temp_dirs(cache_dir)
    hashes = source_hashes(cfg)
    key = fingerprint(cfg, hashes, tokenizer)
    final = cache_dir / dataset_name(cfg, key)
    if is_complete(final, key):
        return final

    tmp = cache_dir / f".tmp-{final.name}@{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # unlike tempfile.mkdtemp, honours the umask: a shared cache stays readable
        write = _write_pairs if cfg.is_pairs else _write_documents
        tokenizer, splits, tokenizer_seconds = write(cfg, tmp, progress, final.name, tokenizer)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": cfg.name,
            "fingerprint": key,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "layout": _layout_of(splits, cfg),
            "tokenizer": tokenizer.spec(),
            **({"tokenizer_train_seconds": round(tokenizer_seconds, 3)} if tokenizer_seconds is not None else {}),
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": token_dtype(tokenizer.vocab_size).name,
            "splits": splits,
            "sources": hashes,
            "config": content_config(cfg),
        }
        _write_json(tmp / META, meta)  # written last: meta.json + full-size .bin files = complete
        _publish(tmp, final, key)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise ValueError(
            f"cannot write the prepared dataset {final}: {e.strerror}; nothing of it was kept. Free space, or set "
            "paths.cache_dir to a disk with room"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful publish
    return final


def _layout_of(splits: dict[str, Any], cfg: DataConfig) -> str:
    """What the writer wrote: conversations (turn indexes), pairs or documents."""
    if "chats" in splits["train"]:
        return "conversations"
    return "pairs" if cfg.is_pairs else "documents"


def remove_stale_temp_dirs(cache_dir: Path) -> None:
    """Delete the temp dirs that preparations killed before they finished (kill -9, power loss) left in cache_dir:
    those of this host whose process is gone. Another preparation's, running here or on a machine sharing the cache,
    stays."""
    if not cache_dir.is_dir():
        return
    for path in cache_dir.glob(".tmp-*"):
        m = _TEMP_DIR.fullmatch(path.name)
        if m and m["host"] in (None, host_name()) and not pid_alive(int(m["pid"])) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# CLI


def register_schema() -> None:
    """Register DataConfig in Hydra's ConfigStore as data/schema, the base of every configs/data/*.yaml."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="data", name="schema", node=DataConfig)


def summary(data_dir: Path, meta: dict[str, Any]) -> str:
    """Human-readable lines about a prepared dataset."""
    lines = [f"dataset   {data_dir.resolve()}"]
    for split in SPLITS:
        info = meta["splits"][split]
        if layout(meta) == "conversations":
            longest = f"(longest {info['conversation_tokens_max']:,} tokens)"
            counts = f"{info['conversations']:>9,} conversations of {info['turns']:,} turns"
            lines.append(f"{split:<9} {info['tokens']:>13,} tokens  {counts}  {longest}")
        elif layout(meta) == "pairs":
            longest = f"(longest input {info['input_tokens_max']:,}, target {info['target_tokens_max']:,} tokens)"
            lines.append(f"{split:<9} {info['tokens']:>13,} tokens  {info['pairs']:>9,} pairs  {longest}")
        else:
            fim = f"  ({info['fim_documents']:,} fill-in-the-middle)" if "fim_documents" in info else ""
            lines.append(f"{split:<9} {info['tokens']:>13,} tokens  {info['documents']:>9,} documents{fim}")
    trained = f", trained in {meta['tokenizer_train_seconds']:.1f}s" if "tokenizer_train_seconds" in meta else ""
    lines.append(f"tokenizer {meta['tokenizer']['name']} (vocab_size {meta['vocab_size']}, {meta['dtype']}{trained})")
    return "\n".join(lines)


def main() -> None:
    """`python -m data.prepare data=<name> [data.<key>=...] [paths.cache_dir=...]`: prepare, print dir and counts."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from nanoloom.cli import debug_enabled

    register_schema()
    _check_overrides(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prepare")  # absolute: runs in-process
    def _main(dict_cfg: DictConfig) -> None:
        try:
            cfg = OmegaConf.to_object(dict_cfg.data)
            data_dir = prepare(cfg, dict_cfg.paths.cache_dir, progress=True)
            meta = load_meta(data_dir)
        except (ValueError, OSError) as e:  # user errors (bad text, missing or unreadable files): one line
            if debug_enabled():
                raise
            system = isinstance(e, OSError) and e.errno is not None  # raised by the OS, not with a nanoloom message
            print(f"error: {_os_error_message(e) if system else e}", file=sys.stderr)
            sys.exit(2)
        print(summary(data_dir, meta))

    _main()


def _os_error_message(e: OSError) -> str:
    """One line for an OSError of the system ([Errno 13] Permission denied: ...), naming the path and what to check."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}; check that the path exists and is readable (data.paths, paths.cache_dir)"


def _check_overrides(args: list[str]) -> None:
    """Compose before Hydra runs, so a mistyped key or bad value is one `error:` line (exit 2), not a report."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from nanoloom.cli import config_error_message, debug_enabled

    if any(a.startswith("-") for a in args) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="prepare"):
            OmegaConf.to_object(compose("prepare", overrides=args).data)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        if debug_enabled():
            raise
        print(f"error: {config_error_message(e, {'data': DataConfig})}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
