"""Tokenizers behind one small protocol, and every tokenizer file format nanoloom reads or writes.

gpt2 (GPT-2's BPE through tiktoken, fully offline), byte, char, bpe (a byte-level BPE trained on the user's corpus)
and hf (any Hugging Face tokenizer.json, T5's SentencePiece vocabulary among them). Every tokenizer has one special
id, `eot_id` ("<|endoftext|>"); T5 sentinels (`with_sentinels(n)`) and the fill-in-the-middle ids (`with_fim()`)
follow a native vocabulary as base.SpecialLayout lays them out. `spec()` is a JSON-serialisable description that
`tokenizer_from_spec` turns back into an identical tokenizer; checkpoints and prepared datasets store it.
Modules: base (protocol, id checks, the special layout), gpt2, simple (byte, char), bpe, hf, registry (by name, from a
spec), files (tokenizer.json, tokenizer_config.json, vocab.json, merges.txt: read and write), hf_files (a Hugging Face
model folder: the files an export writes, the tokenizer an import reads). model/ imports only this package, and only
inside functions.
"""

from data.tokenizer.base import (
    DEFAULT_SENTINELS,
    EOT_BYTES,
    EOT_TEXT,
    FIM_MIDDLE_TEXT,
    FIM_PREFIX_TEXT,
    FIM_SUFFIX_TEXT,
    FIM_TEXTS,
    SENTINEL_PATTERN,
    STARCODER_FIM_TEXTS,
    IdSequence,
    SentinelVocab,
    SpecialLayout,
    Tokenizer,
)
from data.tokenizer.bpe import BPE_VERSION, BPETokenizer
from data.tokenizer.files import byte_level_chars, bytes_to_unicode, is_gpt2_vocabulary, tokenizer_json
from data.tokenizer.gpt2 import (
    GPT2_EOT_ID,
    GPT2_PAT_STR,
    GPT2_VOCAB_SIZE,
    GPT2Tokenizer,
    gpt2_files,
    load_gpt2_encoding,
)
from data.tokenizer.hf import HFTokenizer
from data.tokenizer.hf_files import load_hf_tokenizer, tokenizer_files
from data.tokenizer.registry import TOKENIZER_NAMES, get_tokenizer, tokenizer_from_spec
from data.tokenizer.simple import ByteTokenizer, CharTokenizer

__all__ = [
    "DEFAULT_SENTINELS",
    "EOT_BYTES",
    "EOT_TEXT",
    "FIM_MIDDLE_TEXT",
    "FIM_PREFIX_TEXT",
    "FIM_SUFFIX_TEXT",
    "FIM_TEXTS",
    "GPT2_EOT_ID",
    "GPT2_PAT_STR",
    "GPT2_VOCAB_SIZE",
    "SENTINEL_PATTERN",
    "STARCODER_FIM_TEXTS",
    "TOKENIZER_NAMES",
    "BPE_VERSION",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "HFTokenizer",
    "IdSequence",
    "SentinelVocab",
    "SpecialLayout",
    "Tokenizer",
    "byte_level_chars",
    "bytes_to_unicode",
    "get_tokenizer",
    "gpt2_files",
    "is_gpt2_vocabulary",
    "load_gpt2_encoding",
    "load_hf_tokenizer",
    "tokenizer_files",
    "tokenizer_from_spec",
    "tokenizer_json",
]
