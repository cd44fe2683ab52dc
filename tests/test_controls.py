"""Tests of the decoding controls (sample/sampling.py): hand-computed cases, parity with transformers' logits
processors and warpers, seeded per-row draws, validation, and the controls end to end through generate_tokens.

Top-k, top-p and temperature basics live in tests/test_sampling.py.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import transformers.generation.logits_process as hf

from model import GPT, GPTConfig
from sample.generate import generate_tokens
from sample.sampling import (
    GenerationConfig,
    History,
    apply_min_p,
    apply_top_p,
    apply_typical_p,
    bad_words_mask,
    choose,
    draw,
    no_repeat_ngram_mask,
    process_logits,
    warp_logits,
)


def history(ids: list[list[int]], pad: list[int] | None = None, V: int = 6, **controls) -> History:
    cfg = GenerationConfig(**controls)
    return History.start(torch.tensor(ids), None if pad is None else torch.tensor(pad), 8, V, cfg)


def banned(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


def kept(logits: torch.Tensor) -> list[list[int]]:
    return banned(torch.isfinite(logits))


# ---------------------------------------------------------------------------------------------------------------
# 1. hand-computed cases


def test_repetition_penalty_divides_positive_multiplies_negative_and_skips_padding():
    h = history([[4, 4, 0, 1], [2, 3, 0, 1]], pad=[2, 0], V=5, repetition_penalty=2.0)  # row 0: two pad columns (4)
    assert h.seen.tolist() == [[True, True, False, False, False], [True, True, True, True, False]]
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0]]).repeat(2, 1)
    out = process_logits(logits, GenerationConfig(repetition_penalty=2.0), h, [])
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0, 1.0], [1.0, -2.0, 0.25, -6.0, 1.0]]
    h.append(torch.tensor([4, 4]))  # a generated 4 is seen from now on, in both rows
    assert process_logits(logits, GenerationConfig(repetition_penalty=2.0), h, [])[:, 4].tolist() == [0.5, 0.5]


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    cfg = dict(presence_penalty=0.5, frequency_penalty=0.25)
    h = history([[0, 0], [0, 4]], **cfg)  # prompt tokens are never counted
    for token in ([1, 2], [1, 2], [3, 2]):
        h.append(torch.tensor(token))
    assert h.counts.tolist() == [[0, 2, 0, 1, 0, 0], [0, 0, 3, 0, 0, 0]]
    out = process_logits(torch.zeros(2, 6), GenerationConfig(**cfg), h, [])
    # logits - 0.5 * [c > 0] - 0.25 * c
    assert out.tolist() == [[0.0, -1.0, 0.0, -0.75, 0.0, 0.0], [0.0, 0.0, -1.25, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "ids, pad, n, expected",
    [
        ([[1, 2, 3, 1], [2, 1, 2, 1]], [0, 0], 2, [[2], [2]]),  # tail 1: (1, 2) occurred -> 2 banned
        ([[1, 2, 3, 1, 2], [0, 2, 1, 2, 1]], [0, 0], 3, [[3], [2]]),  # tail (1, 2) -> 3; tail (2, 1) -> 2
        ([[0, 0, 3, 0], [0, 0, 3, 0]], [2, 0], 2, [[], [0, 3]]),  # the pad columns (0, 0) and (0, 3) are no bigrams
        ([[0, 0, 1], [5, 0, 1]], [2, 1], 3, [[], []]),  # the tail (0, 1) holds a pad column: nothing to extend
        ([[4, 4, 0, 2], [4, 4, 0, 2]], [2, 0], 1, [[0, 2], [0, 2, 4]]),  # n=1 bans every seen real token
    ],
)
def test_no_repeat_ngram_bans_completions_of_earlier_ngrams(ids, pad, n, expected):
    h = history(ids, pad, no_repeat_ngram_size=n)
    assert banned(no_repeat_ngram_mask(h.filled(), h.real(), n, 6)) == expected
    out = process_logits(torch.zeros(2, 6), GenerationConfig(no_repeat_ngram_size=n), h, [])
    assert banned(torch.isinf(out)) == expected


def test_bad_words_single_tokens_always_multi_tokens_after_their_prefix():
    words = [[5], [1, 2], [3, 1, 4]]
    h = history([[0, 0, 1], [0, 3, 1], [0, 1, 0], [0, 3, 1]], pad=[0, 0, 0, 2])  # last row: only its 1 is real
    assert banned(bad_words_mask(h.filled(), h.real(), words, 6)) == [[2, 5], [2, 4, 5], [5], [2, 5]]
    out = process_logits(torch.zeros(4, 6), GenerationConfig(bad_words_ids=words, suppress_tokens=[0]), h, [])
    assert banned(torch.isinf(out)) == [[0, 2, 5], [0, 2, 4, 5], [0, 5], [0, 2, 5]]


def test_min_new_tokens_masks_every_eos_id_until_enough_tokens():
    cfg = GenerationConfig(min_new_tokens=2, eos_token_id=[3, 4])
    h = history([[0]], min_new_tokens=2)
    for step in range(4):
        out = process_logits(torch.zeros(1, 6), cfg, h, [3, 4])
        assert banned(torch.isinf(out)) == ([[3, 4]] if step < 2 else [[]]), step
        h.append(torch.tensor([1]))


def test_min_p_threshold_is_relative_to_the_top_probability():
    probs = torch.tensor([[0.5, 0.3, 0.12, 0.08], [0.25, 0.25, 0.25, 0.25]])
    assert kept(apply_min_p(probs.log(), 0.2)) == [[0, 1, 2], [0, 1, 2, 3]]  # row 0: >= 0.1
    assert kept(apply_min_p(probs.log(), 0.5)) == [[0, 1], [0, 1, 2, 3]]  # row 0: >= 0.25; row 1: >= 0.125
    assert kept(apply_min_p(probs.log(), 1.0)) == [[0], [0, 1, 2, 3]]  # the top token always stays


def test_typical_p_keeps_the_tokens_closest_to_the_entropy():
    logits = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]).log()
    # surprisal -ln p: 0.916 1.204 1.897 2.303 2.996; entropy H = sum p * -ln p = 1.392
    # |surprisal - H|:  0.476 0.188 0.505 0.910 1.604 -> typical order 1, 0, 2, 3, 4; cumulative 0.3 0.7 0.85 0.95 1
    assert kept(apply_typical_p(logits, 0.2)) == [[1]]  # token 1 crosses 0.2 alone; the most likely token is out
    assert kept(apply_typical_p(logits, 0.5)) == [[0, 1]]  # token 0 crosses 0.5 and is kept
    assert kept(apply_typical_p(logits, 0.8)) == [[0, 1, 2]]  # token 2 crosses 0.8 (0.7 -> 0.85)
    assert kept(apply_typical_p(logits, 1e-6)) == [[1]]  # at least one token


def test_temperature_is_applied_before_top_p():
    logits = torch.tensor([[0.6, 0.3, 0.1]]).log()
    cfg = GenerationConfig(do_sample=True, temperature=0.5, top_k=None, top_p=0.7)
    # T=0.5 squares and renormalises: 0.783 0.196 0.022, so 0.7 is crossed by token 0 alone; unscaled, 0.6 < 0.7
    assert kept(warp_logits(logits, cfg)) == [[0]]
    assert kept(apply_top_p(logits, 0.7)) == [[0, 1]]  # what top-p before temperature would keep


def test_top_k_is_applied_before_top_p():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    cfg = GenerationConfig(do_sample=True, top_k=2, top_p=0.5)
    assert kept(warp_logits(logits, cfg)) == [[0]]  # top-2 renormalised: 0.571 0.429, 0.571 >= 0.5
    assert kept(apply_top_p(logits, 0.5)) == [[0, 1]]  # top-p first: 0.4 < 0.5, so two tokens (top-2 keeps them)


class FixedLM(nn.Module):
    """A stand-in gpt whose next-token logits are always `row`, whatever the input."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.config = SimpleNamespace(kind="gpt", block_size=32, vocab_size=len(row))
        self.row = torch.tensor(row)
        self.anchor = nn.Parameter(torch.zeros(()))

    def set_kv_cache(self, batch_size, max_seq_len=None, device=None, dtype=None):
        pass

    def clear_kv_cache(self):
        pass

    def forward(self, idx, targets=None, input_pos=None, left_pad=None, logits_to_keep=0):
        return self.row.expand(*idx.shape, -1), None


