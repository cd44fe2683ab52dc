"""Hugging Face-shaped sampling API: pipeline("text-generation" | "text2text-generation", model=...)(prompt, ...).

Mirrors transformers' TextGenerationPipeline (decoder-only gpt models) and Text2TextGenerationPipeline
(encoder-decoder t5 models): every generation argument of sample.sampling.GenerationConfig under transformers'
names, return_full_text, return_tensors and batch_size, and their output shape, so code written against
transformers ports by changing the import. Generation itself is sample.generate.generate.

Defaults, as transformers has them today: the decoding defaults a checkpoint records (its training task's preset,
or a Hugging Face folder's generation_config.json; model.checkpoint.read_generation_defaults) apply unless a call
overrides them; text-generation then generates max_new_tokens=256 new tokens when no length is given
(transformers #38129), whatever the prompt's length.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from data.chat import check_messages, render
from data.config import check_seed
from data.tokenizer import Tokenizer, get_tokenizer
from model import GPT, T5
from model.checkpoint import (
    is_hf_source,
    load_model,
    read_generation_defaults,
    read_model_json,
    resolve_checkpoint,
)
from model.quant import quantize_int8
from nanoloom.device import inference_dtype, resolve_device
from sample.generate import Completion, generate, model_device, model_kind, prompt_ids, row_seeds
from sample.sampling import GenerationConfig, recorded_controls

CONTROLS = frozenset(f.name for f in dataclasses.fields(GenerationConfig)) - {"do_sample"}
CONTROL_TYPES = {f.name: f.type for f in dataclasses.fields(GenerationConfig)}  # "Optional[int]", "float", ...
# what a control of each annotated type takes, as the error says it
TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "True or False",
    "List[str]": "a string or a list of strings",
    "List[int]": "a list of token ids",
    "List[List[int]]": "a list of lists of token ids",
}
INPUTS = "a string or a non-empty list of strings"
KIND_NAMES = {"gpt": "a decoder-only (gpt) model", "t5": "an encoder-decoder (t5) model",
              "bart": "an encoder-decoder (bart) model"}  # fmt: skip
TASK_OF_KIND = {"gpt": "text-generation", "t5": "text2text-generation", "bart": "text2text-generation"}
DEFAULT_MAX_NEW_TOKENS = 256  # text-generation without a length argument (transformers' pipeline default)


class _GenerationPipeline:
    """What both pipelines share: model/tokenizer checks and the per-prompt generation loop."""

    task = ""
    kind = ""
    default_max_new_tokens: int | None = None  # None: transformers' max_length=20 rule (sample.generate)

    def __init__(
        self, model: GPT | T5, tokenizer: Tokenizer, defaults: dict[str, object] | None = None, compile: bool = False
    ) -> None:
        kind = model_kind(model)
        if TASK_OF_KIND.get(kind) != self.task:
            got = KIND_NAMES.get(kind, f"a {kind!r} model")
            fix = f'use pipeline("{TASK_OF_KIND[kind]}", ...)' if kind in TASK_OF_KIND else "no pipeline supports it"
            raise ValueError(f"{self.task} needs {KIND_NAMES[self.kind]} but got {got}; {fix}")
        self.kind = kind  # the model's own: t5 and bart frame their encoder inputs differently (prompt_ids)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}; "
                "use the tokenizer the model was trained with"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = recorded_controls(defaults, tokenizer)  # the checkpoint's decoding defaults, or {}
        _check_bool("compile", compile)
        self.compile = compile  # every call's one-token decoding step under torch.compile

    @property
    def device(self) -> torch.device:
        """Where the model (and so the generation) runs."""
        return model_device(self.model)

    def __repr__(self) -> str:
        name = getattr(self.tokenizer, "name", type(self.tokenizer).__name__)
        return f"{type(self).__name__}(tokenizer={name!r}, device={str(self.device)!r})"

    def _assistant(self, assistant: object) -> GPT | None:
        """transformers' assistant_model: a draft gpt (a model, or a checkpoint path loaded like the model) with the
        model's tokenizer, or None."""
        if assistant is None or isinstance(assistant, nn.Module):
            return assistant
        if not isinstance(assistant, (str, Path)):
            raise TypeError(f"assistant_model must be a model or a checkpoint path, got {_describe(assistant)}")
        source = assistant if is_hf_source(assistant) else resolve_checkpoint(assistant)
        draft, tokenizer = load_model(source, device=self.device, dtype=next(self.model.parameters()).dtype)
        if tokenizer.spec() != self.tokenizer.spec():
            raise ValueError(f"assistant_model={str(assistant)!r} has another tokenizer; a draft model must share it")
        return draft

    def _generate(
        self,
        text_inputs: str | list[str],
        *,
        do_sample: bool | None,
        return_type: str,
        batch_size: int | None,
        seed: int | None,
        generate_kwargs: dict[str, object],
        prefix: str = "",
        stop_sequence: str | list[str] | None = None,
        streamer: object = None,
        generation_config: object = None,
        clean_up_tokenization_spaces: bool | None = None,
        handle_long_generation: str | None = None,
        logprobs: int | None = None,
    ) -> list[dict[str, object]] | list[list[dict[str, object]]]:
        """Validate the transformers-style arguments, then generate every prompt (in batches of batch_size).

        return_type: "full_text" (prompt + generated text), "new_text" or "tensors" (see _return_type). A chat (a
        list of {role, content} messages, or a list of such lists) is rendered with the chat template and answered:
        "full_text" returns the conversation with the assistant's reply appended, as transformers does."""
        chats, single = _conversations(text_inputs) if self.kind == "gpt" else (None, False)
        prompts, single = ([""] * len(chats), single) if chats is not None else _prompts(text_inputs)
        _check_bool("do_sample", do_sample, optional=True)
        _check_bool("clean_up_tokenization_spaces", clean_up_tokenization_spaces, optional=True)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {_describe(prefix)}")
        if handle_long_generation not in (None, "hole"):
            raise ValueError(f"handle_long_generation={handle_long_generation!r} is not valid; expected None or 'hole'")
        if logprobs is not None:
            logprobs = _whole_number("logprobs", logprobs, "a whole number >= 0 (alternatives per token) or None")
        if batch_size is not None:
            batch_size = _whole_number("batch_size", batch_size, "a whole number >= 1 (or None: all prompts at once)")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1 (or None: all prompts in one batch)")
        if seed is not None:
            seed = _whole_number("seed", seed, "a whole number between 0 and 2**63 - 1 (or None: drawn)")
            check_seed("seed", seed)
        assistant = self._assistant(generate_kwargs.pop("assistant_model", None))
        controls = checked_controls({k: v for k, v in generate_kwargs.items() if k in CONTROLS})
        if stop_sequence is not None:  # transformers' name for stop strings
            stops = checked_controls({"stop_strings": stop_sequence})["stop_strings"]
            controls["stop_strings"] = [*(controls.get("stop_strings") or []), *stops]
        ignored = sorted(k for k in generate_kwargs if k not in CONTROLS)
        if ignored:
            warnings.warn(f"ignoring arguments nanoloom does not use: {', '.join(ignored)}", stacklevel=3)
        if controls.get("max_new_tokens") is not None and controls.get("max_length") is not None:
            warnings.warn(
                f"both max_new_tokens={controls['max_new_tokens']} and max_length={controls['max_length']} are set; "
                "max_new_tokens wins",
                stacklevel=3,
            )
        if chats is not None:  # a tokenizer without chat ids: a ValueError that says so
            chat_ids = [render(self.tokenizer, chat, add_generation_prompt=True)[0] for chat in chats]
        call_defaults = _call_generation_config(generation_config)
        if chats is not None and "eos_token_id" not in controls and "eos_token_id" not in call_defaults:
            controls["eos_token_id"] = [self.tokenizer.chat_ids[-1], self.tokenizer.eot_id]  # a reply ends its turn
        # ValueError names a bad or contradictory control
        config = GenerationConfig(**self._controls(controls, do_sample, call_defaults))
        if seed is None:
            seed = row_seeds(None, 1)[0]  # one draw; every row then gets seed + row, as with an explicit seed
        if chats is not None:
            ids = chat_ids
        else:
            ids = [prompt_ids(self.tokenizer, prefix + p, self.kind) for p in prompts]
        if handle_long_generation == "hole":
            ids = [self._hole(i, config) for i in ids]
        on_token = _streaming(streamer, ids, config.num_return_sequences)
        step = batch_size or len(prompts)
        n = config.num_return_sequences
        outputs = []
        for start in range(0, len(prompts), step):  # row j of the whole call samples with seed + j in any batch
            chunk = prompts[start : start + step]
            outputs += generate(
                self.model,
                self.tokenizer,
                [prefix + p for p in chunk],
                config,
                seed=seed + start * n,
                input_ids=ids[start : start + step],
                output_scores=logprobs is not None,
                top_logprobs=logprobs or 0,
                on_token=on_token,
                assistant_model=assistant,
                compile=self.compile,
            )
        if streamer is not None:
            streamer.end()
        results = [
            [self._record(p, i, c, return_type, bool(clean_up_tokenization_spaces)) for c in cs]
            for p, i, cs in zip(prompts, ids, outputs)
        ]
        if chats is not None and return_type == "full_text":  # the conversation, the assistant's reply appended
            for chat, records in zip(chats, results):
                for record in records:
                    reply = {"role": "assistant", "content": record["generated_text"]}
                    record["generated_text"] = [*chat, reply]
        return results[0] if single else results

    def _hole(self, ids: list[int], config: GenerationConfig) -> list[int]:
        """handle_long_generation="hole" (transformers): a prompt that would not leave room for the new tokens in the
        model's context keeps its last block_size - new tokens, so generation never slides its window."""
        new = config.max_new_tokens
        if new is None:
            new = (config.max_length or 20) - len(ids)
            if new < 0:
                raise ValueError("handle_long_generation='hole' cannot tell how many new tokens are expected")
        block_size = self.model.config.block_size
        if len(ids) + new <= block_size:
            return ids
        keep = block_size - new
        if keep <= 0:
            raise ValueError(
                f"handle_long_generation='hole' leaves no room for the prompt: {new} new tokens need the whole "
                f"context of {block_size}; ask for fewer tokens"
            )
        return ids[-keep:]

    def generation_config(self, controls: dict[str, object], do_sample: bool | None = None) -> GenerationConfig:
        """The GenerationConfig a call with these controls (GenerationConfig's names) decodes with: over the
        checkpoint's recorded defaults, as __call__ builds it (the server's requests use this)."""
        return GenerationConfig(**self._controls(checked_controls(dict(controls)), do_sample))

    def _controls(
        self, given: dict[str, object], do_sample: bool | None, call_defaults: dict[str, object] | None = None
    ) -> dict[str, object]:
        """The call's controls over the checkpoint's defaults, then the pipeline's own defaults.

        A length given in the call replaces the recorded one (an explicit max_length is not beaten by a recorded
        max_new_tokens); no length anywhere: default_max_new_tokens. do_sample: the call's, else False when the call
        asks for beams, else the recorded one (or the call's generation_config's), else True for text-generation
        with num_beams=1 (nanoloom's default; transformers' is False) and False for text2text-generation.
        """
        base = {**self.defaults, **(call_defaults or {})}  # a call's generation_config over the pipeline's
        if "max_new_tokens" in given or "max_length" in given:
            base.pop("max_new_tokens", None), base.pop("max_length", None)
        controls = {**base, **given}
        if controls.get("max_new_tokens") is None and controls.get("max_length") is None:
            controls["max_new_tokens"] = self.default_max_new_tokens
        if do_sample is None:
            beams = int(controls.get("num_beams") or 1) > 1
            if "num_beams" in given and beams:
                do_sample = False
            else:
                do_sample = bool(base.get("do_sample", self.kind == "gpt" and not beams))
        return {**controls, "do_sample": do_sample}

    def _record(self, prompt: str, ids: list[int], c: Completion, return_type: str, clean: bool) -> dict[str, object]:
        """One output as transformers shapes it: generated_text (the prompt first with "full_text"), or with
        "tensors" generated_token_ids (gpt: the ids the model saw, then the generated ones, as transformers'
        generated sequence); logprobs: each generated token with its log-probability and the alternatives."""
        if return_type == "tensors":
            record: dict[str, object] = {"generated_token_ids": (ids if self.kind == "gpt" else []) + c.token_ids}
        else:
            text = clean_up_tokenization(c.text) if clean else c.text
            record = {"generated_text": (prompt if return_type == "full_text" else "") + text}
        if c.logprobs is not None:
            record["logprobs"] = [
                {
                    "token_id": t,
                    "token": self.tokenizer.decode([t]),
                    "logprob": lp,
                    "top_logprobs": [
                        {"token_id": i, "token": self.tokenizer.decode([i]), "logprob": v} for i, v in top.items()
                    ],
                }
                for t, lp, top in zip(c.token_ids, c.logprobs, c.top_logprobs)
            ]
        return record


