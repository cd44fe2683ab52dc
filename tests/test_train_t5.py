"""T5 through the same training loop: span corruption and seq2seq, exact resume, scores, objective checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import compose_train, losses, tiny_run_overrides, train_killed_then_resumed, zen_of_python

from model import T5, T5Config
from model.checkpoint import load_model
from train.loop import run

T5_TINY = {"model": "t5-tiny", "model.n_embd": 32, "model.n_head": 2, "model.intermediate_size": 64,
           "model.block_size": 48, "samples.prompts": "[]"}  # fmt: skip


def zen_pairs(directory: Path) -> Path:
    """Pairs from the Zen of Python: each aphorism -> the next one (a real, tiny text-to-text task)."""
    lines = [line for line in zen_of_python(directory).read_text().splitlines() if line.strip()]
    path = directory / "zen_pairs.jsonl"
    path.write_text("".join(json.dumps({"input": a, "target": b}) + "\n" for a, b in zip(lines, lines[1:])))
    return path


def span_overrides(tmp_path: Path, name: str, **extra: object) -> list[str]:
    return tiny_run_overrides(
        tmp_path, zen_of_python(tmp_path), name, task="span_corruption", **T5_TINY, **{"model.dropout": 0.1}, **extra
    )


@pytest.mark.e2e
def test_t5_span_corruption_resumes_exactly(tmp_path, monkeypatch):
    run(compose_train(span_overrides(tmp_path, "straight")))
    train_killed_then_resumed(monkeypatch, span_overrides(tmp_path, "resumed"))
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [resumed[s] for s in range(5, 9)] == [straight[s] for s in range(5, 9)]
    model, tokenizer = load_model(tmp_path / "resumed")
    assert isinstance(model, T5) and tokenizer.num_sentinels == 100
    assert model.config.vocab_size == 257 + 100 and model.config.decoder_start_id == tokenizer.eot_id


@pytest.mark.e2e
def test_t5_seq2seq_reports_exact_match_and_rouge(tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_pairs(tmp_path), task="seq2seq", **T5_TINY,
                                   **{"data": "pairs", "samples.eval_pairs": 4, "task.max_new_tokens": 16})  # fmt: skip
    result = run(compose_train(overrides))
    assert result["step"] == 8
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "val/rouge_l" in r]
    assert scored and all(0.0 <= r["val/exact_match"] <= 1.0 and 0.0 <= r["val/rouge_l"] <= 1.0 for r in scored)
    shown = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert shown and {"prompt", "completion", "reference"} <= set(shown[0])
    pairs = {p["input"]: p["target"] for p in map(json.loads, zen_pairs(tmp_path).read_text().splitlines())}
    assert all(pairs[s["prompt"]] == s["reference"] for s in shown)  # each shown pair with its own reference


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"task": "seq2seq"}, "task.objective='seq2seq' does not train a gpt model; use task=causal"),
        ({"model": "t5-tiny"}, "task.objective='causal' does not train a t5 model; use task=span_corruption or"),
        ({"model": "t5-tiny", "task": "seq2seq"}, "task=seq2seq needs pairs but data=text holds documents"),
    ],
)
def test_objective_must_suit_model_and_data(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(compose_train(tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **overrides)))


@pytest.mark.slow
def test_tiny_t5_overfits_pairs_and_generates_them_exactly():
    from data.tokenizer import get_tokenizer
    from sample.generate import complete

    tok = get_tokenizer("byte").with_sentinels(4)
    pairs = [("add 1 2", "3"), ("add 2 2", "4"), ("say hi", "hello"), ("say bye", "goodbye")]
    torch.manual_seed(0)
    model = T5(T5Config(n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=32, intermediate_size=64,
                        block_size=32, vocab_size=tok.vocab_size, dropout=0.0, decoder_start_id=tok.eot_id,
                        pad_id=tok.eot_id))  # fmt: skip
    S = max(len(tok.encode(a)) for a, _ in pairs) + 1
    T = max(len(tok.encode(b)) for _, b in pairs) + 1
    enc = torch.full((4, S), tok.eot_id)
    mask = torch.zeros(4, S, dtype=torch.bool)
    targets = torch.full((4, T), -1)
    for i, (a, b) in enumerate(pairs):
        ids, out = tok.encode(a) + [tok.eot_id], tok.encode(b) + [tok.eot_id]
        enc[i, : len(ids)], mask[i, : len(ids)], targets[i, : len(out)] = torch.tensor(ids), True, torch.tensor(out)
    dec = torch.cat([torch.full((4, 1), tok.eot_id), targets[:, :-1].clamp(min=0)], dim=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        _, loss = model(enc, dec, targets, enc_mask=mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    assert [complete(model, tok, a, max_new_tokens=10, temperature=0.0)[0] for a, _ in pairs] == [b for _, b in pairs]