def test_processors_apply_in_greedy_decoding():
    model = FixedLM([3.0, 2.0, 0.0, 0.0])
    prompt = torch.tensor([[0]])
    assert next(generate_tokens(model, prompt, 1)).tolist() == [0]  # do_sample=False by default: the argmax
    assert next(generate_tokens(model, prompt, 1, repetition_penalty=2.0)).tolist() == [1]  # 3 / 2 < 2
    tokens = list(generate_tokens(model, prompt, 3, no_repeat_ngram_size=1))
    assert torch.cat(tokens).tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------
# 2. parity with transformers (B=3, V=50). Differences, by design or at measure-zero boundaries:
# - nanoloom's History skips left padding (no penalty for the pad id, no n-grams through it); transformers' input_ids
#   hold the padding as tokens. Compared here without padding.
# - typical-p keeps the first tokens in typical order, where transformers keeps every token as typical as the
#   crossing one (top-k keeps the ties with the k-th, as transformers). Random logits have no ties.
# - top-p and typical-p keep a token iff the mass before it is < p (transformers: ascending cumulative mass
#   > 1 - p): the same set, up to float rounding when a cumulative mass sits on p; assert_off_boundary rules it
#   out for the single-warper cases (the random logits of the chained case are as unlikely to sit on it).
# - transformers drops a single-token bad word equal to eos; nanoloom bans what bad_words_ids says.