class TextGenerationPipeline(_GenerationPipeline):
    """Continue prompts with a decoder-only nanoloom model; call it like transformers' text-generation pipeline."""

    task = "text-generation"
    kind = "gpt"
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS

    def __call__(
        self,
        text_inputs: str | list[str],
        *,
        do_sample: bool | None = None,
        return_full_text: bool | None = None,
        return_tensors: bool | None = None,
        return_text: bool | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        prefix: str = "",
        stop_sequence: str | list[str] | None = None,
        streamer: object = None,
        generation_config: object = None,
        clean_up_tokenization_spaces: bool | None = None,
        handle_long_generation: str | None = None,
        logprobs: int | None = None,
        **generate_kwargs: object,
    ) -> list[dict[str, object]] | list[list[dict[str, object]]]:
        """Generate continuations; [{"generated_text": ...}] per prompt, a list of those for a list of prompts.

        Args:
            text_inputs: one prompt or a list of prompts; a list is generated as padded batches whose results equal
                generating each prompt alone. A chat (a list of {"role", "content"} messages, roles system, user and
                assistant, ending with a user turn) or a list of chats, for a model tuned with task=instruct (its
                tokenizer has the chat ids, data/chat.py): the reply is generated after <|assistant|> and ends at
                <|end|>; the output's generated_text is the conversation with {"role": "assistant", "content":
                reply} appended (return_full_text=False: the reply alone), as in transformers. Anything else is a
                TypeError naming what was passed.
            do_sample: True samples, False is greedy (or beam search). None (the default): the checkpoint's
                recorded default, else True with num_beams=1 (nanoloom's default; transformers defaults to False);
                False when the call sets num_beams > 1.
            return_full_text: True (the default) puts the prompt before the generated text, False returns the new
                text alone. return_tensors=True returns {"generated_token_ids": [...]}: the ids the model saw (the
                prefix's and prompt's) and the generated ones, eos included, as transformers' generated sequence.
                return_text=True asks for text (the default). As in transformers, return_full_text, return_tensors
                and return_text exclude each other: giving two is a ValueError.
            batch_size: prompts per batch (None: all at once).
            seed: makes the samples reproducible; output j of the call (prompt-major) samples with seed + j. A whole
                number in [0, 2**63), as every nanoloom seed; None draws one.
            prefix: text put before every prompt for the model (transformers' prefix, e.g. a conditioning passage);
                the returned full text starts with the prompt, not the prefix.
            stop_sequence: a string or a list of strings that end generation (transformers' name for stop_strings).
            streamer: an object with put(ids) and end(), as transformers' TextStreamer and TextIteratorStreamer:
                put first gets the prompt's ids (1, T), then each generated id as a (1,) tensor as soon as it is
                drawn; end() once generation is done. One prompt and one sequence, as transformers requires.
            generation_config: decoding defaults for this call (sample.sampling.GenerationConfig, a dict, or a
                transformers GenerationConfig: its values that differ from transformers' defaults), over the
                checkpoint's recorded ones; the keyword controls still win.
            clean_up_tokenization_spaces: True removes the spaces tokenizers put before punctuation and
                contractions (" ." -> ".", " n't" -> "n't"), as transformers' decode does.
            handle_long_generation: "hole" crops a prompt that leaves no room in the model's context for the new
                tokens to its last block_size - max_new_tokens tokens (transformers' option); None (the default)
                keeps it whole, and generation slides its window past block_size.
            logprobs: k >= 0 adds "logprobs" to each output: per generated token its id, text and log-probability
                under the distribution it was drawn from, and the k most likely alternatives (not with beams).
            **generate_kwargs: every control of sample.sampling.GenerationConfig, with transformers' names and
                defaults, over the checkpoint's recorded ones: max_new_tokens (wins over max_length; the recorded
                value, else 256 when no length is given, at any prompt length), max_length (prompt + new tokens),
                min_new_tokens, num_return_sequences, temperature, top_k,
                top_p, min_p, typical_p, repetition_penalty, presence_penalty, frequency_penalty,
                no_repeat_ngram_size, bad_words_ids, suppress_tokens, eos_token_id, stop_strings, num_beams,
                length_penalty, early_stopping. Other transformers arguments (pad_token_id, truncation, ...) are
                accepted and ignored with a warning, so existing calls run unchanged. A control of the wrong type
                (max_new_tokens="10") is a TypeError naming it; None for one that is never None (temperature, top_p,
                num_beams ...) means not given, as null on the command line.
        """
        return self._generate(
            text_inputs,
            do_sample=do_sample,
            return_type=_return_type(return_full_text, return_tensors, return_text, "full_text"),
            batch_size=batch_size,
            seed=seed,
            generate_kwargs=generate_kwargs,
            prefix=prefix,
            stop_sequence=stop_sequence,
            streamer=streamer,
            generation_config=generation_config,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            handle_long_generation=handle_long_generation,
            logprobs=logprobs,
        )


