"""Assisted decoding (sample/assisted.py, sample.generate's verification loop): prompt lookup and a draft model give
the model's own greedy output, keep its sampling distribution, and take fewer forward passes than tokens."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from scipy.stats import chisquare

from model import GPT, GPTConfig
from sample.assisted import keep_or_replace, lookup_draft
from sample.generate import generate, generate_tokens


def tiny_gpt(seed: int, vocab: int = 40, block: int = 32, layers: int = 2) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=layers, n_head=2, n_embd=16, block_size=block, vocab_size=vocab)).eval()


def tokens(model: GPT, prompt: list[int], n: int, **kwargs) -> list[int]:
    idx = torch.tensor([prompt])
    return [int(t) for t in generate_tokens(model, idx, n, **kwargs)]


class Forwards:
    """Counts a model's forward passes (one per decoding step, prefill included)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        model.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


def test_lookup_draft_continues_the_latest_earlier_occurrence_of_the_last_ngram():
    seq = torch.tensor([5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2])
    assert lookup_draft(seq, 3) == [4, 7, 1]  # "1 2" last seen before at 5..6: then 4 7 1
    assert lookup_draft(seq, 3, max_ngram=3) == [4, 7, 1]  # "7 1 2" never occurred earlier: falls back to bigrams
    assert lookup_draft(torch.tensor([3, 8, 6, 8]), 5) == [6, 8]  # a unigram match; the draft stops at the end
    assert lookup_draft(torch.tensor([1, 2, 3]), 4) == []  # nothing repeats
    assert lookup_draft(torch.tensor([7]), 4) == []


@pytest.mark.parametrize(
    "controls",
    [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 3}, {"eos_token_id": 7, "min_new_tokens": 5}],
)
def test_prompt_lookup_is_the_models_greedy_output_in_fewer_forwards(controls):
    model = tiny_gpt(0)
    prompt = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4]  # a repeating prompt: lookups find drafts from the start
    plain = tokens(model, prompt, 60, **controls)  # 10 + 60 > block_size 32: the window slides too
    counter = Forwards(model)
    assisted = tokens(model, prompt, 60, prompt_lookup_num_tokens=4, **controls)
    assert assisted == plain
    if not controls:  # a random model falls into loops that the lookup then drafts
        assert counter.n < len(plain) * 0.8, (counter.n, len(plain))


@pytest.mark.parametrize("same", [True, False])
def test_a_draft_model_gives_the_models_greedy_output(same):
    model = tiny_gpt(0)
    # a copy of the model (every draft kept), or a smaller model with a smaller context (it stops drafting at its end)
    draft = copy.deepcopy(model) if same else tiny_gpt(1, layers=1, block=24)
    prompt = [1, 2, 3, 4, 5]
    plain = tokens(model, prompt, 40)
    counter = Forwards(model)
    assisted = tokens(model, prompt, 40, assistant_model=draft, num_assistant_tokens=3)
    assert assisted == plain
    if same:  # every draft is kept: each forward yields several tokens
        assert counter.n <= len(plain) // 3, counter.n


def test_assisted_scores_are_the_plain_loops():
    model = tiny_gpt(0)
    seen = {}
    for name, extra in (("plain", {}), ("lookup", {"prompt_lookup_num_tokens": 3})):
        scores = seen[name] = []
        tokens(model, [3, 4, 3, 4, 3], 12, on_scores=lambda s, t, into=scores: into.append((s.clone(), t.clone())),
               **extra)  # fmt: skip
    assert len(seen["plain"]) == len(seen["lookup"]) == 12
    for (s1, t1), (s2, t2) in zip(seen["plain"], seen["lookup"]):
        assert torch.equal(t1, t2)
        torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)


def test_generate_runs_a_batch_of_prompts_row_by_row_with_assisted_decoding():
    from data.tokenizer import get_tokenizer

    tokenizer = get_tokenizer("byte")
    model = tiny_gpt(0, vocab=tokenizer.vocab_size, block=64)
    prompts = ["abcabcab", "xyz", "hello hello hel"]
    plain = generate(model, tokenizer, prompts, max_new_tokens=20, output_scores=True, top_logprobs=2)
    fast = generate(model, tokenizer, prompts, max_new_tokens=20, output_scores=True, top_logprobs=2,
                    prompt_lookup_num_tokens=5)  # fmt: skip
    assert [c.token_ids for [c] in fast] == [c.token_ids for [c] in plain]
    for [a], [b] in zip(fast, plain):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def exact_probabilities(model: GPT, prompt: list[int], n: int) -> torch.Tensor:
    """p(t1 .. tn | prompt) (V ** n,) from full forwards, the outputs in base-V order: what sampling must match."""
    V = model.config.vocab_size
    joint = torch.ones(1, dtype=torch.float64)
    with torch.no_grad():
        for length in range(n):
            # every prefix of `length` tokens, in base-V order (V ** length, length)
            prefixes = torch.tensor(list(itertools.product(range(V), repeat=length)), dtype=torch.long)
            prefixes = prefixes.reshape(V**length, length)
            rows = torch.cat([torch.tensor(prompt).expand(len(joint), -1), prefixes], dim=1)
            p = torch.softmax(model(rows)[0][:, -1].double(), -1)  # (V ** length, V)
            joint = (joint[:, None] * p).flatten()
    return joint


