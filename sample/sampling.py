"""The decoding controls: GenerationConfig, and pure functions from next-token logits (B, V) to token ids (B,).

Names and defaults follow transformers' GenerationConfig where it has the control (presence_penalty and
frequency_penalty follow OpenAI's API). One step turns the model's logits into tokens in this fixed order:

  processors (also applied by greedy decoding and beam search)
    1. repetition_penalty    every token in the prompt or generated so far (CTRL, Keskar et al. 2019)
    2. presence_penalty,     generated tokens only: - presence * [count > 0] - frequency * count
       frequency_penalty
    3. no_repeat_ngram_size  a token that would complete an n-gram already in the prompt or output gets -inf
    4. bad_words_ids,        a token that would complete a banned sequence, and suppressed tokens, get -inf
       suppress_tokens
    5. min_new_tokens        every eos id gets -inf until min_new_tokens tokens have been generated
  then greedy decoding (do_sample=False or temperature=0) takes the argmax; sampling goes on with the warpers
    6. temperature           logits / temperature
    7. top_k                 the k most likely tokens
    8. top_p                 the smallest set with probability mass >= top_p (nucleus, Holtzman et al. 2019)
    9. min_p                 tokens with probability >= min_p * the top token's (Nguyen et al. 2024)
   10. typical_p             locally typical sampling (Meister et al. 2022)
   11. a draw from the softmax (inverse CDF: one uniform number per row), with each row's own torch.Generator

Filtered tokens get logit -inf, so their probability is exactly 0; every filter keeps at least one token. This is
transformers' order (its processors, then temperature, top-k, top-p, min-p, typical-p). Drawing each row with its
own generator makes a row's sample depend only on its own logits and seed, so a prompt gives the same sample alone
or in a batch.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch


@dataclass
class GenerationConfig:
    """Every decoding control of nanoloom's generation (transformers' names and defaults where it has them).

    Also the base of the Hydra schema of configs/task/*.yaml (sample.config.TaskConfig), hence typing.Optional and
    List: the field types OmegaConf reads.
    """

    max_new_tokens: Optional[int] = None  # generated tokens at most; None: max_length decides (20 if both None)
    max_length: Optional[int] = None  # prompt + generated tokens (t5: output tokens + the decoder start token)
    min_new_tokens: int = 0  # eos is impossible before this many tokens
    do_sample: bool = False  # False: greedy (or beam search); True: sample with the warpers below
    temperature: float = 1.0  # 0 is greedy even with do_sample (litgpt)
    top_k: Optional[int] = 50  # None or 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: Optional[float] = None  # None or 0: off
    typical_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # > 1 discourages repeating prompt or output tokens; 1.0: off
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence of a generated token
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size occurs twice in prompt + output
    bad_words_ids: Optional[List[List[int]]] = None  # token sequences that must never be generated
    suppress_tokens: Optional[List[int]] = None  # token ids that are never generated
    eos_token_id: Any = None  # an id or a list of ids that end a row; None: the tokenizer's end-of-text
    stop_strings: List[str] = field(default_factory=list)  # text that ends a row (not part of the output)
    stop_at_top_level: bool = False  # code: end before the first new top-level line after an indented body
    num_beams: int = 1  # > 1: beam search (deterministic)
    num_return_sequences: int = 1  # outputs per prompt (sampling: independent samples; beams: the best ones)
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    early_stopping: bool = False  # beam search: stop a row once num_beams hypotheses are finished
    forced_bos_token_id: Optional[int] = None  # the first generated token (BART's <s>)
    forced_eos_token_id: Optional[int] = None  # the last token a length-limited output ends with (BART's </s>)
    prompt_lookup_num_tokens: Optional[int] = None  # > 0: assisted decoding drafting this many tokens from the context
    max_matching_ngram_size: Optional[int] = None  # prompt lookup's longest n-gram to match; None: 2
    num_assistant_tokens: int = 20  # a draft model's first draft length (then +2 when all kept, else -1)

    def __post_init__(self) -> None:
        check_generation_config(self)

    @property
    def greedy(self) -> bool:
        """True when a single row picks its argmax (no sampling, no beams)."""
        return self.num_beams == 1 and (not self.do_sample or self.temperature == 0)

    def eos_ids(self, default: int | None) -> list[int]:
        """The ids that end a row: eos_token_id (one or several), else the tokenizer's end-of-text default."""
        eos = self.eos_token_id if self.eos_token_id is not None else default
        if eos is None:
            return []
        return [eos] if isinstance(eos, int) else list(eos)

    def replace(self, **changes: object) -> GenerationConfig:
        """A GenerationConfig (never a subclass) with this one's controls and some changed (validated again)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationConfig)}
        return GenerationConfig(**{**fields, **changes})

    def to_dict(self) -> dict[str, object]:
        """Every control, JSON-serialisable (a sample's provenance)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationConfig)}


def scalar_controls() -> dict[str, type]:
    """The controls a command line sets one value at a time, with their types: every int, float or bool control
    (optional or not), num_return_sequences aside (the commands call it num_samples). Token-id lists, stop strings
    and eos ids are a task preset's. sample/config.py and train/config.py derive their override keys from this."""
    hints = typing.get_type_hints(GenerationConfig)
    controls = {}
    for f in dataclasses.fields(GenerationConfig):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
        if base in (int, float, bool) and f.name != "num_return_sequences":
            controls[f.name] = base
    return controls


def override_values(overrides: dict[str, Any]) -> dict[str, Any]:
    """The command line's non-null decoding overrides, read as a user means them: num_beams > 1 alone means beam
    search (do_sample=False), a temperature alone means sampling when it is > 0 and greedy when it is 0."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "do_sample" not in overrides:
        if overrides.get("num_beams", 1) > 1:
            overrides["do_sample"] = False
        elif "temperature" in overrides:
            overrides["do_sample"] = overrides["temperature"] > 0
    return overrides


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """config (a GenerationConfig or a task preset) with override_values(overrides) applied, validated again."""
    return dataclasses.replace(config, **override_values(overrides))


def bad_words_ids(tokenizer: Any, words: Sequence[str]) -> List[List[int]]:
    """Token sequences of each word as written and after a space (BPE spells " word" differently), deduplicated."""
    out: List[List[int]] = []
    for word in words:
        for variant in (word, " " + word) if not word.startswith(" ") else (word,):
            ids = tokenizer.encode(variant)
            if ids and ids not in out:
                out.append(ids)
    return out


def recorded_controls(record: dict[str, Any] | None, tokenizer: Any = None) -> dict[str, Any]:
    """The GenerationConfig controls of a checkpoint's recorded decoding defaults (model.checkpoint.
    read_generation_defaults: a task preset nanoloom training wrote, or a Hugging Face generation_config.json).

    Only the controls the record sets, so a caller can tell a recorded value from its own default. Keys that are not
    controls (the task's name, objective ...) and num_return_sequences (a per-call choice) are left out; a task's
    bad_words become bad_words_ids with tokenizer. {} for None.
    """
    names = {f.name for f in dataclasses.fields(GenerationConfig)} - {"num_return_sequences"}
    controls = {k: v for k, v in (record or {}).items() if k in names}
    words = (record or {}).get("bad_words")
    if words and tokenizer is not None:
        controls["bad_words_ids"] = (controls.get("bad_words_ids") or []) + bad_words_ids(tokenizer, words)
    return controls


def _positive_int_or_none(name: str, value: int | None, minimum: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name}={value!r} must be >= {minimum} (a whole number)")


def _finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")


def check_generation_config(c: GenerationConfig) -> None:
    """Raise ValueError, naming the control and the fix, for out-of-range or contradictory settings."""
    _positive_int_or_none("max_new_tokens", c.max_new_tokens, 0)
    _positive_int_or_none("max_length", c.max_length, 1)
    _positive_int_or_none("min_new_tokens", c.min_new_tokens, 0)
    if c.max_new_tokens is not None and c.min_new_tokens > c.max_new_tokens:
        raise ValueError(f"min_new_tokens={c.min_new_tokens} > max_new_tokens={c.max_new_tokens}; lower min_new_tokens")
    _finite("temperature", c.temperature)
    if c.temperature < 0:
        raise ValueError(f"temperature={c.temperature} must be >= 0 (0 = greedy, 1 = the model's distribution)")
    _positive_int_or_none("top_k", c.top_k, 0)
    for name in ("top_p", "typical_p"):
        value = getattr(c, name)
        _finite(name, value)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name}={value} must be in (0, 1]; 1.0 switches it off")
    if c.min_p is not None:
        _finite("min_p", c.min_p)
        if not 0.0 <= c.min_p <= 1.0:
            raise ValueError(f"min_p={c.min_p} must be in [0, 1]; null (or 0) switches it off, 0.05 is typical")
    _finite("repetition_penalty", c.repetition_penalty)
    if c.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty={c.repetition_penalty} must be > 0 (1.0 = off, > 1 penalises)")
    _finite("presence_penalty", c.presence_penalty)
    _finite("frequency_penalty", c.frequency_penalty)
    _positive_int_or_none("no_repeat_ngram_size", c.no_repeat_ngram_size, 0)
    if c.bad_words_ids is not None:
        if not all(isinstance(w, (list, tuple)) and w and all(_is_id(t) for t in w) for w in c.bad_words_ids):
            raise ValueError(f"bad_words_ids={c.bad_words_ids!r} must be a list of non-empty lists of token ids")
    if c.suppress_tokens is not None and not all(_is_id(t) for t in c.suppress_tokens):
        raise ValueError(f"suppress_tokens={c.suppress_tokens!r} must be a list of token ids (integers >= 0)")
    eos = c.eos_token_id
    if eos is not None and not (_is_id(eos) or (isinstance(eos, (list, tuple)) and eos and all(map(_is_id, eos)))):
        raise ValueError(f"eos_token_id={eos!r} must be a token id or a non-empty list of token ids")
    if not all(isinstance(s, str) for s in c.stop_strings):
        raise ValueError(f"stop_strings={c.stop_strings!r} must be a list of strings")
    _positive_int_or_none("num_beams", c.num_beams, 1)
    _positive_int_or_none("forced_bos_token_id", c.forced_bos_token_id, 0)
    _positive_int_or_none("forced_eos_token_id", c.forced_eos_token_id, 0)
    _positive_int_or_none("prompt_lookup_num_tokens", c.prompt_lookup_num_tokens, 0)
    _positive_int_or_none("max_matching_ngram_size", c.max_matching_ngram_size, 1)
    _positive_int_or_none("num_assistant_tokens", c.num_assistant_tokens, 1)
    if c.num_beams > 1 and c.prompt_lookup_num_tokens:
        raise ValueError(
            f"prompt_lookup_num_tokens={c.prompt_lookup_num_tokens} with num_beams={c.num_beams}: assisted decoding "
            "drafts for greedy decoding and sampling; set num_beams=1 or prompt_lookup_num_tokens=null"
        )
    _positive_int_or_none("num_return_sequences", c.num_return_sequences, 1)
    _finite("length_penalty", c.length_penalty)
    if c.num_beams > 1 and c.do_sample:
        raise ValueError(
            f"do_sample=true with num_beams={c.num_beams} asks for beam sampling, which nanoloom does not do; "
            "set do_sample=false for beam search or num_beams=1 for sampling"
        )
    if c.num_beams > 1 and c.num_return_sequences > c.num_beams:
        raise ValueError(
            f"num_return_sequences={c.num_return_sequences} > num_beams={c.num_beams}: beam search returns at most "
            "num_beams sequences; raise num_beams or lower num_return_sequences"
        )
    if c.greedy and c.num_return_sequences > 1:
        why = "temperature=0" if c.do_sample else "do_sample=false"
        raise ValueError(
            f"greedy decoding ({why}) gives {c.num_return_sequences} identical sequences; sample (do_sample=true, "
            "temperature > 0), use num_beams >= num_return_sequences, or set num_return_sequences=1"
        )


def _is_id(t: object) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


# ----------------------------------------------------------------------------------------------------------------
# processors (1-5): they see what was generated, so they take the token history


@dataclass
class History:
    """The tokens the processors look at, for B rows: prompt and generated ids, left-padded to one length.

    ids (B, L) holds the prompt (a row with p padding tokens starts at column p) then the generated tokens; only the
    first `length` columns are filled. counts (B, V) counts each row's generated tokens (presence/frequency
    penalties) and seen (B, V) marks every token of prompt and output (repetition penalty); each is kept only when
    its control is on.
    """

    ids: torch.Tensor  # (B, L)
    pad: torch.Tensor  # (B,) left-padding columns of each row
    length: int  # filled columns
    budget: int  # tokens this generation may make (max_new_tokens)
    generated: int = 0  # tokens generated so far (the same for every row)
    counts: torch.Tensor | None = None  # (B, V) float
    seen: torch.Tensor | None = None  # (B, V) bool

    @classmethod
    def start(
        cls, prompt: torch.Tensor, pad: torch.Tensor | None, max_new_tokens: int, vocab_size: int, cfg: GenerationConfig
    ) -> History:
        """History of prompt (B, T) with pad (B,) padding columns on the left (None: no padding)."""
        B, T = prompt.shape
        ids = torch.zeros(B, T + max_new_tokens, dtype=torch.long, device=prompt.device)
        ids[:, :T] = prompt
        pad = pad if pad is not None else torch.zeros(B, dtype=torch.long, device=prompt.device)
        h = cls(ids, pad, T, max_new_tokens)
        if cfg.presence_penalty or cfg.frequency_penalty:
            h.counts = torch.zeros(B, vocab_size, device=prompt.device)
        if cfg.repetition_penalty != 1.0:
            real = torch.arange(T, device=prompt.device)[None, :] >= pad[:, None]  # (B, T)
            h.seen = _mark(prompt, real, vocab_size)
        return h

    def append(self, token: torch.Tensor) -> None:
        """Record one generated token per row (B,)."""
        self.ids[:, self.length] = token
        self.length += 1
        self.generated += 1
        if self.counts is not None:
            self.counts.scatter_add_(1, token[:, None], torch.ones_like(token[:, None], dtype=self.counts.dtype))
        if self.seen is not None:
            self.seen.scatter_(1, token[:, None], True)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (B',) in that order (beam search)."""
        self.ids, self.pad = self.ids.index_select(0, rows), self.pad.index_select(0, rows)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, rows)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, rows)

    def filled(self) -> torch.Tensor:
        """(B, length) the ids so far; padding columns included (see real())."""
        return self.ids[:, : self.length]

    def real(self) -> torch.Tensor:
        """(B, length) True where filled() holds a real token, False on padding."""
        return torch.arange(self.length, device=self.ids.device)[None, :] >= self.pad[:, None]


def _mark(ids: torch.Tensor, where: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, V) True for every id in ids (B, N) at a position where `where` (B, N) is True.

    Ids outside [0, V) (a prompt token past generate_tokens' vocab_limit) mark nothing: no logit stands for them.
    """
    marked = torch.zeros(ids.size(0), vocab_size + 1, dtype=torch.bool, device=ids.device)
    where = where & (ids >= 0) & (ids < vocab_size)
    index = torch.where(where, ids, vocab_size)  # unmarked positions go to a spare column
    return marked.scatter_(1, index, True)[:, :vocab_size]


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every seen token less likely: a positive logit is divided by penalty, a negative one multiplied."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """logits - presence * [count > 0] - frequency * count, per token (OpenAI's definition)."""
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def no_repeat_ngram_mask(ids: torch.Tensor, real: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(B, V) True for each token that would complete an n-gram already in the row's real tokens ids (B, L)."""
    B, L = ids.shape
    if n < 1 or L < n:
        return torch.zeros(B, vocab_size, dtype=torch.bool, device=ids.device)
    windows = ids.unfold(1, n, 1)  # (B, L-n+1, n): every n-gram
    valid = real.unfold(1, n, 1).all(dim=-1)  # (B, L-n+1): n-grams of real tokens only
    if n > 1:
        tail = ids[:, L - n + 1 :]  # (B, n-1): the tokens the next one would extend
        valid &= real[:, L - n + 1 :].all(dim=-1, keepdim=True)
        valid &= (windows[:, :, :-1] == tail[:, None, :]).all(dim=-1)
    return _mark(windows[:, :, -1], valid, vocab_size)


def bad_words_mask(
    ids: torch.Tensor, real: torch.Tensor, bad_words_ids: Sequence[Sequence[int]], vocab_size: int
) -> torch.Tensor:
    """(B, V) True for each token that would complete one of bad_words_ids after the row's tokens ids (B, L)."""
    B, L = ids.shape
    banned = torch.zeros(B, vocab_size, dtype=torch.bool, device=ids.device)
    for word in bad_words_ids:
        *prefix, last = word
        if last >= vocab_size:
            continue
        if not prefix:
            banned[:, last] = True
            continue
        if len(prefix) > L:
            continue
        want = torch.tensor(prefix, dtype=ids.dtype, device=ids.device)
        match = (ids[:, L - len(prefix) :] == want).all(dim=-1) & real[:, L - len(prefix) :].all(dim=-1)  # (B,)
        banned[:, last] |= match
    return banned


def process_logits(logits: torch.Tensor, cfg: GenerationConfig, history: History, eos_ids: list[int]) -> torch.Tensor:
    """Steps 1-5 on logits (B, V) (float32): penalties and bans; the result still holds every allowed token."""
    V = logits.size(-1)
    if history.seen is not None:
        logits = apply_repetition_penalty(logits, history.seen, cfg.repetition_penalty)
    if history.counts is not None:
        logits = apply_presence_frequency(logits, history.counts, cfg.presence_penalty, cfg.frequency_penalty)
    banned = None
    if cfg.no_repeat_ngram_size:
        banned = no_repeat_ngram_mask(history.filled(), history.real(), cfg.no_repeat_ngram_size, V)
    if cfg.bad_words_ids:
        words = bad_words_mask(history.filled(), history.real(), cfg.bad_words_ids, V)
        banned = words if banned is None else banned | words
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    suppressed = [t for t in cfg.suppress_tokens or [] if t < V]
    if history.generated < cfg.min_new_tokens:
        suppressed += [t for t in eos_ids if t < V]
    if suppressed:
        logits = logits.clone()
        logits[:, suppressed] = float("-inf")
    forced = None  # transformers' ForcedBOS/ForcedEOS processors: one token allowed, at score 0
    if cfg.forced_bos_token_id is not None and history.generated == 0:
        forced = cfg.forced_bos_token_id
    elif cfg.forced_eos_token_id is not None and history.generated == history.budget - 1:
        forced = cfg.forced_eos_token_id
    if forced is not None and forced < V:
        logits = torch.full_like(logits, float("-inf"))
        logits[:, forced] = 0.0
    return logits


# ----------------------------------------------------------------------------------------------------------------
# warpers (6-10): pure functions of the logits


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by temperature (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    if temperature <= 0:
        raise ValueError(f"apply_temperature needs temperature > 0, got {temperature}; 0 means argmax (greedy)")
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the logits at least as large as each row's k-th largest (so ties with it too, as transformers), -inf
    the rest."""
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))  # (B, V)


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass is >= p (at least one), -inf the rest."""
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V) mass of the strictly more likely tokens
    # a token is dropped once the tokens before it already reach p; the first token never is (mass_before = 0 < p)
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # (B, V) back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens whose probability is at least min_p times the most likely token's; -inf the rest."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))  # the top token always passes


def apply_typical_p(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprisal -log p is closest to the entropy H, in that order,
    until their probability mass reaches `mass` (the token that crosses it included)."""
    if mass >= 1.0:
        return logits
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    p = logp.exp()
    entropy = -(p * logp).nan_to_num().sum(dim=-1, keepdim=True)  # (B, 1); 0 * -inf counts as 0
    distance = (-logp - entropy).abs()  # (B, V): how atypical each token is
    order = distance.argsort(dim=-1)  # most typical first
    mass_before = p.gather(-1, order).cumsum(dim=-1) - p.gather(-1, order)  # (B, V) in typical order
    drop_sorted = mass_before >= mass  # the first (most typical) token is always kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def warp_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Steps 6-10 on logits (B, V): temperature, top-k, top-p, min-p, typical-p (each skipped when off)."""
    logits = apply_temperature(logits, cfg.temperature)
    if cfg.top_k:
        logits = apply_top_k(logits, cfg.top_k)
    if cfg.top_p < 1.0:
        logits = apply_top_p(logits, cfg.top_p)
    if cfg.min_p:
        logits = apply_min_p(logits, cfg.min_p)
    if cfg.typical_p < 1.0:
        logits = apply_typical_p(logits, cfg.typical_p)
    return logits


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator] | torch.Generator | None) -> torch.Tensor:
    """One token per row of probs (B, V) by inverse-CDF sampling: row i takes one uniform number from generators[i]
    (a single generator, or None for torch's global RNG, serves every row) and picks the first token whose
    cumulative probability exceeds it. Exact, and one random number per row where torch.multinomial would make
    V of them (about 1 ms per row for GPT-2's vocabulary on a CPU). A zero-probability token is never picked."""
    B, V = probs.shape
    if generators is None or isinstance(generators, torch.Generator):
        u = torch.rand(B, 1, generator=generators, device=probs.device)
    else:
        if len(generators) != B:
            raise ValueError(f"got {len(generators)} generators for {B} rows; pass one per row")
        u = torch.cat([torch.rand(1, 1, generator=g, device=probs.device) for g in generators])  # (B, 1)
    cdf = probs.float().cumsum(dim=-1)  # (B, V)
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (B, 1): first index with cdf > u * total
    return token.squeeze(-1).clamp_(max=V - 1)  # (B,)


def choose(
    logits: torch.Tensor,
    cfg: GenerationConfig,
    generators: Sequence[torch.Generator] | torch.Generator | None = None,
) -> torch.Tensor:
    """The next token of each row (B,) from processed logits (B, V): argmax when greedy, else warp and draw."""
    if not cfg.do_sample or cfg.temperature == 0:
        return torch.argmax(logits, dim=-1)  # (B,)
    return draw(torch.softmax(next_scores(logits, cfg), dim=-1), generators)


def next_scores(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """The scores (B, V) choose() picks a token from: the processed logits when greedy, warped when sampling
    (transformers' `scores` of generate(output_scores=True); log_softmax of them gives each token's
    log-probability, as its compute_transition_scores(normalize_logits=True))."""
    if not cfg.do_sample or cfg.temperature == 0:
        return logits
    return warp_logits(logits.float(), cfg)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    min_p: float | None = None,
    typical_p: float | None = None,
) -> torch.Tensor:
    """Draw one token per row of logits (B, V) with the warpers only (no history); temperature 0 is argmax."""
    if logits.dim() != 2:
        raise ValueError(f"sample_next expects logits of shape (B, V), got {tuple(logits.shape)}")
    cfg = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=1.0 if top_p is None else top_p,
        min_p=min_p,
        typical_p=1.0 if typical_p is None else typical_p,
    )
    return choose(logits.float(), cfg, generator)