class Text2TextGenerationPipeline(_GenerationPipeline):
    """Map inputs to outputs with an encoder-decoder (T5, BART) model; call it like transformers' text2text
    pipeline."""

    task = "text2text-generation"
    kind = "t5"

    def __call__(
        self,
        text_inputs: str | list[str],
        *,
        do_sample: bool | None = None,
        return_tensors: bool | None = None,
        return_text: bool | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        stop_sequence: str | list[str] | None = None,
        streamer: object = None,
        generation_config: object = None,
        clean_up_tokenization_spaces: bool | None = None,
        logprobs: int | None = None,
        **generate_kwargs: object,
    ) -> list[dict[str, object]] | list[list[dict[str, object]]]:
        """Generate outputs; [{"generated_text": ...}] per input, a list of those for a list of inputs.

        Args:
            text_inputs: one input or a list of inputs (padded batches, each input encoded with its own mask).
            do_sample: False is greedy or beam search; True samples. None (the default): the checkpoint's recorded
                default, else False (as in transformers).
            return_tensors: {"generated_token_ids": [...]}, the decoder's generated ids, instead of text;
                return_text=True asks for text (the default); the two exclude each other.
            batch_size, seed, stop_sequence, streamer, generation_config, clean_up_tokenization_spaces, logprobs:
                as for text-generation (the streamer's first put gets the encoder input's ids).
            **generate_kwargs: as for text-generation, except that max_length counts output tokens and the decoder
                start token, as in transformers: at most max_length - 1 new tokens; the input is not counted. With
                no length given and none recorded, transformers' max_length=20 applies.
        The generated text is the decoder's output alone; it ends at the tokenizer's end-of-text token.
        """
        return self._generate(
            text_inputs,
            do_sample=do_sample,
            return_type=_return_type(None, return_tensors, return_text, "new_text"),
            batch_size=batch_size,
            seed=seed,
            generate_kwargs=generate_kwargs,
            stop_sequence=stop_sequence,
            streamer=streamer,
            generation_config=generation_config,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            logprobs=logprobs,
        )


