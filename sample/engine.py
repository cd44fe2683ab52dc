"""Continuous batching: many requests share a GPT's decoding steps, each joining and leaving the batch on its own.

The engine keeps one KV cache of max_batch_size slots x block_size columns and one shared write column t. A
request joins at the next step: its prompt is prefilled alone (positions from 0) and its keys and values are copied
into a free slot, right-aligned to end at column t, so the slot's first t - len(prompt) columns are its left
padding (GPT.forward's left_pad: never attended to, positions counted from the row's first token). Then every step
feeds each active row its last token at column t in one batched forward (the slots up to the highest taken one),
and each row draws its next token with its own controls, processors and seeded generator, as sample.generate
draws a one-prompt call's. A finished row (end of text, stop string, its token budget) or a cancelled one frees its
slot at once. When t reaches the cache's end, all rows shift left by the smallest left padding (a request is
admitted only when its prompt and budget fit in block_size, so that shift always frees a column); when a prompt is
longer than t, all rows shift right to make room. A row therefore attends to exactly its own tokens at its own
positions, whatever else runs: its output does not depend on the other requests.

    engine = Engine(model, tokenizer, max_batch_size=8)
    job = engine.submit(ids, config, seed=0, on_text=print)   # thread-safe; run() or step() decodes
    engine.step() ...                                        # or: a thread calling engine.run(stop_event)
    job.wait() -> Completion

GPT checkpoints only (a T5's encoder-decoder cache is another shape); beam search and log-probabilities are the
pipeline's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from data.tokenizer import Tokenizer
from sample.generate import (
    Completion,
    decoding_layout,
    model_device,
    model_kind,
    needs_processing,
    new_token_budget,
    row_generators,
    strips_space,
    tokenizer_vocab_limit,
)
from sample.sampling import GenerationConfig, History, choose, next_scores, process_logits
from sample.stopping import TextRow


@dataclass
class Job:
    """One request in the engine: its prompt ids, controls and seed in; text pieces (on_text) and a Completion out."""

    ids: list[int]
    config: GenerationConfig
    seed: int
    on_text: Callable[[str], None] | None = None
    prompt: str = ""
    top_logprobs: int | None = None  # k >= 0: record each token's log-probability and the k likeliest alternatives
    # with top_logprobs: (token id, its log-probability, {id: log-probability} of the k likeliest) per drawn token, as
    # generate(output_scores=True) scores them; appended as they are drawn (a stream reads them as they come)
    scores: list[tuple[int, float, dict[int, float]]] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: Completion | None = None
    error: BaseException | None = None

    def cancel(self) -> None:
        """Stop generating for this job (a client that went away); its slot is freed at the next step."""
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> Completion:
        """The Completion (finish_reason "cancelled" if cancelled); raises what the engine raised for it."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"the generation did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class _Row:
    """An active slot: the job, its text row, processors' history, generator and left padding."""

    def __init__(self, job: Job, tokenizer: Tokenizer, model: nn.Module, budget: int, device: torch.device) -> None:
        self.job, self.budget = job, budget
        cfg = job.config
        self.eos = cfg.eos_ids(getattr(tokenizer, "eot_id", None))
        self.text = TextRow(
            tokenizer,
            eos_ids=self.eos,
            stop_strings=cfg.stop_strings,
            max_tokens=budget,
            prompt=job.prompt if cfg.stop_at_top_level else None,  # code: ends with the prompt's block
            strip_leading_space=strips_space(model, tokenizer),
        )
        self.generator = row_generators([job.seed], device)
        self.history: History | None = None
        self.pieces: list[str] = []
        self.last = 0  # the last drawn token: fed at the next step