V = 50
WORDS = [[7], [1, 2], [0, 3], [3, 1, 4], [2, 2, 2]]


def rand(*shape: int, seed: int, high: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g) if high else 3 * torch.randn(*shape, generator=g)


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.allclose(ours[ours.isfinite()], theirs[theirs.isfinite()], atol=1e-6)
    assert ours.isfinite().any(dim=-1).all()


def assert_off_boundary(masses: torch.Tensor, p: float) -> None:
    assert ((masses - p).abs() > 1e-4).all(), "a cumulative mass sits on p: pick another seed"


@pytest.mark.parametrize(
    "controls, theirs, ids_from, ids_to",
    [
        (dict(repetition_penalty=1.3), hf.RepetitionPenaltyLogitsProcessor(1.3), 0, V),
        (dict(repetition_penalty=0.7), hf.RepetitionPenaltyLogitsProcessor(0.7), 0, V),
        (dict(repetition_penalty=1.3), hf.RepetitionPenaltyLogitsProcessor(1.3), 0, V + 10),  # ids >= V: not penalised
        (dict(no_repeat_ngram_size=1), hf.NoRepeatNGramLogitsProcessor(1), 0, V),
        (dict(no_repeat_ngram_size=2), hf.NoRepeatNGramLogitsProcessor(2), 0, 6),  # few ids: n-grams repeat often
        (dict(no_repeat_ngram_size=3), hf.NoRepeatNGramLogitsProcessor(3), 0, 4),
        (dict(no_repeat_ngram_size=2), hf.NoRepeatNGramLogitsProcessor(2), V - 4, V + 4),  # n-grams ending past V
        (dict(bad_words_ids=WORDS), hf.NoBadWordsLogitsProcessor(WORDS), 0, 5),
        (dict(suppress_tokens=[0, 9, 49]), hf.SuppressTokensLogitsProcessor([0, 9, 49]), 0, V),
    ],
)
def test_processors_match_transformers(controls, theirs, ids_from, ids_to):
    ids, logits = ids_from + rand(3, 20, seed=1, high=ids_to - ids_from), rand(3, V, seed=2)
    h = history(ids.tolist(), V=V, **controls)
    ours = process_logits(logits, GenerationConfig(**controls), h, [])
    assert_same(ours, theirs(ids, logits.clone()))
    assert not torch.equal(ours, logits)  # the control did something


