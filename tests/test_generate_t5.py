"""T5 generation and beam search (sample/generate.py): cached = naive, padding, fitting, beams (hand-checked, HF)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from data.tokenizer import get_tokenizer
from model import GPT, T5, GPTConfig, T5Config
from sample.generate import beam_search, complete, generate_tokens, stream

BYTE = get_tokenizer("byte")
EOT = BYTE.eot_id
TINY_T5 = dict(n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=16, intermediate_size=32, block_size=32,
               vocab_size=257, dropout=0.0)  # fmt: skip
VARIANTS = {"v1.0": {}, "v1.1": dict(mlp="gated-gelu", tie_embeddings=False)}


def tiny_t5(**overrides) -> T5:
    torch.manual_seed(0)
    return T5(T5Config(**{**TINY_T5, **overrides})).eval()


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257)).eval()


def ids(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def naive_greedy(model: nn.Module, idx: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """(B, n) greedy tokens without a KV cache: the whole sequence is re-run at every step."""
    if isinstance(model, T5):
        enc_out = model.encode(idx)
        seq = torch.full((idx.size(0), 1), start, dtype=torch.long)
        for _ in range(n):
            seq = torch.cat([seq, model.decode(seq, enc_out)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return seq[:, 1:]
    seq = idx
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, idx.size(1) :]


@torch.no_grad()
def sum_logprobs(model: nn.Module, idx: torch.Tensor, tokens: list[int], start: int = 0) -> float:
    """log p(tokens | idx) of one row, from one uncached forward pass."""
    new = torch.tensor([tokens])
    if isinstance(model, T5):
        dec = torch.cat([torch.tensor([[start]]), new[:, :-1]], dim=1)
        logits = model.decode(dec, model.encode(idx))  # (1, n, V)
    else:
        logits = model(torch.cat([idx, new[:, :-1]], dim=1))[0][:, idx.size(1) - 1 :]  # (1, n, V)
    return torch.log_softmax(logits.float(), dim=-1)[0].gather(-1, new[0][:, None]).sum().item()


def trim(row: list[int], eos: int) -> list[int]:
    """row up to and including its first eos."""
    return row[: row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_t5_generation_equals_naive_loop(variant):
    model = tiny_t5(**VARIANTS[variant])
    enc = ids(2, 9)
    cached = torch.stack(list(generate_tokens(model, enc, 12, temperature=0.0)), dim=1)  # (2, 12)
    assert torch.equal(cached, naive_greedy(model, enc, 12))
    assert all(block.attn.kv_cache is None for block in model.decoder.block)


def test_t5_eos_and_decoder_start_from_eos_when_unset():
    model = tiny_t5(decoder_start_id=None)
    enc = ids(2, 7)
    expected = naive_greedy(model, enc, 10, start=EOT)
    eos = expected[0, 3].item()  # row 0 finishes by its 4th token at the latest
    steps = torch.stack(list(generate_tokens(model, enc, 10, temperature=0.0, eos_token_id=eos)), dim=1).tolist()
    for row, want in zip(steps, expected.tolist()):
        kept = trim(want, eos)
        assert row[: len(kept)] == kept and all(t == eos for t in row[len(kept) :])  # finished rows repeat eos
    with pytest.raises(ValueError, match="decoder_start_id"):
        list(generate_tokens(model, enc, 3, temperature=0.0))  # no start id and no eos to start from


def test_padded_encoder_batch_equals_each_row_alone():
    model = tiny_t5()
    short, long = ids(1, 5, seed=2), ids(1, 9, seed=3)
    batch = torch.cat([torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], dim=1), long])  # (2, 9)
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])  # ints are accepted: nonzero = real token
    out = torch.stack(list(generate_tokens(model, batch, 8, temperature=0.0, attention_mask=mask)), dim=1)
    torch.testing.assert_close(out[:1], naive_greedy(model, short, 8), rtol=0, atol=0)
    torch.testing.assert_close(out[1:], naive_greedy(model, long, 8), rtol=0, atol=0)
    beams = beam_search(model, batch, 8, num_beams=1, attention_mask=mask)
    assert [b[0][0] for b in beams] == out.tolist()


def test_long_input_keeps_its_start_and_the_output_is_not_capped():
    model = tiny_t5()  # block_size 32
    enc = ids(1, 40)
    with pytest.warns(UserWarning) as record:
        out = list(generate_tokens(model, enc, 50, temperature=0.0))
    assert [str(w.message) for w in record] == [
        "input of 40 tokens is longer than the model's context of 32 tokens; kept the first 32 (dropped the last 8)"
    ]  # the decoder (relative positions) runs past block_size: no cap, no warning
    assert len(out) == 50
    assert torch.equal(torch.stack(out, dim=1), naive_greedy(model, enc[:, :32], 50))


def test_right_padding_is_refused_for_gpt():
    with pytest.raises(ValueError, match="padded on the left"):
        list(generate_tokens(tiny_gpt(), ids(1, 4), 2, attention_mask=torch.tensor([[1, 1, 0, 0]])))


def test_t5_text_layer_prints_the_decoded_output():
    model = tiny_t5()
    tokens = naive_greedy(model, torch.tensor([BYTE.encode("Hello")]), 6)[0].tolist()
    text = BYTE.decode(tokens[: tokens.index(EOT)] if EOT in tokens else tokens)
    assert complete(model, BYTE, "Hello", max_new_tokens=6, temperature=0.0) == [text]
    assert "".join(stream(model, BYTE, "Hello", max_new_tokens=6, temperature=0.0)) == text
    empty = complete(model, BYTE, "", max_new_tokens=3, num_return_sequences=2, do_sample=True, seed=0)
    assert len(empty) == 2  # empty input: eot alone


@pytest.mark.parametrize("kind", ["gpt", "t5"])
def test_one_beam_is_greedy(kind):
    model = tiny_gpt() if kind == "gpt" else tiny_t5()
    prompt = ids(2, 5)
    greedy = naive_greedy(model, prompt, 10)
    assert [b[0][0] for b in beam_search(model, prompt, 10, num_beams=1)] == greedy.tolist()
    eos = greedy[0, 4].item()  # a token the greedy path meets: both rows may finish early
    results = beam_search(model, prompt, 10, num_beams=1, eos_token_id=eos)
    for row, want, hyps in zip(prompt, greedy.tolist(), results):
        (tokens, score), *rest = hyps
        assert not rest and tokens == trim(want, eos)
        assert score == pytest.approx(sum_logprobs(model, row[None], tokens) / len(tokens), abs=1e-4)


@pytest.mark.parametrize("kind", ["gpt", "t5"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_scores_are_sorted_and_equal_recomputed_logprobs(kind, length_penalty):
    model = tiny_gpt() if kind == "gpt" else tiny_t5()
    prompt = ids(2, 5)
    eos = naive_greedy(model, prompt, 3)[0, 2].item()  # likely on some beam: hypotheses finish at different lengths
    results = beam_search(model, prompt, 8, num_beams=3, num_return_sequences=3, eos_token_id=eos,
                          length_penalty=length_penalty)  # fmt: skip
    for row, hyps in zip(prompt, results):
        assert len(hyps) == 3
        scores = [s for _, s in hyps]
        assert scores == sorted(scores, reverse=True)
        for tokens, score in hyps:
            assert eos not in tokens[:-1] and (tokens[-1] == eos or len(tokens) == 8)  # eos ends a hypothesis
            expected = sum_logprobs(model, row[None], tokens) / len(tokens) ** length_penalty
            assert score == pytest.approx(expected, abs=1e-4)  # the cache followed each beam through reorder_cache
    assert all(block.attn.kv_cache is None for block in model.modules() if hasattr(block, "attn"))


class BigramLM(nn.Module):
    """A gpt-kind stand-in whose next-token distribution depends on the last token only (a probability table)."""

    def __init__(self, table: dict[int, dict[int, float]], vocab_size: int = 257) -> None:
        super().__init__()
        logits = torch.full((vocab_size, vocab_size), 1e-12)
        for prev, nexts in table.items():
            for token, p in nexts.items():
                logits[prev, token] = p
        self.register_buffer("table", logits.log())
        self.config = SimpleNamespace(kind="gpt", block_size=64, vocab_size=vocab_size)
        self.reorders: list[list[int]] = []

    def set_kv_cache(self, batch_size, max_seq_len=None, device=None, dtype=None):
        pass

    def clear_kv_cache(self):
        pass

    def reorder_cache(self, rows):
        self.reorders.append(rows.tolist())

    def forward(self, idx, targets=None, input_pos=None, logits_to_keep=0):
        return self.table[idx], None  # (B, T, V)


A, B, C, X = (ord(c) for c in "abcx")
# from the prompt "x": a .6, b .4;  a -> eot .5, a .3, c .2;  b -> c .6, b .4;  c -> eot 1
# "a<eot>": log .3 = -1.204 over 2 tokens;  "bc<eot>": log .24 = -1.427 over 3 tokens
HAND = {X: {A: 0.6, B: 0.4}, A: {EOT: 0.5, A: 0.3, C: 0.2}, B: {C: 0.6, B: 0.4}, C: {EOT: 1.0}}


@pytest.mark.parametrize(
    "length_penalty, expected",
    [
        (0.0, [([A, EOT], -1.204), ([B, C, EOT], -1.427)]),  # sum of log p: the short one wins
        (1.0, [([B, C, EOT], -1.427 / 3), ([A, EOT], -1.204 / 2)]),  # per-token average: the long one wins
    ],
)
def test_beam_search_by_hand(length_penalty, expected):
    model = BigramLM(HAND)
    hyps = beam_search(model, torch.tensor([[X]]), 4, num_beams=2, num_return_sequences=2, eos_token_id=EOT,
                       length_penalty=length_penalty)[0]  # fmt: skip
    assert [t for t, _ in hyps] == [t for t, _ in expected]
    assert [s for _, s in hyps] == pytest.approx([s for _, s in expected], abs=1e-3)
    # the prefilled row becomes 2 beams; step 1 grows both from beam 0 ("a", "b"); step 2 keeps "bc" (parent 1)
    # and "aa" (parent 0); after step 3 two hypotheses are finished and the best running beam ("aaa", log .054)
    # cannot beat them: no step 4
    assert model.reorders == [[0, 0], [0, 0], [1, 0]]
    text = complete(
        model, BYTE, "x", num_beams=2, num_return_sequences=2, length_penalty=length_penalty, max_new_tokens=4
    )
    assert text == [BYTE.decode(t[:-1]) for t, _ in expected]
    assert complete(model, BYTE, "x", num_beams=2, stop_strings=["c"], length_penalty=1.0, max_new_tokens=4) == ["b"]


F, G, K = (ord(c) for c in "fgk")
# "a<eot>" and "ak<eot>" finish first; "bcg..." never ends (g -> g), so its average log p keeps improving
LATE = {X: {A: 0.6, B: 0.4}, A: {EOT: 0.55, K: 0.45}, B: {C: 0.9, F: 0.1}, C: {EOT: 0.45, G: 0.55}, K: {EOT: 1.0},
        G: {G: 1.0}}  # fmt: skip


@pytest.mark.parametrize(
    "early_stopping, expected",
    [
        (True, [[A, K, EOT], [A, EOT]]),  # two finished after step 3: stop there
        (False, [[B, C, G, G, G], [A, K, EOT]]),  # "bcg" (log .495 / 3) still beats "a<eot>" (log .33 / 2): go on
    ],
)
def test_early_stopping(early_stopping, expected):
    hyps = beam_search(BigramLM(LATE), torch.tensor([[X]]), 5, num_beams=2, num_return_sequences=2, eos_token_id=EOT,
                       early_stopping=early_stopping)[0]  # fmt: skip
    assert [t for t, _ in hyps] == expected


def test_beam_search_without_eos_runs_to_max_new_tokens():
    hyps = beam_search(BigramLM(HAND), torch.tensor([[X]]), 3, num_beams=2, num_return_sequences=2)[0]
    assert all(len(tokens) == 3 for tokens, _ in hyps)


def test_beam_argument_errors():
    model = BigramLM(HAND)
    with pytest.raises(ValueError, match="num_return_sequences=3 > num_beams=2"):
        beam_search(model, torch.tensor([[X]]), 3, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="num_beams=0"):
        beam_search(model, torch.tensor([[X]]), 3, num_beams=0)
    with pytest.raises(ValueError, match="num_return_sequences=3 > num_beams=2"):
        complete(model, BYTE, "x", num_beams=2, num_return_sequences=3)
    assert beam_search(model, torch.tensor([[X]]), 0, num_beams=2) == [[([], 0.0)]]


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "num_beams, length_penalty, early_stopping",
    [(4, 1.0, False), (4, 0.0, False), (4, -1.0, False), (4, 1.0, True), (3, 0.5, False), (3, 0.0, True)],
)
def test_beam_search_matches_transformers(num_beams, length_penalty, early_stopping):
    from model.hf import t5_config_from_hf, t5_state_dict_from_hf

    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=8, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    hf = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # make eos likely (tied head: its logit is h . its embedding), so hypotheses finish early
        hf.shared.weight[1] = hf.shared.weight[2:].mean(dim=0) * 3
    ours = T5(t5_config_from_hf(hf.config.to_dict())).eval()
    ours.load_state_dict(t5_state_dict_from_hf(hf.state_dict()))
    enc = torch.randint(2, 8, (3, 6), generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_beams=num_beams, num_return_sequences=3, length_penalty=length_penalty,
                  early_stopping=early_stopping)  # fmt: skip
    with torch.no_grad():
        out = hf.generate(input_ids=enc, max_new_tokens=10, do_sample=False, output_scores=True,
                          return_dict_in_generate=True, **kwargs)  # fmt: skip
    results = beam_search(ours, enc, 10, eos_token_id=1, **kwargs)
    got = [hyp for hyps in results for hyp in hyps]
    for (tokens, score), hf_tokens, hf_score in zip(got, out.sequences.tolist(), out.sequences_scores.tolist()):
        assert hf_tokens[1 : 1 + len(tokens)] == tokens  # hf: decoder start first, padding after
        assert score == pytest.approx(hf_score, abs=1e-4)
    assert len(got) == out.sequences.size(0)
    assert any(tokens[-1] == 1 for tokens, _ in got)  # some hypotheses finished at eos, before max_new_tokens
