"""The two tokenizers without a vocabulary file: UTF-8 bytes (ids 0..255, eot 256) and the characters of a corpus.

Both put end-of-text last in their native vocabulary; sentinels and fill-in-the-middle ids follow it (base.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from data.tokenizer.base import EOT_BYTES, EOT_TEXT, SentinelVocab


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