def _return_type(full_text: object, tensors: object, text: object, default: str) -> str:
    """transformers' rule: return_full_text, return_tensors and return_text exclude each other; "full_text",
    "new_text" or "tensors" (default when none is given)."""
    for name, value in (("return_full_text", full_text), ("return_tensors", tensors), ("return_text", text)):
        _check_bool(name, value, optional=True)
    given = [n for n, v in (("return_full_text", full_text), ("return_tensors", tensors), ("return_text", text))
             if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"`{given[0]}` is mutually exclusive with `{given[1]}` (as in transformers); pass one")
    if full_text is not None:
        return "full_text" if full_text else "new_text"
    if tensors:
        return "tensors"
    return default


def clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization: the spaces a tokenizer's decode leaves before punctuation and
    English contractions removed."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(spaced, joined)
    return text


def _call_generation_config(config: object) -> dict[str, object]:
    """A call's generation_config as controls: ours (every control), a transformers GenerationConfig (the values
    that differ from its defaults: what its owner set), or a dict; checked like the pipeline's."""
    if config is None:
        return {}
    if isinstance(config, GenerationConfig):
        return config.to_dict()
    if not isinstance(config, Mapping) and hasattr(config, "to_diff_dict"):  # transformers' GenerationConfig
        config = {k: v for k, v in config.to_diff_dict().items() if k != "transformers_version"}
    return _checked_generation_config(config)


