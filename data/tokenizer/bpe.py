"""bpe: a byte-level BPE trained on the user's corpus at data preparation.

Pre-tokenization is GPT-2's byte-level scheme with the split regex of GPT-4's cl100k (as Llama 3 uses it): line breaks
stay apart from the indentation after them and digits go in groups of up to three. With GPT-2's own regex "\n    return"
is one piece "\n   " + " return", so a prompt that ends at a line break (a function head and its docstring) ends
with a "\n" token that training only ever saw before a line at column 0: the model then writes no body.

Training and encoding run in the Hugging Face `tokenizers` library (imported lazily); spec() embeds the trained
tokenizer.json, so a checkpoint needs no other file. Ids 0..255 are the single bytes, then the merges in the order they
were learned, then "<|endoftext|>" as the last id of the base vocabulary (GPT-2's layout), so sentinels and FIM ids
follow as for every other tokenizer (base.SpecialLayout). Exports write its tokenizer.json (files.py), with this
pre-tokenizer; GPT-2's slow vocab.json + merges.txt format cannot express it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from data.config import MIN_BPE_VOCAB
from data.tokenizer.base import EOT_BYTES, EOT_TEXT, SentinelVocab
from data.tokenizer.files import byte_level_chars, first_line, json_merges


def _load_backend(tokenizer_json: str) -> Any:
    """The `tokenizers` library's Tokenizer of a tokenizer.json text (imported here: only bpe and hf need it)."""
    try:
        from tokenizers import Tokenizer as BackendTokenizer
    except ImportError:
        raise ImportError("the bpe and hf tokenizers need the tokenizers library: pip install tokenizers") from None
    if not isinstance(tokenizer_json, str):
        raise ValueError(f"the bpe tokenizer needs the text of a tokenizer.json, not {type(tokenizer_json).__name__}")
    try:
        return BackendTokenizer.from_str(tokenizer_json)
    except Exception as e:  # the library raises its own exception type for malformed files
        raise ValueError(f"cannot read this tokenizer.json: {first_line(e, 200)}") from None


BPE_VERSION = 1  # bump when training changes the vocabulary it learns: prepared bpe datasets are keyed by it

# cl100k's split regex as Llama 3's tokenizer.json spells it (the `tokenizers` library reads it with Oniguruma)
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"  # words with a leading mark, digits
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # punctuation, line breaks, other whitespace
)


class BPETokenizer(SentinelVocab):
    """A byte-level BPE (pre-tokenized as described above) trained on a corpus (`BPETokenizer.train`); runs in
    `tokenizers`.

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
        if self.eot_id is None or self.eot_id != self.vocab_size - 1:
            raise ValueError(
                f"this tokenizer.json is not a nanoloom bpe vocabulary: {EOT_TEXT} is id {self.eot_id}, not the last "
                f"id ({self.vocab_size - 1}); train one with BPETokenizer.train"
            )
        chars = byte_level_chars()
        tokens = [backend.id_to_token(i) for i in range(self.eot_id)]
        if any(t is None or not t or any(c not in chars for c in t) for t in tokens):
            raise ValueError(
                "this tokenizer.json is not a nanoloom bpe vocabulary: its tokens are not byte-level text; "
                "train one with BPETokenizer.train"
            )
        self._token_bytes = [bytes(chars[c] for c in t) for t in tokens] + [EOT_BYTES]
        self.tokenizer_json = tokenizer_json
        self._backend = backend

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int, progress: bool = False) -> BPETokenizer:
        """Learn vocab_size - 1 byte-level BPE tokens (and end-of-text) from texts; deterministic.

        A corpus with fewer distinct pairs than that ends with a smaller vocabulary (see vocab_size of the result).
        """
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as BackendTokenizer

        if not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB:
            raise ValueError(
                f"a bpe vocab_size of {vocab_size} cannot hold the 256 byte tokens plus end-of-text; "
                f"set data.vocab_size >= {MIN_BPE_VOCAB}"
            )
        backend = BackendTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes as GPT-2's characters
            ]
        )
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

    def pre_tokenizer(self) -> dict[str, Any]:
        """The tokenizer.json "pre_tokenizer" entry this vocabulary was trained with (and encodes with)."""
        return json.loads(self.tokenizer_json)["pre_tokenizer"]

    def merges(self) -> tuple[dict[str, int], list[str]]:
        """The vocabulary (byte-level token text -> id, end-of-text included, as GPT-2's encoder.json) and the merge
        rules, in order."""
        model = json.loads(self.tokenizer_json)["model"]
        return {**model["vocab"], EOT_TEXT: self.eot_id}, json_merges(model)

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
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "tokenizer_json": self.tokenizer_json,
        }

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}{self._sentinel_repr()})"