def test_all_processors_together_match_transformers_while_generating():
    prompt, logits = rand(3, 10, seed=3, high=5), rand(3, V, seed=4)
    words, eos = [[8], [1, 2], [4, 4, 3]], [2, 5]
    cfg = GenerationConfig(
        repetition_penalty=1.5, no_repeat_ngram_size=2, bad_words_ids=words, suppress_tokens=[9], min_new_tokens=3
    )
    theirs = hf.LogitsProcessorList(
        [
            hf.RepetitionPenaltyLogitsProcessor(1.5),
            hf.NoRepeatNGramLogitsProcessor(2),
            hf.NoBadWordsLogitsProcessor(words),
            hf.MinNewTokensLengthLogitsProcessor(10, 3, eos),
            hf.SuppressTokensLogitsProcessor([9]),
        ]
    )
    h = History.start(prompt, None, 5, V, cfg)
    for step in rand(5, 3, seed=5, high=5):  # generated tokens join the history (and the seen set)
        assert_same(process_logits(logits, cfg, h, eos), theirs(h.filled(), logits.clone()))
        h.append(step)


@pytest.mark.parametrize(
    "controls, theirs",
    [
        (dict(temperature=0.7), [hf.TemperatureLogitsWarper(0.7)]),
        (dict(temperature=1.8), [hf.TemperatureLogitsWarper(1.8)]),
        (dict(top_k=5), [hf.TopKLogitsWarper(5)]),
        (dict(top_p=0.3), [hf.TopPLogitsWarper(0.3)]),
        (dict(top_p=0.9), [hf.TopPLogitsWarper(0.9)]),
        (dict(min_p=0.05), [hf.MinPLogitsWarper(0.05)]),
        (dict(min_p=0.3), [hf.MinPLogitsWarper(0.3)]),
        (dict(typical_p=0.2), [hf.TypicalLogitsWarper(0.2)]),
        (dict(typical_p=0.9), [hf.TypicalLogitsWarper(0.9)]),
        (  # transformers' warper order: temperature, top-k, top-p, min-p, typical-p
            dict(temperature=0.8, top_k=30, top_p=0.95, min_p=0.01, typical_p=0.9),
            [hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(30), hf.TopPLogitsWarper(0.95)]
            + [hf.MinPLogitsWarper(0.01), hf.TypicalLogitsWarper(0.9)],
        ),
    ],
)
def test_warpers_match_transformers(controls, theirs):
    logits = rand(3, V, seed=6)
    cfg = GenerationConfig(**{"do_sample": True, "top_k": None, **controls})
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if "top_p" in controls and len(controls) == 1:
        assert_off_boundary(probs.sort(dim=-1, descending=True).values.cumsum(dim=-1), cfg.top_p)
    if "typical_p" in controls and len(controls) == 1:
        distance = (-probs.log() - (-probs * probs.log()).sum(dim=-1, keepdim=True)).abs()
        assert_off_boundary(probs.gather(-1, distance.argsort(dim=-1)).cumsum(dim=-1), cfg.typical_p)
    ours = warp_logits(logits, cfg)
    assert_same(ours, hf.LogitsProcessorList(theirs)(torch.zeros(3, 1, dtype=torch.long), logits.clone()))
    if "temperature" not in controls:
        assert ours.isinf().any()  # the filter dropped something


# ---------------------------------------------------------------------------------------------------------------
# 3. seeded draws


