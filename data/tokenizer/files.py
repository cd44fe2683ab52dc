"""Tokenizer files, read and written as plain JSON/text: tokenizer.json, tokenizer_config.json, vocab.json, merges.txt.

Writing: the tokenizer.json of a gpt2/byte/char/bpe tokenizer (tokenizer_json), a Hugging Face tokenizer.json made to
encode as nanoloom does (embedded_tokenizer_json), GPT-2-format vocab.json + merges.txt, and tokenizer_config.json.
Reading: the vocabulary and decoder of any tokenizer.json, the tokenizer.json of a model folder (converted by
transformers, imported lazily, when the folder has only spiece.model or vocab.json + merges.txt), and whether a folder
holds GPT-2's own vocabulary. GPT-2's byte-level alphabet (bytes_to_unicode of its encoder.py) is defined here once.
Special ids appended after a vocabulary are written where base.SpecialLayout puts them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from data.tokenizer.base import EOT_TEXT, SENTINEL_PATTERN, SpecialLayout, sentinel_text
from data.tokenizer.gpt2 import GPT2_EOT_ID, GPT2_VOCAB_SIZE, gpt2_files, gpt2_vocab_and_merges, merge_lines

# ----------------------------------------------------------------------------------------------------------------
# GPT-2's byte-level alphabet


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (printable Latin-1 bytes map to themselves).

    Bytes that are printable Latin-1 (0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF) stand for themselves; the other 68 bytes are
    shifted to code points 256 and up, in order.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


def byte_level_chars() -> dict[str, int]:
    """bytes_to_unicode() inverted: the stand-in character of each byte -> the byte."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


# ----------------------------------------------------------------------------------------------------------------
# reading any tokenizer.json


def json_vocab(data: dict[str, Any]) -> dict[str, int]:
    """Token text -> id of a tokenizer.json: its model's vocabulary and its added tokens."""
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel
        ids = dict(vocab)
    elif isinstance(vocab, list):  # Unigram (SentencePiece): [piece, score] pairs, the id is the position
        ids = {piece[0]: i for i, piece in enumerate(vocab)}
    else:
        ids = {}
    ids.update({t["content"]: t["id"] for t in data.get("added_tokens") or []})
    return ids


def json_merges(model: dict[str, Any]) -> list[str]:
    """A BPE model's merge rules as "a b" lines ("a b" or ["a", "b"] in the file)."""
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def native_sentinels(vocab: dict[str, int]) -> int:
    """How many sentinels ("<extra_id_0>", "<extra_id_1>" ...) a vocabulary holds itself."""
    n = 0
    while sentinel_text(n) in vocab:
        n += 1
    return n


def decoder_types(decoder: dict[str, Any] | None) -> list[str]:
    """The decoder types of a tokenizer.json decoder, Sequence decoders flattened."""
    if not decoder:
        return []
    if decoder.get("type") == "Sequence":
        return [t for d in decoder.get("decoders", []) for t in decoder_types(d)]
    return [decoder.get("type", "")]


def adds_tokens(processor: dict[str, Any] | None) -> bool:
    """Whether a tokenizer.json post-processor inserts tokens (bos/eos/cls/sep) rather than only fixing offsets."""
    if not processor:
        return False
    if processor.get("type") == "Sequence":
        return any(adds_tokens(p) for p in processor.get("processors", []))
    return processor.get("type") in ("TemplateProcessing", "BertProcessing", "RobertaProcessing")


# ----------------------------------------------------------------------------------------------------------------
# writing tokenizer.json


def added_token(token_id: int, content: str, special: bool) -> dict[str, Any]:
    """An added_tokens entry of a tokenizer.json (matched verbatim, no normalization)."""
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def appended_tokens(layout: SpecialLayout) -> list[dict[str, Any]]:
    """The added_tokens entries of the ids a layout appends after a vocabulary (sentinels, then FIM ids, then chat
    ids). Chat ids are written non-special, as sentinels are: with split_special_tokens (special text is plain text,
    as nanoloom encodes it), transformers' apply_chat_template still finds them in the text its template renders."""
    chat = set(layout.chat_ids or ())
    return [added_token(i, text, special and i not in chat) for i, text, special in layout.tokens()]


