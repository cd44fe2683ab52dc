"""Generation as iterators: prefill + cached decode of token ids, and text on top of it (litgpt `generate_fn`).

generate_tokens() yields one (B,) tensor of token ids per step: it prefills the KV cache with the prompt at
input_pos=arange(T), then feeds back one token at a time at input_pos=[pos]. stream() and complete() turn those ids
into text through one core, _generate_text(): bytes are decoded incrementally so a multi-byte UTF-8 character is
never split, and text that could still be the start of a stop string is held back until it cannot be.
"""

from __future__ import annotations

import codecs
import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from data.tokenizer import Tokenizer
from model import GPT
from sample.sampling import check_sampling_args, sample_next


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A torch.device from a name; "auto" (or None) picks cuda > mps > cpu."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {str(device)!r} ({e}); use auto, cpu, cuda, cuda:<n> or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device=auto or device=cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} but MPS is not available here; use device=auto or device=cpu")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (cpu for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _compute_dtype(model: nn.Module) -> torch.dtype | None:
    """bf16 when the model is fp32 on a CUDA GPU with bf16 support (autocast is then used), else None."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cuda" or p.dtype != torch.float32:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def _forward(model: nn.Module, idx: torch.Tensor, input_pos: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Last-position logits (B, V) of one cached forward call, under bf16 autocast when dtype says so."""
    ctx = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with ctx:
        logits, _ = model(idx, input_pos=input_pos)  # (B, T, V)
    return logits[:, -1, :]


def fit_context(idx: torch.Tensor, max_new_tokens: int, block_size: int) -> tuple[torch.Tensor, int]:
    """Make prompt + new tokens fit in block_size (learned positions cannot go past it), with a warning.

    A prompt that fits is never cropped: max_new_tokens shrinks to the room left after it. A prompt that does not
    fit (T >= block_size) keeps its most recent tokens, leaving room for min(max_new_tokens, block_size // 2) new
    ones. Returns (idx (B, T') with T' <= T, max_new_tokens').
    """
    T = idx.size(1)
    if T + max_new_tokens <= block_size:
        return idx, max_new_tokens
    if T < block_size:
        warnings.warn(
            f"prompt of {T} tokens + max_new_tokens={max_new_tokens} exceeds the model's context of {block_size} "
            f"tokens; generating at most {block_size - T} new tokens",
            stacklevel=3,
        )
        return idx, block_size - T
    new = min(max_new_tokens, block_size // 2)
    keep = block_size - new
    warnings.warn(
        f"prompt of {T} tokens is longer than the model's context of {block_size} tokens; dropped the first "
        f"{T - keep} prompt tokens (kept the last {keep}) to generate up to {new} new tokens",
        stacklevel=3,
    )
    return idx[:, T - keep :], new  # (B, keep): the most recent tokens


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, one (B,) LongTensor per step, using the model's KV cache.

    Args:
        model: a decoder with forward(idx, input_pos=...), set_kv_cache(...) and clear_kv_cache() (GPT).
        idx: (B, T) prompt token ids, T >= 1, on the model's device. Cropped from the left (with a warning)
            when T + max_new_tokens exceeds model.config.block_size.
        max_new_tokens: at most this many steps are yielded.
        temperature, top_k, top_p: see sample.sampling.sample_next.
        eos_id: stop once every row has produced it; rows that finished earlier keep yielding eos_id, so the
            caller trims each row at its first eos_id.
        generator: random source on the model's device (None: torch's global RNG).
    The model is put in eval mode while generating and restored afterwards; the KV cache is always cleared,
    including when the caller stops iterating early.
    """
    check_sampling_args(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a (B, T) tensor of prompt ids with T >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    idx, max_new_tokens = fit_context(idx, max_new_tokens, model.config.block_size)
    if max_new_tokens == 0:
        return
    B, T = idx.shape
    device, dtype = idx.device, _compute_dtype(model)
    positions = torch.arange(T + max_new_tokens, device=device)  # made once: no host-to-device copy per step
    was_training = model.training
    try:
        model.eval()
        model.set_kv_cache(batch_size=B, max_seq_len=T + max_new_tokens, device=device, dtype=dtype)
        logits = _forward(model, idx, positions[:T], dtype)  # prefill: (B, V)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                token = token.masked_fill(finished, eos_id)  # finished rows repeat eos
                finished |= token == eos_id
            yield token
            if step == max_new_tokens - 1:
                break  # no forward pass for a token nobody will read
            if eos_id is not None and bool(finished.all()):  # host-device sync, once per step
                break
            logits = _forward(model, token[:, None], positions[T + step : T + step + 1], dtype)  # decode: (B, V)
    finally:
        model.clear_kv_cache()
        model.train(was_training)


class _TextDecoder:
    """Token ids -> final text pieces for one row: incremental UTF-8 decoding plus stop-string holdback."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eot_id = getattr(tokenizer, "eot_id", None)
        # invalid bytes become U+FFFD; an incomplete trailing sequence waits for its next bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""  # decoded text not yet released: it may be the start of a stop string
        self.done = False

    def push(self, token: int) -> str:
        """Take one generated token; return the text that became final (possibly "")."""
        if self.done:
            return ""
        if token == self.eot_id:
            return self.finish()
        self.held += self.utf8.decode(self.tokenizer.decode_bytes([token]))
        hits = [i for i in (self.held.find(s) for s in self.stop) if i >= 0]
        if hits:  # release what precedes the earliest stop string, never the stop itself
            self.done = True
            out, self.held = self.held[: min(hits)], ""
            return out
        keep = self._holdback()
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        return out

    def finish(self) -> str:
        """End of generation: release everything held back (an incomplete character becomes U+FFFD)."""
        if self.done:
            return ""
        self.done = True
        out, self.held = self.held + self.utf8.decode(b"", final=True), ""
        return out

    def _holdback(self) -> int:
        """Length of the longest suffix of the held text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.held)), longest, -1):
                if self.held.endswith(s[:n]):
                    longest = n
                    break
        return longest


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return torch.Generator(device=device).manual_seed(seed) if seed is not None else None


def _prompt_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The model's device; an explicit device must match it (nanoloom never moves a model behind your back)."""
    here = model_device(model)
    if device is not None:
        wanted = torch.device(device)
        if wanted.type != here.type or (wanted.index is not None and here.index is not None and wanted != here):
            raise ValueError(f"device={str(device)!r} but the model is on {here}; move it first with model.to(device)")
    return here


def _generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop: Sequence[str] | None,
    seed: int | None,
    device: str | torch.device | None,
) -> Iterator[list[str]]:
    """The one text-generation core: yields, per step, the newly final text of each of num_samples rows."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    eot_id = getattr(tokenizer, "eot_id", None)
    ids = tokenizer.encode(prompt)
    if not ids:  # an empty prompt samples unconditionally, starting from end-of-text as GPT-2 does
        if eot_id is None:
            raise ValueError("empty prompt and the tokenizer has no end-of-text token to start from; give a prompt")
        ids = [eot_id]
    dev = _prompt_device(model, device)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=dev)  # (num_samples, T)
    rows = [_TextDecoder(tokenizer, stop or []) for _ in range(num_samples)]
    tokens = generate_tokens(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eot_id,
        generator=_make_generator(seed, dev),
    )
    try:
        for step in tokens:
            yield [row.push(t) for row, t in zip(rows, step.tolist())]  # .tolist() syncs: text needs the ids
            if all(row.done for row in rows):
                break
    finally:
        tokens.close()  # stops generation early (stop strings) and clears the KV cache
    yield [row.finish() for row in rows]


def stream(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[str]:
    """Yield the completion of one sample piece by piece, as soon as each piece is final.

    Generation ends at the tokenizer's end-of-text token, at the first stop string (which is not yielded) or after
    max_new_tokens. A piece never ends inside a multi-byte character or inside a possible stop string. An empty
    prompt starts from end-of-text. device=None means the model's device.
    """
    for pieces in _generate_text(
        model,
        tokenizer,
        prompt,
        num_samples=1,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop=stop,
        seed=seed,
        device=device,
    ):
        if pieces[0]:
            yield pieces[0]


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: list[str] | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    device: str | torch.device | None = None,
) -> list[str]:
    """num_samples completions of prompt (the prompt itself not included), sampled as one batch.

    Each completion ends before the tokenizer's end-of-text token and before the first stop string; see stream().
    """
    texts: list[list[str]] = [[] for _ in range(num_samples)]
    for pieces in _generate_text(
        model,
        tokenizer,
        prompt,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop=stop,
        seed=seed,
        device=device,
    ):
        for text, piece in zip(texts, pieces):
            text.append(piece)
    return ["".join(t) for t in texts]