def _streaming(streamer: object, ids: list[list[int]], n: int) -> Callable[[int, int], None] | None:
    """The on_token hook that feeds a transformers-style streamer: put(prompt ids (1, T)) now, put(id as (1,)) per
    generated token; None without a streamer. One prompt and one sequence, as transformers' streamers take."""
    if streamer is None:
        return None
    if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise TypeError(
            f"streamer must have put(ids) and end() (transformers' TextStreamer), got {_describe(streamer)}"
        )
    if len(ids) != 1 or n != 1:
        raise ValueError("a streamer streams one prompt and one sequence (as transformers'): pass one prompt, n=1")
    streamer.put(torch.tensor([ids[0]]))
    return lambda row, token: streamer.put(torch.tensor([token]))


def _conversations(text_inputs: object) -> tuple[list[list[dict[str, str]]] | None, bool]:
    """(the conversations, whether one was given) when text_inputs is a chat or a list of chats, else (None, False).

    A conversation must end with a user (or system) turn: the reply is generated after it. A ValueError names a
    message without a role, an unknown role, or a conversation that ends with the assistant's turn."""
    if _is_chat(text_inputs) and isinstance(text_inputs, Mapping):
        text_inputs = [text_inputs]  # one message
    if isinstance(text_inputs, (list, tuple)) and text_inputs and all(isinstance(m, Mapping) for m in text_inputs):
        chats, single = [list(text_inputs)], True
    elif (
        isinstance(text_inputs, (list, tuple))
        and text_inputs
        and all(isinstance(c, (list, tuple)) and c and all(isinstance(m, Mapping) for m in c) for c in text_inputs)
    ):
        chats, single = [list(c) for c in text_inputs], False
    else:
        return None, False
    checked = []
    for n, chat in enumerate(chats):
        where = "text_inputs" if single else f"text_inputs[{n}]"
        chat = check_messages(chat, where)
        if chat[-1]["role"] == "assistant":
            raise ValueError(
                f"{where} ends with the assistant's turn; end it with the user's message the reply answers"
            )
        checked.append(chat)
    return checked, single