@pytest.mark.slow
@pytest.mark.parametrize("drafter", ["draft model", "prompt lookup"])
def test_assisted_sampling_keeps_the_models_distribution(drafter):
    """Chi-square of 3,000 three-token samples against the model's exact joint distribution (a 4-token vocabulary):
    the first token is the model's own, the next two go through drafts and the speculative rule. A draft model that
    disagrees with the model (other weights) makes rejections common."""
    V, prompt, n_new = 4, [0, 1, 2, 3, 0, 1], 3
    model = tiny_gpt(0, vocab=V)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # a peaked model: far from the draft's distribution
    draft = tiny_gpt(5, vocab=V, layers=1)
    extra = {"assistant_model": draft, "num_assistant_tokens": 2} if drafter == "draft model" else {
        "prompt_lookup_num_tokens": 2}  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(V**n_new)
    n = 3000
    for _ in range(n):
        out = tokens(model, prompt, n_new, do_sample=True, top_k=None, generator=generator, **extra)
        counts[sum(t * V ** (n_new - 1 - i) for i, t in enumerate(out))] += 1
    expected = exact_probabilities(model, prompt, n_new) * n
    keep = expected > 5  # chi-square's rule of thumb; the rare outcomes are pooled
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    wanted = torch.cat([expected[keep], expected[~keep].sum()[None]])
    assert chisquare(observed.numpy(), wanted.numpy() * observed.sum().item() / wanted.sum().item()).pvalue > 1e-3


def test_the_speculative_rule_keeps_p_for_any_draft_distribution():
    """keep_or_replace's output, with the draft drawn from q, is distributed as p (exactly computable)."""
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.1, 0.1, 0.4, 0.4])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 20000
    drafts = torch.multinomial(q, n, replacement=True, generator=g)
    for d in drafts.tolist():
        counts[keep_or_replace(p, d, q, g)] += 1
    assert counts[3] == 0  # a token the model gives no probability is never output
    assert chisquare(counts[:3].numpy(), (p[:3] * n).numpy()).pvalue > 1e-3


def test_assisted_decoding_refuses_what_it_does_not_do():
    model = tiny_gpt(0)
    with pytest.raises(ValueError, match="one row at a time"):
        list(generate_tokens(model, torch.tensor([[1, 2], [3, 4]]), 4, prompt_lookup_num_tokens=3))
    with pytest.raises(ValueError, match="must use the model's tokenizer"):
        list(generate_tokens(model, torch.tensor([[1, 2]]), 4, assistant_model=tiny_gpt(1, vocab=50)))
    with pytest.raises(ValueError, match="num_beams=1 or prompt_lookup_num_tokens=null"):
        from sample.sampling import GenerationConfig, check_generation_config

        check_generation_config(GenerationConfig(num_beams=2, prompt_lookup_num_tokens=3))


def test_the_pipeline_and_the_sample_command_take_a_draft_checkpoint(tmp_path, capsys):
    from train_helpers import run_sample_main

    from data.tokenizer import get_tokenizer
    from model.checkpoint import save_model
    from sample import pipeline

    byte = get_tokenizer("byte")
    target = save_model(tiny_gpt(0, vocab=257, block=64), tmp_path / "target", tokenizer_spec=byte.spec())
    draft = save_model(tiny_gpt(1, vocab=257, block=64, layers=1), tmp_path / "draft", tokenizer_spec=byte.spec())
    pipe = pipeline("text-generation", model=target)
    plain = pipe(["def f(x):", "Once upon"], max_new_tokens=16, do_sample=False)
    assert pipe(["def f(x):", "Once upon"], max_new_tokens=16, do_sample=False, assistant_model=draft) == plain
    code, out, _ = run_sample_main(capsys, f"checkpoint={target}", "prompt=def f(x):", "max_new_tokens=16",
                                   "do_sample=false", f"assistant={draft}")  # fmt: skip
    assert code == 0 and plain[0][0]["generated_text"] in out
    fim = get_tokenizer("byte", fim=True).spec()  # other special ids: another tokenizer
    other = save_model(tiny_gpt(2, vocab=300, block=64), tmp_path / "other", tokenizer_spec=fim)
    with pytest.raises(ValueError, match="another tokenizer"):
        pipe("x", max_new_tokens=4, assistant_model=other)
    code, _, err = run_sample_main(capsys, f"checkpoint={target}", "prompt=x", f"assistant={other}")
    assert code != 0 and "must be a gpt with the sampled checkpoint's tokenizer" in err


@pytest.mark.slow
def test_prompt_lookup_with_the_compiled_step_is_still_the_greedy_output():
    model = tiny_gpt(0)
    prompt = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4]
    plain = tokens(model, prompt, 40)
    assert tokens(model, prompt, 40, prompt_lookup_num_tokens=4, compile=True) == plain


def test_a_draft_model_that_restarts_its_cache_keeps_its_place(monkeypatch):
    """A draft with a shorter context restarts its cache when it fills (from the last half of its context); after a
    restart it reads on from where the sequence is, so a restart buys about half a context of tokens (not one round),
    and the output stays the model's greedy."""
    import importlib

    gen = importlib.import_module("sample.generate")  # the module (sample.generate is also the function)
    model = tiny_gpt(0, block=64)
    draft = tiny_gpt(1, block=32, layers=1)  # other weights: short rounds, many of them
    starts = []
    real = gen._DraftModel._use
    monkeypatch.setattr(gen._DraftModel, "_use", lambda self, *a: starts.append(a[1]) or real(self, *a))
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    plain = [int(t) for t in generate_tokens(model, prompt, 55)]
    assisted = [int(t) for t in generate_tokens(model, prompt, 55, assistant_model=draft, num_assistant_tokens=2)]
    assert assisted == plain
    assert 2 <= len(starts) <= 5, starts  # the prompt, then one restart per ~16 tokens of 60