def bpe_model(vocab: dict[str, int], merges: list[str]) -> dict[str, Any]:
    """The "model" of a tokenizer.json: a BPE with these ids and merge rules, no unknown token."""
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": merges,
    }


def eos_template(eot_id: int, eot_text: str = EOT_TEXT, bos: tuple[int, str] | None = None) -> dict[str, Any]:
    """Post-processor appending end-of-text to every input, as nanoloom ends every T5 encoder input; with bos (id,
    text), also starting it, as BART's inputs are framed: <s> text </s>."""
    eot = {"SpecialToken": {"id": eot_text, "type_id": 0}}
    start = [{"SpecialToken": {"id": bos[1], "type_id": 0}}] if bos is not None else []
    special = {eot_text: {"id": eot_text, "ids": [eot_id], "tokens": [eot_text]}}
    if bos is not None:
        special[bos[1]] = {"id": bos[1], "ids": [bos[0]], "tokens": [bos[1]]}
    return {
        "type": "TemplateProcessing",
        "single": [*start, {"Sequence": {"id": "A", "type_id": 0}}, eot],
        "pair": [*start, {"Sequence": {"id": "A", "type_id": 0}}, eot, {"Sequence": {"id": "B", "type_id": 0}}, eot],
        "special_tokens": special,
    }


def _byte_level(use_regex: bool = True) -> dict[str, Any]:
    """GPT-2's byte-level pre-tokenizer (use_regex: its word-splitting regex) or decoder."""
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def tokenizer_json(tokenizer: Any, encoder_input: bool) -> dict[str, Any]:
    """A `tokenizers` library tokenizer.json that encodes and decodes exactly like a gpt2/byte/char/bpe tokenizer.

    encoder_input: append end-of-text to every input (T5 encoders). End-of-text is an added special token,
    sentinel i ("<extra_id_i>") an added non-special one, so decode(skip_special_tokens=True) keeps sentinels.
    """
    if tokenizer.name in ("gpt2", "bpe"):  # byte-level BPEs: ours splits text with its own regex (bpe.py)
        vocab, merges = tokenizer.merges()
        pre = tokenizer.pre_tokenizer() if tokenizer.name == "bpe" else _byte_level()
        model, dec = bpe_model(vocab, merges), _byte_level()
    elif tokenizer.name == "byte":  # every byte one symbol: a BPE without merges over GPT-2's byte characters
        model, pre, dec = bpe_model(byte_level_chars(), []), _byte_level(use_regex=False), _byte_level()
    elif tokenizer.name == "char":  # no pre-tokenizer: the whole text is one word, split into its characters
        model, pre, dec = bpe_model({c: i for i, c in enumerate(tokenizer.chars)}, []), None, {"type": "Fuse"}
    else:
        raise ValueError(f"no tokenizer.json for the {tokenizer.name!r} tokenizer")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added_token(tokenizer.eot_id, EOT_TEXT, special=True), *appended_tokens(tokenizer.layout)],
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": eos_template(tokenizer.eot_id) if encoder_input else None,
        "decoder": dec,
        "model": model,
    }


