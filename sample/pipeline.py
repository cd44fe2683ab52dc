"""A Hugging Face-shaped sampling API: pipeline("text-generation", model=...)(prompt, ...).

Mirrors transformers' TextGenerationPipeline for the common arguments (max_length, max_new_tokens,
num_return_sequences, do_sample, temperature, top_k, top_p, return_full_text) and its output shape, so code written
against transformers ports by changing the import. Generation itself is sample.generate.complete.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from data.tokenizer import Tokenizer, get_tokenizer
from model import GPT
from model.checkpoint import load_model
from sample.generate import complete, model_device, resolve_device


class TextGenerationPipeline:
    """Continue prompts with a decoder-only nanoloom model; call it like transformers' text-generation pipeline."""

    task = "text-generation"

    def __init__(self, model: GPT, tokenizer: Tokenizer) -> None:
        kind = getattr(model.config, "kind", "gpt")
        if kind != "gpt":
            raise ValueError(f"text-generation needs a decoder-only (gpt) model, got kind={kind!r}")
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
        return f"TextGenerationPipeline(tokenizer={name!r}, device={str(self.device)!r})"

    def __call__(
        self,
        text_inputs: str | list[str],
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        num_return_sequences: int = 1,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        return_full_text: bool = True,
        **ignored: object,
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Generate continuations; [{"generated_text": ...}] per prompt, a list of those for a list of prompts.

        Args:
            text_inputs: one prompt or a list of prompts (each generated separately: no padding is needed).
            max_length: prompt tokens + new tokens, as in transformers. Defaults to 20 when neither this nor
                max_new_tokens is given (transformers' GenerationConfig default).
            max_new_tokens: new tokens, not counting the prompt; wins over max_length when both are given.
            num_return_sequences: samples per prompt.
            do_sample: True (nanoloom's default; transformers defaults to False) samples, False is greedy.
            temperature, top_k, top_p: sampling filters (top-k, then temperature, then top-p). top_k 0 or None
                and top_p 1.0 or None switch the filter off; temperature 0 is greedy.
            stop: strings that end a completion; the stop string is not part of the output.
            seed: makes the samples reproducible; the same seed gives the same outputs.
            return_full_text: prepend the prompt to the generated text (transformers' default).
            **ignored: other transformers generation arguments (pad_token_id, truncation, ...) are accepted and
                ignored with a warning, so existing calls run unchanged.
        Generation also ends at the tokenizer's end-of-text token.
        """
        if ignored:
            warnings.warn(f"ignoring arguments nanoloom does not use: {', '.join(sorted(ignored))}", stacklevel=2)
        if not do_sample and num_return_sequences > 1:
            raise ValueError(
                f"greedy decoding (do_sample=False) gives {num_return_sequences} identical sequences; "
                "set do_sample=True or num_return_sequences=1"
            )
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else list(text_inputs)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("text_inputs must be a string or a list of strings")
        if max_new_tokens is not None and max_length is not None:
            warnings.warn(
                f"both max_new_tokens={max_new_tokens} and max_length={max_length} are set; max_new_tokens wins",
                stacklevel=2,
            )
        if max_new_tokens is None and max_length is None:
            max_length = 20
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
            )
            prefix = prompt if return_full_text else ""
            outputs.append([{"generated_text": prefix + c} for c in completions])
        return outputs[0] if single else outputs

    def _new_tokens(self, prompt: str, max_length: int) -> int:
        """How many tokens max_length leaves after the prompt (an empty prompt counts its end-of-text start)."""
        n_prompt = max(len(self.tokenizer.encode(prompt)), 1)
        if n_prompt >= max_length:
            raise ValueError(
                f"the prompt is {n_prompt} tokens but max_length={max_length} counts the prompt too; "
                "raise max_length or, better, set max_new_tokens"
            )
        return max_length - n_prompt


# task name -> pipeline class; "text2text-generation" (T5 encoder-decoder) will be registered here
SUPPORTED_TASKS: dict[str, type[TextGenerationPipeline]] = {
    "text-generation": TextGenerationPipeline,
}


def pipeline(
    task: str,
    model: str | Path | GPT,
    tokenizer: Tokenizer | str | None = None,
    device: str | int | torch.device | None = None,
) -> TextGenerationPipeline:
    """Build a pipeline for task from a checkpoint/run directory or an already-built model.

    Args:
        task: "text-generation".
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
