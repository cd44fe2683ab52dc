"""What every nanoloom tokenizer is: the Tokenizer protocol, the id checks, and the special-id layout.

Every tokenizer maps plain text to ids and back and has one special id, `eot_id` ("<|endoftext|>"), written after
each document; gpt2, byte, char and bpe place it last in their native vocabulary. T5 sentinels ("<extra_id_i>") and
then the three fill-in-the-middle ids (prefix, middle, suffix; data/fim.py) are appended after a native vocabulary:
SpecialLayout says where, once, for every tokenizer and for the file writers (files.py).
Like "<|endoftext|>", special-token text in user data encodes as ordinary text.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

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
# Chat ids (data/chat.py), in id order after the FIM ids: a turn is <|role|> content <|end|>
CHAT_ROLES = ("system", "user", "assistant")
CHAT_END_TEXT = "<|end|>"
CHAT_TEXTS = (*(f"<|{role}|>" for role in CHAT_ROLES), CHAT_END_TEXT)

IdSequence = Sequence[int] | np.ndarray  # also accepts torch tensors (anything with .tolist())


def sentinel_text(i: int) -> str:
    """The text of sentinel i: "<extra_id_i>"."""
    return f"<extra_id_{i}>"


@runtime_checkable
class Tokenizer(Protocol):
    """What every nanoloom tokenizer provides."""

    name: str  # gpt2 | byte | char | bpe | hf
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

    @property
    def chat_ids(self) -> tuple[int, int, int, int] | None:
        """Chat (system, user, assistant, end of turn) ids, after the FIM ids; None without them (see with_chat)."""
        ...

    def with_chat(self) -> Tokenizer:
        """A tokenizer of the same kind with the chat ids (after any sentinels and FIM ids); idempotent."""
        ...

    def sentinel_id(self, i: int) -> int:
        """Id of sentinel i ("<extra_id_i>"), 0 <= i < num_sentinels."""
        ...

    def is_sentinel(self, token_id: int) -> bool:
        """True when token_id is one of the sentinel ids."""
        ...


def id_list(ids: IdSequence, tokenizer: Tokenizer) -> list[int]:
    """ids as a list of Python ints, checked against the vocabulary."""
    out = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
    if out and (min(out) < 0 or max(out) >= tokenizer.vocab_size):
        bad = next(i for i in out if i < 0 or i >= tokenizer.vocab_size)
        raise ValueError(
            f"token id {bad} is outside the vocabulary of the {tokenizer.name} tokenizer "
            f"(0..{tokenizer.vocab_size - 1}); mask ids >= vocab_size before decoding"
        )
    return out


def check_sentinel_count(n: Any) -> int:
    """n when it is a valid number of sentinels, else a one-line ValueError."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of sentinels must be an integer >= 0, not {n!r}")
    return n


# ----------------------------------------------------------------------------------------------------------------
# The special layout


class SpecialLayout(NamedTuple):
    """The special ids appended after a native vocabulary of `base` ids (end-of-text is inside it).

    [0, base) the native vocabulary; [base, base + len(appended sentinels)) sentinels first..n-1; then, with fim, the
    three fill-in-the-middle ids prefix, middle, suffix. `first` is the number of sentinels the native vocabulary
    holds itself (Hugging Face T5's, numbered downward from its top); nanoloom's own tokenizers have none, so their
    <extra_id_0> is the first id after the base vocabulary.
    """

    base: int  # ids of the native vocabulary, end-of-text included
    sentinels: int = 0  # sentinels in all: the vocabulary's own (first) and the appended ones
    fim: bool = False  # True: the FIM ids follow the appended sentinels
    first: int = 0  # sentinels the native vocabulary holds; appended ones are first..sentinels-1
    chat: bool = False  # True: the four chat ids (system, user, assistant, end of turn) follow the FIM ids

    @property
    def appended_sentinels(self) -> int:
        """How many sentinels come after the native vocabulary."""
        return max(self.sentinels - self.first, 0)

    @property
    def vocab_size(self) -> int:
        """Ids in all: the native vocabulary and the appended ones."""
        return self.base + self.appended_sentinels + (len(FIM_TEXTS) if self.fim else 0) + self._chat_count

    @property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """The appended (prefix, middle, suffix) ids; None without fim."""
        if not self.fim:
            return None
        start = self.base + self.appended_sentinels
        return start, start + 1, start + 2

    @property
    def _chat_count(self) -> int:
        return len(CHAT_TEXTS) if self.chat else 0

    @property
    def chat_ids(self) -> tuple[int, int, int, int] | None:
        """The appended (system, user, assistant, end of turn) ids; None without chat."""
        if not self.chat:
            return None
        start = self.base + self.appended_sentinels + (len(FIM_TEXTS) if self.fim else 0)
        return start, start + 1, start + 2, start + 3

    def sentinel_id(self, i: int) -> int:
        """Id of appended sentinel i (first <= i < sentinels)."""
        return self.base + i - self.first

    def tokens(self) -> list[tuple[int, str, bool]]:
        """(id, text, special) of every appended id, in id order: sentinels are not special (text is matched),
        FIM tokens are (text never produces them)."""
        out = [(self.sentinel_id(i), sentinel_text(i), False) for i in range(self.first, self.sentinels)]
        if self.fim_ids is not None:
            out += [(i, text, True) for i, text in zip(self.fim_ids, FIM_TEXTS)]
        if self.chat_ids is not None:
            out += [(i, text, True) for i, text in zip(self.chat_ids, CHAT_TEXTS)]
        return out

    def text(self, token_id: int) -> str:
        """The text of an appended id (base <= token_id < vocab_size)."""
        k = token_id - self.base
        if k < self.appended_sentinels:
            return sentinel_text(self.first + k)
        k -= self.appended_sentinels
        if self.fim and k < len(FIM_TEXTS):
            return FIM_TEXTS[k]
        return CHAT_TEXTS[k - (len(FIM_TEXTS) if self.fim else 0)]


