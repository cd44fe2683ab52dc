"""Hugging Face-shaped sampling API: pipeline("text-generation" | "text2text-generation", model=...)(prompt, ...).

Mirrors transformers' TextGenerationPipeline (decoder-only gpt models) and Text2TextGenerationPipeline
(encoder-decoder t5 models) for the common arguments (max_length, max_new_tokens, num_return_sequences, do_sample,
num_beams, length_penalty, early_stopping, temperature, top_k, top_p, return_full_text) and their output shape, so
code written against transformers ports by changing the import. Generation itself is sample.generate.complete.
"""

from __future__ import annotations

import abc
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from data.tokenizer import Tokenizer, get_tokenizer
from model import GPT, T5
from model.checkpoint import load_model
from sample.generate import complete, model_device, model_kind, resolve_device

KIND_NAMES = {"gpt": "a decoder-only (gpt) model", "t5": "an encoder-decoder (t5) model"}
TASK_OF_KIND = {"gpt": "text-generation", "t5": "text2text-generation"}


class _GenerationPipeline(abc.ABC):
    """What both pipelines share: model/tokenizer checks and the per-prompt generation loop."""

    task = ""
    kind = ""

    def __init__(self, model: GPT | T5, tokenizer: Tokenizer) -> None:
        kind = model_kind(model)
        if kind != self.kind:
            got = KIND_NAMES.get(kind, f"a {kind!r} model")
            fix = f'use pipeline("{TASK_OF_KIND[kind]}", ...)' if kind in TASK_OF_KIND else "no pipeline supports it"
            raise ValueError(f"{self.task} needs {KIND_NAMES[self.kind]} but got {got}; {fix}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}; "
                "use the tokenizer the model was trained with"
            )
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        """Where the model (and so the generation) runs."""
        return model_device(self.model)

    def __repr__(self) -> str:
        name = getattr(self.tokenizer, "name", type(self.tokenizer).__name__)
        return f"{type(self).__name__}(tokenizer={name!r}, device={str(self.device)!r})"

    def _generate(
        self,
        text_inputs: str | list[str],
        max_length: int | None,
        max_new_tokens: int | None,
        *,
        num_return_sequences: int,
        do_sample: bool,
        num_beams: int,
        length_penalty: float,
        early_stopping: bool,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        stop: list[str] | None,
        seed: int | None,
        prefix_prompt: bool,
        ignored: dict[str, object],
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Validate the transformers-style arguments, then complete() each prompt separately (no padding)."""
        if ignored:
            warnings.warn(f"ignoring arguments nanoloom does not use: {', '.join(sorted(ignored))}", stacklevel=3)
        if num_beams < 1:
            raise ValueError(f"num_beams={num_beams} must be >= 1 (1 = sampling or greedy, > 1 = beam search)")
        if num_beams > 1 and do_sample:
            raise ValueError(
                f"do_sample=True with num_beams={num_beams} asks for beam sampling, which nanoloom does not do; "
                "set do_sample=False for beam search or num_beams=1 for sampling"
            )
        if num_beams > 1 and num_return_sequences > num_beams:
            raise ValueError(
                f"num_return_sequences={num_return_sequences} > num_beams={num_beams}: beam search returns at most "
                "num_beams sequences; raise num_beams or lower num_return_sequences"
            )
        if num_beams == 1 and not do_sample and num_return_sequences > 1:
            raise ValueError(
                f"greedy decoding (do_sample=False) gives {num_return_sequences} identical sequences; "
                "set do_sample=True, num_beams>=num_return_sequences, or num_return_sequences=1"
            )
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else list(text_inputs)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("text_inputs must be a string or a list of strings")
        if max_new_tokens is not None and max_length is not None:
            warnings.warn(
                f"both max_new_tokens={max_new_tokens} and max_length={max_length} are set; max_new_tokens wins",
                stacklevel=3,
            )
        if max_new_tokens is None and max_length is None:
            max_length = 20  # transformers' GenerationConfig default
        outputs = []
        for i, prompt in enumerate(prompts):
            n_new = max_new_tokens if max_new_tokens is not None else self._new_tokens(prompt, max_length)
            completions = complete(
                self.model,
                self.tokenizer,
                prompt,
                max_new_tokens=n_new,
                temperature=temperature if do_sample else 0.0,
                top_k=top_k or None,
                top_p=top_p,
                stop=stop,
                num_samples=num_return_sequences,
                seed=None if seed is None else seed + i,  # each prompt its own reproducible stream
                num_beams=num_beams,
                length_penalty=length_penalty,
                early_stopping=early_stopping,
            )
            prefix = prompt if prefix_prompt else ""
            outputs.append([{"generated_text": prefix + c} for c in completions])
        return outputs[0] if single else outputs

    @abc.abstractmethod
    def _new_tokens(self, prompt: str, max_length: int) -> int:
        """How many new tokens max_length allows for prompt (the two tasks count max_length differently)."""


class TextGenerationPipeline(_GenerationPipeline):
    """Continue prompts with a decoder-only nanoloom model; call it like transformers' text-generation pipeline."""

    task = "text-generation"
    kind = "gpt"

    def __call__(
        self,
        text_inputs: str | list[str],
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        num_return_sequences: int = 1,
        do_sample: bool | None = None,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        return_full_text: bool = True,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool = False,
        **ignored: object,
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Generate continuations; [{"generated_text": ...}] per prompt, a list of those for a list of prompts.

        Args:
            text_inputs: one prompt or a list of prompts (each generated separately: no padding is needed).
            max_length: prompt tokens + new tokens, as in transformers. Defaults to 20 when neither this nor
                max_new_tokens is given (transformers' GenerationConfig default).
            max_new_tokens: new tokens, not counting the prompt; wins over max_length when both are given.
            num_return_sequences: samples (or best beams) per prompt.
            do_sample: True samples, False is greedy (or beam search). None (the default): True with num_beams=1
                (nanoloom's default; transformers defaults to False), False with num_beams > 1.
            num_beams: > 1 runs beam search (deterministic; do_sample=True with it is an error); see
                sample.generate.beam_search for length_penalty and early_stopping.
            temperature, top_k, top_p: sampling filters (top-k, then temperature, then top-p). top_k 0 or None
                and top_p 1.0 or None switch the filter off; temperature 0 is greedy.
            stop: strings that end a completion; the stop string is not part of the output.
            seed: makes the samples reproducible; the same seed gives the same outputs.
            return_full_text: prepend the prompt to the generated text (transformers' default).
            **ignored: other transformers generation arguments (pad_token_id, truncation, ...) are accepted and
                ignored with a warning, so existing calls run unchanged.
        Generation also ends at the tokenizer's end-of-text token.
        """
        return self._generate(
            text_inputs, max_length, max_new_tokens, num_return_sequences=num_return_sequences,
            do_sample=num_beams == 1 if do_sample is None else do_sample, num_beams=num_beams,
            length_penalty=length_penalty, early_stopping=early_stopping, temperature=temperature, top_k=top_k,
            top_p=top_p, stop=stop, seed=seed, prefix_prompt=return_full_text, ignored=ignored,
        )  # fmt: skip

    def _new_tokens(self, prompt: str, max_length: int) -> int:
        """How many tokens max_length leaves after the prompt (an empty prompt counts its end-of-text start)."""
        n_prompt = max(len(self.tokenizer.encode(prompt)), 1)
        if n_prompt >= max_length:
            raise ValueError(
                f"the prompt is {n_prompt} tokens but max_length={max_length} counts the prompt too; "
                "raise max_length or, better, set max_new_tokens"
            )
        return max_length - n_prompt


class Text2TextGenerationPipeline(_GenerationPipeline):
    """Map inputs to outputs with an encoder-decoder (T5) model; call it like transformers' text2text pipeline."""

    task = "text2text-generation"
    kind = "t5"

    def __call__(
        self,
        text_inputs: str | list[str],
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        num_return_sequences: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool = False,
        **ignored: object,
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Generate outputs; [{"generated_text": ...}] per input, a list of those for a list of inputs.

        Args:
            text_inputs: one input or a list of inputs (each encoded and generated separately).
            max_length: output tokens counting the decoder start token, as in transformers: at most
                max_length - 1 new tokens; the input is not counted. Defaults to 20 when neither this nor
                max_new_tokens is given.
            max_new_tokens: output tokens; wins over max_length when both are given.
            num_return_sequences: samples (or best beams) per input.
            do_sample: False (the default, as in transformers) is greedy or beam search; True samples.
            num_beams: > 1 runs beam search (do_sample=True with it is an error); see
                sample.generate.beam_search for length_penalty and early_stopping.
            temperature, top_k, top_p, stop, seed: as for text-generation.
            **ignored: other transformers generation arguments are accepted and ignored with a warning.
        The generated text is the decoder's output alone; it ends at the tokenizer's end-of-text token.
        """
        return self._generate(
            text_inputs, max_length, max_new_tokens, num_return_sequences=num_return_sequences,
            do_sample=do_sample, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
            temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, seed=seed, prefix_prompt=False,
            ignored=ignored,
        )  # fmt: skip

    def _new_tokens(self, prompt: str, max_length: int) -> int:
        """max_length counts the decoder start token (transformers), so it leaves max_length - 1 new tokens."""
        if max_length < 1:
            raise ValueError(f"max_length={max_length} must be >= 1 (it counts the decoder start token)")
        return max_length - 1


SUPPORTED_TASKS: dict[str, type[_GenerationPipeline]] = {
    "text-generation": TextGenerationPipeline,
    "text2text-generation": Text2TextGenerationPipeline,
}


def pipeline(
    task: str,
    model: str | Path | GPT | T5,
    tokenizer: Tokenizer | str | None = None,
    device: str | int | torch.device | None = None,
) -> TextGenerationPipeline | Text2TextGenerationPipeline:
    """Build a pipeline for task from a checkpoint/run directory or an already-built model.

    Args:
        task: "text-generation" (a gpt model) or "text2text-generation" (a t5 model).
        model: a checkpoint directory, a run directory (its latest checkpoint is used) or a model object.
        tokenizer: a tokenizer object or name ("gpt2", "byte"); required with a model object, otherwise it
            replaces the checkpoint's own tokenizer.
        device: where the model runs. None: "auto" (cuda > mps > cpu) for a path, the model's own device for a
            model object. An explicit device moves a model object there (as transformers does). Integers follow
            transformers: -1 is the CPU, i >= 0 the CUDA device i.
    """
    if isinstance(device, int):
        device = "cpu" if device < 0 else f"cuda:{device}"
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"unknown task {task!r}; nanoloom supports: {', '.join(SUPPORTED_TASKS)}")
    if isinstance(model, (str, Path)):
        model, checkpoint_tokenizer = load_model(model, device=resolve_device(device or "auto"))
        tokenizer = tokenizer if tokenizer is not None else checkpoint_tokenizer
    elif isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("pipeline() got a model object without a tokenizer; pass tokenizer=<Tokenizer or name>")
        if device is not None:
            model.to(resolve_device(device))
    else:
        raise TypeError(f"model must be a checkpoint path or a model, got {type(model).__name__}")
    if isinstance(tokenizer, str):
        tokenizer = get_tokenizer(tokenizer)
    return SUPPORTED_TASKS[task](model, tokenizer)
