"""Generation as iterators: cached decoding of token ids for GPT and T5, beam search, and text on top of it.

One core serves both model kinds (litgpt `generate_fn`): a decoder-only (gpt) model prefills its KV cache with the
prompt at input_pos=arange(T); an encoder-decoder (t5) model encodes the prompt once and its decoder starts from the
decoder start token at position 0. Either then feeds back one token at a time at input_pos=[pos]. generate_tokens()
samples; beam_search() keeps num_beams hypotheses (transformers' beam search semantics). stream() and complete() turn
ids into text through _TextDecoder: bytes are decoded incrementally so a multi-byte UTF-8 character is never split,
and text that could still be the start of a stop string is held back until it cannot be.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from data.tokenizer import Tokenizer
from model import GPT, T5
from sample.sampling import check_sampling_args, sample_next

LM = GPT | T5  # what generation accepts; anything with the same methods works (tests use scripted stand-ins)
NEG_INF = -1e9  # score of a beam that must never be chosen (finite: inf - inf would make NaNs)


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


def model_kind(model: nn.Module) -> str:
    """The model kind: gpt (decoder-only, continues its prompt) or t5 (encoder-decoder, prompt = encoder input)."""
    return getattr(model.config, "kind", "gpt")


def _compute_dtype(model: nn.Module) -> torch.dtype | None:
    """bf16 when the model is fp32 on a CUDA GPU with bf16 support (autocast is then used), else None."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cuda" or p.dtype != torch.float32:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


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
            stacklevel=4,
        )
        return idx, block_size - T
    new = min(max_new_tokens, block_size // 2)
    keep = block_size - new
    warnings.warn(
        f"prompt of {T} tokens is longer than the model's context of {block_size} tokens; dropped the first "
        f"{T - keep} prompt tokens (kept the last {keep}) to generate up to {new} new tokens",
        stacklevel=4,
    )
    return idx[:, T - keep :], new  # (B, keep): the most recent tokens


def fit_encoder_input(
    idx: torch.Tensor, enc_mask: torch.Tensor | None, max_new_tokens: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Fit an encoder-decoder's input and output to block_size, with a warning for each change.

    An encoder input longer than block_size keeps its first block_size tokens (the start of a document carries the
    instruction, as T5's preprocessing truncates); max_new_tokens is capped at block_size.
    Returns (idx (B, S'), enc_mask (B, S') or None, max_new_tokens').
    """
    S = idx.size(1)
    if S > block_size:
        warnings.warn(
            f"input of {S} tokens is longer than the model's context of {block_size} tokens; kept the first "
            f"{block_size} (dropped the last {S - block_size})",
            stacklevel=4,
        )
        idx = idx[:, :block_size]  # (B, block_size)
        enc_mask = enc_mask[:, :block_size] if enc_mask is not None else None
    if max_new_tokens > block_size:
        warnings.warn(
            f"max_new_tokens={max_new_tokens} exceeds the model's context of {block_size} tokens; generating at "
            f"most {block_size} new tokens",
            stacklevel=4,
        )
        max_new_tokens = block_size
    return idx, enc_mask, max_new_tokens


def _fit_inputs(
    model: LM, idx: torch.Tensor, enc_mask: torch.Tensor | None, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Check the shared arguments of generate_tokens and beam_search, then fit them to the model's context."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a (B, T) tensor of prompt ids with T >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    block_size = model.config.block_size
    if model_kind(model) == "t5":
        if enc_mask is not None and enc_mask.shape != idx.shape:
            raise ValueError(f"enc_mask has shape {tuple(enc_mask.shape)} but idx has {tuple(idx.shape)}")
        enc_mask = enc_mask.bool() if enc_mask is not None else None  # True = real token, False = padding
        return fit_encoder_input(idx, enc_mask, max_new_tokens, block_size)
    if enc_mask is not None:
        raise ValueError("enc_mask masks encoder padding; a decoder-only (gpt) model has no encoder, pass None")
    idx, max_new_tokens = fit_context(idx, max_new_tokens, block_size)
    return idx, None, max_new_tokens


class _Decoder:
    """Next-token logits (B, V) of one cached generation, alike for both model kinds.

    gpt: the prompt idx is the decoder's first input. t5: idx is encoded once here and the decoder's first input is
    the decoder start token (model.config.decoder_start_id, or eos_id when that is None). The constructor sets the
    model's KV cache for the prompt plus max_new_tokens positions; the caller clears it.
    """

    def __init__(
        self,
        model: LM,
        idx: torch.Tensor,
        enc_mask: torch.Tensor | None,
        max_new_tokens: int,
        eos_id: int | None,
        vocab_limit: int | None = None,
    ) -> None:
        self.model, self.dtype = model, _compute_dtype(model)
        self.vocab_limit = vocab_limit  # ids >= this are never produced (a T5 embedding padded past its tokenizer)
        self.enc_out: torch.Tensor | None = None
        self.enc_mask = enc_mask
        B, device = idx.size(0), idx.device
        if model_kind(model) == "t5":
            start = getattr(model.config, "decoder_start_id", None)
            start = eos_id if start is None else start
            if start is None:
                raise ValueError("the model has no decoder_start_id and no eos_id was given to start the decoder from")
            with self._autocast():
                self.enc_out = model.encode(idx, enc_mask)  # (B, S, C): once per input
            idx = torch.full((B, 1), start, dtype=torch.long, device=device)  # (B, 1): the decoder's first input
        self.first = idx
        max_seq_len = idx.size(1) + max_new_tokens
        self.positions = torch.arange(max_seq_len, device=device)  # made once: no host-to-device copy per step
        self.pos = 0
        model.set_kv_cache(batch_size=B, max_seq_len=max_seq_len, device=device, dtype=self.dtype)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Last-position logits (B, V) for idx (B, T) written at the next T cache positions."""
        input_pos = self.positions[self.pos : self.pos + idx.size(1)]
        self.pos += idx.size(1)
        with self._autocast():
            if self.enc_out is None:
                logits, _ = self.model(idx, input_pos=input_pos)  # (B, T, V)
            else:
                logits = self.model.decode(idx, self.enc_out, self.enc_mask, input_pos=input_pos)  # (B, T, V)
        return logits[:, -1, : self.vocab_limit]  # (B, V') with V' = vocab_limit or V

    def prefill(self) -> torch.Tensor:
        """Logits (B, V) of the first new token: the prompt (gpt) or the decoder start token (t5) goes in."""
        return self._logits(self.first)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); logits (B, V) of the next one."""
        return self._logits(token[:, None])

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (B,) in that order, together with the encoder output and mask they attend to."""
        self.model.reorder_cache(rows)
        if self.enc_out is not None:
            self.enc_out = self.enc_out.index_select(0, rows)  # (B, S, C)
        if self.enc_mask is not None:
            self.enc_mask = self.enc_mask.index_select(0, rows)  # (B, S)


@contextlib.contextmanager
def _cached_decoding(
    model: LM,
    idx: torch.Tensor,
    enc_mask: torch.Tensor | None,
    max_new_tokens: int,
    eos_id: int | None,
    vocab_limit: int | None = None,
) -> Iterator[tuple[_Decoder, torch.Tensor]]:
    """Yield (decoder, logits (B, V) of the first new token) with the model in eval mode and its KV cache set.

    On exit, also when the caller stops iterating early, the KV cache is cleared and train/eval mode restored.
    """
    was_training = model.training
    try:
        model.eval()
        decoder = _Decoder(model, idx, enc_mask, max_new_tokens, eos_id, vocab_limit)
        yield decoder, decoder.prefill()
    finally:
        model.clear_kv_cache()
        model.train(was_training)


@torch.inference_mode()
def generate_tokens(
    model: LM,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    enc_mask: torch.Tensor | None = None,
    vocab_limit: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, one (B,) LongTensor per step, using the model's KV cache.

    Args:
        model: a GPT (continues idx) or a T5 (encodes idx, then decodes from its decoder start token).
        idx: (B, T) token ids on the model's device, T >= 1: the prompt (gpt) or the encoder input (t5). A gpt
            prompt is cropped from the left when T + max_new_tokens exceeds model.config.block_size; a t5 input
            longer than block_size keeps its first block_size tokens. Both warn.
        max_new_tokens: at most this many steps are yielded (t5: capped at block_size, with a warning).
        temperature, top_k, top_p: see sample.sampling.sample_next.
        eos_id: stop once every row has produced it; rows that finished earlier keep yielding eos_id, so the
            caller trims each row at its first eos_id. A t5 model whose decoder_start_id is None starts from it.
        generator: random source on the model's device (None: torch's global RNG).
        enc_mask: t5 only: (B, T) True for real encoder tokens, False for padding (None: no padding).
        vocab_limit: only ids below it are generated (the tokenizer's size when the model's vocabulary is larger).
    The model is put in eval mode while generating and restored afterwards; the KV cache is always cleared,
    including when the caller stops iterating early.
    """
    check_sampling_args(temperature, top_k, top_p)
    idx, enc_mask, max_new_tokens = _fit_inputs(model, idx, enc_mask, max_new_tokens)
    if max_new_tokens == 0:
        return
    with _cached_decoding(model, idx, enc_mask, max_new_tokens, eos_id, vocab_limit) as (decoder, logits):
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
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
            logits = decoder.step(token)  # (B, V)


def check_beam_args(num_beams: int, num_return_sequences: int, length_penalty: float) -> None:
    """Raise ValueError naming the argument and the fix if a beam search setting is out of range."""
    if num_beams < 1:
        raise ValueError(f"num_beams={num_beams} must be >= 1 (1 = greedy)")
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be >= 1")
    if num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences={num_return_sequences} > num_beams={num_beams}: beam search keeps only "
            "num_beams hypotheses; raise num_beams or lower num_return_sequences"
        )
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty={length_penalty} must be a finite number (1.0 = average log-probability)")


class _Finished:
    """The best num_beams finished hypotheses of one input row (transformers' BeamHypotheses), best first.

    A hypothesis scores sum(log p) / len(tokens) ** length_penalty, where tokens are the generated ones (not the
    prompt or the decoder start), the final eos included.
    """

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.hyps: list[tuple[list[int], float]] = []

    def add(self, tokens: list[int], sum_logprobs: float) -> None:
        score = sum_logprobs / len(tokens) ** self.length_penalty
        if len(self.hyps) == self.num_beams and score <= self.hyps[-1][1]:
            return
        self.hyps.append((tokens, score))
        self.hyps.sort(key=lambda h: -h[1])  # stable: of equal scores the earlier one stays first
        del self.hyps[self.num_beams :]

    def is_done(self, best_running: float, length: int, early_stopping: bool) -> bool:
        """Whether running beams can be dropped: num_beams finished and (early_stopping or none can do better).

        early_stopping=False is transformers' heuristic: the best running beam, scored at its current length,
        cannot beat the worst finished hypothesis (exact for length_penalty=0; a heuristic otherwise).
        """
        if len(self.hyps) < self.num_beams:
            return False
        return early_stopping or best_running / length**self.length_penalty <= self.hyps[-1][1]


@torch.inference_mode()
def beam_search(
    model: LM,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    num_beams: int,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    num_return_sequences: int = 1,
    eos_id: int | None = None,
    enc_mask: torch.Tensor | None = None,
    vocab_limit: int | None = None,
) -> list[list[tuple[list[int], float]]]:
    """Beam search with the KV cache; per input row, up to num_return_sequences (tokens, score), best first.

    Follows transformers' beam search: each step keeps the 2 * num_beams best continuations of all beams, those
    ending in eos (among the num_beams best) become finished hypotheses, the num_beams best others run on. A
    hypothesis scores sum(log p) / len ** length_penalty (len counts new tokens, eos included): length_penalty > 0
    favours longer outputs, < 0 shorter ones. A row stops once num_beams hypotheses are finished and
    early_stopping is True, or (False) once no running beam can beat the worst finished one (transformers'
    heuristic); at max_new_tokens the num_beams best candidates are finished as they are.

    Args:
        model: a GPT (continues idx) or a T5 (encodes idx and decodes from its decoder start token).
        idx: (B, T) prompt (gpt) or encoder input (t5) ids, fitted to the context as in generate_tokens.
        max_new_tokens: the longest output (new tokens, eos included).
        num_beams: hypotheses kept per row; 1 is greedy decoding.
        num_return_sequences: hypotheses returned per row, <= num_beams.
        eos_id: the token that finishes a hypothesis (kept as its last token); None: all run to max_new_tokens.
        enc_mask: t5 only: (B, T) True for real encoder tokens, False for padding.
    Returns:
        For each row of idx, a list of (generated token ids, score) sorted by score, best first. With
        max_new_tokens == 0, the one empty hypothesis ([], 0.0).
    """
    check_beam_args(num_beams, num_return_sequences, length_penalty)
    idx, enc_mask, max_new_tokens = _fit_inputs(model, idx, enc_mask, max_new_tokens)
    B, K = idx.size(0), num_beams
    if max_new_tokens == 0:
        return [[([], 0.0)] for _ in range(B)]
    finished = [_Finished(K, length_penalty) for _ in range(B)]
    done = [False] * B
    beams: list[list[int]] = [[] for _ in range(B * K)]  # tokens of each running beam; row b owns b*K .. b*K+K-1
    scores = torch.full((B, K), NEG_INF, device=idx.device)
    scores[:, 0] = 0.0  # the K beams of a row start identical: only the first may grow at the first step
    pad = eos_id if eos_id is not None else 0  # fed to the beams of finished rows, whose outputs nobody reads
    with _cached_decoding(model, idx, enc_mask, max_new_tokens, eos_id, vocab_limit) as (decoder, logits):
        # prefill (and encode) each row once, then copy its cache rows and encoder output to its K beams
        decoder.reorder(torch.arange(B, device=idx.device).repeat_interleave(K))  # cache rows: B -> B*K
        logits = logits.repeat_interleave(K, dim=0)  # (B*K, V)
        for length in range(1, max_new_tokens + 1):
            logprobs = torch.log_softmax(logits.float(), dim=-1) + scores.view(-1, 1)  # (B*K, V): sums so far
            V = logprobs.size(-1)
            top, flat = torch.topk(logprobs.view(B, K * V), min(2 * K, K * V), dim=-1)  # (B, 2K) best continuations
            last = length == max_new_tokens
            running: list[tuple[float, int, int]] = []  # (sum of log p, parent cache row, token), K per row
            for b, (cand_scores, cand_idx) in enumerate(zip(top.tolist(), flat.tolist())):  # one sync per step
                live: list[tuple[float, int, int]] = []
                if not done[b]:
                    for rank, (score, i) in enumerate(zip(cand_scores, cand_idx)):
                        parent, token = b * K + i // V, i % V
                        if token == eos_id or last:
                            if rank < K:  # a candidate outside the K best never finishes (transformers)
                                finished[b].add(beams[parent] + [token], score)
                        elif len(live) < K:
                            live.append((score, parent, token))
                    done[b] = last or finished[b].is_done(live[0][0] if live else NEG_INF, length, early_stopping)
                if done[b]:
                    live = []
                running += live + [(NEG_INF, b * K, pad)] * (K - len(live))  # finished rows idle along
            if last or all(done):
                break
            beams = [beams[parent] + [token] for _, parent, token in running]
            scores = torch.tensor([s for s, _, _ in running], device=idx.device).view(B, K)  # host-to-device, once
            decoder.reorder(torch.tensor([p for _, p, _ in running], device=idx.device))  # (B*K,) parent rows
            logits = decoder.step(torch.tensor([t for _, _, t in running], device=idx.device))  # (B*K, V)
    return [f.hyps[:num_return_sequences] for f in finished]


class _TextDecoder:
    """Token ids -> final text pieces for one row: incremental UTF-8 decoding plus stop-string holdback."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str], strip_leading_space: bool = False) -> None:
        self.tokenizer = tokenizer
        # SentencePiece output starts with its word-boundary space; a fresh (T5) output drops it, as decode() does
        self.strip_leading_space = strip_leading_space
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
        if self.strip_leading_space and self.held:
            self.held, self.strip_leading_space = self.held.removeprefix(" "), False
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


def _vocab_limit(model: LM, tokenizer: Tokenizer) -> int | None:
    """The tokenizer's size when the model predicts more ids than it can decode (T5's padded 32128 vs 32100)."""
    size = getattr(tokenizer, "vocab_size", None)
    return size if size is not None and size < model.config.vocab_size else None


def _strips_space(model: LM, tokenizer: Tokenizer) -> bool:
    """A T5 output decoded token by token with a SentencePiece vocabulary loses its leading word-boundary space."""
    return model_kind(model) == "t5" and bool(getattr(tokenizer, "strips_leading_space", False))


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


def _prompt_ids(
    tokenizer: Tokenizer, prompt: str, rows: int, device: torch.device, encoder_input: bool = False
) -> torch.Tensor:
    """(rows, T) copies of the prompt's ids; an empty prompt is end-of-text alone (GPT-2's unconditional start).

    encoder_input: a T5 encoder input ends with end-of-text, as every input nanoloom trains T5 on does
    (and as Hugging Face T5 inputs end with </s>).
    """
    ids = tokenizer.encode(prompt)
    eot_id = getattr(tokenizer, "eot_id", None)
    if not ids or encoder_input:
        if eot_id is None:
            raise ValueError("the tokenizer has no end-of-text token to start from or end an input with")
        ids = ids + [eot_id]
    return torch.tensor([ids] * rows, dtype=torch.long, device=device)  # (rows, T)


def _generate_text(
    model: LM,
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
    dev = _prompt_device(model, device)
    idx = _prompt_ids(tokenizer, prompt, num_samples, dev, model_kind(model) == "t5")  # (num_samples, T)
    rows = [_TextDecoder(tokenizer, stop or [], _strips_space(model, tokenizer)) for _ in range(num_samples)]
    tokens = generate_tokens(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=getattr(tokenizer, "eot_id", None),
        generator=_make_generator(seed, dev),
        vocab_limit=_vocab_limit(model, tokenizer),
    )
    try:
        for step in tokens:
            yield [row.push(t) for row, t in zip(rows, step.tolist())]  # .tolist() syncs: text needs the ids
            if all(row.done for row in rows):
                break
    finally:
        tokens.close()  # stops generation early (stop strings) and clears the KV cache
    yield [row.finish() for row in rows]


def _beam_texts(
    model: LM,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    num_beams: int,
    num_return_sequences: int,
    length_penalty: float,
    early_stopping: bool,
    max_new_tokens: int,
    stop: Sequence[str] | None,
    device: str | torch.device | None,
) -> list[str]:
    """The best num_return_sequences beam search outputs as text, each cut at end-of-text and the first stop."""
    idx = _prompt_ids(tokenizer, prompt, 1, _prompt_device(model, device), model_kind(model) == "t5")  # (1, T)
    hyps = beam_search(
        model,
        idx,
        max_new_tokens,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return_sequences,
        eos_id=getattr(tokenizer, "eot_id", None),
        vocab_limit=_vocab_limit(model, tokenizer),
    )[0]
    texts = []
    for tokens, _ in hyps:
        row = _TextDecoder(tokenizer, stop or [], _strips_space(model, tokenizer))
        texts.append("".join(row.push(t) for t in tokens) + row.finish())
    return texts


def stream(
    model: LM,
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

    gpt: the completion continues the prompt. t5: the prompt is the encoder input and the completion is the
    decoder's output. Generation ends at the tokenizer's end-of-text token, at the first stop string (which is not
    yielded) or after max_new_tokens. A piece never ends inside a multi-byte character or inside a possible stop
    string. An empty prompt is end-of-text alone. device=None means the model's device.
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
    model: LM,
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
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
) -> list[str]:
    """num_samples completions of prompt (the prompt itself not included), generated as one batch.

    gpt: completions continue the prompt; t5: the prompt is the encoder input and a completion is the decoder's
    output. Each completion ends before the tokenizer's end-of-text token and before the first stop string; see
    stream(). num_beams > 1 switches to beam search (see beam_search): the result is then the num_samples best
    beams, best first (num_samples <= num_beams), and temperature, top_k, top_p and seed are not used (beam search
    is deterministic). Stop strings cut the finished beams' text; they do not steer the search.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams={num_beams} must be >= 1 (1 = sampling or greedy, > 1 = beam search)")
    if num_beams > 1:
        if num_samples > num_beams:
            raise ValueError(
                f"num_samples={num_samples} > num_beams={num_beams}: beam search returns at most num_beams "
                "sequences; raise num_beams or lower num_samples"
            )
        return _beam_texts(
            model,
            tokenizer,
            prompt,
            num_beams=num_beams,
            num_return_sequences=num_samples,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            max_new_tokens=max_new_tokens,
            stop=stop,
            device=device,
        )
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