def _prompts(text_inputs: object) -> tuple[list[str], bool]:
    """(the prompts, whether one string was given); TypeError/ValueError naming what was passed instead."""
    if isinstance(text_inputs, str):
        return [text_inputs], True
    if _is_chat(text_inputs) or (isinstance(text_inputs, (list, tuple)) and any(map(_is_chat, text_inputs))):
        raise TypeError(
            "text_inputs is a chat (messages with 'role' and 'content'); text2text-generation maps text to text: "
            f"pass {INPUTS} (a chat goes to a text-generation model tuned for chat)"
        )
    if isinstance(text_inputs, (bytes, bytearray)):
        raise TypeError(f"text_inputs is {_describe(text_inputs)}; decode it to a str (text.decode('utf-8')) first")
    if isinstance(text_inputs, Mapping) or not isinstance(text_inputs, Iterable):
        raise TypeError(f"text_inputs must be {INPUTS}, got {_describe(text_inputs)}")
    prompts = list(text_inputs)
    if not prompts:
        raise ValueError(f"text_inputs is an empty {type(text_inputs).__name__}; pass {INPUTS}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"text_inputs[{i}] is {_describe(prompt)}; text_inputs must be {INPUTS}")
    return prompts, False


def _is_chat(value: object) -> bool:
    """A transformers chat: one message {"role": ..., "content": ...} or a list of them."""
    if isinstance(value, Mapping):
        return "role" in value and "content" in value
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_chat(m) for m in value)


def _describe(value: object) -> str:
    """'int 123', 'str "ab"': the type and a short repr of a value an error names."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _check_bool(name: str, value: object, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        expected = "True, False or None" if optional else "True or False"
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")


def _whole_number(name: str, value: object, expected: str) -> int:
    """value as an int (numpy integers too); TypeError for anything else, bools and floats included."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return operator.index(value)
    raise TypeError(f"{name} must be {expected}, got {_describe(value)}")


def checked_controls(controls: dict[str, object]) -> dict[str, object]:
    """A call's (or generation_config's) decoding controls with their types checked, as the command line's schema
    checks them: TypeError naming the control, the value and what it takes. Values GenerationConfig then range-checks.

    None for a control that is never None (temperature, top_p, num_beams ...) means "not given": the checkpoint's
    recorded value, else the default, as null does on the command line. A string stop_strings is one stop string
    (as in transformers), numpy numbers are plain numbers.
    """
    out = {}
    for name, value in controls.items():
        annotation = CONTROL_TYPES[name]
        optional = annotation.startswith("Optional[") or annotation == "Any"
        base = annotation.removeprefix("Optional[").removesuffix("]") if optional else annotation
        if value is None:
            if optional:
                out[name] = value
            continue
        if base == "List[str]" and isinstance(value, str):
            value = [value]
        ok = True
        if base == "int":
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            value = operator.index(value) if ok else value
        elif base == "float":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif base == "bool":
            ok = isinstance(value, bool)
        elif base == "List[str]":
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        elif base in ("List[int]", "List[List[int]]"):
            ok = isinstance(value, (list, tuple))
        if not ok:
            raise TypeError(f"{name} takes {TYPE_WORDS[base]}, got {_describe(value)}")
        out[name] = value
    return out


