"""Hugging Face model folders and nanoloom tokenizers, both ways: what model/ asks the tokenizer package for.

tokenizer_files(spec, kind, block_size): the tokenizer files python -m model.export writes, so that transformers'
AutoTokenizer encodes and decodes exactly as nanoloom does. load_hf_tokenizer(folder, config): the nanoloom tokenizer
of a Hugging Face model folder (hf:<name or folder>), GPT-2's own vocabulary recognised as the offline gpt2 tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.tokenizer.base import EOT_TEXT, Tokenizer
from data.tokenizer.files import (
    dumps,
    embedded_tokenizer_json,
    has_tokenizer_files,
    is_gpt2_vocabulary,
    json_vocab,
    tokenizer_config,
    tokenizer_json,
    vocab_files,
)
from data.tokenizer.gpt2 import GPT2_VOCAB_SIZE
from data.tokenizer.hf import HFTokenizer
from data.tokenizer.registry import TOKENIZER_NAMES, get_tokenizer, tokenizer_from_spec

NATIVE = ("gpt2", "byte", "char", "bpe")  # the tokenizers whose tokenizer.json nanoloom writes itself


def tokenizer_files(spec: dict[str, Any], kind: str, block_size: int) -> dict[str, str]:
    """File name -> text of the tokenizer files transformers' AutoTokenizer loads for a tokenizer spec.

    gpt2: GPT-2's own vocab.json + merges.txt and tokenizer.json; bpe, byte, char: tokenizer.json (bpe's splits text
    with its own regex, which the slow GPT2Tokenizer would not, so it gets no vocab.json / merges.txt).
    A spec of another tokenizer that embeds a tokenizer.json ("tokenizer_json", e.g. the hf tokenizer's) has it
    written as is, changed only where nanoloom encodes differently (see embedded_tokenizer_json). kind "t5": encoder
    inputs end with end-of-text; "bart": they also start with "<s>".
    """
    encoder_input = kind in ("t5", "bart")
    if spec.get("name") not in NATIVE and "tokenizer_json" in spec:
        text, eos = embedded_tokenizer_json(spec, encoder_input, "<s>" if kind == "bart" else None)
        config = tokenizer_config("PreTrainedTokenizerFast", eos, block_size, encoder_input)
        if kind == "bart":
            config["bos_token"] = "<s>"
        if "<pad>" in json_vocab(json.loads(text)):  # the hf tokenizer leaves <pad> out of decoded text
            config["pad_token"] = "<pad>"
        for key in ("add_bos_token", "add_eos_token"):  # either would make transformers rewrite the post-processor
            config.pop(key)
        config["split_special_tokens"] = True
        if spec.get("chat"):
            from data.chat import CHAT_TEMPLATE

            config["chat_template"] = CHAT_TEMPLATE
        return {"tokenizer.json": text, "tokenizer_config.json": dumps(config)}
    if spec.get("name") not in TOKENIZER_NAMES:
        raise ValueError(
            f"cannot export the checkpoint's {spec.get('name')!r} tokenizer: it is not one of "
            f"{', '.join(TOKENIZER_NAMES)} and its spec embeds no tokenizer_json"
        )
    tokenizer = tokenizer_from_spec(spec)
    data = tokenizer_json(tokenizer, encoder_input)
    files = {"tokenizer.json": json.dumps(data, ensure_ascii=False, indent=2)}
    if tokenizer.name == "gpt2":  # the slow GPT2Tokenizer reads these too
        files.update(vocab_files())
        config = tokenizer_config("GPT2Tokenizer", EOT_TEXT, block_size, encoder_input, data["added_tokens"])
        config.update(unk_token=EOT_TEXT, add_prefix_space=False, errors="replace")
    else:
        config = tokenizer_config("PreTrainedTokenizerFast", EOT_TEXT, block_size, encoder_input, data["added_tokens"])
    # nanoloom encodes the text "<|endoftext|>" as ordinary text; only the id is end-of-text. Sentinels are
    # non-special added tokens, so they are still matched.
    config["split_special_tokens"] = True
    if tokenizer.chat_ids is not None:  # apply_chat_template on the export gives nanoloom's ids (data/chat.py)
        from data.chat import CHAT_TEMPLATE

        config["chat_template"] = CHAT_TEMPLATE
    files["tokenizer_config.json"] = dumps(config)
    return files


def load_hf_tokenizer(directory: str | Path, hf_config: dict[str, Any]) -> Tokenizer:
    """The nanoloom tokenizer of a Hugging Face model folder.

    GPT-2's own vocabulary (or no tokenizer files and GPT-2's vocab_size) -> the offline "gpt2" tokenizer;
    anything else -> an "hf" tokenizer built from the folder's tokenizer.json (converted by transformers when the
    folder has only spiece.model or vocab.json + merges.txt).
    """
    directory = Path(directory)
    vocab_size = hf_config.get("vocab_size")
    has_files = has_tokenizer_files(directory)
    if hf_config.get("model_type") == "gpt2":
        if has_files and is_gpt2_vocabulary(directory):
            return get_tokenizer("gpt2")
        if not has_files:
            if vocab_size is not None and GPT2_VOCAB_SIZE <= vocab_size <= 50304:  # 50304: nanoGPT's padded size
                return get_tokenizer("gpt2")
            raise ValueError(
                f"{directory} has no tokenizer.json and its vocab_size={vocab_size} is not GPT-2's "
                f"({GPT2_VOCAB_SIZE}); copy the tokenizer.json the model was trained with into the folder"
            )
    # The config's eos is the model's end of text; GPT-2 configs carry 50256 even for other vocabularies, so an id
    # outside the model's vocabulary is ignored and the tokenizer's "</s>" or "<|endoftext|>" is used.
    eos = hf_config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    valid = isinstance(eos, int) and vocab_size is not None and 0 <= eos < vocab_size
    return HFTokenizer.from_directory(directory, eot_id=eos if valid else None)
