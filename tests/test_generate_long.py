"""Generation past the context window: a gpt slides its KV-cache window (sample.generate._Decoder.step), so
max_new_tokens is honoured at any length; checked against a cache-less reference that applies the same rule."""

import warnings

import pytest
import torch

from model import GPT, GPTConfig
from sample.generate import beam_search, generate_tokens

BLOCK = 16
MODELS = {"learned": dict(), "rope": dict(pos="rope", norm="rmsnorm", mlp="swiglu")}


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(n_layer=2, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=257, dropout=0.0, init_std=0.5)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def windows(prompt_len: int, n: int, block: int = BLOCK):
    """The sliding rule, step by step: before token i (0-based) is predicted, the model reads seq[start_i:].

    A prompt longer than block keeps its last block - min(n, block // 2) tokens. Whenever the window (with the
    token just generated) would hold more than block tokens, it restarts from the last max(1, block // 2).
    """
    start = prompt_len - (block - min(n, block // 2)) if prompt_len > block else 0
    for i in range(n):
        yield start
        length = prompt_len + i + 1  # the sequence once token i is appended
        if length - start > block:
            start = length - max(1, block // 2)


@torch.no_grad()
def windowed_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens without a KV cache: the whole kept window is re-run at every step (positions from 0)."""
    seq = list(prompt)
    for start in windows(len(prompt), n):
        logits, _ = model(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


@torch.no_grad()
def windowed_logprob(model: GPT, prompt: list[int], tokens: list[int]) -> float:
    """sum of log p(tokens) when each is read through the window the sliding rule gives it."""
    seq, total = list(prompt), 0.0
    for start, token in zip(windows(len(prompt), len(tokens)), tokens):
        logits, _ = model(torch.tensor([seq[start:]]))
        total += float(torch.log_softmax(logits[0, -1].float(), dim=-1)[token])
        seq.append(token)
    return total


@pytest.mark.parametrize("prompt_len", [3, 16, 25])
@pytest.mark.parametrize("pos", MODELS)
def test_greedy_past_the_window_equals_the_windowed_reference(pos, prompt_len):
    model = tiny_gpt(**MODELS[pos])
    prompt, n = ids(prompt_len, prompt_len), 3 * BLOCK
    with warnings.catch_warnings():
        warnings.simplefilter("error" if prompt_len <= BLOCK else "ignore")  # only a cropped prompt warns
        out = torch.stack(list(generate_tokens(model, torch.tensor([prompt]), n, temperature=0.0)), dim=1)
    assert out.shape == (1, n)  # max_new_tokens honoured, three windows' worth
    assert out[0].tolist() == windowed_greedy(model, prompt, n)


def test_the_sliding_rule():
    starts = list(windows(5, 30))
    assert starts[:12] == [0] * 12  # 5 prompt + 11 new = 16 tokens: the window is full
    assert starts[12:21] == [9] * 9  # one more would make 17: restart from the last 8 (17 - 8 = 9)
    assert starts[21] == 18  # 9 + 16 = 25 tokens read, one more: the last 8 again
    assert list(windows(40, 4))[0] == 40 - 12  # a long prompt keeps block - min(n, block // 2) = 12 tokens


@pytest.mark.parametrize("pos", MODELS)
def test_left_padded_batch_past_the_window_equals_each_row_alone(pos):
    model = tiny_gpt(**MODELS[pos])
    prompts = [ids(n, n) for n in (2, 9, 15, 20)]  # one row longer than the context: cropped on its own
    T, n = max(map(len, prompts)), 40
    idx = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with pytest.warns(UserWarning, match="prompt of 20 tokens"):
        out = torch.stack(list(generate_tokens(model, idx, n, temperature=0.0, attention_mask=mask)), dim=1)
    assert [row.tolist() for row in out] == [windowed_greedy(model, p, n) for p in prompts]


@pytest.mark.parametrize("pos", MODELS)
def test_sampling_past_the_window_is_reproducible_and_batch_invariant(pos):
    model = tiny_gpt(**MODELS[pos])
    prompts = [ids(n, n) for n in (4, 11)]
    idx = torch.tensor([[0] * 7 + prompts[0], prompts[1]])
    mask = torch.tensor([[0] * 7 + [1] * 4, [1] * 11])
    controls = dict(do_sample=True, temperature=1.5, top_k=40, repetition_penalty=1.2)

    def run(rows, m, seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return torch.stack(list(generate_tokens(model, rows, 45, generator=gens, attention_mask=m, **controls)), 1)

    batched = run(idx, mask, [3, 4])
    assert batched.shape == (2, 45) and torch.equal(batched, run(idx, mask, [3, 4]))  # same seeds, same tokens
    for b, p in enumerate(prompts):
        assert torch.equal(batched[b], run(torch.tensor([p]), None, [3 + b])[0])  # a row samples as alone
    assert not torch.equal(batched, run(idx, mask, [5, 6]))


def test_processors_see_the_whole_history_not_only_the_window():
    model = tiny_gpt()
    prompt = ids(6, 1)
    out = torch.stack(list(generate_tokens(model, torch.tensor([prompt]), 60, no_repeat_ngram_size=2)), dim=1)
    seq = prompt + out[0].tolist()
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams))  # no 2-gram repeats across 66 tokens, far wider than the window of 16
    plain = prompt + windowed_greedy(model, prompt, 60)
    assert len(set(zip(plain, plain[1:]))) < len(plain) - 1  # without the ban, this model does repeat itself


@pytest.mark.parametrize("pos", MODELS)
def test_beam_search_slides_each_beam(pos):
    model = tiny_gpt(**MODELS[pos])
    prompt, n = ids(10, 2), 30
    [[(tokens, _)]] = beam_search(model, torch.tensor([prompt]), n, num_beams=1)
    assert tokens == windowed_greedy(model, prompt, n)  # one beam is greedy decoding, windows included
    hyps = beam_search(model, torch.tensor([prompt]), n, num_beams=3, num_return_sequences=3)[0]
    assert len(hyps) == 3
    for tokens, score in hyps:  # each beam's score is its log-likelihood read through its own sliding windows
        assert len(tokens) == n
        assert score * n == pytest.approx(windowed_logprob(model, prompt, tokens), abs=1e-3)