class Engine:
    """Continuous batching of GPT generations (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, max_batch_size: int = 8) -> None:
        if model_kind(model) != "gpt":
            raise ValueError("continuous batching serves gpt checkpoints; a t5 is served by the pipeline")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        self.model, self.tokenizer = model.eval(), tokenizer
        decoding_layout(model)
        self.device = model_device(model)
        self.block_size = model.config.block_size
        self.slots: list[_Row | None] = [None] * max_batch_size
        self.pending: queue.Queue[Job] = queue.Queue()
        self.vocab_limit = tokenizer_vocab_limit(model, tokenizer)
        self.t = 0  # the next cache column every active row writes
        self.finished: dict[str, int] = {}  # jobs ended, by finish reason (eos, stop, length, cancelled ...)
        self.shifts = [0, 0]  # how often the rows moved left (the cache was full) and right (a long prompt joined)
        self.left_pad = torch.zeros(max_batch_size, dtype=torch.long, device=self.device)
        self.lock = threading.Lock()
        model.set_kv_cache(batch_size=max_batch_size, max_seq_len=self.block_size, device=self.device)
        self.caches = [block.attn.kv_cache for block in model.transformer.h]
        self.full = [(c.k, c.v) for c in self.caches]  # the whole buffers; a step reads views of the first slots
        self.mask = model.mask_cache

    @property
    def active(self) -> int:
        return sum(row is not None for row in self.slots)

    def check(self, ids: list[int], config: GenerationConfig) -> int:
        """The job's token budget; a ValueError when it cannot be served (the prompt and budget must fit)."""
        if not ids:
            raise ValueError("the prompt is empty; give at least one token")
        if config.num_beams > 1:
            raise ValueError("beam search is not batched continuously; use num_beams=1")
        budget = new_token_budget(config, len(ids), "gpt")
        if len(ids) + budget > self.block_size:
            raise ValueError(
                f"the prompt ({len(ids)} tokens) and max_tokens ({budget}) exceed the model's context of "
                f"{self.block_size} tokens; shorten the prompt or lower max_tokens"
            )
        return budget

    def submit(
        self,
        ids: list[int],
        config: GenerationConfig,
        seed: int,
        on_text: Callable[[str], None] | None = None,
        top_logprobs: int | None = None,
        prompt: str = "",
    ) -> Job:
        """Queue a generation (thread-safe); it joins the batch at the next step with a free slot. top_logprobs=k:
        the Completion holds each token's log-probability and the k likeliest alternatives (Job.scores). prompt: its
        text (the Completion's label; with config.stop_at_top_level, the code whose block ends the output)."""
        self.check(ids, config)
        job = Job(list(ids), config, seed, on_text, prompt, top_logprobs=top_logprobs)
        self.pending.put(job)
        return job

    def run(self, stop: threading.Event, idle_wait: float = 0.05) -> None:
        """Step until stop is set; waits for work when there is none."""
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception as e:  # noqa: BLE001 (a failing step fails the rows in it, never the engine)
                self._fail_rows(e)
                continue
            if not worked:
                try:
                    job = self.pending.get(timeout=idle_wait)
                except queue.Empty:
                    continue
                self.pending.put(job)  # back in line: admitted by the next step

    @torch.inference_mode()
    def step(self) -> bool:
        """Admit what fits, then one decoding step of every active row; False when there was nothing to do."""
        self._drop_cancelled()
        self._admit()
        if not self.active:
            self.t = 0
            return False
        if self.t == self.block_size:
            self._compact()
        n = max(r for r, row in enumerate(self.slots) if row is not None) + 1  # slots 0..n-1 take part
        tokens = torch.tensor([[row.last if row else 0] for row in self.slots[:n]], device=self.device)  # (n, 1)
        pad = self.left_pad[:n].clone()
        for r, row in enumerate(self.slots[:n]):
            if row is None:
                pad[r] = self.t  # an empty slot attends to itself alone
        for cache, (k, v) in zip(self.caches, self.full):
            cache.k, cache.v = k[:n], v[:n]  # views: writes land in the whole buffers
        try:
            input_pos = torch.tensor([self.t], device=self.device)
            logits = self.model(tokens, input_pos=input_pos, left_pad=pad, logits_to_keep=1)[0][:, -1]  # (n, V)
        finally:
            for cache, (k, v) in zip(self.caches, self.full):
                cache.k, cache.v = k, v
        self.t += 1
        for r, row in enumerate(self.slots[:n]):
            if row is not None:
                self._draw(r, row, logits[r : r + 1, : self.vocab_limit])
        return True

    def _admit(self) -> None:
        while None in self.slots and not self.pending.empty():
            job = self.pending.get()
            if job.cancelled.is_set():
                self._finish(job, _Row(job, self.tokenizer, self.model, 0, self.device), "cancelled")
                continue
            try:
                self._join(job, self.slots.index(None))
            except Exception as e:  # noqa: BLE001 (the job's caller gets it; the engine keeps serving)
                job.error = e
                job.done.set()

    def _join(self, job: Job, r: int) -> None:
        """Prefill job's prompt alone, place its keys and values in slot r ending at column t, draw its first token."""
        budget = self.check(job.ids, job.config)
        row = _Row(job, self.tokenizer, self.model, budget, self.device)
        P = len(job.ids)
        if self.active and self.t == self.block_size:
            self._compact()
        if not self.active:
            self.t = P
        elif self.t < P:
            self._shift(P - self.t)
        idx = torch.tensor([job.ids], device=self.device)  # (1, P)
        self.model.set_kv_cache(batch_size=1, max_seq_len=P, device=self.device, dtype=self.full[0][0].dtype)
        try:
            logits = self.model(idx, input_pos=torch.arange(P, device=self.device), logits_to_keep=1)[0][:, -1]
            for block, (k, v) in zip(self.model.transformer.h, self.full):
                k[r, :, self.t - P : self.t] = block.attn.kv_cache.k[0]
                v[r, :, self.t - P : self.t] = block.attn.kv_cache.v[0]
        finally:
            for block, cache in zip(self.model.transformer.h, self.caches):
                block.attn.kv_cache = cache
            self.model.mask_cache = self.mask
        self.left_pad[r] = self.t - P
        self.slots[r] = row
        if needs_processing(job.config):
            row.history = History.start(idx, None, budget, logits.size(-1), job.config)
        self._draw(r, row, logits[:, : self.vocab_limit])

    def _draw(self, r: int, row: _Row, logits: torch.Tensor) -> None:
        """Row r's next token from its logits (1, V), as generate_tokens draws it; the text it makes final."""
        cfg = row.job.config
        if row.history is not None:
            logits = process_logits(logits.float(), cfg, row.history, row.eos)
        token = choose(logits, cfg, row.generator)  # (1,)
        if row.history is not None:
            row.history.append(token)
        row.last = int(token)
        if row.job.top_logprobs is not None:  # the scores the token was drawn from, as generate() scores them
            logprobs = torch.log_softmax(next_scores(logits, cfg).float(), dim=-1)[0]  # (V,)
            top = logprobs.topk(min(row.job.top_logprobs, logprobs.numel()))
            row.job.scores.append(
                (row.last, float(logprobs[row.last]), dict(zip(top.indices.tolist(), top.values.tolist())))
            )
        piece = row.text.push(row.last)
        if piece:
            row.pieces.append(piece)
            if row.job.on_text is not None:
                row.job.on_text(piece)
        if row.text.done:
            self.slots[r] = None
            self._finish(row.job, row, row.text.finish_reason or "length")

    def _finish(self, job: Job, row: _Row, reason: str) -> None:
        tail = row.text.finish(reason)
        if tail:
            row.pieces.append(tail)
            if job.on_text is not None:
                job.on_text(tail)
        text = "".join(row.pieces)
        self.finished[reason] = self.finished.get(reason, 0) + 1
        job.result = Completion(job.prompt, text, row.text.token_ids, row.text.finish_reason or reason, job.seed)
        if job.top_logprobs is not None:
            job.result.logprobs = [lp for _, lp, _ in job.scores]
            job.result.top_logprobs = [top for _, _, top in job.scores]
        job.done.set()

    def _fail_rows(self, error: BaseException) -> None:
        """Every active row's job ends with error (its caller's wait() raises it); the slots are free again."""
        for r, row in enumerate(self.slots):
            if row is not None:
                self.slots[r] = None
                row.job.error = error
                row.job.done.set()
        self.finished["error"] = self.finished.get("error", 0) + 1
        self.t = 0

    def _drop_cancelled(self) -> None:
        for r, row in enumerate(self.slots):
            if row is not None and row.job.cancelled.is_set():
                self.slots[r] = None
                self._finish(row.job, row, "cancelled")

    def _compact(self) -> None:
        """A full cache: every row moves left by the smallest left padding of the active rows (at least 1, as
        admission keeps each row's prompt and budget within block_size)."""
        self._shift(-int(min(self.left_pad[r] for r, row in enumerate(self.slots) if row is not None)))

    def _shift(self, d: int) -> None:
        """Move every row's cached columns by d (left when negative) and their padding with them."""
        if d == 0:
            return
        t = self.t
        for k, v in self.full:
            for buf in (k, v):
                if d < 0:
                    buf[:, :, : t + d] = buf[:, :, -d:t].clone()
                else:
                    buf[:, :, d : t + d] = buf[:, :, :t].clone()
        self.left_pad += d
        self.t += d
        self.shifts[d > 0] += 1

    def close(self) -> None:
        """Drop the KV cache."""
        self.model.clear_kv_cache()