# ----------------------------------------------------------------------------------------------------------------
# T5 sentinels and fill-in-the-middle ids for the tokenizers whose native vocabulary nanoloom defines


class SentinelVocab:
    """Special ids after a tokenizer's base vocabulary (gpt2, byte, char, bpe), laid out by SpecialLayout.

    Sentinel i is "<extra_id_i>" in text. Changing the sentinels keeps the FIM ids (moved to after the new sentinels),
    and with_fim() keeps the sentinels. A subclass implements the plain-text methods (_encode, _encode_batch,
    _encode_arrays, _decode_bytes, _spec); the public ones here route sentinel text and special ids around them.
    """

    name: str
    vocab_size: int
    eot_id: int
    num_sentinels: int = 0
    _fim: bool = False  # True: the three FIM ids follow the sentinels
    _chat: bool = False  # True: the four chat ids follow them

    @property
    def layout(self) -> SpecialLayout:
        """Where this tokenizer's sentinels, FIM and chat ids sit."""
        return SpecialLayout(self.base_vocab_size, self.num_sentinels, self._fim, chat=self._chat)

    @property
    def base_vocab_size(self) -> int:
        """Number of ids without the sentinels, FIM and chat ids."""
        appended = len(FIM_TEXTS) if self._fim else 0
        return self.vocab_size - self.num_sentinels - appended - (len(CHAT_TEXTS) if self._chat else 0)

    @property
    def chat_ids(self) -> tuple[int, int, int, int] | None:
        """The chat (system, user, assistant, end of turn) ids, after the FIM ids; None without them (with_chat)."""
        return self.layout.chat_ids

    @property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """Fill-in-the-middle (prefix, middle, suffix) ids, after the sentinels; None without them (see with_fim)."""
        return self.layout.fim_ids

    def with_sentinels(self, n: int = DEFAULT_SENTINELS) -> SentinelVocab:
        """A tokenizer of the same kind with n sentinel ids after the base vocabulary (replacing any it had)."""
        n = check_sentinel_count(n)
        out = copy.copy(self)  # shares the (read-only) encoding tables
        out.vocab_size = self.layout._replace(sentinels=n).vocab_size  # FIM ids move to after the new sentinels
        out.num_sentinels = n
        return out

    def with_fim(self) -> SentinelVocab:
        """A tokenizer of the same kind with the fill-in-the-middle ids (after any sentinels); idempotent."""
        if self._fim:
            return self
        out = copy.copy(self)
        out.vocab_size = self.layout._replace(fim=True).vocab_size
        out._fim = True
        return out

    def with_chat(self) -> SentinelVocab:
        """A tokenizer of the same kind with the chat ids (after any sentinels and FIM ids); idempotent."""
        if self._chat:
            return self
        out = copy.copy(self)
        out.vocab_size = self.layout._replace(chat=True).vocab_size
        out._chat = True
        return out

    def sentinel_id(self, i: int) -> int:
        """Id of sentinel i ("<extra_id_i>"), 0 <= i < num_sentinels."""
        if not 0 <= i < self.num_sentinels:
            raise ValueError(
                f"sentinel {i} does not exist: this {self.name} tokenizer has {self.num_sentinels} sentinels; "
                "build it with tokenizer.with_sentinels(n)"
            )
        return self.layout.sentinel_id(i)

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
            out.append(self.layout.sentinel_id(int(digits)))
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
        ids = id_list(ids, self)
        layout = self.layout
        if max(ids, default=-1) < layout.base:
            return self._decode_bytes(ids)
        parts, run = [], []
        for t in ids:
            if t < layout.base:
                run.append(t)
                continue
            if run:
                parts.append(self._decode_bytes(run))
                run = []
            parts.append(layout.text(t).encode())
        if run:
            parts.append(self._decode_bytes(run))
        return b"".join(parts)

    def spec(self) -> dict[str, Any]:
        spec = self._spec()
        if self.num_sentinels:  # absent when 0: specs of plain tokenizers stay as they always were
            spec["sentinels"] = self.num_sentinels
        if self._fim:  # absent when False, likewise
            spec["fim"] = True
        if self._chat:
            spec["chat"] = True
        return spec

    def _sentinel_repr(self) -> str:
        sentinels = f", sentinels={self.num_sentinels}" if self.num_sentinels else ""
        return sentinels + (", fim=True" if self._fim else "") + (", chat=True" if self._chat else "")

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
