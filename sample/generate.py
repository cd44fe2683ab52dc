"""Generation: cached decoding of token ids for GPT and T5 (sampling, greedy, beam search) and text on top of it.

One core serves both model kinds and every caller (the CLI, the pipeline API, the samples shown during training),
as litgpt's `generate_fn` does: a decoder-only (gpt) model prefills its KV cache with the prompt; an encoder-decoder
(t5) model encodes the prompt once and its decoder starts from the decoder start token. Either then feeds back one
token per step. Each step's logits go through sample.sampling (processors, then greedy argmax or the warpers and a
draw), with every control in a GenerationConfig.

Generation is not capped by the context: a gpt whose window would pass block_size re-prefills its most recent
tokens (positions from 0) and goes on (_Decoder.step); a t5 decoder has no absolute positions and runs as long as
asked. Prompts of different lengths run as one batch: gpt prompts are padded on the left and every row gets its own
positions and an attention mask that hides the padding (the model's left_pad); t5 inputs are padded on the right
with an encoder mask. Each row samples with its own generator seeded seed + row, so a prompt gives the same
completion alone or in a batch. Text comes from sample.stopping.TextRow: UTF-8-safe, with stop strings and the
end of a code block held back until final. generate() returns Completion records, stream() yields text pieces,
complete() returns strings, infill() fills the middle between a prefix and a suffix (fill-in-the-middle models).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from data.tokenizer import Tokenizer
from model import GPT, T5, is_encoder_decoder
from sample.assisted import DEFAULT_NGRAM, keep_or_replace, lookup_draft
from sample.sampling import GenerationConfig, History, choose, draw, next_scores, process_logits
from sample.stopping import TextRow

LM = GPT | T5  # what generation accepts; anything with the same methods works (tests use scripted stand-ins)
NEG_INF = -1e9  # score of a beam that must never be chosen (finite: inf - inf would make NaNs)
DEFAULT_MAX_LENGTH = 20  # transformers' GenerationConfig default, when neither max_new_tokens nor max_length is set


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (cpu for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_kind(model: nn.Module) -> str:
    """The model kind: gpt (decoder-only, continues its prompt), or t5 or bart (encoder-decoders: the prompt is the
    encoder input; model.is_encoder_decoder)."""
    return getattr(model.config, "kind", "gpt")


def _compute_dtype(model: nn.Module) -> torch.dtype | None:
    """bf16 when the model is fp32 on a CUDA GPU with native bf16 (autocast is then used), else None."""
    p = next(model.parameters(), None)
    if p is None or p.dtype != torch.float32:
        return None
    from nanoloom.device import inference_dtype

    return inference_dtype(p.device)  # the dtype a checkpoint is loaded in there: bf16 on a bf16 GPU, else None


def _keep_last(seq: torch.Tensor, pad: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last keep[b] real tokens of each left-padded row of seq (B, N), left-padded again to one length.

    Returns (window (B, M) with M = max(keep), its left padding (B,) or None when no row is padded).
    """
    M = int(keep.max())  # host-device sync: the new width
    new_pad = M - keep  # (B,)
    return seq[:, seq.size(1) - M :], (new_pad if bool(new_pad.any()) else None)  # (B, M): rows stay right-aligned