SUPPORTED_TASKS: dict[str, type[_GenerationPipeline]] = {
    "text-generation": TextGenerationPipeline,
    "text2text-generation": Text2TextGenerationPipeline,
}


def pipeline(
    task: str | None = None,
    model: str | Path | GPT | T5 | None = None,
    tokenizer: Tokenizer | str | None = None,
    device: str | int | torch.device | None = None,
    generation_config: GenerationConfig | dict[str, object] | None = None,
    dtype: str | torch.dtype | None = None,
    torch_dtype: str | torch.dtype | None = None,
    model_kwargs: dict[str, object] | None = None,
    compile: bool = False,
) -> TextGenerationPipeline | Text2TextGenerationPipeline:
    """Build a pipeline for task from a checkpoint/run directory or an already-built model.

    Args:
        task: "text-generation" (a gpt model) or "text2text-generation" (a t5 model); None: the one the model's
            kind takes (as transformers picks a model's default task).
        model: a checkpoint directory, a run directory (its latest checkpoint is used) or a model object.
        tokenizer: a tokenizer object or name ("gpt2", "byte"); required with a model object, otherwise it
            replaces the checkpoint's own tokenizer.
        device: where the model runs. None: "auto" (cuda > mps > cpu) for a path, the model's own device for a
            model object. An explicit device moves a model object there (as transformers does). Integers follow
            transformers: -1 is the CPU, i >= 0 the CUDA device i.
        generation_config: decoding defaults every call starts from (a call's arguments still win). None: the
            checkpoint's recorded ones (model.json meta.generation, written by training from its task preset; an
            "hf:" folder's generation_config.json), or none for a model object or an older checkpoint.
        dtype (or transformers' older name torch_dtype): the weights' dtype, a torch.dtype or its name
            ("float32", "bfloat16", "float16") or "auto" (the default: bf16 on a GPU with bf16 tensor cores, else
            as stored). A model object is cast to it. "int8": weight-only int8 linear layers with bfloat16
            activations (model.quant; about 2-3x the float32 batch-1 tokens/s on a CPU), a model object in place.
        model_kwargs: transformers' from_pretrained arguments; nanoloom's loading takes dtype/torch_dtype there,
            anything else (device_map, attn_implementation ...) is a ValueError naming it.
        compile: every call's one-token decoding step under torch.compile (sample.generate.generate_tokens):
            compiled on the first call (12-18 s for gpt-mini on a CPU), then batch-1 decoding reads the weights near the
            memory bandwidth (1.6x eager on gpt-mini, 3x on the demo model; README "Generation speed"). Beam search
            runs eager.
    """
    if model is None:
        raise ValueError("pipeline() needs model=<checkpoint or run directory, hf:name, or a model object>")
    dtype = _load_dtype(dtype, torch_dtype, model_kwargs)
    if task is None:
        task = TASK_OF_KIND.get(_kind_of(model), "")
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"unknown task {task!r}; nanoloom supports: {', '.join(SUPPORTED_TASKS)}")
    if isinstance(device, bool) or not (device is None or isinstance(device, (str, int, torch.device))):
        raise TypeError(
            f"device must be a name ('cpu', 'cuda:0', 'auto'), an int or a torch.device, got {_describe(device)}"
        )
    if isinstance(device, int):
        device = "cpu" if device < 0 else f"cuda:{device}"
    if tokenizer is not None and not isinstance(tokenizer, str):
        if not all(hasattr(tokenizer, a) for a in ("encode", "decode", "vocab_size")):
            raise TypeError(
                f"tokenizer must be a nanoloom Tokenizer or a tokenizer name ('gpt2', 'byte'), got "
                f"{_describe(tokenizer)}"
            )
    if isinstance(generation_config, GenerationConfig):
        generation_config = generation_config.to_dict()
    elif generation_config is not None:
        generation_config = _checked_generation_config(generation_config)
    if isinstance(model, (str, Path)):
        if not is_hf_source(model):  # once: a run still training may move `latest` between two reads
            model = resolve_checkpoint(model)
        if generation_config is None:
            generation_config = read_generation_defaults(model)
        where = resolve_device(device or "auto")
        weights = {"auto": inference_dtype(where), "int8": torch.float32}.get(dtype, dtype)  # type: ignore[arg-type]
        model, checkpoint_tokenizer = load_model(model, device=where, dtype=weights)
        tokenizer = tokenizer if tokenizer is not None else checkpoint_tokenizer
    elif isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("pipeline() got a model object without a tokenizer; pass tokenizer=<Tokenizer or name>")
        if device is not None:
            model.to(resolve_device(device))
        if dtype not in ("auto", "int8"):
            model.to(dtype)
    else:
        raise TypeError(f"model must be a checkpoint path or a model, got {type(model).__name__}")
    if dtype == "int8":
        quantize_int8(model)
    if isinstance(tokenizer, str):
        tokenizer = get_tokenizer(tokenizer)
    return SUPPORTED_TASKS[task](model, tokenizer, generation_config, compile=compile)