def embedded_tokenizer_json(
    spec: dict[str, Any], encoder_input: bool, bos: str | None = None
) -> tuple[str, str | None]:
    """A spec's embedded tokenizer.json made to encode as nanoloom does, and the text of its end-of-text token.

    Unchanged where it already does: sentinels become ordinary (non-special) added tokens, the spec's appended
    sentinels and FIM ids are added after the vocabulary (SpecialLayout), and the post-processor appends end-of-text
    for T5 encoders (and starts with bos, BART's "<s>", when given) and adds nothing for GPTs.
    """
    text = spec["tokenizer_json"]
    try:
        original = json.loads(text) if isinstance(text, str) else text
        data = json.loads(text) if isinstance(text, str) else json.loads(json.dumps(text))
    except json.JSONDecodeError as e:
        raise ValueError(f"the checkpoint's embedded tokenizer.json is not valid JSON: {e}") from None
    added = data.get("added_tokens") or []
    for token in added:  # sentinel text is matched while other special text is read as text (split_special_tokens)
        if SENTINEL_PATTERN.fullmatch(token.get("content", "")):
            token["special"] = False
    vocab = json_vocab(data)
    native = native_sentinels(vocab)
    # a vocabulary's own FIM tokens are already in it: the spec says fim only when they were appended
    layout = SpecialLayout(
        max(vocab.values(), default=-1) + 1,
        max(int(spec.get("sentinels", 0)), native),
        bool(spec.get("fim")),
        native,
        chat=bool(spec.get("chat")),
    )
    added += appended_tokens(layout)
    if added:
        data["added_tokens"] = added
    eot_id = spec.get("eot_id")
    eos = next((t for t, i in vocab.items() if i == eot_id), None) if eot_id is not None else None
    if encoder_input and eos is not None:
        start = (vocab[bos], bos) if bos is not None and bos in vocab else None
        data["post_processor"] = eos_template(eot_id, eos, start)
    elif not encoder_input and adds_tokens(data.get("post_processor")):
        data["post_processor"] = None
    if data == original:
        return (text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, indent=2)), eos
    return json.dumps(data, ensure_ascii=False, indent=2), eos


# ----------------------------------------------------------------------------------------------------------------
# writing tokenizer_config.json, vocab.json and merges.txt


def tokenizer_config(
    tokenizer_class: str, eos: str | None, max_length: int, encoder_input: bool, added: list[dict] | None = None
) -> dict[str, Any]:
    """tokenizer_config.json: end-of-text as bos/eos/pad, nothing prepended, exact decoding, the added tokens."""
    config: dict[str, Any] = {"tokenizer_class": tokenizer_class}
    if eos is not None:
        config.update(bos_token=eos, eos_token=eos, pad_token=eos)
    config.update(
        add_bos_token=False,
        add_eos_token=encoder_input,  # T5 encoder inputs end with end-of-text
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,  # decode returns exactly the text of the ids
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: GPT-2 would embed them
    )
    if added is not None:
        config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    return config


def vocab_files() -> dict[str, str]:
    """GPT-2's own vocab.json + merges.txt, byte for byte (the slow GPT2Tokenizer's files of the gpt2 tokenizer)."""
    vocab_bpe, encoder_json = gpt2_files()
    return {"vocab.json": encoder_json.read_text(encoding="utf-8"), "merges.txt": vocab_bpe.read_text(encoding="utf-8")}


def first_line(e: Exception, limit: int) -> str:
    """An exception's first line, at most limit characters (its type's name when it has no text)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def dumps(obj: Any) -> str:
    """JSON text as written to a file: indented, UTF-8 characters kept, a final newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# reading a Hugging Face model folder


def folder_tokenizer_json(directory: Path) -> str:
    """The tokenizer.json text of a model folder: its own, else one transformers builds from its other files."""
    path = directory / "tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
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
        raise ValueError(f"{how} (conversion failed: {first_line(e, 160)})") from None
    finally:
        quiet.setLevel(level)


def has_tokenizer_files(directory: Path) -> bool:
    """Whether a model folder holds a tokenizer (tokenizer.json, vocab.json or spiece.model)."""
    return any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "spiece.model"))


def is_gpt2_vocabulary(directory: Path) -> bool:
    """True when the folder's tokenizer (tokenizer.json, or vocab.json + merges.txt) is GPT-2's exactly."""
    try:
        if (directory / "tokenizer.json").is_file():
            data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
            model = data.get("model") or {}
            added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or []}
            if model.get("type") != "BPE" or added not in ({}, {EOT_TEXT: GPT2_EOT_ID}):
                return False
            vocab, merges = model.get("vocab"), json_merges(model)
        elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            if (directory / "added_tokens.json").is_file():
                return False
            vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
            merges = merge_lines((directory / "merges.txt").read_text(encoding="utf-8"))
        else:
            return False
    except (OSError, json.JSONDecodeError, AttributeError, TypeError):
        return False
    gpt2_vocab, gpt2_merges = gpt2_vocab_and_merges()
    return len(vocab or {}) == GPT2_VOCAB_SIZE and vocab == gpt2_vocab and merges == gpt2_merges
