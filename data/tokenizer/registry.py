"""Tokenizers by name and from a spec: get_tokenizer("gpt2" | "byte" | "char" | "bpe" | "hf"), tokenizer_from_spec.

A spec (tokenizer.spec()) is what checkpoints and prepared datasets store; tokenizer_from_spec rebuilds the identical
tokenizer from it, so sampling never needs the corpus.
"""

from __future__ import annotations

from typing import Any

from data.tokenizer.base import Tokenizer
from data.tokenizer.bpe import BPETokenizer
from data.tokenizer.gpt2 import GPT2Tokenizer
from data.tokenizer.hf import HFTokenizer
from data.tokenizer.simple import ByteTokenizer, CharTokenizer

# name -> (class, (the keyword it cannot be built without, the error that says how to get it) or None)
_CLASSES: dict[str, tuple[type, tuple[str, str] | None]] = {
    "gpt2": (GPT2Tokenizer, None),
    "byte": (ByteTokenizer, None),
    "char": (CharTokenizer, ("chars", "the char tokenizer needs its vocabulary: get_tokenizer('char', chars=...) "
                                      "or CharTokenizer.from_texts(texts)")),
    "bpe": (BPETokenizer, ("tokenizer_json", "the bpe tokenizer needs its vocabulary: get_tokenizer('bpe', "
                                             "tokenizer_json=<its text>) or BPETokenizer.train(texts, vocab_size)")),
    "hf": (HFTokenizer, ("tokenizer_json", "the hf tokenizer needs its tokenizer.json: get_tokenizer('hf', "
                                           "tokenizer_json=<its text>) or HFTokenizer.from_directory(<model folder>)")),
}  # fmt: skip
TOKENIZER_NAMES = tuple(_CLASSES)


def get_tokenizer(name: str, sentinels: int = 0, fim: bool = False, chat: bool = False, **kwargs: Any) -> Tokenizer:
    """Tokenizer by name: "gpt2", "byte", "char", "bpe" or "hf".

    gpt2 takes optional vocab_bpe=, encoder_json= paths; char needs chars=; bpe needs tokenizer_json= (its trained
    vocabulary); hf needs tokenizer_json= (the text of a Hugging Face tokenizer.json) and takes an optional eot_id=.
    sentinels=n gives the tokenizer n T5 sentinel ids, fim=True the fill-in-the-middle ids after them and chat=True
    the chat ids after those (see base.SpecialLayout).
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZER_NAMES)}")
    cls, needs = _CLASSES[name]
    if needs is not None and needs[0] not in kwargs:
        raise ValueError(needs[1])
    tokenizer: Tokenizer = cls(**kwargs)
    tokenizer = tokenizer.with_sentinels(sentinels) if sentinels else tokenizer
    tokenizer = tokenizer.with_fim() if fim else tokenizer
    return tokenizer.with_chat() if chat else tokenizer


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
    appended = {
        "sentinels": int(spec.get("sentinels", 0)),
        "fim": bool(spec.get("fim")),
        "chat": bool(spec.get("chat")),
    }
    tokenizer = get_tokenizer(name, **appended, **kwargs)
    for key in ("vocab_size", "eot_id"):
        if key in spec and spec[key] != getattr(tokenizer, key):
            raise ValueError(
                f"tokenizer spec has {key}={spec[key]} but the rebuilt {name} tokenizer has "
                f"{getattr(tokenizer, key)}; the spec was written by an incompatible nanoloom version"
            )
    return tokenizer