def test_same_seed_same_draws_and_rows_draw_independently():
    logits = rand(2, V, seed=7) / 3  # a broad distribution: every draw is mostly randomness
    cfg = GenerationConfig(do_sample=True, top_k=None)

    def run(logits: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return torch.stack([choose(logits, cfg, gens) for _ in range(30)], dim=1)  # (B, 30)

    assert torch.equal(run(logits, [0, 1]), run(logits, [0, 1]))
    assert not torch.equal(run(logits, [0, 1])[1], run(logits, [0, 2])[1])
    assert torch.equal(run(logits, [0, 1])[1], run(logits[1:], [1])[0])  # row 1 alone draws the same
    other = torch.cat([rand(1, V, seed=8), logits[1:]])  # a different row 0 leaves row 1's draws alone
    assert torch.equal(run(other, [5, 1])[1], run(logits, [0, 1])[1])
    with pytest.raises(ValueError, match="generators"):
        draw(torch.softmax(logits, dim=-1), [torch.Generator()])


# ---------------------------------------------------------------------------------------------------------------
# 4. validation


@pytest.mark.parametrize(
    "controls, match",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(typical_p=0.0), "typical_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(temperature=-0.5), "temperature"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(min_new_tokens=5, max_new_tokens=3), "min_new_tokens=5 > max_new_tokens=3"),
        (dict(bad_words_ids=[[]]), "bad_words_ids"),
        (dict(eos_token_id="x"), "eos_token_id"),
        (dict(num_beams=2, do_sample=True), "do_sample=true with num_beams=2"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 > num_beams=2"),
        (dict(num_return_sequences=2), r"greedy decoding \(do_sample=false\).*num_return_sequences"),
        (dict(do_sample=True, temperature=0.0, num_return_sequences=2), r"\(temperature=0\).*num_return_sequences"),
    ],
)
def test_bad_controls_are_rejected_by_name(controls, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**controls)
    with pytest.raises(ValueError, match=match):
        GenerationConfig().replace(**controls)


@pytest.mark.parametrize(
    "controls",
    [
        dict(top_p=1.0, typical_p=1.0, min_p=0.0, temperature=0.0, no_repeat_ngram_size=0),
        dict(min_new_tokens=3, max_new_tokens=3, bad_words_ids=[[1], [2, 3]], eos_token_id=[0, 1]),
        dict(do_sample=True, num_return_sequences=2),
        dict(num_beams=3, num_return_sequences=3),
    ],
)
def test_edge_values_are_accepted(controls):
    GenerationConfig(**controls)


# ---------------------------------------------------------------------------------------------------------------
# 5. end to end through generate_tokens with a tiny random GPT (greedy; the model repeats itself a lot)


def greedy(prompt: list[list[int]], n: int, **controls) -> list[list[int]]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257)).eval()
    return torch.stack(list(generate_tokens(model, torch.tensor(prompt), n, **controls)), dim=1).tolist()


def test_each_eos_id_in_a_list_ends_its_row():
    prompts = [[1, 2, 3], [7, 8, 9]]
    plain = greedy(prompts, 10)
    a, b = plain[0][5], plain[1][3]  # row 0 meets a at step 5, row 1 meets b at step 3, neither meets the other
    assert a not in plain[0][:5] + plain[1][:4] and b not in plain[0][:6] + plain[1][:3]
    out = greedy(prompts, 10, eos_token_id=[a, b])
    assert out == [plain[0][:6], plain[1][:4] + [a, a]]  # finished rows repeat the first eos id; all done: stop


def test_min_new_tokens_delays_an_eos_the_model_picks_first():
    first = greedy([[5]], 1)[0][0]
    assert greedy([[5]], 10, eos_token_id=first) == [[first]]
    out = greedy([[5]], 10, eos_token_id=[first, 0], min_new_tokens=5)[0]
    assert len(out) >= 5 and first not in out[:5] and 0 not in out[:5]
    model = FixedLM([0.0, 1.0, 5.0, 4.0])  # both eos ids beat token 1: eos comes exactly when allowed
    out = torch.cat(list(generate_tokens(model, torch.tensor([[0]]), 10, eos_token_id=[2, 3], min_new_tokens=5)))
    assert out.tolist() == [1, 1, 1, 1, 1, 2]


def test_no_repeat_ngram_size_2_greedy_never_repeats_a_bigram():
    def repeated_bigrams(ids: list[int]) -> int:
        return len(ids) - 1 - len(set(zip(ids, ids[1:])))

    assert repeated_bigrams([5] + greedy([[5]], 20)[0]) > 0
    assert repeated_bigrams([5] + greedy([[5]], 20, no_repeat_ngram_size=2)[0]) == 0