def _checked_generation_config(config: object) -> dict[str, object]:
    """A generation_config dict checked now, not at the first call: its controls' types and ranges; other keys (a
    transformers generation_config.json's pad_token_id ...) are ignored with a warning, as a call's are."""
    if not isinstance(config, Mapping):
        raise TypeError(f"generation_config must be a GenerationConfig, a dict or None, got {_describe(config)}")
    # bad_words: a task preset's words (recorded_controls); num_return_sequences is a per-call choice
    names = (CONTROLS - {"num_return_sequences"}) | {"do_sample", "bad_words"}
    ignored = sorted(str(k) for k in config if k not in names)
    if ignored:
        warnings.warn(f"generation_config: ignoring keys nanoloom does not use: {', '.join(ignored)}", stacklevel=3)
    try:
        controls = checked_controls({k: v for k, v in config.items() if k in names - {"do_sample", "bad_words"}})
        if config.get("do_sample") is not None:
            _check_bool("do_sample", config["do_sample"])
            controls["do_sample"] = config["do_sample"]
        GenerationConfig(**controls)  # ValueError: an out-of-range or contradictory control, named
    except (TypeError, ValueError) as e:
        raise type(e)(f"generation_config: {e}") from None
    words = config.get("bad_words")
    if words is not None and not (isinstance(words, (list, tuple)) and all(isinstance(w, str) for w in words)):
        raise TypeError(f"generation_config['bad_words'] takes a list of strings, got {_describe(words)}")
    return {**controls, **({"bad_words": list(words)} if words else {})}


DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_dtype(dtype: object, torch_dtype: object, model_kwargs: object) -> torch.dtype | str:
    """The weights' dtype from dtype=, torch_dtype= or model_kwargs (transformers' places for it): a torch.dtype,
    "auto" or "int8" (model.quant: weight-only int8 linear layers); anything else in model_kwargs is refused, naming
    it."""
    given = {}
    if model_kwargs is not None:
        if not isinstance(model_kwargs, Mapping):
            raise TypeError(f"model_kwargs must be a dict, got {_describe(model_kwargs)}")
        unknown = sorted(str(k) for k in model_kwargs if k not in ("dtype", "torch_dtype"))
        if unknown:
            raise ValueError(
                f"model_kwargs: nanoloom's loading takes dtype (or torch_dtype) only, not {', '.join(unknown)}; "
                "place the model with device="
            )
        given.update({f"model_kwargs[{k!r}]": v for k, v in model_kwargs.items()})
    given.update({k: v for k, v in (("dtype", dtype), ("torch_dtype", torch_dtype)) if v is not None})
    if len(given) > 1:
        raise ValueError(f"the dtype is given twice ({', '.join(given)}); pass one")
    if not given:
        return "auto"
    ((name, value),) = given.items()
    if isinstance(value, torch.dtype) and value in DTYPE_NAMES.values():
        return value
    if isinstance(value, str) and value in ("auto", "int8"):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[value.removeprefix("torch.")]
    raise ValueError(f"{name}={value!r} is not a dtype; use auto, float32, bfloat16, float16 or int8")


def _kind_of(model: object) -> str:
    """The kind (gpt, t5) of a model object or a checkpoint path, without loading the weights."""
    if isinstance(model, nn.Module):
        return model_kind(model)
    if isinstance(model, (str, Path)):
        return str(read_model_json(model if is_hf_source(model) else resolve_checkpoint(model))["kind"])
    return ""
