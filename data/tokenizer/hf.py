"""hf: a Hugging Face tokenizer.json through the `tokenizers` library (imported lazily): T5's SentencePiece
vocabulary, GPT-2 variants, anything a model folder brings (files.py reads the folder).

The vocabulary's own sentinels and fill-in-the-middle tokens are used where it has them; the missing ones are
appended after it where base.SpecialLayout puts them, as for every other tokenizer.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from data.tokenizer.base import (
    DEFAULT_SENTINELS,
    EOT_TEXT,
    FIM_TEXTS,
    SENTINEL_PATTERN,
    STARCODER_FIM_TEXTS,
    IdSequence,
    SpecialLayout,
    check_sentinel_count,
    id_list,
    sentinel_text,
)
from data.tokenizer.files import byte_level_chars, decoder_types, folder_tokenizer_json, native_sentinels

BYTE_FALLBACK_PATTERN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte-fallback pieces


def _read_backend(tokenizer_json: str) -> tuple[Any, dict[str, Any]]:
    """(the tokenizers library's Tokenizer, the parsed JSON) of a tokenizer.json text, set to encode every special
    token's text as plain text (sentinels aside), never truncate and never pad."""
    try:
        from tokenizers import Tokenizer as BackendTokenizer
    except ImportError:
        raise ImportError(
            "the hf tokenizer needs the tokenizers library: pip install tokenizers (or pip install 'nanoloom[hf]')"
        ) from None
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
    return backend, data


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

    def __init__(
        self,
        tokenizer_json: str,
        eot_id: int | None = None,
        sentinels: int = 0,
        fim: bool = False,
        chat: bool = False,
    ) -> None:
        from tokenizers import AddedToken  # _read_backend checked the library is there

        self.tokenizer_json = tokenizer_json
        backend, data = _read_backend(tokenizer_json)
        self._decoder_types = decoder_types(data.get("decoder"))

        vocab = backend.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError("the hf tokenizer got a tokenizer.json with an empty vocabulary")
        base = max(vocab.values()) + 1
        native = native_sentinels(vocab)
        own_fim = next((texts for texts in (FIM_TEXTS, STARCODER_FIM_TEXTS) if all(t in vocab for t in texts)), None)
        # What is missing is appended where SpecialLayout puts it: sentinels, then the FIM ids.
        layout = SpecialLayout(base, max(sentinels, native), fim and own_fim is None, first=native, chat=chat)
        appended = layout.tokens()
        for kind in (False, True):  # sentinels (not special), then FIM tokens (special): id order
            backend.add_tokens([AddedToken(t, special=kind, normalized=False) for _, t, s in appended if s == kind])
        misplaced = [text for token_id, text, _ in appended if backend.token_to_id(text) != token_id]
        if misplaced:
            raise ValueError(
                f"cannot append {', '.join(misplaced[:3])} after this vocabulary of {base} ids "
                "(it already holds some of them out of order)"
            )
        self.layout = layout
        self.fim_ids: tuple[int, int, int] | None = (
            tuple(vocab[t] for t in own_fim) if own_fim is not None else layout.fim_ids
        )
        self._fim_appended = layout.fim
        self.chat_ids: tuple[int, int, int, int] | None = layout.chat_ids
        self._backend = backend
        self.vocab_size = layout.vocab_size
        # index i: the id of "<extra_id_i>"
        self.sentinel_ids = [vocab[sentinel_text(i)] for i in range(native)] + [
            layout.sentinel_id(i) for i in range(native, layout.sentinels)
        ]
        self._sentinel_set = frozenset(self.sentinel_ids)
        self.num_sentinels = len(self.sentinel_ids)
        self._appended = layout.appended_sentinels
        self.pad_id = vocab.get("<pad>")
        self.bos_id = vocab.get("<s>")  # BART's (and RoBERTa's) start of every input; None when the vocabulary has none
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
        return cls(folder_tokenizer_json(Path(directory)), eot_id=eot_id)

    # Encoding. The library runs batches on all cores itself; num_threads is accepted for the protocol.
    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def encode_arrays(self, texts: list[str], num_threads: int = 2) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.uint32) for ids in self.encode_batch(texts, num_threads)]

    # Decoding
    def decode(self, ids: IdSequence) -> str:
        ids = [t for t in id_list(ids, self) if t != self.pad_id]
        return self._backend.decode(ids, skip_special_tokens=False)

    def decode_bytes(self, ids: IdSequence) -> bytes:
        table = self._token_bytes
        return b"".join(table[t] for t in id_list(ids, self))

    @functools.cached_property
    def _token_bytes(self) -> list[bytes]:
        """The bytes each id contributes to a decoded text (b"" for padding and unused ids); built on first use."""
        tokens = [self._backend.id_to_token(i) for i in range(self.vocab_size)]
        if "ByteLevel" in self._decoder_types:  # GPT-2 style: every character stands for one byte
            chars = byte_level_chars()
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
        if check_sentinel_count(n) <= self.num_sentinels:
            return self
        return HFTokenizer(
            self.tokenizer_json, eot_id=self.eot_id, sentinels=n, fim=self._fim_appended, chat=self.chat_ids is not None
        )

    def with_fim(self) -> HFTokenizer:
        """This tokenizer when it has fill-in-the-middle ids already; else one with them after its sentinels."""
        if self.fim_ids is not None:
            return self
        chat = self.chat_ids is not None
        return HFTokenizer(self.tokenizer_json, eot_id=self.eot_id, sentinels=self.num_sentinels, fim=True, chat=chat)

    def with_chat(self) -> HFTokenizer:
        """This tokenizer when it has the chat ids already; else one with them after its sentinels and FIM ids."""
        if self.chat_ids is not None:
            return self
        fim = self._fim_appended
        return HFTokenizer(self.tokenizer_json, eot_id=self.eot_id, sentinels=self.num_sentinels, fim=fim, chat=True)

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
        if self.chat_ids is not None:
            spec["chat"] = True
        spec["tokenizer_json"] = self.tokenizer_json
        return spec

    def __repr__(self) -> str:
        fim = (", fim=True" if self.fim_ids is not None else "") + (", chat=True" if self.chat_ids is not None else "")
        return f"HFTokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, sentinels={self.num_sentinels}{fim})"