def fit_context(
    idx: torch.Tensor, pad: torch.Tensor | None, max_new_tokens: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop each gpt prompt longer than block_size to its most recent tokens, with a warning.

    A prompt that fits (at most block_size real tokens) is never cropped, whatever max_new_tokens is: generation
    slides its window past the context (see _Decoder). A longer prompt keeps its last
    block_size - min(max_new_tokens, block_size // 2) tokens, leaving room for new tokens before the first slide.
    Rows are cropped one by one (a left-padded row loses the same tokens as it would alone).
    Returns (idx (B, T') with T' <= T, its left padding (B,) or None).
    """
    T = idx.size(1)
    pad = pad if pad is not None else torch.zeros(idx.size(0), dtype=torch.long, device=idx.device)
    lengths = T - pad  # (B,) real tokens per row
    longest = int(lengths.max())
    if longest <= block_size:
        return _keep_last(idx, pad, lengths)  # drops only columns that are padding in every row
    kept = block_size - min(max_new_tokens, block_size // 2)
    warnings.warn(
        f"prompt of {longest} tokens is longer than the model's context of {block_size} tokens; dropped the first "
        f"{longest - kept} prompt tokens (kept the last {kept})",
        stacklevel=5,
    )
    return _keep_last(idx, pad, torch.where(lengths > block_size, kept, lengths))


def fit_encoder_input(
    idx: torch.Tensor, enc_mask: torch.Tensor | None, block_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fit an encoder-decoder's input to block_size, with a warning.

    An encoder input longer than block_size keeps its first block_size tokens (the start of a document carries the
    instruction, as T5's preprocessing truncates). A T5 output is not capped: its decoder has no absolute positions
    (relative bias), so it decodes as many tokens as asked; BART's learned positions cap it at block_size (the KV
    cache refuses more). Returns (idx (B, S'), enc_mask (B, S') or None).
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
    return idx, enc_mask


def _left_pad(attention_mask: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """Per-row left padding (B,) of a gpt batch from its attention mask (1 = token, 0 = padding); None if none."""
    if attention_mask is None:
        return None
    if attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but idx has {tuple(idx.shape)}")
    real = attention_mask.bool()
    pad = (~real).sum(dim=1)  # (B,)
    if not torch.equal(real, torch.arange(idx.size(1), device=idx.device)[None, :] >= pad[:, None]):
        raise ValueError("a decoder-only (gpt) batch must be padded on the left: attention_mask = 0...0 1...1 per row")
    if bool((pad == idx.size(1)).any()):
        raise ValueError("a row of attention_mask is all padding; every prompt needs at least one token")
    return pad if bool(pad.any()) else None


@dataclass
class _Inputs:
    """One generation's checked inputs, as the cached decoding reads them."""

    idx: torch.Tensor  # (B, T) prompt ids (gpt, whole), or the encoder input fitted to the context (t5)
    pad: torch.Tensor | None  # gpt: left padding (B,) of each row, None when no row is padded
    enc_mask: torch.Tensor | None  # t5: (B, S) True = real token, None when nothing is padded
    max_new_tokens: int
    start: int | None  # t5's decoder start when its config has none: the first eos id
    vocab_limit: int | None  # ids >= this are never produced (a T5 embedding padded past its tokenizer)
    compile: bool = False  # the one-token step under torch.compile


def _fit_inputs(
    model: LM,
    idx: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    eos: list[int],
    vocab_limit: int | None,
    compile: bool = False,
) -> _Inputs:
    """Check the shared arguments of generate_tokens and beam_search; fit a t5 encoder input to the context.

    A gpt prompt is kept whole: the processors see all of it, and _Decoder crops what the model reads (fit_context).
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a (B, T) tensor of prompt ids with T >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    pad = enc_mask = None
    if is_encoder_decoder(model_kind(model)):
        if attention_mask is not None and attention_mask.shape != idx.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but idx has {tuple(idx.shape)}")
        enc_mask = attention_mask.bool() if attention_mask is not None else None  # True = real token
        idx, enc_mask = fit_encoder_input(idx, enc_mask, model.config.block_size)
    else:
        pad = _left_pad(attention_mask, idx)
    start = eos[0] if eos else None
    return _Inputs(idx, pad, enc_mask, max_new_tokens, start, vocab_limit, compile)


class _Decoder:
    """Next-token logits (B, V) of one cached generation, alike for both model kinds, at any output length.

    gpt: the prompt inputs.idx (left-padded by inputs.pad (B,) columns, or None) is the decoder's first input, cropped
    by fit_context when a row is longer than block_size. t5, bart: inputs.idx is encoded once here and the decoder's
    first input is the decoder start token (model.config.decoder_start_id, else inputs.start). The constructor sets
    the model's KV cache (the caller clears it): t5 for the whole output (relative positions have no limit), bart for
    at most block_size (its learned positions); gpt for at most block_size slots, and when a row's window would grow
    past block_size, the window slides (see step).
    """

    def __init__(self, model: LM, inputs: _Inputs) -> None:
        idx, pad, enc_mask, max_new_tokens = inputs.idx, inputs.pad, inputs.enc_mask, inputs.max_new_tokens
        start, compile = inputs.start, inputs.compile
        self.model, self.dtype = model, _compute_dtype(model)
        self.step_forward = _compiled_step(model) if compile else functools.partial(_forward, model)
        self.vocab_limit = inputs.vocab_limit  # ids >= this are never produced
        self.enc_out: torch.Tensor | None = None
        self.enc_mask = enc_mask
        self.tokens: torch.Tensor | None = None  # gpt: (B, L) the ids in the cache slots, to re-prefill from
        B, device = idx.size(0), idx.device
        if is_encoder_decoder(model_kind(model)):
            configured = getattr(model.config, "decoder_start_id", None)
            start = configured if configured is not None else start
            if start is None:
                raise ValueError("the model has no decoder_start_id and no eos_token_id was given to start the decoder")
            with self._autocast():
                self.enc_out = model.encode(idx, enc_mask)  # (B, S, C): once per input
            idx = torch.full((B, 1), start, dtype=torch.long, device=device)  # (B, 1): the decoder's first input
            # t5: no limit; bart: its learned positions (stand-ins in tests may not say)
            max_seq_len = cache_length(1 + max_new_tokens, getattr(model, "decoder_positions", None), compile)
        else:
            self.block_size = model.config.block_size
            idx, pad = fit_context(idx, pad, max_new_tokens, self.block_size)
            max_seq_len = cache_length(min(idx.size(1) + max_new_tokens, self.block_size), self.block_size, compile)
            self.tokens = torch.zeros(B, max_seq_len, dtype=torch.long, device=device)
            self.tokens[:, : idx.size(1)] = idx
        self.pad = pad
        self.first = idx
        self.positions = torch.arange(max_seq_len, device=device)  # made once: no host-to-device copy per step
        self.pos = 0
        model.set_kv_cache(batch_size=B, max_seq_len=max_seq_len, device=device, dtype=self.dtype)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def _logits(self, idx: torch.Tensor, forward: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Last-position logits (B, V) for idx (B, T) written at the next T cache positions, through forward."""
        return self._run(idx, forward)[:, -1]

    def _run(self, idx: torch.Tensor, forward: Callable[..., torch.Tensor]) -> torch.Tensor:
        """forward's logits (B, n, V') for idx (B, T) at the next T cache positions, V' = vocab_limit or V."""
        input_pos = self.positions[self.pos : self.pos + idx.size(1)]
        self.pos += idx.size(1)
        with self._autocast():
            logits = forward(idx, input_pos, self.pad, self.enc_out, self.enc_mask)  # (B, n, V)
        return logits[..., : self.vocab_limit]

    def prefill(self) -> torch.Tensor:
        """Logits (B, V) of the first new token: the prompt (gpt) or the decoder start token (t5) goes in."""
        return self._logits(self.first, functools.partial(_forward, self.model))  # eager: one shape, once

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); logits (B, V) of the next one.

        gpt, when every cache slot is taken: each row whose window (the tokens it attends to) would grow past
        block_size keeps its last max(1, block_size // 2) tokens (the new one included); the other rows keep their
        whole window. The rows are left-padded to one length again and prefilled anew, positions from 0 (learned
        positions and RoPE alike), as if each row's window were a prompt alone. The new window then grows one token
        per step until it would pass block_size again. The processors keep the whole history (sample.sampling).
        """
        if self.tokens is not None:
            if self.pos == self.tokens.size(1):
                return self._slide(token)
            self.tokens[:, self.pos] = token
        return self._logits(token[:, None], self.step_forward)

    def _slide(self, token: torch.Tensor) -> torch.Tensor:
        """step() with a full cache: re-prefill each row's window (cropped when too long) from cache slot 0."""
        seq = torch.cat([self.tokens, token[:, None]], dim=1)  # (B, L + 1)
        pad = self.pad if self.pad is not None else torch.zeros_like(token)
        lengths = seq.size(1) - pad  # (B,) each row's window with the new token
        keep = torch.where(lengths > self.block_size, max(1, self.block_size // 2), lengths)  # (B,)
        window, self.pad = _keep_last(seq, pad, keep)  # (B, M), M <= block_size
        self.tokens[:, : window.size(1)] = window
        self.pos = 0  # the slots after M hold stale keys/values; the causal mask never shows them
        return self._logits(window, functools.partial(_forward, self.model))  # eager: a prefill

    def feed(self, idx: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """gpt: feed idx (B, n) at the next n cache slots (the caller leaves room: n <= room()); logits (B, keep, V)
        of its last `keep` positions. Assisted decoding verifies a draft with keep = n, and rewinds what it rejects."""
        self.tokens[:, self.pos : self.pos + idx.size(1)] = idx
        return self._run(idx, functools.partial(_forward, self.model, keep=keep))  # (B, keep, V')

    def room(self) -> int:
        """gpt: the cache slots left before the window slides."""
        return self.tokens.size(1) - self.pos

    def rewind(self, pos: int) -> None:
        """gpt: forget the cache slots from pos on (their keys/values stay, unseen: attention masks by position)."""
        self.pos = pos

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (B,) in that order, with the ids, padding, encoder output and mask they go with."""
        self.model.reorder_cache(rows)
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, rows)  # (B, L)
        if self.pad is not None:
            self.pad = self.pad.index_select(0, rows)  # (B,)
        if self.enc_out is not None:
            self.enc_out = self.enc_out.index_select(0, rows)  # (B, S, C)
        if self.enc_mask is not None:
            self.enc_mask = self.enc_mask.index_select(0, rows)  # (B, S)


def _forward(
    model: LM,
    idx: torch.Tensor,
    input_pos: torch.Tensor,
    pad: torch.Tensor | None,
    enc_out: torch.Tensor | None,
    enc_mask: torch.Tensor | None,
    keep: int = 1,
) -> torch.Tensor:
    """Logits (B, keep, V) of the last `keep` positions of idx (B, T) at cache slots input_pos: the t5 decoder
    (whose input here is one token), or the gpt (left-padded or not), whose output head projects only those."""
    if enc_out is not None:
        return model.decode(idx, enc_out, enc_mask, input_pos=input_pos)
    if pad is not None:
        return model(idx, input_pos=input_pos, left_pad=pad, logits_to_keep=keep)[0]
    return model(idx, input_pos=input_pos, logits_to_keep=keep)[0]


# model -> its compiled one-token step. The step reaches the model through a weak reference: a value that held the
# model would keep its key alive, and every model ever compiled (weights and KV cache) with it.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_step(model: LM) -> Callable[..., torch.Tensor]:
    """_forward for one token under torch.compile (static shapes: compiled once per model, batch size and cache
    length bucket (cache_length); the KV cache buffers are inputs, so a new generation reuses it). Prefill stays
    eager."""
    if model not in _COMPILED:
        ref = weakref.ref(model)

        def step(*args: Any) -> torch.Tensor:
            with _RowLinear():
                return _forward(ref(), *args)

        _COMPILED[model] = torch.compile(step, dynamic=False)
    return _COMPILED[model]


def cache_length(needed: int, limit: int | None, compiled: bool) -> int:
    """KV cache slots for a generation that needs `needed` of them (gpt: at most limit = block_size; t5: no limit).
    Compiled decoding rounds up to a power of two (at least 64, at most the limit): the compiled step is specialised
    to the cache's shape, so each prompt length would otherwise compile anew, and past torch's recompile limit (8)
    the step runs eager."""
    if not compiled:
        return needed
    bucket = max(64, 1 << (needed - 1).bit_length())
    return min(bucket, limit) if limit is not None else bucket


def decoding_layout(model: nn.Module, compiled: bool = False) -> None:
    """Lay each CPU float32 linear weight (out, in) out for the one-row matmuls of batch-1 decoding. The values never
    change (a tied input embedding shares the head's storage); checkpoints are written contiguous (model.checkpoint).

    Eager (MKL's GEMV): the longer dimension contiguous, column-major when a weight has more outputs than inputs (the
    output head, qkv, the MLP's up-projection): MKL reads a row-major (V, C) head at about a third of the bandwidth
    and a column-major one at about two thirds. Compiled (the dot products of _RowLinear): row-major, each output's
    weights one contiguous run, the order that generated loop reads fastest (bench/generate.py). A model used both
    ways in turn is relaid at each switch (a copy of its linear weights), and its compiled step has one graph per
    layout: decode a model one way, or keep a copy per way (bench/generate.py does)."""
    for module in model.modules():
        w = module.weight if isinstance(module, nn.Linear) else None
        if w is None or w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() != 2:
            continue
        column_major = not compiled and w.size(0) > w.size(1)
        laid_out = w.stride() == (1, w.size(0)) if column_major else w.is_contiguous()
        if not laid_out:
            with torch.inference_mode(False):  # a normal tensor: the model may be trained afterwards
                w.data = w.data.t().contiguous().t() if column_major else w.data.contiguous()


class _RowLinear(torch.overrides.TorchFunctionMode):
    """Inside the compiled one-token step: a linear of one row x (.., 1, in) by a CPU float32 weight (out, in) is
    written as out dot products, sum(w * x, -1), which torch.compile turns into one vectorised loop reading each
    weight once, at about 85% of the memory bandwidth against MKL's GEMV at 30-70% (bench/generate.py; batch-1
    decoding is bound by reading the weights), when the weight is row-major (decoding_layout(compiled=True)); a
    column-major one reads faster through MKL. Outside compilation (an eager fallback) F.linear runs as it is: the
    product would be materialised."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.linear and torch.compiler.is_compiling():
            x = args[0] if args else kwargs["input"]
            w = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            float32 = x.dtype == w.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            if float32 and w.dim() == 2 and w.is_contiguous() and w.device.type == "cpu" and x.numel() == x.size(-1):
                y = (w * x.unsqueeze(-2)).sum(-1)  # (.., 1, out)
                return y if bias is None else y + bias
        return func(*args, **kwargs)


@contextlib.contextmanager
def _cached_decoding(model: LM, inputs: _Inputs, rows: int | None = None) -> Iterator[tuple[_Decoder, torch.Tensor]]:
    """Yield (decoder, logits (B, V) of the first new token) with the model in eval mode and its KV cache set.
    rows: how many rows the forwards after the prefill take (default B; beams B * K, assisted decoding's drafts + 1):
    the weights are laid out for the compiled one-row step only when that is the one forward that reads them.

    On exit, also when the caller stops iterating early, the KV cache is cleared and train/eval mode restored.
    """
    was_training = model.training
    if not was_training:  # a model kept for inference (not a training run's samples)
        one_row = (rows if rows is not None else inputs.idx.size(0)) == 1
        decoding_layout(model, compiled=inputs.compile and one_row)
    try:
        model.eval()
        decoder = _Decoder(model, inputs)
        yield decoder, decoder.prefill()
    finally:
        model.clear_kv_cache()
        model.train(was_training)


def _config(config: GenerationConfig | None, controls: dict[str, object]) -> GenerationConfig:
    """config (default: GenerationConfig()) with the keyword controls applied; unknown names are a TypeError."""
    cfg = config if config is not None else GenerationConfig()
    unknown = sorted(set(controls) - set(GenerationConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown generation control(s) {', '.join(unknown)}; see sample.sampling.GenerationConfig")
    return cfg.replace(**controls) if controls else cfg


def new_token_budget(cfg: GenerationConfig, prompt_len: int, kind: str) -> int:
    """New tokens allowed for a prompt of prompt_len tokens: max_new_tokens, else what max_length leaves.

    max_length counts the prompt for gpt and the decoder start token for t5, as in transformers.
    """
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens
    max_length = cfg.max_length if cfg.max_length is not None else DEFAULT_MAX_LENGTH
    used = 1 if is_encoder_decoder(kind) else prompt_len
    if max_length <= used:
        what = "the decoder start token" if is_encoder_decoder(kind) else f"the prompt of {prompt_len} tokens"
        raise ValueError(f"max_length={max_length} leaves no room after {what}; raise it or set max_new_tokens")
    return max_length - used


def needs_processing(cfg: GenerationConfig) -> bool:
    """Whether any of the processors (steps 1-5 of sample.sampling) is on."""
    return bool(
        cfg.repetition_penalty != 1.0
        or cfg.presence_penalty
        or cfg.frequency_penalty
        or cfg.no_repeat_ngram_size
        or cfg.bad_words_ids
        or cfg.suppress_tokens
        or cfg.min_new_tokens
        or cfg.forced_bos_token_id is not None
        or cfg.forced_eos_token_id is not None
    )


def _history(model: LM, idx: torch.Tensor, pad: torch.Tensor | None, max_new: int, V: int, cfg: GenerationConfig):
    """The processors' token history: a gpt row's prompt and output, a t5 row's output alone."""
    prompt = idx if model_kind(model) == "gpt" else idx[:, :0]
    return History.start(prompt, pad, max_new, V, cfg)


@torch.inference_mode()
def generate_tokens(
    model: LM,
    idx: torch.Tensor,
    max_new_tokens: int | None = None,
    *,
    config: GenerationConfig | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    attention_mask: torch.Tensor | None = None,
    vocab_limit: int | None = None,
    compile: bool = False,
    on_scores: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    assistant_model: LM | None = None,
    **controls: object,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, one (B,) LongTensor per step, using the model's KV cache.

    Args:
        model: a GPT (continues idx) or a T5 (encodes idx, then decodes from its decoder start token).
        idx: (B, T) token ids on the model's device, T >= 1: the prompts (gpt) or the encoder inputs (t5). A gpt
            prompt longer than model.config.block_size is cropped to its most recent tokens (fit_context); a t5
            input longer than block_size keeps its first block_size tokens. Both warn.
        max_new_tokens: steps at most (overrides the config's; else max_length - T, see GenerationConfig), at any
            length: a gpt slides its window past block_size (see _Decoder.step; the processors still see the whole
            prompt and output), a t5 decoder has no position limit.
        config, **controls: the decoding controls (sample.sampling.GenerationConfig); keywords override config.
            eos_token_id: a row is finished once it produced one of them and then repeats the first one; generation
            stops when every row is finished. A t5 model without decoder_start_id starts from the first eos id.
            num_beams must be 1 (see beam_search); num_return_sequences is the caller's business (repeat rows).
        generator: random source on the model's device: one for all rows, one per row (a row then samples the same
            whatever the batch), or None (torch's global RNG).
        attention_mask: (B, T) 1 for tokens, 0 for padding; gpt rows must be padded on the left, t5 inputs anywhere.
        vocab_limit: only ids below it are generated (the tokenizer's size when the model's vocabulary is larger).
        compile: run the one-token decoding step under torch.compile (compiled on first use per model and batch
            size: pays off for long or repeated generations; bench/generate.py measures it).
        on_scores: called at every step with (scores (B, V) the tokens were chosen from (sampling.next_scores),
            the tokens (B,)), before they are yielded: per-token log-probabilities come from here.
        assistant_model: a smaller gpt with the same tokenizer that drafts tokens for the model to verify (see
            sample.assisted); without one, config.prompt_lookup_num_tokens > 0 drafts them from the context. Greedy
            output is the model's greedy output, sampling keeps the model's distribution; one gpt row (B = 1).
            With compile, the rounds without a draft take the compiled one-token step; verification is eager.
    The model is put in eval mode while generating and restored afterwards; the KV cache is always cleared,
    including when the caller stops iterating early.
    """
    cfg = _config(config, controls)
    if cfg.num_beams > 1:
        raise ValueError(f"generate_tokens samples or decodes greedily; num_beams={cfg.num_beams} needs beam_search")
    if max_new_tokens is None:
        max_new_tokens = new_token_budget(cfg, idx.size(1), model_kind(model))
    eos = cfg.eos_ids(None)
    inputs = _fit_inputs(model, idx, attention_mask, max_new_tokens, eos, vocab_limit, compile)
    if max_new_tokens == 0:
        return
    if cfg.prompt_lookup_num_tokens or assistant_model is not None:
        _check_assisted(model, inputs, assistant_model)
        yield from _assisted_tokens(model, inputs, cfg, generator, eos, on_scores, assistant_model)
        return
    idx, pad = inputs.idx, inputs.pad
    eos_ids = torch.tensor(eos, dtype=torch.long, device=idx.device)
    process = needs_processing(cfg)
    with _cached_decoding(model, inputs) as (decoder, logits):
        history = _history(model, idx, pad, max_new_tokens, logits.size(-1), cfg) if process else None
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for step in range(max_new_tokens):
            if history is not None:
                logits = process_logits(logits.float(), cfg, history, eos)
            token = choose(logits, cfg, generator)  # (B,)
            if on_scores is not None:
                on_scores(next_scores(logits, cfg), token)
            if eos:
                token = token.masked_fill(finished, eos[0])  # finished rows repeat eos
                finished |= torch.isin(token, eos_ids)
            if history is not None:
                history.append(token)
            yield token
            if step == max_new_tokens - 1:
                break  # no forward pass for a token nobody will read
            if eos and bool(finished.all()):  # host-device sync, once per step
                break
            logits = decoder.step(token)  # (B, V)


def _check_assisted(model: LM, inputs: _Inputs, assistant_model: LM | None) -> None:
    """ValueError, naming the fix, for what assisted decoding does not do."""
    what = "a draft model (assistant_model)" if assistant_model is not None else "prompt lookup"
    if model_kind(model) != "gpt" or (assistant_model is not None and model_kind(assistant_model) != "gpt"):
        raise ValueError(
            f"assisted decoding with {what} runs decoder-only (gpt) models; decode an encoder-decoder without it"
        )
    if inputs.idx.size(0) != 1:
        raise ValueError(
            f"assisted decoding with {what} runs one row at a time, got {inputs.idx.size(0)}; generate() and the "
            "pipeline run a batch's rows one after another"
        )
    if assistant_model is not None and assistant_model.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"assistant_model has a vocabulary of {assistant_model.config.vocab_size} tokens and the model "
            f"{model.config.vocab_size}: a draft model must use the model's tokenizer"
        )


class _DraftModel:
    """A draft gpt decoding ahead of the model (one row) in its own KV cache, rewound to what the model keeps.

    decoder: the draft's prefilled decoder of the prompt (from _cached_decoding, which also puts it in eval mode
    and clears its cache at the end); inputs: the ones it was built from."""

    def __init__(self, decoder: _Decoder, inputs: _Inputs) -> None:
        self.model, self.inputs = decoder.model, inputs
        self._use(decoder, inputs.idx.size(1))

    def _use(self, decoder: _Decoder, length: int) -> None:
        """Draft from decoder, whose cache holds the last decoder.pos of the sequence's first `length` tokens."""
        self.decoder = decoder
        self.read = length  # tokens of the sequence read so far
        self.offset = decoder.pos - length  # cache slot of sequence position p: p + offset

    def propose(
        self, seq: torch.Tensor, k: int, cfg: GenerationConfig, generator: Any
    ) -> tuple[list[int], list[torch.Tensor] | None]:
        """Up to k draft ids after seq (N,) and, when sampling, the distributions (V,) they were drawn from. Reads
        the tokens it has not seen yet first; when its cache has no room for them and the drafts, it starts a new
        one from the last half of its context (as the model's window slides)."""
        pending = seq[self.read :]
        if self.decoder.room() < pending.numel() + k - 1:
            window = max(1, self.model.config.block_size // 2)
            decoder = _Decoder(self.model, dataclasses.replace(self.inputs, idx=seq[None, -window:]))
            logits = decoder.prefill()[:, None]  # (1, 1, V)
            self._use(decoder, seq.numel())
            k = min(k, self.decoder.room() + 1)
        else:
            logits = self.decoder.feed(pending[None])  # (1, 1, V)
        logits = logits[:, -1]  # (1, V)
        drafts, qs = [], []
        for j in range(k):
            if cfg.greedy:
                drafts.append(int(torch.argmax(logits, dim=-1)))
            else:
                q = torch.softmax(next_scores(logits, cfg), dim=-1)  # (1, V)
                drafts.append(int(draw(q, generator)))
                qs.append(q[0])
            if j < k - 1:
                logits = self.decoder.feed(torch.tensor([[drafts[-1]]], device=seq.device))[:, -1]
        self.read = seq.numel() + k - 1  # the last draft is not read
        return drafts, (None if cfg.greedy else qs)

    def keep(self, length: int) -> None:
        """The model kept the sequence's first `length` tokens: forget the rejected drafts."""
        self.read = min(self.read, length)
        self.decoder.rewind(self.read + self.offset)


def _assisted_tokens(
    model: LM,
    inputs: _Inputs,
    cfg: GenerationConfig,
    generator: Any,
    eos: list[int],
    on_scores: Callable[[torch.Tensor, torch.Tensor], None] | None,
    assistant_model: LM | None,
) -> Iterator[torch.Tensor]:
    """generate_tokens' loop for one gpt row with drafts (sample.assisted): each round the drafts and the last
    token go through the model in one forward; the drafts it agrees with (greedy: its argmax; sampling: the
    speculative rule) are yielded, then its own token at the first disagreement (or after the last draft). The
    processors see each yielded token before the next position is judged, as in the plain loop. Drafting stops
    while the cache has no room for a round (the window then slides with plain steps) or the budget is nearly spent.
    """
    idx, max_new = inputs.idx, inputs.max_new_tokens
    seq = torch.cat([idx[0], idx.new_zeros(max_new)])  # prompt, then the yielded tokens
    n, remaining = idx.size(1), max_new
    drafts_per_round = cfg.prompt_lookup_num_tokens or cfg.num_assistant_tokens
    ngram = cfg.max_matching_ngram_size or DEFAULT_NGRAM
    process = needs_processing(cfg)
    with _cached_decoding(model, inputs, drafts_per_round + 1) as (decoder, logits), contextlib.ExitStack() as stack:
        history = _history(model, idx, inputs.pad, max_new, logits.size(-1), cfg) if process else None
        drafter = None
        if assistant_model is not None:
            draft_inputs = dataclasses.replace(inputs, compile=False, pad=None)
            draft_decoder, _ = stack.enter_context(_cached_decoding(assistant_model, draft_inputs))
            drafter = _DraftModel(draft_decoder, draft_inputs)
        rows = logits[:, None]  # (1, 1, V): the positions to judge this round
        drafts: list[int] = []
        qs: list[torch.Tensor] | None = None
        while True:
            kept = 0
            # greedy without processors: every position's choice at once (one host sync a round, not one a token)
            picks = rows.argmax(dim=-1)[0].tolist() if cfg.greedy and history is None else None
            for i in range(rows.size(1)):
                scores = rows[:, i]  # (1, V)
                if history is not None:
                    scores = process_logits(scores.float(), cfg, history, eos)
                if picks is not None:
                    token = torch.tensor(picks[i : i + 1], device=idx.device)  # (1,)
                elif i < len(drafts) and cfg.greedy:
                    token = torch.argmax(scores, dim=-1)  # (1,)
                elif i < len(drafts):
                    p = torch.softmax(next_scores(scores, cfg), dim=-1)[0]  # (V,)
                    q = qs[i] if qs is not None else None
                    token = torch.tensor([keep_or_replace(p, drafts[i], q, generator)], device=idx.device)
                else:
                    token = choose(scores, cfg, generator)  # (1,)
                if on_scores is not None:
                    on_scores(next_scores(scores, cfg), token)
                if history is not None:
                    history.append(token)
                chosen = picks[i] if picks is not None else int(token)
                seq[n], n, remaining = chosen, n + 1, remaining - 1
                yield token
                if remaining == 0 or chosen in eos:
                    return
                if i == len(drafts) or chosen != drafts[i]:
                    break
                kept += 1
            if drafts:  # the cache holds the last round's token and every draft: keep the agreed ones
                decoder.rewind(decoder.pos - len(drafts) + kept)
                if drafter is not None:
                    drafter.keep(n - 1)
                    grow = kept == len(drafts)  # transformers' heuristic schedule: +2 when all kept, else -1
                    drafts_per_round = drafts_per_round + 2 if grow else max(1, drafts_per_round - 1)
            k = min(drafts_per_round, remaining - 1, decoder.room() - 1)
            drafts, qs = [], None
            if k >= 1 and drafter is not None:
                drafts, qs = drafter.propose(seq[:n], k, cfg, generator)
            elif k >= 1:
                drafts = lookup_draft(seq[:n], k, ngram)
            if drafts:
                step = torch.tensor([[int(seq[n - 1]), *drafts]], device=idx.device)  # (1, 1 + drafts)
                rows = decoder.feed(step, keep=step.size(1))  # (1, 1 + drafts, V)
            else:
                rows = decoder.step(seq[n - 1 : n])[:, None]  # (1, 1, V); slides a full window


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
    max_new_tokens: int | None = None,
    *,
    config: GenerationConfig | None = None,
    attention_mask: torch.Tensor | None = None,
    vocab_limit: int | None = None,
    progress: bool = False,
    **controls: object,
) -> list[list[tuple[list[int], float]]]:
    """Beam search with the KV cache; per input row, up to num_return_sequences (tokens, score), best first.

    Follows transformers' beam search: each step keeps the 2 * num_beams best continuations of all beams, those
    ending in an eos id (among the num_beams best) become finished hypotheses, the num_beams best others run on. A
    hypothesis scores sum(log p) / len ** length_penalty (len counts new tokens, eos included): length_penalty > 0
    favours longer outputs, < 0 shorter ones. A row stops once num_beams hypotheses are finished and
    early_stopping is True, or (False) once no running beam can beat the worst finished one (transformers'
    heuristic); at max_new_tokens the num_beams best candidates are finished as they are. The processors of
    sample.sampling (penalties, n-gram and word bans, min_new_tokens) act on each beam's logits before the
    log-softmax; the sampling warpers do not apply (beam search is deterministic). Past a gpt's context each beam
    slides its own window (its cache rows follow reorder, then re-prefill as in generate_tokens).

    Args:
        model, idx, max_new_tokens, attention_mask, vocab_limit: as for generate_tokens.
        config, **controls: num_beams, num_return_sequences (<= num_beams), length_penalty, early_stopping,
            eos_token_id (None: every hypothesis runs to max_new_tokens) and the processors.
        progress: a progress bar of the decoding steps on stderr (only on a terminal).
    Returns:
        For each row of idx, a list of (generated token ids, score) sorted by score, best first. With
        max_new_tokens == 0, the one empty hypothesis ([], 0.0).
    """
    cfg = _config(config, controls)
    if max_new_tokens is None:
        max_new_tokens = new_token_budget(cfg, idx.size(1), model_kind(model))
    eos = cfg.eos_ids(None)
    inputs = _fit_inputs(model, idx, attention_mask, max_new_tokens, eos, vocab_limit)
    idx, pad = inputs.idx, inputs.pad
    B, K = idx.size(0), cfg.num_beams
    if max_new_tokens == 0:
        return [[([], 0.0)] for _ in range(B)]
    finished = [_Finished(K, cfg.length_penalty) for _ in range(B)]
    done = [False] * B
    beams: list[list[int]] = [[] for _ in range(B * K)]  # tokens of each running beam; row b owns b*K .. b*K+K-1
    scores = torch.full((B, K), NEG_INF, device=idx.device)
    scores[:, 0] = 0.0  # the K beams of a row start identical: only the first may grow at the first step
    idle = eos[0] if eos else 0  # fed to the beams of finished rows, whose outputs nobody reads
    with (
        _cached_decoding(model, inputs, B * K) as (decoder, logits),
        progress_bar(progress, max_new_tokens, "beam search") as bar,
    ):
        # prefill (and encode) each row once, then copy its cache rows and encoder output to its K beams
        expand = torch.arange(B, device=idx.device).repeat_interleave(K)  # cache rows: B -> B*K
        decoder.reorder(expand)
        logits = logits.repeat_interleave(K, dim=0)  # (B*K, V)
        history = None
        if needs_processing(cfg):
            history = _history(model, idx, pad, max_new_tokens, logits.size(-1), cfg)
            history.reorder(expand)
        for length in range(1, max_new_tokens + 1):
            logits = logits.float()
            if history is not None:
                logits = process_logits(logits, cfg, history, eos)
            logprobs = torch.log_softmax(logits, dim=-1) + scores.view(-1, 1)  # (B*K, V): sums so far
            V = logprobs.size(-1)
            top, flat = torch.topk(logprobs.view(B, K * V), min(2 * K, K * V), dim=-1)  # (B, 2K) best continuations
            last = length == max_new_tokens
            running: list[tuple[float, int, int]] = []  # (sum of log p, parent cache row, token), K per row
            for b, (cand_scores, cand_idx) in enumerate(zip(top.tolist(), flat.tolist())):  # one sync per step
                live: list[tuple[float, int, int]] = []
                if not done[b]:
                    live = _row_candidates(finished[b], beams, b * K, K, V, cand_scores, cand_idx, eos, last)
                    best = live[0][0] if live else NEG_INF
                    done[b] = last or finished[b].is_done(best, length, cfg.early_stopping)
                if done[b]:
                    live = []
                running += live + [(NEG_INF, b * K, idle)] * (K - len(live))  # finished rows idle along
            bar.update()
            if last or all(done):
                break
            beams = [beams[parent] + [token] for _, parent, token in running]
            scores = torch.tensor([s for s, _, _ in running], device=idx.device).view(B, K)  # host-to-device, once
            parents = torch.tensor([p for _, p, _ in running], device=idx.device)  # (B*K,) parent rows
            tokens = torch.tensor([t for _, _, t in running], device=idx.device)  # (B*K,)
            decoder.reorder(parents)
            if history is not None:
                history.reorder(parents)
                history.append(tokens)
            logits = decoder.step(tokens)  # (B*K, V)
    return [f.hyps[: cfg.num_return_sequences] for f in finished]


def _row_candidates(
    finished: _Finished,
    beams: list[list[int]],
    first_row: int,
    K: int,
    V: int,
    cand_scores: list[float],
    cand_idx: list[int],
    eos: list[int],
    last: bool,
) -> list[tuple[float, int, int]]:
    """One input row's step of beam search, from its 2K best continuations (cand_scores, flat indices into its K
    beams x V tokens, best first): those ending in eos (or all, at the last step) among the K best become finished
    hypotheses; the K best others run on, returned as (sum of log p, parent cache row, token)."""
    live: list[tuple[float, int, int]] = []
    for rank, (score, i) in enumerate(zip(cand_scores, cand_idx)):
        parent, token = first_row + i // V, i % V
        if score <= NEG_INF / 2:
            continue  # a banned token (-inf): never a hypothesis
        if token in eos or last:
            if rank < K:  # a candidate outside the K best never finishes (transformers)
                finished.add(beams[parent] + [token], score)
        elif len(live) < K:
            live.append((score, parent, token))
    return live


@dataclass
class Completion:
    """One generated output and how it came about."""

    prompt: str  # the text it continues (gpt) or the encoder input (t5); infill: the prefix
    text: str  # the generated text, without the stop string or eos that ended it
    token_ids: list[int]  # every generated id, the one that ended the output (eos, end of a stop string) included
    finish_reason: str  # eos | stop (a stop string) | top_level (the code block ended) | length (token limit)
    seed: int | None  # the row's seed: generate(prompt, seed=seed, num_return_sequences=1) gives this output again
    score: float | None = None  # beam search: the hypothesis score
    # output_scores: per generated token (as token_ids), its log-probability under the distribution it was drawn
    # from (sampling.next_scores), and the top_logprobs most likely ids at that step with theirs
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    suffix: str | None = None  # infill: the text after the generated middle


def tokenizer_vocab_limit(model: LM, tokenizer: Tokenizer) -> int | None:
    """The tokenizer's size when the model predicts more ids than it can decode (T5's padded 32128 vs 32100)."""
    size = getattr(tokenizer, "vocab_size", None)
    return size if size is not None and size < model.config.vocab_size else None


def strips_space(model: LM, tokenizer: Tokenizer) -> bool:
    """A T5 output decoded token by token with a SentencePiece vocabulary loses its leading word-boundary space."""
    return is_encoder_decoder(model_kind(model)) and bool(getattr(tokenizer, "strips_leading_space", False))


def row_seeds(seed: int | None, n: int) -> list[int]:
    """Seeds of n rows: seed, seed + 1, ...; seed None draws one from torch's global RNG (so it can be recorded)."""
    base = int(torch.randint(0, 2**31 - 1, ())) if seed is None else int(seed)
    return [base + i for i in range(n)]


def row_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def _prompt_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The model's device; an explicit device must match it (nanoloom never moves a model behind your back)."""
    here = model_device(model)
    if device is not None:
        wanted = torch.device(device)
        if wanted.type != here.type or (wanted.index is not None and here.index is not None and wanted != here):
            raise ValueError(f"device={str(device)!r} but the model is on {here}; move it first with model.to(device)")
    return here


def prompt_ids(tokenizer: Tokenizer, prompt: str, kind: str) -> list[int]:
    """The ids generation starts from: a gpt prompt (empty: end-of-text alone, GPT-2's unconditional start), or an
    encoder input ending with end-of-text (as every input nanoloom trains T5 on, and Hugging Face's "</s>"); a bart
    input also starts with its tokenizer's "<s>", as BART's tokenizer frames every input."""
    ids = tokenizer.encode(prompt)
    if not ids or is_encoder_decoder(kind):
        if getattr(tokenizer, "eot_id", None) is None:
            raise ValueError("the tokenizer has no end-of-text token to start from or end an input with")
        ids = ids + [tokenizer.eot_id]
    if kind == "bart":
        if getattr(tokenizer, "bos_id", None) is None:
            raise ValueError('a bart input starts with "<s>", and this tokenizer has no such token')
        ids = [tokenizer.bos_id, *ids]
    return ids


def progress_bar(enabled: bool, total: int, desc: str) -> tqdm:
    """A bar of decoding steps on stderr, drawn only when enabled and stderr is a terminal (as data preparation's)."""
    return tqdm(total=total, desc=desc, unit="tok", leave=False, disable=None if enabled else True)


def _batch(rows: list[list[int]], kind: str, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, attention_mask), both (B, T): gpt rows padded on the left, t5 inputs on the right."""
    T = max(len(r) for r in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(T - len(r), T) if kind == "gpt" else slice(0, len(r))
        idx[i, cols], mask[i, cols] = torch.tensor(r, dtype=torch.long), 1
    return idx.to(device), mask.to(device)


class _Request:
    """The rows of one generate()/stream() call: prompts x num_return_sequences, their seeds and text rows."""

    def __init__(
        self,
        model: LM,
        tokenizer: Tokenizer,
        prompts: list[str],
        ids: list[list[int]],
        cfg: GenerationConfig,
        seed: int | None,
        device: str | torch.device | None,
        code_prompts: list[str] | None = None,
        progress: bool = False,
        top_logprobs: int | None = None,
        assistant_model: LM | None = None,
        compile: bool = False,
    ) -> None:
        self.model, self.tokenizer, self.cfg, self.assistant_model = model, tokenizer, cfg, assistant_model
        self.compile = compile  # generate_tokens' compile (beam search runs eager)
        if assistant_model is not None and cfg.num_beams > 1:
            raise ValueError(
                f"assistant_model drafts for greedy decoding and sampling; with num_beams={cfg.num_beams} leave it out"
            )
        self.progress = progress  # a progress bar on stderr (only on a terminal)
        # None: no scores; k >= 0: each token's log-probability and the k most likely ids at its step
        self.top_logprobs = top_logprobs
        if top_logprobs is not None and cfg.num_beams > 1:
            raise ValueError(
                f"output_scores scores sampled or greedy tokens; with num_beams={cfg.num_beams} each output's "
                "Completion.score is its beam score"
            )
        if top_logprobs is not None and top_logprobs < 0:
            raise ValueError(f"top_logprobs={top_logprobs} must be >= 0")
        self.kind = model_kind(model)
        self.device = _prompt_device(model, device)
        n = cfg.num_return_sequences
        self.prompts = [p for p in prompts for _ in range(n)]
        self.ids = [i for i in ids for _ in range(n)]
        # per row, per token: (its log-probability, {id: log-probability} of the top_logprobs likeliest)
        self.scores: list[list[tuple[float, dict[int, float]]]] = [[] for _ in self.ids]
        self.seeds = row_seeds(seed, len(self.ids))
        self.eos = cfg.eos_ids(getattr(tokenizer, "eot_id", None))
        self.limits = [new_token_budget(cfg, len(i), self.kind) for i in self.ids]
        code = code_prompts if cfg.stop_at_top_level and self.kind == "gpt" else None
        # ids that are structure, not text: a forced first token, BART's <s> that starts every output
        hidden = [t for t in (cfg.forced_bos_token_id, getattr(model.config, "bos_id", None)) if t is not None]
        self.rows = [
            TextRow(
                tokenizer,
                eos_ids=self.eos,
                stop_strings=cfg.stop_strings,
                max_tokens=limit,
                prompt=None if code is None else code[j // n],
                strip_leading_space=strips_space(model, tokenizer),
                hidden_ids=hidden,
            )
            for j, limit in enumerate(self.limits)
        ]

    def steps(self, on_token: Callable[[int, int], None] | None = None) -> Iterator[list[str]]:
        """Sample every row as one batch (assisted decoding: one row after another); per step, the newly final text
        of each row (empty for the rows not running); then the rest. on_token(row, id) sees each id a row takes (the
        one that ends it included) as it is generated."""
        everything = list(range(len(self.rows)))
        assisted = self.assistant_model is not None or bool(self.cfg.prompt_lookup_num_tokens)
        for group in [[j] for j in everything] if assisted else [everything]:
            yield from self._steps(group, on_token)
        yield [row.finish() for row in self.rows]

    def _steps(self, group: list[int], on_token: Callable[[int, int], None] | None) -> Iterator[list[str]]:
        """steps() of the rows in group, generated as one batch."""
        idx, mask = _batch([self.ids[j] for j in group], self.kind, self.eos[0] if self.eos else 0, self.device)
        limit = max(self.limits[j] for j in group)
        tokens = generate_tokens(
            self.model,
            idx,
            limit,
            config=self.cfg.replace(num_return_sequences=1),
            generator=row_generators([self.seeds[j] for j in group], self.device),
            attention_mask=mask,
            eos_token_id=self.eos or None,
            vocab_limit=tokenizer_vocab_limit(self.model, self.tokenizer),
            on_scores=functools.partial(self._record, group) if self.top_logprobs is not None else None,
            assistant_model=self.assistant_model,
            compile=self.compile,
        )
        rows = [self.rows[j] for j in group]
        bar = progress_bar(self.progress, limit, f"generating {len(rows)} rows")
        try:
            for step in tokens:
                ids = step.tolist()  # a sync: text needs ids
                pieces = [""] * len(self.rows)
                for j, row, t in zip(group, rows, ids):
                    if on_token is not None and not row.done:
                        on_token(j, t)
                    pieces[j] = row.push(t)
                yield pieces
                bar.update()
                if all(row.done for row in rows):
                    break
        finally:
            bar.close()
            tokens.close()  # stops generation early (stop strings) and clears the KV cache

    def beams(self) -> list[Completion]:
        """Beam search, prompt by prompt; each of the num_return_sequences best beams cut like a sampled row."""
        out = []
        n = self.cfg.num_return_sequences
        for j in range(0, len(self.ids), n):
            idx = torch.tensor([self.ids[j]], dtype=torch.long, device=self.device)
            hyps = beam_search(
                self.model,
                idx,
                self.limits[j],
                config=self.cfg,
                eos_token_id=self.eos or None,
                vocab_limit=tokenizer_vocab_limit(self.model, self.tokenizer),
                progress=self.progress,
            )[0]
            for r, (tokens, score) in enumerate(hyps):
                row = self.rows[j + r]
                text = "".join(row.push(t) for t in tokens) + row.finish()
                out.append(self._completion(j + r, text, score))
        return out

    def _record(self, group: list[int], scores: torch.Tensor, token: torch.Tensor) -> None:
        """One step's log-probabilities of the rows in group: each row's token's, and the top_logprobs most likely."""
        logprobs = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
        chosen = logprobs.gather(1, token[:, None])[:, 0]  # (B,)
        top = logprobs.topk(min(self.top_logprobs, logprobs.size(-1)), dim=-1)
        for j, c, ids, values in zip(group, chosen.tolist(), top.indices.tolist(), top.values.tolist()):
            self.scores[j].append((c, dict(zip(ids, values))))

    def _completion(self, j: int, text: str, score: float | None = None) -> Completion:
        row = self.rows[j]
        seed = None if self.cfg.num_beams > 1 else self.seeds[j]
        completion = Completion(self.prompts[j], text, row.token_ids, row.finish_reason or "length", seed, score)
        if self.top_logprobs is not None:
            steps = self.scores[j][: len(row.token_ids)]  # the steps of this row's tokens (then it idled on eos)
            completion.logprobs = [chosen for chosen, _ in steps]
            completion.top_logprobs = [top for _, top in steps]
        return completion

    def run(
        self,
        on_text: Callable[[int, str], None] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """Every row's Completion; on_text(row, piece) sees each piece of text as soon as it is final, on_token(row,
        id) each generated id as soon as it is drawn (beam search: both at the end)."""
        if self.cfg.num_beams > 1:
            completions = self.beams()
            for j, c in enumerate(completions):
                for t in c.token_ids if on_token is not None else ():
                    on_token(j, t)
                if on_text is not None and c.text:
                    on_text(j, c.text)
            return completions
        texts: list[list[str]] = [[] for _ in self.rows]
        for pieces in self.steps(on_token):
            for j, (text, piece) in enumerate(zip(texts, pieces)):
                text.append(piece)
                if on_text is not None and piece:
                    on_text(j, piece)
        return [self._completion(j, "".join(t)) for j, t in enumerate(texts)]


def generate(
    model: LM,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str],
    config: GenerationConfig | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device | None = None,
    on_text: Callable[[int, str], None] | None = None,
    progress: bool = False,
    output_scores: bool = False,
    top_logprobs: int = 0,
    on_token: Callable[[int, int], None] | None = None,
    input_ids: Sequence[Sequence[int]] | None = None,
    assistant_model: LM | None = None,
    compile: bool = False,
    **controls: object,
) -> list[list[Completion]]:
    """Completions of one or several prompts, generated as one batch; per prompt, num_return_sequences of them.

    gpt: a completion continues its prompt; t5: the prompt is the encoder input and the completion the decoder's
    output. config and the keyword controls are sample.sampling.GenerationConfig's (keywords win); eos_token_id
    defaults to the tokenizer's end-of-text. Row j (prompt-major: prompt i, sequence r is row i * n + r) samples
    with seed + j, so each completion is reproducible on its own (Completion.seed). seed None draws a seed.
    num_beams > 1 runs beam search (one prompt after another; deterministic). device=None: the model's device.
    on_text(row, piece) is called with each row's text as soon as it is final (a streamer; beams: at the end);
    on_token(row, id) with each generated id as soon as it is drawn (transformers' streamers take ids).
    input_ids: the prompts' token ids, one list per prompt, used instead of encoding them (the pipeline crops them
    for handle_long_generation="hole"); the prompts then only label the Completions.
    progress: a bar of the decoding steps on stderr, drawn only on a terminal.
    output_scores: each Completion also holds its tokens' log-probabilities (Completion.logprobs) and, per token,
    the top_logprobs most likely ids with theirs (transformers' compute_transition_scores(normalize_logits=True);
    OpenAI's logprobs); not with beam search, whose outputs carry their beam score.
    assistant_model (or the control prompt_lookup_num_tokens): assisted decoding, rows one after another (see
    generate_tokens).
    compile: the one-token decoding step under torch.compile (generate_tokens; 12-18 s to compile on first use
    per model and batch shape, then the fastest batch-1 decoding on a CPU); beam search runs eager.
    """
    cfg = _config(config, controls)
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    if not texts or not all(isinstance(p, str) for p in texts):
        raise TypeError("prompts must be a string or a non-empty list of strings")
    kind = model_kind(model)
    ids = [prompt_ids(tokenizer, p, kind) for p in texts] if input_ids is None else [list(i) for i in input_ids]
    if len(ids) != len(texts) or not all(ids):
        raise ValueError(f"input_ids must hold one non-empty list of ids per prompt ({len(texts)})")
    scored = top_logprobs if output_scores else None
    request = _Request(
        model, tokenizer, texts, ids, cfg, seed, device, texts, progress, scored, assistant_model, compile
    )
    completions = request.run(on_text, on_token)
    n = cfg.num_return_sequences
    return [completions[i : i + n] for i in range(0, len(completions), n)]


def stream(
    model: LM,
    tokenizer: Tokenizer,
    prompt: str,
    config: GenerationConfig | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device | None = None,
    assistant_model: LM | None = None,
    compile: bool = False,
    **controls: object,
) -> Iterator[str]:
    """Yield the completion of one sample piece by piece, as soon as each piece is final.

    The pieces join to exactly generate(...)[0][0].text for the same prompt, controls and seed. A piece never ends
    inside a multi-byte character or inside a possible stop string; see generate() for the rest.
    """
    cfg = _config(config, controls)
    if cfg.num_beams > 1:
        raise ValueError(f"stream cannot show beam search (num_beams={cfg.num_beams}): beams are only final at the end")
    if cfg.num_return_sequences != 1:
        raise ValueError("stream yields one sample; call it once per sample (with seed + i) or use generate()")
    ids = [prompt_ids(tokenizer, prompt, model_kind(model))]
    request = _Request(
        model, tokenizer, [prompt], ids, cfg, seed, device, [prompt], assistant_model=assistant_model, compile=compile
    )
    for pieces in request.steps():
        if pieces[0]:
            yield pieces[0]


def complete(
    model: LM,
    tokenizer: Tokenizer,
    prompt: str,
    config: GenerationConfig | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device | None = None,
    **controls: object,
) -> list[str]:
    """The texts of generate(model, tokenizer, prompt, ...): num_return_sequences completions of one prompt."""
    return [c.text for c in generate(model, tokenizer, prompt, config, seed=seed, device=device, **controls)[0]]


def infill(
    model: LM,
    tokenizer: Tokenizer,
    prefix: str,
    suffix: str,
    config: GenerationConfig | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device | None = None,
    on_text: Callable[[int, str], None] | None = None,
    progress: bool = False,
    compile: bool = False,
    **controls: object,
) -> list[Completion]:
    """Fill in the middle between prefix and suffix with a model trained on fill-in-the-middle data.

    The model reads <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> and writes the middle up to
    end-of-text (data.fim); prefix + completion.text + suffix is the filled-in document. Returns
    num_return_sequences completions (Completion.prompt is the prefix, Completion.suffix the suffix).
    """
    from data.fim import infill_prompt_ids

    cfg = _config(config, controls)
    if model_kind(model) != "gpt":
        raise ValueError("infill needs a decoder-only (gpt) model trained with fill-in-the-middle (data.fim_rate > 0)")
    if getattr(tokenizer, "fim_ids", None) is None:
        raise ValueError(
            "this tokenizer has no fill-in-the-middle tokens: the model was not trained for infilling; train it "
            "with data.fim_rate > 0 (e.g. experiment=gpt-mini_python-code_fim)"
        )
    ids = [infill_prompt_ids(tokenizer, prefix, suffix)]
    cfg = cfg.replace(stop_at_top_level=False)
    request = _Request(model, tokenizer, [prefix], ids, cfg, seed, device, progress=progress, compile=compile)
    completions = request.run(on_text)
    for c in completions:
        c.suffix = suffix
    return completions
